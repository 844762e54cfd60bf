//! Consul's catalog tables (`agent/consul/state/catalog.go`): nodes, their services and their
//! checks, each with the index it last changed at, and what a write changed (`Written`): which
//! tables, which nodes and checks went, which checks turned critical, so the caller can wake
//! readers and invalidate sessions (`fsm::catalog`). Plain data.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Output text of the `serfHealth` check, as Consul's leader writes it.
pub const SERF_ALIVE_OUTPUT: &str = "Agent alive and reachable";
pub const SERF_FAILED_OUTPUT: &str = "Agent not live or unreachable";
pub const SERF_CHECK_ID: &str = "serfHealth";
pub const SERF_CHECK_NAME: &str = "Serf Health Status";

/// A service's DNS weights (`structs.Weights`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Weights {
    pub passing: i64,
    pub warning: i64,
}

impl Default for Weights {
    fn default() -> Self {
        Self {
            passing: 1,
            warning: 1,
        }
    }
}

/// One service instance on a node.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceEntry {
    pub kind: String,
    pub id: String,
    pub service: String,
    pub tags: Vec<String>,
    pub address: String,
    pub tagged_addresses: Option<Map<String, Value>>,
    pub meta: BTreeMap<String, String>,
    pub port: i64,
    pub weights: Weights,
    pub enable_tag_override: bool,
    pub create_index: u64,
    pub modify_index: u64,
}

/// One health check on a node (node-level when `service_id` is empty).
#[derive(Debug, Clone, PartialEq)]
pub struct CheckEntry {
    pub node: String,
    pub check_id: String,
    pub name: String,
    pub status: String,
    pub notes: String,
    pub output: String,
    pub service_id: String,
    pub service_name: String,
    pub service_tags: Vec<String>,
    pub kind: String,
    pub definition: Map<String, Value>,
    pub create_index: u64,
    pub modify_index: u64,
}

/// A catalog node with what is registered on it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeEntry {
    pub id: String,
    pub node: String,
    pub address: String,
    pub tagged_addresses: BTreeMap<String, String>,
    pub meta: BTreeMap<String, String>,
    pub create_index: u64,
    pub modify_index: u64,
    pub services: BTreeMap<String, ServiceEntry>,
    pub checks: BTreeMap<String, CheckEntry>,
}

/// The catalog tables. Each table keeps the index of its last write, deletes included, which is
/// what Consul answers as X-Consul-Index for reads of that table. Reads of one service
/// (`/catalog/service/:name`, `/health/service/:name`) answer at that service's own index
/// instead (`service_index`), so a write elsewhere in the catalog does not end their wait.
#[derive(Default)]
pub struct Catalog {
    nodes: BTreeMap<String, NodeEntry>,
    pub nodes_index: u64,
    pub services_index: u64,
    pub checks_index: u64,
    /// Consul's `service.<name>` index entries: the last write to an instance of the service,
    /// to a check of one, or to a node (or node-level check) that hosts one.
    service_indexes: BTreeMap<String, u64>,
    /// When the last instance of some service went away (`service_last_extinction`).
    extinction_index: Option<u64>,
}

/// What a write changed, so the caller can notify watchers and invalidate sessions.
#[derive(Debug, Default)]
pub struct Written {
    pub catalog: bool,
    pub checks: bool,
    /// Checks that are now critical (newly or by update): sessions using them die.
    pub critical: Vec<(String, String)>,
    /// Checks that were deleted: sessions using them die too.
    pub deleted_checks: Vec<(String, String)>,
    /// Nodes that were deleted: all their sessions die.
    pub deleted_nodes: Vec<String>,
}

/// A node registration, already validated and defaulted.
#[derive(Debug, Clone, Default)]
pub struct Registration {
    pub id: String,
    pub node: String,
    pub address: String,
    pub tagged_addresses: BTreeMap<String, String>,
    pub meta: BTreeMap<String, String>,
    pub skip_node_update: bool,
    pub service: Option<ServiceEntry>,
    pub checks: Vec<CheckEntry>,
}

impl Catalog {
    /// Whether `node` is registered.
    pub fn node_exists(&self, node: &str) -> bool {
        self.nodes.contains_key(node)
    }

    /// The status ("passing", "warning", "critical") of check `check_id` on `node`, if it exists.
    pub fn check_status(&self, node: &str, check_id: &str) -> Option<String> {
        self.nodes
            .get(node)
            .and_then(|n| n.checks.get(check_id))
            .map(|c| c.status.clone())
    }

    pub fn node(&self, node: &str) -> Option<&NodeEntry> {
        self.nodes.get(node)
    }

    pub fn nodes(&self) -> impl Iterator<Item = &NodeEntry> {
        self.nodes.values()
    }

    /// Applies a registration at `idx` as Consul's state store does: upserts the node (unless
    /// `skip_node_update`), the service and the checks, bumping ModifyIndex only on change.
    pub fn register(&mut self, idx: u64, reg: Registration) -> Result<Written, String> {
        let mut w = Written::default();
        // Service names whose index this registration moves, and those it may have emptied.
        let mut touched: Vec<String> = Vec::new();
        let mut renamed: Vec<String> = Vec::new();
        if let Some(other) = self
            .nodes
            .values()
            .find(|n| !reg.id.is_empty() && n.id == reg.id && n.node != reg.node)
        {
            return Err(format!(
                "failed inserting node: Error while renaming Node ID: \"{}\": Node name {} is reserved by node {} with name {}",
                reg.id, reg.node, other.id, other.node
            ));
        }
        if !self.nodes.contains_key(&reg.node) {
            if reg.skip_node_update {
                return Err(format!("Node {} does not exist", reg.node));
            }
            let id = if reg.id.is_empty() {
                uuid::Uuid::new_v4().to_string()
            } else {
                reg.id.clone()
            };
            self.nodes.insert(
                reg.node.clone(),
                NodeEntry {
                    id,
                    node: reg.node.clone(),
                    address: reg.address.clone(),
                    tagged_addresses: reg.tagged_addresses.clone(),
                    meta: reg.meta.clone(),
                    create_index: idx,
                    modify_index: idx,
                    services: BTreeMap::new(),
                    checks: BTreeMap::new(),
                },
            );
            self.nodes_index = idx;
            w.catalog = true;
        }
        let Some(node) = self.nodes.get_mut(&reg.node) else {
            return Err(format!("Node {} does not exist", reg.node));
        };
        if !reg.skip_node_update {
            let changed = node.address != reg.address
                || node.tagged_addresses != reg.tagged_addresses
                || node.meta != reg.meta
                || (!reg.id.is_empty() && node.id != reg.id);
            if changed {
                node.address = reg.address.clone();
                node.tagged_addresses = reg.tagged_addresses.clone();
                node.meta = reg.meta.clone();
                if !reg.id.is_empty() {
                    node.id = reg.id.clone();
                }
                node.modify_index = idx;
                self.nodes_index = idx;
                w.catalog = true;
                touched.extend(node.services.values().map(|s| s.service.clone()));
            }
        }
        if let Some(mut svc) = reg.service {
            let existing = node.services.get(&svc.id);
            let same = existing.is_some_and(|e| {
                let mut a = e.clone();
                a.create_index = 0;
                a.modify_index = 0;
                a == svc
            });
            if !same {
                svc.create_index = existing.map_or(idx, |e| e.create_index);
                svc.modify_index = idx;
                if let Some(old) = existing.filter(|e| e.service != svc.service) {
                    renamed.push(old.service.clone());
                }
                touched.push(svc.service.clone());
                node.services.insert(svc.id.clone(), svc);
                self.services_index = idx;
                w.catalog = true;
            }
        }
        for mut check in reg.checks {
            if !check.service_id.is_empty() {
                let Some(svc) = node.services.get(&check.service_id) else {
                    return Err(format!(
                        "Missing service registration for check \"{}\"",
                        check.check_id
                    ));
                };
                check.service_name = svc.service.clone();
                check.service_tags = svc.tags.clone();
            }
            let existing = node.checks.get(&check.check_id);
            let same = existing.is_some_and(|e| {
                let mut a = e.clone();
                a.create_index = 0;
                a.modify_index = 0;
                a == check
            });
            if same {
                continue;
            }
            let was_critical = existing.is_some_and(|e| e.status == "critical");
            check.create_index = existing.map_or(idx, |e| e.create_index);
            check.modify_index = idx;
            if check.status == "critical" && !was_critical {
                w.critical
                    .push((check.node.clone(), check.check_id.clone()));
            }
            if check.service_id.is_empty() {
                touched.extend(node.services.values().map(|s| s.service.clone()));
            } else {
                touched.push(check.service_name.clone());
            }
            node.checks.insert(check.check_id.clone(), check);
            self.checks_index = idx;
            w.checks = true;
        }
        touched.extend(renamed.iter().cloned());
        self.touch_services(touched, idx);
        self.retire_extinct(&renamed, idx);
        Ok(w)
    }

    /// Sets one check's status and output; no-op (and no index bump) when nothing changes.
    pub fn set_check(
        &mut self,
        idx: u64,
        node: &str,
        check_id: &str,
        status: &str,
        output: &str,
    ) -> Written {
        let mut w = Written::default();
        let Some(c) = self
            .nodes
            .get_mut(node)
            .and_then(|n| n.checks.get_mut(check_id))
        else {
            return w;
        };
        if c.status == status && c.output == output {
            return w;
        }
        if status == "critical" && c.status != "critical" {
            w.critical.push((node.to_owned(), check_id.to_owned()));
        }
        c.status = status.to_owned();
        c.output = output.to_owned();
        c.modify_index = idx;
        let service = (!c.service_id.is_empty()).then(|| c.service_name.clone());
        self.checks_index = idx;
        w.checks = true;
        let touched = match service {
            Some(name) => vec![name],
            None => self.services_on(node),
        };
        self.touch_services(touched, idx);
        w
    }

    /// Deletes a check, a service (with its checks) or, with neither, the whole node.
    /// Deleting what is not there is not an error, as in Consul.
    pub fn deregister(
        &mut self,
        idx: u64,
        node: &str,
        service_id: Option<&str>,
        check_id: Option<&str>,
    ) -> Written {
        let mut w = Written::default();
        let on_node = self.services_on(node);
        let service_of_check = |e: &NodeEntry, cid: &str| -> Option<Vec<String>> {
            let c = e.checks.get(cid)?;
            Some(if c.service_id.is_empty() {
                e.services.values().map(|s| s.service.clone()).collect()
            } else {
                vec![c.service_name.clone()]
            })
        };
        let Some(entry) = self.nodes.get_mut(node) else {
            return w;
        };
        let mut touched: Vec<String> = Vec::new();
        match (service_id, check_id) {
            (None, None) => {
                let had_services = !entry.services.is_empty();
                let had_checks = !entry.checks.is_empty();
                self.nodes.remove(node);
                touched.extend(on_node.iter().cloned());
                self.nodes_index = idx;
                if had_services {
                    self.services_index = idx;
                }
                if had_checks {
                    self.checks_index = idx;
                }
                w.catalog = true;
                w.checks = had_checks;
                w.deleted_nodes.push(node.to_owned());
            }
            (Some(sid), _) => {
                if let Some(cid) = check_id {
                    touched.extend(service_of_check(entry, cid).unwrap_or_default());
                }
                if let Some(gone) = entry.services.remove(sid) {
                    touched.push(gone.service);
                    self.services_index = idx;
                    w.catalog = true;
                }
                let gone: Vec<String> = entry
                    .checks
                    .values()
                    .filter(|c| c.service_id == sid)
                    .map(|c| c.check_id.clone())
                    .collect();
                for cid in gone {
                    entry.checks.remove(&cid);
                    w.deleted_checks.push((node.to_owned(), cid));
                }
                if let Some(cid) = check_id {
                    if entry.checks.remove(cid).is_some() {
                        w.deleted_checks.push((node.to_owned(), cid.to_owned()));
                    }
                }
                if !w.deleted_checks.is_empty() {
                    self.checks_index = idx;
                    w.checks = true;
                }
            }
            (None, Some(cid)) => {
                touched.extend(service_of_check(entry, cid).unwrap_or_default());
                if entry.checks.remove(cid).is_some() {
                    self.checks_index = idx;
                    w.checks = true;
                    w.deleted_checks.push((node.to_owned(), cid.to_owned()));
                }
            }
        }
        self.touch_services(touched.iter().cloned(), idx);
        self.retire_extinct(&touched, idx);
        w
    }

    /// Every service name with the union of its instances' tags (`/v1/catalog/services`).
    pub fn service_tags(&self, filter: &NodeMetaFilter) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for n in self.nodes.values().filter(|n| filter.matches(n)) {
            for s in n.services.values() {
                out.entry(s.service.clone())
                    .or_default()
                    .extend(s.tags.iter().cloned());
            }
        }
        out.into_iter()
            .map(|(k, v)| (k, v.into_iter().collect()))
            .collect()
    }

    /// The (node, service) pairs of `name`, every one of `tags` present, nodes in name order.
    pub fn instances<'a>(
        &'a self,
        name: &'a str,
        tags: &'a [String],
        filter: &'a NodeMetaFilter,
    ) -> impl Iterator<Item = (&'a NodeEntry, &'a ServiceEntry)> + 'a {
        self.nodes
            .values()
            .filter(move |n| filter.matches(n))
            .flat_map(move |n| n.services.values().map(move |s| (n, s)))
            .filter(move |(_, s)| {
                s.service == name
                    && tags
                        .iter()
                        .all(|t| s.tags.iter().any(|st| st.eq_ignore_ascii_case(t)))
            })
    }

    /// Every check, nodes in name order, check IDs in order.
    pub fn checks(&self) -> impl Iterator<Item = &CheckEntry> {
        self.nodes.values().flat_map(|n| n.checks.values())
    }

    /// The index a read of service `name` answers at, as Consul's
    /// `maxIndexAndWatchChForService`: the service's own index while it has instances, else
    /// the last extinction of any service, else the highest of the tables such a read touches
    /// (nodes and services, and checks for health reads).
    pub fn service_index(&self, name: &str, with_checks: bool) -> u64 {
        let exists = self
            .nodes
            .values()
            .any(|n| n.services.values().any(|s| s.service == name));
        match self.service_indexes.get(name) {
            Some(idx) if exists => *idx,
            _ => self.extinction_index.unwrap_or_else(|| {
                let tables = self.nodes_index.max(self.services_index);
                if with_checks {
                    tables.max(self.checks_index)
                } else {
                    tables
                }
            }),
        }
    }

    fn touch_services(&mut self, names: impl IntoIterator<Item = String>, idx: u64) {
        for name in names {
            self.service_indexes.insert(name, idx);
        }
    }

    /// The names of the services on `node`, whose indexes a node-wide change moves.
    fn services_on(&self, node: &str) -> Vec<String> {
        self.nodes
            .get(node)
            .map(|n| n.services.values().map(|s| s.service.clone()).collect())
            .unwrap_or_default()
    }

    /// Drops the index of each of `names` left without instances, recording the extinction.
    fn retire_extinct(&mut self, names: &[String], idx: u64) {
        for name in names {
            let alive = self
                .nodes
                .values()
                .any(|n| n.services.values().any(|s| &s.service == name));
            if !alive && self.service_indexes.remove(name).is_some() {
                self.extinction_index = Some(idx);
            }
        }
    }
}

/// `?node-meta=key:value` as Consul reads it (one pair here; see the module notes).
#[derive(Debug, Default, Clone)]
pub struct NodeMetaFilter(Vec<(String, String)>);

impl NodeMetaFilter {
    /// From the query's `node-meta` value, if any.
    pub fn parse(node_meta: Option<&str>) -> Self {
        let pairs = node_meta
            .map(|v| {
                let (k, val) = v.split_once(':').unwrap_or((v, ""));
                vec![(k.to_owned(), val.to_owned())]
            })
            .unwrap_or_default();
        Self(pairs)
    }

    pub fn matches(&self, n: &NodeEntry) -> bool {
        self.0
            .iter()
            .all(|(k, v)| n.meta.get(k).is_some_and(|m| m == v))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn reg(node: &str) -> Registration {
        Registration {
            node: node.into(),
            address: "10.0.0.1".into(),
            ..Default::default()
        }
    }

    fn check(node: &str, id: &str, status: &str) -> CheckEntry {
        CheckEntry {
            node: node.into(),
            check_id: id.into(),
            name: id.into(),
            status: status.into(),
            notes: String::new(),
            output: String::new(),
            service_id: String::new(),
            service_name: String::new(),
            service_tags: Vec::new(),
            kind: String::new(),
            definition: Map::new(),
            create_index: 0,
            modify_index: 0,
        }
    }

    #[test]
    fn re_registering_the_same_thing_does_not_bump_indexes() {
        let mut c = Catalog::default();
        let mut r = reg("n1");
        r.checks.push(check("n1", "c1", "passing"));
        let w = c.register(5, r.clone()).unwrap();
        assert!(w.catalog && w.checks);
        let w = c.register(6, r).unwrap();
        assert!(!w.catalog && !w.checks);
        assert_eq!(c.nodes_index, 5);
        assert_eq!(c.checks_index, 5);
    }

    #[test]
    fn a_check_turning_critical_is_reported_once() {
        let mut c = Catalog::default();
        let mut r = reg("n1");
        r.checks.push(check("n1", "c1", "passing"));
        c.register(5, r).unwrap();
        let w = c.set_check(6, "n1", "c1", "critical", "down");
        assert_eq!(w.critical, vec![("n1".to_owned(), "c1".to_owned())]);
        let w = c.set_check(7, "n1", "c1", "critical", "down");
        assert!(w.critical.is_empty() && !w.checks);
        assert_eq!(c.check_status("n1", "c1").as_deref(), Some("critical"));
    }

    fn svc(id: &str, name: &str) -> ServiceEntry {
        ServiceEntry {
            kind: String::new(),
            id: id.into(),
            service: name.into(),
            tags: Vec::new(),
            address: String::new(),
            tagged_addresses: None,
            meta: BTreeMap::new(),
            port: 80,
            weights: Weights::default(),
            enable_tag_override: false,
            create_index: 0,
            modify_index: 0,
        }
    }

    #[test]
    fn each_service_answers_at_its_own_index() {
        let mut c = Catalog::default();
        let mut r = reg("n1");
        r.service = Some(svc("web", "web"));
        r.checks.push(check("n1", "serfHealth", "passing"));
        c.register(5, r).unwrap();
        let mut r = reg("n2");
        r.service = Some(svc("db", "db"));
        c.register(6, r).unwrap();
        assert_eq!(c.service_index("web", true), 5);
        assert_eq!(c.service_index("db", true), 6);
        // A service-level check moves only its service.
        let mut r = reg("n2");
        r.skip_node_update = true;
        let mut ck = check("n2", "db-alive", "passing");
        ck.service_id = "db".into();
        r.checks.push(ck);
        c.register(7, r).unwrap();
        assert_eq!(
            (c.service_index("web", true), c.service_index("db", true)),
            (5, 7)
        );
        // A node-level check moves every service on its node.
        c.set_check(8, "n1", "serfHealth", "critical", "gone");
        assert_eq!(
            (c.service_index("web", true), c.service_index("db", true)),
            (8, 7)
        );
        // So does a change to the node itself.
        let mut r = reg("n2");
        r.address = "10.0.0.2".into();
        c.register(9, r).unwrap();
        assert_eq!(
            (c.service_index("web", true), c.service_index("db", true)),
            (8, 9)
        );
        // A name never registered answers the tables' index until some service goes extinct;
        // then the extinction index.
        assert_eq!(c.service_index("nothing", true), 9);
        assert_eq!(c.service_index("nothing", false), 9);
        c.deregister(10, "n1", Some("web"), None);
        assert_eq!(c.service_index("web", true), 10);
        assert_eq!(c.service_index("nothing", true), 10);
        c.deregister(11, "n2", None, Some("db-alive"));
        assert_eq!(
            (c.service_index("db", true), c.service_index("web", true)),
            (11, 10)
        );
    }

    #[test]
    fn deregistering_a_node_takes_its_services_and_checks() {
        let mut c = Catalog::default();
        let mut r = reg("n1");
        r.service = Some(ServiceEntry {
            kind: String::new(),
            id: "web".into(),
            service: "web".into(),
            tags: vec!["a".into()],
            address: String::new(),
            tagged_addresses: None,
            meta: BTreeMap::new(),
            port: 80,
            weights: Weights::default(),
            enable_tag_override: false,
            create_index: 0,
            modify_index: 0,
        });
        r.checks.push(check("n1", "c1", "passing"));
        c.register(5, r).unwrap();
        assert_eq!(
            c.instances("web", &["A".into()], &NodeMetaFilter::default())
                .count(),
            1
        );
        let w = c.deregister(9, "n1", None, None);
        assert_eq!(w.deleted_nodes, vec!["n1".to_owned()]);
        assert!(!c.node_exists("n1"));
        assert_eq!((c.nodes_index, c.services_index, c.checks_index), (9, 9, 9));
        assert!(c.service_tags(&NodeMetaFilter::default()).is_empty());
    }
}
