//! Provisioning jobs: a table queue.
//!
//! A worker claims a due job in a transaction that selects candidates `FOR UPDATE SKIP
//! LOCKED` (so concurrent claimers never wait on each other) and then takes a
//! session-level advisory lock on the job for as long as it runs it. The advisory lock,
//! not a lease column, is what says "someone is working on this": Postgres releases it
//! the moment the worker's connection ends, so a job whose Sluice was killed is claimable
//! again at once, by the restarted process or any other. Each finished step is recorded
//! in `steps_done`; steps are idempotent, so a resumed job may safely redo the one that
//! was interrupted.

use std::time::{Duration, SystemTime};

use anyhow::Context;
use tokio_postgres::Row;

use super::connection::Store;

/// The states of a job, in the order [`Store::job_counts`] answers.
pub const JOB_STATES: [&str; 4] = ["queued", "running", "succeeded", "failed"];

/// First key of the two-key advisory locks on jobs (the second is the job id).
const JOB_LOCK_CLASS: i32 = 0x736c_7531; // "slu1"

pub(crate) const JOB_COLUMNS: &str =
    "id, kind, tenant_id, state, steps_done, attempts, error, created_at, updated_at";

/// A job as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRecord {
    pub id: i64,
    /// `create` or `delete`.
    pub kind: String,
    pub tenant: String,
    pub state: String,
    pub steps_done: Vec<String>,
    pub attempts: i32,
    pub error: Option<String>,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

impl JobRecord {
    pub(crate) fn decode(row: &Row) -> anyhow::Result<JobRecord> {
        Ok(JobRecord {
            id: row.try_get(0)?,
            kind: row.try_get(1)?,
            tenant: row.try_get::<_, Option<String>>(2)?.unwrap_or_default(),
            state: row.try_get(3)?,
            steps_done: row.try_get(4)?,
            attempts: row.try_get(5)?,
            error: row.try_get(6)?,
            created_at: row.try_get(7)?,
            updated_at: row.try_get(8)?,
        })
    }

    pub fn done(&self, step: &str) -> bool {
        self.steps_done.iter().any(|s| s == step)
    }
}

impl Store {
    /// Jobs per state, in [`JOB_STATES`] order.
    pub async fn job_counts(&self) -> anyhow::Result<[u64; 4]> {
        let rows = self
            .client()
            .await?
            .query("SELECT state, count(*) FROM jobs GROUP BY state", &[])
            .await
            .context("counting jobs")?;
        let mut counts = [0u64; 4];
        for row in rows {
            let state: String = row.try_get(0)?;
            let n: i64 = row.try_get(1)?;
            if let Some(i) = JOB_STATES.iter().position(|s| *s == state) {
                counts[i] = u64::try_from(n).unwrap_or(0);
            }
        }
        Ok(counts)
    }

    pub async fn get_job(&self, id: i64) -> anyhow::Result<Option<JobRecord>> {
        let row = self
            .client()
            .await?
            .query_opt(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"),
                &[&id],
            )
            .await
            .context("reading the job")?;
        row.as_ref().map(JobRecord::decode).transpose()
    }

    /// The oldest due job nobody is running that this process may run (one for any
    /// host, or for this replica's), now `running` and locked by this connection (until
    /// [`Store::release_job`] or the connection ends).
    pub async fn claim_job(&self, worker: &str) -> anyhow::Result<Option<JobRecord>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let candidates = tx
            .query(
                "SELECT id FROM jobs WHERE state IN ('queued', 'running') AND run_after <= now() \
                 AND (host IS NULL OR host = $1) ORDER BY id LIMIT 16 FOR UPDATE SKIP LOCKED",
                &[&self.home],
            )
            .await
            .context("looking for due jobs")?;
        for candidate in candidates {
            let id: i64 = candidate.try_get(0)?;
            let locked: bool = tx
                .query_one(
                    "SELECT pg_try_advisory_lock($1, $2::bigint::int)",
                    &[&JOB_LOCK_CLASS, &id],
                )
                .await
                .context("locking the job")?
                .try_get(0)?;
            if !locked {
                continue; // running in another live worker
            }
            let row = tx
                .query_one(
                    &format!(
                        "UPDATE jobs SET state = 'running', locked_by = $2, locked_at = now(), \
                         attempts = attempts + 1, updated_at = now() WHERE id = $1 \
                         RETURNING {JOB_COLUMNS}"
                    ),
                    &[&id, &worker],
                )
                .await
                .context("claiming the job")?;
            tx.commit().await.context("committing the claim")?;
            return Ok(Some(JobRecord::decode(&row)?));
        }
        tx.commit().await?;
        Ok(None)
    }

    /// How many jobs of `kind` for `tenant` are queued or running.
    pub async fn unfinished_jobs(&self, tenant: &str, kind: &str) -> anyhow::Result<i64> {
        let row = self
            .client()
            .await?
            .query_one(
                "SELECT count(*) FROM jobs WHERE tenant_id = $1 AND kind = $2 \
                 AND state IN ('queued', 'running')",
                &[&tenant, &kind],
            )
            .await
            .context("counting the tenant's unfinished jobs")?;
        Ok(row.try_get(0)?)
    }

    /// Records a finished step.
    pub async fn job_step_done(&self, id: i64, step: &str) -> anyhow::Result<()> {
        self.client()
            .await?
            .execute(
                "UPDATE jobs SET steps_done = array_append(steps_done, $2), updated_at = now() \
                 WHERE id = $1 AND NOT ($2 = ANY(steps_done))",
                &[&id, &step],
            )
            .await
            .context("recording the job step")?;
        Ok(())
    }

    /// Ends a run of the job: `succeeded`, `failed` (with `error`), or back to `queued`
    /// after `retry_in` (with the error that made it retry); then unlocks it.
    pub async fn release_job(&self, id: i64, outcome: JobOutcome<'_>) -> anyhow::Result<()> {
        let client = self.client().await?;
        let (state, error, delay_ms): (&str, Option<&str>, i64) = match outcome {
            JobOutcome::Succeeded => ("succeeded", None, 0),
            JobOutcome::Failed(e) => ("failed", Some(e), 0),
            JobOutcome::Retry { error, after } => (
                "queued",
                Some(error),
                i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
            ),
        };
        client
            .execute(
                "UPDATE jobs SET state = $2, error = $3, locked_by = NULL, locked_at = NULL, \
                 run_after = now() + $4 * interval '1 millisecond', updated_at = now() WHERE id = $1",
                &[&id, &state, &error, &(delay_ms as f64)],
            )
            .await
            .context("ending the job run")?;
        client
            .execute(
                "SELECT pg_advisory_unlock($1, $2::bigint::int)",
                &[&JOB_LOCK_CLASS, &id],
            )
            .await
            .context("unlocking the job")?;
        Ok(())
    }
}

/// How a run of a job ended.
#[derive(Debug, Clone, Copy)]
pub enum JobOutcome<'a> {
    Succeeded,
    Failed(&'a str),
    Retry { error: &'a str, after: Duration },
}
