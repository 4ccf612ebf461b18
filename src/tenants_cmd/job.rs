//! Provisioning jobs: `--wait` on `tenants create` / `tenants delete` follows
//! `GET /v1/jobs/{id}` until the job ends or the wait runs out.

use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use crate::api_client::{encode_component, ApiClient, ApiError};
use crate::table::scalar;

/// How often a waiting CLI asks.
const POLL_EVERY: Duration = Duration::from_millis(200);

/// How a wait ended. Each carries the job as last seen.
#[derive(Debug)]
pub enum Outcome {
    Succeeded(Value),
    Failed(Value),
    /// Still queued or running at the deadline; with the last error when the API could
    /// not be reached at the end.
    TimedOut(Value, Option<ApiError>),
}

/// `queued | running | succeeded | failed`, or `-` for an answer without one.
pub fn state(job: &Value) -> &str {
    job.get("state").and_then(Value::as_str).unwrap_or("-")
}

/// Polls the job until it succeeds, fails, or `timeout` passes. A request that
/// cannot reach the API (a restart, a blip) is retried until the deadline; an error
/// answer (404, 401) ends the wait at once. Progress goes to stderr.
pub async fn wait(
    client: &ApiClient,
    mut job: Value,
    timeout: Duration,
) -> Result<Outcome, ApiError> {
    let deadline = Instant::now() + timeout;
    let path = format!("/v1/jobs/{}", encode_component(&scalar(&job["id"])));
    let mut shown = String::new();
    let mut last_error = None;
    loop {
        let now = progress_line(&job);
        if now != shown {
            eprintln!("{now}");
            shown = now;
        }
        match state(&job) {
            "succeeded" => return Ok(Outcome::Succeeded(job)),
            "failed" => return Ok(Outcome::Failed(job)),
            _ => {}
        }
        if Instant::now() + POLL_EVERY > deadline {
            return Ok(Outcome::TimedOut(job, last_error));
        }
        tokio::time::sleep(POLL_EVERY).await;
        match client.get_json(&path).await {
            Ok(next) => {
                job = next;
                last_error = None;
            }
            Err(e @ ApiError::Status { .. }) => return Err(e),
            Err(e) => last_error = Some(e),
        }
    }
}

/// `job 12 (create acme): running; done: a, b`.
pub fn progress_line(job: &Value) -> String {
    let steps = match job.get("steps_done").and_then(Value::as_array) {
        Some(steps) if !steps.is_empty() => format!("; done: {}", scalar_list(steps)),
        _ => String::new(),
    };
    format!(
        "job {} ({} {}): {}{steps}",
        scalar(&job["id"]),
        scalar(&job["kind"]),
        scalar(&job["tenant"]),
        scalar(&job["state"]),
    )
}

fn scalar_list(items: &[Value]) -> String {
    items.iter().map(scalar).collect::<Vec<_>>().join(", ")
}

/// The message a command that waited exits with, or `None` when the job succeeded.
pub fn failure(outcome: &Outcome, timeout: Duration) -> Option<String> {
    match outcome {
        Outcome::Succeeded(_) => None,
        Outcome::Failed(job) => Some(format!(
            "job {} failed: {}",
            scalar(&job["id"]),
            match job.get("error").and_then(Value::as_str) {
                Some(e) => crate::table::printable(e),
                None => "(no error given)".to_owned(),
            }
        )),
        Outcome::TimedOut(job, last_error) => {
            let mut text = format!(
                "job {} is still {} after {}s; it goes on without the CLI (GET /v1/jobs/{})",
                scalar(&job["id"]),
                state(job),
                timeout.as_secs(),
                scalar(&job["id"]),
            );
            if let Some(e) = last_error {
                text.push_str(&format!("; the last poll failed: {e}"));
            }
            Some(text)
        }
    }
}

impl Outcome {
    pub fn job(&self) -> &Value {
        match self {
            Outcome::Succeeded(job) | Outcome::Failed(job) | Outcome::TimedOut(job, _) => job,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api_client::fake::{FakeApi, Reply};
    use serde_json::json;

    fn job(state: &str, steps: &[&str], error: Option<&str>) -> Value {
        json!({"id": 12, "kind": "create", "tenant": "acme", "state": state,
               "steps_done": steps, "attempts": 1, "error": error,
               "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:01Z"})
    }

    #[test]
    fn progress_names_the_job_and_its_steps() {
        assert_eq!(
            progress_line(&job("queued", &[], None)),
            "job 12 (create acme): queued"
        );
        assert_eq!(
            progress_line(&job("running", &["cluster", "roles"], None)),
            "job 12 (create acme): running; done: cluster, roles"
        );
    }

    #[test]
    fn failures_carry_the_jobs_error() {
        let t = Duration::from_secs(5);
        assert_eq!(
            failure(&Outcome::Succeeded(job("succeeded", &[], None)), t),
            None
        );
        let failed = Outcome::Failed(job("failed", &["cluster"], Some("initdb: disk full")));
        assert_eq!(
            failure(&failed, t).unwrap(),
            "job 12 failed: initdb: disk full"
        );
        let late = Outcome::TimedOut(job("running", &[], None), None);
        assert!(failure(&late, t)
            .unwrap()
            .starts_with("job 12 is still running after 5s"));
    }

    fn reply(state: &str) -> Reply {
        Reply::Http(200, job(state, &["credentials"], None).to_string())
    }

    async fn wait_with(
        replies: Vec<Reply>,
        timeout: Duration,
    ) -> (Result<Outcome, ApiError>, Vec<String>) {
        let fake = FakeApi::start(replies).await;
        let client = ApiClient::new(&fake.url(), None).unwrap();
        let outcome = wait(&client, job("queued", &[], None), timeout).await;
        (outcome, fake.requests())
    }

    #[tokio::test]
    async fn waiting_polls_the_job_until_it_ends() {
        let replies = vec![
            reply("running"),
            Reply::Hangup,
            reply("running"),
            reply("succeeded"),
        ];
        let (outcome, requests) = wait_with(replies, Duration::from_secs(30)).await;
        let Ok(Outcome::Succeeded(job)) = outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(job["steps_done"], json!(["credentials"]));
        assert_eq!(requests.len(), 4, "a lost answer is asked again");
        assert!(requests.iter().all(|r| r.starts_with("GET /v1/jobs/12 ")));

        let (outcome, _) = wait_with(vec![reply("failed")], Duration::from_secs(30)).await;
        assert!(matches!(outcome, Ok(Outcome::Failed(_))), "{outcome:?}");
        let gone = Reply::Http(
            404,
            r#"{"error": {"code": "not_found", "message": "no job 12"}}"#.into(),
        );
        let (outcome, _) = wait_with(vec![gone], Duration::from_secs(30)).await;
        assert_eq!(outcome.unwrap_err().to_string(), "404 not_found: no job 12");
    }

    #[tokio::test]
    async fn waiting_stops_at_the_deadline() {
        let replies = (0..50).map(|_| reply("running")).collect();
        let started = std::time::Instant::now();
        let (outcome, requests) = wait_with(replies, Duration::from_secs(1)).await;
        assert!(
            matches!(outcome, Ok(Outcome::TimedOut(_, None))),
            "{outcome:?}"
        );
        assert!(
            (3..=5).contains(&requests.len()),
            "{} polls",
            requests.len()
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
