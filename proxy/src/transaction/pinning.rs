//! Session state in transaction mode: a client's Query or Parse whose SQL leaves state
//! on the server connection (see [`crate::session_state`]) either pins the client to
//! that connection (policy `pin`: it keeps it, as on a direct connection, until
//! `DISCARD ALL` or it leaves, and it is reset with `DISCARD ALL` before anyone else
//! gets it) or is swapped for a statement that fails with SQLSTATE 0A000 (policy
//! `refuse`). A statement that names one of Sluice's own prepared statements
//! (`sluice_…`) always fails, as if the statement did not exist. A text longer than
//! `MAX_SCANNED` is not looked into and pins, whatever the policy. Before a statement
//! that needs a database without other sessions (`DROP DATABASE`, `CREATE DATABASE …
//! TEMPLATE`), Sluice closes its own idle connections to it.
//!
//! Refusals are raised by the server itself (a `DO` block that raises), so the
//! protocol stays in step: the client gets the ErrorResponse, the ReadyForQuery and,
//! inside a transaction, the aborted state Postgres would give it.

use bytes::BytesMut;
use router::SessionState;
use wire::frame::Frame;
use wire::messages::{self, tag};

use super::client::Client;
use crate::session_state::{self, Effect, PinReason};

/// Why a statement is swapped for one that fails: SQLSTATE and message.
struct Refusal {
    code: &'static str,
    message: String,
}

impl Client<'_> {
    /// Looks at a Query or Parse for session state: pins the client or refuses the
    /// statement. Returns the frame to forward (the client's, or its refusal) and the
    /// databases Sluice's idle connections must leave before it runs.
    pub(super) fn watch_session_state(&mut self, frame: Frame) -> (Frame, Vec<String>) {
        let sql = match frame.tag {
            tag::QUERY => frame.body.strip_suffix(&[0]).unwrap_or(&frame.body),
            tag::PARSE => match messages::parse_parse(&frame.body) {
                Ok(p) => p.query,
                Err(_) => return (frame, Vec::new()),
            },
            _ => return (frame, Vec::new()),
        };
        if sql.len() > session_state::MAX_SCANNED {
            // Not looked into: it may hold anything, so it pins (under either policy: a
            // refusal of every large statement would refuse bulk loads).
            self.pin(PinReason::Unscanned);
            return (frame, Vec::new());
        }
        let sql = String::from_utf8_lossy(sql);
        let policy = self.pool.settings().session_state;
        let mut refusal = None;
        let mut databases = Vec::new();
        for effect in session_state::effects(&sql) {
            let reason = match effect {
                Effect::NeedsDatabaseFree(name) => {
                    databases.push(name);
                    continue;
                }
                Effect::Pins(reason) => reason,
                Effect::Sets(name) if self.reported.contains(&name.to_ascii_lowercase()) => {
                    continue
                }
                Effect::Sets(_) => PinReason::Set,
                Effect::SluiceName(statement, name) => {
                    refusal = Some(sluice_name(statement, &name));
                    break;
                }
            };
            match policy {
                SessionState::Pin => self.pin(reason),
                SessionState::Refuse => {
                    refusal = Some(Refusal {
                        code: "0A000",
                        message: format!(
                            "{} is not supported in transaction pooling mode: it would \
                             leave state on a shared server connection (pool.session_state \
                             = \"refuse\")",
                            reason.statement()
                        ),
                    });
                    break;
                }
            }
        }
        match refusal {
            Some(r) => (refused(&frame, &r), Vec::new()),
            None => (frame, databases),
        }
    }

    /// Keeps the client on its server connection for `reason` (counted and logged the
    /// first time for each reason).
    pub(super) fn pin(&mut self, reason: PinReason) {
        if self.pins.has(reason) {
            self.pins_pending = true;
            return;
        }
        self.pins_pending = true;
        let stats = &self.pool.stats;
        if !self.pins.any() {
            stats
                .pinned
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        stats.pins[reason.index()].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.pins.add(reason);
        tracing::info!(
            reason = reason.as_str(),
            "client pinned to its server connection: its session holds state"
        );
    }

    /// Forgets the client's pins (its state is gone, or it is leaving); whether it had
    /// any.
    pub(super) fn drop_pins(&mut self) -> bool {
        let had = self.pins.any();
        if had {
            self.pins = Default::default();
            self.pool
                .stats
                .pinned
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        had
    }
}

/// The refusal of a statement naming Sluice's statement `name`: as if it did not exist
/// (it is not the client's), or a reserved name for PREPARE.
fn sluice_name(statement: &str, name: &str) -> Refusal {
    // The name is the client's text: keep it to characters that cannot end the
    // refusal's dollar quote or string.
    let name: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(63)
        .collect();
    if statement == "PREPARE" {
        Refusal {
            code: "42939",
            message: format!(
                "prepared statement names starting with \"{}\" are reserved by the pooler: \"{name}\"",
                session_state::SLUICE_PREFIX
            ),
        }
    } else {
        Refusal {
            code: "26000",
            message: format!("prepared statement \"{name}\" does not exist"),
        }
    }
}

/// `frame` with its SQL swapped for a block that raises `refusal` (a Parse keeps its
/// name and parameter types).
fn refused(frame: &Frame, refusal: &Refusal) -> Frame {
    let message = refusal.message.replace('\'', "''");
    let sql = format!(
        "DO $sluice$BEGIN RAISE EXCEPTION USING ERRCODE = '{}', MESSAGE = '{message}'; END$sluice$",
        refusal.code
    );
    let mut out = BytesMut::new();
    match frame.tag {
        tag::PARSE => {
            let p = messages::parse_parse(&frame.body).expect("parsed above");
            messages::parse_raw(&mut out, p.name, sql.as_bytes(), p.param_types);
        }
        _ => messages::query(&mut out, &sql),
    }
    // Header off: a frame is its tag and body.
    Frame {
        tag: frame.tag,
        body: out.split_off(wire::frame::HEADER_LEN).freeze(),
    }
}
