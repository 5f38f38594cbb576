//! Whole-event goldens: raw bodies in, canonical payloads (or rejections) out.

use std::collections::HashMap;

use handoff_events::EventType;
use handoff_events::v1::canonical_payload::Event;
use handoff_events::v1::{
    Attribution, CanonicalPayload, Company, Contact, CustomerConverted, Deal, ErrorClass,
    Subscription,
};
use handoff_normalize::config::OnInvalid;
use handoff_normalize::{NormalizeConfig, Normalized, Normalizer, NoteKind, Rejection};
use prost_types::Timestamp;

fn normalizer() -> Normalizer {
    Normalizer::new(&NormalizeConfig::default()).unwrap()
}

fn ok(event_type: EventType, version: u32, body: &str) -> Normalized {
    normalizer()
        .normalize(event_type, version, body.as_bytes())
        .unwrap_or_else(|e| panic!("{e}"))
}

fn some(s: &str) -> Option<String> {
    Some(s.to_owned())
}

pub(crate) const SEED: &str = r#"{"event_id":"evt_2026_03_19_000123","occurred_at":"2026-03-19T10:15:22Z","source":"crm",
 "customer":{"crm_contact_id":"12345","email":"alex@example.com","first_name":"Alex","last_name":"Kim",
             "company":"Example Co","lifecycle_stage":"customer","plan":"pro","owner_email":"owner@example.com"},
 "context":{"deal_id":"D-9001","utm_source":"webinar","utm_campaign":"onboarding"}}"#;

/// The seed with every field spelt the way a sloppy publisher would.
const MESSY_SEED: &str = r#"{"event_id":"evt_2026_03_19_000123","occurred_at":"2026-03-19T11:15:22+01:00","source":"crm",
 "schema_version":1,"event_type":"customer.converted",
 "customer":{"crm_contact_id":" 12345 ","email":"  Alex@Example.COM ","first_name":" Alex\u0007 ","last_name":"Kim\t",
             "company":"Example   Co","lifecycle_stage":"  Customer ","plan":"PRO","owner_email":"Owner@EXAMPLE.com "},
 "context":{"deal_id":" D-9001","utm_source":" Webinar ","utm_campaign":" onboarding ",
            "landing_url":"https://example.com/start?utm_source=ignored&utm_campaign=ignored"}}"#;

fn seed_expected() -> CanonicalPayload {
    CanonicalPayload {
        event: Some(Event::CustomerConverted(CustomerConverted {
            contact: Some(Contact {
                email: some("alex@example.com"),
                crm_contact_id: some("12345"),
                first_name: some("Alex"),
                last_name: some("Kim"),
                lifecycle_stage: some("customer"),
                owner_email: some("owner@example.com"),
                ..Contact::default()
            }),
            company: Some(Company {
                name: some("Example Co"),
                ..Company::default()
            }),
            deal: Some(Deal {
                deal_id: some("D-9001"),
                ..Deal::default()
            }),
            subscription: Some(Subscription {
                plan: some("pro"),
                ..Subscription::default()
            }),
            attribution: Some(Attribution {
                utm_source: some("webinar"),
                utm_campaign: some("onboarding"),
                ..Attribution::default()
            }),
        })),
    }
}

#[test]
fn seed_example_normalizes() {
    let got = ok(EventType::CustomerConverted, 1, SEED);
    assert_eq!(got.payload, seed_expected());
    assert!(got.notes.is_empty(), "{:?}", got.notes);
}

#[test]
fn messy_seed_normalizes_to_the_same_record() {
    let got = ok(EventType::CustomerConverted, 1, MESSY_SEED);
    let mut want = seed_expected();
    if let Some(Event::CustomerConverted(c)) = &mut want.event {
        c.attribution.as_mut().unwrap().landing_url =
            some("https://example.com/start?utm_source=ignored&utm_campaign=ignored");
    }
    assert_eq!(got.payload, want);
}

#[test]
fn v0_flat_shape_is_upcast() {
    let body = r#"{"event_id":"e1","occurred_at":"2026-03-19T10:15:22Z","source":"crm",
        "email":"Alex@Example.com","first_name":"Alex","last_name":"Kim","company":"Example Co",
        "plan":"pro","crm_contact_id":"12345","deal_id":"D-9001","utm_source":"webinar","utm_campaign":"onboarding"}"#;
    let got = ok(EventType::CustomerConverted, 0, body);
    let mut want = seed_expected();
    if let Some(Event::CustomerConverted(c)) = &mut want.event {
        let contact = c.contact.as_mut().unwrap();
        contact.lifecycle_stage = None;
        contact.owner_email = None;
    }
    assert_eq!(got.payload, want);

    let bad = r#"{"event_id":"e1","occurred_at":"2026-03-19T10:15:22Z","email":"nope"}"#;
    let err = normalizer()
        .normalize(EventType::CustomerConverted, 0, bad.as_bytes())
        .unwrap_err();
    let paths: Vec<_> = err.field_errors().iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["", "email"], "{err}");
}

#[test]
fn other_versions_are_unsupported() {
    for (event_type, version) in [
        (EventType::CustomerConverted, 2),
        (EventType::LeadCreated, 0),
        (EventType::ContactUpdated, 7),
    ] {
        let err = normalizer()
            .normalize(event_type, version, SEED.as_bytes())
            .unwrap_err();
        assert!(
            err.to_string().contains("unsupported schema version"),
            "{err}"
        );
        assert_eq!(err.error_class(), ErrorClass::UnsupportedSchema);
        assert!(!Normalizer::accepted_versions(event_type).contains(&version));
    }
}

#[test]
fn undecodable_bodies() {
    for body in [
        &b"not json"[..],
        b"[1,2]",
        b"{\"customer\": 5}",
        b"{\"customer\":{\"email\":\"a@b.co\",\"emial\":\"x\"}}",
        b"{\"customer\":{\"email\":\"a@b.co\",\"form_id\":\"x\"}}",
        b"\xff\xfe",
    ] {
        let err = normalizer()
            .normalize(EventType::CustomerConverted, 1, body)
            .unwrap_err();
        assert!(matches!(err, Rejection::Undecodable { .. }), "{err}");
        assert_eq!(err.error_class(), ErrorClass::Undecodable);
    }
}

#[test]
fn every_field_error_at_once_sorted() {
    let body = r#"{"event_id":"e","occurred_at":"2026-03-19T10:15:22Z",
        "customer":{"email":"not-an-email","country":"Atlantis","timezone":"Mars/Base","lifecycle_stage":"zombie","currency":"XYZ","mrr":5}}"#;
    let err = normalizer()
        .normalize(EventType::CustomerConverted, 1, body.as_bytes())
        .unwrap_err();
    assert_eq!(err.error_class(), ErrorClass::Validation);
    let paths: Vec<_> = err.field_errors().iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "customer",
            "customer.country",
            "customer.currency",
            "customer.email",
            "customer.lifecycle_stage",
            "customer.timezone"
        ]
    );
}

#[test]
fn lead_created_docs_example() {
    let body = r#"{"event_id":"evt_lead","occurred_at":"2026-03-18T16:02:11Z","source":"forms",
      "lead":{"email":"Jordan.Lee@Example.org","first_name":"Jordan","last_name":"Lee","phone":"(415) 555-0134",
        "company":"Acme Analytics","company_domain":"https://www.Acme-Analytics.example/","job_title":"Head of Growth",
        "country":"United States","timezone":"US/Pacific","lifecycle_stage":"lead","marketing_opt_in":true,
        "form_id":"demo-request","custom_properties":{"team_size":"11-50","trial_requested":true}},
      "attribution":{"utm_term":"crm integration","landing_url":"https://www.example.com/demo?utm_source=Google&utm_medium=CPC&utm_campaign=spring_launch",
        "referrer":"https://www.google.com/","gclid":"Cj0KCQjw_example"}}"#;
    let got = ok(EventType::LeadCreated, 1, body);
    let Some(Event::LeadCreated(lead)) = got.payload.event else {
        panic!("not a lead")
    };
    let contact = lead.contact.unwrap();
    assert_eq!(contact.email.as_deref(), Some("jordan.lee@example.org"));
    assert_eq!(contact.phone.as_deref(), Some("+14155550134"));
    assert_eq!(contact.country.as_deref(), Some("US"));
    assert_eq!(contact.timezone.as_deref(), Some("America/Los_Angeles"));
    assert_eq!(
        contact.custom_properties,
        HashMap::from([
            ("team_size".to_owned(), "11-50".to_owned()),
            ("trial_requested".to_owned(), "true".to_owned())
        ])
    );
    let company = lead.company.unwrap();
    assert_eq!(company.domain.as_deref(), Some("acme-analytics.example"));
    assert_eq!(lead.form_id.as_deref(), Some("demo-request"));
    let attribution = lead.attribution.unwrap();
    assert_eq!(attribution.utm_source.as_deref(), Some("google"));
    assert_eq!(attribution.utm_medium.as_deref(), Some("cpc"));
    assert_eq!(attribution.utm_campaign.as_deref(), Some("spring_launch"));
    assert_eq!(attribution.utm_term.as_deref(), Some("crm integration"));
    assert_eq!(attribution.gclid.as_deref(), Some("Cj0KCQjw_example"));
}

#[test]
fn phone_region_comes_from_the_country_and_bad_phones_follow_policy() {
    let body = r#"{"event_id":"e","occurred_at":"2026-03-21T12:45:00Z",
      "contact":{"crm_contact_id":"1","country":"Deutschland","phone":"030 901820"}}"#;
    let got = ok(EventType::ContactUpdated, 1, body);
    let Some(Event::ContactUpdated(c)) = got.payload.event else {
        panic!()
    };
    assert_eq!(c.contact.unwrap().phone.as_deref(), Some("+4930901820"));

    let body = r#"{"event_id":"e","occurred_at":"2026-03-21T12:45:00Z",
      "contact":{"crm_contact_id":"1","job_title":"VP","phone":"12"}}"#;
    let got = ok(EventType::ContactUpdated, 1, body);
    assert_eq!(got.notes.len(), 1);
    assert_eq!(got.notes[0].path, "contact.phone");
    assert_eq!(got.notes[0].kind.label(), "dropped_invalid");

    let strict = Normalizer::new(&NormalizeConfig {
        on_invalid_phone: OnInvalid::Reject,
        ..NormalizeConfig::default()
    })
    .unwrap();
    let err = strict
        .normalize(EventType::ContactUpdated, 1, body.as_bytes())
        .unwrap_err();
    assert_eq!(err.field_errors()[0].path, "contact.phone");

    // Only the phone besides the id, and it is dropped: nothing left to update.
    let body = r#"{"event_id":"e","occurred_at":"2026-03-21T12:45:00Z","contact":{"crm_contact_id":"1","phone":"12"}}"#;
    let err = normalizer()
        .normalize(EventType::ContactUpdated, 1, body.as_bytes())
        .unwrap_err();
    assert_eq!(err.field_errors()[0].message, "has nothing to update");
}

#[test]
fn deal_stage_changed_docs_example() {
    let body = r#"{"event_id":"evt_deal","occurred_at":"2026-03-19T10:14:05Z","source":"crm",
      "deal":{"deal_id":"D-9001","crm_deal_id":"998877","name":"Example Co - Pro annual","pipeline":"sales",
        "stage":"Closed Won","previous_stage":"contract_sent","amount":12000,"currency":"usd","close_date":"2026-03-19"},
      "contact":{"crm_contact_id":"12345","email":"alex@example.com"},
      "company":{"name":"Example Co","domain":"example.com","crm_company_id":"C-5521","industry":"Software","country":"usa","employee_count":120}}"#;
    let got = ok(EventType::DealStageChanged, 1, body);
    let Some(Event::DealStageChanged(d)) = got.payload.event else {
        panic!()
    };
    let deal = d.deal.unwrap();
    assert_eq!(deal.stage.as_deref(), Some("closedwon"));
    assert_eq!(deal.previous_stage.as_deref(), Some("contractsent"));
    assert_eq!(deal.amount_minor, Some(1_200_000));
    assert_eq!(deal.currency.as_deref(), Some("USD"));
    assert_eq!(
        deal.close_date,
        Some(Timestamp {
            seconds: 1_773_878_400,
            nanos: 0
        })
    );
    assert_eq!(d.company.unwrap().country.as_deref(), Some("US"));

    let custom = body.replace("Closed Won", "Legal Review");
    let got = ok(EventType::DealStageChanged, 1, &custom);
    assert_eq!(got.notes[0].kind, NoteKind::UnmappedPassedThrough);
    assert_eq!(got.notes[0].path, "deal.stage");
}

#[test]
fn payment_failed_docs_example() {
    let body = r#"{"event_id":"evt_pay","occurred_at":"2026-03-20T03:00:12Z","source":"billing",
      "customer":{"external_id":"cus_Q8x1","email":"alex@example.com"},
      "payment":{"invoice_id":"in_1PqX2a","amount":99.5,"currency":"usd","failure_code":"card_declined",
        "failure_message":"Your card was declined.","attempt_count":2,"next_retry_at":"2026-03-23T03:00:00Z"},
      "subscription":{"subscription_id":"sub_77AB","plan":"pro","status":"Past Due","billing_interval":"Monthly","mrr":99.5,"currency":"usd"}}"#;
    let got = ok(EventType::PaymentFailed, 1, body);
    let Some(Event::PaymentFailed(p)) = got.payload.event else {
        panic!()
    };
    let payment = p.payment.unwrap();
    assert_eq!(payment.amount_minor, Some(9950));
    assert_eq!(payment.currency.as_deref(), Some("USD"));
    let subscription = p.subscription.unwrap();
    assert_eq!(subscription.status.as_deref(), Some("past_due"));
    assert_eq!(subscription.billing_interval.as_deref(), Some("month"));
    let ticket = p.ticket.unwrap();
    assert_eq!(
        ticket.ticket_id.as_deref(),
        Some("payment-failed:in_1PqX2a")
    );
    assert_eq!(ticket.priority.as_deref(), Some("high"));
    assert_eq!(ticket.status.as_deref(), Some("new"));

    let missing = r#"{"event_id":"e","occurred_at":"2026-03-20T03:00:12Z","customer":{"email":"bad"},"payment":{"invoice_id":"  "}}"#;
    let err = normalizer()
        .normalize(EventType::PaymentFailed, 1, missing.as_bytes())
        .unwrap_err();
    let paths: Vec<_> = err.field_errors().iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["customer", "customer.email", "payment.invoice_id"]);
}

#[test]
fn meeting_booked_docs_example() {
    let body = r#"{"event_id":"evt_mtg","occurred_at":"2026-03-19T09:30:00+01:00","source":"scheduler","schema_version":1,
      "contact":{"email":"jordan.lee@example.org","crm_contact_id":"67890","first_name":"Jordan"},
      "meeting":{"meeting_id":"mtg_1","starts_at":"2026-03-24T16:00:00+01:00","duration_minutes":30,"meeting_type":"Demo",
        "owner_email":"sam.rivera@example.com","timezone":"W. Europe Standard Time"},
      "attribution":{"utm_source":"newsletter","utm_medium":"email","utm_campaign":"march_digest"}}"#;
    let got = ok(EventType::MeetingBooked, 1, body);
    let Some(Event::MeetingBooked(m)) = got.payload.event else {
        panic!()
    };
    let meeting = m.meeting.unwrap();
    assert_eq!(
        meeting.starts_at,
        Some(Timestamp {
            seconds: 1_774_364_400,
            nanos: 0
        })
    );
    assert_eq!(meeting.meeting_type.as_deref(), Some("demo"));
    assert_eq!(meeting.timezone.as_deref(), Some("Europe/Berlin"));
}
