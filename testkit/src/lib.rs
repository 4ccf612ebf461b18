//! Test-only building blocks for end-to-end tests: real Postgres clusters (through
//! `localpg`), real certificates, a real `sluice` process on an OS-assigned port, and
//! real clients (psql, pgbench, tokio-postgres, psycopg with libpq 18, and `raw`, one
//! that speaks the protocol by hand).
//!
//! The benchmarks (benches/) measure with the same blocks and a few of their own:
//! pgbench runs and what they report (`pgbench`), /proc readings of a process's CPU
//! time and memory (`procfs`), a PgBouncer to compare with (`pgbouncer`), and crowds of
//! idle clients (`idle`).
//!
//! Everything started here is stopped by `Drop` (by pid), and lives in temporary
//! directories.

pub mod clients;
pub mod cluster;
pub mod env;
pub mod fake_pve;
pub mod fleet;
pub mod haproxy;
pub mod http;
pub mod idle;
pub mod pgbench;
pub mod pgbouncer;
pub mod pki;
pub mod procfs;
pub mod psycopg;
pub mod raw;
pub mod sluice;

pub use clients::{pg_connect, pg_connect_from, pgbench, psql, scalar, PgTarget, PsqlOutput};
pub use cluster::{TestCluster, TestClusterOptions};
pub use env::{OneTenant, TwoTenants};
pub use pki::{Pki, SNI_SUFFIX};
pub use raw::RawClient;
pub use sluice::{SluiceConfig, SluiceProcess, TenantEntry};
