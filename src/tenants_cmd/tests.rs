//! `sluice tenants` without a server: arguments to requests (paths, bodies, flags)
//! and answers to tables.

use clap::Parser;
use serde_json::json;

use super::*;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    tenants: TenantsArgs,
}

fn parse(args: &[&str]) -> TenantsArgs {
    Cli::try_parse_from(std::iter::once("tenants").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
        .tenants
}

fn tenant_view(id: &str, status: &str, address: &str, mode: &str, size: u64) -> Value {
    json!({
        "id": id, "status": status,
        "backend": {"address": address, "tls": "disable"},
        "pool": {"mode": mode, "size": size, "min_idle": 0},
        "limits": {"query_rate": 0, "allow_cidrs": []},
    })
}

#[test]
fn ids_are_percent_encoded_in_paths() {
    assert_eq!(tenant_path("acme"), "/v1/tenants/acme");
    assert_eq!(tenant_path("a/../b c"), "/v1/tenants/a%2F..%2Fb%20c");
    assert_eq!(tenant_path("x?y#z"), "/v1/tenants/x%3Fy%23z");
}

#[test]
fn api_flags_go_before_or_after_the_subcommand() {
    let a = parse(&["--output", "json", "--api", "http://h:1", "get", "acme"]);
    let b = parse(&["get", "acme", "--output", "json", "--api", "http://h:1"]);
    for args in [a, b] {
        assert_eq!(args.api.output, Output::Json);
        assert_eq!(args.api.api, "http://h:1");
        assert!(matches!(args.command, TenantsCommand::Get { ref id } if id == "acme"));
    }
}

#[test]
fn update_maps_sets_to_a_patch_body() {
    let args = parse(&[
        "update",
        "acme",
        "--set",
        "pool.size=20",
        "--set",
        "limits.query_rate=100",
        "--set",
        "limits.allow_cidrs=10.0.0.0/8,127.0.0.1/32",
        "--set",
        "pool.mode=session",
    ]);
    let TenantsCommand::Update(update) = args.command else {
        panic!("not update")
    };
    assert_eq!(
        patch_body(&update).unwrap(),
        json!({"pool": {"size": 20, "mode": "session"},
               "limits": {"query_rate": 100, "allow_cidrs": ["10.0.0.0/8", "127.0.0.1/32"]}})
    );
    let TenantsCommand::Update(empty) = parse(&["update", "acme"]).command else {
        panic!("not update")
    };
    assert!(patch_body(&empty)
        .unwrap_err()
        .to_string()
        .contains("nothing to change"));
    let bad = Cli::try_parse_from(["t", "update", "acme", "--set", "size=20"]);
    assert!(bad.is_err());
}

#[test]
fn update_takes_a_file_with_sets_over_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("patch.json");
    std::fs::write(&file, r#"{"pool": {"size": 5, "min_idle": 2}}"#).unwrap();
    let TenantsCommand::Update(update) = parse(&[
        "update",
        "acme",
        "--file",
        file.to_str().unwrap(),
        "--set",
        "pool.size=9",
    ])
    .command
    else {
        panic!("not update")
    };
    assert_eq!(
        patch_body(&update).unwrap(),
        json!({"pool": {"size": 9, "min_idle": 2}})
    );
}

#[test]
fn create_maps_flags_to_the_body_and_waits_only_when_asked() {
    let TenantsCommand::Create(create) = parse(&["create", "acme"]).command else {
        panic!("not create")
    };
    assert_eq!(create_body(&create).unwrap(), json!({"id": "acme"}));
    assert_eq!(create.wait.wait, None);
    assert!(create.idempotency_key.is_none());

    let TenantsCommand::Create(create) = parse(&[
        "create",
        "globex",
        "--plan",
        "nano",
        "--set",
        "pool.size=3",
        "--wait",
        "--idempotency-key",
        "try-1",
    ])
    .command
    else {
        panic!("not create")
    };
    assert_eq!(
        create_body(&create).unwrap(),
        json!({"id": "globex", "plan": "nano", "pool": {"size": 3}})
    );
    assert_eq!(create.wait.wait, Some(300));
    assert_eq!(create.idempotency_key.unwrap().as_str(), "try-1");
    let TenantsCommand::Create(create) = parse(&["create", "x", "--wait", "5"]).command else {
        panic!("not create")
    };
    assert_eq!(create.wait.wait, Some(5));
    assert!(Cli::try_parse_from(["t", "create", "x", "--wait", "0"]).is_err());
    assert!(Cli::try_parse_from(["t", "create", "x", "--idempotency-key", "a b"]).is_err());
}

#[test]
fn a_create_file_cannot_name_another_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body.json");
    std::fs::write(&file, r#"{"id": "other", "plan": "nano"}"#).unwrap();
    let f = file.to_str().unwrap();
    let TenantsCommand::Create(create) = parse(&["create", "acme", "--file", f]).command else {
        panic!("not create")
    };
    assert!(create_body(&create)
        .unwrap_err()
        .to_string()
        .contains("\"other\""));
    std::fs::write(&file, r#"{"plan": "nano", "limits": {"query_rate": 5}}"#).unwrap();
    let TenantsCommand::Create(create) =
        parse(&["create", "acme", "--file", f, "--plan", "micro"]).command
    else {
        panic!("not create")
    };
    assert_eq!(
        create_body(&create).unwrap(),
        json!({"id": "acme", "plan": "micro", "limits": {"query_rate": 5}})
    );
}

#[test]
fn suspend_and_delete_parse() {
    let TenantsCommand::Suspend {
        id,
        reason,
        terminate,
    } = parse(&["suspend", "acme", "--terminate", "--reason", "unpaid"]).command
    else {
        panic!("not suspend")
    };
    assert_eq!(
        (id.as_str(), reason.as_deref(), terminate),
        ("acme", Some("unpaid"), true)
    );
    let TenantsCommand::Delete { wait, .. } = parse(&["delete", "acme", "--wait", "60"]).command
    else {
        panic!("not delete")
    };
    assert_eq!(wait.wait, Some(60));
}

#[test]
fn the_list_table_shows_pool_as_mode_and_size() {
    let mut suspended = tenant_view("globex", "suspended", "10.0.0.5:5432", "session", 5);
    suspended["plan"] = json!("nano");
    let lines = tenants_table(&[
        tenant_view(
            "acme",
            "active",
            "/tmp/run/.s.PGSQL.5432",
            "transaction",
            20,
        ),
        suspended,
        json!({"id": "odd"}),
    ]);
    assert_eq!(
        lines,
        [
            "ID      STATUS     PLAN  ADDRESS                 POOL",
            "acme    active     -     /tmp/run/.s.PGSQL.5432  transaction/20",
            "globex  suspended  nano  10.0.0.5:5432           session/5",
            "odd     -          -     -                       -/-",
        ]
    );
    assert_eq!(
        tenants_table(&[]),
        ["ID  STATUS  PLAN  ADDRESS  POOL", "(no tenants)"]
    );
}

#[test]
fn one_tenant_reads_as_flattened_key_values() {
    let mut view = tenant_view("acme", "suspended", "127.0.0.1:5432", "session", 5);
    view["suspended_reason"] = json!("unpaid");
    view["future_field"] = json!({"x": 1});
    let lines = object_lines(&view, "", TENANT_FIRST);
    assert_eq!(
        lines,
        [
            "id                  acme",
            "status              suspended",
            "suspended_reason    unpaid",
            "backend.address     127.0.0.1:5432",
            "backend.tls         disable",
            "pool.min_idle       0",
            "pool.mode           session",
            "pool.size           5",
            "limits.allow_cidrs  -",
            "limits.query_rate   0",
            "future_field.x      1",
        ]
    );
}

#[test]
fn jobs_read_as_prefixed_key_values() {
    let job = json!({"id": 7, "kind": "delete", "tenant": "acme", "state": "failed",
                     "steps_done": ["drain"], "attempts": 2, "error": "backend gone",
                     "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:09Z"});
    let lines = object_lines(&job, "job.", JOB_FIRST);
    assert_eq!(lines[0], "job.id          7");
    assert_eq!(lines[3], "job.state       failed");
    assert_eq!(lines[4], "job.steps_done  drain");
    assert_eq!(lines[6], "job.error       backend gone");
    assert_eq!(lines.len(), 9);
}
