//! Scenario files (`fixtures/scenarios/*.toml`): a topology, a workload, a timeline of events
//! and expectations, plus the control variant that must show the failure the fix prevents.
//!
//! ```toml
//! description = "what the scenario proves"
//! topology = "../topologies/ecmp-direct.toml"   # relative to this file
//! requires = ["resilient-nexthop-groups"]       # kernel features; missing ones skip the scenario
//!
//! [groups.vip]           # overrides of the topology's nexthop groups
//! type = "resilient"
//! buckets = 128
//!
//! [workload]
//! client = "client"
//! backends = ["be1", "be2", "be3", "be4"]
//! vip = "203.0.113.10"
//!
//! [[event]]              # fired in order, each after every live flow made more rounds
//! action = "remove-member"
//! group = "vip"
//! member = "be4"
//!
//! [expect]               # checked against the flows whose owner stayed up
//! resets = "== 0"
//!
//! [control]              # merged over the main variant; its own [control.expect]
//! description = "the same without the fix"
//! groups.vip = { type = "hash-threshold" }
//! expect = { resets = "> 0" }
//! ```
//!
//! The control is required: a claim without a run that shows the failure proves nothing
//! (DESIGN.md section 2). Its table is merged key by key over the main one (tables such as
//! `workload` and `timing` merge, other values replace); `expect` and each `groups.<name>` are
//! replaced whole, and the control must state its own `expect`.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::{
    expect::{Capacity, Comparison, Metric},
    impair::ImpairSpec,
    release::ReleaseSpec,
};
use zrlab_control::lb::{VipOptions, health::HealthPolicy};
use zrlab_features::Feature;
use zrlab_host::{
    nl::nexthop::GroupType,
    toml_file::{SpecError, from_table, read_table},
};
use zrlab_topology::{Role, Topology};
use zrlab_wire::quic::CidVersion;

/// Override of a topology group.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GroupOverride {
    /// New group type.
    #[serde(rename = "type")]
    pub kind: Option<GroupType>,
    /// New bucket count (resilient groups).
    pub buckets: Option<u16>,
}

/// The workload of a scenario.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSpec {
    /// The client node.
    pub client: String,
    /// Backend nodes that run the service.
    pub backends: Vec<String>,
    /// The service address (on every backend's loopback).
    pub vip: IpAddr,
    /// TCP port.
    #[serde(default = "defaults::tcp_port")]
    pub tcp_port: u16,
    /// UDP port.
    #[serde(default = "defaults::udp_port")]
    pub udp_port: u16,
    /// Number of TCP flows.
    #[serde(default = "defaults::flows")]
    pub tcp_flows: u32,
    /// Number of UDP flows.
    #[serde(default = "defaults::flows")]
    pub udp_flows: u32,
    /// Milliseconds between a flow's requests.
    #[serde(default = "defaults::period_ms")]
    pub period_ms: u64,
    /// Seed of every random choice (ports are fixed; offsets, CIDs and server ids are drawn).
    #[serde(default = "defaults::seed")]
    pub seed: u64,
    /// Layout of server ids in QUIC connection ids.
    #[serde(default = "defaults::cid_version")]
    pub cid_version: CidVersion,
    /// New long-lived TCP flows opened every period from the end of the warm-up on (0: none).
    #[serde(default)]
    pub open_tcp_per_period: u32,
    /// Bytes every TCP request uploads (0, the default: none; at most 1 MiB): full-size
    /// segments, what the path-MTU scenarios need.
    #[serde(default)]
    pub upload_bytes: u32,
}

/// The scenario's sock_ops programs that carry the server id in a TCP option (`zrlab_control::tpr`).
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TprSpec {
    /// Attach `tpr_server` to every backend's cgroup (writes the id on SYN-ACKs).
    #[serde(default = "defaults::enabled")]
    pub server: bool,
    /// Attach `tpr_client` to the client's cgroup (echoes the id).
    #[serde(default = "defaults::enabled")]
    pub client: bool,
}

/// Pacing of a scenario, in rounds (one request per flow) rather than seconds, so that a slow
/// machine runs the same scenario, only slower.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimingSpec {
    /// Rounds every flow completes before the first event.
    #[serde(default = "defaults::warmup_rounds")]
    pub warmup_rounds: u64,
    /// Rounds between two events.
    #[serde(default = "defaults::rounds_between_events")]
    pub rounds_between_events: u64,
    /// Rounds after the last event before the flows stop.
    #[serde(default = "defaults::settle_rounds")]
    pub settle_rounds: u64,
    /// Milliseconds a request may wait for its reply.
    #[serde(default = "defaults::reply_timeout_ms")]
    pub reply_timeout_ms: u64,
    /// Milliseconds a TCP connection may take to open and a TCP request to get its reply, if
    /// not `reply_timeout_ms`: lossy links give TCP time to retransmit (UDP loses a lost
    /// datagram however long it waits).
    #[serde(default)]
    pub tcp_reply_timeout_ms: Option<u64>,
    /// Milliseconds any one phase (start-up, warm-up, a wait for rounds) may take.
    #[serde(default = "defaults::phase_timeout_ms")]
    pub phase_timeout_ms: u64,
}

impl Default for TimingSpec {
    fn default() -> Self {
        Self {
            warmup_rounds: defaults::warmup_rounds(),
            rounds_between_events: defaults::rounds_between_events(),
            settle_rounds: defaults::settle_rounds(),
            reply_timeout_ms: defaults::reply_timeout_ms(),
            tcp_reply_timeout_ms: None,
            phase_timeout_ms: defaults::phase_timeout_ms(),
        }
    }
}

/// The most warm-up and settle rounds a run takes when it does not judge timing
/// ([`Capacity::Report`]): the long warm-up and settle of the release scenarios (45 and 40
/// rounds) exist to give the capacity dip and the reply gaps three judged seconds on each side
/// of a release; without judging, those rounds only cost time (under TCG, with the kernel
/// matrix's time scale of 5, about 40 s per variant). The counts need no more than this:
/// every flow has its owner before the warm-up starts, and new connections open from its end.
pub(crate) const UNJUDGED_ROUNDS: u64 = 5;

impl TimingSpec {
    /// The timing a run uses: as written when it judges timing, else with the warm-up and
    /// settle rounds capped at [`UNJUDGED_ROUNDS`].
    pub(crate) fn for_capacity(&self, capacity: Capacity) -> Self {
        match capacity {
            Capacity::Judge => self.clone(),
            Capacity::Report => Self {
                warmup_rounds: self.warmup_rounds.min(UNJUDGED_ROUNDS),
                settle_rounds: self.settle_rounds.min(UNJUDGED_ROUNDS),
                ..self.clone()
            },
        }
    }

    /// [`TimingSpec::reply_timeout_ms`] as a duration.
    pub(crate) fn reply_timeout(&self) -> Duration {
        Duration::from_millis(self.reply_timeout_ms)
    }

    /// [`TimingSpec::tcp_reply_timeout_ms`] (or the reply timeout) as a duration.
    pub(crate) fn tcp_reply_timeout(&self) -> Duration {
        Duration::from_millis(self.tcp_reply_timeout_ms.unwrap_or(self.reply_timeout_ms))
    }

    /// [`TimingSpec::phase_timeout_ms`] as a duration.
    pub(crate) fn phase_timeout(&self) -> Duration {
        Duration::from_millis(self.phase_timeout_ms)
    }
}

mod defaults {
    use zrlab_wire::quic::CidVersion;

    pub(super) fn tcp_port() -> u16 {
        8080
    }
    pub(super) fn udp_port() -> u16 {
        4433
    }
    pub(super) fn flows() -> u32 {
        200
    }
    pub(super) fn period_ms() -> u64 {
        100
    }
    pub(super) fn seed() -> u64 {
        1
    }
    pub(super) fn cid_version() -> CidVersion {
        CidVersion::V3
    }
    pub(super) fn warmup_rounds() -> u64 {
        2
    }
    pub(super) fn rounds_between_events() -> u64 {
        2
    }
    pub(super) fn settle_rounds() -> u64 {
        3
    }
    pub(super) fn reply_timeout_ms() -> u64 {
        1000
    }
    pub(super) fn phase_timeout_ms() -> u64 {
        30_000
    }
    pub(super) fn enabled() -> bool {
        true
    }
    pub(super) fn health_period_ms() -> u64 {
        100
    }
    pub(super) fn health_rise() -> u32 {
        2
    }
    pub(super) fn health_fall() -> u32 {
        3
    }
}

/// An event of the timeline.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(tag = "action", rename_all = "kebab-case", deny_unknown_fields)]
pub enum EventSpec {
    /// Take `member` out of `group` (its host counts as down from then on).
    RemoveMember {
        /// The group.
        group: String,
        /// The member node.
        member: String,
    },
    /// Point `member`'s slot of `group` at `with` (the member's host counts as down).
    ReplaceMember {
        /// The group.
        group: String,
        /// The member node leaving.
        member: String,
        /// The node taking its slot.
        with: String,
    },
    /// Add `member` at the end of `group`.
    AddMember {
        /// The group.
        group: String,
        /// The member node.
        member: String,
    },
    /// Take `backend` out of every LB node's rings (a health change: the backend stays up and
    /// keeps serving the flows the LBs' connection tables still send it; its server id stays
    /// live).
    DrainBackend {
        /// The backend node.
        backend: String,
    },
    /// Put a drained `backend` back into every LB node's rings (its slots come back to it).
    RestoreBackend {
        /// The backend node.
        backend: String,
    },
    /// Change `backend`'s weight in the LB configuration: every ring is rebuilt (plain
    /// Maglev). Weight 0 removes it from the configuration (its server id leaves the live
    /// table); from 0 to more, it joins.
    SetWeight {
        /// The backend node.
        backend: String,
        /// The new weight.
        weight: u32,
    },
    /// Release the service on `backends` (one batch, one after the other) by the variant's
    /// `[release]` strategy: a new process replaces the running one.
    Release {
        /// The backend nodes.
        backends: Vec<String>,
    },
    /// Kill `backend`'s host hard: every process in its cgroup SIGKILLed and its links set
    /// down, with no drain and no word to the LB. Its flows are excused from then on; only
    /// the LB nodes' health checkers (`[lb.health]`, required) can take it out of the rings.
    KillBackend {
        /// The backend node.
        backend: String,
    },
    /// Set seeded loss and duplication on a node's interfaces from here on: the fields of an
    /// `[[impair]]` entry (`node`, `ifname`, `drop_ppm`, `dup_ppm`, `direction`).
    ImpairLinks(ImpairSpec),
    /// Replace LB node `node`'s data path with version `to` (default `next`: `xdp_lb_next`,
    /// another connection-table layout) while traffic flows. With `handover` (the default) in
    /// place: maps handed over or migrated, the program swapped by a link update. With
    /// `handover = false`, as a naive deploy does (the control): fresh maps, the old program
    /// detached and the new one attached.
    UpgradeLb {
        /// The LB node.
        node: String,
        /// The version to run.
        #[serde(default = "next_version")]
        to: zrlab_control::lb::Version,
        /// In place (maps carried over) or naive (fresh maps).
        #[serde(default = "handover_default")]
        handover: bool,
    },
    /// Stop `backend`'s service process (SIGSTOP) for `ms` milliseconds, then let it go on
    /// (SIGCONT): a pause shorter than the drop timeout, which loses no request and shows only
    /// in latency and in the gaps between replies (`max_reply_gap_ms`).
    PauseBackend {
        /// The backend node.
        backend: String,
        /// How long, in milliseconds (1 to 10,000).
        ms: u64,
    },
}

fn next_version() -> zrlab_control::lb::Version {
    zrlab_control::lb::Version::Next
}

fn handover_default() -> bool {
    true
}

impl EventSpec {
    /// The nexthop-group change this event makes, if it is a group event.
    pub fn group_change(&self) -> Option<zrlab_topology::GroupChange> {
        use zrlab_topology::GroupChange;
        match self {
            Self::RemoveMember { group, member } => {
                Some(GroupChange::Remove { group: group.clone(), member: member.clone() })
            }
            Self::ReplaceMember { group, member, with } => {
                Some(GroupChange::Replace { group: group.clone(), member: member.clone(), with: with.clone() })
            }
            Self::AddMember { group, member } => {
                Some(GroupChange::Add { group: group.clone(), member: member.clone() })
            }
            Self::DrainBackend { .. }
            | Self::RestoreBackend { .. }
            | Self::SetWeight { .. }
            | Self::Release { .. }
            | Self::KillBackend { .. }
            | Self::ImpairLinks(_)
            | Self::UpgradeLb { .. }
            | Self::PauseBackend { .. } => None,
        }
    }

    /// The impairment this event sets, if it is an `impair-links`.
    pub fn impairment(&self) -> Option<&ImpairSpec> {
        match self {
            Self::ImpairLinks(spec) => Some(spec),
            _ => None,
        }
    }

    /// The node this event takes down, if any.
    pub fn takes_down(&self) -> Option<&str> {
        match self {
            Self::RemoveMember { member, .. } | Self::ReplaceMember { member, .. } => Some(member),
            Self::KillBackend { backend } => Some(backend),
            Self::AddMember { .. }
            | Self::DrainBackend { .. }
            | Self::RestoreBackend { .. }
            | Self::SetWeight { .. }
            | Self::Release { .. }
            | Self::ImpairLinks(_)
            | Self::UpgradeLb { .. }
            | Self::PauseBackend { .. } => None,
        }
    }
}

/// The XDP load balancer of a scenario: which nodes run it and how it balances the workload's
/// VIP (TCP and UDP ports) over the workload's backends.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LbSpec {
    /// LB nodes (role `lb`, one link each, towards the router).
    pub nodes: Vec<String>,
    /// The VIP's policy (`tcp_id_routing`, `ring_size`, ...: the keys of `VipOptions`).
    #[serde(flatten)]
    pub options: VipOptions,
    /// Backend weights (default 1).
    #[serde(default)]
    pub weights: BTreeMap<String, u32>,
    /// The LB nodes' health checks of the backends, if they run them.
    #[serde(default)]
    pub health: Option<HealthSpec>,
    /// Whether the LB nodes know the path MTU to each backend (from the topology's links: the
    /// smaller of the LB node's link and the backend's) and answer VIP packets too big for it
    /// with ICMP "too big" (default true). `false` is the control of the path-MTU scenarios:
    /// the packets go out and are lost further on.
    #[serde(default = "defaults::enabled")]
    pub too_big_answers: bool,
}

/// `[mtu]`: the scenario's link MTUs, over the topology's (a veth link without one has 1500).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtuSpec {
    /// The MTU of every link of an LB node or a backend: the LB-to-backend path.
    pub tunnels: Option<u32>,
    /// The MTU of every link of these nodes (applied after `tunnels`).
    #[serde(default)]
    pub nodes: BTreeMap<String, u32>,
}

/// The LB nodes' health checks (`zrlab_control::lb::health`): each LB node probes every
/// backend through the tunnel every `period_ms`, takes it out of its own rings after `fall`
/// failed probes in a row and back in after `rise` answered ones.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSpec {
    /// Whether the checkers run. A control turns them off and keeps the timing, by which
    /// the window a dying backend is excused in is judged (`HealthSpec::detection_budget`).
    #[serde(default = "defaults::enabled")]
    pub enabled: bool,
    /// The probe period (10 to 5,000 ms; default 100).
    #[serde(default = "defaults::health_period_ms")]
    pub period_ms: u64,
    /// Answered probes in a row that bring a backend back (1 to 100; default 2).
    #[serde(default = "defaults::health_rise")]
    pub rise: u32,
    /// Failed probes in a row that take a backend out (1 to 100; default 3).
    #[serde(default = "defaults::health_fall")]
    pub fall: u32,
}

impl HealthSpec {
    /// The checkers' policy, every duration stretched by `scale` (`RunOptions::time_scale`).
    pub fn policy(&self, scale: u32) -> HealthPolicy {
        HealthPolicy { period: Duration::from_millis(self.period_ms) * scale.max(1), rise: self.rise, fall: self.fall }
    }

    fn invalid(&self) -> Option<(&'static str, String)> {
        if !(10..=5000).contains(&self.period_ms) {
            return Some((".period_ms", format!("{} is not between 10 and 5000", self.period_ms)));
        }
        for (field, value) in [(".rise", self.rise), (".fall", self.fall)] {
            if !(1..=100).contains(&value) {
                return Some((field, format!("{value} is not between 1 and 100")));
            }
        }
        None
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VariantSpec {
    #[serde(default)]
    description: String,
    topology: PathBuf,
    #[serde(default)]
    groups: BTreeMap<String, GroupOverride>,
    #[serde(default)]
    mtu: MtuSpec,
    workload: WorkloadSpec,
    #[serde(default, rename = "event")]
    events: Vec<EventSpec>,
    #[serde(default)]
    timing: TimingSpec,
    #[serde(default)]
    lb: Option<LbSpec>,
    #[serde(default)]
    tpr: Option<TprSpec>,
    #[serde(default)]
    release: Option<ReleaseSpec>,
    #[serde(default, rename = "impair")]
    impair: Vec<ImpairSpec>,
    // Keyed by text and converted after: serde_path_to_error cannot name enum map keys, and the
    // error must say which expectation is wrong.
    expect: BTreeMap<String, Comparison>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    #[serde(default)]
    requires: Vec<Feature>,
    #[serde(default = "defaults::enabled")]
    default: bool,
}

/// One runnable variant (main or control), fully resolved.
#[derive(Clone, Debug)]
pub struct Variant {
    /// What this variant shows.
    pub description: String,
    /// The topology, with the variant's group overrides applied.
    pub topology: Topology,
    /// The workload.
    pub workload: WorkloadSpec,
    /// The timeline.
    pub events: Vec<EventSpec>,
    /// Pacing.
    pub timing: TimingSpec,
    /// The XDP load balancer, if the scenario runs one.
    pub lb: Option<LbSpec>,
    /// The server-id sock_ops programs, if the scenario attaches them.
    pub tpr: Option<TprSpec>,
    /// How `release` events release a backend's service, if the scenario has them.
    pub release: Option<ReleaseSpec>,
    /// Lossy links from the start (`[[impair]]`).
    pub impair: Vec<ImpairSpec>,
    /// Expectations.
    pub expect: BTreeMap<Metric, Comparison>,
}

/// A scenario file.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// The file.
    pub file: PathBuf,
    /// The scenario's name (the file stem).
    pub name: String,
    /// Kernel features it needs.
    pub requires: Vec<Feature>,
    /// Whether `zrlab` runs it by default.
    pub default: bool,
    /// The run with the fix.
    pub main: Variant,
    /// The run without it.
    pub control: Variant,
}

/// Keys of a scenario file that are not part of a variant.
const FILE_KEYS: [&str; 3] = ["requires", "default", "control"];

impl Scenario {
    /// Reads and validates a scenario file (and its topology).
    pub fn load(path: &Path) -> Result<Self, SpecError> {
        let mut table = read_table(path)?;
        let mut file_table = toml::Table::new();
        for key in FILE_KEYS {
            if let Some(value) = table.remove(key) {
                file_table.insert(key.to_owned(), value);
            }
        }
        let control_table = match file_table.remove("control") {
            Some(toml::Value::Table(control)) => control,
            Some(_) => return Err(SpecError::new(path, "control", "must be a table")),
            None => {
                return Err(SpecError::new(
                    path,
                    "control",
                    "missing: every scenario needs a [control] run that shows the failure without the fix",
                ));
            }
        };
        if !control_table.contains_key("expect") {
            return Err(SpecError::new(
                path,
                "control.expect",
                "missing: the control must state what failure it shows",
            ));
        }
        let file: FileSpec = from_table(path, "", file_table)?;
        let main_spec: VariantSpec = from_table(path, "", table.clone())?;
        let mut merged = table;
        merge(&mut merged, control_table);
        let control_spec: VariantSpec = from_table(path, "control", merged)?;
        let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("scenario").to_owned();
        let main = resolve(path, "", main_spec)?;
        let control = resolve(path, "control.", control_spec)?;
        // A release strategy brings the kernel features it needs.
        let mut requires = file.requires;
        // Lossy links need TCX: a kernel without it skips the scenario, naming it.
        let impairs = |v: &Variant| !v.impair.is_empty() || v.events.iter().any(|e| e.impairment().is_some());
        if (impairs(&main) || impairs(&control)) && !requires.contains(&Feature::Tcx) {
            requires.push(Feature::Tcx);
        }
        for release in [&main.release, &control.release].into_iter().flatten() {
            for feature in release.strategy.requires() {
                if !requires.contains(feature) {
                    requires.push(*feature);
                }
            }
        }
        Ok(Self { file: path.to_owned(), name, requires, default: file.default, main, control })
    }
}

/// Merges `over` into `base` one level deep: top-level tables (`workload`, `timing`, `groups`)
/// merge key by key; their entries, `expect` and every other value are replaced whole. (So a
/// control that says `groups.vip = { type = "hash-threshold" }` means that group as written,
/// not the main variant's bucket count on top.)
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) if key != "expect" => b.extend(o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

fn resolve(path: &Path, prefix: &str, spec: VariantSpec) -> Result<Variant, SpecError> {
    let err = |field: String, message: String| SpecError::new(path, format!("{prefix}{field}"), message);
    let topology_path = path.parent().unwrap_or(Path::new(".")).join(&spec.topology);
    let topology_path = topology_path.canonicalize().unwrap_or(topology_path);
    let mut topology_table = read_table(&topology_path).map_err(|e| match e.field.as_str() {
        "(file)" => err("topology".into(), format!("{}: {}", spec.topology.display(), e.message)),
        // A syntax error inside the topology file is reported against that file.
        _ => e,
    })?;
    apply_group_overrides(&mut topology_table, &spec.groups)
        .map_err(|(group, message)| err(format!("groups.{group}"), message))?;
    apply_mtu_overrides(&mut topology_table, &spec.mtu)
        .map_err(|(field, message)| err(format!("mtu{field}"), message))?;
    let topology = Topology::from_table(&topology_path, topology_table)?;

    let w = &spec.workload;
    let role_of = |name: &str| topology.node(name).map(|n| n.role);
    match role_of(&w.client) {
        Some(Role::Client) => {}
        Some(role) => {
            return Err(err("workload.client".into(), format!("{:?} is a {role} node, not a client", w.client)));
        }
        None => {
            return Err(err(
                "workload.client".into(),
                format!("no node {:?} in {}", w.client, topology_path.display()),
            ));
        }
    }
    if w.backends.is_empty() {
        return Err(err("workload.backends".into(), "at least one backend is needed".into()));
    }
    for (i, backend) in w.backends.iter().enumerate() {
        match role_of(backend) {
            Some(Role::Backend) => {}
            Some(role) => {
                return Err(err(
                    format!("workload.backends[{i}]"),
                    format!("{backend:?} is a {role} node, not a backend"),
                ));
            }
            None => {
                return Err(err(
                    format!("workload.backends[{i}]"),
                    format!("no node {backend:?} in {}", topology_path.display()),
                ));
            }
        }
    }
    if w.tcp_flows + w.udp_flows == 0 {
        return Err(err("workload".into(), "no flows: set tcp_flows or udp_flows".into()));
    }
    // Source ports are allocated per flow from fixed bases (see workload::client).
    if w.tcp_flows > 20_000 || w.udp_flows > 20_000 {
        return Err(err("workload".into(), "at most 20000 flows of each kind".into()));
    }
    if w.period_ms == 0 {
        return Err(err("workload.period_ms".into(), "must be at least 1".into()));
    }
    if w.tcp_port == 0 || w.udp_port == 0 {
        return Err(err("workload".into(), "ports must be non-zero".into()));
    }
    // Replay the timeline on the groups' member lists, so an event that names a node that is
    // not (or no longer) a member fails here, not halfway through a run.
    let mut members: BTreeMap<&str, Vec<&str>> = topology
        .spec
        .groups
        .iter()
        .map(|g| (g.name.as_str(), g.members.iter().map(String::as_str).collect()))
        .collect();
    // The LB's weights and drains through the timeline, so that no event leaves the rings empty.
    let mut weights: BTreeMap<&str, u32> = BTreeMap::new();
    if let Some(lb) = &spec.lb {
        weights = w.backends.iter().map(|b| (b.as_str(), lb.weights.get(b).copied().unwrap_or(1))).collect();
    }
    let mut drained: Vec<&str> = Vec::new();
    for (i, event) in spec.events.iter().enumerate() {
        let field = format!("event[{i}]");
        let (group, leaving, joining) = match event {
            EventSpec::Release { backends } => {
                let Some(release) = &spec.release else {
                    return Err(err(field, "release events need a [release] section".into()));
                };
                if release.strategy.uses_lb() && spec.lb.is_none() {
                    return Err(err(
                        "release.strategy".into(),
                        "drain takes backends out of the LB's rings: it needs an [lb] section".into(),
                    ));
                }
                if backends.is_empty() {
                    return Err(err(format!("{field}.backends"), "at least one backend".into()));
                }
                for (j, backend) in backends.iter().enumerate() {
                    if !w.backends.contains(backend) {
                        return Err(err(
                            format!("{field}.backends[{j}]"),
                            format!("{backend:?} is not one of the workload's backends"),
                        ));
                    }
                }
                continue;
            }
            EventSpec::KillBackend { backend } => {
                if spec.lb.as_ref().is_none_or(|lb| lb.health.is_none()) {
                    return Err(err(
                        field,
                        "kill-backend needs [lb.health] (enabled or not): its timing bounds the window the \
                         dying backend's new flows are excused in"
                            .into(),
                    ));
                }
                if !w.backends.contains(backend) {
                    return Err(err(
                        format!("{field}.backend"),
                        format!("{backend:?} is not one of the workload's backends"),
                    ));
                }
                continue;
            }
            EventSpec::ImpairLinks(impair) => {
                if let Some((f, why)) = impair.invalid(&topology) {
                    return Err(err(format!("{field}.{f}"), why));
                }
                continue;
            }
            EventSpec::UpgradeLb { node, .. } => {
                if !spec.lb.as_ref().is_some_and(|lb| lb.nodes.contains(node)) {
                    return Err(err(format!("{field}.node"), format!("{node:?} is not one of the [lb] nodes")));
                }
                continue;
            }
            EventSpec::PauseBackend { backend, ms } => {
                if !w.backends.contains(backend) {
                    return Err(err(
                        format!("{field}.backend"),
                        format!("{backend:?} is not one of the workload's backends"),
                    ));
                }
                if !(1..=10_000).contains(ms) {
                    return Err(err(format!("{field}.ms"), format!("{ms} is not between 1 and 10000")));
                }
                continue;
            }
            EventSpec::RemoveMember { group, member } => (group, Some(member), None),
            EventSpec::AddMember { group, member } => (group, None, Some(member)),
            EventSpec::ReplaceMember { group, member, with } => (group, Some(member), Some(with)),
            EventSpec::DrainBackend { backend }
            | EventSpec::RestoreBackend { backend }
            | EventSpec::SetWeight { backend, .. } => {
                if spec.lb.is_none() {
                    return Err(err(field, "LB events need an [lb] section".into()));
                }
                if !w.backends.contains(backend) {
                    return Err(err(
                        format!("{field}.backend"),
                        format!("{backend:?} is not one of the workload's backends"),
                    ));
                }
                match event {
                    EventSpec::SetWeight { weight, .. } => {
                        weights.insert(backend, *weight);
                    }
                    EventSpec::RestoreBackend { .. } => drained.retain(|b| b != backend),
                    _ => drained.push(backend),
                }
                if !weights.iter().any(|(b, weight)| *weight > 0 && !drained.contains(b)) {
                    return Err(err(field, "the event would leave no backend in the rings".into()));
                }
                continue;
            }
        };
        let (Some(group_spec), Some(current)) = (topology.group(group), members.get_mut(group.as_str())) else {
            return Err(err(format!("{field}.group"), format!("no group {group:?} in {}", topology_path.display())));
        };
        if let Some(node) = leaving {
            let Some(slot) = current.iter().position(|m| m == node) else {
                return Err(err(field, format!("{node:?} is not a member of group {group:?} at this point")));
            };
            current.remove(slot);
        }
        if let Some(node) = joining {
            if topology.gateway(&group_spec.node, node, group_spec.family).is_none() {
                return Err(err(
                    field,
                    format!("{node:?} is not a neighbour of {:?}, so it cannot join group {group:?}", group_spec.node),
                ));
            }
            current.push(node);
        }
        if current.is_empty() {
            return Err(err(field, format!("the event would leave group {group:?} empty")));
        }
    }
    if let Some(lb) = &spec.lb {
        validate_lb(lb, w, &topology).map_err(|(f, m)| err(format!("lb{f}"), m))?;
    }
    for (i, impair) in spec.impair.iter().enumerate() {
        if let Some((field, why)) = impair.invalid(&topology) {
            return Err(err(format!("impair[{i}].{field}"), why));
        }
    }
    if spec.expect.is_empty() {
        return Err(err("expect".into(), "at least one expectation is needed".into()));
    }
    if w.upload_bytes > zrlab_wire::message::MAX_UPLOAD {
        return Err(err(
            "workload.upload_bytes".into(),
            format!("{} is above {}", w.upload_bytes, zrlab_wire::message::MAX_UPLOAD),
        ));
    }
    if w.open_tcp_per_period > 0 && w.tcp_flows >= 20_000 {
        return Err(err("workload.open_tcp_per_period".into(), "no TCP ports left for new flows".into()));
    }
    let mut expectations = BTreeMap::new();
    for (key, comparison) in spec.expect {
        let metric = Metric::deserialize(serde::de::value::StrDeserializer::<serde::de::value::Error>::new(&key))
            .map_err(|e| err(format!("expect.{key}"), e.to_string().replace("variant", "metric")))?;
        if metric.needs_lb() && spec.lb.is_none() {
            return Err(err(format!("expect.{key}"), "this metric needs an [lb] section".into()));
        }
        if metric.needs_tpr() && spec.tpr.is_none() {
            return Err(err(format!("expect.{key}"), "this metric needs a [tpr] section".into()));
        }
        if metric.needs_release() && spec.release.is_none() {
            return Err(err(format!("expect.{key}"), "this metric needs a [release] section".into()));
        }
        expectations.insert(metric, comparison);
    }
    // A control must show a failure: an expectation that a failure count is above zero.
    if prefix == "control."
        && !expectations.iter().any(|(metric, comparison)| metric.is_failure() && comparison.requires_positive())
    {
        return Err(err(
            "expect".into(),
            "a control must expect a failure: resets, misroutes, drops (or their excused_ forms, or \
             late_flows_on_drained) above zero, e.g. resets = \"> 0\""
                .into(),
        ));
    }
    Ok(Variant {
        description: spec.description,
        topology,
        workload: spec.workload,
        events: spec.events,
        timing: spec.timing,
        lb: spec.lb,
        tpr: spec.tpr,
        release: spec.release,
        impair: spec.impair,
        expect: expectations,
    })
}

fn validate_lb(lb: &LbSpec, w: &WorkloadSpec, topology: &Topology) -> Result<(), (String, String)> {
    if lb.nodes.is_empty() {
        return Err((".nodes".into(), "at least one LB node is needed".into()));
    }
    for (i, node) in lb.nodes.iter().enumerate() {
        match topology.node(node).map(|n| n.role) {
            Some(Role::Lb) => {}
            Some(role) => return Err((format!(".nodes[{i}]"), format!("{node:?} is a {role} node, not an lb"))),
            None => return Err((format!(".nodes[{i}]"), format!("no node {node:?} in the topology"))),
        }
        let links = topology.spec.links.iter().filter(|l| l.a.node == *node || l.b.node == *node).count();
        if links != 1 {
            return Err((
                format!(".nodes[{i}]"),
                format!("{node:?} has {links} links; an LB node has exactly one, to the router"),
            ));
        }
    }
    for name in lb.weights.keys() {
        if !w.backends.contains(name) {
            return Err((format!(".weights.{name}"), format!("{name:?} is not one of the workload's backends")));
        }
    }
    if !w.backends.iter().any(|b| lb.weights.get(b).copied().unwrap_or(1) > 0) {
        return Err((".weights".into(), "every backend has weight 0".into()));
    }
    if let Some(why) = lb.options.invalid() {
        return Err((".ring_size".into(), why));
    }
    if let Some((field, why)) = lb.health.as_ref().and_then(HealthSpec::invalid) {
        return Err((format!(".health{field}"), why));
    }
    Ok(())
}

/// Applies `[mtu]` to a topology table's links; errors name the field.
fn apply_mtu_overrides(topology: &mut toml::Table, mtu: &MtuSpec) -> Result<(), (String, String)> {
    const RANGE: std::ops::RangeInclusive<u32> = 576..=9_000;
    if let Some(m) = mtu.tunnels.filter(|m| !RANGE.contains(m)) {
        return Err((".tunnels".into(), format!("{m} is not between 576 and 9000")));
    }
    let roles: BTreeMap<String, String> = topology
        .get("node")
        .and_then(toml::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|n| Some((n.get("name")?.as_str()?.to_owned(), n.get("role")?.as_str()?.to_owned())))
        .collect();
    for (node, m) in &mtu.nodes {
        if !roles.contains_key(node) {
            return Err((format!(".nodes.{node}"), format!("no node {node:?} in the topology")));
        }
        if !RANGE.contains(m) {
            return Err((format!(".nodes.{node}"), format!("{m} is not between 576 and 9000")));
        }
    }
    let links = topology.get_mut("link").and_then(toml::Value::as_array_mut).into_iter().flatten();
    for link in links.filter_map(toml::Value::as_table_mut) {
        let ends: Vec<String> =
            ["a", "b"].iter().filter_map(|end| Some(link.get(*end)?.get("node")?.as_str()?.to_owned())).collect();
        let tunnel = ends.iter().any(|n| matches!(roles.get(n).map(String::as_str), Some("lb" | "backend")));
        if let (Some(m), true) = (mtu.tunnels, tunnel) {
            link.insert("mtu".into(), i64::from(m).into());
        }
        for (node, m) in &mtu.nodes {
            if ends.contains(node) {
                link.insert("mtu".into(), i64::from(*m).into());
            }
        }
    }
    Ok(())
}

/// Applies `[groups.<name>]` overrides to a topology table; errors name the group.
fn apply_group_overrides(
    topology: &mut toml::Table,
    overrides: &BTreeMap<String, GroupOverride>,
) -> Result<(), (String, String)> {
    for (name, over) in overrides {
        let groups = topology.get_mut("group").and_then(toml::Value::as_array_mut);
        let group = groups.and_then(|groups| {
            groups
                .iter_mut()
                .filter_map(toml::Value::as_table_mut)
                .find(|g| g.get("name").and_then(toml::Value::as_str) == Some(name))
        });
        let Some(group) = group else {
            return Err((name.clone(), format!("the topology has no group {name:?}")));
        };
        if let Some(kind) = over.kind {
            let text = match kind {
                GroupType::HashThreshold => "hash-threshold",
                GroupType::Resilient => "resilient",
            };
            group.insert("type".into(), text.into());
            if kind == GroupType::HashThreshold {
                group.remove("buckets");
            }
        }
        if let Some(buckets) = over.buckets {
            group.insert("buckets".into(), i64::from(buckets).into());
        }
    }
    Ok(())
}
