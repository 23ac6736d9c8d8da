//! Loading and validating a whole fleet repository: every file, then the references between
//! them. Problems are collected, never thrown, so an operator sees all of them in one run.

use std::collections::BTreeMap;
use std::path::Path;

use crate::compose::{self, ComposeFile, StackContext};
use crate::decode::Ctx;
use crate::devices::{self, DevicesSpec};
use crate::diag::{Diagnostics, Pos};
use crate::fleet::{self, FleetSpec, WaveTarget};
use crate::names::check_name;
use crate::repo::{EntryKind, RepoError, RepoTree, MAX_READ};
use crate::secrets;
use crate::yaml::{self, Node};

/// The fleet definition file.
pub const FLEET_FILE: &str = "fleet.yaml";
/// The inventory file.
pub const DEVICES_FILE: &str = "devices.yaml";
/// The directory holding one sub-directory per stack.
pub const STACKS_DIR: &str = "stacks";
/// The compose file inside each stack directory.
pub const COMPOSE_FILE: &str = "compose.yaml";

/// A repository that validated: everything the agent and controller need from it.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetRepo {
    /// `fleet.yaml`.
    pub fleet: FleetSpec,
    /// `devices.yaml`.
    pub devices: DevicesSpec,
    /// Every `stacks/<name>/compose.yaml`, by stack name.
    pub stacks: BTreeMap<String, ComposeFile>,
}

impl FleetRepo {
    /// The devices of the canary ring: those the first wave selects by label.
    pub fn canaries(&self) -> Vec<&crate::devices::Device> {
        match self.fleet.rollout.waves.first().map(|w| &w.target) {
            Some(WaveTarget::Select(sel)) => self
                .devices
                .devices
                .iter()
                .filter(|d| sel.matches(&d.labels))
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// The outcome of validation: the repository when it has no errors, and every problem found.
#[derive(Debug, Clone)]
pub struct Validation {
    /// `Some` exactly when there are no errors.
    pub repo: Option<FleetRepo>,
    /// Errors and warnings, unsorted.
    pub diagnostics: Diagnostics,
}

/// Reads the directory at `root` and validates it.
pub fn validate_dir(root: &Path) -> Result<Validation, RepoError> {
    let tree = RepoTree::from_dir(root)?;
    Ok(validate_tree(&tree))
}

/// Reads one YAML file of the tree, reporting a missing, oversized, binary or malformed file.
fn read_yaml(tree: &RepoTree, path: &str, diags: &mut Diagnostics, required: bool) -> Option<Node> {
    let Some(entry) = tree.get(path) else {
        if required {
            diags.error(
                path,
                Pos::START,
                format!("{path} is missing; every fleet repository needs one"),
            );
        }
        return None;
    };
    if let EntryKind::Symlink { target } = &entry.kind {
        diags.error(
            path,
            Pos::START,
            format!("{path} is a symlink to `{target}`; it must be a regular file"),
        );
        return None;
    }
    if entry.size > MAX_READ {
        diags.error(
            path,
            Pos::START,
            format!(
                "{path} is {} bytes; configuration files may be at most {MAX_READ} bytes",
                entry.size
            ),
        );
        return None;
    }
    let bytes = match tree.read(entry) {
        Ok(b) => b,
        Err(e) => {
            diags.error(path, Pos::START, format!("cannot read {path}: {e}"));
            return None;
        }
    };
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let upto = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let line = upto.iter().filter(|b| **b == b'\n').count() + 1;
            diags.error(
                path,
                Pos { line, col: 1 },
                format!("{path} is not UTF-8 text"),
            );
            return None;
        }
    };
    match yaml::parse(&text) {
        Ok(doc) => {
            for (pos, msg) in doc.problems {
                diags.error(path, pos, msg);
            }
            Some(doc.root)
        }
        Err(e) => {
            diags.error(path, e.pos, e.message);
            None
        }
    }
}

/// Validates a repository tree: each file, then the references between files, then secrets.
///
/// ```
/// use fleet_config::{validate_tree, RepoTree};
/// let tree = RepoTree::from_memory([
///     ("fleet.yaml".to_string(), b"name: demo\nrollout: { bake: soon }\n".to_vec(), false),
/// ]).expect("tree");
/// let v = validate_tree(&tree);
/// assert!(v.repo.is_none());
/// let lines: Vec<String> = v.diagnostics.sorted().iter().map(|d| d.to_string()).collect();
/// assert_eq!(lines[0], "devices.yaml:1:1: error: devices.yaml is missing; every fleet repository needs one");
/// assert!(lines[1].starts_with("fleet.yaml:2:18: error: `rollout.bake`: bad duration `soon`"));
/// ```
pub fn validate_tree(tree: &RepoTree) -> Validation {
    let mut diags = Diagnostics::new();

    let fleet = read_yaml(tree, FLEET_FILE, &mut diags, true).and_then(|root| {
        let mut ctx = Ctx {
            file: FLEET_FILE.into(),
            diags: &mut diags,
        };
        fleet::decode(&mut ctx, &root)
    });
    let devices = read_yaml(tree, DEVICES_FILE, &mut diags, true).and_then(|root| {
        let mut ctx = Ctx {
            file: DEVICES_FILE.into(),
            diags: &mut diags,
        };
        devices::decode(&mut ctx, &root)
    });

    let (stacks, stacks_ok) = load_stacks(tree, &mut diags);

    if let (Some(fleet), Some(devices)) = (&fleet, &devices) {
        check_waves(fleet, devices, &mut diags);
    }
    if let Some(devices) = &devices {
        check_assignments(devices, &stacks, stacks_ok, &mut diags);
    }
    check_files(tree, &mut diags);

    let repo = match (fleet, devices) {
        (Some(fleet), Some(devices)) if stacks_ok && !diags.has_errors() => Some(FleetRepo {
            fleet,
            devices,
            stacks,
        }),
        _ => None,
    };
    Validation {
        repo,
        diagnostics: diags,
    }
}

/// Loads one stack directory that lives outside a fleet repository (the safe-mode stack,
/// installed with the agent): its `compose.yaml` with the same rules as in a repository.
pub fn load_stack_dir(dir: &Path, stack: &str) -> Result<ComposeFile, Vec<crate::Diagnostic>> {
    let mut diags = Diagnostics::new();
    let shown = format!("{STACKS_DIR}/{stack}/{COMPOSE_FILE}");
    let tree = match RepoTree::from_dir(dir) {
        Ok(t) => t.prefixed(&format!("{STACKS_DIR}/{stack}")),
        Err(e) => {
            diags.error(
                &shown,
                Pos::START,
                format!("cannot read {}: {e}", dir.display()),
            );
            return Err(diags.sorted());
        }
    };
    let compose = read_yaml(&tree, &shown, &mut diags, true).and_then(|root| {
        let mut ctx = Ctx {
            file: shown.clone(),
            diags: &mut diags,
        };
        compose::decode(&mut ctx, &root, &StackContext { stack, tree: &tree })
    });
    match compose {
        Some(c) if !diags.has_errors() => Ok(c),
        _ => Err(diags
            .sorted()
            .into_iter()
            .filter(|d| d.severity == crate::Severity::Error)
            .collect()),
    }
}

/// Names of the stack directories present under `stacks/`, sorted.
pub fn stack_dirs(tree: &RepoTree) -> Vec<String> {
    let prefix = format!("{STACKS_DIR}/");
    let mut names: Vec<String> = tree
        .entries()
        .iter()
        .filter_map(|e| e.path.strip_prefix(&prefix))
        .filter_map(|rest| rest.split_once('/').map(|(dir, _)| dir.to_owned()))
        .collect();
    names.dedup();
    names
}

fn load_stacks(tree: &RepoTree, diags: &mut Diagnostics) -> (BTreeMap<String, ComposeFile>, bool) {
    let mut stacks = BTreeMap::new();
    let mut ok = true;
    for name in stack_dirs(tree) {
        let dir = format!("{STACKS_DIR}/{name}");
        let path = format!("{dir}/{COMPOSE_FILE}");
        if let Err(e) = check_name(&name) {
            diags.error(&path, Pos::START, format!("stack directory name {e}"));
            ok = false;
            continue;
        }
        if tree.get(&path).is_none() {
            let found = ["compose.yml", "docker-compose.yml", "docker-compose.yaml"]
                .iter()
                .find(|alt| tree.get(&format!("{dir}/{alt}")).is_some());
            let msg = match found {
                Some(alt) => format!("stack `{name}` has {dir}/{alt}; name it {path}"),
                None => format!("stack directory {dir}/ has no {COMPOSE_FILE}"),
            };
            diags.error(&path, Pos::START, msg);
            ok = false;
            continue;
        }
        let Some(root) = read_yaml(tree, &path, diags, true) else {
            ok = false;
            continue;
        };
        let mut ctx = Ctx {
            file: path.clone(),
            diags,
        };
        let sc = StackContext { stack: &name, tree };
        match compose::decode(&mut ctx, &root, &sc) {
            Some(c) => {
                stacks.insert(name, c);
            }
            None => ok = false,
        }
    }
    (stacks, ok)
}

fn check_waves(fleet: &FleetSpec, devices: &DevicesSpec, diags: &mut Diagnostics) {
    let Some(first) = fleet.rollout.waves.first() else {
        return;
    };
    match &first.target {
        WaveTarget::Percent(_) => diags.error(
            FLEET_FILE,
            first.pos,
            format!("the first wave `{}` must select the canary ring by label, e.g. `select: {{ ring: canary }}`; a rollout starts on canaries", first.name),
        ),
        WaveTarget::Select(sel) => {
            let n = devices.devices.iter().filter(|d| sel.matches(&d.labels)).count();
            if n == 0 {
                diags.error(
                    FLEET_FILE,
                    first.pos,
                    format!(
                        "the canary ring is empty: wave `{}` selects {sel}, which matches none of the {} devices in {DEVICES_FILE}; label at least one device with it",
                        first.name,
                        devices.devices.len()
                    ),
                );
            } else if n == devices.devices.len() && n > 1 {
                diags.warning(
                    FLEET_FILE,
                    first.pos,
                    format!("the canary wave `{}` selects every device; a bad release would reach the whole fleet at once", first.name),
                );
            }
        }
    }
    for w in fleet.rollout.waves.iter().skip(1) {
        if let WaveTarget::Select(sel) = &w.target {
            if !devices.devices.iter().any(|d| sel.matches(&d.labels)) {
                diags.error(
                    FLEET_FILE,
                    w.pos,
                    format!(
                        "wave `{}` selects {sel}, which matches no device in {DEVICES_FILE}",
                        w.name
                    ),
                );
            }
        }
    }
}

fn check_assignments(
    devices: &DevicesSpec,
    stacks: &BTreeMap<String, ComposeFile>,
    stacks_ok: bool,
    diags: &mut Diagnostics,
) {
    let known: Vec<&str> = stacks.keys().map(String::as_str).collect();
    for a in &devices.stacks {
        // A stack whose compose file failed to load already has its own error.
        let exists = stacks.contains_key(&a.stack);
        if !exists && stacks_ok {
            diags.error(
                DEVICES_FILE,
                a.name_pos,
                format!(
                    "stack `{}` does not exist: there is no {STACKS_DIR}/{}/{COMPOSE_FILE} (stacks: {})",
                    a.stack,
                    a.stack,
                    if known.is_empty() { "none".to_owned() } else { known.join(", ") }
                ),
            );
        }
        if !devices.devices.iter().any(|d| a.select.matches(&d.labels)) {
            diags.error(
                DEVICES_FILE,
                a.select_pos,
                format!(
                    "the selector {} of stack `{}` matches no device",
                    a.select, a.stack
                ),
            );
        }
    }
    for name in stacks.keys() {
        if !devices.stacks.iter().any(|a| &a.stack == name) {
            diags.warning(
                &format!("{STACKS_DIR}/{name}/{COMPOSE_FILE}"),
                Pos::START,
                format!("stack `{name}` is not assigned to any device in {DEVICES_FILE}"),
            );
        }
    }
    for d in &devices.devices {
        if devices.stacks_for(d).is_empty() && !devices.stacks.is_empty() {
            diags.warning(
                DEVICES_FILE,
                d.pos,
                format!(
                    "device `{}` runs no stack: no entry of `stacks` selects it",
                    d.id
                ),
            );
        }
    }
}

/// Secrets anywhere in the tree, and symlinks that leave it.
fn check_files(tree: &RepoTree, diags: &mut Diagnostics) {
    for entry in tree.entries() {
        match &entry.kind {
            EntryKind::Symlink { target } => {
                if escapes(&entry.path, target) {
                    diags.error(&entry.path, Pos::START, format!("symlink to `{target}` points outside the repository; a release must contain what it uses"));
                }
            }
            EntryKind::File { .. } => {
                if entry.size > MAX_READ {
                    continue;
                }
                let Ok(bytes) = tree.read(entry) else {
                    continue;
                };
                if bytes.contains(&0) {
                    continue; // binary: not scanned
                }
                let text = String::from_utf8_lossy(&bytes);
                for f in secrets::scan(&text) {
                    diags.error(&entry.path, f.pos, f.message());
                }
            }
        }
    }
}

/// True when a symlink at `path` with `target` resolves outside the repository root.
fn escapes(path: &str, target: &str) -> bool {
    if target.starts_with('/') {
        return true;
    }
    let mut depth: Vec<&str> = path.split('/').collect();
    depth.pop();
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if depth.pop().is_none() {
                    return true;
                }
            }
            c => depth.push(c),
        }
    }
    false
}
