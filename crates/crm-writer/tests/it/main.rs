//! Integration tests of the crm-writer against the real broker, Redis and the sandbox CRM.

mod auth;
mod crash;
mod failures;
mod helpers;
mod quota;
mod rest;
mod routes;
mod write_back;
