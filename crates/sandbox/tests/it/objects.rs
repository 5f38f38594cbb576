//! The CRM object API: create, get (by id and by unique property), update, batch upsert, search,
//! unique-value conflicts, validation bodies, and associations.

use handoff_sandbox::request_log::WriteOp;
use serde_json::{Value, json};

use crate::helpers::start;

/// (type, unique property, a unique value, another writable property, its value)
const TYPES: [(&str, &str, &str, &str, &str); 4] = [
    ("contacts", "email", "ada@example.com", "firstname", "Ada"),
    (
        "companies",
        "handoff_external_id",
        "co-1",
        "name",
        "Example Co",
    ),
    (
        "deals",
        "handoff_deal_id",
        "deal-9001",
        "dealname",
        "Pro plan",
    ),
    (
        "tickets",
        "handoff_ticket_key",
        "inv-1",
        "subject",
        "Payment failed",
    ),
];

fn is_iso(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| s.len() == 24 && s.ends_with('Z') && s.as_bytes()[10] == b'T')
}

#[tokio::test]
async fn create_get_and_update_every_type_by_id_and_by_unique_property() {
    let hs = start().await;
    for (ty, unique, key, prop, value) in TYPES {
        let r = hs
            .post(
                &format!("/crm/v3/objects/{ty}"),
                json!({ "properties": { unique: key, prop: value } }),
            )
            .await;
        assert_eq!(r.status, 201, "{ty}: {:?}", r.body);
        let id = r.body["id"].as_str().unwrap().to_owned();
        assert!(id.parse::<u64>().is_ok(), "HubSpot ids are numeric strings");
        assert_eq!(r.body["archived"], json!(false));
        assert!(is_iso(&r.body["createdAt"]) && is_iso(&r.body["updatedAt"]));
        assert_eq!(r.body["properties"][prop], json!(value));
        assert_eq!(r.body["properties"]["hs_object_id"], json!(id));

        let by_id = hs
            .get(&format!(
                "/crm/v3/objects/{ty}/{id}?properties={prop},{unique}"
            ))
            .await;
        assert_eq!(by_id.status, 200);
        assert_eq!(by_id.body["properties"][unique], json!(key));

        let by_key = hs
            .get(&format!(
                "/crm/v3/objects/{ty}/{key}?idProperty={unique}&properties={prop}"
            ))
            .await;
        assert_eq!(by_key.status, 200, "{:?}", by_key.body);
        assert_eq!(by_key.body["id"], json!(id));

        let upd = hs
            .patch(
                &format!("/crm/v3/objects/{ty}/{key}?idProperty={unique}"),
                json!({ "properties": { prop: "changed" } }),
            )
            .await;
        assert_eq!(upd.status, 200, "{:?}", upd.body);
        assert_eq!(upd.body["properties"][prop], json!("changed"));
        let upd = hs
            .patch(
                &format!("/crm/v3/objects/{ty}/{id}"),
                json!({ "properties": { "handoff_note": 42 } }),
            )
            .await;
        assert_eq!(upd.status, 200);
        assert_eq!(
            upd.body["properties"]["handoff_note"],
            json!("42"),
            "values come back as strings"
        );

        let missing = hs.get(&format!("/crm/v3/objects/{ty}/999999999")).await;
        assert_eq!(missing.status, 404);
        assert_eq!(missing.body["category"], json!("OBJECT_NOT_FOUND"));
        assert!(missing.body["correlationId"].is_string());
    }
    let writes: Vec<_> = hs
        .sb
        .requests()
        .into_iter()
        .flat_map(|e| e.writes)
        .collect();
    assert_eq!(writes.iter().filter(|w| w.op == WriteOp::Create).count(), 4);
    assert_eq!(writes.iter().filter(|w| w.op == WriteOp::Update).count(), 8);
    hs.sb.stop().await.unwrap();
}

#[tokio::test]
async fn a_second_record_with_a_unique_value_is_a_409_naming_the_existing_id() {
    let hs = start().await;
    for (ty, unique, key, _, _) in TYPES {
        let id = hs.create(ty, json!({ unique: key })).await;
        let again = hs
            .post(
                &format!("/crm/v3/objects/{ty}"),
                json!({ "properties": { unique: key.to_uppercase() } }),
            )
            .await;
        if ty == "contacts" {
            // Email is compared case-insensitively.
            assert_eq!(again.status, 409, "{:?}", again.body);
            assert_eq!(again.body["category"], json!("CONFLICT"));
            assert_eq!(again.body["status"], json!("error"));
            assert_eq!(
                again.body["message"],
                json!(format!("Contact already exists. Existing ID: {id}"))
            );
        } else {
            assert_eq!(again.status, 201, "other unique values are case-sensitive");
        }
        let exact = hs
            .post(
                &format!("/crm/v3/objects/{ty}"),
                json!({ "properties": { unique: key } }),
            )
            .await;
        assert_eq!(exact.status, 409);
        assert!(
            exact.body["message"]
                .as_str()
                .unwrap()
                .ends_with(&format!("Existing ID: {id}"))
        );
    }
    // Taking another record's email with an update is a conflict too.
    let other = hs
        .create("contacts", json!({ "email": "other@example.com" }))
        .await;
    let steal = hs
        .patch(
            &format!("/crm/v3/objects/contacts/{other}"),
            json!({ "properties": { "email": "ada@example.com" } }),
        )
        .await;
    assert_eq!(steal.status, 409);
    assert_eq!(
        hs.sb
            .records(handoff_sandbox::hubspot::ObjectType::Contacts)
            .len(),
        2
    );
}

#[tokio::test]
async fn batch_upsert_creates_then_updates_and_the_log_says_which_per_key() {
    let hs = start().await;
    let first = hs
        .post(
            "/crm/v3/objects/contacts/batch/upsert",
            json!({ "inputs": [
                { "idProperty": "email", "id": "a@example.com", "properties": { "firstname": "A" } },
                { "idProperty": "email", "id": "b@example.com", "properties": { "firstname": "B" } },
            ]}),
        )
        .await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    assert_eq!(first.body["status"], json!("COMPLETE"));
    assert!(is_iso(&first.body["startedAt"]) && is_iso(&first.body["completedAt"]));
    let results = first.body["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert!(results.iter().all(|r| r["new"] == json!(true)));
    assert_eq!(results[0]["properties"]["email"], json!("a@example.com"));

    let second = hs
        .post(
            "/crm/v3/objects/contacts/batch/upsert",
            json!({ "inputs": [
                { "idProperty": "email", "id": "A@Example.com", "properties": { "lastname": "Lovelace" } },
                { "idProperty": "email", "id": "c@example.com", "properties": {} },
            ]}),
        )
        .await;
    assert_eq!(second.status, 200, "{:?}", second.body);
    let results = second.body["results"].as_array().unwrap();
    assert_eq!(results[0]["new"], json!(false));
    assert_eq!(results[0]["id"], first.body["results"][0]["id"]);
    assert_eq!(results[0]["properties"]["firstname"], json!("A"), "merged");
    assert_eq!(results[1]["new"], json!(true));

    // Deals by their own unique key.
    let deal = hs
        .post(
            "/crm/v3/objects/deals/batch/upsert",
            json!({ "inputs": [{ "idProperty": "handoff_deal_id", "id": "D-1",
                                 "properties": { "dealname": "x", "dealstage": "closedwon" } }] }),
        )
        .await;
    assert_eq!(deal.status, 200, "{:?}", deal.body);

    let log = hs.sb.requests();
    let ops: Vec<(String, WriteOp)> = log
        .iter()
        .flat_map(|e| e.writes.iter().map(|w| (w.key.clone(), w.op)))
        .collect();
    assert_eq!(
        ops,
        vec![
            ("a@example.com".to_owned(), WriteOp::Create),
            ("b@example.com".to_owned(), WriteOp::Create),
            ("a@example.com".to_owned(), WriteOp::Update),
            ("c@example.com".to_owned(), WriteOp::Create),
            ("D-1".to_owned(), WriteOp::Create),
        ]
    );
    let stats = hs.sb.stats();
    assert_eq!(stats.creates["contacts"].len(), 3);
    assert!(stats.creates["contacts"].values().all(|n| *n == 1));
    assert_eq!(stats.updates["contacts"]["a@example.com"], 1);
    assert_eq!(stats.creates["deals"]["D-1"], 1);

    // Whole-batch refusals: duplicate ids, a non-unique idProperty, an unknown property.
    for (inputs, needle) in [
        (
            json!([{ "idProperty": "email", "id": "x@e.com" }, { "idProperty": "email", "id": "X@e.com" }]),
            "Duplicate IDs",
        ),
        (
            json!([{ "idProperty": "firstname", "id": "Ada" }]),
            "not a unique property",
        ),
        (
            json!([{ "idProperty": "email", "id": "y@e.com", "properties": { "shoe_size": 9 } }]),
            "shoe_size",
        ),
    ] {
        let r = hs
            .post(
                "/crm/v3/objects/contacts/batch/upsert",
                json!({ "inputs": inputs }),
            )
            .await;
        assert_eq!(r.status, 400);
        assert_eq!(r.body["category"], json!("VALIDATION_ERROR"));
        assert!(
            r.body["message"].as_str().unwrap().contains(needle),
            "{:?}",
            r.body
        );
    }
    assert_eq!(
        hs.sb
            .records(handoff_sandbox::hubspot::ObjectType::Contacts)
            .len(),
        3
    );
}

#[tokio::test]
async fn search_finds_by_eq_filters_with_requested_properties() {
    let hs = start().await;
    for (ty, unique, key, prop, value) in TYPES {
        hs.create(ty, json!({ unique: key, prop: value })).await;
        hs.create(ty, json!({ unique: format!("{key}-2"), prop: "other" }))
            .await;
        hs.create(ty, json!({ unique: format!("{key}-3"), prop: "other" }))
            .await;
        let path = format!("/crm/v3/objects/{ty}/search");
        let one = hs
            .post(
                &path,
                json!({
                    "filterGroups": [{ "filters": [{ "propertyName": unique, "operator": "EQ", "value": key }] }],
                    "properties": [prop],
                }),
            )
            .await;
        assert_eq!(one.status, 200, "{:?}", one.body);
        assert_eq!(one.body["total"], json!(1));
        assert_eq!(one.body["results"][0]["properties"][prop], json!(value));

        // Groups are ORed, filters in a group ANDed; paging by `after`.
        let page = hs
            .post(
                &path,
                json!({
                    "filterGroups": [
                        { "filters": [{ "propertyName": prop, "operator": "EQ", "value": "other" },
                                      { "propertyName": unique, "operator": "NEQ", "value": "nope" }] },
                        { "filters": [{ "propertyName": unique, "operator": "EQ", "value": key }] },
                    ],
                    "limit": 2,
                }),
            )
            .await;
        assert_eq!(page.body["total"], json!(3));
        assert_eq!(page.body["results"].as_array().unwrap().len(), 2);
        let after = page.body["paging"]["next"]["after"]
            .as_str()
            .unwrap()
            .to_owned();
        let rest = hs
            .post(
                &path,
                json!({ "filterGroups": [], "limit": 2, "after": after }),
            )
            .await;
        assert_eq!(rest.body["results"].as_array().unwrap().len(), 1);
        assert!(rest.body.get("paging").is_none());

        let none = hs
            .post(
                &path,
                json!({ "filterGroups": [{ "filters": [{ "propertyName": unique, "operator": "EQ", "value": "absent" }] }] }),
            )
            .await;
        assert_eq!(none.body["total"], json!(0));
    }
    let bad = hs
        .post(
            "/crm/v3/objects/contacts/search",
            json!({ "filterGroups": [{ "filters": [{ "propertyName": "email", "operator": "CONTAINS_TOKEN", "value": "x" }] }] }),
        )
        .await;
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn invalid_input_gets_hubspot_validation_bodies() {
    let hs = start().await;
    let unknown = hs
        .post(
            "/crm/v3/objects/contacts",
            json!({ "properties": { "email": "a@b.com", "favourite_colour": "red" } }),
        )
        .await;
    assert_eq!(unknown.status, 400);
    assert_eq!(unknown.body["status"], json!("error"));
    assert_eq!(unknown.body["category"], json!("VALIDATION_ERROR"));
    let msg = unknown.body["message"].as_str().unwrap();
    assert!(msg.starts_with("Property values were not valid: "), "{msg}");
    assert!(
        msg.contains("PROPERTY_DOESNT_EXIST") && msg.contains("favourite_colour"),
        "{msg}"
    );
    assert_eq!(
        unknown.body["errors"][0]["context"]["propertyName"][0],
        json!("favourite_colour")
    );

    let stage = hs
        .post(
            "/crm/v3/objects/contacts",
            json!({ "properties": { "email": "a@b.com", "lifecyclestage": "best_friend" } }),
        )
        .await;
    assert_eq!(stage.status, 400);
    assert!(
        stage.body["message"]
            .as_str()
            .unwrap()
            .contains("INVALID_OPTION")
    );
    hs.create(
        "contacts",
        json!({ "email": "a@b.com", "lifecyclestage": "customer" }),
    )
    .await;

    let not_json = hs
        .http
        .post(hs.url("/crm/v3/objects/contacts"))
        .bearer_auth(handoff_sandbox::testing::TEST_TOKEN)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), 400);
    let body: Value = not_json.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("Invalid input JSON")
    );

    let ty = hs
        .post("/crm/v3/objects/widgets", json!({ "properties": {} }))
        .await;
    assert_eq!(ty.status, 400);
    assert!(ty.body["message"].as_str().unwrap().contains("widgets"));

    assert!(
        hs.sb.stats().creates["contacts"].len() == 1,
        "refusals write nothing"
    );
}

#[tokio::test]
async fn associations_are_stored_and_visible_from_both_ends() {
    let hs = start().await;
    let contact = hs.create("contacts", json!({ "email": "a@b.com" })).await;
    let company = hs.create("companies", json!({ "name": "B Co" })).await;
    let path =
        format!("/crm/v4/objects/contacts/{contact}/associations/default/companies/{company}");
    let put = hs.put(&path).await;
    assert_eq!(put.status, 200, "{:?}", put.body);
    assert_eq!(put.body["status"], json!("COMPLETE"));
    assert_eq!(
        put.body["results"][0]["associationSpec"]["associationTypeId"],
        json!(279)
    );
    assert_eq!(hs.put(&path).await.status, 200, "idempotent");

    let from_contact = hs
        .get(&format!(
            "/crm/v4/objects/contacts/{contact}/associations/companies"
        ))
        .await;
    assert_eq!(
        from_contact.body["results"][0]["toObjectId"],
        json!(company.parse::<u64>().unwrap())
    );
    let from_company = hs
        .get(&format!(
            "/crm/v4/objects/company/{company}/associations/contact"
        ))
        .await;
    assert_eq!(
        from_company.body["results"][0]["toObjectId"],
        json!(contact.parse::<u64>().unwrap())
    );
    assert_eq!(
        from_company.body["results"][0]["associationTypes"][0]["typeId"],
        json!(280)
    );

    let missing = hs
        .put(&format!(
            "/crm/v4/objects/contacts/{contact}/associations/default/deals/424242"
        ))
        .await;
    assert_eq!(missing.status, 404);

    assert_eq!(hs.sb.associations().len(), 1);
    let key = format!("contacts:{contact}->companies:{company}");
    let stats = hs.sb.stats();
    assert_eq!(stats.creates["associations"][&key], 1);
    assert_eq!(stats.updates["associations"][&key], 1);
}
