//! One complete, valid example body per v1 event type.
//!
//! The same JSON is shown in `docs/events.md` (a test keeps the two equal), and
//! benches, demos and tests start from it.

use handoff_events::EventType;
use serde_json::{Value, json};

/// A complete example body of `event_type` that passes [`super::check`].
///
/// The `customer.converted` one is the seed example publishers were given.
pub fn example(event_type: EventType) -> Value {
    match event_type {
        EventType::LeadCreated => json!({
            "event_id": "evt_lead_2026_03_18_000042",
            "occurred_at": "2026-03-18T16:02:11Z",
            "source": "forms",
            "lead": {
                "email": "jordan.lee@example.org",
                "first_name": "Jordan",
                "last_name": "Lee",
                "phone": "+1 415 555 0134",
                "company": "Acme Analytics",
                "company_domain": "acme-analytics.example",
                "job_title": "Head of Growth",
                "country": "US",
                "timezone": "America/Los_Angeles",
                "lifecycle_stage": "lead",
                "marketing_opt_in": true,
                "form_id": "demo-request",
                "custom_properties": {"team_size": "11-50", "trial_requested": true}
            },
            "attribution": {
                "utm_source": "google",
                "utm_medium": "cpc",
                "utm_campaign": "spring_launch",
                "utm_term": "crm integration",
                "landing_url": "https://www.example.com/demo?utm_source=google&utm_medium=cpc",
                "referrer": "https://www.google.com/",
                "gclid": "Cj0KCQjw_example"
            }
        }),
        EventType::MeetingBooked => json!({
            "event_id": "evt_mtg_7f3a9c",
            "occurred_at": "2026-03-19T09:30:00+01:00",
            "source": "scheduler",
            "schema_version": 1,
            "contact": {
                "email": "jordan.lee@example.org",
                "crm_contact_id": "67890",
                "first_name": "Jordan"
            },
            "meeting": {
                "meeting_id": "mtg_20260324_1500",
                "starts_at": "2026-03-24T15:00:00Z",
                "duration_minutes": 30,
                "meeting_type": "demo",
                "owner_email": "sam.rivera@example.com",
                "timezone": "Europe/Berlin"
            },
            "attribution": {
                "utm_source": "newsletter",
                "utm_medium": "email",
                "utm_campaign": "march_digest"
            }
        }),
        EventType::CustomerConverted => json!({
            "event_id": "evt_2026_03_19_000123",
            "occurred_at": "2026-03-19T10:15:22Z",
            "source": "crm",
            "customer": {
                "crm_contact_id": "12345",
                "email": "alex@example.com",
                "first_name": "Alex",
                "last_name": "Kim",
                "company": "Example Co",
                "lifecycle_stage": "customer",
                "plan": "pro",
                "owner_email": "owner@example.com"
            },
            "context": {
                "deal_id": "D-9001",
                "utm_source": "webinar",
                "utm_campaign": "onboarding"
            }
        }),
        EventType::DealStageChanged => json!({
            "event_id": "evt_deal_D-9001_stage_4",
            "occurred_at": "2026-03-19T10:14:05Z",
            "source": "crm",
            "deal": {
                "deal_id": "D-9001",
                "crm_deal_id": "998877",
                "name": "Example Co - Pro annual",
                "pipeline": "sales",
                "stage": "closed_won",
                "previous_stage": "contract_sent",
                "amount": 12000,
                "currency": "USD",
                "close_date": "2026-03-19"
            },
            "contact": {"crm_contact_id": "12345", "email": "alex@example.com"},
            "company": {
                "name": "Example Co",
                "domain": "example.com",
                "crm_company_id": "C-5521",
                "industry": "Software",
                "country": "US",
                "employee_count": 120
            }
        }),
        EventType::PaymentFailed => json!({
            "event_id": "evt_pay_in_1PqX2a_attempt_2",
            "occurred_at": "2026-03-20T03:00:12Z",
            "source": "billing",
            "customer": {"external_id": "cus_Q8x1", "email": "alex@example.com"},
            "payment": {
                "invoice_id": "in_1PqX2a",
                "amount": 99.5,
                "currency": "usd",
                "failure_code": "card_declined",
                "failure_message": "Your card was declined.",
                "attempt_count": 2,
                "next_retry_at": "2026-03-23T03:00:00Z"
            },
            "subscription": {
                "subscription_id": "sub_77AB",
                "plan": "pro",
                "status": "past_due",
                "billing_interval": "month",
                "mrr": 99.5,
                "currency": "usd"
            }
        }),
        EventType::ContactUpdated => json!({
            "event_id": "evt_contact_12345_v17",
            "occurred_at": "2026-03-21T12:45:00Z",
            "source": "crm",
            "contact": {
                "crm_contact_id": "12345",
                "email": "alex@example.com",
                "job_title": "VP Operations",
                "phone": "+44 20 7946 0958",
                "marketing_opt_in": false,
                "custom_properties": {"nps_score": 9, "preferred_language": "en"}
            }
        }),
    }
}
