//! [`Credentials`]: what a writer sends as `Authorization: Bearer …` to a destination, from
//! [`AuthConfig`] (`[auth]` in a writer's TOML file).
//!
//! Two kinds. A **static** token (a HubSpot private-app token, a Mailchimp API key) is read once
//! and sent as is; when the destination rejects it there is nothing to refresh, so
//! [`Credentials::after_rejection`] answers [`AuthError::Rejected`] (permanent). An **OAuth2**
//! credential exchanges its client secret (and, for the `refresh_token` grant, a refresh token) at
//! the vendor's token endpoint for a short-lived access token: HubSpot's `POST /oauth/v1/token`,
//! form-encoded, answering `{"access_token", "refresh_token"?, "expires_in"}`; its tokens live 30
//! minutes.
//!
//! Secrets come from a [`SecretSource`]: an environment variable, a mounted file, or (for local
//! development) a literal. They are read when the [`Credentials`] are built, so a missing one stops
//! the writer at start-up rather than at its first delivery, and they are held as
//! [`SecretString`]s: `Debug` of every type here prints `[REDACTED]` or leaves them out, and no
//! error message or log line carries one (error bodies from the token endpoint are scrubbed of our
//! secrets before they are kept).
//!
//! ## One access token for every replica
//!
//! An OAuth access token is cached in the process and in Redis at `"{ns}:auth:{name}"` (JSON: the
//! token, its expiry and its lifetime; `PX` = the time it has left), so every replica sends the
//! same token. Were each replica to refresh on its own, the token endpoint (which has limits of
//! its own) would see one refresh per replica per lifetime, and all of them at once after a
//! deploy or when the tokens run out together: a refresh storm, at exactly the moment deliveries
//! need a token. Shared, it is one refresh per lifetime for the whole deployment.
//!
//! A token is refreshed ahead of its expiry, once less than `refresh_ahead` is left (or a third of
//! its lifetime, for tokens shorter-lived than that), so requests in flight never carry one that
//! runs out on the way. One replica refreshes at a time: it takes the lock
//! `"{ns}:auth:{name}:lock"` (`SET NX PX`, with a random id, for longer than the token request may
//! take), re-reads the shared token (another replica may have just finished), asks the endpoint,
//! and stores the token and releases the lock in one script (`lua/auth_release.lua`). The others
//! poll Redis briefly for the new token and meanwhile keep sending the old one, which is still
//! valid; with no valid token at all they wait up to the lock's lifetime, so a lock holder that
//! died is replaced when its lock expires. Within one process, concurrent callers share one
//! refresh (a single-flight mutex); callers that find it busy use the still-valid token at once.
//! A failed refresh keeps the old token in use until it expires and is retried a few seconds
//! later, not on every call.
//!
//! After a 401, [`Credentials::after_rejection`] with the rejected token refreshes once: if another
//! task or replica has already replaced that token, the newer one is returned without asking the
//! endpoint again, so ten tasks that saw the same 401 cause one refresh.
//!
//! **The cached access token in Redis is a secret.** Whoever can read the namespace's keys can
//! call the vendor with it until it expires. Redis' own access control protects it (`requirepass`
//! or an ACL user for the writers, `rediss://` across untrusted networks, no public exposure); the
//! client secret and the refresh token never leave the process.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use handoff_idempotency::StoreError;
use redis::Script;
use secrecy::{ExposeSecret, SecretString};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};
use tracing::{info, warn};

use crate::RedisHandle;

static AUTH_RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/auth_release.lua")));

/// What `Debug` and `Serialize` show instead of a secret.
const REDACTED: &str = "[redacted]";

/// The longest a token request may take. HubSpot answers in well under a second; ten seconds
/// rides out a slow moment without holding deliveries up for long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the refresh lock lives: longer than a token request may take, so it never runs out
/// under a live holder, and short enough that a holder that died holds nobody up for long.
const LOCK_TTL: Duration = Duration::from_secs(15);

/// How often a replica waiting for another's refresh looks for the new token in Redis.
const POLL: Duration = Duration::from_millis(50);

/// How long a replica that still has a valid token waits for another's refresh before it goes on
/// with the old token: long enough for a token request to come back, short enough not to be
/// noticed.
const WAIT_WITH_FALLBACK: Duration = Duration::from_millis(500);

/// After a failed refresh, the still-valid token is used this long before the next attempt, so a
/// token endpoint that is down is not asked on every call.
const RETRY_FAILED_REFRESH: Duration = Duration::from_secs(5);

/// A token is never handed out in its last second (its last tenth, for very short-lived ones):
/// it could run out on the way.
const EXPIRY_MARGIN: Duration = Duration::from_secs(1);

/// `expires_in` is capped at a year: nothing longer is an access token, and the arithmetic stays
/// far from overflowing.
const MAX_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// How much of a token endpoint's error body is kept in an [`AuthError::Refused`].
const MAX_BODY_CHARS: usize = 500;

/// Where a secret comes from: exactly one of `env` (a variable's name), `file` (a path, read and
/// trimmed: a mounted Kubernetes secret), or `value` (the secret itself, for local development
/// only: it then sits in a config file).
///
/// ```toml
/// client_secret = { env = "HUBSPOT_CLIENT_SECRET" }
/// refresh_token = { file = "/run/secrets/hubspot-refresh-token" }
/// token = { value = "pat-local-dev" }
/// ```
///
/// `Debug` and `Serialize` show `value` as `[redacted]`, so printing or dumping a configuration
/// never reveals a literal secret (and a dumped literal does not load back as the secret).
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    /// The environment variable holding the secret.
    pub env: Option<String>,
    /// The file holding the secret; surrounding whitespace (a trailing newline) is trimmed.
    pub file: Option<PathBuf>,
    /// The secret itself: local development only.
    pub value: Option<SecretString>,
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretSource")
            .field("env", &self.env)
            .field("file", &self.file)
            .field("value", &self.value.as_ref().map(|_| REDACTED))
            .finish()
    }
}

impl Serialize for SecretSource {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let fields = usize::from(self.env.is_some())
            + usize::from(self.file.is_some())
            + usize::from(self.value.is_some());
        let mut out = serializer.serialize_struct("SecretSource", fields)?;
        if let Some(env) = &self.env {
            out.serialize_field("env", env)?;
        }
        if let Some(file) = &self.file {
            out.serialize_field("file", file)?;
        }
        if self.value.is_some() {
            out.serialize_field("value", REDACTED)?;
        }
        out.end()
    }
}

impl SecretSource {
    /// The secret in the environment variable `name`.
    pub fn from_env(name: impl Into<String>) -> Self {
        SecretSource {
            env: Some(name.into()),
            ..SecretSource::default()
        }
    }

    /// The secret in the file at `path`.
    pub fn from_file(path: impl Into<PathBuf>) -> Self {
        SecretSource {
            file: Some(path.into()),
            ..SecretSource::default()
        }
    }

    /// The secret itself (local development and tests).
    pub fn literal(secret: impl Into<String>) -> Self {
        SecretSource {
            value: Some(SecretString::from(secret.into())),
            ..SecretSource::default()
        }
    }

    /// Checks that exactly one source is given, and that it can name something.
    pub fn validate(&self) -> Result<(), String> {
        match (&self.env, &self.file, &self.value) {
            (Some(name), None, None) => {
                if name.is_empty() || name.contains(['=', '\0']) {
                    return Err(format!("env: {name:?} is not a variable name"));
                }
                Ok(())
            }
            (None, Some(path), None) if path.as_os_str().is_empty() => {
                Err("file: must not be empty".to_owned())
            }
            (None, Some(_), None) => Ok(()),
            (None, None, Some(value)) if value.expose_secret().trim().is_empty() => {
                Err("value: must not be empty".to_owned())
            }
            (None, None, Some(_)) => Ok(()),
            _ => Err("set exactly one of env, file, value".to_owned()),
        }
    }

    /// Reads the secret from the process environment, the file or the literal. The error names
    /// the source (the variable, the path), never the secret.
    pub fn read(&self) -> Result<SecretString, String> {
        self.read_with(|name| std::env::var(name).ok())
    }

    /// [`SecretSource::read`] with `env` standing in for the process environment (tests, or a
    /// caller that has already collected the variables).
    pub fn read_with(&self, env: impl Fn(&str) -> Option<String>) -> Result<SecretString, String> {
        self.validate()?;
        if let Some(name) = &self.env {
            return match env(name) {
                Some(value) if !value.trim().is_empty() => {
                    Ok(SecretString::from(value.trim().to_owned()))
                }
                Some(_) => Err(format!("environment variable {name} is empty")),
                None => Err(format!("environment variable {name} is not set")),
            };
        }
        if let Some(path) = &self.file {
            return read_secret_file(path);
        }
        match &self.value {
            Some(value) => Ok(SecretString::from(value.expose_secret().trim().to_owned())),
            None => Err("set exactly one of env, file, value".to_owned()),
        }
    }
}

fn read_secret_file(path: &Path) -> Result<SecretString, String> {
    // The io error says what went wrong (missing, not readable, not UTF-8), never the contents.
    let contents =
        std::fs::read_to_string(path).map_err(|err| format!("file {}: {err}", path.display()))?;
    let secret = SecretString::from(contents.trim().to_owned());
    // The untrimmed copy goes as soon as possible; `SecretString` zeroes its own on drop.
    drop(contents);
    if secret.expose_secret().is_empty() {
        return Err(format!("file {} is empty", path.display()));
    }
    Ok(secret)
}

/// How a writer authenticates to its destination (`[auth]` in its TOML file), tagged by `kind`.
///
/// ```toml
/// [auth]
/// kind = "static"
/// token = { env = "HUBSPOT_PRIVATE_APP_TOKEN" }
/// ```
///
/// ```toml
/// [auth]
/// kind = "oauth2"
/// token_url = "https://api.hubapi.com/oauth/v1/token"
/// client_id = "5f0c…"
/// client_secret = { env = "HUBSPOT_CLIENT_SECRET" }
/// refresh_ahead = "5m"
///
/// [auth.grant]
/// grant_type = "refresh_token"          # or "client_credentials", with an optional `scope`
/// refresh_token = { file = "/run/secrets/hubspot-refresh-token" }
/// ```
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", deny_unknown_fields)]
pub enum AuthConfig {
    /// A long-lived token sent as is (a HubSpot private-app token).
    #[serde(rename = "static")]
    Static {
        /// The token.
        token: SecretSource,
    },
    /// HTTP basic auth with a long-lived key as the password (a Mailchimp API key, with any
    /// username).
    #[serde(rename = "basic")]
    Basic {
        /// Sent as the basic-auth username; Mailchimp ignores it, so the default is `handoff`.
        #[serde(default = "default_basic_username")]
        username: String,
        /// The key.
        password: SecretSource,
    },
    /// Short-lived access tokens from an OAuth2 token endpoint, refreshed ahead of expiry and
    /// shared by every replica through Redis.
    #[serde(rename = "oauth2")]
    OAuth2 {
        /// The token endpoint, e.g. `https://api.hubapi.com/oauth/v1/token`.
        token_url: String,
        /// The app's client id (not a secret: it appears in install URLs).
        client_id: String,
        /// The app's client secret.
        client_secret: SecretSource,
        /// How the access token is obtained.
        grant: OAuthGrant,
        /// Refresh once less than this is left of the token's life (humantime; default 5 min, a
        /// sixth of HubSpot's 30). Tokens living less than three times this are refreshed with a
        /// third of their life left instead.
        #[serde(with = "humantime_serde", default = "default_refresh_ahead")]
        refresh_ahead: Duration,
    },
}

fn default_basic_username() -> String {
    "handoff".to_owned()
}

fn default_refresh_ahead() -> Duration {
    Duration::from_secs(5 * 60)
}

/// The OAuth2 grant, tagged by `grant_type` as in the token request itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "grant_type", rename_all = "snake_case", deny_unknown_fields)]
pub enum OAuthGrant {
    /// An app installed in a portal: the refresh token from the install exchanges for access
    /// tokens (HubSpot's public apps; its refresh tokens do not rotate).
    RefreshToken {
        /// The refresh token.
        refresh_token: SecretSource,
    },
    /// The app authenticates as itself with its client id and secret.
    ClientCredentials {
        /// Space-separated scopes to ask for; the app's defaults when absent.
        #[serde(default)]
        scope: Option<String>,
    },
}

impl AuthConfig {
    /// Checks what serde cannot: one source per secret, an http(s) token URL, non-empty ids and
    /// a positive `refresh_ahead`. Messages start with the key (`client_secret: …`).
    pub fn validate(&self) -> Result<(), String> {
        match self {
            AuthConfig::Static { token } => token.validate().map_err(|e| format!("token: {e}")),
            AuthConfig::Basic { username, password } => {
                if username.contains(':') {
                    return Err("username: must not contain ':'".to_owned());
                }
                password.validate().map_err(|e| format!("password: {e}"))
            }
            AuthConfig::OAuth2 {
                token_url,
                client_id,
                client_secret,
                grant,
                refresh_ahead,
            } => {
                parse_token_url(token_url).map_err(|e| format!("token_url: {e}"))?;
                if client_id.trim().is_empty() {
                    return Err("client_id: must not be empty".to_owned());
                }
                client_secret
                    .validate()
                    .map_err(|e| format!("client_secret: {e}"))?;
                match grant {
                    OAuthGrant::RefreshToken { refresh_token } => refresh_token
                        .validate()
                        .map_err(|e| format!("grant.refresh_token: {e}"))?,
                    OAuthGrant::ClientCredentials { scope: Some(scope) }
                        if scope.trim().is_empty() =>
                    {
                        return Err("grant.scope: must not be empty when given".to_owned());
                    }
                    OAuthGrant::ClientCredentials { .. } => {}
                }
                if refresh_ahead.is_zero() {
                    return Err("refresh_ahead: must be more than zero".to_owned());
                }
                Ok(())
            }
        }
    }
}

fn parse_token_url(url: &str) -> Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(format!("{url:?} must be an http(s) URL with a host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        // Credentials go in the form body; a URL is logged in too many places to hold them.
        return Err("must not carry credentials".to_owned());
    }
    Ok(parsed)
}

/// Why no token could be had.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The name or the [`AuthConfig`] is unusable (see [`AuthConfig::validate`]). Permanent.
    #[error("invalid credentials {name:?}: {reason}")]
    Config {
        /// The credentials' name.
        name: String,
        /// What is wrong, starting with the key.
        reason: String,
    },
    /// A secret could not be read: the variable is not set, the file is missing or empty.
    /// Permanent: fix the deployment.
    #[error("credentials {name:?}: {what} unavailable: {reason}")]
    MissingSecret {
        /// The credentials' name.
        name: String,
        /// Which secret: `token`, `client_secret`, `refresh_token`.
        what: &'static str,
        /// Where it was looked for (the variable, the path); never the secret.
        reason: String,
    },
    /// The token endpoint refused the request (a 4xx other than 408 and 429): a wrong client id
    /// or secret, a revoked refresh token, an unknown grant. Permanent until someone fixes it.
    #[error("token endpoint refused credentials {name:?}: HTTP {status}: {body}")]
    Refused {
        /// The credentials' name.
        name: String,
        /// The endpoint's HTTP status.
        status: u16,
        /// The start of its body, scrubbed of our secrets
        /// (HubSpot: `{"status":"BAD_CLIENT_SECRET",…}`).
        body: String,
    },
    /// The token endpoint could not be reached, timed out, answered 5xx, 408 or 429, or answered
    /// something that is not a token; or another replica's refresh did not finish in time.
    /// Transient.
    #[error("token endpoint unavailable for credentials {name:?}: {reason}")]
    Unavailable {
        /// The credentials' name.
        name: String,
        /// The endpoint's HTTP status, when it answered.
        status: Option<u16>,
        /// What happened.
        reason: String,
    },
    /// Redis, where the shared token lives, failed; see [`StoreError::is_transient`].
    #[error("credentials {name:?}: {source}")]
    Redis {
        /// The credentials' name.
        name: String,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// The destination rejected a static token, which cannot be refreshed. Permanent.
    #[error("credentials {name:?} were rejected by the destination and cannot be refreshed")]
    Rejected {
        /// The credentials' name.
        name: String,
    },
}

impl AuthError {
    /// True when trying again later may succeed (the endpoint or Redis was unavailable); false
    /// when a person has to fix something (configuration, secrets, a refused or rejected
    /// credential).
    pub fn is_transient(&self) -> bool {
        match self {
            AuthError::Unavailable { .. } => true,
            AuthError::Redis { source, .. } => source.is_transient(),
            AuthError::Config { .. }
            | AuthError::MissingSecret { .. }
            | AuthError::Refused { .. }
            | AuthError::Rejected { .. } => false,
        }
    }
}

/// The credentials of one destination account, ready to hand out bearer tokens. Cheap to clone;
/// clones share the cached token and the refresh.
#[derive(Clone)]
pub struct Credentials {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    kind: Kind,
}

enum Kind {
    Static(SecretString),
    Basic {
        username: String,
        password: SecretString,
    },
    OAuth(Box<OAuth>),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = f.debug_struct("Credentials");
        out.field("name", &self.inner.name);
        match &self.inner.kind {
            Kind::Static(_) => out.field("kind", &"static"),
            Kind::Basic { username, .. } => out.field("kind", &"basic").field("username", username),
            Kind::OAuth(oauth) => out
                .field("kind", &"oauth2")
                .field("token_url", &oauth.token_url.as_str())
                .field("client_id", &oauth.client_id)
                .field("key", &oauth.key),
        };
        out.finish_non_exhaustive()
    }
}

impl Credentials {
    /// Credentials called `name` (a config key such as `hubspot-main`: it names the Redis key and
    /// rate-limit keys, so it is never the secret, and has no `:` or whitespace) from `cfg`, with
    /// the shared token at `"{namespace}:auth:{name}"`. Reads the secrets now, so a missing
    /// variable or file fails here; does no network I/O. `http` is the writer's client (its
    /// connection pool and TLS settings); token requests add their own timeout.
    pub fn new(
        name: &str,
        cfg: &AuthConfig,
        redis: RedisHandle,
        namespace: &str,
        http: reqwest::Client,
    ) -> Result<Credentials, AuthError> {
        let invalid = |reason: String| AuthError::Config {
            name: name.to_owned(),
            reason,
        };
        if name.is_empty() || name.contains(':') || name.chars().any(char::is_whitespace) {
            return Err(invalid(
                "the name must be non-empty, without ':' or whitespace".to_owned(),
            ));
        }
        cfg.validate().map_err(invalid)?;
        let read = |what: &'static str, source: &SecretSource| {
            source.read().map_err(|reason| AuthError::MissingSecret {
                name: name.to_owned(),
                what,
                reason,
            })
        };
        let kind = match cfg {
            AuthConfig::Static { token } => Kind::Static(read("token", token)?),
            AuthConfig::Basic { username, password } => Kind::Basic {
                username: username.clone(),
                password: read("password", password)?,
            },
            AuthConfig::OAuth2 {
                token_url,
                client_id,
                client_secret,
                grant,
                refresh_ahead,
            } => {
                let (grant, refresh_token) = match grant {
                    OAuthGrant::RefreshToken { refresh_token } => (
                        Grant::RefreshToken,
                        Some(read("refresh_token", refresh_token)?),
                    ),
                    OAuthGrant::ClientCredentials { scope } => (
                        Grant::ClientCredentials {
                            scope: scope.clone(),
                        },
                        None,
                    ),
                };
                let key = format!("{namespace}:auth:{name}");
                Kind::OAuth(Box::new(OAuth {
                    token_url: parse_token_url(token_url).map_err(invalid)?,
                    client_id: client_id.clone(),
                    client_secret: read("client_secret", client_secret)?,
                    grant,
                    refresh_ahead: *refresh_ahead,
                    redis,
                    lock_key: format!("{key}:lock"),
                    key,
                    http,
                    local: Mutex::new(Local {
                        token: None,
                        refresh_token,
                        retry_at: None,
                    }),
                    flight: tokio::sync::Mutex::new(()),
                }))
            }
        };
        Ok(Credentials {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                kind,
            }),
        })
    }

    /// The credentials' name, for rate-limit keys and logs; never the secret.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The token to send now: the static token, or a shared OAuth access token with more than
    /// its refresh margin left (refreshing it first if needed, see the module doc).
    pub async fn bearer(&self) -> Result<SecretString, AuthError> {
        match &self.inner.kind {
            Kind::Static(token) => Ok(token.clone()),
            Kind::Basic { password, .. } => Ok(password.clone()),
            Kind::OAuth(oauth) => oauth.token(&self.inner.name, Want::Fresh).await,
        }
    }

    /// The `Authorization` header value that carries `secret` (from [`Credentials::bearer`] or
    /// [`Credentials::after_rejection`]): `Basic base64(username:key)` for basic auth, else
    /// `Bearer <token>`.
    pub fn header_value(&self, secret: &SecretString) -> SecretString {
        use base64::Engine as _;
        match &self.inner.kind {
            Kind::Basic { username, .. } => {
                let pair = format!("{username}:{}", secret.expose_secret());
                let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
                SecretString::from(format!("Basic {encoded}"))
            }
            Kind::Static(_) | Kind::OAuth(_) => {
                SecretString::from(format!("Bearer {}", secret.expose_secret()))
            }
        }
    }

    /// After the destination answered 401 to `rejected`: a token other than `rejected`, from one
    /// refresh shared by every task and replica that saw the same 401 (if the token was already
    /// replaced, the newer one, without a new refresh). A static token cannot be refreshed:
    /// [`AuthError::Rejected`]. Call it once per request; a 401 to the token it returns means
    /// the credential itself is no good (revoked app, missing scope), not that it was stale.
    pub async fn after_rejection(
        &self,
        rejected: &SecretString,
    ) -> Result<SecretString, AuthError> {
        match &self.inner.kind {
            Kind::Static(_) | Kind::Basic { .. } => Err(AuthError::Rejected {
                name: self.inner.name.clone(),
            }),
            Kind::OAuth(oauth) => {
                oauth.forget(rejected);
                oauth
                    .token(&self.inner.name, Want::Replacing(rejected))
                    .await
            }
        }
    }
}

/// An OAuth2 credential's settings and its cached token.
struct OAuth {
    token_url: reqwest::Url,
    client_id: String,
    client_secret: SecretString,
    grant: Grant,
    refresh_ahead: Duration,
    redis: RedisHandle,
    /// `"{ns}:auth:{name}"`, the shared token.
    key: String,
    /// `"{ns}:auth:{name}:lock"`, the refresh lock.
    lock_key: String,
    http: reqwest::Client,
    /// The token this process uses, read on every call (never held across an await).
    local: Mutex<Local>,
    /// Held while this process looks for or makes a new token, so concurrent callers share one
    /// refresh.
    flight: tokio::sync::Mutex<()>,
}

enum Grant {
    RefreshToken,
    ClientCredentials { scope: Option<String> },
}

struct Local {
    token: Option<Token>,
    /// The refresh token of the `refresh_token` grant (replaced if the endpoint rotates it).
    refresh_token: Option<SecretString>,
    /// After a failed refresh: no new attempt before this while the old token is still valid.
    retry_at: Option<SystemTime>,
}

/// An access token and when it runs out.
#[derive(Clone)]
struct Token {
    access: SecretString,
    expires_at: SystemTime,
    lifetime: Duration,
}

impl Token {
    fn left(&self, now: SystemTime) -> Duration {
        self.expires_at.duration_since(now).unwrap_or_default()
    }

    /// Less than this left and the token is not handed out at all.
    fn margin(&self) -> Duration {
        EXPIRY_MARGIN.min(self.lifetime / 10)
    }

    /// Good to send, though perhaps due for a refresh.
    fn is_usable(&self, now: SystemTime) -> bool {
        self.left(now) > self.margin()
    }

    /// Not yet due for a refresh: more than `min(refresh_ahead, lifetime / 3)` left.
    fn is_fresh(&self, now: SystemTime, refresh_ahead: Duration) -> bool {
        let due = refresh_ahead.min(self.lifetime / 3).max(self.margin());
        self.left(now) > due
    }

    fn is(&self, other: &SecretString) -> bool {
        self.access.expose_secret() == other.expose_secret()
    }
}

/// The shared token's shape in Redis.
#[derive(Deserialize)]
struct StoredToken {
    access_token: SecretString,
    expires_at_ms: u64,
    lifetime_ms: u64,
}

/// The token endpoint's answer (RFC 6749 §5.1; HubSpot's `POST /oauth/v1/token`).
#[derive(Deserialize)]
struct TokenResponse {
    access_token: SecretString,
    #[serde(default)]
    refresh_token: Option<SecretString>,
    expires_in: u64,
}

/// What the caller needs.
#[derive(Clone, Copy)]
enum Want<'a> {
    /// A token not yet due for a refresh (an older still-valid one will do if the refresh fails).
    Fresh,
    /// Any valid token but this one, which the destination rejected.
    Replacing(&'a SecretString),
}

impl Want<'_> {
    fn accepts(&self, token: &Token, now: SystemTime, refresh_ahead: Duration) -> bool {
        match self {
            Want::Fresh => token.is_fresh(now, refresh_ahead),
            Want::Replacing(rejected) => !token.is(rejected) && token.is_usable(now),
        }
    }
}

impl OAuth {
    fn local(&self) -> std::sync::MutexGuard<'_, Local> {
        // A panic while holding this lock cannot leave a half-written token behind (every write
        // is one assignment), so a poisoned lock is used as is.
        self.local.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The local token if it is what the caller wants.
    fn local_accepted(&self, want: Want<'_>, now: SystemTime) -> Option<SecretString> {
        let local = self.local();
        let token = local.token.as_ref()?;
        want.accepts(token, now, self.refresh_ahead)
            .then(|| token.access.clone())
    }

    /// The local token if it is still valid, due for a refresh or not.
    fn local_usable(&self, now: SystemTime) -> Option<Token> {
        let local = self.local();
        local.token.clone().filter(|t| t.is_usable(now))
    }

    fn remember(&self, token: &Token) {
        let mut local = self.local();
        local.token = Some(token.clone());
        local.retry_at = None;
    }

    /// Drops `rejected` from the local cache so no caller gets it again.
    fn forget(&self, rejected: &SecretString) {
        let mut local = self.local();
        if local.token.as_ref().is_some_and(|t| t.is(rejected)) {
            local.token = None;
        }
    }

    async fn token(&self, name: &str, want: Want<'_>) -> Result<SecretString, AuthError> {
        if let Some(token) = self.local_accepted(want, SystemTime::now()) {
            return Ok(token);
        }
        let _flight = match self.flight.try_lock() {
            Ok(guard) => guard,
            Err(_) => {
                // Another task of this process is already on it; a still-valid token need not
                // wait for it.
                if let (Want::Fresh, Some(token)) = (want, self.local_usable(SystemTime::now())) {
                    return Ok(token.access);
                }
                self.flight.lock().await
            }
        };
        let now = SystemTime::now();
        if let Some(token) = self.local_accepted(want, now) {
            return Ok(token);
        }
        if let Want::Fresh = want {
            let retry_at = self.local().retry_at;
            if let (Some(at), Some(token)) = (retry_at, self.local_usable(now))
                && now < at
            {
                return Ok(token.access);
            }
        }
        self.shared(name, want).await
    }

    /// Under the flight lock: the shared token if it will do, else one refresh across replicas.
    async fn shared(&self, name: &str, want: Want<'_>) -> Result<SecretString, AuthError> {
        let redis_error = |source| AuthError::Redis {
            name: name.to_owned(),
            source,
        };
        // With Redis down, a still-valid token is better than no delivery.
        let fallback_on = |err: AuthError, fallback: Option<Token>| match (want, fallback) {
            (Want::Fresh, Some(token)) => {
                warn!(
                    credentials = %name,
                    error = %err,
                    "Could not refresh the access token; using the current one until it expires."
                );
                Ok(token.access)
            }
            _ => Err(err),
        };
        let local = self.local_usable(SystemTime::now());
        let stored = match self.load(name).await {
            Ok(stored) => stored,
            Err(err) => return fallback_on(redis_error(err), local),
        };
        let now = SystemTime::now();
        if let Some(token) = stored
            .as_ref()
            .filter(|t| want.accepts(t, now, self.refresh_ahead))
        {
            self.remember(token);
            return Ok(token.access.clone());
        }
        let fallback = match want {
            Want::Replacing(_) => None,
            Want::Fresh => [local, stored.filter(|t| t.is_usable(now))]
                .into_iter()
                .flatten()
                .max_by_key(|t| t.expires_at),
        };
        let wait = if fallback.is_some() {
            WAIT_WITH_FALLBACK
        } else {
            LOCK_TTL + Duration::from_secs(1)
        };
        let deadline = tokio::time::Instant::now() + wait;
        let owner = format!("{:032x}", rand::random::<u128>());
        loop {
            match self.try_lock(&owner).await {
                Ok(true) => return self.refresh_locked(name, want, &owner, fallback).await,
                Ok(false) => {}
                Err(err) => return fallback_on(redis_error(err), fallback),
            }
            tokio::time::sleep(POLL).await;
            match self.load(name).await {
                Ok(Some(token)) if want.accepts(&token, SystemTime::now(), self.refresh_ahead) => {
                    self.remember(&token);
                    return Ok(token.access);
                }
                Ok(_) => {}
                Err(err) => return fallback_on(redis_error(err), fallback),
            }
            if tokio::time::Instant::now() >= deadline {
                let err = AuthError::Unavailable {
                    name: name.to_owned(),
                    status: None,
                    reason: format!(
                        "another replica's token refresh did not finish within {wait:?}"
                    ),
                };
                return match fallback {
                    // The refresh is someone else's and still under way: no warning needed.
                    Some(token) => Ok(token.access),
                    None => Err(err),
                };
            }
        }
    }

    /// Holding the Redis lock: makes sure nobody finished meanwhile, asks the endpoint, shares
    /// the token and releases the lock.
    async fn refresh_locked(
        &self,
        name: &str,
        want: Want<'_>,
        owner: &str,
        fallback: Option<Token>,
    ) -> Result<SecretString, AuthError> {
        match self.load(name).await {
            Ok(Some(token)) if want.accepts(&token, SystemTime::now(), self.refresh_ahead) => {
                // A lock that cannot be released expires by itself within `LOCK_TTL`.
                self.release(owner, None).await.ok();
                self.remember(&token);
                return Ok(token.access);
            }
            Ok(_) => {}
            Err(err) => {
                // Nothing shared can be read; refreshing anyway would only add to a storm.
                self.release(owner, None).await.ok();
                let err = AuthError::Redis {
                    name: name.to_owned(),
                    source: err,
                };
                return match (want, fallback) {
                    (Want::Fresh, Some(token)) => Ok(token.access),
                    _ => Err(err),
                };
            }
        }
        match self.request(name).await {
            Ok(token) => {
                if let Err(err) = self.release(owner, Some(&token)).await {
                    warn!(
                        credentials = %name,
                        error = %err,
                        "Could not share the new access token in Redis; other replicas will refresh their own."
                    );
                }
                self.remember(&token);
                info!(
                    credentials = %name,
                    expires_in_s = token.lifetime.as_secs(),
                    "Refreshed the access token."
                );
                Ok(token.access)
            }
            Err(err) => {
                self.release(owner, None).await.ok();
                match (want, fallback) {
                    (Want::Fresh, Some(token)) => {
                        let now = SystemTime::now();
                        let pause = RETRY_FAILED_REFRESH.min(token.left(now) / 2);
                        self.local().retry_at = Some(now + pause);
                        warn!(
                            credentials = %name,
                            error = %err,
                            "Could not refresh the access token; using the current one until it expires."
                        );
                        Ok(token.access)
                    }
                    _ => Err(err),
                }
            }
        }
    }

    /// The shared token, if there is a readable one.
    async fn load(&self, name: &str) -> Result<Option<Token>, StoreError> {
        let key = self.key.clone();
        let raw: Option<String> = self
            .redis
            .run(|mut conn| async move { redis::cmd("GET").arg(key).query_async(&mut conn).await })
            .await?;
        let Some(raw) = raw else { return Ok(None) };
        match serde_json::from_str::<StoredToken>(&raw) {
            Ok(stored) => Ok(Some(Token {
                access: stored.access_token,
                expires_at: SystemTime::UNIX_EPOCH + Duration::from_millis(stored.expires_at_ms),
                lifetime: Duration::from_millis(stored.lifetime_ms),
            })),
            Err(err) => {
                // Another shape (an older version, a hand edit): ignored, and replaced by the
                // next refresh. serde_json's message names the position, not the contents.
                warn!(
                    credentials = %name,
                    key = %self.key,
                    error = %err,
                    "Ignoring an unreadable shared access token."
                );
                Ok(None)
            }
        }
    }

    /// Takes the refresh lock if nobody holds it.
    async fn try_lock(&self, owner: &str) -> Result<bool, StoreError> {
        let (key, owner) = (self.lock_key.clone(), owner.to_owned());
        let ttl_ms = u64::try_from(LOCK_TTL.as_millis()).unwrap_or(u64::MAX);
        let answer: redis::Value = self
            .redis
            .run(|mut conn| async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg(owner)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl_ms)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(!matches!(answer, redis::Value::Nil))
    }

    /// Stores `token` (if any) and releases the lock if it is still `owner`'s.
    async fn release(&self, owner: &str, token: Option<&Token>) -> Result<(), StoreError> {
        let (json, ttl_ms) = match token {
            Some(token) => {
                let left = token.left(SystemTime::now());
                let expires_at_ms = token
                    .expires_at
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis();
                let json = serde_json::json!({
                    "access_token": token.access.expose_secret(),
                    "expires_at_ms": u64::try_from(expires_at_ms).unwrap_or(u64::MAX),
                    "lifetime_ms": u64::try_from(token.lifetime.as_millis()).unwrap_or(u64::MAX),
                })
                .to_string();
                let ttl_ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
                // A token with nothing left is not worth sharing.
                if ttl_ms == 0 {
                    (String::new(), 0)
                } else {
                    (json, ttl_ms)
                }
            }
            None => (String::new(), 0),
        };
        let mut invocation = AUTH_RELEASE.key(&self.key);
        invocation
            .key(&self.lock_key)
            .arg(owner)
            .arg(json)
            .arg(ttl_ms);
        let _ours: i64 = self
            .redis
            .run(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await?;
        Ok(())
    }

    /// One request to the token endpoint.
    async fn request(&self, name: &str) -> Result<Token, AuthError> {
        let unavailable = |status: Option<u16>, reason: String| AuthError::Unavailable {
            name: name.to_owned(),
            status,
            reason,
        };
        let refresh_token = self.local().refresh_token.clone();
        let mut form: Vec<(&str, &str)> = vec![
            ("client_id", &self.client_id),
            ("client_secret", self.client_secret.expose_secret()),
        ];
        match (&self.grant, &refresh_token) {
            (Grant::RefreshToken, Some(refresh_token)) => {
                form.push(("grant_type", "refresh_token"));
                form.push(("refresh_token", refresh_token.expose_secret()));
            }
            (Grant::RefreshToken, None) => {
                // Unreachable: `Credentials::new` reads the refresh token of this grant.
                return Err(AuthError::Config {
                    name: name.to_owned(),
                    reason: "grant.refresh_token: missing".to_owned(),
                });
            }
            (Grant::ClientCredentials { scope }, _) => {
                form.push(("grant_type", "client_credentials"));
                if let Some(scope) = scope {
                    form.push(("scope", scope));
                }
            }
        }
        // The token's life is counted from before the request, so we never think it lives longer
        // than the endpoint does.
        let started = SystemTime::now();
        let response = self
            .http
            .post(self.token_url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(|err| unavailable(None, error_chain(&err)))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|err| unavailable(Some(status.as_u16()), error_chain(&err)))?;
        if !status.is_success() {
            let body = self.scrub(&body, refresh_token.as_ref());
            let code = status.as_u16();
            if status.is_server_error() || code == 408 || code == 429 {
                return Err(unavailable(Some(code), format!("HTTP {code}: {body}")));
            }
            return Err(AuthError::Refused {
                name: name.to_owned(),
                status: code,
                body,
            });
        }
        let answer: TokenResponse = serde_json::from_slice(&body).map_err(|err| {
            // Not `err` itself: for a wrongly typed field serde_json quotes the value.
            unavailable(
                Some(status.as_u16()),
                format!(
                    "the answer is not a token response ({:?} at line {} column {})",
                    err.classify(),
                    err.line(),
                    err.column()
                ),
            )
        })?;
        if answer.access_token.expose_secret().is_empty() || answer.expires_in == 0 {
            return Err(unavailable(
                Some(status.as_u16()),
                "the answer has an empty access_token or expires_in 0".to_owned(),
            ));
        }
        if let Some(rotated) = answer.refresh_token
            && refresh_token
                .as_ref()
                .is_some_and(|old| old.expose_secret() != rotated.expose_secret())
        {
            warn!(
                credentials = %name,
                "The token endpoint rotated the refresh token; this process uses the new one, other replicas keep theirs."
            );
            self.local().refresh_token = Some(rotated);
        }
        let lifetime = Duration::from_secs(answer.expires_in).min(MAX_LIFETIME);
        Ok(Token {
            access: answer.access_token,
            expires_at: started + lifetime,
            lifetime,
        })
    }

    /// The start of an error body, as text, with our own secrets blanked out (an endpoint may
    /// echo what it was sent).
    fn scrub(&self, body: &[u8], refresh_token: Option<&SecretString>) -> String {
        let mut text: String = String::from_utf8_lossy(body)
            .chars()
            .take(MAX_BODY_CHARS)
            .collect();
        for secret in [Some(&self.client_secret), refresh_token]
            .into_iter()
            .flatten()
        {
            let secret = secret.expose_secret();
            if !secret.is_empty() {
                text = text.replace(secret, REDACTED);
            }
        }
        text.trim().to_owned()
    }
}

/// An error and its causes on one line: reqwest's own message ("error sending request") says
/// little without them.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config from JSON, which goes through the same serde model as the TOML file and keeps
    /// the crate free of a TOML dependency.
    fn parse(json: &str) -> Result<AuthConfig, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn configs_parse_and_validate() {
        let cfg = parse(
            r#"{"kind":"oauth2","token_url":"https://api.hubapi.com/oauth/v1/token",
                "client_id":"app","client_secret":{"env":"HS_SECRET"},
                "grant":{"grant_type":"refresh_token","refresh_token":{"file":"/run/secrets/rt"}}}"#,
        )
        .expect("valid");
        assert_eq!(cfg.validate(), Ok(()));
        let AuthConfig::OAuth2 { refresh_ahead, .. } = &cfg else {
            panic!("oauth2 expected: {cfg:?}");
        };
        assert_eq!(*refresh_ahead, Duration::from_secs(300));
        let cfg = parse(
            r#"{"kind":"oauth2","token_url":"http://127.0.0.1:8090/oauth/v1/token",
                "client_id":"app","client_secret":{"value":"s"},"refresh_ahead":"30s",
                "grant":{"grant_type":"client_credentials","scope":"crm.objects.contacts.write"}}"#,
        )
        .expect("valid");
        assert_eq!(cfg.validate(), Ok(()));
        let cfg = parse(r#"{"kind":"static","token":{"value":"pat-1"}}"#).expect("valid");
        assert_eq!(cfg.validate(), Ok(()));
        // Unknown kinds, grants and keys are refused by serde.
        for bad in [
            r#"{"kind":"basic","token":{"value":"x"}}"#,
            r#"{"kind":"static","token":{"value":"x"},"extra":1}"#,
            r#"{"kind":"static","token":{"value":"x","pem":"y"}}"#,
            r#"{"kind":"oauth2","token_url":"https://x/t","client_id":"a","client_secret":{"value":"s"},
                "grant":{"grant_type":"password"}}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn validation_names_the_key() {
        let oauth = |url: &str, id: &str, secret: SecretSource, grant: OAuthGrant, ahead: u64| {
            AuthConfig::OAuth2 {
                token_url: url.to_owned(),
                client_id: id.to_owned(),
                client_secret: secret,
                grant,
                refresh_ahead: Duration::from_secs(ahead),
            }
        };
        let cc = || OAuthGrant::ClientCredentials { scope: None };
        let s = || SecretSource::literal("s");
        let url = "https://api.hubapi.com/oauth/v1/token";
        let rows: Vec<(AuthConfig, &str)> = vec![
            (
                AuthConfig::Static {
                    token: SecretSource::default(),
                },
                "token: set exactly one",
            ),
            (
                AuthConfig::Static {
                    token: SecretSource {
                        env: Some("A".into()),
                        file: Some("/f".into()),
                        value: None,
                    },
                },
                "token: set exactly one",
            ),
            (
                AuthConfig::Static {
                    token: SecretSource::from_env(""),
                },
                "token: env:",
            ),
            (
                AuthConfig::Static {
                    token: SecretSource::literal(" "),
                },
                "token: value:",
            ),
            (oauth("ftp://x/t", "a", s(), cc(), 60), "token_url:"),
            (oauth("not a url", "a", s(), cc(), 60), "token_url:"),
            (oauth("https://u:p@x/t", "a", s(), cc(), 60), "token_url:"),
            (oauth(url, " ", s(), cc(), 60), "client_id:"),
            (
                oauth(url, "a", SecretSource::default(), cc(), 60),
                "client_secret:",
            ),
            (
                oauth(
                    url,
                    "a",
                    s(),
                    OAuthGrant::RefreshToken {
                        refresh_token: SecretSource::from_file(""),
                    },
                    60,
                ),
                "grant.refresh_token: file:",
            ),
            (
                oauth(
                    url,
                    "a",
                    s(),
                    OAuthGrant::ClientCredentials {
                        scope: Some(" ".into()),
                    },
                    60,
                ),
                "grant.scope:",
            ),
            (oauth(url, "a", s(), cc(), 0), "refresh_ahead:"),
        ];
        for (cfg, want) in rows {
            let err = cfg.validate().expect_err("invalid");
            assert!(err.starts_with(want), "{cfg:?}: {err}");
        }
    }

    #[test]
    fn secrets_are_read_from_their_source_and_never_shown() {
        let env = |name: &str| match name {
            "SET" => Some("  from-env\n".to_owned()),
            "EMPTY" => Some(" ".to_owned()),
            _ => None,
        };
        let read =
            |source: SecretSource| source.read_with(env).map(|s| s.expose_secret().to_owned());
        assert_eq!(read(SecretSource::from_env("SET")), Ok("from-env".into()));
        assert_eq!(
            read(SecretSource::from_env("UNSET")),
            Err("environment variable UNSET is not set".into())
        );
        assert_eq!(
            read(SecretSource::from_env("EMPTY")),
            Err("environment variable EMPTY is empty".into())
        );
        assert_eq!(read(SecretSource::literal("lit")), Ok("lit".into()));

        let dir = std::env::temp_dir().join(format!("handoff-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("secret");
        std::fs::write(&file, "from-file\n").expect("write");
        assert_eq!(read(SecretSource::from_file(&file)), Ok("from-file".into()));
        std::fs::write(&file, "\n").expect("write");
        let err = read(SecretSource::from_file(&file)).expect_err("empty");
        assert!(err.ends_with("is empty"), "{err}");
        let missing = dir.join("missing");
        let err = read(SecretSource::from_file(&missing)).expect_err("missing");
        assert!(err.contains("missing"), "{err}");
        std::fs::remove_dir_all(&dir).ok();

        let source = SecretSource::literal("hunter2-very-secret");
        assert!(!format!("{source:?}").contains("hunter2"));
        let json = serde_json::to_string(&source).expect("serialize");
        assert_eq!(json, r#"{"value":"[redacted]"}"#);
        let json = serde_json::to_string(&SecretSource::from_env("X")).expect("serialize");
        assert_eq!(json, r#"{"env":"X"}"#);
    }

    #[test]
    fn tokens_are_due_ahead_of_expiry() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_824_000);
        let token = |left_ms: u64, lifetime_s: u64| Token {
            access: SecretString::from("t"),
            expires_at: now + Duration::from_millis(left_ms),
            lifetime: Duration::from_secs(lifetime_s),
        };
        let ahead = Duration::from_secs(300);
        // (ms left, lifetime s, fresh, usable)
        let rows: &[(u64, u64, bool, bool)] = &[
            // HubSpot's 30 min tokens: due with 5 min left, handed out until the last second.
            (1_800_000, 1_800, true, true),
            (300_001, 1_800, true, true),
            (300_000, 1_800, false, true),
            (1_001, 1_800, false, true),
            (1_000, 1_800, false, false),
            (0, 1_800, false, false),
            // 3 s tokens: due with a third left, handed out until the last 300 ms.
            (1_001, 3, true, true),
            (1_000, 3, false, true),
            (301, 3, false, true),
            (300, 3, false, false),
        ];
        for &(left, lifetime, fresh, usable) in rows {
            let t = token(left, lifetime);
            assert_eq!(t.is_fresh(now, ahead), fresh, "{left} ms of {lifetime} s");
            assert_eq!(t.is_usable(now), usable, "{left} ms of {lifetime} s");
        }
    }

    #[test]
    fn errors_classify() {
        let name = || "hs".to_owned();
        assert!(
            AuthError::Unavailable {
                name: name(),
                status: Some(503),
                reason: "x".into()
            }
            .is_transient()
        );
        assert!(
            AuthError::Redis {
                name: name(),
                source: StoreError::Timeout(Duration::from_secs(1))
            }
            .is_transient()
        );
        for permanent in [
            AuthError::Rejected { name: name() },
            AuthError::Refused {
                name: name(),
                status: 400,
                body: String::new(),
            },
            AuthError::MissingSecret {
                name: name(),
                what: "token",
                reason: String::new(),
            },
            AuthError::Config {
                name: name(),
                reason: String::new(),
            },
        ] {
            assert!(!permanent.is_transient(), "{permanent}");
        }
    }

    #[tokio::test]
    async fn basic_auth_sends_the_key_as_the_password_and_cannot_be_refreshed() {
        let cfg: AuthConfig =
            serde_json::from_str(r#"{"kind":"basic","password":{"value":"key-us21"}}"#)
                .expect("valid");
        let redis = RedisHandle::new(&handoff_idempotency::RedisConfig::default()).expect("url");
        let creds = Credentials::new("mailchimp", &cfg, redis, "ns", reqwest::Client::new())
            .expect("credentials");
        let secret = creds.bearer().await.expect("the key");
        assert_eq!(secret.expose_secret(), "key-us21");
        // base64("handoff:key-us21")
        assert_eq!(
            creds.header_value(&secret).expose_secret(),
            "Basic aGFuZG9mZjprZXktdXMyMQ=="
        );
        assert!(!format!("{creds:?}").contains("key-us21"));
        assert!(matches!(
            creds.after_rejection(&secret).await,
            Err(AuthError::Rejected { .. })
        ));
        let bad = AuthConfig::Basic {
            username: "a:b".to_owned(),
            password: SecretSource::literal("k"),
        };
        assert_eq!(
            bad.validate(),
            Err("username: must not contain ':'".to_owned())
        );
    }
}
