//! The agent tells systemd and the safe-mode watchdog it is alive: the real `fleet-agent` with a
//! real unix datagram socket as `NOTIFY_SOCKET` (what systemd gives a `Type=notify` service)
//! receives `READY=1` once recovered and `WATCHDOG=1` at half of `WATCHDOG_USEC`, from the main
//! loop; the heartbeat file advances and records every start.

mod support;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use fleet_config::liveness::{Heartbeat, HEARTBEAT_FILE};
use support::images::{build_test_images, docker_available};
use support::lab::{idle_on, AgentProc, Lab};

const SETTLE: Duration = Duration::from_secs(90);

fn ready(test: &str) -> bool {
    if !support::git_daemon::git_available(test) || !docker_available(test) {
        return false;
    }
    build_test_images();
    true
}

/// Every datagram received until `until` (or `deadline`), as text.
fn receive(
    sock: &UnixDatagram,
    deadline: Instant,
    until: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline && !until(&got) {
        match sock.recv(&mut buf) {
            Ok(n) => got.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("recv on the notify socket: {e}"),
        }
    }
    got
}

fn heartbeat(lab: &Lab) -> Option<Heartbeat> {
    let bytes = std::fs::read(lab.data_dir().join(HEARTBEAT_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[test]
fn the_agent_notifies_systemd_ready_and_pings_its_watchdog_from_the_loop() {
    if !ready("the_agent_notifies_systemd_ready_and_pings_its_watchdog_from_the_loop") {
        return;
    }
    let lab = Lab::new("sd-notify");
    let r1 = lab.release("v1");
    let path = lab.root.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    let socket = path.to_str().expect("utf-8 path");
    // 4 s: the agent pings when 2 s have passed, at its next loop turn (one a second when idle,
    // longer on a loaded machine).
    let agent = AgentProc::start_with_env(
        &lab.config(),
        &[("NOTIFY_SOCKET", socket), ("WATCHDOG_USEC", "4000000")],
    );
    let started = Instant::now();
    let got = receive(&sock, started + SETTLE, |g| {
        g.iter().any(|m| m.contains("READY=1"))
    });
    assert!(
        got.iter().any(|m| m.lines().any(|l| l == "READY=1")),
        "no READY=1 within {SETTLE:?}: {got:?}\n{}",
        agent.log_text()
    );
    agent.wait_for("release 1 running", SETTLE, |s| idle_on(s, &r1));
    // What came during the update (queued on the socket): each long phase raised systemd's
    // timeout to its deadline plus the turn bound (pulling: 30 min + 4 s), and back at idle
    // the normal timeout returned.
    let during = receive(&sock, Instant::now() + Duration::from_millis(500), |_| {
        false
    });
    let raised = during
        .iter()
        .position(|m| m.contains("WATCHDOG_USEC=1804000000"));
    let restored = during
        .iter()
        .rposition(|m| m.contains("WATCHDOG_USEC=4000000"));
    assert!(
        matches!((raised, restored), (Some(a), Some(b)) if a < b),
        "pulling raises the timeout and idle restores it: {during:?}"
    );

    // Idle now: count the pings over 10 s: about five, never more than one per 2 s.
    let window = Instant::now();
    let pings = receive(&sock, window + Duration::from_secs(10), |_| false);
    let watchdog = pings
        .iter()
        .filter(|m| m.lines().any(|l| l == "WATCHDOG=1"))
        .count();
    assert!(
        (3..=6).contains(&watchdog),
        "expected a WATCHDOG=1 about every 2 s for 10 s, got {watchdog}: {pings:?}"
    );

    let hb = heartbeat(&lab).expect("heartbeat written");
    assert_eq!(Some(hb.pid), agent.pid(), "{hb:?}");
    assert_eq!(hb.starts_ms.len(), 1, "one start so far: {hb:?}");
    assert_eq!(hb.namespace, lab.ns.name);
    std::thread::sleep(Duration::from_millis(2500));
    let later = heartbeat(&lab).expect("heartbeat");
    assert!(
        later.seq > hb.seq && later.at_ms > hb.at_ms && later.due_ms > later.at_ms,
        "the heartbeat advances: {hb:?} then {later:?}"
    );
}

#[test]
fn every_start_is_counted_and_a_frozen_agent_goes_quiet() {
    if !ready("every_start_is_counted_and_a_frozen_agent_goes_quiet") {
        return;
    }
    let lab = Lab::new("sd-notify-stop");
    lab.release("v1");
    let path = lab.root.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    let socket = path.to_str().expect("utf-8 path");
    let env = [("NOTIFY_SOCKET", socket), ("WATCHDOG_USEC", "1000000")];
    for life in 1..=3 {
        let mut agent = AgentProc::start_with_env(&lab.config(), &env);
        let got = receive(&sock, Instant::now() + SETTLE, |g| {
            g.iter().any(|m| m.contains("WATCHDOG=1"))
        });
        assert!(
            got.iter().any(|m| m.contains("WATCHDOG=1")),
            "life {life}: no ping: {got:?}\n{}",
            agent.log_text()
        );
        // SIGSTOP: the process exists but its loop does not turn, like a hung loop.
        let pid = agent.pid().expect("running").to_string();
        let stopped = std::process::Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .expect("kill -STOP");
        assert!(stopped.success());
        // Drain what was in flight, then expect silence.
        receive(&sock, Instant::now() + Duration::from_millis(300), |_| {
            false
        });
        let quiet = receive(&sock, Instant::now() + Duration::from_secs(2), |_| false);
        assert!(
            quiet.is_empty(),
            "life {life}: a stopped agent pinged: {quiet:?}"
        );
        agent.kill9();
    }
    let hb = heartbeat(&lab).expect("heartbeat");
    assert_eq!(hb.starts_ms.len(), 3, "three starts recorded: {hb:?}");
    assert!(hb.starts_ms.windows(2).all(|w| w[0] <= w[1]), "{hb:?}");
}
