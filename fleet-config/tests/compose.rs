//! Real-world compose files load, every key of the supported subset is accepted and decoded.

use fleet_config::compose::{DependsCondition, Mount, RestartPolicy};
use fleet_config::{validate_tree, RepoTree};

const FLEET: &str = "name: t\nrollout:\n  waves:\n    - { name: canary, select: { ring: canary } }\n    - { name: all, percent: 100 }\n";
const DEVICES: &str = "devices:\n  - id: d1\n    labels: { ring: canary }\n  - id: d2\nstacks:\n  - name: s\n    select: {}\n";

fn validate(compose: &str, extra: &[(&str, &str)]) -> fleet_config::Validation {
    let mut files = vec![
        ("fleet.yaml".to_string(), FLEET.as_bytes().to_vec(), false),
        (
            "devices.yaml".to_string(),
            DEVICES.as_bytes().to_vec(),
            false,
        ),
        (
            "stacks/s/compose.yaml".to_string(),
            compose.as_bytes().to_vec(),
            false,
        ),
    ];
    for (p, c) in extra {
        files.push((p.to_string(), c.as_bytes().to_vec(), false));
    }
    validate_tree(&RepoTree::from_memory(files).expect("tree"))
}

fn errors(v: &fleet_config::Validation) -> Vec<String> {
    v.diagnostics
        .sorted()
        .iter()
        .map(|d| d.to_string())
        .collect()
}

/// The shape of Netdata's published Docker Compose example.
const NETDATA: &str = r#"version: '3'
services:
  netdata:
    image: netdata/netdata:v1.47.0
    container_name: netdata
    pid: host
    network_mode: host
    restart: unless-stopped
    cap_add:
      - SYS_PTRACE
      - SYS_ADMIN
    security_opt:
      - apparmor:unconfined
    volumes:
      - netdataconfig:/etc/netdata
      - netdatalib:/var/lib/netdata
      - netdatacache:/var/cache/netdata
      - /:/host/root:ro,rslave
      - /etc/passwd:/host/etc/passwd:ro
      - /etc/group:/host/etc/group:ro
      - /etc/localtime:/etc/localtime:ro
      - /proc:/host/proc:ro
      - /sys:/host/sys:ro
      - /etc/os-release:/host/etc/os-release:ro
      - /var/log:/host/var/log:ro
      - /var/run/docker.sock:/var/run/docker.sock:ro
volumes:
  netdataconfig:
  netdatalib:
  netdatacache:
"#;

#[test]
fn netdata_compose_loads() {
    let v = validate(NETDATA, &[]);
    let repo = v
        .repo
        .as_ref()
        .unwrap_or_else(|| panic!("{:#?}", errors(&v)));
    let svc = &repo.stacks["s"].services["netdata"];
    assert_eq!(svc.pid.as_deref(), Some("host"));
    assert_eq!(svc.network_mode.as_deref(), Some("host"));
    assert_eq!(svc.restart, RestartPolicy::UnlessStopped);
    assert_eq!(svc.volumes.len(), 12);
    assert!(
        matches!(&svc.volumes[3], Mount::Bind { source, read_only: true, .. } if source == "/")
    );
    // `version` is accepted with a warning.
    let all = errors(&v);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert!(
        all[0].contains("warning: `version` is obsolete"),
        "{all:#?}"
    );
}

/// The shape of the Prometheus + node-exporter stacks people run on Raspberry Pis.
const PROMETHEUS: &str = r#"services:
  prometheus:
    image: prom/prometheus:v2.54.1
    command:
      - '--config.file=/etc/prometheus/prometheus.yml'
      - '--storage.tsdb.path=/prometheus'
      - '--storage.tsdb.retention.time=15d'
    volumes:
      - ./prometheus.yml:/etc/prometheus/prometheus.yml:ro
      - prometheus_data:/prometheus
    ports:
      - "9090:9090"
    restart: unless-stopped
    depends_on:
      node-exporter:
        condition: service_started
    networks: [monitoring]
  node-exporter:
    image: prom/node-exporter:v1.8.2
    command: --path.procfs=/host/proc --path.sysfs=/host/sys --collector.filesystem.mount-points-exclude="^/(sys|proc|dev|host|etc)($$|/)"
    volumes:
      - /proc:/host/proc:ro
      - /sys:/host/sys:ro
    expose_ignored_by_nobody: true
    networks:
      monitoring:
        aliases: [exporter]
volumes:
  prometheus_data: {}
networks:
  monitoring:
    driver: bridge
"#;

#[test]
fn prometheus_compose_loads_except_the_one_unknown_key() {
    let v = validate(
        PROMETHEUS,
        &[("stacks/s/prometheus.yml", "scrape_configs: []\n")],
    );
    let all = errors(&v);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert!(
        all[0].starts_with("stacks/s/compose.yaml:24:5: error: unknown key `expose_ignored_by_nobody` in service `node-exporter`"),
        "{all:#?}"
    );
    let fixed = PROMETHEUS.replace("    expose_ignored_by_nobody: true\n", "");
    let v = validate(
        &fixed,
        &[("stacks/s/prometheus.yml", "scrape_configs: []\n")],
    );
    let repo = v
        .repo
        .as_ref()
        .unwrap_or_else(|| panic!("{:#?}", errors(&v)));
    let stack = &repo.stacks["s"];
    let prom = &stack.services["prometheus"];
    assert_eq!(prom.command.as_ref().map(Vec::len), Some(3));
    assert_eq!(prom.depends_on["node-exporter"], DependsCondition::Started);
    assert_eq!(prom.ports[0].published.map(|p| p.start), Some(9090));
    let exporter = &stack.services["node-exporter"];
    let cmd = exporter.command.as_ref().expect("command");
    assert_eq!(cmd.len(), 3);
    assert!(
        cmd[2].starts_with("--collector.filesystem.mount-points-exclude=^/(sys|proc"),
        "{cmd:?}"
    );
    assert_eq!(
        exporter.networks["monitoring"].aliases,
        vec!["exporter".to_string()]
    );
}

const EVERY_KEY: &str = r#"x-common: &common
  restart: on-failure:5
  logging: { driver: local, options: { max-size: 5m } }
services:
  db:
    image: fleet-test/db:v1
    <<: *common
    healthcheck:
      test: pg_isready
      interval: 10s
      timeout: 3s
      retries: 5
      start_period: 30s
      start_interval: 1s
  app:
    <<: *common
    image: registry.example.com:5000/team/app:v2@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
    command: ["serve", "--port", "8080"]
    entrypoint: /usr/bin/tini --
    environment:
      - LOG_LEVEL=info
      - DB_PASSWORD=${DB_PASSWORD}
      - FROM_DEVICE
    env_file: [./app.env, /etc/fleet/site.env]
    ports:
      - "127.0.0.1:8080:8080/tcp"
      - target: 9000
        published: "9000"
        protocol: udp
      - "7000-7002:7000-7002"
    volumes:
      - type: bind
        source: ./conf
        target: /etc/app
        read_only: true
      - type: tmpfs
        target: /run/cache
        tmpfs: { size: 16m }
      - /data
    tmpfs: /tmp
    labels: { team: edge }
    depends_on:
      db: { condition: service_healthy }
    networks: { backend: { ipv4_address: 172.28.0.10 } }
    hostname: app
    container_name: app-main
    user: "1000:1000"
    working_dir: /srv
    devices: ["/dev/ttyUSB0:/dev/ttyUSB0:rwm"]
    cap_add: [NET_ADMIN]
    cap_drop: [ALL]
    security_opt: ["no-new-privileges:true"]
    privileged: false
    read_only: true
    init: true
    extra_hosts: ["controller:10.0.0.2"]
    stop_grace_period: 1m30s
    stop_signal: SIGINT
    ulimits:
      nofile: { soft: 1024, hard: 4096 }
      nproc: 512
    mem_limit: 256m
    cpus: "1.5"
    x-fleet:
      health:
        http: { port: 8080, path: /healthz, expect_status: 204, timeout: 1s }
networks:
  backend:
    driver: bridge
    ipam:
      config:
        - subnet: 172.28.0.0/16
"#;

#[test]
fn every_supported_key_is_decoded() {
    let v = validate(
        EVERY_KEY,
        &[
            ("stacks/s/app.env", "A=1\n"),
            ("stacks/s/conf/app.toml", "x = 1\n"),
        ],
    );
    let repo = v
        .repo
        .as_ref()
        .unwrap_or_else(|| panic!("{:#?}", errors(&v)));
    let app = &repo.stacks["s"].services["app"];
    assert_eq!(
        app.restart,
        RestartPolicy::OnFailure(Some(5)),
        "merged from the anchor"
    );
    assert_eq!(
        app.entrypoint.as_deref(),
        Some(&["/usr/bin/tini".to_string(), "--".to_string()][..])
    );
    assert_eq!(app.environment.get("FROM_DEVICE"), Some(&None));
    assert_eq!(
        app.environment.get("DB_PASSWORD"),
        Some(&Some("${DB_PASSWORD}".to_string()))
    );
    assert_eq!(app.ports.len(), 3);
    assert_eq!(app.ports[1].protocol, "udp");
    assert_eq!(app.ports[2].target.end, 7002);
    assert!(matches!(&app.volumes[1], Mount::Tmpfs { size: Some(s), .. } if *s == 16 << 20));
    assert!(matches!(&app.volumes[2], Mount::Anonymous { target, .. } if target == "/data"));
    assert_eq!(app.depends_on["db"], DependsCondition::Healthy);
    assert_eq!(
        app.stop_grace_period,
        Some(std::time::Duration::from_secs(90))
    );
    assert_eq!(app.ulimits["nofile"].hard, 4096);
    assert_eq!(app.ulimits["nproc"].soft, 512);
    assert_eq!(app.mem_limit, Some(256 << 20));
    assert_eq!(app.cpus, Some(1.5));
    let probe = app.http_probe.as_ref().expect("probe");
    assert_eq!((probe.port, probe.expect_status), (8080, Some(204)));
    let db = &repo.stacks["s"].services["db"];
    assert_eq!(
        db.healthcheck.as_ref().map(|h| h.test.clone()),
        Some(vec!["CMD-SHELL".to_string(), "pg_isready".to_string()])
    );
    assert!(errors(&v).is_empty(), "{:#?}", errors(&v));
}

#[test]
fn depends_on_cycles_are_refused() {
    let c = "services:\n  a:\n    image: x/a:1\n    depends_on: [b]\n  b:\n    image: x/b:1\n    depends_on: [a]\n";
    let v = validate(c, &[]);
    assert!(v.repo.is_none());
    assert!(
        errors(&v)
            .iter()
            .any(|e| e.contains("forms a cycle between services a, b")),
        "{:#?}",
        errors(&v)
    );
}

#[test]
fn unpinned_images_warn_but_validate() {
    let v = validate("services:\n  a:\n    image: busybox\n", &[]);
    assert!(v.repo.is_some(), "{:#?}", errors(&v));
    assert!(errors(&v)
        .iter()
        .any(|e| e.contains("warning: image `busybox` of service `a` is not pinned")));
}

/// The constructs of issue 17 as the agent receives them.
const REAL_WORLD: &str = r#"
services:
  search:
    image: opensearchproject/opensearch:2.11.0
    expose: ["9200", 9600, "8125/udp", "9300-9301"]
    mem_limit: 1g
    deploy:
      resources:
        limits: { cpus: '2', memory: 1G, pids: 512 }
        reservations: { memory: 512M }
    ulimits:
      memlock: { soft: -1, hard: -1 }
      nofile: 65536
      stack: -1
    env_file:
      - ./search.env
      - path: ./local.env
        required: false
    depends_on:
      dashboards: { condition: service_started, required: false }
      init: { condition: service_completed_successfully, restart: true }
    volumes:
      - ./conf:/usr/share/opensearch/config:ro,Z,rslave
      - data:/usr/share/opensearch/data:nocopy
      - type: bind
        source: /srv/snapshots
        target: /snapshots
        bind: { create_host_path: false, propagation: rshared }
      - type: volume
        target: /cache
        read_only: true
        volume: { nocopy: true }
      - type: tmpfs
        target: /tmp
        tmpfs: { size: 16m, mode: "1777" }
  init:
    image: busybox:1.36
  dashboards:
    image: opensearchproject/opensearch-dashboards:2.11.0
    profiles: [ui]
networks:
  default:
    attachable: true
    ipam: { driver: default }
volumes:
  data:
"#;

#[test]
fn real_world_constructs_are_decoded_for_the_agent() {
    let v = validate(
        REAL_WORLD,
        &[
            ("stacks/s/search.env", "A=1\n"),
            ("stacks/s/conf/opensearch.yml", "x: 1\n"),
        ],
    );
    let repo = v
        .repo
        .as_ref()
        .unwrap_or_else(|| panic!("{:#?}", errors(&v)));
    let stack = &repo.stacks["s"];
    // profiles: validated, not started.
    assert_eq!(
        stack.services.keys().collect::<Vec<_>>(),
        ["init", "search"]
    );
    assert_eq!(stack.not_started["dashboards"], ["ui"]);
    let s = &stack.services["search"];
    let exposed: Vec<(u16, u16, &str)> = s
        .expose
        .iter()
        .map(|e| (e.ports.start, e.ports.end, e.protocol.as_str()))
        .collect();
    assert_eq!(
        exposed,
        [
            (9200, 9200, "tcp"),
            (9600, 9600, "tcp"),
            (8125, 8125, "udp"),
            (9300, 9301, "tcp")
        ]
    );
    // deploy.resources merged with the service's own (equal) keys.
    assert_eq!(s.mem_limit, Some(1 << 30));
    assert_eq!(s.cpus, Some(2.0));
    assert_eq!(s.pids_limit, Some(512));
    assert_eq!(s.mem_reservation, Some(512 << 20));
    assert_eq!(
        (s.ulimits["memlock"].soft, s.ulimits["memlock"].hard),
        (-1, -1)
    );
    assert_eq!(s.ulimits["nofile"].soft, 65536);
    assert_eq!(s.ulimits["stack"].hard, -1);
    let env_files: Vec<(&str, bool)> = s
        .env_file
        .iter()
        .map(|e| (e.path.as_str(), e.required))
        .collect();
    assert_eq!(env_files, [("./search.env", true), ("./local.env", false)]);
    // The optional dependency is not started, so not waited for; `restart: true` is kept.
    assert_eq!(s.depends_on.keys().collect::<Vec<_>>(), ["init"]);
    assert_eq!(s.restart_with, ["init"]);
    assert_eq!(
        s.volumes[0],
        Mount::Bind {
            source: "./conf".into(),
            target: "/usr/share/opensearch/config".into(),
            read_only: true,
            create_host_path: true,
            propagation: Some("rslave".into()),
            selinux: Some("Z".into()),
            consistency: None,
        }
    );
    assert!(matches!(&s.volumes[1], Mount::Volume { nocopy: true, .. }));
    assert!(matches!(
        &s.volumes[2],
        Mount::Bind { create_host_path: false, propagation: Some(p), .. } if p == "rshared"
    ));
    assert!(matches!(
        &s.volumes[3],
        Mount::Anonymous {
            read_only: true,
            nocopy: true,
            ..
        }
    ));
    assert!(matches!(
        &s.volumes[4],
        Mount::Tmpfs { mode: Some(0o1777), size: Some(z), .. } if *z == 16 << 20
    ));
    let net = &stack.networks["default"];
    assert!(net.attachable);
    assert_eq!(net.ipam_driver.as_deref(), Some("default"));
    let warnings = errors(&v);
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(warnings[0].contains("service `dashboards` has profiles (ui) and is not started"));
}
