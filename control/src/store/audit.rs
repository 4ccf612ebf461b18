//! The audit log: append-only events in one hash chain, so that a change made directly in
//! the database (an edited or deleted row) is detectable.
//!
//! # The hashing rule
//!
//! For the event with id `N`:
//!
//! ```text
//! hash(N) = SHA-256( prev_hash(N) || canonical_json(E(N)) )
//! prev_hash(N) = hash of the event before N in id order, or 32 zero bytes for the first
//! E(N) = {"action": text, "actor": text|null, "at": "YYYY-MM-DDTHH:MM:SS.ffffffZ",
//!         "details": object, "id": N, "source_ip": text|null, "target": text|null}
//! ```
//!
//! `||` is byte concatenation; `prev_hash` is the stored 32 bytes; `canonical_json` is
//! [`super::canonical_json`] (sorted keys, no whitespace, serde_json escaping and numbers);
//! `at` is the stored `timestamptz` in UTC with exactly six fractional digits
//! ([`super::rfc3339::format_micros`]); `details` is the value as the database returns it
//! from its `jsonb` column (`details::text` parsed by serde_json), not as the caller passed
//! it, because jsonb normalises (duplicate keys, number spellings such as `1e2` → `100`).
//! `E(N)` is exactly [`AuditRow::to_json`], which is also what the API shows, so anyone with
//! the rows can recompute the chain.
//!
//! # Appending
//!
//! One transaction per event: take `pg_advisory_xact_lock(AUDIT_LOCK)` so appends from all
//! processes are serialised, read the last hash, draw the id (`nextval`) and time
//! (`clock_timestamp()`, after the lock, so times increase with ids) and let the database
//! normalise the details, compute the hash, insert, commit with `synchronous_commit = on`.
//! [`Store::append_audit`] returns only after that commit, so an API call that waits for
//! it answers 2xx only once its event is durable.
//!
//! What the chain cannot show: deleting the newest events (nothing follows them), or an
//! attacker who rewrites an event *and* recomputes every later hash. Anchoring the latest
//! hash outside the database (logs, another store) closes both.

use std::time::SystemTime;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio_postgres::{Row, Transaction};

use super::canonical::canonical_json;
use super::connection::Store;
use super::rfc3339;

/// The `pg_advisory_xact_lock` key that serialises appends ("sluice" + 0002 in hex).
pub const AUDIT_LOCK: i64 = 0x736c_7569_6365_0002;
/// `prev_hash` of the first event.
pub const GENESIS_HASH: [u8; 32] = [0; 32];
/// Rows per query while verifying, so the whole log is never held in memory.
const VERIFY_PAGE: i64 = 1000;
/// The most events one [`Store::list_audit`] call returns.
pub const MAX_LIST_LIMIT: u32 = 1000;

/// Appends `event` inside `tx`, which the caller commits: a change and its event become
/// durable together or not at all. Takes the audit lock until `tx` ends and makes the
/// commit synchronous.
pub async fn append_in(tx: &Transaction<'_>, event: &AuditEvent) -> anyhow::Result<i64> {
    let details = details_text(&event.details)?;
    tx.batch_execute("SET LOCAL synchronous_commit = on")
        .await
        .context("requiring a durable audit commit")?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&AUDIT_LOCK])
        .await
        .context("taking the audit lock")?;
    let prev_hash = tx
        .query_opt(
            "SELECT hash FROM audit_events ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await
        .context("reading the last audit hash")?
        .map(|row| row.try_get::<_, Vec<u8>>(0))
        .transpose()
        .context("decoding the last audit hash")?
        .unwrap_or_else(|| GENESIS_HASH.to_vec());
    let drawn = tx
        .query_one(
            "SELECT nextval(pg_get_serial_sequence('audit_events', 'id')), \
             clock_timestamp(), $1::text::jsonb::text",
            &[&details],
        )
        .await
        .context("drawing the audit event's id and time")?;
    let row = AuditRow {
        id: drawn.try_get(0).context("decoding the audit id")?,
        at: drawn.try_get(1).context("decoding the audit time")?,
        actor: event.actor.clone(),
        source_ip: event.source_ip.clone(),
        action: event.action.clone(),
        target: event.target.clone(),
        details: parse_details(drawn.try_get(2).context("decoding the audit details")?)?,
    };
    let hash = chain_hash(&prev_hash, &row);
    tx.execute(
        "INSERT INTO audit_events \
         (id, at, actor, source_ip, action, target, details, prev_hash, hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7::text::jsonb, $8, $9)",
        &[
            &row.id,
            &row.at,
            &row.actor,
            &row.source_ip,
            &row.action,
            &row.target,
            &details,
            &prev_hash,
            &hash.as_slice(),
        ],
    )
    .await
    .context("inserting the audit event")?;
    Ok(row.id)
}

impl Store {
    /// Appends `event` as part of the change `tx` makes: inside `tx` (so both commit
    /// or neither does), or, with a separate audit database, in that database before
    /// `tx` commits (so the event is durable before the change; if the change then
    /// fails, the log holds an event for a change that did not happen).
    pub(crate) async fn audit_in(
        &self,
        tx: &Transaction<'_>,
        event: &AuditEvent,
    ) -> anyhow::Result<i64> {
        match &self.audit {
            None => append_in(tx, event).await,
            Some(audit) => audit.append_audit(event).await,
        }
    }
}

/// Columns decoded by [`decode_row`], in its order.
const EVENT_COLUMNS: &str = "id, at, actor, source_ip, action, target, details::text";

/// Something that happened, as the caller reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    /// Who: an API key id, `system`, or the data plane.
    pub actor: Option<String>,
    pub source_ip: Option<String>,
    /// What, e.g. `tenant.create`, `role.rotate`, `login.ban`.
    pub action: String,
    /// On what. A tenant's events use the tenant id, optionally followed by `/` and more
    /// (`acme`, `acme/roles/app`), which is what [`AuditFilter::tenant`] matches; other
    /// targets should contain a character a DNS label cannot (e.g. `api-key:1a2b3c4d`).
    pub target: Option<String>,
    /// A JSON object (e.g. a before/after diff); `null` is stored as `{}`.
    pub details: Value,
}

impl AuditEvent {
    /// An event with only an action; fill in the rest with struct update syntax.
    pub fn new(action: impl Into<String>) -> Self {
        AuditEvent {
            actor: None,
            source_ip: None,
            action: action.into(),
            target: None,
            details: json!({}),
        }
    }
}

/// A stored event.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRow {
    pub id: i64,
    /// When it was appended (database clock, microseconds).
    pub at: SystemTime,
    pub actor: Option<String>,
    pub source_ip: Option<String>,
    pub action: String,
    pub target: Option<String>,
    pub details: Value,
}

impl AuditRow {
    /// The event as the API shows it, and exactly the object the chain hashes.
    pub fn to_json(&self) -> Value {
        json!({
            "action": self.action,
            "actor": self.actor,
            "at": rfc3339::format_micros(self.at),
            "details": self.details,
            "id": self.id,
            "source_ip": self.source_ip,
            "target": self.target,
        })
    }
}

/// `SHA-256(prev_hash || canonical_json(row.to_json()))`.
pub fn chain_hash(prev_hash: &[u8], row: &AuditRow) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(prev_hash);
    hasher.update(canonical_json(&row.to_json()).as_bytes());
    hasher.finalize().into()
}

/// The answer of `GET /v1/audit-events/verify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct AuditVerify {
    pub ok: bool,
    /// Events in the log (all of them, also when the chain breaks early).
    pub events: u64,
    /// The first event whose `prev_hash` or `hash` does not match the recomputed chain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broken_at: Option<i64>,
}

/// Which events [`Store::list_audit`] returns; every field given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// The target is this tenant id, or starts with it followed by `/`.
    pub tenant: Option<String>,
    pub action: Option<String>,
    /// At or after.
    pub since: Option<SystemTime>,
    /// Strictly before.
    pub until: Option<SystemTime>,
}

impl Store {
    /// Appends `event` to the chain and returns its id once committed (durable).
    pub async fn append_audit(&self, event: &AuditEvent) -> anyhow::Result<i64> {
        if let Some(audit) = &self.audit {
            return Box::pin(audit.append_audit(event)).await;
        }
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .context("starting an audit transaction")?;
        let id = append_in(&tx, event).await?;
        tx.commit().await.context("committing the audit event")?;
        Ok(id)
    }

    /// Appends `event` unless the latest event of its target among `actions` is already
    /// `event.action` (or, with `only_after_one`, unless there is one of them that is
    /// not): a state change that several processes observe is written once. The check
    /// runs under the audit lock, so two processes cannot both pass it. Its id, or None
    /// when it was not needed.
    pub async fn append_audit_transition(
        &self,
        event: &AuditEvent,
        actions: &[&str],
        only_after_one: bool,
    ) -> anyhow::Result<Option<i64>> {
        if let Some(audit) = &self.audit {
            return Box::pin(audit.append_audit_transition(event, actions, only_after_one)).await;
        }
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .context("starting an audit transaction")?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&AUDIT_LOCK])
            .await
            .context("taking the audit lock")?;
        let actions: Vec<String> = actions.iter().map(|a| (*a).to_owned()).collect();
        let last: Option<String> = tx
            .query_opt(
                "SELECT action FROM audit_events WHERE target = $1 AND action = ANY($2) \
                 ORDER BY id DESC LIMIT 1",
                &[&event.target, &actions],
            )
            .await
            .context("reading the target's last event")?
            .map(|row| row.try_get(0))
            .transpose()
            .context("decoding the target's last event")?;
        let needed = match &last {
            Some(last) => *last != event.action,
            None => !only_after_one,
        };
        if !needed {
            return Ok(None);
        }
        let id = append_in(&tx, event).await?;
        tx.commit().await.context("committing the audit event")?;
        Ok(Some(id))
    }

    /// Recomputes the chain in id order, a page at a time, and names the first event that
    /// does not fit. Events appended meanwhile are checked too if the scan reaches them.
    pub async fn verify_audit(&self) -> anyhow::Result<AuditVerify> {
        if let Some(audit) = &self.audit {
            return Box::pin(audit.verify_audit()).await;
        }
        let mut expected_prev = GENESIS_HASH.to_vec();
        let mut after = i64::MIN;
        let mut events = 0u64;
        loop {
            let rows = self.audit_page_after(after).await?;
            if rows.is_empty() {
                return Ok(AuditVerify {
                    ok: true,
                    events,
                    broken_at: None,
                });
            }
            for row in &rows {
                let id: i64 = row.try_get(0).context("decoding an audit event id")?;
                events += 1;
                match verified_hash(row, &expected_prev) {
                    Some(hash) => expected_prev = hash,
                    None => {
                        let rest = self.audit_events_after(id).await?;
                        return Ok(AuditVerify {
                            ok: false,
                            events: events + rest,
                            broken_at: Some(id),
                        });
                    }
                }
                after = id;
            }
        }
    }

    /// Events matching `filter`, newest first, at most `limit` (1..=[`MAX_LIST_LIMIT`]).
    /// `cursor` is the `next` of the previous page: events with smaller ids follow. `next`
    /// is None on the last page.
    pub async fn list_audit(
        &self,
        filter: &AuditFilter,
        cursor: Option<i64>,
        limit: u32,
    ) -> anyhow::Result<(Vec<AuditRow>, Option<i64>)> {
        if let Some(audit) = &self.audit {
            return Box::pin(audit.list_audit(filter, cursor, limit)).await;
        }
        let limit = limit.clamp(1, MAX_LIST_LIMIT);
        let fetch = i64::from(limit) + 1;
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM audit_events \
             WHERE ($1::bigint IS NULL OR id < $1) \
               AND ($2::text IS NULL OR target = $2 OR starts_with(target, $2 || '/')) \
               AND ($3::text IS NULL OR action = $3) \
               AND ($4::timestamptz IS NULL OR at >= $4) \
               AND ($5::timestamptz IS NULL OR at < $5) \
             ORDER BY id DESC LIMIT $6"
        );
        let rows = self
            .client()
            .await?
            .query(
                &sql,
                &[
                    &cursor,
                    &filter.tenant,
                    &filter.action,
                    &filter.since,
                    &filter.until,
                    &fetch,
                ],
            )
            .await
            .context("listing audit events")?;
        let mut events = rows
            .iter()
            .map(decode_row)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let next = if events.len() > limit as usize {
            events.truncate(limit as usize);
            events.last().map(|event| event.id)
        } else {
            None
        };
        Ok((events, next))
    }

    /// Up to [`VERIFY_PAGE`] events with ids above `after`, with their hashes.
    async fn audit_page_after(&self, after: i64) -> anyhow::Result<Vec<Row>> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS}, prev_hash, hash FROM audit_events \
             WHERE id > $1 ORDER BY id LIMIT $2"
        );
        self.client()
            .await?
            .query(&sql, &[&after, &VERIFY_PAGE])
            .await
            .context("reading audit events to verify")
    }

    async fn audit_events_after(&self, id: i64) -> anyhow::Result<u64> {
        let row = self
            .client()
            .await?
            .query_one("SELECT count(*) FROM audit_events WHERE id > $1", &[&id])
            .await
            .context("counting audit events")?;
        let count: i64 = row.try_get(0).context("decoding the audit event count")?;
        Ok(u64::try_from(count).unwrap_or(0))
    }
}

/// The row's hash if it continues the chain from `expected_prev` and matches its content;
/// None if anything does not fit, including a row that no longer decodes.
fn verified_hash(row: &Row, expected_prev: &[u8]) -> Option<Vec<u8>> {
    let event = decode_row(row).ok()?;
    let prev_hash: Vec<u8> = row.try_get(7).ok()?;
    let hash: Vec<u8> = row.try_get(8).ok()?;
    let fits = prev_hash == expected_prev && chain_hash(&prev_hash, &event)[..] == hash[..];
    fits.then_some(hash)
}

/// An [`AuditRow`] from the first columns of a query selecting [`EVENT_COLUMNS`].
fn decode_row(row: &Row) -> anyhow::Result<AuditRow> {
    let decode = || -> Result<_, tokio_postgres::Error> {
        Ok(AuditRow {
            id: row.try_get(0)?,
            at: row.try_get(1)?,
            actor: row.try_get(2)?,
            source_ip: row.try_get(3)?,
            action: row.try_get(4)?,
            target: row.try_get(5)?,
            details: Value::Null,
        })
    };
    let mut event = decode().context("decoding an audit event")?;
    let details: String = row
        .try_get(6)
        .context("decoding an audit event's details")?;
    event.details = parse_details(details)?;
    Ok(event)
}

/// The text to store for `details`, which must be an object (null counts as `{}`).
fn details_text(details: &Value) -> anyhow::Result<String> {
    match details {
        Value::Null => Ok("{}".to_owned()),
        Value::Object(_) => Ok(details.to_string()),
        other => bail!("audit details must be a JSON object, not {other}"),
    }
}

fn parse_details(text: String) -> anyhow::Result<Value> {
    serde_json::from_str(&text).context("parsing audit details returned by the database")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn row() -> AuditRow {
        AuditRow {
            id: 7,
            at: UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456),
            actor: Some("1a2b3c4d".into()),
            source_ip: None,
            action: "tenant.create".into(),
            target: Some("acme".into()),
            details: json!({"plan": "nano", "b": [1, 2]}),
        }
    }

    #[test]
    fn the_hashed_text_is_fixed() {
        assert_eq!(
            canonical_json(&row().to_json()),
            r#"{"action":"tenant.create","actor":"1a2b3c4d","at":"2023-11-14T22:13:20.123456Z","details":{"b":[1,2],"plan":"nano"},"id":7,"source_ip":null,"target":"acme"}"#
        );
    }

    #[test]
    fn the_hash_covers_prev_hash_and_every_field() {
        let base = chain_hash(&GENESIS_HASH, &row());
        let mut expected = Sha256::new();
        expected.update(GENESIS_HASH);
        expected.update(canonical_json(&row().to_json()).as_bytes());
        assert_eq!(base, <[u8; 32]>::from(expected.finalize()));
        assert_ne!(chain_hash(&[1; 32], &row()), base);
        let changes: [fn(&mut AuditRow); 7] = [
            |r| r.id += 1,
            |r| r.at += Duration::from_micros(1),
            |r| r.actor = None,
            |r| r.source_ip = Some("127.0.0.1".into()),
            |r| r.action.push('x'),
            |r| r.target = Some("acme/roles/app".into()),
            |r| r.details = json!({"x": 1}),
        ];
        for change in changes {
            let mut changed = row();
            change(&mut changed);
            assert_ne!(chain_hash(&GENESIS_HASH, &changed), base, "{changed:?}");
        }
    }

    #[test]
    fn details_must_be_an_object() {
        assert_eq!(details_text(&Value::Null).unwrap(), "{}");
        assert_eq!(details_text(&json!({"a": 1})).unwrap(), r#"{"a":1}"#);
        assert!(details_text(&json!([1])).is_err());
        assert!(details_text(&json!("x")).is_err());
    }

    #[test]
    fn verify_answers_in_the_documented_shape() {
        let ok = AuditVerify {
            ok: true,
            events: 3,
            broken_at: None,
        };
        assert_eq!(
            serde_json::to_value(ok).unwrap(),
            json!({"ok": true, "events": 3})
        );
        let broken = AuditVerify {
            ok: false,
            events: 3,
            broken_at: Some(2),
        };
        assert_eq!(
            serde_json::to_value(broken).unwrap(),
            json!({"ok": false, "events": 3, "broken_at": 2})
        );
    }
}
