//! The control store against a real PostgreSQL: the embedded cluster in a temporary
//! directory (under `unshare` as uid 65534 when the tests run as root), migrations, the
//! audit chain, API keys, the schema's checks and the catalog notifications.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use control::store::{
    AuditEvent, AuditFilter, AuditVerify, EmbeddedControl, SchemaMismatch, Store, MIGRATIONS,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Client, NoTls};

/// A migrated store on a fresh embedded cluster. Field order is drop order: the
/// connection, then the cluster, then its directory.
struct Fixture {
    store: Store,
    control: EmbeddedControl,
    dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::Builder::new()
        .prefix("sluice-store-")
        .tempdir()
        .expect("temporary directory");
    let control = start_control(dir.path().to_owned())
        .await
        .expect("starting the embedded control store");
    let store = Store::connect(control.config()).await.expect("connecting");
    store.migrate().await.expect("migrating");
    Fixture {
        store,
        control,
        dir,
    }
}

async fn start_control(data_dir: PathBuf) -> anyhow::Result<EmbeddedControl> {
    tokio::task::spawn_blocking(move || EmbeddedControl::start(&data_dir)).await?
}

/// A plain connection for SQL the store's API does not offer (tampering, checks).
async fn raw_client(control: &EmbeddedControl) -> Client {
    let (client, connection) = control.config().connect(NoTls).await.expect("connecting");
    tokio::spawn(connection);
    client
}

fn event(action: &str, target: &str, details: Value) -> AuditEvent {
    AuditEvent {
        actor: Some("1a2b3c4d".into()),
        source_ip: Some("127.0.0.1".into()),
        target: Some(target.into()),
        details,
        ..AuditEvent::new(action)
    }
}

fn verified(events: u64) -> AuditVerify {
    AuditVerify {
        ok: true,
        events,
        broken_at: None,
    }
}

#[tokio::test]
async fn migrations_apply_once_and_refuse_a_newer_schema() {
    let f = fixture().await;
    // The fixture applied them; neither this connection nor a new one applies anything.
    assert_eq!(f.store.migrate().await.unwrap(), Vec::<i32>::new());
    let other = Store::connect(f.control.config()).await.unwrap();
    assert_eq!(other.migrate().await.unwrap(), Vec::<i32>::new());

    let client = raw_client(&f.control).await;
    let recorded: Vec<(i32, String)> = client
        .query(
            "SELECT version, name FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let known: Vec<(i32, String)> = MIGRATIONS
        .iter()
        .map(|m| (m.version, m.name.to_owned()))
        .collect();
    assert_eq!(recorded, known);

    let future = MIGRATIONS.len() as i32 + 1;
    client
        .execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, 'from_the_future')",
            &[&future],
        )
        .await
        .unwrap();
    let error = f.store.migrate().await.unwrap_err();
    assert!(
        matches!(
            error.downcast_ref::<SchemaMismatch>(),
            Some(SchemaMismatch::TooNew { version, .. }) if *version == future
        ),
        "{error:#}"
    );
    let message = format!("{error:#}");
    assert!(
        message.contains("newer than this Sluice knows"),
        "{message}"
    );
    assert!(message.contains("from_the_future"), "{message}");
}

#[tokio::test]
async fn the_first_migration_applies_on_an_empty_database() {
    let dir = tempfile::tempdir().unwrap();
    let control = start_control(dir.path().to_owned()).await.unwrap();
    let store = Store::connect(control.config()).await.unwrap();
    let all: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(store.migrate().await.unwrap(), all);
    assert_eq!(store.migrate().await.unwrap(), Vec::<i32>::new());
}

#[tokio::test]
async fn the_audit_chain_verifies_and_names_the_tampered_event() {
    let f = fixture().await;
    assert_eq!(f.store.verify_audit().await.unwrap(), verified(0));
    for n in 1..=20 {
        let id = f
            .store
            .append_audit(&event("tenant.patch", "acme", json!({ "n": n })))
            .await
            .unwrap();
        assert_eq!(id, n);
    }
    assert_eq!(f.store.verify_audit().await.unwrap(), verified(20));

    let client = raw_client(&f.control).await;
    client
        .execute(
            r#"UPDATE audit_events SET details = '{"x":1}' WHERE id = 7"#,
            &[],
        )
        .await
        .unwrap();
    let broken = AuditVerify {
        ok: false,
        events: 20,
        broken_at: Some(7),
    };
    assert_eq!(f.store.verify_audit().await.unwrap(), broken);

    // Putting the content back repairs it: the chain is over content, not row versions.
    client
        .execute(
            r#"UPDATE audit_events SET details = '{"n":7}' WHERE id = 7"#,
            &[],
        )
        .await
        .unwrap();
    assert_eq!(f.store.verify_audit().await.unwrap(), verified(20));

    // A deleted event shows as a break at the one after it.
    client
        .execute("DELETE FROM audit_events WHERE id = 15", &[])
        .await
        .unwrap();
    let after_delete = AuditVerify {
        ok: false,
        events: 19,
        broken_at: Some(16),
    };
    assert_eq!(f.store.verify_audit().await.unwrap(), after_delete);
}

#[tokio::test]
async fn stored_hashes_follow_the_documented_rule() {
    let f = fixture().await;
    f.store
        .append_audit(&event("tenant.create", "acme", json!({"b": "é", "a": 1})))
        .await
        .unwrap();
    f.store
        .append_audit(&AuditEvent::new("system.start"))
        .await
        .unwrap();
    // Recomputed without the store's code: the time formatted by Postgres, the JSON
    // written out by hand.
    let client = raw_client(&f.control).await;
    let rows = client
        .query(
            r#"SELECT to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                      prev_hash, hash FROM audit_events ORDER BY id"#,
            &[],
        )
        .await
        .unwrap();
    let texts = [
        r#"{"action":"tenant.create","actor":"1a2b3c4d","at":"AT","details":{"a":1,"b":"é"},"id":1,"source_ip":"127.0.0.1","target":"acme"}"#,
        r#"{"action":"system.start","actor":null,"at":"AT","details":{},"id":2,"source_ip":null,"target":null}"#,
    ];
    let mut prev = vec![0u8; 32];
    for (row, text) in rows.iter().zip(texts) {
        let at: String = row.get(0);
        let (prev_hash, hash): (Vec<u8>, Vec<u8>) = (row.get(1), row.get(2));
        assert_eq!(prev_hash, prev);
        let mut hasher = Sha256::new();
        hasher.update(&prev_hash);
        hasher.update(text.replace("AT", &at).as_bytes());
        assert_eq!(hash, hasher.finalize().to_vec(), "{text}");
        prev = hash;
    }
    assert_eq!(rows.len(), 2);
}

#[tokio::test]
async fn details_hash_as_the_database_stores_them() {
    let f = fixture().await;
    // jsonb rewrites these (key order and duplicates, number spellings); the hash must be
    // over what verification will read back.
    let details: Value = serde_json::from_str(
        r#"{"z": 1e2, "a": [1.0, -0, 12345678901234567890], "é": "日本 🦀 \u001f \"q\"",
            "nested": {"b": {}, "a": []}, "big": 1.5e300}"#,
    )
    .unwrap();
    f.store
        .append_audit(&event("tenant.patch", "acme", details))
        .await
        .unwrap();
    f.store
        .append_audit(&AuditEvent {
            details: Value::Null,
            ..AuditEvent::new("system.start")
        })
        .await
        .unwrap();
    assert_eq!(f.store.verify_audit().await.unwrap(), verified(2));

    let not_an_object = event("tenant.patch", "acme", json!([1, 2]));
    let error = f.store.append_audit(&not_an_object).await.unwrap_err();
    assert!(format!("{error:#}").contains("JSON object"), "{error:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_from_many_connections_form_one_chain() {
    let f = fixture().await;
    let mut tasks = Vec::new();
    for task in 0..8 {
        let config = f.control.config();
        tasks.push(tokio::spawn(async move {
            let store = Store::connect(config).await?;
            let mut ids = Vec::new();
            for n in 0..10 {
                let details = json!({ "task": task, "n": n });
                ids.push(store.append_audit(&event("load", "acme", details)).await?);
            }
            anyhow::Ok(ids)
        }));
    }
    let mut ids = HashSet::new();
    for task in tasks {
        ids.extend(task.await.unwrap().unwrap());
    }
    assert_eq!(ids.len(), 80);
    let verify = f.store.verify_audit().await.unwrap();
    assert!(verify.ok && verify.events >= 80, "{verify:?}");
}

#[tokio::test]
async fn audit_events_list_with_filters_and_pages() {
    let f = fixture().await;
    let appended = [
        ("tenant.create", "acme"),
        ("role.create", "acme/roles/app"),
        ("tenant.create", "acmex"),
        ("tenant.create", "globex"),
        ("api_key.create", "api-key:1a2b3c4d"),
        ("tenant.suspend", "acme"),
    ];
    for (action, target) in appended {
        f.store
            .append_audit(&event(action, target, json!({})))
            .await
            .unwrap();
    }
    let ids = |filter: AuditFilter| {
        let store = &f.store;
        async move {
            let (rows, next) = store.list_audit(&filter, None, 100).await.unwrap();
            assert_eq!(next, None);
            rows.iter().map(|row| row.id).collect::<Vec<_>>()
        }
    };

    let everything = ids(AuditFilter::default()).await;
    assert_eq!(everything, [6, 5, 4, 3, 2, 1]);
    let acme = AuditFilter {
        tenant: Some("acme".into()),
        ..AuditFilter::default()
    };
    assert_eq!(ids(acme.clone()).await, [6, 2, 1], "not acmex");
    let creates = AuditFilter {
        action: Some("tenant.create".into()),
        ..AuditFilter::default()
    };
    assert_eq!(ids(creates.clone()).await, [4, 3, 1]);
    let acme_creates = AuditFilter {
        action: creates.action.clone(),
        ..acme.clone()
    };
    assert_eq!(ids(acme_creates).await, [1]);
    let nobody = AuditFilter {
        tenant: Some("a%".into()),
        ..AuditFilter::default()
    };
    assert_eq!(ids(nobody).await, Vec::<i64>::new(), "no LIKE patterns");

    // Time window: at >= since and at < until, on the stored times.
    let (rows, _) = f
        .store
        .list_audit(&AuditFilter::default(), None, 100)
        .await
        .unwrap();
    let at_of = |id: i64| rows.iter().find(|row| row.id == id).unwrap().at;
    let (since, until) = (at_of(3), at_of(5));
    let expected: Vec<i64> = rows
        .iter()
        .filter(|row| row.at >= since && row.at < until)
        .map(|row| row.id)
        .collect();
    assert!(expected.contains(&3) && !expected.contains(&5) && !expected.contains(&2));
    let window = AuditFilter {
        since: Some(since),
        until: Some(until),
        ..AuditFilter::default()
    };
    assert_eq!(ids(window).await, expected);
    let row = rows.iter().find(|row| row.id == 2).unwrap();
    assert_eq!(row.action, "role.create");
    assert_eq!(row.target.as_deref(), Some("acme/roles/app"));
    assert_eq!(row.actor.as_deref(), Some("1a2b3c4d"));
    assert_eq!(row.details, json!({}));

    // Pages of two, newest first, each cursor continuing below the last id.
    let mut pages = Vec::new();
    let mut cursor = None;
    loop {
        let (rows, next) = f
            .store
            .list_audit(&AuditFilter::default(), cursor, 2)
            .await
            .unwrap();
        pages.push(rows.iter().map(|row| row.id).collect::<Vec<_>>());
        match next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, [vec![6, 5], vec![4, 3], vec![2, 1]]);
    let (page, next) = f.store.list_audit(&acme, None, 2).await.unwrap();
    assert_eq!(page.iter().map(|r| r.id).collect::<Vec<_>>(), [6, 2]);
    assert_eq!(next, Some(2));
    let (page, next) = f.store.list_audit(&acme, next, 2).await.unwrap();
    assert_eq!(page.iter().map(|r| r.id).collect::<Vec<_>>(), [1]);
    assert_eq!(next, None);
    let (page, _) = f
        .store
        .list_audit(&AuditFilter::default(), None, 0)
        .await
        .unwrap();
    assert_eq!(page.len(), 1, "a limit of 0 means 1");
}

#[tokio::test]
async fn api_keys_insert_lookup_revoke_and_list() {
    let f = fixture().await;
    let (viewer_hash, admin_hash) = ([1u8; 32], [2u8; 32]);
    f.store
        .insert_api_key("1a2b3c4d", &viewer_hash, "viewer", Some("grafana"))
        .await
        .unwrap();
    f.store
        .insert_api_key("deadbeef", &admin_hash, "admin", None)
        .await
        .unwrap();
    assert_eq!(
        f.store.lookup_api_key("1a2b3c4d").await.unwrap(),
        Some((viewer_hash, "viewer".to_owned()))
    );
    assert_eq!(f.store.lookup_api_key("00000000").await.unwrap(), None);

    // Ids are never reused; roles and ids are checked by the schema.
    assert!(f
        .store
        .insert_api_key("1a2b3c4d", &admin_hash, "admin", None)
        .await
        .is_err());
    assert!(f
        .store
        .insert_api_key("0badc0de", &admin_hash, "root", None)
        .await
        .is_err());
    assert!(f
        .store
        .insert_api_key("NOT-HEX!", &admin_hash, "admin", None)
        .await
        .is_err());

    assert!(f.store.revoke_api_key("1a2b3c4d").await.unwrap());
    assert!(
        !f.store.revoke_api_key("1a2b3c4d").await.unwrap(),
        "already revoked"
    );
    assert!(
        !f.store.revoke_api_key("00000000").await.unwrap(),
        "no such key"
    );
    assert_eq!(f.store.lookup_api_key("1a2b3c4d").await.unwrap(), None);

    let keys = f.store.list_api_keys().await.unwrap();
    let summary: Vec<_> = keys
        .iter()
        .map(|k| {
            (
                k.id.as_str(),
                k.role.as_str(),
                k.name.as_deref(),
                k.revoked_at.is_some(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("1a2b3c4d", "viewer", Some("grafana"), true),
            ("deadbeef", "admin", None, false)
        ]
    );
}

#[tokio::test]
async fn the_schema_refuses_bad_tenant_ids_and_plaintext_passwords() {
    let f = fixture().await;
    let client = raw_client(&f.control).await;
    let insert = |id: String| {
        let client = &client;
        async move {
            client
                .execute(
                    "INSERT INTO tenants (id, backend) VALUES ($1, '{}')",
                    &[&id],
                )
                .await
        }
    };
    let long_ok = "a".repeat(63);
    for good in ["acme", "a", "0", "a-1", "x--y", long_ok.as_str()] {
        insert(good.to_owned())
            .await
            .unwrap_or_else(|e| panic!("{good}: {e}"));
    }
    let too_long = "a".repeat(64);
    for bad in [
        "Acme",
        "a_b",
        "-a",
        "a-",
        "",
        "a.b",
        "acme\n",
        "é",
        too_long.as_str(),
    ] {
        let error = insert(bad.to_owned()).await.unwrap_err();
        let db = error
            .as_db_error()
            .unwrap_or_else(|| panic!("{bad:?}: {error}"));
        assert_eq!(db.code(), &SqlState::CHECK_VIOLATION, "{bad:?}");
        assert_eq!(db.constraint(), Some("tenants_id_dns_label"), "{bad:?}");
    }

    let status = client
        .execute(
            "INSERT INTO tenants (id, backend, status) VALUES ('s', '{}', 'sleeping')",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Some(&SqlState::CHECK_VIOLATION));

    let plaintext = client
        .execute(
            "INSERT INTO roles (tenant_id, name, scram_verifier) VALUES ('acme', 'app', 'hunter2')",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(plaintext.code(), Some(&SqlState::CHECK_VIOLATION));
    client
        .execute(
            "INSERT INTO roles (tenant_id, name, scram_verifier) \
             VALUES ('acme', 'app', 'SCRAM-SHA-256$4096:c2FsdA==$a2V5:c2VydmVy')",
            &[],
        )
        .await
        .unwrap();
    // Roles go with their tenant.
    client
        .execute("DELETE FROM tenants WHERE id = 'acme'", &[])
        .await
        .unwrap();
    let roles: i64 = client
        .query_one("SELECT count(*) FROM roles", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(roles, 0);
}

#[tokio::test]
async fn tenant_and_role_changes_are_notified_at_commit() {
    let f = fixture().await;
    let (listener, mut connection) = f.control.config().connect(NoTls).await.unwrap();
    let (notifications, mut received) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let Ok(AsyncMessage::Notification(n)) = message {
                let _ = notifications.send((n.channel().to_owned(), n.payload().to_owned()));
            }
        }
    });
    listener
        .batch_execute("LISTEN sluice_catalog")
        .await
        .unwrap();

    let mut writer = raw_client(&f.control).await;
    // A rolled-back change notifies nobody.
    let tx = writer.transaction().await.unwrap();
    tx.execute(
        "INSERT INTO tenants (id, backend) VALUES ('ghost', '{}')",
        &[],
    )
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    writer
        .execute(
            r#"INSERT INTO tenants (id, backend) VALUES ('acme', '{"host": "/run/acme"}')"#,
            &[],
        )
        .await
        .unwrap();
    writer
        .execute(
            "INSERT INTO roles (tenant_id, name, scram_verifier) \
             VALUES ('acme', 'app', 'SCRAM-SHA-256$4096:c2FsdA==$a2V5:c2VydmVy')",
            &[],
        )
        .await
        .unwrap();
    writer
        .execute(
            "UPDATE tenants SET status = 'active' WHERE id = 'acme'",
            &[],
        )
        .await
        .unwrap();

    assert_eq!(
        next_notification(&mut received).await,
        json!({"table": "tenants", "op": "INSERT", "id": "acme", "role": null})
    );
    assert_eq!(
        next_notification(&mut received).await,
        json!({"table": "roles", "op": "INSERT", "id": "acme", "role": "app"})
    );
    assert_eq!(
        next_notification(&mut received).await,
        json!({"table": "tenants", "op": "UPDATE", "id": "acme", "role": null})
    );
}

#[tokio::test]
async fn host_names_belong_to_one_tenant_notify_and_go_with_it() {
    use control::hostnames::CertSummary;
    use control::secrets::SecretBox;
    use control::store::{ChangeError, HostnamePut};

    let f = fixture().await;
    let (listener, mut connection) = f.control.config().connect(NoTls).await.unwrap();
    let (notifications, mut received) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let Ok(AsyncMessage::Notification(n)) = message {
                let _ = notifications.send((n.channel().to_owned(), n.payload().to_owned()));
            }
        }
    });
    let writer = raw_client(&f.control).await;
    for id in ["acme", "globex"] {
        writer
            .execute(
                "INSERT INTO tenants (id, status, backend) VALUES ($1, 'active', '{}')",
                &[&id],
            )
            .await
            .unwrap();
    }
    listener
        .batch_execute("LISTEN sluice_catalog")
        .await
        .unwrap();
    let secrets = SecretBox::from_key(&[3; 32]);
    let name = "db.customer.test";
    let key = secrets.seal(&control::hostnames::key_secret("acme", name), "a key");
    let summary = CertSummary {
        subject: "CN=db.customer.test".into(),
        sans: vec![name.into()],
        not_after: std::time::SystemTime::now() + Duration::from_secs(3600),
        fingerprint: "ab".repeat(32),
    };
    let add = event("hostname.add", "acme/hostnames/db.customer.test", json!({}));
    let put = |tenant: &'static str| {
        let (store, key, summary, add) = (&f.store, &key, &summary, &add);
        async move {
            store
                .put_hostname(tenant, name, "CERT", key, summary, add)
                .await
        }
    };
    assert_eq!(put("acme").await.unwrap(), HostnamePut::Added);
    assert_eq!(put("acme").await.unwrap(), HostnamePut::Replaced);
    assert!(matches!(put("globex").await, Err(ChangeError::Taken(_))));
    assert!(matches!(put("nobody").await, Err(ChangeError::Missing(_))));
    let stored = f.store.list_hostnames("acme").await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].sans, [name]);
    assert_eq!(stored[0].key, key, "only the sealed key is stored");
    assert!(f.store.list_hostnames("globex").await.unwrap().is_empty());
    for _ in 0..2 {
        let change = next_notification(&mut received).await;
        assert_eq!(
            (&change["table"], &change["id"]),
            (&json!("hostnames"), &json!("acme"))
        );
    }
    // Audited: added, replaced; the refusals left nothing.
    let (actions, _) = f
        .store
        .list_audit(&AuditFilter::default(), None, 10)
        .await
        .unwrap();
    let replaced: Vec<&Value> = actions.iter().map(|e| &e.details["replaced"]).collect();
    assert_eq!(replaced, [&json!(true), &json!(false)]);
    // The name goes with its tenant.
    f.store.delete_tenant("acme").await.unwrap();
    assert!(f.store.all_hostnames().await.unwrap().is_empty());
    let remove = event("hostname.remove", "globex/hostnames/x", json!({}));
    assert!(matches!(
        f.store.delete_hostname("globex", name, &remove).await,
        Err(ChangeError::Missing(_))
    ));
}

#[tokio::test]
async fn the_embedded_store_refuses_a_second_start_and_keeps_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let first = start_control(dir.path().to_owned()).await.unwrap();
    let pid = first.pid().expect("running");
    {
        let store = Store::connect(first.config()).await.unwrap();
        store.migrate().await.unwrap();
        store
            .append_audit(&AuditEvent::new("system.start"))
            .await
            .unwrap();
        let client = raw_client(&first).await;
        let listen: String = client
            .query_one("SHOW listen_addresses", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(listen, "", "unix socket only");
    }
    let password = dir.path().join("control/superuser.password");
    let mode = std::fs::metadata(&password).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(!dir.path().join("control/pgdata.new").exists());

    let error = start_control(dir.path().to_owned()).await.unwrap_err();
    let message = format!("{error:#}");
    assert!(
        message.contains("in use by another Sluice process"),
        "{message}"
    );
    assert_eq!(first.pid(), Some(pid), "the refused start left it alone");

    tokio::task::spawn_blocking(move || first.stop())
        .await
        .unwrap()
        .unwrap();
    assert!(!process_alive(pid), "stopped");

    let again = start_control(dir.path().to_owned()).await.unwrap();
    let store = Store::connect(again.config()).await.unwrap();
    assert_eq!(store.migrate().await.unwrap(), Vec::<i32>::new());
    assert_eq!(store.verify_audit().await.unwrap(), verified(1));
    let pid = again.pid().expect("running");
    drop(store);
    tokio::task::spawn_blocking(move || drop(again))
        .await
        .unwrap();
    assert!(!process_alive(pid), "stopped on drop");
}

#[tokio::test]
async fn a_wrong_password_is_refused() {
    let f = fixture().await;
    let mut config = f.control.config();
    config.password("not-the-password");
    let error = Store::connect(config).await.unwrap_err();
    let message = format!("{error:#}");
    assert!(
        message.contains("password authentication failed"),
        "{message}"
    );
    assert!(f.dir.path().join("control/pgdata/PG_VERSION").exists());
}

/// The next catalog notification's payload, waiting at most 5 s.
async fn next_notification(received: &mut UnboundedReceiver<(String, String)>) -> Value {
    let (channel, payload) = tokio::time::timeout(Duration::from_secs(5), received.recv())
        .await
        .expect("a notification within 5 s")
        .expect("the listener is running");
    assert_eq!(channel, "sluice_catalog");
    serde_json::from_str(&payload).expect("a JSON payload")
}

fn process_alive(pid: u32) -> bool {
    let stat = Path::new("/proc").join(pid.to_string()).join("stat");
    std::fs::read_to_string(stat).is_ok_and(|text| {
        let state = text
            .rfind(')')
            .and_then(|end| text[end + 1..].trim_start().chars().next());
        !matches!(state, None | Some('Z') | Some('X'))
    })
}

/// Usage rows: a flush written again, or older than what is stored, changes nothing;
/// reads add the processes of an hour up (a replica's restarts: their peaks do not
/// add; replicas side by side: they do), take the latest disk sample, and group by day.
#[tokio::test]
async fn usage_writes_are_idempotent_and_reads_sum_the_processes() {
    use control::store::{Granularity, UsageRow, UsageTotals};
    use std::time::UNIX_EPOCH;

    let f = fixture().await;
    let hour = 1_700_002_800; // 2023-11-14T23:00:00Z
    let row = |writer: &str, replica: &str, hour: i64, queries: u64, peak: u64| UsageRow {
        tenant: "acme".into(),
        hour,
        writer: writer.into(),
        replica: replica.into(),
        totals: UsageTotals {
            queries,
            connection_us: queries * 1000,
            client_connections: 1,
            peak_server_connections: peak,
            ..UsageTotals::default()
        },
    };
    let read = |granularity| {
        let store = &f.store;
        async move {
            store
                .read_usage(
                    "acme",
                    UNIX_EPOCH + Duration::from_secs(1_699_920_000),
                    UNIX_EPOCH + Duration::from_secs(1_700_100_000),
                    granularity,
                )
                .await
                .unwrap()
        }
    };

    // One process's totals, written three times and once out of date.
    f.store
        .write_usage(&[row("p1", "", hour, 5, 2)])
        .await
        .unwrap();
    f.store
        .write_usage(&[row("p1", "", hour, 7, 3)])
        .await
        .unwrap();
    f.store
        .write_usage(&[row("p1", "", hour, 7, 3)])
        .await
        .unwrap();
    f.store
        .write_usage(&[row("p1", "", hour, 5, 2)])
        .await
        .unwrap();
    let buckets = read(Granularity::Hour).await;
    assert_eq!(buckets.len(), 1);
    assert_eq!(
        buckets[0].start,
        UNIX_EPOCH + Duration::from_secs(hour as u64)
    );
    assert_eq!(
        (buckets[0].totals.queries, buckets[0].totals.connection_us),
        (7, 7000)
    );

    // Its restart (same replica, another writer) adds its counters but not its peak;
    // a second replica's peak adds; another hour stands apart.
    f.store
        .write_usage(&[
            row("p2", "", hour, 10, 3),
            row("r2", "other", hour, 1, 4),
            row("p2", "", hour + 3600, 2, 1),
        ])
        .await
        .unwrap();
    let buckets = read(Granularity::Hour).await;
    assert_eq!(buckets.len(), 2);
    let t = buckets[0].totals;
    assert_eq!(
        (t.queries, t.client_connections, t.peak_server_connections),
        (18, 3, 3 + 4)
    );
    assert_eq!(buckets[1].totals.queries, 2);

    // Disk: the latest sample of the bucket, whoever took it; an older one loses.
    let micros = |s: i64| s * 1_000_000;
    let mut sampled = row("p2", "", hour, 10, 3);
    sampled.totals.disk_bytes = Some(500);
    sampled.totals.disk_sampled_at = Some(micros(hour + 60));
    let mut older = row("r2", "other", hour, 1, 4);
    older.totals.disk_bytes = Some(400);
    older.totals.disk_sampled_at = Some(micros(hour + 30));
    f.store
        .write_usage(&[sampled.clone(), older])
        .await
        .unwrap();
    let mut stale = sampled.clone();
    stale.totals.disk_bytes = Some(1);
    stale.totals.disk_sampled_at = Some(micros(hour + 10));
    f.store.write_usage(&[stale]).await.unwrap();
    assert_eq!(
        read(Granularity::Hour).await[0].totals.disk_bytes,
        Some(500)
    );

    // By day: the two hours fall on two UTC days (23:00 and 00:00).
    let days = read(Granularity::Day).await;
    assert_eq!(days.len(), 2);
    assert_eq!(
        days[0].start,
        UNIX_EPOCH + Duration::from_secs(1_699_920_000)
    );
    assert_eq!(days[1].totals.queries, 2);
    assert!(f.store.usage_known("acme").await.unwrap());
    assert!(!f.store.usage_known("globex").await.unwrap());
}
