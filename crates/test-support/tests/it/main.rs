//! Integration tests for `handoff-test-support`: the private servers survive the crashes and
//! restarts tests put them through. One test binary for the crate (`tests/it`).

mod private;
