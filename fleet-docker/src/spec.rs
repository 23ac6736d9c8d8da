//! The desired state of one stack as Engine API objects (container bodies, networks, volumes)
//! and the `fleet.config-hash` that decides whether a running container may stay.
//!
//! Everything that can fail without the engine fails here, before anything running is
//! touched: missing secrets, unreadable `env_file`s or bind sources, malformed devices.
//!
//! **What the config hash covers.** The service's definition as decoded (serialized with
//! serde_json), its container name, its environment after `env_file` and substitution, the
//! *content* of each relative bind source (a tree digest for a directory, sha256 for a file),
//! the definitions and Docker names of the networks and volumes it uses, and, for
//! `network_mode: service:X`, X's hash (X's replacement takes the namespace away). It does not
//! cover the release id or the release directory: a service whose definition and files did not
//! change keeps its container across releases, bound to the directory of the release that
//! created it (see [`super::labels::LABEL_RELEASE`]).

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, DeviceMapping, EndpointIpamConfig, EndpointSettings, HealthConfig,
    HostConfig, HostConfigLogConfig, Ipam, IpamConfig, Mount as EngineMount, MountBindOptions,
    MountBindOptionsPropagationEnum, MountTmpfsOptions, MountType, MountVolumeOptions,
    NetworkCreateRequest, NetworkingConfig, PortBinding, ResourcesUlimits,
    RestartPolicy as EngineRestart, RestartPolicyNameEnum, VolumeCreateRequest,
};
use fleet_config::compose::{
    ComposeFile, DependsCondition, Mount, NetworkDef, RestartPolicy, Service, VolumeDef,
};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::env;
use super::error::{DockerError, MissingSecret};
use super::labels::{Namespace, DEFAULT_NETWORK, LABEL_CONFIG_HASH, LABEL_RELEASE, LABEL_SERVICE};
use super::order;

/// How long a container gets between its stop signal and SIGKILL when the service sets no
/// `stop_grace_period` (Compose's default).
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

/// Bumped when the mapping from a service to Engine API settings changes, so containers
/// created by an older agent are replaced rather than trusted.
const HASH_SCHEMA: u32 = 1;

/// One stack, ready to reconcile.
#[derive(Debug, Clone)]
pub(crate) struct StackSpec {
    /// Services by name.
    pub services: BTreeMap<String, ServiceSpec>,
    /// Service names, each after its prerequisites.
    pub order: Vec<String>,
    /// Networks the services join, by Docker name.
    pub networks: BTreeMap<String, NetworkSpec>,
    /// Named volumes, by Docker name.
    pub volumes: BTreeMap<String, VolumeSpec>,
}

/// One service's container.
#[derive(Debug, Clone)]
pub(crate) struct ServiceSpec {
    /// The container's name.
    pub container_name: String,
    /// The image reference.
    pub image: String,
    /// The create request; its first network (if any) is in `networking_config`.
    pub body: ContainerCreateBody,
    /// Further networks, connected after create and before start.
    pub extra_networks: Vec<(String, EndpointSettings)>,
    /// The `fleet.config-hash` label.
    pub config_hash: String,
    /// `depends_on`, by service name.
    pub depends_on: BTreeMap<String, DependsCondition>,
}

/// A network of the stack.
#[derive(Debug, Clone)]
pub(crate) struct NetworkSpec {
    /// Created outside the stack: used, never created or removed.
    pub external: bool,
    /// The create request (labels include the namespace, stack and config hash).
    pub request: NetworkCreateRequest,
    /// Hash of the definition; a network whose label differs is recreated.
    pub config_hash: String,
}

/// A named volume of the stack.
#[derive(Debug, Clone)]
pub(crate) struct VolumeSpec {
    /// Created outside the stack: used, never created or removed.
    pub external: bool,
    /// The create request.
    pub request: VolumeCreateRequest,
}

/// What the hash of a service is computed over; see the module docs.
#[derive(Serialize)]
struct HashInput<'a> {
    schema: u32,
    service: &'a Service,
    container_name: &'a str,
    environment: &'a BTreeMap<String, String>,
    bind_contents: BTreeMap<&'a str, String>,
    networks: BTreeMap<&'a str, (String, Option<&'a NetworkDef>)>,
    volumes: BTreeMap<&'a str, (String, Option<&'a VolumeDef>)>,
    shares_network_of: Option<&'a str>,
    /// Hashes of the `depends_on` entries with `restart: true`: replacing one replaces this.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    restarts_with: BTreeMap<&'a str, &'a str>,
}

fn sha256_json<T: Serialize>(value: &T) -> String {
    // Serializing plain data (maps, strings, numbers) into a Vec cannot fail; an empty input
    // would still give a stable (if useless) hash rather than a panic.
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    hex::encode(Sha256::digest(&bytes))
}

/// Builds the stack's desired state. `release_dir` is the release's checkout (symlinks are
/// resolved, so containers bind the release's own directory, not `current`).
pub(crate) fn build(
    ns: &Namespace,
    stack: &str,
    compose: &ComposeFile,
    release_dir: &Path,
    release: &str,
    secrets: &BTreeMap<String, String>,
) -> Result<StackSpec, DockerError> {
    let release_dir =
        std::fs::canonicalize(release_dir).map_err(|source| DockerError::ReleaseFile {
            stack: stack.to_owned(),
            service: String::new(),
            what: "release directory",
            path: release_dir.to_owned(),
            source,
        })?;
    let stack_dir = release_dir.join("stacks").join(stack);
    let order = order::start_order(compose).map_err(|names| DockerError::DependencyCycle {
        stack: stack.to_owned(),
        services: names.join(", "),
    })?;

    // Environments first and all together: every missing secret in one error.
    let mut environments = BTreeMap::new();
    let mut missing = Vec::new();
    for (name, svc) in &compose.services {
        let mut miss = Vec::new();
        let env = environment(stack, name, svc, &stack_dir, secrets, &mut miss)?;
        missing.extend(miss.into_iter().map(|variable| MissingSecret {
            service: name.clone(),
            variable,
        }));
        environments.insert(name.as_str(), env);
    }
    if !missing.is_empty() {
        missing.dedup();
        return Err(DockerError::MissingSecrets {
            stack: stack.to_owned(),
            missing,
        });
    }

    let mut networks = BTreeMap::new();
    for svc in compose.services.values() {
        for key in network_keys(svc) {
            let def = compose.networks.get(key);
            let docker_name = ns.network_name(stack, key, def);
            networks
                .entry(docker_name.clone())
                .or_insert_with(|| network_spec(ns, stack, &docker_name, def));
        }
    }
    let volumes = compose
        .volumes
        .iter()
        .map(|(key, def)| {
            let docker_name = ns.volume_name(stack, key, Some(def));
            let mut labels = ns.stack_labels(stack);
            labels.extend(def.labels.clone());
            let request = VolumeCreateRequest {
                name: Some(docker_name.clone()),
                driver: def.driver.clone(),
                driver_opts: (!def.driver_opts.is_empty())
                    .then(|| def.driver_opts.clone().into_iter().collect()),
                labels: Some(labels),
                ..Default::default()
            };
            (
                docker_name,
                VolumeSpec {
                    external: def.external,
                    request,
                },
            )
        })
        .collect();

    let mut services: BTreeMap<String, ServiceSpec> = BTreeMap::new();
    for name in &order {
        let Some(svc) = compose.services.get(name) else {
            continue;
        };
        let env = environments.remove(name.as_str()).unwrap_or_default();
        let spec = service_spec(
            &ServiceInput {
                ns,
                stack,
                name,
                svc,
                compose,
                stack_dir: &stack_dir,
                release,
                environment: &env,
            },
            &services,
        )?;
        services.insert(name.clone(), spec);
    }
    Ok(StackSpec {
        services,
        order,
        networks,
        volumes,
    })
}

/// The networks a service joins by key: its own, or `default` when it names none and has no
/// `network_mode`.
pub(crate) fn network_keys(svc: &Service) -> Vec<&str> {
    if svc.network_mode.is_some() {
        Vec::new()
    } else if svc.networks.is_empty() {
        vec![DEFAULT_NETWORK]
    } else {
        svc.networks.keys().map(String::as_str).collect()
    }
}

fn network_spec(
    ns: &Namespace,
    stack: &str,
    docker_name: &str,
    def: Option<&NetworkDef>,
) -> NetworkSpec {
    let config_hash = sha256_json(&(HASH_SCHEMA, docker_name, def));
    let mut labels = ns.stack_labels(stack);
    let default = NetworkDef::default();
    let def = def.unwrap_or(&default);
    labels.extend(def.labels.clone());
    labels.insert(LABEL_CONFIG_HASH.to_owned(), config_hash.clone());
    let ipam = (!def.ipam.is_empty() || def.ipam_driver.is_some()).then(|| Ipam {
        driver: def.ipam_driver.clone(),
        config: Some(
            def.ipam
                .iter()
                .map(|p| IpamConfig {
                    subnet: p.subnet.clone(),
                    gateway: p.gateway.clone(),
                    ip_range: p.ip_range.clone(),
                    ..Default::default()
                })
                .collect(),
        ),
        ..Default::default()
    });
    NetworkSpec {
        external: def.external,
        request: NetworkCreateRequest {
            name: docker_name.to_owned(),
            driver: Some(def.driver.clone().unwrap_or_else(|| "bridge".to_owned())),
            internal: def.internal.then_some(true),
            attachable: def.attachable.then_some(true),
            enable_ipv6: def.enable_ipv6.then_some(true),
            options: (!def.driver_opts.is_empty())
                .then(|| def.driver_opts.clone().into_iter().collect()),
            labels: Some(labels),
            ipam,
            ..Default::default()
        },
        config_hash,
    }
}

/// `env_file` entries, then `environment` (which wins), substituted.
fn environment(
    stack: &str,
    name: &str,
    svc: &Service,
    stack_dir: &Path,
    secrets: &BTreeMap<String, String>,
    missing: &mut Vec<String>,
) -> Result<BTreeMap<String, String>, DockerError> {
    let mut env = BTreeMap::new();
    for file in &svc.env_file {
        let path = resolve(stack_dir, &file.path);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            // `required: false`: a file that is not there is skipped, as Compose does.
            Err(e) if !file.required && e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(DockerError::ReleaseFile {
                    stack: stack.to_owned(),
                    service: name.to_owned(),
                    what: "env_file",
                    path: path.clone(),
                    source,
                })
            }
        };
        let entries = env::parse_env_file(&text, secrets, missing).map_err(|reason| {
            DockerError::InvalidService {
                stack: stack.to_owned(),
                service: name.to_owned(),
                reason: format!("env_file {}: {reason}", path.display()),
            }
        })?;
        env.extend(entries);
    }
    for (key, value) in &svc.environment {
        let resolved =
            match value {
                Some(v) => fleet_config::interpolate::interpolate(v, secrets, missing).map_err(
                    |reason| DockerError::Interpolation {
                        stack: stack.to_owned(),
                        service: name.to_owned(),
                        variable: key.clone(),
                        reason,
                    },
                )?,
                None => match secrets.get(key) {
                    Some(v) => v.clone(),
                    None => {
                        missing.push(key.clone());
                        continue;
                    }
                },
            };
        env.insert(key.clone(), resolved);
    }
    Ok(env)
}

/// `rel` (relative to the stack directory, or absolute on the device) as a device path,
/// `.` and `..` resolved lexically (validation already kept it inside the stack directory).
fn resolve(stack_dir: &Path, rel: &str) -> PathBuf {
    if rel.starts_with('/') {
        return PathBuf::from(rel);
    }
    let mut out = stack_dir.to_owned();
    for c in Path::new(rel).components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(p) => out.push(p),
            _ => {}
        }
    }
    out
}

/// The content digest of a relative bind source: a tree digest for a directory, sha256 of
/// the bytes for a file.
fn content_digest(path: &Path) -> std::io::Result<String> {
    let meta = std::fs::metadata(path)?;
    if meta.is_dir() {
        fleet_config::digest_dir(path)
            .map(|d| d.to_string())
            .map_err(|e| std::io::Error::other(e.to_string()))
    } else {
        let bytes = std::fs::read(path)?;
        Ok(format!("sha256:{}", hex::encode(Sha256::digest(&bytes))))
    }
}

struct ServiceInput<'a> {
    ns: &'a Namespace,
    stack: &'a str,
    name: &'a str,
    svc: &'a Service,
    compose: &'a ComposeFile,
    stack_dir: &'a Path,
    release: &'a str,
    environment: &'a BTreeMap<String, String>,
}

impl ServiceInput<'_> {
    fn invalid(&self, reason: String) -> DockerError {
        DockerError::InvalidService {
            stack: self.stack.to_owned(),
            service: self.name.to_owned(),
            reason,
        }
    }
}

/// A propagation the validator accepted, as the Engine API names it.
fn propagation_of(p: &str) -> MountBindOptionsPropagationEnum {
    match p {
        "private" => MountBindOptionsPropagationEnum::PRIVATE,
        "shared" => MountBindOptionsPropagationEnum::SHARED,
        "rshared" => MountBindOptionsPropagationEnum::RSHARED,
        "slave" => MountBindOptionsPropagationEnum::SLAVE,
        "rslave" => MountBindOptionsPropagationEnum::RSLAVE,
        _ => MountBindOptionsPropagationEnum::RPRIVATE,
    }
}

/// Seconds for the Engine API, rounded up so a grace period is never shortened.
pub(crate) fn whole_seconds(d: Duration) -> i64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i64::try_from(secs).unwrap_or(i64::MAX)
}

fn nanos(d: Option<Duration>) -> Option<i64> {
    d.map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

fn service_spec(
    input: &ServiceInput<'_>,
    earlier: &BTreeMap<String, ServiceSpec>,
) -> Result<ServiceSpec, DockerError> {
    let ServiceInput {
        ns,
        stack,
        name,
        svc,
        compose,
        stack_dir,
        release,
        environment,
    } = *input;
    let container_name = ns.container_name(stack, name, svc);

    // Mounts.
    let mut binds = Vec::new();
    let mut mounts = Vec::new();
    let mut bind_contents = BTreeMap::new();
    let mut volumes_used = BTreeMap::new();
    for m in &svc.volumes {
        match m {
            Mount::Bind {
                source,
                target,
                read_only,
                create_host_path,
                propagation,
                selinux,
                consistency,
            } => {
                let path = resolve(stack_dir, source);
                if !source.starts_with('/') {
                    let digest = content_digest(&path).map_err(|e| DockerError::ReleaseFile {
                        stack: stack.to_owned(),
                        service: name.to_owned(),
                        what: "bind-mount source",
                        path: path.clone(),
                        source: e,
                    })?;
                    bind_contents.insert(source.as_str(), digest);
                }
                if *create_host_path {
                    // The `Binds` form, which creates a missing host directory (`docker run -v`).
                    let opts: Vec<&str> = [
                        read_only.then_some("ro"),
                        selinux.as_deref(),
                        propagation.as_deref(),
                        consistency.as_deref(),
                    ]
                    .into_iter()
                    .flatten()
                    .collect();
                    let opts = if opts.is_empty() {
                        String::new()
                    } else {
                        format!(":{}", opts.join(","))
                    };
                    binds.push(format!("{}:{target}{opts}", path.display()));
                } else {
                    // The `Mounts` form, which fails when the host path does not exist.
                    mounts.push(EngineMount {
                        target: Some(target.clone()),
                        source: Some(path.display().to_string()),
                        typ: Some(MountType::BIND),
                        read_only: read_only.then_some(true),
                        consistency: consistency.clone(),
                        bind_options: propagation.as_deref().map(|p| MountBindOptions {
                            propagation: Some(propagation_of(p)),
                            ..Default::default()
                        }),
                        ..Default::default()
                    });
                }
            }
            Mount::Volume {
                source,
                target,
                read_only,
                nocopy,
            } => {
                let def = compose.volumes.get(source);
                let docker_name = ns.volume_name(stack, source, def);
                volumes_used.insert(source.as_str(), (docker_name.clone(), def));
                mounts.push(EngineMount {
                    target: Some(target.clone()),
                    source: Some(docker_name),
                    typ: Some(MountType::VOLUME),
                    read_only: read_only.then_some(true),
                    volume_options: nocopy.then(|| MountVolumeOptions {
                        no_copy: Some(true),
                        ..Default::default()
                    }),
                    ..Default::default()
                });
            }
            Mount::Anonymous {
                target,
                read_only,
                nocopy,
            } => {
                let mut labels = ns.stack_labels(stack);
                labels.insert(LABEL_SERVICE.to_owned(), name.to_owned());
                mounts.push(EngineMount {
                    target: Some(target.clone()),
                    typ: Some(MountType::VOLUME),
                    read_only: read_only.then_some(true),
                    volume_options: Some(MountVolumeOptions {
                        labels: Some(labels),
                        no_copy: nocopy.then_some(true),
                        ..Default::default()
                    }),
                    ..Default::default()
                });
            }
            Mount::Tmpfs { target, size, mode } => mounts.push(EngineMount {
                target: Some(target.clone()),
                typ: Some(MountType::TMPFS),
                tmpfs_options: (size.is_some() || mode.is_some()).then(|| MountTmpfsOptions {
                    size_bytes: size.map(|s| i64::try_from(s).unwrap_or(i64::MAX)),
                    mode: mode.map(i64::from),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }
    }
    let tmpfs: HashMap<String, String> = svc
        .tmpfs
        .iter()
        .map(|t| match t.split_once(':') {
            Some((path, opts)) => (path.to_owned(), opts.to_owned()),
            None => (t.clone(), String::new()),
        })
        .collect();

    // Networks.
    let mut networks_used = BTreeMap::new();
    let mut endpoints: Vec<(String, EndpointSettings)> = Vec::new();
    for key in network_keys(svc) {
        let def = compose.networks.get(key);
        let docker_name = ns.network_name(stack, key, def);
        networks_used.insert(key, (docker_name.clone(), def));
        let attach = svc.networks.get(key).cloned().unwrap_or_default();
        let mut aliases = vec![name.to_owned()];
        aliases.extend(attach.aliases);
        endpoints.push((
            docker_name,
            EndpointSettings {
                aliases: Some(aliases),
                ipam_config: attach.ipv4_address.map(|ip| EndpointIpamConfig {
                    ipv4_address: Some(ip),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ));
    }
    let shares_network_of = svc
        .network_mode
        .as_deref()
        .and_then(|m| m.strip_prefix("service:"));
    let (network_mode, networking_config) = match (&svc.network_mode, shares_network_of) {
        (Some(_), Some(target)) => {
            let target_name = compose
                .services
                .get(target)
                .map(|t| ns.container_name(stack, target, t))
                .ok_or_else(|| {
                    input.invalid(format!("`network_mode` names unknown service `{target}`"))
                })?;
            (Some(format!("container:{target_name}")), None)
        }
        (Some(mode), None) => (Some(mode.clone()), None),
        (None, _) => {
            let first = endpoints.first().cloned();
            (
                first.as_ref().map(|(n, _)| n.clone()),
                first.map(|(n, e)| NetworkingConfig {
                    endpoints_config: Some(HashMap::from([(n, e)])),
                }),
            )
        }
    };
    let extra_networks = endpoints.into_iter().skip(1).collect();
    let target_hash = match shares_network_of {
        Some(t) => Some(
            earlier
                .get(t)
                .map(|s| s.config_hash.as_str())
                .ok_or_else(|| {
                    input.invalid(format!(
                        "`network_mode` names `{t}`, which is not started before it"
                    ))
                })?,
        ),
        None => None,
    };

    let config_hash = sha256_json(&HashInput {
        schema: HASH_SCHEMA,
        service: svc,
        container_name: &container_name,
        environment,
        bind_contents,
        networks: networks_used
            .iter()
            .map(|(k, (n, d))| (*k, (n.clone(), *d)))
            .collect(),
        volumes: volumes_used
            .iter()
            .map(|(k, (n, d))| (*k, (n.clone(), *d)))
            .collect(),
        shares_network_of: target_hash,
        restarts_with: svc
            .restart_with
            .iter()
            .filter_map(|d| earlier.get(d).map(|s| (d.as_str(), s.config_hash.as_str())))
            .collect(),
    });

    // Ports.
    let mut exposed = Vec::new();
    let mut port_bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for p in &svc.ports {
        for i in 0..=(p.target.end - p.target.start) {
            let key = format!("{}/{}", p.target.start + i, p.protocol);
            if !exposed.contains(&key) {
                exposed.push(key.clone());
            }
            let binding = PortBinding {
                host_ip: p.host_ip.clone(),
                host_port: p.published.map(|r| (r.start + i).to_string()),
            };
            port_bindings
                .entry(key)
                .or_insert_with(|| Some(Vec::new()))
                .get_or_insert_with(Vec::new)
                .push(binding);
        }
    }

    for e in &svc.expose {
        for port in e.ports.start..=e.ports.end {
            let key = format!("{port}/{}", e.protocol);
            if !exposed.contains(&key) {
                exposed.push(key);
            }
        }
    }

    let devices = svc
        .devices
        .iter()
        .map(|d| {
            let parts: Vec<&str> = d.split(':').collect();
            let (host, cont, perms) = match parts.as_slice() {
                [h] => (*h, *h, "rwm"),
                [h, c] => (*h, *c, "rwm"),
                [h, c, p] => (*h, *c, *p),
                _ => {
                    return Err(input.invalid(format!(
                        "device `{d}` is not `HOST[:CONTAINER[:PERMISSIONS]]`"
                    )))
                }
            };
            Ok(DeviceMapping {
                path_on_host: Some(host.to_owned()),
                path_in_container: Some(cont.to_owned()),
                cgroup_permissions: Some(perms.to_owned()),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;

    let restart_policy = Some(match svc.restart {
        RestartPolicy::No => EngineRestart {
            name: Some(RestartPolicyNameEnum::NO),
            maximum_retry_count: None,
        },
        RestartPolicy::Always => EngineRestart {
            name: Some(RestartPolicyNameEnum::ALWAYS),
            maximum_retry_count: None,
        },
        RestartPolicy::UnlessStopped => EngineRestart {
            name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
            maximum_retry_count: None,
        },
        RestartPolicy::OnFailure(n) => EngineRestart {
            name: Some(RestartPolicyNameEnum::ON_FAILURE),
            maximum_retry_count: n.map(i64::from),
        },
    });

    let healthcheck = svc.healthcheck.as_ref().map(|h| HealthConfig {
        test: Some(h.test.clone()),
        interval: nanos(h.interval),
        timeout: nanos(h.timeout),
        retries: h.retries.map(i64::from),
        start_period: nanos(h.start_period),
        start_interval: nanos(h.start_interval),
    });

    let mut labels: HashMap<String, String> = svc.labels.clone().into_iter().collect();
    labels.extend(ns.stack_labels(stack));
    labels.insert(LABEL_SERVICE.to_owned(), name.to_owned());
    labels.insert(LABEL_RELEASE.to_owned(), release.to_owned());
    labels.insert(LABEL_CONFIG_HASH.to_owned(), config_hash.clone());

    let non_empty = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    let host_config = HostConfig {
        binds: (!binds.is_empty()).then_some(binds),
        mounts: (!mounts.is_empty()).then_some(mounts),
        tmpfs: (!tmpfs.is_empty()).then_some(tmpfs),
        port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
        restart_policy,
        network_mode,
        devices: (!devices.is_empty()).then_some(devices),
        cap_add: non_empty(&svc.cap_add),
        cap_drop: non_empty(&svc.cap_drop),
        security_opt: non_empty(&svc.security_opt),
        extra_hosts: non_empty(&svc.extra_hosts),
        privileged: svc.privileged.then_some(true),
        readonly_rootfs: svc.read_only.then_some(true),
        init: svc.init.then_some(true),
        log_config: svc.logging.as_ref().map(|l| HostConfigLogConfig {
            typ: l.driver.clone(),
            config: Some(l.options.clone().into_iter().collect()),
        }),
        ulimits: (!svc.ulimits.is_empty()).then(|| {
            svc.ulimits
                .iter()
                .map(|(n, u)| ResourcesUlimits {
                    name: Some(n.clone()),
                    soft: Some(u.soft),
                    hard: Some(u.hard),
                })
                .collect()
        }),
        memory: svc.mem_limit.map(|m| i64::try_from(m).unwrap_or(i64::MAX)),
        memory_reservation: svc
            .mem_reservation
            .map(|m| i64::try_from(m).unwrap_or(i64::MAX)),
        nano_cpus: svc.cpus.map(|c| (c * 1e9).round() as i64),
        pids_limit: svc.pids_limit,
        pid_mode: svc.pid.clone(),
        ..Default::default()
    };

    let body = ContainerCreateBody {
        image: Some(svc.image.to_string()),
        cmd: svc.command.clone(),
        entrypoint: svc.entrypoint.clone(),
        env: Some(
            environment
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
        ),
        labels: Some(labels),
        hostname: svc.hostname.clone(),
        user: svc.user.clone(),
        working_dir: svc.working_dir.clone(),
        stop_signal: svc.stop_signal.clone(),
        stop_timeout: Some(whole_seconds(
            svc.stop_grace_period.unwrap_or(DEFAULT_STOP_GRACE),
        )),
        healthcheck,
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        host_config: Some(host_config),
        networking_config,
        ..Default::default()
    };

    Ok(ServiceSpec {
        container_name,
        image: svc.image.to_string(),
        body,
        extra_networks,
        config_hash,
        depends_on: svc.depends_on.clone(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use fleet_config::compose::{EnvFile, ImageRef};

    /// A service with nothing set but its image.
    pub(crate) fn service(image: ImageRef) -> Service {
        Service {
            image,
            command: None,
            entrypoint: None,
            environment: BTreeMap::new(),
            env_file: Vec::new(),
            ports: Vec::new(),
            expose: Vec::new(),
            volumes: Vec::new(),
            tmpfs: Vec::new(),
            restart: RestartPolicy::No,
            healthcheck: None,
            labels: BTreeMap::new(),
            depends_on: BTreeMap::new(),
            restart_with: Vec::new(),
            networks: BTreeMap::new(),
            network_mode: None,
            hostname: None,
            container_name: None,
            user: None,
            working_dir: None,
            devices: Vec::new(),
            cap_add: Vec::new(),
            cap_drop: Vec::new(),
            security_opt: Vec::new(),
            privileged: false,
            read_only: false,
            init: false,
            extra_hosts: Vec::new(),
            logging: None,
            stop_grace_period: None,
            stop_signal: None,
            ulimits: BTreeMap::new(),
            mem_limit: None,
            cpus: None,
            pids_limit: None,
            mem_reservation: None,
            pid: None,
            http_probe: None,
        }
    }

    fn image(s: &str) -> ImageRef {
        ImageRef::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    struct Fixture {
        dir: tempfile::TempDir,
        compose: ComposeFile,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let stack_dir = dir.path().join("stacks/web");
        std::fs::create_dir_all(stack_dir.join("conf")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(stack_dir.join("conf/app.conf"), "a=1\n").unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(stack_dir.join("app.env"), "FROM_FILE=1\nOVERRIDDEN=file\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let mut web = service(image("fleet-test/app:v1"));
        web.environment
            .insert("PASSWORD".into(), Some("${DB_PASSWORD}".into()));
        web.environment
            .insert("OVERRIDDEN".into(), Some("env".into()));
        web.env_file.push(EnvFile {
            path: "./app.env".into(),
            required: true,
        });
        web.volumes.push(Mount::Bind {
            source: "./conf".into(),
            target: "/etc/app".into(),
            read_only: true,
            create_host_path: true,
            propagation: None,
            selinux: None,
            consistency: None,
        });
        let mut compose = ComposeFile::default();
        compose.services.insert("web".into(), web);
        compose
            .services
            .insert("db".into(), service(image("fleet-test/app:v2")));
        Fixture { dir, compose }
    }

    fn build_spec(f: &Fixture, release: &str, secret: &str) -> Result<StackSpec, DockerError> {
        let ns = Namespace::new("t").unwrap_or_else(|e| panic!("{e}"));
        let secrets = BTreeMap::from([("DB_PASSWORD".to_owned(), secret.to_owned())]);
        build(&ns, "web", &f.compose, f.dir.path(), release, &secrets)
    }

    fn hash(spec: &StackSpec, svc: &str) -> String {
        spec.services
            .get(svc)
            .map(|s| s.config_hash.clone())
            .unwrap_or_default()
    }

    #[test]
    fn services_without_the_new_compose_keys_keep_their_hash() {
        // Computed by the agent before expose, deploy.resources, mount options and the long
        // env_file form existed: upgrading the agent must not replace containers that use
        // none of them.
        let f = fixture();
        let a = build_spec(&f, "r1", "pw").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            hash(&a, "web"),
            "a99f0bbc3b54b9ac07daa0d7da3ae307b6609c9979760dfa4349b16d9f83309b"
        );
        assert_eq!(
            hash(&a, "db"),
            "ace24b4d0a6b4f32aee0da83058a6f066f86d265e052c77794e0cdc6dd0bc256"
        );
    }

    #[test]
    fn environment_merges_env_file_and_secrets() {
        let f = fixture();
        let spec = build_spec(&f, "r1", "pw").unwrap_or_else(|e| panic!("{e}"));
        let env = spec
            .services
            .get("web")
            .and_then(|s| s.body.env.clone())
            .unwrap_or_default();
        assert_eq!(env, ["FROM_FILE=1", "OVERRIDDEN=env", "PASSWORD=pw"]);
    }

    #[test]
    fn hash_ignores_the_release_but_not_what_the_container_sees() {
        let f = fixture();
        let a = build_spec(&f, "r1", "pw").unwrap_or_else(|e| panic!("{e}"));
        let b = build_spec(&f, "r2", "pw").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(hash(&a, "web"), hash(&b, "web"), "release id alone");
        let c = build_spec(&f, "r2", "other").unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(hash(&a, "web"), hash(&c, "web"), "secret value");
        assert_eq!(hash(&a, "db"), hash(&c, "db"), "other service");
        std::fs::write(f.dir.path().join("stacks/web/conf/app.conf"), "a=2\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let d = build_spec(&f, "r3", "pw").unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(
            hash(&a, "web"),
            hash(&d, "web"),
            "bind-mounted file content"
        );
    }

    #[test]
    fn missing_secrets_are_all_reported() {
        let mut f = fixture();
        if let Some(db) = f.compose.services.get_mut("db") {
            db.environment.insert("TOKEN".into(), None);
        }
        let ns = Namespace::new("t").unwrap_or_else(|e| panic!("{e}"));
        let err = build(&ns, "web", &f.compose, f.dir.path(), "r1", &BTreeMap::new());
        match err {
            Err(DockerError::MissingSecrets { stack, missing }) => {
                assert_eq!(stack, "web");
                let names: Vec<_> = missing
                    .iter()
                    .map(|m| (m.service.as_str(), m.variable.as_str()))
                    .collect();
                assert_eq!(names, [("db", "TOKEN"), ("web", "DB_PASSWORD")]);
            }
            other => panic!("expected MissingSecrets, got {other:?}"),
        }
    }

    #[test]
    fn binds_resolve_against_the_stack_directory() {
        let f = fixture();
        let spec = build_spec(&f, "r1", "pw").unwrap_or_else(|e| panic!("{e}"));
        let binds = spec
            .services
            .get("web")
            .and_then(|s| s.body.host_config.as_ref())
            .and_then(|h| h.binds.clone())
            .unwrap_or_default();
        let root = std::fs::canonicalize(f.dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            binds,
            [format!("{}/stacks/web/conf:/etc/app:ro", root.display())]
        );
    }
}
