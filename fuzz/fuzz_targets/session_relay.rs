//! Fuzzes the session-mode relay's bookkeeping (`proxy/src/relay/progress.rs`) against
//! a model server: arbitrary sequences of client messages, forwarded and answered in
//! arbitrary interleavings and chunkings, the way `relay.rs` sees them.
//!
//! `relay.rs` moves bytes and hands every whole message to `Progress` (what it knows
//! of the conversation); that module is private to `proxy`, so this target compiles
//! the same source file into itself with `#[path]` (nothing is copied). The client's
//! stream goes through a `wire::scan::Scanner` and `Progress::client_message`, as in
//! `client_to_server`; the model server answers each message once its bytes have been
//! forwarded, following the protocol (simple and extended queries, errors that skip to
//! the next Sync, COPY FROM STDIN from a Query or an Execute, with Sync and Flush
//! ignored inside it, FunctionCall); its answers go through a second scanner and
//! `Progress::server_message`, as in `server_to_client`.
//!
//! Input: pairs of bytes (operation, argument). Operations 0-18 append a client
//! message (the argument sizes its body); 19 forwards some of the client's bytes to the
//! server (even argument) or delivers some of the server's answers to the relay (odd);
//! 255 appends the argument as a raw byte (a broken stream: the scanners must fail
//! cleanly). At the end everything is forwarded and delivered and the client closes.
//!
//! Checks, after every step:
//! - nothing panics, and the scanners hold no bytes (only counters): what the relay
//!   buffers is its fixed read buffer, never sized by the stream;
//! - safety: when `Progress` says the conversation is settled (the only state in
//!   which the relay gives the server connection back for reuse), the model server owes
//!   nothing: no answer still on its way, no extended-protocol batch open, not in COPY;
//! - the transaction status is the last ReadyForQuery's;
//! - a client that closed its side: the relay's server side waits while answers are
//!   owed and ends once they are delivered, and ends at once (unclean) if the server
//!   waits for COPY data. Not checked after a Query or FunctionCall that the server
//!   discarded while skipping to a Sync after an error, or that ended a COPY with an
//!   error (the client broke the protocol): the relay counts an answer that never comes, so it waits for it (as
//!   the client does) until the server connection ends or the tenant's
//!   query_timeout, and never reuses the connection;
//! - liveness for inputs without COPY where the relay's counts are to be trusted (no
//!   `uncertain`: the client kept to the protocol): once every answer is delivered
//!   after a client request that ends a batch (Query, Sync, FunctionCall), the
//!   conversation is settled and no request is running.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::messages::tag;
use wire::scan::Scanner;

#[allow(dead_code)]
#[path = "../../proxy/src/relay/progress.rs"]
mod progress;

use progress::Progress;
use std::sync::atomic::Ordering;

const MAX_FRAME: usize = 1 << 20;

/// What a client message asks of the model server.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Query,
    QueryCopy,
    QueryError,
    Begin,
    Commit,
    Parse,
    ParseError,
    Bind,
    Describe,
    Execute,
    ExecuteCopy,
    ExecuteError,
    Sync,
    Flush,
    Close,
    FunctionCall,
    CopyData,
    CopyDone,
    CopyFail,
}

const KINDS: [Kind; 19] = [
    Kind::Query,
    Kind::QueryCopy,
    Kind::QueryError,
    Kind::Begin,
    Kind::Commit,
    Kind::Parse,
    Kind::ParseError,
    Kind::Bind,
    Kind::Describe,
    Kind::Execute,
    Kind::ExecuteCopy,
    Kind::ExecuteError,
    Kind::Sync,
    Kind::Flush,
    Kind::Close,
    Kind::FunctionCall,
    Kind::CopyData,
    Kind::CopyDone,
    Kind::CopyFail,
];

impl Kind {
    fn tag(self) -> u8 {
        match self {
            Kind::Query | Kind::QueryCopy | Kind::QueryError | Kind::Begin | Kind::Commit => {
                tag::QUERY
            }
            Kind::Parse | Kind::ParseError => b'P',
            Kind::Bind => b'B',
            Kind::Describe => b'D',
            Kind::Execute | Kind::ExecuteCopy | Kind::ExecuteError => b'E',
            Kind::Sync => tag::SYNC,
            Kind::Flush => b'H',
            Kind::Close => b'C',
            Kind::FunctionCall => tag::FUNCTION_CALL,
            Kind::CopyData => tag::COPY_DATA,
            Kind::CopyDone => tag::COPY_DONE,
            Kind::CopyFail => tag::COPY_FAIL,
        }
    }

    fn copies(self) -> bool {
        matches!(
            self,
            Kind::QueryCopy | Kind::ExecuteCopy | Kind::CopyData | Kind::CopyDone | Kind::CopyFail
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Normal,
    /// COPY FROM STDIN started by a Query: its end answers with ReadyForQuery.
    CopySimple,
    /// COPY FROM STDIN started by an Execute: its end waits for the client's Sync.
    CopyExtended,
    /// An extended-protocol error: everything up to the next Sync is discarded.
    SkipToSync,
}

/// Postgres, as far as the protocol goes.
struct Server {
    mode: Mode,
    status: u8,
    /// Extended-protocol messages processed since the last Sync (or Query).
    batch_open: bool,
    /// Answers written, not yet delivered to the relay.
    out: Vec<u8>,
    /// A Query or FunctionCall was discarded while skipping to a Sync, or consumed by
    /// the error it caused during a COPY: the relay counts an answer that never comes
    /// (and so never reuses the connection).
    swallowed: bool,
}

fn message(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(body);
}

impl Server {
    fn say(&mut self, tag: u8) {
        match tag {
            tag::READY_FOR_QUERY => {
                let status = self.status;
                message(&mut self.out, tag, &[status]);
            }
            tag::ERROR_RESPONSE => {
                if self.status == b'T' {
                    self.status = b'E';
                }
                message(&mut self.out, tag, b"SERROR\0C42000\0Mno\0\0");
            }
            tag::COPY_IN_RESPONSE => message(&mut self.out, tag, &[0, 0, 0]),
            tag::COMMAND_COMPLETE => message(&mut self.out, tag, b"SELECT 1\0"),
            _ => message(&mut self.out, tag, &[]),
        }
    }

    fn process(&mut self, kind: Kind) {
        match self.mode {
            Mode::SkipToSync => {
                if matches!(kind.tag(), tag::QUERY | tag::FUNCTION_CALL) {
                    self.swallowed = true;
                }
                if kind == Kind::Sync {
                    self.batch_open = false;
                    self.mode = Mode::Normal;
                    self.say(tag::READY_FOR_QUERY);
                }
            }
            Mode::CopySimple | Mode::CopyExtended => {
                let extended = self.mode == Mode::CopyExtended;
                match kind {
                    Kind::CopyData | Kind::Sync | Kind::Flush => {}
                    Kind::CopyDone => {
                        self.mode = Mode::Normal;
                        self.say(tag::COMMAND_COMPLETE);
                        if !extended {
                            self.say(tag::READY_FOR_QUERY);
                        }
                    }
                    // CopyFail, or any other message: the COPY fails (the message is
                    // consumed by the error). Postgres itself ends the session on a
                    // message other than CopyFail ("protocol synchronization was
                    // lost"); the model goes on, which asks more of the relay.
                    _ => {
                        if matches!(kind.tag(), tag::QUERY | tag::FUNCTION_CALL) {
                            self.swallowed = true;
                        }
                        self.say(tag::ERROR_RESPONSE);
                        if extended {
                            self.mode = Mode::SkipToSync;
                        } else {
                            self.mode = Mode::Normal;
                            self.say(tag::READY_FOR_QUERY);
                        }
                    }
                }
            }
            Mode::Normal => self.normal(kind),
        }
    }

    fn normal(&mut self, kind: Kind) {
        match kind {
            Kind::Query | Kind::Begin | Kind::Commit => {
                self.batch_open = false;
                self.say(tag::COMMAND_COMPLETE);
                match kind {
                    Kind::Begin => self.status = b'T',
                    Kind::Commit => self.status = b'I',
                    _ => {}
                }
                self.say(tag::READY_FOR_QUERY);
            }
            Kind::QueryCopy => {
                self.batch_open = false;
                self.mode = Mode::CopySimple;
                self.say(tag::COPY_IN_RESPONSE);
            }
            Kind::QueryError => {
                self.batch_open = false;
                self.say(tag::ERROR_RESPONSE);
                self.say(tag::READY_FOR_QUERY);
            }
            Kind::FunctionCall => {
                self.batch_open = false;
                self.say(b'V');
                self.say(tag::READY_FOR_QUERY);
            }
            Kind::Sync => {
                self.batch_open = false;
                self.say(tag::READY_FOR_QUERY);
            }
            // Postgres ignores COPY messages outside a COPY.
            Kind::CopyData | Kind::CopyDone | Kind::CopyFail => {}
            Kind::Flush => self.batch_open = true,
            Kind::Parse => self.extended(b'1'),
            Kind::Bind => self.extended(b'2'),
            Kind::Describe => self.extended(b'n'),
            Kind::Close => self.extended(b'3'),
            Kind::Execute => self.extended(tag::COMMAND_COMPLETE),
            Kind::ExecuteCopy => {
                self.batch_open = true;
                self.mode = Mode::CopyExtended;
                self.say(tag::COPY_IN_RESPONSE);
            }
            Kind::ParseError | Kind::ExecuteError => {
                self.batch_open = true;
                self.mode = Mode::SkipToSync;
                self.say(tag::ERROR_RESPONSE);
            }
        }
    }

    fn extended(&mut self, answer: u8) {
        self.batch_open = true;
        self.say(answer);
    }

    /// Owes the client nothing and waits for nothing but its next request.
    fn at_rest(&self) -> bool {
        self.mode == Mode::Normal && !self.batch_open && self.out.is_empty()
    }
}

struct Relay {
    progress: Progress,
    client_scanner: Scanner,
    server_scanner: Scanner,
    /// Nanoseconds on the relay's clock.
    now: u64,
    /// The last ReadyForQuery status delivered.
    last_status: Option<u8>,
}

fuzz_target!(|data: &[u8]| {
    let progress = Progress::default();
    progress.status.store(tag::STATUS_IDLE, Ordering::Release);
    progress.client_boundary.store(true, Ordering::Release);
    let mut relay = Relay {
        progress,
        client_scanner: Scanner::new(MAX_FRAME),
        server_scanner: Scanner::new(MAX_FRAME),
        now: 0,
        last_status: None,
    };
    let mut server = Server {
        mode: Mode::Normal,
        status: tag::STATUS_IDLE,
        batch_open: false,
        out: Vec::new(),
        swallowed: false,
    };
    // The client's bytes not yet forwarded, and the messages they hold (end offset in
    // the whole stream, kind) not yet processed by the server.
    let mut client: Vec<u8> = Vec::new();
    let mut sent = 0usize;
    let mut messages: std::collections::VecDeque<(usize, Option<Kind>)> = Default::default();
    let mut copied = false;
    let mut broken = false;
    // The last client message, to tell when a batch has ended.
    let mut last: Option<Kind> = None;

    for pair in data.chunks_exact(2).take(4096) {
        let (op, arg) = (pair[0], pair[1]);
        if op == 255 {
            client.push(arg);
            messages.push_back((sent + client.len(), None));
            broken = true;
            continue;
        }
        match KINDS.get(usize::from(op % 20)) {
            Some(&kind) => {
                let body = vec![b'x'; usize::from(arg % 32)];
                let mut body = body;
                if matches!(kind.tag(), tag::QUERY | b'P') {
                    body.push(0);
                }
                message(&mut client, kind.tag(), &body);
                messages.push_back((sent + client.len(), Some(kind)));
                copied |= kind.copies();
                last = Some(kind);
            }
            None if arg % 2 == 0 => {
                let n = (usize::from(arg) * 3 + 1).min(client.len());
                if !forward(
                    &mut relay,
                    &mut server,
                    &mut client,
                    &mut messages,
                    &mut sent,
                    n,
                ) {
                    return;
                }
            }
            None => {
                let n = (usize::from(arg) * 3 + 1).min(server.out.len());
                deliver(&mut relay, &mut server, n);
            }
        }
        check(&relay, &server);
    }

    // The end: everything forwarded and answered, then the client closes its side.
    let n = client.len();
    if !forward(
        &mut relay,
        &mut server,
        &mut client,
        &mut messages,
        &mut sent,
        n,
    ) {
        return;
    }
    let n = server.out.len();
    deliver(&mut relay, &mut server, n);
    check(&relay, &server);
    if broken || server.swallowed || !relay.client_scanner.at_boundary() {
        return;
    }
    let p = &relay.progress;
    p.client_done.store(true, Ordering::Release);
    match server.mode {
        // Waiting for COPY data that can no longer come: end now, unclean.
        Mode::CopySimple | Mode::CopyExtended => {
            if !p.uncertain.load(Ordering::Acquire) {
                assert_eq!(
                    p.client_may_go(),
                    Some(false),
                    "the server waits for COPY data"
                );
            }
        }
        // Every answer has been delivered: the server side may end.
        Mode::Normal => {
            assert!(
                p.client_may_go().is_some(),
                "every answer delivered, yet waiting"
            );
        }
        // The server discards everything up to a Sync the client never sent: the
        // relay cannot tell whether the client's last messages were answered, and
        // the connection is never reused.
        Mode::SkipToSync => assert!(!p.settled()),
    }
    if !copied
        && !p.uncertain.load(Ordering::Acquire)
        && server.mode == Mode::Normal
        && matches!(
            last,
            Some(
                Kind::Query
                    | Kind::QueryError
                    | Kind::Begin
                    | Kind::Commit
                    | Kind::Sync
                    | Kind::FunctionCall
            )
        )
    {
        assert!(p.settled(), "answered in full, yet not settled");
        assert!(!p.request_running(), "answered in full, yet running");
    }
});

/// Forwards the next `n` client bytes: the relay scans them (bookkeeping first, as
/// `client_to_server` does before it writes), then the server processes every message
/// now whole. False when the stream is broken (the relay would end the session).
fn forward(
    relay: &mut Relay,
    server: &mut Server,
    client: &mut Vec<u8>,
    messages: &mut std::collections::VecDeque<(usize, Option<Kind>)>,
    sent: &mut usize,
    n: usize,
) -> bool {
    let chunk: Vec<u8> = client.drain(..n).collect();
    relay.now += 1_000;
    let (progress, now) = (&relay.progress, relay.now);
    let scanned = relay.client_scanner.feed(&chunk, |msg, _| {
        if msg != tag::TERMINATE {
            progress.client_message(msg, now);
        }
    });
    if scanned.is_err() {
        return false;
    }
    progress
        .client_boundary
        .store(relay.client_scanner.at_boundary(), Ordering::Release);
    *sent += n;
    while let Some(&(end, kind)) = messages.front() {
        if end > *sent {
            break;
        }
        messages.pop_front();
        match kind {
            Some(kind) => server.process(kind),
            // A raw byte: the server's framing is as broken as the relay's.
            None => return false,
        }
    }
    true
}

/// Delivers the next `n` bytes of the server's answers to the relay.
fn deliver(relay: &mut Relay, server: &mut Server, n: usize) {
    let chunk: Vec<u8> = server.out.drain(..n).collect();
    relay.now += 1_000;
    let (progress, now) = (&relay.progress, relay.now);
    let mut status = relay.last_status;
    let scanned = relay.server_scanner.feed(&chunk, |msg, first| {
        if msg == tag::READY_FOR_QUERY {
            status = first;
        }
        let _ = progress.server_message(msg, first, now);
    });
    relay.last_status = status;
    assert!(
        scanned.is_ok(),
        "the model server's answers are well framed"
    );
}

fn check(relay: &Relay, server: &Server) {
    let p = &relay.progress;
    if let Some(status) = relay.last_status {
        assert_eq!(p.status.load(Ordering::Acquire), status);
    }
    let seen = p.seen_ready.load(Ordering::Acquire);
    let expected = p.expected_ready.load(Ordering::Acquire);
    // Safety: a settled conversation is one the server has finished.
    if p.settled() {
        assert!(
            server.at_rest() && relay.server_scanner.at_boundary(),
            "settled (expected {expected}, seen {seen}) while the server is {:?}, batch open: {}, {} bytes owed",
            server.mode,
            server.batch_open,
            server.out.len()
        );
    }
}
