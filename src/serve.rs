//! `sluice serve`: build the components from a config and run until a signal.

use std::path::Path;
use std::sync::Arc;

use admin_api::{Admin, OpenedControl};
use anyhow::Context;
use pooler::{Histograms, Pools};
use proxy::tls::ServerTls;
use proxy::Proxy;
use router::{Catalog, CatalogHandle, Rejections, TenantLabels};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, LogFormat, Runtime};

/// Log lines go to stderr: human-readable text, or one JSON object per line (with the
/// connection span's fields: id, client_addr, tenant, role) for log shippers. The level
/// filter comes from `SLUICE_LOG` (default `info`). Nothing Sluice logs carries a
/// password, a SCRAM message or query text.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

pub fn run_file(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    init_logging(config.log_format);
    let runtime = config
        .runtime()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    tokio_runtime()?.block_on(async {
        let shutdown = shutdown_on_signals()?;
        let running = start(runtime).await?;
        running.wait(shutdown).await;
        Ok(())
    })
}

pub fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// A cancellation token fired by the first SIGINT or SIGTERM.
pub fn shutdown_on_signals() -> anyhow::Result<CancellationToken> {
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let fire = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        fire.cancel();
    });
    Ok(token)
}

/// The proxy and the admin listener, bound and ready to run.
pub struct Running {
    proxy: Arc<Proxy>,
    listeners: Vec<tokio::net::TcpListener>,
    pub addrs: Vec<std::net::SocketAddr>,
    admin: Admin,
    /// The control store (and the embedded cluster, if Sluice runs it): stopped last.
    control: OpenedControl,
}

pub async fn start(runtime: Runtime) -> anyhow::Result<Running> {
    let tls = runtime
        .proxy
        .tls
        .as_ref()
        .map(ServerTls::load)
        .transpose()?;
    let catalog = Arc::new(CatalogHandle::new(Catalog::new(runtime.tenants)));
    let pools = Arc::new(Pools::with_histograms(Histograms::new(
        runtime.admin.metrics_enabled,
    )));
    let rejections = Arc::new(Rejections::new(Arc::new(TenantLabels::new(
        runtime.max_tenant_series,
    ))));
    let listeners = proxy::bind(&runtime.proxy.listen)
        .await
        .with_context(|| format!("binding {:?}", runtime.proxy.listen))?;
    let addrs = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect();
    // The control store is opened before anything listens; an unreachable one is logged
    // and leaves the data plane serving the config's tenants.
    let control = admin_api::control::open(&runtime.control).await;
    let proxy = Arc::new(Proxy::new(
        runtime.proxy,
        tls,
        catalog.clone(),
        pools,
        rejections,
    ));
    let admin = Admin::bind(
        &runtime.admin,
        catalog.clone(),
        proxy.pools.clone(),
        proxy.rejections.clone(),
        proxy.gates.clone(),
        control.control.clone(),
    )
    .await?;
    // Live changes (PATCH /v1/tenants/{id}) reach running pools and admission gates.
    let weak = Arc::downgrade(&proxy);
    catalog.subscribe(move |catalog| {
        if let Some(proxy) = weak.upgrade() {
            proxy.gates.apply(catalog);
            proxy.pools.apply(catalog);
        }
    });
    Ok(Running {
        proxy,
        listeners,
        addrs,
        admin,
        control,
    })
}

impl Running {
    pub fn admin_addr(&self) -> std::net::SocketAddr {
        self.admin.addr
    }

    /// Serves until `shutdown`, then drains (see `proxy::serve`). The admin listener
    /// keeps answering while clients drain, with `/readyz` saying 503. The control store
    /// stops last.
    pub async fn wait(self, shutdown: CancellationToken) {
        for addr in &self.addrs {
            // Tests and scripts read these lines to find OS-assigned ports.
            println!("sluice: listening on {addr}");
        }
        println!("sluice: admin API listening on {}", self.admin.addr);
        let draining = self.admin.state.draining.clone();
        let stop_admin = CancellationToken::new();
        let admin = tokio::spawn(self.admin.serve(stop_admin.clone()));
        let maintenance = tokio::spawn(self.proxy.pools.clone().maintain(shutdown.clone()));
        let proxy = self.proxy.clone();
        let prune_stop = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(30));
            loop {
                tokio::select! {
                    _ = prune_stop.cancelled() => return,
                    _ = tick.tick() => proxy.gates.prune(),
                }
            }
        });
        let drain_signal = shutdown.clone();
        tokio::spawn(async move {
            drain_signal.cancelled().await;
            draining.cancel();
        });
        proxy::serve(self.proxy, self.listeners, shutdown).await;
        let _ = maintenance.await;
        stop_admin.cancel();
        let _ = admin.await;
        self.control.stop().await;
        tracing::info!("stopped");
    }
}
