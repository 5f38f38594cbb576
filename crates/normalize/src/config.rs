//! The normalizer's policy as data: phone region, what to do with bad
//! values, and the enum maps RevOps edits without a code change.
//!
//! The service embeds [`NormalizeConfig`] as its `[normalize]` table;
//! `normalize.example.toml` beside `Cargo.toml` is the commented default,
//! and a test keeps it equal to [`NormalizeConfig::default`].
//! [`crate::Normalizer::new`] compiles and validates it once.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Every knob of normalization. Defaults suit a HubSpot-like CRM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NormalizeConfig {
    /// ISO 3166-1 alpha-2 region used to read phone numbers without a `+`
    /// prefix when the record has no (valid) country of its own.
    pub default_region: String,
    /// What an unparseable or invalid phone number does: `drop` removes the
    /// field and leaves a note (the rest of the event is still useful), `reject`
    /// dead-letters the event.
    pub on_invalid_phone: OnInvalid,
    /// Email address rules.
    pub email: EmailConfig,
    /// Longest name or free-text value kept, in characters; longer values are
    /// cut at a character boundary. 4096 is ingest's own bound for free text,
    /// so by default nothing ingest accepts is cut.
    pub max_text_chars: usize,
    /// Person lifecycle stage (`*.lifecycle_stage` → `Contact.lifecycle_stage`).
    pub lifecycle_stage: EnumMapConfig,
    /// Deal pipeline stage (`deal.stage`, `deal.previous_stage` → `Deal.stage`, `Deal.previous_stage`).
    pub deal_stage: EnumMapConfig,
    /// Plan names (`customer.plan`, `subscription.plan` → `Subscription.plan`).
    pub plan: EnumMapConfig,
    /// Subscription status (`subscription.status` → `Subscription.status`).
    pub subscription_status: EnumMapConfig,
    /// Ticket priority, used for the ticket a `payment.failed` opens.
    pub ticket_priority: EnumMapConfig,
    /// Ticket status, used for the ticket a `payment.failed` opens.
    pub ticket_status: EnumMapConfig,
    /// The ticket a `payment.failed` event opens in the CRM.
    pub payment_failed_ticket: TicketConfig,
}

/// What to do with a value that cannot be repaired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnInvalid {
    /// Remove the field, keep the event, record a note.
    Drop,
    /// Reject the event with a field error.
    Reject,
}

/// What to do with an enum value that is in no map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnUnmapped {
    /// Reject the event: the destination would refuse the value anyway.
    Reject,
    /// Keep the cleaned value as sent and record a note.
    PassThrough,
}

/// Email address rules.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmailConfig {
    /// Fold aliases onto the mailbox: strip `+tag` from the local part, and
    /// dots too for gmail.com / googlemail.com. Off by default: the alias may
    /// be exactly what the person typed and wants to receive mail at.
    pub alias_rules: bool,
}

/// One enum map: spellings publishers send → canonical values.
///
/// Keys match case-insensitively, ignoring whitespace, `-` and `_`
/// ("Closed Won", "closed_won" and "closedwon" are one key). Every target
/// also matches itself, so only aliases need listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnumMapConfig {
    /// The canonical values: what the destinations accept.
    #[serde(default)]
    pub targets: Vec<String>,
    /// Aliases: spelling → one of `targets`.
    #[serde(default)]
    pub values: BTreeMap<String, String>,
    /// What a value matching neither a target nor an alias does.
    #[serde(default = "reject")]
    pub on_unmapped: OnUnmapped,
}

fn reject() -> OnUnmapped {
    OnUnmapped::Reject
}

/// The ticket a `payment.failed` opens; its values go through the ticket maps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TicketConfig {
    /// Priority, through `ticket_priority` (must map to a target).
    pub priority: String,
    /// Status of a new ticket, through `ticket_status` (must map to a target).
    pub status: String,
    /// CRM ticket pipeline, if not the default one.
    pub pipeline: Option<String>,
}

impl Default for TicketConfig {
    fn default() -> Self {
        TicketConfig {
            priority: "high".to_owned(),
            status: "new".to_owned(),
            pipeline: None,
        }
    }
}

/// Why the config cannot be compiled; one line naming the table and key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Two keys (or targets) of one map are the same after folding.
    #[error(
        "normalize.{table}: key {key:?} duplicates {other:?} (keys match ignoring case, whitespace, '-' and '_')"
    )]
    DuplicateKey {
        /// The map, e.g. `lifecycle_stage`.
        table: &'static str,
        /// The later key.
        key: String,
        /// The key it collides with.
        other: String,
    },
    /// A value of `values` is not one of `targets`.
    #[error("normalize.{table}.values: key {key:?} maps to {target:?}, which is not in targets")]
    UnknownTarget {
        /// The map.
        table: &'static str,
        /// The alias.
        key: String,
        /// Its unknown target.
        target: String,
    },
    /// A key or target is blank after folding.
    #[error("normalize.{table}: key {key:?} is blank")]
    BlankKey {
        /// The map.
        table: &'static str,
        /// The key as written.
        key: String,
    },
    /// `default_region` is not an ISO 3166-1 alpha-2 region with phone metadata.
    #[error("normalize.default_region: {value:?} is not an ISO 3166-1 alpha-2 region code")]
    BadDefaultRegion {
        /// The value as written.
        value: String,
    },
    /// `max_text_chars` is zero.
    #[error("normalize.max_text_chars: must be at least 1")]
    BadMaxTextChars,
    /// A `payment_failed_ticket` value does not map to its table's targets.
    #[error(
        "normalize.payment_failed_ticket.{field}: {value:?} is not a target of normalize.{table}"
    )]
    BadTicketValue {
        /// `priority` or `status`.
        field: &'static str,
        /// The map it must go through.
        table: &'static str,
        /// The value as written.
        value: String,
    },
}

fn table(targets: &[&str], values: &[(&str, &str)], on_unmapped: OnUnmapped) -> EnumMapConfig {
    EnumMapConfig {
        targets: targets.iter().map(|t| (*t).to_owned()).collect(),
        values: values
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        on_unmapped,
    }
}

impl Default for NormalizeConfig {
    fn default() -> Self {
        NormalizeConfig {
            default_region: "US".to_owned(),
            on_invalid_phone: OnInvalid::Drop,
            email: EmailConfig::default(),
            max_text_chars: 4096,
            // HubSpot's lifecycle stages; anything else is refused there, so reject early.
            lifecycle_stage: table(
                &[
                    "subscriber",
                    "lead",
                    "marketingqualifiedlead",
                    "salesqualifiedlead",
                    "opportunity",
                    "customer",
                    "evangelist",
                    "other",
                ],
                &[
                    ("advocate", "evangelist"),
                    ("client", "customer"),
                    ("marketing qualified", "marketingqualifiedlead"),
                    ("MQL", "marketingqualifiedlead"),
                    ("newsletter", "subscriber"),
                    ("opp", "opportunity"),
                    ("paying customer", "customer"),
                    ("prospect", "lead"),
                    ("sales qualified", "salesqualifiedlead"),
                    ("SQL", "salesqualifiedlead"),
                ],
                OnUnmapped::Reject,
            ),
            // HubSpot's default sales pipeline; custom pipelines have their own
            // stage ids, so unknown stages pass through.
            deal_stage: table(
                &[
                    "appointmentscheduled",
                    "qualifiedtobuy",
                    "presentationscheduled",
                    "decisionmakerboughtin",
                    "contractsent",
                    "closedwon",
                    "closedlost",
                ],
                &[
                    ("demo scheduled", "presentationscheduled"),
                    ("lost", "closedlost"),
                    ("meeting booked", "appointmentscheduled"),
                    ("qualified", "qualifiedtobuy"),
                    ("won", "closedwon"),
                ],
                OnUnmapped::PassThrough,
            ),
            // Plans are product-specific: unknown ones pass through.
            plan: table(
                &["free", "starter", "pro", "business", "enterprise"],
                &[
                    ("basic", "starter"),
                    ("professional", "pro"),
                    ("team", "business"),
                ],
                OnUnmapped::PassThrough,
            ),
            // Stripe's subscription statuses.
            subscription_status: table(
                &[
                    "trialing",
                    "active",
                    "past_due",
                    "canceled",
                    "unpaid",
                    "incomplete",
                    "incomplete_expired",
                    "paused",
                ],
                &[
                    ("cancelled", "canceled"),
                    ("overdue", "past_due"),
                    ("trial", "trialing"),
                ],
                OnUnmapped::Reject,
            ),
            // HubSpot's ticket priorities, lower-cased.
            ticket_priority: table(
                &["low", "medium", "high", "urgent"],
                &[
                    ("critical", "urgent"),
                    ("normal", "medium"),
                    ("P1", "urgent"),
                    ("P2", "high"),
                    ("P3", "medium"),
                    ("P4", "low"),
                ],
                OnUnmapped::Reject,
            ),
            // HubSpot's default support pipeline statuses.
            ticket_status: table(
                &["new", "waiting_on_contact", "waiting_on_us", "closed"],
                &[
                    ("open", "new"),
                    ("pending", "waiting_on_contact"),
                    ("resolved", "closed"),
                ],
                OnUnmapped::Reject,
            ),
            payment_failed_ticket: TicketConfig::default(),
        }
    }
}
