//! The service that runs on backends: a child process (`zrlab service ...`) started inside a
//! backend's namespace and cgroup.
//!
//! It answers every request with a reply naming itself ([`Identity`]): TCP over long-lived
//! connections, UDP as QUIC-shaped datagrams whose server connection ids carry the backend's
//! server id. It publishes its lifecycle ([`Phase`]) on stdout. SIGTERM starts a drain: the
//! listeners close, open connections are served until their clients close them or the drain
//! timeout passes, then it exits.

use std::{
    collections::HashSet,
    io::Write as _,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{TcpListener, TcpStream, UdpSocket},
    signal::unix::{SignalKind, signal},
    task::JoinSet,
};

use super::{
    phase::Phase,
    quic::{CID_LEN, CidVersion, Datagram, Header, LongType, cid_for},
    wire::{Identity, Reply, Request},
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
    let mut listeners = Vec::new();
    for addr in &args.tcp {
        let socket = bind(*addr, Type::STREAM, args.reuseport)?;
        socket.listen(1024)?;
        listeners.push(TcpListener::from_std(socket.into())?);
    }
    let mut udp = Vec::new();
    for addr in &args.udp {
        udp.push(UdpSocket::from_std(bind(*addr, Type::DGRAM, args.reuseport)?.into())?);
    }
    announce(Phase::Bound);

    let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
    let mut acceptors = JoinSet::new();
    for listener in listeners {
        acceptors.spawn(accept_until_drained(listener, identity.clone(), drain_rx.clone()));
    }
    let cid_version = CidVersion::from(args.cid_version);
    let issued = Arc::new(Mutex::new(HashSet::new()));
    let mut datagrams = JoinSet::new();
    for socket in udp {
        datagrams.spawn(serve_datagrams(socket, identity.clone(), args.server_id, cid_version, issued.clone()));
    }
    announce(Phase::Ready);

    terminate.recv().await;
    announce(Phase::Draining);
    let _ = drain_tx.send(true);
    // UDP has no connections to finish: its sockets close now.
    drop(datagrams);
    let finished = async { while acceptors.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(args.drain_timeout, finished).await;
    announce(Phase::Exited);
    Ok(())
}

/// Accepts connections until the drain starts, then closes the listener and serves the open
/// connections until their clients close them.
async fn accept_until_drained(
    listener: TcpListener,
    identity: Identity,
    mut drain: tokio::sync::watch::Receiver<bool>,
) {
    let mut open = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    open.spawn(serve_connection(stream, identity.clone()));
                }
            }
            Some(_) = open.join_next(), if !open.is_empty() => {}
            _ = drain.changed() => break,
        }
    }
    drop(listener);
    while open.join_next().await.is_some() {}
}

async fn serve_connection(stream: TcpStream, identity: Identity) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let Ok(request) = Request::parse(&line) else {
            return;
        };
        let reply = Reply { flow: request.flow, seq: request.seq, who: identity.clone(), known: true };
        if write.write_all(reply.emit().as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn serve_datagrams(
    socket: UdpSocket,
    identity: Identity,
    server_id: u32,
    cid_version: CidVersion,
    issued: Arc<Mutex<HashSet<[u8; CID_LEN]>>>,
) {
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
                    eprintln!("service {identity}: giving up on UDP after {failures} receive errors in a row: {e}");
                    return;
                }
                continue;
            }
        };
        let Ok(datagram) = Datagram::parse(&buf[..len]) else {
            continue;
        };
        let Ok(request) = Request::parse_bytes(&datagram.payload) else {
            continue;
        };
        let (header, known) = match datagram.header {
            Header::Long { kind: LongType::Initial, version, dcid, scid } => {
                // A new flow: issue a server CID carrying our server id. Its free bits come from
                // the client's random CID, so reruns issue the same ids.
                let mut entropy = [0u8; CID_LEN];
                for (i, b) in dcid.iter().enumerate() {
                    entropy[i % CID_LEN] ^= b;
                }
                let Some(cid) = cid_for(cid_version, server_id, entropy) else {
                    continue;
                };
                issued.lock().expect("not poisoned").insert(cid);
                (Header::Long { kind: LongType::Initial, version, dcid: scid, scid: cid.to_vec() }, true)
            }
            Header::Short { dcid } => {
                let known = issued.lock().expect("not poisoned").contains(&dcid);
                (Header::Short { dcid }, known)
            }
            Header::Long { .. } => continue,
        };
        let reply = Reply { flow: request.flow, seq: request.seq, who: identity.clone(), known };
        let out = Datagram { header, payload: reply.emit().into_bytes() };
        let _ = socket.send_to(&out.emit(), peer).await;
    }
}
