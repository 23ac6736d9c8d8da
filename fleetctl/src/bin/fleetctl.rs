//! `fleetctl`: the on-call CLI for the Fleet controller.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use fleet_client::api::{ago, cell, reason, resolve, table, Api, CtlError};
use fleet_client::now_ms;
use serde_json::{json, Value};

/// Devices per page when listing them.
const DEVICE_PAGE: u32 = 1_000;

#[derive(Parser)]
#[command(
    name = "fleetctl",
    version,
    about = "On-call CLI for the Fleet controller"
)]
struct Cli {
    /// Controller URL.
    #[arg(long, global = true, env = "FLEET_URL")]
    url: Option<String>,
    /// API token (from `fleet-controller tokens create NAME`).
    #[arg(long, global = true, env = "FLEET_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Trust only this CA (PEM) for the controller's certificate (default: the system's roots).
    #[arg(long, global = true, env = "FLEET_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Config file with `url:`, `token:` and `ca_file:` (default ~/.config/fleet/fleetctl.yaml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value = "text")]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Fleet health at a glance.
    Status,
    /// Devices.
    Devices {
        #[command(subcommand)]
        command: DevicesCommand,
    },
    /// Rollouts.
    Rollouts {
        #[command(subcommand)]
        command: RolloutsCommand,
    },
    /// Emergency stop: every check-in answers hold until `fleetctl resume`.
    Stop {
        /// Why (required; it goes to the audit log and the dashboard banner).
        #[arg(long)]
        reason: String,
        /// Also send the active rollout's devices back to their last good release.
        #[arg(long)]
        rollback: bool,
    },
    /// Clear the emergency stop.
    Resume {
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Roll the active rollout back: every device of it returns to its previous release.
    Rollback {
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Ask a device to enter or leave safe mode.
    SafeMode {
        /// Device id.
        device: String,
        /// on or off.
        state: OnOff,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Bootstrap tokens (bulk provisioning): list, create, revoke.
    BootstrapTokens {
        #[command(subcommand)]
        command: BootstrapCommand,
    },
    /// Alerts: list, show, acknowledge, silence.
    Alerts {
        #[command(subcommand)]
        command: AlertsCommand,
    },
    /// The audit log.
    Audit {
        /// How many entries.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Validate a fleet repository locally (no controller needed).
    Validate {
        /// The repository's directory.
        path: PathBuf,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OnOff {
    On,
    Off,
}

#[derive(Subcommand)]
enum DevicesCommand {
    /// List devices.
    List {
        /// Only this state (online, offline, updating, failed, safe_mode, revoked).
        #[arg(long)]
        state: Option<String>,
    },
    /// One device with its recent events.
    Show {
        /// Device id.
        id: String,
    },
    /// Approve a pairing code shown by a device.
    Approve {
        /// The 8-character code.
        code: String,
        /// The code asks for an id that is enrolled or revoked, and this is that device
        /// re-flashed: give it a new token and end the old one (audited).
        #[arg(long)]
        replace: bool,
    },
    /// Revoke a device's token.
    Revoke {
        /// Device id.
        id: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Pin a device to a release: it is left out of rollouts and kept on that release until
    /// unpinned (audited).
    Pin {
        /// Device id.
        id: String,
        /// The release: its commit sha, or a unique prefix of at least 7 hex digits.
        release: String,
        /// Why (required; shown with the pin).
        #[arg(long)]
        reason: String,
    },
    /// Lift a device's pin: rollouts take it again (audited).
    Unpin {
        /// Device id.
        id: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Fetch a fresh tail of a device's logs (its agent's and each container's), through its
    /// check-ins: waits until the device sends it, then prints it grouped by source.
    Logs {
        /// Device id.
        id: String,
        /// Lines per source (1 to 1000; the controller's default is 100).
        #[arg(long)]
        lines: Option<u32>,
        /// Only this source: `agent`, a stack, a service or `stack/service` (repeatable).
        #[arg(long = "service")]
        services: Vec<String>,
        /// How long to wait for the device to send them, e.g. 60s, 5m; past it the newest logs
        /// received are printed with their age, and the command fails.
        #[arg(long, default_value = "60s", value_parser = parse_wait)]
        wait: std::time::Duration,
    },
}

fn parse_wait(s: &str) -> Result<std::time::Duration, String> {
    fleet_config::units::parse_duration(s).map_err(|e| e.to_string())
}

#[derive(Subcommand)]
enum AlertsCommand {
    /// List alerts: firing and pending by default.
    List {
        /// open (default), firing, pending, resolved or all.
        #[arg(long, default_value = "open")]
        state: String,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// One alert: its members, runbook and every message sent for it.
    Show {
        /// Alert id (from `list`).
        id: String,
    },
    /// Acknowledge an alert: someone is on it (no reminder, no escalation).
    Ack {
        /// Alert id.
        id: String,
        /// What you are doing about it (audited and shown with the alert).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Silence an alert (or every alert) for a device (or every device) for a while.
    Silence {
        /// The alert (e.g. DeviceOffline); absent: every alert.
        alert: Option<String>,
        /// Only this device (or other member: an endpoint, a notifier).
        #[arg(long)]
        device: Option<String>,
        /// For how long, e.g. 2h, 30m (at most 30d).
        #[arg(long = "for", default_value = "1h")]
        duration: String,
        /// Why (required; audited).
        #[arg(long)]
        reason: String,
    },
    /// List silences.
    Silences,
    /// End a silence early.
    Unsilence {
        /// Silence id (from `silences`).
        id: String,
        /// Why (required; audited).
        #[arg(long)]
        reason: String,
    },
    /// The alerting's own health: the engine's last pass, undelivered messages, notifiers, heartbeat.
    Status,
}

#[derive(Subcommand)]
enum BootstrapCommand {
    /// List bootstrap tokens with their status, expiry, uses and selector.
    List,
    /// Create one (admin); prints the secret once.
    Create {
        /// How long it lives, e.g. 24h, 7d (at most 90d).
        #[arg(long, default_value = "24h")]
        expires_in: String,
        /// At most this many enrollments.
        #[arg(long)]
        max_uses: Option<i64>,
        /// Only devices whose labels match, e.g. `site=berlin,ring=canary`.
        #[arg(long)]
        selector: Option<String>,
        /// What it is for.
        #[arg(long)]
        note: Option<String>,
    },
    /// Revoke one by id.
    Revoke {
        /// The token's id (from `list`).
        id: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Subcommand)]
enum RolloutsCommand {
    /// List rollouts.
    List,
    /// One rollout with its waves.
    Show {
        /// Rollout id.
        id: String,
    },
    /// Stop progressing.
    Pause {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Continue (retries a halted wave).
    Resume {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Send every device of the rollout back to its previous release.
    Abort {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Skip the gates: start the next wave now.
    Promote {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fleetctl: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(CtlError::Partial { output, message }) => {
            print!("{output}");
            eprintln!("fleetctl: {message}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("fleetctl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn pretty(v: &Value) -> String {
    format!("{}\n", serde_json::to_string_pretty(v).unwrap_or_default())
}

async fn run(cli: Cli) -> Result<String, CtlError> {
    // Validation is local: it needs no controller, URL or token.
    if let Command::Validate { path } = &cli.command {
        return validate(path);
    }
    let api = Api::new(resolve(
        cli.url.clone(),
        cli.token.clone(),
        cli.ca_file.clone(),
        cli.config.as_deref(),
    )?)?;
    let json_out = cli.output == Output::Json;
    let now = now_ms();
    match cli.command {
        Command::Validate { path } => validate(&path),
        Command::Status => {
            let s = api.get("/api/v1/status").await?;
            if json_out {
                return Ok(pretty(&s));
            }
            let mut out = String::new();
            if !s["emergency_stop"].is_null() {
                out.push_str(&format!(
                    "EMERGENCY STOP by {} {}: {}\n",
                    cell(&s["emergency_stop"]["actor"]),
                    ago(&s["emergency_stop"]["at_ms"], now),
                    cell(&s["emergency_stop"]["reason"])
                ));
            }
            out.push_str(&format!(
                "devices: {}   healthy: {:.1}%\n",
                s["devices"],
                s["healthy_percent"].as_f64().unwrap_or(0.0)
            ));
            if let Some(m) = s["by_state"].as_object() {
                let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k} {v}")).collect();
                out.push_str(&format!("by state: {}\n", parts.join(", ")));
            }
            if let Some(m) = s["versions"].as_object() {
                let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k} {v}")).collect();
                out.push_str(&format!("versions: {}\n", parts.join(", ")));
            }
            for r in s["active_rollouts"].as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "rollout {} of {}: {}\n",
                    cell(&r["id"]),
                    cell(&r["release"]),
                    cell(&r["state"])
                ));
            }
            for p in s["pending_pairings"].as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "waiting for approval: {} ({}), code {}: fleetctl devices approve {}\n",
                    cell(&p["device_id"]),
                    cell(&p["hostname"]),
                    cell(&p["code"]),
                    cell(&p["code"])
                ));
            }
            Ok(out)
        }
        Command::Devices { command } => match command {
            DevicesCommand::List { state } => {
                let path = match &state {
                    Some(s) => format!("/api/v1/devices?state={s}"),
                    None => "/api/v1/devices".into(),
                };
                // In pages, so a fleet of 100,000 is not one answer of every device.
                let list = api.get_all(&path, DEVICE_PAGE).await?;
                if json_out {
                    return Ok(pretty(&list));
                }
                let rows: Vec<Vec<String>> = list
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|d| {
                        vec![
                            cell(&d["id"]),
                            cell(&d["state"]),
                            cell(&d["current"]),
                            cell(&d["desired_release"]),
                            cell(&d["health"]),
                            ago(&d["last_seen_ms"], now),
                            cell(&d["pinned_release"]),
                        ]
                    })
                    .collect();
                Ok(table(
                    &[
                        "ID",
                        "STATE",
                        "CURRENT",
                        "DESIRED",
                        "HEALTH",
                        "LAST SEEN",
                        "PINNED",
                    ],
                    &rows,
                ))
            }
            DevicesCommand::Show { id } => {
                let d = api.get(&format!("/api/v1/devices/{id}")).await?;
                Ok(pretty(&d))
            }
            DevicesCommand::Approve { code, replace } => {
                let r = api
                    .post(
                        "/api/v1/devices/approve",
                        json!({"code": code, "replace": replace}),
                    )
                    .await?;
                Ok(if json_out {
                    pretty(&r)
                } else {
                    format!("approved device {}\n", cell(&r["approved"]))
                })
            }
            DevicesCommand::Pin {
                id,
                release,
                reason: why,
            } => {
                let r = api
                    .post(
                        &format!("/api/v1/devices/{id}/pin"),
                        json!({"release": release, "reason": why}),
                    )
                    .await?;
                Ok(if json_out {
                    pretty(&r)
                } else {
                    format!(
                        "device {id} pinned to {}: left out of rollouts until `fleetctl devices unpin {id}`\n",
                        cell(&r["pinned"])
                    )
                })
            }
            DevicesCommand::Unpin { id, reason: why } => {
                let r = api
                    .post(&format!("/api/v1/devices/{id}/unpin"), reason(&why))
                    .await?;
                Ok(if json_out {
                    pretty(&r)
                } else if r["changed"].as_bool() == Some(true) {
                    format!("device {id} unpinned: rollouts take it again\n")
                } else {
                    format!("device {id} was not pinned\n")
                })
            }
            DevicesCommand::Logs {
                id,
                lines,
                services,
                wait,
            } => {
                let ask = fleet_client::logs::Ask {
                    id,
                    lines,
                    services,
                    wait,
                    json: json_out,
                };
                fleet_client::logs::fetch(&api, &ask).await
            }
            DevicesCommand::Revoke { id, reason: why } => {
                let r = api
                    .post(&format!("/api/v1/devices/{id}/revoke"), reason(&why))
                    .await?;
                Ok(if json_out {
                    pretty(&r)
                } else {
                    format!("revoked device {id}\n")
                })
            }
        },
        Command::Rollouts { command } => {
            let (id, action, why) = match command {
                RolloutsCommand::List => {
                    let list = api.get("/api/v1/rollouts").await?;
                    if json_out {
                        return Ok(pretty(&list));
                    }
                    let rows: Vec<Vec<String>> = list
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|r| {
                            vec![
                                cell(&r["id"]),
                                cell(&r["release"]),
                                cell(&r["state"]),
                                ago(&r["created_ms"], now),
                            ]
                        })
                        .collect();
                    return Ok(table(&["ID", "RELEASE", "STATE", "CREATED"], &rows));
                }
                RolloutsCommand::Show { id } => {
                    return Ok(pretty(&api.get(&format!("/api/v1/rollouts/{id}")).await?));
                }
                RolloutsCommand::Pause { id, reason } => (id, "pause", reason),
                RolloutsCommand::Resume { id, reason } => (id, "resume", reason),
                RolloutsCommand::Abort { id, reason } => (id, "abort", reason),
                RolloutsCommand::Promote { id, reason } => (id, "promote", reason),
            };
            let r = api
                .post(&format!("/api/v1/rollouts/{id}/{action}"), reason(&why))
                .await?;
            Ok(if json_out {
                pretty(&r)
            } else {
                format!("rollout {id}: {action} done, now {}\n", cell(&r["state"]))
            })
        }
        Command::Stop {
            reason: why,
            rollback,
        } => {
            let r = api
                .post("/api/v1/stop", json!({"reason": why, "rollback": rollback}))
                .await?;
            Ok(if json_out {
                pretty(&r)
            } else {
                "EMERGENCY STOP set: every device holds until `fleetctl resume`\n".into()
            })
        }
        Command::Resume { reason: why } => {
            let r = api.post("/api/v1/resume", reason(&why)).await?;
            Ok(if json_out {
                pretty(&r)
            } else if r["was_set"] == true {
                "emergency stop cleared\n".into()
            } else {
                "no emergency stop was set\n".into()
            })
        }
        Command::Rollback { reason: why } => {
            let r = api
                .post("/api/v1/rollouts/active/abort", reason(&why))
                .await?;
            Ok(if json_out {
                pretty(&r)
            } else {
                format!(
                    "rollout {} aborted: its devices go back to their previous release\n",
                    cell(&r["id"])
                )
            })
        }
        Command::SafeMode {
            device,
            state,
            reason: why,
        } => {
            let on = state == OnOff::On;
            let r = api
                .post(
                    &format!("/api/v1/devices/{device}/safe-mode"),
                    json!({"on": on, "reason": why.unwrap_or_default()}),
                )
                .await?;
            Ok(if json_out {
                pretty(&r)
            } else {
                format!(
                    "device {device}: safe mode {}\n",
                    if on { "requested" } else { "off" }
                )
            })
        }
        Command::BootstrapTokens { command } => {
            bootstrap_tokens(&api, command, json_out, now).await
        }
        Command::Alerts { command } => alerts(&api, command, json_out, now).await,
        Command::Audit { limit } => {
            let list = api.get(&format!("/api/v1/audit?limit={limit}")).await?;
            if json_out {
                return Ok(pretty(&list));
            }
            let rows: Vec<Vec<String>> = list
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| {
                    vec![
                        ago(&e["at_ms"], now),
                        cell(&e["actor"]),
                        cell(&e["action"]),
                        cell(&e["target"]),
                        cell(&e["reason"]),
                    ]
                })
                .collect();
            Ok(table(
                &["WHEN", "ACTOR", "ACTION", "TARGET", "REASON"],
                &rows,
            ))
        }
    }
}

async fn bootstrap_tokens(
    api: &Api,
    command: BootstrapCommand,
    json_out: bool,
    now: i64,
) -> Result<String, CtlError> {
    match command {
        BootstrapCommand::List => {
            let list = api.get("/api/v1/bootstrap-tokens").await?;
            if json_out {
                return Ok(pretty(&list));
            }
            let rows: Vec<Vec<String>> = list
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    let selector = t["selector"]
                        .as_object()
                        .filter(|m| !m.is_empty())
                        .map_or_else(
                            || "any".to_owned(),
                            |m| {
                                m.iter()
                                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                                    .collect::<Vec<_>>()
                                    .join(",")
                            },
                        );
                    vec![
                        cell(&t["id"]),
                        cell(&t["status"]),
                        until(&t["expires_ms"], now),
                        format!("{}/{}", t["uses"], cell(&t["max_uses"])),
                        selector,
                        cell(&t["note"]),
                    ]
                })
                .collect();
            Ok(table(
                &["ID", "STATUS", "EXPIRES", "USES", "SELECTOR", "NOTE"],
                &rows,
            ))
        }
        BootstrapCommand::Create {
            expires_in,
            max_uses,
            selector,
            note,
        } => {
            let mut labels = serde_json::Map::new();
            for part in selector.iter().flat_map(|s| s.split(',')).map(str::trim) {
                if part.is_empty() {
                    continue;
                }
                let Some((k, v)) = part.split_once('=') else {
                    return Err(CtlError::Local(format!(
                        "--selector part `{part}` is not KEY=VALUE"
                    )));
                };
                labels.insert(k.trim().to_owned(), json!(v.trim()));
            }
            let r = api
                .post(
                    "/api/v1/bootstrap-tokens",
                    json!({"expires_in": expires_in, "max_uses": max_uses, "selector": labels, "note": note.unwrap_or_default()}),
                )
                .await?;
            Ok(if json_out {
                pretty(&r)
            } else {
                format!(
                    "{}\n(bootstrap token {}: shown once; expires {}; it enrolls new devices only, never replaces one)\n",
                    cell(&r["token"]),
                    cell(&r["id"]),
                    until(&r["expires_ms"], now)
                )
            })
        }
        BootstrapCommand::Revoke { id, reason: why } => {
            let r = api
                .post(
                    &format!("/api/v1/bootstrap-tokens/{id}/revoke"),
                    reason(&why),
                )
                .await?;
            Ok(if json_out {
                pretty(&r)
            } else if r["was_live"] == true {
                format!("revoked bootstrap token {id}\n")
            } else {
                format!("bootstrap token {id} was revoked already\n")
            })
        }
    }
}

async fn alerts(
    api: &Api,
    command: AlertsCommand,
    json_out: bool,
    now: i64,
) -> Result<String, CtlError> {
    match command {
        AlertsCommand::List { state, limit } => {
            let list = api
                .get(&format!("/api/v1/alerts?state={state}&limit={limit}"))
                .await?;
            if json_out {
                return Ok(pretty(&list));
            }
            let rows: Vec<Vec<String>> = list
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| {
                    let since = if a["phase"] == "resolved" {
                        format!("resolved {}", ago(&a["resolved_ms"], now))
                    } else if a["fired_ms"].is_null() {
                        format!("pending {}", ago(&a["started_ms"], now))
                    } else {
                        format!("firing {}", ago(&a["fired_ms"], now))
                    };
                    let acked = match a["ack"]["by"].as_str() {
                        Some(by) => format!("acked by {by}"),
                        None => String::new(),
                    };
                    vec![
                        cell(&a["id"]),
                        cell(&a["severity"]),
                        since,
                        cell(&a["summary"]),
                        acked,
                    ]
                })
                .collect();
            if rows.is_empty() {
                return Ok(format!("no {state} alerts\n"));
            }
            Ok(table(&["ID", "SEVERITY", "STATE", "SUMMARY", "ACK"], &rows))
        }
        AlertsCommand::Show { id } => {
            let a = api.get(&format!("/api/v1/alerts/{id}")).await?;
            if json_out {
                return Ok(pretty(&a));
            }
            let mut out = format!(
                "{} [{}] {}: {}\n",
                cell(&a["id"]),
                cell(&a["severity"]),
                cell(&a["phase"]),
                cell(&a["summary"])
            );
            if let Some(by) = a["ack"]["by"].as_str() {
                out.push_str(&format!(
                    "acknowledged by {by} {}: {}\n",
                    ago(&a["ack"]["at_ms"], now),
                    cell(&a["ack"]["reason"])
                ));
            }
            out.push_str(&format!("runbook: {}\n", cell(&a["runbook_url"])));
            for (m, v) in a["members"].as_object().into_iter().flatten() {
                out.push_str(&format!(
                    "  {m}: {} (since {}{})\n",
                    cell(&v["detail"]),
                    ago(&v["since_ms"], now),
                    if v["firing"] == true { "" } else { ", pending" }
                ));
            }
            for m in a["messages"].as_array().into_iter().flatten() {
                let fate = if !m["delivered_ms"].is_null() {
                    format!("delivered {}", ago(&m["delivered_ms"], now))
                } else if !m["dropped_ms"].is_null() {
                    format!("given up: {}", cell(&m["last_error"]))
                } else if m["attempts"].as_i64().unwrap_or(0) > 0 {
                    format!(
                        "retrying ({} attempts): {}",
                        m["attempts"],
                        cell(&m["last_error"])
                    )
                } else {
                    "queued".into()
                };
                out.push_str(&format!(
                    "  message {} to {}: {fate}\n",
                    cell(&m["kind"]),
                    cell(&m["notifier"])
                ));
            }
            Ok(out)
        }
        AlertsCommand::Ack { id, reason: why } => {
            let r = api
                .post(&format!("/api/v1/alerts/{id}/ack"), reason(&why))
                .await?;
            Ok(if json_out {
                pretty(&r)
            } else {
                format!("alert {id} acknowledged: no reminder, no escalation\n")
            })
        }
        AlertsCommand::Silence {
            alert,
            device,
            duration,
            reason: why,
        } => {
            let r = api
                .post(
                    "/api/v1/silences",
                    json!({"alert": alert, "device": device, "duration": duration, "reason": why}),
                )
                .await?;
            Ok(if json_out {
                pretty(&r)
            } else {
                format!(
                    "silence {}: {}{} until {} (`fleetctl alerts unsilence {}` ends it)\n",
                    cell(&r["id"]),
                    r["alert"].as_str().unwrap_or("every alert"),
                    r["member"]
                        .as_str()
                        .map(|m| format!(" for {m}"))
                        .unwrap_or_default(),
                    until(&r["until_ms"], now),
                    cell(&r["id"])
                )
            })
        }
        AlertsCommand::Silences => {
            let list = api.get("/api/v1/silences").await?;
            if json_out {
                return Ok(pretty(&list));
            }
            let rows: Vec<Vec<String>> = list
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| {
                    vec![
                        cell(&s["id"]),
                        s["alert"].as_str().unwrap_or("every alert").to_owned(),
                        s["member"].as_str().unwrap_or("all").to_owned(),
                        until(&s["until_ms"], now),
                        cell(&s["created_by"]),
                        cell(&s["reason"]),
                    ]
                })
                .collect();
            Ok(table(
                &["ID", "ALERT", "MEMBER", "UNTIL", "BY", "REASON"],
                &rows,
            ))
        }
        AlertsCommand::Unsilence { id, reason: why } => {
            let r = api
                .post(
                    &format!("/api/v1/silences/{id}/end"),
                    json!({"reason": why}),
                )
                .await?;
            Ok(if json_out {
                pretty(&r)
            } else {
                format!("silence {id} ended\n")
            })
        }
        AlertsCommand::Status => {
            let s = api.get("/api/v1/alerting").await?;
            if json_out {
                return Ok(pretty(&s));
            }
            let mut out = format!(
                "alert engine: last pass {}; {} messages waiting\n",
                ago(&s["last_evaluation_ms"], now),
                s["undelivered"]
            );
            match (
                s["heartbeat_configured"] == true,
                s["heartbeat_failing_since_ms"].as_i64(),
            ) {
                (false, _) => out.push_str("heartbeat: not configured (alerting.heartbeat)\n"),
                (true, None) => out.push_str("heartbeat: ok\n"),
                (true, Some(_)) => out.push_str(&format!(
                    "heartbeat: FAILING since {}\n",
                    ago(&s["heartbeat_failing_since_ms"], now)
                )),
            }
            let rows: Vec<Vec<String>> = s["notifiers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|n| {
                    vec![
                        cell(&n["name"]),
                        cell(&n["kind"]),
                        n["consecutive_failures"].to_string(),
                        ago(&n["last_ok_ms"], now),
                        cell(&n["last_error"]),
                    ]
                })
                .collect();
            if rows.is_empty() {
                out.push_str("no notifiers configured (alerting.notifiers): alerts are kept and shown, not sent\n");
            } else {
                out.push_str(&table(
                    &[
                        "NOTIFIER",
                        "KIND",
                        "FAILURES IN A ROW",
                        "LAST SENT",
                        "LAST ERROR",
                    ],
                    &rows,
                ));
            }
            Ok(out)
        }
    }
}

/// Milliseconds since the epoch as "in 3h" or "2h ago".
fn until(v: &Value, now_ms: i64) -> String {
    match v.as_i64() {
        Some(t) if t > now_ms => {
            let s = (t - now_ms) / 1000;
            if s < 7200 {
                format!("in {}m", s / 60)
            } else {
                format!("in {}h", s / 3600)
            }
        }
        Some(_) => ago(v, now_ms),
        None => "never".into(),
    }
}

fn validate(path: &std::path::Path) -> Result<String, CtlError> {
    let v = fleet_config::validate_dir(path).map_err(|e| CtlError::Local(e.to_string()))?;
    let diags = v.diagnostics.sorted();
    let mut out = String::new();
    for d in &diags {
        out.push_str(&format!("{d}\n"));
    }
    if v.repo.is_none() {
        return Err(CtlError::Local(format!(
            "{out}{} is not a valid fleet repository",
            path.display()
        )));
    }
    out.push_str(&format!("{}: valid\n", path.display()));
    Ok(out)
}
