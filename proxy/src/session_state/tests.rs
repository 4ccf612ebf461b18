use super::*;

fn pins(sql: &str) -> Vec<&'static str> {
    effects(sql)
        .into_iter()
        .filter_map(|e| match e {
            Effect::Pins(r) => Some(r.as_str()),
            _ => None,
        })
        .collect()
}

#[test]
fn statements_that_leave_state_pin() {
    for (sql, reason) in [
        ("SET ROLE other", "set_role"),
        ("set session authorization other", "set_role"),
        (
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
            "set_role",
        ),
        (
            "select set_config('search_path', 'evil', false)",
            "set_config",
        ),
        (
            "SELECT pg_catalog.set_config('role', 'other', $1)",
            "set_config",
        ),
        (
            "select set_config('a.b', (select 'x'), 'off')",
            "set_config",
        ),
        ("PREPARE q(int) AS select $1", "prepare"),
        ("LISTEN chan", "listen"),
        ("create temp table t(a int)", "temp_table"),
        ("CREATE GLOBAL TEMPORARY TABLE t AS select 1", "temp_table"),
        ("create temporary view v as select 1", "temp_table"),
        ("select 1 into temp t", "temp_table"),
        ("create table pg_temp.t(a int)", "temp_table"),
        ("select pg_advisory_lock(1)", "advisory_lock"),
        ("SELECT pg_try_advisory_lock_shared(1, 2)", "advisory_lock"),
        ("declare c cursor with hold for select 1", "hold_cursor"),
        ("load 'auto_explain'", "load"),
        ("do $$ begin set role other; end $$", "do"),
        ("(select pg_advisory_lock(1))", "advisory_lock"),
        ("select \"pg_advisory_lock\"(1)", "advisory_lock"),
    ] {
        assert_eq!(pins(sql), [reason], "{sql}");
    }
}

#[test]
fn statements_that_leave_nothing_do_not_pin() {
    for sql in [
        "select 1",
        "SET LOCAL statement_timeout = 1",
        "set transaction isolation level serializable",
        "SET CONSTRAINTS ALL DEFERRED",
        "select set_config('search_path', 'x', true)",
        "select set_config('search_path', 'x', 'on')",
        "select pg_advisory_xact_lock(1)",
        "select 'listen x; set role y; create temp table z'",
        "declare c cursor for select 1",
        "select \"PG_ADVISORY_LOCK\"(1)",
        "create table t(temp int)",
        "-- do $$ $$\nselect 1",
        "prepare transaction 'x'",
        "select * from pg_advisory_lock",
        "unlisten *",
        "discard all",
    ] {
        assert_eq!(effects(sql), [], "{sql}");
    }
}

#[test]
fn set_names_the_setting() {
    let sets = |sql| effects(sql);
    assert_eq!(
        sets("SET statement_timeout = 1"),
        [Effect::Sets("statement_timeout".into())]
    );
    assert_eq!(
        sets("set session Search_Path to a, b"),
        [Effect::Sets("search_path".into())]
    );
    assert_eq!(
        sets("SET my.custom = 'x'"),
        [Effect::Sets("my.custom".into())]
    );
    assert_eq!(
        sets("set time zone 'UTC'"),
        [Effect::Sets("timezone".into())]
    );
    assert_eq!(
        sets("set \"DateStyle\" = iso"),
        [Effect::Sets("DateStyle".into())]
    );
}

#[test]
fn every_statement_of_a_query_counts() {
    assert_eq!(
        effects("select 1; listen a; set role b; select pg_advisory_lock(1)"),
        [
            Effect::Pins(PinReason::Listen),
            Effect::Pins(PinReason::Role),
            Effect::Pins(PinReason::AdvisoryLock),
        ]
    );
}

#[test]
fn sluice_statement_names_are_found() {
    assert_eq!(
        effects("EXECUTE sluice_100_1(1)"),
        [Effect::SluiceName("EXECUTE", "sluice_100_1".into())]
    );
    assert_eq!(
        effects("deallocate prepare SLUICE_1_2"),
        [Effect::SluiceName("DEALLOCATE", "sluice_1_2".into())]
    );
    assert_eq!(
        effects("deallocate \"sluice_1_2\""),
        [Effect::SluiceName("DEALLOCATE", "sluice_1_2".into())]
    );
    assert_eq!(
        effects("prepare sluice_x as select 1"),
        [Effect::SluiceName("PREPARE", "sluice_x".into())]
    );
    assert_eq!(effects("execute mine"), []);
    assert_eq!(effects("deallocate all"), []);
}

#[test]
fn reasons_index_their_table() {
    for (i, r) in PinReason::ALL.iter().enumerate() {
        assert_eq!(r.index(), i);
    }
}

#[test]
fn reasons_are_the_metric_labels() {
    let labels = PinReason::ALL.map(PinReason::as_str);
    assert_eq!(labels, pooler::stats::PIN_REASONS);
}

#[test]
fn statements_that_need_a_database_free_name_it() {
    let free = |name: &str| vec![Effect::NeedsDatabaseFree(name.into())];
    assert_eq!(effects("DROP DATABASE app"), free("app"));
    assert_eq!(effects("drop database if exists \"App\""), free("App"));
    assert_eq!(effects("ALTER DATABASE app RENAME TO old"), free("app"));
    assert_eq!(effects("CREATE DATABASE copy TEMPLATE app"), free("app"));
    assert_eq!(
        effects("create database copy with owner me template = app"),
        free("app")
    );
    assert_eq!(effects("create database fresh"), []);
    assert_eq!(effects("alter database app set work_mem = '1MB'"), []);
}

#[test]
fn the_quick_pass_misses_nothing_and_skips_plain_queries() {
    for sql in [
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;",
        "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
        "select 1; select 2",
        "select \"PG_ADVISORY_LOCK\"(1)",
        "select * from pg_advisory_lock",
        "select pg_advisory_xact_lock(1)",
        "begin; update t set a = 1; commit",
    ] {
        assert!(!may_have_effects(sql), "{sql}");
        assert_eq!(effects(sql), [], "{sql}");
    }
    for sql in [
        "SET ROLE other",
        "select 1; SET search_path = x",
        "((set x = 1))",
        "select set_config('a', 'b', false)",
        "select \"set_config\"('a', 'b', false)",
        "select \"SET_CONFIG\"('a', 'b', false)",
        "select PG_ADVISORY_LOCK(1)",
        "select 1 INTO temp t",
        "select * from PG_TEMP.t",
        "select * from \"pg_temp_3\".t",
        "create table \"PG_TEMP\".t(a int)",
        "prepare sluice_1 as select 1",
        "execute sluice_1",
        "deallocate prepare sluice_1",
        "drop database if exists x",
        "alter database x rename to y",
        "create database x template = y",
        "listen x",
        "load 'x'",
        "do $$ $$",
        "declare c cursor with hold for select 1",
        "set local x = 1",
        "select set_config('a', 'b', true)",
        "execute q",
    ] {
        assert_eq!(effects(sql), effects_in_full(sql), "{sql}");
        if !effects_in_full(sql).is_empty() {
            assert!(may_have_effects(sql), "{sql}");
        }
    }
}
