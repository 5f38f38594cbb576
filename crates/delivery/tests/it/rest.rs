//! The REST adapter's request templates through the public API: a TOML file as a writer would
//! have it, body, path and header rendering by table, every validation error, a canonical event
//! through protobuf's JSON mapping, and properties over arbitrary views (no panic, never outside
//! the base URL, path values round-trip). Pure: no Redis, no network.

use std::collections::BTreeMap;

use handoff_delivery::{
    EventMeta, RenderError, RenderedRequest, RestConfig, RestRouteConfig, RestRoutes, event_view,
};
use handoff_events::json::message_to_json;
use handoff_events::v1::{
    Attribution, CanonicalPayload, Company, Contact, Deal, DealStageChanged, LeadCreated,
    canonical_payload::Event,
};
use http::{HeaderValue, Method};
use proptest::prelude::*;
use serde_json::{Value, json};
use time::macros::datetime;
use url::Url;

const BASE: &str = "http://tool.local/api";

fn route(event_type: &str, method: &str, path: &str) -> RestRouteConfig {
    RestRouteConfig {
        event_type: event_type.to_owned(),
        method: method.to_owned(),
        path: path.to_owned(),
        headers: BTreeMap::new(),
        body: None,
    }
}

fn config(routes: Vec<RestRouteConfig>) -> RestConfig {
    RestConfig {
        base_url: BASE.to_owned(),
        headers: BTreeMap::new(),
        routes,
    }
}

fn headers(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect()
}

/// Compiles a config of the one route and renders it against `view`.
fn render(route: RestRouteConfig, view: &Value) -> Result<RenderedRequest, RenderError> {
    let routes = config(vec![route]).compile().expect("a valid config");
    routes.routes()[0].render(routes.base_url(), view)
}

/// A lead.created view as [`event_view`] builds it.
fn view() -> Value {
    json!({
        "event_id": "evt-1",
        "event_type": "lead.created",
        "occurred_at": "2026-11-26T10:00:00Z",
        "contact": {
            "email": "ada@example.com",
            "first_name": "Ada",
            "last_name": "Lovelace",
            "marketing_opt_in": true,
            "custom_properties": {"score": "42"}
        },
        "company": {"name": "Analytical Engines", "employee_count": 12},
        "payment": {"attempt_count": 3, "amount_minor": "1999"},
        "tags": ["a", "b"],
        "blank": ""
    })
}

/// `view()` with `contact.email` set to `value`.
fn view_with_email(value: Value) -> Value {
    let mut view = view();
    view["contact"]["email"] = value;
    view
}

#[test]
fn the_documented_toml_example_parses_and_renders() {
    #[derive(serde::Deserialize)]
    struct File {
        rest: RestConfig,
    }
    let file: File = toml::from_str(
        r#"
        [rest]
        base_url = "http://internal-tool.local/api"
        headers = { "X-Source" = "handoff" }

        [[rest.routes]]
        event_type = "lead.created"
        method = "PUT"
        path = "/people/{{contact.email|urlencode}}"
        headers = { "Idempotency-Key" = "{{event_id}}", "X-Phone" = "{{contact.phone|default:''}}" }
        body = { email = "{{contact.email}}", name = "{{contact.first_name}} {{contact.last_name}}", score = "{{contact.custom_properties.score}}", company = { name = "{{company.name}}", size = "{{company.employee_count}}" }, raw_count = "{{payment.attempt_count}}", phone = "{{contact.phone}}" }

        [[rest.routes]]
        event_type = "lead.created"
        method = "post"
        path = "/events?type={{event_type}}"
        body = { id = "{{event_id}}", at = "{{occurred_at}}", source = "handoff", version = 1 }

        [[rest.routes]]
        event_type = "contact.updated"
        method = "PATCH"
        path = "/people/{{contact.email}}"
        "#,
    )
    .expect("the example parses");
    file.rest.validate().expect("the example is valid");
    let routes = file.rest.compile().expect("the example compiles");
    let rendered: Vec<RenderedRequest> = routes
        .routes_for("lead.created")
        .map(|route| route.render(routes.base_url(), &view()).expect("renders"))
        .collect();
    assert_eq!(
        rendered,
        [
            RenderedRequest {
                method: Method::PUT,
                url: Url::parse("http://internal-tool.local/api/people/ada%40example.com")
                    .expect("url"),
                headers: vec![
                    ("X-Source".into(), "handoff".into()),
                    ("Idempotency-Key".into(), "evt-1".into()),
                    ("X-Phone".into(), String::new()),
                ],
                body: Some(json!({
                    "email": "ada@example.com",
                    "name": "Ada Lovelace",
                    "score": "42",
                    "company": {"name": "Analytical Engines", "size": 12},
                    "raw_count": 3
                })),
            },
            RenderedRequest {
                method: Method::POST,
                url: Url::parse("http://internal-tool.local/api/events?type=lead.created")
                    .expect("url"),
                headers: vec![("X-Source".into(), "handoff".into())],
                body: Some(json!({
                    "id": "evt-1",
                    "at": "2026-11-26T10:00:00Z",
                    "source": "handoff",
                    "version": 1
                })),
            },
        ]
    );
    let route = &routes.routes()[0];
    assert_eq!(route.event_type(), "lead.created");
    assert_eq!(route.method(), &Method::PUT);
    assert_eq!(route.path_template(), "/people/{{contact.email|urlencode}}");
}

#[test]
fn body_templates_render_by_table() {
    let cases: Vec<(&str, Value, Value)> = vec![
        (
            "a lone placeholder keeps a number",
            json!({"n": "{{payment.attempt_count}}"}),
            json!({"n": 3}),
        ),
        (
            "a lone placeholder keeps a boolean",
            json!({"b": "{{contact.marketing_opt_in}}"}),
            json!({"b": true}),
        ),
        (
            "a lone placeholder keeps an object",
            json!({"c": "{{company}}"}),
            json!({"c": {"name": "Analytical Engines", "employee_count": 12}}),
        ),
        (
            "a lone placeholder keeps an array",
            json!({"t": "{{tags}}"}),
            json!({"t": ["a", "b"]}),
        ),
        (
            "spaces inside the braces are allowed",
            json!({"n": "{{ payment.attempt_count }}"}),
            json!({"n": 3}),
        ),
        (
            "int64 fields stay strings, as protobuf's JSON mapping has them",
            json!({"amount": "{{payment.amount_minor}}"}),
            json!({"amount": "1999"}),
        ),
        (
            "map values are strings",
            json!({"score": "{{contact.custom_properties.score}}"}),
            json!({"score": "42"}),
        ),
        (
            "mixed text renders a string",
            json!({"name": "{{contact.first_name}} {{contact.last_name}}", "tries": "{{payment.attempt_count}} tries"}),
            json!({"name": "Ada Lovelace", "tries": "3 tries"}),
        ),
        (
            "an absent lone placeholder leaves the field out",
            json!({"email": "{{contact.email}}", "phone": "{{contact.phone}}"}),
            json!({"email": "ada@example.com"}),
        ),
        (
            "a mixed string with an absent placeholder is left out",
            json!({"name": "{{contact.first_name}} {{contact.middle_name}}", "k": 1}),
            json!({"k": 1}),
        ),
        (
            "a default renders a mixed string anyway",
            json!({"name": "{{contact.first_name}} {{contact.middle_name|default:''}}"}),
            json!({"name": "Ada "}),
        ),
        (
            "a typed default",
            json!({"n": "{{contact.visits|default:0}}", "b": "{{contact.vip|default:false}}", "s": "{{contact.phone|default:'none'}}"}),
            json!({"n": 0, "b": false, "s": "none"}),
        ),
        (
            "a default does not replace a present value",
            json!({"n": "{{payment.attempt_count|default:0}}"}),
            json!({"n": 3}),
        ),
        (
            "an empty string is present, not absent",
            json!({"blank": "{{blank}}", "blank_default": "{{blank|default:'x'}}"}),
            json!({"blank": "", "blank_default": ""}),
        ),
        (
            "nested objects render field by field",
            json!({"company": {"name": "{{company.name}}", "size": "{{company.employee_count}}", "domain": "{{company.domain}}"}}),
            json!({"company": {"name": "Analytical Engines", "size": 12}}),
        ),
        (
            "a nested object whose fields are all absent is left out",
            json!({"deal": {"name": "{{deal.name}}", "stage": {"id": "{{deal.stage}}"}}, "k": 1}),
            json!({"k": 1}),
        ),
        (
            "a nested object keeps its constants",
            json!({"deal": {"name": "{{deal.name}}", "source": "handoff"}}),
            json!({"deal": {"source": "handoff"}}),
        ),
        (
            "empty containers written in the template are kept",
            json!({"meta": {}, "list": []}),
            json!({"meta": {}, "list": []}),
        ),
        (
            "array elements that are absent are left out",
            json!({"emails": ["{{contact.email}}", "{{contact.work_email}}", "fixed"]}),
            json!({"emails": ["ada@example.com", "fixed"]}),
        ),
        (
            "an array whose elements are all absent is left out",
            json!({"emails": ["{{contact.work_email}}"], "k": 1}),
            json!({"k": 1}),
        ),
        (
            "arrays of objects",
            json!({"people": [{"email": "{{contact.email}}", "phone": "{{contact.phone}}"}, {"phone": "{{contact.phone}}"}]}),
            json!({"people": [{"email": "ada@example.com"}]}),
        ),
        (
            "array elements are addressed by index",
            json!({"first_tag": "{{tags.0}}", "third_tag": "{{tags.2}}"}),
            json!({"first_tag": "a"}),
        ),
        (
            "constants are sent as written, null included",
            json!({"v": 2, "ok": true, "nothing": null, "ratio": 0.5, "text": "plain {braces}"}),
            json!({"v": 2, "ok": true, "nothing": null, "ratio": 0.5, "text": "plain {braces}"}),
        ),
        (
            "filters",
            json!({"upper": "{{contact.email|upper}}", "lower": "{{contact.first_name|lower}}", "json": "{{company|json}}", "enc": "{{contact.first_name}} <{{contact.email|urlencode}}>"}),
            json!({
                "upper": "ADA@EXAMPLE.COM",
                "lower": "ada",
                "json": r#"{"employee_count":12,"name":"Analytical Engines"}"#,
                "enc": "Ada <ada%40example.com>"
            }),
        ),
        (
            "a top-level body whose fields are all absent is sent empty",
            json!({"phone": "{{contact.phone}}"}),
            json!({}),
        ),
        (
            "a top-level array body",
            json!(["{{event_id}}", "{{contact.phone}}"]),
            json!(["evt-1"]),
        ),
        (
            "a top-level placeholder body",
            json!("{{contact}}"),
            view()["contact"].clone(),
        ),
    ];
    for (name, body, expected) in cases {
        let mut route = route("lead.created", "POST", "/people");
        route.body = Some(body);
        let rendered = render(route, &view()).unwrap_or_else(|err| panic!("{name}: {err}"));
        assert_eq!(rendered.body, Some(expected), "{name}");
    }
}

#[test]
fn body_render_errors_name_the_field() {
    let cases: Vec<(Value, RenderError)> = vec![
        (
            json!("{{contact.phone}}"),
            RenderError::Missing {
                at: "body".into(),
                placeholder: "{{contact.phone}}".into(),
            },
        ),
        (
            json!({"c": {"label": "company {{company}}"}}),
            RenderError::NotText {
                at: "body.c.label".into(),
                placeholder: "{{company}}".into(),
                kind: "an object",
            },
        ),
        (
            json!({"tags": ["{{tags|upper}}"]}),
            RenderError::NotText {
                at: "body.tags[0]".into(),
                placeholder: "{{tags|upper}}".into(),
                kind: "an array",
            },
        ),
    ];
    for (body, expected) in cases {
        let mut route = route("lead.created", "POST", "/people");
        route.body = Some(body.clone());
        assert_eq!(render(route, &view()), Err(expected), "{body}");
    }
    let mut no_body = route("lead.created", "DELETE", "/people/{{contact.email}}");
    no_body.body = None;
    assert_eq!(render(no_body, &view()).expect("renders").body, None);
}

#[test]
fn path_values_are_encoded_by_table() {
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "/people/{{contact.email}}",
            json!("ada@example.com"),
            "/api/people/ada%40example.com",
        ),
        (
            "/people/{{contact.email}}",
            json!("a/b"),
            "/api/people/a%2Fb",
        ),
        (
            "/people/{{contact.email}}",
            json!("../admin"),
            "/api/people/..%2Fadmin",
        ),
        (
            "/people/{{contact.email}}",
            json!("../../.."),
            "/api/people/..%2F..%2F..",
        ),
        (
            "/people/{{contact.email}}",
            json!("a b"),
            "/api/people/a%20b",
        ),
        (
            "/people/{{contact.email}}",
            json!("josé"),
            "/api/people/jos%C3%A9",
        ),
        (
            "/people/{{contact.email}}",
            json!("日本"),
            "/api/people/%E6%97%A5%E6%9C%AC",
        ),
        (
            "/people/{{contact.email}}",
            json!("a?b#c"),
            "/api/people/a%3Fb%23c",
        ),
        (
            "/people/{{contact.email}}",
            json!("a+b&c=d;e"),
            "/api/people/a%2Bb%26c%3Dd%3Be",
        ),
        (
            "/people/{{contact.email}}",
            json!("%2e%2e"),
            "/api/people/%252e%252e",
        ),
        (
            "/people/{{contact.email}}",
            json!("\\x"),
            "/api/people/%5Cx",
        ),
        (
            "/people/{{contact.email}}",
            json!("a\r\nb\tc"),
            "/api/people/a%0D%0Ab%09c",
        ),
        ("/people/{{contact.email}}", json!("..."), "/api/people/..."),
        ("/people/{{contact.email}}", json!(42), "/api/people/42"),
        ("/people/{{contact.email}}", json!(true), "/api/people/true"),
        // An explicit urlencode is not applied twice.
        (
            "/people/{{contact.email|urlencode}}",
            json!("a/b c"),
            "/api/people/a%2Fb%20c",
        ),
        // Other filters run first, the encoding last.
        (
            "/people/{{contact.email|upper}}",
            json!("a/b"),
            "/api/people/A%2FB",
        ),
        (
            "/people/{{contact.email|json}}",
            json!("x"),
            "/api/people/%22x%22",
        ),
        ("/people/{{contact.email}}/", json!("x"), "/api/people/x/"),
        (
            "/people/id-{{contact.email}}.json",
            json!("x"),
            "/api/people/id-x.json",
        ),
        (
            "/people/{{contact.email}}{{contact.first_name}}",
            json!("."),
            "/api/people/.Ada",
        ),
        (
            "/people?email={{contact.email}}&mode=exact",
            json!("a&mode=fuzzy#x"),
            "/api/people?email=a%26mode%3Dfuzzy%23x&mode=exact",
        ),
    ];
    for (path, value, expected) in cases {
        let rendered = render(
            route("lead.created", "GET", path),
            &view_with_email(value.clone()),
        )
        .unwrap_or_else(|err| panic!("{path} with {value}: {err}"));
        let url = rendered.url;
        let tail = &url.as_str()["http://tool.local".len()..];
        assert_eq!(tail, expected, "{path} with {value}");
        assert!(url.as_str().starts_with("http://tool.local/api/"), "{url}");
        assert_eq!(url.fragment(), None);
    }
}

#[test]
fn path_render_errors_by_table() {
    let cases: Vec<(&str, Value, RenderError)> = vec![
        (
            "/people/{{contact.phone}}",
            view(),
            RenderError::Missing {
                at: "path".into(),
                placeholder: "{{contact.phone}}".into(),
            },
        ),
        (
            "/people?phone={{ contact.phone | lower }}",
            view(),
            RenderError::Missing {
                at: "path".into(),
                placeholder: "{{ contact.phone | lower }}".into(),
            },
        ),
        (
            "/people/{{contact.email}}",
            view_with_email(Value::Null),
            RenderError::Missing {
                at: "path".into(),
                placeholder: "{{contact.email}}".into(),
            },
        ),
        (
            "/people/{{contact.email}}",
            view_with_email(json!("")),
            RenderError::EmptyInPath {
                placeholder: "{{contact.email}}".into(),
            },
        ),
        (
            "/people/{{contact.phone|default:''}}",
            view(),
            RenderError::EmptyInPath {
                placeholder: "{{contact.phone|default:''}}".into(),
            },
        ),
        (
            "/people/{{contact.email}}",
            view_with_email(json!("..")),
            RenderError::DotSegment {
                segment: "..".into(),
            },
        ),
        (
            "/people/{{contact.email}}/notes",
            view_with_email(json!(".")),
            RenderError::DotSegment {
                segment: ".".into(),
            },
        ),
        (
            "/{{contact.email}}{{contact.email}}",
            view_with_email(json!(".")),
            RenderError::DotSegment {
                segment: "..".into(),
            },
        ),
        (
            "/people/{{company}}",
            view(),
            RenderError::NotText {
                at: "path".into(),
                placeholder: "{{company}}".into(),
                kind: "an object",
            },
        ),
    ];
    for (path, view, expected) in cases {
        assert_eq!(
            render(route("lead.created", "GET", path), &view),
            Err(expected),
            "{path}"
        );
    }

    // The message names the placeholder, not the event's values.
    let err = render(
        route(
            "lead.created",
            "GET",
            "/people/{{contact.phone}}/{{contact.email}}",
        ),
        &view(),
    )
    .expect_err("phone is absent");
    assert_eq!(
        err.to_string(),
        "path: `{{contact.phone}}` has no value in this event and no default"
    );

    // A default fills the path; an empty value is fine in the query.
    let ok = |path: &str| {
        render(route("lead.created", "GET", path), &view())
            .unwrap_or_else(|err| panic!("{path}: {err}"))
            .url
            .to_string()
    };
    assert_eq!(
        ok("/people/{{contact.phone|default:'unknown'}}"),
        "http://tool.local/api/people/unknown"
    );
    assert_eq!(
        ok("/people?phone={{contact.phone|default:''}}"),
        "http://tool.local/api/people?phone="
    );
}

#[test]
fn a_route_renders_under_any_base() {
    let routes = config(vec![route(
        "lead.created",
        "GET",
        "/people/{{contact.first_name}}",
    )])
    .compile()
    .expect("valid");
    let route = &routes.routes()[0];
    for (base, expected) in [
        ("http://tool.local/api", "http://tool.local/api/people/Ada"),
        ("http://tool.local/api/", "http://tool.local/api/people/Ada"),
        ("http://tool.local", "http://tool.local/people/Ada"),
        (
            "https://tool.local:8443/v2/api",
            "https://tool.local:8443/v2/api/people/Ada",
        ),
        // A caller-made base with a query or fragment loses them.
        (
            "http://tool.local/api?x=1#top",
            "http://tool.local/api/people/Ada",
        ),
    ] {
        let base = Url::parse(base).expect("url");
        let rendered = route.render(&base, &view()).expect("renders");
        assert_eq!(rendered.url.as_str(), expected);
    }
}

#[test]
fn headers_render_merge_and_refuse_what_a_header_cannot_carry() {
    let mut cfg = config(vec![route("lead.created", "POST", "/people")]);
    cfg.headers = headers(&[("Authorization", "Bearer t0ken"), ("X-Source", "handoff")]);
    cfg.routes[0].headers = headers(&[
        ("x-source", "route"),
        ("Idempotency-Key", "{{event_id}}"),
        (
            "X-Name",
            "{{contact.first_name|upper}} {{contact.last_name}}",
        ),
        ("X-Phone", "{{contact.phone|default:'none'}}"),
    ]);
    let routes = cfg.compile().expect("valid");
    let rendered = routes.routes()[0]
        .render(routes.base_url(), &view())
        .expect("renders");
    assert_eq!(
        rendered.headers,
        [
            ("Authorization".to_owned(), "Bearer t0ken".to_owned()),
            ("x-source".to_owned(), "route".to_owned()),
            ("Idempotency-Key".to_owned(), "evt-1".to_owned()),
            ("X-Name".to_owned(), "ADA Lovelace".to_owned()),
            ("X-Phone".to_owned(), "none".to_owned()),
        ]
    );

    let cases: Vec<(&str, Value, Result<&str, RenderError>)> = vec![
        (
            "{{contact.email}}",
            json!("ada@example.com"),
            Ok("ada@example.com"),
        ),
        (
            "{{contact.email|urlencode}}",
            json!("josé"),
            Ok("jos%C3%A9"),
        ),
        (
            "{{contact.phone}}",
            json!("x"),
            Err(RenderError::Missing {
                at: "headers.X-Value".into(),
                placeholder: "{{contact.phone}}".into(),
            }),
        ),
        (
            "<{{contact.email}}> {{contact.phone}}",
            json!("x"),
            Err(RenderError::Missing {
                at: "headers.X-Value".into(),
                placeholder: "{{contact.phone}}".into(),
            }),
        ),
        (
            "{{contact.email}}",
            json!("a\r\nX-Injected: 1"),
            Err(RenderError::BadHeaderValue {
                name: "X-Value".into(),
            }),
        ),
        (
            "{{contact.email}}",
            json!("josé"),
            Err(RenderError::BadHeaderValue {
                name: "X-Value".into(),
            }),
        ),
        (
            "{{company}}",
            json!("x"),
            Err(RenderError::NotText {
                at: "headers.X-Value".into(),
                placeholder: "{{company}}".into(),
                kind: "an object",
            }),
        ),
        (
            "{{company|json}}",
            json!("x"),
            Ok(r#"{"employee_count":12,"name":"Analytical Engines"}"#),
        ),
    ];
    for (template, email, expected) in cases {
        let mut route = route("lead.created", "POST", "/people");
        route.headers = headers(&[("X-Value", template)]);
        let got = render(route, &view_with_email(email.clone())).map(|rendered| rendered.headers);
        let expected = expected.map(|value| vec![("X-Value".to_owned(), value.to_owned())]);
        assert_eq!(got, expected, "{template} with {email}");
    }
}

#[test]
fn validation_errors_name_the_route_and_key() {
    type Edit = fn(&mut RestConfig);
    fn valid() -> RestConfig {
        let mut people = route("lead.created", "PUT", "/people/{{contact.email}}");
        people.headers = headers(&[("Idempotency-Key", "{{event_id}}")]);
        people.body = Some(json!({"email": "{{contact.email}}"}));
        let mut cfg = config(vec![
            people,
            route("contact.updated", "PATCH", "/people/{{contact.email}}"),
        ]);
        cfg.headers = headers(&[("X-Source", "handoff")]);
        cfg
    }
    const ROUTE0: &str = "routes[0] (lead.created PUT /people/{{contact.email}}): ";
    let cases: Vec<(Edit, &str)> = vec![
        (
            |c| c.base_url = "not a url".into(),
            "base_url: `not a url` is not a URL",
        ),
        (
            |c| c.base_url = "ftp://tool.local/x".into(),
            "base_url: `ftp://tool.local/x` is not an http or https URL",
        ),
        (
            |c| c.base_url = "http://tool.local/api?key=1".into(),
            "base_url: `http://tool.local/api?key=1` has a query or fragment",
        ),
        (
            |c| c.base_url = "http://tool.local/api#x".into(),
            "has a query or fragment",
        ),
        (
            |c| c.base_url = "http://user:secret@tool.local/api".into(),
            "base_url: the URL has credentials",
        ),
        (
            |c| c.headers = headers(&[("Bad Name", "x")]),
            "headers.Bad Name: `Bad Name` is not a valid header name",
        ),
        (
            |c| c.headers = headers(&[("X-A", "{{a|nope}}")]),
            "headers.X-A: `{{a|nope}}`: unknown filter `nope` (known: urlencode, lower, upper, json, default:'text')",
        ),
        (
            |c| c.headers = headers(&[("X-A", "x"), ("x-a", "y")]),
            "headers.x-a: the header is named twice",
        ),
        (
            |c| c.headers = headers(&[("X-A", "a\nb")]),
            "headers.X-A: the value has a character a header cannot carry",
        ),
        (
            |c| c.routes[0].method = "FETCH".into(),
            "routes[0] (lead.created FETCH /people/{{contact.email}}): method: `FETCH` is not one of GET, POST, PUT, PATCH, DELETE",
        ),
        (
            |c| c.routes[0].method = "HEAD".into(),
            "method: `HEAD` is not one of",
        ),
        (
            |c| c.routes[0].method = "GET".into(),
            "body: a GET request cannot have a body",
        ),
        (|c| c.routes[0].event_type = " ".into(), "event_type: empty"),
        (
            |c| c.routes[0].event_type = "Lead Created".into(),
            "event_type: `Lead Created` is not an event type name",
        ),
        (
            |c| c.routes[0].path = "people".into(),
            "path: `people` does not start with `/`",
        ),
        (
            |c| c.routes[0].path = "/people/{{contact.email".into(),
            "path: a placeholder is never closed with `}}`: `{{contact.email`",
        ),
        (
            |c| c.routes[0].path = "/people/{{}}".into(),
            "path: `{{}}`: the placeholder names no field",
        ),
        (
            |c| c.routes[0].path = "/people/{{contact..email}}".into(),
            "path: `{{contact..email}}`: `contact..email` is not a field path",
        ),
        (
            |c| c.routes[0].path = "/people/{{contact.email|lowercase}}".into(),
            "path: `{{contact.email|lowercase}}`: unknown filter `lowercase`",
        ),
        (
            |c| c.routes[0].path = "/people/{{contact.email|default}}".into(),
            "`default` needs a value",
        ),
        (
            |c| c.routes[0].path = "/people/../admin/{{contact.email}}".into(),
            "path: `/people/../admin/{{contact.email}}` has the segment `..`",
        ),
        (
            |c| c.routes[0].path = "/people//{{contact.email}}".into(),
            "has an empty segment",
        ),
        (
            |c| c.routes[0].path = "/people/{{contact.email}}#top".into(),
            "path: the character `#` cannot stand in a URL path",
        ),
        (
            |c| c.routes[0].path = "/people/{contact.email}".into(),
            "the character `{` cannot stand in a URL path",
        ),
        (
            |c| c.routes[0].headers = headers(&[("X-B", "{{event_id|upper:1}}")]),
            "headers.X-B: `{{event_id|upper:1}}`: filter `upper` takes no argument",
        ),
        (
            |c| c.routes[0].headers = headers(&[("X:B", "x")]),
            "headers.X:B: `X:B` is not a valid header name",
        ),
        (
            |c| c.routes[0].body = Some(json!({"a": {"b": "{{x|jsn}}"}})),
            "body.a.b: `{{x|jsn}}`: unknown filter `jsn`",
        ),
        (
            |c| c.routes[0].body = Some(json!({"{{x}}": 1})),
            "body.{{x}}: body keys are not templates",
        ),
        (
            |c| c.routes[0].body = Some(json!(["{{x|default:nope}}"])),
            "body[0]: `{{x|default:nope}}`: the default `nope` is neither",
        ),
        (
            |c| {
                let twin = c.routes[0].clone();
                c.routes.push(twin);
            },
            "routes[2] (lead.created PUT /people/{{contact.email}}): the same event type, method and path as routes[0]",
        ),
        (
            |c| {
                let mut twin = c.routes[0].clone();
                twin.method = "put".into();
                c.routes.push(twin);
            },
            "the same event type, method and path as routes[0]",
        ),
    ];
    valid().validate().expect("the base case is valid");
    for (edit, expected) in cases {
        let mut cfg = valid();
        edit(&mut cfg);
        let err = cfg.validate().expect_err(expected);
        assert!(err.contains(expected), "expected {expected:?} in {err:?}");
        if expected.contains("method:")
            || expected.starts_with("path:")
            || expected.starts_with("body")
        {
            assert!(err.starts_with("routes[0] ("), "{err}");
        }
    }
    // The route prefix is exactly the route as written.
    let mut cfg = valid();
    cfg.routes[0].path = "/people/{{contact.email|nope}}".into();
    let err = cfg.validate().expect_err("unknown filter");
    assert!(
        err.starts_with(&ROUTE0.replace("{{contact.email}}", "{{contact.email|nope}}")),
        "{err}"
    );

    // A TOML datetime is not a JSON value; it must be quoted.
    let with_date: Result<toml::Value, _> = toml::from_str("x = 2026-11-26T10:00:00Z");
    let date = serde_json::to_value(with_date.expect("toml")).expect("json");
    let mut cfg = valid();
    cfg.routes[0].body = Some(json!({"since": date["x"].clone()}));
    let err = cfg.validate().expect_err("a TOML date");
    assert!(
        err.contains("body.since.$__toml_private_datetime: TOML dates and times are not supported"),
        "{err}"
    );
}

#[test]
fn unknown_keys_in_the_file_are_refused() {
    let err = toml::from_str::<RestConfig>(
        "base_url = \"http://x\"\n[[routes]]\nevent_type = \"lead.created\"\nmethod = \"PUT\"\npath = \"/x\"\nbdy = {}\n",
    )
    .expect_err("a typo");
    assert!(err.to_string().contains("unknown field `bdy`"), "{err}");
}

#[test]
fn routes_for_picks_the_event_types_routes_in_order() {
    let routes: RestRoutes = config(vec![
        route("lead.created", "POST", "/a"),
        route("contact.updated", "POST", "/b"),
        route("lead.created", "PUT", "/c"),
        // Same path, other method: not a duplicate.
        route("lead.created", "POST", "/c"),
    ])
    .compile()
    .expect("valid");
    let picked: Vec<(String, &str)> = routes
        .routes_for("lead.created")
        .map(|route| (route.method().to_string(), route.path_template()))
        .collect();
    assert_eq!(
        picked,
        [
            ("POST".to_owned(), "/a"),
            ("PUT".to_owned(), "/c"),
            ("POST".to_owned(), "/c")
        ]
    );
    assert_eq!(routes.routes_for("payment.failed").count(), 0);
    assert_eq!(routes.base_url().as_str(), "http://tool.local/api");
}

#[test]
fn event_view_puts_envelope_fields_beside_the_events_own() {
    let meta = EventMeta {
        event_id: "evt-1",
        event_type: "lead.created",
        occurred_at: Some(datetime!(2026-11-26 10:00:00.5 UTC)),
        source: "forms",
        publisher_id: "",
    };
    let view = event_view(
        &meta,
        json!({"lead_created": {"contact": {"email": "ada@example.com"}, "event_id": "spoofed"}}),
    );
    assert_eq!(
        view,
        json!({
            "event_id": "evt-1",
            "event_type": "lead.created",
            "occurred_at": "2026-11-26T10:00:00.5Z",
            "source": "forms",
            "contact": {"email": "ada@example.com"}
        })
    );
    let bare = EventMeta {
        occurred_at: None,
        ..meta
    };
    for payload in [
        json!({}),
        json!(null),
        json!({"lead_created": "x"}),
        json!({"a": {}, "b": {}}),
    ] {
        assert_eq!(
            event_view(&bare, payload.clone()),
            json!({"event_id": "evt-1", "event_type": "lead.created", "source": "forms"}),
            "{payload}"
        );
    }
}

#[test]
fn a_canonical_event_renders_through_the_protobuf_json_mapping() {
    let lead = CanonicalPayload {
        event: Some(Event::LeadCreated(LeadCreated {
            contact: Some(Contact {
                email: Some("ada@example.com".into()),
                first_name: Some("Ada".into()),
                marketing_opt_in: Some(true),
                custom_properties: [("score".to_owned(), "42".to_owned())].into(),
                ..Contact::default()
            }),
            company: Some(Company {
                name: Some("Analytical Engines".into()),
                employee_count: Some(12),
                ..Company::default()
            }),
            attribution: Some(Attribution {
                utm_source: Some("newsletter".into()),
                ..Attribution::default()
            }),
            form_id: None,
        })),
    };
    let meta = EventMeta {
        event_id: "evt-1",
        event_type: "lead.created",
        occurred_at: Some(datetime!(2026-11-26 10:00:00 UTC)),
        source: "forms",
        publisher_id: "pub-1",
    };
    let view = event_view(&meta, message_to_json(&lead).expect("json"));
    let mut people = route("lead.created", "PUT", "/people/{{contact.email}}");
    people.headers = headers(&[("Idempotency-Key", "{{event_id}}")]);
    people.body = Some(json!({
        "email": "{{contact.email}}",
        "first_name": "{{contact.first_name}}",
        "last_name": "{{contact.last_name}}",
        "opt_in": "{{contact.marketing_opt_in}}",
        "score": "{{contact.custom_properties.score}}",
        "company": {"name": "{{company.name}}", "size": "{{company.employee_count}}", "domain": "{{company.domain}}"},
        "utm_source": "{{attribution.utm_source}}",
        "form": "{{form_id}}",
        "seen_at": "{{occurred_at}}",
        "via": "{{source}}/{{publisher_id}}"
    }));
    let rendered = render(people, &view).expect("renders");
    assert_eq!(
        rendered.url.as_str(),
        "http://tool.local/api/people/ada%40example.com"
    );
    assert_eq!(
        rendered.body,
        Some(json!({
            "email": "ada@example.com",
            "first_name": "Ada",
            "opt_in": true,
            "score": "42",
            "company": {"name": "Analytical Engines", "size": 12},
            "utm_source": "newsletter",
            "seen_at": "2026-11-26T10:00:00Z",
            "via": "forms/pub-1"
        }))
    );

    // protobuf's JSON mapping renders int64 as a string.
    let deal = CanonicalPayload {
        event: Some(Event::DealStageChanged(DealStageChanged {
            deal: Some(Deal {
                amount_minor: Some(199_900),
                ..Deal::default()
            }),
            ..DealStageChanged::default()
        })),
    };
    let view = event_view(&meta, message_to_json(&deal).expect("json"));
    let mut amount = route("deal.stage_changed", "POST", "/deals");
    amount.body = Some(json!({"amount": "{{deal.amount_minor}}"}));
    assert_eq!(
        render(amount, &view).expect("renders").body,
        Some(json!({"amount": "199900"}))
    );
}

// ---- Properties ----

fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![Just("a"), Just("b"), Just("c"), Just("0")].prop_map(String::from)
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        any::<String>().prop_map(Value::String),
        prop_oneof![
            Just(""),
            Just("."),
            Just(".."),
            Just("../admin"),
            Just("%2e%2e"),
            Just("a/b?c#d"),
            Just("\r\n"),
            Just("//evil.example/x"),
            Just("http://evil.example/"),
        ]
        .prop_map(|text| Value::String(text.to_owned())),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(arb_key(), inner, 0..4)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

fn arb_view() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(arb_key(), arb_json(), 0..4)
        .prop_map(|fields| Value::Object(fields.into_iter().collect()))
}

fn property_routes() -> RestRoutes {
    let body = json!({
        "a": "{{a}}",
        "mixed": "{{a}} and {{b|default:''}}",
        "nested": {"c": "{{c}}", "deep": ["{{a.0}}", "{{b.a|upper}}", "{{c|json}}"]},
        "d": "{{0|default:7}}"
    });
    let paths = [
        "/x/{{a}}",
        "/x/{{a.b}}/{{c|lower}}?q={{b|default:''}}&r={{a.0|json}}",
        "/{{a}}{{b}}",
        "/{{a|urlencode|upper}}/",
        "/{{a|default:'..'}}",
        "/x/{{0.0.0|json}}",
    ];
    let mut cfg = config(
        paths
            .iter()
            .map(|path| {
                let mut route = route("lead.created", "POST", path);
                route.headers = headers(&[("X-A", "{{a}}"), ("X-B", "b={{b|json}}")]);
                route.body = Some(body.clone());
                route
            })
            .collect(),
    );
    cfg.headers = headers(&[("X-C", "{{c|default:'none'}}")]);
    cfg.compile().expect("valid")
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = std::str::from_utf8(bytes.get(index + 1..index + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            index += 3;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(out).ok()
}

proptest! {
    #[test]
    fn rendering_never_panics_and_never_leaves_the_base(view in arb_view()) {
        let routes = property_routes();
        for route in routes.routes() {
            if let Ok(rendered) = route.render(routes.base_url(), &view) {
                let url = &rendered.url;
                prop_assert_eq!(url.scheme(), "http");
                prop_assert_eq!(url.host_str(), Some("tool.local"));
                prop_assert_eq!(url.port(), None);
                prop_assert!(url.path().starts_with("/api/"), "{}", url);
                prop_assert_eq!(url.fragment(), None);
                for (_, value) in &rendered.headers {
                    prop_assert!(HeaderValue::from_str(value).is_ok() && value.is_ascii());
                }
                prop_assert!(rendered.body.is_some());
            }
        }
    }

    #[test]
    fn a_path_value_round_trips_through_its_segment(value in any::<String>()) {
        let route = route("lead.created", "GET", "/people/{{contact.email}}/notes");
        let result = render(route, &view_with_email(Value::String(value.clone())));
        if value.is_empty() || value == "." || value == ".." {
            prop_assert!(result.is_err());
        } else {
            let url = result.map_err(|err| TestCaseError::fail(err.to_string()))?.url;
            let segments: Vec<&str> = url.path_segments().map(Iterator::collect).unwrap_or_default();
            prop_assert_eq!(segments.len(), 4, "{}", url);
            prop_assert_eq!(segments[0], "api");
            prop_assert_eq!(segments[1], "people");
            prop_assert_eq!(segments[3], "notes");
            prop_assert_eq!(percent_decode(segments[2]), Some(value));
        }
    }
}
