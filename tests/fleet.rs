//! A fleet: three real Sluice processes on one control store behind real HAProxy
//! (round robin, PROXY v2), in front of real Postgres.

use testkit::fleet::Fleet;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

#[tokio::test]
async fn three_replicas_serve_one_tenant_through_haproxy() {
    let fleet = Fleet::start(BIN.as_ref(), 3, "roundrobin", |_| {}).expect("fleet");
    let target = fleet.target();
    for _ in 0..6 {
        let client = testkit::pg_connect(&target)
            .await
            .expect("connect through haproxy");
        let one: i32 = client.query_one("select 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);
    }
}
