//! `[hubspot]`: tokens, quota, OAuth clients, and the schema the sandbox enforces per object type
//! (which properties exist, which are unique, which have fixed options).

use std::collections::BTreeMap;
use std::time::Duration;

use handoff_kit::config::ConfigError;
use serde::{Deserialize, Serialize};

use super::store::ObjectType;
use crate::ratelimit::RateLimitConfig;

/// The HubSpot stand-in's settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HubSpotConfig {
    /// Private-app tokens accepted as `Authorization: Bearer <token>`.
    pub tokens: Vec<String>,
    /// The quota per token (per OAuth client for issued tokens).
    pub rate_limit: RateLimitConfig,
    pub oauth: OAuthConfig,
    /// Shown in validation bodies (`portalId`), as HubSpot does.
    pub portal_id: u64,
    /// Properties with these prefixes are accepted on every type, as custom properties the
    /// portal defined (`handoff_external_id`, `handoff_event_id`, …).
    pub custom_property_prefixes: Vec<String>,
    /// HubSpot's search index lags writes by a few seconds; a record is found by search only this
    /// long after it was created. Zero by default so tests are not slowed down.
    #[serde(with = "humantime_serde")]
    pub search_delay: Duration,
    pub contacts: ObjectTypeConfig,
    pub companies: ObjectTypeConfig,
    pub deals: ObjectTypeConfig,
    pub tickets: ObjectTypeConfig,
}

impl Default for HubSpotConfig {
    fn default() -> Self {
        HubSpotConfig {
            tokens: vec!["pat-local-dev".to_owned()],
            rate_limit: RateLimitConfig::default(),
            oauth: OAuthConfig::default(),
            portal_id: 20_260_319,
            custom_property_prefixes: vec!["handoff_".to_owned()],
            search_delay: Duration::ZERO,
            contacts: ObjectTypeConfig::default(),
            companies: ObjectTypeConfig::default(),
            deals: ObjectTypeConfig::default(),
            tickets: ObjectTypeConfig::default(),
        }
    }
}

/// The OAuth2 token endpoint (`POST /oauth/v1/token`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OAuthConfig {
    pub clients: Vec<OAuthClient>,
    /// `expires_in` of issued access tokens; HubSpot's is 30 minutes. Short in tests.
    #[serde(with = "humantime_serde")]
    pub access_token_ttl: Duration,
}

impl Default for OAuthConfig {
    fn default() -> Self {
        OAuthConfig {
            clients: vec![OAuthClient {
                client_id: "sandbox-client".to_owned(),
                client_secret: "sandbox-secret".to_owned(),
                refresh_tokens: vec!["sandbox-refresh-token".to_owned()],
            }],
            access_token_ttl: Duration::from_secs(1800),
        }
    }
}

/// One OAuth app.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthClient {
    pub client_id: String,
    pub client_secret: String,
    /// Refresh tokens this client may exchange (`grant_type=refresh_token`); HubSpot's do not
    /// rotate, so the same one is handed back.
    #[serde(default)]
    pub refresh_tokens: Vec<String>,
}

/// The schema of one object type. Absent lists take the defaults below.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ObjectTypeConfig {
    /// Properties that exist (besides the custom prefixes); default [`DEFAULT_PROPERTIES`].
    pub properties: Option<Vec<String>>,
    /// Properties whose values are unique across the type (HubSpot's "unique value" custom
    /// properties); a second create with the same value is a 409. Contacts' `email` is always
    /// unique, as in HubSpot.
    pub unique: Option<Vec<String>>,
    /// Enumeration properties and their allowed values; default [`default_options`].
    pub options: Option<BTreeMap<String, Vec<String>>>,
}

/// What a CRM writer needs, on every type.
pub const DEFAULT_PROPERTIES: &[&str] = &[
    "email",
    "firstname",
    "lastname",
    "phone",
    "company",
    "jobtitle",
    "country",
    "lifecyclestage",
    "hubspot_owner_id",
    "hs_lead_status",
    "plan",
    "dealname",
    "dealstage",
    "pipeline",
    "amount",
    "closedate",
    "subject",
    "content",
    "hs_pipeline",
    "hs_pipeline_stage",
    "hs_ticket_priority",
    "name",
    "domain",
    "industry",
];

/// HubSpot's built-in options for the enumerations a writer sets.
pub fn default_options() -> BTreeMap<String, Vec<String>> {
    let list = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    BTreeMap::from([
        (
            "lifecyclestage".to_owned(),
            list(&[
                "subscriber",
                "lead",
                "marketingqualifiedlead",
                "salesqualifiedlead",
                "opportunity",
                "customer",
                "evangelist",
                "other",
            ]),
        ),
        (
            "dealstage".to_owned(),
            list(&[
                "appointmentscheduled",
                "qualifiedtobuy",
                "presentationscheduled",
                "decisionmakerboughtin",
                "contractsent",
                "closedwon",
                "closedlost",
            ]),
        ),
        (
            "hs_ticket_priority".to_owned(),
            list(&["LOW", "MEDIUM", "HIGH", "URGENT"]),
        ),
        (
            "hs_lead_status".to_owned(),
            list(&[
                "NEW",
                "OPEN",
                "IN_PROGRESS",
                "OPEN_DEAL",
                "UNQUALIFIED",
                "ATTEMPTED_TO_CONTACT",
                "CONNECTED",
                "BAD_TIMING",
            ]),
        ),
    ])
}

/// Default unique properties per type: the idempotency keys a writer creates with.
pub fn default_unique(ty: ObjectType) -> Vec<String> {
    let v: &[&str] = match ty {
        ObjectType::Contacts => &["email", "handoff_external_id"],
        ObjectType::Companies => &["handoff_external_id", "handoff_event_id"],
        ObjectType::Deals => &["handoff_deal_id", "handoff_event_id"],
        ObjectType::Tickets => &["handoff_ticket_key", "handoff_event_id"],
    };
    v.iter().map(|s| (*s).to_owned()).collect()
}

impl HubSpotConfig {
    /// The schema entry for `ty`.
    pub fn object(&self, ty: ObjectType) -> &ObjectTypeConfig {
        match ty {
            ObjectType::Contacts => &self.contacts,
            ObjectType::Companies => &self.companies,
            ObjectType::Deals => &self.deals,
            ObjectType::Tickets => &self.tickets,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self
            .tokens
            .iter()
            .any(|t| t.trim().is_empty() || t.contains(' '))
        {
            return Err(ConfigError::invalid(
                "hubspot.tokens",
                "tokens must be non-empty and without spaces",
            ));
        }
        if self.rate_limit.requests == 0 || self.rate_limit.per.is_zero() {
            return Err(ConfigError::invalid(
                "hubspot.rate_limit",
                "requests and per must be positive",
            ));
        }
        if self.oauth.access_token_ttl.is_zero() {
            return Err(ConfigError::invalid(
                "hubspot.oauth.access_token_ttl",
                "must be positive",
            ));
        }
        for ty in ObjectType::ALL {
            let o = self.object(ty);
            if let (Some(props), Some(unique)) = (&o.properties, &o.unique) {
                for u in unique {
                    let custom = self
                        .custom_property_prefixes
                        .iter()
                        .any(|p| u.starts_with(p.as_str()));
                    if !custom && !props.contains(u) {
                        return Err(ConfigError::invalid(
                            &format!("hubspot.{}.unique", ty.as_str()),
                            format!("{u:?} is not one of the type's properties"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}
