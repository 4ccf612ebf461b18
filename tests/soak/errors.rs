//! What a client saw when an operation failed ([`Seen`]), from tokio-postgres errors
//! and from psql's stderr, and the counts of everything the run did and saw ([`Tally`]).

use std::collections::BTreeMap;
use std::fmt;

use crate::load::Conn;
use crate::OP_TIMEOUT;

/// What a client saw when an operation failed.
pub(crate) enum Seen {
    /// An ErrorResponse with this SQLSTATE.
    Code { code: String, message: String },
    /// The connection ended without an ErrorResponse.
    Closed(String),
    /// The operation did not finish within [`OP_TIMEOUT`].
    Hang(String),
    /// Anything else, wrong answers included.
    Other(String),
}

impl fmt::Display for Seen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Seen::Code { code, message } => write!(f, "{code} {message}"),
            Seen::Closed(what) => write!(f, "closed: {what}"),
            Seen::Hang(op) => write!(f, "{op}: no answer within {OP_TIMEOUT:?}"),
            Seen::Other(what) => f.write_str(what),
        }
    }
}

fn seen_db(db: &tokio_postgres::error::DbError, when: &str) -> Seen {
    Seen::Code {
        code: db.code().code().to_owned(),
        message: format!("{}: {}{when}", db.severity(), db.message()),
    }
}

/// Turns a tokio-postgres error into what the client saw. A closed connection is
/// explained by how its connection task ended: a FATAL that arrived between requests
/// ends the task with that error.
pub(crate) async fn seen_pg(err: &tokio_postgres::Error, conn: Option<&mut Conn>) -> Seen {
    if let Some(db) = err.as_db_error() {
        return seen_db(db, "");
    }
    let io = std::error::Error::source(err).is_some_and(|s| s.is::<std::io::Error>());
    if !err.is_closed() && !io {
        return Seen::Other(err.to_string());
    }
    let end = match conn {
        Some(conn) => conn.end().await,
        None => None,
    };
    match end {
        Some(Err(end)) => match end.as_db_error() {
            Some(db) => seen_db(db, " (between requests)"),
            None => Seen::Closed(format!("{err}; connection: {end}")),
        },
        _ => Seen::Closed(err.to_string()),
    }
}

/// Messages libpq prints without a SQLSTATE (errors during login), and their codes.
const KNOWN_MESSAGES: &[(&str, &str)] = &[
    ("\" is unavailable", "08006"),
    ("the database system is starting up", "57P03"),
    ("the database system is shutting down", "57P03"),
    (
        "the database system is not yet accepting connections",
        "57P03",
    ),
    ("the database system is in recovery mode", "57P03"),
    (
        "terminating connection due to administrator command",
        "57P01",
    ),
    ("terminating connection due to immediate shutdown", "57P01"),
    ("terminating connection because of crash", "57P02"),
    ("timed out waiting for a server connection", "53300"),
    ("canceling statement due to user request", "57014"),
];

/// What libpq says when a connection ends without an ErrorResponse.
const CLOSED_MESSAGES: &[&str] = &[
    "server closed the connection unexpectedly",
    "SSL SYSCALL error",
    "connection to server was lost",
    "could not receive data from server",
    "SSL error: unexpected eof",
    "no connection to the server",
];

/// What a failed psql printed (run with VERBOSITY=verbose, so errors after login
/// carry their SQLSTATE).
pub(crate) fn seen_psql(stderr: &str) -> Seen {
    for line in stderr.lines() {
        let Some(at) = line.find("FATAL:").or_else(|| line.find("ERROR:")) else {
            continue;
        };
        let rest = line[at + 6..].trim_start();
        let code = match rest.as_bytes().get(..6) {
            Some([c @ .., b':']) if c.iter().all(u8::is_ascii_alphanumeric) => {
                Some(rest[..5].to_owned())
            }
            _ => KNOWN_MESSAGES
                .iter()
                .find(|(m, _)| rest.contains(m))
                .map(|(_, c)| c.to_string()),
        };
        if let Some(code) = code {
            let message = line[at..].to_owned();
            return Seen::Code { code, message };
        }
    }
    let text = stderr.trim().replace('\n', " | ");
    if CLOSED_MESSAGES.iter().any(|m| stderr.contains(m)) {
        return Seen::Closed(text);
    }
    Seen::Other(text)
}

/// Counts of everything the run did and saw.
#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) ops: BTreeMap<&'static str, u64>,
    /// By SQLSTATE and cause: how many, and the first message.
    pub(crate) errors: BTreeMap<String, (u64, String)>,
    pub(crate) unexpected: Vec<String>,
    pub(crate) unexpected_total: u64,
    /// Accepted connection losses without an ErrorResponse, with their context.
    pub(crate) notes: Vec<String>,
}
