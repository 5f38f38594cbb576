//! Integration tests of ingest against the real RabbitMQ and Redis.
//!
//! Every test starts its own ingest on port 0 with a random namespace (see
//! `helpers::spawn_ingest`) and removes its queues and keys when done, so the
//! suite runs in parallel and twice in a row.

mod api;
mod batch;
mod fuzz;
mod helpers;
mod outage;
mod shutdown;
mod timeline;
