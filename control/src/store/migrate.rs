//! Versioned schema migrations, applied at start.
//!
//! The SQL files live in `control/migrations/NNNN_name.sql` and are compiled into the
//! binary, so a Sluice binary always carries exactly the schema it was built for. Each is
//! applied in its own transaction together with its row in `schema_migrations`, so a
//! migration is either fully applied and recorded or not at all. Every transaction first
//! takes a transaction-scoped advisory lock: several Sluice processes starting together on
//! one store apply each migration once, the others wait and then find it recorded.

use std::fmt;

use anyhow::Context;
use tokio_postgres::Transaction;

/// The `pg_advisory_xact_lock` key that serialises migrations ("sluice" + 0001 in hex, so
/// it is recognisable in `pg_locks` and unlikely to collide with another application's).
pub const MIGRATION_LOCK: i64 = 0x736c_7569_6365_0001;

/// One schema change, as compiled into this binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// `NNNN` of the file name; strictly increasing from 1 without gaps.
    pub version: i32,
    /// The `name` part of the file name, recorded beside the version.
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration this binary knows, in the order they apply.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "control",
        sql: include_str!("../../migrations/0001_control.sql"),
    },
    Migration {
        version: 2,
        name: "fleet",
        sql: include_str!("../../migrations/0002_fleet.sql"),
    },
    Migration {
        version: 3,
        name: "hostnames",
        sql: include_str!("../../migrations/0003_hostnames.sql"),
    },
    Migration {
        version: 4,
        name: "fleet_slots",
        sql: include_str!("../../migrations/0004_fleet_slots.sql"),
    },
    Migration {
        version: 5,
        name: "usage",
        sql: include_str!("../../migrations/0005_usage.sql"),
    },
];

/// Created (under the lock) before anything is read from it; without Postgres' NOTICE
/// that it exists already, which would otherwise reach Sluice's log at every start.
const CREATE_SCHEMA_MIGRATIONS: &str = "SET LOCAL client_min_messages = warning;
CREATE TABLE IF NOT EXISTS schema_migrations (
    version int PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)";

/// Why this binary refuses to work with a store's schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaMismatch {
    /// A newer Sluice migrated the store; this one would misread it.
    TooNew {
        version: i32,
        name: String,
        latest_known: i32,
    },
    /// The store recorded a known version under another name: the binaries disagree on
    /// what that version is.
    Renamed {
        version: i32,
        recorded: String,
        expected: &'static str,
    },
    /// A version below the latest known that this binary never had (a hand-made row).
    Unknown { version: i32, name: String },
}

impl fmt::Display for SchemaMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SchemaMismatch::TooNew {
                version,
                name,
                latest_known,
            } => write!(
                f,
                "the control store's schema has migration {version} ({name:?}), newer than \
                 this Sluice knows (its latest is {latest_known}): run a Sluice at least as \
                 new as the one that migrated the store"
            ),
            SchemaMismatch::Renamed {
                version,
                recorded,
                expected,
            } => write!(
                f,
                "the control store recorded migration {version} as {recorded:?}, but this \
                 Sluice's migration {version} is {expected:?}: the store was migrated by an \
                 incompatible build"
            ),
            SchemaMismatch::Unknown { version, name } => write!(
                f,
                "the control store recorded migration {version} ({name:?}), which no Sluice \
                 build has: schema_migrations was edited by hand"
            ),
        }
    }
}

impl std::error::Error for SchemaMismatch {}

/// [`Store::migrate`] on a given connection.
pub(crate) async fn migrate_client(
    client: &mut tokio_postgres::Client,
) -> anyhow::Result<Vec<i32>> {
    let mut applied = Vec::new();
    for migration in MIGRATIONS {
        let tx = client
            .transaction()
            .await
            .context("starting a migration transaction")?;
        if apply_one(&tx, migration).await? {
            applied.push(migration.version);
        }
        tx.commit().await.with_context(|| {
            format!(
                "committing migration {} ({})",
                migration.version, migration.name
            )
        })?;
    }
    Ok(applied)
}

/// Within `tx`: takes the lock, checks the recorded versions, and applies `migration` if it
/// is missing. Returns whether it was applied.
async fn apply_one(tx: &Transaction<'_>, migration: &Migration) -> anyhow::Result<bool> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .context("taking the migration lock")?;
    tx.batch_execute(CREATE_SCHEMA_MIGRATIONS)
        .await
        .context("creating schema_migrations")?;
    let recorded = recorded_versions(tx).await?;
    check_compatible(&recorded, MIGRATIONS)?;
    if recorded
        .iter()
        .any(|(version, _)| *version == migration.version)
    {
        return Ok(false);
    }
    let what = format!("migration {} ({})", migration.version, migration.name);
    tx.batch_execute(migration.sql)
        .await
        .with_context(|| format!("applying {what}"))?;
    tx.execute(
        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
        &[&migration.version, &migration.name],
    )
    .await
    .with_context(|| format!("recording {what}"))?;
    tracing::info!(
        version = migration.version,
        name = migration.name,
        "applied a control store migration"
    );
    Ok(true)
}

async fn recorded_versions(tx: &Transaction<'_>) -> anyhow::Result<Vec<(i32, String)>> {
    let rows = tx
        .query(
            "SELECT version, name FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .context("reading schema_migrations")?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect::<Result<_, tokio_postgres::Error>>()
        .context("decoding schema_migrations")
}

/// Checks what the store recorded against what this binary knows.
fn check_compatible(recorded: &[(i32, String)], known: &[Migration]) -> Result<(), SchemaMismatch> {
    let latest_known = known.iter().map(|m| m.version).max().unwrap_or(0);
    for (version, name) in recorded {
        match known.iter().find(|m| m.version == *version) {
            Some(migration) if migration.name != name => {
                return Err(SchemaMismatch::Renamed {
                    version: *version,
                    recorded: name.clone(),
                    expected: migration.name,
                });
            }
            Some(_) => {}
            None if *version < latest_known => {
                return Err(SchemaMismatch::Unknown {
                    version: *version,
                    name: name.clone(),
                });
            }
            None => {
                return Err(SchemaMismatch::TooNew {
                    version: *version,
                    name: name.clone(),
                    latest_known,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_count_up_from_one() {
        for (index, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(migration.version as usize, index + 1, "{}", migration.name);
            assert!(!migration.sql.trim().is_empty());
        }
    }

    #[test]
    fn newer_and_renamed_versions_are_refused() {
        let known = [Migration {
            version: 1,
            name: "control",
            sql: "",
        }];
        assert_eq!(check_compatible(&[], &known), Ok(()));
        assert_eq!(check_compatible(&[(1, "control".into())], &known), Ok(()));
        let too_new = check_compatible(&[(1, "control".into()), (2, "later".into())], &known);
        assert!(matches!(
            too_new,
            Err(SchemaMismatch::TooNew {
                version: 2,
                latest_known: 1,
                ..
            })
        ));
        let renamed = check_compatible(&[(1, "other".into())], &known);
        assert!(matches!(
            renamed,
            Err(SchemaMismatch::Renamed { version: 1, .. })
        ));
        let unknown = check_compatible(&[(0, "hand-made".into())], &known);
        assert!(matches!(
            unknown,
            Err(SchemaMismatch::Unknown { version: 0, .. })
        ));
    }
}
