//! `openapi.json` against the implementation: the route table, auth, `$ref`s, the serde
//! structs, and every answer of a live admin listener (on loopback) checked against
//! the schema the document declares for that operation and status, with every
//! declared status seen at least once.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use admin_api::http::{routes, OPENAPI_JSON};
use admin_api::store::{EmbeddedControl, Store};
use admin_api::{stats, tenants, Admin, AdminConfig, Control, Role};
use router::{Backend, BackendAddr, BackendTls, Catalog, CatalogHandle, Tenant, TenantId};
use serde_json::{json, Value};
use testkit::http::HttpResponse;
use tokio_util::sync::CancellationToken;

/// Paths anyone may call, without a key.
const PUBLIC: [&str; 4] = ["/healthz", "/readyz", "/metrics", "/v1/openapi.json"];
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];
/// The JSON Schema keywords `validate` understands; the document may use no others.
const KEYWORDS: [&str; 16] = [
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
    if let (Some(s), Some(max)) = (
        value.as_str(),
        schema.get("maxLength").and_then(Value::as_u64),
    ) {
        if s.chars().count() as u64 > max {
            return Err(format!("{at}: longer than {max}"));
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
    for kind in ["schemas", "responses", "parameters"] {
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
        let success = ["200", "201"].map(|s| op["responses"].get(s).is_some());
        assert!(success[0] != success[1], "{method} {path}: 200 or 201");
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

/// Every `example` of a media type fits its schema.
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
        rejected: [("banned", 2), ("auth_failed", 1)].into_iter().collect(),
        pools: vec![pool],
    };
    check("TenantStats", &to_json(&tenant_stats), true);

    let pool_settings = tenants::PoolPatch {
        mode: Some("session".into()),
        size: Some(20),
        min_idle: Some(0),
        max_wait_ms: Some(5000),
        idle_timeout_s: Some(600),
        lifetime_s: Some(3600),
        max_prepared_statements: Some(200),
        reserve: Some(0),
        reserve_wait_ms: Some(1000),
    };
    let limits = tenants::LimitsPatch {
        query_timeout_ms: Some(0),
        idle_in_transaction_timeout_ms: Some(0),
        client_idle_timeout_s: Some(0),
        max_client_connections: Some(200),
        max_server_connections: Some(0),
        connect_rate: Some(50),
        query_rate: Some(0),
        max_concurrent_logins: Some(32),
        failed_login_max: Some(10),
        failed_login_window_s: Some(60),
        failed_login_ban_s: Some(120),
        allow_cidrs: Some(vec!["10.0.0.0/8".into()]),
    };
    // What a tenant shows has every key; a PATCH takes the same keys.
    check("PoolSettings", &to_json(&pool_settings), true);
    check("PoolPatch", &to_json(&pool_settings), false);
    check("Limits", &to_json(&limits), true);
    check("LimitsPatch", &to_json(&limits), false);
    let patch = json!({"pool": to_json(&pool_settings), "limits": to_json(&limits)});
    check("TenantPatch", &patch, false);
    serde_json::from_value::<tenants::TenantPatch>(patch).expect("the struct takes it");

    let backend = || tenants::BackendView {
        address: "db.internal:5432".into(),
        tls: "verify-full",
    };
    check("Backend", &to_json(&backend()), true);
    let active = tenants::TenantView {
        id: "acme".into(),
        status: "active",
        suspended_reason: None,
        backend: backend(),
        pool: pool_settings.clone(),
        limits: limits.clone(),
    };
    let suspended = tenants::TenantView {
        id: "acme".into(),
        status: "suspended",
        suspended_reason: Some("unpaid".into()),
        backend: backend(),
        pool: pool_settings,
        limits,
    };
    check("Tenant", &to_json(&suspended), false);
    assert_eq!(keys(&to_json(&active)), required(schema(&doc, "Tenant")));
    validate(&doc, schema(&doc, "Tenant"), &to_json(&active), "Tenant").unwrap();
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

fn tenant(id: &str) -> Tenant {
    Tenant {
        id: TenantId::parse(id).unwrap(),
        backend: Arc::new(Backend {
            addr: BackendAddr::from_host("127.0.0.1", 1),
            tls: BackendTls::Disable,
            tls_ca: None,
            auth_user: "sluice".into(),
            auth_password: "secret".into(),
            auth_database: "postgres".into(),
            auth_query: router::tenant::DEFAULT_AUTH_QUERY.into(),
        }),
        pool: Default::default(),
        limits: Default::default(),
        suspended: None,
    }
}

/// Binds an admin listener on loopback over a catalog of `acme` and `globex` (a pool
/// each, a refused login for acme).
fn bind(
    rt: &tokio::runtime::Runtime,
    key_file: &Path,
    metrics_enabled: bool,
    control: Control,
) -> Admin {
    let catalog = Catalog::new([tenant("acme"), tenant("globex")]);
    let pools = Arc::new(pooler::Pools::new());
    for t in catalog.iter() {
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
        refusal_audit_interval: std::time::Duration::from_secs(60),
    };
    rt.block_on(Admin::bind(
        &config,
        Arc::new(CatalogHandle::new(catalog)),
        pools,
        rejections,
        Arc::new(Gates),
        control,
    ))
    .unwrap()
}

/// The listener, the keys, the document, and which (path, method, status) answers were
/// seen.
struct Live {
    doc: Value,
    addr: SocketAddr,
    seen: BTreeSet<(String, String, u16)>,
}

fn code_of(status: u16) -> &'static str {
    match status {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        413 => "payload_too_large",
        422 => "invalid_request",
        503 => "unavailable",
        other => panic!("no error code for {other}"),
    }
}

/// `template` with its variables filled in.
fn concrete(template: &str) -> String {
    template.replace("{id}", "acme")
}

impl Live {
    /// Sends the request and checks the answer against the document: its status is
    /// declared for the operation, its body fits the declared schema, its content type
    /// and headers are the declared ones. A JSON body sent is checked against the
    /// request schema too: one the API accepted must fit, one it refused as 422 must not.
    fn call(
        &mut self,
        method: &str,
        template: &str,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> HttpResponse {
        let r = testkit::http::request(self.addr, method, path, token, "", body.as_bytes())
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let what = format!("{method} {path} -> {}: {}", r.status, r.body);
        let doc = &self.doc;
        let op = &doc["paths"][template][method.to_ascii_lowercase()];
        assert!(op.is_object(), "{what}: not in the document");
        let declared = op["responses"]
            .get(r.status.to_string())
            .map(|resp| resolve(doc, resp))
            .unwrap_or_else(|| panic!("{what}: status not in the document"));
        self.seen
            .insert((template.to_owned(), method.to_ascii_lowercase(), r.status));

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
                        assert_eq!(value["error"]["code"], code_of(r.status), "{what}");
                    }
                }
            }
        }
        for (name, header) in declared["headers"].as_object().into_iter().flatten() {
            let value = r.header(&name.to_ascii_lowercase());
            assert!(value.is_some(), "{what}: no {name} header");
            if let Some(c) = header["schema"]["const"].as_str() {
                assert_eq!(value, Some(c), "{what}");
            }
        }

        if let Some(request) = op.get("requestBody") {
            let parsed: Option<Value> = serde_json::from_str(body).ok();
            let fits = |v: &Value| {
                let s = &request["content"]["application/json"]["schema"];
                validate(doc, s, v, "request").is_ok()
            };
            match (r.status, &parsed) {
                (200, _) if body.is_empty() => {
                    assert_eq!(request["required"], false, "{what}: body is optional")
                }
                (200, Some(v)) => assert!(fits(v), "{what}: accepted, but not in the schema"),
                (400, None) if body.is_empty() => {
                    assert_eq!(request["required"], true, "{what}: body is required")
                }
                (422, Some(v)) => assert!(!fits(v), "{what}: refused, but fits the schema"),
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
        self.expect_at(method, template, &concrete(template), token, body, status)
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
}

/// Every endpoint answers as `openapi.json` says, and every status it declares happens.
#[test]
fn live_answers_match_the_document() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("admin.key");
    let stop = CancellationToken::new();
    // A real (embedded) control store for the first listener; the second has none it
    // can reach, so its changes, keys and audit endpoints answer 503.
    let data_dir = dir.path().join("data");
    let embedded = rt
        .block_on(rt.spawn_blocking(move || EmbeddedControl::start(&data_dir)))
        .unwrap()
        .expect("starting the embedded control store");
    let store = rt.block_on(async {
        let store = Store::connect(embedded.config()).await.unwrap();
        store.migrate().await.unwrap();
        store
    });
    let control = Control::Ok {
        store: Arc::new(store),
        kind: "embedded",
    };
    let admin = bind(&rt, &key_file, true, control);
    let unreachable = Control::Unreachable("connecting to the control store: refused".into());
    let no_metrics = bind(&rt, &key_file, false, unreachable);
    let viewer_key = admin_api::keys::generate();
    admin.state.keys.insert(&viewer_key, Role::Viewer).unwrap();
    let state = admin.state.clone();
    let (addr, no_metrics_addr) = (admin.addr, no_metrics.addr);
    rt.spawn(admin.serve(stop.clone()));
    rt.spawn(no_metrics.serve(stop.clone()));
    let mut live = Live {
        doc: doc(),
        addr,
        seen: BTreeSet::new(),
    };
    let admin_key = std::fs::read_to_string(&key_file)
        .unwrap()
        .trim()
        .to_owned();
    let (key, viewer) = (Some(admin_key.as_str()), Some(viewer_key.as_str()));
    let ops: Vec<(String, String)> = operations(&live.doc)
        .into_iter()
        .map(|(p, m, _)| (p, m.to_ascii_uppercase()))
        .collect();

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
                let r = live.call(method, template, &concrete(template), viewer, "");
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
    assert_eq!(ready["catalog"]["tenants"], 2);
    assert_eq!(ready["control_store"], "ok (embedded)");
    let r = live.call("GET", "/v1/openapi.json", "/v1/openapi.json", None, "");
    assert_eq!((r.status, r.body.as_str()), (200, OPENAPI_JSON));
    // A query string does not change the route.
    live.expect_at("GET", "/healthz", "/healthz?x=1", None, "", 200);

    // Stats.
    let pools = live.expect("GET", "/v1/pools", viewer, "", 200);
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
    let acme_stats = live.expect("GET", "/v1/tenants/{id}/stats", key, "", 200);
    assert_eq!(acme_stats["rejected"], json!({"banned": 1}));
    assert_eq!(acme_stats["pools"].as_array().unwrap().len(), 1);
    live.expect_at(
        "GET",
        "/v1/tenants/{id}/stats",
        "/v1/tenants/nope/stats",
        key,
        "",
        404,
    );

    // Tenants: list, get.
    let list = live.expect("GET", "/v1/tenants", key, "", 200);
    assert_eq!(list["tenants"].as_array().unwrap().len(), 2);
    let page = live.expect_at("GET", "/v1/tenants", "/v1/tenants?limit=1", key, "", 200);
    assert_eq!(page["next_cursor"], "acme");
    live.expect_at("GET", "/v1/tenants", "/v1/tenants?limit=x", key, "", 400);
    let acme = live.expect("GET", "/v1/tenants/{id}", key, "", 200);
    assert_eq!(acme["status"], "active");
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

    // Suspend and resume.
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
    let resume = "/v1/tenants/{id}/resume";
    let resumed = live.expect("POST", resume, key, "anything", 200);
    assert_eq!(resumed["status"], "active");
    assert!(resumed.get("suspended_reason").is_none());
    live.expect_at("POST", resume, "/v1/tenants/nope/resume", key, "", 404);

    // Bans.
    let bans = "/v1/tenants/{id}/bans";
    let list = live.expect("GET", bans, viewer, "", 200);
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

    // API keys.
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
        2,
        "the bootstrap key and the new one: {listed:?}"
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

    // The audit log holds every change made above, and verifies.
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
    assert!(all.len() > 10, "{}", all.len());
    assert_eq!(all[0]["action"], "api_key.revoke");
    let page = live.expect_at(
        "GET",
        events,
        "/v1/audit-events?limit=1&action=tenant.resume&tenant=acme&since=2000-01-01T00:00:00Z&until=2999-01-01T00:00:00.5Z",
        viewer,
        "",
        200,
    );
    assert_eq!(page["events"][0]["action"], "tenant.resume");
    for path in [
        "/v1/audit-events?limit=0",
        "/v1/audit-events?since=yesterday",
        "/v1/audit-events?cursor=x",
        "/v1/audit-events?colour=blue",
    ] {
        live.expect_at("GET", events, path, viewer, "", 400);
    }
    let verdict = live.expect("GET", "/v1/audit-events/verify", viewer, "", 200);
    assert_eq!(verdict, json!({"ok": true, "events": all.len()}));

    // Without a reachable store: what needs it answers 503, and changes nothing.
    live.addr = no_metrics_addr;
    let ready = live.expect("GET", "/readyz", None, "", 200);
    assert_eq!(
        ready["control_store"],
        "unreachable: connecting to the control store: refused"
    );
    for (method, template, body) in [
        ("PATCH", "/v1/tenants/{id}", r#"{"pool": {"size": 3}}"#),
        ("POST", "/v1/tenants/{id}/suspend", ""),
        ("POST", "/v1/tenants/{id}/resume", ""),
        ("DELETE", "/v1/tenants/{id}/bans", ""),
        ("GET", "/v1/api-keys", ""),
        ("POST", "/v1/api-keys", r#"{"role": "admin"}"#),
        ("DELETE", "/v1/api-keys/{id}", ""),
        ("GET", "/v1/audit-events", ""),
        ("GET", "/v1/audit-events/verify", ""),
    ] {
        let path = concrete(template).replace("keys/acme", "keys/1a2b3c4d");
        live.expect_at(method, template, &path, key, body, 503);
    }
    let acme_now = live.expect("GET", "/v1/tenants/{id}", key, "", 200);
    assert_ne!(acme_now["pool"]["size"], 3);
    live.addr = addr;

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
        let r = testkit::http::request(addr, other, &concrete(template), key, "", b"").unwrap();
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
            if status != 431
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
    let huge_head = format!("X-Junk: {}\r\n", "a".repeat(100 * 1024));
    if let Ok(r) = testkit::http::request(addr, "GET", "/healthz", None, &huge_head, b"") {
        assert_eq!((r.status, r.body.as_str()), (431, ""));
    }

    stop.cancel();
    drop(state);
    rt.block_on(rt.spawn_blocking(move || embedded.stop()))
        .unwrap()
        .unwrap();
}
