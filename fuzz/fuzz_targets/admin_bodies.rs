//! Fuzzes what the admin API reads from a request before it touches the store: the
//! JSON bodies of `POST /v1/tenants` (`CreateTenant`) and `PATCH /v1/tenants/{id}`
//! (`TenantPatch`), the key role of `POST /v1/api-keys` (`Role`), the `backend` object
//! the static driver checks, and the bearer token of every request (`ApiKeys::verify`).
//! Every input is tried as each of them.
//!
//! Validation runs through the public functions the handlers use: `TenantId::parse`,
//! `Plans::base` / `Plans::resolve` (which apply `PoolPatch` and `LimitsPatch`, the
//! checks of both endpoints), `StaticDriver::address_from_params` and
//! `catalog_sync::materialize`. The handlers' own glue (`new_record`, `overlay`) is
//! private; the PATCH merge is done here the way `overlay` does it, and must succeed
//! for any two bodies that deserialized, since `overlay` `expect`s it.
//!
//! Not reachable: the bodies of the roles endpoints (`CreateRole`, `Rotate`) and of
//! `POST /v1/api-keys` (`NewKey`) and `suspend` are private structs, and the password
//! check (`password_or_generated`) is a private fn (see fuzz/README.md).
//!
//! Checks: no panic; what resolves is within the documented ranges; a resolved active
//! record materializes into a tenant exactly when its id is a valid tenant id; only the
//! one accepted key verifies.
#![no_main]

use std::collections::HashMap;
use std::sync::OnceLock;

use admin_api::handlers::tenant_changes::TenantPatch;
use admin_api::handlers::tenant_create::CreateTenant;
use control::catalog_sync::{materialize, Base, Plans};
use control::keys::{ApiKeys, Role};
use control::settings::{LimitsPatch, PoolPatch};
use control::store::{BackendRecord, TenantRecord};
use libfuzzer_sys::fuzz_target;
use provision::StaticDriver;
use router::{PoolMode, PoolSettings, TenantId};
use serde_json::Value;

const KEY: &str = "sk_0123abcd_0123456789abcdef0123456789abcdef0123456789abcdef";

/// The defaults and one plan, `nano`, that differs from them.
fn plans() -> &'static Plans {
    static PLANS: OnceLock<Plans> = OnceLock::new();
    PLANS.get_or_init(|| {
        let nano = Base {
            pool: PoolSettings {
                mode: PoolMode::Transaction,
                size: 5,
                min_idle: 2,
                reserve: 2,
                ..PoolSettings::default()
            },
            limits: router::Limits {
                query_rate: Some(100),
                ..router::Limits::default()
            },
        };
        Plans {
            defaults: Base::default(),
            named: HashMap::from([("nano".to_owned(), nano)]),
        }
    })
}

fn keys() -> &'static ApiKeys {
    static KEYS: OnceLock<ApiKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let keys = ApiKeys::default();
        keys.insert(KEY, Role::Operator).expect("a well-formed key");
        keys
    })
}

/// A record as the store would hold it: active, with a backend address.
fn record(id: &str, plan: Option<String>, pool: PoolPatch, limits: LimitsPatch) -> TenantRecord {
    TenantRecord {
        id: id.to_owned(),
        plan,
        status: "active".into(),
        suspended_reason: None,
        backend: BackendRecord {
            driver: "static".into(),
            host: Some("db.internal".into()),
            port: Some(5432),
            tls: "require".into(),
            tls_ca: None,
            admin_user: Some("postgres".into()),
            admin_database: None,
            auth_user: "sluice_auth".into(),
            allow_auth_user_login: false,
            auth_database: "postgres".into(),
            auth_query: None,
            params: Value::Null,
        },
        pool,
        limits,
        version: 1,
    }
}

/// Resolves `record` and checks what comes out.
fn check_resolved(record: &TenantRecord) {
    let plans = plans();
    let Ok((pool, limits)) = plans.resolve(record) else {
        return;
    };
    assert!((1..=10_000).contains(&pool.size), "pool.size {}", pool.size);
    assert!(
        pool.min_idle <= pool.size,
        "min_idle {} > size {}",
        pool.min_idle,
        pool.size
    );
    assert!(pool.reserve <= 10_000);
    assert!(pool.max_prepared_statements >= 1);
    assert!(limits.max_concurrent_logins >= 1);
    let tenant = materialize(plans, record, Some("auth password"));
    match TenantId::parse(&record.id) {
        Ok(id) => {
            let tenant = tenant.expect("resolves").expect("active, with an address");
            assert_eq!(tenant.id, id);
            assert_eq!(tenant.pool, pool);
            assert_eq!(tenant.limits, limits);
        }
        Err(_) => assert!(tenant.is_err(), "an invalid id became a tenant"),
    }
}

/// `base` with the keys given in `patch` written over it, as the PATCH handler merges.
fn merged<T: serde::Serialize + serde::de::DeserializeOwned>(base: &T, patch: &T) -> T {
    let mut merged = serde_json::to_value(base).expect("settings serialize");
    if let (Value::Object(m), Value::Object(p)) = (
        &mut merged,
        serde_json::to_value(patch).expect("settings serialize"),
    ) {
        m.extend(p);
    }
    serde_json::from_value(merged).expect("a merge of two deserialized settings deserializes")
}

fn create(data: &[u8]) {
    let Ok(body) = serde_json::from_slice::<CreateTenant>(data) else {
        return;
    };
    let _ = plans().base(body.plan.as_deref());
    let pool = body.pool.clone().unwrap_or_default();
    let limits = body.limits.clone().unwrap_or_default();
    // What the store gives back must read as what went in.
    let round: PoolPatch = serde_json::from_value(serde_json::to_value(&pool).unwrap()).unwrap();
    assert_eq!(round, pool);
    let round: LimitsPatch =
        serde_json::from_value(serde_json::to_value(&limits).unwrap()).unwrap();
    assert_eq!(round, limits);
    check_resolved(&record(&body.id, body.plan.clone(), pool, limits));
}

fn patch(data: &[u8]) {
    let Ok(body) = serde_json::from_slice::<TenantPatch>(data) else {
        return;
    };
    // A tenant on plan `nano` that already has overrides of its own.
    let mut next = record(
        "acme",
        Some("nano".into()),
        PoolPatch {
            size: Some(8),
            ..PoolPatch::default()
        },
        LimitsPatch {
            connect_rate: Some(20),
            allow_cidrs: Some(vec!["10.0.0.0/8".into()]),
            ..LimitsPatch::default()
        },
    );
    if let Some(pool) = &body.pool {
        next.pool = merged(&next.pool, pool);
    }
    if let Some(limits) = &body.limits {
        next.limits = merged(&next.limits, limits);
    }
    check_resolved(&next);
}

fn static_backend(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    // A whole body's `backend`, or the input itself as that object.
    let backend = value.get("backend").unwrap_or(&value);
    if let Ok(address) = StaticDriver::address_from_params(backend) {
        assert!(!address.host.is_empty());
        assert_ne!(address.port, 0);
    }
}

fn role(data: &[u8]) {
    if let Ok(role) = serde_json::from_slice::<Role>(data) {
        assert_eq!(Role::parse(role.as_str()), Some(role));
    }
}

fn token(data: &[u8]) {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let caller = keys().verify(token);
    assert_eq!(caller.is_some(), token == KEY, "{token:?}");
}

fuzz_target!(|data: &[u8]| {
    create(data);
    patch(data);
    static_backend(data);
    role(data);
    token(data);
});
