//! Who is connected right now: every logged-in client and every open server
//! connection of the process, for `SHOW CLIENTS` / `SHOW SERVERS` (the console) and
//! `/v1/clients` / `/v1/servers` (the admin API).
//!
//! An entry is written once when its connection starts and removed by its guard's
//! `Drop`. What changes afterwards (state, the peer it is paired with, bytes) is
//! relaxed atomics inside the entry, changed at checkout and release (rare events next
//! to messages) and, for bytes, by the relay's own counters: nothing here takes a lock
//! or allocates per message. Readers take a snapshot ([`Registry::clients`],
//! [`Registry::servers`]); values read from different atomics may be a moment apart.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use router::{PoolMode, TenantId};

use crate::key::PoolKey;

/// The live connections of one process.
#[derive(Debug, Default)]
pub struct Registry {
    clients: DashMap<u64, Arc<ClientEntry>>,
    servers: DashMap<u64, Arc<ServerEntry>>,
    next_server: AtomicU64,
}

/// What a client is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ClientState {
    /// Holds a server connection (in session mode: always, once logged in).
    Active = 0,
    /// Logged in, between transactions, holding no server connection.
    Idle = 1,
    /// Waiting for a server connection (the pool is full, or the tenant is paused).
    Waiting = 2,
}

impl ClientState {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientState::Active => "active",
            ClientState::Idle => "idle",
            ClientState::Waiting => "waiting",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            0 => ClientState::Active,
            1 => ClientState::Idle,
            _ => ClientState::Waiting,
        }
    }
}

/// What a server connection is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ServerState {
    /// Lent to a client.
    Active = 0,
    /// In its pool's idle list.
    Idle = 1,
    /// Back from a client and being reset before it goes idle (or closes).
    Used = 2,
}

impl ServerState {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Active => "active",
            ServerState::Idle => "idle",
            ServerState::Used => "used",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            0 => ServerState::Active,
            1 => ServerState::Idle,
            _ => ServerState::Used,
        }
    }
}

/// Bytes one client connection relayed. Each field is only ever added to by its own
/// connection's task (uncontended atomics); the registry and the connection's closing
/// log line read them.
#[derive(Debug, Default)]
pub struct Tally {
    pub from_client: AtomicU64,
    pub to_client: AtomicU64,
}

impl Tally {
    pub fn from_client(&self, n: usize) {
        self.from_client.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn to_client(&self, n: usize) {
        self.to_client.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Who a client is; fixed at login.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// The connection id of the proxy's logs.
    pub id: u64,
    pub key: PoolKey,
    /// The client's address (from the PROXY protocol header behind a balancer).
    pub addr: SocketAddr,
    pub tls: bool,
    pub mode: PoolMode,
}

/// One logged-in client.
#[derive(Debug)]
pub struct ClientEntry {
    pub info: ClientInfo,
    connected_at: u64,
    state: AtomicU8,
    since: AtomicU64,
    /// The id of the server connection it holds, 0 for none.
    server: AtomicU64,
    /// That server connection's backend process id, 0 for none.
    backend_pid: AtomicI32,
    pub tally: Tally,
}

impl ClientEntry {
    /// Waiting for a server connection from now.
    pub fn waiting(&self) {
        self.set(ClientState::Waiting);
    }

    /// Holds `server` from now.
    pub fn attached(&self, server: Option<&ServerEntry>) {
        self.server
            .store(server.map_or(0, |s| s.id), Ordering::Relaxed);
        self.backend_pid
            .store(server.and_then(|s| s.pid).unwrap_or(0), Ordering::Relaxed);
        self.set(ClientState::Active);
    }

    /// Holds no server connection from now.
    pub fn detached(&self) {
        self.server.store(0, Ordering::Relaxed);
        self.backend_pid.store(0, Ordering::Relaxed);
        self.set(ClientState::Idle);
    }

    fn set(&self, state: ClientState) {
        if self.state.swap(state as u8, Ordering::Relaxed) != state as u8 {
            self.since.store(now_ms(), Ordering::Relaxed);
        }
    }

    pub fn view(&self) -> ClientView {
        let server = self.server.load(Ordering::Relaxed);
        let pid = self.backend_pid.load(Ordering::Relaxed);
        ClientView {
            info: self.info.clone(),
            state: ClientState::from_u8(self.state.load(Ordering::Relaxed)),
            connected_at_ms: self.connected_at,
            state_since_ms: self.since.load(Ordering::Relaxed),
            server: (server != 0).then_some(server),
            backend_pid: (pid != 0).then_some(pid),
            bytes_from_client: self.tally.from_client.load(Ordering::Relaxed),
            bytes_to_client: self.tally.to_client.load(Ordering::Relaxed),
        }
    }
}

/// A snapshot of one client.
#[derive(Debug, Clone)]
pub struct ClientView {
    pub info: ClientInfo,
    pub state: ClientState,
    /// Milliseconds since the Unix epoch.
    pub connected_at_ms: u64,
    pub state_since_ms: u64,
    pub server: Option<u64>,
    pub backend_pid: Option<i32>,
    pub bytes_from_client: u64,
    pub bytes_to_client: u64,
}

/// One open server connection.
#[derive(Debug)]
pub struct ServerEntry {
    pub id: u64,
    pub key: PoolKey,
    /// The backend's address.
    pub addr: String,
    /// The backend's process id (from its BackendKeyData).
    pub pid: Option<i32>,
    connected_at: u64,
    state: AtomicU8,
    since: AtomicU64,
    /// The id of the client it serves, 0 for none.
    client: AtomicU64,
}

impl ServerEntry {
    pub fn set(&self, state: ServerState, client: u64) {
        self.client.store(client, Ordering::Relaxed);
        if self.state.swap(state as u8, Ordering::Relaxed) != state as u8 {
            self.since.store(now_ms(), Ordering::Relaxed);
        }
    }

    pub fn view(&self) -> ServerView {
        let client = self.client.load(Ordering::Relaxed);
        ServerView {
            id: self.id,
            key: self.key.clone(),
            addr: self.addr.clone(),
            pid: self.pid,
            state: ServerState::from_u8(self.state.load(Ordering::Relaxed)),
            connected_at_ms: self.connected_at,
            state_since_ms: self.since.load(Ordering::Relaxed),
            client: (client != 0).then_some(client),
        }
    }
}

/// A snapshot of one server connection.
#[derive(Debug, Clone)]
pub struct ServerView {
    pub id: u64,
    pub key: PoolKey,
    pub addr: String,
    pub pid: Option<i32>,
    pub state: ServerState,
    pub connected_at_ms: u64,
    pub state_since_ms: u64,
    pub client: Option<u64>,
}

/// A client's place in the registry; leaving removes it.
#[derive(Debug)]
pub struct ClientHandle {
    registry: Arc<Registry>,
    pub entry: Arc<ClientEntry>,
}

impl Drop for ClientHandle {
    fn drop(&mut self) {
        self.registry.clients.remove(&self.entry.info.id);
    }
}

/// A server connection's place in the registry; closing it removes it.
#[derive(Debug)]
pub struct ServerHandle {
    registry: Arc<Registry>,
    pub entry: Arc<ServerEntry>,
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.registry.servers.remove(&self.entry.id);
    }
}

impl Registry {
    /// Registers a client that just logged in (`Active` with no server yet; the login
    /// tells what it holds).
    pub fn client(self: &Arc<Self>, info: ClientInfo) -> ClientHandle {
        let now = now_ms();
        let entry = Arc::new(ClientEntry {
            info,
            connected_at: now,
            state: AtomicU8::new(ClientState::Idle as u8),
            since: AtomicU64::new(now),
            server: AtomicU64::new(0),
            backend_pid: AtomicI32::new(0),
            tally: Tally::default(),
        });
        self.clients.insert(entry.info.id, entry.clone());
        ClientHandle {
            registry: self.clone(),
            entry,
        }
    }

    /// Registers a server connection just opened for `key` (idle until lent).
    pub fn server(self: &Arc<Self>, key: PoolKey, addr: String, pid: Option<i32>) -> ServerHandle {
        let now = now_ms();
        let id = self.next_server.fetch_add(1, Ordering::Relaxed) + 1;
        let entry = Arc::new(ServerEntry {
            id,
            key,
            addr,
            pid,
            connected_at: now,
            state: AtomicU8::new(ServerState::Idle as u8),
            since: AtomicU64::new(now),
            client: AtomicU64::new(0),
        });
        self.servers.insert(id, entry.clone());
        ServerHandle {
            registry: self.clone(),
            entry,
        }
    }

    /// Every client (of `tenant`, if given), by id.
    pub fn clients(&self, tenant: Option<&TenantId>) -> Vec<ClientView> {
        let mut all: Vec<ClientView> = self
            .clients
            .iter()
            .filter(|e| tenant.is_none_or(|t| e.info.key.tenant == *t))
            .map(|e| e.view())
            .collect();
        all.sort_by_key(|c| c.info.id);
        all
    }

    /// Every server connection (of `tenant`, if given), by id.
    pub fn servers(&self, tenant: Option<&TenantId>) -> Vec<ServerView> {
        let mut all: Vec<ServerView> = self
            .servers
            .iter()
            .filter(|e| tenant.is_none_or(|t| e.key.tenant == *t))
            .map(|e| e.view())
            .collect();
        all.sort_by_key(|s| s.id);
        all
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `ms` since the Unix epoch as RFC 3339 UTC with milliseconds
/// (`2026-12-07T17:44:11.123Z`).
pub fn rfc3339_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Milliseconds from `ms` to now, for "in this state for".
pub fn age_ms(ms: u64) -> u64 {
    now_ms().saturating_sub(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tenant: &str) -> PoolKey {
        PoolKey {
            tenant: TenantId::parse(tenant).unwrap(),
            database: "app".into(),
            role: "app".into(),
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339_ms(1_796_665_451_000), "2026-12-07T17:44:11.000Z");
    }

    #[test]
    fn entries_leave_with_their_handles_and_pair_up() {
        let registry = Arc::new(Registry::default());
        let client = registry.client(ClientInfo {
            id: 7,
            key: key("acme"),
            addr: "10.0.0.1:5000".parse().unwrap(),
            tls: true,
            mode: PoolMode::Transaction,
        });
        let server = registry.server(key("acme"), "127.0.0.1:5432".into(), Some(42));
        let other = registry.server(key("globex"), "127.0.0.1:5433".into(), None);
        client.entry.attached(Some(&server.entry));
        server.entry.set(ServerState::Active, 7);
        let acme = TenantId::parse("acme").unwrap();
        let clients = registry.clients(Some(&acme));
        assert_eq!(clients.len(), 1);
        assert_eq!(clients[0].state, ClientState::Active);
        assert_eq!(clients[0].server, Some(server.entry.id));
        assert_eq!(clients[0].backend_pid, Some(42));
        let servers = registry.servers(Some(&acme));
        assert_eq!(servers.len(), 1);
        assert_eq!(servers[0].client, Some(7));
        assert_eq!(registry.servers(None).len(), 2);
        client.entry.detached();
        assert_eq!(registry.clients(None)[0].state, ClientState::Idle);
        drop(client);
        drop(other);
        assert!(registry.clients(None).is_empty());
        assert_eq!(registry.servers(None).len(), 1);
    }
}
