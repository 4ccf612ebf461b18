//! Test-only helpers (filled in below).
