//! Prepared statements in transaction mode: a client's statement names are mapped to
//! server-unique names, and every message that names a statement is rewritten so the
//! statement exists on whichever server connection the client has right now.
//!
//! Responses come back in request order, so Sluice keeps a queue of what it expects
//! (`Pending`) to drop the ParseComplete/CloseComplete answers to messages it added
//! itself, to learn which statements the server really holds, and to know when the
//! last ReadyForQuery owed to the client has arrived.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use pooler::PreparedSet;
use wire::frame::Frame;
use wire::messages::{self, tag};

/// The prefix of every server-side statement name Sluice makes.
const PREFIX: &str = "sluice_";

/// What a client's unknown statement name is sent as when it looks like one of
/// Sluice's own (so no client can reach another client's statement); the server then
/// answers "does not exist", as it would have.
const FOREIGN_NAME: &[u8] = b"sluice_unknown";

/// Named statements one client may hold. Postgres sets no such limit, but a client
/// that prepares unique statements forever must not grow Sluice without bound: past
/// this, its least recently used statement is forgotten (a later use of it gets the
/// server's "does not exist").
const MAX_CLIENT_STATEMENTS: usize = 10_000;

/// A statement as the client prepared it (copied out of the client's buffer, so a
/// large message does not stay pinned by a small statement).
#[derive(Debug)]
pub struct Statement {
    pub server_name: Arc<str>,
    query: Bytes,
    param_types: Bytes,
    /// The client's clock at its last use, for `MAX_CLIENT_STATEMENTS`.
    used: AtomicU64,
}

impl Statement {
    /// The bytes kept for it.
    fn size(&self) -> usize {
        self.query.len() + self.param_types.len() + self.server_name.len()
    }
}

/// What a response in the server's stream belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pending {
    /// A Parse; `name` is the server name (None: unnamed); `swallow` when Sluice added it.
    Parse {
        name: Option<Arc<str>>,
        swallow: bool,
    },
    /// A Close; `evicted` names the statement when Sluice added it to evict one.
    Close {
        swallow: bool,
        evicted: Option<Arc<str>>,
    },
    /// A Sync: answered by ReadyForQuery, except during COPY FROM STDIN (ignored).
    Sync,
    /// A Query or FunctionCall: always answered by ReadyForQuery.
    Query,
    /// The client ended a COPY FROM STDIN (CopyDone or CopyFail).
    CopyEnd,
}

impl Pending {
    pub fn is_ready(&self) -> bool {
        matches!(self, Pending::Sync | Pending::Query)
    }
}

/// The state of one attachment that rewriting needs: the server connection's
/// statements, the queue of expected answers, and two protocol facts.
#[derive(Debug)]
pub struct Conversation<'a> {
    pub prepared: &'a mut PreparedSet,
    pub pending: &'a mut VecDeque<Pending>,
    /// The server is in COPY FROM STDIN and ignores Syncs until the client ends it.
    pub copy_in: &'a mut bool,
    /// This client's unnamed statement was prepared on this server connection.
    pub unnamed_here: &'a mut bool,
}

/// A client's statements, by the names it uses.
#[derive(Debug)]
pub struct ClientStatements {
    prefix: String,
    next: u64,
    by_name: HashMap<Bytes, Arc<Statement>>,
    /// The client's unnamed statement: it outlives a transaction in Postgres, so it
    /// must follow the client to its next server connection too.
    unnamed: Option<Arc<Statement>>,
    /// Bytes of statement text kept for the statements above (charged to the
    /// client's memory grant).
    held: usize,
}

/// Whether a Query body is exactly `DISCARD ALL` or `DEALLOCATE [PREPARE] ALL` (case,
/// spacing and a trailing semicolon aside): the client asks to forget its statements.
fn forgets_all_statements(query_body: &[u8]) -> bool {
    // Every simple Query passes here: the words are compared in place, nothing is
    // allocated.
    let mut text = query_body
        .strip_suffix(&[0])
        .unwrap_or(query_body)
        .trim_ascii();
    while let Some(rest) = text.strip_suffix(b";") {
        text = rest.trim_ascii_end();
    }
    let mut words = text
        .split(u8::is_ascii_whitespace)
        .filter(|word| !word.is_empty());
    let w: [Option<&[u8]>; 4] = [words.next(), words.next(), words.next(), words.next()];
    let is = |i: usize, want: &[u8]| w[i].is_some_and(|word| word.eq_ignore_ascii_case(want));
    (is(0, b"discard") && is(1, b"all") && w[2].is_none())
        || (is(0, b"deallocate") && is(1, b"all") && w[2].is_none())
        || (is(0, b"deallocate") && is(1, b"prepare") && is(2, b"all") && w[3].is_none())
}

/// Whether a CommandComplete body says the server dropped all prepared statements of
/// its session (so Sluice's record of them must go too).
pub fn server_forgot_all(command_complete_body: &[u8]) -> bool {
    command_complete_body.starts_with(b"DISCARD ALL")
        || command_complete_body.starts_with(b"DEALLOCATE ALL")
}

impl ClientStatements {
    pub fn new(client_id: u64) -> Self {
        ClientStatements {
            prefix: format!("{PREFIX}{client_id}_"),
            next: 0,
            by_name: HashMap::new(),
            unnamed: None,
            held: 0,
        }
    }

    /// The client's statements as the Parse messages that made them (the unnamed one
    /// with an empty name), to go with it to another process (`successor.rs`).
    pub fn export(&self) -> Vec<messages::ParseView<'_>> {
        let named = self.by_name.iter().map(|(name, s)| messages::ParseView {
            name,
            query: &s.query,
            param_types: &s.param_types,
        });
        let unnamed = self.unnamed.iter().map(|s| messages::ParseView {
            name: b"",
            query: &s.query,
            param_types: &s.param_types,
        });
        named.chain(unnamed).collect()
    }

    /// Takes back statements a client had in another process: each is prepared on a
    /// server connection here at its first use, as after a Parse answered locally.
    pub fn import<'a>(&mut self, statements: impl IntoIterator<Item = messages::ParseView<'a>>) {
        for parse in statements {
            if parse.name.is_empty() {
                let unnamed = self.statement(&parse, Arc::from(""));
                self.set_unnamed(Some(unnamed));
            } else {
                self.define(&parse);
            }
        }
    }

    /// Bytes of statement text kept for this client.
    pub fn held_bytes(&self) -> usize {
        self.held
    }

    fn insert_named(&mut self, name: Bytes, statement: Arc<Statement>) {
        self.held += statement.size();
        if let Some(old) = self.by_name.insert(name, statement) {
            self.held -= old.size();
        }
    }

    fn remove_named(&mut self, name: &[u8]) -> Option<Arc<Statement>> {
        let removed = self.by_name.remove(name)?;
        self.held -= removed.size();
        Some(removed)
    }

    fn clear_named(&mut self) {
        self.by_name.clear();
        self.held = self.unnamed.as_ref().map_or(0, |s| s.size());
    }

    fn set_unnamed(&mut self, statement: Option<Arc<Statement>>) {
        self.held += statement.as_ref().map_or(0, |s| s.size());
        if let Some(old) = std::mem::replace(&mut self.unnamed, statement) {
            self.held -= old.size();
        }
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    fn statement(&self, p: &messages::ParseView<'_>, server_name: Arc<str>) -> Arc<Statement> {
        Arc::new(Statement {
            server_name,
            query: Bytes::copy_from_slice(p.query),
            param_types: Bytes::copy_from_slice(p.param_types),
            used: AtomicU64::new(self.next),
        })
    }

    /// Records a named statement under a fresh server name.
    fn define(&mut self, p: &messages::ParseView<'_>) -> Arc<Statement> {
        self.next += 1;
        let statement = self.statement(p, format!("{}{}", self.prefix, self.next).into());
        self.insert_named(Bytes::copy_from_slice(p.name), statement.clone());
        if self.by_name.len() > MAX_CLIENT_STATEMENTS {
            let oldest = self
                .by_name
                .iter()
                .min_by_key(|(_, s)| s.used.load(Ordering::Relaxed))
                .map(|(name, _)| name.clone());
            if let Some(oldest) = oldest {
                self.remove_named(&oldest);
            }
        }
        statement
    }

    /// Answers, without a server, what a client outside a transaction can be answered
    /// locally: a named Parse is recorded (it is prepared on a server at first use), a
    /// Close forgets, a Sync reports idle, COPY messages are ignored (as Postgres does
    /// outside COPY). Returns false for anything that needs a server. This is what
    /// lets a client prepare statements while every server connection is busy
    /// (pgbench -M prepared prepares synchronously).
    ///
    /// The price: a Parse with an error is reported at first use, not at Parse.
    pub fn answer_locally(&mut self, frame: &Frame, to_client: &mut BytesMut) -> bool {
        match frame.tag {
            tag::PARSE => match messages::parse_parse(&frame.body) {
                Ok(p) if !p.name.is_empty() => {
                    self.define(&p);
                    messages::parse_complete(to_client);
                    true
                }
                _ => false,
            },
            tag::CLOSE => match messages::parse_target(&frame.body) {
                Ok((kind, name)) => {
                    if kind == b'S' && name.is_empty() {
                        self.set_unnamed(None);
                    } else if kind == b'S' {
                        self.remove_named(name);
                    }
                    // Outside a transaction no portal exists; closing one is a no-op.
                    messages::close_complete(to_client);
                    true
                }
                Err(_) => false,
            },
            tag::SYNC => {
                messages::ready_for_query(to_client, tag::STATUS_IDLE);
                true
            }
            tag::FLUSH | tag::COPY_DATA | tag::COPY_DONE | tag::COPY_FAIL => true,
            _ => false,
        }
    }

    /// Rewrites one client message into `out` for the server of `conv`, and records
    /// what its responses will be. Malformed messages are forwarded untouched: the
    /// server rejects them with its own error.
    pub fn rewrite(&mut self, frame: &Frame, conv: &mut Conversation<'_>, out: &mut BytesMut) {
        match frame.tag {
            tag::PARSE => match messages::parse_parse(&frame.body) {
                Ok(p) if !p.name.is_empty() => {
                    let statement = self.define(&p);
                    prepare(&statement, conv, out, false);
                }
                Ok(p) => {
                    // Drivers parse the same unnamed statement over and over: the copy
                    // kept is reused when it is the same, so that allocates nothing.
                    let same = self
                        .unnamed
                        .as_ref()
                        .is_some_and(|u| u.query == p.query && u.param_types == p.param_types);
                    if !same {
                        let unnamed = self.statement(&p, Arc::from(""));
                        self.set_unnamed(Some(unnamed));
                    }
                    *conv.unnamed_here = true;
                    conv.pending.push_back(Pending::Parse {
                        name: None,
                        swallow: false,
                    });
                    forward(frame, out);
                }
                Err(_) => forward(frame, out),
            },
            tag::BIND => match messages::parse_bind(&frame.body) {
                Ok(b) => match self.resolve(b.statement, conv, out) {
                    Some(name) => messages::bind_raw(out, b.portal, name, b.rest),
                    None => forward(frame, out),
                },
                Err(_) => forward(frame, out),
            },
            tag::DESCRIBE => match messages::parse_target(&frame.body) {
                Ok((b'S', name)) => match self.resolve(name, conv, out) {
                    Some(name) => messages::describe(out, b'S', name),
                    None => forward(frame, out),
                },
                _ => forward(frame, out),
            },
            tag::CLOSE => {
                match messages::parse_target(&frame.body) {
                    Ok((b'S', name)) if !name.is_empty() => match self.remove_named(name) {
                        Some(statement) => {
                            conv.prepared.remove(&statement.server_name);
                            messages::close(out, b'S', statement.server_name.as_bytes());
                        }
                        None if name.starts_with(PREFIX.as_bytes()) => {
                            messages::close(out, b'S', FOREIGN_NAME)
                        }
                        None => forward(frame, out),
                    },
                    Ok((b'S', _)) => {
                        // The client's unnamed statement is gone, here and on the
                        // server, which answers "does not exist" to a later Bind("").
                        self.set_unnamed(None);
                        *conv.unnamed_here = true;
                        forward(frame, out);
                    }
                    _ => forward(frame, out),
                }
                conv.pending.push_back(Pending::Close {
                    swallow: false,
                    evicted: None,
                });
            }
            tag::QUERY => {
                // The client asked to forget its statements. What the server forgets
                // is learned from its CommandComplete (the command can fail).
                if forgets_all_statements(&frame.body) {
                    self.clear_named();
                }
                // A simple Query replaces the session's unnamed statement.
                self.set_unnamed(None);
                *conv.unnamed_here = false;
                conv.pending.push_back(Pending::Query);
                forward(frame, out);
            }
            tag::FUNCTION_CALL => {
                conv.pending.push_back(Pending::Query);
                forward(frame, out);
            }
            tag::SYNC => {
                // Postgres ignores a Sync that arrives during COPY FROM STDIN.
                if !*conv.copy_in {
                    conv.pending.push_back(Pending::Sync);
                }
                forward(frame, out);
            }
            tag::COPY_DONE | tag::COPY_FAIL => {
                if *conv.copy_in {
                    *conv.copy_in = false;
                } else {
                    conv.pending.push_back(Pending::CopyEnd);
                }
                forward(frame, out);
            }
            _ => forward(frame, out),
        }
    }

    /// The start of a client message too large to hold whole (`body_len` bytes of
    /// body, of which `head` has arrived): writes to `out` what replaces the header and
    /// the first bytes of the body, and records what its responses will be, like
    /// [`Self::rewrite`]; the rest of the body then goes to the server unchanged, as it
    /// arrives. Returns how many bytes of `head` were replaced, or `None` while a Bind's
    /// names are still incomplete. Only a Query, FunctionCall, CopyData and Bind are
    /// streamed (their bulk is SQL text or values Sluice does not keep).
    pub fn stream_head(
        &mut self,
        tag: u8,
        body_len: usize,
        head: &[u8],
        conv: &mut Conversation<'_>,
        out: &mut BytesMut,
    ) -> Option<usize> {
        let header = |out: &mut BytesMut, tag: u8, body_len: usize| {
            out.put_u8(tag);
            out.put_u32(u32::try_from(body_len + 4).unwrap_or(u32::MAX));
        };
        match tag {
            tag::QUERY => {
                self.set_unnamed(None);
                *conv.unnamed_here = false;
                conv.pending.push_back(Pending::Query);
            }
            tag::FUNCTION_CALL => conv.pending.push_back(Pending::Query),
            tag::BIND => {
                let mut names = head.splitn(3, |&b| b == 0);
                let (Some(portal), Some(statement), Some(_)) =
                    (names.next(), names.next(), names.next())
                else {
                    return None;
                };
                let replaced = portal.len() + statement.len() + 2;
                if let Some(name) = self.resolve(statement, conv, out) {
                    header(
                        out,
                        tag,
                        body_len - replaced + portal.len() + name.len() + 2,
                    );
                    out.put_slice(portal);
                    out.put_u8(0);
                    out.put_slice(name);
                    out.put_u8(0);
                    return Some(replaced);
                }
            }
            _ => {}
        }
        header(out, tag, body_len);
        Some(0)
    }

    /// The server name to use for the client's statement `name`, preparing it on this
    /// server first if needed; `None` to forward the message unchanged.
    fn resolve<'s>(
        &'s mut self,
        name: &[u8],
        conv: &mut Conversation<'_>,
        out: &mut BytesMut,
    ) -> Option<&'s [u8]> {
        if name.is_empty() {
            // The unnamed statement: re-prepare this client's on a server that holds
            // someone else's (or none).
            if !*conv.unnamed_here {
                if let Some(unnamed) = &self.unnamed {
                    messages::parse_raw(out, b"", &unnamed.query, &unnamed.param_types);
                    conv.pending.push_back(Pending::Parse {
                        name: None,
                        swallow: true,
                    });
                } else {
                    // The client has none: the server's, if any, is another client's.
                    // Closing it first makes the server answer "does not exist", as it
                    // would to this client alone.
                    messages::close(out, b'S', b"");
                    conv.pending.push_back(Pending::Close {
                        swallow: true,
                        evicted: None,
                    });
                }
                *conv.unnamed_here = true;
            }
            return None;
        }
        match self.by_name.get(name) {
            Some(statement) => {
                self.next += 1;
                statement.used.store(self.next, Ordering::Relaxed);
                if !conv.prepared.touch(&statement.server_name) {
                    prepare(statement, conv, out, true);
                }
                // Borrowed, not copied: every Bind of a prepared statement passes here.
                Some(statement.server_name.as_bytes())
            }
            // Unknown to Sluice: the server answers "does not exist", as it would.
            None if name.starts_with(PREFIX.as_bytes()) => Some(FOREIGN_NAME),
            None => None,
        }
    }
}

/// What the server's CopyInResponse means for the queue: Syncs the client sent after
/// the Execute that started the COPY (up to its CopyDone/CopyFail) are ignored by the
/// server, so they will get no ReadyForQuery. Returns true if the client has not ended
/// the COPY yet (later Syncs are then ignored too, until it does).
pub fn copy_in_started(pending: &mut VecDeque<Pending>) -> bool {
    let end = pending.iter().position(|p| *p == Pending::CopyEnd);
    let limit = end.unwrap_or(pending.len());
    let kept: VecDeque<Pending> = pending
        .drain(..)
        .enumerate()
        .filter(|(i, p)| !((*i < limit && *p == Pending::Sync) || Some(*i) == end))
        .map(|(_, p)| p)
        .collect();
    *pending = kept;
    end.is_none()
}

/// Appends `frame` unchanged.
pub fn forward(frame: &Frame, out: &mut BytesMut) {
    out.put_u8(frame.tag);
    out.put_u32(frame.body.len() as u32 + 4);
    out.extend_from_slice(&frame.body);
}

fn prepare(statement: &Statement, conv: &mut Conversation<'_>, out: &mut BytesMut, swallow: bool) {
    for evicted in conv.prepared.insert(statement.server_name.clone()) {
        messages::close(out, b'S', evicted.as_bytes());
        conv.pending.push_back(Pending::Close {
            swallow: true,
            evicted: Some(evicted),
        });
    }
    messages::parse_raw(
        out,
        statement.server_name.as_bytes(),
        &statement.query,
        &statement.param_types,
    );
    conv.pending.push_back(Pending::Parse {
        name: Some(statement.server_name.clone()),
        swallow,
    });
}

// The path is spelled out because benches/micro_proxy.rs and the transaction_statements
// fuzz target compile this file into themselves with `#[path]`, where a plain
// `mod tests;` would be looked for in transaction/ (rustfmt follows it even unbuilt).
#[cfg(test)]
#[path = "statements/tests.rs"]
mod tests;
