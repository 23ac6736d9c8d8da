//! Start order: a service starts after everything it `depends_on` and the service whose
//! network namespace it shares (`network_mode: service:NAME`).

use std::collections::{BTreeMap, BTreeSet};

use fleet_config::compose::{ComposeFile, Service};

/// The services `service` must start after.
pub(crate) fn prerequisites(service: &Service) -> BTreeSet<&str> {
    let mut deps: BTreeSet<&str> = service.depends_on.keys().map(String::as_str).collect();
    if let Some(target) = service
        .network_mode
        .as_deref()
        .and_then(|m| m.strip_prefix("service:"))
    {
        deps.insert(target);
    }
    deps
}

/// Every service in an order where each comes after its prerequisites; ties are broken by
/// name, so the order is the same on every device. `Err` names the services on a cycle.
pub(crate) fn start_order(compose: &ComposeFile) -> Result<Vec<String>, Vec<String>> {
    let mut waiting: BTreeMap<&str, BTreeSet<&str>> = compose
        .services
        .iter()
        .map(|(name, svc)| {
            let deps = prerequisites(svc)
                .into_iter()
                .filter(|d| compose.services.contains_key(*d))
                .collect();
            (name.as_str(), deps)
        })
        .collect();
    let mut order = Vec::with_capacity(waiting.len());
    loop {
        let ready: Vec<&str> = waiting
            .iter()
            .filter(|(_, deps)| deps.is_empty())
            .map(|(n, _)| *n)
            .collect();
        if ready.is_empty() {
            break;
        }
        for name in ready {
            waiting.remove(name);
            for deps in waiting.values_mut() {
                deps.remove(name);
            }
            order.push(name.to_owned());
        }
    }
    if waiting.is_empty() {
        Ok(order)
    } else {
        Err(waiting.keys().map(|s| (*s).to_owned()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_config::compose::{DependsCondition, ImageRef, Service};

    fn svc(deps: &[&str], net_of: Option<&str>) -> Service {
        let mut s = crate::spec::tests::service(
            ImageRef::parse("fleet-test/app:v1").unwrap_or_else(|e| panic!("{e}")),
        );
        s.depends_on = deps
            .iter()
            .map(|d| ((*d).to_owned(), DependsCondition::Started))
            .collect();
        s.network_mode = net_of.map(|t| format!("service:{t}"));
        s
    }

    #[test]
    fn dependencies_start_first() {
        let mut c = ComposeFile::default();
        c.services.insert("web".into(), svc(&["db", "cache"], None));
        c.services.insert("db".into(), svc(&[], None));
        c.services.insert("cache".into(), svc(&["db"], None));
        c.services.insert("sidecar".into(), svc(&[], Some("web")));
        assert_eq!(
            start_order(&c),
            Ok(vec![
                "db".to_owned(),
                "cache".to_owned(),
                "web".to_owned(),
                "sidecar".to_owned()
            ])
        );
    }

    #[test]
    fn cycles_are_reported() {
        let mut c = ComposeFile::default();
        c.services.insert("a".into(), svc(&["b"], None));
        c.services.insert("b".into(), svc(&[], Some("a")));
        c.services.insert("c".into(), svc(&[], None));
        assert_eq!(start_order(&c), Err(vec!["a".to_owned(), "b".to_owned()]));
    }
}
