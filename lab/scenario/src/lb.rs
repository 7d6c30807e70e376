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

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard},
    time::{Duration, Instant},
};

use zrlab_common::lb::counter;

use crate::{
    measures::LbTotals,
    spec::{LbSpec, WorkloadSpec},
};
use zrlab_control::{
    bpf::{Loaded, Object},
    lb::{
        Balancer, Decap, RealSpec, Settings, Upgrade, Version, VipSpec,
        health::{Checker, HealthPolicy, OnChange, Target},
    },
    server_id::{Membership, Registry},
};
use zrlab_host::error::{LabError, Result};
use zrlab_topology::{Lab, spec::EndSpec};
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
    /// (LB node, backend) for every backend a node's health checker took out.
    #[serde(default)]
    pub unhealthy: Vec<(String, String)>,
    /// Per VIP, the ring's slots per backend, read from the LB nodes' maps (one entry per VIP
    /// when every node holds the same ring, one per node and VIP when they differ).
    pub rings: Vec<(String, Vec<(String, u32)>)>,
}

/// A deployed LB.
pub struct Deployment {
    programs: Vec<String>,
    /// The LB nodes, in order.
    nodes: Vec<String>,
    /// Stopped first (dropped in declaration order): no checker changes a ring while the
    /// programs go away.
    checkers: Vec<Checker>,
    shared: Arc<Shared>,
    decaps: Vec<Decap>,
    _passes: Loaded,
}

/// An upgrade of one LB node's data path ([`Deployment::upgrade`]).
#[derive(Clone, Debug)]
pub struct UpgradeRecord {
    /// The LB node.
    pub node: String,
    /// What the in-place upgrade did; `None` for a naive one (fresh maps).
    pub upgrade: Option<Upgrade>,
    /// When the new version had taken over.
    pub at: Instant,
}

/// A change a node's health checker made to its rings.
#[derive(Clone, Debug)]
pub struct HealthChange {
    /// The LB node.
    pub node: String,
    /// The backend.
    pub backend: String,
    /// Back in (`true`) or out.
    pub up: bool,
    /// When the node's rings and live ids had been changed.
    pub at: Instant,
}

/// What the deployment's callers and its health checkers share. Lock order: `config`, then
/// nodes in index order, then `log`. Each LB node has a lock of its own, as separate machines
/// would: the checkers of several nodes change their rings at the same time.
struct Shared {
    config: RwLock<Config>,
    nodes: Vec<Mutex<LbNode>>,
    log: Mutex<HealthLog>,
}

/// The LB's configuration: the same on every node.
struct Config {
    vips: Vec<VipSpec>,
    reals: Vec<(String, RealSpec)>,
    registry: Registry,
}

/// One LB node.
struct LbNode {
    name: String,
    balancer: Balancer,
    /// Where its `xdp_lb` is attached: the node's namespace and interface (a naive upgrade
    /// attaches the new version there again).
    attached: (String, String),
    /// Its data path's upgrades, in order.
    upgrades: Vec<UpgradeRecord>,
    /// The backends its health checker found down: out of its rings and live-id table,
    /// whatever the configuration says.
    unhealthy: BTreeSet<String>,
}

/// What the health checkers did.
#[derive(Default)]
struct HealthLog {
    changes: Vec<HealthChange>,
    /// What went wrong applying a change (reported by [`Deployment::totals`]).
    errors: Vec<String>,
}

/// Locks `m`. A checker that panicked mid-change is reported by the panic hook; the state it
/// left is still the kernel's to read.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn read(&self) -> RwLockReadGuard<'_, Config> {
        self.config.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Config> {
        self.config.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn nodes(&self) -> Vec<MutexGuard<'_, LbNode>> {
        self.nodes.iter().map(lock).collect()
    }

    /// Records that node `index`'s checker found `backend` up or down, and changes that node.
    fn health_changed(&self, index: usize, backend: &str, up: bool) {
        let config = self.read();
        let mut node = lock(&self.nodes[index]);
        let before = config.node_live(&node.unhealthy);
        if up {
            node.unhealthy.remove(backend);
        } else {
            node.unhealthy.insert(backend.to_owned());
        }
        let result = config.converge(&mut [&mut node], &[before]);
        let mut log = lock(&self.log);
        let name = node.name.clone();
        log.changes.push(HealthChange { node: name.clone(), backend: backend.to_owned(), up, at: Instant::now() });
        if let Err(e) = result {
            let what = if up { "back into" } else { "out of" };
            log.errors.push(format!("{name}'s health checker could not take {backend} {what} its rings: {e}"));
        }
    }
}

impl Config {
    /// A node's reals: the configuration's, a backend its checker found down (`unhealthy`)
    /// out of the rings as a drain takes it out: only its slots move, so the other backends'
    /// new flows keep their places.
    fn node_reals(&self, unhealthy: &BTreeSet<String>) -> Vec<RealSpec> {
        self.reals
            .iter()
            .map(|(backend, real)| match unhealthy.contains(backend) {
                true => RealSpec { up: false, ..real.clone() },
                false => real.clone(),
            })
            .collect()
    }

    /// A node's live ids: the registry's, less those of backends its checker found down.
    fn node_live(&self, unhealthy: &BTreeSet<String>) -> BTreeMap<u32, IpAddr> {
        let owners = self.registry.live();
        live_table(&self.registry, &self.reals)
            .into_iter()
            .filter(|(id, _)| !owners.get(id).is_some_and(|backend| unhealthy.contains(backend)))
            .collect()
    }

    /// Brings `nodes` in line with the configuration and their health, `before` holding each
    /// one's live ids before the change.
    ///
    /// An id that becomes live is live on every one of them, within every VIP its backend
    /// joins, before any of their rings can send a flow to that backend; one that leaves stays
    /// until none of their rings does: no packet of a flow a new ring placed finds its
    /// backend's id unknown on the node ECMP hands it to.
    fn converge(&self, nodes: &mut [&mut LbNode], before: &[BTreeMap<u32, IpAddr>]) -> Result<()> {
        let reals: Vec<Vec<RealSpec>> = nodes.iter().map(|n| self.node_reals(&n.unhealthy)).collect();
        let after: Vec<BTreeMap<u32, IpAddr>> = nodes.iter().map(|n| self.node_live(&n.unhealthy)).collect();
        for (i, node) in nodes.iter_mut().enumerate() {
            let mut during = before[i].clone();
            during.extend(after[i].iter().map(|(id, addr)| (*id, *addr)));
            node.balancer.sync_server_ids(&during)?;
            for vip in &self.vips {
                node.balancer.admit_members(vip, &reals[i])?;
            }
        }
        for (i, node) in nodes.iter_mut().enumerate() {
            for vip in &self.vips {
                node.balancer.set_vip(vip, &reals[i])?;
            }
        }
        for (i, node) in nodes.iter_mut().enumerate() {
            node.balancer.sync_server_ids(&after[i])?;
        }
        Ok(())
    }
}

impl Deployment {
    /// Loads, configures and attaches every program of `spec` in `lab`; `registry` holds the
    /// backends' server ids (backends of weight 0 start as removed from the configuration).
    /// Health checks start with [`Deployment::check_health`].
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
        let deployment = Self::start_with(lab, &spec.nodes, vips, reals, registry)?;
        if spec.too_big_answers {
            deployment.set_path_mtus(lab)?;
        }
        Ok(deployment)
    }

    /// Tells every LB node the path MTU to each backend: the smaller of the MTUs of the LB
    /// node's link and of the backend's link that holds its address (the lab's topologies route
    /// between them through one router; a link without an MTU has veth's 1500).
    fn set_path_mtus(&self, lab: &Lab) -> Result<()> {
        let config = self.shared.read();
        let link_mtu = |node: &str, addr: Option<IpAddr>| {
            lab.topology()
                .spec
                .links
                .iter()
                .filter(|l| {
                    [&l.a, &l.b]
                        .iter()
                        .any(|e| e.node == node && addr.is_none_or(|a| e.addrs.iter().any(|x| x.addr() == a)))
                })
                .map(|l| l.mtu.unwrap_or(DEFAULT_MTU))
                .min()
                .unwrap_or(DEFAULT_MTU)
        };
        // Each backend's side once; each LB node's own link then bounds it.
        let backends: Vec<(IpAddr, u32)> =
            config.reals.iter().map(|(backend, real)| (real.addr, link_mtu(backend, Some(real.addr)))).collect();
        for lb in &self.shared.nodes {
            let mut lb = lock(lb);
            let mine = link_mtu(&lb.name, None);
            for (addr, theirs) in &backends {
                lb.balancer.set_path_mtu(*addr, mine.min(*theirs))?;
            }
        }
        Ok(())
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
        let loaded = load_each(nodes.len(), |_| Balancer::load(&Settings::default()))?;
        for (node, mut balancer) in nodes.iter().zip(loaded) {
            let (mine, theirs) = lb_link(lab, node)?;
            for v in &vips {
                balancer.set_vip(v, &real_specs(&reals))?;
            }
            balancer.sync_server_ids(&live)?;
            let netns = &lab.node(node)?.netns;
            balancer.attach(netns, &mine.ifname)?;
            passes.attach_xdp("xdp_pass", &lab.node(&theirs.node)?.netns, &theirs.ifname)?;
            programs.push(format!("{node} {} {}", mine.ifname, Version::Current));
            programs.push(format!("{} {} xdp_pass", theirs.node, theirs.ifname));
            balancers.push((node.clone(), balancer, (netns.name().to_owned(), mine.ifname.clone())));
        }
        let ends_of = |backend: &str| -> Vec<&EndSpec> {
            topology.spec.links.iter().flat_map(|l| [&l.a, &l.b]).filter(|e| e.node == backend).collect()
        };
        let loaded = load_each(reals.len(), |i| {
            let addrs: Vec<IpAddr> =
                ends_of(&reals[i].0).iter().flat_map(|e| e.addrs.iter().map(|a| a.addr())).collect();
            Decap::load(&addrs)
        })?;
        let mut decaps = Vec::new();
        for ((backend, _), mut decap) in reals.iter().zip(loaded) {
            for end in ends_of(backend) {
                decap.attach(&lab.node(backend)?.netns, &end.ifname)?;
                programs.push(format!("{backend} {} xdp_decap", end.ifname));
            }
            decaps.push(decap);
        }
        let names = balancers.iter().map(|(name, _, _)| name.clone()).collect();
        let shared = Shared {
            config: RwLock::new(Config { vips, reals, registry }),
            nodes: balancers
                .into_iter()
                .map(|(name, balancer, attached)| {
                    Mutex::new(LbNode { name, balancer, attached, upgrades: Vec::new(), unhealthy: BTreeSet::new() })
                })
                .collect(),
            log: Mutex::new(HealthLog::default()),
        };
        Ok(Self { programs, nodes: names, checkers: Vec::new(), shared: Arc::new(shared), decaps, _passes: passes })
    }

    /// Starts a health checker on every LB node (`zrlab_control::lb::health`): from then on
    /// a backend that stops answering its probes leaves that node's rings and live-id table,
    /// and comes back when it answers again. It probes the first VIP's address.
    pub fn check_health(&mut self, lab: &Lab, policy: HealthPolicy) -> Result<()> {
        let (backends, targets) = {
            let config = self.shared.read();
            let vip = config.vips.first().map(|v| v.addr);
            let vip = vip.ok_or_else(|| LabError::Unsupported("an LB without a VIP".into()))?;
            let backends: Vec<String> = config.reals.iter().map(|(backend, _)| backend.clone()).collect();
            let targets: Vec<Target> = config.reals.iter().map(|(_, r)| Target { real: r.addr, vip }).collect();
            (backends, targets)
        };
        for (index, node) in self.nodes.iter().enumerate() {
            let (mine, _) = lb_link(lab, node)?;
            let sources: Vec<IpAddr> = mine.addrs.iter().map(|a| a.addr()).collect();
            let shared = self.shared.clone();
            let backends = backends.clone();
            let on_change: OnChange = Box::new(move |target, up| shared.health_changed(index, &backends[target], up));
            // One identifier per node: the echo replies of another node's checker are not ours.
            let ident = HEALTH_IDENT_BASE.wrapping_add(index as u16);
            let checker =
                Checker::start(&lab.node(node)?.netns, node, &sources, targets.clone(), policy, ident, on_change)?;
            self.checkers.push(checker);
            self.programs.push(format!("{node} health checker ({} backends)", targets.len()));
        }
        Ok(())
    }

    /// Whether health checkers run.
    pub fn checks_health(&self) -> bool {
        !self.checkers.is_empty()
    }

    /// Every change the health checkers made so far.
    pub fn health_changes(&self) -> Vec<HealthChange> {
        lock(&self.shared.log).changes.clone()
    }

    /// Waits until every LB node's checker has taken `backend` out (a change after `since`),
    /// polling every 10 ms until `deadline`: the time from `since` to the last node's change,
    /// or `None` if not every node did by then (or no checker runs).
    pub async fn wait_out(&self, backend: &str, since: Instant, deadline: Instant) -> Option<Duration> {
        if !self.checks_health() {
            return None;
        }
        loop {
            // Only the log's lock: a node changing its rings holds its own.
            let last_out = {
                let log = lock(&self.shared.log);
                let out_at = |node: &str| {
                    log.changes.iter().find(|c| c.node == node && c.backend == backend && !c.up && c.at >= since)
                };
                self.nodes.iter().map(|node| out_at(node).map(|c| c.at)).collect::<Option<Vec<_>>>()
            };
            if let Some(last) = last_out.and_then(|ats| ats.into_iter().max()) {
                return Some(last - since);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// How many LB nodes' live-id tables (read from their maps) hold `backend`'s server id.
    pub fn nodes_with_live_id(&self, backend: &str) -> Result<u64> {
        let Some(id) = self.shared.read().registry.id(backend) else { return Ok(0) };
        let mut nodes = 0;
        for node in &self.shared.nodes {
            nodes += u64::from(lock(node).balancer.server_ids_in_kernel()?.contains(&id));
        }
        Ok(nodes)
    }

    /// Replaces LB node `node`'s data path with version `to` while traffic flows.
    ///
    /// With `handover` it is upgraded in place (`zrlab_control::lb::upgrade`): maps handed over
    /// or migrated, the program swapped by a link update. Without, it is what a naive deploy
    /// does, the control of that claim: the new version is loaded with fresh maps and
    /// programmed from the configuration (rings, VIPs, live ids), the old one detached, the new
    /// one attached; the connection tables start empty, so a flow whose real the rings no
    /// longer name (a drain since it started) goes elsewhere.
    pub fn upgrade(&mut self, node: &str, to: Version, handover: bool) -> Result<UpgradeRecord> {
        let index = self
            .nodes
            .iter()
            .position(|n| n == node)
            .ok_or_else(|| LabError::Unsupported(format!("{node:?} is not an LB node")))?;
        let config = self.shared.read();
        let mut guard = lock(&self.shared.nodes[index]);
        let lb = &mut *guard;
        let upgrade = if handover {
            Some(lb.balancer.upgrade(&Settings::default(), to)?)
        } else {
            let mut fresh = Balancer::load_version(&Settings::default(), to)?;
            let reals = config.node_reals(&lb.unhealthy);
            for vip in &config.vips {
                fresh.set_vip(vip, &reals)?;
            }
            fresh.sync_server_ids(&config.node_live(&lb.unhealthy))?;
            for (real, mtu) in lb.balancer.path_mtus() {
                fresh.set_path_mtu(real, mtu)?;
            }
            // The old version is detached as it is dropped, before the new one is attached.
            drop(std::mem::replace(&mut lb.balancer, fresh));
            let netns = zrlab_host::netns::Netns::open(&lb.attached.0)?;
            lb.balancer.attach(&netns, &lb.attached.1)?;
            None
        };
        let record = UpgradeRecord { node: node.to_owned(), upgrade, at: Instant::now() };
        lb.upgrades.push(record.clone());
        let ifname = lb.attached.1.clone();
        drop(guard);
        drop(config);
        let prefix = format!("{node} {ifname} ");
        if let Some(line) = self.programs.iter_mut().find(|p| p.starts_with(&prefix)) {
            *line = format!("{prefix}{to}");
        }
        Ok(record)
    }

    /// Every LB node's upgrades so far, in order per node.
    pub fn upgrades(&self) -> Vec<UpgradeRecord> {
        self.shared.nodes().iter().flat_map(|n| n.upgrades.clone()).collect()
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
    /// live-id table in line with it (and with each node's health).
    fn change(&mut self, backend: &str, edit: impl FnOnce(&mut RealSpec)) -> Result<()> {
        let mut config = self.shared.write();
        let mut nodes = self.shared.nodes();
        let before: Vec<_> = nodes.iter().map(|n| config.node_live(&n.unhealthy)).collect();
        let real = config
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
        config.registry.set(backend, membership);
        let mut nodes: Vec<&mut LbNode> = nodes.iter_mut().map(|n| &mut **n).collect();
        config.converge(&mut nodes, &before)
    }

    /// What the deployment holds now.
    pub fn status(&self) -> Result<LbStatus> {
        let config = self.shared.read();
        let nodes = self.shared.nodes();
        let name = |addr: &IpAddr| {
            config
                .reals
                .iter()
                .find(|(_, r)| r.addr == *addr)
                .map_or_else(|| addr.to_string(), |(node, _)| node.clone())
        };
        let mut rings = Vec::new();
        for v in &config.vips {
            // Read from every node's maps: the data path's rings, not this process's memory.
            let per_node: Vec<(String, BTreeMap<IpAddr, u32>)> = nodes
                .iter()
                .map(|node| Ok((node.name.clone(), node.balancer.ring_in_kernel(v)?)))
                .collect::<Result<_>>()?;
            let vip = format!("{}:{}/{}", v.addr, v.port, v.proto);
            let agree = per_node.windows(2).all(|w| w[0].1 == w[1].1);
            for (node, slots) in per_node.iter().take(if agree { 1 } else { per_node.len() }) {
                // Every backend, 0 for one without a slot; an address no backend has (a stale
                // real in the maps) by its address.
                let mut shares: Vec<(String, u32)> = config
                    .reals
                    .iter()
                    .map(|(node, r)| (node.clone(), slots.get(&r.addr).copied().unwrap_or(0)))
                    .collect();
                shares.extend(
                    slots
                        .iter()
                        .filter(|(addr, _)| !config.reals.iter().any(|(_, r)| r.addr == **addr))
                        .map(|(a, n)| (name(a), *n)),
                );
                rings.push((if agree { vip.clone() } else { format!("{vip} on {node}") }, shares));
            }
        }
        Ok(LbStatus {
            programs: self.programs.clone(),
            vips: config
                .vips
                .iter()
                .map(|v| {
                    let ids = if v.options.tcp_id_routing || v.options.quic_id_routing { ", id routing" } else { "" };
                    format!("{}:{}/{}{ids}", v.addr, v.port, v.proto)
                })
                .collect(),
            reals: config.reals.iter().map(|(node, r)| (node.clone(), r.addr, r.weight, r.up)).collect(),
            live_ids: config.registry.live(),
            rings,
            unhealthy: nodes
                .iter()
                .flat_map(|node| node.unhealthy.iter().map(|backend| (node.name.clone(), backend.clone())))
                .collect(),
        })
    }

    /// The counters of every LB and decap program; an error if a health checker could not
    /// apply a change.
    pub fn totals(&self) -> Result<LbTotals> {
        let log = lock(&self.shared.log);
        if !log.errors.is_empty() {
            return Err(LabError::Unsupported(log.errors.join("; ")));
        }
        let health_changes = log.changes.len() as u64;
        drop(log);
        let nodes = self.shared.nodes();
        let mut totals = LbTotals::default();
        for node in &nodes {
            let c = node.balancer.counters()?;
            totals.tx += c.get(counter::TX);
            totals.ring_routed += c.get(counter::RING_ROUTED);
            totals.table_hits += c.get(counter::LRU_HIT) + c.get(counter::SYN_CACHE_HIT);
            totals.table_misses += c.get(counter::LRU_MISS);
            totals.id_unknown += c.get(counter::ID_UNKNOWN);
            totals.tcp_id_routed += c.get(counter::TCP_ID_ROUTED);
            totals.quic_id_routed += c.get(counter::QUIC_ID_ROUTED);
            totals.next_tx += c.get(counter::NEXT_TX);
            totals.too_big += c.get(counter::TOO_BIG);
            totals.icmp_routed += c.get(counter::ICMP_ROUTED);
            totals.upgrades += node.upgrades.len() as u64;
            totals.entries_migrated +=
                node.upgrades.iter().filter_map(|u| u.upgrade.as_ref()).map(|u| u.entries_migrated).sum::<u64>();
        }
        for decap in &self.decaps {
            let c = decap.counters()?;
            totals.decapsulated += c.v4_in_v4 + c.v6_in_v6 + c.v4_in_v6 + c.v6_in_v4;
        }
        let mut nodes_per_flow = std::collections::HashMap::new();
        for node in &nodes {
            for key in node.balancer.connections()? {
                *nodes_per_flow.entry(key).or_insert(0u32) += 1;
            }
        }
        totals.inherited_flows = nodes_per_flow.values().filter(|n| **n > 1).count() as u64;
        totals.health_changes = health_changes;
        Ok(totals)
    }
}

/// The MTU of a veth link the topology gives none.
const DEFAULT_MTU: u32 = 1500;

/// The first echo identifier of the health checkers (one per LB node from there).
const HEALTH_IDENT_BASE: u16 = 0x7a00;

/// LB node `node`'s one link: its own end and the router's.
fn lb_link<'a>(lab: &'a Lab, node: &str) -> Result<(&'a EndSpec, &'a EndSpec)> {
    let link = lab
        .topology()
        .spec
        .links
        .iter()
        .find(|l| l.a.node == *node || l.b.node == *node)
        .ok_or_else(|| LabError::Unsupported(format!("LB node {node:?} has no link")))?;
    Ok(if link.a.node == *node { (&link.a, &link.b) } else { (&link.b, &link.a) })
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

/// `load(i)` for every `i` below `n`, on threads of their own: the verifier's time is most of an
/// LB's set-up (seconds per program in an emulated guest), and each node's programs and maps
/// are independent of the others'.
fn load_each<T: Send>(n: usize, load: impl Fn(usize) -> Result<T> + Sync) -> Result<Vec<T>> {
    std::thread::scope(|scope| {
        let load = &load;
        let threads: Vec<_> = (0..n).map(|i| scope.spawn(move || load(i))).collect();
        threads.into_iter().map(|t| t.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
    })
}
