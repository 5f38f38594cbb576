//! Integration tests for `handoff-kit`: configuration layering, the admin server on port 0, drains
//! under paused time, and telemetry for tests. One test binary for the crate (`tests/it`).

mod admin;
mod config;
mod shutdown;
mod telemetry;
