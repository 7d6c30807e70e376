//! `zrlab bench tpr`: what stateless routing by the TCP option costs, as ratios to the same
//! thing without it, each measured in the same run (these machines are noisy).
//!
//! 1. **The LB**: `xdp_lb_bench` (the restoring variant, `BPF_PROG_TEST_RUN` with a repeat
//!    count) on the same segment (an ACK carrying a live id in the option, its flow in the
//!    connection table) sent to two VIPs that differ only in id routing. Off: a table hit that
//!    never walks the options. On: the same hit, the option walk and the live-id lookup. Each
//!    round samples "off" and then "on" right after it; the ratio is the median of the rounds'.
//! 2. **The hosts**: a client and a backend on one veth (`fixtures/topologies/pair.toml`, no
//!    router or LB), sockets in each node's cgroup. Per round, each configuration (nothing
//!    attached; `tpr_server` on the backend; `tpr_client` on the client; both) attaches its
//!    programs, starts a fresh listener (a listener only writes options if the program was
//!    there when it started listening), then measures
//!    - **set-up**: `CONNECTIONS` sequential connections, each connect, one request and its
//!      reply, close (the server closes first, so no client port lingers in `TIME_WAIT`);
//!    - **latency**: `REQUESTS` sequential request/reply round trips on one connection.
//!
//!    A configuration's ratio is the median over rounds of its time over the detached time
//!    measured just before it. One thread drives both ends (see [`Pair::measure`]) and one
//!    request is in flight at a time, so the figures are the CPU cost of the kernel path per
//!    connection and per round trip, not a load generator's throughput: there is no generator
//!    to be the bottleneck, and no thread hand-off to wait for.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::bench::xdp::{median, paired, sample, tcp};
use zrlab_control::{
    lb::{Balancer, RealSpec, Settings, VipOptions, VipSpec},
    tpr::{Side, SockOpsTpr},
};
use zrlab_host::error::{LabError, Result};
use zrlab_topology::{Lab, Topology};
use zrlab_wire::Proto;
use zrlab_wire::packet::{ACK, tcp_options::TcpOption};

/// How to measure.
#[derive(Clone, Debug)]
pub(crate) struct Options {
    /// Iterations per `BPF_PROG_TEST_RUN` call.
    pub repeat: u32,
    /// Paired rounds (medians are reported).
    pub rounds: usize,
    /// Connections per set-up sample.
    pub connections: usize,
    /// Round trips per latency sample.
    pub requests: usize,
    /// The `fixtures` directory (for the pair topology).
    pub fixtures: PathBuf,
}

impl Default for Options {
    fn default() -> Self {
        Self { repeat: 200_000, rounds: 11, connections: 200, requests: 2_000, fixtures: PathBuf::from("fixtures") }
    }
}

/// The LB with id routing on against off, on the same segment.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct LbCost {
    /// ns per packet, id routing off (median).
    pub off_ns: f64,
    /// ns per packet, id routing on (median).
    pub on_ns: f64,
    /// Median of each round's on/off.
    pub ratio: f64,
}

/// One host configuration against the detached one.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct HostCost {
    /// Which programs were attached: `server`, `client` or `both`.
    pub attached: &'static str,
    /// Connections per second (set-up, first request and reply, close), median.
    pub setup_per_s: f64,
    /// Its ratio of time per connection to the detached time measured just before it.
    pub setup_ratio: f64,
    /// Microseconds per request round trip, median.
    pub latency_us: f64,
    /// Its ratio to the detached latency measured just before it.
    pub latency_ratio: f64,
}

/// The report (`target/bench/tpr.json`).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Report {
    /// `uname -r`.
    pub kernel: String,
    /// The LB.
    pub lb: LbCost,
    /// Detached: connections per second.
    pub detached_setup_per_s: f64,
    /// Detached: microseconds per round trip.
    pub detached_latency_us: f64,
    /// Each attached configuration.
    pub hosts: Vec<HostCost>,
}

impl Report {
    /// The terminal table.
    pub(crate) fn table(&self) -> String {
        let mut out = format!(
            "LB, same segment to a VIP with id routing on vs off: {:.1} vs {:.1} ns/packet, ratio {:.3}\n\n",
            self.lb.on_ns, self.lb.off_ns, self.lb.ratio
        );
        out.push_str(&format!(
            "{:<10} {:>14} {:>12} {:>14} {:>14}\n",
            "sock_ops", "set-ups/s", "set-up ratio", "round trip us", "latency ratio"
        ));
        out.push_str(&format!(
            "{:<10} {:>14.0} {:>12} {:>14.1} {:>14}\n",
            "detached", self.detached_setup_per_s, "1", self.detached_latency_us, "1"
        ));
        for h in &self.hosts {
            out.push_str(&format!(
                "{:<10} {:>14.0} {:>12.3} {:>14.1} {:>14.3}\n",
                h.attached, h.setup_per_s, h.setup_ratio, h.latency_us, h.latency_ratio
            ));
        }
        out
    }
}

/// Runs the benchmark.
pub(crate) async fn run(opts: &Options) -> Result<Report> {
    if opts.rounds == 0 || opts.repeat == 0 || opts.connections == 0 || opts.requests == 0 {
        return Err(LabError::Usage("rounds, repeat, connections and requests must be at least 1".into()));
    }
    let lb = lb_cost(opts)?;
    let topology = Topology::load(&opts.fixtures.join("topologies/pair.toml"))?;
    let lab = Lab::build(&topology, false).await?;
    let pair = Pair::new(&lab)?;
    let configs: [(&'static str, bool, bool); 3] =
        [("server", true, false), ("client", false, true), ("both", true, true)];
    let mut detached_setup = Vec::new();
    let mut detached_latency = Vec::new();
    let mut hosts = Vec::new();
    for (attached, server, client) in configs {
        let mut setup = Vec::new();
        let mut latency = Vec::new();
        let mut setup_ratios = Vec::new();
        let mut latency_ratios = Vec::new();
        for _ in 0..opts.rounds {
            let base = pair.measure(false, false, opts)?;
            let with = pair.measure(server, client, opts)?;
            detached_setup.push(base.0);
            detached_latency.push(base.1);
            setup.push(with.0);
            latency.push(with.1);
            setup_ratios.push(with.0 / base.0);
            latency_ratios.push(with.1 / base.1);
        }
        hosts.push(HostCost {
            attached,
            setup_per_s: 1e9 / median(&setup),
            setup_ratio: median(&setup_ratios),
            latency_us: median(&latency) / 1e3,
            latency_ratio: median(&latency_ratios),
        });
    }
    drop(pair);
    lab.teardown()?;
    Ok(Report {
        kernel: zrlab_host::kernel_release(),
        lb,
        detached_setup_per_s: 1e9 / median(&detached_setup),
        detached_latency_us: median(&detached_latency) / 1e3,
        hosts,
    })
}

/// The LB's two VIPs, the same segment to each.
fn lb_cost(opts: &Options) -> Result<LbCost> {
    let mut lb = Balancer::load(&Settings::default())?;
    let reals: Vec<RealSpec> = ["192.0.2.2", "192.0.2.6", "192.0.2.10", "192.0.2.14"]
        .iter()
        .map(|a| RealSpec { addr: a.parse().expect("valid"), weight: 1, up: true })
        .collect();
    let vip = "203.0.113.10".parse().expect("valid");
    lb.set_vip(
        &VipSpec::new(vip, 80, Proto::Tcp).with(VipOptions { tcp_id_routing: true, ..VipOptions::default() }),
        &reals,
    )?;
    lb.set_vip(&VipSpec::new(vip, 81, Proto::Tcp), &reals)?;
    let ids = reals.iter().enumerate().map(|(i, r)| (i as u32 + 1, r.addr)).collect();
    lb.sync_server_ids(&ids)?;
    lb.load_bench()?;
    let program = lb.program("xdp_lb_bench")?;
    let on = tcp("198.51.100.2", "203.0.113.10", 80, ACK, vec![TcpOption::ServerId(2)]);
    let off = tcp("198.51.100.2", "203.0.113.10", 81, ACK, vec![TcpOption::ServerId(2)]);
    // Warm-up: each flow's first packet puts it in the connection table.
    for frame in [&on, &off] {
        sample(program, frame, 1)?;
    }
    let measured =
        paired(opts.rounds, || Ok(sample(program, &off, opts.repeat)?.0), || Ok(sample(program, &on, opts.repeat)?.0))?;
    Ok(LbCost { off_ns: median(&measured.floors), on_ns: measured.ns, ratio: measured.ratio })
}

/// The client and the backend of the pair topology.
struct Pair<'a> {
    lab: &'a Lab,
    client_cgroup: PathBuf,
    server_cgroup: PathBuf,
    server: SocketAddr,
}

/// The backend's port.
const PORT: u16 = 8080;
/// How long any one connect or reply may take.
const TIMEOUT: Duration = Duration::from_secs(5);

impl<'a> Pair<'a> {
    fn new(lab: &'a Lab) -> Result<Self> {
        Ok(Self {
            lab,
            client_cgroup: lab.cgroup_of("client")?,
            server_cgroup: lab.cgroup_of("be1")?,
            server: SocketAddr::new("198.51.100.1".parse().expect("valid"), PORT),
        })
    }

    /// One sample of a configuration: (ns per connection, ns per round trip).
    ///
    /// Both ends are driven from this one thread: the sockets belong to their nodes' namespaces
    /// and cgroups from their creation on, and a veth delivers a segment in the sender's
    /// softirq, so every step completes without waking another thread. A two-thread ping-pong
    /// measured the VM's idle wake-ups (about 50 us per hand-off here) instead of the kernel
    /// path the programs add to.
    fn measure(&self, server: bool, client: bool, opts: &Options) -> Result<(f64, f64)> {
        // Attached for this sample only, before the listener and the client sockets exist.
        let _server = server.then(|| SockOpsTpr::attach(Side::Server, &self.server_cgroup, 1)).transpose()?;
        let _client = client.then(|| SockOpsTpr::attach(Side::Client, &self.client_cgroup, 0)).transpose()?;
        let (cgroup, addr) = (self.server_cgroup.clone(), self.server);
        let listener = self.lab.node("be1")?.netns.run(move || listen(&cgroup, addr))?;
        let listener = listener.map_err(|e| LabError::os("listen on", addr.to_string(), e))?;
        let cgroup = self.client_cgroup.clone();
        let count = opts.connections + 1;
        let sockets = self
            .lab
            .node("client")?
            .netns
            .run(move || zrlab_host::cgroup::sockets_in(&cgroup, libc::AF_INET, libc::SOCK_STREAM, count))?
            .map_err(|e| LabError::os("make client sockets in", self.client_cgroup.display().to_string(), e))?;
        timed(&listener, sockets, self.server, opts.connections, opts.requests)
            .map_err(|e| LabError::os("measure connections to", addr.to_string(), e))
    }
}

/// A listener made in the backend's cgroup (accepted sockets inherit it).
fn listen(cgroup: &Path, addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket =
        socket2::Socket::from(zrlab_host::cgroup::sockets_in(cgroup, libc::AF_INET, libc::SOCK_STREAM, 1)?.remove(0));
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    Ok(TcpListener::from(socket))
}

/// An accepted pair: the client's and the server's end.
struct Conn {
    client: TcpStream,
    server: TcpStream,
}

/// Connects `socket` to `target` and accepts it on `listener`.
fn open(listener: &TcpListener, socket: std::os::fd::OwnedFd, target: SocketAddr) -> std::io::Result<Conn> {
    let socket = socket2::Socket::from(socket);
    socket.connect_timeout(&target.into(), TIMEOUT)?;
    let client = TcpStream::from(socket);
    let (server, _) = listener.accept()?;
    for stream in [&client, &server] {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(TIMEOUT))?;
    }
    Ok(Conn { client, server })
}

/// One request and its reply.
fn round_trip(conn: &mut Conn, buf: &mut [u8; 5]) -> std::io::Result<()> {
    conn.client.write_all(b"ping\n")?;
    conn.server.read_exact(buf)?;
    conn.server.write_all(b"pong\n")?;
    conn.client.read_exact(buf)
}

/// Times `connections` set-ups (connect, accept, one round trip, close: the server first, so
/// no client port lingers in `TIME_WAIT`), then `requests` round trips on one more connection.
fn timed(
    listener: &TcpListener,
    sockets: Vec<std::os::fd::OwnedFd>,
    target: SocketAddr,
    connections: usize,
    requests: usize,
) -> std::io::Result<(f64, f64)> {
    let mut sockets = sockets.into_iter();
    let mut buf = [0u8; 5];
    let started = Instant::now();
    for _ in 0..connections {
        let mut conn = open(listener, sockets.next().expect("one socket per connection"), target)?;
        round_trip(&mut conn, &mut buf)?;
        drop(conn.server);
        // The server's FIN.
        if conn.client.read(&mut buf)? != 0 {
            return Err(std::io::Error::other("data after the reply"));
        }
    }
    let setup = started.elapsed().as_nanos() as f64 / connections as f64;
    let mut conn = open(listener, sockets.next().expect("one socket for the latency run"), target)?;
    let started = Instant::now();
    for _ in 0..requests {
        round_trip(&mut conn, &mut buf)?;
    }
    let latency = started.elapsed().as_nanos() as f64 / requests as f64;
    Ok((setup, latency))
}
