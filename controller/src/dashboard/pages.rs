//! The pages, server-rendered with maud. Every page has the same chrome: navigation, the
//! emergency-stop button for operators and admins, and the stop banner while the stop holds.

use std::collections::HashMap;

use maud::{html, Markup, DOCTYPE};
use serde_json::Value;

use super::format::{ago, bytes, utc, utc_ms};
use super::model::{short, Alert, DevicePage, ListQuery};
use super::session::Session;
use super::svg;
use crate::db::wire_name;
use crate::db::{
    AuditEntry, DeviceRow, DeviceState, EmergencyStop, Role, RolloutRow, TelemetrySample,
};
use crate::reach::{Reach, Way};
use crate::rollout::Rollout;
use crate::service::logs::{DeviceLogs, RequestState};
use crate::snapshot::wave_counts;
use crate::summary::FleetSummary;

/// What every page's frame needs.
pub struct Chrome<'a> {
    /// Who is looking.
    pub session: &'a Session,
    /// Which navigation entry is this page's.
    pub here: &'a str,
    /// This page's path and query (where forms come back to).
    pub path: &'a str,
    /// The stop, if set.
    pub stop: Option<&'a EmergencyStop>,
    /// A message from the last form (`?msg=`).
    pub flash: Option<&'a str>,
}

impl Chrome<'_> {
    fn can_operate(&self) -> bool {
        self.session.user.role >= Role::Operator
    }
}

fn csrf(c: &Chrome) -> Markup {
    html! { input type="hidden" name="csrf" value=(c.session.csrf); }
}

fn back(c: &Chrome) -> Markup {
    html! { input type="hidden" name="next" value=(c.path); }
}

fn stop_text(s: &EmergencyStop) -> String {
    format!(
        "EMERGENCY STOP: no device receives a new release. Set by {} at {}: {}",
        s.actor,
        utc(s.at_ms),
        s.reason
    )
}

/// `<head>`: the title, the stylesheet and (on pages with live updates) the script.
fn head(title: &str, live: bool) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · Fleet" }
            link rel="stylesheet" href="/assets/app.css";
            @if live { script src="/assets/app.js" defer {} }
        }
    }
}

/// Every page: head, navigation, stop button and banner, then `body`.
pub fn layout(c: &Chrome, title: &str, body: Markup) -> Markup {
    let nav = [
        ("overview", "/", "Overview"),
        ("devices", "/devices", "Devices"),
        ("rollouts", "/rollouts", "Rollouts"),
        ("alerts", "/alerts", "Alerts"),
        ("audit", "/audit", "Audit log"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, true))
            body data-role=(c.session.user.role.as_str()) {
                header.top {
                    span.brand { "Fleet" }
                    @for (key, href, label) in nav {
                        a.here[c.here == key] href=(href) { (label) }
                    }
                    span.who { (c.session.user.name) " (" (c.session.user.role.as_str()) ")" }
                    form method="post" action="/logout" {
                        (csrf(c))
                        button type="submit" { "Log out" }
                    }
                    @if c.can_operate() {
                        details.estop #estop {
                            summary #estop-open { "Emergency stop" }
                            form method="post" action="/ui/stop" #estop-form {
                                (csrf(c)) (back(c))
                                strong { "Stop every rollout now?" }
                                span.muted { "While the stop holds, every device keeps what it runs; none receives a new release until someone resumes." }
                                label for="estop-reason" { "Reason (goes to the audit log)" }
                                textarea #estop-reason name="reason" required rows="3" placeholder="e.g. canaries rebooting in a loop" {}
                                label { input type="checkbox" name="rollback" value="on"; " Also send the active rollout's devices back to their last good release" }
                                button.danger #estop-confirm type="submit" { "Confirm emergency stop" }
                            }
                        }
                    }
                }
                div #stop-banner role="alert" hidden[c.stop.is_none()] {
                    span #stop-text { @if let Some(s) = c.stop { (stop_text(s)) } }
                    @if c.can_operate() {
                        form method="post" action="/ui/resume" #resume-form {
                            (csrf(c)) (back(c))
                            input type="text" name="reason" placeholder="why it is safe again" aria-label="Reason for resuming";
                            button #resume type="submit" { "Resume rollouts" }
                        }
                    }
                }
                main {
                    @if let Some(m) = c.flash { div.flash role="status" { (m) } }
                    (body)
                }
            }
        }
    }
}

fn state_badge(id: &str, s: DeviceState) -> Markup {
    html! { span class=(format!("state state-{}", s.as_str())) data-device-state=(id) { (s.as_str()) } }
}

/// `/`: health at a glance.
pub fn overview(
    c: &Chrome,
    summary: &FleetSummary,
    firing: &[crate::db::AlertRow],
    alerts: &[Alert],
    rollout: Option<&Rollout>,
    states: &HashMap<String, DeviceState>,
) -> Markup {
    let body = html! {
        h1 { "Fleet overview" }
        div.cards {
            div.card #card-health { "Fleet health" span.n data-live="health" { (format!("{:.1} %", summary.healthy_percent)) } }
            div.card #card-total { a href="/devices" { "Devices" span.n #device-count data-live="total" { (summary.total) } } }
            @for s in DeviceState::ALL {
                div.card {
                    a href=(format!("/devices?state={}", s.as_str())) {
                        span class=(format!("state state-{}", s.as_str())) { (s.as_str()) }
                        span.n data-live=(format!("count-{}", s.as_str())) { (summary.count(s)) }
                    }
                }
            }
        }
        h2 { "Open alerts" }
        div.panel #alerts {
            @if alerts.is_empty() && firing.is_empty() { span.muted { "None. Every device is online and healthy." } }
            @for a in firing {
                div class=(format!("alert {}", a.severity)) data-alert=(a.alert.id) {
                    strong { (a.severity) } ": " a href=(format!("/alerts/{}", a.alert.id)) { (a.alert.name.as_str()) ": " (a.summary) }
                    @if let Some(k) = &a.alert.ack { span.muted { " (acknowledged by " (k.by) ")" } }
                }
            }
            @for a in alerts {
                div class=(format!("alert {}", a.severity.as_str())) {
                    strong { (a.severity.as_str()) } ": " a href=(a.link) { (a.text) }
                }
            }
        }
        h2 { "Active rollout" }
        div.panel {
            @match rollout {
                Some(r) => (rollout_waves(r, states)),
                None => span.muted { "No rollout is active." },
            }
        }
        h2 { "Versions" }
        div.panel { (svg::version_bars(&summary.versions)) }
    };
    layout(c, "Overview", body)
}

fn rollout_waves(r: &Rollout, states: &HashMap<String, DeviceState>) -> Markup {
    html! {
        p {
            a href=(format!("/rollouts/{}", r.id)) { "Rollout " (r.id) } " of release "
            span.mono { (short(&r.release)) } ": "
            strong data-live=(format!("rollout-{}-state", r.id)) { (r.state.name()) }
        }
        div.waves {
            @for (i, w) in r.waves.iter().enumerate() {
                @let [pending, updating, healthy, failed] = wave_counts(r, i, states);
                @let total = w.devices.len().max(1) as f64;
                div.wave data-wave=(i) {
                    strong { (i + 1) ". " (w.name) }
                    div.bar title=(format!("{healthy} healthy, {updating} updating, {failed} failed of {}", w.devices.len())) {
                        span.healthy style=(format!("width:{:.1}%", healthy as f64 * 100.0 / total)) {}
                        span.updating style=(format!("width:{:.1}%", updating as f64 * 100.0 / total)) {}
                        span.failed style=(format!("width:{:.1}%", failed as f64 * 100.0 / total)) {}
                    }
                    span {
                        (w.devices.len()) " devices: "
                        span data-live=(format!("rollout-{}-wave-{i}-pending", r.id)) { (pending) } " pending, "
                        span data-live=(format!("rollout-{}-wave-{i}-updating", r.id)) { (updating) } " updating, "
                        span data-live=(format!("rollout-{}-wave-{i}-healthy", r.id)) { (healthy) } " healthy, "
                        span data-live=(format!("rollout-{}-wave-{i}-failed", r.id)) { (failed) } " failed"
                    }
                }
            }
        }
    }
}

fn sort_link(q: &ListQuery, key: &str, label: &str) -> Markup {
    let active = q.sort_key() == key;
    let dir = if active && !q.descending() {
        "desc"
    } else {
        "asc"
    };
    let arrow = match (active, q.descending()) {
        (true, false) => " ▲",
        (true, true) => " ▼",
        _ => "",
    };
    html! {
        a href=(format!("/devices{}", q.with(&[("sort", Some(key.into())), ("dir", Some(dir.into())), ("page", None)]))) {
            (label) (arrow)
        }
    }
}

/// `/devices`.
pub fn devices(c: &Chrome, q: &ListQuery, page: &DevicePage, total: usize, now: i64) -> Markup {
    let val = |v: &Option<String>| v.clone().unwrap_or_default();
    let body = html! {
        h1 { "Devices" }
        form.filters method="get" action="/devices" {
            input type="search" name="q" value=(val(&q.q)) placeholder="id or hostname" aria-label="Search";
            select name="state" aria-label="State" {
                option value="" { "any state" }
                @for s in DeviceState::ALL {
                    option value=(s.as_str()) selected[q.state.as_deref() == Some(s.as_str())] { (s.as_str()) }
                }
            }
            input type="text" name="label" value=(val(&q.label)) placeholder="label, e.g. role=gateway" aria-label="Label";
            input type="text" name="release" value=(val(&q.release)) placeholder="release sha prefix" aria-label="Release";
            @if let Some(s) = &q.sort { input type="hidden" name="sort" value=(s); }
            @if let Some(d) = &q.dir { input type="hidden" name="dir" value=(d); }
            button type="submit" { "Filter" }
            a href="/devices" { "clear" }
        }
        p.muted #match-count { (page.matching) " of " (total) " devices match" }
        table #devices {
            thead { tr {
                th { (sort_link(q, "id", "Device")) }
                th { (sort_link(q, "state", "State")) }
                th { (sort_link(q, "release", "Release")) }
                th { "Health" }
                th { "Labels" }
                th { (sort_link(q, "last_seen", "Last seen")) }
                th { (sort_link(q, "agent", "Agent")) }
            } }
            tbody {
                @for (d, s) in &page.rows {
                    tr data-device=(d.id) {
                        td { a href=(format!("/devices/{}", super::model::encode(&d.id))) { (d.id) } br; span.muted { (d.hostname) } }
                        td { (state_badge(&d.id, *s)) }
                        td.mono { @match &d.current { Some(r) => (r.short()), None => span.muted { "none" } } }
                        td { (wire_name(&d.health)) }
                        td { @for (k, v) in &d.labels { span.mono { (k) "=" (v) } " " } }
                        td { (ago(d.last_seen_ms, now)) }
                        td.mono { (d.agent_version) }
                    }
                }
            }
        }
        div.pager {
            @if page.page > 1 {
                a #prev href=(format!("/devices{}", q.with(&[("page", Some((page.page - 1).to_string()))]))) { "← previous" }
            }
            span { "page " (page.page) " of " (page.pages) }
            @if page.page < page.pages {
                a #next href=(format!("/devices{}", q.with(&[("page", Some((page.page + 1).to_string()))]))) { "next →" }
            }
        }
    };
    layout(c, "Devices", body)
}

fn release_cell(r: Option<&fleet_config::protocol::ReleaseId>) -> Markup {
    html! { @match r { Some(r) => span.mono title=(r.as_str()) { (r.short()) }, None => span.muted { "none" } } }
}

/// What the device page shows beside the device's row.
pub struct DeviceExtras<'a> {
    /// Its newest events.
    pub events: &'a [Value],
    /// Its telemetry samples.
    pub samples: &'a [TelemetrySample],
    /// Its newest log tail and request.
    pub logs: &'a DeviceLogs,
    /// How to reach it.
    pub reach: &'a Reach,
    /// The open alerts it is a member of.
    pub alerts: &'a [crate::db::AlertRow],
    /// Its view in Grafana (`grafana_url`), if configured.
    pub grafana: Option<String>,
}

/// `/devices/{id}`.
pub fn device(
    c: &Chrome,
    d: &DeviceRow,
    state: DeviceState,
    x: &DeviceExtras<'_>,
    now: i64,
) -> Markup {
    let (events, samples) = (x.events, x.samples);
    let series = |f: &dyn Fn(&fleet_config::protocol::Telemetry) -> Option<f64>| -> Vec<f64> {
        samples.iter().filter_map(|s| f(&s.telemetry)).collect()
    };
    let t = &d.telemetry;
    let mem_pct =
        |t: &fleet_config::protocol::Telemetry| match (t.mem_used_bytes, t.mem_total_bytes) {
            (Some(u), Some(total)) if total > 0 => Some(u as f64 * 100.0 / total as f64),
            _ => None,
        };
    let opt =
        |v: Option<f64>, unit: &str| v.map_or_else(|| "–".to_owned(), |v| format!("{v:.1}{unit}"));
    let updates: Vec<&Value> = events
        .iter()
        .filter(|e| {
            matches!(
                e["event"].as_str(),
                Some("update_started" | "update_finished")
            )
        })
        .collect();
    let body = html! {
        h1 { "Device " span.mono { (d.id) } " " (state_badge(&d.id, state)) }
        @if !x.alerts.is_empty() {
            div.panel #device-alerts {
                @for a in x.alerts {
                    div class=(format!("alert {}", a.severity)) {
                        strong { (a.severity) } ": "
                        a href=(format!("/alerts/{}", a.alert.id)) { (a.alert.name.as_str()) }
                        @if let Some(m) = a.alert.members.get(&d.id) { ": " (m.detail) }
                    }
                }
            }
        }
        @if let Some(g) = &x.grafana {
            p { a #grafana-link href=(g) { "Metrics of this device in Grafana" } }
        }
        div.panel {
            dl.facts {
                dt { "Hostname" } dd { (d.hostname) " (" (d.arch) ")" }
                dt { "Health" } dd { (wire_name(&d.health)) }
                dt { "Phase" } dd { (wire_name(&d.phase)) }
                dt { "Current release" } dd { (release_cell(d.current.as_ref())) }
                dt { "Previous release" } dd { (release_cell(d.previous.as_ref())) }
                dt { "Desired release" } dd { (release_cell(d.desired_release.as_ref())) }
                dt { "Last result" } dd { @match &d.last_result { Some(r) => span.mono { (serde_json::to_string(r).unwrap_or_default()) }, None => span.muted { "none yet" } } }
                dt { "Bad releases" } dd { @if d.bad_releases.is_empty() { span.muted { "none" } } @for b in &d.bad_releases { span.mono { (b.short()) } " " } }
                dt { "Labels" } dd { @for (k, v) in &d.labels { span.mono { (k) "=" (v) } " " } }
                dt { "Last seen" } dd { (ago(d.last_seen_ms, now)) @if let Some(t) = d.last_seen_ms { span.muted { " (" (utc(t)) ")" } } }
                dt { "Agent" } dd.mono { (d.agent_version) }
                dt { "Enrolled" } dd { (utc(d.enrolled_ms)) }
                @if d.safe_mode_requested { dt { "Safe mode" } dd { strong { "requested by an operator" } } }
                dt { "Pinned" } dd #pin {
                    @match &d.pinned_release {
                        Some(r) => {
                            strong { "to " span.mono title=(r.as_str()) { (r.short()) } }
                            " by " (d.pin_source)
                            @if !d.pin_reason.is_empty() { ": " (d.pin_reason) }
                            span.muted { " (left out of rollouts)" }
                        }
                        None => span.muted { "no" },
                    }
                }
            }
            @if c.session.user.role >= Role::Operator {
                form.filters method="post" action=(format!("/ui/devices/{}/pin", d.id)) #pin-actions {
                    (csrf(c)) (back(c))
                    input type="text" name="release" placeholder="release sha" aria-label="Release";
                    input type="text" name="reason" placeholder="reason (audit log)" aria-label="Reason";
                    button type="submit" name="action" value="pin" { "pin" }
                    @if d.pinned_release.is_some() {
                        button type="submit" name="action" value="unpin" { "unpin" }
                    }
                }
            }
        }
        h2 { "How to reach it" }
        (reach_panel(x.reach))
        h2 { "Logs" }
        (logs_panel(c, &d.id, x.logs, now))
        h2 { "Telemetry (last 24 h)" }
        div.panel #telemetry {
            (svg::sparkline("CPU", &series(&|t| t.cpu_percent), &opt(t.cpu_percent, " %")))
            (svg::sparkline("Memory", &series(&mem_pct), &opt(mem_pct(t), " %")))
            (svg::sparkline("Temperature", &series(&|t| t.temperature_c), &opt(t.temperature_c, " °C")))
            (svg::sparkline("Load", &series(&|t| t.load1), &opt(t.load1, "")))
            (svg::sparkline("Free disk", &series(&|t| t.disk_free_bytes.map(|b| b as f64)), &t.disk_free_bytes.map_or_else(|| "–".to_owned(), bytes)))
        }
        h2 { "Update history" }
        (event_table(&updates, "No updates recorded yet."))
        h2 { "Recent events" }
        (event_table(&events.iter().collect::<Vec<_>>(), "No events yet."))
    };
    layout(c, &format!("Device {}", d.id), body)
}

fn way(w: &Way) -> Markup {
    html! {
        @match &w.command {
            Ok(cmd) => { code.mono.ssh { (cmd) } @if !w.note.is_empty() { br; span.muted { (w.note) } } }
            Err(why) => span.muted { "no command: " (why) },
        }
    }
}

/// The SSH commands of the device page (see [`crate::reach`]).
fn reach_panel(r: &Reach) -> Markup {
    html! {
        div.panel #reach {
            dl.facts {
                @if r.in_safe_mode {
                    dt { strong { "Safe mode SSH" } } dd #reach-safe-mode { (way(&r.safe_mode)) }
                    dt { "SSH" } dd #reach-ssh { (way(&r.ssh)) }
                } @else {
                    dt { "SSH" } dd #reach-ssh { (way(&r.ssh)) }
                    dt { "In safe mode" } dd #reach-safe-mode { (way(&r.safe_mode)) }
                }
            }
        }
    }
}

/// The device's newest log tail, grouped by source, and the form that asks for a fresh one.
/// Everything from the device is text: maud escapes it.
fn logs_panel(c: &Chrome, id: &str, l: &DeviceLogs, now: i64) -> Markup {
    html! {
        div.panel #logs {
            p #logs-status {
                @match &l.request {
                    None => span.muted { "Never asked for its logs." },
                    Some(r) => {
                        "Requested by " (r.requested_by) " " (ago(Some(r.requested_ms), now)) ": "
                        @match r.state {
                            RequestState::Pending => { strong { "waiting for the device's next check-in" } " (reload to see the logs once they arrive)" }
                            RequestState::Answered => { "answered" }
                            RequestState::Expired => { strong { "expired" } " (the device did not answer within 15 minutes; its agent may be older than logs on request)" }
                        }
                        "."
                    }
                }
                @if let (Some(t), Some(at)) = (&l.tail, l.received_ms) {
                    " Logs below: received " (ago(Some(at), now)) " (" (utc(at)) ")"
                    @if l.request.as_ref().is_some_and(|r| r.id != t.request_id) { ", answering an earlier request" }
                    "."
                    @if t.truncated { " Some lines were left out to keep within the bounds." }
                }
            }
            @if c.can_operate() {
                form.filters method="post" action=(format!("/ui/devices/{}/logs", super::model::encode(id))) #logs-form {
                    (csrf(c)) (back(c))
                    label { "Lines " input type="number" name="lines" value="100" min="1" max=(fleet_config::protocol::logs::MAX_LOG_LINES) aria-label="Lines per source"; }
                    input type="text" name="services" placeholder="services (blank: all; agent, web, app/web)" aria-label="Services";
                    button type="submit" #logs-fetch { "fetch logs" }
                }
            }
            @if let Some(t) = &l.tail {
                @for s in &t.sources {
                    section.log-source data-source=(s.name) {
                        h3.mono {
                            (s.name)
                            @if let Some(cn) = &s.container { span.muted { " (container " (cn) ")" } }
                            " " span.state { (wire_name(&s.status)) }
                        }
                        @if let Some(d) = &s.detail { p.muted { (d) } }
                        @if s.omitted > 0 { p.muted { (s.omitted) " older lines not shown" } }
                        @if !s.lines.is_empty() {
                            pre.log {
                                @for line in &s.lines {
                                    span.at { (line.at_ms.and_then(|t| i64::try_from(t).ok()).map(utc_ms).unwrap_or_default()) }
                                    " "
                                    @if let Some(st) = line.stream { span.stream { (wire_name(&st)) } " " }
                                    span.text { (line.text) }
                                    "\n"
                                }
                            }
                        }
                    }
                }
            } @else {
                p.muted { "No logs received yet." }
            }
        }
    }
}

fn event_table(events: &[&Value], empty: &str) -> Markup {
    html! {
        @if events.is_empty() { p.muted { (empty) } } @else {
            table.events {
                thead { tr { th { "#" } th { "When" } th { "Event" } th { "Detail" } } }
                tbody {
                    @for e in events {
                        @let mut rest = (*e).clone();
                        @let _ = rest.as_object_mut().map(|o| { o.remove("seq"); o.remove("at_ms"); o.remove("event"); });
                        tr {
                            td { (e["seq"]) }
                            td { (e["at_ms"].as_i64().map(utc).unwrap_or_default()) }
                            td.mono { (e["event"].as_str().unwrap_or("?")) }
                            td.mono { (rest) }
                        }
                    }
                }
            }
        }
    }
}

/// `/rollouts`.
pub fn rollouts(c: &Chrome, rows: &[RolloutRow]) -> Markup {
    let body = html! {
        h1 { "Rollouts" }
        @if rows.is_empty() { p.muted { "No rollout yet: push a commit to the fleet repository." } } @else {
            table #rollouts {
                thead { tr { th { "Rollout" } th { "Release" } th { "State" } th { "Created" } th { "Updated" } } }
                tbody {
                    @for r in rows {
                        tr {
                            td { a href=(format!("/rollouts/{}", r.id)) { (r.id) } }
                            td.mono { (short(&r.release)) }
                            td { strong { (r.state) } }
                            td { (utc(r.created_ms)) }
                            td { (utc(r.updated_ms)) }
                        }
                    }
                }
            }
        }
    };
    layout(c, "Rollouts", body)
}

/// `/rollouts/{id}`.
pub fn rollout(c: &Chrome, r: &Rollout, states: &HashMap<String, DeviceState>) -> Markup {
    let actions: &[&str] = match r.state.name() {
        "running" => &["pause", "abort", "promote"],
        "paused" => &["resume", "abort", "promote"],
        "halted" => &["resume", "abort"],
        _ => &[],
    };
    let body = html! {
        h1 { "Rollout " span.mono { (r.id) } }
        div.panel {
            dl.facts {
                dt { "Release" } dd.mono { (r.release) }
                dt { "Digest" } dd.mono { (r.digest) }
                dt { "Created" } dd { (utc(r.created_ms as i64)) }
                dt { "State" } dd { strong #rollout-state data-live=(format!("rollout-{}-state", r.id)) { (r.state.name()) } }
                dt { "Detail" } dd.mono { (serde_json::to_string(&r.state).unwrap_or_default()) }
            }
            @if c.session.user.role >= Role::Operator && !actions.is_empty() {
                form.filters method="post" action=(format!("/ui/rollouts/{}", r.id)) #rollout-actions {
                    (csrf(c)) (back(c))
                    input type="text" name="reason" placeholder="reason (audit log)" aria-label="Reason";
                    @for a in actions {
                        button type="submit" name="action" value=(a) { (a) }
                    }
                }
            }
        }
        h2 { "Waves" }
        div.panel { (rollout_waves(r, states)) }
        @for (i, w) in r.waves.iter().enumerate() {
            h2 { (i + 1) ". " (w.name) " (" (w.devices.len()) " devices)" }
            table.wave-devices {
                thead { tr { th { "Device" } th { "State" } th { "In this rollout" } th { "From" } } }
                tbody {
                    @for id in &w.devices {
                        @let rec = r.devices.get(id);
                        tr {
                            td { a href=(format!("/devices/{}", super::model::encode(id))) { (id) } }
                            td { @if let Some(s) = states.get(id) { (state_badge(id, *s)) } }
                            td { (rec.map(|d| outcome_text(&d.outcome)).unwrap_or_default()) }
                            td.mono { (rec.and_then(|d| d.from.as_deref()).map(short).unwrap_or("none")) }
                        }
                    }
                }
            }
        }
    };
    layout(c, &format!("Rollout {}", r.id), body)
}

/// A device's outcome in a rollout as people read it: `healthy`, `failed: rolled back: …`.
fn outcome_text(o: &crate::rollout::Outcome) -> String {
    let v = serde_json::to_value(o).unwrap_or_default();
    let name = v["outcome"].as_str().unwrap_or("?").to_owned();
    match v["reason"].as_str() {
        Some(reason) => format!("{name}: {reason}"),
        None => name,
    }
}

/// `/audit`.
pub fn audit(c: &Chrome, entries: &[AuditEntry]) -> Markup {
    let body = html! {
        h1 { "Audit log" }
        table #audit {
            thead { tr { th { "When" } th { "Who" } th { "Action" } th { "Target" } th { "Reason" } th { "Detail" } } }
            tbody {
                @for e in entries {
                    tr {
                        td { (utc(e.at_ms)) }
                        td { (e.actor) }
                        td.mono { (e.action) }
                        td.mono { (e.target) }
                        td { (e.reason) }
                        td.mono { (e.detail) }
                    }
                }
            }
        }
    };
    layout(c, "Audit log", body)
}

/// `/login`.
pub fn login(error: Option<&str>, next: &str, csrf: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head("Log in", false))
            body {
                form.login.panel method="post" action="/login" #login {
                    h1 { "Fleet" }
                    @if let Some(e) = error { div.flash role="alert" { (e) } }
                    label for="name" { "User" }
                    input #name type="text" name="name" autocomplete="username" required autofocus;
                    label for="password" { "Password" }
                    input #password type="password" name="password" autocomplete="current-password" required;
                    input type="hidden" name="next" value=(next);
                    input type="hidden" name="csrf" value=(csrf);
                    button #login-submit type="submit" { "Log in" }
                    span.muted { "Users are made with " code { "fleet-controller users add NAME --role ROLE" } "." }
                }
            }
        }
    }
}

/// A page for an error (unknown device, bad form).
pub fn error_page(c: &Chrome, title: &str, message: &str) -> Markup {
    layout(
        c,
        title,
        html! { h1 { (title) } p { (message) } p { a href="/" { "Back to the overview" } } },
    )
}
