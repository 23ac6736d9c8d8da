//! The notifiers against real protocol peers on loopback: a recording HTTP receiver that checks
//! the exact request Slack, Telegram and the generic webhook document and answers what they
//! answer (429 with `Retry-After`, 4xx, 5xx), and a real SMTP server (aiosmtpd) with STARTTLS,
//! SMTPS and a login. Each notifier is built from controller.yaml text, as the controller
//! builds it. Then `fleet-controller notifiers test` and `check-config` as an operator runs them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_config::alerts::{AlertName, Severity};
use fleet_controller::config::ControllerConfig;
use fleet_controller::notify::registry::Registry;
use fleet_controller::notify::{Message, MessageKind, Notifier, NotifyError};
use fleet_testkit::receivers::{closed_port, HttpReceiver, Recorded, Reply};
use fleet_testkit::smtp::{smtp_available, SmtpServer, SmtpTls};
use fleet_testkit::tls::LabCa;

const UA: &str = concat!("fleet-controller/", env!("CARGO_PKG_VERSION"));

/// A firing `DeviceOffline` about 40 devices, 20 of them listed.
fn message() -> Message {
    Message {
        id: "m-0001".into(),
        alert_id: "a-17".into(),
        alert: AlertName::DeviceOffline,
        severity: Severity::Critical,
        kind: MessageKind::Firing,
        summary: "40 devices offline".into(),
        description: "40 devices have not checked in for 3 minutes (offline_after).".into(),
        devices: (1..=20).map(|i| format!("pi-{i:02}")).collect(),
        devices_total: 40,
        runbook_url: "https://git.example/fleet/runbooks/DeviceOffline.md".into(),
        dashboard_url: Some("https://fleet.example/ui/alerts/a-17".into()),
        started_ms: 1_790_000_000_000,
        resolved_ms: None,
        fleet: "example-fleet".into(),
    }
}

/// The notifier `name` of the `alerting:` section in `yaml`, built as the controller builds it.
fn notifier(yaml: &str, name: &str) -> Arc<dyn Notifier> {
    let cfg = ControllerConfig::parse(yaml, "controller.yaml").expect("valid configuration");
    Registry::new(&cfg.alerting)
        .expect("registry")
        .get(name)
        .expect("notifier")
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).expect("write");
    p
}

fn only(r: &HttpReceiver) -> Recorded {
    let reqs = r.requests();
    assert_eq!(reqs.len(), 1, "one request expected: {reqs:?}");
    reqs.into_iter().next().expect("one")
}

#[track_caller]
fn assert_refused(e: &NotifyError, retryable: bool, contains: &str) {
    assert!(
        matches!(e, NotifyError::Refused { .. }),
        "expected Refused, got {e:?}"
    );
    assert_eq!(e.retryable(), retryable, "{e}");
    assert!(e.to_string().contains(contains), "`{contains}` not in: {e}");
}

// ---------------------------------------------------------------------------------------------
// Generic webhook

#[tokio::test]
async fn webhook_posts_the_versioned_body_with_bearer_token_and_a_signature_that_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = write(dir.path(), "token", "tok-1\n");
    let secret = write(dir.path(), "secret", "s3cret\n");
    let r = HttpReceiver::start();
    let yaml = format!(
        "alerting:\n  notifiers:\n    - {{ name: pager, kind: webhook, url: \"{}\", bearer_token_file: {}, secret_file: {} }}\n",
        r.url("/hooks/fleet?x=1"),
        token.display(),
        secret.display()
    );
    let n = notifier(&yaml, "pager");
    assert_eq!(n.kind(), "webhook");
    let m = message();
    n.send(&m).await.expect("delivered");

    let req = only(&r);
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/hooks/fleet?x=1");
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert_eq!(req.header("user-agent"), Some(UA));
    assert_eq!(req.header("authorization"), Some("Bearer tok-1"));
    // The body: version 1 and the message, field for field.
    let body = req.json();
    assert_eq!(body["version"], 1);
    let mut without_version = body.clone();
    without_version
        .as_object_mut()
        .expect("object")
        .remove("version");
    assert_eq!(
        without_version,
        serde_json::to_value(&m).expect("message as JSON")
    );
    let back: Message = serde_json::from_value(without_version).expect("reads back");
    assert_eq!(back, m);
    // The signature: what the controller's own push-webhook check accepts, over the raw body.
    let sig = req
        .header("x-fleet-signature-256")
        .expect("signature header");
    let hex = sig.strip_prefix("sha256=").expect("sha256= prefix");
    assert!(fleet_controller::api::webhook::signature_valid(
        b"s3cret", &req.body, hex
    ));
    assert!(!fleet_controller::api::webhook::signature_valid(
        b"wrong", &req.body, hex
    ));

    // Secrets are read at each send: a rotated token goes out without a restart.
    std::fs::write(&token, "tok-2").expect("rotate");
    n.send(&m).await.expect("delivered again");
    let reqs = r.requests();
    assert_eq!(reqs[1].header("authorization"), Some("Bearer tok-2"));
}

#[tokio::test]
async fn webhook_answers_map_to_retryable_or_not() {
    let r = HttpReceiver::with_replies(vec![
        Reply::new(429, "slow down").header("Retry-After", "7"),
        Reply::new(503, "maintenance"),
        Reply::new(404, "no such hook"),
        Reply::new(301, "").header("Location", "https://elsewhere.example/"),
        Reply::new(204, ""),
    ]);
    let yaml = format!(
        "alerting:\n  notifiers:\n    - {{ name: pager, kind: webhook, url: \"{}\" }}\n",
        r.url("/h")
    );
    let n = notifier(&yaml, "pager");
    let m = message();
    let e = n.send(&m).await.expect_err("429");
    assert_refused(&e, true, "HTTP 429: slow down");
    assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
    assert_refused(&n.send(&m).await.expect_err("503"), true, "HTTP 503");
    let e = n.send(&m).await.expect_err("404");
    assert_refused(&e, false, "HTTP 404: no such hook");
    assert_eq!(e.retry_after(), None);
    assert_refused(
        &n.send(&m).await.expect_err("301"),
        false,
        "redirects are not followed",
    );
    n.send(&m).await.expect("any 2xx is success");
    assert_eq!(r.requests().len(), 5, "a redirect is not followed");
}

#[tokio::test]
async fn an_unreachable_or_slow_receiver_is_unreachable_and_retryable() {
    let port = closed_port();
    let yaml = format!(
        "alerting:\n  notifiers:\n    - {{ name: pager, kind: webhook, url: \"http://127.0.0.1:{port}/h?token=s3cret\" }}\n"
    );
    let e = notifier(&yaml, "pager")
        .send(&message())
        .await
        .expect_err("refused");
    assert!(matches!(e, NotifyError::Unreachable { .. }), "{e:?}");
    assert!(e.retryable());
    let text = e.to_string();
    assert!(
        text.contains(&format!("cannot reach http://127.0.0.1:{port}/h")),
        "{text}"
    );
    assert!(
        !text.contains("s3cret"),
        "the query is not repeated: {text}"
    );

    let slow = HttpReceiver::with_replies(vec![Reply::ok("ok").delayed(Duration::from_secs(5))]);
    let yaml = format!(
        "alerting:\n  notifiers:\n    - {{ name: pager, kind: webhook, url: \"{}\", timeout: 1s }}\n",
        slow.url("/h")
    );
    let started = Instant::now();
    let e = notifier(&yaml, "pager")
        .send(&message())
        .await
        .expect_err("timeout");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the timeout holds"
    );
    assert!(matches!(e, NotifyError::Unreachable { .. }), "{e:?}");
    assert!(e.to_string().contains("no answer in time"), "{e}");
}

#[tokio::test]
async fn a_missing_secret_file_is_a_config_error_naming_it_and_nothing_is_sent() {
    let r = HttpReceiver::start();
    let yaml = format!(
        "alerting:\n  notifiers:\n    - {{ name: pager, kind: webhook, url: \"{}\", secret_file: /nonexistent/fleet/secret }}\n",
        r.url("/h")
    );
    let e = notifier(&yaml, "pager")
        .send(&message())
        .await
        .expect_err("config");
    assert!(matches!(e, NotifyError::Config(_)), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains("`secret_file` /nonexistent/fleet/secret") && text.contains("pager"),
        "{text}"
    );
    assert!(r.requests().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Slack

const SLACK_PATH: &str = "/services/T0001/B0002/XXXXsecretXXXX";

fn slack(r: &HttpReceiver, dir: &Path) -> Arc<dyn Notifier> {
    let url_file = write(dir, "slack-url", &format!("{}\n", r.url(SLACK_PATH)));
    notifier(
        &format!(
            "alerting:\n  notifiers:\n    - {{ name: oncall-slack, kind: slack, url_file: {} }}\n",
            url_file.display()
        ),
        "oncall-slack",
    )
}

#[tokio::test]
async fn slack_gets_an_incoming_webhook_message_with_text_and_valid_blocks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = HttpReceiver::start();
    slack(&r, dir.path())
        .send(&message())
        .await
        .expect("delivered");
    let req = only(&r);
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, SLACK_PATH);
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert_eq!(req.header("user-agent"), Some(UA));
    let v = req.json();
    assert_eq!(
        v["text"],
        "[FIRING critical] DeviceOffline: 40 devices offline (example-fleet)"
    );
    let keys: Vec<&String> = v.as_object().expect("object").keys().collect();
    assert_eq!(keys.len(), 2, "only text and blocks: {keys:?}");
    let blocks = v["blocks"].as_array().expect("blocks");
    assert!(blocks.len() <= 50);
    assert_eq!(blocks[0]["type"], "header");
    assert_eq!(blocks[0]["text"]["type"], "plain_text");
    assert_eq!(blocks[0]["text"]["text"], "[FIRING critical] DeviceOffline");
    let mut all = String::new();
    for b in blocks {
        match b["type"].as_str() {
            Some("header") => {}
            Some("section") => {
                if let Some(t) = b.get("text") {
                    assert_eq!(t["type"], "mrkdwn");
                    let t = t["text"].as_str().expect("text");
                    assert!(!t.is_empty() && t.chars().count() <= 3000);
                    all.push_str(t);
                }
                for f in b["fields"].as_array().into_iter().flatten() {
                    assert_eq!(f["type"], "mrkdwn");
                    let t = f["text"].as_str().expect("field");
                    assert!(!t.is_empty() && t.chars().count() <= 2000);
                    all.push_str(t);
                }
            }
            Some("context") => {
                for e in b["elements"].as_array().expect("elements") {
                    all.push_str(e["text"].as_str().expect("text"));
                }
            }
            other => panic!("unexpected block {other:?}"),
        }
        all.push('\n');
    }
    assert!(all.contains("*40 devices offline*"), "{all}");
    assert!(
        all.contains("<https://git.example/fleet/runbooks/DeviceOffline.md|DeviceOffline.md>"),
        "{all}"
    );
    assert!(all.contains("`fleetctl alerts ack a-17`"), "{all}");
    assert!(
        all.contains("`pi-01`") && all.contains("and 20 more"),
        "{all}"
    );
}

#[tokio::test]
async fn slack_errors_map_as_slack_documents_them_and_never_show_the_url() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = HttpReceiver::with_replies(vec![
        Reply::new(400, "invalid_payload"),
        Reply::new(404, "no_service"),
        Reply::new(410, "channel_is_archived"),
        Reply::new(403, "action_prohibited"),
        Reply::new(429, "rate_limited").header("Retry-After", "30"),
        Reply::new(500, "rollup_error"),
        Reply::ok("ok"),
    ]);
    let n = slack(&r, dir.path());
    let m = message();
    let mut errors = Vec::new();
    for (retryable, text) in [
        (false, "invalid_payload"),
        (false, "no_service"),
        (false, "channel_is_archived"),
        (false, "action_prohibited"),
        (true, "rate_limited"),
        (true, "rollup_error"),
    ] {
        let e = n.send(&m).await.expect_err(text);
        assert_refused(&e, retryable, text);
        errors.push(e);
    }
    assert!(errors[1].to_string().contains("put its URL in url_file"));
    assert!(errors[2]
        .to_string()
        .contains("unarchive it or create a webhook"));
    assert_eq!(errors[4].retry_after(), Some(Duration::from_secs(30)));
    for e in &errors {
        assert!(
            !e.to_string().contains("XXXXsecretXXXX"),
            "the URL is a secret: {e}"
        );
    }
    n.send(&m).await.expect("ok");

    std::fs::remove_file(dir.path().join("slack-url")).expect("remove");
    let e = n.send(&m).await.expect_err("no url file");
    assert!(matches!(e, NotifyError::Config(_)), "{e:?}");
    assert!(e.to_string().contains("slack-url"), "{e}");
    assert_eq!(r.requests().len(), 7);
}

// ---------------------------------------------------------------------------------------------
// Telegram

const TOKEN: &str = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw";

fn telegram(r: &HttpReceiver, dir: &Path) -> Arc<dyn Notifier> {
    let token_file = write(dir, "tg-token", &format!("{TOKEN}\n"));
    notifier(
        &format!(
            "alerting:\n  notifiers:\n    - {{ name: ops-telegram, kind: telegram, bot_token_file: {}, chat_id: -100123, api_url: \"{}\" }}\n",
            token_file.display(),
            r.url("")
        ),
        "ops-telegram",
    )
}

/// What Telegram shows for an HTML text: tags removed, entities decoded.
fn shown(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
}

#[tokio::test]
async fn telegram_gets_send_message_with_escaped_html_cut_to_4096() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = HttpReceiver::with_replies(vec![Reply::ok(
        r#"{"ok":true,"result":{"message_id":1,"date":1790000000,"chat":{"id":-100123,"type":"supergroup"}}}"#,
    )]);
    let n = telegram(&r, dir.path());
    let mut m = message();
    m.summary = "disk <5% & \"low\" on <b>pi-01</b>".into();
    m.description = "é&😀<".repeat(3000);
    n.send(&m).await.expect("delivered");

    let req = only(&r);
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, format!("/bot{TOKEN}/sendMessage"));
    assert_eq!(req.header("content-type"), Some("application/json"));
    let v = req.json();
    let keys: Vec<&String> = v.as_object().expect("object").keys().collect();
    assert_eq!(keys.len(), 4, "{keys:?}");
    assert_eq!(v["chat_id"], "-100123");
    assert_eq!(v["parse_mode"], "HTML");
    assert_eq!(v["disable_web_page_preview"], true);
    let html = v["text"].as_str().expect("text");
    assert!(
        html.contains("disk &lt;5% &amp; &quot;low&quot; on &lt;b&gt;pi-01&lt;/b&gt;"),
        "{html:.300}"
    );
    // Only the tags Fleet writes, balanced.
    for tag in ["b", "code", "a"] {
        let open =
            html.matches(&format!("<{tag}>")).count() + html.matches(&format!("<{tag} ")).count();
        assert_eq!(open, html.matches(&format!("</{tag}>")).count(), "{tag}");
    }
    let text = shown(html);
    let units: usize = text.chars().map(char::len_utf16).sum();
    assert!(units <= 4096, "{units} UTF-16 units");
    assert!(text.starts_with("[FIRING critical] DeviceOffline · example-fleet"));
    assert!(text.contains("Runbook: DeviceOffline.md"), "{text:.200}");
    assert!(text.contains("Acknowledge: fleetctl alerts ack a-17"));
    assert!(text.contains('…'), "the description was cut");
}

#[tokio::test]
async fn telegram_errors_map_to_retryable_or_not_and_never_show_the_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = HttpReceiver::with_replies(vec![
        Reply::new(
            429,
            r#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 5","parameters":{"retry_after":5}}"#,
        ),
        Reply::new(
            403,
            r#"{"ok":false,"error_code":403,"description":"Forbidden: bot was kicked from the supergroup chat"}"#,
        ),
        Reply::new(
            400,
            r#"{"ok":false,"error_code":400,"description":"Bad Request: group chat was upgraded to a supergroup chat","parameters":{"migrate_to_chat_id":-1001234567890}}"#,
        ),
        Reply::new(
            401,
            r#"{"ok":false,"error_code":401,"description":"Unauthorized"}"#,
        ),
        Reply::new(502, "<html><body>Bad Gateway</body></html>"),
    ]);
    let n = telegram(&r, dir.path());
    let m = message();
    let e = n.send(&m).await.expect_err("429");
    assert_refused(&e, true, "error 429: Too Many Requests");
    assert_eq!(e.retry_after(), Some(Duration::from_secs(5)));
    assert_refused(
        &n.send(&m).await.expect_err("403"),
        false,
        "the bot cannot post to this chat",
    );
    assert_refused(
        &n.send(&m).await.expect_err("400"),
        false,
        "set chat_id to -1001234567890",
    );
    let e = n.send(&m).await.expect_err("401");
    assert_refused(&e, false, "wrong or revoked");
    let e5 = n.send(&m).await.expect_err("502");
    assert_refused(&e5, true, "HTTP 502");
    for e in [&e, &e5] {
        assert!(!e.to_string().contains(TOKEN), "{e}");
        assert!(e.to_string().contains("/bot…/sendMessage"), "{e}");
    }

    // Connection refused: reqwest would name the URL, with the token in it.
    let port = closed_port();
    let token_file = write(dir.path(), "tg-token-2", TOKEN);
    let down = notifier(
        &format!(
            "alerting:\n  notifiers:\n    - {{ name: tg, kind: telegram, bot_token_file: {}, chat_id: '@fleet_alerts', api_url: \"http://127.0.0.1:{port}\" }}\n",
            token_file.display()
        ),
        "tg",
    );
    let e = down.send(&m).await.expect_err("down");
    assert!(matches!(e, NotifyError::Unreachable { .. }), "{e:?}");
    assert!(!format!("{e} {e:?}").contains(TOKEN), "{e:?}");
}

// ---------------------------------------------------------------------------------------------
// E-mail through a real SMTP server

struct Lab {
    dir: tempfile::TempDir,
    ca: LabCa,
    cert: fleet_testkit::tls::ServerCert,
}

fn lab() -> Lab {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = LabCa::new(dir.path(), "smtp");
    let cert = ca.server_cert(dir.path(), "smtp-server");
    Lab { dir, ca, cert }
}

fn email_yaml(smtp: &str, security: &str, extra: &str) -> String {
    format!(
        "alerting:\n  notifiers:\n    - {{ name: oncall-mail, kind: email, smtp: \"{smtp}\", security: {security}, from: \"Fleet <fleet@example.com>\", to: [oncall@example.com, \"Ops <ops@example.com>\"]{extra} }}\n"
    )
}

#[tokio::test]
async fn email_is_delivered_through_starttls_with_a_login_to_a_real_smtp_server() {
    if !smtp_available("email_is_delivered_through_starttls_with_a_login_to_a_real_smtp_server") {
        return;
    }
    let lab = lab();
    let server = SmtpServer::start(
        SmtpTls::StartTls {
            cert: lab.cert.cert_file.clone(),
            key: lab.cert.key_file.clone(),
        },
        Some(("fleet", "pa55word")),
    );
    let password = write(lab.dir.path(), "smtp-password", "pa55word\n");
    let n = notifier(
        &email_yaml(
            &server.addr(),
            "starttls",
            &format!(
                ", username: fleet, password_file: {}, ca_file: {}",
                password.display(),
                lab.ca.cert_file.display()
            ),
        ),
        "oncall-mail",
    );
    assert_eq!(n.kind(), "email");
    n.send(&message()).await.expect("delivered");

    let mails = server.wait_for(1, Duration::from_secs(10));
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    assert!(
        mail.tls.as_deref().is_some_and(|v| v.starts_with("TLSv1.")),
        "sent over TLS after STARTTLS: {:?}",
        mail.tls
    );
    assert_eq!(mail.auth_user.as_deref(), Some("fleet"));
    assert_eq!(mail.mail_from, "fleet@example.com");
    assert_eq!(mail.rcpt_tos, ["oncall@example.com", "ops@example.com"]);
    assert_eq!(mail.header("From"), Some("Fleet <fleet@example.com>"));
    assert_eq!(
        mail.header("To"),
        Some("oncall@example.com, Ops <ops@example.com>")
    );
    assert_eq!(
        mail.header("Subject"),
        Some("[FIRING critical] DeviceOffline: 40 devices offline (example-fleet)")
    );
    assert_eq!(mail.header("Message-ID"), Some("<m-0001@fleet-controller>"));
    assert!(mail.header("Date").is_some());
    assert_eq!(mail.content_type, "text/plain");
    let body = &mail.body;
    assert!(body.contains("40 devices have not checked in"), "{body}");
    assert!(body.contains("Devices (40): pi-01, pi-02, pi-03"), "{body}");
    assert!(
        body.contains("Runbook:     https://git.example/fleet/runbooks/DeviceOffline.md"),
        "{body}"
    );
    assert!(
        body.contains("Acknowledge: `fleetctl alerts ack a-17`"),
        "{body}"
    );
    assert!(
        body.contains("Alert a-17 (DeviceOffline, critical)"),
        "{body}"
    );
    // aiosmtpd's own Mailbox handler stored it in its Maildir too.
    let stored = std::fs::read_dir(server.maildir().join("new"))
        .expect("maildir")
        .count();
    assert_eq!(stored, 1);

    // A wrong password: the relay refuses, and retrying will not help.
    std::fs::write(&password, "wrong").expect("write");
    let e = n.send(&message()).await.expect_err("bad login");
    assert_refused(&e, false, "535");
    assert!(e.to_string().contains("password_file"), "{e}");
    // The password file gone: a configuration error naming it.
    std::fs::remove_file(&password).expect("remove");
    let e = n.send(&message()).await.expect_err("no password");
    assert!(
        matches!(&e, NotifyError::Config(t) if t.contains("smtp-password")),
        "{e:?}"
    );
    assert_eq!(server.messages().len(), 1);
}

#[tokio::test]
async fn email_is_refused_when_the_relay_certificate_is_not_trusted_or_starttls_is_missing() {
    if !smtp_available(
        "email_is_refused_when_the_relay_certificate_is_not_trusted_or_starttls_is_missing",
    ) {
        return;
    }
    let lab = lab();
    let server = SmtpServer::start(
        SmtpTls::StartTls {
            cert: lab.cert.cert_file.clone(),
            key: lab.cert.key_file.clone(),
        },
        None,
    );
    // Another CA in ca_file.
    let other_dir = tempfile::tempdir().expect("tempdir");
    let other = LabCa::new(other_dir.path(), "other");
    let e = notifier(
        &email_yaml(
            &server.addr(),
            "starttls",
            &format!(", ca_file: {}", other.cert_file.display()),
        ),
        "oncall-mail",
    )
    .send(&message())
    .await
    .expect_err("untrusted");
    assert!(matches!(e, NotifyError::Unreachable { .. }), "{e:?}");
    assert!(e.to_string().contains("TLS failed"), "{e}");
    assert!(e.to_string().contains("ca_file"), "{e}");
    // No ca_file: the system's roots do not know the lab CA either.
    let e = notifier(&email_yaml(&server.addr(), "starttls", ""), "oncall-mail")
        .send(&message())
        .await
        .expect_err("untrusted");
    assert!(e.to_string().contains("TLS failed"), "{e}");
    assert!(server.messages().is_empty(), "nothing was delivered");

    // A relay that offers no STARTTLS: the message is not sent in clear.
    let plain = SmtpServer::start(SmtpTls::None, None);
    let e = notifier(
        &email_yaml(
            &plain.addr(),
            "starttls",
            &format!(", ca_file: {}", lab.ca.cert_file.display()),
        ),
        "oncall-mail",
    )
    .send(&message())
    .await
    .expect_err("no starttls");
    assert!(matches!(e, NotifyError::Unreachable { .. }), "{e:?}");
    assert!(plain.messages().is_empty(), "nothing in clear");

    // Nobody listening.
    let e = notifier(
        &email_yaml(&format!("127.0.0.1:{}", closed_port()), "none", ""),
        "oncall-mail",
    )
    .send(&message())
    .await
    .expect_err("down");
    assert!(matches!(e, NotifyError::Unreachable { .. }), "{e:?}");
}

#[tokio::test]
async fn email_over_implicit_tls_and_in_clear_on_loopback() {
    if !smtp_available("email_over_implicit_tls_and_in_clear_on_loopback") {
        return;
    }
    let lab = lab();
    let smtps = SmtpServer::start(
        SmtpTls::Implicit {
            cert: lab.cert.cert_file.clone(),
            key: lab.cert.key_file.clone(),
        },
        None,
    );
    notifier(
        &email_yaml(
            &smtps.addr(),
            "tls",
            &format!(", ca_file: {}", lab.ca.cert_file.display()),
        ),
        "oncall-mail",
    )
    .send(&message())
    .await
    .expect("delivered over SMTPS");
    let mails = smtps.wait_for(1, Duration::from_secs(10));
    assert_eq!(mails.len(), 1);
    assert!(mails[0].tls.is_some(), "{:?}", mails[0].tls);

    let plain = SmtpServer::start(SmtpTls::None, None);
    let mut resolved = message();
    resolved.kind = MessageKind::Resolved;
    resolved.resolved_ms = Some(resolved.started_ms + 600_000);
    notifier(&email_yaml(&plain.addr(), "none", ""), "oncall-mail")
        .send(&resolved)
        .await
        .expect("delivered in clear on loopback");
    let mails = plain.wait_for(1, Duration::from_secs(10));
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].tls, None);
    assert_eq!(
        mails[0].header("Subject"),
        Some("[RESOLVED critical] DeviceOffline: 40 devices offline (example-fleet)")
    );
    assert!(
        !mails[0].body.contains("fleetctl alerts ack"),
        "{}",
        mails[0].body
    );
}

// ---------------------------------------------------------------------------------------------
// The commands an operator runs

fn controller() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fleet-controller"))
}

#[test]
fn notifiers_test_reports_each_notifier_and_fails_when_one_is_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hook = HttpReceiver::start();
    let slack = HttpReceiver::start();
    let tg = HttpReceiver::with_replies(vec![Reply::ok(r#"{"ok":true,"result":{}}"#); 2]);
    let slack_url = write(dir.path(), "slack-url", &slack.url(SLACK_PATH));
    let tg_token = write(dir.path(), "tg-token", TOKEN);
    let with_mail = smtp_available(
        "notifiers_test_reports_each_notifier_and_fails_when_one_is_down (e-mail part)",
    );
    let smtp = with_mail.then(|| SmtpServer::start(SmtpTls::None, None));
    let mut yaml = format!(
        "alerting:\n  runbook_url_base: https://git.example/fleet/runbooks/\n  notifiers:\n\
         \x20   - {{ name: pager, kind: webhook, url: \"{}\" }}\n\
         \x20   - {{ name: oncall-slack, kind: slack, url_file: {} }}\n\
         \x20   - {{ name: ops-telegram, kind: telegram, bot_token_file: {}, chat_id: '-100123', api_url: \"{}\" }}\n",
        hook.url("/fleet"),
        slack_url.display(),
        tg_token.display(),
        tg.url("")
    );
    if let Some(s) = &smtp {
        yaml.push_str(&format!(
            "    - {{ name: oncall-mail, kind: email, smtp: \"{}\", security: none, from: fleet@example.com, to: oncall@example.com }}\n",
            s.addr()
        ));
    }
    let config = write(dir.path(), "controller.yaml", &yaml);
    let expected = if with_mail { 4 } else { 3 };

    let out = controller()
        .arg("--config")
        .arg(&config)
        .args(["notifiers", "test", "--fleet", "example-fleet"])
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), expected, "{stdout}");
    assert_eq!(lines[0], "ok      pager (webhook): delivered");
    assert_eq!(lines[1], "ok      oncall-slack (slack): delivered");
    assert_eq!(lines[2], "ok      ops-telegram (telegram): delivered");
    let body = only(&hook).json();
    assert_eq!(body["kind"], "test");
    assert_eq!(body["fleet"], "example-fleet");
    assert_eq!(
        body["runbook_url"],
        "https://git.example/fleet/runbooks/Watchdog.md"
    );
    assert_eq!(only(&slack).path, SLACK_PATH);
    assert_eq!(only(&tg).path, format!("/bot{TOKEN}/sendMessage"));
    if let Some(s) = &smtp {
        assert_eq!(lines[3], "ok      oncall-mail (email): delivered");
        let mails = s.wait_for(1, Duration::from_secs(10));
        assert_eq!(mails.len(), 1);
        assert!(mails[0]
            .header("Subject")
            .is_some_and(|v| v.starts_with("[TEST info] Watchdog: Test message")));
    }

    // The webhook's receiver goes away: the others still deliver, the run fails naming it.
    let hook_url = hook.url("/fleet");
    drop(hook);
    let out = controller()
        .arg("--config")
        .arg(&config)
        .args(["notifiers", "test"])
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), expected, "{stdout}");
    assert!(
        lines[0].starts_with(&format!("FAILED  pager (webhook): cannot reach {hook_url}")),
        "{stdout}"
    );
    assert_eq!(lines[1], "ok      oncall-slack (slack): delivered");
    assert!(
        stderr.contains(&format!("1 of {expected} notifier(s) did not deliver")),
        "{stderr}"
    );

    // One by name; a misspelt name is a usage error with a suggestion.
    let out = controller()
        .arg("--config")
        .arg(&config)
        .args(["notifiers", "test", "--name", "oncall-slack"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ok      oncall-slack (slack): delivered\n"
    );
    assert_eq!(slack.requests().len(), 3);
    let out = controller()
        .arg("--config")
        .arg(&config)
        .args(["notifiers", "test", "--name", "oncall-slak"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("did you mean `oncall-slack`?"));
}

#[test]
fn check_config_lists_every_alerting_problem_with_its_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write(
        dir.path(),
        "controller.yaml",
        "alerting:\n  notifiers:\n    - { name: pager, kind: webhook, url: \"https://p.example/\", url_file: /x }\n    - { name: mail, kind: email, smtp: \"smtp.example.com:25\", security: none, from: a@example.com, to: b@example.com }\n  routes:\n    - { severity: critical, notifiers: [pagr] }\n  evaluate_every: 0s\n",
    );
    let out = controller()
        .arg("--config")
        .arg(&config)
        .arg("check-config")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = config.display().to_string();
    for (place, what) in [
        ("3:64", "`url_file` is a key of `slack` notifiers"),
        ("4:73", "`security: none` of notifier `mail`"),
        (
            "6:41",
            "names `pagr`, which is not a notifier (did you mean `pager`?)",
        ),
        ("7:19", "`alerting.evaluate_every` must be at least 1s"),
    ] {
        assert!(
            stderr.contains(&format!("{file}:{place}: error: ")) && stderr.contains(what),
            "{place} {what} in:\n{stderr}"
        );
    }
    assert_eq!(stderr.matches(": error: ").count(), 4, "{stderr}");

    let good = write(
        dir.path(),
        "good.yaml",
        "alerting:\n  notifiers:\n    - { name: pager, kind: webhook, url: \"https://p.example/\" }\n  routes:\n    - { severity: critical, notifiers: [pager] }\n",
    );
    let out = controller()
        .arg("--config")
        .arg(&good)
        .arg("check-config")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 notifier(s), 1 alert route(s)"));
}
