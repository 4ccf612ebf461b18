//! What the admin console (the proxy's `sluice` database, docs/console.md) asks of the
//! control plane, which it cannot import: whose API key a password is, and the audit
//! event of a change. Implemented by `control::console`, handed to the proxy by the
//! binary (the same keys and audit log as the admin API).

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

/// What a key may do on the console; each role can do everything the ones before it
/// can (the API key roles).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ConsoleRole {
    /// SHOW only.
    Viewer,
    /// Also PAUSE, RESUME, RECONNECT, KILL.
    Operator,
    Admin,
}

/// Who logged in to the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleCaller {
    /// The API key's visible id (the audit log's actor).
    pub key_id: String,
    pub role: ConsoleRole,
}

/// The answer of [`ConsoleAuthority::audit`]: Ok once the event is durable.
pub type AuditFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// The key check and the audit log, as the console needs them.
pub trait ConsoleAuthority: std::fmt::Debug + Send + Sync {
    /// The caller `key` (a whole `sk_…` API key) belongs to, if it is a live key.
    fn caller(&self, key: &str) -> Option<ConsoleCaller>;
    /// Appends the audit event of a console change (`action`, e.g.
    /// `console.pause`, on `target`, a tenant id or `*`) with the command's text, and
    /// returns once it is durable. The change is made only after it succeeded.
    fn audit<'a>(
        &'a self,
        caller: &'a ConsoleCaller,
        source_ip: IpAddr,
        action: &'a str,
        target: &'a str,
        command: &'a str,
    ) -> AuditFuture<'a>;
}
