//! [`OwnershipConfig`]: which system owns which destination field, so a writer never overwrites a
//! value that another system is the source of truth for.
//!
//! Per destination (`"hubspot"`, ...) a table maps a field name to its owner system (`"crm"`,
//! `"marketing"`, `"billing"`, ...). [`OwnershipConfig::writable`] splits the properties an event
//! would write: a field owned by a system other than the event's writer is skipped (and returned,
//! so the caller can count it); a field the writer owns, or that nobody owns, is written. The
//! destination's own system (`"crm"` for HubSpot) is never the writer of a pipeline event, so
//! the fields it owns (the record owner, the lead status) are never overwritten.
//!
//! Pure: no I/O, no clock.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The field-ownership tables (`[ownership]` in a writer's TOML file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OwnershipConfig {
    /// Destination name → (field name → owner system). A configured `destinations` table replaces
    /// the defaults as a whole rather than merging with them, so the file alone says which
    /// fields are protected. The default protects HubSpot's fields:
    ///
    /// - `crm`: `hubspot_owner_id` and `hs_lead_status`, the record owner and the sales stage of
    ///   working a lead, which sales people set by hand in the CRM (the deal stage is not here:
    ///   the pipeline's events, a conversion or a stage change, are what move deals);
    /// - `marketing`: `hs_marketable_status` (the opt-in) and the original-source fields
    ///   `hs_analytics_source`, `hs_analytics_source_data_1`, `hs_analytics_source_data_2`,
    ///   which the marketing forms set at first touch;
    /// - `billing`: `plan`, which only the billing system knows for sure.
    pub destinations: BTreeMap<String, BTreeMap<String, String>>,
}

impl Default for OwnershipConfig {
    fn default() -> Self {
        let hubspot = [
            ("hubspot_owner_id", "crm"),
            ("hs_lead_status", "crm"),
            ("hs_marketable_status", "marketing"),
            ("hs_analytics_source", "marketing"),
            ("hs_analytics_source_data_1", "marketing"),
            ("hs_analytics_source_data_2", "marketing"),
            ("plan", "billing"),
        ]
        .into_iter()
        .map(|(field, owner)| (field.to_owned(), owner.to_owned()))
        .collect();
        OwnershipConfig {
            destinations: BTreeMap::from([("hubspot".to_owned(), hubspot)]),
        }
    }
}

/// The properties of one write after [`OwnershipConfig::writable`] has removed the fields the
/// writer does not own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filtered {
    /// The fields the writer may set: those it owns and those nobody owns.
    pub write: BTreeMap<String, String>,
    /// `(field, owner)` of every field left out because another system owns it, in field order,
    /// so the caller can count the skips (by owner, a bounded label) and log them at `debug`.
    pub skipped: Vec<(String, String)>,
}

impl OwnershipConfig {
    /// Checks what serde cannot: no destination, field or owner name is empty or blank, since an
    /// empty name never matches a real field and would silently protect nothing.
    pub fn validate(&self) -> Result<(), String> {
        for (destination, fields) in &self.destinations {
            if destination.trim().is_empty() {
                return Err("destinations: a destination name is empty".to_owned());
            }
            for (field, owner) in fields {
                if field.trim().is_empty() {
                    return Err(format!("destinations.{destination}: a field name is empty"));
                }
                if owner.trim().is_empty() {
                    return Err(format!(
                        "destinations.{destination}.{field}: the owner is empty"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Splits `properties` for a write to `destination` by `writer` (the system the event comes
    /// from, e.g. the envelope's source): a field owned by another system is skipped, a field
    /// owned by `writer` or by nobody is written. Names compare exactly, as destinations' field
    /// names are case-sensitive. A destination without a table writes everything.
    pub fn writable(
        &self,
        destination: &str,
        writer: &str,
        properties: BTreeMap<String, String>,
    ) -> Filtered {
        let Some(owners) = self.destinations.get(destination) else {
            return Filtered {
                write: properties,
                skipped: Vec::new(),
            };
        };
        let mut filtered = Filtered::default();
        for (field, value) in properties {
            match owners.get(&field) {
                Some(owner) if owner != writer => filtered.skipped.push((field, owner.clone())),
                _ => {
                    filtered.write.insert(field, value);
                }
            }
        }
        filtered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn skips(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(f, o)| ((*f).to_owned(), (*o).to_owned()))
            .collect()
    }

    #[test]
    fn default_hubspot_table() {
        let config = OwnershipConfig::default();
        // (destination, writer, properties, written fields, skipped (field, owner))
        type Pairs = &'static [(&'static str, &'static str)];
        type Row = (
            &'static str,
            &'static str,
            Pairs,
            &'static [&'static str],
            Pairs,
        );
        let rows: &[Row] = &[
            // Unowned fields are written by anyone.
            (
                "hubspot",
                "marketing",
                &[("email", "a@x.io"), ("firstname", "Ada")],
                &["email", "firstname"],
                &[],
            ),
            // The CRM owns the record owner and the lead status: nobody else writes them.
            (
                "hubspot",
                "billing",
                &[("hubspot_owner_id", "7")],
                &[],
                &[("hubspot_owner_id", "crm")],
            ),
            (
                "hubspot",
                "marketing",
                &[("hs_lead_status", "OPEN"), ("email", "a@x.io")],
                &["email"],
                &[("hs_lead_status", "crm")],
            ),
            (
                "hubspot",
                "handoff",
                &[("hs_lead_status", "OPEN"), ("dealstage", "closedwon")],
                &["dealstage"],
                &[("hs_lead_status", "crm")],
            ),
            // Marketing owns the opt-in and original source.
            (
                "hubspot",
                "marketing",
                &[
                    ("hs_marketable_status", "true"),
                    ("hs_analytics_source", "ORGANIC_SEARCH"),
                ],
                &["hs_analytics_source", "hs_marketable_status"],
                &[],
            ),
            (
                "hubspot",
                "billing",
                &[("hs_marketable_status", "false")],
                &[],
                &[("hs_marketable_status", "marketing")],
            ),
            (
                "hubspot",
                "calendar",
                &[
                    ("hs_analytics_source_data_1", "x"),
                    ("hs_analytics_source_data_2", "y"),
                ],
                &[],
                &[
                    ("hs_analytics_source_data_1", "marketing"),
                    ("hs_analytics_source_data_2", "marketing"),
                ],
            ),
            // Billing owns the plan.
            (
                "hubspot",
                "billing",
                &[("plan", "pro"), ("lifecyclestage", "customer")],
                &["lifecyclestage", "plan"],
                &[],
            ),
            (
                "hubspot",
                "marketing",
                &[("plan", "free")],
                &[],
                &[("plan", "billing")],
            ),
            // Owner names compare exactly.
            (
                "hubspot",
                "Billing",
                &[("plan", "pro")],
                &[],
                &[("plan", "billing")],
            ),
            // A destination without a table writes everything.
            (
                "mailchimp",
                "marketing",
                &[("plan", "pro"), ("dealstage", "x")],
                &["dealstage", "plan"],
                &[],
            ),
            // Nothing in, nothing out.
            ("hubspot", "billing", &[], &[], &[]),
        ];
        for (destination, writer, properties, written, skipped) in rows {
            let got = config.writable(destination, writer, props(properties));
            let got_written: Vec<&str> = got.write.keys().map(String::as_str).collect();
            assert_eq!(
                &got_written, written,
                "{destination} {writer} {properties:?}"
            );
            assert_eq!(
                got.skipped,
                skips(skipped),
                "{destination} {writer} {properties:?}"
            );
            for field in &got_written {
                let sent = properties.iter().find(|(k, _)| k == field).map(|(_, v)| *v);
                assert_eq!(
                    got.write.get(*field).map(String::as_str),
                    sent,
                    "value of {field}"
                );
            }
        }
    }

    #[test]
    fn destination_own_system_is_never_overwritten_by_a_writer() {
        let config = OwnershipConfig::default();
        for writer in ["marketing", "billing", "handoff", "calendar", ""] {
            let got = config.writable("hubspot", writer, props(&[("hubspot_owner_id", "1")]));
            assert!(got.write.is_empty(), "{writer}");
        }
    }

    #[test]
    fn default_validates_and_config_deserializes() {
        assert_eq!(OwnershipConfig::default().validate(), Ok(()));
        let json = r#"{"destinations":{"hubspot":{"plan":"billing"}}}"#;
        let config: OwnershipConfig = serde_json::from_str(json).expect("valid config");
        assert_eq!(config.destinations["hubspot"].len(), 1);
        let empty: OwnershipConfig = serde_json::from_str("{}").expect("defaults");
        assert_eq!(empty, OwnershipConfig::default());
        assert!(serde_json::from_str::<OwnershipConfig>(r#"{"hubspot":{}}"#).is_err());
    }

    #[test]
    fn validate_refuses_empty_names() {
        let rows: &[(&str, &str, &str, &str)] = &[
            (
                "",
                "plan",
                "billing",
                "destinations: a destination name is empty",
            ),
            (
                " ",
                "plan",
                "billing",
                "destinations: a destination name is empty",
            ),
            (
                "hubspot",
                "",
                "billing",
                "destinations.hubspot: a field name is empty",
            ),
            (
                "hubspot",
                "plan",
                "",
                "destinations.hubspot.plan: the owner is empty",
            ),
            (
                "hubspot",
                "plan",
                "  ",
                "destinations.hubspot.plan: the owner is empty",
            ),
        ];
        for (destination, field, owner, message) in rows {
            let config = OwnershipConfig {
                destinations: BTreeMap::from([(
                    (*destination).to_owned(),
                    props(&[(field, owner)]),
                )]),
            };
            assert_eq!(
                config.validate(),
                Err((*message).to_owned()),
                "{destination:?} {field:?} {owner:?}"
            );
        }
    }
}
