//! Allocation test (no timing): the per-message work of the transaction-mode relay
//! that is plain code allocates nothing once warm. A counting global allocator
//! (`stats_alloc`, which wraps the system allocator) counts every allocation of this
//! process; each case replays pgbench's requests (`-M simple`, `extended`, `prepared`)
//! as the relay handles them, many times after a warm-up, and asserts that not one
//! allocation, reallocation or free happened:
//!
//! - the client's bytes appended to one read buffer and split into frames
//!   (`wire::frame::split_frame`), as `transaction.rs` reads them;
//! - the session-state check of every Query and Parse text
//!   (`proxy::session_state::effects`);
//! - statement rewriting into the batch for the server (`ClientStatements::rewrite`,
//!   `proxy/src/transaction/statements.rs`, compiled in here with `#[path]` as
//!   benches/micro_proxy.rs does) and the queue of expected answers;
//! - the server's answers split off its read buffer, the queue emptied at each
//!   ReadyForQuery, and the pool's counters (`pooler::PoolStats`).
//!
//! Its own `main` (`harness = false`): libtest's threads would allocate beside it.
//! The socket I/O, the runtime and the pool (checkout and release, once per
//! transaction) are not in here; `cargo bench --bench callgrind` counts the
//! allocations of the whole process per transaction (benches/README.md).

use std::collections::VecDeque;
use std::hint::black_box;

use bytes::BytesMut;
use pooler::{PoolStats, PreparedSet};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use wire::frame::{split_frame, DEFAULT_MAX_FRAME_LEN};
use wire::messages::{self, tag};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

#[allow(dead_code)]
#[path = "../proxy/src/transaction/statements.rs"]
mod statements;

use statements::{ClientStatements, Conversation, Pending};

const SELECT: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";

/// Rounds before counting, and rounds counted.
const WARM_UP: usize = 100;
const ROUNDS: usize = 10_000;

/// One client and the server connection it holds, as the relay keeps them.
struct Relay {
    client: ClientStatements,
    prepared: PreparedSet,
    pending: VecDeque<Pending>,
    copy_in: bool,
    unnamed_here: bool,
    /// The client's read buffer, the batch for the server, the server's read buffer.
    cbuf: BytesMut,
    out: BytesMut,
    sbuf: BytesMut,
    stats: PoolStats,
    messages: u64,
}

impl Relay {
    fn new() -> Self {
        Relay {
            client: ClientStatements::new(7),
            prepared: PreparedSet::new(200),
            pending: VecDeque::new(),
            copy_in: false,
            unnamed_here: false,
            cbuf: BytesMut::with_capacity(512),
            out: BytesMut::with_capacity(1024),
            sbuf: BytesMut::with_capacity(16 * 1024),
            stats: PoolStats::default(),
            messages: 0,
        }
    }

    /// One request: the client's bytes read, split, checked and rewritten into the
    /// batch; the server's answer read, split and counted, its ReadyForQuery ending
    /// what was pending.
    fn round(&mut self, request: &[u8], answer: &[u8]) {
        self.cbuf.reserve(512);
        self.cbuf.extend_from_slice(request);
        while let Some(frame) = split_frame(&mut self.cbuf, DEFAULT_MAX_FRAME_LEN).unwrap() {
            self.messages += 1;
            let sql = match frame.tag {
                tag::QUERY => Some(frame.body.strip_suffix(&[0]).unwrap_or(&frame.body)),
                tag::PARSE => messages::parse_parse(&frame.body).ok().map(|p| p.query),
                _ => None,
            };
            if let Some(sql) = sql {
                let sql = String::from_utf8_lossy(sql);
                assert!(proxy::session_state::effects(&sql).is_empty());
            }
            self.stats.client_message(frame.tag);
            let mut conv = Conversation {
                prepared: &mut self.prepared,
                pending: &mut self.pending,
                copy_in: &mut self.copy_in,
                unnamed_here: &mut self.unnamed_here,
            };
            self.client.rewrite(&frame, &mut conv, &mut self.out);
        }
        black_box(&self.out);
        self.out.clear();
        self.sbuf.extend_from_slice(answer);
        while let Some(frame) = split_frame(&mut self.sbuf, DEFAULT_MAX_FRAME_LEN).unwrap() {
            self.messages += 1;
            self.stats
                .server_message(frame.tag, frame.body.first().copied());
            match frame.tag {
                tag::READY_FOR_QUERY => {
                    while let Some(p) = self.pending.pop_front() {
                        if p.is_ready() {
                            break;
                        }
                    }
                }
                tag::PARSE_COMPLETE | tag::CLOSE_COMPLETE => {
                    self.pending.pop_front();
                }
                _ => {}
            }
        }
        self.sbuf.reserve(16 * 1024);
    }
}

/// Runs `request`/`answer` rounds and returns the allocations, reallocations and
/// frees counted during the counted ones, and the messages they handled.
fn count(setup: &[u8], request: &[u8], answer: &[u8]) -> (usize, usize, usize, u64) {
    let mut relay = Relay::new();
    let mut local = BytesMut::new();
    // `-M prepared`: the named Parse before the first transaction, answered locally.
    let mut setup = BytesMut::from(setup);
    while let Some(frame) = split_frame(&mut setup, DEFAULT_MAX_FRAME_LEN).unwrap() {
        assert!(relay.client.answer_locally(&frame, &mut local));
    }
    for _ in 0..WARM_UP {
        relay.round(request, answer);
    }
    let before = relay.messages;
    let region = Region::new(GLOBAL);
    for _ in 0..ROUNDS {
        relay.round(request, answer);
    }
    let change = region.change();
    (
        change.allocations,
        change.reallocations,
        change.deallocations,
        relay.messages - before,
    )
}

fn build(f: impl FnOnce(&mut BytesMut)) -> Vec<u8> {
    let mut b = BytesMut::new();
    f(&mut b);
    b.to_vec()
}

fn main() {
    let row = build(|o| {
        messages::row_description(o, &["abalance"]);
        messages::data_row(o, &[Some("0")]);
        messages::command_complete(o, "SELECT 1");
        messages::ready_for_query(o, tag::STATUS_IDLE);
    });
    let extended_row = build(|o| {
        messages::parse_complete(o);
        o.extend_from_slice(&[tag::BIND_COMPLETE, 0, 0, 0, 4]);
        messages::row_description(o, &["abalance"]);
        messages::data_row(o, &[Some("0")]);
        messages::command_complete(o, "SELECT 1");
        messages::ready_for_query(o, tag::STATUS_IDLE);
    });
    let prepared_row = build(|o| {
        o.extend_from_slice(&[tag::BIND_COMPLETE, 0, 0, 0, 4]);
        messages::data_row(o, &[Some("0")]);
        messages::command_complete(o, "SELECT 1");
        messages::ready_for_query(o, tag::STATUS_IDLE);
    });
    let simple =
        build(|o| messages::query(o, "SELECT abalance FROM pgbench_accounts WHERE aid = 4711;"));
    let extended = build(|o| {
        messages::parse(o, "", SELECT, &[]);
        messages::bind_text(o, "", "", &[Some(b"4711")]);
        messages::describe_portal(o, "");
        messages::execute(o, "", 0);
        messages::sync(o);
    });
    let prepare = build(|o| messages::parse(o, "P_0", SELECT, &[]));
    let prepared = build(|o| {
        messages::bind_text(o, "", "P_0", &[Some(b"4711")]);
        messages::execute(o, "", 0);
        messages::sync(o);
    });

    let mut failed = Vec::new();
    for (name, setup, request, answer) in [
        ("simple", &[][..], &simple, &row),
        ("extended", &[][..], &extended, &extended_row),
        ("prepared", &prepare[..], &prepared, &prepared_row),
    ] {
        let (allocations, reallocations, frees, messages) = count(setup, request, answer);
        println!(
            "hot_path_allocations: -M {name}: {messages} messages, {allocations} allocations, \
             {reallocations} reallocations, {frees} frees"
        );
        if allocations + reallocations + frees > 0 {
            failed.push(name);
        }
    }
    assert!(
        failed.is_empty(),
        "the relay's per-message work allocated for {failed:?}"
    );
    println!("hot_path_allocations: 3 passed, 0 failed");
}
