//! Deploying a scenario's XDP load balancer into a built lab, and changing it during the run.
//!
//! - every LB node gets its own `xdp_lb` (its own maps, as separate machines would), attached
//!   in native mode to its one interface, with the workload's TCP and UDP VIPs over the
//!   backends' addresses and, with id routing, the live server-id table;
//! - the router's interfaces towards the LB nodes get `xdp_pass`: a veth only receives frames
//!   another veth's XDP program transmits if it runs XDP itself (DESIGN.md section 3);
//! - every backend gets `xdp_decap` on its interfaces, for its own addresses;
//! - the server-id registry's live table goes to every LB node at the start and after every
//!   change of a backend's membership (drain, weight), so all LB nodes agree on it.
//!
//! The programs stay attached as long as the [`Deployment`] lives; drop it before the lab.

use std::{collections::BTreeMap, net::IpAddr};

use zrlab_common::lb::counter;

use crate::{
    measures::LbTotals,
    spec::{LbSpec, WorkloadSpec},
};
use zrlab_control::{
    bpf::{Loaded, Object},
    lb::{Balancer, Decap, RealSpec, Settings, VipSpec},
    server_id::{Membership, Registry},
};
use zrlab_host::error::{LabError, Result};
use zrlab_topology::Lab;
use zrlab_wire::Proto;

/// What a deployed LB holds, for a kept run's status.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LbStatus {
    /// `node ifname program` for every attached XDP program.
    pub programs: Vec<String>,
    /// `addr:port/proto`, with id routing if on.
    pub vips: Vec<String>,
    /// Per backend: address, weight, whether up in the rings.
    pub reals: Vec<(String, IpAddr, u32, bool)>,
    /// The live-id table: id -> backend.
    pub live_ids: BTreeMap<u32, String>,
    /// Per VIP, the ring's slots per backend, read from the LB nodes' maps (one entry per VIP
    /// when every node holds the same ring, one per node and VIP when they differ).
    pub rings: Vec<(String, Vec<(String, u32)>)>,
}

/// A deployed LB.
pub struct Deployment {
    programs: Vec<String>,
    balancers: Vec<(String, Balancer)>,
    decaps: Vec<Decap>,
    _passes: Loaded,
    vips: Vec<VipSpec>,
    reals: Vec<(String, RealSpec)>,
    registry: Registry,
}

impl Deployment {
    /// Loads, configures and attaches every program of `spec` in `lab`; `registry` holds the
    /// backends' server ids (backends of weight 0 start as removed from the configuration).
    pub fn start(lab: &Lab, spec: &LbSpec, workload: &WorkloadSpec, registry: Registry) -> Result<Self> {
        let reals: Vec<(String, RealSpec)> = workload
            .backends
            .iter()
            .map(|b| {
                let addr = backend_address(lab, b, workload.vip.is_ipv4())?;
                Ok((b.clone(), RealSpec { addr, weight: spec.weights.get(b).copied().unwrap_or(1), up: true }))
            })
            .collect::<Result<_>>()?;
        let vip = |port: u16, proto: Proto| VipSpec::new(workload.vip, port, proto).with(spec.options.clone());
        let vips = vec![vip(workload.tcp_port, Proto::Tcp), vip(workload.udp_port, Proto::Udp)];
        Self::start_with(lab, &spec.nodes, vips, reals, registry)
    }

    /// Loads, configures and attaches the LB on `nodes` in `lab`, serving every one of `vips`
    /// by `reals` (each a backend node and its real), decapsulation on those backends;
    /// `registry` holds the backends' server ids (backends of weight 0 start as removed).
    pub fn start_with(
        lab: &Lab,
        nodes: &[String],
        vips: Vec<VipSpec>,
        reals: Vec<(String, RealSpec)>,
        mut registry: Registry,
    ) -> Result<Self> {
        let topology = lab.topology();
        for (node, real) in &reals {
            if real.weight == 0 {
                registry.set(node, Membership::Removed);
            }
        }
        let live = live_table(&registry, &reals);
        let mut passes = Loaded::load(Object::XdpPass, &["xdp_pass"])?;
        let mut programs = Vec::new();
        let mut balancers = Vec::new();
        for node in nodes {
            let link = topology
                .spec
                .links
                .iter()
                .find(|l| l.a.node == *node || l.b.node == *node)
                .ok_or_else(|| LabError::Unsupported(format!("LB node {node:?} has no link")))?;
            let (mine, theirs) = if link.a.node == *node { (&link.a, &link.b) } else { (&link.b, &link.a) };
            let mut balancer = Balancer::load(&Settings::default())?;
            for v in &vips {
                balancer.set_vip(v, &real_specs(&reals))?;
            }
            balancer.sync_server_ids(&live)?;
            balancer.attach(&lab.node(node)?.netns, &mine.ifname)?;
            passes.attach_xdp("xdp_pass", &lab.node(&theirs.node)?.netns, &theirs.ifname)?;
            programs.push(format!("{node} {} xdp_lb", mine.ifname));
            programs.push(format!("{} {} xdp_pass", theirs.node, theirs.ifname));
            balancers.push((node.clone(), balancer));
        }
        let mut decaps = Vec::new();
        for (backend, _) in &reals {
            let ends: Vec<_> =
                topology.spec.links.iter().flat_map(|l| [&l.a, &l.b]).filter(|e| e.node == *backend).collect();
            let addrs: Vec<IpAddr> = ends.iter().flat_map(|e| e.addrs.iter().map(|a| a.addr())).collect();
            let mut decap = Decap::load(&addrs)?;
            for end in ends {
                decap.attach(&lab.node(backend)?.netns, &end.ifname)?;
                programs.push(format!("{backend} {} xdp_decap", end.ifname));
            }
            decaps.push(decap);
        }
        Ok(Self { programs, balancers, decaps, _passes: passes, vips, reals, registry })
    }

    /// Marks `backend` down in every LB node's rings (a health change: only its slots move);
    /// its flows in the connection tables keep going to it, and its server id stays live.
    pub fn drain(&mut self, backend: &str) -> Result<()> {
        self.change(backend, |real| real.up = false)
    }

    /// Puts a drained `backend` back into every LB node's rings.
    pub fn restore(&mut self, backend: &str) -> Result<()> {
        self.change(backend, |real| real.up = true)
    }

    /// Sets `backend`'s weight in every LB node's configuration (the rings are rebuilt); weight
    /// 0 removes it, and its server id leaves the live table.
    pub fn set_weight(&mut self, backend: &str, weight: u32) -> Result<()> {
        self.change(backend, |real| real.weight = weight)
    }

    /// Applies `edit` to `backend`'s real, then brings the registry, every ring and every
    /// live-id table in line with it.
    fn change(&mut self, backend: &str, edit: impl FnOnce(&mut RealSpec)) -> Result<()> {
        let real = self
            .reals
            .iter_mut()
            .find(|(node, _)| node == backend)
            .map(|(_, real)| real)
            .ok_or_else(|| LabError::Unsupported(format!("{backend:?} is not a backend of the LB")))?;
        edit(real);
        let membership = match (real.weight, real.up) {
            (0, _) => Membership::Removed,
            (_, false) => Membership::Drained,
            (_, true) => Membership::Serving,
        };
        let before = live_table(&self.registry, &self.reals);
        self.registry.set(backend, membership);
        let reals = real_specs(&self.reals);
        let live = live_table(&self.registry, &self.reals);
        // An id that becomes live is live on every LB node, within every VIP its backend
        // joins, before any node's ring can send a flow to that backend; one that leaves stays
        // until no node's ring does: no packet of a flow a new ring placed finds its backend's
        // id unknown on the node ECMP hands it to.
        let mut during = before;
        during.extend(live.iter().map(|(id, addr)| (*id, *addr)));
        for (_, balancer) in &mut self.balancers {
            balancer.sync_server_ids(&during)?;
            for vip in &self.vips {
                balancer.admit_members(vip, &reals)?;
            }
        }
        for (_, balancer) in &mut self.balancers {
            for vip in &self.vips {
                balancer.set_vip(vip, &reals)?;
            }
        }
        for (_, balancer) in &mut self.balancers {
            balancer.sync_server_ids(&live)?;
        }
        Ok(())
    }

    /// What the deployment holds now.
    pub fn status(&self) -> Result<LbStatus> {
        let name = |addr: &IpAddr| {
            self.reals.iter().find(|(_, r)| r.addr == *addr).map_or_else(|| addr.to_string(), |(node, _)| node.clone())
        };
        let mut rings = Vec::new();
        for v in &self.vips {
            // Read from every node's maps: the data path's rings, not this process's memory.
            let per_node: Vec<(String, BTreeMap<IpAddr, u32>)> = self
                .balancers
                .iter()
                .map(|(node, balancer)| Ok((node.clone(), balancer.ring_in_kernel(v)?)))
                .collect::<Result<_>>()?;
            let vip = format!("{}:{}/{}", v.addr, v.port, v.proto);
            let agree = per_node.windows(2).all(|w| w[0].1 == w[1].1);
            for (node, slots) in per_node.iter().take(if agree { 1 } else { per_node.len() }) {
                // Every backend, 0 for one without a slot; an address no backend has (a stale
                // real in the maps) by its address.
                let mut shares: Vec<(String, u32)> = self
                    .reals
                    .iter()
                    .map(|(node, r)| (node.clone(), slots.get(&r.addr).copied().unwrap_or(0)))
                    .collect();
                shares.extend(
                    slots
                        .iter()
                        .filter(|(addr, _)| !self.reals.iter().any(|(_, r)| r.addr == **addr))
                        .map(|(a, n)| (name(a), *n)),
                );
                rings.push((if agree { vip.clone() } else { format!("{vip} on {node}") }, shares));
            }
        }
        Ok(LbStatus {
            programs: self.programs.clone(),
            vips: self
                .vips
                .iter()
                .map(|v| {
                    let ids = if v.options.tcp_id_routing || v.options.quic_id_routing { ", id routing" } else { "" };
                    format!("{}:{}/{}{ids}", v.addr, v.port, v.proto)
                })
                .collect(),
            reals: self.reals.iter().map(|(node, r)| (node.clone(), r.addr, r.weight, r.up)).collect(),
            live_ids: self.registry.live(),
            rings,
        })
    }

    /// The counters of every LB and decap program.
    pub fn totals(&self) -> Result<LbTotals> {
        let mut totals = LbTotals::default();
        for (_, balancer) in &self.balancers {
            let c = balancer.counters()?;
            totals.tx += c.get(counter::TX);
            totals.ring_routed += c.get(counter::RING_ROUTED);
            totals.table_hits +=
                c.get(counter::LRU_HIT) + c.get(counter::LRU_FALLBACK_HIT) + c.get(counter::SYN_CACHE_HIT);
            totals.table_misses += c.get(counter::LRU_MISS);
            totals.id_unknown += c.get(counter::ID_UNKNOWN);
            totals.tcp_id_routed += c.get(counter::TCP_ID_ROUTED);
            totals.quic_id_routed += c.get(counter::QUIC_ID_ROUTED);
        }
        for decap in &self.decaps {
            let c = decap.counters()?;
            totals.decapsulated += c.v4_in_v4 + c.v6_in_v6 + c.v4_in_v6 + c.v6_in_v4;
        }
        let mut nodes_per_flow = std::collections::HashMap::new();
        for (_, balancer) in &self.balancers {
            for key in balancer.connections()? {
                *nodes_per_flow.entry(key).or_insert(0u32) += 1;
            }
        }
        totals.inherited_flows = nodes_per_flow.values().filter(|n| **n > 1).count() as u64;
        Ok(totals)
    }
}

/// The registry's live ids with the addresses the LB tunnels to.
fn live_table(registry: &Registry, reals: &[(String, RealSpec)]) -> BTreeMap<u32, IpAddr> {
    registry
        .live()
        .into_iter()
        .filter_map(|(id, node)| Some((id, reals.iter().find(|(n, _)| *n == node)?.1.addr)))
        .collect()
}

fn real_specs(reals: &[(String, RealSpec)]) -> Vec<RealSpec> {
    reals.iter().map(|(_, real)| real.clone()).collect()
}

/// A backend's address of the VIP's family on its links (the outer destination the LB uses);
/// any family if it has none of the VIP's.
fn backend_address(lab: &Lab, backend: &str, v4: bool) -> Result<IpAddr> {
    let addrs: Vec<IpAddr> = lab
        .topology()
        .spec
        .links
        .iter()
        .flat_map(|l| [&l.a, &l.b])
        .filter(|e| e.node == backend)
        .flat_map(|e| e.addrs.iter().map(|a| a.addr()))
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4() == v4)
        .or(addrs.first())
        .copied()
        .ok_or_else(|| LabError::Unsupported(format!("backend {backend:?} has no address for the LB to tunnel to")))
}
