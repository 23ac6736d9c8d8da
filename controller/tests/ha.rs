//! High availability on PostgreSQL (issue 14): three real `fleet-controller` replicas on one
//! database, each reaching it through a TCP proxy of its own that the test can freeze (stop
//! forwarding bytes both ways without closing either socket: a partition, not a crash) and
//! heal; a fleet repository served by `git daemon`; simulated devices that check in over HTTP
//! with the replicas in turn, install what they are told and report healthy.
//!
//! With a rollout in progress, (1) the leader is SIGKILLed, then (2) the leader's database
//! connection is frozen: each time another replica leads within the lease, the rollout
//! completes, and the old leader, once healed, neither leads nor writes. (3) Every answer each
//! device got is recorded: no device is told two different releases for one wave (a device's
//! target only ever moves forward, once per rollout). (4) Pauses, resumes and an abort sent to
//! followers while the leader reconciles are never lost: the abort holds. (5) A leader shut
//! down cleanly hands the lease over at once. Releases arrive by push webhooks sent to
//! followers (the Git poll is an hour), which hand them to the leader through the store.
//!
//! The failover times are printed: `cargo test -p fleet-controller --test ha -- --nocapture`
//! with `FLEET_TEST_POSTGRES_URL` set (`scripts/test-postgres start`).

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_client::sim::{FailureRule, SimDevice};
use fleet_config::protocol::{Desired, ReleaseId};
use fleet_controller::config::{ControllerConfig, GitSource};
use fleet_controller::db::Db;
use serde_json::{json, Value};
// Each replica reaches PostgreSQL through a proxy of its own the test can freeze.
use fleet_testkit::partition::Partition as Proxy;
use support::fleet_repo::{device_ids, FleetRepo};
use support::process::{config_yaml, free_addr, ControllerProcess};
use support::test_config;

const REPLICAS: usize = 3;
const DEVICES: usize = 20;
const CANARIES: usize = 2;
/// The leader lease the replicas run with.
const LEASE: Duration = Duration::from_secs(3);
/// What a takeover may take beyond the lease: a follower's next try, the test's polling.
const SLACK: Duration = Duration::from_millis(1500);
/// Any one phase of the test (a rollout converging).
const PHASE: Duration = Duration::from_secs(120);

/// `host:port` of a `postgres://user@host:port/db` URL, and the URL with it replaced.
fn split_url(url: &str) -> (String, String, String) {
    let start = url.find("://").expect("a URL") + 3;
    let end = url[start..].find('/').map_or(url.len(), |i| start + i);
    let authority = &url[start..end];
    let host_at = authority.rfind('@').map_or(start, |i| start + i + 1);
    (
        url[..host_at].to_owned(),
        url[host_at..end].to_owned(),
        url[end..].to_owned(),
    )
}

// ---------------------------------------------------------------------------------------------
// The replicas.

struct Replica {
    proc: ControllerProcess,
    proxy: Proxy,
    /// SIGKILLed and not started again.
    killed: bool,
}

impl Replica {
    fn reachable(&self) -> bool {
        !self.killed && !self.proxy.is_frozen()
    }
}

struct Cluster {
    replicas: Vec<Replica>,
    http: reqwest::Client,
}

/// The push webhook's shared secret.
const SECRET: &str = "ha-test-webhook-secret";

/// The configuration file of a replica, with the push webhook enabled.
fn yaml(cfg: &ControllerConfig) -> String {
    let secret = cfg.data_dir.join("webhook.secret");
    std::fs::create_dir_all(&cfg.data_dir).expect("data dir");
    std::fs::write(&secret, SECRET).expect("write the webhook secret");
    format!(
        "{}webhook_secret_file: \"{}\"\n",
        config_yaml(cfg),
        secret.display()
    )
}

/// The replica id a replica reports (the lease's holder while it leads).
async fn replica_id(c: &Cluster, i: usize) -> String {
    let s = c.status(i).await.expect("the replica answers");
    s["replica"]
        .as_str()
        .unwrap_or_else(|| panic!("no replica id in {s:#}"))
        .to_owned()
}

impl Cluster {
    /// The replicas that answer (not killed, their database connection not frozen).
    fn reachable(&self) -> Vec<usize> {
        (0..self.replicas.len())
            .filter(|i| self.replicas[*i].reachable())
            .collect()
    }

    fn viewer(&self) -> &str {
        &self.replicas[0].proc.viewer
    }

    fn operator(&self) -> &str {
        &self.replicas[0].proc.operator
    }

    /// `GET /api/v1/status` of replica `i`, or `None` if it does not answer in 3 s.
    async fn status(&self, i: usize) -> Option<Value> {
        let r = self
            .http
            .get(self.replicas[i].proc.url("/api/v1/status"))
            .bearer_auth(self.viewer())
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.json().await.ok()
    }

    /// The reachable replicas that say they lead; never more than one.
    async fn leaders(&self) -> Vec<usize> {
        let mut out = Vec::new();
        for i in self.reachable() {
            if self.status(i).await.is_some_and(|s| s["leader"] == true) {
                out.push(i);
            }
        }
        assert!(out.len() <= 1, "two replicas lead at once: {out:?}");
        out
    }

    async fn leader(&self) -> usize {
        let deadline = Instant::now() + PHASE;
        loop {
            if let Some(l) = self.leaders().await.first() {
                return *l;
            }
            assert!(Instant::now() < deadline, "no replica leads");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The rollout of `sha`, read from a reachable replica.
    async fn rollout(&self, sha: &str) -> Value {
        let i = *self.reachable().first().expect("a reachable replica");
        self.rollout_via(i, sha).await
    }

    /// The rollout of `sha`, read from replica `i`.
    async fn rollout_via(&self, i: usize, sha: &str) -> Value {
        let id = format!("r-{}", &sha[..12]);
        let r = self
            .http
            .get(self.replicas[i].proc.url(&format!("/api/v1/rollouts/{id}")))
            .bearer_auth(self.viewer())
            .send()
            .await
            .expect("get rollout");
        if !r.status().is_success() {
            return Value::Null;
        }
        r.json().await.expect("rollout JSON")
    }

    /// A signed push webhook for the release branch, sent to a follower: only the leader
    /// watches Git, and it hears of the push through the store.
    async fn push_webhook(&self) {
        use hmac::{Hmac, Mac};
        let leaders = self.leaders().await;
        let i = *self
            .reachable()
            .iter()
            .find(|i| !leaders.contains(i))
            .expect("a reachable follower");
        let body = br#"{"ref":"refs/heads/main"}"#;
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
        mac.update(body);
        let sig = hex::encode(mac.finalize().into_bytes());
        let r = self
            .http
            .post(self.replicas[i].proc.url("/api/v1/webhook"))
            .header("x-hub-signature-256", format!("sha256={sig}"))
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .expect("webhook");
        let status = r.status();
        let answer: Value = r.json().await.unwrap_or(Value::Null);
        assert!(
            status.is_success() && answer["accepted"] == true,
            "webhook via follower {i}: {status} {answer}"
        );
    }

    /// An operator's action on rollout `sha` through replica `i`: the status and the answer.
    async fn act(&self, i: usize, sha: &str, action: &str) -> (u16, Value) {
        let id = format!("r-{}", &sha[..12]);
        let r = self
            .http
            .post(
                self.replicas[i]
                    .proc
                    .url(&format!("/api/v1/rollouts/{id}/{action}")),
            )
            .bearer_auth(self.operator())
            .json(&json!({"reason": format!("ha test: {action} via replica {i}")}))
            .send()
            .await
            .expect("rollout action");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

// ---------------------------------------------------------------------------------------------
// The devices.

/// One answer a device got.
struct Told {
    release: String,
    at: Instant,
}

struct Fleet {
    devices: Vec<SimDevice>,
    told: BTreeMap<String, Vec<Told>>,
    http: reqwest::Client,
    fails: FailureRule,
    rounds: usize,
}

impl Fleet {
    async fn enroll(base: &str, bootstrap: &str) -> Fleet {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        let mut devices = Vec::new();
        for id in device_ids(DEVICES) {
            devices.push(
                SimDevice::enroll(&http, base, bootstrap, &id)
                    .await
                    .expect("enroll"),
            );
        }
        Fleet {
            devices,
            told: BTreeMap::new(),
            http,
            fails: Arc::new(|_, _| false),
            rounds: 0,
        }
    }

    /// Every device checks in once, each with one of the reachable replicas in turn (as a load
    /// balancer would spread them); every answer naming a release is recorded.
    async fn round(&mut self, c: &Cluster) {
        use futures_util::stream::{self, StreamExt};
        let bases: Vec<String> = c
            .reachable()
            .iter()
            .map(|i| c.replicas[*i].proc.base.clone())
            .collect();
        assert!(!bases.is_empty(), "no replica to check in with");
        let k = self.rounds;
        self.rounds += 1;
        let devices = std::mem::take(&mut self.devices);
        let results: Vec<_> = stream::iter(devices.into_iter().enumerate().map(|(i, mut d)| {
            let http = self.http.clone();
            let base = bases[(i + k) % bases.len()].clone();
            let fails = self.fails.clone();
            async move {
                let r = d.checkin(&http, &base, &fails).await;
                (d, r, base)
            }
        }))
        .buffered(8)
        .collect()
        .await;
        for (d, r, base) in results {
            match r {
                Ok(answer) => {
                    if let Desired::Release { release, .. } = &answer.desired {
                        self.told.entry(d.id.clone()).or_default().push(Told {
                            release: release.as_str().to_owned(),
                            at: Instant::now(),
                        });
                    }
                }
                Err(e) => panic!("check-in of {} with {base} failed: {e}", d.id),
            }
            self.devices.push(d);
        }
    }

    fn all_on(&self, sha: &str) -> bool {
        self.devices
            .iter()
            .all(|d| d.current.as_ref().map(ReleaseId::as_str) == Some(sha))
    }
}

/// Check-in rounds until `done` holds for the rollout of `sha` and the fleet.
async fn drive_until(
    c: &Cluster,
    fleet: &mut Fleet,
    sha: &str,
    what: &str,
    done: impl Fn(&Value, &Fleet) -> bool,
) -> Value {
    let deadline = Instant::now() + PHASE;
    loop {
        let r = c.rollout(sha).await;
        if done(&r, fleet) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {r:#}"
        );
        fleet.round(c).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn past_canaries(r: &Value) -> bool {
    r["state"] == "running" && r["detail"]["wave"].as_u64().is_some_and(|w| w >= 1)
}

fn completed_on(sha: &str) -> impl Fn(&Value, &Fleet) -> bool + '_ {
    move |r: &Value, f: &Fleet| r["state"] == "completed" && f.all_on(sha)
}

/// Polls the reachable replicas other than `old` (with check-in rounds in between, as devices
/// keep coming) until one leads; returns it and the time since `since`.
async fn takeover(
    c: &Cluster,
    fleet: &mut Fleet,
    old: usize,
    since: Instant,
    how: &str,
) -> (usize, Duration) {
    loop {
        let leaders = c.leaders().await;
        if let Some(l) = leaders.first() {
            assert_ne!(
                *l, old,
                "the old leader cannot be reached, so cannot answer"
            );
            return (*l, since.elapsed());
        }
        assert!(
            since.elapsed() < LEASE + SLACK,
            "no replica took over within the lease ({LEASE:?} + {SLACK:?}) after {how}"
        );
        fleet.round(c).await;
    }
}

async fn ha(test: &str) {
    if !support::git_daemon::git_available(test) {
        return;
    }
    let Some(url) = support::postgres::fresh_database(test).await else {
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut repo = FleetRepo::new(dir.path(), DEVICES, CANARIES, "1s");
    let git = GitSource {
        endpoints: vec![repo.url()],
        branch: "main".into(),
        // Long: releases arrive by webhook (sent to followers); a new leader looks at once.
        poll_interval: Duration::from_secs(3600),
        failover_timeout: Duration::from_secs(5),
    };
    let (prefix, pg, suffix) = split_url(&url);
    let upstream = tokio::net::lookup_host(pg.as_str())
        .await
        .expect("resolve PostgreSQL")
        .next()
        .expect("an address");

    let mut replicas: Vec<Replica> = Vec::new();
    for i in 0..REPLICAS {
        let proxy = Proxy::start(upstream).await;
        let db_url = format!("{prefix}{}{suffix}", proxy.addr);
        let mut cfg = test_config(
            &dir.path().join(format!("replica-{i}")),
            &db_url,
            Some(git.clone()),
        );
        cfg.listen = free_addr();
        cfg.leader_lease = LEASE;
        let proc = match replicas.first() {
            None => ControllerProcess::start_yaml(&cfg, &yaml(&cfg)).await,
            Some(first) => {
                ControllerProcess::start_replica_yaml(&cfg, &yaml(&cfg), &first.proc).await
            }
        };
        replicas.push(Replica {
            proc,
            proxy,
            killed: false,
        });
    }
    replicas[0].proc.alone = false;
    // The test reads the store directly, not through any proxy.
    let db = Db::open(&url).await.expect("open the store");
    let mut c = Cluster {
        replicas,
        http: support::client(),
    };
    let first = c.leader().await;
    let mut fleet = Fleet::enroll(
        &c.replicas[first].proc.base,
        c.replicas[0].proc.bootstrap.as_str(),
    )
    .await;

    // A first release everywhere.
    let v1 = repo.release("v1");
    c.push_webhook().await;
    drive_until(&c, &mut fleet, &v1, "v1 everywhere", completed_on(&v1)).await;

    // (1) SIGKILL the leader in the middle of a rollout.
    let v2 = repo.release("v2");
    c.push_webhook().await;
    drive_until(&c, &mut fleet, &v2, "v2 past its canaries", |r, _| {
        past_canaries(r)
    })
    .await;
    let old = c.leader().await;
    let before = db.lease().await.expect("lease");
    assert_eq!(before.holder, replica_id(&c, old).await, "{before:?}");
    let t = Instant::now();
    c.replicas[old].proc.kill();
    c.replicas[old].killed = true;
    let (new, after_kill) = takeover(&c, &mut fleet, old, t, "SIGKILLing the leader").await;
    println!("failover after SIGKILL of the leader: replica {old} -> {new} in {after_kill:?}");
    let l = db.lease().await.expect("lease");
    assert_eq!(l.holder, replica_id(&c, new).await, "{l:?}");
    assert!(l.epoch > before.epoch, "a new epoch: {before:?} then {l:?}");
    drive_until(
        &c,
        &mut fleet,
        &v2,
        "v2 everywhere after the kill",
        completed_on(&v2),
    )
    .await;
    c.replicas[old].proc.restart(1).await;
    c.replicas[old].killed = false;

    // (2) Freeze the leader's database connection in the middle of a rollout.
    let v3 = repo.release("v3");
    c.push_webhook().await;
    drive_until(&c, &mut fleet, &v3, "v3 past its canaries", |r, _| {
        past_canaries(r)
    })
    .await;
    let old = c.leader().await;
    let old_id = replica_id(&c, old).await;
    let before = db.lease().await.expect("lease");
    assert_eq!(before.holder, old_id, "{before:?}");
    let t = Instant::now();
    c.replicas[old].proxy.freeze();
    let (new, after_freeze) = takeover(
        &c,
        &mut fleet,
        old,
        t,
        "freezing the leader's database connection",
    )
    .await;
    println!(
        "failover after freezing the leader's database connection: replica {old} -> {new} in {after_freeze:?}"
    );
    let taken = db.lease().await.expect("lease");
    assert_eq!(taken.holder, replica_id(&c, new).await, "{taken:?}");
    assert!(
        taken.epoch > before.epoch,
        "a new epoch: {before:?} then {taken:?}"
    );
    drive_until(
        &c,
        &mut fleet,
        &v3,
        "v3 everywhere with the old leader frozen",
        completed_on(&v3),
    )
    .await;
    c.replicas[old].proxy.heal();
    // Healed, the old leader finds its lease gone: it does not lead again.
    let healed = Instant::now();
    while healed.elapsed() < LEASE + SLACK {
        fleet.round(&c).await;
        assert_eq!(
            c.leaders().await,
            vec![new],
            "the healed old leader leads again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = c.status(old).await.expect("the healed replica answers");
    assert_eq!(s["leader"], false, "{s:#}");
    assert!(s["leader_epoch"].is_null(), "{s:#}");
    // The lease is where the takeover put it (no flapping back), and nothing the old leader
    // wrote after the takeover reached a rollout row: its late writes were fenced out.
    let l = db.lease().await.expect("lease");
    assert_eq!(
        (l.holder.as_str(), l.epoch),
        (taken.holder.as_str(), taken.epoch),
        "{l:?}"
    );
    for r in db.rollouts(100).await.expect("rollouts") {
        assert!(
            r.updated_by != old_id || r.updated_ms < taken.acquired_ms,
            "rollout {} written by the old leader {old_id} after the takeover at {}: {r:?}",
            r.id,
            taken.acquired_ms
        );
        if r.updated_ms >= taken.acquired_ms {
            assert!(
                r.epoch.is_none_or(|e| e >= taken.epoch),
                "rollout {} written at an old epoch after the takeover: {r:?}",
                r.id
            );
        }
    }
    let log = c.replicas[old].proc.log();
    let said = log
        .lines()
        .find(|l| l.contains("stepped down"))
        .unwrap_or_else(|| panic!("the old leader's log says it stepped down:\n{log}"));
    println!("the old leader's log: {said}");

    // (4) Pauses, resumes and an abort sent to followers while the leader reconciles.
    repo.set_bake("3s");
    let v4 = repo.release("v4");
    c.push_webhook().await;
    drive_until(&c, &mut fleet, &v4, "v4 past its canaries", |r, _| {
        past_canaries(r)
    })
    .await;
    let leader = c.leader().await;
    let followers: Vec<usize> = (0..REPLICAS).filter(|i| *i != leader).collect();
    for n in 0..6 {
        let f = followers[n % followers.len()];
        let (status, body) = c.act(f, &v4, "pause").await;
        assert_eq!(status, 200, "pause via follower {f}: {body}");
        for _ in 0..3 {
            fleet.round(&c).await;
            let r = c.rollout(&v4).await;
            assert_eq!(
                r["state"], "paused",
                "a pause sent to follower {f} was lost: {r:#}"
            );
        }
        let g = followers[(n + 1) % followers.len()];
        let (status, body) = c.act(g, &v4, "resume").await;
        assert_eq!(status, 200, "resume via follower {g}: {body}");
        for _ in 0..2 {
            fleet.round(&c).await;
            let r = c.rollout(&v4).await;
            assert_eq!(
                r["state"], "running",
                "a resume sent to follower {g} was lost: {r:#}"
            );
        }
    }
    // The abort races the leader's passes: the devices keep checking in meanwhile.
    let f = followers[0];
    let (status, body) = c.act(f, &v4, "abort").await;
    assert_eq!(status, 200, "abort via follower {f}: {body}");
    let aborted = Instant::now();
    while aborted.elapsed() < Duration::from_secs(3) {
        fleet.round(&c).await;
        for i in c.reachable() {
            let r = c.rollout_via(i, &v4).await;
            assert_eq!(
                r["state"], "aborted",
                "the abort sent to follower {f} was lost (seen on replica {i}): {r:#}"
            );
        }
    }
    drive_until(
        &c,
        &mut fleet,
        &v4,
        "every device back on v3 after the abort",
        |r, f| r["state"] == "aborted" && f.all_on(&v3),
    )
    .await;

    // (3) No device was told two different releases for one wave: each device's target moved
    // only forward, v1 → v2 → v3 → v4, at most once per rollout (told v2 after v3, or v1 after
    // v2, would be a stale leader's word); after the abort settled, only v3.
    let order = [&v1, &v2, &v3, &v4];
    let settle = aborted + Duration::from_secs(2);
    for (device, told) in &fleet.told {
        let mut last: Option<usize> = None;
        let mut seq = Vec::new();
        for t in told.iter().filter(|t| t.at < aborted) {
            let idx = order
                .iter()
                .position(|r| **r == t.release)
                .unwrap_or_else(|| panic!("{device} was told an unknown release {}", t.release));
            if last != Some(idx) {
                seq.push(idx + 1);
                assert!(
                    last.is_none_or(|l| idx > l),
                    "{device} was told v{} after v{}: {seq:?}",
                    idx + 1,
                    last.map_or(0, |l| l + 1)
                );
                last = Some(idx);
            }
        }
        for t in told.iter().filter(|t| t.at > settle) {
            assert_eq!(
                t.release, v3,
                "{device} was told the aborted release after the abort"
            );
        }
    }
    // (5) A clean shutdown hands the lease over at once, without waiting for it to expire.
    let old = c.leader().await;
    let t = Instant::now();
    c.replicas[old].proc.terminate().await;
    c.replicas[old].killed = true;
    let (new, after_term) = takeover(&c, &mut fleet, old, t, "SIGTERM of the leader").await;
    println!("failover after SIGTERM of the leader: replica {old} -> {new} in {after_term:?}");
    assert!(
        after_term < LEASE / 2,
        "a released lease is taken at once, not at expiry: {after_term:?}"
    );
    assert!(c.replicas[old].proc.log().contains("leader lease released"));

    println!(
        "ha test: {} check-in rounds, {} answers, {:?} in all",
        fleet.rounds,
        fleet.told.values().map(Vec::len).sum::<usize>(),
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_fail_over_on_postgres() {
    ha("ha_three_replicas").await;
}
