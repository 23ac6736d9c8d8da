//! `stacks/<name>/compose.yaml`: the supported Compose subset (DESIGN.md, "Docker runtime") and
//! its `x-fleet` extension. A key outside the subset is an error that names it; nothing is
//! silently ignored, because an ignored key is a device that runs something the operator did
//! not ask for.

pub mod image;
pub mod model;
pub mod words;

use std::collections::BTreeMap;
use std::time::Duration;

use crate::decode::{Ctx, Fields, KeyRules};
use crate::diag::Pos;
use crate::names::check_name;
use crate::repo::RepoTree;
use crate::secrets;
use crate::yaml::{Node, Value};

pub use image::ImageRef;
pub use model::*;

/// Top-level keys of a compose file.
pub const TOP_KEYS: &[&str] = &["version", "services", "volumes", "networks"];

const TOP_SPECIAL: &[(&str, &str)] = &[
    ("name", "not supported: a stack's name is its directory name under stacks/"),
    ("secrets", "Compose secrets are not supported; put secrets in /etc/fleet/secrets/<stack>.env on the device and reference them as ${NAME} in `environment`"),
    ("configs", "not supported; commit the file in the stack directory and bind-mount it, e.g. `./app.conf:/etc/app.conf:ro`"),
    ("include", "not supported; a stack is one compose.yaml"),
];

/// Service keys of the supported subset.
pub const SERVICE_KEYS: &[&str] = &[
    "image",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "ports",
    "volumes",
    "tmpfs",
    "restart",
    "healthcheck",
    "labels",
    "depends_on",
    "networks",
    "network_mode",
    "hostname",
    "container_name",
    "user",
    "working_dir",
    "devices",
    "cap_add",
    "cap_drop",
    "security_opt",
    "privileged",
    "read_only",
    "init",
    "extra_hosts",
    "logging",
    "stop_grace_period",
    "stop_signal",
    "ulimits",
    "mem_limit",
    "cpus",
    "pid",
];

const SERVICE_SPECIAL: &[(&str, &str)] = &[
    ("build", "devices run images, they do not build them; build and push the image in CI and name it in `image:`"),
    ("deploy", "Swarm's `deploy` is not supported; use `restart`, `mem_limit` and `cpus`"),
    ("secrets", "Compose secrets are not supported; put secrets in /etc/fleet/secrets/<stack>.env on the device and reference them as ${NAME} in `environment`"),
    ("configs", "not supported; commit the file in the stack directory and bind-mount it, e.g. `./app.conf:/etc/app.conf:ro`"),
    ("links", "legacy links are not supported; services on the same network reach each other by name"),
    ("extends", "not supported; use YAML anchors (`&name` / `<<: *name`) instead"),
];

const HEALTH_KEYS: &[&str] = &[
    "test",
    "interval",
    "timeout",
    "retries",
    "start_period",
    "start_interval",
    "disable",
];
const LOGGING_KEYS: &[&str] = &["driver", "options"];
const SVC_NET_KEYS: &[&str] = &["aliases", "ipv4_address"];
const DEPENDS_KEYS: &[&str] = &["condition", "restart", "required"];
const ULIMIT_KEYS: &[&str] = &["soft", "hard"];
const PORT_KEYS: &[&str] = &["target", "published", "host_ip", "protocol", "mode", "name"];
const MOUNT_KEYS: &[&str] = &[
    "type",
    "source",
    "target",
    "read_only",
    "bind",
    "volume",
    "tmpfs",
];
const VOLUME_DEF_KEYS: &[&str] = &["driver", "driver_opts", "external", "labels", "name"];
const NETWORK_DEF_KEYS: &[&str] = &[
    "driver",
    "driver_opts",
    "external",
    "internal",
    "labels",
    "name",
    "enable_ipv6",
    "ipam",
    "attachable",
];
const IPAM_KEYS: &[&str] = &["driver", "config"];
const IPAM_POOL_KEYS: &[&str] = &["subnet", "gateway", "ip_range"];
const FLEET_EXT_KEYS: &[&str] = &["health"];
const FLEET_HEALTH_KEYS: &[&str] = &["http"];
const HTTP_PROBE_KEYS: &[&str] = &["port", "path", "expect_status", "timeout"];

/// Default timeout of the `x-fleet` HTTP probe.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the decoder needs to know about where the file lives.
pub struct StackContext<'a> {
    /// The stack's name (its directory under `stacks/`).
    pub stack: &'a str,
    /// The whole repository, to check that bind-mounted files exist.
    pub tree: &'a RepoTree,
}

/// Decodes one compose file, reporting every problem.
pub fn decode(ctx: &mut Ctx<'_>, root: &Node, sc: &StackContext<'_>) -> Option<ComposeFile> {
    if root.is_null() {
        ctx.error(root.pos, "compose.yaml is empty; it needs `services`");
        return None;
    }
    let rules = KeyRules {
        allowed: TOP_KEYS,
        special: TOP_SPECIAL,
        extensions: true,
    };
    let f = ctx.map_with(root, "compose.yaml", &rules)?;
    if let Some(v) = f.get("version") {
        ctx.warning(
            v.pos,
            "`version` is obsolete and ignored; you can delete it",
        );
    }
    let volumes = match f.get("volumes") {
        None => Some(BTreeMap::new()),
        Some(n) => named_defs(ctx, n, "`volumes`", decode_volume_def),
    };
    let networks = match f.get("networks") {
        None => Some(BTreeMap::new()),
        Some(n) => named_defs(ctx, n, "`networks`", decode_network_def),
    };
    let services_node = f.required(ctx, "services", "compose.yaml")?;
    let Value::Map(entries) = &services_node.value else {
        ctx.error(
            services_node.pos,
            format!(
                "`services` must be a mapping of service names, found {}",
                services_node.kind_name()
            ),
        );
        return None;
    };
    if entries.is_empty() {
        ctx.error(
            services_node.pos,
            "`services` is empty; a stack needs at least one service",
        );
        return None;
    }
    let names: Vec<&str> = entries.iter().filter_map(|(k, _)| k.scalar()).collect();
    let declared_volumes: Vec<String> = volumes
        .as_ref()
        .map(|v| v.keys().cloned().collect())
        .unwrap_or_default();
    let declared_networks: Vec<String> = networks
        .as_ref()
        .map(|v| v.keys().cloned().collect())
        .unwrap_or_default();
    let refs = Refs {
        services: &names,
        volumes: &declared_volumes,
        networks: &declared_networks,
        sc,
    };
    let mut services = BTreeMap::new();
    let mut ok = true;
    for (k, v) in entries {
        let Some(name) = k.scalar() else {
            ctx.error(k.pos, "service names must be plain names");
            ok = false;
            continue;
        };
        if let Err(e) = check_name(name) {
            ctx.error(k.pos, format!("service name {e}"));
            ok = false;
            continue;
        }
        match decode_service(ctx, name, v, &refs) {
            Some(s) => {
                services.insert(name.to_owned(), s);
            }
            None => ok = false,
        }
    }
    if ok {
        check_depends_cycles(ctx, &services, services_node.pos);
    }
    let file = ComposeFile {
        services,
        volumes: volumes?,
        networks: networks?,
    };
    ok.then_some(file)
}

struct Refs<'a> {
    services: &'a [&'a str],
    volumes: &'a [String],
    networks: &'a [String],
    sc: &'a StackContext<'a>,
}

fn named_defs<T: Default>(
    ctx: &mut Ctx<'_>,
    node: &Node,
    what: &str,
    decode: fn(&mut Ctx<'_>, &Node, &str) -> Option<T>,
) -> Option<BTreeMap<String, T>> {
    let Value::Map(entries) = &node.value else {
        ctx.error(
            node.pos,
            format!(
                "{what} must be a mapping of names, found {}",
                node.kind_name()
            ),
        );
        return None;
    };
    let mut out = BTreeMap::new();
    let mut ok = true;
    for (k, v) in entries {
        let Some(name) = k.scalar() else {
            ctx.error(k.pos, format!("names in {what} must be plain names"));
            ok = false;
            continue;
        };
        if v.is_null() {
            out.insert(name.to_owned(), T::default());
            continue;
        }
        match decode(ctx, v, &format!("`{name}` in {what}")) {
            Some(d) => {
                out.insert(name.to_owned(), d);
            }
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn opt_string(ctx: &mut Ctx<'_>, f: &Fields<'_>, key: &str, what: &str) -> Option<Option<String>> {
    match f.get(key) {
        None => Some(None),
        Some(n) => ctx
            .nonempty_string(n, &format!("`{key}` of {what}"))
            .map(Some),
    }
}

fn opt_bool(ctx: &mut Ctx<'_>, f: &Fields<'_>, key: &str, what: &str) -> Option<bool> {
    match f.get(key) {
        None => Some(false),
        Some(n) => ctx.bool(n, &format!("`{key}` of {what}")),
    }
}

fn opt_list(
    ctx: &mut Ctx<'_>,
    f: &Fields<'_>,
    key: &str,
    what: &str,
    single: bool,
) -> Option<Vec<String>> {
    match f.get(key) {
        None => Some(Vec::new()),
        Some(n) => ctx
            .string_list(n, &format!("`{key}` of {what}"), single)
            .map(|v| v.into_iter().map(|(s, _)| s).collect()),
    }
}

fn opt_duration(
    ctx: &mut Ctx<'_>,
    f: &Fields<'_>,
    key: &str,
    what: &str,
) -> Option<Option<Duration>> {
    match f.get(key) {
        None => Some(None),
        Some(n) => ctx.duration(n, &format!("`{key}` of {what}")).map(Some),
    }
}

fn string_map(ctx: &mut Ctx<'_>, n: &Node, what: &str) -> Option<BTreeMap<String, String>> {
    let kv = ctx.key_values(n, what)?;
    Some(
        kv.into_iter()
            .map(|(k, _, v)| (k, v.unwrap_or_default()))
            .collect(),
    )
}

fn decode_service(ctx: &mut Ctx<'_>, name: &str, node: &Node, refs: &Refs<'_>) -> Option<Service> {
    let what = format!("service `{name}`");
    let rules = KeyRules {
        allowed: SERVICE_KEYS,
        special: SERVICE_SPECIAL,
        extensions: true,
    };
    let f = ctx.map_with(node, &what, &rules)?;
    // Unknown keys were reported by `map_with`; count them so the service is not accepted.
    let mut ok = f
        .iter()
        .all(|(k, _, _)| SERVICE_KEYS.contains(&k) || k.starts_with("x-"));

    let image = match f.get("image") {
        None => {
            ctx.error(f.pos, format!("{what} has no `image`; every service runs a prebuilt image"));
            None
        }
        Some(n) => ctx.nonempty_string(n, &format!("`image` of {what}")).and_then(|s| {
            match ImageRef::parse(&s) {
                Ok(r) => {
                    if !r.is_pinned() {
                        ctx.warning(
                            n.pos,
                            format!("image `{s}` of {what} is not pinned: `latest` can change under a release; use a version tag or a digest"),
                        );
                    }
                    Some(r)
                }
                Err(e) => {
                    ctx.error(n.pos, format!("image `{s}` of {what} {e}"));
                    None
                }
            }
        }),
    };
    let command = words_field(ctx, &f, "command", &what);
    let entrypoint = words_field(ctx, &f, "entrypoint", &what);
    let environment = match f.get("environment") {
        None => Some(BTreeMap::new()),
        Some(n) => ctx
            .key_values(n, &format!("`environment` of {what}"))
            .map(|kv| {
                let mut env = BTreeMap::new();
                for (k, pos, v) in kv {
                    if let Some(v) = &v {
                        if let Some(msg) = secrets::check_env(name, refs.sc.stack, &k, v) {
                            ctx.error(pos, msg);
                            ok = false;
                        }
                    }
                    env.insert(k, v);
                }
                env
            }),
    };
    let env_file = opt_list(ctx, &f, "env_file", &what, true);
    if let Some(files) = &env_file {
        for file in files {
            if !file.starts_with('/') {
                if let Err(msg) = check_stack_path(refs.sc, file) {
                    ctx.error(
                        f.get("env_file").map_or(f.pos, |n| n.pos),
                        format!("`env_file` `{file}` of {what} {msg}"),
                    );
                    ok = false;
                }
            }
        }
    }
    let ports = f
        .get("ports")
        .map_or(Some(Vec::new()), |n| decode_ports(ctx, n, &what));
    let volumes = f
        .get("volumes")
        .map_or(Some(Vec::new()), |n| decode_mounts(ctx, n, &what, refs));
    let tmpfs = opt_list(ctx, &f, "tmpfs", &what, true);
    let restart = f
        .get("restart")
        .map_or(Some(RestartPolicy::No), |n| decode_restart(ctx, n, &what));
    let healthcheck = match f.get("healthcheck") {
        None => Some(None),
        Some(n) => decode_healthcheck(ctx, n, &what),
    };
    let labels = f.get("labels").map_or(Some(BTreeMap::new()), |n| {
        let labels = string_map(ctx, n, &format!("`labels` of {what}"))?;
        if let Some(bad) = labels.keys().find(|k| k.starts_with("fleet.")) {
            ctx.error(
                n.pos,
                format!(
                    "label `{bad}` of {what}: labels starting with `fleet.` belong to the agent"
                ),
            );
            return None;
        }
        Some(labels)
    });
    let depends_on = f.get("depends_on").map_or(Some(BTreeMap::new()), |n| {
        decode_depends(ctx, n, name, &what, refs)
    });
    let networks = f.get("networks").map_or(Some(BTreeMap::new()), |n| {
        decode_service_networks(ctx, n, &what, refs)
    });
    let network_mode = opt_string(ctx, &f, "network_mode", &what).and_then(|m| {
        if let Some(mode) = &m {
            let pos = f.get("network_mode").map_or(f.pos, |n| n.pos);
            if let Some(target) = mode.strip_prefix("service:") {
                if !refs.services.contains(&target) {
                    ctx.error(pos, format!("`network_mode` of {what} names service `{target}`, which is not in this stack"));
                    return None;
                }
            } else if !(matches!(mode.as_str(), "host" | "none" | "bridge") || mode.starts_with("container:")) {
                ctx.error(pos, format!("`network_mode` of {what} is `{mode}`; use host, none, bridge, service:NAME or container:NAME"));
                return None;
            }
            if f.get("networks").is_some() {
                ctx.error(pos, format!("{what} has both `network_mode` and `networks`; use one"));
                return None;
            }
        }
        Some(m)
    });
    let hostname = opt_string(ctx, &f, "hostname", &what);
    let container_name = opt_string(ctx, &f, "container_name", &what);
    let user = opt_string(ctx, &f, "user", &what);
    let working_dir = opt_string(ctx, &f, "working_dir", &what);
    let devices = opt_list(ctx, &f, "devices", &what, false);
    let cap_add = opt_list(ctx, &f, "cap_add", &what, false);
    let cap_drop = opt_list(ctx, &f, "cap_drop", &what, false);
    let security_opt = opt_list(ctx, &f, "security_opt", &what, false);
    let privileged = opt_bool(ctx, &f, "privileged", &what);
    let read_only = opt_bool(ctx, &f, "read_only", &what);
    let init = opt_bool(ctx, &f, "init", &what);
    let extra_hosts = f.get("extra_hosts").map_or(Some(Vec::new()), |n| {
        let kv = ctx.key_values(n, &format!("`extra_hosts` of {what}"))?;
        let mut out = Vec::new();
        for (k, pos, v) in kv {
            // The list form is `host:ip` (or `host=ip`, parsed by key_values).
            let entry = match v {
                Some(ip) => format!("{k}:{ip}"),
                None if k.contains(':') => k,
                None => {
                    ctx.error(pos, format!("`extra_hosts` entry `{k}` of {what} needs an address, e.g. `{k}:10.0.0.1`"));
                    return None;
                }
            };
            out.push(entry);
        }
        Some(out)
    });
    let logging = match f.get("logging") {
        None => Some(None),
        Some(n) => (|| {
            let w = format!("`logging` of {what}");
            let lf = ctx.map(n, &w, LOGGING_KEYS)?;
            let driver = opt_string(ctx, &lf, "driver", &w)?;
            let options = lf.get("options").map_or(Some(BTreeMap::new()), |o| {
                string_map(ctx, o, &format!("`options` of {w}"))
            })?;
            Some(Some(Logging { driver, options }))
        })(),
    };
    let stop_grace_period = opt_duration(ctx, &f, "stop_grace_period", &what);
    let stop_signal = opt_string(ctx, &f, "stop_signal", &what);
    let ulimits = f
        .get("ulimits")
        .map_or(Some(BTreeMap::new()), |n| decode_ulimits(ctx, n, &what));
    let mem_limit = match f.get("mem_limit") {
        None => Some(None),
        Some(n) => ctx.size(n, &format!("`mem_limit` of {what}")).map(Some),
    };
    let cpus = match f.get("cpus") {
        None => Some(None),
        Some(n) => ctx.number(n, &format!("`cpus` of {what}")).and_then(|c| {
            if c <= 0.0 || c > 1024.0 {
                ctx.error(
                    n.pos,
                    format!("`cpus` of {what} must be more than 0, found {c}"),
                );
                return None;
            }
            Some(Some(c))
        }),
    };
    let pid = opt_string(ctx, &f, "pid", &what);
    let http_probe = match f.get("x-fleet") {
        None => Some(None),
        Some(n) => decode_fleet_ext(ctx, n, &what),
    };

    let service = Service {
        image: image?,
        command: command?,
        entrypoint: entrypoint?,
        environment: environment?,
        env_file: env_file?,
        ports: ports?,
        volumes: volumes?,
        tmpfs: tmpfs?,
        restart: restart?,
        healthcheck: healthcheck?,
        labels: labels?,
        depends_on: depends_on?,
        networks: networks?,
        network_mode: network_mode?,
        hostname: hostname?,
        container_name: container_name?,
        user: user?,
        working_dir: working_dir?,
        devices: devices?,
        cap_add: cap_add?,
        cap_drop: cap_drop?,
        security_opt: security_opt?,
        privileged: privileged?,
        read_only: read_only?,
        init: init?,
        extra_hosts: extra_hosts?,
        logging: logging?,
        stop_grace_period: stop_grace_period?,
        stop_signal: stop_signal?,
        ulimits: ulimits?,
        mem_limit: mem_limit?,
        cpus: cpus?,
        pid: pid?,
        http_probe: http_probe?,
    };
    ok.then_some(service)
}

fn words_field(
    ctx: &mut Ctx<'_>,
    f: &Fields<'_>,
    key: &str,
    what: &str,
) -> Option<Option<Vec<String>>> {
    let Some(n) = f.get(key) else {
        return Some(None);
    };
    match &n.value {
        Value::Scalar(s) => match words::split(&s.text) {
            Ok(w) => Some(Some(w)),
            Err(e) => {
                ctx.error(n.pos, format!("`{key}` of {what} has {e}"));
                None
            }
        },
        Value::Seq(_) => ctx
            .string_list(n, &format!("`{key}` of {what}"), false)
            .map(|v| Some(v.into_iter().map(|(s, _)| s).collect())),
        _ => {
            ctx.error(
                n.pos,
                format!(
                    "`{key}` of {what} must be a string or a list of strings, found {}",
                    n.kind_name()
                ),
            );
            None
        }
    }
}

fn parse_port_range(s: &str) -> Result<PortRange, String> {
    let one = |p: &str| -> Result<u16, String> {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("`{p}` is not a port number (1-65535)")),
        }
    };
    match s.split_once('-') {
        Some((a, b)) => {
            let (start, end) = (one(a)?, one(b)?);
            if end < start {
                return Err(format!("port range `{s}` ends before it starts"));
            }
            Ok(PortRange { start, end })
        }
        None => one(s).map(|p| PortRange { start: p, end: p }),
    }
}

fn parse_short_port(s: &str) -> Result<PortMapping, String> {
    let (spec, protocol) = match s.rsplit_once('/') {
        Some((spec, proto)) => (spec, proto.to_owned()),
        None => (s, "tcp".to_owned()),
    };
    if !matches!(protocol.as_str(), "tcp" | "udp" | "sctp") {
        return Err(format!(
            "protocol `{protocol}` is not supported; use tcp, udp or sctp"
        ));
    }
    if spec.starts_with('[') {
        return Err("IPv6 host addresses are not supported".into());
    }
    let parts: Vec<&str> = spec.split(':').collect();
    let (host_ip, published, target) = match parts.as_slice() {
        [t] => (None, None, *t),
        [p, t] => (None, Some(*p), *t),
        [ip, p, t] => (Some(*ip), (!p.is_empty()).then_some(*p), *t),
        _ => return Err("expected `[HOST_IP:][HOST_PORT:]CONTAINER_PORT[/PROTOCOL]`".into()),
    };
    if let Some(ip) = host_ip {
        if ip.parse::<std::net::IpAddr>().is_err() {
            return Err(format!("host address `{ip}` is not an IP address"));
        }
    }
    let target = parse_port_range(target)?;
    let published = published.map(parse_port_range).transpose()?;
    if let Some(p) = published {
        if p.end - p.start != target.end - target.start {
            return Err("host and container port ranges differ in length".into());
        }
    }
    Ok(PortMapping {
        host_ip: host_ip.map(str::to_owned),
        published,
        target,
        protocol,
    })
}

fn decode_ports(ctx: &mut Ctx<'_>, node: &Node, what: &str) -> Option<Vec<PortMapping>> {
    let items = ctx.seq(node, &format!("`ports` of {what}"))?;
    let mut out = Vec::new();
    let mut ok = true;
    for item in items {
        let parsed = match &item.value {
            Value::Scalar(s) => {
                parse_short_port(&s.text).map_err(|e| format!("port `{}` of {what}: {e}", s.text))
            }
            Value::Map(_) => {
                let w = format!("a port of {what}");
                let Some(pf) = ctx.map(item, &w, PORT_KEYS) else {
                    ok = false;
                    continue;
                };
                let target = pf
                    .required(ctx, "target", &w)
                    .and_then(|n| ctx.uint_in(n, &format!("`target` of {w}"), 1, 65535));
                let published = match pf.get("published") {
                    None => Some(None),
                    Some(n) => ctx.string(n, &format!("`published` of {w}")).and_then(|s| {
                        match parse_port_range(&s) {
                            Ok(r) => Some(Some(r)),
                            Err(e) => {
                                ctx.error(n.pos, format!("`published` of {w}: {e}"));
                                None
                            }
                        }
                    }),
                };
                let host_ip = opt_string(ctx, &pf, "host_ip", &w);
                let protocol = opt_string(ctx, &pf, "protocol", &w);
                let (Some(target), Some(published), Some(host_ip), Some(protocol)) =
                    (target, published, host_ip, protocol)
                else {
                    ok = false;
                    continue;
                };
                let t = target as u16;
                Ok(PortMapping {
                    host_ip,
                    published,
                    target: PortRange { start: t, end: t },
                    protocol: protocol.unwrap_or_else(|| "tcp".into()),
                })
            }
            _ => Err(format!(
                "each port of {what} must be a string such as \"8080:80\" or a mapping, found {}",
                item.kind_name()
            )),
        };
        match parsed {
            Ok(p) => out.push(p),
            Err(e) => {
                ctx.error(item.pos, e);
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

/// Checks a path relative to the stack directory: it must stay inside it and exist.
fn check_stack_path(sc: &StackContext<'_>, rel: &str) -> Result<(), String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in rel.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err("leaves the stack directory; a release can only use files it contains, or absolute paths on the device".into());
                }
            }
            c => parts.push(c),
        }
    }
    let dir = format!("stacks/{}", sc.stack);
    let full = if parts.is_empty() {
        dir.clone()
    } else {
        format!("{dir}/{}", parts.join("/"))
    };
    if sc.tree.get(&full).is_some() || sc.tree.has_dir(&full) {
        Ok(())
    } else {
        Err(format!(
            "does not exist in {dir}/; commit it there or use an absolute path on the device"
        ))
    }
}

fn parse_short_mount(s: &str, what: &str, refs: &Refs<'_>) -> Result<Mount, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let (source, target, mode) = match parts.as_slice() {
        [t] => (None, *t, None),
        [src, t] => (Some(*src), *t, None),
        [src, t, m] => (Some(*src), *t, Some(*m)),
        _ => {
            return Err(format!(
                "volume `{s}` of {what} is not `SOURCE:TARGET[:MODE]`"
            ))
        }
    };
    if !target.starts_with('/') {
        return Err(format!(
            "volume `{s}` of {what} has target `{target}`; the container path must be absolute"
        ));
    }
    let mut read_only = false;
    if let Some(m) = mode {
        for opt in m.split(',') {
            match opt {
                "ro" => read_only = true,
                "rw" | "z" | "Z" | "cached" | "delegated" | "consistent" | "nocopy"
                | "rprivate" | "private" | "rshared" | "shared" | "rslave" | "slave" => {}
                other => {
                    return Err(format!(
                        "volume `{s}` of {what} has unknown mode `{other}`; use ro or rw"
                    ))
                }
            }
        }
    }
    let Some(source) = source else {
        return Ok(Mount::Anonymous {
            target: target.to_owned(),
        });
    };
    if source.starts_with('~') {
        return Err(format!("volume `{s}` of {what} starts with `~`; a device has no home directory to expand, use an absolute path"));
    }
    if source.starts_with('/') {
        return Ok(Mount::Bind {
            source: source.to_owned(),
            target: target.to_owned(),
            read_only,
        });
    }
    if source.starts_with('.') {
        check_stack_path(refs.sc, source)
            .map_err(|e| format!("bind mount source `{source}` of {what} {e}"))?;
        return Ok(Mount::Bind {
            source: source.to_owned(),
            target: target.to_owned(),
            read_only,
        });
    }
    if !refs.volumes.iter().any(|v| v == source) {
        return Err(format!(
            "volume `{source}` of {what} is not declared under the top-level `volumes`"
        ));
    }
    Ok(Mount::Volume {
        source: source.to_owned(),
        target: target.to_owned(),
        read_only,
    })
}

fn decode_mounts(
    ctx: &mut Ctx<'_>,
    node: &Node,
    what: &str,
    refs: &Refs<'_>,
) -> Option<Vec<Mount>> {
    let items = ctx.seq(node, &format!("`volumes` of {what}"))?;
    let mut out = Vec::new();
    let mut ok = true;
    for item in items {
        let m = match &item.value {
            Value::Scalar(s) => match parse_short_mount(&s.text, what, refs) {
                Ok(m) => Some(m),
                Err(e) => {
                    ctx.error(item.pos, e);
                    None
                }
            },
            Value::Map(_) => decode_long_mount(ctx, item, what, refs),
            _ => {
                ctx.error(item.pos, format!("each volume of {what} must be a string such as `data:/var/lib/app` or a mapping, found {}", item.kind_name()));
                None
            }
        };
        match m {
            Some(m) => out.push(m),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn decode_long_mount(ctx: &mut Ctx<'_>, item: &Node, what: &str, refs: &Refs<'_>) -> Option<Mount> {
    let w = format!("a volume of {what}");
    let f = ctx.map(item, &w, MOUNT_KEYS)?;
    let kind = f
        .required(ctx, "type", &w)
        .and_then(|n| ctx.string(n, &format!("`type` of {w}")));
    let target = f.required(ctx, "target", &w).and_then(|n| {
        let t = ctx.string(n, &format!("`target` of {w}"))?;
        if !t.starts_with('/') {
            ctx.error(
                n.pos,
                format!("`target` `{t}` of {w} must be an absolute container path"),
            );
            return None;
        }
        Some(t)
    });
    let source = opt_string(ctx, &f, "source", &w);
    let read_only = opt_bool(ctx, &f, "read_only", &w);
    for (sub, keys) in [
        ("bind", &["create_host_path", "propagation"][..]),
        ("volume", &["nocopy"][..]),
        ("tmpfs", &["size", "mode"][..]),
    ] {
        if let Some(n) = f.get(sub) {
            ctx.map(n, &format!("`{sub}` of {w}"), keys)?;
        }
    }
    let (kind, target, source, read_only) = (kind?, target?, source?, read_only?);
    let pos = f.get("source").map_or(f.pos, |n| n.pos);
    match (kind.as_str(), source) {
        ("bind", Some(src)) => {
            if !src.starts_with('/') {
                if let Err(e) = check_stack_path(refs.sc, &src) {
                    ctx.error(pos, format!("bind mount source `{src}` of {what} {e}"));
                    return None;
                }
            }
            Some(Mount::Bind {
                source: src,
                target,
                read_only,
            })
        }
        ("volume", Some(src)) => {
            if !refs.volumes.contains(&src) {
                ctx.error(
                    pos,
                    format!(
                        "volume `{src}` of {what} is not declared under the top-level `volumes`"
                    ),
                );
                return None;
            }
            Some(Mount::Volume {
                source: src,
                target,
                read_only,
            })
        }
        ("volume", None) => Some(Mount::Anonymous { target }),
        ("bind", None) => {
            ctx.error(f.pos, format!("a bind mount of {what} needs a `source`"));
            None
        }
        ("tmpfs", _) => {
            let size = match f.get("tmpfs").and_then(|t| match &t.value {
                Value::Map(e) => e
                    .iter()
                    .find(|(k, _)| k.scalar() == Some("size"))
                    .map(|(_, v)| v),
                _ => None,
            }) {
                None => None,
                Some(n) => Some(ctx.size(n, &format!("tmpfs `size` of {w}"))?),
            };
            Some(Mount::Tmpfs { target, size })
        }
        (other, _) => {
            ctx.error(
                f.get("type").map_or(f.pos, |n| n.pos),
                format!(
                    "volume type `{other}` of {what} is not supported; use bind, volume or tmpfs"
                ),
            );
            None
        }
    }
}

fn decode_restart(ctx: &mut Ctx<'_>, node: &Node, what: &str) -> Option<RestartPolicy> {
    let s = ctx.string(node, &format!("`restart` of {what}"))?;
    let policy = match s.as_str() {
        "no" => RestartPolicy::No,
        "always" => RestartPolicy::Always,
        "unless-stopped" => RestartPolicy::UnlessStopped,
        "on-failure" => RestartPolicy::OnFailure(None),
        other => match other
            .strip_prefix("on-failure:")
            .and_then(|n| n.parse::<u32>().ok())
        {
            Some(n) => RestartPolicy::OnFailure(Some(n)),
            None => {
                let hint = if other == "false" {
                    " (write \"no\" in quotes)"
                } else {
                    ""
                };
                ctx.error(node.pos, format!("`restart` of {what} is `{other}`{hint}; use \"no\", always, on-failure[:N] or unless-stopped"));
                return None;
            }
        },
    };
    Some(policy)
}

fn decode_healthcheck(ctx: &mut Ctx<'_>, node: &Node, what: &str) -> Option<Option<Healthcheck>> {
    let w = format!("`healthcheck` of {what}");
    let f = ctx.map(node, &w, HEALTH_KEYS)?;
    let disable = opt_bool(ctx, &f, "disable", &w)?;
    let test = match f.get("test") {
        None if disable => vec!["NONE".to_owned()],
        None => {
            ctx.error(f.pos, format!("{w} needs a `test`, e.g. `[\"CMD\", \"wget\", \"-q\", \"-O-\", \"http://localhost:8080/healthz\"]`"));
            return None;
        }
        Some(n) => match &n.value {
            Value::Scalar(s) => vec!["CMD-SHELL".to_owned(), s.text.clone()],
            _ => {
                let list: Vec<String> = ctx
                    .string_list(n, &format!("`test` of {w}"), false)?
                    .into_iter()
                    .map(|(s, _)| s)
                    .collect();
                match list.first().map(String::as_str) {
                    Some("NONE") => list,
                    Some("CMD") | Some("CMD-SHELL") if list.len() >= 2 => list,
                    _ => {
                        ctx.error(n.pos, format!("`test` of {w} must start with \"CMD\" or \"CMD-SHELL\" followed by the command, or be [\"NONE\"]"));
                        return None;
                    }
                }
            }
        },
    };
    let interval = opt_duration(ctx, &f, "interval", &w);
    let timeout = opt_duration(ctx, &f, "timeout", &w);
    let start_period = opt_duration(ctx, &f, "start_period", &w);
    let start_interval = opt_duration(ctx, &f, "start_interval", &w);
    let retries = match f.get("retries") {
        None => Some(None),
        Some(n) => ctx
            .uint_in(n, &format!("`retries` of {w}"), 0, 1000)
            .map(|r| Some(r as u32)),
    };
    if disable {
        return Some(None);
    }
    Some(Some(Healthcheck {
        test,
        interval: interval?,
        timeout: timeout?,
        retries: retries?,
        start_period: start_period?,
        start_interval: start_interval?,
    }))
}

fn decode_depends(
    ctx: &mut Ctx<'_>,
    node: &Node,
    me: &str,
    what: &str,
    refs: &Refs<'_>,
) -> Option<BTreeMap<String, DependsCondition>> {
    let w = format!("`depends_on` of {what}");
    let mut out = BTreeMap::new();
    let mut entries: Vec<(String, Pos, DependsCondition)> = Vec::new();
    match &node.value {
        Value::Seq(_) => {
            for (s, pos) in ctx.string_list(node, &w, false)? {
                entries.push((s, pos, DependsCondition::Started));
            }
        }
        Value::Map(items) => {
            for (k, v) in items {
                let Some(dep) = k.scalar() else {
                    ctx.error(k.pos, format!("service names in {w} must be plain names"));
                    return None;
                };
                let dw = format!("`{dep}` in {w}");
                let cond = if v.is_null() {
                    DependsCondition::Started
                } else {
                    let df = ctx.map(v, &dw, DEPENDS_KEYS)?;
                    match df.get("condition") {
                        None => DependsCondition::Started,
                        Some(c) => match ctx.string(c, &format!("`condition` of {dw}"))?.as_str() {
                            "service_started" => DependsCondition::Started,
                            "service_healthy" => DependsCondition::Healthy,
                            "service_completed_successfully" => {
                                DependsCondition::CompletedSuccessfully
                            }
                            other => {
                                ctx.error(c.pos, format!("`condition` of {dw} is `{other}`; use service_started, service_healthy or service_completed_successfully"));
                                return None;
                            }
                        },
                    }
                };
                entries.push((dep.to_owned(), k.pos, cond));
            }
        }
        _ => {
            ctx.error(
                node.pos,
                format!(
                    "{w} must be a list of service names or a mapping, found {}",
                    node.kind_name()
                ),
            );
            return None;
        }
    }
    let mut ok = true;
    for (dep, pos, cond) in entries {
        if dep == me {
            ctx.error(pos, format!("{what} depends on itself"));
            ok = false;
        } else if !refs.services.contains(&dep.as_str()) {
            ctx.error(
                pos,
                format!("{what} depends on `{dep}`, which is not a service of this stack"),
            );
            ok = false;
        } else {
            out.insert(dep, cond);
        }
    }
    ok.then_some(out)
}

fn check_depends_cycles(ctx: &mut Ctx<'_>, services: &BTreeMap<String, Service>, pos: Pos) {
    // Kahn's algorithm: whatever cannot be ordered is on a cycle.
    let mut remaining: BTreeMap<&str, usize> = services
        .iter()
        .map(|(n, s)| (n.as_str(), s.depends_on.len()))
        .collect();
    let mut ready: Vec<&str> = remaining
        .iter()
        .filter(|(_, d)| **d == 0)
        .map(|(n, _)| *n)
        .collect();
    while let Some(done) = ready.pop() {
        remaining.remove(done);
        for (name, svc) in services {
            if svc.depends_on.contains_key(done) {
                if let Some(d) = remaining.get_mut(name.as_str()) {
                    *d -= 1;
                    if *d == 0 {
                        ready.push(name);
                    }
                }
            }
        }
    }
    if !remaining.is_empty() {
        let names: Vec<&str> = remaining.keys().copied().collect();
        ctx.error(
            pos,
            format!(
                "`depends_on` forms a cycle between services {}",
                names.join(", ")
            ),
        );
    }
}

fn decode_service_networks(
    ctx: &mut Ctx<'_>,
    node: &Node,
    what: &str,
    refs: &Refs<'_>,
) -> Option<BTreeMap<String, ServiceNetwork>> {
    let w = format!("`networks` of {what}");
    let mut entries: Vec<(String, Pos, ServiceNetwork)> = Vec::new();
    match &node.value {
        Value::Seq(_) => {
            for (s, pos) in ctx.string_list(node, &w, false)? {
                entries.push((s, pos, ServiceNetwork::default()));
            }
        }
        Value::Map(items) => {
            for (k, v) in items {
                let Some(net) = k.scalar() else {
                    ctx.error(k.pos, format!("network names in {w} must be plain names"));
                    return None;
                };
                let nw = format!("`{net}` in {w}");
                let sn = if v.is_null() {
                    ServiceNetwork::default()
                } else {
                    let nf = ctx.map(v, &nw, SVC_NET_KEYS)?;
                    let aliases = opt_list(ctx, &nf, "aliases", &nw, false)?;
                    let ipv4_address = opt_string(ctx, &nf, "ipv4_address", &nw)?;
                    ServiceNetwork {
                        aliases,
                        ipv4_address,
                    }
                };
                entries.push((net.to_owned(), k.pos, sn));
            }
        }
        _ => {
            ctx.error(
                node.pos,
                format!(
                    "{w} must be a list of network names or a mapping, found {}",
                    node.kind_name()
                ),
            );
            return None;
        }
    }
    let mut out = BTreeMap::new();
    let mut ok = true;
    for (net, pos, sn) in entries {
        if net != "default" && !refs.networks.contains(&net) {
            ctx.error(pos, format!("{what} joins network `{net}`, which is not declared under the top-level `networks`"));
            ok = false;
        } else {
            out.insert(net, sn);
        }
    }
    ok.then_some(out)
}

fn decode_ulimits(ctx: &mut Ctx<'_>, node: &Node, what: &str) -> Option<BTreeMap<String, Ulimit>> {
    let w = format!("`ulimits` of {what}");
    let Value::Map(items) = &node.value else {
        ctx.error(
            node.pos,
            format!(
                "{w} must be a mapping such as `nofile: {{ soft: 1024, hard: 4096 }}`, found {}",
                node.kind_name()
            ),
        );
        return None;
    };
    let mut out = BTreeMap::new();
    let mut ok = true;
    for (k, v) in items {
        let Some(name) = k.scalar() else {
            ctx.error(k.pos, format!("names in {w} must be plain names"));
            ok = false;
            continue;
        };
        let uw = format!("`{name}` in {w}");
        let limit = match &v.value {
            Value::Scalar(_) => ctx.uint(v, &uw).map(|n| Ulimit {
                soft: n as i64,
                hard: n as i64,
            }),
            _ => (|| {
                let uf = ctx.map(v, &uw, ULIMIT_KEYS)?;
                let soft = uf
                    .required(ctx, "soft", &uw)
                    .and_then(|n| ctx.uint(n, &format!("`soft` of {uw}")));
                let hard = uf
                    .required(ctx, "hard", &uw)
                    .and_then(|n| ctx.uint(n, &format!("`hard` of {uw}")));
                let (soft, hard) = (soft?, hard?);
                if soft > hard {
                    ctx.error(
                        uf.pos,
                        format!("{uw}: the soft limit {soft} is above the hard limit {hard}"),
                    );
                    return None;
                }
                Some(Ulimit {
                    soft: soft as i64,
                    hard: hard as i64,
                })
            })(),
        };
        match limit {
            Some(l) => {
                out.insert(name.to_owned(), l);
            }
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn decode_volume_def(ctx: &mut Ctx<'_>, node: &Node, what: &str) -> Option<VolumeDef> {
    let f = ctx.map(node, what, VOLUME_DEF_KEYS)?;
    let driver = opt_string(ctx, &f, "driver", what);
    let driver_opts = f.get("driver_opts").map_or(Some(BTreeMap::new()), |n| {
        string_map(ctx, n, &format!("`driver_opts` of {what}"))
    });
    let external = opt_bool(ctx, &f, "external", what);
    let labels = f.get("labels").map_or(Some(BTreeMap::new()), |n| {
        string_map(ctx, n, &format!("`labels` of {what}"))
    });
    let name = opt_string(ctx, &f, "name", what);
    Some(VolumeDef {
        driver: driver?,
        driver_opts: driver_opts?,
        external: external?,
        labels: labels?,
        name: name?,
    })
}

fn decode_network_def(ctx: &mut Ctx<'_>, node: &Node, what: &str) -> Option<NetworkDef> {
    let f = ctx.map(node, what, NETWORK_DEF_KEYS)?;
    let driver = opt_string(ctx, &f, "driver", what);
    let driver_opts = f.get("driver_opts").map_or(Some(BTreeMap::new()), |n| {
        string_map(ctx, n, &format!("`driver_opts` of {what}"))
    });
    let external = opt_bool(ctx, &f, "external", what);
    let internal = opt_bool(ctx, &f, "internal", what);
    let _attachable = opt_bool(ctx, &f, "attachable", what);
    let enable_ipv6 = opt_bool(ctx, &f, "enable_ipv6", what);
    let labels = f.get("labels").map_or(Some(BTreeMap::new()), |n| {
        string_map(ctx, n, &format!("`labels` of {what}"))
    });
    let name = opt_string(ctx, &f, "name", what);
    let ipam = match f.get("ipam") {
        None => Some(Vec::new()),
        Some(n) => (|| {
            let iw = format!("`ipam` of {what}");
            let inf = ctx.map(n, &iw, IPAM_KEYS)?;
            let mut pools = Vec::new();
            if let Some(c) = inf.get("config") {
                for item in ctx.seq(c, &format!("`config` of {iw}"))? {
                    let pw = format!("a pool of {iw}");
                    let pf = ctx.map(item, &pw, IPAM_POOL_KEYS)?;
                    pools.push(IpamPool {
                        subnet: opt_string(ctx, &pf, "subnet", &pw)?,
                        gateway: opt_string(ctx, &pf, "gateway", &pw)?,
                        ip_range: opt_string(ctx, &pf, "ip_range", &pw)?,
                    });
                }
            }
            Some(pools)
        })(),
    };
    Some(NetworkDef {
        driver: driver?,
        driver_opts: driver_opts?,
        external: external?,
        internal: internal?,
        labels: labels?,
        name: name?,
        enable_ipv6: enable_ipv6?,
        ipam: ipam?,
    })
}

fn decode_fleet_ext(ctx: &mut Ctx<'_>, node: &Node, what: &str) -> Option<Option<HttpProbe>> {
    let w = format!("`x-fleet` of {what}");
    let f = ctx.map(node, &w, FLEET_EXT_KEYS)?;
    let Some(h) = f.get("health") else {
        return Some(None);
    };
    let hw = format!("`health` of {w}");
    let hf = ctx.map(h, &hw, FLEET_HEALTH_KEYS)?;
    let Some(p) = hf.get("http") else {
        return Some(None);
    };
    let pw = format!("`http` probe of {what}");
    let pf = ctx.map(p, &pw, HTTP_PROBE_KEYS)?;
    let port = pf
        .required(ctx, "port", &pw)
        .and_then(|n| ctx.uint_in(n, &format!("`port` of {pw}"), 1, 65535));
    let path = match pf.get("path") {
        None => Some("/".to_owned()),
        Some(n) => ctx.string(n, &format!("`path` of {pw}")).and_then(|s| {
            if !s.starts_with('/') {
                ctx.error(
                    n.pos,
                    format!("`path` of {pw} must start with `/`, found `{s}`"),
                );
                return None;
            }
            Some(s)
        }),
    };
    let expect_status = match pf.get("expect_status") {
        None => Some(None),
        Some(n) => ctx
            .uint_in(n, &format!("`expect_status` of {pw}"), 100, 599)
            .map(|s| Some(s as u16)),
    };
    let timeout = match pf.get("timeout") {
        None => Some(DEFAULT_PROBE_TIMEOUT),
        Some(n) => ctx.duration(n, &format!("`timeout` of {pw}")),
    };
    Some(Some(HttpProbe {
        port: port? as u16,
        path: path?,
        expect_status: expect_status?,
        timeout: timeout?,
    }))
}
