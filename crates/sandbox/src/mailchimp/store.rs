//! The audiences' members and the events recorded on them, plus the one count tests most need:
//! how many members were resubscribed (moved from `unsubscribed` or `cleaned` to `subscribed`).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::config::MailchimpConfig;
use super::error::ApiError;
use super::hash::subscriber_hash;
use crate::request_log::WriteOp;

/// A member's subscription status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Subscribed,
    Unsubscribed,
    Cleaned,
    Pending,
    Transactional,
}

impl Status {
    /// The status named `s`, as Mailchimp spells it.
    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "subscribed" => Status::Subscribed,
            "unsubscribed" => Status::Unsubscribed,
            "cleaned" => Status::Cleaned,
            "pending" => Status::Pending,
            "transactional" => Status::Transactional,
            _ => return None,
        })
    }
}

/// A tag on a member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tag {
    /// Stable per tag name across the sandbox, as Mailchimp's tag ids are per audience.
    pub id: u64,
    pub name: String,
}

/// A list member, serialised as Mailchimp answers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// The subscriber hash.
    pub id: String,
    /// As first written; the hash is of its lower-cased form.
    pub email_address: String,
    pub unique_email_id: String,
    pub status: Status,
    pub merge_fields: Map<String, Value>,
    pub tags_count: usize,
    pub tags: Vec<Tag>,
    /// When the status last changed (or the member was created), UTC.
    pub last_changed: String,
    pub list_id: String,
}

/// One event posted to a member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub list_id: String,
    /// The member's subscriber hash.
    pub member_id: String,
    pub email_address: String,
    pub name: String,
    pub properties: Map<String, Value>,
    /// As the caller gave it, if it did.
    pub occurred_at: Option<String>,
    /// When the sandbox received it, UTC.
    pub received_at: String,
}

impl Event {
    /// When the event happened: `occurred_at` if the caller gave a parseable RFC 3339 time, else
    /// when the sandbox received it (as Mailchimp takes the time of the POST when none is given).
    pub fn when(&self) -> OffsetDateTime {
        self.occurred_at
            .as_deref()
            .and_then(|at| OffsetDateTime::parse(at, &Rfc3339).ok())
            .or_else(|| OffsetDateTime::parse(&self.received_at, &Rfc3339).ok())
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
}

/// A validated `PUT …/members/{hash}` body.
#[derive(Debug, Clone)]
pub struct Upsert {
    pub email_address: String,
    pub status_if_new: Option<Status>,
    pub status: Option<Status>,
    pub merge_fields: Map<String, Value>,
}

/// Every audience's members and events.
#[derive(Debug)]
pub struct Store {
    lists: BTreeSet<String>,
    /// By `(list_id, subscriber_hash)`.
    members: BTreeMap<(String, String), Member>,
    events: Vec<Event>,
    tag_ids: BTreeMap<String, u64>,
    resubscribed: u64,
}

impl Store {
    /// Empty audiences as configured.
    pub fn new(cfg: &MailchimpConfig) -> Self {
        Store {
            lists: cfg.lists.iter().cloned().collect(),
            members: BTreeMap::new(),
            events: Vec::new(),
            tag_ids: BTreeMap::new(),
            resubscribed: 0,
        }
    }

    /// 404 unless `list_id` is a configured audience.
    pub fn list(&self, list_id: &str) -> Result<(), ApiError> {
        if self.lists.contains(list_id) {
            Ok(())
        } else {
            Err(ApiError::NotFound)
        }
    }

    /// The member `hash` of `list_id`, or 404.
    pub fn member(&self, list_id: &str, hash: &str) -> Result<&Member, ApiError> {
        self.list(list_id)?;
        self.members
            .get(&(list_id.to_owned(), hash.to_lowercase()))
            .ok_or(ApiError::NotFound)
    }

    fn member_mut(&mut self, list_id: &str, hash: &str) -> Result<&mut Member, ApiError> {
        self.list(list_id)?;
        self.members
            .get_mut(&(list_id.to_owned(), hash.to_lowercase()))
            .ok_or(ApiError::NotFound)
    }

    /// Creates or updates the member `up.email_address` of `list_id`. A new member takes
    /// `status_if_new` (else `status`; 400 if neither); an existing one keeps its status unless
    /// `status` is given. Merge fields are merged key by key.
    pub fn upsert(&mut self, list_id: &str, up: Upsert) -> Result<(Member, WriteOp), ApiError> {
        self.list(list_id)?;
        let hash = subscriber_hash(&up.email_address);
        let now = crate::clock::now_iso();
        let key = (list_id.to_owned(), hash.clone());
        if let Some(m) = self.members.get_mut(&key) {
            if let Some(status) = up.status
                && status != m.status
            {
                if status == Status::Subscribed
                    && matches!(m.status, Status::Unsubscribed | Status::Cleaned)
                {
                    self.resubscribed += 1;
                }
                m.status = status;
                m.last_changed = now;
            }
            m.merge_fields.extend(up.merge_fields);
            return Ok((m.clone(), WriteOp::Update));
        }
        let status = up.status_if_new.or(up.status).ok_or_else(|| {
            ApiError::field(
                "status_if_new",
                "The status or status_if_new field is required when creating a member.",
            )
        })?;
        let member = new_member(list_id, &up.email_address, status, up.merge_fields, now);
        self.members.insert(key, member.clone());
        Ok((member, WriteOp::Create))
    }

    /// Adds the tags whose flag is true and removes the others.
    pub fn set_tags(
        &mut self,
        list_id: &str,
        hash: &str,
        tags: Vec<(String, bool)>,
    ) -> Result<Member, ApiError> {
        self.member(list_id, hash)?;
        for (name, active) in &tags {
            if *active && !self.tag_ids.contains_key(name) {
                let id = self.tag_ids.len() as u64 + 1;
                self.tag_ids.insert(name.clone(), id);
            }
        }
        let ids = self.tag_ids.clone();
        let m = self.member_mut(list_id, hash)?;
        for (name, active) in tags {
            let has = m.tags.iter().any(|t| t.name == name);
            if active && !has {
                let id = ids.get(&name).copied().unwrap_or_default();
                m.tags.push(Tag { id, name });
            } else if !active {
                m.tags.retain(|t| t.name != name);
            }
        }
        m.tags_count = m.tags.len();
        Ok(m.clone())
    }

    /// Records an event on an existing member.
    pub fn add_event(
        &mut self,
        list_id: &str,
        hash: &str,
        name: String,
        properties: Map<String, Value>,
        occurred_at: Option<String>,
    ) -> Result<Event, ApiError> {
        let m = self.member(list_id, hash)?;
        let event = Event {
            list_id: list_id.to_owned(),
            member_id: m.id.clone(),
            email_address: m.email_address.clone(),
            name,
            properties,
            occurred_at,
            received_at: crate::clock::now_iso(),
        };
        self.events.push(event.clone());
        Ok(event)
    }

    /// The events of member `hash` of `list_id`, newest first by [`Event::when`] (of two at the
    /// same time, the later arrival first); 404 for an unknown list or member.
    pub fn member_events(&self, list_id: &str, hash: &str) -> Result<Vec<&Event>, ApiError> {
        let id = self.member(list_id, hash)?.id.clone();
        let mut found: Vec<(OffsetDateTime, usize, &Event)> = self
            .events
            .iter()
            .enumerate()
            .filter(|(_, e)| e.list_id == list_id && e.member_id == id)
            .map(|(arrival, e)| (e.when(), arrival, e))
            .collect();
        found.sort_by_key(|(when, arrival, _)| std::cmp::Reverse((*when, *arrival)));
        Ok(found.into_iter().map(|(_, _, e)| e).collect())
    }

    /// Puts a member in place directly (no request, no log entry), replacing any existing one;
    /// `None` if `list_id` is not a configured audience.
    pub fn seed(&mut self, list_id: &str, email: &str, status: Status) -> Option<Member> {
        self.list(list_id).ok()?;
        let member = new_member(list_id, email, status, Map::new(), crate::clock::now_iso());
        self.members
            .insert((list_id.to_owned(), member.id.clone()), member.clone());
        Some(member)
    }

    /// Every member of every list, by list then hash.
    pub fn all_members(&self) -> Vec<Member> {
        self.members.values().cloned().collect()
    }

    /// Every event, in arrival order.
    pub fn all_events(&self) -> Vec<Event> {
        self.events.clone()
    }

    /// Members moved from `unsubscribed` or `cleaned` to `subscribed` by a request's `status`.
    pub fn resubscribed(&self) -> u64 {
        self.resubscribed
    }

    /// No members, no events, no resubscriptions; the lists stay.
    pub fn reset(&mut self) {
        self.members.clear();
        self.events.clear();
        self.tag_ids.clear();
        self.resubscribed = 0;
    }
}

fn new_member(
    list_id: &str,
    email: &str,
    status: Status,
    merge_fields: Map<String, Value>,
    now: String,
) -> Member {
    let unique = uuid::Uuid::new_v4().simple().to_string();
    Member {
        id: subscriber_hash(email),
        email_address: email.to_owned(),
        unique_email_id: unique[..10].to_owned(),
        status,
        merge_fields,
        tags_count: 0,
        tags: Vec::new(),
        last_changed: now,
        list_id: list_id.to_owned(),
    }
}
