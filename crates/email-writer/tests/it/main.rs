//! Integration tests of the email-writer against the real broker, Redis and the sandbox's
//! Mailchimp.

mod burst;
mod consent;
mod failures;
mod helpers;
mod member_events;
mod outages;
mod rest;
mod routes;
