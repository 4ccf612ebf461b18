//! `openapi.json` against the implementation: the route table, auth, `$ref`s,
//! `Idempotency-Key` on every POST, the serde structs, and every answer of a live admin
//! listener (on loopback, over an embedded control store) checked against the schema the
//! document declares for that operation and status, with every declared status seen at
//! least once. The live part runs the whole tenant story: create with the `static`
//! driver (on a backend the `local` driver made), poll the job, manage roles, delete.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use admin_api::openapi::OPENAPI_JSON;
use admin_api::routes::routes;
use admin_api::{stats, Admin, AdminConfig, ConnectionHint};
use control::keys::Role;
use control::secrets::{tenant_secret, SecretBox};
use control::store::idempotency::Begin;
use control::store::{BackendRecord, EmbeddedControl, Store, TenantRecord};
use control::{CatalogSync, ConfigTenant, Control, Drivers, Plane, Plans};
use provision::{
    sql, BackendAddress, BackendRequest, BoxFuture, Driver, LocalDriver, StaticDriver,
};
use router::{Catalog, CatalogHandle, TenantId};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use testkit::http::HttpResponse;
use tokio_util::sync::CancellationToken;

/// Paths anyone may call, without a key.
const PUBLIC: [&str; 4] = ["/healthz", "/readyz", "/metrics", "/v1/openapi.json"];
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];
/// The JSON Schema keywords `validate` understands; the document may use no others.
const KEYWORDS: [&str; 17] = [
    "$ref",
    "type",
    "properties",
    "required",
    "additionalProperties",
    "propertyNames",
    "items",
    "enum",
    "const",
    "anyOf",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "description",
    "examples",
    "default",
];

fn doc() -> Value {
    serde_json::from_str(OPENAPI_JSON).expect("openapi.json is JSON")
}

/// Every operation: (path, method, operation).
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            if METHODS.contains(&method.as_str()) {
                ops.push((path.clone(), method.clone(), op.clone()));
            }
        }
    }
    ops
}

/// Follows `$ref`s (local JSON pointers) until a value that is not one.
fn resolve<'a>(doc: &'a Value, mut value: &'a Value) -> &'a Value {
    while let Some(pointer) = value.get("$ref").and_then(Value::as_str) {
        let pointer = pointer
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{pointer}: not a local $ref"));
        value = doc
            .pointer(pointer)
            .unwrap_or_else(|| panic!("$ref #{pointer} points at nothing"));
    }
    value
}

fn schema<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["components"]["schemas"]
        .get(name)
        .unwrap_or_else(|| panic!("no schema {name}"))
}

fn keys(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .expect("an object")
        .keys()
        .cloned()
        .collect()
}

fn required(schema: &Value) -> BTreeSet<String> {
    schema["required"]
        .as_array()
        .map(|r| r.iter().map(|k| k.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

fn is_type(value: &Value, name: &str) -> bool {
    match name {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "string" => value.is_string(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        other => panic!("unknown type {other}"),
    }
}

/// Checks `value` against `schema`, for the subset of JSON Schema in [`KEYWORDS`]. One
/// rule is stricter than JSON Schema: an object schema with `properties` and no
/// `additionalProperties` refuses keys it does not list, so no answer can carry a field
/// the document does not describe.
fn validate(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(doc, schema);
    let object = schema.as_object().expect("a schema is an object");
    for keyword in object.keys() {
        assert!(
            KEYWORDS.contains(&keyword.as_str()),
            "{at}: the test's validator does not know {keyword:?}"
        );
    }
    if let Some(any) = schema.get("anyOf") {
        let any = any.as_array().unwrap();
        if !any.iter().any(|s| validate(doc, s, value, at).is_ok()) {
            return Err(format!("{at}: {value} matches nothing in anyOf"));
        }
    }
    if let Some(types) = schema.get("type") {
        let types: Vec<&str> = match types {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().map(|t| t.as_str().unwrap()).collect(),
            _ => panic!("{at}: bad type"),
        };
        if !types.iter().any(|t| is_type(value, t)) {
            return Err(format!("{at}: {value} is not {types:?}"));
        }
    }
    if let Some(c) = schema.get("const") {
        if c != value {
            return Err(format!("{at}: {value} is not {c}"));
        }
    }
    if let Some(e) = schema.get("enum") {
        if !e.as_array().unwrap().contains(value) {
            return Err(format!("{at}: {value} is not one of {e}"));
        }
    }
    if let Some(n) = value.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
            if n < min {
                return Err(format!("{at}: {value} < minimum {min}"));
            }
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
            if n > max {
                return Err(format!("{at}: {value} > maximum {max}"));
            }
        }
    }
    if let Some(s) = value.as_str() {
        let length = s.chars().count() as u64;
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
            if length > max {
                return Err(format!("{at}: longer than {max}"));
            }
        }
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
            if length < min {
                return Err(format!("{at}: shorter than {min}"));
            }
        }
    }
    if let Some(items) = (value.as_array()).zip(schema.get("items")) {
        for (i, item) in items.0.iter().enumerate() {
            validate(doc, items.1, item, &format!("{at}[{i}]"))?;
        }
    }
    if let Some(fields) = value.as_object() {
        for key in required(schema) {
            if !fields.contains_key(&key) {
                return Err(format!("{at}: {key:?} is missing"));
            }
        }
        let properties = schema.get("properties").and_then(Value::as_object);
        for (key, field) in fields {
            let here = format!("{at}.{key}");
            if let Some(names) = schema.get("propertyNames") {
                validate(doc, names, &Value::String(key.clone()), &here)?;
            }
            if let Some(property) = properties.and_then(|p| p.get(key)) {
                validate(doc, property, field, &here)?;
                continue;
            }
            match schema.get("additionalProperties") {
                Some(Value::Bool(true)) => {}
                Some(Value::Bool(false)) => return Err(format!("{here}: not allowed")),
                Some(additional) => validate(doc, additional, field, &here)?,
                None if properties.is_some() => return Err(format!("{here}: not in the document")),
                None => {}
            }
        }
    }
    Ok(())
}

#[test]
fn document_lists_exactly_the_routes() {
    let doc = doc();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    assert_eq!(doc["info"]["title"], "Sluice admin API");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));

    let documented: BTreeSet<(String, String)> = operations(&doc)
        .into_iter()
        .filter(|(_, method, _)| method != "head")
        .map(|(path, method, _)| (path, method))
        .collect();
    let served: BTreeSet<(String, String)> = routes()
        .into_iter()
        .filter(|(_, method)| *method != "HEAD")
        .map(|(path, method)| (path.to_owned(), method.to_ascii_lowercase()))
        .collect();
    assert_eq!(documented, served);
    assert!(served.contains(&("/v1/openapi.json".to_owned(), "get".to_owned())));

    // Each `{name}` of a path is a path parameter of each of its operations, and the
    // other way round.
    for (path, method, op) in operations(&doc) {
        let item = &doc["paths"][&path];
        let in_template: BTreeSet<String> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .map(str::to_owned)
            .collect();
        let mut declared = BTreeSet::new();
        for parameter in [&item["parameters"], &op["parameters"]]
            .into_iter()
            .filter_map(Value::as_array)
            .flatten()
        {
            let parameter = resolve(&doc, parameter);
            if parameter["in"] == "path" {
                assert_eq!(parameter["required"], true, "{method} {path}");
                declared.insert(parameter["name"].as_str().unwrap().to_owned());
            }
        }
        assert_eq!(in_template, declared, "{method} {path}");
    }
}

#[test]
fn protected_operations_need_a_bearer_key() {
    let doc = doc();
    let scheme = &doc["components"]["securitySchemes"]["bearerAuth"];
    assert_eq!(
        (&scheme["type"], &scheme["scheme"]),
        (&json!("http"), &json!("bearer"))
    );
    assert!(doc.get("security").is_none(), "security is per operation");
    for (path, method, op) in operations(&doc) {
        let description = op["description"].as_str().unwrap();
        let responses = &op["responses"];
        if PUBLIC.contains(&path.as_str()) {
            assert!(op.get("security").is_none(), "{method} {path}");
            assert!(responses.get("401").is_none(), "{method} {path}");
            assert!(description.contains("No API key needed"), "{method} {path}");
            continue;
        }
        assert_eq!(
            op["security"],
            json!([{"bearerAuth": []}]),
            "{method} {path}"
        );
        let unauthorized = resolve(&doc, &responses["401"]);
        assert!(
            unauthorized["headers"].get("WWW-Authenticate").is_some(),
            "{method} {path}"
        );
        // The description names the role; only operator and admin endpoints can answer
        // 403 (every key is at least a viewer).
        let restricted =
            description.contains("role operator or admin") || description.contains("role admin.");
        assert!(
            restricted || description.contains("any role"),
            "{method} {path}: which role?"
        );
        assert_eq!(
            responses.get("403").is_some(),
            restricted,
            "{method} {path}"
        );
    }
}

#[test]
fn refs_resolve_and_components_are_used() {
    fn walk(value: &Value, refs: &mut Vec<String>) {
        match value {
            Value::Object(fields) => {
                if let Some(r) = fields.get("$ref").and_then(Value::as_str) {
                    refs.push(r.to_owned());
                }
                fields.values().for_each(|v| walk(v, refs));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, refs)),
            _ => {}
        }
    }
    let doc = doc();
    let mut refs = Vec::new();
    walk(&doc, &mut refs);
    assert!(refs.len() > 20);
    for r in &refs {
        let pointer = r.strip_prefix('#').expect("local $ref");
        assert!(doc.pointer(pointer).is_some(), "{r} points at nothing");
    }
    let used: BTreeSet<&str> = refs.iter().map(String::as_str).collect();
    for kind in ["schemas", "responses", "parameters", "headers"] {
        for name in doc["components"][kind].as_object().unwrap().keys() {
            let r = format!("#/components/{kind}/{name}");
            assert!(used.contains(r.as_str()), "{r} is never used");
        }
    }
}

#[test]
fn operations_have_unique_ids_and_say_what_they_do() {
    let doc = doc();
    let mut ids = BTreeSet::new();
    for (path, method, op) in operations(&doc) {
        let id = op["operationId"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {path}"));
        assert!(ids.insert(id.to_owned()), "operationId {id} twice");
        for field in ["summary", "description"] {
            assert!(
                op[field].as_str().is_some_and(|s| !s.is_empty()),
                "{method} {path}: {field}"
            );
        }
        let success = op["responses"]
            .as_object()
            .unwrap()
            .keys()
            .filter(|s| s.starts_with('2'))
            .count();
        assert_eq!(success, 1, "{method} {path}: one success status");
        for (status, response) in op["responses"].as_object().unwrap() {
            let response = resolve(&doc, response);
            assert!(
                response["description"].is_string(),
                "{method} {path} {status}"
            );
            let code: u16 = status.parse().unwrap();
            if code >= 400 && code != 431 {
                assert!(
                    response["content"]["application/json"]["schema"].is_object(),
                    "{method} {path} {status}: errors are JSON"
                );
            }
        }
    }
}

/// Every `example` (and every value of `examples`) of a media type fits its schema.
#[test]
fn examples_fit_their_schemas() {
    fn walk(doc: &Value, value: &Value, seen: &mut usize) {
        match value {
            Value::Object(fields) => {
                if let (Some(example), Some(schema)) = (fields.get("example"), fields.get("schema"))
                {
                    validate(doc, schema, example, "example").unwrap();
                    *seen += 1;
                }
                if let (Some(Value::Object(examples)), Some(schema)) =
                    (fields.get("examples"), fields.get("schema"))
                {
                    for (name, example) in examples {
                        validate(doc, schema, &example["value"], name).unwrap();
                        *seen += 1;
                    }
                }
                fields.values().for_each(|v| walk(doc, v, seen));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(doc, v, seen)),
            _ => {}
        }
    }
    let doc = doc();
    let mut seen = 0;
    walk(&doc, &doc, &mut seen);
    assert!(seen >= 8, "{seen} examples");
}

/// Every POST takes `Idempotency-Key` and declares what it can cause: 400 (a malformed
/// key), 409 (the first request still running), 422 (the key reused for another
/// request), 503 (keys live in the control store), and the replay header on its answer.
#[test]
fn every_post_takes_an_idempotency_key() {
    let doc = doc();
    let parameter = &doc["components"]["parameters"]["IdempotencyKey"];
    assert_eq!(
        (&parameter["name"], &parameter["in"], &parameter["required"]),
        (&json!("Idempotency-Key"), &json!("header"), &json!(false))
    );
    assert_eq!(
        (
            &parameter["schema"]["minLength"],
            &parameter["schema"]["maxLength"]
        ),
        (&json!(1), &json!(255))
    );
    let mut posts = 0;
    for (path, method, op) in operations(&doc) {
        let takes_key = op["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p["$ref"] == "#/components/parameters/IdempotencyKey");
        assert_eq!(takes_key, method == "post", "{method} {path}");
        if method != "post" {
            continue;
        }
        posts += 1;
        let responses = op["responses"].as_object().unwrap();
        for status in ["400", "409", "422", "503"] {
            assert!(responses.contains_key(status), "{method} {path} {status}");
        }
        let (status, success) = responses.iter().find(|(s, _)| s.starts_with('2')).unwrap();
        let header = &resolve(&doc, success)["headers"]["Idempotent-Replayed"];
        assert_eq!(
            header["$ref"], "#/components/headers/IdempotentReplayed",
            "{method} {path} {status}"
        );
        assert!(
            op["description"]
                .as_str()
                .unwrap()
                .contains("Honours `Idempotency-Key`"),
            "{method} {path}"
        );
    }
    let served = routes().iter().filter(|(_, m)| *m == "POST").count();
    assert_eq!(posts, served);
}

/// Each response struct, serialized, has exactly the keys of its schema, of its types;
/// a key the struct always writes is `required`. (Building the structs field by field,
/// without `..Default::default()`, makes a new field fail to compile here.)
#[test]
fn schemas_match_the_serde_structs() {
    let doc = doc();
    let check = |name: &str, sample: &Value, always: bool| {
        let schema = schema(&doc, name);
        let properties: BTreeSet<String> = schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(keys(sample), properties, "{name}: keys");
        if always {
            assert_eq!(required(schema), properties, "{name}: required");
        }
        validate(&doc, schema, sample, name).unwrap();
    };
    let counts = stats::CountsView {
        clients: stats::Clients {
            active: 1,
            waiting: 2,
            idle: 3,
            pinned: 1,
        },
        servers: stats::Servers {
            active: 1,
            idle: 4,
            connecting: 0,
        },
        totals: stats::Totals {
            queries: 10,
            transactions: 9,
            bytes_from_clients: 100,
            bytes_to_clients: 1000,
            waits: 1,
        },
        rates: stats::Rates {
            queries_per_s: 1.5,
            transactions_per_s: 1.0,
            bytes_from_clients_per_s: 0.0,
            bytes_to_clients_per_s: 2.25,
        },
        wait: stats::Wait {
            avg_ms: 1.7,
            max_ms: 4.2,
        },
        backend_up: true,
    };
    check("Clients", &to_json(&counts.clients), true);
    check("Servers", &to_json(&counts.servers), true);
    check("Totals", &to_json(&counts.totals), true);
    check("Rates", &to_json(&counts.rates), true);
    check("Wait", &to_json(&counts.wait), true);
    let pool = stats::PoolStatsView {
        tenant: "acme".into(),
        database: "app".into(),
        role: "app".into(),
        mode: "transaction",
        size: 20,
        counts: counts.clone(),
    };
    check("PoolStats", &to_json(&pool), true);
    let tenant_stats = stats::TenantStatsView {
        tenant: "acme".into(),
        counts: stats::CountsView::default(),
        backend_parked: false,
        rejected: [("banned", 2), ("auth_failed", 1)].into_iter().collect(),
        disk: stats::DiskView {
            bytes: Some(52_428_800),
            limit_bytes: Some(104_857_600),
            state: "ok",
            sampled_at: Some("2026-11-22T10:00:00.000000Z".into()),
        },
        pools: vec![pool],
    };
    check("TenantStats", &to_json(&tenant_stats), true);
    check(
        "TenantDisk",
        &to_json(&stats::DiskView::of(None, None)),
        true,
    );

    let pool_settings = control::settings::PoolPatch {
        mode: Some("session".into()),
        size: Some(20),
        min_idle: Some(0),
        max_wait_ms: Some(5000),
        idle_timeout_s: Some(600),
        lifetime_s: Some(3600),
        max_prepared_statements: Some(200),
        reserve: Some(0),
        reserve_wait_ms: Some(1000),
        session_state: Some("pin".into()),
    };
    let limits = control::settings::LimitsPatch {
        query_timeout_ms: Some(0),
        idle_in_transaction_timeout_ms: Some(0),
        client_idle_timeout_s: Some(0),
        max_client_connections: Some(200),
        max_server_connections: Some(0),
        connect_rate: Some(50),
        query_rate: Some(0),
        client_bytes_rate: Some(0),
        server_bytes_rate: Some(0),
        max_concurrent_logins: Some(32),
        failed_login_max: Some(10),
        failed_login_window_s: Some(60),
        failed_login_ban_s: Some(120),
        allow_cidrs: Some(vec!["10.0.0.0/8".into()]),
        suspend_after_idle_s: Some(0),
        disk_limit_mb: Some(0),
    };
    // What a tenant shows has every key; a PATCH takes the same keys.
    check("PoolSettings", &to_json(&pool_settings), true);
    check("PoolPatch", &to_json(&pool_settings), false);
    check("Limits", &to_json(&limits), true);
    check("LimitsPatch", &to_json(&limits), false);
    let patch = json!({"plan": "pro", "pool": to_json(&pool_settings), "limits": to_json(&limits)});
    check("TenantPatch", &patch, false);
    serde_json::from_value::<admin_api::handlers::tenant_changes::TenantPatch>(patch)
        .expect("the struct takes it");

    let backend = |address: Option<&str>| admin_api::handlers::tenants::BackendView {
        driver: "static".into(),
        address: address.map(str::to_owned),
        tls: "verify-full".into(),
        allow_auth_user_login: false,
    };
    check(
        "Backend",
        &to_json(&backend(Some("db.internal:5432"))),
        true,
    );
    check("Backend", &to_json(&backend(None)), true);
    let suspended = admin_api::handlers::tenants::TenantView {
        id: "acme".into(),
        status: "suspended".into(),
        suspended_reason: Some("unpaid".into()),
        // Shape only: a tenant shows one reason, for its status.
        failed_reason: Some("its backend is down and does not restart".into()),
        plan: Some("nano".into()),
        backend: backend(Some("db.internal:5432")),
        pool: pool_settings.clone(),
        limits: limits.clone(),
        connection_string: Some("postgresql://acme.db.example.com:6432/app?sslmode=require".into()),
    };
    let provisioning = admin_api::handlers::tenants::TenantView {
        id: "shop".into(),
        status: "provisioning".into(),
        suspended_reason: None,
        failed_reason: None,
        plan: None,
        backend: backend(None),
        pool: pool_settings,
        limits,
        connection_string: None,
    };
    check("Tenant", &to_json(&suspended), false);
    let minimal = to_json(&provisioning);
    assert_eq!(keys(&minimal), required(schema(&doc, "Tenant")));
    validate(&doc, schema(&doc, "Tenant"), &minimal, "Tenant").unwrap();

    let job = |error: Option<&str>| admin_api::handlers::jobs::JobView {
        id: 7,
        kind: "create".into(),
        tenant: "shop".into(),
        state: "queued".into(),
        steps_done: vec!["credentials".into(), "create_backend".into()],
        attempts: 2,
        error: error.map(str::to_owned),
        created_at: "2026-11-22T23:40:01.123456Z".into(),
        updated_at: "2026-11-22T23:40:03.000001Z".into(),
    };
    check("Job", &to_json(&job(None)), true);
    check(
        "Job",
        &to_json(&job(Some("waiting for the backend: timed out"))),
        true,
    );
    let created = json!({"tenant": to_json(&provisioning), "job": to_json(&job(None))});
    check("TenantCreated", &created, true);
    check("TenantDeleting", &json!({"job": to_json(&job(None))}), true);
    let hostname = admin_api::handlers::hostnames::HostnameView {
        hostname: "db.customer.com".into(),
        tenant: "acme".into(),
        subject: "CN=db.customer.com".into(),
        sans: vec!["db.customer.com".into()],
        not_after: "2027-11-22T23:40:01Z".into(),
        fingerprint: "ab".repeat(32),
        created_at: "2026-11-22T23:40:01.123456Z".into(),
        updated_at: "2026-11-22T23:40:01.123456Z".into(),
    };
    check("Hostname", &to_json(&hostname), true);
    check(
        "HostnameList",
        &json!({"hostnames": [to_json(&hostname)]}),
        true,
    );

    // The request structs take exactly the keys their schemas list (serde names them
    // when it refuses an unknown one), and the documented examples.
    for (name, fields) in [
        (
            "CreateTenant",
            fields_of::<admin_api::handlers::tenant_create::CreateTenant>(),
        ),
        (
            "CreateBackend",
            fields_of::<admin_api::handlers::tenant_create::CreateBackend>(),
        ),
        (
            "TenantPatch",
            fields_of::<admin_api::handlers::tenant_changes::TenantPatch>(),
        ),
        (
            "NewHostname",
            fields_of::<admin_api::handlers::hostnames::AddHostname>(),
        ),
        ("PoolPatch", fields_of::<control::settings::PoolPatch>()),
        (
            "ClientConnection",
            fields_of::<admin_api::handlers::connections::ClientConnection>(),
        ),
        (
            "ServerConnection",
            fields_of::<admin_api::handlers::connections::ServerConnection>(),
        ),
        (
            "PauseState",
            fields_of::<admin_api::handlers::connections::PauseState>(),
        ),
        ("LimitsPatch", fields_of::<control::settings::LimitsPatch>()),
    ] {
        assert_eq!(fields, keys(&schema(&doc, name)["properties"]), "{name}");
        assert_eq!(
            schema(&doc, name)["additionalProperties"],
            false,
            "{name}: serde refuses unknown keys"
        );
    }
    let examples = doc["paths"]["/v1/tenants"]["post"]["requestBody"]["content"]
        ["application/json"]["examples"]
        .as_object()
        .unwrap();
    for (name, example) in examples {
        serde_json::from_value::<admin_api::handlers::tenant_create::CreateTenant>(
            example["value"].clone(),
        )
        .unwrap_or_else(|e| panic!("example {name}: {e}"));
    }
}

/// The fields of a `deny_unknown_fields` struct, as serde lists them when it refuses
/// a field it does not know.
fn fields_of<T: serde::de::DeserializeOwned + std::fmt::Debug>() -> BTreeSet<String> {
    let error = serde_json::from_value::<T>(json!({"no such field": 0}))
        .unwrap_err()
        .to_string();
    let (_, expected) = error
        .split_once("expected ")
        .unwrap_or_else(|| panic!("{error}"));
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

fn to_json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).expect("serializes")
}

// ---- the live listener ----

#[derive(Debug)]
struct Gates;

impl router::AdmissionControl for Gates {
    fn terminate_sessions(&self, _: &TenantId) -> usize {
        0
    }
    fn bans(&self, _: &TenantId) -> Vec<router::Ban> {
        vec![
            router::Ban {
                ip: "203.0.113.7".parse().unwrap(),
                until_remaining: Duration::from_secs(30),
                failures: 10,
            },
            router::Ban {
                ip: "2001:db8::1".parse().unwrap(),
                until_remaining: Duration::from_millis(10),
                failures: 12,
            },
        ]
    }
    fn lift(&self, _: &TenantId, ip: Option<IpAddr>) -> usize {
        if ip.is_some() {
            1
        } else {
            2
        }
    }
}

/// A driver whose backends never come up and never go away: its create and delete jobs
/// fail and wait to retry (2 s, 4 s, ...), so its tenants stay `provisioning` or
/// `deleting` for as long as the test needs them to.
#[derive(Debug)]
struct Stuck;

impl Driver for Stuck {
    fn name(&self) -> &'static str {
        "stuck"
    }
    fn create<'a>(
        &'a self,
        _: &'a BackendRequest,
    ) -> BoxFuture<'a, anyhow::Result<BackendAddress>> {
        Box::pin(async { Err(anyhow::anyhow!("this backend never comes up")) })
    }
    fn ensure_running<'a>(&'a self, _: &'a str) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async { Ok(()) })
    }
    fn destroy<'a>(&'a self, _: &'a str) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async { Err(anyhow::anyhow!("this backend never goes away")) })
    }
    fn shutdown(&self) {}
}

/// The secrets key both listeners share (they share a store).
const SECRETS_KEY: [u8; 32] = [7; 32];
/// What tenant views show as `connection_string`.
const SNI_SUFFIX: &str = "db.example.test";

/// A backend nobody listens on, as the config file declares one; with an administrator
/// when `admin_user` is given.
fn backend_record(admin_user: Option<&str>) -> BackendRecord {
    BackendRecord {
        driver: "config".into(),
        host: Some("127.0.0.1".into()),
        port: Some(1),
        tls: "disable".into(),
        tls_ca: None,
        admin_user: admin_user.map(str::to_owned),
        admin_database: admin_user.map(|_| "postgres".to_owned()),
        auth_user: "sluice".into(),
        allow_auth_user_login: false,
        auth_database: "postgres".into(),
        auth_query: None,
        params: Value::Null,
    }
}

/// A tenant of the config file: active, no administrator credential.
fn config_tenant(id: &str) -> ConfigTenant {
    ConfigTenant {
        record: TenantRecord {
            id: id.into(),
            plan: None,
            status: "active".into(),
            suspended_reason: None,
            backend: backend_record(None),
            pool: Default::default(),
            limits: Default::default(),
            version: 0,
        },
        auth_password: "secret".into(),
    }
}

/// Binds an admin listener on loopback whose catalog sync (data in `dir`) starts from
/// the config tenants `acme` and `globex` (written to the store when `control` has
/// one), with a pool each and a refused login for acme, and the `static` and `stuck`
/// drivers.
fn bind(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    key_file: &Path,
    metrics_enabled: bool,
    control: Control,
) -> Admin {
    std::fs::create_dir_all(dir).unwrap();
    let catalog = Arc::new(CatalogHandle::new(Catalog::default()));
    let sync = Arc::new(CatalogSync::new(
        catalog.clone(),
        Arc::new(Plans::default()),
        Arc::new(SecretBox::from_key(&SECRETS_KEY)),
        dir,
        vec![config_tenant("acme"), config_tenant("globex")],
    ));
    rt.block_on(sync.start(&control));
    let pools = Arc::new(pooler::Pools::new());
    for t in catalog.snapshot().iter() {
        let key = pooler::PoolKey {
            tenant: t.id.clone(),
            database: "app".into(),
            role: "app".into(),
        };
        pools.get_or_create(key, &t.backend, &t.pool, t.limits.max_server_connections);
    }
    let rejections = Arc::new(router::Rejections::new(Arc::new(
        router::TenantLabels::new(100),
    )));
    let acme = TenantId::parse("acme").unwrap();
    rejections.record(router::Who::Tenant(&acme), router::Reason::Banned);
    let config = AdminConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        bootstrap_key_file: key_file.to_owned(),
        metrics_enabled,
        usage: Default::default(),
    };
    let mut drivers = Drivers::default();
    drivers.add(Arc::new(StaticDriver));
    drivers.add(Arc::new(Stuck));
    let drivers = Arc::new(drivers);
    let plane = Plane {
        parking: Arc::new(control::park::Parking::new(sync.clone(), drivers.clone())),
        disk: Default::default(),
        control,
        sync,
        drivers,
        wake: Arc::new(tokio::sync::Notify::new()),
        gates: Arc::new(Gates),
        health: Default::default(),
        // A replica of a fleet (of none other), so `/v1/replicas` reads the store.
        fleet: Some(control::fleet::FleetConfig {
            heartbeat: Duration::from_secs(1),
            expire_after: Duration::from_secs(5),
        }),
    };
    let hint = Some(ConnectionHint {
        sni_suffix: SNI_SUFFIX.into(),
        port: 6432,
    });
    let memory = router::MemoryBudget::new(1 << 30, 1 << 28);
    rt.block_on(Admin::bind(
        &config, catalog, pools, rejections, memory, plane, hint,
    ))
    .unwrap()
}

/// The listener, the document, which (path, method, status) answers were seen, and
/// what the tests fill path templates with.
struct Live {
    doc: Value,
    addr: SocketAddr,
    seen: BTreeSet<(String, String, u16)>,
    /// `{id}` of `/v1/jobs/{id}`.
    job: i64,
    /// While set, a 422 is expected for a reason the schema cannot express (a cross-field
    /// rule, the syntax of a name, a plan that does not exist): the body must fit it.
    beyond_schema: bool,
}

/// The error codes each status may carry.
fn codes_of(status: u16) -> &'static [&'static str] {
    match status {
        400 => &["bad_request"],
        401 => &["unauthorized"],
        403 => &["forbidden"],
        404 => &["not_found"],
        405 => &["method_not_allowed"],
        409 => &["conflict"],
        413 => &["payload_too_large"],
        422 => &["invalid_request", "idempotency_key_reused"],
        500 => &["internal"],
        503 => &["unavailable", "backend_unavailable"],
        other => panic!("no error code for {other}"),
    }
}

/// `Idempotency-Key: <key>` as a header line.
fn idempotency(key: &str) -> String {
    format!("Idempotency-Key: {key}\r\n")
}

impl Live {
    /// `template` with its variables filled in: tenant `acme`, role `app_rw`, the job
    /// `self.job`, an API key id nobody has.
    fn concrete(&self, template: &str) -> String {
        if template == "/v1/jobs/{id}" {
            return format!("/v1/jobs/{}", self.job);
        }
        if template == "/v1/api-keys/{id}" {
            return "/v1/api-keys/1a2b3c4d".into();
        }
        template
            .replace("{id}", "acme")
            .replace("{name}", "app_rw")
            .replace("{hostname}", "db.customer.test")
    }

    fn call(
        &mut self,
        method: &str,
        template: &str,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> HttpResponse {
        self.call_with(method, template, path, token, "", body)
    }

    /// Sends the request (with `headers`, whole lines) and checks the answer against the
    /// document: its status is declared for the operation, its body fits the declared
    /// schema and carries an error code that goes with the status, its content type and
    /// headers are the declared ones. A header sent is a declared parameter. A JSON body
    /// sent is checked against the request schema too: one the API accepted must fit,
    /// one it refused as `invalid_request` must not (unless `beyond_schema`).
    fn call_with(
        &mut self,
        method: &str,
        template: &str,
        path: &str,
        token: Option<&str>,
        headers: &str,
        body: &str,
    ) -> HttpResponse {
        let r = testkit::http::request(self.addr, method, path, token, headers, body.as_bytes())
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let what = format!("{method} {path} {headers:?} -> {}: {}", r.status, r.body);
        let doc = &self.doc;
        let op = &doc["paths"][template][method.to_ascii_lowercase()];
        assert!(op.is_object(), "{what}: not in the document");
        let declared = op["responses"]
            .get(r.status.to_string())
            .map(|resp| resolve(doc, resp))
            .unwrap_or_else(|| panic!("{what}: status not in the document"));
        self.seen
            .insert((template.to_owned(), method.to_ascii_lowercase(), r.status));

        for line in headers.lines().filter(|l| !l.is_empty()) {
            let name = line.split(':').next().unwrap();
            let parameters = [&doc["paths"][template]["parameters"], &op["parameters"]];
            let known = parameters
                .into_iter()
                .filter_map(Value::as_array)
                .flatten()
                .map(|p| resolve(doc, p))
                .any(|p| p["in"] == "header" && p["name"] == name);
            assert!(known, "{what}: header {name} is not a parameter");
        }

        let mut code = None;
        match declared.get("content").and_then(Value::as_object) {
            None => assert!(r.body.is_empty(), "{what}: no body declared"),
            Some(content) => {
                let ctype = r.header("content-type").expect("content-type");
                let (media, media_type) = content
                    .iter()
                    .find(|(m, _)| ctype == *m || ctype.starts_with(&format!("{m};")))
                    .unwrap_or_else(|| panic!("{what}: content-type {ctype} not declared"));
                if media == "application/json" {
                    let value: Value = serde_json::from_str(&r.body).expect("JSON");
                    validate(doc, &media_type["schema"], &value, "$")
                        .unwrap_or_else(|e| panic!("{what}: {e}"));
                    if media_type["schema"]["$ref"] == "#/components/schemas/Error" {
                        let c = value["error"]["code"].as_str().unwrap().to_owned();
                        assert!(codes_of(r.status).contains(&c.as_str()), "{what}");
                        code = Some(c);
                    }
                }
            }
        }
        let declared_headers = declared["headers"].as_object();
        for (name, header) in declared_headers.into_iter().flatten() {
            let header = resolve(doc, header);
            let value = r.header(&name.to_ascii_lowercase());
            if header["required"] == true {
                assert!(value.is_some(), "{what}: no {name} header");
            }
            if let (Some(value), Some(c)) = (value, header["schema"]["const"].as_str()) {
                assert_eq!(value, c, "{what}");
            }
        }
        if r.header("idempotent-replayed").is_some() {
            assert!(
                declared_headers.is_some_and(|h| h.contains_key("Idempotent-Replayed")),
                "{what}: a replay header the document does not declare"
            );
        }

        if let Some(request) = op.get("requestBody") {
            let parsed: Option<Value> = serde_json::from_str(body).ok();
            let fits = |v: &Value| {
                let s = &request["content"]["application/json"]["schema"];
                validate(doc, s, v, "request").is_ok()
            };
            let success = (200..300).contains(&r.status);
            match (r.status, &parsed) {
                (_, _) if success && body.is_empty() => {
                    assert_eq!(request["required"], false, "{what}: body is optional")
                }
                (_, Some(v)) if success => {
                    assert!(fits(v), "{what}: accepted, but not in the schema")
                }
                (400, None) if body.is_empty() => {
                    assert_eq!(request["required"], true, "{what}: body is required")
                }
                (422, Some(v)) if code.as_deref() == Some("invalid_request") => {
                    if self.beyond_schema {
                        assert!(
                            fits(v),
                            "{what}: refused beyond the schema, but does not fit it"
                        );
                    } else {
                        assert!(!fits(v), "{what}: refused, but fits the schema");
                    }
                }
                _ => {}
            }
        }
        r
    }

    fn expect(
        &mut self,
        method: &str,
        template: &str,
        token: Option<&str>,
        body: &str,
        status: u16,
    ) -> Value {
        let path = self.concrete(template);
        self.expect_at(method, template, &path, token, body, status)
    }

    fn expect_at(
        &mut self,
        method: &str,
        template: &str,
        path: &str,
        token: Option<&str>,
        body: &str,
        status: u16,
    ) -> Value {
        let r = self.call(method, template, path, token, body);
        assert_eq!(r.status, status, "{method} {path} {body}: {}", r.body);
        serde_json::from_str(&r.body).unwrap_or(Value::Null)
    }

    /// A 422 the schema cannot see coming: the body fits the schema.
    fn expect_beyond_schema(
        &mut self,
        method: &str,
        template: &str,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> Value {
        self.beyond_schema = true;
        let refused = self.expect_at(method, template, path, token, body, 422);
        self.beyond_schema = false;
        assert_eq!(refused["error"]["code"], "invalid_request", "{body}");
        refused
    }

    /// An error answer's code.
    fn error_at(
        &mut self,
        method: &str,
        template: &str,
        path: &str,
        token: Option<&str>,
        body: &str,
        status: u16,
    ) -> String {
        let error = self.expect_at(method, template, path, token, body, status);
        error["error"]["code"].as_str().unwrap().to_owned()
    }

    /// Polls the job until it ends.
    fn wait_job(&mut self, job: &Value, token: Option<&str>) -> Value {
        let path = format!("/v1/jobs/{}", job["id"]);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let job = self.expect_at("GET", "/v1/jobs/{id}", &path, token, "", 200);
            if job["state"] == "succeeded" || job["state"] == "failed" {
                return job;
            }
            assert!(Instant::now() < deadline, "the job did not end: {job}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Statuses the document declares that this test cannot cause on purpose (431 comes
/// from the HTTP layer for any path and is checked once): a PATCH loses a race with
/// another change to the same tenant only by chance.
const UNPROVOKED: [(&str, &str, u16); 2] = [
    ("/v1/tenants/{id}", "patch", 409),
    // A container driver (lxc, proxmox) that fails to resize; this test's driver is
    // `local`, which has no sizes.
    ("/v1/tenants/{id}", "patch", 502),
];

/// The control store, the keys, and what the test made, for the parts of the live test.
struct World<'a> {
    rt: &'a tokio::runtime::Runtime,
    /// Where the `local` driver keeps the backend the story's tenant uses.
    dir: std::path::PathBuf,
    store: Arc<Store>,
    admin_key: String,
    key: Option<&'a str>,
    viewer: Option<&'a str>,
}

/// Every endpoint answers as `openapi.json` says, and every status it declares happens.
#[test]
fn live_answers_match_the_document() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("admin.key");
    let stop = CancellationToken::new();
    // A real (embedded) control store for the first listener; the second has none it
    // can reach, so what needs the store answers 503 there.
    let data_dir = dir.path().join("data");
    let embedded = rt
        .block_on(rt.spawn_blocking(move || EmbeddedControl::start(&data_dir)))
        .unwrap()
        .expect("starting the embedded control store");
    let store = rt.block_on(async {
        let store = Store::connect(embedded.config()).await.unwrap();
        store.migrate().await.unwrap();
        Arc::new(store)
    });
    let control = Control::Ok {
        store: store.clone(),
        kind: "embedded",
    };
    let admin = bind(&rt, &dir.path().join("plane"), &key_file, true, control);
    let unreachable = Control::Unreachable("connecting to the control store: refused".into());
    let no_store_dir = dir.path().join("plane-without-store");
    let no_metrics = bind(&rt, &no_store_dir, &key_file, false, unreachable);
    // A viewer key, in the store (each listener re-reads its keys from there every few
    // seconds) and accepted at once by the listener with the store.
    let viewer_key = control::keys::generate();
    let viewer_id = control::keys::key_id(&viewer_key).unwrap();
    let hash = control::keys::hash(&viewer_key);
    rt.block_on(store.insert_api_key(viewer_id, &hash, "viewer", Some("test viewer")))
        .unwrap();
    admin.state.keys.insert(&viewer_key, Role::Viewer).unwrap();
    let state = admin.state.clone();
    let (addr, no_metrics_addr) = (admin.addr, no_metrics.addr);
    for admin in [admin, no_metrics] {
        // Each process runs its control plane beside its listener, as `sluice serve` does.
        let plane = admin.state.plane.clone();
        let rejections = admin.state.sources.rejections.clone();
        rt.spawn(plane.run(rejections, Duration::from_secs(60), stop.clone()));
        rt.spawn(admin.serve(stop.clone(), CancellationToken::new()));
    }
    let mut live = Live {
        doc: doc(),
        addr,
        seen: BTreeSet::new(),
        job: 0,
        beyond_schema: false,
    };
    let admin_key = std::fs::read_to_string(&key_file)
        .unwrap()
        .trim()
        .to_owned();
    let world = World {
        rt: &rt,
        dir: dir.path().join("backends"),
        store,
        admin_key: admin_key.clone(),
        key: Some(admin_key.as_str()),
        viewer: Some(viewer_key.as_str()),
    };
    let (key, viewer) = (world.key, world.viewer);
    let ops: Vec<(String, String)> = operations(&live.doc)
        .into_iter()
        .map(|(p, m, _)| (p, m.to_ascii_uppercase()))
        .collect();

    // A tenant whose backend never comes up (the `stuck` driver): it stays
    // `provisioning`, and its job is what `/v1/jobs/{id}` shows below.
    let body = r#"{"id": "pending", "backend": {"driver": "stuck"}}"#;
    let pending = live.expect("POST", "/v1/tenants", key, body, 202);
    assert_eq!(pending["tenant"]["status"], "provisioning");
    assert_eq!(
        pending["tenant"]["backend"],
        json!({"driver": "stuck", "address": null, "tls": "require", "allow_auth_user_login": false})
    );
    assert_eq!(
        (&pending["job"]["kind"], &pending["job"]["state"]),
        (&json!("create"), &json!("queued"))
    );
    live.job = pending["job"]["id"].as_i64().unwrap();

    // Auth and body size, for every operation.
    let forged = format!("{}0", &admin_key[..admin_key.len() - 1]);
    let forged = if forged == admin_key {
        format!("{}1", &admin_key[..admin_key.len() - 1])
    } else {
        forged
    };
    let huge = format!(r#"{{"reason": "{}"}}"#, "x".repeat(70_000));
    for (template, method) in &ops {
        if !PUBLIC.contains(&template.as_str()) {
            live.expect(method, template, None, "", 401);
            live.expect(method, template, Some(&forged), "", 401);
            let declares_403 = live.doc["paths"][template][method.to_ascii_lowercase()]
                ["responses"]
                .get("403")
                .is_some();
            if declares_403 {
                live.expect(method, template, viewer, "{}", 403);
            } else {
                let path = live.concrete(template);
                let r = live.call(method, template, &path, viewer, "");
                assert_eq!(r.status, 200, "{method} {template} with a viewer key");
            }
        }
        live.expect(method, template, key, &huge, 413);
    }

    // Health, metrics, this document.
    let health = live.expect("GET", "/healthz", None, "", 200);
    assert_eq!(health, json!({"status": "ok"}));
    let ready = live.expect("GET", "/readyz", None, "", 200);
    assert_eq!(ready["ready"], true);
    assert_eq!(
        ready["catalog"],
        json!({"tenants": 2, "source": "control store"}),
        "acme and globex; a tenant being provisioned is not in the catalog"
    );
    assert_eq!(ready["control_store"], "ok (embedded)");
    let r = live.call("GET", "/v1/openapi.json", "/v1/openapi.json", None, "");
    assert_eq!((r.status, r.body.as_str()), (200, OPENAPI_JSON));
    // A query string does not change the route.
    live.expect_at("GET", "/healthz", "/healthz?x=1", None, "", 200);

    stats_and_bans(&mut live, &world);
    usage(&mut live, &world);
    connections_and_pause(&mut live, &world);
    tenants_read_and_changed(&mut live, &world);
    tenants_created(&mut live, &world);
    let shop = the_story(&mut live, &world);
    roles_refused(&mut live, &world);
    tenants_deleted(&mut live, &world);
    hostnames(&mut live, &world);
    api_keys(&mut live, &world);
    idempotency_keys(&mut live, &world);
    audit_log(&mut live, &world);

    // Without a reachable store: what needs it answers 503, and changes nothing.
    live.addr = no_metrics_addr;
    let ready = live.expect("GET", "/readyz", None, "", 200);
    assert_eq!(
        ready["control_store"],
        "unreachable: connecting to the control store: refused"
    );
    assert_eq!(
        ready["catalog"],
        json!({"tenants": 2, "source": "config file"})
    );
    for (method, template, body) in [
        ("GET", "/v1/tenants", ""),
        (
            "POST",
            "/v1/tenants",
            r#"{"id": "later", "backend": {"driver": "stuck"}}"#,
        ),
        ("GET", "/v1/tenants/{id}", ""),
        ("PATCH", "/v1/tenants/{id}", r#"{"pool": {"size": 3}}"#),
        ("DELETE", "/v1/tenants/{id}", ""),
        ("GET", "/v1/jobs/{id}", ""),
        ("GET", "/v1/tenants/{id}/roles", ""),
        ("POST", "/v1/tenants/{id}/roles", r#"{"name": "app_ro"}"#),
        ("POST", "/v1/tenants/{id}/roles/{name}/rotate", ""),
        ("DELETE", "/v1/tenants/{id}/roles/{name}", ""),
        ("GET", "/v1/tenants/{id}/hostnames", ""),
        (
            "POST",
            "/v1/tenants/{id}/hostnames",
            &hostname_body("db.customer.test", &self_signed(&["db.customer.test"])),
        ),
        ("DELETE", "/v1/tenants/{id}/hostnames/{hostname}", ""),
        ("POST", "/v1/tenants/{id}/suspend", ""),
        ("POST", "/v1/tenants/{id}/resume", ""),
        ("DELETE", "/v1/tenants/{id}/bans", ""),
        ("POST", "/v1/tenants/{id}/pause", ""),
        ("DELETE", "/v1/tenants/{id}/pause", ""),
        ("GET", "/v1/api-keys", ""),
        ("POST", "/v1/api-keys", r#"{"role": "admin"}"#),
        ("DELETE", "/v1/api-keys/{id}", ""),
        ("GET", "/v1/audit-events", ""),
        ("GET", "/v1/audit-events/verify", ""),
        ("GET", "/v1/replicas", ""),
        ("GET", "/v1/tenants/{id}/usage", ""),
    ] {
        let path = live.concrete(template);
        let code = live.error_at(method, template, &path, key, body, 503);
        assert_eq!(code, "unavailable", "{method} {template}");
    }
    // An Idempotency-Key needs the store too.
    let r = live.call_with(
        "POST",
        "/v1/tenants/{id}/suspend",
        "/v1/tenants/acme/suspend",
        key,
        &idempotency("suspend-without-store"),
        "",
    );
    assert_eq!(r.status, 503);
    live.addr = addr;
    let acme_now = live.expect("GET", "/v1/tenants/{id}", key, "", 200);
    assert_ne!(acme_now["pool"]["size"], 3);
    assert_eq!(acme_now["status"], "active");

    // What the route table does besides: HEAD is GET, other methods are 405 naming the
    // allowed ones, other paths 404; both are counted under their route label.
    let r = testkit::http::request(addr, "HEAD", "/healthz", None, "", b"").unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, ""));
    let error = schema(&live.doc, "Error").clone();
    let mut allowed: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (template, method) in routes() {
        allowed.entry(template).or_default().push(method);
    }
    for (template, methods) in &allowed {
        let other = ["PUT", "POST", "GET"]
            .into_iter()
            .find(|m| !methods.contains(m))
            .unwrap();
        let path = live.concrete(template);
        let r = testkit::http::request(addr, other, &path, key, "", b"").unwrap();
        assert_eq!(r.status, 405, "{other} {template}");
        validate(&live.doc, &error, &r.json(), "405").unwrap();
        assert_eq!(r.json()["error"]["code"], "method_not_allowed");
        let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(
            message.ends_with(&format!("(allowed: {})", methods.join(", "))),
            "{message}"
        );
    }
    for path in [
        "/",
        "/v1",
        "/v1/tenants/acme/nothing",
        "/v1/tenants/acme/roles/app_rw/nothing",
        "/v1/jobs",
        "/healthz/x",
        "/v2/pools",
    ] {
        let r = testkit::http::request(addr, "GET", path, key, "", b"").unwrap();
        assert_eq!(r.status, 404, "{path}");
        validate(&live.doc, &error, &r.json(), "404").unwrap();
    }
    let metrics = live.call("GET", "/metrics", "/metrics", None, "");
    assert_eq!(metrics.status, 200);
    for label in [
        r#"route="other",status="404""#,
        r#"route="/v1/tenants/{id}",status="405""#,
        r#"route="/v1/tenants/{id}/bans",status="200""#,
        r#"route="/v1/tenants",status="202""#,
        r#"route="/v1/jobs/{id}",status="200""#,
        r#"route="/v1/tenants/{id}/roles/{name}",status="204""#,
    ] {
        assert!(metrics.body.contains(label), "{label} in {}", metrics.body);
    }

    // Metrics off, and draining.
    live.addr = no_metrics_addr;
    live.expect("GET", "/metrics", None, "", 404);
    live.addr = addr;
    state.draining.cancel();
    let draining = live.expect("GET", "/readyz", None, "", 503);
    assert_eq!(draining["ready"], false);

    // Every status the document declares was answered (431 comes from the HTTP layer
    // for a huge head and is the same for every path).
    let mut missing = Vec::new();
    for (template, method, op) in operations(&live.doc) {
        for status in op["responses"].as_object().unwrap().keys() {
            let status: u16 = status.parse().unwrap();
            let unprovoked = UNPROVOKED.contains(&(template.as_str(), method.as_str(), status));
            if status != 431
                && !unprovoked
                && !live
                    .seen
                    .contains(&(template.clone(), method.clone(), status))
            {
                missing.push(format!("{method} {template} {status}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "declared but never answered: {missing:?}"
    );
    for (template, method, status) in UNPROVOKED {
        assert!(
            live.doc["paths"][template][method]["responses"]
                .get(status.to_string())
                .is_some(),
            "{method} {template} {status} is still declared"
        );
    }
    let huge_head = format!("X-Junk: {}\r\n", "a".repeat(100 * 1024));
    if let Ok(r) = testkit::http::request(addr, "GET", "/healthz", None, &huge_head, b"") {
        assert_eq!((r.status, r.body.as_str()), (431, ""));
    }

    stop.cancel();
    drop(state);
    drop(world);
    rt.block_on(shop.destroy("shop")).unwrap();
    shop.shutdown();
    rt.block_on(rt.spawn_blocking(move || embedded.stop()))
        .unwrap()
        .unwrap();
}

/// The live connections (none: this test runs no proxy) and a tenant's pause.
fn connections_and_pause(live: &mut Live, world: &World) {
    let key = world.key;
    for (template, list) in [("/v1/clients", "clients"), ("/v1/servers", "servers")] {
        let all = live.expect("GET", template, world.viewer, "", 200);
        assert_eq!(all, json!({list: []}));
        let path = format!("{template}?tenant=acme");
        live.expect_at("GET", template, &path, key, "", 200);
        for bad in ["colour=blue", "tenant=%zz", "tenant=Not_A_Tenant"] {
            let path = format!("{template}?{bad}");
            live.expect_at("GET", template, &path, key, "", 400);
        }
    }
    let pause = "/v1/tenants/{id}/pause";
    let paused = live.expect("POST", pause, key, "", 200);
    assert_eq!(
        paused,
        json!({"tenant": "acme", "paused": true, "in_use": 0})
    );
    let resumed = live.expect("DELETE", pause, key, "", 200);
    assert_eq!(resumed["paused"], false);
    for method in ["POST", "DELETE"] {
        live.expect_at(method, pause, "/v1/tenants/nope/pause", key, "", 404);
    }
}

/// Usage: JSON and CSV (none metered yet: this test runs no proxy, so the buckets are
/// empty), bad parameters, a tenant the store does not know.
fn usage(live: &mut Live, world: &World) {
    let key = world.viewer;
    let template = "/v1/tenants/{id}/usage";
    let answer = live.expect("GET", template, key, "", 200);
    assert_eq!(answer["tenant"], "acme");
    assert_eq!(answer["usage"], json!([]));
    assert_eq!(answer["totals"]["queries"], 0);
    let path =
        "/v1/tenants/acme/usage?from=2026-01-01T10:30:00Z&to=2026-01-03T00:00:00Z&granularity=day";
    let by_day = live.expect_at("GET", template, path, key, "", 200);
    assert_eq!(by_day["from"], "2026-01-01T00:00:00.000000Z");
    assert_eq!(by_day["granularity"], "day");
    for (path, headers) in [
        ("/v1/tenants/acme/usage?format=csv", ""),
        ("/v1/tenants/acme/usage", "Accept: text/csv\r\n"),
    ] {
        let r = live.call_with("GET", template, path, key, headers, "");
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("content-type"), Some("text/csv; charset=utf-8"));
        assert!(
            r.body.starts_with("tenant,start,connection_seconds,"),
            "{}",
            r.body
        );
    }
    for path in [
        "/v1/tenants/acme/usage?from=yesterday",
        "/v1/tenants/acme/usage?granularity=week",
        "/v1/tenants/acme/usage?format=xml",
        "/v1/tenants/acme/usage?colour=blue",
    ] {
        let code = live.error_at("GET", template, path, key, "", 400);
        assert_eq!(code, "bad_request", "{path}");
    }
    live.expect_at("GET", template, "/v1/tenants/nope/usage", key, "", 404);
}

/// Pool stats, tenant stats and login bans: what the data plane holds in memory.
fn stats_and_bans(live: &mut Live, world: &World) {
    let key = world.key;
    let pools = live.expect("GET", "/v1/pools", world.viewer, "", 200);
    assert_eq!(pools["pools"].as_array().unwrap().len(), 2);
    assert_eq!(pools["next_cursor"], Value::Null);
    let page = live.expect_at("GET", "/v1/pools", "/v1/pools?limit=1", key, "", 200);
    let cursor = page["next_cursor"]
        .as_str()
        .expect("a second page")
        .to_owned();
    let path = format!("/v1/pools?limit=1000&cursor={cursor}&tenant=globex");
    let next = live.expect_at("GET", "/v1/pools", &path, key, "", 200);
    assert_eq!(next["pools"][0]["tenant"], "globex");
    for path in [
        "/v1/pools?limit=0",
        "/v1/pools?limit=1001",
        "/v1/pools?colour=blue",
        "/v1/pools?tenant=%zz",
    ] {
        live.expect_at("GET", "/v1/pools", path, key, "", 400);
    }
    let stats = "/v1/tenants/{id}/stats";
    let acme_stats = live.expect("GET", stats, key, "", 200);
    assert_eq!(acme_stats["rejected"], json!({"banned": 1}));
    assert_eq!(acme_stats["pools"].as_array().unwrap().len(), 1);
    live.expect_at("GET", stats, "/v1/tenants/nope/stats", key, "", 404);
    // A tenant being provisioned is not in the catalog yet.
    live.expect_at("GET", stats, "/v1/tenants/pending/stats", key, "", 404);

    let bans = "/v1/tenants/{id}/bans";
    let list = live.expect("GET", bans, world.viewer, "", 200);
    assert_eq!(list["bans"][1]["retry_in_s"], 1);
    live.expect_at("GET", bans, "/v1/tenants/nope/bans", key, "", 404);
    let lifted = live.expect_at(
        "DELETE",
        bans,
        "/v1/tenants/acme/bans?ip=203.0.113.7",
        key,
        "",
        200,
    );
    assert_eq!(lifted, json!({"lifted": 1}));
    assert_eq!(
        live.expect("DELETE", bans, key, "", 200),
        json!({"lifted": 2})
    );
    live.expect_at(
        "DELETE",
        bans,
        "/v1/tenants/acme/bans?ip=nope",
        key,
        "",
        400,
    );
    live.expect_at("DELETE", bans, "/v1/tenants/nope/bans", key, "", 404);
}

/// Tenants from the store: list, get, PATCH, suspend and resume.
fn tenants_read_and_changed(live: &mut Live, world: &World) {
    let key = world.key;
    let list = live.expect("GET", "/v1/tenants", key, "", 200);
    let ids: Vec<&str> = list["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["acme", "globex", "pending"], "every status, by id");
    let page = live.expect_at("GET", "/v1/tenants", "/v1/tenants?limit=1", key, "", 200);
    assert_eq!(page["next_cursor"], "acme");
    let path = "/v1/tenants?limit=1000&cursor=globex";
    let rest = live.expect_at("GET", "/v1/tenants", path, key, "", 200);
    assert_eq!(rest["tenants"][0]["id"], "pending");
    assert_eq!(rest["next_cursor"], Value::Null);
    live.expect_at("GET", "/v1/tenants", "/v1/tenants?limit=x", key, "", 400);
    let acme = live.expect("GET", "/v1/tenants/{id}", key, "", 200);
    assert_eq!(
        (&acme["status"], &acme["plan"], &acme["backend"]),
        (
            &json!("active"),
            &Value::Null,
            &json!({
                "driver": "config",
                "address": "127.0.0.1:1",
                "tls": "disable",
                "allow_auth_user_login": false
            })
        )
    );
    assert_eq!(
        acme["connection_string"],
        format!("postgresql://acme.{SNI_SUFFIX}:6432/app?sslmode=require")
    );
    live.expect_at("GET", "/v1/tenants/{id}", "/v1/tenants/nope", key, "", 404);

    // PATCH: the documented example; every key at each bound the schema declares and
    // one past it; nulls; bad bodies; and finally every key as GET shows it.
    let patch = "/v1/tenants/{id}";
    let example =
        &live.doc["paths"][patch]["patch"]["requestBody"]["content"]["application/json"]["example"];
    let example = example.to_string();
    live.expect("PATCH", patch, key, &example, 200);
    for section in ["PoolPatch", "LimitsPatch"] {
        let field = if section == "PoolPatch" {
            "pool"
        } else {
            "limits"
        };
        let properties = schema(&live.doc, section)["properties"]
            .as_object()
            .unwrap()
            .clone();
        let mut nulls = serde_json::Map::new();
        for (name, property) in &properties {
            nulls.insert(name.clone(), Value::Null);
            let body = |v: Value| json!({ field: { name.as_str(): v } }).to_string();
            for value in property["enum"].as_array().into_iter().flatten() {
                live.expect("PATCH", patch, key, &body(value.clone()), 200);
            }
            if property.get("enum").is_some() {
                live.expect("PATCH", patch, key, &body(json!("bogus")), 422);
            }
            if let Some(min) = property["minimum"].as_i64() {
                live.expect("PATCH", patch, key, &body(json!(min)), 200);
                live.expect("PATCH", patch, key, &body(json!(min - 1)), 422);
            }
            if let Some(max) = property["maximum"].as_u64() {
                live.expect("PATCH", patch, key, &body(json!(max)), 200);
                live.expect("PATCH", patch, key, &body(json!(max + 1)), 422);
            }
            live.expect("PATCH", patch, key, &body(json!("1")), 422);
        }
        live.expect(
            "PATCH",
            patch,
            key,
            &json!({ field: nulls }).to_string(),
            200,
        );
    }
    live.expect(
        "PATCH",
        patch,
        key,
        r#"{"pool": null, "limits": null}"#,
        200,
    );
    live.expect("PATCH", patch, key, "{}", 200);
    for (body, status) in [
        ("", 400),
        ("{not json", 400),
        (r#"{"pool": {"colour": "blue"}}"#, 422),
        (r#"{"nonsense": 1}"#, 422),
        ("[]", 422),
        ("[null, null]", 422),
        ("null", 422),
        ("7", 422),
    ] {
        live.expect("PATCH", patch, key, body, status);
    }
    live.expect_at("PATCH", patch, "/v1/tenants/nope", key, "{}", 404);
    let restore = json!({"pool": acme["pool"], "limits": acme["limits"]}).to_string();
    let after = live.expect("PATCH", patch, key, &restore, 200);
    assert_eq!(
        after, acme,
        "every key the API shows, PATCHed back, changes nothing"
    );

    // Suspend and resume; a tenant being provisioned can be neither.
    let suspend = "/v1/tenants/{id}/suspend";
    let example = live.doc["paths"][suspend]["post"]["requestBody"]["content"]["application/json"]
        ["example"]
        .to_string();
    let suspended = live.expect("POST", suspend, key, &example, 200);
    assert_eq!(
        (&suspended["status"], &suspended["suspended_reason"]),
        (&json!("suspended"), &json!("unpaid invoice"))
    );
    live.expect("POST", suspend, key, "", 200);
    live.expect(
        "POST",
        suspend,
        key,
        r#"{"reason": null, "terminate": true}"#,
        200,
    );
    let long = format!(r#"{{"reason": "{}"}}"#, "r".repeat(1001));
    for (body, status) in [
        ("{", 400),
        (long.as_str(), 422),
        (r#"{"terminate": null}"#, 422),
        (r#"{"why": "x"}"#, 422),
        (r#"["why", true]"#, 422),
    ] {
        live.expect("POST", suspend, key, body, status);
    }
    live.expect_at("POST", suspend, "/v1/tenants/nope/suspend", key, "", 404);
    let path = "/v1/tenants/pending/suspend";
    assert_eq!(
        live.error_at("POST", suspend, path, key, "", 409),
        "conflict"
    );
    let resume = "/v1/tenants/{id}/resume";
    let resumed = live.expect("POST", resume, key, "anything", 200);
    assert_eq!(resumed["status"], "active");
    assert!(resumed.get("suspended_reason").is_none());
    live.expect_at("POST", resume, "/v1/tenants/nope/resume", key, "", 404);
    let path = "/v1/tenants/pending/resume";
    assert_eq!(
        live.error_at("POST", resume, path, key, "", 409),
        "conflict"
    );
}

/// Create requests the API refuses, leaving nothing behind.
fn tenants_created(live: &mut Live, world: &World) {
    let key = world.key;
    let create = "/v1/tenants";
    for (body, status) in [
        ("", 400),
        ("{", 400),
        ("[]", 422),
        ("null", 422),
        (r#"{"plan": null}"#, 422),
        (r#"{"id": 7}"#, 422),
        (r#"{"id": "fresh", "colour": "blue"}"#, 422),
        (
            r#"{"id": "fresh", "backend": {"driver": "stuck", "colour": 1}}"#,
            422,
        ),
        (
            r#"{"id": "fresh", "backend": {"driver": "static", "port": 70000}}"#,
            422,
        ),
        (
            r#"{"id": "fresh", "backend": {"driver": "static", "tls": "sometimes"}}"#,
            422,
        ),
        (r#"{"id": "fresh", "pool": {"size": 0}}"#, 422),
        (
            r#"{"id": "fresh", "limits": {"allow_cidrs": "10.0.0.0/8"}}"#,
            422,
        ),
        (&format!(r#"{{"id": "{}"}}"#, "a".repeat(64)), 422),
    ] {
        live.expect("POST", create, key, body, status);
    }
    // Refused for what the schema cannot say: the id's syntax, a plan or driver this
    // Sluice does not have, what the static driver needs and the others refuse, and
    // settings that do not resolve together.
    for body in [
        r#"{"id": "Fresh_1", "backend": {"driver": "stuck"}}"#,
        r#"{"id": "-fresh", "backend": {"driver": "stuck"}}"#,
        r#"{"id": "fresh"}"#,
        r#"{"id": "fresh", "backend": {"driver": "lxc"}}"#,
        r#"{"id": "fresh", "plan": "gold", "backend": {"driver": "stuck"}}"#,
        r#"{"id": "fresh", "backend": {"driver": "static", "admin_user": "postgres", "admin_password": "pw"}}"#,
        r#"{"id": "fresh", "backend": {"driver": "static", "host": "127.0.0.1", "admin_password": "pw"}}"#,
        r#"{"id": "fresh", "backend": {"driver": "static", "host": "127.0.0.1", "admin_user": "postgres"}}"#,
        r#"{"id": "fresh", "backend": {"driver": "stuck", "host": "127.0.0.1"}}"#,
        r#"{"id": "fresh", "backend": {"driver": "stuck"}, "pool": {"size": 2, "min_idle": 3}}"#,
        r#"{"id": "fresh", "backend": {"driver": "stuck"}, "limits": {"allow_cidrs": ["10.0.0.0/33"]}}"#,
    ] {
        live.expect_beyond_schema("POST", create, create, key, body);
    }
    // An id in use, whatever its tenant's status.
    for id in ["acme", "pending"] {
        let body = json!({"id": id, "backend": {"driver": "stuck"}}).to_string();
        let code = live.error_at("POST", create, create, key, &body, 409);
        assert_eq!(code, "conflict");
    }
    live.expect_at("GET", "/v1/tenants/{id}", "/v1/tenants/fresh", key, "", 404);
}

/// The whole story on a `static` backend (a cluster the `local` driver made, standing
/// in for a server the operator runs): create with an Idempotency-Key, its replay and
/// misuse, the job, the tenant, its roles. Returns the driver that owns the cluster.
fn the_story(live: &mut Live, world: &World) -> LocalDriver {
    let (key, viewer) = (world.key, world.viewer);
    let local = LocalDriver::new(&world.dir).unwrap();
    let admin_password = sql::generate_password();
    let backend = world
        .rt
        .block_on(local.create(&BackendRequest {
            tenant: "shop".into(),
            plan: None,
            params: json!({}),
            admin_password: admin_password.clone(),
        }))
        .unwrap();
    let create = "/v1/tenants";
    let body = |size: u32| {
        json!({
            "id": "shop",
            "backend": {
                "driver": "static",
                "host": backend.host,
                "port": backend.port,
                "tls": "require",
                "admin_user": backend.admin_user,
                "admin_password": admin_password,
            },
            "pool": {"size": size},
        })
        .to_string()
    };
    let header = idempotency("create-shop-1");
    let first = live.call_with("POST", create, create, key, &header, &body(5));
    assert_eq!(first.status, 202, "{}", first.body);
    assert_eq!(first.header("idempotent-replayed"), None);
    let created = first.json();
    assert_eq!(
        (&created["tenant"]["status"], &created["job"]["state"]),
        (&json!("provisioning"), &json!("queued"))
    );
    // A retry gets the same answer, and nothing runs twice.
    let again = live.call_with("POST", create, create, key, &header, &body(5));
    assert_eq!(
        (again.status, again.header("idempotent-replayed")),
        (202, Some("true"))
    );
    assert_eq!(again.json(), created);
    // The same key for another request: refused.
    let other = live.call_with("POST", create, create, key, &header, &body(6));
    assert_eq!(other.status, 422);
    assert_eq!(other.json()["error"]["code"], "idempotency_key_reused");
    // Keys are per API key: the viewer's request with it runs (and is refused).
    let viewers = live.call_with("POST", create, create, viewer, &header, &body(5));
    assert_eq!(
        (viewers.status, viewers.header("idempotent-replayed")),
        (403, None)
    );

    let job = live.wait_job(&created["job"], viewer);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(
        (&job["kind"], &job["tenant"], &job["error"]),
        (&json!("create"), &json!("shop"), &Value::Null)
    );
    assert_eq!(
        job["steps_done"],
        json!([
            "credentials",
            "create_backend",
            "wait_ready",
            "auth_role",
            "activate"
        ])
    );
    let shop = live.expect_at(
        "GET",
        "/v1/tenants/{id}",
        "/v1/tenants/shop",
        viewer,
        "",
        200,
    );
    assert_eq!(shop["status"], "active");
    assert_eq!(
        shop["backend"],
        json!({
            "driver": "static",
            "address": format!("127.0.0.1:{}", backend.port),
            "tls": "require",
            "allow_auth_user_login": false
        })
    );
    assert_eq!(shop["pool"]["size"], 5);
    assert_eq!(
        shop["connection_string"],
        format!("postgresql://shop.{SNI_SUFFIX}:6432/app?sslmode=require")
    );

    // Roles: none yet; one generated, one chosen; the refused ones.
    let roles = "/v1/tenants/{id}/roles";
    let shop_roles = "/v1/tenants/shop/roles";
    let none = live.expect_at("GET", roles, shop_roles, viewer, "", 200);
    assert_eq!(none, json!({"roles": []}));
    let example = live.doc["paths"][roles]["post"]["requestBody"]["content"]["application/json"]
        ["example"]
        .to_string();
    let app_rw = live.expect_at("POST", roles, shop_roles, key, &example, 201);
    let generated = app_rw["password"].as_str().unwrap().to_owned();
    assert_eq!((&app_rw["name"], generated.len()), (&json!("app_rw"), 32));
    assert_eq!(
        live.error_at("POST", roles, shop_roles, key, &example, 409),
        "conflict"
    );
    let chosen = r#"{"name": "reporting", "password": "twelve chars"}"#;
    let reporting = live.expect_at("POST", roles, shop_roles, key, chosen, 201);
    assert_eq!(reporting["password"], "twelve chars");
    let too_long = format!(r#"{{"name": "{}"}}"#, "a".repeat(64));
    for (body, status) in [
        ("", 400),
        ("{", 400),
        ("[]", 422),
        (r#"{"password": "twelve chars"}"#, 422),
        (r#"{"name": "short", "password": "eleven char"}"#, 422),
        (r#"{"name": "colour", "colour": "blue"}"#, 422),
        (too_long.as_str(), 422),
    ] {
        live.expect_at("POST", roles, shop_roles, key, body, status);
    }
    for body in [
        r#"{"name": "Bad Name"}"#,
        r#"{"name": "9lives"}"#,
        r#"{"name": "postgres"}"#,
        r#"{"name": "sluice_auth"}"#,
        r#"{"name": "pg_monitor"}"#,
        r#"{"name": "nul", "password": "twelve\u0000chars"}"#,
    ] {
        live.expect_beyond_schema("POST", roles, shop_roles, key, body);
    }
    live.expect_at("POST", roles, "/v1/tenants/nope/roles", key, &example, 404);
    live.expect_at("GET", roles, "/v1/tenants/nope/roles", key, "", 404);
    let listed = live.expect_at("GET", roles, shop_roles, viewer, "", 200);
    let listed = listed["roles"].as_array().unwrap();
    let names: Vec<&Value> = listed.iter().map(|r| &r["name"]).collect();
    assert_eq!(names, [&json!("app_rw"), &json!("reporting")]);
    assert_eq!(listed[0]["rotated_at"], Value::Null);

    // Rotate: generated, then chosen (the documented example).
    let rotate = "/v1/tenants/{id}/roles/{name}/rotate";
    let path = "/v1/tenants/shop/roles/app_rw/rotate";
    let rotated = live.expect_at("POST", rotate, path, key, "", 200);
    assert_eq!(rotated["name"], "app_rw");
    assert_ne!(rotated["password"], generated.as_str());
    let example = live.doc["paths"][rotate]["post"]["requestBody"]["content"]["application/json"]
        ["example"]
        .to_string();
    let rotated = live.expect_at("POST", rotate, path, key, &example, 200);
    assert_eq!(rotated["password"], json!(example_password(&example)));
    live.expect_at("POST", rotate, path, key, r#"{"password": null}"#, 200);
    for (body, status) in [
        ("{", 400),
        (r#"{"password": "short"}"#, 422),
        (r#"{"password": 12}"#, 422),
        (r#"{"name": "app_ro"}"#, 422),
    ] {
        live.expect_at("POST", rotate, path, key, body, status);
    }
    for path in [
        "/v1/tenants/shop/roles/nobody/rotate",
        "/v1/tenants/nope/roles/app_rw/rotate",
    ] {
        live.expect_at("POST", rotate, path, key, "", 404);
    }
    let path = "/v1/tenants/shop/roles/Bad/rotate";
    live.expect_at("POST", rotate, path, key, "", 422);
    let listed = live.expect_at("GET", roles, shop_roles, viewer, "", 200);
    assert!(listed["roles"][0]["rotated_at"].is_string(), "{listed}");

    // Delete a role: once.
    let role = "/v1/tenants/{id}/roles/{name}";
    let path = "/v1/tenants/shop/roles/reporting";
    assert_eq!(
        live.expect_at("DELETE", role, path, key, "", 204),
        Value::Null
    );
    live.expect_at("DELETE", role, path, key, "", 404);
    live.expect_at(
        "DELETE",
        role,
        "/v1/tenants/nope/roles/app_rw",
        key,
        "",
        404,
    );
    live.expect_at("DELETE", role, "/v1/tenants/shop/roles/Bad", key, "", 422);
    let listed = live.expect_at("GET", roles, shop_roles, viewer, "", 200);
    assert_eq!(listed["roles"].as_array().unwrap().len(), 1);
    local
}

/// The `password` of a JSON body.
fn example_password(body: &str) -> String {
    let value: Value = serde_json::from_str(body).unwrap();
    value["password"].as_str().unwrap().to_owned()
}

/// Role changes on tenants that cannot have them: a config-file tenant (no
/// administrator credential) and one being provisioned (409); a credential sealed with
/// another secrets key (500); a backend that is gone (503 `backend_unavailable`).
fn roles_refused(live: &mut Live, world: &World) {
    let key = world.key;
    let seal = |secrets_key: &[u8; 32], tenant: &str, what: &str| {
        SecretBox::from_key(secrets_key).seal(&tenant_secret(tenant, what), "a password")
    };
    for (id, admin_secrets_key) in [("lost-key", [8; 32]), ("gone", SECRETS_KEY)] {
        let record = TenantRecord {
            backend: backend_record(Some("postgres")),
            ..config_tenant(id).record
        };
        let auth = (tenant_secret(id, "auth"), seal(&SECRETS_KEY, id, "auth"));
        let admin = seal(&admin_secrets_key, id, "admin");
        world
            .rt
            .block_on(async {
                let store = &world.store;
                store
                    .upsert_config_tenants(&[(&record, &auth.0, &auth.1)])
                    .await?;
                store.put_secret(&tenant_secret(id, "admin"), &admin).await
            })
            .unwrap();
    }
    let roles = "/v1/tenants/{id}/roles";
    let rotate = "/v1/tenants/{id}/roles/{name}/rotate";
    let role = "/v1/tenants/{id}/roles/{name}";
    for (tenant, status, code) in [
        ("acme", 409, "conflict"),
        ("pending", 409, "conflict"),
        ("lost-key", 500, "internal"),
        ("gone", 503, "backend_unavailable"),
    ] {
        let path = format!("/v1/tenants/{tenant}/roles");
        let body = r#"{"name": "app_ro"}"#;
        assert_eq!(live.error_at("POST", roles, &path, key, body, status), code);
        let path = format!("/v1/tenants/{tenant}/roles/app_ro/rotate");
        assert_eq!(live.error_at("POST", rotate, &path, key, "", status), code);
        let path = format!("/v1/tenants/{tenant}/roles/app_ro");
        assert_eq!(live.error_at("DELETE", role, &path, key, "", status), code);
    }
    // Listing reads only the store.
    let path = "/v1/tenants/acme/roles";
    assert_eq!(
        live.expect_at("GET", roles, path, key, "", 200),
        json!({"roles": []})
    );
}

/// Deleting: the story's tenant (its job runs to the end) and the pending one (its
/// backend never goes away, so it stays `deleting`: a second delete is 409).
fn tenants_deleted(live: &mut Live, world: &World) {
    let (key, viewer) = (world.key, world.viewer);
    let one = "/v1/tenants/{id}";
    let deleting = live.expect_at("DELETE", one, "/v1/tenants/shop", key, "", 202);
    assert_eq!(
        (&deleting["job"]["kind"], &deleting["job"]["tenant"]),
        (&json!("delete"), &json!("shop"))
    );
    let job = live.wait_job(&deleting["job"], viewer);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(
        job["steps_done"],
        json!(["drain", "destroy_backend", "delete_record"])
    );
    live.expect_at("GET", one, "/v1/tenants/shop", key, "", 404);
    live.expect_at("DELETE", one, "/v1/tenants/shop", key, "", 404);
    live.expect_at("DELETE", one, "/v1/tenants/nope", key, "", 404);
    let path = "/v1/tenants/pending";
    live.expect_at("DELETE", one, path, key, "", 202);
    assert_eq!(live.error_at("DELETE", one, path, key, "", 409), "conflict");
    let pending = live.expect_at("GET", one, path, key, "", 200);
    assert_eq!(pending["status"], "deleting");
    // Jobs: by number only.
    let job = "/v1/jobs/{id}";
    live.expect_at("GET", job, "/v1/jobs/999999", key, "", 404);
    live.expect_at("GET", job, "/v1/jobs/first", key, "", 404);
}

/// A self-signed certificate for `names` and its key, in PEM.
fn self_signed(names: &[&str]) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let cert = rcgen::CertificateParams::new(names)
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

fn hostname_body(hostname: &str, (cert, key): &(String, String)) -> String {
    json!({"hostname": hostname, "cert": cert, "key": key}).to_string()
}

/// A tenant's own host names: added, replaced, listed, taken, refused, removed.
fn hostnames(live: &mut Live, world: &World) {
    let (key, viewer) = (world.key, world.viewer);
    let list = "/v1/tenants/{id}/hostnames";
    let one = "/v1/tenants/{id}/hostnames/{hostname}";
    let name = "db.customer.test";
    let pair = self_signed(&[name]);
    let added = live.expect("POST", list, key, &hostname_body(name, &pair), 201);
    assert_eq!(
        (&added["hostname"], &added["tenant"]),
        (&json!(name), &json!("acme"))
    );
    let renewed = self_signed(&[name, "www.customer.test"]);
    let replaced = live.expect("POST", list, key, &hostname_body(name, &renewed), 201);
    assert_ne!(replaced["fingerprint"], added["fingerprint"]);
    let listed = live.expect("GET", list, viewer, "", 200);
    assert_eq!(
        listed["hostnames"][0]["sans"],
        json!([name, "www.customer.test"])
    );
    // Another tenant's name; a tenant being deleted; no such tenant.
    let globex = "/v1/tenants/globex/hostnames";
    let code = live.error_at("POST", list, globex, key, &hostname_body(name, &pair), 409);
    assert_eq!(code, "conflict");
    let pending = "/v1/tenants/pending/hostnames";
    let other = self_signed(&["pg.customer.test"]);
    let body = hostname_body("pg.customer.test", &other);
    assert_eq!(
        live.error_at("POST", list, pending, key, &body, 409),
        "conflict"
    );
    live.expect_at("POST", list, "/v1/tenants/nope/hostnames", key, &body, 404);
    live.expect_at("GET", list, "/v1/tenants/nope/hostnames", key, "", 404);
    // Refused before anything is stored: the body, each field.
    live.expect("POST", list, key, "", 400);
    live.expect("POST", list, key, "{", 400);
    live.expect(
        "POST",
        list,
        key,
        r#"{"hostname": "db.customer.test"}"#,
        422,
    );
    for (field, body) in [
        ("hostname", hostname_body("db_1.customer.test", &pair)),
        (
            "hostname",
            hostname_body(
                "shop.db.example.test",
                &self_signed(&["shop.db.example.test"]),
            ),
        ),
        ("cert", hostname_body("pg.customer.test", &pair)),
        (
            "key",
            hostname_body(name, &(pair.0.clone(), other.1.clone())),
        ),
    ] {
        let refused = live.expect_beyond_schema("POST", list, &live.concrete(list), key, &body);
        let message = refused["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(&format!("{field}: ")), "{message}");
    }
    // Removed; then it is 404; a path that is no host name is 422.
    let path = "/v1/tenants/acme/hostnames/DB.customer.test";
    live.expect_at("DELETE", one, path, key, "", 204);
    live.expect_at("DELETE", one, path, key, "", 404);
    live.expect_at(
        "DELETE",
        one,
        "/v1/tenants/acme/hostnames/db_1.x",
        key,
        "",
        422,
    );
    assert_eq!(
        live.expect("GET", list, key, "", 200),
        json!({"hostnames": []})
    );
}

/// API keys: create (the documented example), bad bodies, list, revoke.
fn api_keys(live: &mut Live, world: &World) {
    let key = world.key;
    let keys = "/v1/api-keys";
    let example = live.doc["paths"][keys]["post"]["requestBody"]["content"]["application/json"]
        ["example"]
        .to_string();
    let created = live.expect("POST", keys, key, &example, 201);
    let new_key = created["key"].as_str().unwrap().to_owned();
    let new_id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["role"], "viewer");
    for (body, status) in [
        ("", 400),
        ("{", 400),
        (r#"{"role": "root"}"#, 422),
        (r#"{"role": "viewer", "colour": "blue"}"#, 422),
        (r#"{"name": "x"}"#, 422),
        ("[]", 422),
    ] {
        live.expect("POST", keys, key, body, status);
    }
    let listed = live.expect("GET", keys, key, "", 200);
    let listed = listed["api_keys"].as_array().unwrap().clone();
    assert_eq!(
        listed.len(),
        3,
        "the bootstrap key, the test's viewer key and the new one: {listed:?}"
    );
    live.expect("GET", "/v1/tenants", Some(&new_key), "", 200);
    let revoke = "/v1/api-keys/{id}";
    let path = format!("/v1/api-keys/{new_id}");
    assert_eq!(
        live.expect_at("DELETE", revoke, &path, key, "", 200),
        json!({"revoked": true})
    );
    live.expect("GET", "/v1/tenants", Some(&new_key), "", 401);
    live.expect_at("DELETE", revoke, &path, key, "", 404);
    live.expect("DELETE", revoke, key, "", 404);
}

/// For every POST: a malformed key (400); a key whose first request is still running
/// (409: made so through the store, as the server records it); that key with another
/// body (422 `idempotency_key_reused`); and a replay with the header.
fn idempotency_keys(live: &mut Live, world: &World) {
    let key = world.key;
    let key_id = control::keys::key_id(&world.admin_key).unwrap().to_owned();
    let posts: Vec<String> = routes()
        .into_iter()
        .filter(|(_, m)| *m == "POST")
        .map(|(t, _)| t.to_owned())
        .collect();
    for template in &posts {
        let path = live.concrete(template);
        for bad in ["two words", "", "é", &"k".repeat(256)] {
            let r = live.call_with("POST", template, &path, key, &idempotency(bad), "{}");
            assert_eq!(r.status, 400, "{template} {bad:?}");
        }
        let running = format!("running:{template}");
        let body = r#"{"in": "flight"}"#;
        let mut hash = Sha256::new();
        hash.update(path.as_bytes());
        hash.update([0]);
        hash.update(body.as_bytes());
        let begun = world.rt.block_on(world.store.idempotency_begin(
            &running,
            &key_id,
            &hash.finalize().into(),
        ));
        assert_eq!(begun.unwrap(), Begin::New);
        let header = idempotency(&running);
        let r = live.call_with("POST", template, &path, key, &header, body);
        assert_eq!(
            (r.status, r.json()["error"]["code"].as_str()),
            (409, Some("conflict"))
        );
        let r = live.call_with("POST", template, &path, key, &header, "{}");
        assert_eq!(
            (r.status, r.json()["error"]["code"].as_str()),
            (422, Some("idempotency_key_reused")),
            "{template}"
        );
    }
    // A replay of a 200: suspend twice with one key, then resume.
    let suspend = "/v1/tenants/{id}/suspend";
    let header = idempotency("suspend-globex");
    let path = "/v1/tenants/globex/suspend";
    let first = live.call_with("POST", suspend, path, key, &header, "");
    let again = live.call_with("POST", suspend, path, key, &header, "");
    assert_eq!(
        (first.status, first.header("idempotent-replayed")),
        (200, None)
    );
    assert_eq!(
        (again.status, again.header("idempotent-replayed")),
        (200, Some("true"))
    );
    assert_eq!(again.json(), first.json());
    let resume = "/v1/tenants/{id}/resume";
    let path = "/v1/tenants/globex/resume";
    let resumed = live.call_with("POST", resume, path, key, &idempotency("resume-globex"), "");
    assert_eq!(resumed.status, 200);
}

/// The audit log holds every kind of change made above, and verifies.
fn audit_log(live: &mut Live, world: &World) {
    let viewer = world.viewer;
    let events = "/v1/audit-events";
    let all = live.expect_at(
        "GET",
        events,
        "/v1/audit-events?limit=1000",
        viewer,
        "",
        200,
    );
    let all = all["events"].as_array().unwrap().clone();
    let actions: BTreeSet<&str> = all.iter().map(|e| e["action"].as_str().unwrap()).collect();
    let documented = &schema(&live.doc, "AuditEvent")["properties"]["action"]["examples"];
    for action in documented.as_array().unwrap() {
        let action = action.as_str().unwrap();
        assert!(actions.contains(action), "no {action} in {actions:?}");
    }
    let provisioned = all
        .iter()
        .find(|e| e["action"] == "tenant.provisioned")
        .unwrap();
    assert_eq!(
        (&provisioned["actor"], &provisioned["target"]),
        (&json!("system"), &json!("shop"))
    );
    let rotated = all.iter().find(|e| e["action"] == "role.rotate").unwrap();
    assert_eq!(rotated["target"], "shop/roles/app_rw");
    let page = live.expect_at(
        "GET",
        events,
        "/v1/audit-events?limit=1&action=tenant.resume&tenant=acme&since=2000-01-01T00:00:00Z&until=2999-01-01T00:00:00.5Z",
        viewer,
        "",
        200,
    );
    assert_eq!(page["events"][0]["action"], "tenant.resume");
    let path = "/v1/audit-events?tenant=shop&action=role.create";
    let page = live.expect_at("GET", events, path, viewer, "", 200);
    let targets: Vec<&Value> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["target"])
        .collect();
    assert_eq!(
        targets,
        [&json!("shop/roles/reporting"), &json!("shop/roles/app_rw")]
    );
    for path in [
        "/v1/audit-events?limit=0",
        "/v1/audit-events?since=yesterday",
        "/v1/audit-events?cursor=x",
        "/v1/audit-events?colour=blue",
    ] {
        live.expect_at("GET", events, path, viewer, "", 400);
    }
    let verdict = live.expect("GET", "/v1/audit-events/verify", viewer, "", 200);
    assert_eq!(verdict["ok"], true, "{verdict}");
    assert!(verdict["events"].as_u64().unwrap() >= all.len() as u64);
}
