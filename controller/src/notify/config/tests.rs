//! Tests of the `alerting:` section: the defaults, the documented example, and every problem
//! reported with its line and column.

use super::*;
use crate::config::ControllerConfig;

fn parse(yaml: &str) -> Result<Alerting, String> {
    ControllerConfig::parse(yaml, "c.yaml")
        .map(|c| c.alerting)
        .map_err(|e| e.to_string())
}

fn errors(yaml: &str) -> String {
    parse(yaml).expect_err("invalid")
}

/// The example of README.md and the task, as an operator writes it.
const EXAMPLE: &str = r#"alerting:
  notifiers:
    - { name: oncall-slack, kind: slack, url_file: /etc/fleet/slack-webhook-url }
    - { name: ops-telegram, kind: telegram, bot_token_file: /etc/fleet/telegram-token, chat_id: "-100123", api_url: https://api.telegram.org }
    - { name: oncall-mail, kind: email, smtp: "smtp.example.com:587", security: starttls, username: fleet, password_file: /etc/fleet/smtp-password, ca_file: null, from: "Fleet <fleet@example.com>", to: [oncall@example.com] }
    - { name: pager, kind: webhook, url: "https://hooks.example/fleet", bearer_token_file: null, secret_file: null, timeout: 5s }
  routes:
    - { severity: critical, notifiers: [oncall-slack, pager], escalate_to: [oncall-mail] }
    - { severity: [warning, info], notifiers: [ops-telegram] }
  runbook_url_base: "runbooks/"
  external_url: null
  heartbeat: null
  evaluate_every: 5s
  group_wait: 10s
  group_interval: 5m
  repeat_interval: 1h
  escalate_after: 30m
  resolve_after: 2m
"#;

#[test]
fn absent_or_null_gives_the_documented_defaults() {
    let d = parse("").expect("valid");
    assert_eq!(d, Alerting::default());
    assert_eq!(parse("alerting:\n").expect("valid"), d);
    assert!(d.notifiers.is_empty() && d.routes.is_empty());
    assert_eq!(d.runbook_url_base, "runbooks/");
    assert_eq!(d.external_url, None);
    assert_eq!(d.heartbeat, None);
    assert_eq!(d.evaluate_every, Duration::from_secs(5));
    assert_eq!(d.group_wait, Duration::from_secs(10));
    assert_eq!(d.group_interval, Duration::from_secs(300));
    assert_eq!(d.repeat_interval, Duration::from_secs(3600));
    assert_eq!(d.escalate_after, Duration::from_secs(1800));
    assert_eq!(d.resolve_after, Duration::from_secs(120));
    assert_eq!(
        d.runbook_url(AlertName::DeviceOffline),
        "runbooks/DeviceOffline.md"
    );
}

#[test]
fn the_documented_example_reads_as_written() {
    let a = parse(EXAMPLE).expect("valid");
    let names: Vec<&str> = a.notifiers.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(
        names,
        ["oncall-slack", "ops-telegram", "oncall-mail", "pager"]
    );
    let NotifierKind::Slack(s) = &a.notifiers[0].kind else {
        panic!("slack")
    };
    assert_eq!(s.url_file, PathBuf::from("/etc/fleet/slack-webhook-url"));
    assert_eq!(a.notifiers[0].timeout, DEFAULT_NOTIFIER_TIMEOUT);
    let NotifierKind::Telegram(t) = &a.notifiers[1].kind else {
        panic!("telegram")
    };
    assert_eq!(t.chat_id, "-100123");
    assert_eq!(t.api_url.as_str(), "https://api.telegram.org/");
    let NotifierKind::Email(e) = &a.notifiers[2].kind else {
        panic!("email")
    };
    assert_eq!(e.smtp.to_string(), "smtp.example.com:587");
    assert_eq!(e.security, SmtpSecurity::StartTls);
    assert_eq!(e.username.as_deref(), Some("fleet"));
    assert_eq!(e.ca_file, None);
    assert_eq!(e.from.to_string(), "Fleet <fleet@example.com>");
    assert_eq!(e.to.len(), 1);
    let NotifierKind::Webhook(w) = &a.notifiers[3].kind else {
        panic!("webhook")
    };
    assert_eq!(w.url.as_str(), "https://hooks.example/fleet");
    assert_eq!(w.bearer_token_file, None);
    assert_eq!(a.notifiers[3].timeout, Duration::from_secs(5));
    assert_eq!(
        a.notifiers_for(Severity::Critical),
        ["oncall-slack", "pager"]
    );
    assert_eq!(a.notifiers_for(Severity::Info), ["ops-telegram"]);
    assert_eq!(a.escalation_for(Severity::Critical), ["oncall-mail"]);
    assert!(a.escalation_for(Severity::Warning).is_empty());
}

#[test]
fn routes_add_up_and_a_route_without_severity_takes_all() {
    let a = parse(
        "alerting:\n  notifiers:\n    - { name: a, kind: slack, url_file: /a }\n    - { name: b, kind: slack, url_file: /b }\n  routes:\n    - { severity: critical, notifiers: [a, b, a] }\n    - { notifiers: b }\n",
    )
    .expect("valid");
    assert_eq!(a.notifiers_for(Severity::Critical), ["a", "b"]);
    assert_eq!(a.notifiers_for(Severity::Warning), ["b"]);
    assert_eq!(a.routes[1].severities, Severity::ALL);
}

#[test]
fn the_heartbeat_and_external_url() {
    let a = parse(
        "alerting:\n  external_url: https://fleet.example/\n  runbook_url_base: https://git.example/fleet/blob/main/runbooks/\n  heartbeat: { url: https://hc-ping.com/abc }\n",
    )
    .expect("valid");
    assert_eq!(a.external_url.as_deref(), Some("https://fleet.example"));
    assert_eq!(
        a.runbook_url(AlertName::RolloutHalted),
        "https://git.example/fleet/blob/main/runbooks/RolloutHalted.md"
    );
    let h = a.heartbeat.expect("heartbeat");
    assert_eq!(h.interval, Duration::from_secs(60));
    assert_eq!(h.timeout, Duration::from_secs(10));
}

/// Asserts that `text` reports `message` at `line:col`.
#[track_caller]
fn has(text: &str, place: &str, message: &str) {
    let found = text
        .lines()
        .any(|l| l.starts_with(&format!("c.yaml:{place}: error: ")) && l.contains(message));
    assert!(found, "no `{message}` at {place} in:\n{text}");
}

#[test]
fn every_notifier_problem_is_reported_at_once_with_its_place() {
    let yaml = r#"alerting:
  notifiers:
    - { name: Bad Name, kind: slack, url_file: relative/path }
    - { name: dup, kind: slak, url_file: /x }
    - { name: dup, kind: webhook, url: "ftp://x.example/", url_file: /y, timeout: 500ms }
    - { name: tg, kind: telegram, chat_id: "chat" }
    - name: mail
      kind: email
      smtp: smtp.example.com
      security: none
      username: fleet
      from: "not an address"
      to: [ok@example.com, "also bad"]
    - { name: relay, kind: email, smtp: "smtp.example.com:25", security: none, from: a@example.com, to: [] }
    - { name: local, kind: email, smtp: "127.0.0.1:2525", security: nope, from: a@example.com, to: b@example.com }
    - { kind: webhook, url: "https://ok.example/", colour: blue }
"#;
    let text = errors(yaml);
    has(
        &text,
        "3:15",
        "notifier name `Bad Name` must start with a lowercase letter",
    );
    has(
        &text,
        "3:48",
        "`url_file` of notifier `Bad Name` must be an absolute path, found `relative/path`",
    );
    has(&text, "4:26", "unknown notifier kind `slak` (did you mean `slack`?); the kinds are webhook, slack, telegram, email");
    has(
        &text,
        "5:15",
        "notifier name `dup` is used twice (first at line 4); names must be unique",
    );
    has(
        &text,
        "5:40",
        "`url` of notifier `dup` must be an http:// or https:// URL, found `ftp:`",
    );
    has(&text, "5:60", "`url_file` in notifier `dup`: `url_file` is a key of `slack` notifiers; a `webhook` notifier takes url, bearer_token_file, secret_file");
    has(&text, "5:83", "`timeout` of notifier `dup` must be at least 1s (one attempt must not hold the delivery worker), found 500ms");
    has(
        &text,
        "6:7",
        "notifier `tg` is missing the required key `bot_token_file`",
    );
    has(
        &text,
        "6:44",
        "`chat_id` of notifier `tg` must be a chat's number",
    );
    has(&text, "9:13", "`smtp` of notifier `mail` must be HOST:PORT (e.g. `smtp.example.com:587`), found `smtp.example.com`");
    has(
        &text,
        "11:17",
        "`username` of notifier `mail` needs `password_file`",
    );
    has(
        &text,
        "12:13",
        "`from` of notifier `mail`: `not an address` is not an e-mail address",
    );
    has(
        &text,
        "13:28",
        "each entry of `to` of notifier `mail`: `also bad` is not an e-mail address",
    );
    has(&text, "14:74", "`security: none` of notifier `relay` would send messages (and any password) in clear to `smtp.example.com:25`");
    has(&text, "14:105", "`to` of notifier `relay` is empty");
    has(
        &text,
        "15:69",
        "`security` of notifier `local` must be starttls, tls or none, found `nope`",
    );
    has(
        &text,
        "16:7",
        "a notifier is missing the required key `name`",
    );
    has(&text, "16:52", "unknown key `colour` in a notifier");
    assert_eq!(text.lines().count(), 19, "exactly these problems:\n{text}");
}

#[test]
fn route_and_timing_problems_are_reported_with_their_place() {
    let yaml = r#"alerting:
  notifiers:
    - { name: oncall-slack, kind: slack, url_file: /s }
    - { name: pager, kind: webhook, url: "https://p.example/" }
  routes:
    - { severity: critcal, notifiers: [oncall-slak] }
    - { severity: warning, notifiers: [pager], escalate_to: [pager] }
    - { severity: info }
    - { severity: [], notifiers: [pager], color: red }
  evaluate_every: 5m
  group_interval: 1s
  resolve_after: soon
  runbook_url_base: "ftp://x/"
  external_url: "fleet.example"
  heartbeat: { url: "https://hc.example/x", interval: 30s, timeout: 30s }
  escalate_afer: 30m
"#;
    let text = errors(yaml);
    has(&text, "6:19", "`severity` of route 1: unknown severity `critcal` (info, warning or critical) (did you mean `critical`?)");
    has(&text, "6:40", "`notifiers` of route 1 names `oncall-slak`, which is not a notifier (did you mean `oncall-slack`?); the notifiers are oncall-slack, pager");
    has(&text, "7:61", "`escalate_to` of route 2 would never be used: only critical alerts escalate (after `escalate_after`), and this route takes warning");
    has(&text, "8:7", "route 3 sends nowhere");
    has(
        &text,
        "9:19",
        "`severity` of route 4 is empty; leave it out to take every severity",
    );
    has(
        &text,
        "9:43",
        "unknown key `color` in `alerting.routes` (route 4)",
    );
    has(&text, "10:19", "`alerting.evaluate_every` must be at most 1m (alerts must be detected within 3 minutes), found 5m");
    has(
        &text,
        "11:19",
        "`alerting.group_interval` must be at least 10s",
    );
    has(&text, "12:18", "`alerting.resolve_after`:");
    has(
        &text,
        "13:21",
        "`alerting.runbook_url_base` must be an http:// or https:// URL, found `ftp:`",
    );
    has(
        &text,
        "14:17",
        "`alerting.external_url` must be an http:// or https:// URL",
    );
    has(
        &text,
        "15:69",
        "`alerting.heartbeat.timeout` (30s) must be shorter than its `interval` (30s)",
    );
    has(
        &text,
        "16:3",
        "unknown key `escalate_afer` in `alerting` (did you mean `escalate_after`?)",
    );
    assert_eq!(text.lines().count(), 14, "exactly these problems:\n{text}");
}

#[test]
fn security_none_is_fine_on_loopback_and_tls_keys_need_tls() {
    let ok = parse(
        "alerting:\n  notifiers:\n    - { name: m, kind: email, smtp: 'localhost:25', security: none, from: a@example.com, to: b@example.com }\n    - { name: n, kind: email, smtp: '[::1]:25', security: none, from: a@example.com, to: b@example.com }\n",
    )
    .expect("valid");
    let NotifierKind::Email(e) = &ok.notifiers[1].kind else {
        panic!("email")
    };
    assert_eq!(e.smtp.host, "::1");
    assert!(e.smtp.is_loopback());
    let text = errors(
        "alerting:\n  notifiers:\n    - { name: m, kind: email, smtp: '127.0.0.1:25', security: none, ca_file: /ca.pem, from: a@example.com, to: b@example.com }\n",
    );
    has(
        &text,
        "3:78",
        "`ca_file` of notifier `m` has no use with `security: none`",
    );
}

#[test]
fn smtp_addresses_and_chat_ids() {
    assert_eq!(parse_smtp("mail.example:465").map(|a| a.port), Ok(465));
    assert!(parse_smtp("mail.example:0").is_err());
    assert!(parse_smtp("mail.example:99999").is_err());
    assert!(parse_smtp(":25").is_err());
    assert!(parse_smtp("::1:25").is_err());
    assert!(parse_smtp("[::1]:25").is_ok());
    assert!(parse_smtp("a b:25").is_err());
    for good in ["-100123", "12345", "@fleet_alerts"] {
        assert!(valid_chat_id(good), "{good}");
    }
    for bad in ["", "-", "chat", "@abc", "12a", "@1abcde"] {
        assert!(!valid_chat_id(bad), "{bad}");
    }
}

#[test]
fn the_readme_example_is_the_documented_default_and_valid() {
    let readme = include_str!("../../../../README.md");
    let section = readme
        .find("### Alerting: notifiers and routes")
        .expect("README has the alerting section");
    let start = readme[section..].find("```yaml\n").expect("a yaml block") + section + 8;
    let end = readme[start..].find("```").expect("block end") + start;
    let a = parse(&readme[start..end]).expect("the README's example is valid");
    let mut expected = parse(EXAMPLE).expect("valid");
    // The test's example only adds a timeout to `pager`.
    expected.notifiers[3].timeout = DEFAULT_NOTIFIER_TIMEOUT;
    assert_eq!(a, expected);
    let d = Alerting::default();
    assert_eq!(
        (
            a.evaluate_every,
            a.group_wait,
            a.group_interval,
            a.repeat_interval,
            a.escalate_after,
            a.resolve_after
        ),
        (
            d.evaluate_every,
            d.group_wait,
            d.group_interval,
            d.repeat_interval,
            d.escalate_after,
            d.resolve_after
        ),
        "the README shows the defaults"
    );
}
