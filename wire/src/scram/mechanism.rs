//! The names Postgres gives SCRAM-SHA-256 and its channel binding, and the limit on
//! the iteration count Sluice accepts.

/// Mechanism name without channel binding.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
/// Mechanism name with channel binding.
pub const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";
/// The only channel-binding type Postgres (and so Sluice) supports.
pub const TLS_SERVER_END_POINT: &str = "tls-server-end-point";
/// Largest iteration count Sluice accepts from a server, so a hostile or
/// misconfigured server cannot make it spin (Postgres' default is 4096).
pub const MAX_ITERATIONS: u32 = 1_000_000;
