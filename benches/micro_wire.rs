//! Micro-benchmarks of the `wire` crate's hot pieces: splitting frames off a buffer
//! (`frame::split_frame`, what the transaction-mode relay does), walking headers in a
//! relayed stream (`scan::Scanner`, the session-mode relay), whole and in chunks, and
//! the server side of one SCRAM-SHA-256 login against a stored verifier.
//!
//! Run with `cargo bench --bench micro_wire`; see benches/README.md. Nothing here does
//! I/O: every input is built in memory before the clock starts.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use wire::frame::{split_frame, DEFAULT_MAX_FRAME_LEN};
use wire::messages::{self, tag};
use wire::scan::Scanner;
use wire::scram::{ClientCredential, ScramClient, ScramServer, Verifier, SCRAM_SHA_256};

/// Appends one message with a raw body (for the server messages `wire` has no
/// builder for: RowDescription, DataRow, CommandComplete, BindComplete).
fn message(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.put_u8(tag);
    out.put_u32(u32::try_from(body.len() + 4).expect("small test message"));
    out.put_slice(body);
}

/// A DataRow of text columns.
fn data_row(out: &mut BytesMut, columns: &[&[u8]]) {
    let mut body = BytesMut::new();
    body.put_u16(u16::try_from(columns.len()).expect("few columns"));
    for c in columns {
        body.put_i32(i32::try_from(c.len()).expect("short column"));
        body.put_slice(c);
    }
    message(out, b'D', &body);
}

/// A RowDescription of `n` int4 columns.
fn row_description(out: &mut BytesMut, n: u16) {
    let mut body = BytesMut::new();
    body.put_u16(n);
    for i in 0..n {
        body.put_slice(format!("column_{i}\0").as_bytes());
        body.put_u32(16_384); // table oid
        body.put_i16(i16::try_from(i + 1).expect("few columns"));
        body.put_u32(23); // int4
        body.put_i16(4);
        body.put_i32(-1);
        body.put_i16(0);
    }
    message(out, b'T', &body);
}

/// A stream and the number of messages in it.
struct Stream {
    name: &'static str,
    bytes: BytesMut,
    messages: u64,
}

fn count(bytes: &BytesMut) -> u64 {
    let mut n = 0;
    Scanner::new(DEFAULT_MAX_FRAME_LEN)
        .feed(bytes, |_, _| n += 1)
        .expect("valid stream");
    n
}

/// What a `pgbench -S -M prepared` client sends: Bind/Execute/Sync, 1,000 times.
fn client_prepared() -> Stream {
    let mut out = BytesMut::new();
    for i in 0..1_000u32 {
        let aid = (i * 7919 % 100_000).to_string();
        messages::bind_text(&mut out, "", "P_0", &[Some(aid.as_bytes())]);
        messages::execute(&mut out, "", 0);
        messages::sync(&mut out);
    }
    let messages = count(&out);
    Stream {
        name: "client_prepared",
        bytes: out,
        messages,
    }
}

/// What the server answers those: BindComplete, DataRow, CommandComplete,
/// ReadyForQuery, 1,000 times (many tiny messages).
fn server_small() -> Stream {
    let mut out = BytesMut::new();
    for i in 0..1_000u32 {
        message(&mut out, b'2', b"");
        data_row(&mut out, &[(i * 31 % 5_000).to_string().as_bytes()]);
        message(&mut out, b'C', b"SELECT 1\0");
        messages::ready_for_query(&mut out, tag::STATUS_IDLE);
    }
    let messages = count(&out);
    Stream {
        name: "server_small",
        bytes: out,
        messages,
    }
}

/// One larger result: RowDescription, 2,000 DataRows of 5 columns (~90 bytes each),
/// CommandComplete, ReadyForQuery.
fn server_rows() -> Stream {
    let mut out = BytesMut::new();
    row_description(&mut out, 5);
    for i in 0..2_000u32 {
        let id = i.to_string();
        let balance = (i * 37 % 100_000).to_string();
        data_row(
            &mut out,
            &[
                id.as_bytes(),
                b"1",
                balance.as_bytes(),
                b"filler text of an account row ....",
                b"2026-11-23 02:20:47.123456+00",
            ],
        );
    }
    message(&mut out, b'C', b"SELECT 2000\0");
    messages::ready_for_query(&mut out, tag::STATUS_IDLE);
    let messages = count(&out);
    Stream {
        name: "server_rows",
        bytes: out,
        messages,
    }
}

/// Splits every frame off a copy of the stream, as the transaction relay does with a
/// buffer it has read (the copy is made outside the clock).
fn bench_split_frame(c: &mut Criterion, streams: &[Stream]) {
    let mut group = c.benchmark_group("frame/split_frame");
    for s in streams {
        group.throughput(Throughput::Elements(s.messages));
        group.bench_function(s.name, |b| {
            b.iter_batched_ref(
                || s.bytes.clone(),
                |buf| {
                    let mut n = 0u64;
                    while let Some(frame) = split_frame(buf, DEFAULT_MAX_FRAME_LEN).unwrap() {
                        black_box(&frame);
                        n += 1;
                    }
                    n
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

/// Walks every header of the stream fed as one slice, as the session relay does.
fn bench_scanner(c: &mut Criterion, streams: &[Stream]) {
    let mut group = c.benchmark_group("frame/scanner");
    for s in streams {
        group.throughput(Throughput::Elements(s.messages));
        group.bench_function(s.name, |b| {
            b.iter(|| {
                let mut scanner = Scanner::new(DEFAULT_MAX_FRAME_LEN);
                let mut ready = 0u64;
                scanner
                    .feed(black_box(&s.bytes), |t, _| {
                        ready += u64::from(t == tag::READY_FOR_QUERY)
                    })
                    .unwrap();
                ready
            })
        });
    }
    group.finish();
}

/// The large result as reads of `chunk` bytes would deliver it: a full read buffer,
/// roughly one TCP segment, and 7 bytes (every header split across reads).
fn bench_chunked(c: &mut Criterion, rows: &Stream) {
    let mut group = c.benchmark_group("frame/chunked");
    group.throughput(Throughput::Elements(rows.messages));
    for chunk in [16_384usize, 1_448, 7] {
        group.bench_function(format!("scanner/{chunk}"), |b| {
            b.iter(|| {
                let mut scanner = Scanner::new(DEFAULT_MAX_FRAME_LEN);
                let mut n = 0u64;
                for piece in rows.bytes.chunks(chunk) {
                    scanner.feed(black_box(piece), |_, _| n += 1).unwrap();
                }
                n
            })
        });
    }
    // The transaction relay's read loop: append what arrived, split what is whole.
    for chunk in [16_384usize, 1_448] {
        group.bench_function(format!("split_frame/{chunk}"), |b| {
            let mut buf = BytesMut::with_capacity(64 * 1024);
            b.iter(|| {
                let mut n = 0u64;
                for piece in rows.bytes.chunks(chunk) {
                    buf.extend_from_slice(black_box(piece));
                    while let Some(frame) = split_frame(&mut buf, DEFAULT_MAX_FRAME_LEN).unwrap() {
                        black_box(&frame);
                        n += 1;
                    }
                }
                n
            })
        });
    }
    group.finish();
}

/// The server side of one SCRAM-SHA-256 login against a stored verifier (Postgres'
/// default 4,096 iterations, which the server never runs: it only checks the proof).
/// The client's share of the exchange runs outside the clock.
fn bench_scram(c: &mut Criterion) {
    let verifier = Verifier::from_password("correct horse battery", b"sixteen byte slt", 4_096);
    // The ClientKey a client proves: recovered from one full exchange, so the timed
    // clients below skip PBKDF2 as a pass-through login would.
    let client_key = {
        let mut client =
            ScramClient::new(ClientCredential::Password("correct horse battery".into()));
        let mut server = ScramServer::new(verifier.clone(), None, false);
        let first = server
            .handle_client_first(SCRAM_SHA_256, &client.client_first())
            .unwrap();
        let fin = client.handle_server_first(&first).unwrap();
        server.handle_client_final(&fin).unwrap().client_key
    };
    let credential = ClientCredential::ClientKey {
        client_key,
        server_key: Some(verifier.server_key),
    };
    let stored = verifier.to_postgres_string();

    let mut group = c.benchmark_group("scram");
    group.bench_function("server_login", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let mut client = ScramClient::new(credential.clone());
                let client_first = client.client_first();
                let start = Instant::now();
                let mut server = ScramServer::new(verifier.clone(), None, false);
                let server_first = server
                    .handle_client_first(SCRAM_SHA_256, black_box(&client_first))
                    .unwrap();
                timed += start.elapsed();
                let client_final = client.handle_server_first(&server_first).unwrap();
                let start = Instant::now();
                let outcome = server.handle_client_final(black_box(&client_final));
                timed += start.elapsed();
                assert!(outcome.is_ok());
            }
            timed
        })
    });
    // Reading the stored secret (`rolpassword`), once per secret-cache miss.
    group.bench_function("verifier_parse", |b| {
        b.iter(|| Verifier::parse(black_box(&stored)).unwrap())
    });
    // For scale: what a client that has only the password pays (PBKDF2, 4,096
    // iterations), and what Sluice never pays per login.
    group.bench_function("client_pbkdf2_4096", |b| {
        b.iter(|| Verifier::from_password(black_box("correct horse battery"), b"salt", 4_096))
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    let streams = [client_prepared(), server_small(), server_rows()];
    bench_split_frame(c, &streams);
    bench_scanner(c, &streams);
    bench_chunked(c, &streams[2]);
    bench_scram(c);
}

criterion_group! {
    name = micro_wire;
    // Trimmed so the whole target runs in about a minute; see benches/README.md.
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    targets = benches
}
criterion_main!(micro_wire);
