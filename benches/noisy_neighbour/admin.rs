//! Sluice's admin API as the bench uses it: `/metrics` (logged-in clients, rejection
//! counters) and `PATCH /v1/tenants/acme` for A's query rate.

use super::*;

pub(crate) fn metrics(sluice: &SluiceProcess) -> String {
    testkit::http::get(sluice.admin_addr, "/metrics", None).body
}

/// Sum of the samples of `name` whose labels include `tenant="..."`.
pub(crate) fn tenant_sum(body: &str, name: &str, tenant: &str) -> f64 {
    let label = format!("tenant=\"{tenant}\"");
    body.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `reason=value` of every non-zero rejection counter of `tenant`.
pub(crate) fn rejections(body: &str, tenant: &str) -> String {
    let prefix = format!("sluice_connections_rejected_total{{tenant=\"{tenant}\",reason=\"");
    let list: Vec<String> = body
        .lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .filter_map(|l| {
            let (reason, value) = l.split_once("\"} ")?;
            (value.trim() != "0").then(|| format!("{reason} {}", value.trim()))
        })
        .collect();
    if list.is_empty() {
        "none".into()
    } else {
        list.join(", ")
    }
}

/// Waits (bounded) until `tenant` has at least `n` logged-in clients.
pub(crate) fn wait_for_clients(sluice: &SluiceProcess, tenant: &str, n: usize) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if tenant_sum(&metrics(sluice), "sluice_client_connections", tenant) >= n as f64 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

pub(crate) fn patch_query_rate(sluice: &SluiceProcess, rate: u32) {
    let body = format!(r#"{{"limits": {{"query_rate": {rate}}}}}"#);
    let r = testkit::http::request(
        sluice.admin_addr,
        "PATCH",
        &format!("/v1/tenants/{A}"),
        Some(&sluice.admin_key),
        "Content-Type: application/json\r\n",
        body.as_bytes(),
    )
    .expect("PATCH");
    assert_eq!(r.status, 200, "PATCH query_rate: {}", r.body);
}
