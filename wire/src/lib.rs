//! The PostgreSQL wire protocol as Sluice speaks it, and the PROXY protocol header a
//! load balancer may put in front of it.
//!
//! Everything here is pure: no I/O, no async. Parsers take bytes that came
//! from untrusted peers and must never panic or allocate based on a length
//! field; builders append to a caller-owned [`bytes::BytesMut`] so one buffer
//! can carry many messages to a single `write_all`.
//!
//! - [`frame`]: splitting typed messages off a buffer.
//! - [`scan`]: walking message headers in a stream that is relayed verbatim.
//! - [`startup`]: the untyped packets of the startup phase.
//! - [`messages`]: builders for what Sluice sends, parsers for what it reads.
//! - [`scram`] and [`md5`]: authentication exchanges.
//! - [`proxy_header`]: the PROXY protocol header (v2 and v1) before the first packet.
//! - [`fleet`]: what replicas of a fleet tell each other (forwarded cancels), and the
//!   replica's tag in every cancel key.

pub mod fleet;
pub mod frame;
pub mod md5;
pub mod messages;
pub mod proxy_header;
pub mod scan;
pub mod scram;
pub mod startup;

mod put;
