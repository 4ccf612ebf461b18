//! The proxy's runtime settings (built by the binary from the config file).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use router::{Cidr, IdentifyRules};

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub listen: Vec<SocketAddr>,
    /// Certificate chain and key (PEM) served to clients; `None` disables TLS.
    pub tls: Option<TlsFiles>,
    pub identify: IdentifyRules,
    /// Plaintext clients get FATAL 28000.
    pub require_tls: bool,
    /// Time a client has from connecting to finishing authentication.
    pub login_timeout: Duration,
    /// On shutdown, how long connected clients may keep going before they are told
    /// 57P01 and disconnected.
    pub shutdown_grace: Duration,
    /// How long a role's secret read with auth_query is reused.
    pub auth_cache_ttl: Duration,
    /// Log each session start and each connection's end (duration, bytes) at `info`.
    pub log_connections: bool,
    /// Client connections of the whole process; `None`: no limit.
    pub max_client_connections: Option<usize>,
    /// Logins in progress at once, whole process.
    pub max_concurrent_logins: usize,
    /// The largest client message held whole; larger ones are streamed to the server
    /// (Query, FunctionCall, CopyData, Bind) or refused with 54000.
    pub max_client_message_buffer: usize,
    /// Bytes all clients together may make Sluice hold (memory.rs).
    pub memory_budget: usize,
    /// Bytes the clients of one tenant may make Sluice hold.
    pub memory_budget_per_tenant: usize,
    /// Connections between accept and a proved password, whole process; `None`: no
    /// limit (prelogin.rs).
    pub max_pending_logins: Option<usize>,
    /// The same per client address; `None`: no limit.
    pub max_pending_logins_per_ip: Option<usize>,
    /// Cancel requests per second forwarded for one client key (bucket of 2 × rate);
    /// `None`: no limit.
    pub cancel_rate_per_key: Option<u32>,
    /// Cancel requests per second from one client address (IPv6: one /64), whatever
    /// their key (bucket of 2 × rate); `None`: no limit.
    pub cancel_rate_per_ip: Option<u32>,
    /// Whether connections start with a PROXY protocol header, and from whom it is
    /// believed (proxy_protocol.rs).
    pub proxy_protocol: ProxyProtocol,
    /// `[fleet] secret_file`'s secret when this process is a replica of a fleet: cancel
    /// keys carry the replica's tag and cancels travel between replicas (fleet.rs).
    pub fleet_secret: Option<FleetSecret>,
}

/// The secret replicas of a fleet share; never printed.
#[derive(Clone)]
pub struct FleetSecret(pub Vec<u8>);

impl std::fmt::Debug for FleetSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FleetSecret(..)")
    }
}

/// `[proxy] proxy_protocol`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ProxyProtocolMode {
    /// No header is read; a connection starting with one fails as a bad startup packet.
    #[default]
    Off,
    /// Every connection must come from `proxy_protocol_from` and start with a header.
    V2,
    /// Peers in `proxy_protocol_from` may send a header; everyone else connects
    /// directly, and a header from them is refused.
    Optional,
}

/// `[proxy] proxy_protocol` and `proxy_protocol_from`.
#[derive(Debug, Clone, Default)]
pub struct ProxyProtocol {
    pub mode: ProxyProtocolMode,
    /// The balancers whose headers are believed.
    pub from: Vec<Cidr>,
}

/// What the accept loop does with a peer (see [`ProxyProtocol::at_accept`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerKind {
    /// A client connecting directly: the socket's peer is the client.
    Direct,
    /// A trusted balancer: the client's address comes from its header.
    Balancer,
    /// Not a trusted balancer, while every connection must come through one.
    Refused,
}

impl ProxyProtocol {
    /// Whether `peer` is a trusted balancer, a direct client, or refused.
    pub fn at_accept(&self, peer: IpAddr) -> PeerKind {
        // A dual-stack listener sees IPv4 balancers as IPv4-mapped IPv6 addresses.
        let peer = peer.to_canonical();
        let trusted = || self.from.iter().any(|net| net.contains(peer));
        match self.mode {
            ProxyProtocolMode::Off => PeerKind::Direct,
            ProxyProtocolMode::V2 if trusted() => PeerKind::Balancer,
            ProxyProtocolMode::V2 => PeerKind::Refused,
            ProxyProtocolMode::Optional if trusted() => PeerKind::Balancer,
            ProxyProtocolMode::Optional => PeerKind::Direct,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balancers_are_recognised_whatever_the_listener_family() {
        let config = ProxyProtocol {
            mode: ProxyProtocolMode::V2,
            from: vec![Cidr::parse("10.0.0.10/32").unwrap()],
        };
        let v4: IpAddr = "10.0.0.10".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.10".parse().unwrap();
        assert_eq!(config.at_accept(v4), PeerKind::Balancer);
        assert_eq!(config.at_accept(mapped), PeerKind::Balancer);
        assert_eq!(
            config.at_accept("10.0.0.11".parse().unwrap()),
            PeerKind::Refused
        );
        let optional = ProxyProtocol {
            mode: ProxyProtocolMode::Optional,
            ..config.clone()
        };
        assert_eq!(
            optional.at_accept("10.0.0.11".parse().unwrap()),
            PeerKind::Direct
        );
        let off = ProxyProtocol {
            mode: ProxyProtocolMode::Off,
            ..config
        };
        assert_eq!(off.at_accept(v4), PeerKind::Direct);
    }
}

/// Default `max_client_message_buffer`: 1 MiB, the largest SQL text Sluice looks into.
pub const DEFAULT_MAX_CLIENT_MESSAGE_BUFFER: usize = 1 << 20;
/// Default `memory_budget`: 1 GiB.
pub const DEFAULT_MEMORY_BUDGET: usize = 1 << 30;
/// Default `memory_budget_per_tenant`: 256 MiB.
pub const DEFAULT_MEMORY_BUDGET_PER_TENANT: usize = 256 << 20;

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 6432))],
            tls: None,
            identify: IdentifyRules {
                sni_suffix: None,
                tenant_from_options: true,
                tenant_from_user: false,
                default_tenant: None,
            },
            require_tls: true,
            login_timeout: Duration::from_secs(15),
            shutdown_grace: Duration::from_secs(30),
            auth_cache_ttl: Duration::from_secs(30),
            log_connections: true,
            max_client_connections: Some(100_000),
            max_concurrent_logins: 1000,
            max_client_message_buffer: DEFAULT_MAX_CLIENT_MESSAGE_BUFFER,
            memory_budget: DEFAULT_MEMORY_BUDGET,
            memory_budget_per_tenant: DEFAULT_MEMORY_BUDGET_PER_TENANT,
            max_pending_logins: Some(10_000),
            max_pending_logins_per_ip: Some(1000),
            cancel_rate_per_key: Some(5),
            cancel_rate_per_ip: Some(100),
            proxy_protocol: ProxyProtocol::default(),
            fleet_secret: None,
        }
    }
}
