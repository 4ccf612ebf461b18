//! `Idempotency-Key` answers: the first request with a key (per API key) is handled and
//! its answer stored; a retry with the same key and the same request gets that answer
//! again without running anything; the same key with a different request is refused.
//! Answers are kept for [`RETENTION_HOURS`], as the caller hands them over (the API
//! stores them encrypted). A first request whose process died before answering holds
//! its key for [`IN_FLIGHT_SECONDS`]; after that a retry runs it again.

use anyhow::Context;

use super::connection::Store;

/// How long a key's answer is kept.
pub const RETENTION_HOURS: i32 = 24;
/// How long an unanswered first request keeps its key from being run again.
pub const IN_FLIGHT_SECONDS: i32 = 60;

/// What to do with a request that carries a key.
#[derive(Debug, PartialEq, Eq)]
pub enum Begin {
    /// First use: handle it, then [`Store::idempotency_finish`] (or `_abandon`).
    New,
    /// Seen and answered: send this again.
    Replay { status: u16, body: String },
    /// The key was used for a different request.
    Mismatch,
    /// The first request with this key is still being handled.
    InFlight,
}

impl Store {
    pub async fn idempotency_begin(
        &self,
        key: &str,
        key_id: &str,
        request_hash: &[u8; 32],
    ) -> anyhow::Result<Begin> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(hours => $1)",
                &[&RETENTION_HOURS],
            )
            .await
            .context("expiring idempotency keys")?;
        let inserted = client
            .execute(
                "INSERT INTO idempotency_keys (key, key_id, request_hash) VALUES ($1, $2, $3) \
                 ON CONFLICT DO NOTHING",
                &[&key, &key_id, &request_hash.as_slice()],
            )
            .await
            .context("recording the idempotency key")?;
        if inserted == 1 {
            return Ok(Begin::New);
        }
        // A first request that never answered (its process died) gives its key up.
        let taken_over = client
            .execute(
                "UPDATE idempotency_keys SET request_hash = $3, created_at = now() \
                 WHERE key = $1 AND key_id = $2 AND status IS NULL \
                 AND created_at < now() - make_interval(secs => $4)",
                &[
                    &key,
                    &key_id,
                    &request_hash.as_slice(),
                    &f64::from(IN_FLIGHT_SECONDS),
                ],
            )
            .await
            .context("taking over an abandoned idempotency key")?;
        if taken_over == 1 {
            return Ok(Begin::New);
        }
        let row = client
            .query_one(
                "SELECT request_hash, status, body #>> '{}' FROM idempotency_keys \
                 WHERE key = $1 AND key_id = $2",
                &[&key, &key_id],
            )
            .await
            .context("reading the idempotency key")?;
        let stored: Vec<u8> = row.try_get(0)?;
        if stored != request_hash {
            return Ok(Begin::Mismatch);
        }
        let status: Option<i32> = row.try_get(1)?;
        let body: Option<String> = row.try_get(2)?;
        Ok(match (status, body) {
            (Some(status), Some(body)) => Begin::Replay {
                status: u16::try_from(status).unwrap_or(500),
                body,
            },
            _ => Begin::InFlight,
        })
    }

    /// Stores the answer to replay.
    pub async fn idempotency_finish(
        &self,
        key: &str,
        key_id: &str,
        status: u16,
        body: &str,
    ) -> anyhow::Result<()> {
        self.client()
            .await?
            .execute(
                "UPDATE idempotency_keys SET status = $3, body = to_jsonb($4::text) \
                 WHERE key = $1 AND key_id = $2",
                &[&key, &key_id, &i32::from(status), &body],
            )
            .await
            .context("storing the idempotent answer")?;
        Ok(())
    }

    /// Forgets a key whose request failed in a way worth retrying (5xx).
    pub async fn idempotency_abandon(&self, key: &str, key_id: &str) -> anyhow::Result<()> {
        self.client()
            .await?
            .execute(
                "DELETE FROM idempotency_keys WHERE key = $1 AND key_id = $2",
                &[&key, &key_id],
            )
            .await
            .context("forgetting the idempotency key")?;
        Ok(())
    }
}
