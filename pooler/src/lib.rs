//! Server connections and the pools that hold them.
//!
//! A pool exists per (tenant, database, role). It owns idle server connections and a
//! FIFO queue of clients waiting for one; a checked-out connection is a
//! [`PooledConn`] guard that comes back only through an explicit, successful
//! [`PooledConn::release`] — dropping it closes the connection.
//!
//! The files depend one way (checked by `testkit/tests/layout.rs`): [`pools`] holds
//! [`pool`]s, a pool hands out [`server`] connections, and each connection holds a slot
//! of its tenant's cap ([`tenant_servers`]), which knows the pools only as
//! [`tenant_servers::SiblingPool`]s. A pool also holds its tenant's [`pause`] switch
//! and lists its connections in the process's [`registry`] (SHOW SERVERS), which
//! names pools by [`key`] only.
//!
//! Invariant: a server connection belongs to exactly one pool key for its whole life;
//! nothing here can move it to another tenant, database or role.
//! Invariant: a connection goes back to the idle list only after its reset succeeded.

pub mod cancel;
pub mod connect;
pub mod credential;
pub mod key;
pub mod pause;
pub mod pool;
pub mod pools;
pub mod prepared;
pub mod registry;
pub mod resizable;
pub mod server;
pub mod stats;
pub mod stream;
pub mod tenant_servers;
pub mod tls;

pub use connect::{connect, ConnectError, ConnectRequest};
pub use credential::ServerCredential;
pub use pool::{CheckoutError, ClientInPool, Pool, PoolKey, PooledConn, Release};
pub use pools::Pools;
pub use prepared::PreparedSet;
pub use registry::Registry;
pub use server::{ServerConn, ServerError};
pub use stats::{Histogram, HistogramSnapshot, Histograms, PoolCounts, PoolStats};
pub use stream::ServerStream;
pub use tls::TlsConnectors;
