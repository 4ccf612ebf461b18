//! Single-user mode: statements run while stopped, and failures are reported.

use localpg::Error;

use crate::support;

#[test]
fn failing_statements_are_errors_with_the_backend_message() {
    let root = tempfile::tempdir().unwrap();
    let cluster = support::cluster(root.path(), |_| {});

    cluster
        .run_single_user("CREATE TABLE t (x int)\nINSERT INTO t VALUES (1)\n")
        .expect("valid statements");

    let err = cluster
        .run_single_user("SELECT * FROM no_such_table")
        .unwrap_err();
    match &err {
        Error::SingleUser { stderr, .. } => {
            assert!(stderr.contains("no_such_table"), "{stderr}")
        }
        other => panic!("unexpected error {other:?}"),
    }

    // The failure stops processing: the statement after it does not run.
    let err = cluster
        .run_single_user("CREATE ROLE x LOGIN PASSWORD 'SCRAM-SHA-256$not-a-verifier' nonsense\nCREATE TABLE after_failure (x int)")
        .unwrap_err();
    let Error::SingleUser { stderr, .. } = &err else {
        panic!("unexpected error {err:?}");
    };
    assert!(stderr.contains("nonsense"), "{stderr}");
    assert!(
        !stderr.contains("not-a-verifier"),
        "statement text leaked: {stderr}"
    );
    let err = cluster
        .run_single_user("CREATE TABLE after_failure (x int)\nCREATE TABLE after_failure (x int)")
        .unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
}
