//! `GET /v1/jobs/{id}`: a provisioning job's state and the steps it has done.

use control::keys::Role;
use control::store::rfc3339::format_micros;
use control::store::JobRecord;
use hyper::StatusCode;
use serde::Serialize;

use crate::error::{store_error, ApiError};
use crate::request::{authorize, Pending, Req};
use crate::response::json;
use crate::state::State;

/// A job as the API shows it.
#[derive(Debug, Serialize)]
pub struct JobView {
    pub id: i64,
    pub kind: String,
    pub tenant: String,
    pub state: String,
    pub steps_done: Vec<String>,
    pub attempts: i32,
    pub error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl JobView {
    pub fn of(job: &JobRecord) -> JobView {
        JobView {
            id: job.id,
            kind: job.kind.clone(),
            tenant: job.tenant.clone(),
            state: job.state.clone(),
            steps_done: job.steps_done.clone(),
            attempts: job.attempts,
            error: job.error.clone(),
            created_at: format_micros(job.created_at),
            updated_at: format_micros(job.updated_at),
        }
    }
}

/// `GET /v1/jobs/{id}`.
pub(crate) fn job<'a>(state: &'a State, req: &'a Req) -> Pending<'a> {
    Box::pin(async move {
        authorize(state, req, Role::Viewer)?;
        let raw = req.segments()[2];
        let missing = || ApiError::not_found(format!("job {raw:?} does not exist"));
        let id: i64 = raw.parse().map_err(|_| missing())?;
        let store = state.plane.control.store()?;
        let job = store
            .get_job(id)
            .await
            .map_err(store_error("reading the job"))?
            .ok_or_else(missing)?;
        Ok(json(StatusCode::OK, &JobView::of(&job)))
    })
}
