//! What a message says: a summary a person reads at 3 a.m. (what is wrong, where, how much),
//! the members with what holds for each, the next step with the exact commands, the runbook
//! and how to acknowledge. Every notifier renders the same [`Message`].

use fleet_config::alerts::AlertName;

use super::engine::Outgoing;
use super::facts::FleetSettings;
use crate::notify::{Message, MessageKind, MAX_DEVICES_LISTED};

/// Where links in messages point.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Links {
    /// `alerting.runbook_url_base`: a runbook is this + `<AlertName>.md`.
    pub runbook_url_base: String,
    /// `alerting.external_url`: the controller as people reach it, for dashboard links.
    pub external_url: Option<String>,
}

impl Links {
    /// The runbook of `name`.
    pub fn runbook(&self, name: AlertName) -> String {
        format!("{}{}.md", self.runbook_url_base, name.as_str())
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

fn dur(ms: i64) -> String {
    fleet_config::units::format_duration(std::time::Duration::from_millis(
        u64::try_from(ms.max(0)).unwrap_or(0),
    ))
}

/// A size the way fleet.yaml writes it (`500MB`: binary units, as the config reads them).
fn size(n: u64) -> String {
    const MB: u64 = 1 << 20;
    const GB: u64 = 1 << 30;
    if n >= GB && n % GB == 0 {
        format!("{}GB", n / GB)
    } else if n >= MB {
        format!("{}MB", n / MB)
    } else {
        format!("{n}B")
    }
}

/// The one-line summary.
pub fn summary(name: AlertName, members: &[(String, String)], s: &FleetSettings) -> String {
    let n = members.len();
    let devices = plural(n, "device", "devices");
    let first = members.first().map_or("", |(_, d)| d.as_str());
    let first_id = members.first().map_or("", |(m, _)| m.as_str());
    match name {
        AlertName::DeviceOffline => format!(
            "{devices} offline (no check-in for more than {})",
            dur(s.offline_after_ms)
        ),
        AlertName::DeviceCrashLooping => format!("{devices} crash-looping"),
        AlertName::DeviceDiskLow => format!(
            "{devices} low on disk (below {} free)",
            size(s.disk_free_below)
        ),
        AlertName::DeviceOverheating => {
            format!("{devices} overheating (above {} °C)", s.temperature_above)
        }
        AlertName::DeviceUpdateStuck => format!("{devices} with a stuck update"),
        AlertName::DeviceConfigDrift => format!("{devices} with config drift"),
        AlertName::DeviceGitFetchFailing => {
            format!("{devices} failing to fetch from a Git endpoint")
        }
        AlertName::DeviceInSafeMode => format!("{devices} in safe mode"),
        AlertName::RolloutHalted => match n {
            1 => format!("rollout {first_id} halted"),
            _ => format!("{n} rollouts halted"),
        },
        AlertName::ReleaseRejected => first.to_owned(),
        AlertName::ControllerGitFetchFailing => format!(
            "the controller cannot fetch the fleet repository from {}",
            members
                .iter()
                .map(|(m, _)| m.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        AlertName::FleetWideFailure => {
            format!("fleet-wide failure, emergency stop set: {first}")
        }
        AlertName::MonitoringDown => {
            "monitoring down: the heartbeat to the dead man's switch fails".into()
        }
        AlertName::NotifierFailing => format!(
            "notifier {} cannot deliver alerts",
            members
                .iter()
                .map(|(m, _)| m.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        AlertName::Watchdog => "the alerting pipeline works".into(),
    }
}

/// What to do next, with the commands.
pub fn next_step(name: AlertName, id: &str, first: &str) -> String {
    let first = if first.is_empty() { "ID" } else { first };
    match name {
        AlertName::DeviceOffline => format!(
            "Check power and network at the site. `fleetctl devices list --state offline` lists them; \
             `fleetctl devices show {first}` shows the last check-in. A device back online clears it."
        ),
        AlertName::DeviceCrashLooping => format!(
            "The agent rolled back (soon after an update) or entered safe mode on its own. \
             `fleetctl devices logs {first}` shows the service's last lines; if a release causes it, \
             `fleetctl rollouts list` and `fleetctl rollouts abort ID --reason ...`."
        ),
        AlertName::DeviceDiskLow => format!(
            "The agent prunes old releases and unused images and starts no update meanwhile. \
             `fleetctl devices show {first}`; free space on the device (logs, volumes) if pruning is not enough."
        ),
        AlertName::DeviceOverheating => format!(
            "No update starts until it cools. Check ventilation and load: `fleetctl devices show {first}`."
        ),
        AlertName::DeviceUpdateStuck => format!(
            "`fleetctl devices show {first}` and `fleetctl devices logs {first}`: the agent gives the update up, \
             or rolls it back, at the phase's deadline; `fleetctl stop --reason ...` holds the rest of the fleet."
        ),
        AlertName::DeviceConfigDrift => format!(
            "Files or containers of the running release were changed outside Fleet; the agent put them back \
             (or could not: drift_unrepaired). `fleetctl devices show {first}` lists what differed; find who changed it."
        ),
        AlertName::DeviceGitFetchFailing => format!(
            "Check the Git endpoint from the device's network; a mirror serves meanwhile. \
             `fleetctl devices show {first}` names the endpoint and its error."
        ),
        AlertName::DeviceInSafeMode => format!(
            "Log in with safe mode's SSH (the device page shows the command); `fleetctl devices logs {first}`. \
             A new healthy release, or `fleetctl safe-mode {first} off`, takes it out."
        ),
        AlertName::RolloutHalted => format!(
            "The failing wave went back to its previous release; later waves did not start. \
             `fleetctl rollouts show {first}`; push a fixed release, or `fleetctl rollouts resume|promote|abort {first} --reason ...`."
        ),
        AlertName::ReleaseRejected => {
            "Devices keep their release. Run `fleet-config validate` on the commit, fix it and push.".into()
        }
        AlertName::ControllerGitFetchFailing => {
            "No new release is seen meanwhile; devices keep theirs. Check the Git server and the controller's \
             network and credentials (controller.yaml `git.endpoints`)."
                .into()
        }
        AlertName::FleetWideFailure => {
            "Every check-in is told to hold. `fleetctl status` to see what fails; `fleetctl rollback --reason ...` \
             sends the active rollout back; `fleetctl resume --reason ...` once the cause is known."
                .into()
        }
        AlertName::MonitoringDown => {
            "Outside monitoring now believes this controller is down, or cannot see it. Check that \
             alerting.heartbeat.url is reachable from the controller."
                .into()
        }
        AlertName::NotifierFailing => format!(
            "Alerts routed to it reach nobody. `fleet-controller notifiers test --name {first}` shows the error; \
             check its URL, token or SMTP relay. (Alert {id}.)"
        ),
        AlertName::Watchdog => "Nothing: it always fires.".into(),
    }
}

/// The message of `o` for the fleet of `s`, with `links`.
pub fn message(o: &Outgoing, s: &FleetSettings, links: &Links) -> Message {
    let a = &o.alert;
    let members: Vec<(String, String)> = o
        .members
        .iter()
        .map(|m| {
            let detail = a
                .members
                .get(m)
                .map(|x| x.detail.clone())
                .unwrap_or_default();
            (m.clone(), detail)
        })
        .collect();
    let summary = summary(a.name, &members, s);
    let mut description = String::new();
    for (m, d) in members.iter().take(MAX_DEVICES_LISTED) {
        description.push_str(&format!("- {m}: {d}\n"));
    }
    if members.len() > MAX_DEVICES_LISTED {
        description.push_str(&format!(
            "- and {} more\n",
            members.len() - MAX_DEVICES_LISTED
        ));
    }
    let first = members.first().map_or("", |(m, _)| m.as_str());
    match o.kind {
        MessageKind::Resolved => description.push_str("It no longer holds.\n"),
        _ => {
            description.push_str(&format!("Next step: {}\n", next_step(a.name, &a.id, first)));
            // The notifiers add the runbook and how to acknowledge (notify::text::next_steps).
            if let Some(ack) = &a.ack {
                description.push_str(&format!("Acknowledged by {}: {}\n", ack.by, ack.reason));
            }
        }
    }
    let devices: Vec<String> = if a.name.about_devices() {
        members.iter().map(|(m, _)| m.clone()).collect()
    } else {
        Vec::new()
    };
    Message {
        id: o.message_id(),
        alert_id: a.id.clone(),
        alert: a.name,
        severity: a.name.severity(),
        kind: o.kind,
        summary,
        description,
        devices_total: devices.len() as u64,
        devices: devices.into_iter().take(MAX_DEVICES_LISTED).collect(),
        runbook_url: links.runbook(a.name),
        dashboard_url: links
            .external_url
            .as_ref()
            .map(|u| format!("{}/alerts/{}", u.trim_end_matches('/'), a.id)),
        started_ms: a.fired_ms.unwrap_or(a.started_ms),
        resolved_ms: a.resolved_ms,
        fleet: s.fleet.clone(),
    }
}
