//! `zrlab bench release`: dispatch capacity under load while a release happens.
//!
//! For each dispatch path (`takeover` with its user-space forwarding, `reuseport-bpf`,
//! `sk-lookup`), in one run and each in a fresh two-node lab (client, backend; no router, no
//! LB): UDP flows send QUIC-shaped requests at a stepped rate (1x, 3x, 10x, 30x a base rate),
//! open loop; halfway through each step the backend's service is released. Per step: requests
//! sent, answered, dropped (no reply within a grace period after the step). Then a flood: the
//! flows send as fast as the generator can, after a release, so every datagram of the old
//! flows takes the path the release left them on (forwarding in user space, or the BPF
//! dispatcher's socket choice): the replies per second are what that path sustains.
//!
//! The generator's own ceiling is measured in the same run, the same way, against an echo
//! socket in the backend's namespace that answers every datagram unchanged (no service, no
//! dispatcher): a step rate the generator cannot reach against the echo is reported as beyond
//! the generator, not as the dispatcher's drops.
//!
//! Every flow starts each step with a fresh Initial (a new connection id from the current
//! process), so that a flow's id always names a process that is still alive.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde::Serialize;
use tokio::net::UdpSocket;

use zrlab_host::{
    error::{LabError, Result},
    netns::Netns,
};
use zrlab_scenario::release::{Fleet, ReleaseSpec, Strategy};
use zrlab_topology::{Lab, Topology};
use zrlab_wire::{
    message::{Reply, Request},
    quic::{CID_LEN, Datagram, Header, LongType, VERSION_1},
};

/// Options of the benchmark.
#[derive(Clone, Debug)]
pub(crate) struct Options {
    /// Requests per second of the 1x step.
    pub base_rate: u64,
    /// Multiples of the base rate, one step each.
    pub steps: Vec<u64>,
    /// Seconds per step.
    pub step_s: f64,
    /// Concurrent UDP flows.
    pub flows: u32,
    /// The workspace's `fixtures/` folder (for the topology).
    pub fixtures: PathBuf,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            base_rate: 1000,
            steps: vec![1, 3, 10, 30],
            step_s: 2.0,
            flows: 100,
            fixtures: PathBuf::from("fixtures"),
        }
    }
}

/// One step of one path.
#[derive(Clone, Copy, Debug, Serialize)]
pub(crate) struct Step {
    /// Multiple of the base rate.
    pub multiple: u64,
    /// Requests per second asked for.
    pub rate: u64,
    /// Requests sent.
    pub sent: u64,
    /// Requests answered.
    pub answered: u64,
    /// Requests without an answer.
    pub drops: u64,
    /// Replies from a process that did not know the flow (misroutes).
    pub unknown: u64,
}

/// One dispatch path's figures.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct PathResult {
    /// The path (a release strategy's name, or `echo` for the generator's ceiling).
    pub path: String,
    /// The steps.
    pub steps: Vec<Step>,
    /// The highest multiple without a drop (0: none).
    pub drop_free_multiple: u64,
    /// Replies per second in the flood after a release: what the path sustains.
    pub sustained_pps: f64,
    /// Requests per second the generator sent in the flood.
    pub flood_sent_pps: f64,
}

/// The benchmark's report.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Report {
    /// `uname -r`.
    pub kernel: String,
    /// The base rate.
    pub base_rate: u64,
    /// Concurrent flows.
    pub flows: u32,
    /// The generator against an echo socket: its ceiling.
    pub generator: PathResult,
    /// Each dispatch path.
    pub paths: Vec<PathResult>,
}

impl Report {
    /// The table printed after the run.
    pub(crate) fn table(&self) -> String {
        let mut out = format!(
            "release dispatch under load on kernel {} ({} flows, base rate {}/s, a release halfway through every step)\n",
            self.kernel, self.flows, self.base_rate
        );
        out.push_str(&format!("{:<16}", "path"));
        for step in &self.generator.steps {
            out.push_str(&format!(" {:>12}", format!("{}x drops", step.multiple)));
        }
        out.push_str(&format!(" {:>10} {:>14} {:>10}\n", "drop-free", "sustained pps", "vs echo"));
        for path in std::iter::once(&self.generator).chain(&self.paths) {
            out.push_str(&format!("{:<16}", path.path));
            for step in &path.steps {
                out.push_str(&format!(" {:>12}", format!("{}/{}", step.drops, step.sent)));
            }
            let ratio = path.sustained_pps / self.generator.sustained_pps.max(1.0);
            out.push_str(&format!(
                " {:>10} {:>14.0} {:>10.2}\n",
                format!("{}x", path.drop_free_multiple),
                path.sustained_pps,
                ratio
            ));
        }
        out
    }
}

/// Runs the benchmark (`exe`: the `zrlab` binary the services are started from).
pub(crate) async fn run(opts: &Options, exe: &Path) -> Result<Report> {
    if opts.steps.is_empty() || opts.flows == 0 || opts.base_rate == 0 || opts.step_s <= 0.0 {
        return Err(LabError::Usage("steps, flows, base rate and step length must be positive".into()));
    }
    let topology = Topology::load(&opts.fixtures.join("topologies/pair.toml"))?;
    eprintln!("generator ceiling: the same load against an echo socket...");
    let generator = measure(&topology, opts, exe, None).await?;
    let mut paths = Vec::new();
    for strategy in [Strategy::Takeover, Strategy::ReuseportBpf, Strategy::SkLookup] {
        let missing: Vec<_> = futures::future::join_all(strategy.requires().iter().map(|f| f.probe())).await;
        if missing.iter().any(|present| !matches!(present, Ok(true))) {
            eprintln!("SKIPPED {}: the kernel lacks a feature it needs", strategy.name());
            continue;
        }
        eprintln!("{}: steps with a release in each, then the flood...", strategy.name());
        paths.push(measure(&topology, opts, exe, Some(strategy)).await?);
    }
    Ok(Report { kernel: zrlab_host::kernel_release(), base_rate: opts.base_rate, flows: opts.flows, generator, paths })
}

/// The server's address in the pair topology.
const SERVER: &str = "198.51.100.1:4433";

/// One path (or the echo, `None`) in a lab of its own.
async fn measure(topology: &Topology, opts: &Options, exe: &Path, strategy: Option<Strategy>) -> Result<PathResult> {
    let mut lab = Lab::build(topology, false).await?;
    let server: SocketAddr = SERVER.parse().expect("valid");
    let mut fleet = match strategy {
        Some(strategy) => {
            let args = vec![
                "service".to_owned(),
                "--node=be1".to_owned(),
                format!("--udp={server}"),
                "--server-id=7".to_owned(),
                "--cid-version=v3".to_owned(),
            ];
            let spec = ReleaseSpec { strategy, drain_ms: 0, forward: true };
            Some(
                Fleet::start(&mut lab, Some(spec), exe, vec![("be1".to_owned(), args)], Duration::from_secs(30))
                    .await?,
            )
        }
        None => None,
    };
    let _echo = match strategy {
        None => Some(Echo::start(&lab.node("be1")?.netns, server)?),
        Some(_) => None,
    };
    let client = Generator::start(&lab.node("client")?.netns, server, opts.flows)?;
    let mut steps = Vec::new();
    for multiple in &opts.steps {
        let rate = opts.base_rate * multiple;
        let step = client.step(rate, Duration::from_secs_f64(opts.step_s));
        // Halfway through, the release (the benchmark's schedule, not a wait for a condition).
        let release = async {
            tokio::time::sleep(Duration::from_secs_f64(opts.step_s / 2.0)).await;
            if let Some(fleet) = fleet.as_mut() {
                fleet.release(&mut lab, &["be1".to_owned()], &mut |_, _| Ok(())).await?;
            }
            Ok::<_, LabError>(())
        };
        let (counts, released) = tokio::join!(step, release);
        released?;
        let counts = counts?;
        steps.push(Step { multiple: *multiple, rate, ..counts });
    }
    // The flood after one more release: the old flows' datagrams take the path it left.
    let flood = async {
        client.handshake().await?;
        if let Some(fleet) = fleet.as_mut() {
            fleet.release(&mut lab, &["be1".to_owned()], &mut |_, _| Ok(())).await?;
        }
        client.flood(Duration::from_secs(1)).await
    };
    let (sent, answered, elapsed) = flood.await?;
    drop(client);
    drop(fleet);
    lab.teardown()?;
    let drop_free_multiple = steps.iter().filter(|s| s.drops == 0).map(|s| s.multiple).max().unwrap_or(0);
    Ok(PathResult {
        path: strategy.map_or("echo (ceiling)", Strategy::name).to_owned(),
        steps,
        drop_free_multiple,
        sustained_pps: answered as f64 / elapsed,
        flood_sent_pps: sent as f64 / elapsed,
    })
}

/// A UDP socket in the backend's namespace answering every datagram unchanged but for a reply
/// the generator accepts: the generator's ceiling without any service or dispatcher.
struct Echo {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<Result<()>>>>,
}

impl Echo {
    fn start(netns: &Netns, addr: SocketAddr) -> Result<Self> {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = netns.spawn("bench-echo".into(), move || {
            let socket = std::net::UdpSocket::bind(addr).map_err(|e| LabError::os("bind", addr.to_string(), e))?;
            socket
                .set_read_timeout(Some(Duration::from_millis(100)))
                .map_err(|e| LabError::os("set timeout on", addr.to_string(), e))?;
            let mut buf = vec![0u8; 2048];
            let cid = [0xc0, 0, 0, 0, 7, 1, 2, 3];
            while !flag.load(Ordering::Relaxed) {
                let Ok((len, peer)) = socket.recv_from(&mut buf) else { continue };
                if let Some(reply) = echo_reply(&buf[..len], cid) {
                    let _ = socket.send_to(&reply, peer);
                }
            }
            Ok(())
        })?;
        Ok(Self { stop, thread: Some(thread) })
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The echo's answer: the request's flow and sequence, from an identity of its own (Initials
/// get `cid` as the server's id).
fn echo_reply(datagram: &[u8], cid: [u8; CID_LEN]) -> Option<Vec<u8>> {
    let datagram = Datagram::parse(datagram).ok()?;
    let request = Request::parse_bytes(&datagram.payload).ok()?;
    let header = match datagram.header {
        Header::Long { kind: LongType::Initial, version, scid, .. } => {
            Header::Long { kind: LongType::Initial, version, dcid: scid, scid: cid.to_vec() }
        }
        other => other,
    };
    let who = zrlab_wire::message::Identity { node: "echo".into(), instance: "-".into(), pid: 0 };
    let reply = Reply { flow: request.flow, seq: request.seq, who, known: true };
    Some(Datagram { header, payload: reply.emit().into_bytes() }.emit())
}

/// Commands for the generator thread.
enum Command {
    Handshake(tokio::sync::oneshot::Sender<Result<()>>),
    Step(u64, Duration, tokio::sync::oneshot::Sender<Result<Step>>),
    Flood(Duration, tokio::sync::oneshot::Sender<Result<(u64, u64, f64)>>),
}

/// The load generator: `flows` UDP sockets in the client's namespace, one thread.
struct Generator {
    commands: tokio::sync::mpsc::UnboundedSender<Command>,
    thread: Option<std::thread::JoinHandle<Result<Result<()>>>>,
}

impl Generator {
    fn start(netns: &Netns, server: SocketAddr, flows: u32) -> Result<Self> {
        let (commands, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let thread = netns.spawn("bench-generator".into(), move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| LabError::os("build runtime in", "client", e))?;
            runtime.block_on(async move {
                let load = Load::new(server, flows).await?;
                while let Some(command) = rx.recv().await {
                    match command {
                        Command::Handshake(done) => {
                            let _ = done.send(load.handshake().await);
                        }
                        Command::Step(rate, length, done) => {
                            let _ = done.send(load.step(rate, length).await);
                        }
                        Command::Flood(length, done) => {
                            let _ = done.send(load.flood(length).await);
                        }
                    }
                }
                Ok(())
            })
        })?;
        Ok(Self { commands, thread: Some(thread) })
    }

    async fn ask<T>(&self, make: impl FnOnce(tokio::sync::oneshot::Sender<Result<T>>) -> Command) -> Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.commands.send(make(tx)).map_err(|_| LabError::Usage("the load generator stopped".into()))?;
        rx.await.map_err(|_| LabError::Usage("the load generator stopped".into()))?
    }

    async fn handshake(&self) -> Result<()> {
        self.ask(Command::Handshake).await
    }

    async fn step(&self, rate: u64, length: Duration) -> Result<Step> {
        self.ask(|tx| Command::Step(rate, length, tx)).await
    }

    async fn flood(&self, length: Duration) -> Result<(u64, u64, f64)> {
        self.ask(|tx| Command::Flood(length, tx)).await
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        let (tx, _) = tokio::sync::mpsc::unbounded_channel();
        self.commands = tx;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How long a request may wait for its reply before it counts as dropped.
const GRACE: Duration = Duration::from_millis(500);

struct Flow {
    socket: Arc<UdpSocket>,
    client_cid: [u8; CID_LEN],
    server_cid: std::sync::Mutex<Option<Vec<u8>>>,
}

/// The flows and their counters.
struct Load {
    flows: Vec<Arc<Flow>>,
    answered: Arc<AtomicU64>,
    unknown: Arc<AtomicU64>,
    receivers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    async fn new(server: SocketAddr, count: u32) -> Result<Self> {
        let answered = Arc::new(AtomicU64::new(0));
        let unknown = Arc::new(AtomicU64::new(0));
        let mut flows = Vec::new();
        let mut receivers = Vec::new();
        for i in 0..count {
            let local = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);
            let socket = UdpSocket::bind(local).await.map_err(|e| LabError::os("bind", "a generator flow", e))?;
            socket.connect(server).await.map_err(|e| LabError::os("connect", server.to_string(), e))?;
            let mut client_cid = [0u8; CID_LEN];
            client_cid[..4].copy_from_slice(&i.to_be_bytes());
            let flow = Arc::new(Flow { socket: Arc::new(socket), client_cid, server_cid: std::sync::Mutex::new(None) });
            let (f, a, u) = (flow.clone(), answered.clone(), unknown.clone());
            receivers.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                while let Ok(len) = f.socket.recv(&mut buf).await {
                    let Ok(datagram) = Datagram::parse(&buf[..len]) else { continue };
                    let Ok(reply) = Reply::parse_bytes(&datagram.payload) else { continue };
                    if let Header::Long { scid, .. } = datagram.header {
                        *f.server_cid.lock().expect("not poisoned") = Some(scid);
                    }
                    a.fetch_add(1, Ordering::Relaxed);
                    if !reply.known {
                        u.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
            flows.push(flow);
        }
        Ok(Self { flows, answered, unknown, receivers })
    }

    /// Every flow sends an Initial (and so gets an id from the current process); waits for
    /// the answers (a flow without one is retried, up to a timeout).
    async fn handshake(&self) -> Result<()> {
        for flow in &self.flows {
            *flow.server_cid.lock().expect("not poisoned") = None;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pending: Vec<&Arc<Flow>> =
                self.flows.iter().filter(|f| f.server_cid.lock().expect("not poisoned").is_none()).collect();
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(LabError::Timeout { what: "the flows' handshakes".into(), after: Duration::from_secs(10) });
            }
            for flow in pending {
                let header = Header::Long {
                    kind: LongType::Initial,
                    version: VERSION_1,
                    dcid: flow.client_cid.to_vec(),
                    scid: flow.client_cid.to_vec(),
                };
                let datagram = Datagram { header, payload: Request::new(0, 0).emit().into_bytes() };
                let _ = flow.socket.send(&datagram.emit()).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A short-header request of `flow`.
    fn request(flow: &Flow, seq: u64) -> Option<Vec<u8>> {
        let dcid: [u8; CID_LEN] = flow.server_cid.lock().expect("not poisoned").clone()?.try_into().ok()?;
        Some(Datagram { header: Header::Short { dcid }, payload: Request::new(0, seq).emit().into_bytes() }.emit())
    }

    /// Sends `rate` requests per second for `length`, round robin over the flows, paced every
    /// millisecond; counts what was answered within the grace period.
    async fn step(&self, rate: u64, length: Duration) -> Result<Step> {
        self.handshake().await?;
        let (answered0, unknown0) = (self.answered.load(Ordering::Relaxed), self.unknown.load(Ordering::Relaxed));
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        let mut sent = 0u64;
        let mut next = 0usize;
        while started.elapsed() < length {
            tick.tick().await;
            let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
            while sent < due {
                let flow = &self.flows[next % self.flows.len()];
                next += 1;
                if let Some(request) = Self::request(flow, sent) {
                    let _ = flow.socket.send(&request).await;
                }
                sent += 1;
            }
        }
        tokio::time::sleep(GRACE).await;
        let answered = self.answered.load(Ordering::Relaxed) - answered0;
        let unknown = self.unknown.load(Ordering::Relaxed) - unknown0;
        Ok(Step { multiple: 0, rate, sent, answered, drops: sent.saturating_sub(answered), unknown })
    }

    /// Sends as fast as it can for `length`; (sent, answered, seconds).
    async fn flood(&self, length: Duration) -> Result<(u64, u64, f64)> {
        let answered0 = self.answered.load(Ordering::Relaxed);
        let started = Instant::now();
        let mut sent = 0u64;
        while started.elapsed() < length {
            for flow in &self.flows {
                if let Some(request) = Self::request(flow, sent) {
                    let _ = flow.socket.send(&request).await;
                }
                sent += 1;
            }
            // Let the receivers run: one thread does both.
            tokio::task::yield_now().await;
        }
        let elapsed = started.elapsed().as_secs_f64();
        // Replies that arrived while the flood ran: what the path answered per second.
        let answered = self.answered.load(Ordering::Relaxed) - answered0;
        tokio::time::sleep(GRACE).await;
        Ok((sent, answered, elapsed))
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        for receiver in &self.receivers {
            receiver.abort();
        }
    }
}
