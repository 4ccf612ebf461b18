//! Template creation: idempotent and safe when several creators race.

use std::time::Instant;

use localpg::Template;

use crate::support::install;

#[test]
fn concurrent_creators_agree_and_leave_one_template() {
    let cache = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let (first, second) = std::thread::scope(|scope| {
        let racers: Vec<_> = (0..2)
            .map(|_| scope.spawn(|| Template::ensure(install(), cache.path())))
            .collect();
        let mut results = racers.into_iter().map(|racer| racer.join().unwrap());
        (results.next().unwrap(), results.next().unwrap())
    });
    eprintln!("two racing initdbs took {:?}", started.elapsed());
    let first = first.expect("first creator");
    let second = second.expect("second creator");
    assert_eq!(first, second);
    assert_eq!(
        first.dir,
        cache.path().join(format!("pg{}", install().major))
    );
    assert!(first.dir.join("PG_VERSION").is_file());

    // Staging directories of the loser are gone: only the template remains.
    let entries: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(
        entries,
        vec![std::ffi::OsString::from(format!("pg{}", install().major))]
    );

    // A second ensure finds the template without running initdb again.
    let started = Instant::now();
    let again = Template::ensure(install(), cache.path()).unwrap();
    assert_eq!(again, first);
    assert!(started.elapsed().as_millis() < 100, "ensure re-ran initdb");
}

#[test]
fn template_uses_scram_and_the_requested_encoding() {
    let template = crate::support::template();
    let hba = std::fs::read_to_string(template.dir.join("pg_hba.conf")).unwrap();
    let rules: Vec<&str> = hba
        .lines()
        .filter(|line| !line.trim_start().starts_with('#') && !line.trim().is_empty())
        .collect();
    assert!(!rules.is_empty());
    assert!(
        rules.iter().all(|rule| rule.ends_with("scram-sha-256")),
        "{rules:?}"
    );
    let conf = std::fs::read_to_string(template.dir.join("postgresql.conf")).unwrap();
    assert!(
        conf.contains("lc_messages = 'C'"),
        "initdb ran without --locale=C"
    );
}
