//! The hostile-client tier: each attack on a shared gateway, run against a real
//! `sluice serve` in front of real Postgres clusters, asserting that Sluice lives, that
//! its memory stays bounded, and that a well-behaved client of another tenant is served
//! throughout. No timing assertions: the figures are measured in benches/.
//!
//! - `prelogin`: slowloris and half-open sockets before login, partial ClientHellos,
//!   crowds of held pre-login sockets, out-of-phase messages during login.
//! - `memory`: huge client messages in both pool modes, the per-client cap and the
//!   process-wide budget.
//! - `cancel_spam`: CancelRequests in a loop, forged and genuine.

mod cancel_spam;
mod memory;
mod prelogin;
