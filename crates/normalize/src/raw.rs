//! The raw JSON bodies as serde structs, one per event type and schema
//! version, and the upcaster from `customer.converted` v0 to v1.
//!
//! Objects are closed (`deny_unknown_fields`), mirroring ingest's contract
//! (`crates/ingest/src/contract/schema.rs`): ingest has already refused
//! unknown keys, so one here means a publisher bypassed it or the contract
//! and this crate disagree — either way the body is undecodable. Person
//! objects share one struct holding every person field plus the extras of
//! `customer` (plan, mrr, amount, currency) and `lead` (form_id); the event
//! code refuses extras where they do not belong.

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Map, Value};

/// A person: `customer`, `lead` or `contact`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Person {
    pub email: Option<String>,
    pub crm_contact_id: Option<String>,
    pub external_id: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub phone: Option<String>,
    pub job_title: Option<String>,
    pub company: Option<String>,
    pub company_domain: Option<String>,
    pub country: Option<String>,
    pub timezone: Option<String>,
    pub lifecycle_stage: Option<String>,
    pub owner_email: Option<String>,
    pub email_subscriber_id: Option<String>,
    pub marketing_opt_in: Option<bool>,
    pub custom_properties: Option<Map<String, Value>>,
    // customer.converted's customer only.
    pub plan: Option<String>,
    pub mrr: Option<f64>,
    pub amount: Option<f64>,
    pub currency: Option<String>,
    // lead.created's lead only.
    pub form_id: Option<String>,
}

/// `attribution` of lead.created and meeting.booked; also the attribution
/// half of customer.converted's `context`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Attribution {
    pub utm_source: Option<String>,
    pub utm_medium: Option<String>,
    pub utm_campaign: Option<String>,
    pub utm_term: Option<String>,
    pub utm_content: Option<String>,
    pub landing_url: Option<String>,
    pub referrer: Option<String>,
    pub gclid: Option<String>,
    pub fbclid: Option<String>,
}

/// customer.converted's `context`: attribution plus the deal and subscription.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Context {
    pub deal_id: Option<String>,
    pub subscription_id: Option<String>,
    pub utm_source: Option<String>,
    pub utm_medium: Option<String>,
    pub utm_campaign: Option<String>,
    pub utm_term: Option<String>,
    pub utm_content: Option<String>,
    pub landing_url: Option<String>,
    pub referrer: Option<String>,
    pub gclid: Option<String>,
    pub fbclid: Option<String>,
}

impl Context {
    pub(crate) fn attribution(&self) -> Attribution {
        Attribution {
            utm_source: self.utm_source.clone(),
            utm_medium: self.utm_medium.clone(),
            utm_campaign: self.utm_campaign.clone(),
            utm_term: self.utm_term.clone(),
            utm_content: self.utm_content.clone(),
            landing_url: self.landing_url.clone(),
            referrer: self.referrer.clone(),
            gclid: self.gclid.clone(),
            fbclid: self.fbclid.clone(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Meeting {
    pub meeting_id: Option<String>,
    pub starts_at: Option<String>,
    pub duration_minutes: Option<u32>,
    pub meeting_type: Option<String>,
    pub owner_email: Option<String>,
    pub timezone: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Deal {
    pub deal_id: Option<String>,
    pub crm_deal_id: Option<String>,
    pub name: Option<String>,
    pub pipeline: Option<String>,
    pub stage: Option<String>,
    pub previous_stage: Option<String>,
    pub amount: Option<f64>,
    pub currency: Option<String>,
    pub close_date: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Company {
    pub name: Option<String>,
    pub domain: Option<String>,
    pub crm_company_id: Option<String>,
    pub external_id: Option<String>,
    pub industry: Option<String>,
    pub country: Option<String>,
    pub employee_count: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Payment {
    pub invoice_id: Option<String>,
    pub amount: Option<f64>,
    pub currency: Option<String>,
    pub failure_code: Option<String>,
    pub failure_message: Option<String>,
    pub attempt_count: Option<u32>,
    pub next_retry_at: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Subscription {
    pub subscription_id: Option<String>,
    pub plan: Option<String>,
    pub status: Option<String>,
    pub billing_interval: Option<String>,
    pub mrr: Option<f64>,
    pub currency: Option<String>,
}

/// Declares a body struct: the common envelope fields (carried by the
/// envelope itself, so only accepted here) plus the type's own records.
macro_rules! body {
    ($(#[$meta:meta])* $name:ident { $($field:ident : $ty:ty),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(crate) struct $name {
            #[allow(dead_code)]
            pub event_id: Option<IgnoredAny>,
            #[allow(dead_code)]
            pub occurred_at: Option<IgnoredAny>,
            #[allow(dead_code)]
            pub source: Option<IgnoredAny>,
            #[allow(dead_code)]
            pub schema_version: Option<IgnoredAny>,
            #[allow(dead_code)]
            pub event_type: Option<IgnoredAny>,
            $(pub $field: $ty,)*
        }
    };
}

body!(
    /// `lead.created` v1.
    LeadCreatedV1 { lead: Person, attribution: Option<Attribution> }
);
body!(
    /// `meeting.booked` v1.
    MeetingBookedV1 { contact: Person, meeting: Meeting, attribution: Option<Attribution> }
);
body!(
    /// `customer.converted` v1.
    CustomerConvertedV1 { customer: Person, context: Option<Context> }
);
body!(
    /// `deal.stage_changed` v1.
    DealStageChangedV1 { deal: Deal, contact: Option<Person>, company: Option<Company> }
);
body!(
    /// `payment.failed` v1.
    PaymentFailedV1 { customer: Person, payment: Payment, subscription: Option<Subscription> }
);
body!(
    /// `contact.updated` v1.
    ContactUpdatedV1 { contact: Person }
);
body!(
    /// `customer.converted` v0: the older flat shape, every field at the top level.
    CustomerConvertedV0 {
        email: Option<String>,
        first_name: Option<String>,
        last_name: Option<String>,
        company: Option<String>,
        plan: Option<String>,
        crm_contact_id: Option<String>,
        deal_id: Option<String>,
        utm_source: Option<String>,
        utm_campaign: Option<String>,
    }
);

/// Upcasts `customer.converted` v0 to v1: person fields move into
/// `customer`, deal and UTM fields into `context` (left out when v0 had none).
pub(crate) fn upcast_customer_converted_v0(v0: CustomerConvertedV0) -> CustomerConvertedV1 {
    let context = Context {
        deal_id: v0.deal_id,
        utm_source: v0.utm_source,
        utm_campaign: v0.utm_campaign,
        ..Context::default()
    };
    let has_context =
        context.deal_id.is_some() || context.utm_source.is_some() || context.utm_campaign.is_some();
    CustomerConvertedV1 {
        event_id: v0.event_id,
        occurred_at: v0.occurred_at,
        source: v0.source,
        schema_version: v0.schema_version,
        event_type: v0.event_type,
        customer: Person {
            email: v0.email,
            first_name: v0.first_name,
            last_name: v0.last_name,
            company: v0.company,
            plan: v0.plan,
            crm_contact_id: v0.crm_contact_id,
            ..Person::default()
        },
        context: has_context.then_some(context),
    }
}

/// Where a v1 path of an upcast v0 body was in the v0 body: the flat shape
/// has no `customer.` or `context.` prefix, and the customer is the body.
pub(crate) fn customer_converted_v0_path(v1_path: &str) -> String {
    if v1_path == "customer" || v1_path == "context" {
        return String::new();
    }
    v1_path
        .strip_prefix("customer.")
        .or_else(|| v1_path.strip_prefix("context."))
        .unwrap_or(v1_path)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upcasts_flat_v0() {
        let v0: CustomerConvertedV0 = serde_json::from_str(
            r#"{"event_id":"e","occurred_at":"2026-03-19T10:15:22Z","email":"a@b.co","plan":"pro","deal_id":"D-1","utm_campaign":"x"}"#,
        )
        .unwrap();
        let v1 = upcast_customer_converted_v0(v0);
        assert_eq!(v1.customer.email.as_deref(), Some("a@b.co"));
        assert_eq!(v1.customer.plan.as_deref(), Some("pro"));
        let context = v1.context.unwrap();
        assert_eq!(context.deal_id.as_deref(), Some("D-1"));
        assert_eq!(context.utm_campaign.as_deref(), Some("x"));
        assert_eq!(customer_converted_v0_path("customer.email"), "email");
        assert_eq!(customer_converted_v0_path("context.deal_id"), "deal_id");
    }
}
