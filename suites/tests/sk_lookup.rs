//! The `SK_LOOKUP` dispatcher of a release (`sk_lookup_steer`, `zrlab_control::sklookup`) on
//! real sockets in a namespace of its own, IPv4 and IPv6: new flows go to the ready slot, and a
//! UDP flow stays with the socket that took its first datagram after the ready slot moved on.
//! Until this suite the dispatcher ran only inside the IPv4 release scenarios.
//!
//! The two clients of a case differ only in the last 32 bits of their address and use the same
//! source port: a flow key that dropped any part of the address would merge them, and the
//! second client would be steered to the first one's socket.

mod common;

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    time::Duration,
};

use socket2::{Domain, Protocol, Socket, Type};
use test_case::test_case;
use zrlab_control::sklookup::SkLookupDispatch;
use zrlab_features::Feature;
use zrlab_host::{netns::Netns, nl::Nl, run_id::RunId};

const SERVICE_PORT: u16 = 4433;
const CLIENT_PORT: u16 = 40_000;
const RECV_TIMEOUT: Duration = Duration::from_secs(2);

/// A UDP socket of the service: bound to the wildcard address of its family with
/// `SO_REUSEPORT`, as both processes of a release bind the service's port.
fn service_socket(v6: bool) -> std::io::Result<UdpSocket> {
    let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    if v6 {
        socket.set_only_v6(true)?;
    }
    let any: IpAddr = if v6 { "::".parse().expect("address") } else { "0.0.0.0".parse().expect("address") };
    socket.bind(&SocketAddr::new(any, SERVICE_PORT).into())?;
    let socket: UdpSocket = socket.into();
    socket.set_read_timeout(Some(RECV_TIMEOUT))?;
    Ok(socket)
}

/// A client socket bound to `addr`:[`CLIENT_PORT`].
fn client(addr: IpAddr) -> std::io::Result<UdpSocket> {
    UdpSocket::bind(SocketAddr::new(addr, CLIENT_PORT))
}

/// The source address of the next datagram `socket` receives.
fn received_from(socket: &UdpSocket) -> IpAddr {
    let mut buf = [0u8; 64];
    let (_, from) = socket.recv_from(&mut buf).expect("a datagram within the timeout");
    from.ip()
}

/// A namespace of its own with clients `a` and `b` and the service's address on `lo`, the
/// service's two UDP sockets (slots 0 and 1: the old process's and the new one's), the clients'
/// sockets, and the dispatcher attached to the namespace with both slots filled.
struct Bed {
    netns: Netns,
    old: UdpSocket,
    new: UdpSocket,
    client_a: UdpSocket,
    client_b: UdpSocket,
    dispatch: SkLookupDispatch,
}

impl Bed {
    fn new(name: &str, a: IpAddr, b: IpAddr, service: IpAddr) -> Self {
        let v6 = service.is_ipv6();
        let netns = Netns::create(&RunId::new(false).name(name)).expect("namespace");
        common::runtime()
            .block_on(async {
                let nl = Nl::connect(&netns)?;
                nl.link_up("lo").await?;
                for addr in [a, b, service] {
                    let prefix = if addr.is_ipv6() { 128 } else { 32 };
                    nl.addr_add("lo", ipnet::IpNet::new(addr, prefix).expect("prefix")).await?;
                }
                Ok::<_, zrlab_host::LabError>(())
            })
            .expect("addresses on lo");
        let (old, new, client_a, client_b) = netns
            .run(|| Ok::<_, std::io::Error>((service_socket(v6)?, service_socket(v6)?, client(a)?, client(b)?)))
            .expect("enter")
            .expect("sockets");
        let mut dispatch = SkLookupDispatch::load(0, SERVICE_PORT).expect("load sk_lookup_steer");
        dispatch.set_slot(0, None::<&UdpSocket>, Some(&old)).expect("slot 0");
        dispatch.set_slot(1, None::<&UdpSocket>, Some(&new)).expect("slot 1");
        dispatch.attach(&netns).expect("attach to the namespace");
        Self { netns, old, new, client_a, client_b, dispatch }
    }
}

#[test_case("198.51.100.1", "198.51.100.2", "203.0.113.1"; "ipv4")]
#[test_case("2001:db8:100::1:1", "2001:db8:100::2:1", "2001:db8:200::1"; "ipv6 clients that differ in the last 32 bits")]
fn new_flows_go_to_the_ready_slot_and_udp_flows_stay_on_their_socket(a: &str, b: &str, service: &str) {
    common::require_root();
    if !common::has_feature(Feature::SkLookup) {
        return;
    }
    let (a, b, service): (IpAddr, IpAddr, IpAddr) =
        (a.parse().expect("address"), b.parse().expect("address"), service.parse().expect("address"));
    let Bed { netns: _netns, old, new, client_a, client_b, mut dispatch } = Bed::new("sklookup", a, b, service);
    let to = SocketAddr::new(service, SERVICE_PORT);

    // Slot 0 is ready: a's flow starts there.
    dispatch.set_ready(Some(0)).expect("ready 0");
    client_a.send_to(b"a1", to).expect("send");
    assert_eq!(received_from(&old), a, "a's first datagram: the ready slot 0");
    // Slot 1 takes new flows now: b's flow starts there, a's stays on slot 0.
    dispatch.set_ready(Some(1)).expect("ready 1");
    client_b.send_to(b"b1", to).expect("send");
    assert_eq!(received_from(&new), b, "b is a new flow (its address differs from a's): the ready slot 1");
    for round in 2..5 {
        client_a.send_to(format!("a{round}").as_bytes(), to).expect("send");
        assert_eq!(received_from(&old), a, "a's datagram {round} stays on a's socket");
        client_b.send_to(format!("b{round}").as_bytes(), to).expect("send");
        assert_eq!(received_from(&new), b, "b's datagram {round} stays on b's socket");
    }
    let counters = dispatch.counters().expect("counters");
    assert_eq!((counters.steered_new, counters.steered_flow), (2, 6), "the program chose every datagram: {counters:?}");
    assert_eq!((counters.flow_orphaned, counters.assign_failed), (0, 0), "{counters:?}");
}

/// Datagrams the sender may have in flight: below the receive buffer, so none is lost to it.
const WINDOW: u64 = 32;

/// The dispatcher reloaded in place (`SkLookupDispatch::upgrade`) while a sender keeps a
/// remembered UDP flow busy: the namespace's link runs the new program and the old one runs
/// nowhere (the kernel's listing), every datagram of the flow reached its socket before, during
/// and after the swap (the kernel's own lookup would have spread them over both sockets), and a
/// new flow after it goes to the ready slot: the remembered flows, the ready slot and the
/// counters were handed over.
#[test]
fn an_upgrade_in_place_under_a_live_flow_keeps_steering_it() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    common::require_root();
    if !common::has_feature(Feature::SkLookup) {
        return;
    }
    let (a, b, service): (IpAddr, IpAddr, IpAddr) =
        ("198.51.100.1".parse().expect("a"), "198.51.100.2".parse().expect("b"), "203.0.113.1".parse().expect("s"));
    let Bed { netns: _netns, old, new, client_a, client_b, mut dispatch } = Bed::new("skupgrade", a, b, service);
    let to = SocketAddr::new(service, SERVICE_PORT);
    dispatch.set_ready(Some(0)).expect("ready 0");
    client_a.send_to(b"a", to).expect("send");
    assert_eq!(received_from(&old), a, "a's flow starts on slot 0");
    dispatch.set_ready(Some(1)).expect("ready 1");

    let old_id = dispatch.program_id().expect("program id");
    let links = common::links_running(old_id);
    assert_eq!(links.len(), 1, "one namespace link");
    let (sent, received, stop) = (AtomicU64::new(0), AtomicU64::new(0), AtomicBool::new(false));
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Acquire) {
                if sent.load(Ordering::Acquire) - received.load(Ordering::Acquire) < WINDOW {
                    client_a.send_to(b"a", to).expect("send");
                    sent.fetch_add(1, Ordering::AcqRel);
                } else {
                    std::thread::yield_now();
                }
            }
        });
        let take = |count: u64| {
            for _ in 0..count {
                assert_eq!(received_from(&old), a, "a's flow stays on its socket");
                received.fetch_add(1, Ordering::AcqRel);
            }
        };
        take(200);
        dispatch.upgrade().expect("upgrade in place");
        take(200);
        stop.store(true, Ordering::Release);
        // What was in flight when the sender stopped.
        while received.load(Ordering::Acquire) < sent.load(Ordering::Acquire) {
            take(1);
        }
    });
    let new_id = dispatch.program_id().expect("program id");
    assert_ne!(new_id, old_id, "a new program");
    assert_eq!(common::links_running(new_id), links, "the same link runs the new program");
    assert!(common::links_running(old_id).is_empty(), "the old program runs nowhere");
    client_b.send_to(b"b", to).expect("send");
    assert_eq!(received_from(&new), b, "a new flow after the upgrade: the ready slot 1");
    new.set_read_timeout(Some(Duration::from_millis(1))).expect("timeout");
    let mut buf = [0u8; 8];
    assert!(new.recv_from(&mut buf).is_err(), "nothing of a's flow reached the other socket");
    let counters = dispatch.counters().expect("counters");
    let total = sent.load(std::sync::atomic::Ordering::Acquire);
    assert_eq!(
        (counters.steered_new, counters.steered_flow),
        (2, total),
        "the program chose every datagram, before and after the swap: {counters:?}"
    );
}
