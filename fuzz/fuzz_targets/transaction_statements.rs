//! Fuzzes transaction-mode statement tracking (`proxy/src/transaction/statements.rs`)
//! with arbitrary client message streams, one or two clients taking turns on one to
//! three simulated server connections.
//!
//! That module is private to `proxy` (`mod statements;` in `transaction.rs`), so this
//! target compiles the same source file into itself with `#[path]` (nothing is
//! copied); it needs only `bytes`, `pooler::PreparedSet` and `wire`.
//!
//! Input: a flags byte (bits 0-1: each server's `max_prepared_statements` - 1, so
//! evictions happen; bit 2: two clients; bits 3-4: extra servers; bit 5: messages are
//! "too large to hold"), then the client stream. With bit 5, a Query, FunctionCall,
//! CopyData or Bind with a body over 16 bytes goes through `stream_head` as the relay
//! streams a message over `max_client_message_buffer`: first with a head cut short by
//! the input (a Bind whose names are not all there must wait), then whole; what it
//! writes followed by the rest of the body is what the server gets, and must pass the
//! same checks. Each message goes through `answer_locally` while the client holds no server,
//! else (or when that declines) through `rewrite` on the server attached for it. After
//! each Sync, Query or FunctionCall the server is given back (as at ReadyForQuery 'I')
//! and the other client, if any, goes next; each attach takes a server in turn, shifted
//! by the length of the message that needs it (so the input decides who meets whom).
//!
//! The simulated servers follow the protocol only (no SQL: a `DEALLOCATE` in a query is
//! not modelled) and never fail. Checks, on everything Sluice sends a server:
//! - it is whole messages;
//! - isolation: a statement name starting with `sluice_` is this client's own
//!   (`sluice_<its id>_…`) or `sluice_unknown`, except in a Close that Sluice added to
//!   evict a statement from the connection's cache (its `Pending` says so); a named
//!   Parse always gets this client's prefix;
//! - a Parse never names a statement the server already has (Postgres would refuse
//!   it), and a Bind or Describe of one of Sluice's names finds it on that server; the
//!   unnamed statement a client Binds is its own, or none at all;
//! - the queue of expected answers (`Pending`) matches the messages sent, in order;
//! - what `answer_locally` answers is exactly one ParseComplete, CloseComplete or
//!   ReadyForQuery 'I' where those are due, and nothing when it declines;
//! - the statement text kept for a client (`held_bytes`, what its memory grant is
//!   charged) never exceeds what its Parse messages carried, and is nothing once it
//!   ran `DISCARD ALL`.
#![no_main]

use std::collections::{HashSet, VecDeque};

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pooler::PreparedSet;
use wire::frame::{split_frame, Frame};
use wire::messages::{self, tag};

#[allow(dead_code)]
#[path = "../../proxy/src/transaction/statements.rs"]
mod statements;

use statements::{ClientStatements, Conversation, Pending};

const MAX_FRAME: usize = 1 << 20;

struct Server {
    prepared: PreparedSet,
    /// Named statements the server holds, by what it was sent.
    statements: HashSet<Vec<u8>>,
    /// The client whose unnamed statement the server holds.
    unnamed_owner: Option<usize>,
}

struct Attached {
    server: usize,
    pending: VecDeque<Pending>,
    copy_in: bool,
    unnamed_here: bool,
    /// The answers the messages sent so far are owed.
    expected: Vec<Pending>,
}

struct Client {
    statements: ClientStatements,
    prefix: Vec<u8>,
    /// The client has an unnamed statement (an unnamed Parse since its last Query).
    has_unnamed: bool,
    attached: Option<Attached>,
}

fn frames(mut buf: BytesMut) -> Vec<Frame> {
    let mut out = Vec::new();
    loop {
        match split_frame(&mut buf, MAX_FRAME) {
            Ok(Some(frame)) => out.push(frame),
            Ok(None) => {
                assert!(buf.is_empty(), "Sluice sent a partial message");
                return out;
            }
            Err(e) => panic!("Sluice sent a bad frame: {e}"),
        }
    }
}

/// Whether `name` is one of Sluice's names for another client's statement.
fn is_foreign(name: &[u8], prefix: &[u8]) -> bool {
    name.starts_with(b"sluice_") && name != b"sluice_unknown" && !name.starts_with(prefix)
}

/// Checks a statement name a client's message reaches the server with.
fn check_isolation(name: &[u8], prefix: &[u8]) {
    assert!(
        !is_foreign(name, prefix),
        "{:?} reached a statement of another client: {:?}",
        String::from_utf8_lossy(prefix),
        String::from_utf8_lossy(name)
    );
}

/// A Bind or Describe of statement `name` must find it on the server.
fn check_use(name: &[u8], me: usize, client: &Client, server: &Server) {
    check_isolation(name, &client.prefix);
    if name.is_empty() {
        if client.has_unnamed {
            assert_eq!(
                server.unnamed_owner,
                Some(me),
                "another client's unnamed statement"
            );
        } else {
            assert!(
                server.unnamed_owner.is_none_or(|owner| owner == me),
                "a client without an unnamed statement reached another client's"
            );
        }
    } else if name.starts_with(&client.prefix) {
        assert!(
            server.statements.contains(name),
            "{:?} used on a server that does not hold it",
            String::from_utf8_lossy(name)
        );
    }
}

/// Follows what Sluice sent to the attached server and what answers it now expects.
fn follow(sent: BytesMut, me: usize, client: &Client, server: &mut Server, att: &mut Attached) {
    for f in frames(sent) {
        match f.tag {
            tag::PARSE => {
                if let Ok(p) = messages::parse_parse(&f.body) {
                    let name = if p.name.is_empty() {
                        server.unnamed_owner = Some(me);
                        None
                    } else {
                        assert!(
                            p.name.starts_with(&client.prefix),
                            "a named Parse kept its name"
                        );
                        assert!(
                            server.statements.insert(p.name.to_vec()),
                            "Parse of a statement the server already holds"
                        );
                        Some(std::str::from_utf8(p.name).expect("Sluice's names").into())
                    };
                    att.expected.push(Pending::Parse {
                        name,
                        swallow: false,
                    });
                }
            }
            tag::BIND => {
                if let Ok(b) = messages::parse_bind(&f.body) {
                    check_use(b.statement, me, client, server);
                }
            }
            tag::DESCRIBE => {
                if let Ok((b'S', name)) = messages::parse_target(&f.body) {
                    check_use(name, me, client, server);
                }
            }
            tag::CLOSE => {
                let mut evicted = None;
                if let Ok((b'S', name)) = messages::parse_target(&f.body) {
                    if is_foreign(name, &client.prefix) {
                        // Only Sluice's own eviction from the connection's statement
                        // cache may close another client's statement.
                        evicted = Some(std::str::from_utf8(name).expect("Sluice's names").into());
                    }
                    server.statements.remove(name);
                    if name.is_empty() {
                        server.unnamed_owner = None;
                    }
                }
                att.expected.push(Pending::Close {
                    swallow: evicted.is_some(),
                    evicted,
                });
            }
            tag::SYNC if !att.copy_in => att.expected.push(Pending::Sync),
            tag::QUERY => {
                // A simple Query destroys the unnamed statement.
                server.unnamed_owner = None;
                att.expected.push(Pending::Query);
            }
            tag::FUNCTION_CALL => att.expected.push(Pending::Query),
            tag::COPY_DONE | tag::COPY_FAIL if !att.copy_in => att.expected.push(Pending::CopyEnd),
            _ => {}
        }
    }
    // The queue, in order: the message kinds, the prepared names, and for a Close of
    // another client's statement that it is an eviction. (Whether a Parse or a Close of
    // this client's own statements was added by Sluice cannot be told from the wire.)
    let kinds = |p: &Pending| match p {
        Pending::Parse { name, .. } => (0, name.clone()),
        Pending::Close {
            evicted: Some(name),
            swallow: true,
        } if is_foreign(name.as_bytes(), &client.prefix) => (1, Some(name.clone())),
        Pending::Close { .. } => (1, None),
        Pending::Sync => (2, None),
        Pending::Query => (3, None),
        Pending::CopyEnd => (4, None),
    };
    let queued: Vec<_> = att.pending.iter().map(kinds).collect();
    let expected: Vec<_> = att.expected.iter().map(kinds).collect();
    assert_eq!(
        queued, expected,
        "the answers expected do not match what was sent"
    );
}

/// What `answer_locally` must have answered to `frame`.
fn check_local(frame: &Frame, answered: bool, local: BytesMut) {
    let got: Vec<(u8, Vec<u8>)> = frames(local)
        .into_iter()
        .map(|f| (f.tag, f.body.to_vec()))
        .collect();
    if !answered {
        assert!(got.is_empty(), "declined, but answered");
        return;
    }
    let want: Vec<(u8, Vec<u8>)> = match frame.tag {
        tag::PARSE => vec![(b'1', vec![])],
        tag::CLOSE => vec![(b'3', vec![])],
        tag::SYNC => vec![(b'Z', vec![tag::STATUS_IDLE])],
        tag::FLUSH | tag::COPY_DATA | tag::COPY_DONE | tag::COPY_FAIL => vec![],
        other => panic!("answered a {:?} without a server", other as char),
    };
    assert_eq!(got, want);
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, stream)) = data.split_first() else {
        return;
    };
    let capacity = usize::from(flags & 3) + 1;
    let n_clients = 1 + usize::from(flags >> 2 & 1);
    let n_servers = 1 + usize::from(flags >> 3 & 1) + usize::from(flags >> 4 & 1);
    let streamed = flags >> 5 & 1 == 1;
    let mut parsed_bytes = vec![0usize; n_clients];

    let mut servers: Vec<Server> = (0..n_servers)
        .map(|_| Server {
            prepared: PreparedSet::new(capacity),
            statements: HashSet::new(),
            unnamed_owner: None,
        })
        .collect();
    let mut clients: Vec<Client> = (1..=n_clients as u64)
        .map(|id| Client {
            statements: ClientStatements::new(id),
            prefix: format!("sluice_{id}_").into_bytes(),
            has_unnamed: false,
            attached: None,
        })
        .collect();
    let (mut me, mut attaches) = (0usize, 0usize);

    for frame in frames_of_input(stream) {
        let client = &mut clients[me];
        if frame.tag == tag::PARSE {
            // Its text and parameter types, and a server name of at most
            // `sluice_<u64>_<u64>`.
            parsed_bytes[me] += frame.body.len() + 48;
        }
        if client.attached.is_none() {
            let mut local = BytesMut::new();
            let answered = client.statements.answer_locally(&frame, &mut local);
            check_local(&frame, answered, local);
            if answered {
                continue;
            }
            client.attached = Some(Attached {
                // Which server: in turn, shifted by the input so clients meet.
                server: (attaches + frame.body.len()) % n_servers,
                pending: VecDeque::new(),
                copy_in: false,
                unnamed_here: false,
                expected: Vec::new(),
            });
            attaches += 1;
        }
        let mut att = client.attached.take().expect("attached above");
        let server = &mut servers[att.server];
        let mut sent = BytesMut::new();
        let mut conv = Conversation {
            prepared: &mut server.prepared,
            pending: &mut att.pending,
            copy_in: &mut att.copy_in,
            unnamed_here: &mut att.unnamed_here,
        };
        let streamable = matches!(
            frame.tag,
            tag::QUERY | tag::FUNCTION_CALL | tag::COPY_DATA | tag::BIND
        );
        if streamed && streamable && frame.body.len() > 16 {
            let body = &frame.body;
            let cut = usize::from(body[0]) % body.len();
            let statements = &mut client.statements;
            let head =
                statements.stream_head(frame.tag, body.len(), &body[..cut], &mut conv, &mut sent);
            let replaced = match head {
                Some(replaced) => Some(replaced),
                None => {
                    assert!(sent.is_empty(), "wrote something for an incomplete head");
                    assert_eq!(frame.tag, tag::BIND, "only a Bind waits for its head");
                    // A Bind without both names is refused by the relay (54000).
                    statements.stream_head(frame.tag, body.len(), body, &mut conv, &mut sent)
                }
            };
            if let Some(replaced) = replaced {
                sent.extend_from_slice(&body[replaced..]);
            }
        } else {
            client.statements.rewrite(&frame, &mut conv, &mut sent);
        }
        match frame.tag {
            tag::PARSE => {
                if let Ok(p) = messages::parse_parse(&frame.body) {
                    client.has_unnamed |= p.name.is_empty();
                }
            }
            tag::QUERY => client.has_unnamed = false,
            _ => {}
        }
        assert!(
            client.statements.held_bytes() <= parsed_bytes[me],
            "more statement text kept than was sent"
        );
        if frame.tag == tag::QUERY && frame.body.eq_ignore_ascii_case(b"discard all\0") {
            assert_eq!(client.statements.held_bytes(), 0, "DISCARD ALL kept text");
        }
        follow(sent, me, client, server, &mut att);
        if matches!(frame.tag, tag::SYNC | tag::QUERY | tag::FUNCTION_CALL) {
            // ReadyForQuery 'I': the server goes back, the next client's turn.
            me = (me + 1) % n_clients;
        } else {
            client.attached = Some(att);
        }
    }
});

/// The whole messages at the front of the input (what a client relay would read).
fn frames_of_input(stream: &[u8]) -> Vec<Frame> {
    let mut buf = BytesMut::from(stream);
    let mut out = Vec::new();
    while let Ok(Some(frame)) = split_frame(&mut buf, MAX_FRAME) {
        out.push(frame);
    }
    out
}
