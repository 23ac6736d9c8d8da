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
use crate::interpolate::{self, Piece};
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
    "expose",
    "profiles",
    "deploy",
    "pids_limit",
    "mem_reservation",
];

const SERVICE_SPECIAL: &[(&str, &str)] = &[
    ("build", "devices run images, they do not build them; build and push the image in CI and name it in `image:`"),
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
const PORT_KEYS: &[&str] = &["target", "published", "host_ip", "protocol", "mode"];
const PORT_SPECIAL: &[(&str, &str)] = &[
    (
        "name",
        "documentation only, it changes nothing on the container; write it as a YAML comment",
    ),
    (
        "app_protocol",
        "documentation only, it changes nothing on the container; write it as a YAML comment",
    ),
];
const MOUNT_KEYS: &[&str] = &[
    "type",
    "source",
    "target",
    "read_only",
    "consistency",
    "bind",
    "volume",
    "tmpfs",
];
const BIND_OPTION_KEYS: &[&str] = &["create_host_path", "propagation", "selinux"];
const VOLUME_OPTION_KEYS: &[&str] = &["nocopy"];
const TMPFS_OPTION_KEYS: &[&str] = &["size", "mode"];
const PROPAGATIONS: &[&str] = &[
    "rprivate", "private", "rshared", "shared", "rslave", "slave",
];
const CONSISTENCIES: &[&str] = &["consistent", "cached", "delegated"];
const ENV_FILE_KEYS: &[&str] = &["path", "required"];
const ENV_FILE_SPECIAL: &[(&str, &str)] = &[(
    "format",
    "not supported; an env file is `NAME=value` lines, values taken as written",
)];
const DEPLOY_KEYS: &[&str] = &["resources"];
const DEPLOY_SPECIAL: &[(&str, &str)] = &[
    (
        "mode",
        "Swarm only; a device runs one container per service, delete it",
    ),
    (
        "replicas",
        "Swarm only; a device runs one container per service (define a second service to run two)",
    ),
    (
        "placement",
        "Swarm only; choose the devices a stack runs on with its `select` in devices.yaml",
    ),
    (
        "update_config",
        "Swarm only; the controller's rollout waves decide how an update spreads",
    ),
    (
        "rollback_config",
        "Swarm only; the agent rolls a failed release back by itself",
    ),
    ("restart_policy", "Swarm only; use the service's `restart`"),
    (
        "labels",
        "Swarm only (labels on the Swarm service); use the service's `labels` for container labels",
    ),
    (
        "endpoint_mode",
        "Swarm only; services reach each other by name on their networks",
    ),
];
const RESOURCE_KEYS: &[&str] = &["limits", "reservations"];
const LIMIT_KEYS: &[&str] = &["cpus", "memory", "pids"];
const RESERVATION_KEYS: &[&str] = &["cpus", "memory"];
const RESERVATION_SPECIAL: &[(&str, &str)] = &[
    ("devices", "device reservations (GPUs) are not supported; give device nodes in the service's `devices`"),
    ("generic_resources", "Swarm only; delete it"),
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
/// `profiles` names, as Compose allows them.
fn is_profile_name(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}
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
    // Services with a non-empty `profiles` list are not started; others may not need them.
    let profiled: Vec<&str> = entries
        .iter()
        .filter(|(_, v)| match find_key(v, "profiles").map(|p| &p.value) {
            Some(Value::Seq(items)) => !items.is_empty(),
            Some(Value::Null) | None => false,
            Some(_) => true,
        })
        .filter_map(|(k, _)| k.scalar())
        .collect();
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
        profiled: &profiled,
        volumes: &declared_volumes,
        networks: &declared_networks,
        sc,
    };
    let mut services = BTreeMap::new();
    let mut not_started = BTreeMap::new();
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
            Some((_, profiles)) if !profiles.is_empty() => {
                not_started.insert(name.to_owned(), profiles);
            }
            Some((s, _)) => {
                services.insert(name.to_owned(), s);
            }
            None => ok = false,
        }
    }
    if ok && services.is_empty() {
        ctx.error(
            services_node.pos,
            "every service has `profiles`, so none would start; a stack needs at least one service without profiles",
        );
        ok = false;
    }
    if ok {
        check_depends_cycles(ctx, &services, services_node.pos);
    }
    let file = ComposeFile {
        services,
        volumes: volumes?,
        networks: networks?,
        not_started,
    };
    ok.then_some(file)
}

struct Refs<'a> {
    services: &'a [&'a str],
    /// Services with profiles: not started.
    profiled: &'a [&'a str],
    volumes: &'a [String],
    networks: &'a [String],
    sc: &'a StackContext<'a>,
}

/// The value of `key` in `node` if `node` is a mapping that has it.
fn find_key<'n>(node: &'n Node, key: &str) -> Option<&'n Node> {
    match &node.value {
        Value::Map(entries) => entries
            .iter()
            .find(|(k, _)| k.scalar() == Some(key))
            .map(|(_, v)| v),
        _ => None,
    }
}

/// When `text` (a field the agent takes as written) uses a `${VAR}` reference, the message
/// that says so and, where the reference has a default or is `${PWD}`, what to write instead.
fn variable_problem(text: &str, what: &str) -> Option<String> {
    let var = interpolate::first_reference(text)?;
    let mut suggestion = Some(String::new());
    if let Ok(pieces) = interpolate::parse(text) {
        for p in pieces {
            let Some(out) = suggestion.as_mut() else {
                break;
            };
            match &p {
                Piece::Text(t) => out.push_str(t),
                Piece::Ref { name, .. } if name == "PWD" => out.push('.'),
                p => match p.default_value() {
                    Some(d) if !d.is_empty() => out.push_str(d),
                    _ => suggestion = None,
                },
            }
        }
    }
    let hint = match suggestion {
        Some(s) => format!("; write `{s}` instead"),
        None => "; write the value itself (a device path is the same on every device that runs the stack)".to_owned(),
    };
    let pwd = if var == "PWD" {
        " (relative paths such as `./conf` already start at the stack directory)"
    } else {
        ""
    };
    Some(format!(
        "{what} uses the variable `{var}`, but the agent substitutes variables only in `environment` values, from the device's secrets{pwd}{hint}"
    ))
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

/// Decodes one service and its `profiles` (empty: started).
fn decode_service(
    ctx: &mut Ctx<'_>,
    name: &str,
    node: &Node,
    refs: &Refs<'_>,
) -> Option<(Service, Vec<String>)> {
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
        // `build` and `extends` were refused with their own message, which says what to do.
        None if find_key(node, "build").is_some() || find_key(node, "extends").is_some() => None,
        None => {
            ctx.error(f.pos, format!("{what} has no `image`; every service runs a prebuilt image"));
            None
        }
        Some(n) => ctx.nonempty_string(n, &format!("`image` of {what}")).and_then(|s| {
            if let Some(msg) = variable_problem(&s, &format!("image `{s}` of {what}")) {
                ctx.error(n.pos, msg);
                return None;
            }
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
    for (key, words) in [("command", &command), ("entrypoint", &entrypoint)] {
        if let (Some(Some(words)), Some(n)) = (words, f.get(key)) {
            if let Some(msg) = secrets::check_command(name, refs.sc.stack, key, words) {
                ctx.error(n.pos, msg);
                ok = false;
            }
        }
    }
    let environment = match f.get("environment") {
        None => Some(BTreeMap::new()),
        Some(n) => ctx
            .key_values(n, &format!("`environment` of {what}"))
            .map(|kv| {
                let mut env = BTreeMap::new();
                for (k, pos, v) in kv {
                    if let Some(v) = &v {
                        // The agent fills references in with this same parser.
                        if let Err(e) = interpolate::parse(v) {
                            ctx.error(pos, format!("`{k}` in `environment` of {what}: {e}"));
                            ok = false;
                        } else if let Some(msg) = secrets::check_env(name, refs.sc.stack, &k, v) {
                            ctx.error(pos, msg);
                            ok = false;
                        }
                    }
                    env.insert(k, v);
                }
                env
            }),
    };
    let env_file = f
        .get("env_file")
        .map_or(Some(Vec::new()), |n| decode_env_files(ctx, n, &what, refs));
    let ports = f
        .get("ports")
        .map_or(Some(Vec::new()), |n| decode_ports(ctx, n, &what));
    let expose = f
        .get("expose")
        .map_or(Some(Vec::new()), |n| decode_expose(ctx, n, &what));
    let volumes = f
        .get("volumes")
        .map_or(Some(Vec::new()), |n| decode_mounts(ctx, n, &what, refs));
    let tmpfs = match f.get("tmpfs") {
        None => Some(Vec::new()),
        Some(n) => ctx.string_list(n, &format!("`tmpfs` of {what}"), true),
    };
    if let (Some(volumes), Some(tmpfs)) = (&volumes, &tmpfs) {
        if !check_mount_targets(ctx, volumes, tmpfs, &what) {
            ok = false;
        }
    }
    let volumes = volumes.map(|v| v.into_iter().map(|(m, _)| m).collect::<Vec<_>>());
    let tmpfs = tmpfs.map(|t| t.into_iter().map(|(s, _)| s).collect::<Vec<_>>());
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
    let profiles = match f.get("profiles") {
        None => Some(Vec::new()),
        Some(n) => decode_profiles(ctx, n, &what),
    };
    let started = profiles.as_ref().is_none_or(|p| p.is_empty());
    let depends_on = f.get("depends_on").map_or(Some(Depends::default()), |n| {
        decode_depends(ctx, n, name, &what, refs, started)
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
                if started && refs.profiled.contains(&target) {
                    ctx.error(pos, format!("`network_mode` of {what} names service `{target}`, which has `profiles` and is not started; drop its `profiles` or give this service the same ones"));
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
        Some(n) => cpu_count(ctx, n, &format!("`cpus` of {what}")).map(Some),
    };
    let pids_limit = match f.get("pids_limit") {
        None => Some(None),
        Some(n) => pids(ctx, n, &format!("`pids_limit` of {what}")).map(Some),
    };
    let mem_reservation = match f.get("mem_reservation") {
        None => Some(None),
        Some(n) => ctx
            .size(n, &format!("`mem_reservation` of {what}"))
            .map(Some),
    };
    let resources = match (mem_limit, cpus, pids_limit, mem_reservation) {
        (Some(mem_limit), Some(cpus), Some(pids_limit), Some(mem_reservation)) => {
            let mut r = Resources {
                mem_limit,
                cpus,
                pids_limit,
                mem_reservation,
            };
            match f.get("deploy") {
                Some(n) => decode_deploy(ctx, n, &what, &mut r).map(|()| r),
                None => Some(r),
            }
        }
        _ => None,
    };
    if let Some(Resources {
        mem_limit: Some(limit),
        mem_reservation: Some(reservation),
        ..
    }) = &resources
    {
        if reservation > limit {
            ctx.error(
                f.pos,
                format!("{what} reserves {reservation} bytes of memory but is limited to {limit}; Docker refuses a reservation above the limit"),
            );
            ok = false;
        }
    }
    let pid = opt_string(ctx, &f, "pid", &what);
    let http_probe = match f.get("x-fleet") {
        None => Some(None),
        Some(n) => decode_fleet_ext(ctx, n, &what),
    };

    let depends_on = depends_on?;
    let resources = resources?;
    let service = Service {
        image: image?,
        command: command?,
        entrypoint: entrypoint?,
        environment: environment?,
        env_file: env_file?,
        ports: ports?,
        expose: expose?,
        volumes: volumes?,
        tmpfs: tmpfs?,
        restart: restart?,
        healthcheck: healthcheck?,
        labels: labels?,
        depends_on: depends_on.conditions,
        restart_with: depends_on.restart_with,
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
        mem_limit: resources.mem_limit,
        cpus: resources.cpus,
        pids_limit: resources.pids_limit,
        mem_reservation: resources.mem_reservation,
        pid: pid?,
        http_probe: http_probe?,
    };
    let profiles = profiles?;
    if let (false, Some(n)) = (profiles.is_empty(), f.get("profiles")) {
        ctx.warning(
            n.pos,
            format!(
                "{what} has profiles ({}) and is not started: the agent starts only services without profiles, as `docker compose up` does by default",
                profiles.join(", ")
            ),
        );
    }
    ok.then_some((service, profiles))
}

/// `env_file`: a path, or a list of paths and `{ path, required }` mappings.
fn decode_env_files(
    ctx: &mut Ctx<'_>,
    node: &Node,
    what: &str,
    refs: &Refs<'_>,
) -> Option<Vec<EnvFile>> {
    let w = format!("`env_file` of {what}");
    let items: Vec<&Node> = match &node.value {
        Value::Scalar(_) => vec![node],
        Value::Seq(items) => items.iter().collect(),
        _ => {
            ctx.error(
                node.pos,
                format!(
                    "{w} must be a path, or a list of paths and `{{ path, required }}` mappings, found {}",
                    node.kind_name()
                ),
            );
            return None;
        }
    };
    let rules = KeyRules {
        allowed: ENV_FILE_KEYS,
        special: ENV_FILE_SPECIAL,
        extensions: false,
    };
    let mut out = Vec::new();
    let mut ok = true;
    for item in items {
        let entry = match &item.value {
            Value::Scalar(s) => Some((s.text.clone(), item.pos, true)),
            Value::Map(_) => (|| {
                let ew = format!("an entry of {w}");
                let ef = ctx.map_with(item, &ew, &rules)?;
                let path = ef.required(ctx, "path", &ew).and_then(|n| {
                    ctx.nonempty_string(n, &format!("`path` of {ew}"))
                        .map(|p| (p, n.pos))
                });
                let required = match ef.get("required") {
                    None => Some(true),
                    Some(n) => ctx.bool(n, &format!("`required` of {ew}")),
                };
                let ((path, pos), required) = (path?, required?);
                Some((path, pos, required))
            })(),
            _ => {
                ctx.error(
                    item.pos,
                    format!(
                        "each entry of {w} must be a path or a `{{ path, required }}` mapping, found {}",
                        item.kind_name()
                    ),
                );
                None
            }
        };
        let Some((path, pos, required)) = entry else {
            ok = false;
            continue;
        };
        if let Some(msg) = variable_problem(&path, &format!("`env_file` `{path}` of {what}")) {
            ctx.error(pos, msg);
            ok = false;
            continue;
        }
        if !path.starts_with('/') {
            let problem = match stack_path_exists(refs.sc, &path) {
                Err(msg) => Some(msg),
                Ok(false) if required => Some(missing_in_stack(refs.sc)),
                Ok(_) => None,
            };
            if let Some(msg) = problem {
                ctx.error(pos, format!("`env_file` `{path}` of {what} {msg}"));
                ok = false;
                continue;
            }
        }
        out.push(EnvFile { path, required });
    }
    ok.then_some(out)
}

/// `expose`: container ports (`3000`, `8000-8010`, `9090/udp`), never published.
fn decode_expose(ctx: &mut Ctx<'_>, node: &Node, what: &str) -> Option<Vec<ExposedPort>> {
    let w = format!("`expose` of {what}");
    let mut out = Vec::new();
    let mut ok = true;
    for (entry, pos) in ctx.string_list(node, &w, false)? {
        let parsed = if entry.contains(':') {
            Err(format!("`expose` lists container ports only, e.g. `{}`; to publish a port on the device use `ports`", entry.rsplit(':').next().unwrap_or("80")))
        } else {
            let (ports, protocol) = match entry.rsplit_once('/') {
                Some((p, proto)) => (p, proto),
                None => (entry.as_str(), "tcp"),
            };
            if matches!(protocol, "tcp" | "udp" | "sctp") {
                parse_port_range(ports).map(|ports| ExposedPort {
                    ports,
                    protocol: protocol.to_owned(),
                })
            } else {
                Err(format!(
                    "protocol `{protocol}` is not supported; use tcp, udp or sctp"
                ))
            }
        };
        match parsed {
            Ok(p) => out.push(p),
            Err(e) => {
                ctx.error(pos, format!("`expose` entry `{entry}` of {what}: {e}"));
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

fn decode_profiles(ctx: &mut Ctx<'_>, node: &Node, what: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut ok = true;
    for (p, pos) in ctx.string_list(node, &format!("`profiles` of {what}"), false)? {
        if is_profile_name(&p) {
            out.push(p);
        } else {
            ctx.error(pos, format!("profile `{p}` of {what} is not a name (letters, digits, `_`, `.`, `-`, starting with a letter or digit)"));
            ok = false;
        }
    }
    ok.then_some(out)
}

/// A container path as Docker compares mount points: without a trailing `/`.
fn mount_point(target: &str) -> &str {
    match target.trim_end_matches('/') {
        "" => "/",
        t => t,
    }
}

/// Two mounts on one container path: Docker refuses to create the container ("Duplicate mount
/// point"), which on a device would only show as a failed health window. False if any.
fn check_mount_targets(
    ctx: &mut Ctx<'_>,
    volumes: &[(Mount, Pos)],
    tmpfs: &[(String, Pos)],
    what: &str,
) -> bool {
    let mut seen: BTreeMap<&str, (Pos, &str)> = BTreeMap::new();
    let mut ok = true;
    let targets = volumes
        .iter()
        .map(|(m, pos)| (m.target(), *pos, "volumes"))
        .chain(tmpfs.iter().map(|(t, pos)| {
            (
                t.split_once(':').map_or(t.as_str(), |(p, _)| p),
                *pos,
                "tmpfs",
            )
        }));
    for (target, pos, key) in targets {
        match seen.get(mount_point(target)) {
            Some((first, first_key)) => {
                ctx.error(
                    pos,
                    format!(
                        "`{key}` of {what} mounts `{target}` again (also in `{first_key}` at line {}); Docker refuses two mounts on one path, so the container would not start",
                        first.line
                    ),
                );
                ok = false;
            }
            None => {
                seen.insert(mount_point(target), (pos, key));
            }
        }
    }
    ok
}

/// Resource settings from the service's own keys and `deploy.resources`.
struct Resources {
    mem_limit: Option<u64>,
    cpus: Option<f64>,
    pids_limit: Option<i64>,
    mem_reservation: Option<u64>,
}

fn cpu_count(ctx: &mut Ctx<'_>, n: &Node, what: &str) -> Option<f64> {
    let c = ctx.number(n, what)?;
    if c <= 0.0 || c > 1024.0 {
        ctx.error(n.pos, format!("{what} must be more than 0, found {c}"));
        return None;
    }
    Some(c)
}

fn pids(ctx: &mut Ctx<'_>, n: &Node, what: &str) -> Option<i64> {
    match limit_value(ctx, n, what)? {
        0 => {
            ctx.error(
                n.pos,
                format!("{what} must be at least 1, or -1 for unlimited, found 0"),
            );
            None
        }
        v => Some(v),
    }
}

/// A whole number, or `-1` for unlimited (ulimits, pids).
fn limit_value(ctx: &mut Ctx<'_>, node: &Node, what: &str) -> Option<i64> {
    let text = match &node.value {
        Value::Scalar(s) if s.plain => s.text.as_str(),
        Value::Scalar(s) => s.text.trim(),
        _ => {
            ctx.error(
                node.pos,
                format!(
                    "{what} must be a whole number or -1 (unlimited), found {}",
                    node.kind_name()
                ),
            );
            return None;
        }
    };
    match text.parse::<i64>() {
        Ok(n) if n >= -1 => Some(n),
        _ => {
            ctx.error(
                node.pos,
                format!("{what} must be a whole number or -1 (unlimited), found `{text}`"),
            );
            None
        }
    }
}

/// `deploy`: `resources` limits and reservations are applied as `docker compose` applies them
/// without Swarm; the rest of `deploy` is Swarm's and refused by name. A setting given both
/// here and as a service key must agree.
fn decode_deploy(ctx: &mut Ctx<'_>, node: &Node, what: &str, r: &mut Resources) -> Option<()> {
    let w = format!("`deploy` of {what}");
    let rules = KeyRules {
        allowed: DEPLOY_KEYS,
        special: DEPLOY_SPECIAL,
        extensions: false,
    };
    let f = ctx.map_with(node, &w, &rules)?;
    let mut ok = f.iter().all(|(k, _, _)| DEPLOY_KEYS.contains(&k));
    let Some(res) = f.get("resources") else {
        return ok.then_some(());
    };
    let rw = format!("`resources` of {w}");
    let rf = ctx.map(res, &rw, RESOURCE_KEYS)?;
    fn agree<T: PartialEq + std::fmt::Debug>(
        ctx: &mut Ctx<'_>,
        slot: &mut Option<T>,
        value: T,
        pos: Pos,
        deploy_key: &str,
        service_key: &str,
        what: &str,
    ) -> bool {
        match slot {
            Some(old) if *old != value => {
                ctx.error(pos, format!("`{deploy_key}` of {what} differs from its `{service_key}`; they are the same setting, give one"));
                false
            }
            _ => {
                *slot = Some(value);
                true
            }
        }
    }
    if let Some(l) = rf.get("limits") {
        let lw = format!("`limits` of {rw}");
        match ctx.map(l, &lw, LIMIT_KEYS) {
            None => ok = false,
            Some(lf) => {
                if let Some(n) = lf.get("memory") {
                    match ctx.size(n, &format!("`memory` of {lw}")) {
                        Some(v) => {
                            ok &= agree(
                                ctx,
                                &mut r.mem_limit,
                                v,
                                n.pos,
                                "deploy.resources.limits.memory",
                                "mem_limit",
                                what,
                            )
                        }
                        None => ok = false,
                    }
                }
                if let Some(n) = lf.get("cpus") {
                    match cpu_count(ctx, n, &format!("`cpus` of {lw}")) {
                        Some(v) => {
                            ok &= agree(
                                ctx,
                                &mut r.cpus,
                                v,
                                n.pos,
                                "deploy.resources.limits.cpus",
                                "cpus",
                                what,
                            )
                        }
                        None => ok = false,
                    }
                }
                if let Some(n) = lf.get("pids") {
                    match pids(ctx, n, &format!("`pids` of {lw}")) {
                        Some(v) => {
                            ok &= agree(
                                ctx,
                                &mut r.pids_limit,
                                v,
                                n.pos,
                                "deploy.resources.limits.pids",
                                "pids_limit",
                                what,
                            )
                        }
                        None => ok = false,
                    }
                }
            }
        }
    }
    if let Some(rs) = rf.get("reservations") {
        let sw = format!("`reservations` of {rw}");
        let rules = KeyRules {
            allowed: RESERVATION_KEYS,
            special: RESERVATION_SPECIAL,
            extensions: false,
        };
        match ctx.map_with(rs, &sw, &rules) {
            None => ok = false,
            Some(sf) => {
                ok &= sf.iter().all(|(k, _, _)| RESERVATION_KEYS.contains(&k));
                if let Some(n) = sf.get("memory") {
                    match ctx.size(n, &format!("`memory` of {sw}")) {
                        Some(v) => {
                            ok &= agree(
                                ctx,
                                &mut r.mem_reservation,
                                v,
                                n.pos,
                                "deploy.resources.reservations.memory",
                                "mem_reservation",
                                what,
                            )
                        }
                        None => ok = false,
                    }
                }
                if let Some(n) = sf.get("cpus") {
                    if cpu_count(ctx, n, &format!("`cpus` of {sw}")).is_some() {
                        ctx.warning(n.pos, format!("`cpus` of {sw} has no effect: Docker reserves CPUs only for Swarm services (`docker compose` ignores it too); the memory reservation and the limits apply"));
                    } else {
                        ok = false;
                    }
                }
            }
        }
    }
    ok.then_some(())
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
                match variable_problem(&s.text, &format!("port `{}` of {what}", s.text)) {
                    Some(msg) => Err(msg),
                    None => parse_short_port(&s.text)
                        .map_err(|e| format!("port `{}` of {what}: {e}", s.text)),
                }
            }
            Value::Map(_) => {
                let w = format!("a port of {what}");
                let rules = KeyRules {
                    allowed: PORT_KEYS,
                    special: PORT_SPECIAL,
                    extensions: false,
                };
                let Some(pf) = ctx.map_with(item, &w, &rules) else {
                    ok = false;
                    continue;
                };
                if !pf.iter().all(|(k, _, _)| PORT_KEYS.contains(&k)) {
                    ok = false;
                }
                // Without Swarm every published port is bound on the device itself: `host` is
                // what happens; `ingress` (Swarm's routing mesh) cannot be honoured.
                if let Some(n) = pf.get("mode") {
                    match ctx.string(n, &format!("`mode` of {w}")).as_deref() {
                        Some("host") => {}
                        Some("ingress") => {
                            ctx.error(n.pos, format!("`mode: ingress` of {w} is Swarm's routing mesh; a device publishes ports on its own addresses, write `mode: host` or delete `mode`"));
                            ok = false;
                        }
                        Some(other) => {
                            ctx.error(n.pos, format!("`mode` of {w} is `{other}`; use host"));
                            ok = false;
                        }
                        None => ok = false,
                    }
                }
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
    match stack_path_exists(sc, rel)? {
        true => Ok(()),
        false => Err(missing_in_stack(sc)),
    }
}

fn missing_in_stack(sc: &StackContext<'_>) -> String {
    format!(
        "does not exist in stacks/{}/; commit it there or use an absolute path on the device",
        sc.stack
    )
}

/// Whether a path relative to the stack directory exists; an error if it leaves the directory.
fn stack_path_exists(sc: &StackContext<'_>, rel: &str) -> Result<bool, String> {
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
    Ok(sc.tree.get(&full).is_some() || sc.tree.has_dir(&full))
}

/// Options of the short form's third field (`ro`, `rw`, `z`, `Z`, propagation, `nocopy`,
/// consistency), before it is known what kind of mount they apply to.
#[derive(Default)]
struct ShortOptions<'a> {
    read_only: Option<bool>,
    selinux: Option<&'a str>,
    propagation: Option<&'a str>,
    nocopy: bool,
    consistency: Option<&'a str>,
}

fn parse_short_options<'a>(mode: &'a str) -> Result<ShortOptions<'a>, String> {
    let mut o = ShortOptions::default();
    let conflict = |a: &str, b: &str| format!("has both `{a}` and `{b}`; give one");
    for opt in mode.split(',') {
        match opt {
            "ro" | "rw" => {
                let ro = opt == "ro";
                if o.read_only.is_some_and(|old| old != ro) {
                    return Err(conflict("ro", "rw"));
                }
                o.read_only = Some(ro);
            }
            "z" | "Z" => {
                if let Some(old) = o.selinux.filter(|old| *old != opt) {
                    return Err(conflict(old, opt));
                }
                o.selinux = Some(opt);
            }
            "nocopy" => o.nocopy = true,
            p if PROPAGATIONS.contains(&p) => {
                if let Some(old) = o.propagation.filter(|old| *old != p) {
                    return Err(conflict(old, p));
                }
                o.propagation = Some(p);
            }
            c if CONSISTENCIES.contains(&c) => o.consistency = Some(c),
            "" => return Err("has an empty mode".into()),
            other => {
                return Err(format!(
                "has unknown mode `{other}`; use ro or rw, z or Z, nocopy, or a propagation ({})",
                PROPAGATIONS.join(", ")
            ))
            }
        }
    }
    Ok(o)
}

fn parse_short_mount(s: &str, what: &str, refs: &Refs<'_>) -> Result<Mount, String> {
    let vw = format!("volume `{s}` of {what}");
    if let Some(msg) = variable_problem(s, &vw) {
        return Err(msg);
    }
    let parts: Vec<&str> = s.split(':').collect();
    let (source, target, mode) = match parts.as_slice() {
        [t] => (None, *t, None),
        [src, t] => (Some(*src), *t, None),
        [src, t, m] => (Some(*src), *t, Some(*m)),
        _ => return Err(format!("{vw} is not `SOURCE:TARGET[:MODE]`")),
    };
    if !target.starts_with('/') {
        return Err(format!(
            "{vw} has target `{target}`; the container path must be absolute"
        ));
    }
    let o = match mode {
        Some(m) => parse_short_options(m).map_err(|e| format!("{vw} {e}"))?,
        None => ShortOptions::default(),
    };
    let read_only = o.read_only.unwrap_or(false);
    let Some(source) = source else {
        return Ok(Mount::Anonymous {
            target: target.to_owned(),
            read_only: false,
            nocopy: false,
        });
    };
    if source.starts_with('~') {
        return Err(format!(
            "{vw} starts with `~`; a device has no home directory to expand, use an absolute path"
        ));
    }
    let bind = source.starts_with('/') || source.starts_with('.');
    if bind {
        if o.nocopy {
            return Err(format!(
                "{vw} has mode `nocopy`, which applies to volumes, not bind mounts"
            ));
        }
        if source.starts_with('.') {
            check_stack_path(refs.sc, source)
                .map_err(|e| format!("bind mount source `{source}` of {what} {e}"))?;
        }
        return Ok(Mount::Bind {
            source: source.to_owned(),
            target: target.to_owned(),
            read_only,
            create_host_path: true,
            propagation: o.propagation.map(str::to_owned),
            selinux: o.selinux.map(str::to_owned),
            consistency: o.consistency.map(str::to_owned),
        });
    }
    for (given, mode) in [
        (o.selinux, o.selinux.unwrap_or_default()),
        (o.propagation, o.propagation.unwrap_or_default()),
        (o.consistency, o.consistency.unwrap_or_default()),
    ] {
        if given.is_some() {
            return Err(format!(
                "{vw} has mode `{mode}`, which applies to bind mounts, not named volumes"
            ));
        }
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
        nocopy: o.nocopy,
    })
}

/// A service's `volumes`, each with where it was written.
fn decode_mounts(
    ctx: &mut Ctx<'_>,
    node: &Node,
    what: &str,
    refs: &Refs<'_>,
) -> Option<Vec<(Mount, Pos)>> {
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
            Some(m) => out.push((m, item.pos)),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// A tmpfs `mode`, octal as in `chmod` (`1777`, `0o1777`, `"0755"`).
fn tmpfs_mode(ctx: &mut Ctx<'_>, n: &Node, what: &str) -> Option<u32> {
    let text = ctx.string(n, what)?;
    let digits = text.strip_prefix("0o").unwrap_or(&text);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o7777 => Some(m),
        _ => {
            ctx.error(
                n.pos,
                format!("{what} must be an octal file mode such as 1777 or 0755, found `{text}`"),
            );
            None
        }
    }
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
    let source = opt_string(ctx, &f, "source", &w).and_then(|src| {
        if let (Some(s), Some(n)) = (&src, f.get("source")) {
            if let Some(msg) = variable_problem(s, &format!("bind mount source `{s}` of {what}")) {
                ctx.error(n.pos, msg);
                return None;
            }
        }
        Some(src)
    });
    let read_only = opt_bool(ctx, &f, "read_only", &w);
    let consistency = opt_string(ctx, &f, "consistency", &w).and_then(|c| match c {
        Some(c) if !CONSISTENCIES.contains(&c.as_str()) => {
            ctx.error(
                f.get("consistency").map_or(f.pos, |n| n.pos),
                format!(
                    "`consistency` of {w} is `{c}`; use {}",
                    CONSISTENCIES.join(", ")
                ),
            );
            None
        }
        c => Some(c),
    });
    let (kind, target, source, read_only, consistency) =
        (kind?, target?, source?, read_only?, consistency?);
    // Options belong to one type; a block for another type would be ignored, so it is refused.
    let mut ok = true;
    for sub in ["bind", "volume", "tmpfs"] {
        if let (Some(n), true) = (f.get(sub), sub != kind) {
            ctx.error(
                n.pos,
                format!("`{sub}` options on a `{kind}` mount of {what} would have no effect; use `{kind}` options or change the `type`"),
            );
            ok = false;
        }
    }
    if consistency.is_some() && kind != "bind" {
        ctx.error(
            f.get("consistency").map_or(f.pos, |n| n.pos),
            format!("`consistency` of {w} applies to bind mounts, not `{kind}`"),
        );
        ok = false;
    }
    let pos = f.get("source").map_or(f.pos, |n| n.pos);
    let mount = match (kind.as_str(), source) {
        ("bind", Some(src)) => {
            if !src.starts_with('/') {
                if let Err(e) = check_stack_path(refs.sc, &src) {
                    ctx.error(pos, format!("bind mount source `{src}` of {what} {e}"));
                    return None;
                }
            }
            let mut create_host_path = true;
            let mut propagation = None;
            let mut selinux = None;
            if let Some(b) = f.get("bind") {
                let bw = format!("`bind` options of {w}");
                let bf = ctx.map(b, &bw, BIND_OPTION_KEYS)?;
                if let Some(n) = bf.get("create_host_path") {
                    create_host_path = ctx.bool(n, &format!("`create_host_path` of {bw}"))?;
                }
                if let Some(n) = bf.get("propagation") {
                    let p = ctx.string(n, &format!("`propagation` of {bw}"))?;
                    if !PROPAGATIONS.contains(&p.as_str()) {
                        ctx.error(
                            n.pos,
                            format!(
                                "`propagation` of {bw} is `{p}`; use {}",
                                PROPAGATIONS.join(", ")
                            ),
                        );
                        return None;
                    }
                    propagation = Some(p);
                }
                if let Some(n) = bf.get("selinux") {
                    let z = ctx.string(n, &format!("`selinux` of {bw}"))?;
                    if !matches!(z.as_str(), "z" | "Z") {
                        ctx.error(
                            n.pos,
                            format!("`selinux` of {bw} is `{z}`; use z (shared) or Z (private)"),
                        );
                        return None;
                    }
                    if !create_host_path {
                        ctx.error(n.pos, format!("`selinux` of {bw} needs `create_host_path: true`: Docker relabels only bind mounts it may create"));
                        return None;
                    }
                    selinux = Some(z);
                }
            }
            Some(Mount::Bind {
                source: src,
                target,
                read_only,
                create_host_path,
                propagation,
                selinux,
                consistency,
            })
        }
        ("volume", src) => {
            let mut nocopy = false;
            if let Some(v) = f.get("volume") {
                let vw = format!("`volume` options of {w}");
                let vf = ctx.map(v, &vw, VOLUME_OPTION_KEYS)?;
                if let Some(n) = vf.get("nocopy") {
                    nocopy = ctx.bool(n, &format!("`nocopy` of {vw}"))?;
                }
            }
            match src {
                Some(src) if !refs.volumes.contains(&src) => {
                    ctx.error(
                        pos,
                        format!(
                            "volume `{src}` of {what} is not declared under the top-level `volumes`"
                        ),
                    );
                    return None;
                }
                Some(src) => Some(Mount::Volume {
                    source: src,
                    target,
                    read_only,
                    nocopy,
                }),
                None => Some(Mount::Anonymous {
                    target,
                    read_only,
                    nocopy,
                }),
            }
        }
        ("bind", None) => {
            ctx.error(f.pos, format!("a bind mount of {what} needs a `source`"));
            None
        }
        ("tmpfs", src) => {
            if src.is_some() {
                ctx.error(
                    pos,
                    format!("a tmpfs mount of {what} has no `source`; delete it"),
                );
                return None;
            }
            if read_only {
                ctx.error(
                    f.get("read_only").map_or(f.pos, |n| n.pos),
                    format!(
                        "a read-only tmpfs of {what} could never hold anything; delete `read_only`"
                    ),
                );
                return None;
            }
            let (mut size, mut mode) = (None, None);
            if let Some(t) = f.get("tmpfs") {
                let tw = format!("`tmpfs` options of {w}");
                let tf = ctx.map(t, &tw, TMPFS_OPTION_KEYS)?;
                if let Some(n) = tf.get("size") {
                    size = Some(ctx.size(n, &format!("tmpfs `size` of {w}"))?);
                }
                if let Some(n) = tf.get("mode") {
                    mode = Some(tmpfs_mode(ctx, n, &format!("tmpfs `mode` of {w}"))?);
                }
            }
            Some(Mount::Tmpfs { target, size, mode })
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
    };
    mount.filter(|_| ok)
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

/// A service's `depends_on`.
#[derive(Default)]
struct Depends {
    /// What to wait for, by dependency (those that are started).
    conditions: BTreeMap<String, DependsCondition>,
    /// Dependencies with `restart: true`.
    restart_with: Vec<String>,
}

/// One `depends_on` entry as written.
struct DependsEntry {
    dep: String,
    pos: Pos,
    condition: DependsCondition,
    restart: bool,
    required: bool,
}

/// `depends_on`, list or mapping form. A dependency with `profiles` is not started: a service
/// that is started may only name it with `required: false` (then it does not wait for it).
fn decode_depends(
    ctx: &mut Ctx<'_>,
    node: &Node,
    me: &str,
    what: &str,
    refs: &Refs<'_>,
    started: bool,
) -> Option<Depends> {
    let w = format!("`depends_on` of {what}");
    let mut out = Depends::default();
    let mut entries: Vec<DependsEntry> = Vec::new();
    match &node.value {
        Value::Seq(_) => {
            for (dep, pos) in ctx.string_list(node, &w, false)? {
                entries.push(DependsEntry {
                    dep,
                    pos,
                    condition: DependsCondition::Started,
                    restart: false,
                    required: true,
                });
            }
        }
        Value::Map(items) => {
            for (k, v) in items {
                let Some(dep) = k.scalar() else {
                    ctx.error(k.pos, format!("service names in {w} must be plain names"));
                    return None;
                };
                let dw = format!("`{dep}` in {w}");
                let mut restart = false;
                let mut required = true;
                let cond = if v.is_null() {
                    DependsCondition::Started
                } else {
                    let df = ctx.map(v, &dw, DEPENDS_KEYS)?;
                    if let Some(n) = df.get("restart") {
                        restart = ctx.bool(n, &format!("`restart` of {dw}"))?;
                    }
                    if let Some(n) = df.get("required") {
                        required = ctx.bool(n, &format!("`required` of {dw}"))?;
                    }
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
                entries.push(DependsEntry {
                    dep: dep.to_owned(),
                    pos: k.pos,
                    condition: cond,
                    restart,
                    required,
                });
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
    for e in entries {
        let (dep, pos) = (e.dep, e.pos);
        if dep == me {
            ctx.error(pos, format!("{what} depends on itself"));
            ok = false;
        } else if !refs.services.contains(&dep.as_str()) {
            ctx.error(
                pos,
                format!("{what} depends on `{dep}`, which is not a service of this stack"),
            );
            ok = false;
        } else if refs.profiled.contains(&dep.as_str()) {
            // Not started: a started service waits for it only if it must.
            if started && e.required {
                ctx.error(pos, format!("{what} depends on `{dep}`, which has `profiles` and is not started; drop its `profiles`, or mark the dependency `required: false`"));
                ok = false;
            }
        } else {
            if e.restart {
                out.restart_with.push(dep.clone());
            }
            out.conditions.insert(dep, e.condition);
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
            Value::Scalar(_) => limit_value(ctx, v, &uw).map(|n| Ulimit { soft: n, hard: n }),
            _ => (|| {
                let uf = ctx.map(v, &uw, ULIMIT_KEYS)?;
                let soft = uf
                    .required(ctx, "soft", &uw)
                    .and_then(|n| limit_value(ctx, n, &format!("`soft` of {uw}")));
                let hard = uf
                    .required(ctx, "hard", &uw)
                    .and_then(|n| limit_value(ctx, n, &format!("`hard` of {uw}")));
                let (soft, hard) = (soft?, hard?);
                // -1 is unlimited: above every number.
                let above = |a: i64, b: i64| b != -1 && (a == -1 || a > b);
                if above(soft, hard) {
                    let show = |n: i64| {
                        if n == -1 {
                            "unlimited (-1)".to_owned()
                        } else {
                            n.to_string()
                        }
                    };
                    ctx.error(
                        uf.pos,
                        format!(
                            "{uw}: the soft limit {} is above the hard limit {}",
                            show(soft),
                            show(hard)
                        ),
                    );
                    return None;
                }
                Some(Ulimit { soft, hard })
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
    let attachable = opt_bool(ctx, &f, "attachable", what);
    let enable_ipv6 = opt_bool(ctx, &f, "enable_ipv6", what);
    let labels = f.get("labels").map_or(Some(BTreeMap::new()), |n| {
        string_map(ctx, n, &format!("`labels` of {what}"))
    });
    let name = opt_string(ctx, &f, "name", what);
    let mut ipam_driver = None;
    let ipam = match f.get("ipam") {
        None => Some(Vec::new()),
        Some(n) => (|| {
            let iw = format!("`ipam` of {what}");
            let inf = ctx.map(n, &iw, IPAM_KEYS)?;
            ipam_driver = opt_string(ctx, &inf, "driver", &iw)?;
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
        attachable: attachable?,
        labels: labels?,
        name: name?,
        enable_ipv6: enable_ipv6?,
        ipam: ipam?,
        ipam_driver,
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
