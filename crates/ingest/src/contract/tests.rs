//! Unit tests of the contract checks, and of `docs/events.md` agreeing with them.

use super::schema::{self, Kind, PERSON, Record};
use super::*;
use serde_json::json;
use time::macros::datetime;

/// The errors of `body`, as (path, message) pairs; panics if it was accepted.
fn errors(event_type: EventType, body: &Value) -> Vec<(String, String)> {
    match check(event_type, body) {
        Ok(checked) => panic!("{event_type} body was accepted: {checked:?}\n{body:#}"),
        Err(errors) => errors.into_iter().map(|e| (e.path, e.message)).collect(),
    }
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(p, m)| (p.to_string(), m.to_string()))
        .collect()
}

/// The example of `event_type` with `edit` applied to it.
fn edited(event_type: EventType, edit: impl FnOnce(&mut Map<String, Value>)) -> Value {
    let mut body = example(event_type);
    edit(body.as_object_mut().expect("examples are objects"));
    body
}

/// The object at `key` of `obj`.
fn at<'a>(obj: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    obj.get_mut(key)
        .and_then(Value::as_object_mut)
        .expect("an object")
}

#[test]
fn every_example_is_accepted() {
    for event_type in EventType::ALL {
        let body = example(event_type);
        if let Err(errors) = check(event_type, &body) {
            panic!("{event_type} example rejected: {errors:?}");
        }
    }
}

#[test]
fn the_seed_example_is_accepted_verbatim() {
    let seed = r#"{"event_id":"evt_2026_03_19_000123","occurred_at":"2026-03-19T10:15:22Z","source":"crm","customer":{"crm_contact_id":"12345","email":"alex@example.com","first_name":"Alex","last_name":"Kim","company":"Example Co","lifecycle_stage":"customer","plan":"pro","owner_email":"owner@example.com"},"context":{"deal_id":"D-9001","utm_source":"webinar","utm_campaign":"onboarding"}}"#;
    let body: Value = serde_json::from_str(seed).unwrap();
    assert_eq!(body, example(EventType::CustomerConverted));
    let checked = check(EventType::CustomerConverted, &body).unwrap();
    assert_eq!(
        checked,
        CheckedEvent {
            event_id: EventId::parse("evt_2026_03_19_000123").unwrap(),
            occurred_at: datetime!(2026-03-19 10:15:22 UTC),
            source: Some("crm".into()),
            schema_version: 1,
        }
    );
}

#[test]
fn the_checked_event_carries_the_envelope() {
    let checked = check(EventType::MeetingBooked, &example(EventType::MeetingBooked)).unwrap();
    assert_eq!(checked.event_id.as_str(), "evt_mtg_7f3a9c");
    assert_eq!(checked.occurred_at, datetime!(2026-03-19 09:30:00 +01:00));
    assert_eq!(checked.source.as_deref(), Some("scheduler"));
    assert_eq!(checked.schema_version, 1);

    let body = edited(EventType::LeadCreated, |b| {
        b.remove("source");
    });
    let checked = check(EventType::LeadCreated, &body).unwrap();
    assert_eq!(checked.source, None);
    assert_eq!(checked.schema_version, CURRENT_SCHEMA_VERSION);
}

#[test]
fn values_are_not_normalized_here() {
    let body = edited(EventType::CustomerConverted, |b| {
        let customer = at(b, "customer");
        customer.insert("email".into(), json!("  Alex@Example.COM "));
        customer.insert("country".into(), json!("Deutschland"));
        customer.insert("phone".into(), json!("(415) 555-0134 ext. 2"));
    });
    assert!(check(EventType::CustomerConverted, &body).is_ok());
}

#[test]
fn a_body_that_is_not_an_object_is_one_error() {
    for body in [json!(null), json!([]), json!("x"), json!(1), json!(true)] {
        assert_eq!(
            errors(EventType::LeadCreated, &body),
            pairs(&[("", "must be a JSON object")])
        );
    }
}

#[test]
fn an_empty_object_lists_every_required_field() {
    let expected: &[(EventType, &[(&str, &str)])] = &[
        (EventType::LeadCreated, &[("lead", "is required")]),
        (
            EventType::MeetingBooked,
            &[("contact", "is required"), ("meeting", "is required")],
        ),
        (EventType::CustomerConverted, &[("customer", "is required")]),
        (EventType::DealStageChanged, &[("deal", "is required")]),
        (
            EventType::PaymentFailed,
            &[("customer", "is required"), ("payment", "is required")],
        ),
        (EventType::ContactUpdated, &[("contact", "is required")]),
    ];
    for (event_type, own) in expected {
        let mut want = pairs(own);
        want.push(("event_id".into(), "is required".into()));
        want.push(("occurred_at".into(), "is required".into()));
        want.sort();
        assert_eq!(errors(*event_type, &json!({})), want, "{event_type}");
    }
}

#[test]
fn errors_are_listed_together_and_sorted_by_path() {
    let body = json!({
        "occurred_at": "yesterday",
        "source": 7,
        "customer": {"emial": "alex@example.com", "first_name": ["Alex"], "mrr": "99"},
        "context": {"utm_source": "webinar", "deal": "D-1"},
        "extra": true
    });
    assert_eq!(
        errors(EventType::CustomerConverted, &body),
        pairs(&[
            ("context.deal", "is not a known field"),
            (
                "customer",
                "needs at least one of email, crm_contact_id, external_id"
            ),
            ("customer.emial", "is not a known field"),
            ("customer.first_name", "must be a string"),
            ("customer.mrr", "must be a number"),
            ("event_id", "is required"),
            ("extra", "is not a known field"),
            ("occurred_at", "must be an RFC 3339 timestamp"),
            ("source", "must be a string"),
        ])
    );
}

#[test]
fn unknown_top_level_keys_are_rejected() {
    let body = edited(EventType::PaymentFailed, |b| {
        b.insert("occured_at".into(), json!("2026-03-20T03:00:12Z"));
        b.insert("contact".into(), json!({"email": "a@example.com"}));
    });
    assert_eq!(
        errors(EventType::PaymentFailed, &body),
        pairs(&[
            ("contact", "is not a known field"),
            ("occured_at", "is not a known field")
        ])
    );
}

#[test]
fn unknown_keys_in_records_are_rejected_except_in_custom_properties() {
    let body = edited(EventType::LeadCreated, |b| {
        at(b, "lead").insert("favourite_color".into(), json!("blue"));
        at(b, "attribution").insert("utm_id".into(), json!("x"));
        at(at(b, "lead"), "custom_properties").insert("favourite_color".into(), json!("blue"));
    });
    assert_eq!(
        errors(EventType::LeadCreated, &body),
        pairs(&[
            ("attribution.utm_id", "is not a known field"),
            ("lead.favourite_color", "is not a known field"),
        ])
    );
}

#[test]
fn the_envelope_event_type_must_match_the_url() {
    let body = edited(EventType::LeadCreated, |b| {
        b.insert("event_type".into(), json!("lead.created"));
    });
    assert!(check(EventType::LeadCreated, &body).is_ok());

    let body = edited(EventType::LeadCreated, |b| {
        b.insert("event_type".into(), json!("contact.updated"));
    });
    assert_eq!(
        errors(EventType::LeadCreated, &body),
        pairs(&[(
            "event_type",
            "must match the URL's event type \"lead.created\""
        )])
    );
    let body = edited(EventType::LeadCreated, |b| {
        b.insert("event_type".into(), json!(1));
    });
    assert_eq!(
        errors(EventType::LeadCreated, &body),
        pairs(&[("event_type", "must be a string")])
    );
}

#[test]
fn bad_event_ids_are_rejected_with_the_id_rules() {
    let cases = [
        (json!(""), "must not be empty"),
        (json!("a".repeat(129)), "must be at most 128 characters"),
        (
            json!("has space"),
            "must contain only printable ASCII characters without spaces",
        ),
        (
            json!("évt"),
            "must contain only printable ASCII characters without spaces",
        ),
        (json!(123), "must be a string"),
        (json!(null), "is required"),
    ];
    for (id, message) in cases {
        let body = edited(EventType::ContactUpdated, |b| {
            b.insert("event_id".into(), id.clone());
        });
        assert_eq!(
            errors(EventType::ContactUpdated, &body),
            pairs(&[("event_id", message)]),
            "{id}"
        );
    }
    let body = edited(EventType::ContactUpdated, |b| {
        b.insert("event_id".into(), json!("a".repeat(128)));
    });
    assert!(check(EventType::ContactUpdated, &body).is_ok());
}

#[test]
fn bad_timestamps_are_rejected() {
    let bad = [
        json!("2026-03-19"),
        json!("2026-03-19T10:15:22"),
        json!("2026-03-19 10:15:22"),
        json!("2026-13-19T10:15:22Z"),
        json!("2026-02-30T10:15:22Z"),
        json!("19/03/2026 10:15"),
        json!(format!("2026-03-19T10:15:22.{}Z", "1".repeat(100))),
        json!(1_773_915_322),
        json!(""),
    ];
    for value in bad {
        let body = edited(EventType::MeetingBooked, |b| {
            b.insert("occurred_at".into(), value.clone());
            at(b, "meeting").insert("starts_at".into(), value.clone());
        });
        assert_eq!(
            errors(EventType::MeetingBooked, &body),
            pairs(&[
                ("meeting.starts_at", "must be an RFC 3339 timestamp"),
                ("occurred_at", "must be an RFC 3339 timestamp"),
            ]),
            "{value}"
        );
    }
    for good in [
        "2026-03-19T10:15:22Z",
        "2026-03-19T10:15:22.123456+05:30",
        "2026-03-19T10:15:22-00:00",
    ] {
        let body = edited(EventType::MeetingBooked, |b| {
            b.insert("occurred_at".into(), json!(good));
        });
        assert!(check(EventType::MeetingBooked, &body).is_ok(), "{good}");
    }
}

#[test]
fn close_date_takes_a_date_or_a_timestamp() {
    for good in ["2026-03-19", "2026-03-19T00:00:00Z"] {
        let body = edited(EventType::DealStageChanged, |b| {
            at(b, "deal").insert("close_date".into(), json!(good));
        });
        assert!(check(EventType::DealStageChanged, &body).is_ok(), "{good}");
    }
    for bad in [
        json!("2026-3-19"),
        json!("2026-02-30"),
        json!("+2026-03-1"),
        json!(20260319),
    ] {
        let body = edited(EventType::DealStageChanged, |b| {
            at(b, "deal").insert("close_date".into(), bad.clone());
        });
        assert_eq!(
            errors(EventType::DealStageChanged, &body),
            pairs(&[(
                "deal.close_date",
                "must be an RFC 3339 timestamp or a YYYY-MM-DD date"
            )]),
            "{bad}"
        );
    }
}

#[test]
fn over_long_strings_are_rejected_with_their_bound() {
    let body = edited(EventType::LeadCreated, |b| {
        b.insert("source".into(), json!("s".repeat(65)));
        let lead = at(b, "lead");
        lead.insert(
            "email".into(),
            json!(format!("{}@example.com", "a".repeat(320))),
        );
        lead.insert("first_name".into(), json!("é".repeat(257)));
        let attribution = at(b, "attribution");
        attribution.insert(
            "landing_url".into(),
            json!(format!("https://x.example/{}", "p".repeat(2048))),
        );
    });
    assert_eq!(
        errors(EventType::LeadCreated, &body),
        pairs(&[
            ("attribution.landing_url", "must be at most 2048 characters"),
            ("lead.email", "must be at most 320 characters"),
            ("lead.first_name", "must be at most 256 characters"),
            ("source", "must be at most 64 characters"),
        ])
    );
}

#[test]
fn lengths_are_counted_in_characters_not_bytes() {
    let body = edited(EventType::LeadCreated, |b| {
        b.insert("source".into(), json!("é".repeat(64)));
        at(b, "lead").insert("first_name".into(), json!("名".repeat(256)));
    });
    assert!(check(EventType::LeadCreated, &body).is_ok());
}

#[test]
fn free_text_allows_4096_characters() {
    let body = edited(EventType::PaymentFailed, |b| {
        at(b, "payment").insert("failure_message".into(), json!("x".repeat(4096)));
    });
    assert!(check(EventType::PaymentFailed, &body).is_ok());
    let body = edited(EventType::PaymentFailed, |b| {
        at(b, "payment").insert("failure_message".into(), json!("x".repeat(4097)));
    });
    assert_eq!(
        errors(EventType::PaymentFailed, &body),
        pairs(&[("payment.failure_message", "must be at most 4096 characters")])
    );
}

#[test]
fn wrong_types_are_named_precisely() {
    let body = edited(EventType::PaymentFailed, |b| {
        b.insert("schema_version".into(), json!("1"));
        at(b, "customer").insert("marketing_opt_in".into(), json!("true"));
        let payment = at(b, "payment");
        payment.insert("amount".into(), json!("99.50"));
        payment.insert("attempt_count".into(), json!(2.0));
        payment.insert("currency".into(), json!(840));
        payment.insert("failure_code".into(), json!({"code": "x"}));
        b.insert("subscription".into(), json!(["sub_77AB"]));
    });
    assert_eq!(
        errors(EventType::PaymentFailed, &body),
        pairs(&[
            ("customer.marketing_opt_in", "must be a boolean"),
            ("payment.amount", "must be a number"),
            ("payment.attempt_count", "must be an integer"),
            ("payment.currency", "must be a 3-letter currency code"),
            ("payment.failure_code", "must be a string"),
            ("schema_version", "must be an integer"),
            ("subscription", "must be an object"),
        ])
    );
}

#[test]
fn numbers_are_range_checked() {
    let body = edited(EventType::MeetingBooked, |b| {
        at(b, "meeting").insert("duration_minutes".into(), json!(0));
    });
    assert_eq!(
        errors(EventType::MeetingBooked, &body),
        pairs(&[("meeting.duration_minutes", "must be at least 1")])
    );
    let body = edited(EventType::MeetingBooked, |b| {
        at(b, "meeting").insert("duration_minutes".into(), json!(1441));
    });
    assert_eq!(
        errors(EventType::MeetingBooked, &body),
        pairs(&[("meeting.duration_minutes", "must be at most 1440")])
    );

    let body = edited(EventType::PaymentFailed, |b| {
        let payment = at(b, "payment");
        payment.insert("amount".into(), json!(-1));
        payment.insert("attempt_count".into(), json!(0));
        at(b, "subscription").insert("mrr".into(), json!(1e13));
    });
    assert_eq!(
        errors(EventType::PaymentFailed, &body),
        pairs(&[
            ("payment.amount", "must not be negative"),
            ("payment.attempt_count", "must be at least 1"),
            ("subscription.mrr", "must be at most 1000000000000"),
        ])
    );

    let body = edited(EventType::DealStageChanged, |b| {
        at(b, "company").insert("employee_count".into(), json!(u64::MAX));
        at(b, "deal").insert("amount".into(), json!(0));
    });
    assert_eq!(
        errors(EventType::DealStageChanged, &body),
        pairs(&[("company.employee_count", "must be at most 4294967295")])
    );
}

#[test]
fn currencies_are_three_letters() {
    for bad in ["US", "USDT", "U$D", "€€€"] {
        let body = edited(EventType::DealStageChanged, |b| {
            at(b, "deal").insert("currency".into(), json!(bad));
        });
        assert_eq!(
            errors(EventType::DealStageChanged, &body),
            pairs(&[("deal.currency", "must be a 3-letter currency code")]),
            "{bad}"
        );
    }
}

#[test]
fn schema_version_must_be_one() {
    for version in [json!(1), json!(null)] {
        let body = edited(EventType::LeadCreated, |b| {
            b.insert("schema_version".into(), version.clone());
        });
        assert_eq!(
            check(EventType::LeadCreated, &body).unwrap().schema_version,
            1
        );
    }
    for version in [json!(0), json!(2), json!(-1), json!(u64::MAX)] {
        let body = edited(EventType::LeadCreated, |b| {
            b.insert("schema_version".into(), version.clone());
        });
        assert_eq!(
            errors(EventType::LeadCreated, &body),
            pairs(&[("schema_version", UNSUPPORTED_SCHEMA_VERSION)]),
            "{version}"
        );
    }
    let body = edited(EventType::LeadCreated, |b| {
        b.insert("schema_version".into(), json!(1.5));
    });
    assert_eq!(
        errors(EventType::LeadCreated, &body),
        pairs(&[("schema_version", "must be an integer")])
    );
}

#[test]
fn source_is_optional_but_not_blank() {
    let body = edited(EventType::LeadCreated, |b| {
        b.insert("source".into(), json!(null));
    });
    assert_eq!(check(EventType::LeadCreated, &body).unwrap().source, None);
    let body = edited(EventType::LeadCreated, |b| {
        b.insert("source".into(), json!("  "));
    });
    assert_eq!(
        errors(EventType::LeadCreated, &body),
        pairs(&[("source", "must not be blank")])
    );
}

#[test]
fn people_need_an_identifier() {
    let message = "needs at least one of email, crm_contact_id, external_id";
    let no_ids = json!({"first_name": "Alex", "crm_contact_id": null});
    let cases = [
        (EventType::CustomerConverted, "customer"),
        (EventType::MeetingBooked, "contact"),
        (EventType::DealStageChanged, "contact"),
        (EventType::PaymentFailed, "customer"),
        (EventType::ContactUpdated, "contact"),
    ];
    for (event_type, record) in cases {
        let body = edited(event_type, |b| {
            b.insert(record.into(), no_ids.clone());
        });
        assert_eq!(
            errors(event_type, &body),
            pairs(&[(record, message)]),
            "{event_type}"
        );
    }
    for id in schema::PERSON_IDS {
        let body = edited(EventType::CustomerConverted, |b| {
            b.insert("customer".into(), json!({ *id: "x@example.com" }));
        });
        assert!(check(EventType::CustomerConverted, &body).is_ok(), "{id}");
    }
}

#[test]
fn identifiers_must_not_be_blank() {
    let body = edited(EventType::CustomerConverted, |b| {
        b.insert(
            "customer".into(),
            json!({"email": " ", "crm_contact_id": "", "first_name": ""}),
        );
    });
    assert_eq!(
        errors(EventType::CustomerConverted, &body),
        pairs(&[
            ("customer.crm_contact_id", "must not be blank"),
            ("customer.email", "must not be blank"),
        ])
    );
}

#[test]
fn a_lead_needs_an_email() {
    let body = edited(EventType::LeadCreated, |b| {
        let lead = at(b, "lead");
        lead.remove("email");
        lead.insert("external_id".into(), json!("u_1"));
    });
    assert_eq!(
        errors(EventType::LeadCreated, &body),
        pairs(&[("lead.email", "is required")])
    );
    let body = edited(EventType::LeadCreated, |b| {
        b.insert("lead".into(), json!({"email": "a@example.com"}));
        b.remove("attribution");
    });
    assert!(check(EventType::LeadCreated, &body).is_ok());
}

#[test]
fn a_meeting_needs_its_id_and_start() {
    let body = edited(EventType::MeetingBooked, |b| {
        b.insert(
            "meeting".into(),
            json!({"duration_minutes": 30, "meeting_id": null}),
        );
    });
    assert_eq!(
        errors(EventType::MeetingBooked, &body),
        pairs(&[
            ("meeting.meeting_id", "is required"),
            ("meeting.starts_at", "is required")
        ])
    );
}

#[test]
fn a_deal_needs_an_id_and_a_stage() {
    let body = edited(EventType::DealStageChanged, |b| {
        b.insert("deal".into(), json!({"name": "Big one", "stage": ""}));
    });
    assert_eq!(
        errors(EventType::DealStageChanged, &body),
        pairs(&[
            ("deal", "needs at least one of deal_id, crm_deal_id"),
            ("deal.stage", "must not be blank"),
        ])
    );
    let body = json!({
        "event_id": "e1",
        "occurred_at": "2026-03-19T10:14:05Z",
        "deal": {"crm_deal_id": "1", "stage": "won"}
    });
    assert!(check(EventType::DealStageChanged, &body).is_ok());
}

#[test]
fn a_company_needs_a_key() {
    let body = edited(EventType::DealStageChanged, |b| {
        b.insert("company".into(), json!({"industry": "Software"}));
    });
    assert_eq!(
        errors(EventType::DealStageChanged, &body),
        pairs(&[(
            "company",
            "needs at least one of crm_company_id, external_id, domain, name"
        )])
    );
}

#[test]
fn a_payment_needs_an_invoice() {
    let body = edited(EventType::PaymentFailed, |b| {
        at(b, "payment").remove("invoice_id");
    });
    assert_eq!(
        errors(EventType::PaymentFailed, &body),
        pairs(&[("payment.invoice_id", "is required")])
    );
}

#[test]
fn a_contact_update_needs_something_to_update() {
    for contact in [
        json!({"email": "a@example.com"}),
        json!({"crm_contact_id": "1", "custom_properties": {}, "phone": null}),
    ] {
        let body = edited(EventType::ContactUpdated, |b| {
            b.insert("contact".into(), contact.clone());
        });
        assert_eq!(
            errors(EventType::ContactUpdated, &body),
            pairs(&[("contact", "has nothing to update")]),
            "{contact}"
        );
    }
    for contact in [
        json!({"crm_contact_id": "1", "email": "new@example.com"}),
        json!({"email": "a@example.com", "marketing_opt_in": false}),
        json!({"external_id": "u1", "custom_properties": {"tier": "gold"}}),
    ] {
        let body = edited(EventType::ContactUpdated, |b| {
            b.insert("contact".into(), contact.clone());
        });
        assert!(check(EventType::ContactUpdated, &body).is_ok(), "{contact}");
    }
    // No identifier says so, not that there is nothing to update.
    let body = edited(EventType::ContactUpdated, |b| {
        b.insert("contact".into(), json!({}));
    });
    assert_eq!(
        errors(EventType::ContactUpdated, &body),
        pairs(&[(
            "contact",
            "needs at least one of email, crm_contact_id, external_id"
        )])
    );
}

#[test]
fn custom_properties_are_flat_and_bounded() {
    let body = edited(EventType::ContactUpdated, |b| {
        at(b, "contact").insert(
            "custom_properties".into(),
            json!({
                "ok_string": "x",
                "ok_number": 1.5,
                "ok_bool": true,
                "nested": {"a": 1},
                "list": [1],
                "nothing": null,
                "long": "x".repeat(4097),
                "": "blank key",
                "k".repeat(257): "long key",
            }),
        );
    });
    assert_eq!(
        errors(EventType::ContactUpdated, &body),
        pairs(&[
            ("contact.custom_properties", "must not have a blank key"),
            (
                "contact.custom_properties",
                "must not have a key longer than 256 characters"
            ),
            (
                "contact.custom_properties.list",
                "must be a string, number or boolean"
            ),
            (
                "contact.custom_properties.long",
                "must be at most 4096 characters"
            ),
            (
                "contact.custom_properties.nested",
                "must be a string, number or boolean"
            ),
            (
                "contact.custom_properties.nothing",
                "must be a string, number or boolean"
            ),
        ])
    );

    let many: Map<String, Value> = (0..101).map(|i| (format!("p{i}"), json!(i))).collect();
    let body = edited(EventType::ContactUpdated, |b| {
        at(b, "contact").insert("custom_properties".into(), Value::Object(many));
    });
    assert_eq!(
        errors(EventType::ContactUpdated, &body),
        pairs(&[(
            "contact.custom_properties",
            "must have at most 100 properties"
        )])
    );
    let body = edited(EventType::ContactUpdated, |b| {
        at(b, "contact").insert("custom_properties".into(), json!("tier=gold"));
    });
    assert_eq!(
        errors(EventType::ContactUpdated, &body),
        pairs(&[("contact.custom_properties", "must be an object")])
    );
}

#[test]
fn null_optional_fields_count_as_not_sent() {
    let body = edited(EventType::CustomerConverted, |b| {
        b.insert("context".into(), json!(null));
        let customer = at(b, "customer");
        customer.insert("phone".into(), json!(null));
        customer.insert("mrr".into(), json!(null));
        customer.insert("custom_properties".into(), json!(null));
    });
    assert!(check(EventType::CustomerConverted, &body).is_ok());
    let body = edited(EventType::CustomerConverted, |b| {
        b.insert("customer".into(), json!(null));
    });
    assert_eq!(
        errors(EventType::CustomerConverted, &body),
        pairs(&[("customer", "is required")])
    );
}

#[test]
fn field_errors_serialize_and_display() {
    let error = FieldError::new("customer.email", "is required");
    assert_eq!(
        serde_json::to_value(&error).unwrap(),
        json!({"path": "customer.email", "message": "is required"})
    );
    assert_eq!(error.to_string(), "customer.email is required");
    assert_eq!(
        FieldError::new("", "must be a JSON object").to_string(),
        "body must be a JSON object"
    );
}

/// `docs/events.md`, which publishers read.
fn docs() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/events.md");
    std::fs::read_to_string(path).unwrap_or_else(|err| panic!("reading {path}: {err}"))
}

/// The text of the `## heading` section of `docs`, up to the next `## `.
fn section<'a>(docs: &'a str, heading: &str) -> &'a str {
    let start = docs
        .find(&format!("\n## {heading}\n"))
        .unwrap_or_else(|| panic!("docs/events.md has no section {heading}"));
    let rest = &docs[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    &rest[..end]
}

/// The ```json blocks of `text`.
fn json_blocks(text: &str) -> Vec<&str> {
    text.split("```json\n")
        .skip(1)
        .map(|block| block.split("\n```").next().expect("a closed block"))
        .collect()
}

#[test]
fn the_docs_examples_are_the_examples_and_pass() {
    let docs = docs();
    for event_type in EventType::ALL {
        let section = section(&docs, &format!("`{event_type}`"));
        let blocks = json_blocks(section);
        assert_eq!(
            blocks.len(),
            1,
            "{event_type}: one example in docs/events.md"
        );
        let body: Value = serde_json::from_str(blocks[0])
            .unwrap_or_else(|err| panic!("{event_type} example in docs/events.md: {err}"));
        if let Err(errors) = check(event_type, &body) {
            panic!("{event_type} example in docs/events.md rejected: {errors:?}");
        }
        assert_eq!(
            body,
            example(event_type),
            "{event_type}: docs/events.md and example() differ"
        );
    }
}

#[test]
fn the_docs_error_example_has_the_real_errors() {
    let docs = docs();
    let blocks = json_blocks(section(&docs, "Errors"));
    let response: Value = serde_json::from_str(blocks[0]).unwrap();
    assert_eq!(response["error"]["code"], "validation_failed");
    let documented = response["error"]["fields"].clone();

    let body = edited(EventType::CustomerConverted, |b| {
        b.insert("occurred_at".into(), json!("19/03/2026"));
        let customer = at(b, "customer");
        let email = customer.remove("email").unwrap();
        customer.remove("crm_contact_id");
        customer.insert("emial".into(), email);
    });
    let actual =
        serde_json::to_value(check(EventType::CustomerConverted, &body).unwrap_err()).unwrap();
    assert_eq!(documented, actual);
}

/// Every field path of `record` under `path`, with the field's name
/// and whether it is one of the shared person fields.
fn field_paths(record: &Record, path: &str, out: &mut Vec<(String, &'static str, bool)>) {
    let is_person = |group: &[schema::Field]| {
        group.len() == PERSON.len() && group.iter().zip(PERSON).all(|(a, b)| a.name == b.name)
    };
    for group in record.groups {
        for field in group.iter() {
            let field_path = join(path, field.name);
            if let Kind::Object(inner) = &field.kind {
                field_paths(inner, &field_path, out);
            }
            out.push((field_path, field.name, is_person(group)));
        }
    }
}

#[test]
fn the_docs_name_every_field() {
    let docs = docs();
    let person = section(&docs, "Person fields");
    let common = section(&docs, "Rules for every type");
    for name in ENVELOPE_FIELDS {
        assert!(
            common.contains(&format!("`{name}`")),
            "envelope field {name} is not documented"
        );
    }
    for event_type in EventType::ALL {
        let own = section(&docs, &format!("`{event_type}`"));
        let mut paths = Vec::new();
        field_paths(schema::body(event_type), "", &mut paths);
        for (path, name, is_person) in paths {
            let in_person = is_person && person.contains(&format!("`{name}`"));
            assert!(
                own.contains(&format!("`{path}`")) || in_person,
                "{event_type}: field {path} is not documented in docs/events.md"
            );
        }
    }
}
