//! The generic REST adapter's request templates: how a writer turns one canonical event into the
//! HTTP requests an internal tool expects, as described per event type in the writer's TOML file
//! (`[rest]`). Pure: no I/O, no clock; the caller sends the [`RenderedRequest`]s.
//!
//! [`RestConfig`] is the file's form. [`RestConfig::compile`] (and [`RestConfig::validate`], which
//! only reports) parses every template once, at start-up, into [`RestRoutes`]; per event the caller
//! builds a JSON view with [`event_view`], picks the routes with [`RestRoutes::routes_for`] and
//! calls [`RestRoute::render`] on each.
//!
//! ```toml
//! [rest]
//! base_url = "http://internal-tool.local/api"
//! headers = { "X-Source" = "handoff" }          # sent with every request
//!
//! [[rest.routes]]
//! event_type = "lead.created"
//! method = "PUT"                                 # GET POST PUT PATCH DELETE
//! path = "/people/{{contact.email}}"             # appended to base_url
//! headers = { "Idempotency-Key" = "{{event_id}}" }
//! body = { email = "{{contact.email}}", name = "{{contact.first_name}} {{contact.last_name}}", company = { name = "{{company.name}}" } }
//! ```
//!
//! # The view
//!
//! Placeholders address a JSON object ([`event_view`]): `event_id`, `event_type`, `occurred_at`
//! (RFC 3339), `source` and `publisher_id` from the envelope, beside the event's own fields, the
//! canonical payload's inner message in protobuf's JSON mapping with the `.proto` field names
//! (`contact.email`, `company.name`, `attribution.utm_source`, `contact.custom_properties.score`).
//! That mapping renders `int64` fields (`deal.amount_minor`) as JSON strings and 32-bit ones
//! (`payment.attempt_count`) as numbers. A key that is missing or `null` is *absent*.
//!
//! # Template syntax
//!
//! Every string in `path`, in `headers` (values) and in `body` (leaves, not keys) is a template:
//! text with placeholders `{{ name.path | filter | filter:arg }}`.
//!
//! - The name is a dotted path of `[A-Za-z0-9_-]` segments; a segment that is a number also
//!   indexes an array (`items.0.name`).
//! - Filters apply left to right: `lower`, `upper` (text), `urlencode` (percent-encodes every byte
//!   but `A-Z a-z 0-9 - . _ ~`), `json` (the value as compact JSON text, for objects and arrays),
//!   `default:'text'` or `default:42` / `default:true` (the value to use when it is absent; a
//!   quoted default cannot contain `'`). Other filters pass an absent value on as absent.
//! - A number or boolean used as text is its JSON text; an object or array used as text is an
//!   error (add `|json`).
//! - There is no escape for a literal `{{`.
//!
//! Where a template is used decides what happens next:
//!
//! - **path**: starts with `/` and is appended to `base_url` (whose own path is kept). Every
//!   placeholder is percent-encoded as by `urlencode` unless its filters already include
//!   `urlencode`, so a value can never add a segment, a query or a fragment: `../admin` becomes
//!   `..%2Fadmin`. A literal `?` starts the query, whose placeholders are encoded the same way. An
//!   absent value is an error, and so is a placeholder before the `?` that renders empty, `.` or
//!   `..`, since that would name another resource (`/people/` is the collection).
//! - **headers**: an absent value is an error; a rendered value with a line break, a control or a
//!   non-ASCII character is an error (`urlencode` it if the tool expects that). Route headers
//!   replace the `[rest]` headers of the same name (compared without case).
//! - **body**: a string that is exactly one placeholder keeps the value's JSON type (number,
//!   boolean, object, array); any other string renders as a string. Non-string TOML values are
//!   sent as written.
//!
//! # Why absent fields are left out of bodies
//!
//! Events carry only what their publisher knew: a `lead.created` from a form has no company, a
//! `contact.updated` may carry only the phone number. A body field whose value is absent is
//! therefore left out, not sent as `null` or `""`, so that a writer never blanks a field in the
//! destination because an event did not mention it. A string mixing text and placeholders is left
//! out if any of its placeholders is absent, because a half-built value (`"Ada "`) is worse than
//! none; write `{{contact.last_name|default:''}}` to send it anyway. An array element is left
//! out the same way, and a nested object or array that loses all its fields is left out as well.
//! The top-level body is always sent (possibly `{}`), as is the request: the route still fires.
//!
//! Every [`RenderError`] is permanent (the event cannot be delivered with this configuration);
//! its message names the placeholder and where it is used, never an event's value, since values
//! are often personal data.

use std::borrow::Cow;
use std::collections::BTreeMap;

use http::{HeaderName, Method};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use url::Url;

/// The filters a placeholder may name, for error messages.
const KNOWN_FILTERS: &str = "urlencode, lower, upper, json, default:'text'";

/// The methods a route may use. HEAD and OPTIONS deliver nothing.
const METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
];

/// The generic REST adapter's configuration (`[rest]` in a writer's TOML file), as written.
/// Compile it once at start-up with [`RestConfig::compile`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestConfig {
    /// The tool's base URL (`http` or `https`, no query, fragment or credentials); each route's
    /// path is appended to it, keeping its path (`http://tool/api` + `/people` is
    /// `http://tool/api/people`).
    pub base_url: String,
    /// Headers sent with every request (templates, like route headers). A route header of the
    /// same name, compared without case, replaces one of these.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The requests to send, in order, for each event type.
    #[serde(default)]
    pub routes: Vec<RestRouteConfig>,
}

/// One request template (`[[rest.routes]]`), as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestRouteConfig {
    /// The canonical event type this route is for, e.g. `lead.created`.
    pub event_type: String,
    /// `GET`, `POST`, `PUT`, `PATCH` or `DELETE` (any case).
    pub method: String,
    /// Path template, starting with `/`, appended to the base URL; may have a `?query`.
    pub path: String,
    /// Header templates by header name.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// JSON body template; `None` sends no body. Not allowed with `GET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
}

/// The envelope fields of an event's view (see [`event_view`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventMeta<'a> {
    /// `Envelope.event_id`.
    pub event_id: &'a str,
    /// `Envelope.event_type`, e.g. `lead.created`.
    pub event_type: &'a str,
    /// `Envelope.occurred_at`, rendered as RFC 3339 in the view.
    pub occurred_at: Option<OffsetDateTime>,
    /// `Envelope.source`.
    pub source: &'a str,
    /// `Envelope.publisher_id`.
    pub publisher_id: &'a str,
}

/// Builds the JSON view templates address: the event's own fields at the top level, plus
/// `event_id`, `event_type`, `occurred_at`, `source` and `publisher_id` from `meta`.
///
/// `canonical_payload` is the envelope's `CanonicalPayload` as `handoff_events::json` renders it
/// (`{"lead_created": {"contact": {...}}}`): the value of its one entry becomes the view's fields.
/// Anything else (no event, not an object) contributes no fields. The envelope's names win over
/// event fields of the same name, and empty envelope strings are left out (absent), as protobuf's
/// JSON mapping leaves out empty strings.
pub fn event_view(meta: &EventMeta<'_>, canonical_payload: Value) -> Value {
    let mut view = match canonical_payload {
        Value::Object(outer) if outer.len() == 1 => match outer.into_iter().next() {
            Some((_, Value::Object(fields))) => fields,
            _ => Map::new(),
        },
        _ => Map::new(),
    };
    let occurred_at = meta.occurred_at.and_then(|at| at.format(&Rfc3339).ok());
    let envelope = [
        ("event_id", Some(meta.event_id.to_owned())),
        ("event_type", Some(meta.event_type.to_owned())),
        ("occurred_at", occurred_at),
        ("source", Some(meta.source.to_owned())),
        ("publisher_id", Some(meta.publisher_id.to_owned())),
    ];
    for (name, value) in envelope {
        match value {
            Some(value) if !value.is_empty() => {
                view.insert(name.to_owned(), Value::String(value));
            }
            _ => {
                view.remove(name);
            }
        }
    }
    Value::Object(view)
}

/// A [`RestConfig`] with every template parsed and checked: what the writer keeps for its
/// lifetime.
#[derive(Debug, Clone)]
pub struct RestRoutes {
    base_url: Url,
    routes: Vec<RestRoute>,
}

/// One compiled route; [`RestRoute::render`] builds its request for one event.
#[derive(Debug, Clone)]
pub struct RestRoute {
    event_type: String,
    method: Method,
    path_source: String,
    path: Template,
    /// `[rest]` headers merged with the route's, in that order.
    headers: Vec<(String, Template)>,
    body: Option<BodyTemplate>,
}

/// One request, ready to send. The caller adds `Content-Type: application/json` when there is a
/// body (reqwest's `.json()` does).
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedRequest {
    /// The route's method.
    pub method: Method,
    /// The base URL with the rendered path (and query) appended; always under the base URL.
    pub url: Url,
    /// Header names as configured, with rendered values that are valid header values.
    pub headers: Vec<(String, String)>,
    /// The rendered body, when the route has one.
    pub body: Option<Value>,
}

/// Why a route could not be built for an event. Always permanent: the same event and
/// configuration fail the same way. Messages name the placeholder and where it is used, never
/// the event's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// A placeholder in the path or a header has no value in the event and no default.
    #[error("{at}: `{placeholder}` has no value in this event and no default")]
    Missing {
        /// Where: `path`, `headers.<name>` or `body...`.
        at: String,
        /// The placeholder as written, e.g. `{{contact.email}}`.
        placeholder: String,
    },
    /// An object or array (or null) was used where text is needed.
    #[error("{at}: `{placeholder}` is {kind}, which has no text form (add |json)")]
    NotText {
        /// Where it is used.
        at: String,
        /// The placeholder as written.
        placeholder: String,
        /// `an object`, `an array` or `null`.
        kind: &'static str,
    },
    /// A placeholder in the path (before `?`) rendered empty.
    #[error("path: `{placeholder}` renders empty, which would name another resource")]
    EmptyInPath {
        /// The placeholder as written.
        placeholder: String,
    },
    /// A path segment rendered as `.` or `..`, which would move the URL up the tree.
    #[error(
        "path: a placeholder renders the segment `{segment}`, which would name another resource"
    )]
    DotSegment {
        /// The segment (`.` or `..`, possibly percent-encoded).
        segment: String,
    },
    /// A rendered header value has characters a header cannot carry.
    #[error(
        "headers.{name}: the rendered value has a line break, control or non-ASCII character (urlencode it)"
    )]
    BadHeaderValue {
        /// The header's name.
        name: String,
    },
    /// The base URL and rendered path do not make a URL.
    #[error("the rendered URL is not valid: {reason}")]
    BadUrl {
        /// The URL parser's reason.
        reason: String,
    },
    /// The rendered URL left the base URL (a bug here, or a base URL with odd syntax).
    #[error("the rendered URL is not under the base URL")]
    OutsideBase,
}

impl RestConfig {
    /// Checks everything [`RestConfig::compile`] checks, for start-up: one line naming the route
    /// (`routes[2] (lead.created PUT /people/{{contact.email}})`) and the key (`method`, `path`,
    /// `headers.<name>`, `body.<field>`), or `base_url` / `headers.<name>` for the top level.
    pub fn validate(&self) -> Result<(), String> {
        self.compile().map(drop)
    }

    /// Parses and checks every template once: a bad base URL (not http(s), a query, a fragment,
    /// credentials), a method other than GET POST PUT PATCH DELETE, a GET with a body, an
    /// unparseable placeholder or unknown filter, a path that does not start with `/` or has a
    /// character a URL path cannot carry, a literal `.`/`..`/empty segment, an invalid header
    /// name or value, a header named twice, and two routes with the same
    /// (event type, method, path).
    pub fn compile(&self) -> Result<RestRoutes, String> {
        let base_url = parse_base_url(&self.base_url).map_err(|err| format!("base_url: {err}"))?;
        let common = compile_headers(&self.headers)?;
        let mut routes: Vec<RestRoute> = Vec::with_capacity(self.routes.len());
        for (index, route) in self.routes.iter().enumerate() {
            let name = format!(
                "routes[{index}] ({} {} {})",
                route.event_type, route.method, route.path
            );
            let compiled = compile_route(route, &common).map_err(|err| format!("{name}: {err}"))?;
            if let Some(earlier) = routes.iter().position(|other| {
                other.event_type == compiled.event_type
                    && other.method == compiled.method
                    && other.path_source == compiled.path_source
            }) {
                return Err(format!(
                    "{name}: the same event type, method and path as routes[{earlier}]"
                ));
            }
            routes.push(compiled);
        }
        Ok(RestRoutes { base_url, routes })
    }
}

impl RestRoutes {
    /// The parsed base URL, to pass to [`RestRoute::render`].
    pub fn base_url(&self) -> &Url {
        &self.base_url
    }

    /// Every route, in configuration order.
    pub fn routes(&self) -> &[RestRoute] {
        &self.routes
    }

    /// The routes for `event_type`, in configuration order (none if no route names it).
    pub fn routes_for<'a>(&'a self, event_type: &'a str) -> impl Iterator<Item = &'a RestRoute> {
        self.routes
            .iter()
            .filter(move |route| route.event_type == event_type)
    }
}

impl RestRoute {
    /// The event type this route is for.
    pub fn event_type(&self) -> &str {
        &self.event_type
    }

    /// The route's method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The path template as written: a bounded name for the route in logs and metrics.
    pub fn path_template(&self) -> &str {
        &self.path_source
    }

    /// Builds this route's request for the event whose view is `view` (see [`event_view`]),
    /// appending the path to `base` (normally [`RestRoutes::base_url`]; a test may point it
    /// elsewhere).
    pub fn render(&self, base: &Url, view: &Value) -> Result<RenderedRequest, RenderError> {
        let path = render_path(&self.path, view)?;
        let url = join_under(base, &path)?;
        let mut headers = Vec::with_capacity(self.headers.len());
        for (name, template) in &self.headers {
            let value = render_text(template, view)?.ok_or_else(|| missing(template, view))?;
            if !is_header_text(&value) {
                return Err(RenderError::BadHeaderValue { name: name.clone() });
            }
            headers.push((name.clone(), value));
        }
        let body = match &self.body {
            None => None,
            Some(template) => Some(match render_body(template, view)? {
                Some(body) => body,
                // Only a top-level container can render to nothing through its fields; a
                // top-level placeholder that is absent is an error, as there is nothing to send.
                None => match template {
                    BodyTemplate::Object(_) => Value::Object(Map::new()),
                    BodyTemplate::Array(_) => Value::Array(Vec::new()),
                    BodyTemplate::Single { at, hole } => {
                        return Err(RenderError::Missing {
                            at: at.clone(),
                            placeholder: hole.source.clone(),
                        });
                    }
                    BodyTemplate::Text(template) => return Err(missing(template, view)),
                    BodyTemplate::Const(value) => value.clone(),
                },
            }),
        };
        Ok(RenderedRequest {
            method: self.method.clone(),
            url,
            headers,
            body,
        })
    }
}

// ---- Compiled templates ----

/// A string template: literal text and placeholders, with where it is used (for errors).
#[derive(Debug, Clone, PartialEq)]
struct Template {
    at: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Hole(Placeholder),
}

/// One `{{ ... }}`.
#[derive(Debug, Clone, PartialEq)]
struct Placeholder {
    /// As written, braces included, for error messages.
    source: String,
    path: Vec<String>,
    filters: Vec<Filter>,
}

#[derive(Debug, Clone, PartialEq)]
enum Filter {
    UrlEncode,
    Lower,
    Upper,
    Json,
    Default(Value),
}

/// A body template: the JSON shape with its string leaves compiled.
#[derive(Debug, Clone, PartialEq)]
enum BodyTemplate {
    /// A non-string leaf, or a string without placeholders.
    Const(Value),
    /// A string that is exactly one placeholder: keeps the value's type.
    Single {
        at: String,
        hole: Placeholder,
    },
    /// Any other string with placeholders.
    Text(Template),
    Array(Vec<BodyTemplate>),
    Object(Vec<(String, BodyTemplate)>),
}

impl Placeholder {
    fn encodes(&self) -> bool {
        self.filters.contains(&Filter::UrlEncode)
    }
}

// ---- Parsing ----

/// Parses `source` into literal text and placeholders.
fn parse_template(at: &str, source: &str) -> Result<Template, String> {
    let mut parts = Vec::new();
    let mut rest = source;
    while let Some(start) = rest.find("{{") {
        if start > 0 {
            parts.push(Part::Text(rest[..start].to_owned()));
        }
        let inner_and_rest = &rest[start + 2..];
        let end = closing_braces(inner_and_rest).ok_or_else(|| {
            format!(
                "a placeholder is never closed with `}}}}`: `{}`",
                &rest[start..]
            )
        })?;
        let inner = &inner_and_rest[..end];
        let written = &rest[start..start + 2 + end + 2];
        parts.push(Part::Hole(
            parse_placeholder(written, inner).map_err(|err| format!("`{written}`: {err}"))?,
        ));
        rest = &inner_and_rest[end + 2..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_owned()));
    }
    Ok(Template {
        at: at.to_owned(),
        parts,
    })
}

/// The byte offset of the `}}` that closes a placeholder, skipping quoted filter arguments.
fn closing_braces(text: &str) -> Option<usize> {
    let mut quoted = false;
    for (offset, c) in text.char_indices() {
        if c == '\'' {
            quoted = !quoted;
        } else if !quoted && text[offset..].starts_with("}}") {
            return Some(offset);
        }
    }
    None
}

/// Splits at `|` outside quotes.
fn split_filters(inner: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut quoted = false;
    let mut start = 0;
    for (offset, c) in inner.char_indices() {
        match c {
            '\'' => quoted = !quoted,
            '|' if !quoted => {
                pieces.push(&inner[start..offset]);
                start = offset + 1;
            }
            _ => {}
        }
    }
    pieces.push(&inner[start..]);
    pieces
}

fn parse_placeholder(written: &str, inner: &str) -> Result<Placeholder, String> {
    let mut pieces = split_filters(inner).into_iter().map(str::trim);
    let name = pieces.next().unwrap_or_default();
    if name.is_empty() {
        return Err("the placeholder names no field".to_owned());
    }
    let path: Vec<String> = name.split('.').map(str::to_owned).collect();
    if let Some(bad) = path.iter().find(|segment| {
        segment.is_empty()
            || !segment
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    }) {
        return Err(format!(
            "`{name}` is not a field path (segment `{bad}`; names are [A-Za-z0-9_-] joined by `.`)"
        ));
    }
    let filters = pieces.map(parse_filter).collect::<Result<Vec<_>, _>>()?;
    Ok(Placeholder {
        source: written.to_owned(),
        path,
        filters,
    })
}

fn parse_filter(piece: &str) -> Result<Filter, String> {
    let (name, arg) = match piece.split_once(':') {
        Some((name, arg)) => (name.trim(), Some(arg.trim())),
        None => (piece, None),
    };
    let filter = match name {
        "urlencode" => Filter::UrlEncode,
        "lower" => Filter::Lower,
        "upper" => Filter::Upper,
        "json" => Filter::Json,
        "default" => {
            let arg = arg.ok_or("`default` needs a value: default:'text'")?;
            return parse_default(arg).map(Filter::Default);
        }
        "" => return Err("an empty filter (`||` or a trailing `|`)".to_owned()),
        other => return Err(format!("unknown filter `{other}` (known: {KNOWN_FILTERS})")),
    };
    match arg {
        Some(_) => Err(format!("filter `{name}` takes no argument")),
        None => Ok(filter),
    }
}

/// `'text'`, or a JSON number or boolean.
fn parse_default(arg: &str) -> Result<Value, String> {
    if let Some(text) = arg
        .strip_prefix('\'')
        .and_then(|arg| arg.strip_suffix('\''))
        && !text.contains('\'')
    {
        return Ok(Value::String(text.to_owned()));
    }
    match serde_json::from_str::<Value>(arg) {
        Ok(value @ (Value::Number(_) | Value::Bool(_))) => Ok(value),
        _ => Err(format!(
            "the default `{arg}` is neither a quoted text ('...', without `'` inside), a number nor true/false"
        )),
    }
}

fn parse_base_url(raw: &str) -> Result<Url, String> {
    let url = Url::parse(raw).map_err(|err| format!("`{raw}` is not a URL: {err}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("`{raw}` is not an http or https URL"));
    }
    if url.host().is_none() {
        return Err(format!("`{raw}` has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "`{raw}` has a query or fragment; put a query in the route's path"
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        // Only the scheme and host are repeated in logs and errors; credentials belong in a header.
        return Err("the URL has credentials; send them in a header instead".to_owned());
    }
    Ok(url)
}

/// Compiles a header table, checking names and literal text; names that differ only in case are
/// an error, since HTTP would merge them.
fn compile_headers(headers: &BTreeMap<String, String>) -> Result<Vec<(String, Template)>, String> {
    let mut compiled: Vec<(String, Template)> = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let at = format!("headers.{name}");
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(format!("{at}: `{name}` is not a valid header name"));
        }
        if compiled
            .iter()
            .any(|(other, _)| other.eq_ignore_ascii_case(name))
        {
            return Err(format!(
                "{at}: the header is named twice (names ignore case)"
            ));
        }
        let template = parse_template(&at, value).map_err(|err| format!("{at}: {err}"))?;
        let literal: String = template
            .parts
            .iter()
            .filter_map(|part| match part {
                Part::Text(text) => Some(text.as_str()),
                Part::Hole(_) => None,
            })
            .collect();
        if !is_header_text(&literal) {
            return Err(format!(
                "{at}: the value has a character a header cannot carry (line break, control, non-ASCII)"
            ));
        }
        compiled.push((name.clone(), template));
    }
    Ok(compiled)
}

/// Visible ASCII, spaces and tabs: what every HTTP stack carries in a header value alike.
/// `http::HeaderValue` also takes bytes above 127 (obsolete `obs-text`), which servers read in
/// different character sets, so non-ASCII text is refused here; `urlencode` makes it ASCII.
fn is_header_text(value: &str) -> bool {
    value
        .bytes()
        .all(|byte| matches!(byte, b' '..=b'~' | b'\t'))
}

fn compile_route(
    route: &RestRouteConfig,
    common: &[(String, Template)],
) -> Result<RestRoute, String> {
    let event_type = route.event_type.trim();
    if event_type.is_empty() {
        return Err("event_type: empty".to_owned());
    }
    if !event_type
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '_')
    {
        return Err(format!(
            "event_type: `{event_type}` is not an event type name like `lead.created`"
        ));
    }
    let method_name = route.method.trim().to_ascii_uppercase();
    let method = METHODS
        .iter()
        .find(|method| method.as_str() == method_name)
        .cloned()
        .ok_or_else(|| {
            format!(
                "method: `{}` is not one of GET, POST, PUT, PATCH, DELETE",
                route.method
            )
        })?;
    let path = compile_path(&route.path).map_err(|err| format!("path: {err}"))?;
    let mut headers = common.to_vec();
    for (name, template) in compile_headers(&route.headers)? {
        match headers
            .iter_mut()
            .find(|(other, _)| other.eq_ignore_ascii_case(&name))
        {
            Some(slot) => *slot = (name, template),
            None => headers.push((name, template)),
        }
    }
    let body = match &route.body {
        None => None,
        Some(_) if method == Method::GET => {
            return Err("body: a GET request cannot have a body".to_owned());
        }
        Some(body) => Some(compile_body("body", body)?),
    };
    Ok(RestRoute {
        event_type: event_type.to_owned(),
        method,
        path_source: route.path.clone(),
        path,
        headers,
        body,
    })
}

/// A path template: starts with `/`, literal text limited to what a URL path and query carry
/// as is, no literal empty, `.` or `..` segment.
fn compile_path(source: &str) -> Result<Template, String> {
    let template = parse_template("path", source)?;
    if !matches!(template.parts.first(), Some(Part::Text(text)) if text.starts_with('/')) {
        return Err(format!("`{source}` does not start with `/`"));
    }
    let mut skeleton = String::new();
    for part in &template.parts {
        match part {
            Part::Text(text) => {
                check_path_literal(text)?;
                skeleton.push_str(text);
            }
            // Any non-empty, non-dot stand-in: rendering checks the real values.
            Part::Hole(_) => skeleton.push('*'),
        }
    }
    let path_part = skeleton.split('?').next().unwrap_or_default();
    let segments: Vec<&str> = path_part.split('/').skip(1).collect();
    for (index, segment) in segments.iter().enumerate() {
        if is_dot_segment(segment) {
            return Err(format!(
                "`{source}` has the segment `{segment}`, which would move the URL up the tree"
            ));
        }
        // A trailing slash is a real difference some APIs make; an empty segment inside is a typo.
        if segment.is_empty() && index + 1 < segments.len() {
            return Err(format!("`{source}` has an empty segment (`//`)"));
        }
    }
    Ok(template)
}

fn check_path_literal(text: &str) -> Result<(), String> {
    let bytes = text.as_bytes();
    for (index, c) in text.char_indices() {
        let allowed = c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@/?".contains(c);
        if c == '%' {
            let hex = bytes.get(index + 1..index + 3);
            if !hex.is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)) {
                return Err("a `%` not followed by two hex digits".to_owned());
            }
        } else if !allowed {
            return Err(format!(
                "the character `{}` cannot stand in a URL path as is; percent-encode it",
                c.escape_debug()
            ));
        }
    }
    Ok(())
}

/// `.` or `..`, also percent-encoded, as the URL standard reads them.
fn is_dot_segment(segment: &str) -> bool {
    matches!(
        segment.to_ascii_lowercase().as_str(),
        "." | ".." | "%2e" | "%2e%2e" | ".%2e" | "%2e."
    )
}

fn compile_body(at: &str, body: &Value) -> Result<BodyTemplate, String> {
    Ok(match body {
        Value::String(text) => {
            let template = parse_template(at, text).map_err(|err| format!("{at}: {err}"))?;
            match template.parts.as_slice() {
                [] | [Part::Text(_)] => BodyTemplate::Const(body.clone()),
                [Part::Hole(hole)] => BodyTemplate::Single {
                    at: at.to_owned(),
                    hole: hole.clone(),
                },
                _ => BodyTemplate::Text(template),
            }
        }
        Value::Array(items) => BodyTemplate::Array(
            items
                .iter()
                .enumerate()
                .map(|(index, item)| compile_body(&format!("{at}[{index}]"), item))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(fields) => {
            let mut compiled = Vec::with_capacity(fields.len());
            for (key, value) in fields {
                let at = format!("{at}.{key}");
                if key.starts_with("$__toml_private") {
                    return Err(format!(
                        "{at}: TOML dates and times are not supported in bodies; quote them"
                    ));
                }
                if key.contains("{{") {
                    return Err(format!("{at}: body keys are not templates"));
                }
                compiled.push((key.clone(), compile_body(&at, value)?));
            }
            BodyTemplate::Object(compiled)
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => BodyTemplate::Const(body.clone()),
    })
}

// ---- Rendering ----

/// The value at `path`; `None` when a key is missing, a segment does not index an array, or the
/// value is `null`.
fn lookup<'v>(view: &'v Value, path: &[String]) -> Option<&'v Value> {
    let mut current = view;
    for segment in path {
        current = match current {
            Value::Object(fields) => fields.get(segment)?,
            Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    (!current.is_null()).then_some(current)
}

/// The value of a placeholder after its filters; `None` when absent.
fn eval<'v>(
    hole: &Placeholder,
    view: &'v Value,
    at: &str,
) -> Result<Option<Cow<'v, Value>>, RenderError> {
    let mut value = lookup(view, &hole.path).map(Cow::Borrowed);
    for filter in &hole.filters {
        value = match (filter, value) {
            (Filter::Default(fallback), None) => Some(Cow::Owned(fallback.clone())),
            (_, None) => None,
            (Filter::Default(_), present) => present,
            (Filter::Lower, Some(value)) => Some(Cow::Owned(Value::String(
                text_of(&value, hole, at)?.to_lowercase(),
            ))),
            (Filter::Upper, Some(value)) => Some(Cow::Owned(Value::String(
                text_of(&value, hole, at)?.to_uppercase(),
            ))),
            (Filter::UrlEncode, Some(value)) => Some(Cow::Owned(Value::String(urlencode(
                &text_of(&value, hole, at)?,
            )))),
            (Filter::Json, Some(value)) => Some(Cow::Owned(Value::String(value.to_string()))),
        };
    }
    Ok(value)
}

/// A scalar as text: strings as they are, numbers and booleans as their JSON text.
fn text_of<'a>(
    value: &'a Value,
    hole: &Placeholder,
    at: &str,
) -> Result<Cow<'a, str>, RenderError> {
    let kind = match value {
        Value::String(text) => return Ok(Cow::Borrowed(text)),
        Value::Number(number) => return Ok(Cow::Owned(number.to_string())),
        Value::Bool(flag) => return Ok(Cow::Borrowed(if *flag { "true" } else { "false" })),
        Value::Null => "null",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    Err(RenderError::NotText {
        at: at.to_owned(),
        placeholder: hole.source.clone(),
        kind,
    })
}

/// Percent-encodes every byte but the URL standard's unreserved characters.
fn urlencode(text: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
    }
    out
}

/// A text template; `None` if any placeholder is absent.
fn render_text(template: &Template, view: &Value) -> Result<Option<String>, RenderError> {
    let mut out = String::new();
    for part in &template.parts {
        match part {
            Part::Text(text) => out.push_str(text),
            Part::Hole(hole) => match eval(hole, view, &template.at)? {
                Some(value) => out.push_str(&text_of(&value, hole, &template.at)?),
                None => return Ok(None),
            },
        }
    }
    Ok(Some(out))
}

/// The `Missing` error for the first absent placeholder of `template`.
fn missing(template: &Template, view: &Value) -> RenderError {
    let placeholder = template
        .parts
        .iter()
        .find_map(|part| match part {
            Part::Hole(hole) if matches!(eval(hole, view, &template.at), Ok(None)) => {
                Some(hole.source.clone())
            }
            _ => None,
        })
        .unwrap_or_default();
    RenderError::Missing {
        at: template.at.clone(),
        placeholder,
    }
}

/// The path (and query) with every placeholder encoded.
fn render_path(template: &Template, view: &Value) -> Result<String, RenderError> {
    let mut out = String::new();
    let mut in_query = false;
    for part in &template.parts {
        match part {
            Part::Text(text) => {
                in_query |= text.contains('?');
                out.push_str(text);
            }
            Part::Hole(hole) => {
                let value =
                    eval(hole, view, &template.at)?.ok_or_else(|| RenderError::Missing {
                        at: template.at.clone(),
                        placeholder: hole.source.clone(),
                    })?;
                let text = text_of(&value, hole, &template.at)?;
                let text = if hole.encodes() {
                    text.into_owned()
                } else {
                    urlencode(&text)
                };
                if text.is_empty() && !in_query {
                    return Err(RenderError::EmptyInPath {
                        placeholder: hole.source.clone(),
                    });
                }
                out.push_str(&text);
            }
        }
    }
    let path_part = out.split('?').next().unwrap_or_default();
    if let Some(segment) = path_part.split('/').find(|segment| is_dot_segment(segment)) {
        return Err(RenderError::DotSegment {
            segment: segment.to_owned(),
        });
    }
    Ok(out)
}

/// `base` with `path` appended to its path, checked to stay under it.
fn join_under(base: &Url, path: &str) -> Result<Url, RenderError> {
    if base.cannot_be_a_base() {
        return Err(RenderError::BadUrl {
            reason: "the base URL cannot take a path".to_owned(),
        });
    }
    let mut root = base.clone();
    root.set_query(None);
    root.set_fragment(None);
    let joined = format!("{}{path}", root.as_str().trim_end_matches('/'));
    let url = Url::parse(&joined).map_err(|err| RenderError::BadUrl {
        reason: err.to_string(),
    })?;
    let base_path = root.path().trim_end_matches('/');
    let under = url.origin() == root.origin()
        && url.username() == root.username()
        && url.password() == root.password()
        && (url.path() == base_path || url.path().starts_with(&format!("{base_path}/")))
        && url.fragment().is_none();
    if !under {
        return Err(RenderError::OutsideBase);
    }
    Ok(url)
}

fn render_body(template: &BodyTemplate, view: &Value) -> Result<Option<Value>, RenderError> {
    Ok(match template {
        BodyTemplate::Const(value) => Some(value.clone()),
        BodyTemplate::Single { at, hole } => eval(hole, view, at)?.map(Cow::into_owned),
        BodyTemplate::Text(template) => render_text(template, view)?.map(Value::String),
        BodyTemplate::Array(items) => {
            let mut rendered = Vec::with_capacity(items.len());
            for item in items {
                rendered.extend(render_body(item, view)?);
            }
            (!rendered.is_empty() || items.is_empty()).then_some(Value::Array(rendered))
        }
        BodyTemplate::Object(fields) => {
            let mut rendered = Map::new();
            for (key, field) in fields {
                if let Some(value) = render_body(field, view)? {
                    rendered.insert(key.clone(), value);
                }
            }
            (!rendered.is_empty() || fields.is_empty()).then_some(Value::Object(rendered))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hole(template: &Template) -> &Placeholder {
        match template.parts.as_slice() {
            [Part::Hole(hole)] => hole,
            other => panic!("not one placeholder: {other:?}"),
        }
    }

    fn one(source: &str) -> Placeholder {
        hole(&parse_template("t", source).expect("parses")).clone()
    }

    fn text(source: &str, view: &Value) -> Result<Option<String>, RenderError> {
        render_text(&parse_template("t", source).expect("parses"), view)
    }

    #[test]
    fn templates_split_into_text_and_placeholders() {
        let template = parse_template("t", "a {{x}} b{{ y.z | lower }}").expect("parses");
        assert_eq!(template.parts.len(), 4);
        assert_eq!(template.parts[0], Part::Text("a ".into()));
        assert_eq!(template.parts[2], Part::Text(" b".into()));
        let Part::Hole(y) = &template.parts[3] else {
            panic!("a placeholder");
        };
        assert_eq!(y.path, ["y", "z"]);
        assert_eq!(y.filters, [Filter::Lower]);
        assert_eq!(y.source, "{{ y.z | lower }}");
        assert!(parse_template("t", "").expect("parses").parts.is_empty());
        // A lone `}}` or single braces are text.
        let plain = parse_template("t", "{a} }}").expect("parses");
        assert_eq!(plain.parts, [Part::Text("{a} }}".into())]);
    }

    #[test]
    fn quoted_defaults_may_hold_braces_and_bars() {
        let placeholder = one("{{x|default:'a|b}}c'|upper}}");
        assert_eq!(
            placeholder.filters,
            [Filter::Default(json!("a|b}}c")), Filter::Upper]
        );
        assert_eq!(
            one("{{x|default:''}}").filters,
            [Filter::Default(json!(""))]
        );
        assert_eq!(
            one("{{x|default: 42}}").filters,
            [Filter::Default(json!(42))]
        );
        assert_eq!(
            one("{{x|default:1.5}}").filters,
            [Filter::Default(json!(1.5))]
        );
        assert_eq!(
            one("{{x|default:false}}").filters,
            [Filter::Default(json!(false))]
        );
    }

    #[test]
    fn malformed_placeholders_are_refused_with_a_reason() {
        let cases = [
            ("{{x", "never closed"),
            ("{{x|default:'a}}", "never closed"),
            ("{{}}", "names no field"),
            ("{{ }}", "names no field"),
            ("{{a..b}}", "not a field path"),
            ("{{a b}}", "not a field path"),
            ("{{a.}}", "not a field path"),
            ("{{a|lowr}}", "unknown filter `lowr`"),
            ("{{a||lower}}", "empty filter"),
            ("{{a|}}", "empty filter"),
            ("{{a|lower:1}}", "takes no argument"),
            ("{{a|default}}", "needs a value"),
            ("{{a|default:x}}", "neither a quoted text"),
            ("{{a|default:null}}", "neither a quoted text"),
            ("{{a|default:'it's'}}", "never closed"),
            ("{{a|default:'a''b'}}", "neither a quoted text"),
        ];
        for (source, expected) in cases {
            let err = parse_template("t", source).expect_err(source);
            assert!(err.contains(expected), "{source}: {err}");
        }
    }

    #[test]
    fn filters_apply_left_to_right_and_pass_absence_on() {
        let view =
            json!({"s": "Ada Lovelace", "n": 42, "b": true, "o": {"k": [1, "x"]}, "z": null});
        let cases: [(&str, Option<&str>); 14] = [
            ("{{s}}", Some("Ada Lovelace")),
            ("{{s|lower}}", Some("ada lovelace")),
            ("{{s|upper}}", Some("ADA LOVELACE")),
            ("{{s|urlencode}}", Some("Ada%20Lovelace")),
            ("{{n}}", Some("42")),
            ("{{b|upper}}", Some("TRUE")),
            ("{{o|json}}", Some(r#"{"k":[1,"x"]}"#)),
            ("{{o.k.1}}", Some("x")),
            ("{{o.k.9}}", None),
            ("{{s.k}}", None),
            ("{{z}}", None),
            ("{{missing|lower}}", None),
            ("{{missing|lower|default:'X'|lower}}", Some("x")),
            ("{{s|default:'X'}}", Some("Ada Lovelace")),
        ];
        for (source, expected) in cases {
            assert_eq!(
                text(source, &view).expect(source).as_deref(),
                expected,
                "{source}"
            );
        }
        assert!(matches!(
            text("{{o}}", &view),
            Err(RenderError::NotText {
                kind: "an object",
                ..
            })
        ));
        assert!(matches!(
            text("{{o.k|upper}}", &view),
            Err(RenderError::NotText {
                kind: "an array",
                ..
            })
        ));
    }

    #[test]
    fn urlencode_keeps_only_unreserved_characters() {
        assert_eq!(urlencode("aZ09-._~"), "aZ09-._~");
        assert_eq!(
            urlencode("a/b?c#d e+f%&="),
            "a%2Fb%3Fc%23d%20e%2Bf%25%26%3D"
        );
        assert_eq!(urlencode("é"), "%C3%A9");
        assert_eq!(urlencode("\\\r\n"), "%5C%0D%0A");
    }

    #[test]
    fn dot_segments_are_recognised_in_every_spelling() {
        for segment in [".", "..", "%2e", "%2E%2e", ".%2E", "%2e."] {
            assert!(is_dot_segment(segment), "{segment}");
        }
        for segment in ["", "...", "a.", "..%2F", "*"] {
            assert!(!is_dot_segment(segment), "{segment}");
        }
    }

    #[test]
    fn path_literals_are_checked() {
        assert!(compile_path("/people/{{x}}/notes?limit=10&q={{y}}").is_ok());
        assert!(compile_path("/a/%2F/").is_ok());
        for (path, expected) in [
            ("people", "does not start with `/`"),
            ("{{x}}/people", "does not start with `/`"),
            ("/people/../admin", "segment `..`"),
            ("/people/./{{x}}", "segment `.`"),
            ("/people/%2E%2E/x", "segment `%2E%2E`"),
            ("/people//{{x}}", "empty segment"),
            ("/people#frag", "character `#`"),
            ("/people/{x}", "character `{`"),
            ("/pe ople", "character ` `"),
            ("/people\\x", "character `\\\\`"),
            ("/personnes/é", "character `é`"),
            ("/a%zz", "two hex digits"),
            ("/a%2", "two hex digits"),
        ] {
            let err = compile_path(path).expect_err(path);
            assert!(err.contains(expected), "{path}: {err}");
        }
    }

    #[test]
    fn join_keeps_the_base_path_and_refuses_to_leave_it() {
        let base = Url::parse("http://tool.local/api").expect("url");
        let joined = join_under(&base, "/people/a%2Fb?x=1").expect("joins");
        assert_eq!(joined.as_str(), "http://tool.local/api/people/a%2Fb?x=1");
        let slash = Url::parse("http://tool.local/api/").expect("url");
        assert_eq!(
            join_under(&slash, "/p").expect("joins").as_str(),
            "http://tool.local/api/p"
        );
        // Rendering never produces these; the join still refuses them.
        assert_eq!(
            join_under(&base, "/../admin"),
            Err(RenderError::OutsideBase)
        );
        assert_eq!(join_under(&base, "/p#x"), Err(RenderError::OutsideBase));
        let mailto = Url::parse("mailto:ops@example.com").expect("url");
        assert!(matches!(
            join_under(&mailto, "/p"),
            Err(RenderError::BadUrl { .. })
        ));
    }

    #[test]
    fn body_leaves_compile_by_shape() {
        assert!(matches!(
            compile_body("body", &json!("{{a}}")),
            Ok(BodyTemplate::Single { .. })
        ));
        assert!(matches!(
            compile_body("body", &json!("x{{a}}")),
            Ok(BodyTemplate::Text(_))
        ));
        assert_eq!(
            compile_body("body", &json!("plain")),
            Ok(BodyTemplate::Const(json!("plain")))
        );
        let err = compile_body("body", &json!({"a": [1, {"b": "{{x|nope}}"}]})).expect_err("bad");
        assert!(err.starts_with("body.a[1].b: "), "{err}");
    }
}
