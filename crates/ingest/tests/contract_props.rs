//! Property tests of `handoff_ingest::contract::check`: it never panics on any
//! JSON, a rejection always says why, and breaking a valid example is caught at
//! the field that was broken.

use handoff_events::EventType;
use handoff_ingest::contract::{FieldError, check, example};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// Field names of the v1 contracts, so random objects mostly hit the field
/// checks rather than only the unknown-key rule.
const NAMES: &[&str] = &[
    "event_id",
    "occurred_at",
    "source",
    "schema_version",
    "event_type",
    "customer",
    "lead",
    "contact",
    "meeting",
    "deal",
    "company",
    "payment",
    "subscription",
    "context",
    "attribution",
    "email",
    "crm_contact_id",
    "external_id",
    "first_name",
    "phone",
    "marketing_opt_in",
    "custom_properties",
    "mrr",
    "amount",
    "currency",
    "meeting_id",
    "starts_at",
    "duration_minutes",
    "deal_id",
    "stage",
    "close_date",
    "invoice_id",
    "attempt_count",
    "next_retry_at",
    "employee_count",
    "landing_url",
];

fn event_type() -> impl Strategy<Value = EventType> {
    proptest::sample::select(EventType::ALL.to_vec())
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
        Just(json!("2026-03-19T10:15:22Z")),
        Just(json!("2026-03-19")),
        Just(json!("a".repeat(300))),
        Just(json!("")),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![3 => proptest::sample::select(NAMES).prop_map(str::to_owned), 1 => ".{0,12}"]
}

/// Any JSON value, nested a few levels, with keys that are mostly real field names.
fn json_value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..8)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// A rejection lists at least one error, each with a message, sorted by path.
fn assert_well_formed(errors: &[FieldError]) {
    assert!(!errors.is_empty(), "rejected without a reason");
    assert!(
        errors.iter().all(|e| !e.message.is_empty()),
        "an error without a message: {errors:?}"
    );
    assert!(
        errors.windows(2).all(|w| w[0].path <= w[1].path),
        "errors not sorted: {errors:?}"
    );
}

/// Every path in `value` to a field inside an object, as keys from the root.
fn field_paths(value: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    if let Value::Object(obj) = value {
        for (key, child) in obj {
            prefix.push(key.clone());
            out.push(prefix.clone());
            field_paths(child, prefix, out);
            prefix.pop();
        }
    }
}

/// Every example's field paths, with the event type.
fn example_fields() -> Vec<(EventType, Vec<String>)> {
    let mut all = Vec::new();
    for event_type in EventType::ALL {
        let mut paths = Vec::new();
        field_paths(&example(event_type), &mut Vec::new(), &mut paths);
        all.extend(paths.into_iter().map(|path| (event_type, path)));
    }
    all
}

/// The object holding the last key of `path`, in `body`.
fn parent_of<'a>(body: &'a mut Value, path: &[String]) -> &'a mut Map<String, Value> {
    let mut obj = body.as_object_mut().expect("examples are objects");
    for key in &path[..path.len() - 1] {
        obj = obj
            .get_mut(key)
            .and_then(Value::as_object_mut)
            .expect("an object on the path");
    }
    obj
}

/// Values of a JSON type that `original` at `path` cannot be replaced with.
fn wrong_types(original: &Value, path: &[String]) -> Vec<Value> {
    // Inside custom_properties any scalar is fine, so only containers are wrong.
    if path.len() >= 2 && path[path.len() - 2] == "custom_properties" {
        return vec![json!([]), json!({"a": 1})];
    }
    let mut values = vec![json!(["x"])];
    match original {
        Value::Object(_) => values.extend([json!("x"), json!(1), json!(true)]),
        Value::String(_) => values.extend([json!(1), json!(false), json!({})]),
        Value::Number(_) => values.extend([json!("1"), json!(true), json!({})]),
        Value::Bool(_) => values.extend([json!("true"), json!(1), json!({})]),
        Value::Array(_) | Value::Null => {}
    }
    values
}

/// Paths to the required fields the examples carry, per type.
const REQUIRED: &[(EventType, &str)] = &[
    (EventType::LeadCreated, "event_id"),
    (EventType::LeadCreated, "occurred_at"),
    (EventType::LeadCreated, "lead"),
    (EventType::LeadCreated, "lead.email"),
    (EventType::MeetingBooked, "event_id"),
    (EventType::MeetingBooked, "occurred_at"),
    (EventType::MeetingBooked, "contact"),
    (EventType::MeetingBooked, "meeting"),
    (EventType::MeetingBooked, "meeting.meeting_id"),
    (EventType::MeetingBooked, "meeting.starts_at"),
    (EventType::CustomerConverted, "event_id"),
    (EventType::CustomerConverted, "occurred_at"),
    (EventType::CustomerConverted, "customer"),
    (EventType::DealStageChanged, "event_id"),
    (EventType::DealStageChanged, "occurred_at"),
    (EventType::DealStageChanged, "deal"),
    (EventType::DealStageChanged, "deal.stage"),
    (EventType::PaymentFailed, "event_id"),
    (EventType::PaymentFailed, "occurred_at"),
    (EventType::PaymentFailed, "customer"),
    (EventType::PaymentFailed, "payment"),
    (EventType::PaymentFailed, "payment.invoice_id"),
    (EventType::ContactUpdated, "event_id"),
    (EventType::ContactUpdated, "occurred_at"),
    (EventType::ContactUpdated, "contact"),
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_json_is_checked_without_panicking(event_type in event_type(), body in json_value()) {
        if let Err(errors) = check(event_type, &body) {
            assert_well_formed(&errors);
        }
    }

    #[test]
    fn any_object_with_a_valid_envelope_is_checked_without_panicking(
        event_type in event_type(),
        fields in prop::collection::btree_map(key(), json_value(), 0..8),
    ) {
        let mut body = example(event_type);
        let obj = body.as_object_mut().expect("examples are objects");
        obj.extend(fields);
        if let Err(errors) = check(event_type, &body) {
            assert_well_formed(&errors);
        }
    }

    #[test]
    fn any_field_of_an_example_can_be_replaced_without_panicking(
        (event_type, path) in proptest::sample::select(example_fields()),
        value in json_value(),
    ) {
        let mut body = example(event_type);
        parent_of(&mut body, &path).insert(path[path.len() - 1].clone(), value);
        if let Err(errors) = check(event_type, &body) {
            assert_well_formed(&errors);
        }
    }

    #[test]
    fn dropping_a_required_field_is_reported_at_its_path(
        (event_type, dotted) in proptest::sample::select(REQUIRED),
        as_null in any::<bool>(),
    ) {
        let path: Vec<String> = dotted.split('.').map(str::to_owned).collect();
        let mut body = example(event_type);
        let parent = parent_of(&mut body, &path);
        let last = &path[path.len() - 1];
        if as_null {
            parent.insert(last.clone(), Value::Null);
        } else {
            parent.remove(last);
        }
        let errors = check(event_type, &body).expect_err("a body without a required field");
        prop_assert_eq!(errors, vec![FieldError::new(dotted, "is required")]);
    }

    #[test]
    fn a_field_of_the_wrong_type_is_reported_at_its_path(
        (event_type, path, replacement) in proptest::sample::select(example_fields())
            .prop_flat_map(|(event_type, path)| {
                let original = lookup(&example(event_type), &path);
                let wrong = wrong_types(&original, &path);
                (Just(event_type), Just(path), proptest::sample::select(wrong))
            }),
    ) {
        let mut body = example(event_type);
        parent_of(&mut body, &path).insert(path[path.len() - 1].clone(), replacement.clone());
        let errors = check(event_type, &body).expect_err("a body with a field of the wrong type");
        let dotted = path.join(".");
        prop_assert_eq!(errors.len(), 1, "{} = {}: {:?}", dotted, replacement, errors);
        prop_assert_eq!(&errors[0].path, &dotted);
        prop_assert!(errors[0].message.starts_with("must "), "{:?}", errors[0]);
    }
}

/// The value at `path` in `value`.
fn lookup(value: &Value, path: &[String]) -> Value {
    path.iter()
        .fold(value.clone(), |v, key| v[key.as_str()].clone())
}
