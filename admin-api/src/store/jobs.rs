//! Provisioning jobs as far as they exist yet: how many are in each state (for
//! `sluice_provision_jobs{state}`).

use anyhow::Context;

use super::Store;

/// The states of a job, in the order [`Store::job_counts`] answers.
pub const JOB_STATES: [&str; 4] = ["queued", "running", "succeeded", "failed"];

impl Store {
    /// Jobs per state, in [`JOB_STATES`] order.
    pub async fn job_counts(&self) -> anyhow::Result<[u64; 4]> {
        let rows = self
            .client()
            .await
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
}
