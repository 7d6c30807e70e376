//! The lab's link impairment (`tc_impair` over TCX, `zrlab_control::impair`) on a built lab:
//! datagrams from the client to a socket on the router, through an impaired interface. Every
//! frame is dropped at 100%, every one arrives twice at 100% duplication, a drop rate of 20%
//! drops about a fifth (within five standard deviations), each direction impairs only its own
//! frames, and the same seed on the same CPU makes the same decisions. Linux 6.6+ (TCX).

mod common;

use std::{
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use zrlab_common::impair::INGRESS;
use zrlab_control::impair::{DirectionCounters, Impairment, Rates};
use zrlab_features::Feature;
use zrlab_host::capture::Injector;
use zrlab_topology::{Lab, Topology};
use zrlab_wire::packet::{FrameRepr, IpPayload, IpRepr, UdpRepr};

const SENT: u64 = 2000;
const ROUTER: &str = "198.51.100.1:9999";

/// The lab (lb-single: only its client link is used), or `None` on a kernel without TCX.
fn lab(runtime: &tokio::runtime::Runtime) -> Option<Lab> {
    common::require_root();
    if !common::has_feature(Feature::Tcx) {
        return None;
    }
    let topology = Topology::load(&common::fixtures().join("topologies/lb-single.toml")).expect("topology");
    let lab = runtime.block_on(Lab::build(&topology, false)).expect("lab");
    // Only the test's datagrams cross the link while it counts: no IPv6 router solicitations
    // or neighbour discovery, and the client knows the router's MAC before anything drops.
    for node in ["client", "router"] {
        let write = || std::fs::write("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1");
        lab.node(node).expect("node").netns.run(write).expect("enter").expect("disable IPv6");
    }
    assert_eq!(send_and_count(&lab, 1), 1, "the link works before it is impaired");
    Some(lab)
}

/// Sends `sent` datagrams from the client (its thread pinned to CPU 0, so that the
/// impairment's per-CPU sequence is the same from run to run) to a socket on the router;
/// returns how many arrived.
fn send_and_count(lab: &Lab, sent: u64) -> u64 {
    let addr: SocketAddr = ROUTER.parse().expect("valid");
    let receiver = lab
        .node("router")
        .expect("router")
        .netns
        .run(|| UdpSocket::bind(addr))
        .expect("enter the router")
        .expect("bind on the router");
    // Room for every datagram (the default buffer holds a few hundred), so that a slow reader
    // (a TCG guest) is not what drops them; root may exceed rmem_max.
    let room: libc::c_int = 16 << 20;
    // SAFETY: a valid socket and option value for the call's duration.
    let set = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&receiver),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const room).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
    let scale: u32 = std::env::var("ZRLAB_TIME_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1).max(1);
    receiver.set_read_timeout(Some(Duration::from_millis(300) * scale)).expect("timeout");
    // Read while they arrive: until 300 ms of silence (times the matrix's time scale).
    let counting = std::thread::spawn(move || {
        let mut buf = [0u8; 16];
        let mut arrived = 0;
        while receiver.recv(&mut buf).is_ok() {
            arrived += 1;
        }
        arrived
    });
    lab.node("client")
        .expect("client")
        .netns
        .run(|| {
            // SAFETY: a zeroed cpu_set_t with CPU 0 set, for the calling thread only.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(0, &mut set);
                assert_eq!(libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set), 0, "pin to CPU 0");
            }
            let sender = UdpSocket::bind("0.0.0.0:0").expect("bind on the client");
            for n in 0..sent {
                sender.send_to(&n.to_be_bytes(), addr).expect("send");
                // Paced: the receiving socket's buffer must not be what drops them.
                if n % 50 == 49 {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        })
        .expect("enter the client");
    counting.join().expect("the counting thread")
}

/// Sends `each` UDP datagrams in IPv4-in-IPv4 and as many in IPv6-in-IPv4 from the client to
/// the router (a raw socket: the client has no tunnel device).
fn send_tunnelled(lab: &Lab, each: usize) {
    let ip = |s: &str| s.parse::<std::net::IpAddr>().expect("valid");
    let (client, router) = (ip("198.51.100.2"), ip("198.51.100.1"));
    let udp = || IpPayload::Udp(UdpRepr { sport: 4242, dport: 9999, payload: vec![0; 8] });
    let inner_v4 = IpRepr::new(ip("198.51.100.2"), ip("203.0.113.10"), udp());
    let inner_v6 = IpRepr::new(ip("2001:db8::2"), ip("2001:db8::10"), udp());
    let packets: Vec<Vec<u8>> = [inner_v4, inner_v6]
        .into_iter()
        .map(|inner| IpRepr::new(client, router, IpPayload::Ip(Box::new(inner))).emit())
        .collect();
    lab.node("client")
        .expect("client")
        .netns
        .run(|| {
            let raw = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::RAW, Some(libc::IPPROTO_RAW.into()))
                .expect("raw socket");
            let to: socket2::SockAddr = SocketAddr::new(router, 0).into();
            for packet in &packets {
                for _ in 0..each {
                    raw.send_to(packet, &to).expect("send");
                }
            }
        })
        .expect("enter the client");
}

fn attach(lab: &Lab, node: &str, ifname: &str, ingress: Rates, egress: Rates, seed: u64) -> Impairment {
    Impairment::attach(&lab.node(node).expect("node").netns, ifname, ingress, egress, seed).expect("attach")
}

const fn rates(drop_ppm: u32, dup_ppm: u32) -> Rates {
    Rates { drop_ppm, dup_ppm }
}

#[test]
fn everything_dropped_or_everything_twice_at_the_extreme_rates_in_either_direction() {
    let runtime = common::runtime();
    let _alone = common::exclusive();
    let Some(lab) = lab(&runtime) else { return };
    // The router receives them: its ingress.
    let mut router = attach(&lab, "router", "c0", rates(1_000_000, 0), Rates::default(), 1);
    assert_eq!(send_and_count(&lab, SENT), 0, "every datagram dropped at the router's ingress");
    let (ingress, egress) = router.counters().expect("counters");
    assert_eq!(ingress.dropped_udp, SENT, "{ingress:?}");
    assert!(ingress.seen >= SENT && ingress.dropped >= SENT, "every frame seen and dropped: {ingress:?}");
    assert_eq!(egress.dropped, 0, "the other direction untouched: {egress:?}");
    // UDP inside the LB's tunnel counts as UDP: IPv4 in IPv4, IPv6 in IPv4, and IPv4 in IPv6
    // (injected as frames: the lab's link has no IPv6 addresses; the hook sees them before
    // the router's stack would refuse them).
    send_tunnelled(&lab, 100);
    let v6 = |s: &str| s.parse::<std::net::IpAddr>().expect("valid");
    let udp = IpPayload::Udp(UdpRepr { sport: 4242, dport: 9999, payload: vec![0; 8] });
    let inner = IpRepr::new(v6("198.51.100.2"), v6("203.0.113.10"), udp);
    let frame = FrameRepr::with_ip(IpRepr::new(v6("2001:db8::2"), v6("2001:db8::1"), IpPayload::Ip(Box::new(inner))));
    let injector = Injector::open(&lab.node("client").expect("client").netns, "eth0").expect("injector");
    for _ in 0..100 {
        injector.send(&frame.emit()).expect("inject");
    }
    common::wait_for("the injected frames at the router", Duration::from_secs(5), || {
        router.counters().expect("counters").0.dropped_udp == SENT + 300
    });
    router.set(INGRESS, rates(0, 1_000_000)).expect("set");
    assert_eq!(send_and_count(&lab, SENT), 2 * SENT, "every datagram twice");
    assert_eq!(router.counters().expect("counters").0.duplicated, SENT);
    router.set(INGRESS, Rates::default()).expect("set");
    // The client sends them: its egress.
    let client = attach(&lab, "client", "eth0", Rates::default(), rates(0, 1_000_000), 2);
    assert_eq!(send_and_count(&lab, SENT), 2 * SENT, "every datagram twice, duplicated as it left");
    let (ingress, egress) = client.counters().expect("counters");
    assert_eq!((ingress.duplicated, egress.duplicated), (0, SENT), "{ingress:?} {egress:?}");
    drop((router, client));
    lab.teardown().expect("teardown");
}

#[test]
fn a_drop_rate_drops_its_share_and_a_seed_repeats_its_decisions() {
    let runtime = common::runtime();
    let _alone = common::exclusive();
    let Some(lab) = lab(&runtime) else { return };
    let mut runs: Vec<(u64, DirectionCounters)> = Vec::new();
    for seed in [7, 7, 8] {
        let router = attach(&lab, "router", "c0", rates(200_000, 100_000), Rates::default(), seed);
        let arrived = send_and_count(&lab, SENT);
        let ingress = router.counters().expect("counters").0;
        assert!(ingress.seen >= SENT, "every datagram seen: {ingress:?}");
        // Every datagram that was not dropped arrived, plus one copy per duplicate.
        assert_eq!(arrived, SENT - ingress.dropped_udp + ingress.duplicated, "{ingress:?}");
        // Binomial: n = 2000, p = 0.2: mean 400, five standard deviations 89.
        assert!(ingress.dropped_udp.abs_diff(400) <= 89, "about a fifth dropped: {ingress:?}");
        // Of the 1,600 kept, p = 0.1: mean 160, five standard deviations 60.
        assert!(ingress.duplicated.abs_diff(160) <= 60, "about a tenth of the rest duplicated: {ingress:?}");
        runs.push((arrived, ingress));
        drop(router);
    }
    assert_eq!(runs[0], runs[1], "the same seed, the same decisions");
    assert_ne!(runs[0], runs[2], "another seed, other decisions");
    // Frames that cross an impairment whose rates are zero do not move its draws: the same
    // seed, idle first, then the rates: the same decisions as the first run.
    let mut idle = attach(&lab, "router", "c0", Rates::default(), Rates::default(), 7);
    assert_eq!(send_and_count(&lab, 500), 500, "nothing impaired at zero rates");
    idle.set(INGRESS, rates(200_000, 100_000)).expect("set");
    send_and_count(&lab, SENT);
    let ingress = idle.counters().expect("counters").0;
    let first = runs[0].1;
    assert_eq!((ingress.dropped_udp, ingress.duplicated), (first.dropped_udp, first.duplicated), "{ingress:?}");
    drop(idle);
    lab.teardown().expect("teardown");
}

#[test]
fn rates_above_one_million_per_million_are_refused() {
    let runtime = common::runtime();
    let _alone = common::exclusive();
    let Some(lab) = lab(&runtime) else { return };
    let err =
        Impairment::attach(&lab.node("router").expect("router").netns, "c0", rates(1_000_001, 0), Rates::default(), 1)
            .expect_err("refused");
    assert!(err.to_string().contains("1000001"), "{err}");
    lab.teardown().expect("teardown");
}
