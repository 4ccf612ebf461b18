//! `sluice serve`: build the components from a config and run until a signal.

use std::path::Path;
use std::sync::Arc;

use admin_api::{Admin, ConnectionHint};
use anyhow::Context;
use control::fleet::FleetMember;
use control::secrets::SecretBox;
use control::store::ReplicaInfo;
use control::{CatalogSync, Drivers, OpenedControl, Plane};
use pooler::{Histograms, Pools};
use provision::{LocalDriver, LxcDriver, ProxmoxDriver, StaticDriver};
use proxy::fleet::FleetLink;
use proxy::tls::ServerTls;
use proxy::Proxy;
use router::{Catalog, CatalogHandle, Rejections, TenantLabels};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, FleetRuntime, LogFormat, Runtime};
use crate::handover::{self, Offer, TakenOver};
use crate::signals::{notify_systemd, reload, ConfigFile, Signals};

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
    let (config, table) = Config::read(path)?;
    init_logging(config.log_format);
    let runtime = config
        .runtime()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    tokio_runtime()?.block_on(async {
        let signals = Signals::install()?;
        let running = start(runtime).await?;
        let file = ConfigFile {
            path: path.to_owned(),
            table,
        };
        running.wait(signals, file).await;
        Ok(())
    })
}

pub fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// The proxy and the admin listener, bound and ready to run.
pub struct Running {
    proxy: Arc<Proxy>,
    listeners: Vec<tokio::net::TcpListener>,
    pub addrs: Vec<std::net::SocketAddr>,
    admin: Admin,
    /// The control plane's parts, for its background tasks.
    plane: Plane,
    /// `[admin] refusal_audit_interval_s`.
    refusal_audit_interval: std::time::Duration,
    /// The control store (and the embedded cluster, if Sluice runs it): stopped last.
    control: OpenedControl,
    /// Provisioning drivers: the local driver's tenant clusters stop after the proxy.
    drivers: Arc<Drivers>,
    /// The listening sockets, offered to the next Sluice on the same address.
    offer: Option<Offer>,
    /// The connection to the Sluice this one replaced, which its idle clients come
    /// through once it drains.
    arrivals: Option<std::os::unix::net::UnixStream>,
    /// In a fleet: this replica's membership and the listener for the others.
    fleet: Option<Fleet>,
}

/// This process as a replica of a fleet.
struct Fleet {
    member: Arc<FleetMember>,
    link: Arc<FleetLink>,
    /// `[fleet] listen`: forwarded cancels from the other replicas.
    listener: tokio::net::TcpListener,
}

/// Listens on `[fleet] listen` (`listener`, bound or taken over at start), registers
/// this process in the store and makes the catalog and the proxy follow the fleet: each
/// tenant's limits cut to this replica's share, cancel keys tagged with its slot.
async fn join_fleet(
    fleet: &FleetRuntime,
    listener: std::net::TcpListener,
    control: &control::Control,
    proxy: &Arc<Proxy>,
    proxy_addrs: &[std::net::SocketAddr],
    admin_addr: std::net::SocketAddr,
) -> anyhow::Result<Fleet> {
    let link = proxy
        .fleet
        .clone()
        .context("the proxy has no fleet secret")?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let internal = match fleet.advertise {
        Some(addr) => addr,
        None => listener.local_addr()?,
    };
    let info = ReplicaInfo {
        id: fleet.id.clone(),
        // The process's own instance, which its protocol 3.2 cancel keys name.
        instance: proxy.cancels.instance(),
        internal_addr: internal.to_string(),
        proxy_addrs: proxy_addrs.iter().map(|a| a.to_string()).collect(),
        admin_addr: admin_addr.to_string(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    let member = FleetMember::join(control, info, fleet.member.clone()).await;
    follow(&member.membership(), &proxy.catalog, &link);
    tracing::info!(id = %fleet.id, internal = %internal, "fleet listener ready");
    Ok(Fleet {
        member,
        link,
        listener,
    })
}

/// Applies a membership: the catalog's share (kept as it was while this replica is
/// not registered or drains) and the cancel routes.
fn follow(membership: &router::Membership, catalog: &CatalogHandle, link: &FleetLink) {
    if let Some(share) = membership.share() {
        catalog.set_share(share);
    }
    link.set_membership(membership.clone());
}

/// The provisioning drivers `[provisioner]` enables: `static` always (it only uses
/// servers named in requests), `local` unless the driver is `none` or `static`.
fn drivers(runtime: &Runtime) -> Drivers {
    let mut drivers = Drivers::default();
    drivers.add(Arc::new(StaticDriver));
    if runtime.default_driver == Some("local") {
        // Like an unreachable store, an unusable local driver (another Sluice owns the
        // data_dir's backends) leaves the data plane serving; creates answer 422.
        match LocalDriver::new(&runtime.data_dir) {
            Ok(local) => drivers.add(Arc::new(local)),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "the local provisioner is unavailable")
            }
        }
    }
    if let Some(lxc) = &runtime.lxc {
        match LxcDriver::new(lxc.clone()) {
            Ok(driver) => drivers.add(Arc::new(driver)),
            Err(e) => drivers.unavailable("lxc", format!("{e:#}")),
        }
    }
    if let Some(pve) = &runtime.proxmox {
        match ProxmoxDriver::new(pve.clone()) {
            Ok(driver) => drivers.add(Arc::new(driver)),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "the proxmox provisioner is unavailable")
            }
        }
    }
    drivers.default = runtime.default_driver;
    drivers
}

/// Raises this process's soft RLIMIT_NOFILE to its hard limit, so that the proxy can
/// hold as many sockets as the system lets it (every client, pre-login or not, and
/// every server connection is a file descriptor; the usual soft default is 1024).
/// Says what it did, and warns when the limit is below what `[proxy]` allows.
fn raise_open_files_limit(proxy: &proxy::ProxyConfig) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(e) => return tracing::warn!(error = %e, "cannot read the open-files limit"),
    };
    let now = if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => {
                tracing::info!(from = soft, to = hard, "raised the open-files limit");
                hard
            }
            Err(e) => {
                tracing::warn!(error = %e, soft, hard, "cannot raise the open-files limit");
                soft
            }
        }
    } else {
        soft
    };
    let wanted = proxy
        .max_client_connections
        .unwrap_or(0)
        .saturating_add(proxy.max_pending_logins.unwrap_or(0));
    if (now as u128) < wanted as u128 {
        tracing::warn!(
            open_files = now,
            wanted,
            "the open-files limit is below max_client_connections + max_pending_logins; \
             accepting fails past it (raise the hard limit, e.g. LimitNOFILE= in systemd)"
        );
    }
}

/// Serves the tenants' own host names of `catalog` from now on (the next ClientHello
/// sees them); one whose certificate or key is unusable is left out, with a warning.
fn apply_hostnames(proxy: &Proxy, catalog: &Catalog) {
    for e in proxy.hostnames.apply(catalog) {
        tracing::warn!(hostname = %e.hostname, reason = %e.reason, "host name not served");
    }
}

pub async fn start(runtime: Runtime) -> anyhow::Result<Running> {
    raise_open_files_limit(&runtime.proxy);
    let tls = runtime
        .proxy
        .tls
        .as_ref()
        .map(ServerTls::load)
        .transpose()?;
    let catalog = Arc::new(CatalogHandle::new(Catalog::default()));
    let pools = Arc::new(Pools::with_histograms(Histograms::new(
        runtime.admin.metrics_enabled,
    )));
    let rejections = Arc::new(Rejections::new(Arc::new(TenantLabels::new(
        runtime.max_tenant_series,
    ))));
    // The listening sockets of a Sluice already serving this address, if one hands them
    // over (a restart without a gap), else new ones (handover.rs).
    let key = handover::name_for(&runtime.proxy.listen);
    let wanted = runtime
        .proxy
        .listen
        .iter()
        .chain([&runtime.admin.listen])
        .chain(runtime.fleet.as_ref().map(|f| &f.listen))
        .copied()
        .collect();
    let mut taken = TakenOver::ask(key, wanted).await;
    let took_over = taken.any();
    let listeners = runtime
        .proxy
        .listen
        .iter()
        .map(|addr| taken.listener(*addr))
        .collect::<std::io::Result<Vec<_>>>()
        .with_context(|| format!("binding {:?}", runtime.proxy.listen))?;
    let admin_listener = taken
        .listener(runtime.admin.listen)
        .with_context(|| format!("binding the admin listener {}", runtime.admin.listen))?;
    // `[fleet] listen` too, so that a replica's new process starts beside the old one.
    let fleet_listener = runtime
        .fleet
        .as_ref()
        .map(|f| {
            taken
                .listener(f.listen)
                .with_context(|| format!("binding [fleet] listen {}", f.listen))
        })
        .transpose()?;
    let arrivals = taken.clients.take();
    drop(taken);
    let offered: Vec<&std::net::TcpListener> = listeners
        .iter()
        .chain([&admin_listener])
        .chain(fleet_listener.as_ref())
        .collect();
    let offer = Offer::new(key, &offered).await;
    let listeners = listeners
        .into_iter()
        .map(tokio::net::TcpListener::from_std)
        .collect::<std::io::Result<Vec<_>>>()?;
    let admin_listener = tokio::net::TcpListener::from_std(admin_listener)?;
    let addrs: Vec<std::net::SocketAddr> = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect();
    let secrets = Arc::new(SecretBox::load(&runtime.secrets_key_file)?);
    let drivers = Arc::new(drivers(&runtime));
    let hint = runtime
        .proxy
        .identify
        .sni_suffix
        .clone()
        .zip(addrs.first())
        .map(|(sni_suffix, addr)| ConnectionHint {
            sni_suffix,
            port: addr.port(),
        });
    // The control store is opened before anything listens; an unreachable one is logged
    // and leaves the data plane serving the snapshot and the config's tenants.
    let control = control::open::open(&runtime.control).await;
    if took_over && runtime.control.database_url.is_none() {
        tracing::warn!(
            "started beside a running Sluice with the embedded control store, which that \
             process holds: this one serves the catalog snapshot and the config's tenants, \
             and its admin changes answer 503 until it is restarted alone; a restart without \
             a gap needs [control] database_url (docs/fleet.md)"
        );
    }
    let sync = Arc::new(CatalogSync::new(
        catalog.clone(),
        Arc::new(runtime.plans),
        secrets,
        &runtime.data_dir,
        runtime.tenants,
    ));
    let source = sync.start(&control.control).await;
    tracing::info!(source, tenants = catalog.snapshot().len(), "catalog loaded");
    // Backends Sluice runs itself (local clusters) are up before clients can arrive;
    // the catalog (from the store or the snapshot) says which.
    control::drivers::start_backends(&sync, &drivers).await;
    let proxy = Arc::new(Proxy::new(
        runtime.proxy,
        tls,
        catalog.clone(),
        pools,
        rejections,
    ));
    // Live changes (the admin API, catalog sync) reach running pools and admission
    // gates; a tenant that leaves the catalog (deleted) has its sessions ended (57P01).
    let weak = Arc::downgrade(&proxy);
    let present = std::sync::Mutex::new(
        catalog
            .snapshot()
            .iter()
            .map(|t| t.id.clone())
            .collect::<std::collections::HashSet<_>>(),
    );
    apply_hostnames(&proxy, &catalog.snapshot());
    catalog.subscribe(move |catalog| {
        let Some(proxy) = weak.upgrade() else { return };
        apply_hostnames(&proxy, catalog);
        proxy.gates.apply(catalog);
        proxy.pools.apply(catalog);
        let now: std::collections::HashSet<_> = catalog.iter().map(|t| t.id.clone()).collect();
        let mut present = present.lock().expect("tenant set lock poisoned");
        for gone in present.difference(&now) {
            let ended = proxy.gates.terminate_sessions(gone);
            tracing::info!(tenant = %gone, sessions = ended, "tenant left the catalog");
        }
        *present = now;
    });
    let weak = Arc::downgrade(&proxy);
    catalog.subscribe_roles(move |tenant, role| {
        if let Some(proxy) = weak.upgrade() {
            proxy.secrets.invalidate(tenant, role);
        }
    });
    let parking = Arc::new(control::park::Parking::new(sync.clone(), drivers.clone()));
    let plane = Plane {
        parking: parking.clone(),
        disk: proxy.gates.disk.clone(),
        control: control.control.clone(),
        sync,
        drivers: drivers.clone(),
        wake: Arc::new(tokio::sync::Notify::new()),
        gates: proxy.gates.clone(),
        health: Default::default(),
        fleet: runtime.fleet.as_ref().map(|f| f.member.clone()),
    };
    let admin_state = Admin::prepare(
        &runtime.admin,
        catalog.clone(),
        proxy.pools.clone(),
        proxy.rejections.clone(),
        proxy.memory.clone(),
        plane.clone(),
        hint,
    )
    .await?;
    let admin = Admin::on(admin_listener, admin_state)?;
    // The admin console on the proxy port takes the same keys and writes the same
    // audit log as the API (proxy/src/console.rs).
    let console = control::console::ConsoleKeys {
        keys: admin.state.keys.clone(),
        control: control.control.clone(),
    };
    let _ = proxy.console.set(Arc::new(console));
    let fleet = match &runtime.fleet {
        Some(fleet) => {
            let listener = fleet_listener.context("the fleet listener")?;
            Some(
                join_fleet(
                    fleet,
                    listener,
                    &control.control,
                    &proxy,
                    &addrs,
                    admin.addr,
                )
                .await?,
            )
        }
        None => None,
    };
    Ok(Running {
        proxy,
        listeners,
        addrs,
        admin,
        fleet,
        plane,
        refusal_audit_interval: runtime.control.refusal_audit_interval,
        control,
        drivers,
        offer,
        arrivals,
    })
}

/// The fleet's background tasks: heartbeats until `stop` (then leaving the fleet: the
/// task returned, to be awaited before the process exits), following membership
/// changes, serving forwarded cancels (while draining too), and telling the others at
/// `shutdown` that this replica drains.
fn run_fleet(
    fleet: Fleet,
    proxy: &Arc<Proxy>,
    shutdown: CancellationToken,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let Fleet {
        member,
        link,
        listener,
    } = fleet;
    let membership = tokio::spawn(member.clone().run(stop.clone()));
    tokio::spawn(link.clone().serve(
        listener,
        proxy.cancels.clone(),
        proxy.rejections.clone(),
        stop.clone(),
    ));
    tokio::spawn(link.clone().serve_local(
        proxy.cancels.clone(),
        proxy.rejections.clone(),
        stop.clone(),
    ));
    let mut changes = member.subscribe();
    let catalog = proxy.catalog.clone();
    let follow_stop = stop.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = follow_stop.cancelled() => return,
                changed = changes.changed() => if changed.is_err() { return },
            }
            let membership = changes.borrow_and_update().clone();
            follow(&membership, &catalog, &link);
        }
    });
    tokio::spawn(async move {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = shutdown.cancelled() => member.drain().await,
        }
    });
    membership
}

impl Running {
    pub fn admin_addr(&self) -> std::net::SocketAddr {
        self.admin.addr
    }

    /// Serves until the first SIGINT/SIGTERM, then drains (see `proxy::serve`) for the
    /// grace period, or until a second one. The admin listener keeps answering while
    /// clients drain, with `/readyz` saying 503. The control store stops last. SIGHUP
    /// reloads `file` (see [`reload`]).
    pub async fn wait(self, signals: Signals, file: ConfigFile) {
        for addr in &self.addrs {
            // Tests and scripts read these lines to find OS-assigned ports.
            println!("sluice: listening on {addr}");
        }
        println!("sluice: admin API listening on {}", self.admin.addr);
        notify_systemd(&[sd_notify::NotifyState::Ready]);
        let Signals {
            shutdown,
            hurry,
            reload: mut reloads,
        } = signals;
        let reload_plane = self.plane.clone();
        let reload_stop = shutdown.clone();
        tokio::spawn(async move {
            let mut last = file.table.clone();
            loop {
                tokio::select! {
                    _ = reload_stop.cancelled() => return,
                    Some(()) = reloads.recv() => {
                        let mut state = vec![sd_notify::NotifyState::Reloading];
                        state.extend(sd_notify::NotifyState::monotonic_usec_now().ok());
                        notify_systemd(&state);
                        reload(&file, &mut last, &reload_plane).await;
                        notify_systemd(&[sd_notify::NotifyState::Ready]);
                    }
                }
            }
        });
        // Says what the shutdown waits for; a second signal ends it.
        let proxy = self.proxy.clone();
        let (first, second) = (shutdown.clone(), hurry.clone());
        tokio::spawn(async move {
            first.cancelled().await;
            notify_systemd(&[sd_notify::NotifyState::Stopping]);
            let grace = proxy.config.shutdown_grace.as_secs();
            let clients = proxy.gates.client_count();
            tracing::info!(
                clients,
                grace_s = grace,
                "stopped accepting; waiting up to {grace} s for {clients} client(s) to \
                 finish (SIGINT or SIGTERM again ends them now)"
            );
            second.cancelled().await;
            let clients = proxy.gates.client_count();
            tracing::info!(clients, "ending {clients} client(s) now (57P01)");
            proxy.terminate.cancel();
        });
        // Once a new process shares the admin listener (it took it over), this one stops
        // accepting there at shutdown: the address then answers for the new process
        // (`/readyz` 200) while this one drains.
        let (shared_tx, shared_rx) = tokio::sync::oneshot::channel();
        if let Some(offer) = self.offer {
            tokio::spawn(offer.serve(shutdown.clone(), shared_tx, self.proxy.clone()));
        }
        let admin_accepting = CancellationToken::new();
        let (admin_addr, accept_stop, accept_shutdown) =
            (self.admin.addr, admin_accepting.clone(), shutdown.clone());
        tokio::spawn(async move {
            let Ok(kept) = shared_rx.await else { return };
            if kept.contains(&admin_addr) {
                accept_shutdown.cancelled().await;
                accept_stop.cancel();
            }
        });
        let draining = self.admin.state.draining.clone();
        let stop_admin = CancellationToken::new();
        let admin = tokio::spawn(self.admin.serve(stop_admin.clone(), admin_accepting));
        // The control plane (catalog follower, job worker, backend supervisor, refusal
        // audit) runs as long as the admin listener.
        // Scale to zero (proxy/src/park.rs): one process decides for the backends it
        // runs; in a fleet no replica sees every client, so none parks a backend.
        if self.fleet.is_none() {
            let power: Arc<dyn router::parking::BackendPower> = self.plane.parking.clone();
            let _ = self.proxy.power.set(power.clone());
            tokio::spawn(proxy::park::watch_idle(
                self.proxy.clone(),
                power,
                shutdown.clone(),
            ));
        } else if self
            .proxy
            .catalog
            .snapshot()
            .iter()
            .any(|t| t.limits.suspend_after_idle.is_some())
        {
            tracing::warn!("suspend_after_idle_s is ignored in a fleet: no backend is parked");
        }
        let plane = tokio::spawn(self.plane.run(
            self.proxy.rejections.clone(),
            self.refusal_audit_interval,
            stop_admin.clone(),
        ));
        let fleet = self
            .fleet
            .map(|fleet| run_fleet(fleet, &self.proxy, shutdown.clone(), stop_admin.clone()));
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
        let arrivals = self.arrivals.map(|stream| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            std::thread::Builder::new()
                .name("sluice-arrivals".into())
                .spawn(move || handover::receive_clients(stream, tx))
                .expect("starting the arrivals thread");
            rx
        });
        proxy::serve(self.proxy, self.listeners, arrivals, shutdown).await;
        let _ = maintenance.await;
        stop_admin.cancel();
        let _ = admin.await;
        let _ = plane.await;
        if let Some(fleet) = fleet {
            let _ = fleet.await;
        }
        let drivers = self.drivers.clone();
        let _ = tokio::task::spawn_blocking(move || drivers.shutdown()).await;
        self.control.stop().await;
        tracing::info!("stopped");
    }
}
