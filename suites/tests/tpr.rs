//! The server id in a TCP header option, on real sockets in the lab (sock_ops programs cannot
//! run under `BPF_PROG_TEST_RUN`): the wire format seen in captures, and the edge cases of
//! issue "Stateless routing end to end": id 0, an unknown id, a dead id, a full option space,
//! SYN cookies, TCP Fast Open, a client without the program and a server without it.
//!
//! Each test builds its own lab (`lb-single`: a client, a router, one XDP LB node with TCP id
//! routing, backends be1 and be2 running the lab's service; one connection needs no more, and
//! every further LB node costs a verification and a ring fill), attaches the programs the case
//! asks for, opens one connection from the client's cgroup and exchanges requests over it.
//! Every case checks that the connection worked (replies from one backend) and what the
//! programs and the LB counted.

mod common;

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    time::Duration,
};

use zrlab_common::{
    drop::{CONFIG_GLOBAL, DropConfig},
    tpr::{ECHO_KIND, FILL_CONFIG_GLOBAL, FillConfig, OPT_LEN, SERVER_KIND},
};
use zrlab_control::{
    bpf::{Loaded, Object},
    server_id::Registry,
    tpr::{Side, SockOpsTpr, TprCounters},
};
use zrlab_features::Feature;
use zrlab_host::capture::{Capture, Frame};
use zrlab_scenario::{
    lb::Deployment,
    measures::LbTotals,
    service_args,
    spec::{LbSpec, WorkloadSpec},
    start_service,
};
use zrlab_topology::{Lab, Topology};
use zrlab_wire::{
    message::{Reply, Request},
    packet::{FrameRepr, IpPayload, IpRepr, SYN, TcpRepr, tcp_options::TcpOption},
};

/// How long a phase (a service start, a reply) may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Requests per connection: enough segments after the handshake to see the echo on each.
const ROUNDS: u64 = 5;
/// The backends of the test bed.
const BACKENDS: [&str; 2] = ["be1", "be2"];

/// Which programs a case attaches, and how.
#[derive(Clone, Copy, Debug)]
struct Case {
    /// `tpr_server` on the backends, with their registry ids (or this id for both).
    server: Option<Ids>,
    /// `tpr_client` on the client.
    client: bool,
    /// `tpr_fill` before `tpr_client`, writing this (another program's option first).
    fill: Option<FillConfig>,
}

#[derive(Clone, Copy, Debug)]
enum Ids {
    /// The registry's ids (live on the LB nodes).
    Registry,
    /// This id on every backend.
    Fixed(u32),
}

const BOTH: Case = Case { server: Some(Ids::Registry), client: true, fill: None };

/// A lab with the LB, the services and the case's programs. Fields drop in order: programs and
/// LB before the lab.
struct Bed {
    programs: Vec<SockOpsTpr>,
    _fill: Option<Loaded>,
    lb: Deployment,
    registry: Registry,
    workload: WorkloadSpec,
    lab: Lab,
    _runtime: tokio::runtime::Runtime,
}

impl Bed {
    /// Builds the bed; `sysctls` are written in the named nodes before anything starts. `None`
    /// (after saying so) on a kernel without the TCP header-option helpers.
    fn new(case: Case, sysctls: &[(&str, &str, &str)]) -> Option<Self> {
        common::require_root();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        if !common::has_feature(Feature::TcpHeaderOptions) {
            return None;
        }
        let topology = Topology::load(&common::fixtures().join("topologies/lb-single.toml")).expect("topology");
        let mut lab = runtime.block_on(Lab::build(&topology, false)).expect("lab");
        let workload: WorkloadSpec = toml::from_str(&format!(
            "client = \"client\"\nbackends = {BACKENDS:?}\nvip = \"203.0.113.10\"\ntcp_flows = 1\nudp_flows = 0"
        ))
        .expect("workload");
        let lb_spec: LbSpec = toml::from_str("nodes = [\"lb1\"]\ntcp_id_routing = true").expect("lb section");
        let registry = Registry::assign(7, &workload.backends, u32::MAX);
        for (node, key, value) in sysctls {
            let path = Path::new("/proc/sys").join(key);
            lab.node(node)
                .expect("node")
                .netns
                .run(|| std::fs::write(&path, value))
                .expect("enter node")
                .unwrap_or_else(|e| panic!("write {} in {node}: {e}", path.display()));
        }
        let mut programs = Vec::new();
        let mut fill = None;
        if let Some(ids) = case.server {
            for backend in BACKENDS {
                let id = match ids {
                    Ids::Registry => registry.id(backend).expect("registered"),
                    Ids::Fixed(id) => id,
                };
                let cgroup = lab.cgroup_of(backend).expect("cgroup");
                programs.push(SockOpsTpr::attach(Side::Server, &cgroup, id).expect("attach tpr_server"));
            }
        }
        let client_cgroup = lab.cgroup_of("client").expect("cgroup");
        if let Some(config) = case.fill {
            // Attached first, so it runs first and takes the space.
            let mut loaded =
                Loaded::load_with(Object::TprFill, (FILL_CONFIG_GLOBAL, &config), &[]).expect("load tpr_fill");
            loaded.attach_sock_ops("tpr_fill", &client_cgroup).expect("attach tpr_fill");
            fill = Some(loaded);
        }
        if case.client {
            programs.push(SockOpsTpr::attach(Side::Client, &client_cgroup, 0).expect("attach tpr_client"));
        }
        for backend in BACKENDS {
            let args = service_args(&workload, backend, registry.id(backend).expect("registered"));
            runtime
                .block_on(start_service(&mut lab, backend, &common::zrlab_exe(), &args, TIMEOUT))
                .expect("service ready");
        }
        let lb = Deployment::start(&lab, &lb_spec, &workload, registry.clone()).expect("LB deployed");
        Some(Self { programs, _fill: fill, lb, registry, workload, lab, _runtime: runtime })
    }

    /// One connection from the client's cgroup: `rounds` requests, their replies.
    fn exchange(&self, rounds: u64, fast_open: bool) -> Vec<Reply> {
        self.connect(fast_open).rounds(rounds)
    }

    /// A connection from the client's cgroup (made and connected inside the client's namespace;
    /// used from here on from any thread).
    fn connect(&self, fast_open: bool) -> Conn {
        let cgroup = self.lab.cgroup_of("client").expect("cgroup");
        let target = SocketAddr::new(self.workload.vip, self.workload.tcp_port);
        let client = &self.lab.node("client").expect("client").netns;
        let stream = client
            .run(move || -> std::io::Result<TcpStream> {
                let fd = zrlab_host::cgroup::sockets_in(&cgroup, libc::AF_INET, libc::SOCK_STREAM, 1)?.remove(0);
                let socket = socket2::Socket::from(fd);
                if fast_open {
                    common::set_tcp_option(&socket, common::TCP_FASTOPEN_CONNECT, 1)?;
                }
                socket.connect_timeout(&target.into(), TIMEOUT)?;
                let stream = TcpStream::from(socket);
                stream.set_read_timeout(Some(TIMEOUT))?;
                Ok(stream)
            })
            .expect("enter the client")
            .expect("connect");
        Conn { reader: BufReader::new(stream.try_clone().expect("clone")), writer: stream, seq: 0 }
    }

    /// The servers' and the client's counters.
    fn counters(&self) -> (TprCounters, TprCounters) {
        let (mut server, mut client) = (TprCounters::default(), TprCounters::default());
        for program in &self.programs {
            let counters = program.counters().expect("counters");
            match program.side() {
                Side::Server => server += counters,
                Side::Client => client += counters,
            }
        }
        (server, client)
    }

    fn lb(&self) -> LbTotals {
        self.lb.totals().expect("LB counters")
    }

    /// The kernel's TCP extension counter `name` in `node`.
    fn tcp_ext(&self, node: &str, name: &str) -> u64 {
        self.lab.protocol_counter(node, &format!("TcpExt:{name}")).expect("protocol counters")
    }
}

/// One open connection to the VIP.
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    seq: u64,
}

impl Conn {
    /// `rounds` requests and their replies.
    fn rounds(&mut self, rounds: u64) -> Vec<Reply> {
        (0..rounds)
            .map(|_| {
                self.writer.write_all(Request::new(0, self.seq).emit().as_bytes()).expect("send a request");
                self.seq += 1;
                let mut line = String::new();
                self.reader.read_line(&mut line).expect("read a reply");
                Reply::parse(&line).expect("a reply")
            })
            .collect()
    }
}

/// Every reply came from one backend; which.
fn one_backend(replies: &[Reply]) -> String {
    assert_eq!(replies.len() as u64, ROUNDS, "every request answered");
    let node = &replies[0].who.node;
    assert!(replies.iter().all(|r| r.who == replies[0].who), "one socket answered all: {replies:?}");
    node.clone()
}

#[test]
fn option_on_the_wire_synack_and_every_client_segment_after_the_handshake() {
    let Some(bed) = Bed::new(BOTH, &[]) else { return };
    let client_if = Capture::start(&bed.lab.node("client").expect("client").netns, "eth0").expect("capture");
    let router = &bed.lab.node("router").expect("router").netns;
    let lb_side = Capture::start(router, "l1").expect("capture");
    let replies = bed.exchange(ROUNDS, false);
    let backend = one_backend(&replies);
    let id = bed.registry.id(&backend).expect("registered");
    let client_frames = client_if.stop().expect("client capture").frames;
    let lb_frames: Vec<Frame> = lb_side.stop().expect("LB-side capture").frames;

    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let client_pcap = dir.join("tpr-wire-client.pcap");
    let lb_pcap = dir.join("tpr-wire-lb-side.pcap");
    zrlab_wire::pcap::write(&client_pcap, &client_frames).expect("write pcap");
    zrlab_wire::pcap::write(&lb_pcap, &lb_frames).expect("write pcap");

    let vip = bed.workload.vip;
    let port = bed.workload.tcp_port;
    let (mut syns, mut synacks, mut echoing) = (0, 0, 0);
    for frame in &client_frames {
        let Some((ip, tcp)) = tcp_of(&frame.data) else { continue };
        if ip.dst == vip && tcp.dport == port {
            if tcp.flags & SYN != 0 {
                syns += 1;
                assert_eq!(echoes(&tcp), Vec::<u32>::new(), "no echo on the client's SYN");
            } else {
                assert_eq!(echoes(&tcp), vec![id], "the echo on every later client segment: {tcp:?}");
                assert_option_bytes(&frame.data, ECHO_KIND, id);
                echoing += 1;
            }
        } else if ip.src == vip && tcp.sport == port && tcp.flags & SYN != 0 {
            synacks += 1;
            let announced: Vec<&TcpOption> = tcp
                .options
                .iter()
                .filter(|o| matches!(o, TcpOption::Unknown { kind, .. } if *kind == SERVER_KIND))
                .collect();
            assert_eq!(
                announced,
                vec![&TcpOption::Unknown { kind: SERVER_KIND, data: id.to_be_bytes().to_vec() }],
                "the SYN-ACK carries the server's id"
            );
            assert_option_bytes(&frame.data, SERVER_KIND, id);
        }
    }
    assert_eq!((syns, synacks), (1, 1), "one handshake captured");
    // The handshake's ACK, one segment per request, at least one ACK of a reply.
    assert!(echoing > ROUNDS as usize, "{echoing} client segments after the SYN");

    let mut tunnelled = 0;
    for frame in &lb_frames {
        let Some(outer) = FrameRepr::parse(&frame.data) else { continue };
        let Some(IpPayload::Ip(inner)) = outer.ip_packet().map(|ip| &ip.payload) else { continue };
        if let IpPayload::Tcp(tcp) = &inner.payload
            && inner.dst == vip
            && tcp.flags & SYN == 0
        {
            assert_eq!(echoes(tcp), vec![id], "the encapsulated segment carries the echo");
            tunnelled += 1;
        }
    }
    assert!(tunnelled > ROUNDS as usize, "the LB's tunnelled segments were captured: {tunnelled}");
    let lb = bed.lb();
    assert!(lb.tcp_id_routed >= ROUNDS, "the LB routed them by id: {lb:?}");
    // Room for the option on every segment: nothing counted as without it, nothing failed.
    let (server, client) = bed.counters();
    for side in [server, client] {
        assert_eq!((side.no_space, side.write_errors), (0, 0), "{side:?}");
    }

    for pcap in [&client_pcap, &lb_pcap] {
        let out = std::process::Command::new("tcpdump").args(["-nn", "-v", "-r"]).arg(pcap).output().expect("tcpdump");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "tcpdump reads {}: {}", pcap.display(), String::from_utf8_lossy(&out.stderr));
        assert!(text.contains("unknown-183"), "tcpdump shows the echo (kind 183) in {}:\n{text}", pcap.display());
    }
}

/// The server ids a segment announces (the SYN-ACK's option).
fn announced(tcp: &TcpRepr) -> Vec<u32> {
    tcp.options
        .iter()
        .filter_map(|o| match o {
            TcpOption::Unknown { kind, data } if *kind == SERVER_KIND => {
                Some(u32::from_be_bytes(data.as_slice().try_into().ok()?))
            }
            _ => None,
        })
        .collect()
}

/// The IP packet and TCP segment of a captured frame, if it is TCP over IP.
fn tcp_of(data: &[u8]) -> Option<(IpRepr, TcpRepr)> {
    let ip = FrameRepr::parse(data)?.ip_packet()?.clone();
    match &ip.payload {
        IpPayload::Tcp(tcp) => {
            let tcp = tcp.clone();
            Some((ip, tcp))
        }
        _ => None,
    }
}

/// The ids of every echo option (0xB7) of a segment.
fn echoes(tcp: &TcpRepr) -> Vec<u32> {
    tcp.options.iter().filter_map(|o| if let TcpOption::ServerId(id) = o { Some(*id) } else { None }).collect()
}

/// The option is 6 bytes (kind, length 6, id in network order) and its padding NOPs make the
/// option list a multiple of 4 bytes.
fn assert_option_bytes(frame: &[u8], kind: u8, id: u32) {
    let mut want = vec![kind, OPT_LEN];
    want.extend_from_slice(&id.to_be_bytes());
    let at = frame.windows(want.len()).position(|w| w == want.as_slice()).expect("the option's 6 bytes");
    let tail = &frame[at + want.len()..];
    assert!(tail.len() >= 2 && tail[..2].iter().all(|b| *b == 1 || *b == 0), "6 bytes plus 2 of padding: {tail:?}");
}

#[test]
fn server_id_zero_writes_nothing_and_the_connection_works() {
    let Some(bed) = Bed::new(Case { server: Some(Ids::Fixed(0)), ..BOTH }, &[]) else { return };
    one_backend(&bed.exchange(ROUNDS, false));
    let (server, client) = bed.counters();
    assert_eq!((server.written, server.skipped), (0, 1), "server: nothing written, skipped counted: {server:?}");
    assert_eq!((client.parsed, client.echoed, client.skipped), (0, 0, 1), "client: nothing to echo: {client:?}");
    assert_eq!(bed.lb().tcp_id_routed, 0, "nothing to route by");
}

#[test]
fn unknown_id_falls_back_to_the_table_and_ring() {
    // An id no LB node knows: the registry draws random 32-bit ids, 1 is not among them.
    let registry = Registry::assign(7, &BACKENDS.map(String::from), u32::MAX);
    assert!(registry.ids().all(|(_, id)| id != 1));
    let Some(bed) = Bed::new(Case { server: Some(Ids::Fixed(1)), ..BOTH }, &[]) else { return };
    one_backend(&bed.exchange(ROUNDS, false));
    let (server, client) = bed.counters();
    assert_eq!(server.written, 1, "{server:?}");
    assert!(client.echoed > 0, "{client:?}");
    let lb = bed.lb();
    assert!(lb.id_unknown >= ROUNDS, "the LB counted the unknown id: {lb:?}");
    assert_eq!(lb.tcp_id_routed, 0, "{lb:?}");
}

#[test]
fn dead_id_falls_back_and_the_flow_keeps_its_backend() {
    let Some(mut bed) = Bed::new(BOTH, &[]) else { return };
    let mut conn = bed.connect(false);
    let backend = one_backend(&conn.rounds(ROUNDS));
    assert!(bed.lb().tcp_id_routed >= ROUNDS, "routed by id while live");
    // Removed from the configuration: its id leaves every LB's live table and the rings. The
    // backend itself still serves, and the connection's table entry still points at it.
    // Measured from here: a segment still in flight before the change is not this check's.
    bed.lb.set_weight(&backend, 0).expect("remove the backend");
    let before = bed.lb();
    let after = conn.rounds(ROUNDS);
    assert_eq!(one_backend(&after), backend, "the flow kept its backend through the table");
    let lb = bed.lb();
    assert!(lb.id_unknown >= before.id_unknown + ROUNDS, "its id is dead: {lb:?}");
    assert_eq!(lb.tcp_id_routed, before.tcp_id_routed, "nothing routed by a dead id: {lb:?}");
}

#[test]
fn full_option_space_costs_the_echo_not_the_connection() {
    let Some(bed) = Bed::new(Case { fill: Some(FillConfig::FULL), ..BOTH }, &[]) else { return };
    one_backend(&bed.exchange(ROUNDS, false));
    let (server, client) = bed.counters();
    assert_eq!(client.parsed, 1, "the id arrived: {client:?}");
    assert!(client.no_space > 0, "no room counted: {client:?}");
    assert_eq!(client.echoed, 0, "{client:?}");
    assert_eq!(client.write_errors, 0, "{client:?}");
    assert_eq!(server.echo_ok, 0, "no echo reached the server: {server:?}");
}

/// Another program of the client's cgroup wrote an option of the echo's kind first (its id 0):
/// the kernel refuses a second one (`-EEXIST`), which the client counts as a write error on
/// every segment, echoing nothing; the connection goes on, routed by the table.
#[test]
fn an_echo_another_program_wrote_is_counted_not_repeated() {
    let Some(bed) = Bed::new(Case { fill: Some(FillConfig::ECHO_FIRST), ..BOTH }, &[]) else { return };
    one_backend(&bed.exchange(ROUNDS, false));
    let (_, client) = bed.counters();
    assert_eq!(client.parsed, 1, "the id arrived: {client:?}");
    assert!(client.write_errors >= ROUNDS, "every segment's refused echo counted: {client:?}");
    assert_eq!((client.echoed, client.no_space), (0, 0), "{client:?}");
}

#[test]
fn syn_cookies_still_deliver_the_id() {
    let Some(bed) = Bed::new(BOTH, &[("be1", "net/ipv4/tcp_syncookies", "2"), ("be2", "net/ipv4/tcp_syncookies", "2")])
    else {
        return;
    };
    let backend = one_backend(&bed.exchange(ROUNDS, false));
    let (server, client) = bed.counters();
    assert_eq!((server.written, server.written_cookie), (1, 1), "a SYN-cookie SYN-ACK carried it: {server:?}");
    assert_eq!(client.parsed, 1, "{client:?}");
    assert_eq!(server.echo_ok, 1, "the echo matched: {server:?}");
    assert!(bed.tcp_ext(&backend, "SyncookiesSent") >= 1, "the kernel sent a cookie");
    assert!(bed.lb().tcp_id_routed >= ROUNDS);
}

/// A lost SYN-ACK loses no server id: the first SYN-ACK is dropped on its way to the client
/// (`xdp_drop_ack` on the client's interface, the first one only), the backend's next one
/// carries the option as the first did, the client learns the id from it and echoes it, and
/// the LB routes the connection by it. Red when `tpr_server` writes the option only on a
/// SYN-ACK's first transmission.
#[test]
fn a_lost_syn_ack_is_sent_again_with_the_id_and_the_client_learns_it_there() {
    let Some(bed) = Bed::new(BOTH, &[]) else { return };
    let client = &bed.lab.node("client").expect("client").netns;
    let config = DropConfig::syn_acks_from(bed.workload.tcp_port, 1);
    let mut fixture =
        Loaded::load_with(Object::XdpDropAck, (CONFIG_GLOBAL, &config), &["xdp_drop_ack"]).expect("load the fixture");
    fixture.attach_xdp("xdp_drop_ack", client, "eth0").expect("attach to the client's interface");
    // The router's side of the client link sends every SYN-ACK, the dropped one included.
    let router_side = Capture::start(&bed.lab.node("router").expect("router").netns, "c0").expect("capture");
    let backend = one_backend(&bed.exchange(ROUNDS, false));
    let id = bed.registry.id(&backend).expect("registered");
    let frames = router_side.stop().expect("capture").frames;
    let vip = bed.workload.vip;
    let synacks: Vec<Vec<u32>> = frames
        .iter()
        .filter_map(|f| tcp_of(&f.data))
        .filter(|(ip, tcp)| ip.src == vip && tcp.flags & SYN != 0)
        .map(|(_, tcp)| announced(&tcp))
        .collect();
    assert!(synacks.len() >= 2, "the SYN-ACK was sent again: {synacks:?}");
    assert!(synacks.iter().all(|ids| *ids == [id]), "every SYN-ACK carries the id {id}: {synacks:?}");
    let (server, client) = bed.counters();
    assert!(server.written >= 2, "written on each SYN-ACK: {server:?}");
    assert_eq!(client.parsed, 1, "the client learnt it once, from the SYN-ACK that arrived: {client:?}");
    assert_eq!((server.echo_ok, server.wrong_id), (1, 0), "the echo matched: {server:?}");
    assert!(bed.lb().tcp_id_routed >= ROUNDS, "the LB routed by it: {:?}", bed.lb());
}

/// A lost final ACK of the handshake loses no server id either: it is dropped at the router
/// (the first one only), the client's first request completes the handshake at the backend
/// and carries the echo, and the LB routes by it.
#[test]
fn a_lost_final_ack_leaves_the_echo_to_the_first_request() {
    let Some(bed) = Bed::new(BOTH, &[]) else { return };
    let router = &bed.lab.node("router").expect("router").netns;
    let config = DropConfig { limit: 1, ..DropConfig::final_acks(bed.workload.tcp_port) };
    let mut fixture =
        Loaded::load_with(Object::XdpDropAck, (CONFIG_GLOBAL, &config), &["xdp_drop_ack"]).expect("load the fixture");
    fixture.attach_xdp("xdp_drop_ack", router, "c0").expect("attach to the router's side of the client link");
    let lb_side = Capture::start(router, "l1").expect("capture");
    let replies = bed.exchange(ROUNDS, false);
    one_backend(&replies);
    // Past the router, no segment of the connection is a pure ACK before the first request.
    let frames = lb_side.stop().expect("capture").frames;
    let first_non_syn = frames
        .iter()
        .filter_map(|f| FrameRepr::parse(&f.data))
        .filter_map(|outer| match outer.ip_packet().map(|ip| ip.payload.clone()) {
            Some(IpPayload::Ip(inner)) => match inner.payload {
                IpPayload::Tcp(tcp) if tcp.flags & SYN == 0 => Some(tcp),
                _ => None,
            },
            _ => None,
        })
        .next()
        .expect("the connection's segments pass the LB");
    assert!(!first_non_syn.payload.is_empty(), "the final ACK was dropped: the first segment is the request");
    let (server, _) = bed.counters();
    assert_eq!((server.echo_ok, server.wrong_id), (1, 0), "the request's echo matched: {server:?}");
    assert!(bed.lb().tcp_id_routed >= ROUNDS, "the LB routed by it: {:?}", bed.lb());
}

#[test]
fn tcp_fast_open_still_delivers_the_id() {
    // Server: Fast Open for every listener (0x400), no cookie needed (0x200); client: no cookie
    // needed (0x4) with the client side on (0x1).
    let server = ("net/ipv4/tcp_fastopen", "1539");
    let Some(bed) =
        Bed::new(BOTH, &[("be1", server.0, server.1), ("be2", server.0, server.1), ("client", server.0, "5")])
    else {
        return;
    };
    let backend = one_backend(&bed.exchange(ROUNDS, true));
    assert!(bed.tcp_ext(&backend, "TCPFastOpenPassive") >= 1, "the connection was opened with Fast Open");
    let (server, client) = bed.counters();
    assert_eq!(server.written, 1, "{server:?}");
    assert_eq!(client.parsed, 1, "{client:?}");
    assert_eq!(server.echo_ok, 1, "{server:?}");
}

#[test]
fn client_without_the_program_sends_no_echo_and_nothing_breaks() {
    let Some(bed) = Bed::new(Case { client: false, ..BOTH }, &[]) else { return };
    one_backend(&bed.exchange(ROUNDS, false));
    let (server, client) = bed.counters();
    assert_eq!(server.written, 1, "{server:?}");
    assert_eq!(server.echo_ok + server.wrong_id, 0, "no echo: {server:?}");
    assert_eq!(client, TprCounters::default());
    let lb = bed.lb();
    assert_eq!(lb.tcp_id_routed, 0, "plain hashing: {lb:?}");
    assert!(lb.table_hits > 0, "{lb:?}");
}

#[test]
fn server_without_the_program_leaves_the_client_nothing_to_echo() {
    let Some(bed) = Bed::new(Case { server: None, ..BOTH }, &[]) else { return };
    one_backend(&bed.exchange(ROUNDS, false));
    let (_, client) = bed.counters();
    assert_eq!((client.parsed, client.skipped, client.echoed), (0, 1, 0), "{client:?}");
    assert_eq!(bed.lb().tcp_id_routed, 0);
}

/// Both programs reloaded in place (`SockOpsTpr::upgrade`) under the backends' live listeners
/// and an open connection: each cgroup link runs the new program (the kernel's listing) and
/// the old programs run nowhere; the open connection keeps echoing its id to the same backend,
/// and a connection opened after the swap gets the id on the SYN-ACK of the same listener (whose
/// option writing the old program turned on).
#[test]
fn an_upgrade_in_place_keeps_the_id_on_open_and_new_connections() {
    let Some(mut bed) = Bed::new(BOTH, &[]) else { return };
    let mut open = bed.connect(false);
    let backend = one_backend(&open.rounds(ROUNDS));
    let (server, client) = bed.counters();
    let before: Vec<(u32, Vec<u32>)> = bed
        .programs
        .iter()
        .map(|p| {
            let id = p.program_id().expect("program id");
            (id, common::links_running(id))
        })
        .collect();
    assert!(before.iter().all(|(_, links)| links.len() == 1), "one link per program: {before:?}");
    for program in &mut bed.programs {
        program.upgrade().expect("upgrade in place");
    }
    for (program, (old, links)) in bed.programs.iter().zip(&before) {
        let new = program.program_id().expect("program id");
        assert_ne!(new, *old, "a new program");
        assert_eq!(&common::links_running(new), links, "the same link runs the new program");
        assert!(common::links_running(*old).is_empty(), "the old program runs nowhere");
    }
    assert_eq!(one_backend(&open.rounds(ROUNDS)), backend, "the open connection keeps its backend");
    one_backend(&bed.exchange(ROUNDS, false));
    let (server_after, client_after) = bed.counters();
    assert_eq!(server_after.written - server.written, 1, "the new connection's SYN-ACK carried the id");
    assert_eq!(client_after.parsed - client.parsed, 1, "and the client read it");
    assert_eq!(server_after.echo_ok - server.echo_ok, 1, "its first echo carried it back");
    assert!(client_after.echoed - client.echoed >= 2 * ROUNDS, "both connections echoed: {client_after:?}");
    assert_eq!((server_after.wrong_id, server_after.write_errors), (0, 0), "{server_after:?}");
    assert!(bed.lb().tcp_id_routed >= 3 * ROUNDS, "the LB routed them by id: {:?}", bed.lb());
}
