//! A crowd of idle clients in front of a pooler, and the pooler's resident memory
//! before and with them ([`hold_idle_clients`]): tokio-postgres clients that log in
//! with SCRAM, run `SELECT 1` once and sit idle, opened a bounded number at a time with
//! a timeout each.

use std::time::{Duration, Instant};

use crate::clients::{pg_config, tls_connector, PgTarget};
use crate::procfs::rss_kib;

/// Logins in flight at once while idle clients are opened.
pub const IDLE_AT_ONCE: usize = 64;

/// A pooler's resident memory around a crowd of idle clients.
#[derive(Debug, Clone)]
pub struct IdleHeld {
    pub before_kib: u64,
    pub after_kib: u64,
    /// Clients that logged in and were held.
    pub clients: usize,
    /// Clients that could not log in or run their query.
    pub failed: usize,
    pub first_error: Option<String>,
    pub took: Duration,
}

impl IdleHeld {
    /// RSS growth per held client, in KiB.
    pub fn per_client_kib(&self) -> f64 {
        self.after_kib.saturating_sub(self.before_kib) as f64 / self.clients.max(1) as f64
    }
}

/// How long one idle client may take to log in and run its query.
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Opens up to `n` clients to `target` (TLS unless its sslmode is `disable`),
/// [`IDLE_AT_ONCE`] at a time: each logs in (SCRAM), runs `SELECT 1` once and sits
/// idle. Reads the VmRSS of `pid` after one warm-up client, and after the last client
/// has been idle for 2 s; then closes them all. Stops opening new clients once `budget`
/// has passed (each login and query also has [`LOGIN_TIMEOUT`]). `Err` if the warm-up
/// client failed or the process `pid` is gone.
pub async fn hold_idle_clients(
    target: &PgTarget,
    n: usize,
    pid: u32,
    budget: Duration,
) -> Result<IdleHeld, String> {
    let config = pg_config(target);
    let connector = tls_connector(&target.ca);
    let open = || {
        let (config, connector) = (config.clone(), connector.clone());
        async move {
            let login = async {
                let (client, conn) = config.connect(connector).await?;
                let task = tokio::spawn(conn);
                client.simple_query("SELECT 1").await?;
                Ok::<_, tokio_postgres::Error>((client, task))
            };
            match tokio::time::timeout(LOGIN_TIMEOUT, login).await {
                Ok(result) => result.map_err(|e| e.to_string()),
                Err(_) => Err(format!("no login and answer within {LOGIN_TIMEOUT:?}")),
            }
        }
    };
    let gone = || format!("process {pid} is gone");
    // One client first: pools, caches and the runtime's threads are warm.
    let (first, first_task) = open().await.map_err(|e| format!("first client: {e}"))?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_kib = rss_kib(pid).ok_or_else(gone)?;
    let started = Instant::now();
    let mut held = Vec::with_capacity(n);
    let (mut failed, mut first_error) = (0, None);
    for chunk_start in (0..n).step_by(IDLE_AT_ONCE) {
        if started.elapsed() > budget {
            break;
        }
        let size = IDLE_AT_ONCE.min(n - chunk_start);
        let opened = futures_util::future::join_all((0..size).map(|_| open())).await;
        for result in opened {
            match result {
                Ok(client) => held.push(client),
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
    }
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_kib = rss_kib(pid).ok_or_else(gone)?;
    let clients = held.len();
    // Dropping a client sends Terminate; its connection task then ends.
    drop(first);
    let mut tasks: Vec<_> = held.into_iter().map(|(_client, task)| task).collect();
    tasks.push(first_task);
    let _ = tokio::time::timeout(LOGIN_TIMEOUT, futures_util::future::join_all(tasks)).await;
    Ok(IdleHeld {
        before_kib,
        after_kib,
        clients,
        failed,
        first_error,
        took,
    })
}
