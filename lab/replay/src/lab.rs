//! Replay into the lab (`cargo xtask lab replay FILE.pcap [--scenario FILE] [--speed X | --top]`):
//! a trace's frames are sent from the client node towards the router, through the lab's ECMP
//! router, XDP LB nodes and decapsulating backends, with the replay's events (LB node loss, ring
//! changes) applied at chosen packet numbers, and captured at every hop.
//!
//! What is replayed as recorded, and what answers: every frame goes out of the client's
//! interface as the trace has it (MAC addresses rewritten for the lab's link, client addresses
//! mapped, below); the router, the LB nodes and the backends' decapsulation handle it as they
//! would live traffic. The backends run the lab's service on the configuration's UDP VIPs: it
//! answers every QUIC-like request (an Initial with a connection id of its own, a short header
//! as known or not) and names its socket (node, instance, pid) in the reply, which the client
//! capture holds: the **service socket** each UDP flow reached. TCP is not served: a replayed
//! segment cannot belong to a socket (its sequence numbers are the trace's), so the backends'
//! stacks answer with resets, which nothing judges. The verdicts are made where the replay is
//! exact: which LB node, which backend and (UDP) which socket each packet reached.
//!
//! Addresses: a trace client address inside the client link's subnet is kept; any other is
//! mapped, in order of first appearance, to host addresses of that subnet from `.10` on (the
//! mapping is printed and in the report). Destinations are kept: the replay's LB configuration
//! names the VIPs, and a trace recorded against another address needs a configuration with it.
//! A mapped IPv4 packet gets its header and transport checksums recomputed.
//!
//! Captures (`target/lab/replay/`): `router-in.pcap` (the router's interface towards the client:
//! what the replay sent), `lb-out-<node>.pcap` (the router's interface towards each LB node:
//! what the node sent back, encapsulated), `backend-in-<node>.pcap` (each backend's interface,
//! after decapsulation), `client-in.pcap` (what came back to the client).
//!
//! Verdict per flow: the LB nodes and the backends its packets reached, in order; a flow whose
//! packets reached more than one backend while its backends stayed up is **split**, and the
//! report lists, for each capture, the frame numbers of its packets there.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{
    config::LbConfig,
    offline::{flow_of, outer_destination},
};
use zrlab_control::{lb::RealSpec, server_id::Registry};
use zrlab_host::{
    capture::{Capture, Frame, Injector},
    error::{LabError, Result},
    toml_file::{SpecError, from_table, read_table},
};
use zrlab_scenario::{lb::Deployment, runner::apply, spec::EventSpec};
use zrlab_topology::{Lab, Topology};

/// How fast the trace is replayed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pacing {
    /// At the recorded pacing divided by this factor (1: as recorded).
    Speed(f64),
    /// As fast as the injector sends.
    Top,
}

/// An event at a packet number: applied right after that frame was sent.
#[derive(Clone, Debug, Serialize)]
pub struct TimedEvent {
    /// 1-based frame number of the trace.
    pub at_packet: usize,
    /// The event (the scenario timeline's actions).
    pub event: EventSpec,
}

/// A replay scenario (`fixtures/replay/*.toml`).
///
/// ```toml
/// description = "..."
/// topology = "../topologies/lb-ecmp.toml"   # relative to this file
/// client = "client"
/// lb_nodes = ["lb1", "lb2", "lb3"]
/// config = "../lb/replay.toml"              # the LB configuration (`replay::config`)
///
/// [[event]]
/// at_packet = 60                            # after the 60th frame was sent
/// action = "remove-member"
/// group = "lbs"
/// member = "lb1"
/// ```
#[derive(Clone, Debug)]
pub struct ReplaySpec {
    /// The file.
    pub file: PathBuf,
    /// What the replay shows.
    pub description: String,
    /// The topology.
    pub topology: Topology,
    /// The node the trace is sent from.
    pub client: String,
    /// The LB nodes.
    pub lb_nodes: Vec<String>,
    /// The LB configuration.
    pub config: LbConfig,
    /// Events, by packet number.
    pub events: Vec<TimedEvent>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    #[serde(default)]
    description: String,
    topology: PathBuf,
    client: String,
    lb_nodes: Vec<String>,
    config: PathBuf,
}

impl ReplaySpec {
    /// Reads and validates a replay scenario file (and its topology and LB configuration).
    pub fn load(path: &Path) -> Result<Self, SpecError> {
        let mut table = read_table(path)?;
        let events = match table.remove("event") {
            None => Vec::new(),
            Some(toml::Value::Array(events)) => events,
            Some(_) => return Err(SpecError::new(path, "event", "must be an array of tables ([[event]])")),
        };
        let file: FileSpec = from_table(path, "", table)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let topology = Topology::load(&dir.join(&file.topology))
            .map_err(|e| SpecError::new(path, "topology", format!("{}: {}", file.topology.display(), e.message)))?;
        let config = LbConfig::load(&dir.join(&file.config))?;
        let role = |node: &str| topology.node(node).map(|n| n.role);
        if role(&file.client) != Some(zrlab_topology::Role::Client) {
            return Err(SpecError::new(path, "client", format!("{:?} is no client node of the topology", file.client)));
        }
        for (i, node) in file.lb_nodes.iter().enumerate() {
            if role(node) != Some(zrlab_topology::Role::Lb) {
                return Err(SpecError::new(path, format!("lb_nodes[{i}]"), format!("{node:?} is no LB node")));
            }
        }
        let mut timed = Vec::new();
        for (i, event) in events.into_iter().enumerate() {
            let field = format!("event[{i}]");
            let toml::Value::Table(mut event) = event else {
                return Err(SpecError::new(path, field, "must be a table"));
            };
            let at_packet = match event.remove("at_packet") {
                Some(toml::Value::Integer(n)) if n >= 1 => n as usize,
                Some(_) => {
                    return Err(SpecError::new(path, format!("{field}.at_packet"), "must be a packet number from 1"));
                }
                None => return Err(SpecError::new(path, format!("{field}.at_packet"), "missing: after which packet")),
            };
            let event: EventSpec = from_table(path, &format!("{field}."), event)?;
            if matches!(event, EventSpec::Release { .. }) {
                return Err(SpecError::new(path, format!("{field}.action"), "a replay runs no service to release"));
            }
            timed.push(TimedEvent { at_packet, event });
        }
        timed.sort_by_key(|e| e.at_packet);
        Ok(Self {
            file: path.to_owned(),
            description: file.description,
            topology,
            client: file.client,
            lb_nodes: file.lb_nodes,
            config,
            events: timed,
        })
    }
}

/// One flow's path through the lab.
#[derive(Clone, Debug, Serialize)]
pub struct LabFlow {
    /// As the offline replay names flows (`tcp 198.51.100.2:20000 > 203.0.113.10:8080`).
    pub flow: String,
    /// LB nodes that sent its packets on.
    pub lb_nodes: Vec<String>,
    /// Backends its packets reached, in order of first arrival.
    pub backends: Vec<String>,
    /// The reals the LB nodes sent its packets to, in order (the outer destinations).
    pub reals: Vec<IpAddr>,
    /// The service sockets that answered it (UDP: node/instance[pid] from the replies), in
    /// order of first reply.
    pub sockets: Vec<String>,
    /// Whether it reached more than one backend while they stayed up (or, UDP, was answered by
    /// more than one service socket).
    pub split: bool,
    /// Per capture file, the frame numbers (1-based) of its packets there (at most 40 each).
    pub frames: BTreeMap<String, Vec<usize>>,
}

/// One capture of a lab replay.
#[derive(Clone, Debug, Serialize)]
pub struct CaptureFile {
    /// Its file, in the replay's output directory.
    pub file: String,
    /// Frames it holds.
    pub frames: usize,
    /// Frames the kernel dropped before the capture read them.
    pub dropped: u64,
}

/// A whole lab replay.
#[derive(Clone, Debug, Serialize)]
pub struct LabReplay {
    /// The trace.
    pub trace: String,
    /// The replay scenario.
    pub scenario: String,
    /// Trace client address -> lab address, for the addresses that were mapped.
    pub mapping: Vec<(IpAddr, IpAddr)>,
    /// Frames sent.
    pub frames_sent: usize,
    /// Events applied, with the packet number after which each was.
    pub events: Vec<TimedEvent>,
    /// Every capture.
    pub captures: Vec<CaptureFile>,
    /// Per flow, in order of first arrival at an LB node's output.
    pub flows: Vec<LabFlow>,
    /// The run prefix of a kept lab.
    pub kept: Option<String>,
}

impl LabReplay {
    /// Flows split between backends.
    pub fn split_flows(&self) -> usize {
        self.flows.iter().filter(|f| f.split).count()
    }

    /// Why the replay cannot be judged, if it cannot: no flow reached an LB node's output, or a
    /// capture lost frames (a split could hide in what it did not see).
    pub fn not_judged(&self) -> Option<String> {
        let lost: u64 = self.captures.iter().map(|c| c.dropped).sum();
        if lost > 0 {
            let which: Vec<&str> = self.captures.iter().filter(|c| c.dropped > 0).map(|c| c.file.as_str()).collect();
            return Some(format!("the captures lost {lost} frames ({}): the flows cannot be judged", which.join(", ")));
        }
        self.flows.is_empty().then(|| "nothing to judge: no flow reached an LB node's output".to_owned())
    }

    /// The report in Markdown (also the terminal's summary).
    pub fn markdown(&self) -> String {
        use std::fmt::Write as _;
        let mut out = format!(
            "# Lab replay\n\nTrace `{}`, scenario `{}`: {} frames sent, {} flows at the LB nodes' output, {} split\n\n",
            self.trace,
            self.scenario,
            self.frames_sent,
            self.flows.len(),
            self.split_flows()
        );
        if let Some(why) = self.not_judged() {
            let _ = writeln!(out, "**Not judged**: {why}.\n");
        }
        if self.mapping.is_empty() {
            out.push_str("Addresses: the trace's client addresses are the lab's (no mapping).\n");
        } else {
            out.push_str("Addresses mapped (trace -> lab):\n");
            for (from, to) in &self.mapping {
                let _ = writeln!(out, "- {from} -> {to}");
            }
        }
        for e in &self.events {
            let _ = writeln!(out, "- after packet {}: {}", e.at_packet, zrlab_scenario::runner::describe(&e.event));
        }
        out.push_str("\nCaptures:\n");
        for c in &self.captures {
            let lost = if c.dropped > 0 {
                format!(", **{} lost** (the kernel dropped them)", c.dropped)
            } else {
                String::new()
            };
            let _ = writeln!(out, "- `{}`: {} frames{lost}", c.file, c.frames);
        }
        if let Some(prefix) = &self.kept {
            let _ = writeln!(
                out,
                "\nKept: the lab runs on as `{prefix}-<node>` (`ip netns exec {prefix}-client bash`); its data path is \
                 held by a keeper process: `cargo xtask lab status`, `cargo xtask lab event ...`, `cargo xtask lab clean`."
            );
        }
        out.push_str("\nFlows:\n");
        for f in &self.flows {
            let _ = write!(out, "- {}: LB {}; backends {}", f.flow, f.lb_nodes.join(", "), f.backends.join(" then "));
            if !f.sockets.is_empty() {
                let _ = write!(out, "; sockets {}", f.sockets.join(" then "));
            }
            if f.split {
                out.push_str(" **SPLIT**; frames:");
                for (capture, frames) in &f.frames {
                    let _ = write!(out, " `{capture}` {frames:?}");
                }
            }
            out.push('\n');
        }
        out
    }
}

/// How long the captures must stay quiet before the replay counts as finished.
const QUIET: Duration = Duration::from_millis(300);
/// The longest wait for that.
const SETTLE_LIMIT: Duration = Duration::from_secs(15);

/// How a lab replay runs.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// How fast.
    pub pacing: Pacing,
    /// Where the captures go.
    pub out: PathBuf,
    /// The `zrlab` binary the backends' services (and a kept run's keeper) are started from.
    pub service_exe: PathBuf,
    /// Leave the topology, the services and the data path up afterwards (held by a keeper
    /// process, as a kept scenario run: `lab status`, `lab event`, `lab clean`).
    pub keep: bool,
}

/// Replays `frames` (read from `trace`) in a fresh lab built from `spec`; reports `progress`.
pub async fn run(
    trace: &Path,
    frames: &[Frame],
    spec: &ReplaySpec,
    opts: &RunOptions,
    progress: &mut dyn FnMut(String),
) -> Result<LabReplay> {
    let (pacing, out) = (opts.pacing, opts.out.as_path());
    spec.config.require_vip_frames(trace, frames)?;
    if let Some(e) = spec.events.iter().find(|e| e.at_packet > frames.len()) {
        return Err(LabError::Usage(format!(
            "{}: an event is at packet {}, but the trace has {} frames",
            spec.file.display(),
            e.at_packet,
            frames.len()
        )));
    }
    progress("building topology".into());
    let mut lab = Lab::build(&spec.topology, opts.keep).await?;
    let mut deployment = deploy(&lab, spec)?;
    // Lossy links an `impair-links` event sets; dropped before the lab.
    let mut impairments = zrlab_scenario::impair::Impairments::new(1);
    progress("starting the backends' services".into());
    let udp: Vec<String> = spec
        .config
        .vips()
        .iter()
        .filter(|(v, _)| v.proto == zrlab_wire::Proto::Udp)
        .map(|(v, _)| format!("--udp={}", std::net::SocketAddr::new(v.addr, v.port)))
        .collect();
    let mut services = Vec::new();
    if !udp.is_empty() {
        let mut served: Vec<String> = Vec::new();
        for (backend, addr) in backend_nodes(spec) {
            if served.contains(&backend) || spec.config.vips().iter().all(|(_, r)| r.iter().all(|r| r.addr != addr)) {
                continue;
            }
            served.push(backend.clone());
            let mut args = vec!["service".to_owned(), format!("--node={backend}")];
            args.extend(udp.iter().cloned());
            services.push((backend, args));
        }
    }
    let _fleet =
        zrlab_scenario::release::Fleet::start(&mut lab, None, &opts.service_exe, services, Duration::from_secs(30))
            .await?;
    let topology = spec.topology.clone();
    let link_of = |node: &str| link_ends(&topology, node);
    let (client_end, router_end) = link_of(&spec.client)
        .first()
        .copied()
        .ok_or_else(|| LabError::Usage(format!("{} has no link", spec.client)))?;
    // The captures: name, node, interface.
    let mut taps = vec![("router-in".to_owned(), router_end.node.clone(), router_end.ifname.clone())];
    for node in &spec.lb_nodes {
        if let Some((_, peer)) = link_of(node).first() {
            taps.push((format!("lb-out-{node}"), peer.node.clone(), peer.ifname.clone()));
        }
    }
    let backends = backend_nodes(spec);
    for (backend, _) in &backends {
        for (mine, _) in link_of(backend) {
            taps.push((format!("backend-in-{backend}"), backend.clone(), mine.ifname.clone()));
        }
    }
    taps.push(("client-in".to_owned(), spec.client.clone(), client_end.ifname.clone()));
    let mut captures = Vec::new();
    for (name, node, ifname) in &taps {
        captures.push((name.clone(), Capture::start(&lab.node(node)?.netns, ifname)?));
    }
    let injector = Injector::open(&lab.node(&spec.client)?.netns, &client_end.ifname)?;
    let client_mac = mac_of(&lab, &spec.client, &client_end.ifname)?;
    let router_mac = mac_of(&lab, &router_end.node, &router_end.ifname)?;
    let subnet = client_end.addrs.iter().find(|a| a.addr().is_ipv4()).copied();
    let mut mapper = Mapper::new(subnet, client_end.addrs.iter().map(|a| a.addr()).collect());

    progress(format!("sending {} frames", frames.len()));
    let started = tokio::time::Instant::now();
    let first = frames.first().map(|f| f.at).unwrap_or_default();
    let mut events = spec.events.iter().peekable();
    for (i, frame) in frames.iter().enumerate() {
        if let Pacing::Speed(factor) = pacing {
            let due = started + frame.at.saturating_sub(first).div_f64(factor.max(f64::MIN_POSITIVE));
            tokio::time::sleep_until(due).await;
        }
        let mut data = mapper.map(&frame.data);
        if data.len() >= 12 {
            data[0..6].copy_from_slice(&router_mac);
            data[6..12].copy_from_slice(&client_mac);
        }
        injector.send(&data)?;
        while let Some(event) = events.next_if(|e| e.at_packet == i + 1) {
            progress(format!("after packet {}: {}", event.at_packet, zrlab_scenario::runner::describe(&event.event)));
            apply(&mut lab, Some(&mut deployment), &mut impairments, &event.event).await?;
        }
    }
    progress("waiting for the lab to go quiet".into());
    let deadline = tokio::time::Instant::now() + SETTLE_LIMIT;
    let mut last: Vec<usize> = captures.iter().map(|(_, c)| c.seen()).collect();
    let mut quiet_since = tokio::time::Instant::now();
    while tokio::time::Instant::now() < deadline && quiet_since.elapsed() < QUIET {
        tokio::time::sleep(QUIET / 6).await;
        let now: Vec<usize> = captures.iter().map(|(_, c)| c.seen()).collect();
        if now != last {
            quiet_since = tokio::time::Instant::now();
            last = now;
        }
    }
    std::fs::create_dir_all(out).map_err(|e| LabError::os("mkdir", out.display().to_string(), e))?;
    let mut files = Vec::new();
    let mut seen: BTreeMap<String, Vec<Frame>> = BTreeMap::new();
    for (name, capture) in captures {
        let captured = capture.stop()?;
        let file = format!("{name}.pcap");
        let path = out.join(&file);
        zrlab_wire::pcap::write(&path, &captured.frames)
            .map_err(|e| LabError::os("write", path.display().to_string(), e))?;
        files.push(CaptureFile { file, frames: captured.frames.len(), dropped: captured.dropped });
        seen.entry(name).or_default().extend(captured.frames);
    }
    drop(impairments);
    drop(deployment);
    let kept = if opts.keep {
        progress("handing the data path to a keeper process".into());
        let what = zrlab_scenario::handoff::KeptRun::Replay(&spec.file);
        zrlab_scenario::handoff::start_keeper(&mut lab, &spec.client, &opts.service_exe, what, Duration::from_secs(30))
            .await?;
        Some(lab.run_id().to_string())
    } else {
        None
    };
    lab.teardown()?;
    let down: Vec<String> = spec.events.iter().filter_map(|e| e.event.takes_down().map(str::to_owned)).collect();
    Ok(LabReplay {
        trace: trace.display().to_string(),
        scenario: spec.file.display().to_string(),
        mapping: mapper.mapped,
        frames_sent: frames.len(),
        events: spec.events.clone(),
        captures: files,
        flows: judge(&seen, &down),
        kept,
    })
}

/// Every VIP of the configuration on the LB nodes, the backends' decapsulation, the reals'
/// server ids. The lab's deployment serves every VIP by one set of reals: a configuration whose
/// VIPs use different ones is refused.
pub fn deploy(lab: &Lab, spec: &ReplaySpec) -> Result<Deployment> {
    let vips = spec.config.vips();
    let Some((_, reals)) = vips.first() else {
        return Err(LabError::Usage(format!("{}: the LB configuration has no VIP", spec.file.display())));
    };
    let addrs = |r: &[RealSpec]| r.iter().map(|r| r.addr).collect::<Vec<_>>();
    if vips.iter().any(|(_, r)| addrs(r) != addrs(reals)) {
        return Err(LabError::Usage(format!(
            "{}: the lab replay serves every VIP by the same reals; this configuration's VIPs differ",
            spec.file.display()
        )));
    }
    let nodes = backend_nodes(spec);
    let mut named = Vec::new();
    for real in reals {
        let node = nodes.iter().find(|(_, a)| *a == real.addr).map(|(n, _)| n.clone()).ok_or_else(|| {
            LabError::Usage(format!("real {} is no backend address of the replay's topology", real.addr))
        })?;
        named.push((node, real.clone()));
    }
    let registry = Registry::fixed(named.iter().filter_map(|(node, real)| {
        let id = spec.config.server_id_of(real.addr)?;
        let membership = if real.up {
            zrlab_control::server_id::Membership::Serving
        } else {
            zrlab_control::server_id::Membership::Drained
        };
        Some((node.clone(), id, membership))
    }));
    Deployment::start_with(lab, &spec.lb_nodes, vips.into_iter().map(|(v, _)| v).collect(), named, registry)
}

/// `node`'s link ends: its own and its peer's, per link.
fn link_ends<'t>(
    topology: &'t Topology,
    node: &str,
) -> Vec<(&'t zrlab_topology::spec::EndSpec, &'t zrlab_topology::spec::EndSpec)> {
    topology
        .spec
        .links
        .iter()
        .filter(|l| l.a.node == node || l.b.node == node)
        .map(|l| if l.a.node == node { (&l.a, &l.b) } else { (&l.b, &l.a) })
        .collect()
}

/// Every backend node of the topology with its link addresses.
fn backend_nodes(spec: &ReplaySpec) -> Vec<(String, IpAddr)> {
    let topology = &spec.topology;
    let mut out = Vec::new();
    for node in topology.spec.nodes.iter().filter(|n| n.role == zrlab_topology::Role::Backend) {
        for link in &topology.spec.links {
            for end in [&link.a, &link.b].into_iter().filter(|e| e.node == node.name) {
                out.extend(end.addrs.iter().map(|a| (node.name.clone(), a.addr())));
            }
        }
    }
    out
}

/// The MAC address of `ifname` in `node` (`SIOCGIFHWADDR` on a socket made in the node's
/// namespace: `/sys` shows the namespace that mounted it, not the thread's).
fn mac_of(lab: &Lab, node: &str, ifname: &str) -> Result<[u8; 6]> {
    let what = format!("the MAC address of {ifname} in {node}");
    let name = ifname.to_owned();
    let read = move || -> std::io::Result<[u8; 6]> {
        use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
        // SAFETY: plain system calls on a socket owned here and a zeroed ifreq whose name is
        // set within its bounds.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let socket = OwnedFd::from_raw_fd(fd);
            let mut req: libc::ifreq = std::mem::zeroed();
            for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes().take(libc::IFNAMSIZ - 1)) {
                *dst = src as libc::c_char;
            }
            if libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let data = req.ifr_ifru.ifru_hwaddr.sa_data;
            Ok([data[0] as u8, data[1] as u8, data[2] as u8, data[3] as u8, data[4] as u8, data[5] as u8])
        }
    };
    lab.node(node)?.netns.run(read)?.map_err(|e| LabError::os("read", what, e))
}

/// Maps trace client addresses into the client link's subnet (module docs).
struct Mapper {
    subnet: Option<ipnet::IpNet>,
    taken: Vec<IpAddr>,
    next: u32,
    map: BTreeMap<IpAddr, IpAddr>,
    mapped: Vec<(IpAddr, IpAddr)>,
}

impl Mapper {
    fn new(subnet: Option<ipnet::IpNet>, taken: Vec<IpAddr>) -> Self {
        Self { subnet, taken, next: 10, map: BTreeMap::new(), mapped: Vec::new() }
    }

    /// The lab address for trace source `src` (IPv4 only: other families are kept).
    fn lab_address(&mut self, src: IpAddr) -> IpAddr {
        let Some(ipnet::IpNet::V4(net)) = self.subnet else { return src };
        let IpAddr::V4(v4) = src else { return src };
        if net.contains(&v4) {
            return src;
        }
        if let Some(to) = self.map.get(&src) {
            return *to;
        }
        let base = u32::from(net.network());
        let to = loop {
            let candidate = IpAddr::V4((base + self.next).into());
            self.next += 1;
            if !self.taken.contains(&candidate) {
                break candidate;
            }
        };
        self.map.insert(src, to);
        self.mapped.push((src, to));
        to
    }

    /// `frame` with its IPv4 source mapped and the checksums recomputed (unchanged if nothing
    /// was mapped or it does not parse).
    fn map(&mut self, frame: &[u8]) -> Vec<u8> {
        use etherparse::{NetSlice, SlicedPacket, TransportSlice};
        let Ok(packet) = SlicedPacket::from_ethernet(frame) else { return frame.to_vec() };
        let Some(NetSlice::Ipv4(ip)) = &packet.net else { return frame.to_vec() };
        let src = IpAddr::V4(ip.header().source_addr());
        let IpAddr::V4(to) = self.lab_address(src) else { return frame.to_vec() };
        if IpAddr::V4(to) == src {
            return frame.to_vec();
        }
        let mut header = ip.header().to_header();
        header.source = to.octets();
        let payload = ip.payload().payload;
        let transport = match &packet.transport {
            Some(TransportSlice::Tcp(tcp)) => {
                let mut h = tcp.to_header();
                let data = tcp.payload();
                h.checksum = h.calc_checksum_ipv4(&header, data).unwrap_or(h.checksum);
                let mut out = h.to_bytes().to_vec();
                out.extend_from_slice(data);
                out
            }
            Some(TransportSlice::Udp(udp)) => {
                let mut h = udp.to_header();
                let data = udp.payload();
                h.checksum = h.calc_checksum_ipv4(&header, data).unwrap_or(h.checksum);
                let mut out = h.to_bytes().to_vec();
                out.extend_from_slice(data);
                out
            }
            _ => payload.to_vec(),
        };
        header.header_checksum = header.calc_header_checksum();
        let mut out = frame[..14].to_vec();
        out.extend_from_slice(&header.to_bytes());
        out.extend_from_slice(&transport);
        out
    }
}

/// Per flow, where its packets went (from the captures `seen`); `down` are nodes taken down.
fn judge(seen: &BTreeMap<String, Vec<Frame>>, down: &[String]) -> Vec<LabFlow> {
    let mut flows: Vec<LabFlow> = Vec::new();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    let mut entry = |flows: &mut Vec<LabFlow>, name: String| {
        *index.entry(name.clone()).or_insert_with(|| {
            flows.push(LabFlow {
                flow: name,
                lb_nodes: Vec::new(),
                backends: Vec::new(),
                reals: Vec::new(),
                sockets: Vec::new(),
                split: false,
                frames: BTreeMap::new(),
            });
            flows.len() - 1
        })
    };
    // The LB nodes' output first (it orders the flows), then the backends'.
    for (capture, frames) in seen.iter().filter(|(c, _)| c.starts_with("lb-out-")) {
        let node = capture.trim_start_matches("lb-out-").to_owned();
        for (i, frame) in frames.iter().enumerate() {
            let Some((inner, real)) = inner_of(&frame.data) else { continue };
            let at = entry(&mut flows, inner);
            let flow = &mut flows[at];
            if !flow.lb_nodes.contains(&node) {
                flow.lb_nodes.push(node.clone());
            }
            if !flow.reals.contains(&real) {
                flow.reals.push(real);
            }
            let list = flow.frames.entry(format!("{capture}.pcap")).or_default();
            if list.len() < 40 {
                list.push(i + 1);
            }
        }
    }
    // Backends in the order each flow's packets first reached them (capture times).
    let mut arrivals: BTreeMap<usize, Vec<(std::time::Duration, String)>> = BTreeMap::new();
    for (capture, frames) in seen.iter().filter(|(c, _)| c.starts_with("backend-in-")) {
        let node = capture.trim_start_matches("backend-in-").to_owned();
        for (i, frame) in frames.iter().enumerate() {
            let Some(name) = flow_of(&frame.data) else { continue };
            let Some(&at) = index.get(&name) else { continue };
            arrivals.entry(at).or_default().push((frame.at, node.clone()));
            let list = flows[at].frames.entry(format!("{capture}.pcap")).or_default();
            if list.len() < 40 {
                list.push(i + 1);
            }
        }
    }
    for (at, mut seen_at) in arrivals {
        seen_at.sort();
        for (_, node) in seen_at {
            if !flows[at].backends.contains(&node) {
                flows[at].backends.push(node);
            }
        }
    }
    // The service sockets: the replies the client received name them.
    if let Some(frames) = seen.get("client-in") {
        for frame in frames {
            let Some((flow, socket)) = reply_of(&frame.data) else { continue };
            let Some(&at) = index.get(&flow) else { continue };
            if !flows[at].sockets.contains(&socket) {
                flows[at].sockets.push(socket);
            }
        }
    }
    // Split by what the LB nodes chose (more than one real) or by what the backends received
    // or which sockets answered, unless one of its backends was taken down.
    for flow in &mut flows {
        let moved = flow.reals.len() > 1 || flow.backends.len() > 1 || flow.sockets.len() > 1;
        flow.split = moved && !flow.backends.iter().any(|b| down.contains(b));
    }
    flows
}

/// For a service's reply to the client: the flow it answers (named from the client's side) and
/// the socket that answered.
fn reply_of(data: &[u8]) -> Option<(String, String)> {
    use zrlab_wire::packet::{EthPayload, FrameRepr, IpPayload};
    let Some(EthPayload::Ip(ip)) = FrameRepr::parse(data).map(|f| f.payload) else { return None };
    let IpPayload::Udp(udp) = &ip.payload else { return None };
    let datagram = zrlab_wire::quic::Datagram::parse(&udp.payload).ok()?;
    let reply = zrlab_wire::message::Reply::parse_bytes(&datagram.payload).ok()?;
    let addr = |a: IpAddr, port: u16| match a {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    };
    Some((format!("udp {} > {}", addr(ip.dst, udp.dport), addr(ip.src, udp.sport)), reply.who.to_string()))
}

/// The inner flow of an encapsulated frame and its outer destination (the real).
fn inner_of(data: &[u8]) -> Option<(String, IpAddr)> {
    let real = outer_destination(data)?;
    let outer = if data.get(12..14)? == [0x08, 0x00] { 20 } else { 40 };
    let inner_v6 = match data.get(14 + if outer == 20 { 9 } else { 6 })? {
        4 => false,
        41 => true,
        _ => return None,
    };
    // The inner packet as a frame of its own: an Ethernet header with its EtherType.
    let mut frame = vec![0u8; 12];
    frame.extend_from_slice(&if inner_v6 { [0x86, 0xdd] } else { [0x08, 0x00] });
    frame.extend_from_slice(data.get(14 + outer..)?);
    Some((flow_of(&frame)?, real))
}
