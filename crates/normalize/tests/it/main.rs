//! Integration tests of handoff-normalize, one binary: golden field cases,
//! whole-event goldens, property tests and the example config.

mod config;
mod events;
mod golden;
mod props;
