//! Credentials the sandbox accepts: static tokens from the config (HubSpot private-app tokens
//! `pat-…`) and access tokens it issued itself through a vendor's OAuth endpoint, each with an
//! expiry. Vendor modules map [`AuthError`] to their own 401 bodies.
//!
//! The rate-limit key of a static token is the token; of an OAuth token, the OAuth client (the
//! app), so refreshing a token does not buy a fresh quota, as with HubSpot's per-app limits.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// The bearer token as presented.
    pub token: String,
    /// Whose quota the request uses.
    pub rate_key: String,
}

/// Why a request is not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer …` header.
    #[error("no bearer token")]
    Missing,
    /// A token the sandbox never issued nor was configured with.
    #[error("unknown token")]
    Unknown,
    /// An issued OAuth token past its expiry.
    #[error("token expired {} s ago", ago.as_secs())]
    Expired {
        /// How long ago it expired.
        ago: Duration,
    },
}

#[derive(Debug, Clone)]
struct Issued {
    client_id: String,
    expires_at: Instant,
}

/// Expired tokens are remembered this long (to answer "expired", not "unknown"), then forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// Static and issued tokens.
#[derive(Debug, Default)]
pub struct Tokens {
    static_tokens: HashSet<String>,
    issued: HashMap<String, Issued>,
}

/// The token of an `Authorization: Bearer <token>` header value (scheme case-insensitive).
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

impl Tokens {
    /// Accepts exactly `static_tokens`, plus whatever [`Tokens::issue`] hands out later.
    pub fn new(static_tokens: &[String]) -> Self {
        Tokens {
            static_tokens: static_tokens.iter().cloned().collect(),
            issued: HashMap::new(),
        }
    }

    /// Checks the `Authorization` header value, if any.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        now: Instant,
    ) -> Result<Credential, AuthError> {
        let token = authorization.and_then(bearer).ok_or(AuthError::Missing)?;
        if self.static_tokens.contains(token) {
            return Ok(Credential {
                token: token.to_owned(),
                rate_key: token.to_owned(),
            });
        }
        let issued = self.issued.get(token).ok_or(AuthError::Unknown)?;
        if now >= issued.expires_at {
            return Err(AuthError::Expired {
                ago: now.duration_since(issued.expires_at),
            });
        }
        Ok(Credential {
            token: token.to_owned(),
            rate_key: format!("oauth:{}", issued.client_id),
        })
    }

    /// Issues a new access token for `client_id`, valid for `ttl`.
    pub fn issue(&mut self, client_id: &str, ttl: Duration, now: Instant) -> String {
        self.issued
            .retain(|_, i| now.saturating_duration_since(i.expires_at) < FORGET_AFTER);
        let token = format!("sandbox-oauth-{}", uuid::Uuid::new_v4().simple());
        self.issued.insert(
            token.clone(),
            Issued {
                client_id: client_id.to_owned(),
                expires_at: now + ttl,
            },
        );
        token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn static_issued_and_expired_tokens() {
        let mut t = Tokens::new(&["pat-a".to_owned()]);
        let now = Instant::now();
        assert_eq!(
            t.authenticate(Some("Bearer pat-a"), now)
                .map(|c| c.rate_key),
            Ok("pat-a".to_owned())
        );
        assert_eq!(t.authenticate(None, now), Err(AuthError::Missing));
        assert_eq!(
            t.authenticate(Some("Basic abc"), now),
            Err(AuthError::Missing)
        );
        assert_eq!(
            t.authenticate(Some("bearer pat-b"), now),
            Err(AuthError::Unknown)
        );
        let issued = t.issue("app", Duration::from_secs(2), now);
        let header = format!("Bearer {issued}");
        assert_eq!(
            t.authenticate(Some(&header), now).map(|c| c.rate_key),
            Ok("oauth:app".to_owned())
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(
            t.authenticate(Some(&header), Instant::now()),
            Err(AuthError::Expired {
                ago: Duration::from_secs(3)
            })
        );
    }
}
