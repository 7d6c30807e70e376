//! Path MTU through the tunnel on a built lab (`lb-ecmp`), the half no scenario exercises: a
//! router beyond the LB sends ICMP "fragmentation needed" to the VIP about a packet a backend
//! sent (direct server return: the backend's packets leave from the VIP). The LB nodes send the
//! error on to the backend that holds the flow (`xdp_lb`'s ICMP-error path), whose kernel takes
//! it for its connection and learns the smaller path MTU towards the client: the kernel's own
//! route cache on the backend says so. (The other half, the LB's own "too big" answers, runs
//! in the scenario `pmtu-uploads`; the packet-level cases are in `xdp_conformance`.)

mod common;

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    time::Duration,
};

use zrlab_control::server_id::Registry;
use zrlab_scenario::{
    lb::Deployment,
    service_args,
    spec::{LbSpec, WorkloadSpec},
    start_service,
};
use zrlab_topology::{Lab, Topology};
use zrlab_wire::{
    message::{Reply, Request},
    packet::{EthPayload, FrameRepr, IpPayload},
};

const BACKENDS: [&str; 4] = ["be1", "be2", "be3", "be4"];
const TIMEOUT: Duration = Duration::from_secs(10);
/// What the router says fits: below every link's MTU, above Linux's least (552).
const NEXT_HOP_MTU: u16 = 1200;

/// The path MTU the kernel of node `node` holds for `dst` (`ip route get`), if it learned one.
fn learned_mtu(lab: &Lab, node: &str, dst: IpAddr) -> Option<u32> {
    let out = lab
        .node(node)
        .expect("node")
        .netns
        .run(|| std::process::Command::new("ip").args(["-4", "route", "get", &dst.to_string()]).output())
        .expect("enter")
        .expect("ip route get");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let words: Vec<&str> = text.split_whitespace().collect();
    words.windows(2).find(|w| w[0] == "mtu").and_then(|w| w[1].parse().ok())
}

#[test]
fn a_routers_frag_needed_to_the_vip_reaches_the_backend_that_sent_the_packet() {
    common::require_root();
    let _alone = common::exclusive();
    let runtime = common::runtime();
    let topology = Topology::load(&common::fixtures().join("topologies/lb-ecmp.toml")).expect("topology");
    let mut lab = runtime.block_on(Lab::build(&topology, false)).expect("lab");
    let workload: WorkloadSpec =
        toml::from_str(&format!("client = \"client\"\nbackends = {BACKENDS:?}\nvip = \"203.0.113.10\""))
            .expect("workload");
    let registry = Registry::assign(7, &workload.backends, u32::MAX);
    for backend in BACKENDS {
        let args = service_args(&workload, backend, registry.id(backend).expect("registered"));
        runtime.block_on(start_service(&mut lab, backend, &common::zrlab_exe(), &args, TIMEOUT)).expect("service");
    }
    let lb: LbSpec = toml::from_str("nodes = [\"lb1\", \"lb2\", \"lb3\"]").expect("lb section");
    let deployment = Deployment::start(&lab, &lb, &workload, registry).expect("LB deployed");

    // One connection and one exchange; the router sees the backend's reply on its way to the
    // client.
    let vip = SocketAddr::new(workload.vip, workload.tcp_port);
    let router = &lab.node("router").expect("router").netns;
    let capture = zrlab_host::capture::Capture::start(router, "c0").expect("capture");
    let (stream, line) = lab
        .node("client")
        .expect("client")
        .netns
        .run(move || -> std::io::Result<(TcpStream, String)> {
            let mut stream = TcpStream::connect_timeout(&vip, TIMEOUT)?;
            stream.set_read_timeout(Some(TIMEOUT))?;
            stream.write_all(Request::new(0, 0).emit().as_bytes())?;
            let mut line = String::new();
            BufReader::new(stream.try_clone()?).read_line(&mut line)?;
            Ok((stream, line))
        })
        .expect("enter the client")
        .expect("an exchange");
    let backend = Reply::parse(&line).expect("a reply").who.node;
    let client = stream.local_addr().expect("address");
    let frames = capture.stop().expect("capture").frames;
    // The backend's reply segment: the quote the router's error carries, its sequence number
    // moved past its data (all acknowledged: the one number the backend's window accepts).
    let (ip_header, ports, next_seq) = frames
        .iter()
        .filter_map(|f| FrameRepr::parse(&f.data))
        .find_map(|repr| {
            let EthPayload::Ip(ip) = &repr.payload else { return None };
            let IpPayload::Tcp(tcp) = &ip.payload else { return None };
            (ip.src == workload.vip && tcp.dport == client.port() && !tcp.payload.is_empty()).then(|| {
                let bytes = repr.emit();
                let header = bytes[14..34].to_vec();
                (header, [bytes[34..36].to_vec(), bytes[36..38].to_vec()].concat(), tcp.seq + tcp.payload.len() as u32)
            })
        })
        .expect("the backend's reply crossed the router");
    assert_eq!(learned_mtu(&lab, &backend, client.ip()), None, "{backend} has no path MTU for the client yet");

    let mut quote = ip_header;
    quote.extend_from_slice(&ports);
    quote.extend_from_slice(&next_seq.to_be_bytes());
    let header = etherparse::Icmpv4Header::with_checksum(
        etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: NEXT_HOP_MTU },
        ),
        &quote,
    );
    let mut message = header.to_bytes().to_vec();
    message.extend_from_slice(&quote);
    let before = deployment.totals().expect("LB counters").icmp_routed;
    router
        .run(|| -> std::io::Result<usize> {
            let socket =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::RAW, Some(socket2::Protocol::ICMPV4))?;
            socket.send_to(&message, &SocketAddr::new(workload.vip, 0).into())
        })
        .expect("enter the router")
        .expect("send the error to the VIP");

    common::wait_for("the backend to learn the path MTU", TIMEOUT, || {
        learned_mtu(&lab, &backend, client.ip()) == Some(u32::from(NEXT_HOP_MTU))
    });
    let after = deployment.totals().expect("LB counters").icmp_routed;
    assert_eq!(after - before, 1, "one LB node sent the error on");
    for other in BACKENDS.iter().filter(|b| **b != backend) {
        assert_eq!(learned_mtu(&lab, other, client.ip()), None, "{other} heard nothing");
    }
    drop(stream);
    drop(deployment);
}
