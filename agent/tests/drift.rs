//! Config drift with the real `fleet-agent`, `git daemon`s and Docker engine: the device runs a
//! release whose `web` service bind-mounts a config directory of the release; the test changes
//! that config under `current` (and adds a file), then removes one container by hand and puts a
//! look-alike with another configuration in place of the other. Each time the agent finds it
//! within `watch.drift_check_every`, puts the release back (files byte for byte from the Git
//! cache, the container seeing them, containers as the release defines them), counts it in
//! `/metrics`, logs what differed, and stays healthy on the same release throughout. In
//! controller mode the same drift, found at boot and while idle, reaches the controller as
//! `drift_detected` events (a stand-in that decodes check-ins as the controller does).

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::images::{build_test_images, docker_available};
use support::lab::{idle_on, tail, AgentProc, Lab};
use support::standin;

/// Generous: the machine is shared and noisy. Timings are measured in benchmarks, not here.
const SETTLE: Duration = Duration::from_secs(90);

/// What the release's config file holds.
const CONF: &str = "greeting = hello\nport = 8080\n";

/// The lab's `web` and `side`, `web` mounting the release's `stacks/app/conf` read-only.
const COMPOSE: &str = "services:\n  web:\n    image: fleet-test/app:v1\n    restart: unless-stopped\n    stop_grace_period: 1s\n    volumes:\n      - ./conf:/conf:ro\n  side:\n    image: fleet-test/app:v1\n    restart: unless-stopped\n    stop_grace_period: 1s\n";

/// A lab agent configuration with `/metrics` on a free port, a drift check every 2 s and
/// `top_extra` (e.g. `controller:`); returns it with the metrics address.
fn drift_config(lab: &Lab, name: &str, top_extra: &str) -> (std::path::PathBuf, String) {
    let addr = format!("127.0.0.1:{}", support::git_daemon::free_port());
    let eps = [lab.primary.url("fleet.git"), lab.mirror.url("fleet.git")];
    let config = lab.config_with(
        name,
        &eps,
        &lab.data_dir(),
        &format!("{top_extra}watch:\n  interval: 1s\n  drift_check_every: 2s\n"),
    );
    support::lab::listen_metrics(&config, &addr);
    (config, addr)
}

/// The release with the bind-mounted config, pushed.
fn release(lab: &Lab) -> String {
    lab.release_with(
        "v1",
        &[
            ("stacks/app/compose.yaml", COMPOSE),
            ("stacks/app/conf/app.conf", CONF),
        ],
    )
}

/// True once `web` reads the release's config through its bind mount.
fn web_sees_release_config(lab: &Lab) -> bool {
    container_of(lab, "web").is_some_and(|(id, _)| {
        Command::new("docker")
            .args(["exec", &id, "/bin/cat", "/conf/app.conf"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout) == CONF)
    })
}

fn ready(test: &str) -> bool {
    if !support::git_daemon::git_available(test) || !docker_available(test) {
        return false;
    }
    build_test_images();
    true
}

fn metrics(addr: &str) -> String {
    support::prometheus::http_get(addr, "/metrics")
        .map(|r| r.1)
        .unwrap_or_default()
}

fn wait_metric(agent: &AgentProc, addr: &str, line: &str) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let body = metrics(addr);
        if body.lines().any(|l| l == line) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for `{line}`:\n{body}\n--- agent log ---\n{}",
            tail(&agent.log_text(), 60)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("docker");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The running container of `service`: (id, name).
fn container_of(lab: &Lab, service: &str) -> Option<(String, String)> {
    let c = lab
        .containers()
        .into_iter()
        .find(|c| c.0 == service && c.4)?;
    let name = docker(&["inspect", "-f", "{{.Name}}", &c.3]);
    Some((c.3, name.trim_start_matches('/').to_owned()))
}

fn label(id: &str, key: &str) -> String {
    docker(&[
        "inspect",
        "-f",
        &format!("{{{{index .Config.Labels \"{key}\"}}}}"),
        id,
    ])
}

fn writable(dir: &Path) {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).expect("chmod");
    for e in fs::read_dir(dir).expect("ls").flatten() {
        if e.path().is_dir() {
            writable(&e.path());
        } else {
            fs::set_permissions(e.path(), fs::Permissions::from_mode(0o644)).expect("chmod");
        }
    }
}

fn all_running(lab: &Lab) -> bool {
    let c = lab.containers();
    c.len() == 2 && c.iter().all(|c| c.4)
}

fn wait_until(agent: &AgentProc, what: &str, pred: impl Fn() -> bool) {
    let deadline = Instant::now() + SETTLE;
    while !pred() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n--- agent log ---\n{}",
            tail(&agent.log_text(), 60)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn drifted_files_and_containers_are_put_back_and_reported_on_the_same_healthy_release() {
    if !ready("drifted_files_and_containers_are_put_back_and_reported_on_the_same_healthy_release")
    {
        return;
    }
    let lab = Lab::new("drift");
    let r1 = release(&lab);
    let (config, addr) = drift_config(&lab, "drift", "");
    let agent = AgentProc::start(&config);
    let s = agent.wait_for("release 1 running", SETTLE, |s| idle_on(s, &r1));
    assert_eq!(s["last_result"]["result"], "succeeded", "{s:#}");
    wait_until(&agent, "both containers running", || all_running(&lab));
    wait_metric(
        &agent,
        &addr,
        "fleet_agent_drift_detected_total{kind=\"files\"} 0",
    );
    let (web, _) = container_of(&lab, "web").expect("web");
    assert_eq!(
        docker(&["exec", &web, "/bin/cat", "/conf/app.conf"]),
        CONF.trim()
    );

    // Files: the bind-mounted config edited under `current`, a file added beside it.
    let dir = lab.data_dir().join("releases").join(&r1);
    let conf = dir.join("stacks/app/conf/app.conf");
    writable(&dir);
    fs::write(&conf, "greeting = tampered\n").expect("tamper");
    fs::write(dir.join("stacks/app/conf/extra.conf"), "added = yes\n").expect("add");
    assert_eq!(
        docker(&["exec", &web, "/bin/cat", "/conf/app.conf"]),
        "greeting = tampered",
        "the container sees the drift"
    );
    wait_metric(
        &agent,
        &addr,
        "fleet_agent_drift_detected_total{kind=\"files\"} 1",
    );
    assert_eq!(
        fs::read(&conf).expect("read"),
        CONF.as_bytes(),
        "byte for byte"
    );
    assert!(!dir.join("stacks/app/conf/extra.conf").exists());
    let mode = fs::metadata(&conf).expect("stat").permissions().mode();
    assert_eq!(mode & 0o222, 0, "read-only again ({mode:o})");
    let log = agent.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("config drift: files under `current` differed"))
        .unwrap_or_else(|| panic!("no drift warning\n{}", tail(&log, 60)));
    assert!(
        line.contains("stacks/app/conf/app.conf") && line.contains("stacks/app/conf/extra.conf"),
        "{line}"
    );
    // The container sees the restored file (it was restarted onto the fresh copy), as itself.
    wait_until(&agent, "web to serve the restored config", || {
        web_sees_release_config(&lab)
    });
    assert_eq!(container_of(&lab, "web").map(|c| c.0), Some(web.clone()));
    let body = metrics(&addr);
    assert!(
        body.lines()
            .any(|l| l == "fleet_agent_drift_detected_total{kind=\"services\"} 0"),
        "a restart onto the restored files is not container drift:\n{body}"
    );
    assert!(
        !lab.data_dir()
            .join("releases")
            .read_dir()
            .expect("ls")
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with('.')),
        "the drifted copy is removed"
    );

    // Containers: `side` removed by hand.
    let (side, _) = container_of(&lab, "side").expect("side");
    docker(&["rm", "-f", &side]);
    wait_metric(
        &agent,
        &addr,
        "fleet_agent_drift_detected_total{kind=\"services\"} 1",
    );
    wait_until(&agent, "side re-created", || {
        container_of(&lab, "side").is_some_and(|(id, _)| id != side)
    });

    // `web` replaced by a look-alike: same name and labels, another configuration.
    let (web, name) = container_of(&lab, "web").expect("web");
    let hash = label(&web, "fleet.config-hash");
    let labels = docker(&["inspect", "-f", "{{json .Config.Labels}}", &web]);
    let labels: std::collections::BTreeMap<String, String> =
        serde_json::from_str(&labels).expect("labels");
    docker(&["rm", "-f", &web]);
    let mut run = vec![
        "run".to_owned(),
        "-d".into(),
        "--name".into(),
        name.clone(),
        "-e".into(),
        "INJECTED=1".into(),
    ];
    for (k, v) in &labels {
        let v = if k == "fleet.config-hash" {
            "hand-made"
        } else {
            v
        };
        run.extend(["--label".into(), format!("{k}={v}")]);
    }
    run.push("fleet-test/app:v1".into());
    let run: Vec<&str> = run.iter().map(String::as_str).collect();
    let impostor = docker(&run);
    wait_metric(
        &agent,
        &addr,
        "fleet_agent_drift_detected_total{kind=\"services\"} 2",
    );
    wait_until(&agent, "web put back", || {
        container_of(&lab, "web").is_some_and(|(id, _)| !impostor.starts_with(&id))
    });
    let (web, _) = container_of(&lab, "web").expect("web");
    assert_eq!(label(&web, "fleet.config-hash"), hash);
    let env = docker(&["inspect", "-f", "{{json .Config.Env}}", &web]);
    assert!(!env.contains("INJECTED"), "{env}");
    let log = agent.log_text();
    for service in ["app/side", "app/web"] {
        assert!(
            log.lines().any(
                |l| l.contains("config drift: containers differed from the release")
                    && l.contains(service)
            ),
            "no drift warning naming {service}\n{}",
            tail(&log, 60)
        );
    }

    // Containers put back are not crashes: nothing counts toward a crash loop (the gauge is
    // set at the pass after the one that put `web` back).
    for service in ["app/web", "app/side"] {
        wait_metric(
            &agent,
            &addr,
            &format!("fleet_agent_service_restarts_in_window{{service=\"{service}\"}} 0"),
        );
    }

    // Healthy on the same release throughout: no update, no rollback, no problem.
    wait_until(&agent, "both containers running", || all_running(&lab));
    let s = agent.status();
    assert!(idle_on(&s, &r1), "{s:#}");
    assert_eq!(s["last_result"]["result"], "succeeded", "{s:#}");
    assert_eq!(s["last_result"]["release"], r1.as_str(), "{s:#}");
    assert_eq!(s["safe_mode"], serde_json::Value::Null, "{s:#}");
    assert_eq!(s["problems"], serde_json::json!([]), "{s:#}");
    let body = metrics(&addr);
    for line in [
        "fleet_agent_drift_detected_total{kind=\"files\"} 1",
        "fleet_agent_problem{problem=\"drift_unrepaired\"} 0",
        "fleet_agent_crash_loops_total{action=\"rollback\"} 0",
        "fleet_agent_crash_loops_total{action=\"safe_mode\"} 0",
    ] {
        assert!(body.lines().any(|l| l == line), "missing `{line}`:\n{body}");
    }
    let updates = body
        .lines()
        .filter(|l| l.starts_with("fleet_agent_updates_total{") && !l.ends_with(" 0"))
        .collect::<Vec<_>>();
    assert_eq!(
        updates,
        ["fleet_agent_updates_total{result=\"succeeded\"} 1"],
        "{body}"
    );
}

/// The `drift_detected` events the stand-in controller received: (release, files, services).
fn drift_events(ctl: &standin::Controller) -> Vec<(String, Vec<String>, Vec<String>)> {
    use fleet_config::protocol::EventKind;
    ctl.with(|s| {
        s.events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::DriftDetected {
                    release,
                    files,
                    services,
                    ..
                } => Some((release.to_string(), files.clone(), services.clone())),
                _ => None,
            })
            .collect()
    })
}

#[test]
fn in_controller_mode_drift_found_at_boot_and_while_idle_reaches_the_controller() {
    if !ready("in_controller_mode_drift_found_at_boot_and_while_idle_reaches_the_controller") {
        return;
    }
    let lab = Lab::new("drift-ctl");
    let r1 = release(&lab);
    // Installed standalone; then the agent stops and the config is edited while it is down.
    let (first, _) = drift_config(&lab, "first", "");
    let mut agent = AgentProc::start(&first);
    agent.wait_for("release 1 running", SETTLE, |s| idle_on(s, &r1));
    wait_until(&agent, "both containers running", || all_running(&lab));
    agent.stop();
    let dir = lab.data_dir().join("releases").join(&r1);
    let conf = dir.join("stacks/app/conf/app.conf");
    writable(&dir);
    fs::write(&conf, "greeting = tampered\n").expect("tamper");

    // It starts again under a controller that holds it where it is.
    let ctl = standin::Controller::start();
    let token = lab.root.path().join("ctl-token");
    fs::write(&token, "device-token\n").expect("token");
    let (config, addr) = drift_config(
        &lab,
        "ctl",
        &format!(
            "controller:\n  url: {}\n  token_file: {}\n  long_poll: 0s\n",
            ctl.url,
            token.display()
        ),
    );
    let agent = AgentProc::start(&config);
    wait_until(&agent, "the boot's drift event at the controller", || {
        !drift_events(&ctl).is_empty()
    });
    assert_eq!(
        drift_events(&ctl),
        [(
            r1.clone(),
            vec!["stacks/app/conf/app.conf".to_owned()],
            vec![]
        )]
    );
    assert_eq!(
        fs::read(&conf).expect("read"),
        CONF.as_bytes(),
        "byte for byte"
    );
    wait_until(&agent, "web to serve the restored config", || {
        web_sees_release_config(&lab)
    });
    wait_metric(
        &agent,
        &addr,
        "fleet_agent_drift_detected_total{kind=\"files\"} 1",
    );

    // While idle (supervision every 30 s in controller mode): a container removed by hand.
    let (side, _) = container_of(&lab, "side").expect("side");
    docker(&["rm", "-f", &side]);
    wait_until(
        &agent,
        "the containers' drift event at the controller",
        || drift_events(&ctl).len() == 2,
    );
    assert_eq!(
        drift_events(&ctl)[1],
        (r1.clone(), vec![], vec!["app/side".to_owned()])
    );
    wait_metric(
        &agent,
        &addr,
        "fleet_agent_drift_detected_total{kind=\"services\"} 1",
    );
    wait_until(&agent, "both containers running", || all_running(&lab));
    let s = agent.status();
    assert!(idle_on(&s, &r1), "{s:#}");
    assert_eq!(s["safe_mode"], serde_json::Value::Null, "{s:#}");
    assert_eq!(s["problems"], serde_json::json!([]), "{s:#}");
}
