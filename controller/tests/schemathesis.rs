//! API fuzzing: schemathesis (from PyPI, installed by `scripts/schemathesis-venv`) against
//! `/api/openapi.json` of a throwaway real `fleet-controller` on loopback (SQLite in a
//! temporary directory, a fleet repository with a rollout when Git is here, a few enrolled
//! devices that checked in, a webhook secret and a metrics token). Every operation and every
//! body, positive and negative cases, with the credential each operation takes
//! (`schemathesis_hooks.py`): no 5xx, every status, media type, header and body as the
//! document declares, no request left unanswered (a request timeout, a bounded number of
//! examples, a bound on the whole run). The fuzzer's acts (revocations, stops) land on this
//! throwaway controller only.
//!
//! Without the venv the test skips loudly, unless `FLEET_REQUIRE_SCHEMATHESIS=1` (`make test`
//! and CI): then it fails. `FLEET_SCHEMATHESIS_EXAMPLES` (default 100 per operation) and
//! `FLEET_SCHEMATHESIS_SEED` (default fixed, so CI repeats) tune a run;
//! `FLEET_SCHEMATHESIS_CASSETTE=1` records every request and answer in the report directory.
//! The JSON API and the dashboard's pages are fuzzed by two schemathesis processes at once
//! (each is bound by one Python thread).

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::process::{free_addr, ControllerProcess};
use support::test_config;

/// The venv `scripts/schemathesis-venv` makes.
fn venv() -> PathBuf {
    match std::env::var_os("FLEET_SCHEMATHESIS_VENV") {
        Some(v) => PathBuf::from(v),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
            .join(".cache/fleet/schemathesis-venv"),
    }
}

/// The `schemathesis` executable, or None (skip) when it is missing and not required.
fn schemathesis() -> Option<PathBuf> {
    let exe = venv().join("bin/schemathesis");
    if exe.is_file() {
        return Some(exe);
    }
    let why = format!(
        "schemathesis is not installed at {} (run scripts/schemathesis-venv install)",
        exe.display()
    );
    if std::env::var("FLEET_REQUIRE_SCHEMATHESIS").as_deref() == Ok("1") {
        panic!("FLEET_REQUIRE_SCHEMATHESIS=1 but {why}");
    }
    eprintln!("*** SKIP schemathesis: {why}");
    None
}

/// The whole run may take this long before it counts as a hang.
const RUN_LIMIT: Duration = Duration::from_secs(900);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_answer_outside_the_document() {
    let Some(exe) = schemathesis() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let test = "schemathesis_finds_no_server_error_and_no_answer_outside_the_document";
    let git = support::git_daemon::git_available(test);
    let repo = git.then(|| support::fleet_repo::FleetRepo::new(dir.path(), 4, 1, "1h"));
    let mut cfg = test_config(
        &dir.path().join("controller"),
        &format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("fleet.db").display()
        ),
        repo.as_ref().map(|r| fleet_controller::config::GitSource {
            endpoints: vec![r.url()],
            branch: "main".into(),
            poll_interval: Duration::from_millis(500),
            failover_timeout: Duration::from_secs(5),
        }),
    );
    cfg.listen = free_addr();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir_all(&secrets).expect("secrets dir");
    std::fs::write(secrets.join("webhook"), "fuzz-webhook-secret\n").expect("secret");
    std::fs::write(secrets.join("metrics"), "fuzz-metrics-token\n").expect("token");
    cfg.webhook_secret_file = Some(secrets.join("webhook"));
    cfg.metrics_token_file = Some(secrets.join("metrics"));
    let c = ControllerProcess::start(&cfg).await;
    let http = support::client();

    // A few devices, enrolled and checked in.
    let mut devices = Vec::new();
    for id in support::fleet_repo::device_ids(4) {
        let r: serde_json::Value = http
            .post(c.url("/api/v1/enroll"))
            .bearer_auth(&c.bootstrap)
            .json(&serde_json::json!({"device_id": id, "hostname": format!("host-{id}"), "arch": "aarch64", "agent_version": "0.1.0"}))
            .send()
            .await
            .expect("enroll")
            .json()
            .await
            .expect("json");
        let token = r["token"].as_str().expect("a device token").to_owned();
        let r = http
            .post(c.url("/api/v1/checkin"))
            .bearer_auth(&token)
            .json(&serde_json::json!({"device_id": id, "agent_version": "0.1.0", "current": null, "previous": null, "phase": "idle", "health": "healthy", "last_result": null}))
            .send()
            .await
            .expect("checkin");
        assert!(r.status().is_success(), "check-in of {id}: {}", r.status());
        devices.push((id, token));
    }
    let mut rollout = String::from("no-rollout");
    if let Some(repo) = &repo {
        repo.release("v1");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = support::viewer_get(&c, "/api/v1/status").await;
            if let Some(id) = s["active_rollouts"][0]["id"].as_str() {
                rollout = id.to_owned();
                break;
            }
            assert!(Instant::now() < deadline, "no rollout started: {s}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let tokens = http
        .get(c.url("/api/v1/bootstrap-tokens"))
        .bearer_auth(&c.operator)
        .send()
        .await
        .expect("bootstrap tokens")
        .json::<serde_json::Value>()
        .await
        .expect("json");
    let bootstrap_id = tokens[0]["id"]
        .as_str()
        .expect("a bootstrap token id")
        .to_owned();
    // An operator's dashboard session and its CSRF token.
    let session =
        support::dashboard::session_cookie(&c.base, "operator", &c.operator_password).await;
    let page = http
        .get(c.url("/"))
        .header("cookie", &session)
        .send()
        .await
        .expect("overview")
        .text()
        .await
        .expect("page");
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("the operator's page carries a CSRF token")
        .to_owned();
    let session_value = session
        .strip_prefix("fleet_session=")
        .expect("a fleet_session cookie")
        .to_owned();

    let examples = std::env::var("FLEET_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "100".into());
    let seed = std::env::var("FLEET_SCHEMATHESIS_SEED").unwrap_or_else(|_| "1313".into());
    let artifacts = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("schemathesis");
    std::fs::create_dir_all(&artifacts).expect("artifacts dir");
    eprintln!(
        "schemathesis: {} examples per operation, seed {seed} (FLEET_SCHEMATHESIS_SEED=… to change); report in {}",
        examples,
        artifacts.display()
    );
    // Schemathesis is bound by one Python thread: the JSON API and the dashboard's pages go to
    // two processes at once, one per core. FLEET_SCHEMATHESIS_CASSETTE=1 also records every
    // request and answer (slower).
    let parts: [(&str, [&str; 2]); 2] = [
        ("api", ["--include-path-regex", "^/api/"]),
        ("pages", ["--exclude-path-regex", "^/api/"]),
    ];
    let command = |name: &str, filter: [&str; 2]| {
        let mut cmd = Command::new(&exe);
        cmd.arg("run")
            .arg(c.url("/api/openapi.json"))
            .args(["--experimental", "openapi-3.1"])
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance",
            ])
            .args(["--data-generation-method", "all"])
            .args(["--hypothesis-max-examples", &examples])
            .args(["--hypothesis-seed", &seed])
            .args(["--hypothesis-database", "none"])
            .args(["--hypothesis-deadline", "300000"])
            .args(["--hypothesis-suppress-health-check", "all"])
            .args(["--request-timeout", "20000"])
            .args(["--workers", "2"])
            .args(["--generation-allow-x00", "true"])
            .arg("--experimental-no-failfast")
            .arg("--show-trace")
            .args(["--code-sample-style", "curl"])
            .args(["--sanitize-output", "false"])
            .arg("--junit-xml")
            .arg(artifacts.join(format!("junit-{name}.xml")))
            .args(["--schemathesis-io-telemetry", "false"])
            .current_dir(&artifacts)
            .args(filter)
            .env("SCHEMATHESIS_TELEMETRY", "false")
            .env("SCHEMATHESIS_HOOKS", "schemathesis_hooks")
            .env("PYTHONPATH", concat!(env!("CARGO_MANIFEST_DIR"), "/tests"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env("FLEET_FUZZ_OPERATOR", &c.operator)
            .env("FLEET_FUZZ_ADMIN", &c.admin)
            .env("FLEET_FUZZ_BOOTSTRAP", &c.bootstrap)
            .env("FLEET_FUZZ_DEVICE_ID", &devices[0].0)
            .env("FLEET_FUZZ_DEVICE_TOKEN", &devices[0].1)
            .env(
                "FLEET_FUZZ_DEVICE_IDS",
                devices[1..].iter().map(|d| d.0.as_str()).collect::<Vec<_>>().join(","),
            )
            .env("FLEET_FUZZ_ROLLOUT", &rollout)
            .env("FLEET_FUZZ_BOOTSTRAP_ID", &bootstrap_id)
            .env("FLEET_FUZZ_METRICS", "fuzz-metrics-token")
            .env("FLEET_FUZZ_SESSION", &session_value)
            .env("FLEET_FUZZ_CSRF", &csrf)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if std::env::var_os("FLEET_SCHEMATHESIS_CASSETTE").is_some() {
            cmd.arg("--cassette-path")
                .arg(artifacts.join(format!("cassette-{name}.yaml")));
        }
        // Only loopback is ever asked: no proxy from the environment.
        for var in [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "http_proxy",
            "https_proxy",
            "all_proxy",
        ] {
            cmd.env_remove(var);
        }
        cmd
    };
    let started = Instant::now();
    let mut running = Vec::new();
    for (name, filter) in parts {
        let child = command(name, filter).spawn().expect("start schemathesis");
        running.push((name, child.id(), child));
    }
    let pids: Vec<u32> = running.iter().map(|r| r.1).collect();
    let waited = tokio::time::timeout(
        RUN_LIMIT,
        tokio::task::spawn_blocking(move || {
            running
                .into_iter()
                .map(|(name, _, child)| (name, child.wait_with_output()))
                .collect::<Vec<_>>()
        }),
    )
    .await;
    let outputs = match waited {
        Ok(joined) => joined.expect("join"),
        Err(_) => {
            for pid in pids {
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            }
            panic!("schemathesis did not finish within {RUN_LIMIT:?}: something hangs");
        }
    };
    eprintln!("schemathesis took {:.0} s", started.elapsed().as_secs_f64());
    let mut passed = 0usize;
    let mut summaries = Vec::new();
    for (name, out) in outputs {
        let out = out.expect("schemathesis output");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        std::fs::write(
            artifacts.join(format!("output-{name}.txt")),
            format!("{stdout}\n{stderr}"),
        )
        .ok();
        let tail: String = {
            let lines: Vec<&str> = stdout.lines().collect();
            lines[lines.len().saturating_sub(400)..].join("\n")
        };
        assert!(
            out.status.success(),
            "schemathesis ({name}) found problems ({}):\n{tail}\n{stderr}\ncontroller log:\n{}",
            out.status,
            c.log()
                .lines()
                .filter(|l| l.contains("ERROR") || l.contains("panicked"))
                .take(50)
                .collect::<Vec<_>>()
                .join("\n")
        );
        let summary = stdout
            .lines()
            .rev()
            .find(|l| l.contains(" passed"))
            .unwrap_or_default()
            .to_owned();
        passed += summary
            .split_whitespace()
            .zip(summary.split_whitespace().skip(1))
            .find(|(_, w)| w.starts_with("passed"))
            .and_then(|(n, _)| n.parse::<usize>().ok())
            .unwrap_or(0);
        summaries.push(format!("{name}: {summary}"));
    }
    // It did test every operation of the document.
    let operations = fleet_controller::routes::table().len();
    assert_eq!(
        passed, operations,
        "schemathesis should have tested each of the {operations} operations: {summaries:?}"
    );
    // And the controller lived through it, with no panic in its log.
    let r = http
        .get(c.url("/healthz"))
        .send()
        .await
        .expect("healthz after fuzzing");
    assert!(
        r.status().is_success(),
        "/healthz after fuzzing: {}",
        r.status()
    );
    let log = c.log();
    assert!(!log.contains("panicked"), "the controller panicked:\n{log}");
}
