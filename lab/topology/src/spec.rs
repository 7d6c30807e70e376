//! Topology files (`fixtures/topologies/*.toml`): nodes with roles, links with addresses,
//! routes, and nexthop groups for ECMP.
//!
//! ```toml
//! [[node]]
//! name = "router"
//! role = "router"
//!
//! [[node]]
//! name = "be1"
//! role = "backend"
//! loopback = ["203.0.113.10/32"]
//!
//! [[link]]
//! a = { node = "router", ifname = "b1", addrs = ["192.0.2.1/30"] }
//! b = { node = "be1", ifname = "eth0", addrs = ["192.0.2.2/30"] }
//! mtu = 1600         # optional: room for an IPIP header
//!
//! [[group]]          # a nexthop group on `node`; members are its neighbours
//! name = "vip"
//! node = "router"
//! type = "resilient" # or "hash-threshold"
//! buckets = 128
//! members = ["be1"]
//!
//! [[route]]
//! node = "router"
//! dst = "203.0.113.10/32"
//! group = "vip"      # or: via = "<gateway address>"
//! ```
//!
//! Validation (after the types parse) checks what the kernel would otherwise reject later and
//! less readably: names, interface names, documentation-range addresses only (DESIGN.md
//! section 2), both ends of a link in one subnet, gateways on a connected subnet, group members
//! that are neighbours with an address of the group's family.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use serde::Deserialize;

use zrlab_host::{
    nl::nexthop::GroupType,
    toml_file::{SpecError, from_table, read_table},
};
use zrlab_wire::Family;

/// What a node is for; decides which sysctls and programs it gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Runs client workloads.
    Client,
    /// Forwards, with ECMP and the L4 multipath hash.
    Router,
    /// An L4 load-balancer node.
    Lb,
    /// Runs services behind the VIP.
    Backend,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Client => "client",
            Self::Router => "router",
            Self::Lb => "lb",
            Self::Backend => "backend",
        })
    }
}

/// A node (one network namespace).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// Unique name: lowercase letters, digits and `-`, starting with a letter, at most 20.
    pub name: String,
    /// What the node is for.
    pub role: Role,
    /// Addresses on `lo` (a VIP on a backend).
    #[serde(default)]
    pub loopback: Vec<IpNet>,
}

/// One end of a link.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndSpec {
    /// The node.
    pub node: String,
    /// The interface name inside that node (at most 15 bytes).
    pub ifname: String,
    /// Addresses with prefix length.
    #[serde(default)]
    pub addrs: Vec<IpNet>,
}

/// A veth pair between two nodes.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    /// One end (created first, in this node).
    pub a: EndSpec,
    /// The other end.
    pub b: EndSpec,
    /// MTU of both ends (links that carry IPIP need room for the outer header).
    pub mtu: Option<u32>,
}

/// A nexthop group on a node (for ECMP routes).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    /// Unique name.
    pub name: String,
    /// The node that holds the group.
    pub node: String,
    /// Hash-threshold or resilient.
    #[serde(rename = "type")]
    pub kind: GroupType,
    /// Bucket count of a resilient group.
    pub buckets: Option<u16>,
    /// Neighbours of `node` the group spreads over, in slot order.
    pub members: Vec<String>,
    /// Address family of the gateways.
    #[serde(default)]
    pub family: Family,
}

/// A route on a node: via a gateway or through a group.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// The node.
    pub node: String,
    /// Destination prefix (`0.0.0.0/0` or `::/0` for a default route).
    pub dst: IpNet,
    /// Gateway address.
    pub via: Option<IpAddr>,
    /// Nexthop group name.
    pub group: Option<String>,
}

/// A topology file as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologySpec {
    /// What the topology is.
    #[serde(default)]
    pub description: String,
    /// Nodes.
    #[serde(rename = "node")]
    pub nodes: Vec<NodeSpec>,
    /// Links.
    #[serde(rename = "link", default)]
    pub links: Vec<LinkSpec>,
    /// Nexthop groups.
    #[serde(rename = "group", default)]
    pub groups: Vec<GroupSpec>,
    /// Routes.
    #[serde(rename = "route", default)]
    pub routes: Vec<RouteSpec>,
}

/// A validated topology.
#[derive(Clone, Debug)]
pub struct Topology {
    /// The file it came from.
    pub file: PathBuf,
    /// Its content.
    pub spec: TopologySpec,
}

/// The gateway a node uses to reach a neighbour: the neighbour's address and the node's
/// interface on their shared link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gateway {
    /// The neighbour's address.
    pub addr: IpAddr,
    /// The node's interface towards it.
    pub ifname: String,
}

impl Topology {
    /// Reads and validates a topology file.
    pub fn load(path: &Path) -> Result<Self, SpecError> {
        let table = read_table(path)?;
        Self::from_table(path, table)
    }

    /// Validates an already-read table (scenarios may override groups before this).
    pub fn from_table(path: &Path, table: toml::Table) -> Result<Self, SpecError> {
        let spec: TopologySpec = from_table(path, "", table)?;
        let topology = Self { file: path.to_owned(), spec };
        topology.validate()?;
        Ok(topology)
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&NodeSpec> {
        self.spec.nodes.iter().find(|n| n.name == name)
    }

    /// The group called `name`.
    pub fn group(&self, name: &str) -> Option<&GroupSpec> {
        self.spec.groups.iter().find(|g| g.name == name)
    }

    /// How `node` reaches its neighbour `neighbour` in `family`: the first link between them
    /// where the neighbour has an address of that family.
    pub fn gateway(&self, node: &str, neighbour: &str, family: Family) -> Option<Gateway> {
        self.spec.links.iter().find_map(|link| {
            let (mine, theirs) = if link.a.node == node && link.b.node == neighbour {
                (&link.a, &link.b)
            } else if link.b.node == node && link.a.node == neighbour {
                (&link.b, &link.a)
            } else {
                return None;
            };
            let addr = theirs.addrs.iter().map(IpNet::addr).find(|ip| family.matches(*ip))?;
            Some(Gateway { addr, ifname: mine.ifname.clone() })
        })
    }

    fn err(&self, field: impl Into<String>, message: impl Into<String>) -> SpecError {
        SpecError::new(&self.file, field, message)
    }

    fn validate(&self) -> Result<(), SpecError> {
        let spec = &self.spec;
        if spec.nodes.is_empty() {
            return Err(self.err("node", "a topology needs at least one node"));
        }
        let mut names = BTreeSet::new();
        for (i, node) in spec.nodes.iter().enumerate() {
            let field = format!("node[{i}].name");
            check_node_name(&node.name).map_err(|m| self.err(&field, m))?;
            if !names.insert(node.name.as_str()) {
                return Err(self.err(field, format!("duplicate node name {:?}", node.name)));
            }
            for (j, addr) in node.loopback.iter().enumerate() {
                check_documentation(addr).map_err(|m| self.err(format!("node[{i}].loopback[{j}]"), m))?;
            }
        }
        let mut ifnames = BTreeSet::new();
        for (i, link) in spec.links.iter().enumerate() {
            for (end_name, end) in [("a", &link.a), ("b", &link.b)] {
                let field = format!("link[{i}].{end_name}");
                if self.node(&end.node).is_none() {
                    return Err(self.err(format!("{field}.node"), format!("unknown node {:?}", end.node)));
                }
                check_ifname(&end.ifname).map_err(|m| self.err(format!("{field}.ifname"), m))?;
                if !ifnames.insert((end.node.as_str(), end.ifname.as_str())) {
                    return Err(self.err(
                        format!("{field}.ifname"),
                        format!("node {:?} already has an interface {:?}", end.node, end.ifname),
                    ));
                }
                for (j, addr) in end.addrs.iter().enumerate() {
                    check_documentation(addr).map_err(|m| self.err(format!("{field}.addrs[{j}]"), m))?;
                }
            }
            if let Some(mtu) = link.mtu
                && !(1280..=9000).contains(&mtu)
            {
                return Err(self.err(format!("link[{i}].mtu"), format!("{mtu} is outside 1280..=9000")));
            }
            if link.a.node == link.b.node {
                return Err(self.err(format!("link[{i}].b.node"), "a link must join two different nodes"));
            }
            for (j, a) in link.a.addrs.iter().enumerate() {
                let peer = link.b.addrs.iter().find(|b| b.addr().is_ipv4() == a.addr().is_ipv4());
                if let Some(b) = peer
                    && (!a.contains(&b.addr()) || a.addr() == b.addr())
                {
                    return Err(self.err(
                        format!("link[{i}].a.addrs[{j}]"),
                        format!("{a} and the other end's {b} must be distinct addresses in one subnet"),
                    ));
                }
            }
        }
        let mut group_names = BTreeSet::new();
        for (i, group) in spec.groups.iter().enumerate() {
            let field = format!("group[{i}]");
            if !group_names.insert(group.name.as_str()) {
                return Err(self.err(format!("{field}.name"), format!("duplicate group name {:?}", group.name)));
            }
            self.validate_group(&field, group)?;
        }
        for (i, route) in spec.routes.iter().enumerate() {
            self.validate_route(&format!("route[{i}]"), route)?;
        }
        Ok(())
    }

    /// Checks one group (also used for groups a scenario overrides).
    pub(crate) fn validate_group(&self, field: &str, group: &GroupSpec) -> Result<(), SpecError> {
        if self.node(&group.node).is_none() {
            return Err(self.err(format!("{field}.node"), format!("unknown node {:?}", group.node)));
        }
        if group.members.is_empty() {
            return Err(self.err(format!("{field}.members"), "a group needs at least one member"));
        }
        for (j, member) in group.members.iter().enumerate() {
            if self.gateway(&group.node, member, group.family).is_none() {
                return Err(self.err(
                    format!("{field}.members[{j}]"),
                    format!(
                        "{member:?} is not a neighbour of {:?} with an {} address on a shared link",
                        group.node, group.family
                    ),
                ));
            }
        }
        match (group.kind, group.buckets) {
            (GroupType::HashThreshold, Some(_)) => {
                Err(self.err(format!("{field}.buckets"), "only a resilient group has buckets"))
            }
            (GroupType::Resilient, None) => {
                Err(self.err(format!("{field}.buckets"), "a resilient group needs a bucket count"))
            }
            (GroupType::Resilient, Some(n)) if usize::from(n) < group.members.len() => Err(self
                .err(format!("{field}.buckets"), format!("{n} buckets cannot hold {} members", group.members.len()))),
            _ => Ok(()),
        }
    }

    fn validate_route(&self, field: &str, route: &RouteSpec) -> Result<(), SpecError> {
        if self.node(&route.node).is_none() {
            return Err(self.err(format!("{field}.node"), format!("unknown node {:?}", route.node)));
        }
        if route.dst.prefix_len() != 0 {
            check_documentation(&route.dst).map_err(|m| self.err(format!("{field}.dst"), m))?;
        }
        match (&route.via, &route.group) {
            (Some(_), Some(_)) | (None, None) => {
                Err(self.err(field.to_owned(), "a route needs exactly one of `via` and `group`"))
            }
            (Some(via), None) => {
                if via.is_ipv4() != route.dst.addr().is_ipv4() {
                    return Err(
                        self.err(format!("{field}.via"), format!("{via} is not of the family of {}", route.dst))
                    );
                }
                let connected = self.spec.links.iter().flat_map(|l| [&l.a, &l.b]).any(|end| {
                    end.node == route.node && end.addrs.iter().any(|net| net.contains(via) && net.addr() != *via)
                });
                if !connected {
                    return Err(self
                        .err(format!("{field}.via"), format!("{via} is not on a subnet of {:?}'s links", route.node)));
                }
                Ok(())
            }
            (None, Some(name)) => {
                let Some(group) = self.group(name) else {
                    return Err(self.err(format!("{field}.group"), format!("unknown group {name:?}")));
                };
                if group.node != route.node {
                    return Err(self.err(
                        format!("{field}.group"),
                        format!("group {name:?} is on node {:?}, not {:?}", group.node, route.node),
                    ));
                }
                if !group.family.matches(route.dst.addr()) {
                    return Err(self.err(
                        format!("{field}.group"),
                        format!("group {name:?} is {:?}, the route is for {}", group.family, route.dst),
                    ));
                }
                Ok(())
            }
        }
    }
}

fn check_node_name(name: &str) -> Result<(), String> {
    let ok = name.len() <= 20
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a node name (a-z, 0-9 and '-', starting with a letter, at most 20)"))
    }
}

fn check_ifname(name: &str) -> Result<(), String> {
    // IFNAMSIZ is 16 including the NUL; the kernel also refuses '/', ':' and whitespace.
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "lo"
        && !name.contains(|c: char| c == '/' || c == ':' || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a usable interface name (1-15 bytes, no '/', ':' or spaces, not \"lo\")"))
    }
}

/// Documentation ranges (RFC 5737, RFC 3849): the only addresses the lab may use.
const DOCUMENTATION: [&str; 4] = ["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"];

/// Fails unless `net` lies inside a documentation range.
pub(crate) fn check_documentation(net: &IpNet) -> Result<(), String> {
    let inside =
        DOCUMENTATION.iter().map(|range| range.parse::<IpNet>().expect("valid range")).any(|range| range.contains(net));
    if inside {
        Ok(())
    } else {
        Err(format!("{net} is outside the documentation ranges ({})", DOCUMENTATION.join(", ")))
    }
}
