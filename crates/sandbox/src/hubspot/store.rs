//! HubSpot's CRM objects, in memory: the sandbox is a test double, so records live as long as the
//! process (or until `/_sandbox/reset`) and nothing is persisted.
//!
//! The store enforces what a real portal enforces and a CRM writer has to get right: properties
//! must exist (or carry a custom prefix such as `handoff_`), enumerations take only their options,
//! unique properties (contacts' `email`, case-insensitive, plus configured ones) refuse a second
//! record with `409 CONFLICT` naming the existing id, and a batch upsert is checked whole before any
//! of it is applied. Every write returns the [`Write`] the request log records.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use tokio::time::Instant;

use super::config::{DEFAULT_PROPERTIES, HubSpotConfig, default_options, default_unique};
use super::error::ApiError;
use crate::clock::iso;
use crate::request_log::{Write, WriteOp};

/// The CRM object types the sandbox serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectType {
    Contacts,
    Companies,
    Deals,
    Tickets,
}

impl ObjectType {
    /// Every type, in HubSpot's type-id order.
    pub const ALL: [ObjectType; 4] = [
        ObjectType::Contacts,
        ObjectType::Companies,
        ObjectType::Deals,
        ObjectType::Tickets,
    ];

    /// Accepts what HubSpot accepts in a path: plural, singular, or the type id (`0-1`).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "contacts" | "contact" | "0-1" => ObjectType::Contacts,
            "companies" | "company" | "0-2" => ObjectType::Companies,
            "deals" | "deal" | "0-3" => ObjectType::Deals,
            "tickets" | "ticket" | "0-5" => ObjectType::Tickets,
            _ => return None,
        })
    }

    /// The plural name used in paths and the request log.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectType::Contacts => "contacts",
            ObjectType::Companies => "companies",
            ObjectType::Deals => "deals",
            ObjectType::Tickets => "tickets",
        }
    }

    fn title(self) -> &'static str {
        match self {
            ObjectType::Contacts => "Contact",
            ObjectType::Companies => "Company",
            ObjectType::Deals => "Deal",
            ObjectType::Tickets => "Ticket",
        }
    }

    /// Contacts call it `lastmodifieddate`, the other types `hs_lastmodifieddate`.
    fn modified_property(self) -> &'static str {
        match self {
            ObjectType::Contacts => "lastmodifieddate",
            _ => "hs_lastmodifieddate",
        }
    }

    /// What GET and search return when no `properties` are asked for.
    fn default_read(self) -> &'static [&'static str] {
        match self {
            ObjectType::Contacts => &["email", "firstname", "lastname"],
            ObjectType::Companies => &["name", "domain"],
            ObjectType::Deals => &["dealname", "amount", "dealstage", "pipeline", "closedate"],
            ObjectType::Tickets => &[
                "subject",
                "content",
                "hs_pipeline",
                "hs_pipeline_stage",
                "hs_ticket_priority",
            ],
        }
    }
}

/// HubSpot's object JSON: `{"id","properties","createdAt","updatedAt","archived"}`, plus `new` in
/// batch-upsert results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Object {
    pub id: String,
    /// Every value is a string, as HubSpot returns them; `null` for a requested property without a
    /// value.
    pub properties: BTreeMap<String, Option<String>>,
    pub created_at: String,
    pub updated_at: String,
    pub archived: bool,
    /// Batch upsert only: whether the record was created by this call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new: Option<bool>,
}

/// One association between two records, as `/_sandbox/associations` lists them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AssociationRecord {
    pub from_type: ObjectType,
    pub from_id: String,
    pub to_type: ObjectType,
    pub to_id: String,
    /// HubSpot's default (unlabeled) association type id for this direction.
    pub type_id: u32,
}

/// A record written, with its log entry.
#[derive(Debug, Clone)]
pub struct Written {
    pub object: Object,
    pub write: Write,
}

#[derive(Debug, Clone)]
struct Record {
    id: u64,
    props: BTreeMap<String, String>,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
    created: Instant,
}

#[derive(Debug, Clone)]
struct Schema {
    allowed: HashSet<String>,
    prefixes: Vec<String>,
    unique: Vec<String>,
    options: BTreeMap<String, Vec<String>>,
}

impl Schema {
    fn exists(&self, name: &str) -> bool {
        self.allowed.contains(name) || self.prefixes.iter().any(|p| name.starts_with(p.as_str()))
    }
}

/// Unique values are compared case-insensitively for `email` (HubSpot lower-cases addresses) and
/// exactly otherwise.
fn norm(property: &str, value: &str) -> String {
    if property == "email" {
        value.trim().to_lowercase()
    } else {
        value.to_owned()
    }
}

/// HubSpot's default association type id from one type to another (the unlabeled "primary" ones).
fn association_type_id(from: ObjectType, to: ObjectType) -> u32 {
    use ObjectType::*;
    match (from, to) {
        (Contacts, Companies) => 279,
        (Companies, Contacts) => 280,
        (Deals, Contacts) => 3,
        (Contacts, Deals) => 4,
        (Deals, Companies) => 341,
        (Companies, Deals) => 342,
        (Contacts, Tickets) => 15,
        (Tickets, Contacts) => 16,
        (Deals, Tickets) => 27,
        (Tickets, Deals) => 28,
        (Tickets, Companies) => 339,
        (Companies, Tickets) => 340,
        // Same-type associations (e.g. parent company) are not modelled by the sandbox.
        _ => 0,
    }
}

/// Property values as HubSpot stores them: strings. `null` clears (stored as empty).
fn to_value_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null => Some(String::new()),
        Value::Array(_) | Value::Object(_) => None,
    }
}

/// Largest batch HubSpot takes in one call.
pub const BATCH_LIMIT: usize = 100;
/// Largest search page.
pub const SEARCH_LIMIT: usize = 200;

/// All records, indexes and associations of one sandbox instance.
#[derive(Debug)]
pub struct Store {
    schemas: HashMap<ObjectType, Schema>,
    portal_id: u64,
    search_delay: Duration,
    next_id: u64,
    records: BTreeMap<ObjectType, BTreeMap<u64, Record>>,
    index: HashMap<(ObjectType, String, String), u64>,
    /// Stored once per pair, in the direction it was created.
    associations: BTreeSet<(ObjectType, u64, ObjectType, u64)>,
}

impl Store {
    /// An empty portal with the schema from `cfg`.
    pub fn new(cfg: &HubSpotConfig) -> Self {
        let schemas = ObjectType::ALL
            .into_iter()
            .map(|ty| {
                let o = cfg.object(ty);
                let allowed: HashSet<String> = match &o.properties {
                    Some(p) => p.iter().cloned().collect(),
                    None => DEFAULT_PROPERTIES.iter().map(|s| (*s).to_owned()).collect(),
                };
                let mut unique = o.unique.clone().unwrap_or_else(|| default_unique(ty));
                if ty == ObjectType::Contacts && !unique.iter().any(|u| u == "email") {
                    unique.insert(0, "email".to_owned());
                }
                let schema = Schema {
                    allowed,
                    prefixes: cfg.custom_property_prefixes.clone(),
                    unique,
                    options: o.options.clone().unwrap_or_else(default_options),
                };
                (ty, schema)
            })
            .collect();
        Store {
            schemas,
            portal_id: cfg.portal_id,
            search_delay: cfg.search_delay,
            next_id: 1001,
            records: BTreeMap::new(),
            index: HashMap::new(),
            associations: BTreeSet::new(),
        }
    }

    /// Forgets every record and association. Ids keep counting up, so an id a client still holds
    /// from before the reset never names a new record.
    pub fn reset(&mut self) {
        self.records.clear();
        self.index.clear();
        self.associations.clear();
    }

    fn schema(&self, ty: ObjectType) -> &Schema {
        // Every type gets a schema in `new`; the fallback is never used.
        static EMPTY: std::sync::OnceLock<Schema> = std::sync::OnceLock::new();
        self.schemas.get(&ty).unwrap_or_else(|| {
            EMPTY.get_or_init(|| Schema {
                allowed: HashSet::new(),
                prefixes: Vec::new(),
                unique: Vec::new(),
                options: BTreeMap::new(),
            })
        })
    }

    /// Checks property names and values; returns them as HubSpot stores them.
    fn validate(
        &self,
        ty: ObjectType,
        props: &Map<String, Value>,
    ) -> Result<BTreeMap<String, String>, ApiError> {
        let schema = self.schema(ty);
        let mut bad: Vec<(String, &'static str, String)> = Vec::new();
        let mut out = BTreeMap::new();
        for (name, value) in props {
            if !schema.exists(name) {
                bad.push((
                    name.clone(),
                    "PROPERTY_DOESNT_EXIST",
                    format!("Property \"{name}\" does not exist"),
                ));
                continue;
            }
            let Some(mut v) = to_value_string(value) else {
                bad.push((
                    name.clone(),
                    "INVALID_VALUE",
                    format!("Property \"{name}\" must be a string, number or boolean"),
                ));
                continue;
            };
            if name == "email" {
                v = norm("email", &v);
            }
            if let Some(options) = schema.options.get(name)
                && !v.is_empty()
                && !options.contains(&v)
            {
                bad.push((
                    name.clone(),
                    "INVALID_OPTION",
                    format!(
                        "{v} was not one of the allowed options: [{}]",
                        options.join(", ")
                    ),
                ));
                continue;
            }
            out.insert(name.clone(), v);
        }
        if bad.is_empty() {
            return Ok(out);
        }
        let details: Vec<Value> = bad
            .iter()
            .map(|(name, code, msg)| {
                json!({
                    "isValid": false,
                    "message": msg,
                    "error": code,
                    "name": name,
                    "localizedErrorMessage": msg,
                    "portalId": self.portal_id,
                })
            })
            .collect();
        let errors = bad
            .iter()
            .map(|(name, code, msg)| {
                json!({ "message": msg, "code": code, "context": { "propertyName": [name] } })
            })
            .collect();
        Err(ApiError::Validation {
            message: format!("Property values were not valid: {}", Value::Array(details)),
            errors,
        })
    }

    /// The id of another record holding one of `props`' unique values, if any.
    fn conflict(
        &self,
        ty: ObjectType,
        props: &BTreeMap<String, String>,
        owner: Option<u64>,
    ) -> Option<u64> {
        self.schema(ty).unique.iter().find_map(|u| {
            let v = props.get(u).filter(|v| !v.is_empty())?;
            let id = *self.index.get(&(ty, u.clone(), norm(u, v)))?;
            (Some(id) != owner).then_some(id)
        })
    }

    fn conflict_error(ty: ObjectType, existing: u64) -> ApiError {
        ApiError::Conflict(format!(
            "{} already exists. Existing ID: {existing}",
            ty.title()
        ))
    }

    fn key_of(&self, ty: ObjectType, rec: &Record) -> String {
        self.schema(ty)
            .unique
            .iter()
            .find_map(|u| {
                rec.props
                    .get(u)
                    .filter(|v| !v.is_empty())
                    .map(|v| norm(u, v))
            })
            .unwrap_or_else(|| rec.id.to_string())
    }

    fn reindex(&mut self, ty: ObjectType, id: u64, old: &BTreeMap<String, String>) {
        let unique = self.schema(ty).unique.clone();
        let new = self
            .records
            .get(&ty)
            .and_then(|m| m.get(&id))
            .map(|r| r.props.clone())
            .unwrap_or_default();
        for u in &unique {
            if let Some(v) = old.get(u).filter(|v| !v.is_empty()) {
                self.index.remove(&(ty, u.clone(), norm(u, v)));
            }
            if let Some(v) = new.get(u).filter(|v| !v.is_empty()) {
                self.index.insert((ty, u.clone(), norm(u, v)), id);
            }
        }
    }

    fn insert(&mut self, ty: ObjectType, props: BTreeMap<String, String>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let now = OffsetDateTime::now_utc();
        let rec = Record {
            id,
            props,
            created_at: now,
            updated_at: now,
            created: Instant::now(),
        };
        self.records.entry(ty).or_default().insert(id, rec);
        self.reindex(ty, id, &BTreeMap::new());
        id
    }

    fn apply(&mut self, ty: ObjectType, id: u64, props: BTreeMap<String, String>) {
        let Some(rec) = self.records.get_mut(&ty).and_then(|m| m.get_mut(&id)) else {
            return;
        };
        let old = rec.props.clone();
        rec.props.extend(props);
        rec.updated_at = OffsetDateTime::now_utc();
        self.reindex(ty, id, &old);
    }

    fn record(&self, ty: ObjectType, id: u64) -> Option<&Record> {
        self.records.get(&ty).and_then(|m| m.get(&id))
    }

    fn written(&self, ty: ObjectType, id: u64, op: WriteOp) -> Option<Written> {
        let rec = self.record(ty, id)?;
        Some(Written {
            object: self.render(ty, rec, None),
            write: Write {
                object_type: ty.as_str().to_owned(),
                id: id.to_string(),
                key: self.key_of(ty, rec),
                op,
            },
        })
    }

    /// A record as HubSpot returns it: all stored properties (`None`) or the requested ones, plus
    /// `hs_object_id`, `createdate` and the last-modified date.
    fn render(&self, ty: ObjectType, rec: &Record, only: Option<&[String]>) -> Object {
        let mut properties: BTreeMap<String, Option<String>> = match only {
            None => rec
                .props
                .iter()
                .map(|(k, v)| (k.clone(), Some(v.clone())))
                .collect(),
            Some(names) => names
                .iter()
                .map(|n| (n.clone(), rec.props.get(n).cloned()))
                .collect(),
        };
        properties.insert("hs_object_id".into(), Some(rec.id.to_string()));
        properties.insert("createdate".into(), Some(iso(rec.created_at)));
        properties.insert(ty.modified_property().into(), Some(iso(rec.updated_at)));
        Object {
            id: rec.id.to_string(),
            properties,
            created_at: iso(rec.created_at),
            updated_at: iso(rec.updated_at),
            archived: false,
            new: None,
        }
    }

    fn property_value(ty: ObjectType, rec: &Record, name: &str) -> Option<String> {
        match name {
            "hs_object_id" => Some(rec.id.to_string()),
            "createdate" => Some(iso(rec.created_at)),
            n if n == ty.modified_property() => Some(iso(rec.updated_at)),
            n => rec.props.get(n).filter(|v| !v.is_empty()).cloned(),
        }
    }

    /// `POST /crm/v3/objects/{type}`.
    pub fn create(
        &mut self,
        ty: ObjectType,
        props: &Map<String, Value>,
    ) -> Result<Written, ApiError> {
        let props = self.validate(ty, props)?;
        if let Some(existing) = self.conflict(ty, &props, None) {
            return Err(Self::conflict_error(ty, existing));
        }
        let id = self.insert(ty, props);
        self.written(ty, id, WriteOp::Create)
            .ok_or_else(|| ApiError::not_found(&id.to_string()))
    }

    /// Resolves a path id: the record id, or with `idProperty` a unique property's value.
    pub fn find(
        &self,
        ty: ObjectType,
        id: &str,
        id_property: Option<&str>,
    ) -> Result<Option<u64>, ApiError> {
        match id_property {
            None | Some("hs_object_id") => Ok(id
                .parse::<u64>()
                .ok()
                .filter(|n| self.record(ty, *n).is_some())),
            Some(p) => {
                if !self.schema(ty).unique.iter().any(|u| u == p) {
                    return Err(ApiError::validation(format!(
                        "{p} is not a unique property of {}; use one of [{}]",
                        ty.as_str(),
                        self.schema(ty).unique.join(", ")
                    )));
                }
                Ok(self.index.get(&(ty, p.to_owned(), norm(p, id))).copied())
            }
        }
    }

    /// `GET /crm/v3/objects/{type}/{id}`.
    pub fn get(
        &self,
        ty: ObjectType,
        id: &str,
        id_property: Option<&str>,
        properties: Option<&[String]>,
    ) -> Result<Object, ApiError> {
        let found = self
            .find(ty, id, id_property)?
            .and_then(|n| self.record(ty, n))
            .ok_or_else(|| ApiError::not_found(id))?;
        let default: Vec<String> = ty.default_read().iter().map(|s| (*s).to_owned()).collect();
        Ok(self.render(ty, found, Some(properties.unwrap_or(&default))))
    }

    /// `PATCH /crm/v3/objects/{type}/{id}`.
    pub fn update(
        &mut self,
        ty: ObjectType,
        id: &str,
        id_property: Option<&str>,
        props: &Map<String, Value>,
    ) -> Result<Written, ApiError> {
        let target = self
            .find(ty, id, id_property)?
            .ok_or_else(|| ApiError::not_found(id))?;
        let props = self.validate(ty, props)?;
        if let Some(existing) = self.conflict(ty, &props, Some(target)) {
            return Err(Self::conflict_error(ty, existing));
        }
        self.apply(ty, target, props);
        self.written(ty, target, WriteOp::Update)
            .ok_or_else(|| ApiError::not_found(id))
    }

    /// `POST /crm/v3/objects/{type}/batch/upsert`: every input is checked (properties, `idProperty`
    /// unique, no duplicate ids, no unique value claimed twice) before any is applied.
    pub fn upsert_batch(
        &mut self,
        ty: ObjectType,
        inputs: &[Value],
    ) -> Result<Vec<Written>, ApiError> {
        if inputs.is_empty() {
            return Err(ApiError::validation("inputs must not be empty"));
        }
        if inputs.len() > BATCH_LIMIT {
            return Err(ApiError::validation(format!(
                "Too many inputs: {} > {BATCH_LIMIT}",
                inputs.len()
            )));
        }
        let mut plans: Vec<(Option<u64>, BTreeMap<String, String>)> = Vec::new();
        let mut seen: HashSet<(String, String)> = HashSet::new();
        let mut duplicates: Vec<String> = Vec::new();
        let empty = Map::new();
        for (i, input) in inputs.iter().enumerate() {
            let id_property = input
                .get("idProperty")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    ApiError::validation(format!("inputs[{i}].idProperty is required"))
                })?;
            let id = input
                .get("id")
                .and_then(to_value_string)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| ApiError::validation(format!("inputs[{i}].id is required")))?;
            let props = match input.get("properties") {
                None => &empty,
                Some(Value::Object(m)) => m,
                Some(_) => {
                    return Err(ApiError::validation(format!(
                        "inputs[{i}].properties must be an object"
                    )));
                }
            };
            let target = self.find(ty, &id, Some(id_property))?;
            let mut props = self.validate(ty, props)?;
            props.insert(id_property.to_owned(), norm(id_property, &id));
            if !seen.insert((id_property.to_owned(), norm(id_property, &id))) {
                duplicates.push(id.clone());
            }
            plans.push((target, props));
        }
        if !duplicates.is_empty() {
            return Err(ApiError::validation(format!(
                "Duplicate IDs found in batch input: [{}]. IDs must be unique",
                duplicates.join(", ")
            )));
        }
        // A unique value may be claimed by one record only, counting what the batch itself sets.
        let mut claimed: HashMap<(String, String), usize> = HashMap::new();
        for (i, (target, props)) in plans.iter().enumerate() {
            if let Some(existing) = self.conflict(ty, props, *target) {
                return Err(Self::conflict_error(ty, existing));
            }
            for u in &self.schema(ty).unique {
                if let Some(v) = props.get(u).filter(|v| !v.is_empty())
                    && let Some(other) = claimed.insert((u.clone(), norm(u, v)), i)
                    && other != i
                {
                    return Err(ApiError::validation(format!(
                        "inputs[{other}] and inputs[{i}] both set {u} to {v:?}"
                    )));
                }
            }
        }
        let mut out = Vec::with_capacity(plans.len());
        for (target, props) in plans {
            let (id, op) = match target {
                Some(id) => {
                    self.apply(ty, id, props);
                    (id, WriteOp::Update)
                }
                None => (self.insert(ty, props), WriteOp::Create),
            };
            if let Some(mut w) = self.written(ty, id, op) {
                w.object.new = Some(op == WriteOp::Create);
                out.push(w);
            }
        }
        Ok(out)
    }

    /// `POST /crm/v3/objects/{type}/search` (EQ, NEQ, IN, HAS_PROPERTY, NOT_HAS_PROPERTY; groups
    /// are ORed, filters within a group ANDed; results by id).
    pub fn search(&self, ty: ObjectType, body: &Value) -> Result<Value, ApiError> {
        let groups = match body.get("filterGroups") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(g)) => g.clone(),
            Some(_) => return Err(ApiError::validation("filterGroups must be an array")),
        };
        if groups.len() > 5 {
            return Err(ApiError::validation("Too many filter groups: at most 5"));
        }
        let mut parsed: Vec<Vec<(String, String, Vec<String>)>> = Vec::new();
        for g in &groups {
            let filters = g
                .get("filters")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if filters.len() > 6 {
                return Err(ApiError::validation(
                    "Too many filters in a group: at most 6",
                ));
            }
            let mut group = Vec::new();
            for f in filters {
                let name = f
                    .get("propertyName")
                    .and_then(Value::as_str)
                    .ok_or_else(|| ApiError::validation("filters[].propertyName is required"))?;
                let op = f.get("operator").and_then(Value::as_str).unwrap_or("EQ");
                let values: Vec<String> = match (f.get("value"), f.get("values")) {
                    (_, Some(Value::Array(vs))) => vs.iter().filter_map(to_value_string).collect(),
                    (Some(v), _) => to_value_string(v).into_iter().collect(),
                    _ => Vec::new(),
                };
                if !matches!(
                    op,
                    "EQ" | "NEQ" | "IN" | "HAS_PROPERTY" | "NOT_HAS_PROPERTY"
                ) {
                    return Err(ApiError::validation(format!(
                        "operator {op} is not supported by the sandbox"
                    )));
                }
                group.push((name.to_owned(), op.to_owned(), values));
            }
            parsed.push(group);
        }
        let properties: Option<Vec<String>> =
            body.get("properties").and_then(Value::as_array).map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            });
        let limit = match body.get("limit") {
            None | Some(Value::Null) => 10,
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| (1..=SEARCH_LIMIT).contains(n))
                .ok_or_else(|| {
                    ApiError::validation(format!("limit must be between 1 and {SEARCH_LIMIT}"))
                })?,
        };
        let after: usize = match body.get("after") {
            None | Some(Value::Null) => 0,
            Some(v) => to_value_string(v)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| ApiError::validation("after must be a paging cursor"))?,
        };
        let now = Instant::now();
        let matches: Vec<&Record> = self
            .records
            .get(&ty)
            .into_iter()
            .flat_map(|m| m.values())
            .filter(|r| now.duration_since(r.created) >= self.search_delay)
            .filter(|r| {
                parsed.is_empty()
                    || parsed.iter().any(|group| {
                        group.iter().all(|(name, op, values)| {
                            let have = Self::property_value(ty, r, name);
                            let eq = |want: &String| {
                                have.as_ref().is_some_and(|h| h.eq_ignore_ascii_case(want))
                            };
                            match op.as_str() {
                                "EQ" | "IN" => values.iter().any(eq),
                                "NEQ" => !values.iter().any(eq),
                                "HAS_PROPERTY" => have.is_some(),
                                _ => have.is_none(),
                            }
                        })
                    })
            })
            .collect();
        let default: Vec<String> = ty.default_read().iter().map(|s| (*s).to_owned()).collect();
        let only = properties.as_deref().unwrap_or(&default);
        let results: Vec<Object> = matches
            .iter()
            .skip(after)
            .take(limit)
            .map(|r| self.render(ty, r, Some(only)))
            .collect();
        let mut out = json!({ "total": matches.len(), "results": results });
        if after + limit < matches.len() {
            out["paging"] = json!({ "next": { "after": (after + limit).to_string() } });
        }
        Ok(out)
    }

    /// `PUT /crm/v4/objects/{from}/{fromId}/associations/default/{to}/{toId}`: both records must
    /// exist. Returns the v4 answer and the write (create, or update when it already existed).
    pub fn associate(
        &mut self,
        from: ObjectType,
        from_id: &str,
        to: ObjectType,
        to_id: &str,
    ) -> Result<(Value, Write), ApiError> {
        let a = self
            .find(from, from_id, None)?
            .ok_or_else(|| ApiError::not_found(from_id))?;
        let b = self
            .find(to, to_id, None)?
            .ok_or_else(|| ApiError::not_found(to_id))?;
        let existed = self.associations.contains(&(from, a, to, b))
            || self.associations.contains(&(to, b, from, a));
        if !existed {
            self.associations.insert((from, a, to, b));
        }
        let body = json!({
            "from": { "id": a.to_string() },
            "to": { "id": b.to_string() },
            "associationSpec": {
                "associationCategory": "HUBSPOT_DEFINED",
                "associationTypeId": association_type_id(from, to),
            },
        });
        let write = Write {
            object_type: "associations".to_owned(),
            id: format!("{}:{a}->{}:{b}", from.as_str(), to.as_str()),
            key: format!("{}:{a}->{}:{b}", from.as_str(), to.as_str()),
            op: if existed {
                WriteOp::Update
            } else {
                WriteOp::Create
            },
        };
        Ok((body, write))
    }

    /// `GET /crm/v4/objects/{from}/{fromId}/associations/{to}`.
    pub fn associations_of(
        &self,
        from: ObjectType,
        from_id: &str,
        to: ObjectType,
    ) -> Result<Value, ApiError> {
        let a = self
            .find(from, from_id, None)?
            .ok_or_else(|| ApiError::not_found(from_id))?;
        let mut ids: BTreeSet<u64> = BTreeSet::new();
        for (ft, fid, tt, tid) in &self.associations {
            if *ft == from && *fid == a && *tt == to {
                ids.insert(*tid);
            }
            if *tt == from && *tid == a && *ft == to {
                ids.insert(*fid);
            }
        }
        let results: Vec<Value> = ids
            .into_iter()
            .map(|id| {
                json!({
                    "toObjectId": id,
                    "associationTypes": [{
                        "category": "HUBSPOT_DEFINED",
                        "typeId": association_type_id(from, to),
                        "label": null,
                    }],
                })
            })
            .collect();
        Ok(json!({ "results": results }))
    }

    /// Every record of `ty` with every property, by id (for `/_sandbox/records`).
    pub fn all(&self, ty: ObjectType) -> Vec<Object> {
        self.records
            .get(&ty)
            .into_iter()
            .flat_map(|m| m.values())
            .map(|r| self.render(ty, r, None))
            .collect()
    }

    /// Every association, in creation direction.
    pub fn all_associations(&self) -> Vec<AssociationRecord> {
        self.associations
            .iter()
            .map(|(ft, fid, tt, tid)| AssociationRecord {
                from_type: *ft,
                from_id: fid.to_string(),
                to_type: *tt,
                to_id: tid.to_string(),
                type_id: association_type_id(*ft, *tt),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    fn store() -> Store {
        Store::new(&HubSpotConfig::default())
    }

    #[tokio::test]
    async fn email_is_unique_case_insensitively() {
        let mut s = store();
        let a = s
            .create(
                ObjectType::Contacts,
                &props(json!({"email": "A@Example.com"})),
            )
            .unwrap();
        assert_eq!(a.write.key, "a@example.com");
        let err = s
            .create(
                ObjectType::Contacts,
                &props(json!({"email": "a@example.COM"})),
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("Contact already exists. Existing ID: {}", a.object.id)
        );
        let found = s
            .find(ObjectType::Contacts, "A@EXAMPLE.com", Some("email"))
            .unwrap();
        assert_eq!(found.map(|n| n.to_string()), Some(a.object.id));
    }

    #[tokio::test]
    async fn unknown_properties_and_bad_options_are_listed() {
        let mut s = store();
        let err = s
            .create(
                ObjectType::Contacts,
                &props(json!({"favourite_colour": "red", "lifecyclestage": "friend"})),
            )
            .unwrap_err();
        let ApiError::Validation { message, errors } = err else {
            panic!("not a validation error")
        };
        assert!(
            message.contains("Property \\\"favourite_colour\\\" does not exist"),
            "{message}"
        );
        assert!(message.contains("INVALID_OPTION"), "{message}");
        assert_eq!(errors.len(), 2);
        assert!(
            s.create(ObjectType::Contacts, &props(json!({"handoff_anything": 1})))
                .is_ok()
        );
    }

    #[tokio::test]
    async fn batch_upsert_is_checked_whole_before_it_applies() {
        let mut s = store();
        let inputs = vec![
            json!({"idProperty": "email", "id": "a@x.com", "properties": {"firstname": "A"}}),
            json!({"idProperty": "email", "id": "b@x.com", "properties": {"nope": "B"}}),
        ];
        assert!(s.upsert_batch(ObjectType::Contacts, &inputs).is_err());
        assert!(s.all(ObjectType::Contacts).is_empty(), "nothing applied");
        let dup = vec![
            json!({"idProperty": "email", "id": "a@x.com"}),
            json!({"idProperty": "email", "id": "A@x.com"}),
        ];
        let err = s.upsert_batch(ObjectType::Contacts, &dup).unwrap_err();
        assert!(err.to_string().contains("Duplicate IDs"), "{err}");
        let err = s
            .upsert_batch(
                ObjectType::Contacts,
                &[json!({"idProperty": "firstname", "id": "x"})],
            )
            .unwrap_err();
        assert!(err.to_string().contains("not a unique property"), "{err}");
    }
}
