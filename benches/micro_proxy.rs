//! Micro-benchmarks of transaction-mode statement tracking: the per-message work of
//! `proxy/src/transaction/statements.rs` (mapping a client's statement names to
//! server names, re-preparing a statement on a server connection that lacks it, and
//! queueing the answers to expect); and of `proxy::session_state::effects`, the look
//! at every Query and Parse text for session state.
//!
//! That module is private to `proxy` (`mod statements;` in `transaction.rs`), so this
//! bench compiles the very same source file into itself with `#[path]` rather than
//! copying it; it depends only on `bytes`, `pooler::PreparedSet` and `wire`. If
//! `proxy` exports the module one day, replace the `#[path]` item with a `use`.
//!
//! Run with `cargo bench --bench micro_proxy`; see benches/README.md.

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::Duration;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pooler::PreparedSet;
use wire::frame::{split_frame, Frame, DEFAULT_MAX_FRAME_LEN};
use wire::messages;

#[allow(dead_code)]
#[path = "../proxy/src/transaction/statements.rs"]
mod statements;

use statements::{ClientStatements, Conversation, Pending};

/// The frames a builder appends.
fn frames(build: impl FnOnce(&mut BytesMut)) -> Vec<Frame> {
    let mut buf = BytesMut::new();
    build(&mut buf);
    let mut out = Vec::new();
    while let Some(frame) = split_frame(&mut buf, DEFAULT_MAX_FRAME_LEN).unwrap() {
        out.push(frame);
    }
    out
}

const SELECT: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";

/// One attached server connection's state, as `transaction.rs` keeps it.
struct Server {
    prepared: PreparedSet,
    pending: VecDeque<Pending>,
    copy_in: bool,
    unnamed_here: bool,
    out: BytesMut,
}

impl Server {
    fn new() -> Self {
        Server {
            prepared: PreparedSet::new(200),
            pending: VecDeque::new(),
            copy_in: false,
            unnamed_here: false,
            out: BytesMut::with_capacity(16 * 1024),
        }
    }

    /// Rewrites `batch` for this server, then forgets the output and the expected
    /// answers (the server would have consumed and answered them).
    fn send(&mut self, client: &mut ClientStatements, batch: &[Frame]) {
        let mut conv = Conversation {
            prepared: &mut self.prepared,
            pending: &mut self.pending,
            copy_in: &mut self.copy_in,
            unnamed_here: &mut self.unnamed_here,
        };
        for frame in batch {
            client.rewrite(frame, &mut conv, &mut self.out);
        }
        black_box(&self.out);
        self.out.clear();
        self.pending.clear();
    }
}

fn bench_statements(c: &mut Criterion) {
    let parse = frames(|o| messages::parse(o, "P_0", SELECT, &[23]));
    let execute = frames(|o| {
        messages::bind_text(o, "", "P_0", &[Some(b"4711")]);
        messages::execute(o, "", 0);
        messages::sync(o);
    });
    let unnamed = frames(|o| {
        messages::parse(o, "", SELECT, &[23]);
        messages::bind_text(o, "", "", &[Some(b"4711")]);
        messages::describe_portal(o, "");
        messages::execute(o, "", 0);
        messages::sync(o);
    });
    let simple =
        frames(|o| messages::query(o, "SELECT abalance FROM pgbench_accounts WHERE aid = 4711;"));

    let mut group = c.benchmark_group("statements");

    // `pgbench -M prepared` in steady state: Bind/Execute/Sync of a statement the
    // attached server connection already holds.
    group.throughput(Throughput::Elements(execute.len() as u64));
    group.bench_function("prepared_on_server", |b| {
        let mut client = ClientStatements::new(1);
        let mut server = Server::new();
        server.send(&mut client, &parse);
        b.iter(|| server.send(&mut client, &execute))
    });
    // The same on a server connection that lacks the statement (the client moved to
    // another connection): a Parse is put before the Bind.
    group.bench_function("prepared_reprepare", |b| {
        let mut client = ClientStatements::new(1);
        let mut server = Server::new();
        server.send(&mut client, &parse);
        b.iter(|| {
            server.prepared.clear();
            server.send(&mut client, &execute)
        })
    });
    // Extended protocol with the unnamed statement (most drivers' default):
    // Parse/Bind/Describe/Execute/Sync.
    group.throughput(Throughput::Elements(unnamed.len() as u64));
    group.bench_function("unnamed_extended", |b| {
        let mut client = ClientStatements::new(1);
        let mut server = Server::new();
        b.iter(|| server.send(&mut client, &unnamed))
    });
    // A simple Query (checked for DISCARD ALL / DEALLOCATE ALL).
    group.throughput(Throughput::Elements(1));
    group.bench_function("simple_query", |b| {
        let mut client = ClientStatements::new(1);
        let mut server = Server::new();
        b.iter(|| server.send(&mut client, &simple))
    });
    // A named Parse answered by Sluice outside a transaction (recorded, prepared on a
    // server at first use).
    group.bench_function("parse_answered_locally", |b| {
        let mut client = ClientStatements::new(1);
        let mut to_client = BytesMut::with_capacity(1024);
        b.iter(|| {
            let answered = client.answer_locally(&parse[0], &mut to_client);
            to_client.clear();
            answered
        })
    });
    group.finish();
}

/// The session-state check every Query and Parse text of a transaction-mode client
/// goes through: pgbench's statements (nothing found) and a `set_config` (a pin).
fn bench_session_state(c: &mut Criterion) {
    let mut group = c.benchmark_group("session_state");
    for (name, sql) in [
        ("select", SELECT),
        (
            "update",
            "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
        ),
        (
            "set_config",
            "select set_config('search_path', 'app, public', false)",
        ),
    ] {
        group.throughput(Throughput::Bytes(sql.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| proxy::session_state::effects(black_box(sql)))
        });
    }
    group.finish();
}

criterion_group! {
    name = micro_proxy;
    // Trimmed so the whole target runs in well under a minute; see benches/README.md.
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    targets = bench_statements, bench_session_state
}
criterion_main!(micro_proxy);
