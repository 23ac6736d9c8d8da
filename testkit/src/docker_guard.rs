//! A unique label namespace per test, and a guard that removes everything carrying it when
//! the test ends, passed or failed. It uses the `docker` CLI on purpose: it works in `Drop`
//! without an async runtime, and it checks the agent's own cleanup independently.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Owns a namespace for one test; dropping it removes the namespace's containers, networks
/// and volumes.
pub struct NamespaceGuard {
    /// The namespace, unique per test and process.
    pub name: String,
}

impl NamespaceGuard {
    /// A fresh namespace named after `test`.
    pub fn new(test: &str) -> NamespaceGuard {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let short: String = test
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .take(30)
            .collect();
        let name = format!(
            "t{}-{}-{short}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        NamespaceGuard { name }
    }

    /// The `label=` filter selecting this namespace.
    pub fn filter(&self) -> String {
        format!("label=fleet.namespace={}", self.name)
    }

    /// `docker <kind> ls -q` of this namespace: ids of what is left.
    pub fn leftovers(&self, kind: &str) -> Vec<String> {
        let mut cmd = Command::new("docker");
        if kind == "container" {
            cmd.args(["ps", "-aq"]);
        } else {
            cmd.args([kind, "ls", "-q"]);
        }
        cmd.args(["--filter", &self.filter()]);
        match cmd.output() {
            Ok(out) => String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

impl Drop for NamespaceGuard {
    fn drop(&mut self) {
        for (kind, rm) in [
            ("container", &["rm", "-f", "-v"][..]),
            ("network", &["network", "rm"][..]),
            ("volume", &["volume", "rm", "-f"][..]),
        ] {
            let ids = self.leftovers(kind);
            if !ids.is_empty() {
                let _ = Command::new("docker").args(rm).args(&ids).output();
            }
        }
    }
}
