//! How on-call reaches a device: the SSH command built from its inventory labels (devices.yaml),
//! and in safe mode the safe-mode stack's SSH (root, key only: see `safe-mode/README.md`). The
//! controller never connects to a device; this only writes the command for a person to run.
//!
//! Labels read (values as devices.yaml allows them: 1 to 63 of letters, digits, `-`, `_`, `.`):
//!
//! | label | meaning | default |
//! |---|---|---|
//! | [`LABEL_HOST`] `ssh_host` | host name or IPv4 address to connect to | the host name the agent reported at enrollment |
//! | [`LABEL_USER`] `ssh_user` | user to log in as | none (ssh's own default) |
//! | [`LABEL_PORT`] `ssh_port` | the device's sshd port | 22 |
//! | [`LABEL_SAFE_MODE_PORT`] `safe_mode_ssh_port` | the safe-mode sshd's port (`SSH_PORT` of `/etc/fleet/safe-mode/env`) | 22 |
//!
//! A value that could be read as an option of `ssh` (starting with `-`) or is not a host name,
//! user or port gives no command and says which label to fix, never a command to paste.

use std::collections::BTreeMap;

/// The label naming the host to connect to.
pub const LABEL_HOST: &str = "ssh_host";
/// The label naming the user to log in as.
pub const LABEL_USER: &str = "ssh_user";
/// The label naming the device's sshd port.
pub const LABEL_PORT: &str = "ssh_port";
/// The label naming the safe-mode sshd's port.
pub const LABEL_SAFE_MODE_PORT: &str = "safe_mode_ssh_port";
/// Who logs into the safe-mode stack (key only).
pub const SAFE_MODE_USER: &str = "root";
/// Where the safe-mode stack's authorized keys are on the device.
pub const SAFE_MODE_KEYS: &str = "/etc/fleet/safe-mode/authorized_keys";

/// One way in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Way {
    /// The command to run, or why there is none.
    pub command: Result<String, String>,
    /// Where the host came from, and anything else worth knowing.
    pub note: String,
}

/// The ways into a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach {
    /// The device's own sshd.
    pub ssh: Way,
    /// The safe-mode stack's sshd (root, key only).
    pub safe_mode: Way,
    /// The device runs its safe-mode stack now: `safe_mode` is the way in.
    pub in_safe_mode: bool,
}

fn is_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && !h.starts_with(['-', '.'])
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
}

fn is_user(u: &str) -> bool {
    !u.is_empty()
        && u.len() <= 32
        && !u.starts_with('-')
        && u.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn port(labels: &BTreeMap<String, String>, label: &str) -> Result<u16, String> {
    match labels.get(label) {
        None => Ok(22),
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("label `{label}: {p}` is not a port (1 to 65535)")),
    }
}

fn command(user: Option<&str>, host: &str, port: u16) -> String {
    let mut c = String::from("ssh ");
    if port != 22 {
        c.push_str(&format!("-p {port} "));
    }
    if let Some(u) = user {
        c.push_str(u);
        c.push('@');
    }
    c.push_str(host);
    c
}

/// The ways into a device with inventory `labels` that reported `hostname`, in safe mode or
/// not.
pub fn reach(labels: &BTreeMap<String, String>, hostname: &str, in_safe_mode: bool) -> Reach {
    let host = match labels.get(LABEL_HOST) {
        Some(h) if is_host(h) => Ok((h.clone(), format!("host from the `{LABEL_HOST}` label"))),
        Some(h) => Err(format!(
            "label `{LABEL_HOST}: {h}` is not a host name or IPv4 address"
        )),
        None if is_host(hostname) => Ok((
            hostname.to_owned(),
            format!(
                "host name the agent reported; set the `{LABEL_HOST}` label in devices.yaml if it does not resolve"
            ),
        )),
        None => Err(format!(
            "no `{LABEL_HOST}` label in devices.yaml, and the host name the agent reported is not one to connect to"
        )),
    };
    let user = match labels.get(LABEL_USER) {
        Some(u) if is_user(u) => Ok(Some(u.as_str())),
        Some(u) => Err(format!("label `{LABEL_USER}: {u}` is not a user name")),
        None => Ok(None),
    };
    let ssh = match (
        host.as_ref(),
        user.as_ref(),
        port(labels, LABEL_PORT).as_ref(),
    ) {
        (Ok((h, from)), Ok(u), Ok(p)) => Way {
            command: Ok(command(*u, h, *p)),
            note: from.clone(),
        },
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => Way {
            command: Err(e.clone()),
            note: String::new(),
        },
    };
    let safe_mode = match (host.as_ref(), port(labels, LABEL_SAFE_MODE_PORT).as_ref()) {
        (Ok((h, _)), Ok(p)) => Way {
            command: Ok(command(Some(SAFE_MODE_USER), h, *p)),
            note: format!(
                "root, with a key only (its public half in {SAFE_MODE_KEYS} on the device); port from the `{LABEL_SAFE_MODE_PORT}` label, default 22"
            ),
        },
        (Err(e), _) | (_, Err(e)) => Way {
            command: Err(e.clone()),
            note: String::new(),
        },
    };
    Reach {
        ssh,
        safe_mode,
        in_safe_mode,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_command_comes_from_the_labels() {
        let r = reach(
            &labels(&[
                ("ssh_host", "pi-17.lab"),
                ("ssh_user", "pi"),
                ("ssh_port", "2222"),
                ("safe_mode_ssh_port", "2200"),
            ]),
            "raspberrypi",
            true,
        );
        assert_eq!(r.ssh.command.as_deref(), Ok("ssh -p 2222 pi@pi-17.lab"));
        assert_eq!(
            r.safe_mode.command.as_deref(),
            Ok("ssh -p 2200 root@pi-17.lab")
        );
        assert!(r.safe_mode.note.contains(SAFE_MODE_KEYS));
        assert!(r.in_safe_mode);
    }

    #[test]
    fn without_labels_the_reported_host_name_and_port_22() {
        let r = reach(&BTreeMap::new(), "pi-17", false);
        assert_eq!(r.ssh.command.as_deref(), Ok("ssh pi-17"));
        assert!(r.ssh.note.contains("ssh_host"), "{}", r.ssh.note);
        assert_eq!(r.safe_mode.command.as_deref(), Ok("ssh root@pi-17"));
    }

    #[test]
    fn what_could_be_an_option_or_is_no_host_gives_no_command() {
        for (l, host, label) in [
            (labels(&[("ssh_host", "-oProxyCommand")]), "h", "ssh_host"),
            (labels(&[]), "bad host; rm -rf /", "ssh_host"),
            (labels(&[]), "-v", "ssh_host"),
            (labels(&[("ssh_user", "-l")]), "h", "ssh_user"),
            (labels(&[("ssh_port", "99999")]), "h", "ssh_port"),
            (labels(&[("ssh_port", "0")]), "h", "ssh_port"),
        ] {
            let r = reach(&l, host, false);
            let e = r.ssh.command.expect_err("no command");
            assert!(e.contains(label), "{e}");
        }
        let r = reach(&labels(&[("safe_mode_ssh_port", "x")]), "h", true);
        assert_eq!(r.ssh.command.as_deref(), Ok("ssh h"));
        assert!(r
            .safe_mode
            .command
            .is_err_and(|e| e.contains("safe_mode_ssh_port")));
    }
}
