//! Usage metering: what each tenant used per hour, kept in memory by this process and
//! written to the control store (`usage_hours`) every `[usage] flush_interval_s`.
//!
//! The data plane's counters are read by the admin API's sampler (the same counters
//! `/metrics` sums) and added here as deltas, each to the hour it was read in. This
//! process's row for a (tenant, hour) holds its running totals, so a flush writes
//! absolute values and the store keeps the larger of what it has and what it gets:
//! a flush repeated after a lost answer, or replayed from the spool after a restart,
//! counts nothing twice. While the store cannot be reached the totals simply stay in
//! memory (every hour not yet written); at shutdown, if the last flush fails, they are
//! written to `data_dir/usage-spool/<writer>.json` and written to the store by the
//! next start. See docs/usage.md.

pub mod disk;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;

use crate::store::{Store, UsageRow, UsageTotals};

/// `[usage]` of the config file, and who this process is.
#[derive(Debug, Clone)]
pub struct UsageConfig {
    /// How often the totals go to the control store.
    pub flush_interval: Duration,
    /// How often each tenant's database sizes are read from its backend (None: never).
    pub disk_interval: Option<Duration>,
    /// This process's `[fleet] id` ('' outside a fleet).
    pub replica: String,
    /// Where totals the last flush at shutdown could not write are kept for the next
    /// start (None: not kept).
    pub spool_dir: Option<PathBuf>,
}

impl Default for UsageConfig {
    fn default() -> Self {
        UsageConfig {
            flush_interval: Duration::from_secs(10),
            disk_interval: Some(Duration::from_secs(60)),
            replica: String::new(),
            spool_dir: None,
        }
    }
}

/// One (tenant, hour) in memory: the totals, and what of them the store has.
#[derive(Debug, Default)]
struct Hour {
    totals: UsageTotals,
    written: Option<UsageTotals>,
}

/// This process's usage, by tenant and hour, until it is in the store.
#[derive(Debug)]
pub struct UsageMeter {
    pub config: UsageConfig,
    /// This process's id in `usage_hours.writer`: 16 random hex digits.
    writer: String,
    hours: Mutex<BTreeMap<(String, i64), Hour>>,
    /// Rows an earlier process spooled at its shutdown, and their files, until written.
    spooled: Mutex<Vec<(PathBuf, Vec<UsageRow>)>>,
}

/// The first second of the UTC hour holding `at`, since the Unix epoch.
pub fn hour_of(at: SystemTime) -> i64 {
    let secs = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    i64::try_from(secs - secs % 3600).unwrap_or(i64::MAX)
}

impl UsageMeter {
    pub fn new(config: UsageConfig) -> UsageMeter {
        let writer = format!("{:016x}", rand::random::<u64>());
        UsageMeter {
            config,
            writer,
            hours: Mutex::new(BTreeMap::new()),
            spooled: Mutex::new(Vec::new()),
        }
    }

    pub fn writer(&self) -> &str {
        &self.writer
    }

    fn with_hour(&self, tenant: &str, at: SystemTime, change: impl FnOnce(&mut UsageTotals)) {
        let mut hours = self.hours.lock().expect("usage lock poisoned");
        let hour = hours.entry((tenant.to_owned(), hour_of(at))).or_default();
        change(&mut hour.totals);
    }

    /// Adds `delta`'s counters to `tenant`'s hour holding `at`.
    pub fn add(&self, tenant: &str, at: SystemTime, delta: &UsageTotals) {
        if !delta.counters_are_zero() {
            self.with_hour(tenant, at, |t| t.add(delta));
        }
    }

    /// `tenant` had `open` server connections at once at some point of the hour
    /// holding `at`.
    pub fn peak(&self, tenant: &str, at: SystemTime, open: u64) {
        if open > 0 {
            self.with_hour(tenant, at, |t| {
                t.peak_server_connections = t.peak_server_connections.max(open)
            });
        }
    }

    /// `tenant`'s backend held `bytes` of databases at `at`.
    pub fn disk(&self, tenant: &str, at: SystemTime, bytes: u64) {
        let micros = at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros();
        let micros = i64::try_from(micros).unwrap_or(i64::MAX);
        self.with_hour(tenant, at, |t| {
            if t.disk_sampled_at.is_none_or(|before| before <= micros) {
                t.disk_bytes = Some(bytes);
                t.disk_sampled_at = Some(micros);
            }
        });
    }

    /// The rows the store does not have yet (this process's totals that changed since
    /// they were last written).
    pub fn pending(&self) -> Vec<UsageRow> {
        let hours = self.hours.lock().expect("usage lock poisoned");
        hours
            .iter()
            .filter(|(_, h)| h.written != Some(h.totals))
            .map(|((tenant, hour), h)| UsageRow {
                tenant: tenant.clone(),
                hour: *hour,
                writer: self.writer.clone(),
                replica: self.config.replica.clone(),
                totals: h.totals,
            })
            .collect()
    }

    /// The totals of every (tenant, hour) this process holds (tests, and what a
    /// shutdown would spool).
    pub fn totals(&self) -> BTreeMap<(String, i64), UsageTotals> {
        let hours = self.hours.lock().expect("usage lock poisoned");
        hours.iter().map(|(k, h)| (k.clone(), h.totals)).collect()
    }

    /// `rows` are in the store: hours that ended a minute or more before `now` and
    /// have nothing more to write leave memory. (The minute: a delta read just before
    /// an hour ended may be added just after; it must find its hour's totals, which
    /// it grows, not an empty entry the store would keep the larger old row over.)
    fn written(&self, rows: &[UsageRow], now: SystemTime) {
        let current = hour_of(now - Duration::from_secs(60));
        let mut hours = self.hours.lock().expect("usage lock poisoned");
        for row in rows {
            if let Some(h) = hours.get_mut(&(row.tenant.clone(), row.hour)) {
                h.written = Some(row.totals);
            }
        }
        hours.retain(|(_, hour), h| *hour >= current || h.written != Some(h.totals));
    }

    /// Writes what the store lacks (and anything spooled by an earlier process) in one
    /// statement; the number of rows written. On failure everything stays for the next
    /// flush.
    pub async fn flush(&self, store: &Store) -> anyhow::Result<usize> {
        let mine = self.pending();
        let spooled: Vec<(PathBuf, Vec<UsageRow>)> =
            self.spooled.lock().expect("usage lock poisoned").clone();
        let mut rows = mine.clone();
        for (_, earlier) in &spooled {
            rows.extend(earlier.iter().cloned());
        }
        let rows = merge(rows);
        if rows.is_empty() {
            return Ok(0);
        }
        store.write_usage(&rows).await?;
        self.written(&mine, SystemTime::now());
        if !spooled.is_empty() {
            let mut left = self.spooled.lock().expect("usage lock poisoned");
            for (file, _) in &spooled {
                if let Err(e) = std::fs::remove_file(file) {
                    tracing::warn!(file = %file.display(), error = %e, "removing a usage spool file that is written");
                }
                left.retain(|(f, _)| f != file);
            }
            tracing::info!(
                files = spooled.len(),
                "spooled usage of an earlier process written to the control store"
            );
        }
        Ok(rows.len())
    }

    /// The last word at shutdown: flushes, retrying for up to `patience`, and if the
    /// store still cannot take it, writes what is pending to the spool directory.
    pub async fn flush_or_spool(&self, store: Option<&Store>, patience: Duration) {
        let deadline = tokio::time::Instant::now() + patience;
        let mut last = None;
        if let Some(store) = store {
            loop {
                match self.flush(store).await {
                    Ok(_) => return,
                    Err(e) => last = Some(e),
                }
                if tokio::time::Instant::now() + Duration::from_millis(500) > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        let why = last.map_or("no control store".to_owned(), |e| format!("{e:#}"));
        match self.spool() {
            Ok(Some(file)) => tracing::warn!(
                error = %why,
                file = %file.display(),
                "usage could not be written to the control store; spooled for the next start"
            ),
            Ok(None) => {}
            Err(e) => tracing::error!(
                error = %format!("{e:#}"),
                cause = %why,
                "usage could not be written to the control store nor spooled: it is lost"
            ),
        }
    }

    /// Writes the pending rows (mine and any still spooled) to
    /// `spool_dir/<writer>.json`; the file, or None when there is nothing to keep.
    fn spool(&self) -> anyhow::Result<Option<PathBuf>> {
        let mut rows = self.pending();
        let earlier: Vec<PathBuf> = {
            let spooled = self.spooled.lock().expect("usage lock poisoned");
            for (_, r) in spooled.iter() {
                rows.extend(r.iter().cloned());
            }
            spooled.iter().map(|(f, _)| f.clone()).collect()
        };
        if rows.is_empty() {
            return Ok(None);
        }
        let dir = self
            .config
            .spool_dir
            .as_deref()
            .context("no spool directory")?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let file = dir.join(format!("{}.json", self.writer));
        let partial = dir.join(format!("{}.json.partial", self.writer));
        std::fs::write(&partial, serde_json::to_vec(&rows)?)
            .with_context(|| format!("writing {}", partial.display()))?;
        std::fs::rename(&partial, &file)
            .with_context(|| format!("renaming {}", partial.display()))?;
        // Their rows are in this file now.
        for f in earlier {
            let _ = std::fs::remove_file(f);
        }
        Ok(Some(file))
    }

    /// Reads what earlier processes spooled in `spool_dir`, to be written by the next
    /// flush. A file that does not read is left where it is, with an error logged.
    pub fn load_spool(&self) {
        let Some(dir) = &self.config.spool_dir else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut spooled = self.spooled.lock().expect("usage lock poisoned");
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            match read_spool(&path) {
                Ok(rows) => {
                    tracing::info!(file = %path.display(), rows = rows.len(), "usage spooled by an earlier process, to be written");
                    spooled.push((path, rows));
                }
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %format!("{e:#}"), "unreadable usage spool file left in place")
                }
            }
        }
    }
}

/// One row per (tenant, hour, writer), each field the largest of its rows (a row
/// spooled twice, say), so that one statement can write them all.
fn merge(rows: Vec<UsageRow>) -> Vec<UsageRow> {
    let mut by_key: BTreeMap<(String, i64, String), UsageRow> = BTreeMap::new();
    for row in rows {
        let key = (row.tenant.clone(), row.hour, row.writer.clone());
        match by_key.get_mut(&key) {
            None => {
                by_key.insert(key, row);
            }
            Some(have) => {
                let (a, b) = (&mut have.totals, &row.totals);
                a.connection_us = a.connection_us.max(b.connection_us);
                a.client_connections = a.client_connections.max(b.client_connections);
                a.queries = a.queries.max(b.queries);
                a.transactions = a.transactions.max(b.transactions);
                a.bytes_from_clients = a.bytes_from_clients.max(b.bytes_from_clients);
                a.bytes_to_clients = a.bytes_to_clients.max(b.bytes_to_clients);
                a.peak_server_connections =
                    a.peak_server_connections.max(b.peak_server_connections);
                if b.disk_sampled_at > a.disk_sampled_at {
                    a.disk_bytes = b.disk_bytes;
                    a.disk_sampled_at = b.disk_sampled_at;
                }
            }
        }
    }
    by_key.into_values().collect()
}

fn read_spool(path: &Path) -> anyhow::Result<Vec<UsageRow>> {
    let bytes = std::fs::read(path)?;
    Ok(serde_json::from_slice(&bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn counts(queries: u64) -> UsageTotals {
        UsageTotals {
            queries,
            client_connections: 1,
            ..UsageTotals::default()
        }
    }

    #[test]
    fn deltas_add_up_per_tenant_and_hour() {
        let meter = UsageMeter::new(UsageConfig::default());
        meter.add("acme", at(7200 + 5), &counts(3));
        meter.add("acme", at(7200 + 3599), &counts(4));
        meter.add("acme", at(10_800), &counts(1));
        meter.add("globex", at(7200), &UsageTotals::default());
        meter.peak("acme", at(7300), 3);
        meter.peak("acme", at(7400), 2);
        meter.disk("acme", at(7500), 100);
        meter.disk("acme", at(7400), 50);
        let totals = meter.totals();
        assert_eq!(totals.len(), 2, "{totals:?}");
        let first = totals[&("acme".to_owned(), 7200)];
        assert_eq!(
            (
                first.queries,
                first.client_connections,
                first.peak_server_connections
            ),
            (7, 2, 3)
        );
        assert_eq!(first.disk_bytes, Some(100), "the later sample wins");
        assert_eq!(totals[&("acme".to_owned(), 10_800)].queries, 1);
    }

    #[test]
    fn written_hours_leave_memory_once_they_ended() {
        let meter = UsageMeter::new(UsageConfig::default());
        let now = SystemTime::now();
        let hour = hour_of(now);
        meter.add("acme", now, &counts(1));
        meter.add("acme", now - Duration::from_secs(2 * 3600), &counts(2));
        let rows = meter.pending();
        assert_eq!(rows.len(), 2);
        meter.written(&rows, now);
        assert!(meter.pending().is_empty());
        // The running hour stays: its next flush writes its totals, not a delta.
        assert_eq!(
            meter.totals().keys().map(|k| k.1).collect::<Vec<_>>(),
            [hour]
        );
        meter.add("acme", now, &counts(5));
        assert_eq!(meter.pending()[0].totals.queries, 6);
    }

    #[test]
    fn what_cannot_be_written_is_spooled_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let config = UsageConfig {
            spool_dir: Some(dir.path().join("spool")),
            ..UsageConfig::default()
        };
        let meter = UsageMeter::new(config.clone());
        meter.add("acme", at(3600), &counts(9));
        let file = meter.spool().unwrap().unwrap();
        assert!(file.ends_with(format!("{}.json", meter.writer())));
        let next = UsageMeter::new(config);
        next.load_spool();
        let spooled = next.spooled.lock().unwrap().clone();
        assert_eq!(spooled.len(), 1);
        assert_eq!(spooled[0].1, meter.pending());
        assert_ne!(
            spooled[0].1[0].writer,
            next.writer(),
            "kept under its own writer"
        );
    }
}
