//! What the client sends and how it reads answers, against [`super::fake`].

use serde_json::json;

use super::fake::{FakeApi, Reply};
use super::*;

fn header<'a>(request: &'a str, name: &str) -> Option<&'a str> {
    request.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test]
async fn a_create_carries_its_idempotency_key_and_body() {
    let fake = FakeApi::start(vec![Reply::Http(202, r#"{"job": {"id": 1}}"#.into())]).await;
    let client = ApiClient::new(&format!("{}/prefix", fake.url()), Some("sk_k".into())).unwrap();
    let key: IdempotencyKey = "try-1".parse().unwrap();
    let body = json!({"id": "acme"});
    let answer = client
        .post_json_idempotent("/v1/tenants", &body, &key)
        .await
        .unwrap();
    assert_eq!(answer, json!({"job": {"id": 1}}));
    let request = &fake.requests()[0];
    assert!(
        request.starts_with("POST /prefix/v1/tenants HTTP/1.1\r\n"),
        "{request}"
    );
    assert_eq!(header(request, "idempotency-key"), Some("try-1"));
    assert_eq!(header(request, "content-type"), Some("application/json"));
    assert_eq!(header(request, "authorization"), Some("Bearer sk_k"));
    assert!(request.ends_with("\r\n\r\n{\"id\":\"acme\"}"), "{request}");
}

#[tokio::test]
async fn patch_delete_and_bodiless_post_send_what_they_say() {
    let fake = FakeApi::start(vec![
        Reply::Http(200, r#"{"id": "acme"}"#.into()),
        Reply::Http(204, String::new()),
        Reply::Http(200, "{}".into()),
    ])
    .await;
    let client = ApiClient::new(&fake.url(), None).unwrap();
    let patched = client
        .patch_json("/v1/tenants/acme", &json!({"pool": {"size": 2}}))
        .await
        .unwrap();
    assert_eq!(patched["id"], "acme");
    let deleted = client.delete("/v1/tenants/acme/roles/app").await.unwrap();
    assert_eq!(deleted, Value::Null, "a 204 has no body");
    client
        .post_json("/v1/tenants/acme/resume", None)
        .await
        .unwrap();
    let requests = fake.requests();
    assert!(requests[0].starts_with("PATCH /v1/tenants/acme "));
    assert!(requests[0].ends_with(r#"{"pool":{"size":2}}"#));
    assert!(requests[1].starts_with("DELETE /v1/tenants/acme/roles/app "));
    assert_eq!(header(&requests[1], "idempotency-key"), None);
    assert!(requests[2].starts_with("POST /v1/tenants/acme/resume "));
    assert!(
        requests[2].ends_with("\r\n\r\n"),
        "no body: {}",
        requests[2]
    );
    assert_eq!(header(&requests[2], "content-type"), None);
}

#[tokio::test]
async fn errors_tell_whether_the_request_may_have_been_applied() {
    let fake = FakeApi::start(vec![
        Reply::Http(
            409,
            r#"{"error": {"code": "conflict", "message": "tenant \"acme\" exists"}}"#.into(),
        ),
        Reply::Hangup,
    ])
    .await;
    let client = ApiClient::new(&fake.url(), None).unwrap();
    let conflict = client.post_json("/v1/tenants", None).await.unwrap_err();
    assert_eq!(conflict.to_string(), "409 conflict: tenant \"acme\" exists");
    assert!(!conflict.may_have_been_applied());
    let hangup = client.post_json("/v1/tenants", None).await.unwrap_err();
    assert!(matches!(hangup, ApiError::Transport { .. }), "{hangup:?}");
    assert!(hangup.may_have_been_applied());

    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let client = ApiClient::new(&url, None).unwrap();
    let refused = client.post_json("/v1/tenants", None).await.unwrap_err();
    assert!(
        matches!(refused, ApiError::Unreachable { .. }),
        "{refused:?}"
    );
    assert!(!refused.may_have_been_applied());
    assert!(
        refused.to_string().contains("cannot connect to"),
        "{refused}"
    );
}
