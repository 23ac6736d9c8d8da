//! The label scheme and the names of what the agent creates, so several agents (devices,
//! tests) can share one engine without touching each other's objects.
//!
//! Identity is by label, never by name: a container belongs to a stack's service when it
//! carries `fleet.namespace`, `fleet.stack` and `fleet.service`. Names are derived for people
//! (`<namespace>-<stack>-<service>`) and are unique per namespace as long as the names the
//! operator chose are.

use std::collections::HashMap;

use fleet_config::compose::{NetworkDef, Service, VolumeDef};

use super::error::DockerError;

/// The agent instance that owns an object.
pub const LABEL_NAMESPACE: &str = "fleet.namespace";
/// The stack an object belongs to.
pub const LABEL_STACK: &str = "fleet.stack";
/// The service a container (or anonymous volume) belongs to.
pub const LABEL_SERVICE: &str = "fleet.service";
/// The release whose apply created the container. Docker labels are immutable, so this is
/// "the release that created it", not "the release running now": an unchanged service keeps
/// its container, and its label, across releases. Its bind mounts point into that release's
/// directory, so a release pruner must keep every release named by a container's label.
pub const LABEL_RELEASE: &str = "fleet.release";
/// sha256 of everything that shapes the container (see [`super::spec`]).
pub const LABEL_CONFIG_HASH: &str = "fleet.config-hash";

/// The name of the network a service joins when it names none (as in Compose).
pub const DEFAULT_NETWORK: &str = "default";

/// One agent's share of a Docker engine: every object it creates carries
/// `fleet.namespace=<this>`, and it only ever lists, changes or removes objects that do.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Namespace(String);

impl Namespace {
    /// Checks `name` against the rules for fleet names (1–63 of `a-z 0-9 - _ .`, starting
    /// with a letter or digit), which also makes it valid in Docker object names.
    pub fn new(name: impl Into<String>) -> Result<Namespace, DockerError> {
        let name = name.into();
        match fleet_config::names::check_name(&name) {
            Ok(()) => Ok(Namespace(name)),
            Err(reason) => Err(DockerError::InvalidNamespace {
                namespace: name,
                reason,
            }),
        }
    }

    /// The namespace as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The container name of `service`: its `container_name`, else `<ns>-<stack>-<service>`.
    pub fn container_name(&self, stack: &str, service_name: &str, service: &Service) -> String {
        service
            .container_name
            .clone()
            .unwrap_or_else(|| format!("{}-{stack}-{service_name}", self.0))
    }

    /// The Docker name of the stack's network `key`: its `name`, else `<ns>-<stack>-<key>`.
    pub fn network_name(&self, stack: &str, key: &str, def: Option<&NetworkDef>) -> String {
        def.and_then(|d| d.name.clone())
            .unwrap_or_else(|| format!("{}-{stack}-{key}", self.0))
    }

    /// The Docker name of the stack's volume `key`: its `name`, else `<ns>-<stack>-<key>`.
    pub fn volume_name(&self, stack: &str, key: &str, def: Option<&VolumeDef>) -> String {
        def.and_then(|d| d.name.clone())
            .unwrap_or_else(|| format!("{}-{stack}-{key}", self.0))
    }

    /// The labels every object of `stack` carries.
    pub(crate) fn stack_labels(&self, stack: &str) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_NAMESPACE.to_owned(), self.0.clone()),
            (LABEL_STACK.to_owned(), stack.to_owned()),
        ])
    }

    /// An Engine API `filters` value selecting this namespace's objects, of one stack if given.
    pub(crate) fn filters(&self, stack: Option<&str>) -> HashMap<String, Vec<String>> {
        let mut labels = vec![format!("{LABEL_NAMESPACE}={}", self.0)];
        if let Some(s) = stack {
            labels.push(format!("{LABEL_STACK}={s}"));
        }
        HashMap::from([("label".to_owned(), labels)])
    }

    /// "namespace `x`, stack `y`", for error messages.
    pub(crate) fn scope(&self, stack: Option<&str>) -> String {
        match stack {
            Some(s) => format!("namespace `{}`, stack `{s}`", self.0),
            None => format!("namespace `{}`", self.0),
        }
    }
}

impl std::fmt::Display for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_follow_the_fleet_name_rules() {
        assert!(Namespace::new("dev-1.site_a").is_ok());
        for bad in ["", "Dev", "-x", "a b", "a/b"] {
            assert!(Namespace::new(bad).is_err(), "`{bad}` must be refused");
        }
    }

    #[test]
    fn filters_select_namespace_and_stack() {
        let ns = Namespace::new("t1").map_err(|e| e.to_string());
        let ns = ns.as_ref().map(|n| n.filters(Some("web")));
        assert_eq!(
            ns.ok().and_then(|f| f.get("label").cloned()),
            Some(vec![
                "fleet.namespace=t1".to_owned(),
                "fleet.stack=web".to_owned()
            ])
        );
    }
}
