//! Micro-benchmarks of the `router` crate's per-connection work: finding a tenant in
//! the catalog (with 1, 10,000 and 100,000 tenants, to show the cost does not grow
//! with the catalog beyond what the CPU caches add), and the token buckets behind the
//! connect and query rates.
//!
//! Run with `cargo bench --bench micro_router`; see benches/README.md.

use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use router::{
    Backend, BackendAddr, BackendTls, Catalog, CatalogHandle, Limits, PoolSettings, Tenant,
    TenantId, TokenBucket,
};

const SIZES: [usize; 3] = [1, 10_000, 100_000];

/// Ids of one length, so every catalog size hashes and compares the same bytes.
fn id(n: usize) -> String {
    format!("tenant-{n:06}")
}

fn catalog(size: usize) -> Catalog {
    // One backend shared by every tenant: the catalog's shape is what is measured.
    let backend = Arc::new(Backend {
        addr: BackendAddr::from_host("/run/postgresql", 5432),
        tls: BackendTls::Disable,
        tls_ca: None,
        auth_user: "sluice_auth".into(),
        allow_auth_user_login: false,
        auth_password: "secret".into(),
        auth_database: "postgres".into(),
        auth_query: router::tenant::DEFAULT_AUTH_QUERY.into(),
    });
    Catalog::new((0..size).map(|n| Tenant {
        id: TenantId::parse(&id(n)).expect("valid id"),
        backend: backend.clone(),
        pool: PoolSettings::default(),
        limits: Limits::default(),
        suspended: None,
        hostnames: Vec::new(),
    }))
}

/// 4,096 ids of the catalog in a scattered order (a fixed LCG), so lookups in the
/// large catalog touch different buckets as a stream of connections would.
fn lookups(size: usize) -> Vec<String> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    (0..4_096)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            id(usize::try_from(x >> 33).expect("31 bits") % size)
        })
        .collect()
}

fn bench_catalog(c: &mut Criterion) {
    let mut group = c.benchmark_group("catalog");
    for size in SIZES {
        let handle = CatalogHandle::new(catalog(size));
        let ids = lookups(size);
        let mut next = ids.iter().cycle();
        // The same tenant every time: the hash probe alone, its data in cache.
        group.bench_with_input(BenchmarkId::new("get_same", size), &size, |b, _| {
            let snapshot = handle.snapshot();
            let id = &ids[0];
            b.iter(|| snapshot.get(black_box(id)).is_some())
        });
        // Tenants in a scattered order: in a large catalog, also the cache misses.
        group.bench_with_input(BenchmarkId::new("get_scattered", size), &size, |b, _| {
            let snapshot = handle.snapshot();
            b.iter(|| snapshot.get(black_box(next.next().unwrap())).is_some())
        });
        group.bench_with_input(BenchmarkId::new("get_miss", size), &size, |b, _| {
            let snapshot = handle.snapshot();
            b.iter(|| snapshot.get(black_box("tenant-999999")).is_some())
        });
        // What a connection does: load the current snapshot, then look up.
        group.bench_with_input(BenchmarkId::new("snapshot_get", size), &size, |b, _| {
            b.iter(|| {
                handle
                    .snapshot()
                    .get(black_box(next.next().unwrap()))
                    .is_some()
            })
        });
    }
    group.finish();
}

fn bench_bucket(c: &mut Criterion) {
    let mut group = c.benchmark_group("bucket");
    let t0 = Instant::now();
    let tick = Duration::from_micros(1);

    group.bench_function("try_take/admit", |b| {
        let mut bucket = TokenBucket::new(1e9, 1e9, t0);
        let mut now = t0;
        b.iter(|| {
            now += tick;
            assert!(bucket.try_take(black_box(now)));
        })
    });
    group.bench_function("try_take/refuse", |b| {
        // 1 token per second and none left: every call refills a sliver and refuses.
        let mut bucket = TokenBucket::new(1.0, 1.0, t0);
        assert!(bucket.try_take(t0));
        let mut now = t0;
        b.iter(|| {
            now += Duration::from_nanos(1);
            bucket.try_take(black_box(now))
        })
    });
    group.bench_function("take_or_wait/on_hand", |b| {
        let mut bucket = TokenBucket::new(1e9, 1e9, t0);
        let mut now = t0;
        b.iter(|| {
            now += tick;
            bucket.take_or_wait(black_box(1.0), now)
        })
    });
    // A query that must wait its turn, then gives its reservation back (timed out):
    // the balance stays where it was, so every iteration is the same.
    group.bench_function("take_or_wait/reserve_refund", |b| {
        let mut bucket = TokenBucket::new(100.0, 200.0, t0);
        assert_eq!(bucket.take_or_wait(400.0, t0), Duration::from_secs(2));
        b.iter(|| {
            let wait = bucket.take_or_wait(black_box(1.0), t0);
            bucket.refund(1.0);
            wait
        })
    });
    // As the proxy's admission takes it: a mutex and the real clock (uncontended).
    group.bench_function("mutex_now_try_take", |b| {
        let bucket = Mutex::new(TokenBucket::new(1e9, 1e9, Instant::now()));
        b.iter(|| bucket.lock().unwrap().try_take(Instant::now()))
    });
    group.finish();
}

criterion_group! {
    name = micro_router;
    // Trimmed so the whole target runs in well under a minute; see benches/README.md.
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    targets = bench_catalog, bench_bucket
}
criterion_main!(micro_router);
