//! The `sluice` binary: command line, wiring and signals only.

mod api_args;
mod api_client;
mod audit_cmd;
mod config;
mod connections_cmd;
mod demo;
mod handover;
mod keys_cmd;
mod replicas_cmd;
mod roles_cmd;
mod serve;
mod signals;
mod stats_cmd;
mod table;
mod tenants_cmd;
mod usage_cmd;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "sluice", version, about = "Multi-tenant PostgreSQL gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy with a config file.
    Serve {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Work with config files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Start two local tenants (acme, globex) behind Sluice, ready for psql.
    Demo {
        /// Where the demo keeps its clusters, certificates and demo.json.
        #[arg(long, default_value = "sluice-demo")]
        dir: PathBuf,
        /// Proxy listen address.
        #[arg(long, default_value = "127.0.0.1:6432")]
        listen: SocketAddr,
        /// Admin API (and /metrics) listen address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        admin_listen: SocketAddr,
        /// Run a fleet of this many replicas behind HAProxy on --listen (needs haproxy).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=16))]
        replicas: u8,
    },
    /// Show pool and tenant statistics from a running Sluice's admin API.
    Stats(stats_cmd::StatsArgs),
    /// List the clients logged in to a running Sluice (PgBouncer's SHOW CLIENTS).
    Clients(connections_cmd::ConnectionsArgs),
    /// List a running Sluice's open server connections (PgBouncer's SHOW SERVERS).
    Servers(connections_cmd::ConnectionsArgs),
    /// Create, list, change, suspend and delete tenants through the admin API.
    Tenants(tenants_cmd::TenantsArgs),
    /// Manage a tenant's login roles through the admin API.
    Roles(roles_cmd::RolesArgs),
    /// Read and verify the admin API's audit log.
    Audit(audit_cmd::AuditArgs),
    /// Create, list and revoke the admin API's keys (needs an admin key).
    Keys(keys_cmd::KeysArgs),
    /// List the live replicas of the fleet through the admin API.
    Replicas(replicas_cmd::ReplicasArgs),
    /// Show what a tenant used, per hour or day (connection time, logins, queries,
    /// transactions, bytes, peak server connections, disk) through the admin API.
    Usage(usage_cmd::UsageArgs),
    /// The `lxc` driver's host side: per-tenant unprivileged containers.
    Lxc {
        #[command(subcommand)]
        command: LxcCommand,
    },
}

#[derive(Debug, Subcommand)]
enum LxcCommand {
    /// Check the host and build the containers' rootfs template ahead of the first
    /// tenant (≈ 30 s once; later runs find it built).
    Prepare {
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a config file; prints every problem with its key and line.
    Check { file: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `serve` sets logging up from its config file; the other commands log as text.
    if !matches!(cli.command, Command::Serve { .. }) {
        serve::init_logging(config::LogFormat::Text);
    }
    let result = match cli.command {
        Command::Serve { config } => serve::run_file(&config),
        Command::Config {
            command: ConfigCommand::Check { file },
        } => check(&file),
        Command::Demo {
            dir,
            listen,
            admin_listen,
            replicas,
        } => demo::run(&dir, listen, admin_listen, usize::from(replicas)),
        Command::Stats(args) => stats_cmd::run(args),
        Command::Clients(args) => connections_cmd::run(connections_cmd::Kind::Clients, args),
        Command::Servers(args) => connections_cmd::run(connections_cmd::Kind::Servers, args),
        Command::Tenants(args) => tenants_cmd::run(args),
        Command::Roles(args) => roles_cmd::run(args),
        Command::Audit(args) => audit_cmd::run(args),
        Command::Keys(args) => keys_cmd::run(args),
        Command::Replicas(args) => replicas_cmd::run(args),
        Command::Usage(args) => usage_cmd::run(args),
        Command::Lxc {
            command: LxcCommand::Prepare { config },
        } => lxc_prepare(&config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(file: &std::path::Path) -> anyhow::Result<()> {
    let config = config::Config::load(file)?;
    // Files the config points at must be readable too.
    let runtime = config
        .runtime()
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    if let Some(tls) = &runtime.proxy.tls {
        proxy::tls::ServerTls::load(tls)?;
    }
    println!(
        "{}: OK ({} tenant(s))",
        file.display(),
        config.tenants.len()
    );
    Ok(())
}

fn lxc_prepare(file: &std::path::Path) -> anyhow::Result<()> {
    let config = config::Config::load(file)?;
    let lxc = config.lxc().ok_or_else(|| {
        anyhow::anyhow!(
            "{}: enables no lxc driver (set [provisioner] driver = \"lxc\" or add [provisioner.lxc])",
            file.display()
        )
    })?;
    let started = std::time::Instant::now();
    let info = provision::lxc::prepare(&lxc, &mut |line| {
        println!("[{:6.1}s] {line}", started.elapsed().as_secs_f64());
    })?;
    println!(
        "lxc template ready: {} {} with PostgreSQL {}, ids shifted by {}, in {}",
        info.suite,
        info.mirror,
        info.pg_major,
        info.subid_base,
        lxc.root.display()
    );
    Ok(())
}
