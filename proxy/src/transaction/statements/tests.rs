//! Tests of the statement tracking in `statements.rs`: statements following a client
//! across server connections, eviction, the unnamed statement, DISCARD/DEALLOCATE ALL,
//! COPY inside extended batches, isolation between clients, the per-client bound.

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
    let mut pending: VecDeque<Pending> = [Pending::Query, Pending::CopyEnd].into_iter().collect();
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
