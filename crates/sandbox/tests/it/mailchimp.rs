//! The Mailchimp Marketing API v3 stand-in, through HTTP as an email writer would use it: basic
//! auth, member upsert and its status rules, tags, events (posted and listed), the connection
//! limit, faults, the control API and reset.

use std::time::{Duration, Instant};

use handoff_sandbox::faults::{FaultConfig, Latency, Outage, Storm};
use handoff_sandbox::mailchimp::Status;
use handoff_sandbox::mailchimp::hash::subscriber_hash;
use handoff_sandbox::request_log::WriteOp;
use handoff_sandbox::testing::{TEST_MAILCHIMP_KEY, TEST_MAILCHIMP_LIST};
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Hs, Resp, start};

const LIST: &str = TEST_MAILCHIMP_LIST;

fn member_path(email: &str) -> String {
    format!("/3.0/lists/{LIST}/members/{}", subscriber_hash(email))
}

/// Sends with basic auth `anystring:{key}` (None: no Authorization header).
async fn mc_as(
    hs: &Hs,
    key: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Resp {
    let mut req = hs.http.request(method, hs.url(path));
    if let Some(k) = key {
        req = req.basic_auth("anystring", Some(k));
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("transport");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.expect("body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)))
    };
    Resp {
        status,
        headers,
        body,
    }
}

async fn mc(hs: &Hs, method: Method, path: &str, body: Option<Value>) -> Resp {
    mc_as(hs, Some(TEST_MAILCHIMP_KEY), method, path, body).await
}

async fn put_member(hs: &Hs, email: &str, body: Value) -> Resp {
    mc(hs, Method::PUT, &member_path(email), Some(body)).await
}

fn assert_problem(r: &Resp, status: u16, title: &str) {
    assert_eq!(r.status, status, "{:?}", r.body);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(
        r.body["type"],
        json!("https://mailchimp.com/developer/marketing/docs/errors/")
    );
    assert_eq!(r.body["title"], json!(title), "{:?}", r.body);
    assert_eq!(r.body["status"], json!(status));
    assert!(r.body["instance"].as_str().is_some_and(|s| s.len() == 36));
}

#[tokio::test]
async fn basic_auth_with_a_configured_key_is_accepted_and_anything_else_refused() {
    let hs = start().await;
    let path = member_path("nobody@example.com");
    for key in [None, Some("wrong-key-us1")] {
        let r = mc_as(&hs, key, Method::GET, &path, None).await;
        assert_problem(&r, 401, "API Key Invalid");
        let mut body = r.body.clone();
        body.as_object_mut().expect("object").remove("instance");
        assert_eq!(
            body,
            json!({
                "type": "https://mailchimp.com/developer/marketing/docs/errors/",
                "title": "API Key Invalid",
                "status": 401,
                "detail": "Your API key may be invalid, or you've attempted to access the wrong datacenter.",
            })
        );
    }
    // The key as a bearer token is not basic auth.
    let r = hs
        .send_as(Some(TEST_MAILCHIMP_KEY), Method::GET, &path, None)
        .await;
    assert_eq!(r.status, 401);
    // The right key with any username gets through to the route: no such member.
    let r = mc(&hs, Method::GET, &path, None).await;
    assert_problem(&r, 404, "Resource Not Found");
    let log = hs.sb.requests();
    assert!(log.iter().all(|e| e.api == "mailchimp"));
    assert_eq!(
        log.last().and_then(|e| e.token.as_deref()),
        Some(TEST_MAILCHIMP_KEY)
    );
}

#[tokio::test]
async fn put_creates_then_updates_and_merges_merge_fields() {
    let hs = start().await;
    let email = "Ada@Example.com";
    let r = put_member(
        &hs,
        email,
        json!({"email_address": email, "status_if_new": "subscribed", "merge_fields": {"FNAME": "Ada"}}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["id"], json!(subscriber_hash("ada@example.com")));
    assert_eq!(r.body["email_address"], json!(email));
    assert_eq!(r.body["status"], json!("subscribed"));
    assert_eq!(r.body["list_id"], json!(LIST));
    assert!(r.body["unique_email_id"].is_string() && r.body["last_changed"].is_string());
    assert_eq!(r.body["tags"], json!([]));

    let r = put_member(
        &hs,
        email,
        json!({"email_address": email, "status_if_new": "subscribed", "merge_fields": {"LNAME": "Lovelace"}}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.body["merge_fields"],
        json!({"FNAME": "Ada", "LNAME": "Lovelace"})
    );

    let got = mc(&hs, Method::GET, &member_path(email), None).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, r.body);

    let ops: Vec<WriteOp> = hs
        .sb
        .requests()
        .iter()
        .flat_map(|e| e.writes.iter())
        .filter(|w| w.object_type == "members")
        .map(|w| w.op)
        .collect();
    assert_eq!(ops, vec![WriteOp::Create, WriteOp::Update]);
    let stats = hs.sb.stats();
    assert_eq!(stats.creates["members"]["ada@example.com"], 1);
    assert_eq!(stats.updates["members"]["ada@example.com"], 1);
    assert_eq!(stats.resubscribed, 0);
}

#[tokio::test]
async fn status_if_new_leaves_an_unsubscribed_member_alone_but_status_resubscribes() {
    let hs = start().await;
    let email = "gone@example.com";
    hs.sb
        .mailchimp_seed_member(LIST, email, Status::Unsubscribed)
        .expect("list exists");
    let r = put_member(
        &hs,
        email,
        json!({"email_address": email, "status_if_new": "subscribed"}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["status"], json!("unsubscribed"));
    assert_eq!(hs.sb.stats().resubscribed, 0);
    assert_eq!(
        hs.sb.stats().creates.get("members"),
        None,
        "seeding is not a create"
    );

    let r = put_member(
        &hs,
        email,
        json!({"email_address": email, "status": "subscribed"}),
    )
    .await;
    assert_eq!(r.body["status"], json!("subscribed"));
    assert_eq!(hs.sb.stats().resubscribed, 1);
    let m = hs
        .sb
        .mailchimp_member(LIST, "GONE@example.com")
        .expect("member");
    assert_eq!(m.status, Status::Subscribed);
}

#[tokio::test]
async fn bad_upserts_are_refused_with_mailchimp_bodies() {
    let hs = start().await;
    let r = mc(
        &hs,
        Method::PUT,
        &member_path("a@example.com"),
        Some(json!({"email_address": "b@example.com", "status_if_new": "subscribed"})),
    )
    .await;
    assert_problem(&r, 400, "Invalid Resource");
    assert!(
        r.body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("does not match"))
    );

    let r = put_member(
        &hs,
        "a@example.com",
        json!({"email_address": "a@example.com"}),
    )
    .await;
    assert_problem(&r, 400, "Invalid Resource");
    assert_eq!(r.body["errors"][0]["field"], json!("status_if_new"));

    let r = put_member(
        &hs,
        "a@example.com",
        json!({"email_address": "a@example.com", "status_if_new": "maybe"}),
    )
    .await;
    assert_problem(&r, 400, "Invalid Resource");

    let r = hs
        .http
        .put(hs.url(&member_path("a@example.com")))
        .basic_auth("u", Some(TEST_MAILCHIMP_KEY))
        .body("{not json")
        .send()
        .await
        .expect("transport");
    assert_eq!(r.status(), 400);

    let r = mc(
        &hs,
        Method::PUT,
        &format!(
            "/3.0/lists/nope/members/{}",
            subscriber_hash("a@example.com")
        ),
        Some(json!({"email_address": "a@example.com", "status_if_new": "subscribed"})),
    )
    .await;
    assert_problem(&r, 404, "Resource Not Found");
    assert!(hs.sb.mailchimp_members().is_empty());
}

#[tokio::test]
async fn tags_are_added_and_removed() {
    let hs = start().await;
    let email = "t@example.com";
    put_member(
        &hs,
        email,
        json!({"email_address": email, "status_if_new": "subscribed"}),
    )
    .await;
    let tags = format!("{}/tags", member_path(email));
    let r = mc(
        &hs,
        Method::POST,
        &tags,
        Some(json!({"tags": [{"name": "customer", "status": "active"}, {"name": "vip", "status": "active"}]})),
    )
    .await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    let r = mc(
        &hs,
        Method::POST,
        &tags,
        Some(json!({"tags": [{"name": "vip", "status": "inactive"}]})),
    )
    .await;
    assert_eq!(r.status, 204);
    let m = mc(&hs, Method::GET, &member_path(email), None).await;
    let names: Vec<&str> = m.body["tags"]
        .as_array()
        .expect("tags")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, vec!["customer"]);
    assert!(m.body["tags"][0]["id"].is_u64());

    let r = mc(
        &hs,
        Method::POST,
        &tags,
        Some(json!({"tags": [{"name": "x", "status": "on"}]})),
    )
    .await;
    assert_problem(&r, 400, "Invalid Resource");
    let r = mc(
        &hs,
        Method::POST,
        &format!("{}/tags", member_path("unknown@example.com")),
        Some(json!({"tags": []})),
    )
    .await;
    assert_problem(&r, 404, "Resource Not Found");
}

#[tokio::test]
async fn events_are_kept_and_counted_per_member() {
    let hs = start().await;
    let email = "e@example.com";
    put_member(
        &hs,
        email,
        json!({"email_address": email, "status_if_new": "subscribed"}),
    )
    .await;
    let events = format!("{}/events", member_path(email));
    for _ in 0..2 {
        let r = mc(
            &hs,
            Method::POST,
            &events,
            Some(json!({"name": "payment_failed", "properties": {"amount": "10.00"}, "occurred_at": "2026-03-19T10:00:00Z"})),
        )
        .await;
        assert_eq!(r.status, 204, "{:?}", r.body);
    }
    let r = mc(
        &hs,
        Method::POST,
        &events,
        Some(json!({"name": "bad name!"})),
    )
    .await;
    assert_problem(&r, 400, "Invalid Resource");
    let r = mc(
        &hs,
        Method::POST,
        &format!("{}/events", member_path("unknown@example.com")),
        Some(json!({"name": "payment_failed"})),
    )
    .await;
    assert_problem(&r, 404, "Resource Not Found");

    let kept = hs.sb.mailchimp_events();
    assert_eq!(kept.len(), 2);
    assert!(kept.iter().all(|e| e.name == "payment_failed"
        && e.email_address == email
        && e.properties["amount"] == json!("10.00")
        && e.occurred_at.as_deref() == Some("2026-03-19T10:00:00Z")));
    assert_eq!(hs.sb.stats().creates["events"][email], 2);

    let via_http: Value = hs
        .http
        .get(hs.url("/_sandbox/mailchimp/events"))
        .send()
        .await
        .expect("transport")
        .json()
        .await
        .expect("json");
    assert_eq!(via_http.as_array().map(Vec::len), Some(2));
}

/// The event names of a list-member-events answer, in order.
fn names(r: &Resp) -> Vec<String> {
    r.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["name"].as_str().expect("name").to_owned())
        .collect()
}

#[tokio::test]
async fn member_events_are_listed_newest_first_in_pages() {
    let hs = start().await;
    let email = "Lister@Example.com";
    let other = "other@example.com";
    for e in [email, other] {
        let r = put_member(
            &hs,
            e,
            json!({"email_address": e, "status_if_new": "subscribed"}),
        )
        .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let events = format!("{}/events", member_path(email));
    // Posted out of order; the one without `occurred_at` happened now, after all the others.
    for (name, at) in [
        ("second", Some("2020-01-02T00:00:00Z")),
        ("first", Some("2020-01-01T00:00:00.250+02:00")),
        ("third", Some("2020-01-03T00:00:00+00:00")),
        ("now", None),
    ] {
        let mut body = json!({"name": name, "properties": {"invoice_id": format!("in_{name}")}});
        if let Some(at) = at {
            body["occurred_at"] = json!(at);
        }
        let r = mc(&hs, Method::POST, &events, Some(body)).await;
        assert_eq!(r.status, 204, "{:?}", r.body);
    }
    let r = mc(
        &hs,
        Method::POST,
        &format!("{}/events", member_path(other)),
        Some(json!({"name": "not_mine"})),
    )
    .await;
    assert_eq!(r.status, 204);

    // Mailchimp's shape, ten by default, newest first, this member's only.
    let r = mc(&hs, Method::GET, &events, None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(names(&r), ["now", "third", "second", "first"]);
    assert_eq!(r.body["total_items"], json!(4));
    assert_eq!(
        r.body["events"][1],
        json!({
            "name": "third",
            "occurred_at": "2020-01-03T00:00:00+00:00",
            "properties": {"invoice_id": "in_third"},
        })
    );
    assert_eq!(
        r.body["events"][3]["occurred_at"],
        json!("2019-12-31T22:00:00+00:00"),
        "in UTC, whole seconds"
    );
    let links: Vec<(&str, &str)> = r.body["_links"]
        .as_array()
        .expect("_links")
        .iter()
        .map(|l| {
            (
                l["rel"].as_str().unwrap_or_default(),
                l["method"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        links,
        [("self", "GET"), ("parent", "GET"), ("create", "POST")]
    );

    // count and offset page through them; total_items is always the whole.
    let page = |count: usize, offset: usize| format!("{events}?count={count}&offset={offset}");
    let r = mc(&hs, Method::GET, &page(3, 0), None).await;
    assert_eq!(names(&r), ["now", "third", "second"]);
    let r = mc(&hs, Method::GET, &page(3, 3), None).await;
    assert_eq!(names(&r), ["first"]);
    assert_eq!(r.body["total_items"], json!(4));
    let r = mc(&hs, Method::GET, &page(1000, 4), None).await;
    assert_eq!(r.status, 200);
    assert!(names(&r).is_empty());
    assert_eq!(r.body["total_items"], json!(4));

    // fields and exclude_fields, with dot notation into the events.
    let r = mc(
        &hs,
        Method::GET,
        &format!("{events}?count=1&fields=events.name,events.properties.invoice_id,total_items"),
        None,
    )
    .await;
    assert_eq!(
        r.body,
        json!({"events": [{"name": "now", "properties": {"invoice_id": "in_now"}}], "total_items": 4})
    );
    let r = mc(
        &hs,
        Method::GET,
        &format!("{events}?count=1&exclude_fields=_links,events.properties"),
        None,
    )
    .await;
    assert_eq!(r.body["events"][0]["name"], json!("now"));
    assert!(r.body["events"][0]["occurred_at"].is_string());
    assert!(r.body["events"][0].get("properties").is_none());
    assert!(r.body.get("_links").is_none());

    // A page beyond Mailchimp's maximum, or not a number, is refused.
    for query in ["count=1001", "count=ten", "offset=-1"] {
        let r = mc(&hs, Method::GET, &format!("{events}?{query}"), None).await;
        assert_problem(&r, 400, "Invalid Resource");
    }
    // Unknown member or list: Mailchimp's 404.
    let r = mc(
        &hs,
        Method::GET,
        &format!("{}/events", member_path("unknown@example.com")),
        None,
    )
    .await;
    assert_problem(&r, 404, "Resource Not Found");
    let r = mc(
        &hs,
        Method::GET,
        &format!(
            "/3.0/lists/no-such-list/members/{}/events",
            subscriber_hash(email)
        ),
        None,
    )
    .await;
    assert_problem(&r, 404, "Resource Not Found");

    // Reads write nothing, and the log has them like any request.
    let stats = hs.sb.stats();
    assert_eq!(stats.creates["events"][&email.to_lowercase()], 4);
    let reads = hs
        .sb
        .requests()
        .into_iter()
        .filter(|e| e.method == "GET" && e.path.ends_with("/events"))
        .collect::<Vec<_>>();
    assert_eq!(reads.len(), 11);
    assert!(
        reads
            .iter()
            .all(|e| e.writes.is_empty() && e.api == "mailchimp")
    );
}

#[tokio::test]
async fn listing_member_events_goes_through_auth_and_faults() {
    let hs = start().await;
    let email = "guarded@example.com";
    put_member(
        &hs,
        email,
        json!({"email_address": email, "status_if_new": "subscribed"}),
    )
    .await;
    let events = format!("{}/events", member_path(email));
    let r = mc_as(&hs, None, Method::GET, &events, None).await;
    assert_problem(&r, 401, "API Key Invalid");
    let r = mc_as(&hs, Some("wrong-key-us1"), Method::GET, &events, None).await;
    assert_problem(&r, 401, "API Key Invalid");
    hs.sb.add_faults(FaultConfig {
        storm: Some(Storm {
            requests: Some(1),
            retry_after: Duration::from_secs(2),
            ..Storm::default()
        }),
        ..FaultConfig::default()
    });
    let r = mc(&hs, Method::GET, &events, None).await;
    assert_problem(&r, 429, "Too Many Requests");
    assert_eq!(r.header("retry-after"), Some("2"));
    let r = mc(&hs, Method::GET, &events, None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["total_items"], json!(0));
    let faults: Vec<(u16, Option<String>)> = hs
        .sb
        .requests()
        .into_iter()
        .filter(|e| e.method == "GET")
        .map(|e| (e.status.unwrap_or_default(), e.fault))
        .collect();
    assert_eq!(
        faults,
        [
            (401, None),
            (401, None),
            (429, Some("storm".to_owned())),
            (200, None)
        ]
    );
}

#[tokio::test]
async fn the_eleventh_concurrent_request_for_a_key_gets_429() {
    let hs = start().await;
    hs.sb.add_faults(FaultConfig {
        latency: Some(Latency {
            fixed: Duration::from_secs(2),
            ..Latency::default()
        }),
        ..FaultConfig::default()
    });
    let path = member_path("held@example.com");
    let held: Vec<_> = (0..10)
        .map(|_| {
            let req = hs
                .http
                .get(hs.url(&path))
                .basic_auth("u", Some(TEST_MAILCHIMP_KEY))
                .send();
            tokio::spawn(req)
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while hs
        .sb
        .mailchimp_peak_connections()
        .get(TEST_MAILCHIMP_KEY)
        .copied()
        .unwrap_or(0)
        < 10
    {
        assert!(Instant::now() < deadline, "10 requests never got in flight");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let t = Instant::now();
    let r = mc(&hs, Method::GET, &path, None).await;
    assert_problem(&r, 429, "Too Many Requests");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "refused before the latency"
    );
    for h in held {
        let resp = h.await.expect("task").expect("transport");
        assert_eq!(resp.status(), 404);
    }
    // Slots are given back: the next request gets through (after the latency).
    hs.sb.clear_faults();
    assert_eq!(mc(&hs, Method::GET, &path, None).await.status, 404);
    assert_eq!(hs.sb.mailchimp_peak_connections()[TEST_MAILCHIMP_KEY], 10);
    assert_eq!(hs.sb.stats().rate_limited, 1);
}

#[tokio::test]
async fn faults_apply_to_mailchimp_routes_with_mailchimp_bodies() {
    let hs = start().await;
    let path = member_path("f@example.com");
    hs.sb.add_faults(FaultConfig {
        outage: Some(Outage {
            for_: Duration::from_secs(60),
            ..Outage::default()
        }),
        ..FaultConfig::default()
    });
    let r = mc(&hs, Method::GET, &path, None).await;
    assert_problem(&r, 503, "Service Unavailable");
    hs.sb.clear_faults();
    hs.sb.add_faults(FaultConfig {
        storm: Some(Storm {
            requests: Some(1),
            retry_after: Duration::from_secs(3),
            ..Storm::default()
        }),
        ..FaultConfig::default()
    });
    let r = mc(&hs, Method::GET, &path, None).await;
    assert_problem(&r, 429, "Too Many Requests");
    assert_eq!(r.header("retry-after"), Some("3"));
    assert_eq!(mc(&hs, Method::GET, &path, None).await.status, 404);

    let faults: Vec<Option<String>> = hs.sb.requests().into_iter().map(|e| e.fault).collect();
    assert_eq!(
        faults,
        vec![Some("outage".to_owned()), Some("storm".to_owned()), None]
    );
    let stats = hs.sb.stats();
    assert_eq!(stats.faults["outage"], 1);
    assert_eq!(stats.faults["storm"], 1);
}

#[tokio::test]
async fn control_api_lists_members_and_reset_clears_them() {
    let hs = start().await;
    let email = "r@example.com";
    put_member(
        &hs,
        email,
        json!({"email_address": email, "status_if_new": "pending", "merge_fields": {"FNAME": "R"}}),
    )
    .await;
    mc(
        &hs,
        Method::POST,
        &format!("{}/events", member_path(email)),
        Some(json!({"name": "signed_up"})),
    )
    .await;
    let members: Value = hs
        .http
        .get(hs.url("/_sandbox/mailchimp/members"))
        .send()
        .await
        .expect("transport")
        .json()
        .await
        .expect("json");
    assert_eq!(members[0]["email_address"], json!(email));
    assert_eq!(members[0]["status"], json!("pending"));
    assert_eq!(members[0]["merge_fields"], json!({"FNAME": "R"}));

    let r = hs
        .http
        .post(hs.url("/_sandbox/reset"))
        .send()
        .await
        .expect("transport");
    assert_eq!(r.status(), 204);
    assert!(hs.sb.mailchimp_members().is_empty());
    assert!(hs.sb.mailchimp_events().is_empty());
    assert_eq!(hs.sb.stats().requests, 0);
    assert_eq!(
        mc(&hs, Method::GET, &member_path(email), None).await.status,
        404
    );
}
