//! `devices.yaml`: the inventory (device ids and labels) and which stacks run where, by label
//! selector.

use std::collections::BTreeMap;

use crate::decode::Ctx;
use crate::diag::Pos;
use crate::fleet::{decode_labels, decode_selector, Selector};
use crate::names::check_name;
use crate::yaml::Node;

/// The whole of `devices.yaml`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DevicesSpec {
    /// Every device of the fleet, in file order.
    pub devices: Vec<Device>,
    /// Which stacks run on which devices.
    pub stacks: Vec<StackAssignment>,
}

/// One device.
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    /// Unique id; the device's agent is configured with it.
    pub id: String,
    /// Labels such as `ring: canary`, `site: berlin`, `role: gateway`.
    pub labels: BTreeMap<String, String>,
    /// Free text for people.
    pub description: Option<String>,
    /// Pinned to a release: left out of rollouts and kept on that release until the pin is
    /// removed (`pin: SHA`, or `pin: { release: SHA, reason: … }`).
    pub pin: Option<Pin>,
    /// Where the device is defined.
    pub pos: Pos,
}

/// A device's pin in devices.yaml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// The release: a full commit sha (40 hex digits, lower case).
    pub release: String,
    /// Why, for people (shown with the pin).
    pub reason: String,
    /// Where the pin is.
    pub pos: Pos,
}

/// "Run stack `name` on the devices matching `select`."
#[derive(Debug, Clone, PartialEq)]
pub struct StackAssignment {
    /// A directory under `stacks/`.
    pub stack: String,
    /// Which devices; `{}` means all.
    pub select: Selector,
    /// Where the assignment is.
    pub pos: Pos,
    /// Where its stack name is.
    pub name_pos: Pos,
    /// Where its selector is.
    pub select_pos: Pos,
}

impl DevicesSpec {
    /// The stacks assigned to a device, in assignment order, each once.
    pub fn stacks_for(&self, device: &Device) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for a in &self.stacks {
            if a.select.matches(&device.labels) && !out.contains(&a.stack.as_str()) {
                out.push(&a.stack);
            }
        }
        out
    }

    /// The device with this id.
    pub fn device(&self, id: &str) -> Option<&Device> {
        self.devices.iter().find(|d| d.id == id)
    }
}

const TOP_KEYS: &[&str] = &["devices", "stacks"];
const DEVICE_KEYS: &[&str] = &["id", "labels", "description", "pin"];
const PIN_KEYS: &[&str] = &["release", "reason"];
const ASSIGN_KEYS: &[&str] = &["name", "select"];

/// Decodes `devices.yaml`, reporting every problem.
pub fn decode(ctx: &mut Ctx<'_>, root: &Node) -> Option<DevicesSpec> {
    if root.is_null() {
        ctx.error(
            root.pos,
            "devices.yaml is empty; it needs `devices` and `stacks`",
        );
        return None;
    }
    let f = ctx.map(root, "devices.yaml", TOP_KEYS)?;
    let devices = f
        .required(ctx, "devices", "devices.yaml")
        .and_then(|n| decode_devices(ctx, n));
    let stacks = f
        .required(ctx, "stacks", "devices.yaml")
        .and_then(|n| decode_assignments(ctx, n));
    Some(DevicesSpec {
        devices: devices?,
        stacks: stacks?,
    })
}

fn decode_devices(ctx: &mut Ctx<'_>, node: &Node) -> Option<Vec<Device>> {
    let items = ctx.seq(node, "`devices`")?;
    if items.is_empty() {
        ctx.error(node.pos, "`devices` is empty; list at least one device");
        return None;
    }
    let mut out: Vec<Device> = Vec::with_capacity(items.len());
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let what = format!("device {} of `devices`", i + 1);
        let Some(f) = ctx.map(item, &what, DEVICE_KEYS) else {
            ok = false;
            continue;
        };
        let id = f.required(ctx, "id", &what).and_then(|n| {
            let id = ctx.nonempty_string(n, &format!("the `id` of {what}"))?;
            if let Err(e) = check_name(&id) {
                ctx.error(n.pos, format!("device id {e}"));
                return None;
            }
            if let Some(first) = out.iter().find(|d| d.id == id) {
                ctx.error(
                    n.pos,
                    format!(
                        "duplicate device id `{id}` (first defined at line {}); device ids must be unique",
                        first.pos.line
                    ),
                );
                return None;
            }
            Some(id)
        });
        let labels = match f.get("labels") {
            None => Some(BTreeMap::new()),
            Some(n) => decode_labels(ctx, n, &format!("the `labels` of {what}")),
        };
        let description = match f.get("description") {
            None => Some(None),
            Some(n) => ctx.string(n, "`description`").map(Some),
        };
        let pin = match f.get("pin") {
            None => Some(None),
            Some(n) => decode_pin(ctx, n, &what).map(Some),
        };
        match (id, labels, description, pin) {
            (Some(id), Some(labels), Some(description), Some(pin)) => out.push(Device {
                id,
                labels,
                description,
                pin,
                pos: item.pos,
            }),
            _ => ok = false,
        }
    }
    ok.then_some(out)
}

/// `pin: SHA` or `pin: { release: SHA, reason: … }`.
fn decode_pin(ctx: &mut Ctx<'_>, node: &Node, what: &str) -> Option<Pin> {
    let (release_node, reason) = if node.scalar().is_some() {
        (node, String::new())
    } else {
        let f = ctx.map(node, &format!("the `pin` of {what}"), PIN_KEYS)?;
        let release = f.required(ctx, "release", &format!("the `pin` of {what}"))?;
        let reason = match f.get("reason") {
            None => Some(String::new()),
            Some(n) => ctx.string(n, "the `reason` of a pin"),
        }?;
        (release, reason)
    };
    let release = ctx.nonempty_string(release_node, &format!("the pinned release of {what}"))?;
    if release.len() != 40
        || !release
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        ctx.error(
            release_node.pos,
            format!(
                "pinned release `{release}` of {what} is not a full commit sha (40 lower-case hex digits, e.g. from `git rev-parse`)"
            ),
        );
        return None;
    }
    Some(Pin {
        release,
        reason,
        pos: node.pos,
    })
}

fn decode_assignments(ctx: &mut Ctx<'_>, node: &Node) -> Option<Vec<StackAssignment>> {
    let items = ctx.seq(node, "`stacks`")?;
    let mut out = Vec::with_capacity(items.len());
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let what = format!("entry {} of `stacks`", i + 1);
        let Some(f) = ctx.map(item, &what, ASSIGN_KEYS) else {
            ok = false;
            continue;
        };
        let name = f.required(ctx, "name", &what).and_then(|n| {
            let s = ctx.nonempty_string(n, &format!("the `name` of {what}"))?;
            if let Err(e) = check_name(&s) {
                ctx.error(n.pos, format!("stack name {e}"));
                return None;
            }
            Some((s, n.pos))
        });
        let select = f.required(ctx, "select", &what).and_then(|n| {
            decode_selector(ctx, n, &format!("`select` of {what}")).map(|s| (s, n.pos))
        });
        match (name, select) {
            (Some((stack, name_pos)), Some((select, select_pos))) => out.push(StackAssignment {
                stack,
                select,
                pos: item.pos,
                name_pos,
                select_pos,
            }),
            _ => ok = false,
        }
    }
    ok.then_some(out)
}
