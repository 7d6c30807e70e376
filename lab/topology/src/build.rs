//! A built topology: namespaces, veths, addresses, sysctls, nexthop groups and routes, made
//! through netlink, plus the processes started inside it. Owned; torn down on drop.
//!
//! Every object carries the run's prefix ([`RunId`]): namespaces are `<run>-<node>`, the
//! cgroup subtree is `<cgroup2>/<run>/<node>`. Teardown kills the processes, removes the
//! namespaces (which destroys their veths, routes and attached XDP programs) and removes the
//! cgroup subtree, in that order, on success, error and panic alike (it runs from `Drop`).

use std::{
    collections::BTreeMap,
    ffi::{CString, OsStr},
    os::{
        fd::{AsFd as _, AsRawFd as _, OwnedFd},
        unix::process::CommandExt as _,
    },
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use crate::{
    GroupChange,
    node::Node,
    spec::{GroupSpec, Role, Topology},
};
use zrlab_host::{
    cgroup::{Cgroup, cgroup2_root},
    error::{LabError, Result},
    netns::Netns,
    nl::{Nl, nexthop::GroupType},
    run_id::RunId,
};
use zrlab_wire::Family;

/// First id of the nexthop objects the lab creates in a namespace (groups get their own range).
const FIRST_NEXTHOP_ID: u32 = 1;
/// First id of nexthop groups.
const FIRST_GROUP_ID: u32 = 1000;
/// The ECMP hash seed set on routers that support `fib_multipath_hash_seed` (6.11+), so that a
/// flow's path is the same from run to run.
const MULTIPATH_HASH_SEED: u32 = 0x5eed;
/// `fib_multipath_hash_fields` for the 5-tuple: source and destination address, protocol,
/// source and destination port.
const MULTIPATH_HASH_FIELDS: &str = "0x0037";

/// A nexthop group as it currently is in the kernel.
#[derive(Clone, Debug)]
struct GroupState {
    node: String,
    id: u32,
    kind: GroupType,
    buckets: u16,
    family: Family,
    /// Members in slot order: (neighbour node, nexthop id).
    members: Vec<(String, u32)>,
}

/// A process the lab started inside a node.
#[derive(Debug)]
pub struct Spawned {
    /// Its pid.
    pub pid: u32,
    /// Its standard output, for reading the phases it reports.
    pub stdout: tokio::process::ChildStdout,
}

/// A running lab topology.
#[derive(Debug)]
pub struct Lab {
    run: RunId,
    topology: Topology,
    nodes: BTreeMap<String, Node>,
    cgroup: Option<Cgroup>,
    groups: BTreeMap<String, GroupState>,
    next_nexthop: u32,
    children: Vec<(String, Child)>,
    setup: Duration,
    torn_down: bool,
    ecmp_unseeded: Vec<String>,
}

impl Lab {
    /// Builds `topology` under a fresh run id. `keep` leaves it up when the value is dropped.
    pub async fn build(topology: &Topology, keep: bool) -> Result<Self> {
        let started = Instant::now();
        let run = RunId::new(keep);
        let mut lab = Self::empty(run, topology);
        // From here on, an error drops `lab`, which removes whatever was already made.
        lab.cgroup = Some(Cgroup::create(cgroup2_root()?.join(run.to_string()))?);
        for node in &topology.spec.nodes {
            let netns = Netns::create(&run.name(&node.name))?;
            let nl = Nl::connect(&netns)?;
            lab.nodes.insert(node.name.clone(), Node { role: node.role, netns, nl });
            let node_ref = &lab.nodes[&node.name];
            node_ref.nl.link_up("lo").await?;
            if !configure_sysctls(node_ref)? {
                lab.ecmp_unseeded.push(node.name.clone());
            }
            for addr in &node.loopback {
                node_ref.nl.addr_add("lo", *addr).await?;
            }
        }
        for link in &topology.spec.links {
            let a = &lab.nodes[&link.a.node];
            let b = &lab.nodes[&link.b.node];
            a.nl.veth_add(&link.a.ifname, &link.b.ifname, &b.netns).await?;
            for (node, end) in [(a, &link.a), (b, &link.b)] {
                for addr in &end.addrs {
                    node.nl.addr_add(&end.ifname, *addr).await?;
                }
                if let Some(mtu) = link.mtu {
                    node.nl.link_set_mtu(&end.ifname, mtu).await?;
                }
                if node.role == Role::Client {
                    // Clients compute their own checksums: veth would otherwise leave them to
                    // an offload that never happens, and a load balancer that forwards the
                    // packet in a tunnel would deliver a wrong checksum to the backend.
                    let ifname = end.ifname.clone();
                    node.netns.run(move || zrlab_host::ethtool::disable_tx_checksum(&ifname))??;
                }
                node.nl.link_up(&end.ifname).await?;
            }
        }
        for group in &topology.spec.groups {
            lab.add_group(group).await?;
        }
        for route in &topology.spec.routes {
            let nl = &lab.nodes[&route.node].nl;
            match (&route.via, &route.group) {
                (Some(via), _) => nl.route_add_via(route.dst, *via).await?,
                (None, Some(group)) => nl.route_add_nhid(route.dst, lab.groups[group].id, false).await?,
                (None, None) => unreachable!("validated: a route has `via` or `group`"),
            }
        }
        lab.setup = started.elapsed();
        Ok(lab)
    }

    /// A lab of `topology` under `run` that holds nothing yet.
    fn empty(run: RunId, topology: &Topology) -> Self {
        Self {
            run,
            topology: topology.clone(),
            nodes: BTreeMap::new(),
            cgroup: None,
            groups: BTreeMap::new(),
            next_nexthop: FIRST_NEXTHOP_ID,
            children: Vec::new(),
            setup: Duration::ZERO,
            torn_down: false,
            ecmp_unseeded: Vec::new(),
        }
    }

    /// Adopts the kept run `run` (built from `topology`, then changed by the group changes
    /// `applied`, in order): opens its namespaces and cgroup without creating anything and
    /// reconstructs the nexthop groups' state (their ids follow from the build and the changes),
    /// so that further group changes work. The adopted lab never tears anything down.
    pub async fn adopt(run: RunId, topology: &Topology, applied: &[GroupChange]) -> Result<Self> {
        if !run.kept {
            return Err(LabError::Usage(format!("{run} is not a kept run")));
        }
        let mut lab = Self::empty(run, topology);
        lab.cgroup = Some(Cgroup::existing(cgroup2_root()?.join(run.to_string()))?);
        for node in &topology.spec.nodes {
            let netns = Netns::open(&run.name(&node.name))?;
            let nl = Nl::connect(&netns)?;
            lab.nodes.insert(node.name.clone(), Node { role: node.role, netns, nl });
        }
        // The ids Lab::build and the group events handed out, in the same order.
        for (i, group) in topology.spec.groups.iter().enumerate() {
            let members = group
                .members
                .iter()
                .map(|member| {
                    let id = lab.next_nexthop;
                    lab.next_nexthop += 1;
                    (member.clone(), id)
                })
                .collect();
            let state = GroupState {
                node: group.node.clone(),
                id: FIRST_GROUP_ID + i as u32,
                kind: group.kind,
                buckets: group.buckets.unwrap_or(0),
                family: group.family,
                members,
            };
            lab.groups.insert(group.name.clone(), state);
        }
        for change in applied {
            let id = lab.next_nexthop;
            let Some(state) = lab.groups.get_mut(change.group()) else { continue };
            match change {
                GroupChange::Remove { member, .. } => state.members.retain(|(m, _)| m != member),
                GroupChange::Replace { member, with, .. } => {
                    if let Some(slot) = state.members.iter_mut().find(|(m, _)| m == member) {
                        *slot = (with.clone(), id);
                        lab.next_nexthop += 1;
                    }
                }
                GroupChange::Add { member, .. } => {
                    state.members.push((member.clone(), id));
                    lab.next_nexthop += 1;
                }
            }
        }
        Ok(lab)
    }

    /// The run's id (its prefix names every object of the run).
    pub fn run_id(&self) -> RunId {
        self.run
    }

    /// The topology this lab was built from.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Routers whose ECMP hash could not be seeded (`fib_multipath_hash_seed` is 6.11+): their
    /// hash key is random per namespace, so which flows a member change moves differs from run
    /// to run (the counts of a scenario's expectations must not depend on which).
    pub fn ecmp_unseeded(&self) -> &[String] {
        &self.ecmp_unseeded
    }

    /// How long [`Lab::build`] took.
    pub fn setup_time(&self) -> Duration {
        self.setup
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Result<&Node> {
        self.nodes.get(name).ok_or_else(|| LabError::Unsupported(format!("no node {name:?} in this lab")))
    }

    /// The cgroup of `node` (created on first use): where its services run and where programs
    /// that act on its sockets (sock_ops) attach.
    pub fn cgroup_of(&self, node: &str) -> Result<std::path::PathBuf> {
        self.node(node)?;
        self.cgroup.as_ref().expect("built labs have a cgroup").leaf(node)
    }

    /// All nodes, by name.
    pub fn nodes(&self) -> impl Iterator<Item = (&str, &Node)> {
        self.nodes.iter().map(|(name, node)| (name.as_str(), node))
    }

    async fn add_group(&mut self, group: &GroupSpec) -> Result<()> {
        let mut members = Vec::new();
        for member in &group.members {
            let id = self.add_member_nexthop(&group.node, member, group.family).await?;
            members.push((member.clone(), id));
        }
        let id = FIRST_GROUP_ID + self.groups.len() as u32;
        let state = GroupState {
            node: group.node.clone(),
            id,
            kind: group.kind,
            buckets: group.buckets.unwrap_or(0),
            family: group.family,
            members,
        };
        self.write_group(&state, false).await?;
        self.groups.insert(group.name.clone(), state);
        Ok(())
    }

    async fn add_member_nexthop(&mut self, node: &str, member: &str, family: Family) -> Result<u32> {
        let gateway = self
            .topology
            .gateway(node, member, family)
            .ok_or_else(|| LabError::Unsupported(format!("{member:?} is not a neighbour of {node:?} in {family:?}")))?;
        let id = self.next_nexthop;
        self.next_nexthop += 1;
        self.nodes[node].nl.nexthop_add(id, gateway.addr, &gateway.ifname).await?;
        Ok(id)
    }

    async fn write_group(&self, state: &GroupState, replace: bool) -> Result<()> {
        let ids: Vec<u32> = state.members.iter().map(|(_, id)| *id).collect();
        self.nodes[&state.node].nl.nexthop_group_set(state.id, &ids, state.kind, state.buckets, replace).await
    }

    fn group(&self, group: &str) -> Result<&GroupState> {
        self.groups.get(group).ok_or_else(|| LabError::Unsupported(format!("no group {group:?} in this lab")))
    }

    /// Writes `state` as the new content of `group`, then records it (so a refused change
    /// leaves the lab's view equal to the kernel's).
    async fn commit_group(&mut self, group: &str, state: GroupState) -> Result<()> {
        if state.members.is_empty() {
            return Err(LabError::Unsupported(format!("the change would leave group {group:?} empty")));
        }
        self.write_group(&state, true).await?;
        self.groups.insert(group.to_owned(), state);
        Ok(())
    }

    /// Every nonzero drop counter of the lab's namespaces, node by node.
    pub async fn losses(&self) -> Result<Vec<super::Loss>> {
        let mut losses = Vec::new();
        for (name, node) in &self.nodes {
            losses.extend(super::losses::of_node(name, node).await?);
        }
        Ok(losses)
    }

    /// The kernel's protocol counter `name` (`"TcpExt:SyncookiesSent"`, as the kernel writes
    /// it in `/proc/net/{snmp,netstat}`) in `node`'s namespace; 0 if the kernel has no such
    /// counter.
    pub fn protocol_counter(&self, node: &str, name: &str) -> Result<u64> {
        let counters = super::losses::protocol_counters_of(self.node(node)?)?;
        Ok(counters.into_iter().find(|(counter, _)| counter == name).map_or(0, |(_, value)| value))
    }

    /// The members of `group`, in slot order.
    pub fn group_members(&self, group: &str) -> Option<Vec<String>> {
        Some(self.groups.get(group)?.members.iter().map(|(name, _)| name.clone()).collect())
    }

    /// Removes `member` from `group` (`ip nexthop replace id <g> group <rest>`): the remaining
    /// slots close up, as when a backend is taken out of rotation.
    pub async fn remove_member(&mut self, group: &str, member: &str) -> Result<()> {
        let mut state = self.group(group)?.clone();
        let before = state.members.len();
        state.members.retain(|(name, _)| name != member);
        if state.members.len() == before {
            return Err(LabError::Unsupported(format!("{member:?} is not a member of group {group:?}")));
        }
        self.commit_group(group, state).await
    }

    /// Points `member`'s slot of `group` at `with` instead, keeping the slot count (and, for a
    /// hash-threshold group, every other slot's hash range) unchanged.
    pub async fn replace_member(&mut self, group: &str, member: &str, with: &str) -> Result<()> {
        let mut state = self.group(group)?.clone();
        let Some(slot) = state.members.iter().position(|(name, _)| name == member) else {
            return Err(LabError::Unsupported(format!("{member:?} is not a member of group {group:?}")));
        };
        let id = self.add_member_nexthop(&state.node, with, state.family).await?;
        state.members[slot] = (with.to_owned(), id);
        self.commit_group(group, state).await
    }

    /// Adds `member` to the end of `group`.
    pub async fn add_member(&mut self, group: &str, member: &str) -> Result<()> {
        let mut state = self.group(group)?.clone();
        let id = self.add_member_nexthop(&state.node, member, state.family).await?;
        state.members.push((member.to_owned(), id));
        self.commit_group(group, state).await
    }

    /// Kills `node`'s host hard, as a power cut would: each of its interfaces is set down, so
    /// its neighbours' packets to it go nowhere, and every process in its cgroup gets SIGKILL
    /// (the lab's own children among them are reaped). Nothing is drained or told.
    pub async fn kill_host(&mut self, node: &str) -> Result<()> {
        let ifnames: Vec<String> = self
            .topology
            .spec
            .links
            .iter()
            .flat_map(|l| [&l.a, &l.b])
            .filter(|end| end.node == node)
            .map(|end| end.ifname.clone())
            .collect();
        let host = self.node(node)?;
        for ifname in ifnames {
            host.nl.link_down(&ifname).await?;
        }
        zrlab_host::cgroup::kill_processes(&self.cgroup_of(node)?)?;
        for (_, child) in self.children.iter_mut().filter(|(name, _)| name == node) {
            // Killed with its cgroup already: this reaps it.
            let _ = child.kill();
            child.wait().map_err(|e| LabError::os("wait for", format!("pid {} in node {node}", child.id()), e))?;
        }
        self.children.retain(|(name, _)| name != node);
        Ok(())
    }

    /// Starts `program args` inside `node`'s namespace and cgroup, with stdout piped.
    ///
    /// Unless the run is kept, the child gets `PDEATHSIG=SIGKILL`, so it dies with the lab even
    /// if the lab is SIGKILLed. The kernel sends that signal when the *thread* that forked the
    /// child exits, so call this from the thread that owns the lab.
    pub fn spawn(&mut self, node: &str, program: &Path, args: &[impl AsRef<OsStr>]) -> Result<Spawned> {
        let netns: OwnedFd = self
            .node(node)?
            .netns
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| LabError::os("dup namespace fd of", node, e))?;
        let cgroup = self.cgroup_of(node)?;
        let procs = CString::new(cgroup.join("cgroup.procs").into_os_string().into_encoded_bytes())
            .map_err(|_| LabError::Path { what: "cgroup path contains NUL", path: cgroup.clone() })?;
        let die_with_parent = !self.run.kept;
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            // A kept run's processes outlive the lab: they must not hold its stderr open
            // (whoever reads that pipe would wait for them forever).
            .stderr(if die_with_parent { Stdio::inherit() } else { Stdio::null() });
        // SAFETY: the closure only makes async-signal-safe system calls (setns, prctl, getppid,
        // open, write, close) on data prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if die_with_parent {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    // The parent may have died before prctl: then nobody would kill us.
                    if libc::getppid() != parent {
                        libc::_exit(1);
                    }
                }
                // Writing "0" to cgroup.procs moves the writer itself.
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
                Ok(())
            });
        }
        let mut child =
            cmd.spawn().map_err(|e| LabError::os("spawn", format!("{} in node {node}", program.display()), e))?;
        let pid = child.id();
        let stdout = child.stdout.take().expect("stdout is piped");
        self.children.push((node.to_owned(), child));
        let stdout = tokio::process::ChildStdout::from_std(stdout)
            .map_err(|e| LabError::os("register stdout of", pid.to_string(), e))?;
        Ok(Spawned { pid, stdout })
    }

    /// How child `pid` ended, once it has (polled every 10 ms for up to `within`): for the error
    /// of a service that closed its stdout early. `None` if it is still running or not ours.
    pub async fn exit_status(&mut self, pid: u32, within: Duration) -> Option<ExitStatus> {
        let child = &mut self.children.iter_mut().find(|(_, c)| c.id() == pid)?.1;
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                _ => return None,
            }
        }
    }

    /// Tears the lab down now and reports how long it took; errors name what was left behind.
    pub fn teardown(mut self) -> Result<Duration> {
        let started = Instant::now();
        let errors = self.teardown_inner();
        if errors.is_empty() { Ok(started.elapsed()) } else { Err(LabError::Teardown(errors)) }
    }

    fn teardown_inner(&mut self) -> Vec<LabError> {
        self.torn_down = true;
        let mut errors = Vec::new();
        if self.run.kept {
            // Leave everything running; `zrlab clean` removes it.
            self.children.clear();
            for (_, node) in std::mem::take(&mut self.nodes) {
                node.netns.keep();
            }
            if let Some(cgroup) = self.cgroup.take() {
                cgroup.keep();
            }
            return errors;
        }
        for (node, mut child) in self.children.drain(..) {
            let _ = child.kill();
            if let Err(e) = child.wait() {
                errors.push(LabError::os("wait for", format!("pid {} in node {node}", child.id()), e));
            }
        }
        for (_, node) in std::mem::take(&mut self.nodes) {
            drop(node.nl);
            if let Err(e) = node.netns.remove() {
                errors.push(e);
            }
        }
        if let Some(cgroup) = self.cgroup.take()
            && let Err(e) = cgroup.remove()
        {
            errors.push(e);
        }
        errors
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.torn_down {
            for e in self.teardown_inner() {
                tracing::warn!("teardown of {}: {e}", self.run);
            }
        }
    }
}

/// Per-role sysctls, written from a thread inside the node's namespace (`/proc/sys/net` shows
/// the namespace of the thread that opens it). False when the node is a router whose ECMP hash
/// seed could not be set (kernels before 6.11 have no `fib_multipath_hash_seed`).
fn configure_sysctls(node: &Node) -> Result<bool> {
    let mut settings: Vec<(&str, String)> = vec![
        // Backends receive packets for a VIP on lo and routers see asymmetric paths: strict
        // reverse-path filtering (inherited from the host by new namespaces) would drop them.
        ("net/ipv4/conf/all/rp_filter", "0".into()),
        ("net/ipv4/conf/default/rp_filter", "0".into()),
    ];
    // LB nodes do not forward: what their XDP program passes (fragments, options) is not theirs
    // to route, and forwarding it back to the router would loop it until its TTL ran out.
    if node.role == Role::Router {
        settings.extend([("net/ipv4/ip_forward", "1".into()), ("net/ipv6/conf/all/forwarding", "1".into())]);
    }
    let router = node.role == Role::Router;
    let name = node.netns.name().to_owned();
    node.netns.run(move || {
        let write = |key: &str, value: &str| {
            let path = Path::new("/proc/sys").join(key);
            std::fs::write(&path, value).map_err(|e| LabError::os("write", format!("{} in {name}", path.display()), e))
        };
        for (key, value) in &settings {
            write(key, value)?;
        }
        if router {
            for family in ["ipv4", "ipv6"] {
                // Hash flows by their 5-tuple (custom policy 3, kernel 5.12+), not by the
                // sender's random socket hash that policy 1 reuses when the packet carries one
                // (locally generated packets keep it across veth), and which TCP changes after a
                // retransmission timeout. Older kernels fall back to policy 1.
                let custom = write(&format!("net/{family}/fib_multipath_hash_policy"), "3")
                    .and_then(|()| write(&format!("net/{family}/fib_multipath_hash_fields"), MULTIPATH_HASH_FIELDS));
                if custom.is_err() {
                    write(&format!("net/{family}/fib_multipath_hash_policy"), "1")?;
                }
            }
            // Kernels before 6.11 have no seed and hash with a random key: reported, not fatal.
            return Ok(write("net/ipv4/fib_multipath_hash_seed", &MULTIPATH_HASH_SEED.to_string()).is_ok());
        }
        Ok(true)
    })?
}
