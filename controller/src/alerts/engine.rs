//! The alert engine's decisions, apart from any I/O: given the open alerts, what holds now
//! (the facts), the silences and the time, it moves each alert through pending → firing →
//! resolved and says which messages to send. Modelled on Alertmanager: members of one alert
//! name are grouped into one alert and one message (`group_wait` gathers the first ones,
//! `group_interval` spaces updates), a member must hold for its rule's time before it fires
//! and stay clear for `resolve_after` before it goes (so a flapping device neither re-fires nor
//! resolves at every blip), an unacknowledged critical alert is said again every
//! `repeat_interval` and escalated once after `escalate_after`, and silences keep messages
//! back without hiding the alert.
//!
//! Guarantees, each a row of the tables in `tests.rs`: a fault that holds fires once (one
//! message, whatever the number of devices); nothing is said of a member a silence matches; a
//! resolved message goes exactly to alerts that were said to fire; an acknowledged alert gets
//! no reminder and no escalation.

use std::collections::{BTreeMap, BTreeSet};

use fleet_config::alerts::{AlertName, Severity};

use super::model::{Alert, Member, Phase, Silence};
use crate::notify::MessageKind;

/// What holds now: one member of one alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fact {
    /// Which alert.
    pub alert: AlertName,
    /// What it is about (a device id, an endpoint, a rollout id, `fleet`).
    pub member: String,
    /// What holds, in a few words.
    pub detail: String,
    /// How long it must hold before it fires, ms (0: at once).
    pub hold_ms: i64,
}

/// The engine's timing (controller.yaml `alerting:`), in ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// After an alert first fires, wait this long to gather siblings into its first message.
    pub group_wait_ms: i64,
    /// At most one "updated" message per alert this often.
    pub group_interval_ms: i64,
    /// An unacknowledged critical alert is said again this often.
    pub repeat_interval_ms: i64,
    /// An unacknowledged critical alert goes to the escalation route after this long.
    pub escalate_after_ms: i64,
    /// A member must stay clear this long before it stops firing.
    pub resolve_after_ms: i64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            group_wait_ms: 10_000,
            group_interval_ms: 5 * 60_000,
            repeat_interval_ms: 60 * 60_000,
            escalate_after_ms: 30 * 60_000,
            resolve_after_ms: 2 * 60_000,
        }
    }
}

/// To whom a message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The notifiers of the alert's severity.
    Normal,
    /// The escalation notifiers of the alert's severity.
    Escalation,
}

/// A message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The alert as it is after this pass.
    pub alert: Alert,
    /// Why.
    pub kind: MessageKind,
    /// To whom.
    pub route: Route,
    /// The members it names (firing, not silenced).
    pub members: Vec<String>,
    /// Its number among the alert's messages (1, 2, …): with the alert's id, the message id.
    pub number: u32,
}

impl Outgoing {
    /// The message's id, stable across retries.
    pub fn message_id(&self) -> String {
        format!("{}:{}", self.alert.id, self.number)
    }
}

/// What a pass decided.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Alerts to store (changed, new, resolved).
    pub changed: Vec<Alert>,
    /// Pending alerts whose condition went away before they fired: forget them.
    pub dropped: Vec<String>,
    /// Messages to send.
    pub messages: Vec<Outgoing>,
}

/// One pass at `now`: `open` (the pending and firing alerts, one per name) is updated in place.
pub fn evaluate(
    open: &mut BTreeMap<AlertName, Alert>,
    facts: &[Fact],
    silences: &[Silence],
    t: &Timing,
    now: i64,
) -> Outcome {
    let mut by_name: BTreeMap<AlertName, Vec<&Fact>> = BTreeMap::new();
    for f in facts {
        by_name.entry(f.alert).or_default().push(f);
    }
    let names: BTreeSet<AlertName> = open.keys().chain(by_name.keys()).copied().collect();
    let mut out = Outcome::default();
    for name in names {
        let facts = by_name.get(&name).map_or(&[][..], Vec::as_slice);
        let mut alert = match open.remove(&name) {
            Some(a) => a,
            None if facts.is_empty() => continue,
            None => Alert::new(name, now),
        };
        let before = alert.clone();
        observe_members(&mut alert, facts, t, now);
        let any_firing = alert.members.values().any(|m| m.firing);
        match alert.phase {
            Phase::Pending if any_firing => {
                alert.phase = Phase::Firing;
                alert.fired_ms = Some(now);
            }
            Phase::Pending if alert.members.is_empty() => {
                out.dropped.push(alert.id);
                continue;
            }
            Phase::Firing if !any_firing => {
                // Every firing member cleared: resolved. Members still pending begin a new one.
                let pending = std::mem::take(&mut alert.members);
                alert.phase = Phase::Resolved;
                alert.resolved_ms = Some(now);
                if alert.said.first_ms.is_some() {
                    let members = alert.said.members.iter().cloned().collect();
                    say(
                        &mut alert,
                        MessageKind::Resolved,
                        Route::Normal,
                        members,
                        now,
                        &mut out,
                    );
                }
                out.changed.push(alert);
                if !pending.is_empty() {
                    let mut next = Alert::new(name, now);
                    next.members = pending;
                    out.changed.push(next.clone());
                    open.insert(name, next);
                }
                continue;
            }
            _ => {}
        }
        if alert.phase == Phase::Firing {
            decide_messages(&mut alert, silences, t, now, &mut out);
        }
        if differs(&alert, &before) {
            out.changed.push(alert.clone());
        }
        open.insert(name, alert);
    }
    out
}

/// Whether `a` changed from `b` in what is stored: a member merely seen again (its `seen_ms`)
/// is not a change, or every firing alert would be written at every pass (a 40,000-device
/// `DeviceOffline` every 5 s). A new leader takes every stored member as seen when it loads
/// them ([`reloaded`]).
fn differs(a: &Alert, b: &Alert) -> bool {
    a.phase != b.phase
        || a.fired_ms != b.fired_ms
        || a.resolved_ms != b.resolved_ms
        || a.said != b.said
        || a.members.len() != b.members.len()
        || a.members
            .iter()
            .zip(&b.members)
            .any(|((ka, ma), (kb, mb))| {
                ka != kb
                    || ma.detail != mb.detail
                    || ma.since_ms != mb.since_ms
                    || ma.firing != mb.firing
            })
}

/// An alert as loaded from the store at `now`: its members count as seen now (what is stored
/// of `seen_ms` lags, see [`differs`]), so none resolves before it was looked at again.
pub fn reloaded(mut a: Alert, now: i64) -> Alert {
    for m in a.members.values_mut() {
        m.seen_ms = m.seen_ms.max(now);
    }
    a
}

/// Brings `alert`'s members up to date with this pass's facts.
fn observe_members(alert: &mut Alert, facts: &[&Fact], t: &Timing, now: i64) {
    for f in facts {
        let m = alert.members.entry(f.member.clone()).or_insert(Member {
            detail: f.detail.clone(),
            since_ms: now,
            seen_ms: now,
            firing: false,
        });
        m.seen_ms = now;
        m.detail.clone_from(&f.detail);
        if !m.firing && now - m.since_ms >= f.hold_ms {
            m.firing = true;
        }
    }
    // A pending member that clears is gone at once (nothing was said of it); a firing one
    // only once it stayed clear for `resolve_after`.
    alert
        .members
        .retain(|_, m| m.seen_ms == now || (m.firing && now - m.seen_ms < t.resolve_after_ms));
}

/// The messages a firing alert needs now.
fn decide_messages(
    alert: &mut Alert,
    silences: &[Silence],
    t: &Timing,
    now: i64,
    out: &mut Outcome,
) {
    let notifiable: BTreeSet<String> = alert
        .firing_members()
        .filter(|(id, _)| !silences.iter().any(|s| s.matches(alert.name, id, now)))
        .map(|(id, _)| id.clone())
        .collect();
    if notifiable.is_empty() {
        return;
    }
    let fired = alert.fired_ms.unwrap_or(now);
    let Some(last) = alert.said.last_ms else {
        if now - fired >= t.group_wait_ms {
            let members = notifiable.into_iter().collect();
            say(alert, MessageKind::Firing, Route::Normal, members, now, out);
        }
        return;
    };
    let critical = alert.name.severity() == Severity::Critical;
    let acked = alert.ack.is_some();
    let joined = notifiable.iter().any(|m| !alert.said.members.contains(m));
    let members: Vec<String> = notifiable.iter().cloned().collect();
    if critical && !acked && alert.said.escalated_ms.is_none() && now - fired >= t.escalate_after_ms
    {
        alert.said.escalated_ms = Some(now);
        say(
            alert,
            MessageKind::Escalation,
            Route::Escalation,
            members,
            now,
            out,
        );
    } else if notifiable != alert.said.members
        && (joined || !acked)
        && now - last >= t.group_interval_ms
    {
        say(
            alert,
            MessageKind::Updated,
            Route::Normal,
            members,
            now,
            out,
        );
    } else if critical && !acked && now - last >= t.repeat_interval_ms {
        alert.said.reminders += 1;
        say(
            alert,
            MessageKind::Reminder,
            Route::Normal,
            members,
            now,
            out,
        );
    }
}

/// Records that `alert` says `kind` naming `members` now, and queues the message.
fn say(
    alert: &mut Alert,
    kind: MessageKind,
    route: Route,
    members: Vec<String>,
    now: i64,
    out: &mut Outcome,
) {
    alert.said.messages += 1;
    if kind != MessageKind::Resolved {
        alert.said.first_ms.get_or_insert(now);
        alert.said.members = members.iter().cloned().collect();
    }
    alert.said.last_ms = Some(now);
    out.messages.push(Outgoing {
        alert: alert.clone(),
        kind,
        route,
        members,
        number: alert.said.messages,
    });
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
