//! Integration tests of the sandbox: each test starts its own sandbox in-process on port 0
//! (`handoff_sandbox::testing::spawn`) and talks to it with reqwest, as a CRM adapter would.

mod auth;
mod faults;
mod helpers;
mod inspect;
mod mailchimp;
mod objects;
mod ratelimit;
