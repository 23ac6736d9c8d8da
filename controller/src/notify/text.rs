//! The wording every notifier shares, so a message reads the same in Slack, Telegram and
//! e-mail: the headline, the devices line and what to do next (the runbook, how to
//! acknowledge), plus truncation that never cuts a character in two.

use super::{Message, MessageKind};

/// The kind as a headline shows it.
pub fn kind_label(kind: MessageKind) -> &'static str {
    match kind {
        MessageKind::Firing => "FIRING",
        MessageKind::Updated => "UPDATED",
        MessageKind::Reminder => "REMINDER",
        MessageKind::Escalation => "ESCALATION",
        MessageKind::Resolved => "RESOLVED",
        MessageKind::Test => "TEST",
    }
}

/// `[FIRING critical] DeviceOffline`.
pub fn title(m: &Message) -> String {
    format!("[{} {}] {}", kind_label(m.kind), m.severity, m.alert)
}

/// `[FIRING critical] DeviceOffline: 40 devices offline (example-fleet)`: an e-mail's subject,
/// the notification text of Slack.
pub fn headline(m: &Message) -> String {
    format!("{}: {} ({})", title(m), one_line(&m.summary), m.fleet)
}

/// The devices concerned on one line: `pi-01, pi-02 and 38 more`; `None` for a fleet-wide
/// alert. `quote` wraps each name (Slack's backticks).
pub fn devices_list(m: &Message, quote: &str) -> Option<String> {
    if m.devices.is_empty() && m.devices_total == 0 {
        return None;
    }
    let names: Vec<String> = m
        .devices
        .iter()
        .map(|d| format!("{quote}{}{quote}", one_line(d)))
        .collect();
    let listed = u64::try_from(m.devices.len()).unwrap_or(u64::MAX);
    let more = m.devices_total.saturating_sub(listed);
    let mut out = names.join(", ");
    if more > 0 {
        if out.is_empty() {
            out = format!("{more} devices (not listed)");
        } else {
            out.push_str(&format!(" and {more} more"));
        }
    }
    Some(out)
}

/// How many devices, for a heading: `Devices (40)`.
pub fn devices_heading(m: &Message) -> String {
    let total = m
        .devices_total
        .max(u64::try_from(m.devices.len()).unwrap_or(u64::MAX));
    format!("Devices ({total})")
}

/// One step of "what to do next": a label, and either a command or a link.
pub struct Step {
    /// What the step is (`Runbook`, `Acknowledge`, `Dashboard`).
    pub label: &'static str,
    /// The text to show.
    pub value: String,
    /// What the value is.
    pub form: StepForm,
}

/// How a step's value is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepForm {
    /// A link (an absolute http(s) URL).
    Link,
    /// A command to type (shown as code).
    Command,
    /// Plain text (a runbook path that is not a URL).
    Text,
}

/// One sentence on where this message stands and what is expected of the reader.
pub fn status_sentence(m: &Message) -> String {
    match m.kind {
        MessageKind::Firing => "Firing: follow the runbook, then acknowledge.".to_owned(),
        MessageKind::Updated => {
            "Still firing; the devices concerned changed. Follow the runbook, then acknowledge."
                .to_owned()
        }
        MessageKind::Reminder => {
            "Still firing and not acknowledged: follow the runbook, then acknowledge.".to_owned()
        }
        MessageKind::Escalation => "Escalated: nobody acknowledged this critical alert in time. \
                                    Follow the runbook, then acknowledge."
            .to_owned(),
        MessageKind::Resolved => match m.resolved_ms {
            Some(ms) => format!(
                "Resolved at {}; nothing to do now. The runbook says what may cause it again.",
                crate::timefmt::utc(ms)
            ),
            None => "Resolved; nothing to do now. The runbook says what may cause it again."
                .to_owned(),
        },
        MessageKind::Test => {
            "Test message from `fleet-controller notifiers test`: this notifier delivers; nothing to do."
                .to_owned()
        }
    }
}

/// What to do next: the runbook always; how to acknowledge while it needs a person; the
/// dashboard when `external_url` is set.
pub fn next_steps(m: &Message) -> Vec<Step> {
    let mut steps = vec![Step {
        label: "Runbook",
        value: m.runbook_url.clone(),
        form: if is_web_url(&m.runbook_url) {
            StepForm::Link
        } else {
            StepForm::Text
        },
    }];
    if needs_ack(m.kind) {
        steps.push(Step {
            label: "Acknowledge",
            value: format!("fleetctl alerts ack {}", m.alert_id),
            form: StepForm::Command,
        });
    }
    if let Some(url) = m.dashboard_url.as_ref().filter(|u| is_web_url(u)) {
        steps.push(Step {
            label: "Dashboard",
            value: url.clone(),
            form: StepForm::Link,
        });
    }
    steps
}

/// Whether the message asks for an acknowledgement (the alert fires and needs a person).
pub fn needs_ack(kind: MessageKind) -> bool {
    matches!(
        kind,
        MessageKind::Firing
            | MessageKind::Updated
            | MessageKind::Reminder
            | MessageKind::Escalation
    )
}

/// The runbook's file name (`DeviceOffline.md`), the text of its link.
pub fn runbook_name(m: &Message) -> String {
    m.runbook_url
        .rsplit('/')
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or("runbook")
        .to_owned()
}

/// Whether `s` is an absolute http(s) URL (only those become links).
pub fn is_web_url(s: &str) -> bool {
    reqwest::Url::parse(s).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
}

/// `s` on one line: control characters (newlines included) become spaces.
pub fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `s` cut to at most `max` characters, ending in `…` when cut.
pub fn truncate_chars(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let keep = max.saturating_sub(1);
    let mut out: String = s.chars().take(keep).collect();
    out.push('…');
    out
}

/// Length in UTF-16 code units (how Telegram counts).
pub fn utf16_len(s: &str) -> usize {
    s.chars().map(char::len_utf16).sum()
}

/// `s` cut to at most `max` UTF-16 code units, ending in `…` when cut.
pub fn truncate_utf16(s: &str, max: usize) -> String {
    if utf16_len(s) <= max {
        return s.to_owned();
    }
    let budget = max.saturating_sub(1);
    let mut used = 0;
    let mut out = String::new();
    for c in s.chars() {
        if used + c.len_utf16() > budget {
            break;
        }
        used += c.len_utf16();
        out.push(c);
    }
    if max > 0 {
        out.push('…');
    }
    out
}

/// Escapes `s` with `escape` one character at a time and stops before the escaped text would
/// pass `max` characters (leaving room for `…`): an escape sequence is never cut.
pub fn escape_within(s: &str, max: usize, escape: impl Fn(char) -> Option<&'static str>) -> String {
    let full: usize = s
        .chars()
        .map(|c| escape(c).map_or(1, |e| e.chars().count()))
        .sum();
    let budget = if full <= max {
        max
    } else {
        max.saturating_sub(1)
    };
    let mut out = String::new();
    let mut used = 0;
    for c in s.chars() {
        let piece_len = escape(c).map_or(1, |e| e.chars().count());
        if used + piece_len > budget {
            break;
        }
        match escape(c) {
            Some(e) => out.push_str(e),
            None => out.push(c),
        }
        used += piece_len;
    }
    if full > max {
        out.push('…');
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use fleet_config::alerts::{AlertName, Severity};

    /// A firing `DeviceOffline` of 40 devices, 20 listed.
    pub fn offline_message() -> Message {
        Message {
            id: "msg-1".into(),
            alert_id: "a-17".into(),
            alert: AlertName::DeviceOffline,
            severity: Severity::Critical,
            kind: MessageKind::Firing,
            summary: "40 devices offline".into(),
            description: "40 devices have not checked in for 3 minutes.".into(),
            devices: (1..=20).map(|i| format!("pi-{i:02}")).collect(),
            devices_total: 40,
            runbook_url: "https://git.example/fleet/runbooks/DeviceOffline.md".into(),
            dashboard_url: Some("https://fleet.example/ui/alerts/a-17".into()),
            started_ms: 1_790_000_000_000,
            resolved_ms: None,
            fleet: "example-fleet".into(),
        }
    }

    #[test]
    fn the_headline_names_kind_severity_alert_summary_and_fleet() {
        let m = offline_message();
        assert_eq!(
            headline(&m),
            "[FIRING critical] DeviceOffline: 40 devices offline (example-fleet)"
        );
        let mut r = m.clone();
        r.kind = MessageKind::Resolved;
        r.summary = "line one\nline two".into();
        assert_eq!(
            headline(&r),
            "[RESOLVED critical] DeviceOffline: line one line two (example-fleet)"
        );
    }

    #[test]
    fn devices_are_listed_with_how_many_more() {
        let m = offline_message();
        let line = devices_list(&m, "").expect("devices");
        assert!(line.starts_with("pi-01, pi-02, "), "{line}");
        assert!(line.ends_with("pi-20 and 20 more"), "{line}");
        assert_eq!(devices_heading(&m), "Devices (40)");
        let mut fleet_wide = m.clone();
        fleet_wide.devices.clear();
        fleet_wide.devices_total = 0;
        assert_eq!(devices_list(&fleet_wide, ""), None);
    }

    #[test]
    fn next_steps_follow_the_kind() {
        let m = offline_message();
        let steps = next_steps(&m);
        let labels: Vec<_> = steps.iter().map(|s| s.label).collect();
        assert_eq!(labels, ["Runbook", "Acknowledge", "Dashboard"]);
        assert_eq!(steps[1].value, "fleetctl alerts ack a-17");
        assert_eq!(steps[0].form, StepForm::Link);
        let mut resolved = m.clone();
        resolved.kind = MessageKind::Resolved;
        resolved.runbook_url = "runbooks/DeviceOffline.md".into();
        resolved.dashboard_url = None;
        let steps = next_steps(&resolved);
        assert_eq!(steps.len(), 1);
        assert_eq!(steps[0].form, StepForm::Text);
        assert_eq!(runbook_name(&resolved), "DeviceOffline.md");
    }

    #[test]
    fn truncation_never_splits_a_character_or_an_escape() {
        assert_eq!(truncate_chars("abcdef", 6), "abcdef");
        assert_eq!(truncate_chars("abcdef", 4), "abc…");
        assert_eq!(truncate_utf16("a😀b", 3), "a…");
        assert_eq!(truncate_utf16("a😀b", 4), "a😀b");
        assert_eq!(utf16_len("a😀b"), 4);
        let esc = |c| match c {
            '&' => Some("&amp;"),
            _ => None,
        };
        assert_eq!(escape_within("a&b", 7, esc), "a&amp;b");
        assert_eq!(escape_within("a&b", 6, esc), "a…");
        assert_eq!(escape_within("ab&", 3, esc), "ab…");
    }
}
