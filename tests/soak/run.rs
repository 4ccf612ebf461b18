//! One load run: how it reaches each tenant ([`TenantCtx`]), what its client loops
//! share ([`Shared`]: the backend restarts, the tally, and which errors are expected),
//! and [`run_load`], which runs the loops and the restarter and reads Sluice's RSS.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use rand::rngs::StdRng;
use rand::SeedableRng;
use testkit::clients::{pg_config, tls_connector};
use testkit::PgTarget;
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::errors::{Seen, Tally};
use crate::load::{psql_worker, restarter, tokio_worker};
use crate::pools::rss_kib;
use crate::{
    Env, Settings, LATE_CANCEL, OP_TIMEOUT, PSQL_WORKERS, RESTART_GRACE, TENANTS, TOKIO_WORKERS,
};

/// How the load reaches one tenant.
pub(crate) struct TenantCtx {
    pub(crate) id: &'static str,
    pub(crate) mode: &'static str,
    pub(crate) target: PgTarget,
    pub(crate) config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
}

/// What `MakeRustlsConnect` makes for one host name.
type RustlsConnect = <MakeRustlsConnect as MakeTlsConnect<TcpStream>>::TlsConnect;

impl TenantCtx {
    pub(crate) fn new(env: &Env, index: usize) -> Self {
        let password = env.clusters[index].lock().unwrap().app_password.clone();
        let spec = &TENANTS[index];
        let target = PgTarget::tenant(env.sluice.addr, spec.id, &password, &env.pki.ca_cert);
        TenantCtx {
            id: spec.id,
            mode: spec.mode,
            config: pg_config(&target),
            tls: tls_connector(&env.pki.ca_cert),
            target,
        }
    }

    /// A TLS connector for this tenant's host name (SNI).
    pub(crate) fn tls(&self) -> RustlsConnect {
        let host = self.target.sni_host.as_deref().expect("SNI host");
        let mut make = self.tls.clone();
        <MakeRustlsConnect as MakeTlsConnect<TcpStream>>::make_tls_connect(&mut make, host)
            .expect("TLS connector")
    }

    /// A TCP connection to Sluice; with `reset`, closing it sends a RST.
    pub(crate) async fn tcp(&self, reset: bool) -> Result<TcpStream, Seen> {
        let tcp = TcpStream::connect(self.target.addr)
            .await
            .map_err(|e| Seen::Other(format!("TCP connect to Sluice: {e}")))?;
        if reset {
            tcp.set_zero_linger()
                .map_err(|e| Seen::Other(format!("SO_LINGER: {e}")))?;
        }
        Ok(tcp)
    }
}

/// A backend restart: when its stop began, and when it was back up.
type Window = (Instant, Option<Instant>);

/// When each tenant's backend was down, and how often it was stopped in which mode.
pub(crate) struct Restarts {
    windows: Mutex<Vec<Vec<Window>>>,
    by_mode: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

impl Restarts {
    pub(crate) fn down(&self, tenant: usize, mode: &'static str) {
        self.windows.lock().unwrap()[tenant].push((Instant::now(), None));
        let mut by_mode = self.by_mode.lock().unwrap();
        *by_mode.entry((TENANTS[tenant].id, mode)).or_default() += 1;
    }

    pub(crate) fn up(&self, tenant: usize) {
        if let Some(w) = self.windows.lock().unwrap()[tenant].last_mut() {
            w.1 = Some(Instant::now());
        }
    }

    /// True when the tenant's backend went down between `from` and now, or came back
    /// less than [`RESTART_GRACE`] before `from`.
    fn disturbed(&self, tenant: usize, from: Instant) -> bool {
        let now = Instant::now();
        self.windows.lock().unwrap()[tenant]
            .iter()
            .any(|(down, up)| *down <= now && up.is_none_or(|up| from <= up + RESTART_GRACE))
    }
}

pub(crate) struct Shared {
    pub(crate) tenants: Vec<TenantCtx>,
    pub(crate) restarts: Restarts,
    tally: Mutex<Tally>,
    started: Instant,
    pub(crate) load_end: Instant,
}

impl Shared {
    pub(crate) fn count(&self, op: &'static str) {
        *self.tally.lock().unwrap().ops.entry(op).or_default() += 1;
    }

    /// Files an error under its SQLSTATE and cause if it is expected for what happened
    /// to the client (`since`: when its connection began), else as unexpected.
    ///
    /// Expected: 57014 for the query the test cancelled itself (or, within
    /// [`LATE_CANCEL`], for the statement after it in the same session); 53300 at any time (a
    /// queue for a small pool); the SQLSTATEs of a lost backend (57P01 fast shutdown,
    /// 57P02 crash, 57P03 starting up or shutting down, 08006 Sluice's "backend is
    /// unavailable", other 08xxx) only if its backend was restarted during the
    /// connection or shortly before; and, in that case too, a connection closed with
    /// no ErrorResponse (tokio-postgres drops a FATAL that answers a request nobody
    /// waits for: the Close of a dropped statement, the ROLLBACK of a dropped
    /// transaction).
    pub(crate) fn error(&self, tenant: usize, op: &'static str, since: Instant, seen: Seen) {
        self.error_after(tenant, op, since, None, seen)
    }

    /// [`Shared::error`] for a session whose last cancel ended at `cancelled`.
    pub(crate) fn error_after(
        &self,
        tenant: usize,
        op: &'static str,
        since: Instant,
        cancelled: Option<Instant>,
        seen: Seen,
    ) {
        let restarted = self.restarts.disturbed(tenant, since);
        let late_cancel = cancelled.is_some_and(|at| at.elapsed() < LATE_CANCEL);
        let expected = match &seen {
            Seen::Code { code, .. } => match code.as_str() {
                "57014" if op == "cancel" => Some(format!("{code} query cancelled by the test")),
                "57014" if late_cancel => {
                    Some(format!("{code} late signal of the session's own cancel"))
                }
                "53300" => Some(format!("{code} pool queue timeout")),
                "57P01" | "57P02" | "57P03" | "08006" | "08003" | "08000" | "08001" | "08P01"
                    if restarted =>
                {
                    Some(format!("{code} backend restart"))
                }
                _ => None,
            },
            Seen::Closed(_) if restarted => {
                Some("closed without ErrorResponse, backend restart".into())
            }
            _ => None,
        };
        let detail = format!(
            "t={:.1}s {} {op} (connected at t={:.1}s, backend restart nearby: {restarted}): \
             {seen}",
            self.started.elapsed().as_secs_f64(),
            TENANTS[tenant].id,
            since.saturating_duration_since(self.started).as_secs_f64(),
        );
        let mut tally = self.tally.lock().unwrap();
        let label = match expected {
            Some(label) => {
                // Accepted, but the design promises an ErrorResponse: worth a look.
                if matches!(seen, Seen::Closed(_)) && tally.notes.len() < 20 {
                    tally.notes.push(detail);
                }
                label
            }
            None => {
                tally.unexpected_total += 1;
                if tally.unexpected.len() < 40 {
                    tally.unexpected.push(detail);
                }
                match &seen {
                    Seen::Code { code, .. } => format!("UNEXPECTED {code}"),
                    Seen::Closed(_) => "UNEXPECTED closed without ErrorResponse".into(),
                    Seen::Hang(_) => "UNEXPECTED hang".into(),
                    Seen::Other(_) => "UNEXPECTED other".into(),
                }
            }
        };
        let entry = tally
            .errors
            .entry(label)
            .or_insert_with(|| (0, seen.to_string()));
        entry.0 += 1;
    }
}

/// What the load left to check and report.
pub(crate) struct LoadRun {
    pub(crate) tally: Tally,
    pub(crate) restarts: BTreeMap<(&'static str, &'static str), u64>,
    pub(crate) seconds: f64,
    pub(crate) rss_start: u64,
    pub(crate) rss_peak: u64,
    pub(crate) problems: Vec<String>,
}

/// Runs the clients and the restarter for the run's duration, reading Sluice's RSS
/// after the warm-up and its peak; returns once every client loop has ended.
pub(crate) async fn run_load(s: &Settings, env: &Env, tenants: Vec<TenantCtx>) -> LoadRun {
    let started = Instant::now();
    let shared = Arc::new(Shared {
        tenants,
        restarts: Restarts {
            windows: Mutex::new(vec![Vec::new(); TENANTS.len()]),
            by_mode: Mutex::default(),
        },
        tally: Mutex::default(),
        started,
        load_end: started + s.duration,
    });
    let mut workers = Vec::new();
    for tenant in 0..TENANTS.len() {
        for w in 0..TOKIO_WORKERS + PSQL_WORKERS {
            let id = (tenant * 10 + w) as i32;
            let rng = StdRng::seed_from_u64(s.seed ^ ((id as u64 + 1) << 32));
            workers.push(match w < TOKIO_WORKERS {
                true => tokio::spawn(tokio_worker(shared.clone(), tenant, id, rng)),
                false => tokio::spawn(psql_worker(shared.clone(), tenant, rng)),
            });
        }
    }
    let restarter = std::thread::spawn({
        let (clusters, shared) = (env.clusters.clone(), shared.clone());
        let rng = StdRng::seed_from_u64(s.seed);
        move || restarter(clusters, shared, rng)
    });

    let pid = env.sluice.pid();
    sleep(s.warmup).await;
    let rss_start = rss_kib(pid).unwrap_or(0);
    let mut rss_peak = rss_start;
    while Instant::now() < shared.load_end {
        sleep(Duration::from_secs(1)).await;
        rss_peak = rss_peak.max(rss_kib(pid).unwrap_or(0));
    }

    let mut problems = Vec::new();
    match timeout(OP_TIMEOUT * 2, join_all(workers)).await {
        Err(_) => problems.push("client loops still running 2 minutes after the load ended".into()),
        Ok(ended) => problems.extend(
            ended
                .into_iter()
                .filter_map(Result::err)
                .map(|e| format!("a client loop panicked: {e}")),
        ),
    }
    problems.extend(
        restarter
            .join()
            .unwrap_or_else(|_| vec!["the restarter panicked".into()]),
    );
    let tally = std::mem::take(&mut *shared.tally.lock().unwrap());
    let restarts = shared.restarts.by_mode.lock().unwrap().clone();
    LoadRun {
        tally,
        restarts,
        seconds: started.elapsed().as_secs_f64(),
        rss_start,
        rss_peak,
        problems,
    }
}
