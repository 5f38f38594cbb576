//! Mailchimp's limit of simultaneous connections per API key (10): the sandbox counts requests in
//! flight per known key, from arrival (before injected faults, so a request held by latency still
//! counts) until it is answered, and answers 429 "Too Many Requests" to one beyond the limit.

use std::collections::BTreeMap;

use axum::response::Response;

use super::error;
use crate::Sandbox;

/// Requests in flight per key, and the most seen at once.
#[derive(Debug, Default)]
pub struct Connections {
    in_flight: BTreeMap<String, u32>,
    peak: BTreeMap<String, u32>,
}

impl Connections {
    /// The most requests any key had in flight at once (admitted ones only), per key.
    pub fn peak(&self) -> BTreeMap<String, u32> {
        self.peak.clone()
    }

    /// Requests in flight now (admitted and not yet answered), per key.
    pub fn in_flight(&self) -> BTreeMap<String, u32> {
        self.in_flight.clone()
    }

    /// Forgets the peaks. Requests in flight stay counted: they release their slots themselves.
    pub fn reset(&mut self) {
        self.peak.clear();
    }
}

/// One admitted request's connection; released when dropped.
#[derive(Debug)]
pub struct Slot {
    sb: Sandbox,
    key: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut st = self.sb.lock();
        if let Some(n) = st.mailchimp.connections.in_flight.get_mut(&self.key) {
            *n = n.saturating_sub(1);
        }
    }
}

/// A request refused because its key has `limit` requests in flight already.
#[derive(Debug, Clone, Copy)]
pub struct Refused {
    pub limit: u32,
}

impl Refused {
    /// Mailchimp's 429 "Too Many Requests", without `Retry-After`.
    pub fn into_response(self) -> Response {
        error::too_many_requests(
            &format!(
                "You have exceeded the limit of {} simultaneous connections.",
                self.limit
            ),
            None,
        )
    }
}

/// A slot for a request presenting `key`, or [`Refused`] when the key has `max_connections`
/// requests in flight already. Unknown or missing keys are not counted (the
/// request is refused with 401 further in).
pub(crate) fn admit(sb: &Sandbox, key: Option<&str>) -> Result<Option<Slot>, Refused> {
    let limit = sb.config().mailchimp.max_connections;
    let Some(key) = key else { return Ok(None) };
    let mut st = sb.lock();
    if !st.mailchimp.keys.contains(key) {
        return Ok(None);
    }
    let c = &mut st.mailchimp.connections;
    let n = c.in_flight.entry(key.to_owned()).or_default();
    if *n >= limit {
        return Err(Refused { limit });
    }
    *n += 1;
    let now = *n;
    let peak = c.peak.entry(key.to_owned()).or_default();
    *peak = (*peak).max(now);
    Ok(Some(Slot {
        sb: sb.clone(),
        key: key.to_owned(),
    }))
}
