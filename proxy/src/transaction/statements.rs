//! Prepared statements in transaction mode: a client's statement names are mapped to
//! server-unique names, and every message that names a statement is rewritten so the
//! statement exists on whichever server connection the client has right now.
//!
//! Responses come back in request order, so Sluice keeps a queue of what it expects
//! (`Pending`) to drop the ParseComplete/CloseComplete answers to messages it added
//! itself, and to learn which statements the server really holds.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use pooler::PreparedSet;
use wire::frame::Frame;
use wire::messages::{self, tag};

/// A statement as the client prepared it.
#[derive(Debug)]
pub struct Statement {
    pub server_name: Arc<str>,
    query: Bytes,
    param_types: Bytes,
}

/// What a response in the server's stream belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pending {
    /// A Parse; `name` is the server name (None: unnamed); `swallow` when Sluice added it.
    Parse {
        name: Option<Arc<str>>,
        swallow: bool,
    },
    Close {
        swallow: bool,
    },
    /// A message that ends in ReadyForQuery (Sync, Query, FunctionCall).
    Ready,
}

/// A client's statements, by the names it uses.
#[derive(Debug)]
pub struct ClientStatements {
    prefix: String,
    next: u64,
    by_name: HashMap<Bytes, Arc<Statement>>,
}

/// Whether a Query body is exactly `DISCARD ALL` or `DEALLOCATE [PREPARE] ALL` (case,
/// spacing and a trailing semicolon aside): the client asks to forget its statements.
fn forgets_all_statements(query_body: &[u8]) -> bool {
    let text = query_body.strip_suffix(&[0]).unwrap_or(query_body);
    let words: Vec<String> = String::from_utf8_lossy(text)
        .trim()
        .trim_end_matches(';')
        .split_ascii_whitespace()
        .map(str::to_ascii_lowercase)
        .collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    matches!(
        words.as_slice(),
        ["discard", "all"] | ["deallocate", "all"] | ["deallocate", "prepare", "all"]
    )
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
            prefix: format!("sluice_{client_id}_"),
            next: 0,
            by_name: HashMap::new(),
        }
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Records a named statement under a fresh server name.
    fn define(&mut self, frame: &Frame, p: &messages::ParseView<'_>) -> Arc<Statement> {
        self.next += 1;
        let statement = Arc::new(Statement {
            server_name: format!("{}{}", self.prefix, self.next).into(),
            query: frame.body.slice_ref(p.query),
            param_types: frame.body.slice_ref(p.param_types),
        });
        self.by_name
            .insert(frame.body.slice_ref(p.name), statement.clone());
        statement
    }

    /// Answers, without a server, what a client outside a transaction can be answered
    /// locally: a named Parse is recorded (it is prepared on a server at first use), a
    /// Close forgets, a Sync reports idle. Returns false for anything that needs a
    /// server. This is what lets a client prepare statements while every server
    /// connection is busy (pgbench -M prepared prepares synchronously).
    ///
    /// The price: a Parse with an error is reported at first use, not at Parse.
    pub fn answer_locally(&mut self, frame: &Frame, to_client: &mut BytesMut) -> bool {
        match frame.tag {
            tag::PARSE => match messages::parse_parse(&frame.body) {
                Ok(p) if !p.name.is_empty() => {
                    self.define(frame, &p);
                    messages::parse_complete(to_client);
                    true
                }
                _ => false,
            },
            tag::CLOSE => match messages::parse_target(&frame.body) {
                Ok((kind, name)) => {
                    if kind == b'S' {
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
            tag::FLUSH => true,
            _ => false,
        }
    }

    /// Rewrites one client message into `out` for a server holding `prepared`, and
    /// records what its responses will be in `pending`. Malformed messages are
    /// forwarded untouched: the server rejects them with its own error.
    pub fn rewrite(
        &mut self,
        frame: &Frame,
        prepared: &mut PreparedSet,
        pending: &mut VecDeque<Pending>,
        out: &mut BytesMut,
    ) {
        match frame.tag {
            tag::PARSE => match messages::parse_parse(&frame.body) {
                Ok(p) if !p.name.is_empty() => {
                    let statement = self.define(frame, &p);
                    prepare(&statement, prepared, pending, out, false);
                }
                _ => {
                    pending.push_back(Pending::Parse {
                        name: None,
                        swallow: false,
                    });
                    forward(frame, out);
                }
            },
            tag::BIND => match messages::parse_bind(&frame.body) {
                Ok(b) if !b.statement.is_empty() => match self.by_name.get(b.statement) {
                    Some(statement) => {
                        ensure(statement, prepared, pending, out);
                        messages::bind_raw(out, b.portal, statement.server_name.as_bytes(), b.rest);
                    }
                    // Unknown to Sluice: the server answers "does not exist" as it would.
                    None => forward(frame, out),
                },
                _ => forward(frame, out),
            },
            tag::DESCRIBE => match messages::parse_target(&frame.body) {
                Ok((b'S', name)) if !name.is_empty() => match self.by_name.get(name) {
                    Some(statement) => {
                        ensure(statement, prepared, pending, out);
                        messages::describe(out, b'S', statement.server_name.as_bytes());
                    }
                    None => forward(frame, out),
                },
                _ => forward(frame, out),
            },
            tag::CLOSE => {
                match messages::parse_target(&frame.body) {
                    Ok((b'S', name)) if !name.is_empty() => match self.by_name.remove(name) {
                        Some(statement) => {
                            prepared.remove(&statement.server_name);
                            messages::close(out, b'S', statement.server_name.as_bytes());
                        }
                        None => forward(frame, out),
                    },
                    _ => forward(frame, out),
                }
                pending.push_back(Pending::Close { swallow: false });
            }
            tag::QUERY => {
                // The client asked to forget its statements. What the server forgets
                // is learned from its CommandComplete (the command can fail).
                if forgets_all_statements(&frame.body) {
                    self.by_name.clear();
                }
                pending.push_back(Pending::Ready);
                forward(frame, out);
            }
            tag::SYNC | tag::FUNCTION_CALL => {
                pending.push_back(Pending::Ready);
                forward(frame, out);
            }
            _ => forward(frame, out),
        }
    }
}

/// Appends `frame` unchanged.
pub fn forward(frame: &Frame, out: &mut BytesMut) {
    out.put_u8(frame.tag);
    out.put_u32(frame.body.len() as u32 + 4);
    out.extend_from_slice(&frame.body);
}

/// Makes sure the server holds `statement`, adding a Parse (whose answer is dropped)
/// if it does not.
fn ensure(
    statement: &Statement,
    prepared: &mut PreparedSet,
    pending: &mut VecDeque<Pending>,
    out: &mut BytesMut,
) {
    if !prepared.touch(&statement.server_name) {
        prepare(statement, prepared, pending, out, true);
    }
}

fn prepare(
    statement: &Statement,
    prepared: &mut PreparedSet,
    pending: &mut VecDeque<Pending>,
    out: &mut BytesMut,
    swallow: bool,
) {
    for evicted in prepared.insert(statement.server_name.clone()) {
        messages::close(out, b'S', evicted.as_bytes());
        pending.push_back(Pending::Close { swallow: true });
    }
    messages::parse_raw(
        out,
        statement.server_name.as_bytes(),
        &statement.query,
        &statement.param_types,
    );
    pending.push_back(Pending::Parse {
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
        for f in frames(build) {
            stmts.rewrite(&f, prepared, &mut pending, &mut out);
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
                Pending::Ready
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
        assert_eq!(pending[0], Pending::Close { swallow: true });
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
        assert!(server_forgot_all(b"DISCARD ALL\0"));
        assert!(!server_forgot_all(b"SELECT 1\0"));
    }
}
