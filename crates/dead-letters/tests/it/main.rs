//! The dead-letter handler against the real RabbitMQ and Redis.

mod cli;
mod helpers;
mod parking;
mod query;
mod replay;
mod restarts;
mod trace;
