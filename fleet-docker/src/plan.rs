//! The reconcile decision, apart from the I/O: given the services the stack should run (with
//! their config hashes) and the containers the engine has, which to keep, create and remove.

use std::collections::{BTreeMap, BTreeSet};

/// A container of the stack as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Observed {
    /// Container id.
    pub id: String,
    /// Container name, for logs and errors.
    pub name: String,
    /// Its `fleet.service` label.
    pub service: Option<String>,
    /// Its `fleet.config-hash` label.
    pub config_hash: Option<String>,
    /// Running (or restarting) now.
    pub running: bool,
}

/// What to do with the stack's containers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Plan {
    /// Services whose container stays, with its id and whether it must be started again.
    pub keep: BTreeMap<String, (String, bool)>,
    /// Services that need a new container (none, or the old one was changed).
    pub create: BTreeSet<String>,
    /// Containers to stop and remove: changed, duplicated, or of services no longer in the file.
    pub remove: Vec<Observed>,
}

/// Decides. A container stays only when its service is still wanted with the same config
/// hash; of several such (which only a crash mid-apply could leave), the running one, else the
/// first, stays and the others go.
pub(crate) fn plan(desired: &BTreeMap<String, String>, observed: &[Observed]) -> Plan {
    let mut out = Plan::default();
    let mut candidates: Vec<&Observed> = observed.iter().collect();
    // Running containers first, so they are the ones kept.
    candidates.sort_by_key(|o| !o.running);
    for o in candidates {
        let wanted = o
            .service
            .as_ref()
            .and_then(|s| desired.get(s).map(|h| (s, h)));
        match wanted {
            Some((svc, hash))
                if o.config_hash.as_ref() == Some(hash) && !out.keep.contains_key(svc) =>
            {
                out.keep.insert(svc.clone(), (o.id.clone(), !o.running));
            }
            _ => out.remove.push(o.clone()),
        }
    }
    out.create = desired
        .keys()
        .filter(|s| !out.keep.contains_key(*s))
        .cloned()
        .collect();
    out.remove.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(id: &str, service: &str, hash: &str, running: bool) -> Observed {
        Observed {
            id: id.into(),
            name: format!("c-{id}"),
            service: Some(service.into()),
            config_hash: Some(hash.into()),
            running,
        }
    }

    fn desired(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(s, h)| ((*s).to_owned(), (*h).to_owned()))
            .collect()
    }

    /// (kept: service, id, needs start), created services, removed ids.
    type Summary<'a> = (Vec<(&'a str, &'a str, bool)>, Vec<&'a str>, Vec<&'a str>);

    fn ids(p: &Plan) -> Summary<'_> {
        (
            p.keep
                .iter()
                .map(|(s, (id, start))| (s.as_str(), id.as_str(), *start))
                .collect(),
            p.create.iter().map(String::as_str).collect(),
            p.remove.iter().map(|o| o.id.as_str()).collect(),
        )
    }

    #[test]
    fn cases() {
        type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<Observed>, Summary<'a>);
        let cases: Vec<Case> = vec![
            (
                "fresh stack",
                vec![("web", "h1"), ("db", "h2")],
                vec![],
                (vec![], vec!["db", "web"], vec![]),
            ),
            (
                "unchanged stays, changed is replaced",
                vec![("web", "h1"), ("db", "h2-new")],
                vec![obs("a", "web", "h1", true), obs("b", "db", "h2", true)],
                (vec![("web", "a", false)], vec!["db"], vec!["b"]),
            ),
            (
                "unchanged but stopped is started again",
                vec![("web", "h1")],
                vec![obs("a", "web", "h1", false)],
                (vec![("web", "a", true)], vec![], vec![]),
            ),
            (
                "service gone from the file",
                vec![("web", "h1")],
                vec![obs("a", "web", "h1", true), obs("b", "old", "h9", true)],
                (vec![("web", "a", false)], vec![], vec!["b"]),
            ),
            (
                "duplicates: the running one stays",
                vec![("web", "h1")],
                vec![obs("a", "web", "h1", false), obs("b", "web", "h1", true)],
                (vec![("web", "b", false)], vec![], vec!["a"]),
            ),
            (
                "container without labels is removed",
                vec![],
                vec![Observed {
                    id: "x".into(),
                    name: "c-x".into(),
                    service: None,
                    config_hash: None,
                    running: true,
                }],
                (vec![], vec![], vec!["x"]),
            ),
        ];
        for (name, want, have, expect) in cases {
            let p = plan(&desired(&want), &have);
            assert_eq!(ids(&p), expect, "{name}");
        }
    }
}
