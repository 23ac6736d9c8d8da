//! Safe mode you can log into: the real `fleet-agent` in controller mode, enrolled to the real
//! `fleet-controller` (fleet repository on a real `git daemon`), on the real Docker engine,
//! falling back to the shipped `safe-mode/compose.yaml` with its real images (built from
//! Debian's packages by `scripts/safe-mode-images` when missing). Only the device's host paths
//! in that file are moved into the test's directory, and the ports are set through the
//! stack's per-device env file, as on a device.
//!
//! One device, as the runbook goes:
//! 1. its first release is broken: it enters safe mode on its own; on-call logs in with the key
//!    from `authorized_keys` (the device's mounted host key, key-only), Prometheus scrapes the
//!    node exporter, the log shipper forwards a line written to the device's logs, and the
//!    agent keeps checking in;
//! 2. a new healthy release takes it out of safe mode ("deploy from safe mode");
//! 3. `fleetctl safe-mode DEVICE on` puts it back (sshd now generates its own host key), and
//!    `fleetctl safe-mode DEVICE off` takes it out again onto its release.

mod support;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet_controller::config::GitSource;
use serde_json::Value;
use support::docker_guard::NamespaceGuard;
use support::git_daemon::{free_port, git_available, init_bare, Entry, GitDaemon, WorkRepo};
use support::images::{build_test_images, docker_available};
use support::lab::{app_compose, idle_on, tail, AgentProc};
use support::process::{free_addr, ControllerProcess};
use support::prometheus::{prometheus_available, Prometheus};

const DEVICE: &str = "dev-1";
/// Generous: the machine is shared, and sshd or Prometheus may take a while to answer.
const LIMIT: Duration = Duration::from_secs(180);
/// The images of the shipped safe-mode stack.
const SAFE_IMAGES: [&str; 3] = [
    "fleet/safe-sshd:1.0.0",
    "fleet/safe-exporter:1.0.0",
    "fleet/safe-logship:1.0.0",
];

const FLEET: &str = "name: safe\nrelease_branch: main\nrollout:\n  waves:\n    - { name: canary, select: { ring: canary } }\n    - { name: all, percent: 100 }\n  bake: 1s\n  health_timeout: 90s\n  max_failure_rate: 100%\n  fleet_unhealthy_stop: 100%\n";
const INVENTORY: &str =
    "devices:\n  - id: dev-1\n    labels: { ring: canary }\nstacks:\n  - { name: app, select: {} }\n";

/// Makes sure the safe-mode images exist: `scripts/safe-mode-images` (a no-op when they are
/// up to date; root and mmdebstrap to build them). False (a loud skip) when that cannot work
/// here, unless `FLEET_REQUIRE_DOCKER=1`.
fn safe_mode_images(test: &str) -> bool {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/safe-mode-images");
    let out = Command::new(&script)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    if out.status.success() {
        return true;
    }
    let why = format!(
        "{} failed ({}):\n{}{}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if std::env::var("FLEET_REQUIRE_DOCKER").as_deref() == Ok("1") {
        panic!("{test}: the safe-mode images cannot be built: {why}");
    }
    eprintln!("\n*** SKIP {test}: the safe-mode images cannot be built: {why} ***\n");
    false
}

/// The fleet repository on one `git daemon`.
struct Repo {
    work: WorkRepo,
    daemon: GitDaemon,
    bare: PathBuf,
}

impl Repo {
    fn new(root: &Path) -> Repo {
        let base = root.join("git");
        std::fs::create_dir_all(&base).expect("mkdir");
        let bare = init_bare(&base, "fleet.git");
        Repo {
            work: WorkRepo::init(&root.join("work")),
            daemon: GitDaemon::start(&base),
            bare,
        }
    }

    /// Commits and pushes a release whose `web` runs `fleet-test/app:<web>`.
    fn release(&self, web: &str) -> String {
        let compose = app_compose(web);
        let sha = self.work.commit(
            &format!("release web {web}"),
            &[
                ("fleet.yaml", Entry::File(FLEET.as_bytes())),
                ("devices.yaml", Entry::File(INVENTORY.as_bytes())),
                ("stacks/app/compose.yaml", Entry::File(compose.as_bytes())),
            ],
        );
        self.work.push(&self.bare, "main");
        sha
    }
}

/// The device's side of the safe-mode stack: the shipped compose file with its host paths in
/// the test's directory, the per-device env file, the key on-call logs in with.
struct SafeStack {
    compose: PathBuf,
    /// Mounted as the device's `/etc/ssh` (host keys).
    host_keys: PathBuf,
    /// Mounted as the device's `/var/log`.
    var_log: PathBuf,
    /// The private key whose public half is in `authorized_keys`.
    key: PathBuf,
    /// A key that is not in `authorized_keys`.
    stranger: PathBuf,
    ssh_port: u16,
    exporter: String,
}

fn ssh_keygen(path: &Path, comment: &str) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .output()
        .expect("run ssh-keygen (Debian's openssh-client)");
    assert!(
        out.status.success(),
        "ssh-keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl SafeStack {
    fn new(dir: &Path, logship_target: &str) -> SafeStack {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../safe-mode/compose.yaml");
        let mut text = std::fs::read_to_string(&shipped).expect("read safe-mode/compose.yaml");
        let etc = dir.join("etc-fleet-safe-mode");
        let host_keys = dir.join("etc-ssh");
        let var_log = dir.join("var-log");
        let containers = dir.join("docker-containers");
        for d in [&etc, &host_keys, &var_log, &containers] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        // The device's paths in the shipped file, each of which must be there.
        for (from, to) in [
            ("/etc/fleet/safe-mode/", format!("{}/", etc.display())),
            ("- /etc/ssh:", format!("- {}:", host_keys.display())),
            ("- /var/log:", format!("- {}:", var_log.display())),
            (
                "- /var/lib/docker/containers:",
                format!("- {}:", containers.display()),
            ),
        ] {
            assert!(
                text.contains(from),
                "safe-mode/compose.yaml no longer has `{from}`"
            );
            text = text.replace(from, &to);
        }
        let compose = dir.join("stack/compose.yaml");
        std::fs::create_dir_all(compose.parent().expect("parent")).expect("mkdir");
        std::fs::write(&compose, text).expect("write the safe-mode stack");

        let key = dir.join("on-call");
        let stranger = dir.join("stranger");
        ssh_keygen(&key, "on-call");
        ssh_keygen(&stranger, "stranger");
        std::fs::copy(key.with_extension("pub"), etc.join("authorized_keys"))
            .expect("authorized_keys");
        // The device's own host key, as /etc/ssh has it.
        ssh_keygen(&host_keys.join("ssh_host_ed25519_key"), "device");

        let ssh_port = free_port();
        let exporter = format!("127.0.0.1:{}", free_port());
        std::fs::write(
            etc.join("env"),
            format!(
                "SSH_PORT={ssh_port}\nSSH_LISTEN=127.0.0.1\nEXPORTER_LISTEN={exporter}\nLOGSHIP_TARGET={logship_target}\n"
            ),
        )
        .expect("write the safe-mode env file");
        SafeStack {
            compose,
            host_keys,
            var_log,
            key,
            stranger,
            ssh_port,
            exporter,
        }
    }

    /// `ssh -i KEY -p PORT root@127.0.0.1 COMMAND` in batch mode, with `opts` added.
    fn ssh(&self, key: &Path, opts: &[&str], command: &str) -> Output {
        Command::new("ssh")
            .arg("-i")
            .arg(key)
            .arg("-p")
            .arg(self.ssh_port.to_string())
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "ConnectTimeout=5",
                "-o",
                "LogLevel=ERROR",
            ])
            .args(opts)
            .arg("root@127.0.0.1")
            .arg(command)
            .output()
            .expect("run ssh (Debian's openssh-client)")
    }

    /// A known_hosts file naming the device's mounted host key for this port.
    fn known_hosts(&self, dir: &Path) -> PathBuf {
        let public = std::fs::read_to_string(self.host_keys.join("ssh_host_ed25519_key.pub"))
            .expect("host key");
        let path = dir.join("known_hosts");
        std::fs::write(&path, format!("[127.0.0.1]:{} {public}", self.ssh_port))
            .expect("known_hosts");
        path
    }

    /// Retries `ssh … true` until it logs in (sshd may still be starting); panics with what
    /// ssh said last.
    fn log_in(&self, opts: &[&str], agent: &AgentProc, ns: &NamespaceGuard) -> String {
        let deadline = Instant::now() + LIMIT;
        loop {
            let out = self.ssh(&self.key, opts, "echo logged-in-as-$(id -un)");
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() {
                return stdout;
            }
            assert!(
                Instant::now() < deadline,
                "ssh never logged in ({}): {}{}\n--- sshd ---\n{}\n--- agent ---\n{}",
                out.status,
                stdout,
                String::from_utf8_lossy(&out.stderr),
                docker_logs(ns, "sshd"),
                tail(&agent.log_text(), 40)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// The last lines of `ns`'s safe-mode container of `service` (for failure messages).
fn docker_logs(ns: &NamespaceGuard, service: &str) -> String {
    let ids = Command::new("docker")
        .args(["ps", "-aq", "--filter", &ns.filter()])
        .args(["--filter", "label=fleet.stack=safe-mode"])
        .arg("--filter")
        .arg(format!("label=fleet.service={service}"))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    ids.split_whitespace()
        .map(|id| {
            Command::new("docker")
                .args(["logs", "--tail", "20", id])
                .output()
                .map(|o| {
                    format!(
                        "{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    )
                })
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Containers of `ns`: (stack, service, image, running), sorted.
fn containers(ns: &NamespaceGuard) -> Vec<(String, String, String, bool)> {
    let out = Command::new("docker")
        .args(["ps", "-a", "--filter", &ns.filter(), "--format"])
        .arg("{{.Label \"fleet.stack\"}}|{{.Label \"fleet.service\"}}|{{.Image}}|{{.State}}")
        .output()
        .expect("docker ps");
    let mut v: Vec<_> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let p: Vec<&str> = l.split('|').collect();
            (p.len() == 4).then(|| {
                (
                    p[0].to_owned(),
                    p[1].to_owned(),
                    p[2].to_owned(),
                    p[3] == "running",
                )
            })
        })
        .collect();
    v.sort();
    v
}

/// The shipped safe stack, running, and nothing else.
fn only_safe_stack(c: &[(String, String, String, bool)]) -> bool {
    let want: Vec<(String, String, String, bool)> = [
        ("exporter", SAFE_IMAGES[1]),
        ("logship", SAFE_IMAGES[2]),
        ("sshd", SAFE_IMAGES[0]),
    ]
    .iter()
    .map(|(s, i)| {
        (
            "safe-mode".to_owned(),
            (*s).to_owned(),
            (*i).to_owned(),
            true,
        )
    })
    .collect();
    c == want.as_slice()
}

/// The app's release running (web on `web`, side on v1), and no safe stack.
fn only_app(c: &[(String, String, String, bool)], web: &str) -> bool {
    c.len() == 2
        && c.iter()
            .all(|(stack, _, _, running)| stack == "app" && *running)
        && c.iter()
            .any(|(_, s, i, _)| s == "web" && *i == format!("fleet-test/app:{web}"))
}

/// Waits until `pred(status, containers)`; panics with both and the logs.
fn wait_device(
    c: &ControllerProcess,
    agent: &mut AgentProc,
    ns: &NamespaceGuard,
    what: &str,
    pred: impl Fn(&Value, &[(String, String, String, bool)]) -> bool,
) -> Value {
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Some(status) = agent.exited() {
            panic!(
                "the agent exited ({status}):\n{}",
                tail(&agent.log_text(), 60)
            );
        }
        let s = agent.status();
        let running = containers(ns);
        if pred(&s, &running) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}:\n--- status {s:#}\n--- containers {running:?}\n--- agent\n{}\n--- controller\n{}",
            tail(&agent.log_text(), 60),
            tail(&c.log(), 30)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

async fn device(c: &ControllerProcess) -> Value {
    support::client()
        .get(c.url(&format!("/api/v1/devices/{DEVICE}")))
        .bearer_auth(&c.viewer)
        .send()
        .await
        .expect("get device")
        .json()
        .await
        .expect("json")
}

/// `fleetctl safe-mode DEVICE on|off` as the operator.
fn fleetctl_safe_mode(c: &ControllerProcess, state: &str) {
    let out = Command::new(&support::bins::bins().fleetctl)
        .args(["--url", &c.base, "--token", &c.operator])
        .args(["safe-mode", DEVICE, state])
        .output()
        .expect("run fleetctl");
    assert!(
        out.status.success(),
        "fleetctl safe-mode {DEVICE} {state}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A TCP receiver for the log shipper; every line it got, in order.
fn log_receiver() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let got = Arc::clone(&lines);
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let got = Arc::clone(&got);
            std::thread::spawn(move || {
                for line in BufReader::new(conn).lines().map_while(Result::ok) {
                    got.lock().expect("lines").push(line);
                }
            });
        }
    });
    (addr, lines)
}

/// `btime` of the host's `/proc/stat`: what node_boot_time_seconds must say.
fn host_boot_time() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
        .expect("btime in /proc/stat")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_in_safe_mode_can_be_logged_into_scraped_and_deployed_out_of() {
    let test = "a_device_in_safe_mode_can_be_logged_into_scraped_and_deployed_out_of";
    if !git_available(test)
        || !docker_available(test)
        || !prometheus_available(test)
        || !safe_mode_images(test)
    {
        return;
    }
    build_test_images();
    let root = tempfile::tempdir().expect("tempdir");
    let repo = Repo::new(root.path());
    let (logship_target, shipped) = log_receiver();
    let safe = SafeStack::new(&root.path().join("device"), &logship_target);

    let mut cfg = fleet_controller::config::ControllerConfig {
        listen: free_addr(),
        data_dir: root.path().join("controller"),
        database_url: None,
        git: Some(GitSource {
            endpoints: vec![repo.daemon.url("fleet.git")],
            branch: "main".into(),
            poll_interval: Duration::from_millis(500),
            failover_timeout: Duration::from_secs(5),
        }),
        ..Default::default()
    };
    cfg.checkin_interval = Duration::from_secs(1);
    cfg.reconcile_interval = Duration::from_millis(200);
    // Its first release is broken: nothing valid can run on the device.
    repo.release("broken");
    let controller = ControllerProcess::start(&cfg).await;
    let bootstrap = root.path().join("bootstrap-token");
    std::fs::write(&bootstrap, &controller.bootstrap).expect("bootstrap token file");

    let ns = NamespaceGuard::new("e2e-safe-mode");
    let dir = root.path().join("device");
    let config = dir.join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "device_id: {DEVICE}\ndata_dir: {data}\ngit:\n  endpoints:\n    - url: {git}\n  branch: main\n  failover_timeout: 3s\npoll_interval: 1s\nhealth_window: 2s\nmin_free_disk: 1MB\nkeep_releases: 3\nmetrics_listen: null\ndocker_namespace: {ns}\nsecrets_dir: {secrets}\nsafe_mode_compose: {compose}\ncontroller:\n  url: {url}\n  token_file: {token}\n  bootstrap_token_file: {bootstrap}\n  request_timeout: 10s\n",
            data = dir.join("data").display(),
            git = repo.daemon.url("fleet.git"),
            ns = ns.name,
            secrets = dir.join("secrets").display(),
            compose = safe.compose.display(),
            url = controller.base,
            token = dir.join("device-token").display(),
            bootstrap = bootstrap.display(),
        ),
    )
    .expect("agent config");
    std::fs::create_dir_all(dir.join("secrets")).expect("mkdir");
    let mut agent = AgentProc::start(&config);

    // 1. Safe mode on its own: the broken first release left nothing valid to run.
    wait_device(
        &controller,
        &mut agent,
        &ns,
        "safe mode after the broken first release",
        |s, c| s["phase"] == "safe_mode" && !s["safe_mode"].is_null() && only_safe_stack(c),
    );

    // On-call logs in with the key, and the device is who the mounted host key says.
    let known_hosts = safe.known_hosts(root.path());
    let strict = [
        "-o".to_owned(),
        "StrictHostKeyChecking=yes".to_owned(),
        "-o".to_owned(),
        format!("UserKnownHostsFile={}", known_hosts.display()),
    ];
    let strict: Vec<&str> = strict.iter().map(String::as_str).collect();
    let said = safe.log_in(&strict, &agent, &ns);
    assert_eq!(said.trim(), "logged-in-as-root", "what the login ran");
    // Key-only: a key not in authorized_keys is refused, and no password is even asked for.
    let refused = safe.ssh(&safe.stranger, &strict, "true");
    assert!(!refused.status.success(), "a stranger's key logged in");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("Permission denied (publickey)"),
        "the only method offered is publickey: {stderr}"
    );

    // Prometheus scrapes the node exporter; what it stored is the host's boot time.
    let prometheus = Prometheus::start(&root.path().join("prometheus"), &safe.exporter);
    let result = prometheus.wait_for_query("node_boot_time_seconds", LIMIT);
    let value: f64 = result[0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("a node_boot_time_seconds sample: {result:#}"));
    assert_eq!(
        value,
        host_boot_time(),
        "node_boot_time_seconds read from the host's /proc"
    );

    // The log shipper forwards what is written to the device's logs.
    let nonce = format!("fleet-safe-mode-log-line-{}", std::process::id());
    std::fs::write(safe.var_log.join("app.log"), format!("{nonce}\n")).expect("write a log");
    let deadline = Instant::now() + LIMIT;
    while !shipped
        .lock()
        .expect("lines")
        .iter()
        .any(|l| l.contains(&nonce))
    {
        assert!(
            Instant::now() < deadline,
            "the log line never reached the receiver; got {:?}\n--- logship ---\n{}",
            shipped.lock().expect("lines"),
            docker_logs(&ns, "logship")
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // The agent keeps checking in, and the controller knows the device is in safe mode.
    let seen = device(&controller).await["device"]["last_seen_ms"].clone();
    let deadline = Instant::now() + LIMIT;
    loop {
        let d = device(&controller).await;
        if d["device"]["last_seen_ms"].as_i64() > seen.as_i64() {
            assert_eq!(d["device"]["state"], "safe_mode", "{d:#}");
            break;
        }
        assert!(Instant::now() < deadline, "no check-in in safe mode: {d:#}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // 2. Deploy from safe mode: a new healthy release takes the device out of it.
    let v1 = repo.release("v1");
    wait_device(
        &controller,
        &mut agent,
        &ns,
        "v1 out of safe mode",
        |s, c| idle_on(s, &v1) && s["safe_mode"].is_null() && only_app(c, "v1"),
    );

    // 3. The operator's safe mode, with no host key mounted this time: sshd makes its own.
    for entry in std::fs::read_dir(&safe.host_keys).expect("host keys") {
        std::fs::remove_file(entry.expect("entry").path()).expect("remove host key");
    }
    fleetctl_safe_mode(&controller, "on");
    wait_device(
        &controller,
        &mut agent,
        &ns,
        "operator safe mode",
        |s, c| s["phase"] == "safe_mode" && !s["safe_mode"].is_null() && only_safe_stack(c),
    );
    let said = safe.log_in(
        &[
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ],
        &agent,
        &ns,
    );
    assert_eq!(said.trim(), "logged-in-as-root");
    assert!(
        docker_logs(&ns, "sshd").contains("generating an ed25519 host key"),
        "{}",
        docker_logs(&ns, "sshd")
    );
    fleetctl_safe_mode(&controller, "off");
    wait_device(
        &controller,
        &mut agent,
        &ns,
        "v1 again after safe mode off",
        |s, c| idle_on(s, &v1) && s["safe_mode"].is_null() && only_app(c, "v1"),
    );
    let d = device(&controller).await;
    assert_eq!(d["device"]["current"], v1.as_str(), "{d:#}");
    agent.stop();
}
