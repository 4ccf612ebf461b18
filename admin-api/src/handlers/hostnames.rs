//! `/v1/tenants/{id}/hostnames`: a tenant's own host names, each with its certificate.
//!
//! A client whose TLS server name is exactly one of them reaches the tenant and is
//! served that certificate (docs/routing.md). `POST` adds a name, or replaces the
//! certificate of one the tenant has; the request is checked whole first
//! (`control::hostnames::inspect`: the name, the chain, the key, that the certificate
//! covers the name and has not expired, that the name is not under the proxy's own
//! `sni_suffix`), each refusal a 422 naming its field. The key is stored sealed; the
//! change commits with its audit event, this process's catalog takes it at once and the
//! others through the store's notification. Listings never show the key.

use std::time::SystemTime;

use control::hostnames::{self, CertSummary};
use control::keys::Role;
use control::store::HostnameRecord;
use hyper::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;

use control::store::rfc3339::format_micros;

use super::{event, record_of, tenant_id};
use crate::error::{change_error, store_error, ApiError};
use crate::request::{authorize, Pending, Req};
use crate::response::{empty, json};
use crate::state::State;

/// The body of `POST /v1/tenants/{id}/hostnames`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddHostname {
    /// The DNS name clients will use (any case; stored lowercase).
    pub hostname: String,
    /// The certificate chain in PEM, the certificate for `hostname` first.
    pub cert: String,
    /// That certificate's private key in PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
}

/// A host name as the API shows it (never its key).
#[derive(Debug, Serialize)]
pub struct HostnameView {
    pub hostname: String,
    pub tenant: String,
    /// The certificate's subject.
    pub subject: String,
    /// Its DNS subject alternative names.
    pub sans: Vec<String>,
    /// When it expires (RFC 3339).
    pub not_after: String,
    /// SHA-256 of the certificate (DER), lowercase hex.
    pub fingerprint: String,
    pub created_at: String,
    pub updated_at: String,
}

impl HostnameView {
    pub fn of(record: &HostnameRecord) -> HostnameView {
        HostnameView {
            hostname: record.hostname.clone(),
            tenant: record.tenant.clone(),
            subject: record.subject.clone(),
            sans: record.sans.clone(),
            not_after: format_micros(record.not_after),
            fingerprint: record.fingerprint.clone(),
            created_at: format_micros(record.created_at),
            updated_at: format_micros(record.updated_at),
        }
    }
}

fn invalid(e: hostnames::HostnameError) -> ApiError {
    ApiError::invalid(e.to_string())
}

/// What the audit event says of a certificate.
fn cert_details(hostname: &str, summary: &CertSummary) -> serde_json::Value {
    json!({
        "hostname": hostname,
        "subject": summary.subject,
        "sans": summary.sans,
        "not_after": format_micros(summary.not_after),
        "fingerprint": summary.fingerprint,
    })
}

/// `GET /v1/tenants/{id}/hostnames`: `{"hostnames": [...]}`, by name.
pub(crate) fn list<'a>(state: &'a State, req: &'a Req) -> Pending<'a> {
    Box::pin(async move {
        authorize(state, req, Role::Viewer)?;
        let id = tenant_id(req);
        record_of(state, &id).await?;
        let store = state.plane.control.store()?;
        let records = store
            .list_hostnames(&id)
            .await
            .map_err(store_error("listing host names"))?;
        let views: Vec<HostnameView> = records.iter().map(HostnameView::of).collect();
        Ok(json(StatusCode::OK, &json!({"hostnames": views})))
    })
}

/// `POST /v1/tenants/{id}/hostnames` `{"hostname", "cert", "key"}` → 201 with the host
/// name as stored, whether added or its certificate replaced (the audit event's
/// `replaced` says which; so does `updated_at` after `created_at`).
pub(crate) fn add<'a>(state: &'a State, req: &'a Req) -> Pending<'a> {
    Box::pin(async move {
        let caller = authorize(state, req, Role::Operator)?;
        let id = tenant_id(req);
        let body: AddHostname = req.json()?;
        let hostname = hostnames::normalize(&body.hostname).map_err(invalid)?;
        let sni_suffix = state.hint.as_ref().map(|h| h.sni_suffix.as_str());
        let summary = hostnames::inspect(
            &hostname,
            &body.cert,
            &body.key,
            sni_suffix,
            SystemTime::now(),
        )
        .map_err(invalid)?;
        let sealed = state
            .plane
            .sync
            .secrets
            .seal(&hostnames::key_secret(&id, &hostname), &body.key);
        let target = format!("{id}/hostnames/{hostname}");
        let add = event(
            req,
            &caller,
            "hostname.add",
            target.clone(),
            cert_details(&hostname, &summary),
        );
        let store = state.plane.control.store()?;
        let put = store
            .put_hostname(&id, &hostname, &body.cert, &sealed, &summary, &add)
            .await
            .map_err(change_error)?;
        state.plane.apply_locally(&id).await;
        let record = store
            .list_hostnames(&id)
            .await
            .map_err(store_error("reading the host name back"))?
            .into_iter()
            .find(|h| h.hostname == hostname)
            .ok_or_else(|| {
                ApiError::not_found(format!("host name \"{hostname}\" was removed meanwhile"))
            })?;
        tracing::info!(tenant = %id, %hostname, ?put, fingerprint = %summary.fingerprint, key_id = %caller.key_id, "host name stored through the API");
        Ok(json(StatusCode::CREATED, &HostnameView::of(&record)))
    })
}

/// `DELETE /v1/tenants/{id}/hostnames/{hostname}` → 204. The name is no longer served
/// from the next ClientHello on.
pub(crate) fn remove<'a>(state: &'a State, req: &'a Req) -> Pending<'a> {
    Box::pin(async move {
        let caller = authorize(state, req, Role::Operator)?;
        let id = tenant_id(req);
        let hostname = hostnames::normalize(req.segments()[4]).map_err(invalid)?;
        let delete = event(
            req,
            &caller,
            "hostname.remove",
            format!("{id}/hostnames/{hostname}"),
            json!({"hostname": hostname}),
        );
        record_of(state, &id).await?;
        let store = state.plane.control.store()?;
        store
            .delete_hostname(&id, &hostname, &delete)
            .await
            .map_err(change_error)?;
        state.plane.apply_locally(&id).await;
        tracing::info!(tenant = %id, %hostname, key_id = %caller.key_id, "host name removed through the API");
        Ok(hyper::Response::builder()
            .status(StatusCode::NO_CONTENT)
            .body(empty())
            .expect("a valid response"))
    })
}
