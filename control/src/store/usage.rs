//! Usage per tenant and hour (`usage_hours`, migration 0005): each Sluice process
//! writes its own running totals for the hour (idempotent: every column keeps the
//! larger of the stored and the written value), and reads sum the processes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::connection::Store;

/// What a tenant used: one process's running totals for an hour (a row), or the sum of
/// several (a bucket of a read).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageTotals {
    /// Logged-in client time, in microseconds.
    pub connection_us: u64,
    /// Logins accepted.
    pub client_connections: u64,
    pub queries: u64,
    pub transactions: u64,
    pub bytes_from_clients: u64,
    pub bytes_to_clients: u64,
    /// The most server connections open at once.
    pub peak_server_connections: u64,
    /// The latest sample of the backend's database sizes, and when it was taken (µs
    /// since the Unix epoch).
    pub disk_bytes: Option<u64>,
    pub disk_sampled_at: Option<i64>,
}

impl UsageTotals {
    /// Adds the counters of `delta` (not the peak or the disk sample).
    pub fn add(&mut self, delta: &UsageTotals) {
        self.connection_us += delta.connection_us;
        self.client_connections += delta.client_connections;
        self.queries += delta.queries;
        self.transactions += delta.transactions;
        self.bytes_from_clients += delta.bytes_from_clients;
        self.bytes_to_clients += delta.bytes_to_clients;
    }

    /// Whether no counter moved (peak and disk sample aside).
    pub fn counters_are_zero(&self) -> bool {
        let mut zero = *self;
        zero.peak_server_connections = 0;
        zero.disk_bytes = None;
        zero.disk_sampled_at = None;
        zero == UsageTotals::default()
    }
}

/// One process's totals for one tenant and hour: a row of `usage_hours`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRow {
    pub tenant: String,
    /// The hour's first second, in seconds since the Unix epoch (a multiple of 3600).
    pub hour: i64,
    /// The process that counted (a random id per process start).
    pub writer: String,
    /// Its `[fleet] id`, '' outside a fleet.
    pub replica: String,
    pub totals: UsageTotals,
}

/// One bucket (an hour or a UTC day) of a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageBucket {
    pub start: SystemTime,
    pub totals: UsageTotals,
}

/// How a read groups hours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    Hour,
    Day,
}

impl Granularity {
    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Hour => "hour",
            Granularity::Day => "day",
        }
    }

    pub fn parse(word: &str) -> Option<Granularity> {
        match word {
            "hour" => Some(Granularity::Hour),
            "day" => Some(Granularity::Day),
            _ => None,
        }
    }

    pub fn seconds(self) -> u64 {
        match self {
            Granularity::Hour => 3600,
            Granularity::Day => 86_400,
        }
    }

    /// The start of the bucket that holds `t` (UTC).
    pub fn floor(self, t: SystemTime) -> SystemTime {
        let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        UNIX_EPOCH + Duration::from_secs(secs - secs % self.seconds())
    }
}

fn micros_to_time(micros: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(u64::try_from(micros).unwrap_or(0))
}

fn time_to_micros(t: SystemTime) -> i64 {
    i64::try_from(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_micros()).unwrap_or(i64::MAX)
}

fn db(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The upsert: every counter and the peak keep the larger of the stored and the written
/// value, the disk sample the later one. Running it again with the same or older
/// totals changes nothing.
const WRITE: &str = "INSERT INTO usage_hours AS u (tenant, hour, writer, replica, connection_us, \
    client_connections, queries, transactions, bytes_from_clients, bytes_to_clients, \
    peak_server_connections, disk_bytes, disk_sampled_at) \
    SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::int8[], \
    $6::int8[], $7::int8[], $8::int8[], $9::int8[], $10::int8[], $11::int8[], $12::int8[], \
    $13::timestamptz[]) \
    ON CONFLICT (tenant, hour, writer) DO UPDATE SET \
    connection_us = GREATEST(u.connection_us, EXCLUDED.connection_us), \
    client_connections = GREATEST(u.client_connections, EXCLUDED.client_connections), \
    queries = GREATEST(u.queries, EXCLUDED.queries), \
    transactions = GREATEST(u.transactions, EXCLUDED.transactions), \
    bytes_from_clients = GREATEST(u.bytes_from_clients, EXCLUDED.bytes_from_clients), \
    bytes_to_clients = GREATEST(u.bytes_to_clients, EXCLUDED.bytes_to_clients), \
    peak_server_connections = GREATEST(u.peak_server_connections, EXCLUDED.peak_server_connections), \
    disk_bytes = CASE WHEN EXCLUDED.disk_sampled_at IS NOT NULL \
        AND (u.disk_sampled_at IS NULL OR EXCLUDED.disk_sampled_at > u.disk_sampled_at) \
        THEN EXCLUDED.disk_bytes ELSE u.disk_bytes END, \
    disk_sampled_at = GREATEST(u.disk_sampled_at, EXCLUDED.disk_sampled_at), \
    updated_at = now()";

/// The read: the writers of one replica in an hour are one after the other (restarts),
/// so their counters add up and their peak is the largest; replicas run side by side,
/// so their peaks add up too. A day's peak is its largest hour's; a bucket's disk
/// sample is its latest.
const READ: &str = "WITH per_replica AS ( \
      SELECT hour, replica, sum(connection_us) AS cu, sum(client_connections) AS cc, \
        sum(queries) AS q, sum(transactions) AS t, sum(bytes_from_clients) AS bf, \
        sum(bytes_to_clients) AS bt, max(peak_server_connections) AS peak, \
        (array_agg(disk_bytes ORDER BY disk_sampled_at DESC NULLS LAST))[1] AS disk, \
        max(disk_sampled_at) AS disk_at \
      FROM usage_hours \
      WHERE tenant = $1 AND hour >= date_trunc($4, $2::timestamptz, 'UTC') AND hour < $3 \
      GROUP BY hour, replica \
    ), per_hour AS ( \
      SELECT hour, sum(cu) AS cu, sum(cc) AS cc, sum(q) AS q, sum(t) AS t, sum(bf) AS bf, \
        sum(bt) AS bt, sum(peak) AS peak, \
        (array_agg(disk ORDER BY disk_at DESC NULLS LAST))[1] AS disk, max(disk_at) AS disk_at \
      FROM per_replica GROUP BY hour \
    ) \
    SELECT date_trunc($4, hour, 'UTC') AS start, sum(cu)::int8, sum(cc)::int8, sum(q)::int8, \
      sum(t)::int8, sum(bf)::int8, sum(bt)::int8, max(peak)::int8, \
      (array_agg(disk ORDER BY disk_at DESC NULLS LAST))[1], max(disk_at) \
    FROM per_hour GROUP BY 1 ORDER BY 1";

impl Store {
    /// Writes `rows` (each a process's running totals for a tenant and hour) in one
    /// statement. Idempotent: rows written again, or older than what is stored, change
    /// nothing. Rows must not repeat a (tenant, hour, writer).
    pub async fn write_usage(&self, rows: &[UsageRow]) -> anyhow::Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let col = |f: fn(&UsageRow) -> u64| rows.iter().map(|r| db(f(r))).collect::<Vec<i64>>();
        let tenants: Vec<&str> = rows.iter().map(|r| r.tenant.as_str()).collect();
        let hours: Vec<SystemTime> = rows
            .iter()
            .map(|r| UNIX_EPOCH + Duration::from_secs(u64::try_from(r.hour).unwrap_or(0)))
            .collect();
        let writers: Vec<&str> = rows.iter().map(|r| r.writer.as_str()).collect();
        let replicas: Vec<&str> = rows.iter().map(|r| r.replica.as_str()).collect();
        let disk: Vec<Option<i64>> = rows.iter().map(|r| r.totals.disk_bytes.map(db)).collect();
        let disk_at: Vec<Option<SystemTime>> = rows
            .iter()
            .map(|r| r.totals.disk_sampled_at.map(micros_to_time))
            .collect();
        self.client()
            .await?
            .execute(
                WRITE,
                &[
                    &tenants,
                    &hours,
                    &writers,
                    &replicas,
                    &col(|r| r.totals.connection_us),
                    &col(|r| r.totals.client_connections),
                    &col(|r| r.totals.queries),
                    &col(|r| r.totals.transactions),
                    &col(|r| r.totals.bytes_from_clients),
                    &col(|r| r.totals.bytes_to_clients),
                    &col(|r| r.totals.peak_server_connections),
                    &disk,
                    &disk_at,
                ],
            )
            .await
            .context("writing usage")?;
        Ok(())
    }

    /// `tenant`'s usage in the buckets of `granularity` from the one holding `from` up
    /// to `to` (exclusive), oldest first; buckets without any row are left out.
    pub async fn read_usage(
        &self,
        tenant: &str,
        from: SystemTime,
        to: SystemTime,
        granularity: Granularity,
    ) -> anyhow::Result<Vec<UsageBucket>> {
        let rows = self
            .client()
            .await?
            .query(READ, &[&tenant, &from, &to, &granularity.as_str()])
            .await
            .context("reading usage")?;
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok(rows
            .iter()
            .map(|row| UsageBucket {
                start: row.get(0),
                totals: UsageTotals {
                    connection_us: n(row.get(1)),
                    client_connections: n(row.get(2)),
                    queries: n(row.get(3)),
                    transactions: n(row.get(4)),
                    bytes_from_clients: n(row.get(5)),
                    bytes_to_clients: n(row.get(6)),
                    peak_server_connections: n(row.get(7)),
                    disk_bytes: row.get::<_, Option<i64>>(8).map(n),
                    disk_sampled_at: row.get::<_, Option<SystemTime>>(9).map(time_to_micros),
                },
            })
            .collect())
    }

    /// Whether `tenant` is a tenant of the store or has usage recorded (a deleted
    /// tenant's usage stays readable).
    pub async fn usage_known(&self, tenant: &str) -> anyhow::Result<bool> {
        let row = self
            .client()
            .await?
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM tenants WHERE id = $1) \
                 OR EXISTS (SELECT 1 FROM usage_hours WHERE tenant = $1)",
                &[&tenant],
            )
            .await
            .context("looking the tenant up")?;
        Ok(row.get(0))
    }
}
