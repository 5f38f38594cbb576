//! Whole-pipeline scenarios: the services' crates started together in-process against the real
//! RabbitMQ and Redis, with the sandbox as the CRM. The code is in `tests/`; this library is
//! empty (a package needs a target).
//!
//! - `tests/trace.rs`: one `customer.converted` from ingest's HTTP request to the sandbox's
//!   received requests is one trace, with every parent link where it belongs.
