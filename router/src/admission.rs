//! Admission control: whether a connection may proceed before it costs a backend
//! session or a password check.
//!
//! Three plain data structures, each deciding from its own state and a `now` passed in
//! by the caller, so they are deterministic and tested without a clock:
//!
//! - [`TokenBucket`]: connection-rate limiting, with FIFO reservations for callers that
//!   would rather wait than be refused.
//! - [`FailedLogins`]: bans a (tenant, client address) pair after repeated failed
//!   logins, in bounded memory.
//! - [`AllowList`]: which client addresses a tenant accepts at all.
//!
//! None of them lock: callers own them (typically behind a `Mutex`, one per tenant or
//! one shared) and decide what a refusal means on the wire.

mod bans;
mod bucket;
mod cidr;

pub use bans::{Ban, BanPolicy, FailedLogins, DEFAULT_MAX_KEYS};
pub use bucket::TokenBucket;
pub use cidr::{AllowList, Cidr, CidrError};

/// The bans the data plane holds, as the admin API sees them (implemented by the
/// proxy's admission gates, which keep a [`FailedLogins`] per tenant).
pub trait BanControl: std::fmt::Debug + Send + Sync {
    /// The tenant's active bans.
    fn bans(&self, tenant: &crate::TenantId) -> Vec<Ban>;
    /// Lifts the ban of one address (and forgets its failures), or of all; returns
    /// how many addresses were cleared.
    fn lift(&self, tenant: &crate::TenantId, ip: Option<std::net::IpAddr>) -> usize;
}
