//! HTTPS with a lab CA made on the fly: clients that trust it talk to the controller, clients
//! that do not are refused with a message saying the certificate does not verify, cookies are
//! `Secure`, a browser logs in over HTTPS, a renewed certificate is served after SIGHUP, and
//! plain HTTP off loopback is refused unless asked for.

mod support;

use std::path::Path;
use std::time::Duration;

use fleet_client::api::{resolve, Api, CtlError};
use fleet_controller::config::TlsFiles;
use fleet_testkit::tls::{LabCa, ServerCert};
use reqwest::StatusCode;
use support::{test_config, TestController};

fn trusting(ca: Option<&Path>) -> reqwest::Client {
    fleet_client::tls::trust(
        reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none()),
        ca,
    )
    .expect("trust")
    .build()
    .expect("client")
}

async fn start_tls(dir: &Path, cert: &ServerCert) -> TestController {
    let url = format!("sqlite://{}?mode=rwc", dir.join("fleet.db").display());
    let mut cfg = test_config(dir, &url, None);
    cfg.tls = Some(TlsFiles {
        cert_file: cert.cert_file.clone(),
        key_file: cert.key_file.clone(),
    });
    TestController::start(cfg).await
}

#[tokio::test]
async fn clients_that_trust_the_ca_talk_https_and_others_are_told_why_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = LabCa::new(dir.path(), "fleet");
    let cert = ca.server_cert(dir.path(), "controller");
    let other = LabCa::new(dir.path(), "other");
    let c = start_tls(dir.path(), &cert).await;
    assert!(c.base.starts_with("https://127.0.0.1:"), "{}", c.base);

    let r = trusting(Some(&ca.cert_file))
        .get(c.url("/healthz"))
        .send()
        .await
        .expect("https with the lab CA");
    assert_eq!(r.status(), StatusCode::OK);

    // Trusting another CA (or only the system's roots): refused, and the message says so.
    for ca_file in [Some(other.cert_file.as_path()), None] {
        let e = trusting(ca_file)
            .get(c.url("/healthz"))
            .send()
            .await
            .expect_err("an untrusted certificate");
        let text = fleet_client::tls::describe(&e);
        assert!(
            text.contains("certificate") && text.contains("--ca-file"),
            "{text}"
        );
    }
    // Plain HTTP on the HTTPS port gets no answer.
    let plain = c.base.replacen("https://", "http://", 1);
    let r = reqwest::Client::new()
        .get(format!("{plain}/healthz"))
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    assert!(r.is_err() || !r.expect("r").status().is_success());

    // fleetctl's client: with --ca-file it works, without it says the certificate is the problem.
    let api = Api::new(
        resolve(
            Some(c.base.clone()),
            Some(c.viewer.clone()),
            Some(ca.cert_file.clone()),
            Some(&dir.path().join("no-config.yaml")),
        )
        .expect("target"),
    )
    .expect("api");
    let status = api.get("/api/v1/status").await.expect("status over https");
    assert_eq!(status["leader"], true);
    let api = Api::new(
        resolve(
            Some(c.base.clone()),
            Some(c.viewer.clone()),
            Some(other.cert_file.clone()),
            Some(&dir.path().join("no-config.yaml")),
        )
        .expect("target"),
    )
    .expect("api");
    match api.get("/api/v1/status").await {
        Err(CtlError::Unreachable { reason, .. }) => {
            assert!(reason.contains("does not verify"), "{reason}")
        }
        other => panic!("expected a refusal: {other:?}"),
    }

    // Cookies are Secure under TLS.
    let http = trusting(Some(&ca.cert_file));
    let (csrf, login_cookie) = support::dashboard::login_form(&http, &c.base).await;
    assert!(login_cookie.starts_with("fleet_login="));
    let r = http
        .post(c.url("/login"))
        .header("cookie", login_cookie)
        .form(&[
            ("name", "viewer"),
            ("password", "a long test password"),
            ("csrf", &csrf),
        ])
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let set: Vec<String> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect();
    let session = set
        .iter()
        .find(|c| c.starts_with("fleet_session="))
        .expect("a session cookie");
    assert!(session.contains("; Secure"), "{session}");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_logs_in_over_https() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = LabCa::new(dir.path(), "fleet");
    let cert = ca.server_cert(dir.path(), "controller");
    let c = start_tls(dir.path(), &cert).await;
    // Chromium trusts exactly the lab certificate's key (no system trust store is touched).
    let Some(b) = support::browser::Browser::start_with(
        "a_browser_logs_in_over_https",
        &[format!(
            "--ignore-certificate-errors-spki-list={}",
            cert.spki_sha256_base64
        )],
    )
    .await
    else {
        return;
    };
    b.client.goto(&c.url("/login")).await.expect("goto");
    b.type_into("#name", "operator").await;
    b.type_into("#password", "a long test password").await;
    b.click("#login-submit").await;
    b.wait_text(
        "header .who",
        Duration::from_secs(20),
        "the logged-in user",
        |t| t.contains("operator (operator)"),
    )
    .await;
    let url = b.client.current_url().await.expect("url");
    assert_eq!(url.scheme(), "https");
    let cookies = b.client.get_all_cookies().await.expect("cookies");
    let session = cookies
        .iter()
        .find(|k| k.name() == "fleet_session")
        .expect("a session cookie");
    assert_eq!(session.secure(), Some(true));
    b.screenshot("logged-in-over-https").await;
    b.close().await;
    c.stop().await;
}

#[tokio::test]
async fn a_renewed_certificate_is_served_after_sighup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old_ca = LabCa::new(dir.path(), "old");
    let new_ca = LabCa::new(dir.path(), "new");
    let cert = old_ca.server_cert(dir.path(), "controller");
    let listen = support::process::free_addr();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("data");
    let config = dir.path().join("controller.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: \"{listen}\"\ndata_dir: \"{}\"\ntls:\n  cert_file: \"{}\"\n  key_file: \"{}\"\n",
            data.display(),
            cert.cert_file.display(),
            cert.key_file.display()
        ),
    )
    .expect("config");
    let log = std::fs::File::create(dir.path().join("controller.log")).expect("log");
    let mut child = std::process::Command::new(support::controller_bin())
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .stderr(log)
        .spawn()
        .expect("spawn");
    let url = format!("https://{listen}/healthz");
    let answers = |ca: &Path| {
        let client = trusting(Some(ca));
        let url = url.clone();
        async move { client.get(&url).send().await.map(|r| r.status()) }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while answers(&old_ca.cert_file).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "no HTTPS answer");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answers(&new_ca.cert_file).await.is_err());

    // A broken file first: the old certificate stays.
    std::fs::write(&cert.cert_file, "not a certificate").expect("write");
    let pid = child.id().to_string();
    let hup = |pid: &str| {
        let ok = std::process::Command::new("kill")
            .args(["-HUP", pid])
            .status()
            .expect("kill")
            .success();
        assert!(ok);
    };
    hup(&pid);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(answers(&old_ca.cert_file).await.ok(), Some(StatusCode::OK));

    // The renewed certificate (another CA, for the test to tell them apart).
    let renewed = new_ca.server_cert(dir.path(), "renewed");
    std::fs::copy(&renewed.cert_file, &cert.cert_file).expect("copy cert");
    std::fs::copy(&renewed.key_file, &cert.key_file).expect("copy key");
    hup(&pid);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while answers(&new_ca.cert_file).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the renewed certificate is not served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        answers(&old_ca.cert_file).await.is_err(),
        "the old one is gone"
    );
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(dir.path().join("controller.log")).unwrap_or_default();
    assert!(log.contains("still serving the previous one"), "{log}");
    assert!(log.contains("TLS certificate reloaded"), "{log}");
}

#[tokio::test]
async fn plain_http_off_loopback_needs_insecure_http() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("fleet.db").display()
    );
    let mut cfg = test_config(dir.path(), &url, None);
    cfg.listen = "0.0.0.0:0".parse().expect("addr");
    let err = match fleet_controller::server::prepare(cfg.clone()).await {
        Ok(_) => panic!("plain HTTP on every address"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("not a loopback") && err.contains("insecure_http"),
        "{err}"
    );
    cfg.insecure_http = true;
    assert!(fleet_controller::server::prepare(cfg).await.is_ok());
    let e = fleet_controller::config::ControllerConfig::parse("listen: 0.0.0.0:8443\n", "c.yaml")
        .expect_err("refused");
    assert!(e.to_string().contains("c.yaml:1:9"), "{e}");
    assert!(fleet_controller::config::ControllerConfig::parse(
        "listen: 0.0.0.0:8443\ninsecure_http: true\n",
        "c.yaml"
    )
    .is_ok());
}
