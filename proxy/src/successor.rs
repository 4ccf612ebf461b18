//! Where this process's idle transaction-mode clients go when a new Sluice took its
//! listeners over (a restart without a gap), and what of a client's session goes with
//! it. Plain data and its encoding; `arrival.rs` serves a client that came in.
//!
//! Once this process drains and has a successor ([`Successor`], set by the binary
//! after the listener handover), a transaction-mode client that is between
//! transactions (no server connection attached, nothing buffered or being skipped,
//! not pinned), plaintext and with at most [`MAX_MOVED_STATEMENTS`] of statement text
//! leaves the relay (`transaction.rs`) as a [`MovingClient`]: its socket and its
//! encoded [`MovedSession`] (tenant, database, role, client address, cancel key,
//! backend credential, the settings it believes it has, its prepared statements). The
//! binary sends both over the handover connection (`SCM_RIGHTS`); the successor admits
//! the client again and runs the transaction relay for it, with no login: the client
//! never notices. A TLS client cannot move (its record layer state lives in this
//! process's rustls), nor can a pinned one (its session state lives on a server
//! connection); those finish here within the grace period.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use pooler::{PoolKey, ServerCredential};
use tokio_util::sync::CancellationToken;
use wire::scram::ClientKey;
use wire::startup::ClientCancelKey;

/// A client on its way to the successor: its socket and its session, encoded; `done`
/// says whether it arrived (the sending task waits for it, so the process does not
/// exit with a client in flight).
pub struct MovingClient {
    pub tcp: std::net::TcpStream,
    pub state: Vec<u8>,
    pub done: Option<tokio::sync::oneshot::Sender<std::io::Result<()>>>,
}

/// Where moving clients go: set once a successor took the listeners over; `moving` is
/// cancelled when this process starts draining, and from then on idle clients leave.
#[derive(Debug, Default)]
pub struct Successor {
    sender: Mutex<Option<tokio::sync::mpsc::UnboundedSender<MovingClient>>>,
    moving: CancellationToken,
}

impl Successor {
    /// A successor took the listeners over: clients may go through `sender`.
    pub fn set(&self, sender: tokio::sync::mpsc::UnboundedSender<MovingClient>) {
        *self.sender.lock().expect("successor lock") = Some(sender);
    }

    /// The drain started: idle clients leave for the successor, if there is one.
    pub fn start_moving(&self) {
        if self.sender.lock().expect("successor lock").is_some() {
            self.moving.cancel();
        }
    }

    /// Cancelled once idle clients should leave.
    pub(crate) fn moving(&self) -> CancellationToken {
        self.moving.clone()
    }

    /// Sends `client` on its way and waits until it arrived.
    pub(crate) async fn send(&self, mut client: MovingClient) -> std::io::Result<()> {
        let (done, arrived) = tokio::sync::oneshot::channel();
        client.done = Some(done);
        let sender = self.sender.lock().expect("successor lock").clone();
        let Some(sender) = sender else {
            return Err(std::io::Error::other("no successor"));
        };
        sender
            .send(client)
            .map_err(|_| std::io::Error::other("the handover connection is gone"))?;
        let result = arrived
            .await
            .map_err(|_| std::io::Error::other("the handover connection is gone"))
            .and_then(|sent| sent);
        if result.is_err() {
            // The successor is gone: the clients still here stay.
            *self.sender.lock().expect("successor lock") = None;
        }
        result
    }
}

/// What the successor needs to go on serving a client without a login.
pub(crate) struct MovedSession {
    pub client: SocketAddr,
    pub key: PoolKey,
    pub cancel: ClientCancelKey,
    pub credential: ServerCredential,
    /// The parameters the server reports (lowercase).
    pub reported: Vec<String>,
    /// What the client believes its session settings are.
    pub settings: BTreeMap<String, String>,
    /// Its prepared statements.
    pub statements: Vec<MovedStatement>,
}

/// A prepared statement as the client named it (empty: the unnamed one), with its text
/// and parameter types as in its Parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovedStatement {
    pub name: Vec<u8>,
    pub query: Vec<u8>,
    pub param_types: Vec<u8>,
}

impl MovedStatement {
    pub fn from_parse(parse: &wire::messages::ParseView<'_>) -> Self {
        MovedStatement {
            name: parse.name.to_vec(),
            query: parse.query.to_vec(),
            param_types: parse.param_types.to_vec(),
        }
    }

    pub fn as_parse(&self) -> wire::messages::ParseView<'_> {
        wire::messages::ParseView {
            name: &self.name,
            query: &self.query,
            param_types: &self.param_types,
        }
    }
}

const MAGIC: &[u8] = b"sluice-client 1";
/// No field of a session is longer (names, settings, a credential, a statement's text).
pub const MAX_FIELD: usize = 1 << 20;
/// Nor has a client more settings, reported parameters or statements (10,000 at most,
/// `MAX_CLIENT_STATEMENTS`, plus the unnamed one).
const MAX_ENTRIES: usize = 10_001;
/// A client moves with at most this much statement text: past it, it stays.
pub const MAX_MOVED_STATEMENTS: usize = 1 << 20;

impl MovedSession {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut put = |bytes: &[u8]| {
            out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            out.extend_from_slice(bytes);
        };
        put(MAGIC);
        put(self.client.to_string().as_bytes());
        put(self.key.tenant.as_str().as_bytes());
        put(self.key.database.as_bytes());
        put(self.key.role.as_bytes());
        put(&self.cancel.pid().to_be_bytes());
        // 4 bytes (protocol 3.0) or 32 (3.2): the field's length tells which.
        match &self.cancel {
            ClientCancelKey::Short(key) => put(&key.secret.to_be_bytes()),
            ClientCancelKey::Long(key) => put(&key.secret),
        }
        match &self.credential {
            ServerCredential::ScramClientKey {
                client_key,
                server_key,
            } => {
                put(b"scram");
                put(&client_key.0);
                put(server_key);
            }
            ServerCredential::Md5Hash(hash) => {
                put(b"md5");
                put(hash.as_bytes());
            }
            ServerCredential::Password(password) => {
                put(b"password");
                put(password.as_bytes());
            }
        }
        put(&(self.reported.len() as u32).to_be_bytes());
        for name in &self.reported {
            put(name.as_bytes());
        }
        put(&(self.settings.len() as u32).to_be_bytes());
        for (name, value) in &self.settings {
            put(name.as_bytes());
            put(value.as_bytes());
        }
        put(&(self.statements.len() as u32).to_be_bytes());
        for s in &self.statements {
            put(&s.name);
            put(&s.query);
            put(&s.param_types);
        }
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<MovedSession, String> {
        let mut fields = Fields(bytes);
        if fields.next()? != MAGIC {
            return Err("not a moved session".into());
        }
        let client = fields.text()?.parse().map_err(|_| "bad client address")?;
        let tenant = router::TenantId::parse(&fields.text()?).map_err(|e| e.to_string())?;
        let database = fields.text()?;
        let role = fields.text()?;
        let pid = i32::from_be_bytes(fields.array()?);
        let cancel = ClientCancelKey::from_parts(pid, fields.next()?).ok_or("a bad cancel key")?;
        let credential = match fields.next()? {
            b"scram" => ServerCredential::ScramClientKey {
                client_key: ClientKey(fields.array()?),
                server_key: fields.array()?,
            },
            b"md5" => ServerCredential::Md5Hash(fields.text()?),
            b"password" => ServerCredential::Password(fields.text()?),
            _ => return Err("unknown credential".into()),
        };
        let mut reported = Vec::new();
        for _ in 0..fields.count()? {
            reported.push(fields.text()?);
        }
        let mut settings = BTreeMap::new();
        for _ in 0..fields.count()? {
            let name = fields.text()?;
            settings.insert(name, fields.text()?);
        }
        let mut statements = Vec::new();
        for _ in 0..fields.count()? {
            statements.push(MovedStatement {
                name: fields.next()?.to_vec(),
                query: fields.next()?.to_vec(),
                param_types: fields.next()?.to_vec(),
            });
        }
        if !fields.0.is_empty() {
            return Err("trailing bytes".into());
        }
        Ok(MovedSession {
            client,
            key: PoolKey {
                tenant,
                database,
                role,
            },
            cancel,
            credential,
            reported,
            settings,
            statements,
        })
    }
}

/// Length-prefixed fields, each checked against [`MAX_FIELD`] before use.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn next(&mut self) -> Result<&'a [u8], String> {
        let (len, rest) = self.0.split_first_chunk::<4>().ok_or("truncated")?;
        let len = u32::from_be_bytes(*len) as usize;
        if len > MAX_FIELD || len > rest.len() {
            return Err("a field too long".into());
        }
        let (field, rest) = rest.split_at(len);
        self.0 = rest;
        Ok(field)
    }

    fn text(&mut self) -> Result<String, String> {
        String::from_utf8(self.next()?.to_vec()).map_err(|_| "a field is not UTF-8".into())
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        self.next()?
            .try_into()
            .map_err(|_| "a field of the wrong size".into())
    }

    fn count(&mut self) -> Result<usize, String> {
        let n = u32::from_be_bytes(self.array()?) as usize;
        if n > MAX_ENTRIES {
            return Err("too many entries".into());
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_survives_encoding() {
        let session = MovedSession {
            client: "10.1.2.3:5555".parse().unwrap(),
            key: PoolKey {
                tenant: router::TenantId::parse("acme").unwrap(),
                database: "app".into(),
                role: "app".into(),
            },
            cancel: ClientCancelKey::Short(wire::startup::CancelKey {
                pid: 42,
                secret: -7,
            }),
            credential: ServerCredential::ScramClientKey {
                client_key: ClientKey([3; 32]),
                server_key: [9; 32],
            },
            reported: vec!["application_name".into(), "timezone".into()],
            settings: [("application_name".to_owned(), "pgbench".to_owned())]
                .into_iter()
                .collect(),
            statements: vec![
                MovedStatement {
                    name: b"P0_1".to_vec(),
                    query: b"select $1".to_vec(),
                    param_types: vec![0, 1, 0, 0, 0, 23],
                },
                MovedStatement {
                    name: Vec::new(),
                    query: b"select 1".to_vec(),
                    param_types: vec![0, 0],
                },
            ],
        };
        let bytes = session.encode();
        assert_eq!(MovedSession::decode(&bytes).unwrap().encode(), bytes);
        for cut in 0..bytes.len() {
            assert!(MovedSession::decode(&bytes[..cut]).is_err());
        }
        // A protocol 3.2 client's key moves whole.
        let long = wire::startup::LongKey {
            pid: 42,
            secret: [0x5a; 32],
        };
        let session = MovedSession {
            cancel: ClientCancelKey::Long(long),
            ..session
        };
        let bytes = session.encode();
        let back = MovedSession::decode(&bytes).unwrap();
        assert_eq!(back.cancel, ClientCancelKey::Long(long));
        assert_eq!(back.encode(), bytes);
    }
}
