//! The dashboard's alerts: the list (firing, pending, recently resolved, the silences and the
//! notifiers' health), one alert (its members, runbook and messages), and the operators'
//! forms to acknowledge, silence and end a silence, through the service layer.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use axum::Form;
use maud::{html, Markup};

use super::format::{ago, utc};
use super::pages::{layout, Chrome};
use super::{back_with, enter, form_user, html, path_of, ActionForm, Flash, PageError};
use crate::alerts::deliver::NotifierHealth;
use crate::alerts::model::{Phase, Silence};
use crate::db::{now_ms, AlertRow, MessageRecord, Role};
use crate::service::{self, AppState};

/// `/alerts`.
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Query(flash): Query<Flash>,
) -> Result<Response, PageError> {
    let (s, stop) = enter(&state, &headers, &uri).await?;
    let alerts = state.db.alerts(200, true).await?;
    let silences = state.db.silences().await?;
    let health = state.alerting.delivery.all();
    let notifiers: Vec<(String, String, NotifierHealth)> = state
        .alerting
        .notifiers
        .iter()
        .map(|n| {
            (
                n.name().to_owned(),
                n.kind().to_owned(),
                health.get(n.name()).cloned().unwrap_or_default(),
            )
        })
        .collect();
    let evaluated = state.db.alerts_evaluated_ms().await?;
    let path = path_of(&uri);
    let c = Chrome {
        session: &s,
        here: "alerts",
        path: &path,
        stop: stop.as_ref(),
        flash: flash.verified(&s),
    };
    Ok(html(list_page(
        &c,
        &alerts,
        &silences,
        &notifiers,
        evaluated,
        now_ms(),
    )))
}

/// `/alerts/{id}`.
pub async fn show(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<String>,
    Query(flash): Query<Flash>,
) -> Result<Response, PageError> {
    let (s, stop) = enter(&state, &headers, &uri).await?;
    let path = path_of(&uri);
    let c = Chrome {
        session: &s,
        here: "alerts",
        path: &path,
        stop: stop.as_ref(),
        flash: flash.verified(&s),
    };
    let Some(alert) = state.db.alert(&id).await? else {
        return Ok(html(layout(
            &c,
            "No such alert",
            html! { h1 { "No alert " (id) } p { a href="/alerts" { "All alerts" } } },
        )));
    };
    let messages = state.db.alert_messages(&id).await?;
    let runbook = state.alerting.settings.links.runbook(alert.alert.name);
    Ok(html(detail_page(&c, &alert, &messages, &runbook, now_ms())))
}

/// `POST /ui/alerts/{id}/ack`.
pub async fn ack(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<ActionForm>,
) -> Result<Response, PageError> {
    let s = form_user(&state, &headers, &f, Role::Operator).await?;
    let msg = match service::alerts::ack(&state, &s.user.name, &id, &f.reason).await {
        Ok(()) => format!("Alert {id} acknowledged: no reminder, no escalation."),
        Err(e) => format!("Alert {id}: not acknowledged: {e}"),
    };
    Ok(back_with(&s, f.next.as_deref(), &msg))
}

/// `POST /ui/silences`.
pub async fn silence(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<ActionForm>,
) -> Result<Response, PageError> {
    let s = form_user(&state, &headers, &f, Role::Operator).await?;
    let msg = match service::alerts::silence(
        &state,
        &s.user.name,
        f.alert.as_deref(),
        f.device.as_deref(),
        f.duration.as_deref().unwrap_or("1h"),
        &f.reason,
    )
    .await
    {
        Ok(x) => format!(
            "Silence {} added: {}{} until {}.",
            x.id,
            x.alert.map_or("every alert", |a| a.as_str()),
            x.member
                .as_deref()
                .map(|m| format!(" for {m}"))
                .unwrap_or_default(),
            utc(x.until_ms)
        ),
        Err(e) => format!("Silence refused: {e}"),
    };
    Ok(back_with(&s, f.next.as_deref(), &msg))
}

/// `POST /ui/silences/{id}/end`.
pub async fn end_silence(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<ActionForm>,
) -> Result<Response, PageError> {
    let s = form_user(&state, &headers, &f, Role::Operator).await?;
    let msg = match service::alerts::end_silence(&state, &s.user.name, &id, &f.reason).await {
        Ok(()) => format!("Silence {id} ended."),
        Err(e) => format!("Silence {id}: {e}"),
    };
    Ok(back_with(&s, f.next.as_deref(), &msg))
}

fn since(a: &AlertRow, now: i64) -> String {
    match a.alert.phase {
        Phase::Firing => format!("firing since {}", ago(a.alert.fired_ms, now)),
        Phase::Pending => format!("pending since {}", ago(Some(a.alert.started_ms), now)),
        Phase::Resolved => format!("resolved {}", ago(a.alert.resolved_ms, now)),
    }
}

fn csrf_next(c: &Chrome) -> Markup {
    html! {
        input type="hidden" name="csrf" value=(c.session.csrf);
        input type="hidden" name="next" value=(c.path);
    }
}

fn ack_form(c: &Chrome, a: &AlertRow) -> Markup {
    html! {
        @if c.session.user.role >= Role::Operator && a.alert.phase != Phase::Resolved && a.alert.ack.is_none() {
            form.inline method="post" action=(format!("/ui/alerts/{}/ack", a.alert.id)) {
                (csrf_next(c))
                input type="text" name="reason" placeholder="what you are doing (optional)" aria-label="Reason for acknowledging";
                button type="submit" { "Acknowledge" }
            }
        }
    }
}

fn silence_form(c: &Chrome, alert: Option<&str>, device: Option<&str>) -> Markup {
    html! {
        @if c.session.user.role >= Role::Operator {
            form.inline.silence method="post" action="/ui/silences" {
                (csrf_next(c))
                input type="text" name="alert" value=[alert] placeholder="alert (empty: every alert)" aria-label="Alert to silence";
                input type="text" name="device" value=[device] placeholder="device (empty: all)" aria-label="Device to silence";
                input type="text" name="duration" value="1h" size="5" aria-label="For how long";
                input type="text" name="reason" required placeholder="why" aria-label="Reason for the silence";
                button type="submit" { "Silence" }
            }
        }
    }
}

fn list_page(
    c: &Chrome,
    alerts: &[AlertRow],
    silences: &[Silence],
    notifiers: &[(String, String, NotifierHealth)],
    evaluated: Option<i64>,
    now: i64,
) -> Markup {
    let open: Vec<&AlertRow> = alerts
        .iter()
        .filter(|a| a.alert.phase != Phase::Resolved)
        .collect();
    let resolved: Vec<&AlertRow> = alerts
        .iter()
        .filter(|a| a.alert.phase == Phase::Resolved)
        .take(50)
        .collect();
    let body = html! {
        h1 { "Alerts" }
        p.muted { "The alert engine last ran " (ago(evaluated, now)) "." }
        table #open-alerts {
            thead { tr { th { "Severity" } th { "Alert" } th { "What" } th { "State" } th { "Acknowledged" } th {} } }
            tbody {
                @if open.is_empty() { tr { td colspan="6" .muted { "Nothing firing." } } }
                @for a in &open {
                    tr class=(format!("alert {}", a.severity)) data-alert=(a.alert.id) {
                        td { span class=(format!("sev sev-{}", a.severity)) { (a.severity) } }
                        td { a href=(format!("/alerts/{}", a.alert.id)) { (a.alert.name.as_str()) } }
                        td { (a.summary) }
                        td { (since(a, now)) }
                        td { @if let Some(k) = &a.alert.ack { (k.by) ": " (k.reason) } }
                        td { (ack_form(c, a)) }
                    }
                }
            }
        }
        h2 { "Silences" }
        (silence_form(c, None, None))
        table #silences {
            thead { tr { th { "Alert" } th { "Member" } th { "Until" } th { "By" } th { "Reason" } th {} } }
            tbody {
                @for s in silences {
                    tr {
                        td { (s.alert.map_or("every alert", |a| a.as_str())) }
                        td { (s.member.as_deref().unwrap_or("all")) }
                        td { (utc(s.until_ms)) @if s.until_ms <= now { " (over)" } }
                        td { (s.created_by) }
                        td { (s.reason) }
                        td {
                            @if c.session.user.role >= Role::Operator && s.until_ms > now {
                                form.inline method="post" action=(format!("/ui/silences/{}/end", s.id)) {
                                    (csrf_next(c))
                                    input type="text" name="reason" required placeholder="why" aria-label="Reason for ending the silence";
                                    button type="submit" { "End" }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Notifiers" }
        table #notifiers {
            thead { tr { th { "Name" } th { "Kind" } th { "Failures in a row" } th { "Last delivered" } th { "Last error" } } }
            tbody {
                @if notifiers.is_empty() { tr { td colspan="5" .muted { "No notifier configured (controller.yaml alerting.notifiers): alerts are shown here, not sent." } } }
                @for (name, kind, h) in notifiers {
                    tr class=[(h.streak > 0).then_some("failing")] {
                        td { (name) } td { (kind) } td { (h.streak) }
                        td { (ago(h.last_ok_ms, now)) }
                        td { (h.last_error.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
        h2 { "Resolved" }
        table #resolved-alerts {
            thead { tr { th { "Alert" } th { "What" } th { "Fired" } th { "Resolved" } } }
            tbody {
                @for a in &resolved {
                    tr {
                        td { a href=(format!("/alerts/{}", a.alert.id)) { (a.alert.name.as_str()) } }
                        td { (a.summary) }
                        td { (a.alert.fired_ms.map(utc).unwrap_or_default()) }
                        td { (ago(a.alert.resolved_ms, now)) }
                    }
                }
            }
        }
    };
    layout(c, "Alerts", body)
}

fn detail_page(
    c: &Chrome,
    a: &AlertRow,
    messages: &[MessageRecord],
    runbook: &str,
    now: i64,
) -> Markup {
    let body = html! {
        h1 { (a.alert.name.as_str()) " " span class=(format!("sev sev-{}", a.severity)) { (a.severity) } }
        p #alert-summary { strong { (a.summary) } }
        p { (since(a, now)) " · id " span.mono { (a.alert.id) } " · " a href=(runbook) { "runbook" } }
        @if let Some(k) = &a.alert.ack {
            p { "Acknowledged by " (k.by) " " (ago(Some(k.at_ms), now)) ": " (k.reason) }
        }
        (ack_form(c, a))
        h2 { "What it is about" }
        table #alert-members {
            thead { tr { th { "Member" } th { "What holds" } th { "Since" } th { "Last seen" } th {} } }
            tbody {
                @for (m, x) in &a.alert.members {
                    tr {
                        td {
                            @if a.alert.name.about_devices() { a href=(format!("/devices/{m}")) { (m) } } @else { (m) }
                        }
                        td { (x.detail) }
                        td { (ago(Some(x.since_ms), now)) }
                        td { (ago(Some(x.seen_ms), now)) }
                        td { @if !x.firing { "pending" } }
                    }
                }
            }
        }
        h2 { "Silence it" }
        (silence_form(c, Some(a.alert.name.as_str()), None))
        h2 { "Messages" }
        table #alert-messages {
            thead { tr { th { "Kind" } th { "Notifier" } th { "Made" } th { "Outcome" } } }
            tbody {
                @if messages.is_empty() { tr { td colspan="4" .muted { "None sent (pending, within group_wait, silenced, or no notifier routed)." } } }
                @for m in messages {
                    tr {
                        td { (m.kind) } td { (m.notifier) } td { (utc(m.created_ms)) }
                        td {
                            @if let Some(t) = m.delivered_ms { "delivered " (ago(Some(t), now)) }
                            @else if m.dropped_ms.is_some() { "given up: " (m.last_error.as_deref().unwrap_or("")) }
                            @else if m.attempts > 0 { "retrying (" (m.attempts) " attempts): " (m.last_error.as_deref().unwrap_or("")) }
                            @else { "queued" }
                        }
                    }
                }
            }
        }
    };
    layout(c, &format!("Alert {}", a.alert.name.as_str()), body)
}
