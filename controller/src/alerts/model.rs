//! What the alert engine keeps: alerts with their members, what was said about each, and the
//! operators' acknowledgements and silences. Stored as is ([`crate::db`]'s alerts), so a
//! restart or a new leader goes on where the last left off.

use std::collections::{BTreeMap, BTreeSet};

use fleet_config::alerts::AlertName;
use serde::{Deserialize, Serialize};

/// Where an alert is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Its condition holds, not yet for as long as its rule asks.
    Pending,
    /// It fires: people are told.
    Firing,
    /// It stopped firing (kept as history).
    Resolved,
}

impl Phase {
    /// The stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Firing => "firing",
            Phase::Resolved => "resolved",
        }
    }

    /// The phase of a stored name.
    pub fn parse(s: &str) -> Option<Phase> {
        [Phase::Pending, Phase::Firing, Phase::Resolved]
            .into_iter()
            .find(|p| p.as_str() == s)
    }
}

/// One thing an alert is about (a device, a Git endpoint, a rollout, a notifier, the fleet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Member {
    /// What holds, in a few words (the problem's detail, the reason).
    pub detail: String,
    /// Since when its condition holds without a break longer than `resolve_after`.
    pub since_ms: i64,
    /// When its condition was last seen to hold.
    pub seen_ms: i64,
    /// Held for as long as its rule asks: it counts as firing.
    pub firing: bool,
}

/// What has been said about an alert.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Said {
    /// When the first (firing) message went out; `None`: nobody was told yet.
    pub first_ms: Option<i64>,
    /// When the last message went out.
    pub last_ms: Option<i64>,
    /// The members that message named.
    pub members: BTreeSet<String>,
    /// Reminders sent.
    pub reminders: u32,
    /// When it was escalated.
    pub escalated_ms: Option<i64>,
    /// Messages made for it so far (numbers each message's id).
    pub messages: u32,
}

/// An operator's acknowledgement: someone is on it (no reminders, no escalation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Ack {
    /// Who.
    pub by: String,
    /// When.
    pub at_ms: i64,
    /// What they said.
    pub reason: String,
}

/// One alert: an incident of one alert name, from its first pending member to its resolution.
/// Members of one name are grouped into one alert (one message for 40 devices, not 40).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Alert {
    /// Unique: `<AlertName>-<started_ms>`.
    pub id: String,
    /// Which alert.
    pub name: AlertName,
    /// Where it is.
    pub phase: Phase,
    /// When its first member was seen.
    pub started_ms: i64,
    /// When it started firing.
    pub fired_ms: Option<i64>,
    /// When it resolved.
    pub resolved_ms: Option<i64>,
    /// What it is about, by id.
    pub members: BTreeMap<String, Member>,
    /// What was said.
    pub said: Said,
    /// The acknowledgement, if any (read from the store each pass: any replica takes it).
    pub ack: Option<Ack>,
}

impl Alert {
    /// A new pending alert.
    pub fn new(name: AlertName, now_ms: i64) -> Alert {
        Alert {
            id: format!("{}-{now_ms}", name.as_str()),
            name,
            phase: Phase::Pending,
            started_ms: now_ms,
            fired_ms: None,
            resolved_ms: None,
            members: BTreeMap::new(),
            said: Said::default(),
            ack: None,
        }
    }

    /// The members that fire, by id.
    pub fn firing_members(&self) -> impl Iterator<Item = (&String, &Member)> {
        self.members.iter().filter(|(_, m)| m.firing)
    }
}

/// An operator's silence: no message for what it matches until it ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Silence {
    /// Its id.
    pub id: String,
    /// The alert it silences; `None`: every alert.
    pub alert: Option<AlertName>,
    /// The member (device id, endpoint…) it silences; `None`: every member.
    pub member: Option<String>,
    /// Who.
    pub created_by: String,
    /// When.
    pub created_ms: i64,
    /// Until when.
    pub until_ms: i64,
    /// Why.
    pub reason: String,
}

impl Silence {
    /// Whether it silences `member` of `alert` at `now_ms`.
    pub fn matches(&self, alert: AlertName, member: &str, now_ms: i64) -> bool {
        now_ms < self.until_ms
            && self.alert.is_none_or(|a| a == alert)
            && self.member.as_deref().is_none_or(|m| m == member)
    }
}
