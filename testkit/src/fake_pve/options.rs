//! How the fake behaves: its nodes, task timing and the quirks it imitates.

use std::time::Duration;

/// How the fake behaves.
#[derive(Debug, Clone)]
pub struct FakePveOptions {
    /// Node names and their memory in MiB (all online).
    pub nodes: Vec<(String, u64)>,
    /// How long every task stays `running` before its work is done.
    pub task_duration: Duration,
    /// The delay before a 401 for a bad token (pveproxy: 3 s).
    pub auth_failure_delay: Duration,
    /// Errors as servers before libpve-http-server-perl 5.2.0: text only in the reason
    /// phrase, body `{"data":null}`.
    pub legacy_errors: bool,
    /// A creation that starts while another one runs on the same node fails with
    /// `can't lock file '/var/lock/pve-manager/pve-storage-…' - got timeout`.
    pub storage_lock_conflicts: bool,
}

impl Default for FakePveOptions {
    fn default() -> Self {
        FakePveOptions {
            nodes: vec![("pve1".to_owned(), 64 * 1024)],
            task_duration: Duration::from_millis(150),
            auth_failure_delay: Duration::from_secs(3),
            legacy_errors: false,
            storage_lock_conflicts: false,
        }
    }
}
