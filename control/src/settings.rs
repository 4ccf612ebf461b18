//! A tenant's own settings: the `[defaults.pool]` and `[defaults.limits]` keys it sets
//! over its plan, as the control store keeps them and the admin API reads and changes
//! them. [`PoolPatch::apply`] and [`LimitsPatch::apply`] check every key against its
//! range; an [`InvalidSetting`] names the key.

use std::time::Duration;

use router::{Cidr, Limits, PoolMode, PoolSettings, SessionState};
use serde::{Deserialize, Serialize};

/// A setting out of its range, or not one of its values: the message starts with the
/// key (`pool.size: must be between 1 and 10000`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSetting(pub String);

impl InvalidSetting {
    fn new(message: impl Into<String>) -> Self {
        InvalidSetting(message.into())
    }
}

/// `[defaults.pool]` keys; in a PATCH, only those given change.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolPatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_idle: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_wait_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout_s: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifetime_s: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_prepared_statements: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reserve: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reserve_wait_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_state: Option<String>,
}

/// `[defaults.limits]` keys; in a PATCH, only those given change.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsPatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_in_transaction_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_idle_timeout_s: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_client_connections: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_server_connections: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_rate: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_rate: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_bytes_rate: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_bytes_rate: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent_logins: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_login_max: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_login_window_s: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_login_ban_s: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_cidrs: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspend_after_idle_s: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_limit_mb: Option<u64>,
}

/// The largest `disk_limit_mb` (an exbibyte), so that its bytes fit a `u64`.
pub const MAX_DISK_LIMIT_MB: u64 = 1 << 40;

const TEN_YEARS_S: u64 = 10 * 366 * 24 * 3600;

fn secs(d: Duration) -> u64 {
    d.as_secs()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl PoolPatch {
    pub fn of(p: &PoolSettings) -> Self {
        PoolPatch {
            mode: Some(
                match p.mode {
                    PoolMode::Session => "session",
                    PoolMode::Transaction => "transaction",
                }
                .to_owned(),
            ),
            size: Some(p.size),
            min_idle: Some(p.min_idle),
            max_wait_ms: Some(millis(p.max_wait)),
            idle_timeout_s: Some(secs(p.idle_timeout)),
            lifetime_s: Some(secs(p.lifetime)),
            max_prepared_statements: Some(p.max_prepared_statements),
            reserve: Some(p.reserve),
            reserve_wait_ms: Some(millis(p.reserve_wait)),
            session_state: Some(p.session_state.as_str().to_owned()),
        }
    }

    /// `base` with the given keys changed, or what is wrong with them.
    pub fn apply(&self, base: &PoolSettings) -> Result<PoolSettings, InvalidSetting> {
        let mut p = base.clone();
        if let Some(mode) = &self.mode {
            p.mode = match mode.as_str() {
                "session" => PoolMode::Session,
                "transaction" => PoolMode::Transaction,
                other => {
                    return Err(InvalidSetting::new(format!(
                        "pool.mode: {other:?} is not one of session, transaction"
                    )))
                }
            };
        }
        let range = |key: &str, v: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&v) {
                Ok(v)
            } else {
                Err(InvalidSetting::new(format!(
                    "pool.{key}: must be between {lo} and {hi}"
                )))
            }
        };
        if let Some(v) = self.size {
            p.size = range("size", v as u64, 1, 10_000)? as usize;
        }
        if let Some(v) = self.reserve {
            p.reserve = range("reserve", v as u64, 0, 10_000)? as usize;
        }
        if let Some(v) = self.max_prepared_statements {
            p.max_prepared_statements =
                range("max_prepared_statements", v as u64, 1, 1_000_000)? as usize;
        }
        if let Some(v) = self.max_wait_ms {
            p.max_wait = Duration::from_millis(range("max_wait_ms", v, 0, TEN_YEARS_S * 1000)?);
        }
        if let Some(word) = &self.session_state {
            p.session_state = SessionState::parse(word).ok_or_else(|| {
                InvalidSetting::new(format!(
                    "pool.session_state: {word:?} is not one of pin, refuse"
                ))
            })?;
        }
        if let Some(v) = self.reserve_wait_ms {
            let v = range("reserve_wait_ms", v, 0, TEN_YEARS_S * 1000)?;
            p.reserve_wait = Duration::from_millis(v);
        }
        if let Some(v) = self.idle_timeout_s {
            p.idle_timeout = Duration::from_secs(range("idle_timeout_s", v, 1, TEN_YEARS_S)?);
        }
        if let Some(v) = self.lifetime_s {
            p.lifetime = Duration::from_secs(range("lifetime_s", v, 1, TEN_YEARS_S)?);
        }
        if let Some(v) = self.min_idle {
            p.min_idle = v;
        }
        if p.min_idle > p.size {
            return Err(InvalidSetting::new(format!(
                "pool.min_idle ({}) must not exceed pool.size ({})",
                p.min_idle, p.size
            )));
        }
        Ok(p)
    }
}

impl LimitsPatch {
    pub fn of(l: &Limits) -> Self {
        let ms = |d: Option<Duration>| Some(d.map_or(0, millis));
        LimitsPatch {
            query_timeout_ms: ms(l.query_timeout),
            idle_in_transaction_timeout_ms: ms(l.idle_in_transaction_timeout),
            client_idle_timeout_s: Some(l.client_idle_timeout.map_or(0, secs)),
            max_client_connections: Some(l.max_client_connections.map_or(0, |n| n as u64)),
            max_server_connections: Some(l.max_server_connections.map_or(0, |n| n as u64)),
            connect_rate: Some(l.connect_rate.unwrap_or(0)),
            query_rate: Some(l.query_rate.unwrap_or(0)),
            client_bytes_rate: Some(l.client_bytes_rate.unwrap_or(0)),
            server_bytes_rate: Some(l.server_bytes_rate.unwrap_or(0)),
            max_concurrent_logins: Some(u32::try_from(l.max_concurrent_logins).unwrap_or(u32::MAX)),
            failed_login_max: Some(l.failed_logins.max_failures),
            failed_login_window_s: Some(secs(l.failed_logins.window)),
            failed_login_ban_s: Some(secs(l.failed_logins.ban)),
            allow_cidrs: Some(l.allow_cidrs.iter().map(Cidr::to_string).collect()),
            suspend_after_idle_s: Some(l.suspend_after_idle.map_or(0, secs)),
            disk_limit_mb: Some(l.disk_limit.map_or(0, |b| b.div_ceil(1 << 20))),
        }
    }

    pub fn apply(&self, base: &Limits) -> Result<Limits, InvalidSetting> {
        let mut l = base.clone();
        let upto = |key: &str, v: u64, hi: u64| {
            if v <= hi {
                Ok(v)
            } else {
                Err(InvalidSetting::new(format!(
                    "limits.{key}: must be at most {hi}"
                )))
            }
        };
        let off_or = |v: u64, f: fn(u64) -> Duration| (v > 0).then(|| f(v));
        if let Some(v) = self.query_timeout_ms {
            let v = upto("query_timeout_ms", v, TEN_YEARS_S * 1000)?;
            l.query_timeout = off_or(v, Duration::from_millis);
        }
        if let Some(v) = self.idle_in_transaction_timeout_ms {
            let v = upto("idle_in_transaction_timeout_ms", v, TEN_YEARS_S * 1000)?;
            l.idle_in_transaction_timeout = off_or(v, Duration::from_millis);
        }
        if let Some(v) = self.client_idle_timeout_s {
            let v = upto("client_idle_timeout_s", v, TEN_YEARS_S)?;
            l.client_idle_timeout = off_or(v, Duration::from_secs);
        }
        if let Some(v) = self.suspend_after_idle_s {
            let v = upto("suspend_after_idle_s", v, TEN_YEARS_S)?;
            l.suspend_after_idle = off_or(v, Duration::from_secs);
        }
        if let Some(v) = self.disk_limit_mb {
            let v = upto("disk_limit_mb", v, MAX_DISK_LIMIT_MB)?;
            l.disk_limit = (v > 0).then_some(v << 20);
        }
        if let Some(v) = self.max_client_connections {
            l.max_client_connections = (v > 0).then(|| usize::try_from(v).unwrap_or(usize::MAX));
        }
        if let Some(v) = self.max_server_connections {
            l.max_server_connections = (v > 0).then(|| usize::try_from(v).unwrap_or(usize::MAX));
        }
        if let Some(v) = self.connect_rate {
            l.connect_rate = (v > 0).then_some(v);
        }
        if let Some(v) = self.query_rate {
            l.query_rate = (v > 0).then_some(v);
        }
        if let Some(v) = self.client_bytes_rate {
            l.client_bytes_rate = (v > 0).then_some(v);
        }
        if let Some(v) = self.server_bytes_rate {
            l.server_bytes_rate = (v > 0).then_some(v);
        }
        if let Some(v) = self.max_concurrent_logins {
            if v == 0 {
                return Err(InvalidSetting::new(
                    "limits.max_concurrent_logins: must be at least 1",
                ));
            }
            l.max_concurrent_logins = v as usize;
        }
        if let Some(v) = self.failed_login_max {
            l.failed_logins.max_failures = v;
        }
        if let Some(v) = self.failed_login_window_s {
            l.failed_logins.window =
                Duration::from_secs(upto("failed_login_window_s", v, TEN_YEARS_S)?);
        }
        if let Some(v) = self.failed_login_ban_s {
            l.failed_logins.ban = Duration::from_secs(upto("failed_login_ban_s", v, TEN_YEARS_S)?);
        }
        if let Some(list) = &self.allow_cidrs {
            l.allow_cidrs = list
                .iter()
                .map(|c| {
                    Cidr::parse(c)
                        .map_err(|e| InvalidSetting::new(format!("limits.allow_cidrs: {e}")))
                })
                .collect::<Result<_, _>>()?;
        }
        Ok(l)
    }
}
