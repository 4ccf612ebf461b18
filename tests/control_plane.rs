//! The control plane end to end, on a real `sluice serve` with its embedded control
//! store: the authorization matrix of every route, API keys (created, revoked at once,
//! kept across a restart), the audit log of every change (newest first, actor, action,
//! target), its hash chain (verifies, and names the event an `UPDATE` in the store
//! changed), and bad input that creates nothing.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::{json, Value};
use testkit::http::{request, HttpResponse};
use testkit::{Pki, SluiceConfig, SluiceProcess, TenantEntry};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// A directory with certificates and one tenant, `acme`, whose backend is never dialled
/// (these tests only use the admin API).
struct Env {
    dir: tempfile::TempDir,
    config: SluiceConfig,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::Builder::new()
            .prefix("sluice-control-plane-")
            .tempdir()
            .unwrap();
        let pki = Pki::generate(&dir.path().join("pki")).unwrap();
        let password_file = dir.path().join("acme-auth");
        std::fs::write(&password_file, "not-used\n").unwrap();
        let mut config = SluiceConfig::new(&pki);
        config.tenants.push(TenantEntry {
            id: "acme".into(),
            host: "127.0.0.1".into(),
            port: 1,
            tls: "disable",
            tls_ca: None,
            auth_password_file: password_file,
            auth_query: None,
            pool: Vec::new(),
            limits: Vec::new(),
            plan: None,
        });
        Env { dir, config }
    }

    fn start(&self) -> SluiceProcess {
        SluiceProcess::start(BIN.as_ref(), &self.dir.path().join("sluice"), &self.config)
            .expect("starting sluice")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("sluice/data")
    }
}

/// A tenant on a `static` backend nobody listens on: its job fails and retries, cheaply.
const STATIC_TENANT: &str = r#"{"id": "{fresh_id}", "backend": {"driver": "static",
    "host": "127.0.0.1", "port": 1, "admin_user": "admin", "admin_password": "never-used"}}"#;

/// `m1`, `m2`, …: a tenant id not used before in this process.
fn fresh_tenant_id() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    format!(
        "m{}",
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

fn call(
    sluice: &SluiceProcess,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: &str,
) -> HttpResponse {
    let extra = if body.is_empty() {
        ""
    } else {
        "Content-Type: application/json\r\n"
    };
    request(sluice.admin_addr, method, path, key, extra, body.as_bytes())
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// `call`, expecting `status`; the body as JSON (null if none).
fn expect(
    sluice: &SluiceProcess,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: &str,
    status: u16,
) -> Value {
    let r = call(sluice, method, path, key, body);
    assert_eq!(r.status, status, "{method} {path} {body}: {}", r.body);
    serde_json::from_str(&r.body).unwrap_or(Value::Null)
}

/// A new key with `role`, made with `admin`: (id, key).
fn create_key(sluice: &SluiceProcess, admin: &str, role: &str) -> (String, String) {
    let body = json!({"role": role, "name": format!("test {role}")}).to_string();
    let created = expect(sluice, "POST", "/v1/api-keys", Some(admin), &body, 201);
    assert_eq!(created["role"], role);
    let key = created["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with(&format!("sk_{}_", created["id"].as_str().unwrap())));
    (created["id"].as_str().unwrap().to_owned(), key)
}

fn key_id(key: &str) -> &str {
    &key[3..11]
}

#[derive(Clone, Copy, PartialEq, PartialOrd, Debug)]
enum Needs {
    Nothing,
    Viewer,
    Operator,
    Admin,
}

#[test]
fn every_route_answers_each_role_as_documented_and_bad_keys_create_nothing() {
    let env = Env::new();
    let sluice = env.start();
    let admin = sluice.admin_key.clone();
    let ready = expect(&sluice, "GET", "/readyz", None, "", 200);
    assert_eq!(ready["control_store"], "ok (embedded)", "{ready}");

    let (_, viewer) = create_key(&sluice, &admin, "viewer");
    let (_, operator) = create_key(&sluice, &admin, "operator");
    let (_, second_admin) = create_key(&sluice, &admin, "admin");

    // (method, template, concrete path, body, least role). `{fresh}` is a key made just
    // before the call, so every allowed DELETE has something to revoke.
    let table: &[(&str, &str, &str, &str, Needs)] = &[
        ("GET", "/healthz", "/healthz", "", Needs::Nothing),
        ("GET", "/readyz", "/readyz", "", Needs::Nothing),
        ("GET", "/metrics", "/metrics", "", Needs::Nothing),
        (
            "GET",
            "/v1/openapi.json",
            "/v1/openapi.json",
            "",
            Needs::Nothing,
        ),
        ("GET", "/v1/pools", "/v1/pools", "", Needs::Viewer),
        ("GET", "/v1/tenants", "/v1/tenants", "", Needs::Viewer),
        (
            "GET",
            "/v1/tenants/{id}",
            "/v1/tenants/acme",
            "",
            Needs::Viewer,
        ),
        (
            "PATCH",
            "/v1/tenants/{id}",
            "/v1/tenants/acme",
            r#"{"pool": {"size": 7}}"#,
            Needs::Operator,
        ),
        (
            "GET",
            "/v1/tenants/{id}/stats",
            "/v1/tenants/acme/stats",
            "",
            Needs::Viewer,
        ),
        (
            "GET",
            "/v1/tenants/{id}/usage",
            "/v1/tenants/acme/usage",
            "",
            Needs::Viewer,
        ),
        (
            "POST",
            "/v1/tenants/{id}/suspend",
            "/v1/tenants/acme/suspend",
            r#"{"reason": "matrix"}"#,
            Needs::Operator,
        ),
        (
            "POST",
            "/v1/tenants/{id}/resume",
            "/v1/tenants/acme/resume",
            "",
            Needs::Operator,
        ),
        (
            "GET",
            "/v1/tenants/{id}/bans",
            "/v1/tenants/acme/bans",
            "",
            Needs::Viewer,
        ),
        (
            "DELETE",
            "/v1/tenants/{id}/bans",
            "/v1/tenants/acme/bans",
            "",
            Needs::Operator,
        ),
        (
            "POST",
            "/v1/tenants",
            "/v1/tenants",
            STATIC_TENANT,
            Needs::Operator,
        ),
        (
            "DELETE",
            "/v1/tenants/{id}",
            "/v1/tenants/{fresh_tenant}",
            "",
            Needs::Operator,
        ),
        ("GET", "/v1/jobs/{id}", "/v1/jobs/1", "", Needs::Viewer),
        (
            "GET",
            "/v1/tenants/{id}/roles",
            "/v1/tenants/acme/roles",
            "",
            Needs::Viewer,
        ),
        (
            "POST",
            "/v1/tenants/{id}/roles",
            "/v1/tenants/acme/roles",
            r#"{"name": "matrix"}"#,
            Needs::Operator,
        ),
        (
            "POST",
            "/v1/tenants/{id}/roles/{name}/rotate",
            "/v1/tenants/acme/roles/matrix/rotate",
            "",
            Needs::Operator,
        ),
        (
            "DELETE",
            "/v1/tenants/{id}/roles/{name}",
            "/v1/tenants/acme/roles/matrix",
            "",
            Needs::Operator,
        ),
        ("GET", "/v1/api-keys", "/v1/api-keys", "", Needs::Admin),
        (
            "POST",
            "/v1/api-keys",
            "/v1/api-keys",
            r#"{"role": "viewer"}"#,
            Needs::Admin,
        ),
        (
            "DELETE",
            "/v1/api-keys/{id}",
            "/v1/api-keys/{fresh}",
            "",
            Needs::Admin,
        ),
        (
            "GET",
            "/v1/audit-events",
            "/v1/audit-events",
            "",
            Needs::Viewer,
        ),
        (
            "GET",
            "/v1/audit-events/verify",
            "/v1/audit-events/verify",
            "",
            Needs::Viewer,
        ),
        ("GET", "/v1/replicas", "/v1/replicas", "", Needs::Viewer),
        (
            "GET",
            "/v1/tenants/{id}/hostnames",
            "/v1/tenants/acme/hostnames",
            "",
            Needs::Viewer,
        ),
        (
            "POST",
            "/v1/tenants/{id}/hostnames",
            "/v1/tenants/acme/hostnames",
            r#"{"hostname": "db.example.test"}"#,
            Needs::Operator,
        ),
        (
            "DELETE",
            "/v1/tenants/{id}/hostnames/{hostname}",
            "/v1/tenants/acme/hostnames/db.example.test",
            "",
            Needs::Operator,
        ),
        ("GET", "/v1/clients", "/v1/clients", "", Needs::Viewer),
        ("GET", "/v1/servers", "/v1/servers", "", Needs::Viewer),
        (
            "POST",
            "/v1/tenants/{id}/pause",
            "/v1/tenants/acme/pause",
            "",
            Needs::Operator,
        ),
        (
            "DELETE",
            "/v1/tenants/{id}/pause",
            "/v1/tenants/acme/pause",
            "",
            Needs::Operator,
        ),
    ];
    let covered: BTreeSet<(String, String)> = table
        .iter()
        .map(|(m, t, ..)| (t.to_string(), m.to_string()))
        .collect();
    let served: BTreeSet<(String, String)> = admin_api::routes::routes()
        .into_iter()
        .map(|(t, m)| (t.to_owned(), m.to_owned()))
        .collect();
    assert_eq!(covered, served, "the table lists every route");

    let callers: [(Option<&str>, Needs); 5] = [
        (None, Needs::Nothing),
        (Some(viewer.as_str()), Needs::Viewer),
        (Some(operator.as_str()), Needs::Operator),
        (Some(admin.as_str()), Needs::Admin),
        (Some(second_admin.as_str()), Needs::Admin),
    ];
    for &(method, template, path, body, needs) in table {
        for (key, role) in callers {
            let path = if path.contains("{fresh}") {
                let (fresh, _) = create_key(&sluice, &admin, "viewer");
                path.replace("{fresh}", &fresh)
            } else if path.contains("{fresh_tenant}") {
                let id = fresh_tenant_id();
                let body = STATIC_TENANT.replace("{fresh_id}", &id);
                expect(&sluice, "POST", "/v1/tenants", Some(&admin), &body, 202);
                path.replace("{fresh_tenant}", &id)
            } else {
                path.to_owned()
            };
            let body = body.replace("{fresh_id}", &fresh_tenant_id());
            let r = call(&sluice, method, &path, key, &body);
            let expected = if needs == Needs::Nothing || role >= needs {
                match (method, template) {
                    ("POST", "/v1/api-keys") => 201,
                    ("POST", "/v1/tenants") | ("DELETE", "/v1/tenants/{id}") => 202,
                    // acme comes from the config file: no administrator credential.
                    ("POST", "/v1/tenants/{id}/roles")
                    | ("POST", "/v1/tenants/{id}/roles/{name}/rotate")
                    | ("DELETE", "/v1/tenants/{id}/roles/{name}") => 409,
                    // No certificate in the body; no such host name.
                    ("POST", "/v1/tenants/{id}/hostnames") => 422,
                    ("DELETE", "/v1/tenants/{id}/hostnames/{hostname}") => 404,
                    _ => 200,
                }
            } else if key.is_none() {
                401
            } else {
                403
            };
            assert_eq!(
                r.status, expected,
                "{method} {template} as {role:?}: {}",
                r.body
            );
            if expected == 401 {
                assert_eq!(r.header("www-authenticate"), Some("Bearer"));
            }
            if expected == 401 || expected == 403 {
                let code = r.json()["error"]["code"].as_str().unwrap().to_owned();
                assert_eq!(
                    code,
                    if expected == 401 {
                        "unauthorized"
                    } else {
                        "forbidden"
                    }
                );
            }
        }
    }
    // A malformed or unknown key is 401 on every protected route.
    for junk in [
        "sk_nope",
        &format!("sk_{}_{}", "0".repeat(8), "0".repeat(48)),
    ] {
        expect(&sluice, "GET", "/v1/tenants", Some(junk), "", 401);
    }

    // Bad bodies on POST /v1/api-keys: 400 / 422, and no key made, no event logged.
    let keys_before = expect(&sluice, "GET", "/v1/api-keys", Some(&admin), "", 200);
    let events_before = expect(
        &sluice,
        "GET",
        "/v1/audit-events/verify",
        Some(&admin),
        "",
        200,
    );
    for (body, status) in [
        ("", 400),
        ("{", 400),
        ("{\"role\": \"viewer\"", 400),
        (r#"{"role": "root"}"#, 422),
        (r#"{"role": "admin", "expires": "never"}"#, 422),
        (r#"{"name": "no role"}"#, 422),
        (r#"{"role": 3}"#, 422),
        (r#"["admin"]"#, 422),
        ("null", 422),
    ] {
        let error = expect(&sluice, "POST", "/v1/api-keys", Some(&admin), body, status);
        let code = if status == 400 {
            "bad_request"
        } else {
            "invalid_request"
        };
        assert_eq!(error["error"]["code"], code, "{body}");
    }
    let long_name = json!({"role": "viewer", "name": "n".repeat(201)}).to_string();
    expect(
        &sluice,
        "POST",
        "/v1/api-keys",
        Some(&admin),
        &long_name,
        422,
    );
    assert_eq!(
        expect(&sluice, "GET", "/v1/api-keys", Some(&admin), "", 200),
        keys_before
    );
    assert_eq!(
        expect(
            &sluice,
            "GET",
            "/v1/audit-events/verify",
            Some(&admin),
            "",
            200
        ),
        events_before
    );
    // Nor do refused changes leave audit events.
    expect(
        &sluice,
        "PATCH",
        "/v1/tenants/acme",
        Some(&admin),
        r#"{"pool": {"size": 0}}"#,
        422,
    );
    expect(
        &sluice,
        "POST",
        "/v1/tenants/nope/suspend",
        Some(&admin),
        "",
        404,
    );
    expect(
        &sluice,
        "DELETE",
        "/v1/api-keys/ffffffff",
        Some(&admin),
        "",
        404,
    );
    assert_eq!(
        expect(
            &sluice,
            "GET",
            "/v1/audit-events/verify",
            Some(&admin),
            "",
            200
        ),
        events_before
    );
    // The listed keys never show a key or a hash.
    let listed = expect(&sluice, "GET", "/v1/api-keys", Some(&admin), "", 200).to_string();
    for secret in [&admin, &viewer, &operator] {
        assert!(!listed.contains(&secret[12..]), "a key's secret is listed");
    }
}

#[test]
fn changes_are_audited_newest_first_and_tampering_is_named() {
    let env = Env::new();
    let sluice = env.start();
    let admin = sluice.admin_key.clone();
    let actor = key_id(&admin).to_owned();

    expect(
        &sluice,
        "PATCH",
        "/v1/tenants/acme",
        Some(&admin),
        r#"{"pool": {"size": 3}, "limits": {"connect_rate": 9}}"#,
        200,
    );
    expect(
        &sluice,
        "POST",
        "/v1/tenants/acme/suspend",
        Some(&admin),
        r#"{"reason": "unpaid", "terminate": true}"#,
        200,
    );
    expect(
        &sluice,
        "POST",
        "/v1/tenants/acme/resume",
        Some(&admin),
        "",
        200,
    );
    expect(
        &sluice,
        "DELETE",
        "/v1/tenants/acme/bans?ip=203.0.113.7",
        Some(&admin),
        "",
        200,
    );
    let (id, key) = create_key(&sluice, &admin, "operator");
    let revoked = expect(
        &sluice,
        "DELETE",
        &format!("/v1/api-keys/{id}"),
        Some(&admin),
        "",
        200,
    );
    assert_eq!(revoked, json!({"revoked": true}));

    let listed = expect(&sluice, "GET", "/v1/audit-events", Some(&admin), "", 200);
    assert_eq!(listed["next_cursor"], Value::Null);
    let events = listed["events"].as_array().unwrap().clone();
    let target = format!("api-key:{id}");
    let expected = [
        ("api_key.revoke", target.as_str()),
        ("api_key.create", target.as_str()),
        ("tenant.bans.lift", "acme"),
        ("tenant.resume", "acme"),
        ("tenant.suspend", "acme"),
        ("tenant.update", "acme"),
    ];
    assert_eq!(events.len(), expected.len(), "{events:#?}");
    for (event, (action, target)) in events.iter().zip(expected) {
        assert_eq!(event["action"], action, "{event}");
        assert_eq!(event["target"], target, "{event}");
        assert_eq!(event["actor"], actor.as_str(), "{event}");
        assert_eq!(event["source_ip"], "127.0.0.1", "{event}");
    }
    let ids: Vec<i64> = events.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    let update = &events[5]["details"];
    assert_eq!(update["request"]["pool"]["size"], 3);
    assert_eq!(update["after"]["pool"]["size"], 3);
    assert_eq!(update["after"]["limits"]["connect_rate"], 9);
    assert_ne!(update["before"]["pool"]["size"], 3);
    assert_eq!(events[4]["details"]["reason"], "unpaid");
    assert_eq!(events[4]["details"]["terminate"], true);
    assert_eq!(events[2]["details"]["ip"], "203.0.113.7");
    assert_eq!(
        events[1]["details"],
        json!({"role": "operator", "name": "test operator"})
    );
    let all = listed.to_string();
    assert!(
        !all.contains(&key[12..]) && !all.contains(&admin[12..]),
        "no key in the log"
    );

    // Filters and pages.
    let suspends = expect(
        &sluice,
        "GET",
        "/v1/audit-events?action=tenant.suspend&tenant=acme",
        Some(&admin),
        "",
        200,
    );
    assert_eq!(suspends["events"].as_array().unwrap().len(), 1);
    let page = expect(
        &sluice,
        "GET",
        "/v1/audit-events?limit=4",
        Some(&admin),
        "",
        200,
    );
    assert_eq!(page["events"].as_array().unwrap().len(), 4);
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let rest = expect(
        &sluice,
        "GET",
        &format!("/v1/audit-events?limit=4&cursor={cursor}"),
        Some(&admin),
        "",
        200,
    );
    assert_eq!(rest["events"].as_array().unwrap().len(), 2);
    assert_eq!(rest["events"][1]["action"], "tenant.update");

    let verdict = expect(
        &sluice,
        "GET",
        "/v1/audit-events/verify",
        Some(&admin),
        "",
        200,
    );
    assert_eq!(verdict, json!({"ok": true, "events": 6}));

    // An UPDATE made directly in the store breaks the chain at that event.
    let second = ids[ids.len() - 2];
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (client, connection) = testkit::sluice::embedded_store(&env.data_dir())
            .connect(tokio_postgres::NoTls)
            .await
            .expect("connecting to the embedded control store");
        tokio::spawn(connection);
        let changed = client
            .execute(
                "UPDATE audit_events SET details = '{\"x\":1}' WHERE id = $1",
                &[&second],
            )
            .await
            .unwrap();
        assert_eq!(changed, 1);
    });
    let verdict = expect(
        &sluice,
        "GET",
        "/v1/audit-events/verify",
        Some(&admin),
        "",
        200,
    );
    assert_eq!(
        verdict,
        json!({"ok": false, "events": 6, "broken_at": second})
    );
}

#[test]
fn revoked_keys_fail_at_once_and_keys_and_the_chain_survive_a_restart() {
    let env = Env::new();
    let sluice = env.start();
    let admin = sluice.admin_key.clone();
    let (_, operator) = create_key(&sluice, &admin, "operator");
    let (doomed_id, doomed) = create_key(&sluice, &admin, "admin");
    expect(&sluice, "GET", "/v1/tenants", Some(&doomed), "", 200);
    // A key may revoke itself; its next call is refused.
    expect(
        &sluice,
        "DELETE",
        &format!("/v1/api-keys/{doomed_id}"),
        Some(&doomed),
        "",
        200,
    );
    expect(&sluice, "GET", "/v1/tenants", Some(&doomed), "", 401);
    expect(&sluice, "GET", "/v1/api-keys", Some(&doomed), "", 401);
    expect(
        &sluice,
        "PATCH",
        "/v1/tenants/acme",
        Some(&operator),
        r#"{"pool": {"size": 4}}"#,
        200,
    );
    let before = expect(
        &sluice,
        "GET",
        "/v1/audit-events/verify",
        Some(&admin),
        "",
        200,
    );
    assert_eq!(before, json!({"ok": true, "events": 4}));
    drop(sluice);

    let sluice = env.start();
    assert_eq!(sluice.admin_key, admin, "the bootstrap key file is reused");
    let ready = expect(&sluice, "GET", "/readyz", None, "", 200);
    assert_eq!(ready["control_store"], "ok (embedded)");
    // The operator key was stored, so it still works; the revoked one still does not.
    expect(
        &sluice,
        "PATCH",
        "/v1/tenants/acme",
        Some(&operator),
        r#"{"pool": {"size": 5}}"#,
        200,
    );
    expect(&sluice, "GET", "/v1/tenants", Some(&doomed), "", 401);
    let keys = expect(&sluice, "GET", "/v1/api-keys", Some(&admin), "", 200);
    let keys = keys["api_keys"].as_array().unwrap();
    assert_eq!(keys.len(), 3, "{keys:?}");
    assert_eq!(keys[0]["name"], "bootstrap");
    let revoked: Vec<&Value> = keys.iter().filter(|k| !k["revoked_at"].is_null()).collect();
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0]["id"], doomed_id.as_str());
    let after = expect(
        &sluice,
        "GET",
        "/v1/audit-events/verify",
        Some(&admin),
        "",
        200,
    );
    assert_eq!(after, json!({"ok": true, "events": 5}));
}

#[test]
fn an_unreachable_store_leaves_the_data_plane_serving_and_changes_refused() {
    let mut env = Env::new();
    // Nothing listens on port 1; the password must never show up anywhere.
    env.config.plans =
        "\n[control]\ndatabase_url = \"postgres://sluice:hunter2secret@127.0.0.1:1/sluice\"\n"
            .into();
    let sluice = env.start();
    let admin = sluice.admin_key.clone();
    let ready = call(&sluice, "GET", "/readyz", None, "");
    assert_eq!(ready.status, 200, "the data plane serves: {}", ready.body);
    let ready = ready.json();
    let status = ready["control_store"].as_str().unwrap();
    assert!(status.starts_with("unreachable: "), "{status}");
    // The data plane serves the config file's tenant; the API, which needs the store, 503.
    assert_eq!(ready["catalog"]["tenants"], 1, "{ready}");
    assert_eq!(ready["catalog"]["source"], "config file", "{ready}");
    for (method, path, body) in [
        ("GET", "/v1/tenants", ""),
        ("GET", "/v1/tenants/acme", ""),
        ("POST", "/v1/tenants", r#"{"id": "new"}"#),
        ("DELETE", "/v1/tenants/acme", ""),
        ("GET", "/v1/jobs/1", ""),
        ("PATCH", "/v1/tenants/acme", r#"{"pool": {"size": 3}}"#),
        ("POST", "/v1/tenants/acme/suspend", ""),
        ("POST", "/v1/tenants/acme/resume", ""),
        ("DELETE", "/v1/tenants/acme/bans", ""),
        ("GET", "/v1/api-keys", ""),
        ("POST", "/v1/api-keys", r#"{"role": "viewer"}"#),
        ("DELETE", "/v1/api-keys/1a2b3c4d", ""),
        ("GET", "/v1/audit-events", ""),
        ("GET", "/v1/audit-events/verify", ""),
    ] {
        let error = expect(&sluice, method, path, Some(&admin), body, 503);
        assert_eq!(error["error"]["code"], "unavailable", "{method} {path}");
    }
    let log = sluice.log();
    assert!(log.contains("control store unreachable"), "{log}");
    assert!(!log.contains("hunter2secret") && !status.contains("hunter2secret"));
}

#[test]
fn config_check_refuses_a_database_url_that_does_not_parse() {
    let env = Env::new();
    let mut config = env.config.clone();
    config.plans = "\n[control]\ndatabase_url = \"postgres://u:pw@host:notaport/db\"\n".into();
    let path = env.dir.path().join("bad.toml");
    std::fs::write(&path, config.to_toml(&env.dir.path().join("data"))).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("control.database_url"), "{text}");
    assert!(!text.contains("pw@host"), "{text}");
}

/// A SIGKILLed Sluice leaves its embedded postmaster behind (a child outlives its
/// parent): the next Sluice on the data_dir stops it and runs the store again, while a
/// second Sluice next to a live one is refused the store (and still serves).
#[test]
fn a_killed_sluice_leaves_a_store_the_next_one_takes_over() {
    let env = Env::new();
    let mut first = env.start();
    let pid_file = env.data_dir().join("control/pgdata/postmaster.pid");
    let postmaster: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    first
        .signal_and_wait(
            nix::sys::signal::Signal::SIGKILL,
            std::time::Duration::from_secs(10),
        )
        .expect("sluice killed");
    // Running, not a zombie waiting for its new parent to reap it.
    let alive = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
        })
    };
    assert!(alive(postmaster), "the orphaned postmaster still runs");

    let second = env.start();
    let ready = expect(&second, "GET", "/readyz", None, "", 200);
    assert_eq!(ready["control_store"], "ok (embedded)", "{ready}");
    assert!(!alive(postmaster), "the leftover postmaster was stopped");
    let key = second.admin_key.clone();
    expect(
        &second,
        "GET",
        "/v1/audit-events/verify",
        Some(&key),
        "",
        200,
    );

    let third = env.start();
    let ready = expect(&third, "GET", "/readyz", None, "", 200);
    let store = ready["control_store"].as_str().unwrap();
    assert!(
        store.starts_with("unreachable") && store.contains("another Sluice"),
        "{ready}"
    );
    drop(third);
    // The owner is unaffected by the refused one.
    let ready = expect(&second, "GET", "/readyz", None, "", 200);
    assert_eq!(ready["control_store"], "ok (embedded)", "{ready}");
}

#[test]
fn a_separate_audit_database_holds_the_chain() {
    let mut env = Env::new();
    let audit = testkit::TestCluster::start(env.dir.path(), "audit", Default::default()).unwrap();
    env.config.plans = format!(
        "\n[control]\naudit_database_url = \"host={} port={} user={} dbname={} password={}\"\n",
        audit.socket_dir.display(),
        audit.cluster.socket_port(),
        testkit::cluster::APP_ROLE,
        testkit::cluster::APP_DATABASE,
        audit.app_password,
    );
    let sluice = env.start();
    let admin = sluice.admin_key.clone();
    expect(
        &sluice,
        "PATCH",
        "/v1/tenants/acme",
        Some(&admin),
        r#"{"pool": {"size": 7}}"#,
        200,
    );
    let events = expect(&sluice, "GET", "/v1/audit-events", Some(&admin), "", 200);
    let update = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "tenant.update")
        .expect("the change is audited")["id"]
        .as_i64()
        .unwrap();
    let count = |sql: &str| -> String {
        let out = audit.psql_direct(sql);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(
        count("SELECT count(*) FROM audit_events WHERE action = 'tenant.update'"),
        "1"
    );
    // Nothing in the control store's own table.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let in_store: i64 = rt.block_on(async {
        let (client, connection) = testkit::sluice::embedded_store(&env.data_dir())
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
            .query_one("SELECT count(*) FROM audit_events", &[])
            .await
            .unwrap()
            .get(0)
    });
    assert_eq!(in_store, 0);
    let verdict = expect(
        &sluice,
        "GET",
        "/v1/audit-events/verify",
        Some(&admin),
        "",
        200,
    );
    assert_eq!(verdict["ok"], true, "{verdict}");
    count(&format!(
        "UPDATE audit_events SET actor = 'mallory' WHERE id = {update} RETURNING 1"
    ));
    let verdict = expect(
        &sluice,
        "GET",
        "/v1/audit-events/verify",
        Some(&admin),
        "",
        200,
    );
    assert_eq!(verdict["ok"], false, "{verdict}");
    assert_eq!(verdict["broken_at"], update, "{verdict}");
}
