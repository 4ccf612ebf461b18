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
        self.by_name
            .insert(Bytes::copy_from_slice(p.name), statement.clone());
        if self.by_name.len() > MAX_CLIENT_STATEMENTS {
            let oldest = self
                .by_name
                .iter()
                .min_by_key(|(_, s)| s.used.load(Ordering::Relaxed))
                .map(|(name, _)| name.clone());
            if let Some(oldest) = oldest {
                self.by_name.remove(&oldest);
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
                        self.unnamed = None;
                    } else if kind == b'S' {
                        self.by_name.remove(name);
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
                    self.unnamed = Some(self.statement(&p, Arc::from("")));
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
                    Some(name) => messages::bind_raw(out, b.portal, &name, b.rest),
                    None => forward(frame, out),
                },
                Err(_) => forward(frame, out),
            },
            tag::DESCRIBE => match messages::parse_target(&frame.body) {
                Ok((b'S', name)) => match self.resolve(name, conv, out) {
                    Some(name) => messages::describe(out, b'S', &name),
                    None => forward(frame, out),
                },
                _ => forward(frame, out),
            },
            tag::CLOSE => {
                match messages::parse_target(&frame.body) {
                    Ok((b'S', name)) if !name.is_empty() => match self.by_name.remove(name) {
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
                        self.unnamed = None;
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
                    self.by_name.clear();
                }
                // A simple Query replaces the session's unnamed statement.
                self.unnamed = None;
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

    /// The server name to use for the client's statement `name`, preparing it on this
    /// server first if needed; `None` to forward the message unchanged.
    fn resolve(
        &mut self,
        name: &[u8],
        conv: &mut Conversation<'_>,
        out: &mut BytesMut,
    ) -> Option<Vec<u8>> {
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
                Some(statement.server_name.as_bytes().to_vec())
            }
            // Unknown to Sluice: the server answers "does not exist", as it would.
            None if name.starts_with(PREFIX.as_bytes()) => Some(FOREIGN_NAME.to_vec()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use wire::frame::split_frame;

    fn frames(build: impl FnOnce(&mut BytesMut)) -> Vec<Frame> {
        let mut buf = BytesMut::new();
        build(&mut buf);
        let mut out = Vec::new();
        while let Some(f) = split_frame(&mut buf, 1 << 20).unwrap() {
            out.push(f);
        }
        out
    }

    fn run(
        stmts: &mut ClientStatements,
        prepared: &mut PreparedSet,
        build: impl FnOnce(&mut BytesMut),
    ) -> (Vec<Frame>, Vec<Pending>) {
        let mut pending = VecDeque::new();
        let mut out = BytesMut::new();
        let (mut copy_in, mut unnamed_here) = (false, false);
        let mut conv = Conversation {
            prepared,
            pending: &mut pending,
            copy_in: &mut copy_in,
            unnamed_here: &mut unnamed_here,
        };
        for f in frames(build) {
            stmts.rewrite(&f, &mut conv, &mut out);
        }
        let mut sent = Vec::new();
        while let Some(f) = split_frame(&mut out, 1 << 20).unwrap() {
            sent.push(f);
        }
        (sent, pending.into())
    }

    #[test]
    fn a_statement_follows_the_client_to_another_server() {
        let mut stmts = ClientStatements::new(7);
        let mut first = PreparedSet::new(10);
        let (sent, pending) = run(&mut stmts, &mut first, |o| {
            messages::parse(o, "s1", "select $1", &[23]);
            messages::sync(o);
        });
        assert_eq!(sent[0].tag, b'P');
        assert!(sent[0].body.starts_with(b"sluice_7_1\0select $1\0"));
        assert_eq!(
            pending,
            vec![
                Pending::Parse {
                    name: Some("sluice_7_1".into()),
                    swallow: false
                },
                Pending::Sync
            ]
        );

        // Next transaction on a server that never saw it: Parse is added, answer dropped.
        let mut second = PreparedSet::new(10);
        let (sent, pending) = run(&mut stmts, &mut second, |o| {
            messages::bind_text(o, "", "s1", &[Some(b"1")]);
            messages::execute(o, "", 0);
            messages::sync(o);
        });
        let tags: Vec<u8> = sent.iter().map(|f| f.tag).collect();
        assert_eq!(tags, b"PBES");
        assert!(sent[1].body.starts_with(b"\0sluice_7_1\0"));
        assert_eq!(
            pending[0],
            Pending::Parse {
                name: Some("sluice_7_1".into()),
                swallow: true
            }
        );

        // Same server again: nothing added.
        let (sent, _) = run(&mut stmts, &mut second, |o| {
            messages::bind_text(o, "", "s1", &[Some(b"2")]);
            messages::sync(o);
        });
        assert_eq!(sent.iter().map(|f| f.tag).collect::<Vec<_>>(), b"BS");

        // Close forgets it; a later Bind goes through unchanged (the server will say
        // the statement does not exist, as Postgres would).
        let (sent, _) = run(&mut stmts, &mut second, |o| {
            messages::close(o, b'S', b"s1");
            messages::bind_text(o, "", "s1", &[]);
            messages::sync(o);
        });
        assert!(sent[0].body.starts_with(b"Ssluice_7_1\0"));
        assert!(sent[1].body.starts_with(b"\0s1\0"));
        assert!(stmts.is_empty());
    }

    #[test]
    fn eviction_closes_the_oldest_statement_on_the_server() {
        let mut stmts = ClientStatements::new(1);
        let mut server = PreparedSet::new(1);
        run(&mut stmts, &mut server, |o| {
            messages::parse(o, "a", "select 1", &[])
        });
        let (sent, pending) = run(&mut stmts, &mut server, |o| {
            messages::parse(o, "b", "select 2", &[])
        });
        assert_eq!(sent[0].tag, b'C');
        assert_eq!(
            pending[0],
            Pending::Close {
                swallow: true,
                evicted: Some("sluice_1_1".into())
            }
        );
        assert_eq!(server.len(), 1);
    }

    #[test]
    fn unnamed_statements_and_discard_all() {
        let mut stmts = ClientStatements::new(1);
        let mut server = PreparedSet::new(5);
        let (sent, pending) = run(&mut stmts, &mut server, |o| {
            messages::parse(o, "", "select 1", &[]);
            messages::bind_text(o, "", "", &[]);
            messages::parse(o, "keep", "select 2", &[]);
            messages::query(o, "Discard ALL");
        });
        assert!(sent[0].body.starts_with(b"\0select 1"));
        assert_eq!(
            pending[0],
            Pending::Parse {
                name: None,
                swallow: false
            }
        );
        assert!(stmts.is_empty(), "the client's statements are forgotten");
        assert_eq!(server.len(), 1, "the server's only once it confirms");
        assert!(forgets_all_statements(b"  deallocate   PREPARE all ;\0"));
        assert!(!forgets_all_statements(b"select 'discard all'\0"));
        for yes in [
            &b"DISCARD ALL"[..],
            b"discard all;\0",
            b"Deallocate All ;;\0",
            b"\tdeallocate\nprepare all\0",
        ] {
            assert!(
                forgets_all_statements(yes),
                "{:?}",
                String::from_utf8_lossy(yes)
            );
        }
        for no in [
            &b""[..],
            b"\0",
            b"discard",
            b"discard all now\0",
            b"deallocate prepare\0",
            b"deallocate x\0",
            b"deallocate prepare all more\0",
            b"\xff\xfe all\0",
        ] {
            assert!(
                !forgets_all_statements(no),
                "{:?}",
                String::from_utf8_lossy(no)
            );
        }
        assert!(server_forgot_all(b"DISCARD ALL\0"));
        assert!(!server_forgot_all(b"SELECT 1\0"));
    }

    #[test]
    fn extended_copy_syncs_sent_during_copy_in_get_no_ready_for_query() {
        // B E S d d c S: the first Sync arrives during copy-in and is ignored.
        let mut pending: VecDeque<Pending> = [Pending::Sync, Pending::CopyEnd, Pending::Sync]
            .into_iter()
            .collect();
        assert!(!copy_in_started(&mut pending));
        assert_eq!(Vec::from(pending), vec![Pending::Sync]);
        // CopyInResponse before the client ended the copy: every queued Sync is
        // ignored, and later ones until CopyDone (the caller keeps copy_in set).
        let mut pending: VecDeque<Pending> = [Pending::Sync].into_iter().collect();
        assert!(copy_in_started(&mut pending));
        assert!(pending.is_empty());
        // A simple-query COPY keeps its Query's ReadyForQuery.
        let mut pending: VecDeque<Pending> =
            [Pending::Query, Pending::CopyEnd].into_iter().collect();
        assert!(!copy_in_started(&mut pending));
        assert_eq!(Vec::from(pending), vec![Pending::Query]);
    }

    #[test]
    fn the_unnamed_statement_follows_the_client() {
        let mut stmts = ClientStatements::new(3);
        let mut server = PreparedSet::new(5);
        run(&mut stmts, &mut server, |o| {
            messages::parse(o, "", "select $1", &[]);
            messages::sync(o);
        });
        // Next transaction, another server connection: Bind("") re-prepares it first.
        let (sent, pending) = run(&mut stmts, &mut server, |o| {
            messages::bind_text(o, "", "", &[Some(b"1")]);
            messages::sync(o);
        });
        assert_eq!(sent[0].tag, b'P');
        assert!(sent[0].body.starts_with(b"\0select $1\0"));
        assert_eq!(
            pending[0],
            Pending::Parse {
                name: None,
                swallow: true
            }
        );
    }

    #[test]
    fn a_closed_unnamed_statement_is_not_prepared_again() {
        let mut stmts = ClientStatements::new(3);
        let mut server = PreparedSet::new(5);
        run(&mut stmts, &mut server, |o| {
            messages::parse(o, "", "select $1", &[]);
            messages::sync(o);
        });
        run(&mut stmts, &mut server, |o| {
            messages::close(o, b'S', b"");
            messages::sync(o);
        });
        // On the next server connection Bind("") must fail as it would on Postgres.
        let (sent, _) = run(&mut stmts, &mut server, |o| {
            messages::bind_text(o, "", "", &[Some(b"1")]);
            messages::sync(o);
        });
        let tags: Vec<u8> = sent.iter().map(|f| f.tag).collect();
        assert_eq!(
            tags, b"CBS",
            "the server's unnamed statement closed, not re-prepared"
        );
    }

    #[test]
    fn an_unnamed_statement_the_client_never_made_is_closed_not_used() {
        let mut stmts = ClientStatements::new(3);
        let mut server = PreparedSet::new(5);
        let (sent, pending) = run(&mut stmts, &mut server, |o| {
            messages::bind_text(o, "", "", &[]);
            messages::describe(o, b'S', b"");
            messages::sync(o);
        });
        let tags: Vec<u8> = sent.iter().map(|f| f.tag).collect();
        assert_eq!(
            tags, b"CBDS",
            "one Close of the unnamed statement, then as sent"
        );
        assert_eq!(&sent[0].body[..], b"S\0");
        assert_eq!(
            pending[0],
            Pending::Close {
                swallow: true,
                evicted: None
            }
        );
    }

    #[test]
    fn names_in_sluices_namespace_cannot_reach_other_clients() {
        let mut stmts = ClientStatements::new(3);
        let mut server = PreparedSet::new(5);
        server.insert("sluice_8_1".into());
        let (sent, _) = run(&mut stmts, &mut server, |o| {
            messages::bind_text(o, "", "sluice_8_1", &[]);
            messages::close(o, b'S', b"sluice_8_1");
        });
        assert!(sent[0].body.starts_with(b"\0sluice_unknown\0"));
        assert!(sent[1].body.starts_with(b"Ssluice_unknown\0"));
    }

    #[test]
    fn a_client_cannot_hold_statements_without_bound() {
        let mut stmts = ClientStatements::new(1);
        let mut to_client = BytesMut::new();
        for i in 0..MAX_CLIENT_STATEMENTS + 50 {
            let mut buf = BytesMut::new();
            messages::parse(&mut buf, &format!("s{i}"), "select 1", &[]);
            let frame = split_frame(&mut buf, 1 << 20).unwrap().unwrap();
            assert!(stmts.answer_locally(&frame, &mut to_client));
        }
        assert_eq!(stmts.by_name.len(), MAX_CLIENT_STATEMENTS);
        assert!(
            !stmts.by_name.contains_key(&b"s0"[..]),
            "the oldest went first"
        );
    }
}
