//! `[mailchimp]`: the API keys the sandbox accepts, the audiences (lists) that exist, and the
//! simultaneous-connection limit per key.

use handoff_kit::config::ConfigError;
use serde::{Deserialize, Serialize};

/// The Mailchimp stand-in's settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MailchimpConfig {
    /// API keys accepted as the basic-auth password (any username). Real keys look like
    /// `<32 hex>-us21`; the datacenter suffix is not checked against the host here.
    pub api_keys: Vec<String>,
    /// Audience ids that exist; any other `list_id` answers 404.
    pub lists: Vec<String>,
    /// Simultaneous requests in flight per API key; Mailchimp allows 10 and answers the 11th 429.
    pub max_connections: u32,
}

impl Default for MailchimpConfig {
    fn default() -> Self {
        MailchimpConfig {
            api_keys: vec!["sandbox-key-us1".to_owned()],
            lists: vec!["sandbox-list".to_owned()],
            max_connections: 10,
        }
    }
}

impl MailchimpConfig {
    /// Checks what serde cannot: a key and a list to use, and a positive connection limit.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.api_keys.is_empty() || self.api_keys.iter().any(String::is_empty) {
            return Err(ConfigError::invalid(
                "mailchimp.api_keys",
                "must be a non-empty list of non-empty keys",
            ));
        }
        if self.lists.is_empty() || self.lists.iter().any(String::is_empty) {
            return Err(ConfigError::invalid(
                "mailchimp.lists",
                "must be a non-empty list of non-empty list ids",
            ));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::invalid(
                "mailchimp.max_connections",
                "must be positive",
            ));
        }
        Ok(())
    }
}
