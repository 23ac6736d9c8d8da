//! The Docker runtime against the real engine: apply, release-to-release reconcile, health
//! (exit, Docker healthcheck, HTTP probe), stop grace periods, secrets and cleanup.
//!
//! Every test works in its own label namespace and removes it when it ends (a drop guard);
//! without a reachable engine each test prints a SKIP line, or fails with
//! `FLEET_REQUIRE_DOCKER=1`.

use fleet_testkit::{docker_guard, images};

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use docker_guard::NamespaceGuard;
use fleet_config::compose::{ComposeFile, ImageRef};
use fleet_config::protocol::HealthState;
use fleet_docker::{DockerError, Namespace, Runtime, RuntimeOptions, ServiceChange, StackHealth};

const FLEET: &str = "name: t\nrollout:\n  waves:\n    - { name: canary, select: { ring: canary } }\n    - { name: all, percent: 100 }\n";

/// A release checkout on disk with one stack, and its decoded compose file.
struct Release {
    dir: tempfile::TempDir,
    compose: ComposeFile,
}

impl Release {
    fn path(&self) -> &Path {
        self.dir.path()
    }
}

fn release(stack: &str, compose: &str, files: &[(&str, &str)]) -> Release {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let stack_dir = dir.path().join("stacks").join(stack);
    std::fs::create_dir_all(&stack_dir).unwrap_or_else(|e| panic!("mkdir: {e}"));
    let devices = format!(
        "devices:\n  - id: d1\n    labels: {{ ring: canary }}\nstacks:\n  - name: {stack}\n    select: {{}}\n"
    );
    let write = |p: &Path, c: &str| {
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("mkdir: {e}"));
        }
        std::fs::write(p, c).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    };
    write(&dir.path().join("fleet.yaml"), FLEET);
    write(&dir.path().join("devices.yaml"), &devices);
    write(&stack_dir.join("compose.yaml"), compose);
    for (p, c) in files {
        write(&stack_dir.join(p), c);
    }
    let v = fleet_config::validate_dir(dir.path()).unwrap_or_else(|e| panic!("read repo: {e}"));
    let Some(mut repo) = v.repo else {
        let errs: Vec<String> = v
            .diagnostics
            .sorted()
            .iter()
            .map(|d| d.to_string())
            .collect();
        panic!("test compose file does not validate:\n{}", errs.join("\n"));
    };
    let compose = repo
        .stacks
        .remove(stack)
        .unwrap_or_else(|| panic!("stack {stack} missing"));
    Release { dir, compose }
}

/// Everything a test needs: the namespace guard (dropped last) and a runtime.
struct Env {
    rt: Runtime,
    guard: NamespaceGuard,
}

async fn env(test: &str) -> Option<Env> {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    if !images::docker_available(test) {
        return None;
    }
    images::build_test_images();
    let guard = NamespaceGuard::new(test);
    let ns = Namespace::new(guard.name.clone()).unwrap_or_else(|e| panic!("{e}"));
    let rt = Runtime::connect(ns)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"))
        .with_options(RuntimeOptions {
            dependency_timeout: Duration::from_secs(30),
            dependency_poll: Duration::from_millis(200),
            probe_start_grace: Duration::from_secs(1),
            startup_timeout: Duration::from_secs(30),
            pull_stall: Duration::from_secs(5),
        });
    Some(Env { rt, guard })
}

fn secrets(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// `docker inspect` of one container as JSON.
fn inspect(id: &str) -> serde_json::Value {
    let out = Command::new("docker")
        .args(["inspect", id])
        .output()
        .unwrap_or_else(|e| panic!("docker inspect: {e}"));
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("inspect json: {e}"));
    v.get(0).cloned().unwrap_or(serde_json::Value::Null)
}

fn labels(id: &str) -> HashMap<String, String> {
    serde_json::from_value(inspect(id)["Config"]["Labels"].clone()).unwrap_or_default()
}

fn is_running(id: &str) -> bool {
    inspect(id)["State"]["Running"].as_bool() == Some(true)
}

fn id_of(report: &fleet_docker::ApplyReport, service: &str) -> String {
    report
        .services
        .get(service)
        .map(|c| c.container_id().to_owned())
        .unwrap_or_else(|| panic!("no service {service} in {report:?}"))
}

async fn watch(e: &Env, stack: &str, rel: &Release, window_secs: u64) -> (StackHealth, Duration) {
    let t = Instant::now();
    let h =
        e.rt.watch_health(
            stack,
            &rel.compose,
            Duration::from_secs(window_secs),
            Duration::from_secs(1),
        )
        .await
        .unwrap_or_else(|e| panic!("watch_health: {e}"));
    (h, t.elapsed())
}

const TWO_SERVICES: &str = r#"
services:
  api:
    image: fleet-test/app:v1
    environment:
      GREETING: "hello ${WHO}"
      DB_PASSWORD: ${DB_PASSWORD}
    env_file: ./app.env
    volumes:
      - ./conf:/conf:ro
      - data:/data
    ports:
      - "127.0.0.1::8080"
    x-fleet:
      health:
        http: { port: 8080, path: /healthz }
  web:
    image: fleet-test/app:WEB_TAG
    depends_on:
      api: { condition: service_healthy }
    networks: [default, back]
volumes:
  data: {}
networks:
  back: {}
"#;

fn two_services(web_tag: &str) -> Release {
    release(
        "shop",
        &TWO_SERVICES.replace("WEB_TAG", web_tag),
        &[("app.env", "FROM_FILE=yes\n"), ("conf/app.conf", "x=1\n")],
    )
}

fn shop_secrets() -> BTreeMap<String, String> {
    secrets(&[("WHO", "fleet"), ("DB_PASSWORD", "s3cret")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_runs_the_stack_with_the_fleet_labels() {
    let Some(e) = env("apply_runs_the_stack_with_the_fleet_labels").await else {
        return;
    };
    let rel = two_services("v1");
    let report =
        e.rt.apply("shop", &rel.compose, rel.path(), "r1", &shop_secrets())
            .await
            .unwrap_or_else(|e| panic!("apply: {e}"));
    for service in ["api", "web"] {
        let id = id_of(&report, service);
        assert!(matches!(
            report.services[service],
            ServiceChange::Created { .. }
        ));
        assert!(is_running(&id), "{service} must be running");
        let l = labels(&id);
        assert_eq!(l.get("fleet.namespace"), Some(&e.guard.name));
        assert_eq!(l.get("fleet.stack").map(String::as_str), Some("shop"));
        assert_eq!(l.get("fleet.service").map(String::as_str), Some(service));
        assert_eq!(l.get("fleet.release").map(String::as_str), Some("r1"));
        let hash = l.get("fleet.config-hash").cloned().unwrap_or_default();
        assert_eq!(hash.len(), 64, "config hash is sha256 hex: {hash}");
    }
    let api = inspect(&id_of(&report, "api"));
    let env: Vec<String> = serde_json::from_value(api["Config"]["Env"].clone()).unwrap_or_default();
    for want in [
        "GREETING=hello fleet",
        "DB_PASSWORD=s3cret",
        "FROM_FILE=yes",
    ] {
        assert!(env.iter().any(|v| v == want), "{want} in {env:?}");
    }
    assert_eq!(
        api["Name"].as_str(),
        Some(format!("/{}-shop-api", e.guard.name).as_str())
    );
    // The web service joined both of its networks.
    let web = inspect(&id_of(&report, "web"));
    let nets = web["NetworkSettings"]["Networks"]
        .as_object()
        .map(|m| m.keys().cloned().collect::<Vec<_>>())
        .unwrap_or_default();
    assert_eq!(nets.len(), 2, "web networks: {nets:?}");

    let (h, _) = watch(&e, "shop", &rel, 3).await;
    assert_eq!(h.state, HealthState::Healthy, "{:?}", h.reason());
    let probe = h.services["api"].probe.as_ref().map(|p| p.ok);
    assert_eq!(probe, Some(true), "api's HTTP probe");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_release_keeps_unchanged_services_and_replaces_changed_ones() {
    let Some(e) = env("a_new_release_keeps_unchanged_services").await else {
        return;
    };
    let r1 = two_services("v1");
    let first =
        e.rt.apply("shop", &r1.compose, r1.path(), "r1", &shop_secrets())
            .await
            .unwrap_or_else(|e| panic!("apply r1: {e}"));

    // r2: web moves to v2, api is byte-for-byte the same (in a different release directory).
    let r2 = two_services("v2");
    let second =
        e.rt.apply("shop", &r2.compose, r2.path(), "r2", &shop_secrets())
            .await
            .unwrap_or_else(|e| panic!("apply r2: {e}"));
    assert_eq!(
        second.services["api"],
        ServiceChange::Kept {
            container_id: id_of(&first, "api")
        }
    );
    assert!(is_running(&id_of(&second, "api")));
    assert_eq!(
        labels(&id_of(&second, "api"))
            .get("fleet.release")
            .map(String::as_str),
        Some("r1"),
        "a kept container keeps the release that created it"
    );
    match &second.services["web"] {
        ServiceChange::Replaced {
            old_container_id,
            container_id,
        } => {
            assert_eq!(*old_container_id, id_of(&first, "web"));
            assert_ne!(container_id, old_container_id);
            assert!(is_running(container_id));
            assert_eq!(
                inspect(old_container_id),
                serde_json::Value::Null,
                "old web removed"
            );
            assert_eq!(
                labels(container_id)
                    .get("fleet.release")
                    .map(String::as_str),
                Some("r2")
            );
        }
        other => panic!("web must be replaced, got {other:?}"),
    }
    let in_use =
        e.rt.releases_in_use()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(in_use.into_iter().collect::<Vec<_>>(), ["r1", "r2"]);

    // r3: web leaves the file.
    let r3 = release(
        "shop",
        &TWO_SERVICES
            .split("  web:")
            .next()
            .map(|s| format!("{s}volumes:\n  data: {{}}\n"))
            .unwrap_or_default(),
        &[("app.env", "FROM_FILE=yes\n"), ("conf/app.conf", "x=1\n")],
    );
    let third =
        e.rt.apply("shop", &r3.compose, r3.path(), "r3", &shop_secrets())
            .await
            .unwrap_or_else(|e| panic!("apply r3: {e}"));
    assert_eq!(third.removed, [format!("{}-shop-web", e.guard.name)]);
    assert!(!third.services.contains_key("web"));
    assert_eq!(third.services["api"].container_id(), id_of(&first, "api"));
    assert_eq!(inspect(&id_of(&second, "web")), serde_json::Value::Null);
    assert_eq!(e.guard.leftovers("container").len(), 1, "only api is left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_image_fails_the_health_window_fast() {
    let Some(e) = env("a_broken_image_fails_the_health_window_fast").await else {
        return;
    };
    let rel = release(
        "crash",
        "services:\n  ok:\n    image: fleet-test/app:v1\n  app:\n    image: fleet-test/app:broken\n",
        &[],
    );
    e.rt.apply("crash", &rel.compose, rel.path(), "r1", &BTreeMap::new())
        .await
        .unwrap_or_else(|e| panic!("apply: {e}"));
    let (h, took) = watch(&e, "crash", &rel, 30).await;
    assert_eq!(h.state, HealthState::Unhealthy);
    let reason = h.reason().unwrap_or_default();
    assert!(
        reason.contains("service `app`") && reason.contains("exited with code 1"),
        "{reason}"
    );
    assert_eq!(h.services["app"].state, HealthState::Unhealthy);
    assert_ne!(h.services["ok"].state, HealthState::Unhealthy, "{reason}");
    assert!(
        took < Duration::from_secs(15),
        "failed after {took:?}, not fast"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_fails_the_health_window_as_restarting() {
    let Some(e) = env("a_crash_loop_fails_the_health_window").await else {
        return;
    };
    let rel = release(
        "loop",
        "services:\n  app:\n    image: fleet-test/app:broken\n    restart: always\n",
        &[],
    );
    e.rt.apply("loop", &rel.compose, rel.path(), "r1", &BTreeMap::new())
        .await
        .unwrap_or_else(|e| panic!("apply: {e}"));
    let (h, took) = watch(&e, "loop", &rel, 30).await;
    let app = &h.services["app"];
    assert_eq!(h.state, HealthState::Degraded, "{:?}", h.reason());
    let reason = h.reason().unwrap_or_default();
    assert!(
        reason.contains("service `app`") && reason.contains("restart"),
        "{reason}"
    );
    assert!(app.restart_count >= 1 || !app.running, "{app:?}");
    assert!(took < Duration::from_secs(15), "failed after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_image_fails_through_the_docker_healthcheck() {
    let Some(e) = env("an_unhealthy_image_fails_through_docker").await else {
        return;
    };
    let rel = release(
        "sick",
        "services:\n  app:\n    image: fleet-test/app:unhealthy\n",
        &[],
    );
    e.rt.apply("sick", &rel.compose, rel.path(), "r1", &BTreeMap::new())
        .await
        .unwrap_or_else(|e| panic!("apply: {e}"));
    let (h, took) = watch(&e, "sick", &rel, 30).await;
    assert_eq!(h.state, HealthState::Unhealthy, "{:?}", h.reason());
    let app = &h.services["app"];
    assert!(app.running, "it runs; only its healthcheck fails");
    assert_eq!(
        app.docker_health,
        Some(fleet_docker::DockerHealth::Unhealthy)
    );
    let reason = h.reason().unwrap_or_default();
    assert!(
        reason.contains("service `app`") && reason.contains("Docker healthcheck is unhealthy"),
        "{reason}"
    );
    assert!(took < Duration::from_secs(20), "failed after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_probe_passes_for_v1_and_fails_for_a_wrong_path_or_status() {
    let Some(e) = env("the_http_probe").await else {
        return;
    };
    let compose = r#"
services:
  good:
    image: fleet-test/app:v1
    x-fleet: { health: { http: { port: 8080, path: /healthz } } }
  wrongpath:
    image: fleet-test/app:v1
    x-fleet: { health: { http: { port: 8080, path: /nope } } }
  wrongstatus:
    image: fleet-test/app:v1
    x-fleet: { health: { http: { port: 8080, path: /healthz, expect_status: 418, timeout: 1s } } }
"#;
    let rel = release("probe", compose, &[]);
    e.rt.apply("probe", &rel.compose, rel.path(), "r1", &BTreeMap::new())
        .await
        .unwrap_or_else(|e| panic!("apply: {e}"));
    let (h, _) = watch(&e, "probe", &rel, 30).await;
    assert_eq!(h.state, HealthState::Unhealthy, "{:?}", h.reason());
    let good = &h.services["good"];
    assert_eq!(good.state, HealthState::Healthy, "{:?}", good.reason);
    assert_eq!(good.probe.as_ref().map(|p| p.status.clone()), Some(Ok(200)));
    let reason = h.reason().unwrap_or_default();
    assert!(
        reason.contains("service `wrongpath`: HTTP probe GET http://"),
        "{reason}"
    );
    assert!(reason.contains("/nope: status 404"), "{reason}");
    assert!(reason.contains("service `wrongstatus`"), "{reason}");
    assert!(reason.contains("/healthz: status 200"), "{reason}");
    assert!(!reason.contains("service `good`"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_grace_period_and_stop_signal_are_honoured() {
    let Some(e) = env("stop_grace_period").await else {
        return;
    };
    // `sleep` as PID 1 has no handler for SIGTERM, so the kernel ignores it: only the kill
    // after the grace period ends it.
    let stubborn = release(
        "stubborn",
        "services:\n  app:\n    image: fleet-test/app:v1\n    command: [\"/bin/sleep\", \"1000\"]\n    stop_grace_period: 3s\n",
        &[],
    );
    e.rt.apply(
        "stubborn",
        &stubborn.compose,
        stubborn.path(),
        "r1",
        &BTreeMap::new(),
    )
    .await
    .unwrap_or_else(|e| panic!("apply: {e}"));
    let t = Instant::now();
    e.rt.remove_stack("stubborn")
        .await
        .unwrap_or_else(|e| panic!("remove_stack: {e}"));
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(2500),
        "killed after {took:?}, before its 3 s grace period"
    );
    assert!(
        took < Duration::from_secs(15),
        "took {took:?} for a 3 s grace"
    );

    // This one exits on SIGUSR1 (its stop_signal) and ignores SIGTERM: it stops long before
    // its 20 s grace period only if the agent sent the right signal.
    let polite = release(
        "polite",
        "services:\n  app:\n    image: fleet-test/app:v1\n    command: [\"/bin/sh\", \"-c\", \"trap 'exit 0' USR1; while true; do sleep 0.2; done\"]\n    stop_signal: SIGUSR1\n    stop_grace_period: 20s\n",
        &[],
    );
    e.rt.apply(
        "polite",
        &polite.compose,
        polite.path(),
        "r1",
        &BTreeMap::new(),
    )
    .await
    .unwrap_or_else(|e| panic!("apply: {e}"));
    let t = Instant::now();
    e.rt.remove_stack("polite")
        .await
        .unwrap_or_else(|e| panic!("remove_stack: {e}"));
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "took {took:?}: stop_signal not used?"
    );
    assert!(e.guard.leftovers("container").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_secret_fails_before_anything_is_touched() {
    let Some(e) = env("a_missing_secret_fails_before_anything").await else {
        return;
    };
    let r1 = two_services("v1");
    let first =
        e.rt.apply("shop", &r1.compose, r1.path(), "r1", &shop_secrets())
            .await
            .unwrap_or_else(|e| panic!("apply r1: {e}"));
    let before: Vec<String> = {
        let mut v = e.guard.leftovers("container");
        v.sort();
        v
    };
    // r2 changes web (so it would be replaced) and now needs API_TOKEN, which is missing.
    let r2 = release(
        "shop",
        &TWO_SERVICES.replace("WEB_TAG", "v2").replace(
            "    networks: [default, back]",
            "    networks: [default, back]\n    environment: { API_TOKEN: \"${API_TOKEN}\" }",
        ),
        &[("app.env", "FROM_FILE=yes\n"), ("conf/app.conf", "x=1\n")],
    );
    let err =
        e.rt.apply(
            "shop",
            &r2.compose,
            r2.path(),
            "r2",
            &secrets(&[("WHO", "x")]),
        )
        .await;
    match &err {
        Err(DockerError::MissingSecrets { stack, missing }) => {
            assert_eq!(stack, "shop");
            let got: Vec<(&str, &str)> = missing
                .iter()
                .map(|m| (m.service.as_str(), m.variable.as_str()))
                .collect();
            assert_eq!(got, [("api", "DB_PASSWORD"), ("web", "API_TOKEN")]);
            let msg = err
                .as_ref()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(msg.contains("`API_TOKEN` (service `web`)"), "{msg}");
        }
        other => panic!("expected MissingSecrets, got {other:?}"),
    }
    let mut after = e.guard.leftovers("container");
    after.sort();
    assert_eq!(before, after, "no container was created or removed");
    for service in ["api", "web"] {
        assert!(is_running(&id_of(&first, service)), "{service} still runs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_all_leaves_nothing_behind() {
    let Some(e) = env("remove_all_leaves_nothing_behind").await else {
        return;
    };
    let rel = release(
        "full",
        "services:\n  app:\n    image: fleet-test/app:v1\n    volumes: [\"data:/data\", \"/scratch\"]\n    tmpfs: [\"/run/app\"]\n    networks: [front, back]\nvolumes:\n  data: {}\nnetworks:\n  front: {}\n  back: {}\n",
        &[],
    );
    e.rt.apply("full", &rel.compose, rel.path(), "r1", &BTreeMap::new())
        .await
        .unwrap_or_else(|e| panic!("apply: {e}"));
    let other = two_services("v1");
    e.rt.apply("shop", &other.compose, other.path(), "r1", &shop_secrets())
        .await
        .unwrap_or_else(|e| panic!("apply shop: {e}"));
    assert_eq!(e.guard.leftovers("container").len(), 3);
    assert!(e.guard.leftovers("network").len() >= 3);
    assert!(!e.guard.leftovers("volume").is_empty());

    let ns = e.rt.namespace().clone();
    let removed =
        e.rt.remove_all(&ns)
            .await
            .unwrap_or_else(|e| panic!("remove_all: {e}"));
    assert_eq!(removed.containers.len(), 3);
    for kind in ["container", "network", "volume"] {
        assert_eq!(
            e.guard.leftovers(kind),
            Vec::<String>::new(),
            "{kind}s left"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_images_uses_local_images_and_names_the_one_it_cannot_pull() {
    let Some(e) = env("ensure_images").await else {
        return;
    };
    let present = ImageRef::parse("fleet-test/app:v1").unwrap_or_else(|e| panic!("{e}"));
    e.rt.ensure_images(&[present.clone(), present.clone()])
        .await
        .unwrap_or_else(|e| panic!("present image: {e}"));

    let missing = ImageRef::parse("fleet-test/does-not-exist:v0").unwrap_or_else(|e| panic!("{e}"));
    let result = tokio::time::timeout(
        Duration::from_secs(90),
        e.rt.ensure_images(&[present, missing]),
    )
    .await
    .unwrap_or_else(|_| panic!("a pull with no registry must fail, not hang"));
    match result {
        Err(err @ DockerError::Pull { .. }) => {
            let msg = err.to_string();
            assert!(msg.contains("fleet-test/does-not-exist:v0"), "{msg}");
        }
        other => panic!("expected a Pull error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_that_stops_progressing_fails_after_the_stall_bound_and_leaves_no_image() {
    let Some(e) = env("pull_stall").await else {
        return;
    };
    let registry = fleet_testkit::registry::StalledRegistry::start();
    let image = ImageRef::parse(&registry.image()).unwrap_or_else(|e| panic!("{e}"));
    // The env's stall bound is 5 s; without one the engine would wait on the silent registry
    // for ever (it has no timeout of its own for a body that stops coming).
    let result = tokio::time::timeout(Duration::from_secs(120), e.rt.ensure_images(&[image]))
        .await
        .unwrap_or_else(|_| panic!("a stalled pull must fail, not hang"));
    match result {
        Err(err @ DockerError::PullStalled { .. }) => {
            let msg = err.to_string();
            assert!(
                msg.contains(&registry.image()) && msg.contains("no progress for 5s"),
                "{msg}"
            );
        }
        other => panic!("expected a stalled pull, got {other:?}"),
    }
    assert!(
        registry.layer_requests() >= 1,
        "the engine got as far as the layer"
    );
    let inspect = Command::new("docker")
        .args(["image", "inspect", &registry.image()])
        .output()
        .unwrap_or_else(|e| panic!("docker image inspect: {e}"));
    assert!(!inspect.status.success(), "a stalled pull left an image");
}

/// Runs `sh -c script` in a running container and returns its trimmed stdout.
fn exec(id: &str, script: &str) -> String {
    let out = Command::new("docker")
        .args(["exec", id, "/bin/sh", "-c", script])
        .output()
        .unwrap_or_else(|e| panic!("docker exec: {e}"));
    assert!(
        out.status.success(),
        "`{script}` in {id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The soft and hard limit on the line of `/proc/PID/limits` named `name`.
fn limit_of(limits: &str, name: &str) -> (String, String) {
    let line = limits
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no {name} in {limits}"));
    let mut fields = line[name.len()..].split_whitespace();
    let mut next = || fields.next().unwrap_or_default().to_owned();
    (next(), next())
}

/// Constructs real compose files use (issue 17), each applied to the container the way the
/// compose file says: checked in the engine's view of the container and, where the container
/// can show it, from inside.
const REAL_WORLD: &str = r#"
services:
  app:
    image: fleet-test/app:v1
    expose: ["3000", "8125/udp", "9200-9201"]
    deploy:
      resources:
        limits: { cpus: '0.50', memory: 64M, pids: 100 }
        reservations: { cpus: '0.25', memory: 32M }
    ulimits:
      core: -1
      nofile: { soft: 1024, hard: 2048 }
    env_file:
      - ./app.env
      - path: ./local.env
        required: false
    volumes:
      - ./conf:/conf:ro,rprivate
      - cache:/cache:nocopy
      - type: bind
        source: ./conf
        target: /conf-strict
        read_only: true
        bind: { create_host_path: false, propagation: rprivate }
      - type: tmpfs
        target: /scratch
        tmpfs: { size: 1m, mode: 1770 }
  debug:
    image: fleet-test/app:v1
    profiles: [debug]
volumes:
  cache: {}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_world_compose_constructs_are_applied_to_the_container() {
    let Some(e) = env("real_world_compose_constructs").await else {
        return;
    };
    let rel = release(
        "real",
        REAL_WORLD,
        &[("app.env", "FROM_FILE=yes\n"), ("conf/app.conf", "x=1\n")],
    );
    let report =
        e.rt.apply("real", &rel.compose, rel.path(), "r1", &BTreeMap::new())
            .await
            .unwrap_or_else(|e| panic!("apply: {e}"));

    // profiles: the service with a profile is not started, as `docker compose up` does.
    assert_eq!(
        report.services.keys().collect::<Vec<_>>(),
        ["app"],
        "{report:?}"
    );
    assert_eq!(
        e.guard.leftovers("container").len(),
        1,
        "no debug container"
    );

    let id = id_of(&report, "app");
    assert!(is_running(&id));
    let c = inspect(&id);
    let host = &c["HostConfig"];

    // expose: the container's exposed ports, none published.
    let mut exposed: Vec<String> = c["Config"]["ExposedPorts"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    exposed.sort();
    assert!(
        ["3000/tcp", "8125/udp", "9200/tcp", "9201/tcp"]
            .iter()
            .all(|p| exposed.iter().any(|x| x == p)),
        "{exposed:?}"
    );
    assert!(
        host["PortBindings"]
            .as_object()
            .is_none_or(|m| m.is_empty()),
        "expose publishes nothing: {}",
        host["PortBindings"]
    );

    // deploy.resources: limits and the memory reservation, as mem_limit / cpus would be.
    assert_eq!(host["Memory"].as_i64(), Some(64 * 1024 * 1024));
    assert_eq!(host["NanoCpus"].as_i64(), Some(500_000_000));
    assert_eq!(host["PidsLimit"].as_i64(), Some(100));
    assert_eq!(host["MemoryReservation"].as_i64(), Some(32 * 1024 * 1024));

    // ulimits: -1 is unlimited, in the engine and for the process. (`core`, not the `memlock`
    // of Elasticsearch's examples: a container cannot get more than the engine's own hard
    // limit, and an engine that itself runs in a container, as in CI, has memlock capped.)
    let ulimits = host["Ulimits"].as_array().cloned().unwrap_or_default();
    let core = ulimits
        .iter()
        .find(|u| u["Name"] == "core")
        .unwrap_or_else(|| panic!("no core in {ulimits:?}"));
    assert_eq!(
        (core["Soft"].as_i64(), core["Hard"].as_i64()),
        (Some(-1), Some(-1))
    );
    // Read off the container's own process, not a `docker exec` shell: an exec'd process
    // takes its limits from the engine's exec path, which differs between engines (one that
    // runs in a container, as in CI, gave the exec shell the hard limit as its soft one).
    let nofile = ulimits
        .iter()
        .find(|u| u["Name"] == "nofile")
        .unwrap_or_else(|| panic!("no nofile in {ulimits:?}"));
    assert_eq!(
        (nofile["Soft"].as_i64(), nofile["Hard"].as_i64()),
        (Some(1024), Some(2048))
    );
    let limits = exec(&id, "cat /proc/1/limits");
    assert_eq!(
        limit_of(&limits, "Max core file size"),
        ("unlimited".to_owned(), "unlimited".to_owned()),
        "{limits}"
    );
    assert_eq!(
        limit_of(&limits, "Max open files"),
        ("1024".to_owned(), "2048".to_owned()),
        "{limits}\nan exec'd shell has: {}",
        exec(&id, "cat /proc/self/limits")
    );

    // env_file long form: the optional file that is missing is skipped.
    let env: Vec<String> = serde_json::from_value(c["Config"]["Env"].clone()).unwrap_or_default();
    assert!(env.iter().any(|v| v == "FROM_FILE=yes"), "{env:?}");

    // Mount options: propagation in the bind, nocopy on the volume, the strict bind through
    // the Mounts API, and the tmpfs mode on the mount point.
    let binds: Vec<String> = serde_json::from_value(host["Binds"].clone()).unwrap_or_default();
    assert!(
        binds.iter().any(|b| b.ends_with(":/conf:ro,rprivate")),
        "{binds:?}"
    );
    let mounts = host["Mounts"].as_array().cloned().unwrap_or_default();
    let mount = |target: &str| {
        mounts
            .iter()
            .find(|m| m["Target"] == target)
            .cloned()
            .unwrap_or_else(|| panic!("no mount on {target} in {mounts:?}"))
    };
    assert_eq!(
        mount("/cache")["VolumeOptions"]["NoCopy"].as_bool(),
        Some(true)
    );
    let strict = mount("/conf-strict");
    assert_eq!(strict["Type"], "bind");
    assert_eq!(strict["ReadOnly"].as_bool(), Some(true));
    assert_eq!(strict["BindOptions"]["Propagation"], "rprivate");
    assert_eq!(exec(&id, "cat /conf-strict/app.conf"), "x=1");
    assert_eq!(
        mount("/scratch")["TmpfsOptions"]["Mode"].as_i64(),
        Some(0o1770)
    );
    let listing = exec(&id, "ls -ld /scratch");
    assert!(listing.starts_with("drwxrwx--T "), "mode 1770: {listing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bind_without_create_host_path_fails_on_a_missing_source() {
    let Some(e) = env("a_bind_without_create_host_path").await else {
        return;
    };
    let missing = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let absent = missing.path().join("absent");
    let compose = format!(
        "services:\n  app:\n    image: fleet-test/app:v1\n    volumes:\n      - type: bind\n        source: {}\n        target: /data\n        bind: {{ create_host_path: false }}\n",
        absent.display()
    );
    let rel = release("strict", &compose, &[]);
    let result =
        e.rt.apply("strict", &rel.compose, rel.path(), "r1", &BTreeMap::new())
            .await;
    assert!(result.is_err(), "a missing source must fail: {result:?}");
    assert!(!absent.exists(), "the agent must not create it");

    // The default (Docker's `-v`) creates the directory, as before.
    let compose = compose.replace("        bind: { create_host_path: false }\n", "");
    let rel = release("strict", &compose, &[]);
    e.rt.apply("strict", &rel.compose, rel.path(), "r2", &BTreeMap::new())
        .await
        .unwrap_or_else(|e| panic!("apply: {e}"));
    assert!(absent.is_dir(), "created by Docker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn depends_on_restart_replaces_the_dependent_with_its_dependency() {
    let Some(e) = env("depends_on_restart").await else {
        return;
    };
    let compose = |db_tag: &str, restart: bool| {
        format!("services:\n  db:\n    image: fleet-test/app:{db_tag}\n  web:\n    image: fleet-test/app:v1\n    depends_on:\n      db: {{ condition: service_started, restart: {restart} }}\n  other:\n    image: fleet-test/app:v1\n    depends_on: [db]\n")
    };
    let r1 = release("dep", &compose("v1", true), &[]);
    let first =
        e.rt.apply("dep", &r1.compose, r1.path(), "r1", &BTreeMap::new())
            .await
            .unwrap_or_else(|e| panic!("apply r1: {e}"));
    let r2 = release("dep", &compose("v2", true), &[]);
    let second =
        e.rt.apply("dep", &r2.compose, r2.path(), "r2", &BTreeMap::new())
            .await
            .unwrap_or_else(|e| panic!("apply r2: {e}"));
    assert!(matches!(
        second.services["db"],
        ServiceChange::Replaced { .. }
    ));
    assert!(
        matches!(second.services["web"], ServiceChange::Replaced { .. }),
        "restart: true follows db: {second:?}"
    );
    assert_eq!(
        second.services["other"],
        ServiceChange::Kept {
            container_id: id_of(&first, "other")
        },
        "without restart: true it stays"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_logs_are_the_newest_lines_of_each_service_and_say_what_has_none() {
    let Some(e) =
        env("container_logs_are_the_newest_lines_of_each_service_and_say_what_has_none").await
    else {
        return;
    };
    // `talk` writes 30 numbered lines, one to stderr, then a line a page must show as text;
    // `quiet` writes nothing; `blind` keeps no logs (logging driver `none`).
    let rel = release(
        "app",
        "services:\n  talk:\n    image: fleet-test/app:v1\n    command: [\"/bin/sh\", \"-c\", \"i=1; while [ $i -le 30 ]; do echo line-$i; i=$((i+1)); done; sleep 1; echo oops-on-stderr >&2; sleep 1; echo '<script>alert(1)</script>'; exec sleep 600\"]\n  quiet:\n    image: fleet-test/app:v1\n    command: [\"/bin/sleep\", \"600\"]\n  blind:\n    image: fleet-test/app:v1\n    command: [\"/bin/sh\", \"-c\", \"echo unseen; exec sleep 600\"]\n    logging:\n      driver: none\n",
        &[],
    );
    e.rt.apply("app", &rel.compose, rel.path(), "r1", &BTreeMap::new())
        .await
        .unwrap_or_else(|e| panic!("apply: {e}"));
    // The shell's lines reach the engine's log at once; give it a moment all the same.
    let deadline = Instant::now() + Duration::from_secs(20);
    let sources = loop {
        let s =
            e.rt.container_logs(5, &|_| true)
                .await
                .unwrap_or_else(|e| panic!("container_logs: {e}"));
        let talk_done = s
            .iter()
            .any(|s| s.name == "app/talk" && s.lines.iter().any(|l| l.text.contains("<script>")));
        if talk_done || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let names: Vec<&str> = sources.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        ["app/blind", "app/quiet", "app/talk"],
        "{sources:#?}"
    );
    let talk = &sources[2];
    assert_eq!(talk.status, fleet_config::protocol::logs::LogStatus::Ok);
    assert_eq!(
        talk.container.as_deref(),
        Some(format!("{}-app-talk", e.guard.name).as_str())
    );
    let texts: Vec<&str> = talk.lines.iter().map(|l| l.text.as_str()).collect();
    // The newest five of the 32 lines, in the order written (a second apart where the stream
    // changes: the engine copies stdout and stderr separately).
    assert_eq!(
        texts,
        [
            "line-28",
            "line-29",
            "line-30",
            "oops-on-stderr",
            "<script>alert(1)</script>"
        ]
    );
    let stderr = talk
        .lines
        .iter()
        .find(|l| l.text == "oops-on-stderr")
        .and_then(|l| l.stream);
    assert_eq!(
        stderr,
        Some(fleet_config::protocol::logs::LogStream::Stderr)
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    for l in &talk.lines {
        let at = l.at_ms.unwrap_or(0);
        assert!(
            at > now_ms - 120_000 && at <= now_ms + 5_000,
            "each line has the engine's time: {l:?}"
        );
    }
    assert_eq!(
        sources[1].status,
        fleet_config::protocol::logs::LogStatus::NoLogs,
        "{:?}",
        sources[1]
    );
    let blind = &sources[0];
    assert_eq!(
        blind.status,
        fleet_config::protocol::logs::LogStatus::Unavailable,
        "{blind:?}"
    );
    assert!(
        blind.detail.as_deref().is_some_and(|d| !d.is_empty()),
        "the engine's reason: {blind:?}"
    );
    // Selection by name.
    let only =
        e.rt.container_logs(5, &|name| name == "app/quiet")
            .await
            .unwrap_or_else(|e| panic!("container_logs: {e}"));
    assert_eq!(only.len(), 1);
    assert_eq!(only[0].name, "app/quiet");
    // A container removed between the listing and the reading of its logs is `gone`, and the
    // others are read as ever.
    let quiet = format!("{}-app-quiet", e.guard.name);
    let gone =
        e.rt.container_logs(5, &|name| {
            if name == "app/quiet" {
                let out = Command::new("docker")
                    .args(["rm", "-f", &quiet])
                    .output()
                    .unwrap_or_else(|e| panic!("docker rm: {e}"));
                assert!(out.status.success(), "docker rm -f {quiet}");
            }
            true
        })
        .await
        .unwrap_or_else(|e| panic!("container_logs: {e}"));
    let status: Vec<(&str, fleet_config::protocol::logs::LogStatus)> =
        gone.iter().map(|s| (s.name.as_str(), s.status)).collect();
    use fleet_config::protocol::logs::LogStatus as S;
    assert_eq!(
        status,
        [
            ("app/blind", S::Unavailable),
            ("app/quiet", S::Gone),
            ("app/talk", S::Ok)
        ]
    );
}
