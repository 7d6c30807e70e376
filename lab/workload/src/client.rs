//! The client side of the workload: long-lived TCP and UDP flows towards a VIP, driven from a
//! thread inside the client node's namespace on its own current-thread runtime.
//!
//! Every flow sends one request per period, recording what happened in a shared [`FlowBook`].
//! A TCP flow waits for each reply before its next request (a stream: TCP retransmits what the
//! links lose, and a request that waits beyond its timeout stalls the flow). A UDP flow does not
//! wait: nothing resends a datagram, so it goes on sending on schedule, as a QUIC connection
//! does, and each request counts as dropped once its own reply timeout passes. When the flows
//! stop, no flow sends or opens anything more, but every request already sent and every
//! connection being opened is judged (answered, or dropped once its timeout passes): a loss in
//! a run's last second counts like any other, at the cost of at most one timeout at the end.
//! A flow keeps its schedule: when its thread could not run on time (two cores shared with the
//! lab) or a reply came late, it sends the requests it owes as soon as it can
//! ([`MissedTickBehavior::Burst`]), so the load offered per second does not fall with the
//! generator's own stalls and the replies per second measure the service. A heartbeat records the stalls themselves in the timeline. Scenario steps wait on
//! the book's conditions ("every live flow has completed two more rounds"), never on wall-clock
//! sleeps. Source ports are fixed per flow (TCP from [`TCP_BASE_PORT`], UDP from
//! [`UDP_BASE_PORT`]) and everything random (start offsets, connection ids) comes from the
//! seed, so a rerun sends the same 5-tuples.
//!
//! Two options shape a run further:
//! - `cgroup`: TCP sockets are created as members of the client node's cgroup
//!   ([`zrlab_host::cgroup::sockets_in`]), so the sock_ops programs attached there act on them;
//! - `open_tcp_per_period`: once [`Client::start_opening`] is called, that many new long-lived
//!   TCP flows open every period (ports after the initial flows', until the TCP port range is
//!   used up), each recording how many events had been applied when it opened
//!   ([`FlowBook::advance_epoch`]).

use std::{
    collections::VecDeque,
    io,
    net::{IpAddr, SocketAddr},
    os::fd::OwnedFd,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{TcpSocket, UdpSocket},
    sync::watch,
    task::JoinSet,
    time::{Instant, MissedTickBehavior},
};

use crate::{
    accounting::{Ending, FlowRecord},
    timeline::Timeline,
};
use zrlab_host::{
    error::{LabError, Result},
    netns::Netns,
};
use zrlab_wire::{
    Proto,
    message::{Identity, Reply, Request},
    quic::{CID_LEN, Datagram, Header, LongType, VERSION_1},
};

/// First source port of TCP flows (flow `i` uses `TCP_BASE_PORT + i`).
pub(crate) const TCP_BASE_PORT: u16 = 20000;
/// First source port of UDP flows.
pub(crate) const UDP_BASE_PORT: u16 = 40000;
/// Seed salt of the flows opened during a run (their offsets), apart from the initial flows'.
const LATE_SEED_SALT: u64 = 0x1a7e;

/// What the client runs.
#[derive(Clone, Debug)]
pub struct ClientSpec {
    /// The service address.
    pub vip: IpAddr,
    /// TCP port of the service.
    pub tcp_port: u16,
    /// UDP port of the service.
    pub udp_port: u16,
    /// Number of TCP flows.
    pub tcp_flows: u32,
    /// Number of UDP flows.
    pub udp_flows: u32,
    /// Time between a flow's requests.
    pub period: Duration,
    /// How long a UDP request may wait for its reply before it counts as dropped.
    pub reply_timeout: Duration,
    /// How long a TCP connection may take to open, and a TCP request to get its reply, before
    /// it counts as dropped: longer than [`ClientSpec::reply_timeout`] where links lose
    /// frames, since TCP retransmits what they lose and nothing resends a UDP datagram.
    pub tcp_reply_timeout: Duration,
    /// Seed of every random choice.
    pub seed: u64,
    /// Create TCP sockets in this cgroup (the client node's), so its sock_ops programs act on
    /// them.
    pub cgroup: Option<PathBuf>,
    /// New TCP flows opened every period once [`Client::start_opening`] was called.
    pub open_tcp_per_period: u32,
    /// Bytes every TCP request uploads (0: none): full-size segments, for path-MTU scenarios.
    pub upload_bytes: u32,
}

/// The record of every flow, shared between the flow tasks and the scenario, and the run's
/// per-second [`Timeline`].
#[derive(Debug)]
pub struct FlowBook {
    flows: Mutex<Vec<FlowRecord>>,
    /// Notified on every update (its value says nothing: only the notification counts).
    progress: watch::Sender<()>,
    epoch: AtomicU64,
    started: Instant,
    timeline: Mutex<Timeline>,
}

impl FlowBook {
    fn new(spec: &ClientSpec) -> Self {
        let tcp = (0..spec.tcp_flows).map(|i| FlowRecord::new(Proto::Tcp, i, 0));
        let udp = (0..spec.udp_flows).map(|i| FlowRecord::new(Proto::Udp, spec.tcp_flows + i, 0));
        Self {
            flows: Mutex::new(tcp.chain(udp).collect()),
            progress: watch::Sender::new(()),
            epoch: AtomicU64::new(0),
            started: Instant::now(),
            timeline: Mutex::new(Timeline::default()),
        }
    }

    /// Marks an event on the timeline now (`released`: the share of service instances released
    /// once it happened, for releases).
    pub fn mark(&self, label: impl Into<String>, released: Option<f64>) {
        self.mark_at(std::time::Instant::now(), label, released);
    }

    /// Marks an event on the timeline at `at` (an instant the caller recorded when it saw it).
    pub fn mark_at(&self, at: std::time::Instant, label: impl Into<String>, released: Option<f64>) {
        let at = Instant::from_std(at).saturating_duration_since(self.started).as_secs_f64();
        self.timeline.lock().expect("not poisoned").mark(at, label, released);
    }

    /// Records that the client's thread could not run between `from` and `to`.
    fn stalled(&self, from: Instant, to: Instant) {
        let since = |t: Instant| t.saturating_duration_since(self.started).as_secs_f64();
        self.timeline.lock().expect("not poisoned").stall(since(from), since(to));
    }

    /// A copy of the timeline so far, its latency figures filled in.
    pub fn timeline(&self) -> Timeline {
        let mut timeline = self.timeline.lock().expect("not poisoned").clone();
        timeline.summarize();
        timeline
    }

    /// Records a request sent now (the load offered).
    fn sent(&self) -> Instant {
        let now = Instant::now();
        let at = now.saturating_duration_since(self.started).as_secs_f64();
        self.timeline.lock().expect("not poisoned").offered(at);
        now
    }

    /// Records that flow `id`'s request sent at `sent` got its reply from `who` now.
    fn replied(&self, id: u32, sent: Instant, who: &Identity) {
        self.update(id, |f| f.reply(who));
        let since = |t: Instant| t.saturating_duration_since(self.started).as_secs_f64();
        self.timeline.lock().expect("not poisoned").replied(id, since(sent), since(Instant::now()));
    }

    /// Records that one more event was applied; returns the new epoch (flows opened from now on
    /// carry it).
    pub fn advance_epoch(&self) -> u64 {
        self.epoch.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Adds a flow opened now; returns its id.
    fn open(&self, proto: Proto) -> u32 {
        let mut flows = self.flows.lock().expect("not poisoned");
        let id = flows.len() as u32;
        flows.push(FlowRecord::new(proto, id, self.epoch.load(Ordering::SeqCst)));
        id
    }

    /// A copy of every flow's record.
    pub fn snapshot(&self) -> Vec<FlowRecord> {
        self.flows.lock().expect("not poisoned").clone()
    }

    fn update(&self, id: u32, f: impl FnOnce(&mut FlowRecord)) {
        let mut flows = self.flows.lock().expect("not poisoned");
        let flow = &mut flows[id as usize];
        let before = (flow.replies, flow.misroutes, flow.drops, flow.was_reset());
        f(flow);
        let after = (flow.replies, flow.misroutes, flow.drops, flow.was_reset());
        drop(flows);
        let at = self.started.elapsed().as_secs_f64();
        self.timeline.lock().expect("not poisoned").add(at, |s| {
            s.replies += after.0 - before.0;
            s.misroutes += after.1 - before.1;
            s.drops += after.2 - before.2;
            s.resets += u64::from(after.3 && !before.3);
        });
        self.progress.send_replace(());
    }

    /// Waits until `cond` holds over the flows, for at most `timeout`.
    pub async fn wait_until(&self, what: &str, timeout: Duration, cond: impl Fn(&[FlowRecord]) -> bool) -> Result<()> {
        let mut progress = self.progress.subscribe();
        let check = async {
            loop {
                if cond(&self.flows.lock().expect("not poisoned")) {
                    return;
                }
                if progress.changed().await.is_err() {
                    // The book's sender lives as long as the book: unreachable, but never spin.
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(timeout, check)
            .await
            .map_err(|_| LabError::Timeout { what: what.to_owned(), after: timeout })
    }
}

/// A running client workload. Dropping it stops the flows.
#[derive(Debug)]
pub struct Client {
    book: Arc<FlowBook>,
    stop: watch::Sender<bool>,
    opening: watch::Sender<bool>,
    thread: Option<JoinHandle<Result<io::Result<()>>>>,
}

impl Client {
    /// Starts every flow of `spec` from inside `netns`.
    pub fn start(netns: &Netns, spec: ClientSpec) -> Result<Self> {
        let book = Arc::new(FlowBook::new(&spec));
        let (stop, stop_rx) = watch::channel(false);
        let (opening, opening_rx) = watch::channel(false);
        let thread_book = book.clone();
        let thread = netns.spawn(format!("client-{}", netns.name()), move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(run_flows(spec, thread_book, stop_rx, opening_rx))
        })?;
        Ok(Self { book, stop, opening, thread: Some(thread) })
    }

    /// Starts opening `open_tcp_per_period` new TCP flows every period.
    pub fn start_opening(&self) {
        let _ = self.opening.send(true);
    }

    /// The flows' records.
    pub fn book(&self) -> &FlowBook {
        &self.book
    }

    /// Stops every flow and returns the final records.
    pub fn stop(mut self) -> Result<Vec<FlowRecord>> {
        self.join()?;
        Ok(self.book.snapshot())
    }

    fn join(&mut self) -> Result<()> {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let ran = thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
            ran.map_err(|e| LabError::os("run client runtime", "client", e))?;
        }
        Ok(())
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Err(e) = self.join() {
            tracing::warn!("client workload: {e}");
        }
    }
}

/// Per-flow choices drawn from the seed before anything starts, so they do not depend on the
/// order in which tasks happen to run.
struct FlowPlan {
    id: u32,
    port: u16,
    start_offset: Duration,
    client_cid: [u8; CID_LEN],
    initial_dcid: [u8; CID_LEN],
}

async fn run_flows(
    spec: ClientSpec,
    book: Arc<FlowBook>,
    stop: watch::Receiver<bool>,
    opening: watch::Receiver<bool>,
) -> io::Result<()> {
    // Made before any flow starts: a helper that cannot join the cgroup fails the client, not
    // each flow on its own.
    let mut sockets = tcp_sockets(&spec, spec.tcp_flows as usize)?.into_iter();
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let period_us = spec.period.as_micros().max(1) as u64;
    let mut plan = |id: u32, port: u16| FlowPlan {
        id,
        port,
        start_offset: Duration::from_micros(rng.random_range(0..period_us)),
        client_cid: rng.random(),
        initial_dcid: rng.random(),
    };
    let spec = Arc::new(spec);
    let mut tasks = JoinSet::new();
    for i in 0..spec.tcp_flows {
        let plan = plan(i, TCP_BASE_PORT + i as u16);
        tasks.spawn(tcp_flow(plan, sockets.next(), spec.clone(), book.clone(), stop.clone()));
    }
    for i in 0..spec.udp_flows {
        let plan = plan(spec.tcp_flows + i, UDP_BASE_PORT + i as u16);
        tasks.spawn(udp_flow(plan, spec.clone(), book.clone(), stop.clone()));
    }
    if spec.open_tcp_per_period > 0 {
        tasks.spawn(open_flows(spec.clone(), book.clone(), stop.clone(), opening));
    }
    tasks.spawn(heartbeat(book.clone(), stop.clone()));
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// How often the heartbeat wakes.
const HEARTBEAT: Duration = Duration::from_millis(10);
/// How late the heartbeat may wake before the lateness counts as a stall: shorter delays are
/// the runtime working through replies that came due together, not a thread that could not run.
const STALL: Duration = Duration::from_millis(20);

/// Wakes every [`HEARTBEAT`] on the flows' runtime and records in the timeline each time it
/// woke at least [`STALL`] late: the flows could not run then either.
async fn heartbeat(book: Arc<FlowBook>, mut stop: watch::Receiver<bool>) {
    let mut due = Instant::now() + HEARTBEAT;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(due) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = Instant::now();
        if now >= due + STALL {
            book.stalled(due, now);
        }
        due = now + HEARTBEAT;
    }
}

/// `count` unbound TCP sockets for the flows, made in the client's cgroup when it has one;
/// none without (each flow then makes its own).
fn tcp_sockets(spec: &ClientSpec, count: usize) -> io::Result<Vec<OwnedFd>> {
    match &spec.cgroup {
        Some(cgroup) if count > 0 => {
            let domain = if spec.vip.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
            zrlab_host::cgroup::sockets_in(cgroup, domain, libc::SOCK_STREAM, count)
        }
        _ => Ok(Vec::new()),
    }
}

/// Opens `open_tcp_per_period` TCP flows per period once opening starts, until stopped or the
/// TCP port range is used up.
async fn open_flows(
    spec: Arc<ClientSpec>,
    book: Arc<FlowBook>,
    mut stop: watch::Receiver<bool>,
    mut opening: watch::Receiver<bool>,
) {
    tokio::select! {
        _ = opening.wait_for(|o| *o) => {}
        _ = stop.wait_for(|s| *s) => return,
    }
    let mut rng = late_flows_rng(spec.seed);
    let period_us = spec.period.as_micros().max(1) as u64;
    let mut next_port = u32::from(TCP_BASE_PORT) + spec.tcp_flows;
    let mut interval = schedule(Instant::now(), spec.period);
    let mut tasks = JoinSet::new();
    while next_port + spec.open_tcp_per_period <= u32::from(UDP_BASE_PORT) {
        if next_tick(&mut interval, &mut stop).await.is_none() {
            break;
        }
        let sockets = match tcp_sockets(&spec, spec.open_tcp_per_period as usize) {
            Ok(sockets) => sockets,
            Err(e) => {
                tracing::warn!("client: no sockets for new flows: {e}");
                Vec::new()
            }
        };
        let mut sockets = sockets.into_iter();
        for _ in 0..spec.open_tcp_per_period {
            let plan = FlowPlan {
                id: book.open(Proto::Tcp),
                port: next_port as u16,
                start_offset: Duration::from_micros(rng.random_range(0..period_us)),
                client_cid: [0; CID_LEN],
                initial_dcid: [0; CID_LEN],
            };
            next_port += 1;
            tasks.spawn(tcp_flow(plan, sockets.next(), spec.clone(), book.clone(), stop.clone()));
        }
    }
    while tasks.join_next().await.is_some() {}
}

/// The random source of the offsets of the flows opened during a run: drawn apart from the
/// initial flows' (which would repeat theirs), and different for every seed.
fn late_flows_rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed ^ LATE_SEED_SALT)
}

/// A socket of type `ty` (`premade` if given) bound to the wildcard address and `port`.
fn bound_socket(vip: IpAddr, port: u16, ty: Type, premade: Option<OwnedFd>) -> io::Result<Socket> {
    let protocol = if ty == Type::STREAM { Protocol::TCP } else { Protocol::UDP };
    let socket = match premade {
        Some(fd) => Socket::from(fd),
        None => Socket::new(Domain::for_address(SocketAddr::new(vip, 0)), ty, Some(protocol))?,
    };
    socket.set_reuse_address(true)?;
    let any: IpAddr = if vip.is_ipv4() { [0u8; 4].into() } else { [0u16; 8].into() };
    socket.bind(&SocketAddr::new(any, port).into())?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Waits for the first tick at the flow's offset, then every period; `None` once stopped.
async fn next_tick(interval: &mut tokio::time::Interval, stop: &mut watch::Receiver<bool>) -> Option<()> {
    tokio::select! {
        _ = interval.tick() => Some(()),
        _ = stop.wait_for(|s| *s) => None,
    }
}

fn interval_for(plan: &FlowPlan, period: Duration) -> tokio::time::Interval {
    schedule(Instant::now() + plan.start_offset, period)
}

/// Ticks every `period` from `start`; ticks missed while the task could not run come due at
/// once (the requests owed), rather than shifting the schedule.
fn schedule(start: Instant, period: Duration) -> tokio::time::Interval {
    let mut interval = tokio::time::interval_at(start, period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Burst);
    interval
}

fn ending_of(err: &io::Error) -> Ending {
    match err.kind() {
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => Ending::Reset,
        io::ErrorKind::ConnectionRefused => Ending::Refused,
        _ => Ending::Protocol(err.to_string()),
    }
}

async fn tcp_flow(
    plan: FlowPlan,
    premade: Option<OwnedFd>,
    spec: Arc<ClientSpec>,
    book: Arc<FlowBook>,
    mut stop: watch::Receiver<bool>,
) {
    let id = plan.id;
    let end = |ending: Ending| book.update(id, |f| f.end(ending));
    let target = SocketAddr::new(spec.vip, spec.tcp_port);
    let socket = match bound_socket(spec.vip, plan.port, Type::STREAM, premade) {
        Ok(s) => TcpSocket::from_std_stream(s.into()),
        Err(e) => {
            return end(Ending::ConnectFailed(format!("bind port {}: {e}", plan.port)));
        }
    };
    // Neither the connection nor a request's reply is abandoned when the flows stop: each is
    // judged (see the module docs).
    let stream = match tokio::time::timeout(spec.tcp_reply_timeout, socket.connect(target)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return end(Ending::ConnectFailed(e.to_string())),
        Err(_) => return end(Ending::ConnectFailed("timed out".into())),
    };
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let mut interval = interval_for(&plan, spec.period);
    for seq in 0.. {
        if next_tick(&mut interval, &mut stop).await.is_none() {
            return;
        }
        let sent = book.sent();
        let request = Request { upload: spec.upload_bytes, ..Request::new(id, seq) };
        let mut bytes = request.emit().into_bytes();
        bytes.resize(bytes.len() + spec.upload_bytes as usize, b'u');
        if let Err(e) = write.write_all(&bytes).await {
            return end(ending_of(&e));
        }
        match tokio::time::timeout(spec.tcp_reply_timeout, lines.next_line()).await {
            Err(_) => {
                book.update(id, |f| f.drop_request());
                return end(Ending::Stalled);
            }
            Ok(Ok(Some(line))) => match Reply::parse(&line) {
                Ok(reply) if reply.flow == id && reply.seq == seq => {
                    book.replied(id, sent, &reply.who);
                    if let Ok(mss) = socket2::SockRef::from(write.as_ref()).tcp_mss() {
                        book.update(id, |f| f.mss = Some(mss));
                    }
                }
                Ok(reply) => {
                    return end(Ending::Protocol(format!("reply to {}/{} for {id}/{seq}", reply.flow, reply.seq)));
                }
                Err(e) => return end(Ending::Protocol(e.to_string())),
            },
            Ok(Ok(None)) => {
                book.update(id, |f| f.drop_request());
                return end(Ending::Closed);
            }
            Ok(Err(e)) => return end(ending_of(&e)),
        }
    }
}

async fn udp_flow(plan: FlowPlan, spec: Arc<ClientSpec>, book: Arc<FlowBook>, mut stop: watch::Receiver<bool>) {
    let id = plan.id;
    let end = |ending: Ending| book.update(id, |f| f.end(ending));
    let target = SocketAddr::new(spec.vip, spec.udp_port);
    let socket = match bound_socket(spec.vip, plan.port, Type::DGRAM, None)
        .and_then(|s| s.connect(&target.into()).map(|()| s))
        .and_then(|s| UdpSocket::from_std(s.into()))
    {
        Ok(s) => s,
        Err(e) => {
            return end(Ending::ConnectFailed(format!("udp port {}: {e}", plan.port)));
        }
    };
    let mut server_cid: Option<[u8; CID_LEN]> = None;
    let mut interval = interval_for(&plan, spec.period);
    let mut buf = vec![0u8; 2048];
    // Requests sent and not answered yet, oldest first, with when each was sent. Nothing
    // resends a datagram, so a lost one costs its own request only: the flow goes on sending on
    // schedule while it waits out its reply timeout (as a QUIC connection does), and a scenario
    // step waiting for rounds is not held up by every loss.
    let mut waiting: VecDeque<(u64, Instant)> = VecDeque::new();
    let mut next_seq = 0u64;
    // Once the flows stop, no request is sent and the ones still waiting are judged.
    let mut stopping = false;
    loop {
        let expires = waiting.front().map(|&(_, sent)| sent + spec.reply_timeout);
        if stopping && expires.is_none() {
            return;
        }
        let event = tokio::select! {
            _ = interval.tick(), if !stopping => UdpEvent::Due,
            received = socket.recv(&mut buf) => UdpEvent::Received(received),
            // The precondition keeps the branch off while nothing waits (its deadline unused).
            _ = tokio::time::sleep_until(expires.unwrap_or_else(Instant::now)), if expires.is_some() => UdpEvent::Expired,
            _ = stop.wait_for(|s| *s), if !stopping => UdpEvent::Stop,
        };
        match event {
            UdpEvent::Stop => stopping = true,
            UdpEvent::Due => {
                // Until the server has issued its CID, every request is an Initial (as a QUIC
                // client retransmits its Initial); afterwards short headers carry the server's CID.
                let header = match server_cid {
                    Some(dcid) => Header::Short { dcid },
                    None => Header::Long {
                        kind: LongType::Initial,
                        version: VERSION_1,
                        dcid: plan.initial_dcid.to_vec(),
                        scid: plan.client_cid.to_vec(),
                    },
                };
                let datagram = Datagram { header, payload: Request::new(id, next_seq).emit().into_bytes() };
                let sent = book.sent();
                if let Err(e) = socket.send(&datagram.emit()).await {
                    return end(ending_of(&e));
                }
                waiting.push_back((next_seq, sent));
                next_seq += 1;
            }
            UdpEvent::Received(Err(e)) => return end(ending_of(&e)),
            UdpEvent::Received(Ok(len)) => {
                let Ok(reply) = Datagram::parse(&buf[..len]) else { continue };
                let Ok(parsed) = Reply::parse_bytes(&reply.payload) else { continue };
                // A reply to a request already counted (a late one, or a duplicate) is not
                // waited for any more.
                let Some(at) = waiting.iter().position(|&(seq, _)| parsed.flow == id && seq == parsed.seq) else {
                    continue;
                };
                let (_, sent) = waiting.remove(at).expect("found above");
                if let Header::Long { scid, .. } = &reply.header
                    && server_cid.is_none()
                {
                    server_cid = scid.as_slice().try_into().ok();
                }
                book.replied(id, sent, &parsed.who);
            }
            UdpEvent::Expired => {
                waiting.pop_front();
                book.update(id, |f| f.drop_request());
            }
        }
    }
}

/// What woke a UDP flow.
enum UdpEvent {
    /// Its next request is due.
    Due,
    /// A datagram arrived (or the socket failed).
    Received(io::Result<usize>),
    /// Its oldest waiting request's reply timeout passed.
    Expired,
    /// The flows stop.
    Stop,
}

#[cfg(test)]
mod tests {
    use futures::FutureExt as _;
    use test_case::test_case;

    use super::*;
    use crate::timeline::Second;

    /// One UDP flow towards loopback every 10 ms, its replies allowed 2 s: long enough that no
    /// answered request on loopback comes near it.
    fn loopback_spec() -> ClientSpec {
        ClientSpec {
            vip: [127, 0, 0, 1].into(),
            tcp_port: 0,
            udp_port: 0,
            tcp_flows: 0,
            udp_flows: 1,
            period: Duration::from_millis(10),
            reply_timeout: Duration::from_secs(2),
            tcp_reply_timeout: Duration::from_secs(2),
            seed: 1,
            cgroup: None,
            open_tcp_per_period: 0,
            upload_bytes: 0,
        }
    }

    /// Waits until `cond` holds over the book, failing at once if the flow task ended first
    /// (a panic in it would otherwise hold the test until the guard).
    async fn wait_while_running(
        book: &FlowBook,
        flow: &mut tokio::task::JoinHandle<()>,
        what: &str,
        cond: impl Fn(&[FlowRecord]) -> bool,
    ) {
        tokio::select! {
            waited = book.wait_until(what, Duration::from_secs(30), cond) => waited.expect(what),
            ended = flow => panic!("the flow ended before {what}: {ended:?}"),
        }
    }

    /// A UDP end on loopback that sends back what `answer` makes of each request; returns the
    /// spec of one UDP flow towards it, and its task.
    async fn udp_end(
        mut answer: impl FnMut(&Datagram, &Request) -> Vec<Vec<u8>> + Send + 'static,
    ) -> (ClientSpec, tokio::task::JoinHandle<()>) {
        let server = UdpSocket::bind("127.0.0.1:0").await.expect("loopback");
        let spec = ClientSpec { udp_port: server.local_addr().expect("bound").port(), ..loopback_spec() };
        let end = tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            loop {
                let (len, from) = server.recv_from(&mut buf).await.expect("receive");
                let datagram = Datagram::parse(&buf[..len]).expect("a request datagram");
                let request = Request::parse_bytes(&datagram.payload).expect("a request");
                for out in answer(&datagram, &request) {
                    server.send_to(&out, from).await.expect("answer");
                }
            }
        });
        (spec, end)
    }

    /// The late flows' offsets differ from the initial flows' of the same seed, and between any
    /// two seeds, those that differ only in a bit of the salt included.
    #[test]
    fn every_seed_draws_its_own_late_offsets() {
        let first = |mut rng: ChaCha8Rng| rng.random::<u64>();
        for seed in [0, 1, 7, 0x1a7e, u64::MAX] {
            assert_ne!(first(late_flows_rng(seed)), first(ChaCha8Rng::seed_from_u64(seed)), "seed {seed}");
            for bit in (0..64).map(|b| 1u64 << b) {
                assert_ne!(
                    first(late_flows_rng(seed)),
                    first(late_flows_rng(seed ^ bit)),
                    "seeds {seed} and {}",
                    seed ^ bit
                );
            }
        }
    }

    /// A task that holds the flows' thread shows in the timeline as a stall of about that
    /// long: the heartbeat wakes late and records it.
    #[tokio::test]
    async fn the_heartbeat_records_the_time_the_thread_could_not_run() {
        let book = Arc::new(FlowBook::new(&loopback_spec()));
        let (stop_set, stop) = watch::channel(false);
        let beat = tokio::spawn(heartbeat(book.clone(), stop));
        // The heartbeat's timer is set (the test's runtime has one thread: this lets it run).
        tokio::task::yield_now().await;
        std::thread::sleep(Duration::from_millis(200));
        let stalled = || book.timeline().seconds.iter().map(|s| s.stalled_ms).sum::<u64>();
        let deadline = Instant::now() + Duration::from_secs(30);
        while stalled() < 150 && Instant::now() < deadline {
            tokio::time::sleep(HEARTBEAT).await;
        }
        assert!(stalled() >= 150, "a 200 ms hold recorded as {} ms of stall", stalled());
        stop_set.send_replace(true);
        beat.await.expect("the heartbeat ends when stopped");
    }

    /// Flow 0's plan: an ephemeral port, starting at once.
    fn first_flow() -> FlowPlan {
        FlowPlan { id: 0, port: 0, start_offset: Duration::ZERO, client_cid: [1; CID_LEN], initial_dcid: [2; CID_LEN] }
    }

    /// A UDP flow whose request got no answer goes on with its next requests at once (nothing
    /// resends a datagram: one loss is one request, not a stalled flow), and counts the lost
    /// one as dropped once its reply timeout has passed; when the flows stop, the requests
    /// still waiting are judged too. The answering end here serves loopback, loses request 1,
    /// and answers nothing once told to.
    #[tokio::test]
    async fn a_udp_flow_keeps_its_schedule_while_a_lost_request_waits_out_its_timeout() {
        let who = Identity { node: "be1".into(), instance: "a".into(), pid: 1 };
        // Whether the end is silent, and the requests it received (total, and while silent).
        let (silent_set, silent) = watch::channel(false);
        let (received, mut received_seen) = watch::channel((0u64, 0u64));
        let (spec, answering) = udp_end(move |_, request| {
            let quiet = *silent.borrow();
            received.send_modify(|(all, unanswered)| {
                *all += 1;
                *unanswered += u64::from(quiet);
            });
            if request.seq == 1 || quiet {
                return Vec::new();
            }
            let reply = Reply { flow: request.flow, seq: request.seq, who: who.clone(), known: true };
            let header = Header::Short { dcid: [7; CID_LEN] };
            vec![Datagram { header, payload: reply.emit().into_bytes() }.emit()]
        })
        .await;
        let book = Arc::new(FlowBook::new(&spec));
        let (stop_tx, stop) = watch::channel(false);
        let mut flow = tokio::spawn(udp_flow(first_flow(), Arc::new(spec), book.clone(), stop));
        let guard = Duration::from_secs(30);
        wait_while_running(&book, &mut flow, "five replies", |f| f[0].replies >= 5).await;
        assert_eq!(book.snapshot()[0].drops, 0, "request 1 still within its timeout");
        wait_while_running(&book, &mut flow, "request 1 dropped", |f| f[0].drops > 0).await;
        let flow_record = &book.snapshot()[0];
        assert_eq!(flow_record.drops, 1, "only request 1 was lost: {flow_record:?}");
        assert_eq!(flow_record.misroutes, 0);
        // Requests sent from now on get no answer; those still waiting when the flows stop are
        // judged: every request the other end received was answered or dropped.
        silent_set.send(true).expect("the end listens");
        tokio::time::timeout(guard, received_seen.wait_for(|&(_, unanswered)| unanswered >= 2))
            .await
            .expect("requests sent into silence")
            .expect("the end runs");
        stop_tx.send(true).expect("the flow listens");
        flow.await.expect("the flow ended");
        answering.abort();
        let flow_record = &book.snapshot()[0];
        let (all, unanswered) = *received_seen.borrow();
        assert_eq!(flow_record.drops, 1 + unanswered, "the silent end's requests dropped: {flow_record:?}");
        assert_eq!(flow_record.rounds, all, "every request judged: {flow_record:?}");
    }

    /// A TCP request still waiting for its reply when the flows stop is judged: here the other
    /// end reads it and never answers, so it is dropped once its timeout passes.
    #[tokio::test]
    async fn a_tcp_request_waiting_when_the_flows_stop_is_judged() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("loopback");
        let spec = ClientSpec {
            tcp_port: listener.local_addr().expect("bound").port(),
            tcp_flows: 1,
            udp_flows: 0,
            ..loopback_spec()
        };
        let book = Arc::new(FlowBook::new(&spec));
        let (read_tx, mut read) = watch::channel(false);
        let silent = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("the flow connects");
            let mut buf = [0u8; 256];
            let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await;
            read_tx.send(true).expect("the test waits");
            std::future::pending::<()>().await;
        });
        let (stop_tx, stop) = watch::channel(false);
        let flow = tokio::spawn(tcp_flow(first_flow(), None, Arc::new(spec), book.clone(), stop));
        tokio::time::timeout(Duration::from_secs(30), read.wait_for(|r| *r)).await.expect("a request").expect("read");
        stop_tx.send(true).expect("the flow listens");
        flow.await.expect("the flow ended");
        silent.abort();
        let flow_record = &book.snapshot()[0];
        assert_eq!((flow_record.drops, &flow_record.ending), (1, &Some(Ending::Stalled)), "{flow_record:?}");
    }

    /// What the scripted TCP end does with one request (after reading all of it).
    #[derive(Clone, Copy, Debug)]
    enum Act {
        /// Answers as this node.
        Answer(&'static str),
        /// Answers with another request's sequence number.
        WrongSeq,
        /// Answers a line that is not a reply.
        Garbage,
        /// Closes the connection (FIN).
        Close,
        /// Resets the connection (RST: linger 0).
        Reset,
    }

    /// Bytes each request of the scripted TCP flows uploads: the end checks they all arrive.
    const UPLOAD: u32 = 3000;

    /// One TCP flow (uploading [`UPLOAD`] bytes per request) against an end on loopback that
    /// does `script[seq]` with request `seq`; returns the flow's record and the timeline's sums
    /// once the flow ended on its own.
    async fn scripted_tcp_flow(script: &'static [Act]) -> (FlowRecord, Second) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("loopback");
        let spec = ClientSpec {
            tcp_port: listener.local_addr().expect("bound").port(),
            tcp_flows: 1,
            udp_flows: 0,
            upload_bytes: UPLOAD,
            ..loopback_spec()
        };
        let end = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("the flow connects");
            let mut stream = BufReader::new(stream);
            for (seq, act) in script.iter().enumerate() {
                let mut line = String::new();
                stream.read_line(&mut line).await.expect("a request line");
                let request = Request::parse(&line).expect("a request");
                assert_eq!((request.flow, request.seq, request.upload), (0, seq as u64, UPLOAD), "{line:?}");
                let mut body = vec![0u8; UPLOAD as usize];
                tokio::io::AsyncReadExt::read_exact(&mut stream, &mut body).await.expect("the upload");
                assert!(body.iter().all(|&b| b == b'u'), "the upload's bytes");
                let who = |node: &str| Identity { node: node.into(), instance: "a".into(), pid: 1 };
                let answer = match *act {
                    Act::Answer(node) => Reply { flow: 0, seq: seq as u64, who: who(node), known: true }.emit(),
                    Act::WrongSeq => Reply { flow: 0, seq: seq as u64 + 5, who: who("be1"), known: true }.emit(),
                    Act::Garbage => "HELLO\n".to_owned(),
                    Act::Close => return,
                    Act::Reset => {
                        socket2::SockRef::from(stream.get_ref()).set_linger(Some(Duration::ZERO)).expect("linger");
                        return;
                    }
                };
                stream.get_mut().write_all(answer.as_bytes()).await.expect("answer");
            }
            std::future::pending::<()>().await;
        });
        let book = Arc::new(FlowBook::new(&spec));
        let (_stop_tx, stop) = watch::channel(false);
        let flow = tokio::spawn(tcp_flow(first_flow(), None, Arc::new(spec), book.clone(), stop));
        tokio::time::timeout(Duration::from_secs(30), flow).await.expect("the flow ends on its own").expect("ran");
        end.abort();
        let sums = book.timeline().seconds.iter().fold(Second::default(), |sum, s| Second {
            offered: sum.offered + s.offered,
            replies: sum.replies + s.replies,
            resets: sum.resets + s.resets,
            misroutes: sum.misroutes + s.misroutes,
            drops: sum.drops + s.drops,
            ..sum
        });
        (book.snapshot().remove(0), sums)
    }

    /// The instrument itself: what a TCP flow records for each thing its other end can do, in
    /// the flow's record and in the timeline's per-second figures alike (the scenarios judge
    /// both). A reset or a refusal ends the flow with nothing dropped (the reset is the
    /// failure); a FIN with a request outstanding drops that request.
    #[test_case(&[Act::Answer("be1"), Act::Answer("be1"), Act::Answer("be2"), Act::Reset],
        (3, 1, 0, Some(Ending::Reset)), (4, 3, 1, 1, 0); "replies from the owner, a misroute, a reset")]
    #[test_case(&[Act::Answer("be1"), Act::Close], (1, 0, 1, Some(Ending::Closed)), (2, 1, 0, 0, 1);
        "a close with a request outstanding drops it")]
    #[test_case(&[Act::Answer("be1"), Act::WrongSeq], (1, 0, 0, Some(Ending::Protocol("reply to 0/6 for 0/1".into()))),
        (2, 1, 0, 0, 0); "a reply to another request ends the flow")]
    #[test_case(&[Act::Garbage], (0, 0, 0, Some(Ending::Protocol("malformed reply: \"HELLO\"".into()))), (1, 0, 0, 0, 0);
        "a line that is no reply ends the flow")]
    #[tokio::test]
    async fn a_tcp_flow_records_what_its_other_end_did(
        script: &'static [Act],
        (replies, misroutes, drops, ending): (u64, u64, u64, Option<Ending>),
        (offered, answered, misrouted, resets, dropped): (u64, u64, u64, u64, u64),
    ) {
        let (flow, sums) = scripted_tcp_flow(script).await;
        assert_eq!(
            (flow.replies, flow.misroutes, flow.drops, &flow.ending),
            (replies, misroutes, drops, &ending),
            "{flow:?}"
        );
        assert_eq!(flow.rounds, replies + drops, "{flow:?}");
        if replies > 0 {
            assert_eq!(flow.owner.as_ref().map(|o| o.node.as_str()), Some("be1"), "the first replier owns it");
            assert!(flow.mss.is_some_and(|mss| mss > 0), "the segment size after a reply: {flow:?}");
        }
        let sums = (sums.offered, sums.replies, sums.misroutes, sums.resets, sums.drops);
        assert_eq!(sums, (offered, answered, misrouted, resets, dropped), "the timeline's sums");
    }

    #[test]
    fn socket_errors_map_to_the_endings_a_verdict_counts() {
        let kind = |kind: io::ErrorKind| ending_of(&io::Error::from(kind));
        assert_eq!(kind(io::ErrorKind::ConnectionReset), Ending::Reset);
        assert_eq!(kind(io::ErrorKind::BrokenPipe), Ending::Reset);
        assert_eq!(kind(io::ErrorKind::ConnectionRefused), Ending::Refused);
        assert!(matches!(kind(io::ErrorKind::TimedOut), Ending::Protocol(_)));
    }

    /// A UDP flow sends Initials until the server issues its connection id, then short headers
    /// carrying that id; a reply for another flow or a duplicate is not counted, a reply from
    /// a socket other than the owner is a misroute.
    #[tokio::test]
    async fn a_udp_flow_takes_up_the_server_cid_and_counts_each_reply_once() {
        const SERVER_CID: [u8; CID_LEN] = [9; CID_LEN];
        let (headers_tx, headers) = watch::channel(Vec::<Header>::new());
        let (spec, answering) = udp_end(move |datagram, request| {
            headers_tx.send_modify(|h| h.push(datagram.header.clone()));
            let node = if request.seq < 3 { "be1" } else { "be2" };
            let who = Identity { node: node.into(), instance: "a".into(), pid: 1 };
            let header = match &datagram.header {
                Header::Long { kind, version, scid, .. } => {
                    Header::Long { kind: *kind, version: *version, dcid: scid.clone(), scid: SERVER_CID.to_vec() }
                }
                short => short.clone(),
            };
            // Another flow's reply first, then this one's twice.
            [7, request.flow, request.flow]
                .map(|flow| {
                    let reply = Reply { flow, seq: request.seq, who: who.clone(), known: true };
                    Datagram { header: header.clone(), payload: reply.emit().into_bytes() }.emit()
                })
                .to_vec()
        })
        .await;
        let book = Arc::new(FlowBook::new(&spec));
        let (stop_tx, stop) = watch::channel(false);
        let mut flow = tokio::spawn(udp_flow(first_flow(), Arc::new(spec), book.clone(), stop));
        wait_while_running(&book, &mut flow, "four replies", |f| f[0].replies >= 4).await;
        stop_tx.send(true).expect("the flow listens");
        tokio::time::timeout(Duration::from_secs(30), flow).await.expect("the flow stops").expect("ran");
        answering.abort();
        let flow = &book.snapshot()[0];
        assert_eq!(flow.replies, flow.rounds, "each reply counted once, nothing dropped: {flow:?}");
        assert_eq!(flow.misroutes, flow.replies - 3, "the replies from be2: {flow:?}");
        let headers = headers.borrow();
        let first = first_flow();
        let initial = Header::Long {
            kind: LongType::Initial,
            version: VERSION_1,
            dcid: first.initial_dcid.to_vec(),
            scid: first.client_cid.to_vec(),
        };
        assert_eq!(headers[0], initial, "the first request is an Initial");
        // Requests sent before the first reply arrived are Initials too; every one after is short.
        let short = headers.iter().position(|h| matches!(h, Header::Short { .. })).expect("a short header");
        assert!(headers[..short].iter().all(|h| *h == initial), "{headers:?}");
        assert!(headers[short..].iter().all(|h| *h == Header::Short { dcid: SERVER_CID }), "{headers:?}");
    }

    /// The comm names of this process's threads.
    fn threads() -> Vec<String> {
        let tasks = std::fs::read_dir("/proc/self/task").expect("/proc/self/task");
        tasks
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
            .map(|c| c.trim_end().to_owned())
            .collect()
    }

    /// Dropping a client (a scenario that failed half-way) stops its flows and its thread, as
    /// [`Client::stop`] does: the heartbeat, which runs until stopped, too. In a namespace of
    /// its own, whose loopback is down: the flows fail at once.
    #[test]
    fn dropping_a_client_stops_its_thread() {
        let name = format!("zwd{}", std::process::id() % 100_000);
        let netns = Netns::create(&name).expect("a namespace (the tests run as root)");
        let thread = format!("client-{name}");
        let client = Client::start(&netns, ClientSpec { tcp_flows: 1, ..loopback_spec() }).expect("started");
        // A thread takes its name once it runs; after a join, its task may linger an instant.
        let until = |named: bool, what: &str| {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while threads().contains(&thread) != named {
                assert!(std::time::Instant::now() < deadline, "{what}: {:?}", threads());
                std::thread::yield_now();
            }
        };
        until(true, "the client's thread never ran");
        drop(client);
        until(false, "the client's thread outlived the client");
    }

    /// New flows stop at the end of the TCP port range (the UDP flows' ports follow it): with
    /// room for one more round, one round opens and the opener ends on its own. In a namespace
    /// of its own, so the fixed ports clash with nothing (its loopback is down: the flows fail
    /// to connect, which is all this needs).
    #[test]
    fn new_flows_stop_at_the_end_of_the_tcp_port_range() {
        let name = format!("zwp{}", std::process::id() % 100_000);
        let netns = Netns::create(&name).expect("a namespace (the tests run as root)");
        let spec = ClientSpec {
            tcp_flows: u32::from(UDP_BASE_PORT - TCP_BASE_PORT) - 3,
            udp_flows: 0,
            open_tcp_per_period: 2,
            ..loopback_spec()
        };
        let book = Arc::new(FlowBook::new(&spec));
        book.advance_epoch();
        let opener_book = book.clone();
        let opened = netns
            .run(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                runtime.block_on(async move {
                    let (_stop_tx, stop) = watch::channel(false);
                    let (_opening_tx, opening) = watch::channel(true);
                    let opener = open_flows(Arc::new(spec), opener_book, stop, opening);
                    tokio::time::timeout(Duration::from_secs(30), opener).await.is_ok()
                })
            })
            .expect("ran in the namespace");
        assert!(opened, "the opener went on past the port range");
        let flows = book.snapshot();
        let new: Vec<(u32, u64)> = flows[flows.len() - 2..].iter().map(|f| (f.id, f.epoch)).collect();
        assert_eq!(flows.len(), usize::from(UDP_BASE_PORT - TCP_BASE_PORT) - 1, "one round of two");
        assert_eq!(new, [(19_997, 1), (19_998, 1)], "numbered on, with the epoch they opened in");
    }

    /// Each flow's 5-tuple is fixed by its number, so a rerun sends the same ones: TCP flow `i`
    /// from `TCP_BASE_PORT + i`, UDP flow `j` (numbered after the TCP flows) from
    /// `UDP_BASE_PORT + j`. In a namespace of its own, its loopback up.
    #[test]
    fn each_flow_sends_from_the_port_its_number_fixes() {
        let name = format!("zwf{}", std::process::id() % 100_000);
        let netns = Netns::create(&name).expect("a namespace (the tests run as root)");
        let seen = netns
            .run(|| {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                runtime.block_on(async {
                    let nl = zrlab_host::nl::Nl::connect(&netns).expect("netlink");
                    nl.link_up("lo").await.expect("loopback up");
                    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("tcp");
                    let udp = UdpSocket::bind("127.0.0.1:0").await.expect("udp");
                    let spec = ClientSpec {
                        tcp_port: tcp.local_addr().expect("bound").port(),
                        udp_port: udp.local_addr().expect("bound").port(),
                        tcp_flows: 3,
                        udp_flows: 2,
                        ..loopback_spec()
                    };
                    let book = Arc::new(FlowBook::new(&spec));
                    let (_stop_tx, stop) = watch::channel(false);
                    let (_opening_tx, opening) = watch::channel(false);
                    let _flows = tokio::spawn(run_flows(spec, book, stop, opening));
                    let guard = Duration::from_secs(30);
                    let mut seen = std::collections::BTreeMap::new();
                    for _ in 0..3 {
                        let (stream, peer) =
                            tokio::time::timeout(guard, tcp.accept()).await.expect("a flow").expect("accepted");
                        let mut line = String::new();
                        BufReader::new(stream).read_line(&mut line).await.expect("a request");
                        seen.insert(Request::parse(&line).expect("a request").flow, peer.port());
                    }
                    let mut buf = [0u8; 2048];
                    while seen.len() < 5 {
                        let (len, peer) = tokio::time::timeout(guard, udp.recv_from(&mut buf))
                            .await
                            .expect("a flow")
                            .expect("received");
                        let datagram = Datagram::parse(&buf[..len]).expect("a datagram");
                        seen.insert(Request::parse_bytes(&datagram.payload).expect("a request").flow, peer.port());
                    }
                    seen
                })
            })
            .expect("ran in the namespace");
        let (t, u) = (TCP_BASE_PORT, UDP_BASE_PORT);
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), [(0, t), (1, t + 1), (2, t + 2), (3, u), (4, u + 1)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_flow_that_could_not_run_sends_the_requests_it_owes_at_once() {
        let period = Duration::from_millis(100);
        let mut ticks = schedule(Instant::now(), period);
        ticks.tick().await;
        // The task does not run for three and a half periods (a stalled thread)...
        tokio::time::advance(period * 7 / 2).await;
        // ...then the three requests it owes are due at once, and the schedule holds.
        for owed in 0..3 {
            assert!(ticks.tick().now_or_never().is_some(), "request {owed} owed after the stall");
        }
        assert!(ticks.tick().now_or_never().is_none(), "nothing more owed");
        tokio::time::advance(period / 2).await;
        assert!(ticks.tick().now_or_never().is_some(), "the next tick is on the original schedule");
    }
}
