//! The normalizer's integration tests, against the real RabbitMQ and Redis.
//! Each test runs the real service in-process in its own namespace.

mod binary;
mod failures;
mod flow;
mod helpers;
mod outages;
