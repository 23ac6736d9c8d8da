//! E-mail over SMTP (lettre, on Tokio): STARTTLS by default (the upgrade must succeed), or
//! implicit TLS (SMTPS), or, to a relay on loopback only, none. The relay's certificate is
//! checked against the system's roots, or only against the CA of `ca_file`. The subject is the
//! headline (`[FIRING critical] DeviceOffline: 40 devices offline (example-fleet)`); the body
//! is plain text with the summary, description, devices, runbook, alert id and how to
//! acknowledge. The `Message-ID` derives from the message's id, so a retried message is the
//! same message to the recipient's mail system.

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use super::config::{EmailConfig, SmtpSecurity};
use super::http::{read_secret, USER_AGENT};
use super::text::{self, StepForm};
use super::{BoxFuture, Message, Notifier, NotifyError};

/// Longest subject; the headline is cut past it.
pub const SUBJECT_MAX: usize = 200;

/// The subject of `message`.
pub fn subject(message: &Message) -> String {
    text::truncate_chars(&text::headline(message), SUBJECT_MAX)
}

/// The plain-text body of `message`.
pub fn body(message: &Message) -> String {
    let m = message;
    let mut out = String::new();
    out.push_str(&text::headline(m));
    out.push_str("\n\n");
    out.push_str(&text::status_sentence(m));
    out.push_str("\n\n");
    if !m.description.trim().is_empty() {
        out.push_str(m.description.trim());
        out.push_str("\n\n");
    }
    if let Some(list) = text::devices_list(m, "") {
        out.push_str(&format!("{}: {list}\n\n", text::devices_heading(m)));
    }
    out.push_str("What to do next\n");
    for step in text::next_steps(m) {
        let value = match step.form {
            StepForm::Link | StepForm::Text => step.value,
            StepForm::Command => format!("`{}`", step.value),
        };
        out.push_str(&format!("  {:<13}{value}\n", format!("{}:", step.label)));
    }
    out.push('\n');
    let since = match m.resolved_ms {
        Some(ms) => format!(
            "fired {}, resolved {}",
            crate::timefmt::utc(m.started_ms),
            crate::timefmt::utc(ms)
        ),
        None => format!("since {}", crate::timefmt::utc(m.started_ms)),
    };
    out.push_str(&format!(
        "Alert {} ({}, {}), {since}\nFleet: {}\nMessage: {}\n\n-- \nSent by {USER_AGENT}\n",
        m.alert_id, m.alert, m.severity, m.fleet, m.id
    ));
    out
}

/// The `Message-ID` of `message`: `<ID@fleet-controller>`, the id reduced to what an RFC 5322
/// msg-id may hold.
pub fn message_id(message: &Message) -> String {
    let id: String = message
        .id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("<{id}@fleet-controller>")
}

/// A configured e-mail notifier.
pub struct EmailNotifier {
    name: String,
    config: EmailConfig,
    timeout: Duration,
    receiver: String,
}

impl EmailNotifier {
    /// An e-mail notifier named `name`.
    pub fn new(name: &str, config: EmailConfig, timeout: Duration) -> EmailNotifier {
        let receiver = format!("SMTP relay {} ({})", config.smtp, config.security.as_str());
        EmailNotifier {
            name: name.to_owned(),
            config,
            timeout,
            receiver,
        }
    }

    fn config_error(&self, what: String) -> NotifyError {
        NotifyError::Config(format!("notifier `{}`: {what}", self.name))
    }

    /// The TLS settings: the system's roots, or only the CA of `ca_file` (read now).
    async fn tls_parameters(&self) -> Result<TlsParameters, NotifyError> {
        let host = self.config.smtp.host.clone();
        let builder = TlsParameters::builder(host);
        let builder = match &self.config.ca_file {
            None => builder,
            Some(file) => {
                let pem = tokio::fs::read(file).await.map_err(|e| {
                    self.config_error(format!("cannot read `ca_file` {}: {e}", file.display()))
                })?;
                use rustls_pki_types::pem::PemObject;
                let has_cert = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
                    .next()
                    .is_some_and(|c| c.is_ok());
                let cert = Certificate::from_pem(&pem)
                    .ok()
                    .filter(|_| has_cert)
                    .ok_or_else(|| {
                        self.config_error(format!(
                            "`ca_file` {} holds no PEM certificate",
                            file.display()
                        ))
                    })?;
                builder
                    .certificate_store(CertificateStore::None)
                    .add_root_certificate(cert)
            }
        };
        builder
            .build_rustls()
            .map_err(|e| self.config_error(format!("TLS settings: {e}")))
    }

    async fn deliver(&self, message: &Message) -> Result<(), NotifyError> {
        let c = &self.config;
        let mut builder =
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(c.smtp.host.clone())
                .port(c.smtp.port)
                .timeout(Some(self.timeout));
        builder = match c.security {
            SmtpSecurity::StartTls => builder.tls(Tls::Required(self.tls_parameters().await?)),
            SmtpSecurity::Tls => builder.tls(Tls::Wrapper(self.tls_parameters().await?)),
            SmtpSecurity::None => builder.tls(Tls::None),
        };
        if let (Some(user), Some(file)) = (&c.username, &c.password_file) {
            let password = read_secret(file, "password_file", &self.name).await?;
            builder = builder.credentials(Credentials::new(user.clone(), password));
        }
        let transport = builder.build();
        let mut email = lettre::Message::builder()
            .from(c.from.clone())
            .subject(subject(message))
            .message_id(Some(message_id(message)))
            .header(ContentType::TEXT_PLAIN);
        for to in &c.to {
            email = email.to(to.clone());
        }
        let email = email
            .body(body(message))
            .map_err(|e| self.config_error(format!("cannot build the e-mail: {e}")))?;
        let sent = tokio::time::timeout(self.timeout, transport.send(email)).await;
        match sent {
            Err(_) => Err(NotifyError::Unreachable {
                receiver: self.receiver.clone(),
                detail: format!(
                    "no answer within {} (the notifier's `timeout`)",
                    fleet_config::units::format_duration(self.timeout)
                ),
            }),
            Ok(Err(e)) => Err(self.map_error(&e)),
            Ok(Ok(response)) => {
                tracing::debug!(notifier = %self.name, code = %response.code(), "e-mail accepted by the relay");
                Ok(())
            }
        }
    }

    fn map_error(&self, e: &lettre::transport::smtp::Error) -> NotifyError {
        if e.is_permanent() || e.is_transient() {
            let mut detail = chain(e);
            if e.status().is_some_and(|c| c.to_string().starts_with("53")) {
                detail.push_str(
                    " — the relay refused the login: check `username` and `password_file`",
                );
            }
            return NotifyError::Refused {
                receiver: self.receiver.clone(),
                detail,
                retryable: e.is_transient(),
                retry_after: None,
            };
        }
        let detail = if let Some(tls) = tls_error(e) {
            format!(
                "TLS failed ({tls}){}",
                if self.config.ca_file.is_some() {
                    " — is the relay's certificate signed by the CA of `ca_file`, for this host name?"
                } else {
                    " — is the relay's certificate trusted by this system, for this host name? (`ca_file` trusts a private CA)"
                }
            )
        } else if e.is_timeout() {
            format!("no answer in time ({})", chain(e))
        } else {
            chain(e)
        };
        NotifyError::Unreachable {
            receiver: self.receiver.clone(),
            detail,
        }
    }
}

/// The TLS library's complaint (an untrusted certificate, a failed handshake) behind `e`, if
/// that is what went wrong: lettre reports a handshake failure as a connection error.
fn tls_error(e: &lettre::transport::smtp::Error) -> Option<String> {
    use tokio_rustls::rustls;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r.to_string());
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(r) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return Some(r.to_string());
            }
        }
        cur = err.source();
    }
    e.is_tls().then(|| chain(e))
}

/// An error and its causes on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        cur = s.source();
    }
    out
}

impl Notifier for EmailNotifier {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "email"
    }

    fn send<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Result<(), NotifyError>> {
        Box::pin(self.deliver(message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::text::tests::offline_message;
    use crate::notify::MessageKind;

    #[test]
    fn subject_and_body_say_what_and_what_next() {
        let m = offline_message();
        assert_eq!(
            subject(&m),
            "[FIRING critical] DeviceOffline: 40 devices offline (example-fleet)"
        );
        let b = body(&m);
        assert!(
            b.contains("40 devices have not checked in for 3 minutes."),
            "{b}"
        );
        assert!(b.contains("Devices (40): pi-01, pi-02"), "{b}");
        assert!(b.contains("and 20 more"), "{b}");
        assert!(
            b.contains("  Runbook:     https://git.example/fleet/runbooks/DeviceOffline.md\n"),
            "{b}"
        );
        assert!(
            b.contains("  Acknowledge: `fleetctl alerts ack a-17`\n"),
            "{b}"
        );
        assert!(
            b.contains("Alert a-17 (DeviceOffline, critical), since "),
            "{b}"
        );
        let mut r = m.clone();
        r.kind = MessageKind::Resolved;
        r.resolved_ms = Some(m.started_ms + 60_000);
        let b = body(&r);
        assert!(!b.contains("fleetctl alerts ack"), "{b}");
        assert!(b.contains("Resolved at "), "{b}");
    }

    #[test]
    fn the_message_id_is_stable_and_well_formed() {
        let mut m = offline_message();
        m.id = "a b@c".into();
        assert_eq!(message_id(&m), "<a-b-c@fleet-controller>");
    }
}
