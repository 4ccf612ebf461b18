//! Admission control: whether a connection may proceed before it costs a backend
//! session or a password check.
//!
//! Plain data structures, each deciding from its own state and a `now` passed in
//! by the caller, so they are deterministic and tested without a clock:
//!
//! - [`TokenBucket`]: connection-rate limiting, with FIFO reservations for callers that
//!   would rather wait than be refused.
//! - [`FailedLogins`]: bans a (tenant, client address) pair after repeated failed
//!   logins, in bounded memory.
//! - [`AllowList`]: which client addresses a tenant accepts at all.
//! - [`AddressBuckets`]: a token bucket per client address (IPv6 per /64), in bounded
//!   memory, for requests that name no tenant (cancel requests).
//!
//! None of them lock: callers own them (typically behind a `Mutex`, one per tenant or
//! one shared) and decide what a refusal means on the wire.

mod bans;
mod bucket;
mod cidr;
mod per_address;

pub use bans::{Ban, BanPolicy, FailedLogins, DEFAULT_MAX_KEYS};
pub use bucket::TokenBucket;
pub use cidr::{AllowList, Cidr, CidrError};
pub use per_address::{AddressBuckets, DEFAULT_MAX_ADDRESSES};

/// What the admin API may ask of the data plane's admission gates (implemented by the
/// proxy, which keeps a [`FailedLogins`] and a session token per tenant).
pub trait AdmissionControl: std::fmt::Debug + Send + Sync {
    /// Ends every running session of the tenant (57P01); returns how many clients
    /// it had.
    fn terminate_sessions(&self, tenant: &crate::tenant_id::TenantId) -> usize;
    /// The tenant's active bans.
    fn bans(&self, tenant: &crate::tenant_id::TenantId) -> Vec<Ban>;
    /// Lifts the ban of one address (and forgets its failures), or of all; returns
    /// how many addresses were cleared.
    fn lift(&self, tenant: &crate::tenant_id::TenantId, ip: Option<std::net::IpAddr>) -> usize;
}
