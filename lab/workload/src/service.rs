//! The service that runs on backends: a child process (`zrlab service ...`) started inside a
//! backend's namespace and cgroup.
//!
//! It answers every request with a reply naming itself ([`Identity`]): TCP over long-lived
//! connections, UDP as QUIC-shaped datagrams whose server connection ids carry the backend's
//! server id (and, in layouts v2 and v3, the process's release slot in the first byte's free
//! bits: `zrlab_common::reuseport`). It publishes its sockets' descriptors ([`Sockets`]) and its
//! lifecycle ([`Phase`]) on stdout. SIGTERM starts a drain: the listeners close; open
//! connections are served until their clients close them, and UDP flows until none has sent a
//! datagram for [`UDP_IDLE`], or until the drain timeout passes; then it exits.

use std::{
    collections::HashSet,
    io::Write as _,
    net::SocketAddr,
    os::fd::AsRawFd as _,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{TcpListener, TcpStream, UdpSocket},
    signal::unix::{SignalKind, signal},
    task::JoinSet,
};
use zrlab_common::reuseport::MAX_SLOTS;

use crate::{
    handover,
    phase::{Phase, Sockets},
};
use zrlab_wire::{
    message::{Identity, Reply, Request},
    quic::{CID_LEN, CidVersion, Datagram, Header, LongType, cid_for},
};

/// Command-line arguments of `zrlab service`.
#[derive(Clone, Debug, clap::Args)]
pub struct ServiceArgs {
    /// The node this instance runs on (named in every reply).
    #[arg(long)]
    pub node: String,
    /// The instance name (named in every reply; distinguishes releases on one node).
    #[arg(long, default_value = "a")]
    pub instance: String,
    /// TCP address to listen on (repeatable).
    #[arg(long)]
    pub tcp: Vec<SocketAddr>,
    /// UDP address to serve (repeatable).
    #[arg(long)]
    pub udp: Vec<SocketAddr>,
    /// The backend's server id, embedded in the QUIC connection ids it issues.
    #[arg(long, default_value_t = 1)]
    pub server_id: u32,
    /// Layout of the server id in connection ids.
    #[arg(long, value_enum, default_value = "v3")]
    pub cid_version: CidVersionArg,
    /// Bind with SO_REUSEPORT (several instances share the address).
    #[arg(long)]
    pub reuseport: bool,
    /// How long a drain waits for open connections before exiting anyway.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// The process's release slot (0-31), written into the connection ids it issues (layouts
    /// v2 and v3), so that a release's dispatcher keeps each UDP flow on its process.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..i64::from(MAX_SLOTS)))]
    pub slot: u32,
    /// Hand the sockets over to a successor that asks on this abstract Unix socket name
    /// (`workload::handover`): then stop accepting and reading UDP, serve what it has, and serve
    /// the datagrams the successor forwards.
    #[arg(long)]
    pub handover: Option<String>,
    /// Take the sockets from the predecessor listening on this name instead of binding.
    #[arg(long, conflicts_with = "reuseport")]
    pub takeover: Option<String>,
    /// With `--takeover`: forward datagrams whose connection id this process did not issue to
    /// the predecessor (without it they are answered here, as unknown).
    #[arg(long, requires = "takeover")]
    pub forward: bool,
}

/// [`CidVersion`] as a command-line value.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum CidVersionArg {
    /// 16-bit id.
    V1,
    /// 24-bit id.
    V2,
    /// 32-bit id.
    V3,
}

impl From<CidVersionArg> for CidVersion {
    fn from(v: CidVersionArg) -> Self {
        match v {
            CidVersionArg::V1 => Self::V1,
            CidVersionArg::V2 => Self::V2,
            CidVersionArg::V3 => Self::V3,
        }
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = number.parse().map_err(|_| format!("bad duration {text:?}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        _ => Err(format!("bad duration unit in {text:?} (use ms or s)")),
    }
}

/// A draining service's UDP flows count as ended once none has sent a datagram for this long.
pub(crate) const UDP_IDLE: Duration = Duration::from_secs(1);

/// Receive errors in a row after which a UDP socket is given up (each receive either succeeds
/// or fails at once, so a persistent error would otherwise spin a core).
const MAX_RECV_FAILURES: u32 = 100;

fn announce(phase: Phase) {
    let mut out = std::io::stdout().lock();
    // The lab reads these lines; a lab that went away (kept runs) is no reason to stop serving.
    let _ = out.write_all(phase.emit().as_bytes()).and_then(|()| out.flush());
}

fn bind(addr: SocketAddr, ty: Type, reuseport: bool) -> std::io::Result<Socket> {
    let protocol = if ty == Type::STREAM { Protocol::TCP } else { Protocol::UDP };
    let socket = Socket::new(Domain::for_address(addr), ty, Some(protocol))?;
    socket.set_reuse_address(true)?;
    if reuseport {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Runs the service until SIGTERM and a finished drain.
pub async fn serve(args: ServiceArgs) -> std::io::Result<()> {
    let identity = Identity { node: args.node.clone(), instance: args.instance.clone(), pid: std::process::id() };
    let mut terminate = signal(SignalKind::terminate())?;
    let (tcp, udp) = match &args.takeover {
        Some(name) => {
            let (tcp, udp) = handover::receive(name)?;
            let tcp: Vec<std::net::TcpListener> = tcp.into_iter().map(Into::into).collect();
            let udp: Vec<std::net::UdpSocket> = udp.into_iter().map(Into::into).collect();
            for l in &tcp {
                l.set_nonblocking(true)?;
            }
            for u in &udp {
                u.set_nonblocking(true)?;
            }
            (tcp, udp)
        }
        None => {
            let mut tcp = Vec::new();
            for addr in &args.tcp {
                let socket = bind(*addr, Type::STREAM, args.reuseport)?;
                socket.listen(1024)?;
                tcp.push(socket.into());
            }
            let mut udp = Vec::new();
            for addr in &args.udp {
                udp.push(bind(*addr, Type::DGRAM, args.reuseport)?.into());
            }
            (tcp, udp)
        }
    };
    let sockets = Sockets {
        tcp: tcp.iter().map(|s: &std::net::TcpListener| s.as_raw_fd()).collect(),
        udp: udp.iter().map(|s: &std::net::UdpSocket| s.as_raw_fd()).collect(),
    };
    // Copies for the handover and for answering forwarded datagrams once reading stopped.
    let udp_senders: Vec<std::net::UdpSocket> =
        udp.iter().map(std::net::UdpSocket::try_clone).collect::<Result<_, _>>()?;
    let handover = match &args.handover {
        Some(name) => {
            let listener = handover::listen(name)?;
            listener.set_nonblocking(true)?;
            let forwarded = handover::forward_socket(name)?;
            forwarded.set_nonblocking(true)?;
            Some((tokio::net::UnixListener::from_std(listener)?, tokio::net::UnixDatagram::from_std(forwarded)?))
        }
        None => None,
    };
    let forward_to = match (&args.takeover, args.forward) {
        (Some(name), true) => Some(handover::forward_addr(name)?),
        _ => None,
    };
    announce_sockets(&sockets);
    announce(Phase::Bound);

    let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
    let mut acceptors = JoinSet::new();
    for listener in tcp {
        acceptors.spawn(accept_until_drained(TcpListener::from_std(listener)?, identity.clone(), drain_rx.clone()));
    }
    let issuer = Issuer {
        server_id: args.server_id,
        version: CidVersion::from(args.cid_version),
        slot: args.slot,
        issued: Arc::new(Mutex::new(HashSet::new())),
    };
    let last_datagram = Arc::new(Mutex::new(Instant::now()));
    let forwarder = match forward_to {
        Some(addr) => {
            let socket = std::os::unix::net::UnixDatagram::unbound()?;
            socket.connect_addr(&addr)?;
            socket.set_nonblocking(true)?;
            Some(Arc::new(tokio::net::UnixDatagram::from_std(socket)?))
        }
        None => None,
    };
    let mut datagrams = JoinSet::new();
    for socket in udp {
        let context = Context { identity: identity.clone(), issuer: issuer.clone(), last: last_datagram.clone() };
        datagrams.spawn(serve_datagrams(UdpSocket::from_std(socket)?, context, forwarder.clone()));
    }
    announce(Phase::Ready);

    let mut forwarded = None;
    match handover {
        Some((listener, fwd)) => {
            tokio::select! {
                _ = terminate.recv() => {}
                accepted = listener.accept() => {
                    let (stream, _) = accepted?;
                    let mut stream = stream.into_std()?;
                    stream.set_nonblocking(false)?;
                    let fds = sockets.clone();
                    tokio::task::spawn_blocking(move || handover::send(&mut stream, &fds.tcp, &fds.udp))
                        .await
                        .map_err(std::io::Error::other)??;
                    // The successor reads the UDP sockets now: stop reading them here (the
                    // copies answer forwarded datagrams).
                    datagrams.abort_all();
                    let context = Context { identity: identity.clone(), issuer: issuer.clone(), last: last_datagram.clone() };
                    forwarded = Some(tokio::spawn(serve_forwarded(fwd, udp_senders, context)));
                }
            }
        }
        None => {
            terminate.recv().await;
        }
    }
    announce(Phase::Draining);
    let _ = drain_tx.send(true);
    // The drain ends when the TCP connections are closed and the UDP flows idle (checked a few
    // times a second: UDP has no end of flow to wait for), or at the timeout.
    let drained = async {
        while acceptors.join_next().await.is_some() {}
        let mut tick = tokio::time::interval(UDP_IDLE / 4);
        while last_datagram.lock().expect("not poisoned").elapsed() < UDP_IDLE {
            tick.tick().await;
        }
    };
    let _ = tokio::time::timeout(args.drain_timeout, drained).await;
    drop(datagrams);
    if let Some(task) = forwarded {
        task.abort();
    }
    announce(Phase::Exited);
    Ok(())
}

fn announce_sockets(sockets: &Sockets) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(sockets.emit().as_bytes()).and_then(|()| out.flush());
}

/// What a UDP socket needs to issue connection ids.
#[derive(Clone)]
struct Issuer {
    server_id: u32,
    version: CidVersion,
    /// The release slot, in the first byte's free bits (v2, v3).
    slot: u32,
    /// Every id issued, shared by the process's UDP sockets.
    issued: Arc<Mutex<HashSet<[u8; CID_LEN]>>>,
}

impl Issuer {
    /// A server CID for a flow whose client chose `dcid`: the free bits come from it, so reruns
    /// issue the same ids.
    fn issue(&self, dcid: &[u8]) -> Option<[u8; CID_LEN]> {
        let mut entropy = [0u8; CID_LEN];
        for (i, b) in dcid.iter().enumerate() {
            entropy[i % CID_LEN] ^= b;
        }
        let mut cid = cid_for(self.version, self.server_id, entropy)?;
        if !matches!(self.version, CidVersion::V1) {
            cid[0] = (cid[0] & 0xc0) | self.slot as u8;
        }
        self.issued.lock().expect("not poisoned").insert(cid);
        Some(cid)
    }

    fn knows(&self, cid: &[u8; CID_LEN]) -> bool {
        self.issued.lock().expect("not poisoned").contains(cid)
    }
}

/// What the accept loop takes connections from: a [`TcpListener`], or a test's stand-in.
trait Accept {
    /// The next connection.
    fn accept(&self) -> impl std::future::Future<Output = std::io::Result<(TcpStream, SocketAddr)>>;
}

impl Accept for TcpListener {
    fn accept(&self) -> impl std::future::Future<Output = std::io::Result<(TcpStream, SocketAddr)>> {
        TcpListener::accept(self)
    }
}

/// How long the accept loop waits after running out of descriptors or memory when no open
/// connection ends first (the kernel keeps the queued connections meanwhile).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts connections until the drain starts, then closes the listener and serves the open
/// connections until their clients close them. An accept that fails for want of descriptors
/// or memory (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`) fails again at once until something is
/// freed: the loop then waits for one of its connections to end, or [`ACCEPT_BACKOFF`], instead
/// of spinning on the error (which it did until issue 20); other errors (a connection reset
/// while queued) concern that connection only.
async fn accept_until_drained(
    listener: impl Accept,
    identity: Identity,
    mut drain: tokio::sync::watch::Receiver<bool>,
) {
    let mut open = JoinSet::new();
    let mut reported = false;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    open.spawn(serve_connection(stream, identity.clone()));
                }
                Err(e) if is_exhaustion(&e) => {
                    if !reported {
                        eprintln!("service: accept: {e}; waiting for a connection to end before the next");
                        reported = true;
                    }
                    tokio::select! {
                        Some(_) = open.join_next(), if !open.is_empty() => {}
                        _ = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                        _ = drain.changed() => break,
                    }
                }
                Err(_) => {}
            },
            Some(_) = open.join_next(), if !open.is_empty() => {}
            _ = drain.changed() => break,
        }
    }
    drop(listener);
    while open.join_next().await.is_some() {}
}

/// Whether an accept failed for want of descriptors or memory (it fails again until some are
/// freed).
fn is_exhaustion(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

async fn serve_connection(stream: TcpStream, identity: Identity) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let Ok(request) = Request::parse(&line) else {
            return;
        };
        // An upload's bytes come before the reply: the reply says they all arrived.
        if request.upload > 0 {
            let mut body = vec![0; request.upload as usize];
            if reader.read_exact(&mut body).await.is_err() {
                return;
            }
        }
        let reply = Reply { flow: request.flow, seq: request.seq, who: identity.clone(), known: true };
        if write.write_all(reply.emit().as_bytes()).await.is_err() {
            return;
        }
    }
}

/// What answering a datagram needs.
#[derive(Clone)]
struct Context {
    identity: Identity,
    issuer: Issuer,
    /// When the last datagram arrived (a drain waits for the UDP flows to go idle).
    last: Arc<Mutex<Instant>>,
}

/// What to do with a datagram.
enum Answer {
    /// Send this reply.
    Reply(Vec<u8>),
    /// A short header whose connection id this process did not issue.
    Unknown,
    /// Nothing (not a request, or a long header the service does not answer).
    Ignore,
}

impl Context {
    fn answer(&self, datagram: &[u8]) -> Answer {
        *self.last.lock().expect("not poisoned") = Instant::now();
        let Ok(datagram) = Datagram::parse(datagram) else { return Answer::Ignore };
        let Ok(request) = Request::parse_bytes(&datagram.payload) else { return Answer::Ignore };
        let (header, known) = match datagram.header {
            Header::Long { kind: LongType::Initial, version, dcid, scid } => {
                // A new flow: issue a server CID carrying our server id.
                let Some(cid) = self.issuer.issue(&dcid) else { return Answer::Ignore };
                (Header::Long { kind: LongType::Initial, version, dcid: scid, scid: cid.to_vec() }, true)
            }
            Header::Short { dcid } => {
                let known = self.issuer.knows(&dcid);
                (Header::Short { dcid }, known)
            }
            Header::Long { .. } => return Answer::Ignore,
        };
        if !known {
            return Answer::Unknown;
        }
        let reply = Reply { flow: request.flow, seq: request.seq, who: self.identity.clone(), known };
        Answer::Reply(Datagram { header, payload: reply.emit().into_bytes() }.emit())
    }

    /// The reply to a datagram of a flow this process does not know: named as unknown, so the
    /// client sees which socket answered (a misroute).
    fn unknown(&self, datagram: &[u8]) -> Option<Vec<u8>> {
        let datagram = Datagram::parse(datagram).ok()?;
        let request = Request::parse_bytes(&datagram.payload).ok()?;
        let reply = Reply { flow: request.flow, seq: request.seq, who: self.identity.clone(), known: false };
        Some(Datagram { header: datagram.header, payload: reply.emit().into_bytes() }.emit())
    }
}

async fn serve_datagrams(socket: UdpSocket, context: Context, forward: Option<Arc<tokio::net::UnixDatagram>>) {
    let mut buf = vec![0u8; 2048];
    let mut failures = 0;
    loop {
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(received) => {
                failures = 0;
                received
            }
            // An unconnected UDP socket reports ICMP errors for earlier sends (a client that
            // went away): one is no reason to stop. A persistent error is, instead of spinning.
            Err(e) => {
                failures += 1;
                if failures >= MAX_RECV_FAILURES {
                    eprintln!(
                        "service {}: giving up on UDP after {failures} receive errors in a row: {e}",
                        context.identity
                    );
                    return;
                }
                continue;
            }
        };
        let reply = match context.answer(&buf[..len]) {
            Answer::Reply(reply) => reply,
            Answer::Unknown => match &forward {
                // The predecessor's flow: its process answers (user-space forwarding).
                Some(forward) => {
                    let _ = forward.send(&handover::encode_forward(peer, &buf[..len])).await;
                    continue;
                }
                None => match context.unknown(&buf[..len]) {
                    Some(reply) => reply,
                    None => continue,
                },
            },
            Answer::Ignore => continue,
        };
        let _ = socket.send_to(&reply, peer).await;
    }
}

/// Serves the datagrams a successor forwards, answering through `senders` (copies of the UDP
/// sockets it handed over: the replies leave from the service's address).
async fn serve_forwarded(socket: tokio::net::UnixDatagram, senders: Vec<std::net::UdpSocket>, context: Context) {
    let Some(sender) = senders.into_iter().next() else { return };
    let Ok(sender) = sender.set_nonblocking(true).and_then(|()| UdpSocket::from_std(sender)) else { return };
    let mut buf = vec![0u8; 4096];
    while let Ok(len) = socket.recv(&mut buf).await {
        let Some((peer, datagram)) = handover::decode_forward(&buf[..len]) else { continue };
        let reply = match context.answer(datagram) {
            Answer::Reply(reply) => reply,
            Answer::Unknown => match context.unknown(datagram) {
                Some(reply) => reply,
                None => continue,
            },
            Answer::Ignore => continue,
        };
        let _ = sender.send_to(&reply, peer).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    /// A listener whose every accept fails with `EMFILE`, counting the attempts (and refusing
    /// to be spun on: a loop that retries at once would never let time pass).
    struct Exhausted(Arc<AtomicU64>);

    impl Accept for Exhausted {
        async fn accept(&self) -> std::io::Result<(TcpStream, SocketAddr)> {
            let tries = self.0.fetch_add(1, Ordering::Relaxed) + 1;
            assert!(tries < 10_000, "the accept loop spins on EMFILE ({tries} attempts without a pause)");
            Err(std::io::Error::from_raw_os_error(libc::EMFILE))
        }
    }

    /// A receive error on a UDP socket (the ICMP error of an earlier reply to a client that went
    /// away) does not stop the service's answers: only a run of them in a row does. The socket
    /// reports the error of a send to a closed port (`IP_RECVERR`) on its next receive, before
    /// the request the test sends after it.
    #[tokio::test]
    async fn one_receive_error_does_not_stop_the_udp_service() {
        use std::os::fd::AsRawFd as _;
        let service = std::net::UdpSocket::bind("127.0.0.1:0").expect("loopback");
        let on: libc::c_int = 1;
        // SAFETY: setsockopt reads `on` for its given size; the socket is ours.
        let set = unsafe {
            libc::setsockopt(
                service.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_RECVERR,
                (&raw const on).cast(),
                std::mem::size_of_val(&on) as libc::socklen_t,
            )
        };
        assert_eq!(set, 0, "IP_RECVERR: {}", std::io::Error::last_os_error());
        let closed = std::net::UdpSocket::bind("127.0.0.1:0").expect("loopback").local_addr().expect("bound");
        service.send_to(b"to a client gone", closed).expect("sent");
        // The port unreachable comes back through loopback's softirq: wait (10 s at most) until
        // it is queued, which poll reports as POLLERR whatever the events asked.
        let mut poll = libc::pollfd { fd: service.as_raw_fd(), events: 0, revents: 0 };
        // SAFETY: one pollfd of ours.
        let ready = unsafe { libc::poll(&raw mut poll, 1, 10_000) };
        assert!(ready == 1 && poll.revents & libc::POLLERR != 0, "no ICMP error came back: {ready}");
        service.set_nonblocking(true).expect("non-blocking");
        let address = service.local_addr().expect("bound");
        let identity = Identity { node: "be1".into(), instance: "a".into(), pid: 1 };
        let issuer = Issuer { server_id: 1, version: CidVersion::V1, slot: 0, issued: Arc::default() };
        let context = Context { identity: identity.clone(), issuer, last: Arc::new(Mutex::new(Instant::now())) };
        let serving = tokio::spawn(serve_datagrams(UdpSocket::from_std(service).expect("tokio"), context, None));
        let client = UdpSocket::bind("127.0.0.1:0").await.expect("loopback");
        let header = Header::Long {
            kind: LongType::Initial,
            version: zrlab_wire::quic::VERSION_1,
            dcid: vec![1; 8],
            scid: vec![2; 8],
        };
        let request = Datagram { header, payload: Request::new(3, 0).emit().into_bytes() };
        client.send_to(&request.emit(), address).await.expect("request sent");
        let mut buf = [0u8; 2048];
        let len = tokio::time::timeout(Duration::from_secs(10), client.recv(&mut buf))
            .await
            .expect("answered after the receive error")
            .expect("received");
        let reply = Reply::parse_bytes(&Datagram::parse(&buf[..len]).expect("a datagram").payload).expect("a reply");
        assert_eq!((reply.flow, reply.seq, reply.who), (3, 0, identity));
        serving.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn the_accept_loop_waits_instead_of_spinning_when_out_of_descriptors() {
        let tries = Arc::new(AtomicU64::new(0));
        let listener = Exhausted(tries.clone());
        let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
        let identity = Identity { node: "be1".into(), instance: "a".into(), pid: 1 };
        let run = accept_until_drained(listener, identity, drain_rx);
        let stop = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = drain_tx.send(true);
        };
        tokio::join!(run, stop);
        let tries = tries.load(Ordering::Relaxed);
        assert!((5..=12).contains(&tries), "about one attempt per {ACCEPT_BACKOFF:?} in a second: {tries}");
    }
}
