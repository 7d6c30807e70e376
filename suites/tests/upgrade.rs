//! Upgrading an LB node's data path in place (`zrlab_control::lb::upgrade`): `xdp_lb` to
//! `xdp_lb_next`, whose connection-table entries have another layout, and back.
//!
//! - IPv4 and IPv6 flows keep their reals through the upgrade and a rollback although the
//!   rings changed before it (a drained real's flows live on only by the connection tables,
//!   each family's its own), and the new version is the one that forwards them; a replacement
//!   on fresh maps (what a naive deploy does) sends the drained reals' flows elsewhere, so the
//!   check can fail. Through `BPF_PROG_TEST_RUN` on CPU 0.
//! - On a built lab, the kernel's own records: the interface's XDP link is the same link after
//!   the upgrade and runs the new program, the old program is attached nowhere, and the new
//!   program uses the very maps of the old one that the upgrade handed over (by map id).
//! - The release dispatcher (`reuseport_select`) reloaded in place under live listeners while a
//!   client keeps connecting: every connection reaches the listener of the generation, none the
//!   other (the kernel's own choice would spread them), and the old program is gone. (The
//!   sock_ops and sk_lookup programs' upgrades are tested in their own suites, `tpr` and
//!   `sk_lookup`.)

mod common;

use std::{collections::BTreeSet, net::IpAddr};

use common::xdp::*;
use zrlab_common::lb::counter;
use zrlab_control::lb::{Balancer, RealSpec, Settings, Version, VipSpec};
use zrlab_topology::{Lab, Topology};
use zrlab_wire::{
    Proto,
    packet::{ACK, SYN},
};

const VIP: &str = "203.0.113.30";
const FLOWS: u16 = 64;
/// The IPv6 VIP and its flows: the IPv6 connection table migrates on its own.
const VIP6: &str = "2001:db8:ffff::30";
const FLOWS6: u16 = 16;

fn vip() -> VipSpec {
    VipSpec::new(ip(VIP), 80, Proto::Tcp)
}

fn vip6() -> VipSpec {
    VipSpec::new(ip(VIP6), 80, Proto::Tcp)
}

/// R1, R2 and R3 of weight 1; R1 down (drained: its slots go to the others) if `drained`.
fn reals(drained: bool) -> Vec<RealSpec> {
    [R1, R2, R3].iter().map(|r| RealSpec { addr: ip(r), weight: 1, up: !(drained && *r == R1) }).collect()
}

/// The IPv6 VIP's reals R6A and R6B; R6A drained if `drained`.
fn reals6(drained: bool) -> Vec<RealSpec> {
    [R6A, R6B].iter().map(|r| RealSpec { addr: ip(r), weight: 1, up: !(drained && *r == R6A) }).collect()
}

/// The real a transmitted frame went to (its outer IPv4 or IPv6 destination).
fn sent_to(program: &aya::programs::Xdp, frame: &[u8]) -> IpAddr {
    let (verdict, output) = test_run(program, frame);
    assert_eq!(verdict, TX, "transmitted");
    match output[12..14] {
        [0x86, 0xdd] => IpAddr::from(<[u8; 16]>::try_from(&output[38..54]).expect("outer IPv6 destination")),
        _ => IpAddr::from(<[u8; 4]>::try_from(&output[30..34]).expect("outer IPv4 destination")),
    }
}

/// Flow `i`'s packet with `flags`: the IPv4 flows first, then the IPv6 ones.
fn packet(i: u16, flags: u8) -> Vec<u8> {
    match i.checked_sub(FLOWS) {
        None => tcp(CLIENT4, 20_000 + i, VIP, 80, flags, vec![]),
        Some(i6) => tcp(CLIENT6, 20_000 + i6, VIP6, 80, flags, vec![]),
    }
}

/// The real each flow's next packet goes to through `lb`.
fn reals_of(lb: &Balancer) -> Vec<IpAddr> {
    let program = lb.program("xdp_lb").expect("program");
    (0..FLOWS + FLOWS6).map(|i| sent_to(program, &packet(i, ACK))).collect()
}

#[test]
fn flows_keep_their_reals_through_an_upgrade_in_place_and_a_rollback() {
    common::require_root();
    pin_to_cpu0();
    let settings = Settings::default();
    let mut lb = Balancer::load(&settings).expect("load");
    lb.set_vip(&vip(), &reals(false)).expect("VIP");
    lb.set_vip(&vip6(), &reals6(false)).expect("IPv6 VIP");
    // Each flow opens (SYN, then its first ACK, which writes the tables).
    let program = lb.program("xdp_lb").expect("program");
    for i in 0..FLOWS + FLOWS6 {
        sent_to(program, &packet(i, SYN));
    }
    let placed = reals_of(&lb);
    let drained = |placed: &[IpAddr]| placed.iter().filter(|r| [ip(R1), ip(R6A)].contains(r)).count();
    let on_drained = drained(&placed);
    assert!(placed[..FLOWS as usize].contains(&ip(R1)), "some flows on R1");
    assert!(placed[FLOWS as usize..].contains(&ip(R6A)), "some IPv6 flows on R6A");
    // R1 and R6A drained: only the tables keep their flows there.
    lb.set_vip(&vip(), &reals(true)).expect("drain R1");
    lb.set_vip(&vip6(), &reals6(true)).expect("drain R6A");
    assert_eq!(reals_of(&lb), placed, "the tables hold every flow before the upgrade");

    let before = lb.counters().expect("counters");
    let upgrade = lb.upgrade(&settings, Version::Next).expect("upgrade in place");
    assert_eq!(lb.version(), Version::Next);
    assert!(upgrade.reset.is_empty(), "{upgrade:?}");
    assert_eq!(upgrade.migrated, ["LB_CONNS", "LB_CONNS6"], "{upgrade:?}");
    // One entry per flow: the tables are one for every CPU.
    assert_eq!(upgrade.entries_migrated, u64::from(FLOWS + FLOWS6), "{upgrade:?}");
    assert_eq!(reals_of(&lb), placed, "every flow on its real after the upgrade");
    let after = lb.counters().expect("counters");
    let all = u64::from(FLOWS + FLOWS6);
    assert_eq!(after.get(counter::NEXT_TX) - before.get(counter::NEXT_TX), all, "the new version forwarded them");
    assert_eq!(after.get(counter::TX) - before.get(counter::TX), all, "the counters were handed over");
    assert_eq!(after.get(counter::LRU_HIT) - before.get(counter::LRU_HIT), all, "by table hits");

    let rollback = lb.upgrade(&settings, Version::Current).expect("rollback in place");
    assert_eq!(rollback.entries_migrated, all, "{rollback:?}");
    let before = lb.counters().expect("counters");
    assert_eq!(reals_of(&lb), placed, "every flow on its real after the rollback");
    let after = lb.counters().expect("counters");
    assert_eq!(after.get(counter::NEXT_TX), before.get(counter::NEXT_TX), "xdp_lb does not count next_tx");

    // The control: the new version on fresh maps, programmed alike, sends R1's flows where
    // the drained rings point.
    let mut fresh = Balancer::load_version(&settings, Version::Next).expect("load");
    fresh.set_vip(&vip(), &reals(true)).expect("VIP");
    fresh.set_vip(&vip6(), &reals6(true)).expect("IPv6 VIP");
    let moved = reals_of(&fresh).iter().zip(&placed).filter(|(now, then)| now != then).count();
    assert_eq!(moved, on_drained, "on fresh maps every flow of the drained reals moves, and only those");
}

#[test]
fn the_new_version_takes_over_the_old_link_and_maps() {
    common::require_root();
    let _alone = common::exclusive();
    let runtime = common::runtime();
    let topology = Topology::load(&common::fixtures().join("topologies/lb-ecmp.toml")).expect("topology");
    let lab = runtime.block_on(Lab::build(&topology, false)).expect("lab");
    let settings = Settings::default();
    let mut lb = Balancer::load(&settings).expect("load");
    lb.set_vip(&vip(), &reals(false)).expect("VIP");
    let link = topology.spec.links.iter().find(|l| l.a.node == "lb1" || l.b.node == "lb1").expect("lb1's link");
    let end = if link.a.node == "lb1" { &link.a } else { &link.b };
    lb.attach(&lab.node("lb1").expect("lb1").netns, &end.ifname).expect("attach");

    let old = lb.program("xdp_lb").expect("program").info().expect("info");
    let old_maps: BTreeSet<u32> =
        old.map_ids().expect("map ids").expect("kernel reports map ids").into_iter().collect();
    let old_links = common::links_running(old.id());
    assert_eq!(old_links.len(), 1, "xdp_lb attached by one link");

    let upgrade = lb.upgrade(&settings, Version::Next).expect("upgrade in place");
    assert_eq!(upgrade.links_swapped, 1);
    let new = lb.program("xdp_lb").expect("program").info().expect("info");
    assert_ne!(new.id(), old.id(), "a new program");
    assert_eq!(common::links_running(new.id()), old_links, "the same link runs the new program");
    assert!(common::links_running(old.id()).is_empty(), "the old program is attached nowhere");
    let new_maps: BTreeSet<u32> =
        new.map_ids().expect("map ids").expect("kernel reports map ids").into_iter().collect();
    let shared = old_maps.intersection(&new_maps).count();
    assert_eq!(shared, upgrade.handed_over.len(), "the new program uses the handed-over maps themselves: {upgrade:?}");
    assert_eq!(upgrade.handed_over.len(), 11, "{upgrade:?}");
    drop(lb);
    drop(lab);
}

/// Connections the client may have waiting in the accept queue: below its backlog.
const WINDOW: u64 = 32;

#[test]
fn the_release_dispatcher_reloaded_under_live_listeners_keeps_every_connection_on_the_generation() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use zrlab_control::reuseport::{Dispatch, ReuseportDispatch};
    use zrlab_host::{netns::Netns, nl::Nl, run_id::RunId};
    common::require_root();
    let netns = Netns::create(&RunId::new(false).name("rsupgrade")).expect("namespace");
    common::runtime().block_on(async { Nl::connect(&netns)?.link_up("lo").await }).expect("lo up");
    let addr: std::net::SocketAddr = "127.0.0.1:4434".parse().expect("address");
    let listener = || -> std::io::Result<socket2::Socket> {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        socket.set_reuse_port(true)?;
        socket.bind(&addr.into())?;
        socket.listen(128)?;
        socket.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
        Ok(socket)
    };
    let (other, generation) =
        netns.run(|| Ok::<_, std::io::Error>((listener()?, listener()?))).expect("enter").expect("listeners");
    let mut dispatch = ReuseportDispatch::load(Dispatch::Select).expect("load");
    dispatch.set_slot(0, Some(&other), None::<&socket2::Socket>).expect("slot 0");
    dispatch.set_slot(1, Some(&generation), None::<&socket2::Socket>).expect("slot 1");
    dispatch.set_generation(1, 1).expect("generation: slot 1");
    dispatch.attach(&other).expect("attach to the group");
    let old_id = dispatch.program_id().expect("program id");

    let (connected, accepted, stop) = (AtomicU64::new(0), AtomicU64::new(0), AtomicBool::new(false));
    std::thread::scope(|s| {
        s.spawn(|| {
            netns
                .run(|| {
                    while !stop.load(Ordering::Acquire) {
                        if connected.load(Ordering::Acquire) - accepted.load(Ordering::Acquire) < WINDOW {
                            std::net::TcpStream::connect(addr).expect("connect");
                            connected.fetch_add(1, Ordering::AcqRel);
                        } else {
                            std::thread::yield_now();
                        }
                    }
                })
                .expect("enter");
        });
        let take = |count: u64| {
            for _ in 0..count {
                generation.accept().expect("the generation's listener accepts within 5 s");
                accepted.fetch_add(1, Ordering::AcqRel);
            }
        };
        take(200);
        dispatch.upgrade(&[&other]).expect("upgrade in place");
        take(200);
        stop.store(true, Ordering::Release);
        while accepted.load(Ordering::Acquire) < connected.load(Ordering::Acquire) {
            take(1);
        }
    });
    other.set_nonblocking(true).expect("non-blocking");
    assert!(other.accept().is_err(), "no connection reached the listener outside the generation");
    let counters = dispatch.counters().expect("counters");
    // At least once per connection: a SYN sent again (a slow guest can stretch a handshake past
    // the 1 s retransmission timeout) is selected again.
    let connections = connected.load(Ordering::Acquire);
    assert!(counters.selected >= connections, "the program chose every connection: {counters:?}, {connections}");
    assert_eq!(counters.select_failed, 0, "{counters:?}");
    let new_id = dispatch.program_id().expect("program id");
    assert_ne!(new_id, old_id, "a new program");
    // The group held the old program; once replaced, the kernel frees it (after a grace period).
    common::wait_for("the old program to be freed", std::time::Duration::from_secs(10), || {
        !aya::programs::loaded_programs().any(|p| p.is_ok_and(|p| p.id() == old_id))
    });
}
