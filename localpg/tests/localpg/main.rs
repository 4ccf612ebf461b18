//! Integration tests against real PostgreSQL binaries, real files and real processes.
//!
//! One test binary (`tests/localpg/main.rs` and its modules) so the template is built once per run and
//! shared through a cache in Cargo's per-target temporary directory.

mod support;

mod cluster;
mod single_user;
mod template;
mod tls;
