//! Shared by the XDP suites: the fixture LB (BPF program and reference model configured alike),
//! packet helpers, and running a frame through `BPF_PROG_TEST_RUN`.

use std::{collections::BTreeMap, net::IpAddr};

use aya::programs::Xdp;
use zrlab_common::lb::counter;
use zrlab_control::lb::{Balancer, RealSpec, Settings, VipOptions, VipSpec, model::Model};
use zrlab_wire::Proto;
use zrlab_wire::{
    packet::{FrameRepr, IpPayload, IpRepr, TcpRepr, UdpRepr, tcp_options::TcpOption},
    quic::{CID_LEN, CidVersion, Datagram, Header, LongType, VERSION_1, cid_for},
};

/// XDP verdicts as `BPF_PROG_TEST_RUN` returns them.
pub(crate) const ABORTED: u32 = 0;
pub(crate) const DROP: u32 = 1;
pub(crate) const PASS: u32 = 2;
pub(crate) const TX: u32 = 3;

pub(crate) fn ip(s: &str) -> IpAddr {
    s.parse().expect("valid address")
}

pub(crate) const R1: &str = "192.0.2.2";
pub(crate) const R2: &str = "192.0.2.6";
pub(crate) const R3: &str = "192.0.2.10";
pub(crate) const R6A: &str = "2001:db8:1::2";
pub(crate) const R6B: &str = "2001:db8:2::2";
pub(crate) const CLIENT4: &str = "198.51.100.2";
pub(crate) const CLIENT6: &str = "2001:db8:100::2";

fn vip(addr: &str, port: u16, proto: Proto) -> VipSpec {
    VipSpec::new(ip(addr), port, proto)
}

fn reals(addrs: &[&str]) -> Vec<RealSpec> {
    addrs.iter().map(|a| RealSpec { addr: ip(a), weight: 1, up: true }).collect()
}

/// The fixture's VIPs and reals (README's conformance section lists them).
pub(crate) fn fixture_vips() -> Vec<(VipSpec, Vec<RealSpec>)> {
    vec![
        (
            vip("203.0.113.10", 80, Proto::Tcp).with(VipOptions { tcp_id_routing: true, ..VipOptions::default() }),
            reals(&[R1, R2, R3]),
        ),
        (
            vip("203.0.113.10", 443, Proto::Udp).with(VipOptions { quic_id_routing: true, ..VipOptions::default() }),
            reals(&[R1, R2, R3]),
        ),
        (vip("203.0.113.10", 8080, Proto::Udp), reals(&[R1, R2])),
        (
            vip("2001:db8:ffff::10", 80, Proto::Tcp).with(VipOptions { tcp_id_routing: true, ..VipOptions::default() }),
            reals(&[R6A, R6B]),
        ),
        (vip("203.0.113.20", 0, Proto::Tcp), reals(&[R6A])),
        (vip("2001:db8:ffff::20", 443, Proto::Udp), reals(&["192.0.2.14"])),
        // Every word of its address non-zero: a word read a byte off shows (the ICMP answers).
        (vip("2001:db8:ffff:1:2:3:4:20", 443, Proto::Udp), reals(&["192.0.2.14"])),
        (
            vip("203.0.113.40", 80, Proto::Tcp).with(VipOptions { no_lru: true, ..VipOptions::default() }),
            reals(&[R1, R2, R3]),
        ),
        (
            vip("203.0.113.30", 80, Proto::Tcp),
            vec![RealSpec { addr: ip(R1), weight: 3, up: true }, RealSpec { addr: ip(R2), weight: 1, up: true }],
        ),
    ]
}

/// Live server ids of the fixture (400 is a dead id: not in the table). 500 and 600 belong to
/// the IPv6 reals, which serve other VIPs than the IPv4 reals' ids do.
pub(crate) fn fixture_ids() -> BTreeMap<u32, IpAddr> {
    BTreeMap::from([
        (100, ip(R1)),
        (200, ip(R2)),
        (300, ip(R3)),
        (500, ip(R6A)),
        (600, ip(R6B)),
        (0x12_3456, ip(R1)),
        (0x89ab_cdef, ip(R2)),
    ])
}

/// Path MTUs of the fixture's reals (the others have none: no check): R6A behind 1400 (an
/// IPv6 real: 1360 of an inner packet fit), 192.0.2.14 behind 1300 (IPv4: 1280 fit).
pub(crate) fn fixture_path_mtus() -> [(IpAddr, u32); 2] {
    [(ip(R6A), 1400), (ip("192.0.2.14"), 1300)]
}

/// The BPF LB and the model, configured alike.
pub(crate) struct Fixture {
    pub(crate) lb: Balancer,
    pub(crate) model: Model,
}

impl Fixture {
    pub(crate) fn new() -> Self {
        let mut lb = Balancer::load(&Settings::default()).unwrap_or_else(|e| panic!("{e}"));
        let mut model = Model::new(Settings::default());
        for (vip, reals) in fixture_vips() {
            lb.set_vip(&vip, &reals).expect("set VIP");
            model.set_vip(&vip, &reals).expect("model VIP");
        }
        lb.sync_server_ids(&fixture_ids()).expect("ids");
        model.sync_server_ids(&fixture_ids());
        for (real, mtu) in fixture_path_mtus() {
            lb.set_path_mtu(real, mtu).expect("path MTU");
            model.set_path_mtu(real, mtu);
        }
        Self { lb, model }
    }
}

/// Pins the calling thread to CPU 0, so SYN caches and counters do not depend on where the
/// scheduler puts the test.
pub(crate) fn pin_to_cpu0() {
    pin_to_cpu(0);
}

/// Pins the calling thread to CPU `cpu`. The kernel moves the calling thread before
/// `sched_setaffinity` returns, and `BPF_PROG_TEST_RUN` runs an XDP program on the CPU of its
/// caller, so the next test run uses `cpu`'s SYN cache (and LRU list of the connection table).
pub(crate) fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set), 0, "pin to CPU {cpu}");
        assert_eq!(libc::sched_getcpu(), cpu as i32, "running on CPU {cpu} after pinning");
    }
}

/// Whether CPU 1 is online, so that a flow's packets can be spread over two CPUs; prints the
/// skip when it is not (a one-CPU machine cannot have the cross-CPU cases).
pub(crate) fn have_two_cpus(what: &str) -> bool {
    // SAFETY: sysconf without side effects.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if online < 2 {
        super::record_skip(&format!("{what} needs two online CPUs (this machine has {online})"));
    }
    online >= 2
}

/// Runs `frame` through `program` once; returns the verdict and the output frame.
pub(crate) fn test_run(program: &Xdp, frame: &[u8]) -> (u32, Vec<u8>) {
    zrlab_control::lb::run_once(program, frame).expect("BPF_PROG_TEST_RUN")
}

/// The names of the global counters that moved between two readings, with their deltas.
pub(crate) fn counter_delta(before: &[u64], after: &[u64]) -> String {
    let moved: Vec<String> = before
        .iter()
        .zip(after)
        .enumerate()
        .filter(|(_, (b, a))| a != b)
        .map(|(i, (b, a))| format!("{}+{}", counter::NAMES[i], a - b))
        .collect();
    if moved.is_empty() { "none".into() } else { moved.join(" ") }
}

pub(crate) fn tcp(src: &str, sport: u16, dst: &str, dport: u16, flags: u8, options: Vec<TcpOption>) -> Vec<u8> {
    let mut tcp = TcpRepr::new(sport, dport, flags);
    tcp.options = options;
    FrameRepr::with_ip(IpRepr::new(ip(src), ip(dst), IpPayload::Tcp(tcp))).emit()
}

pub(crate) fn tcp_raw_options(src: &str, sport: u16, dst: &str, dport: u16, flags: u8, raw: &[u8]) -> Vec<u8> {
    let mut tcp = TcpRepr::new(sport, dport, flags);
    tcp.raw_options = raw.to_vec();
    FrameRepr::with_ip(IpRepr::new(ip(src), ip(dst), IpPayload::Tcp(tcp))).emit()
}

pub(crate) fn udp(src: &str, sport: u16, dst: &str, dport: u16, payload: &[u8]) -> Vec<u8> {
    let udp = UdpRepr { sport, dport, payload: payload.to_vec() };
    FrameRepr::with_ip(IpRepr::new(ip(src), ip(dst), IpPayload::Udp(udp))).emit()
}

/// A QUIC short header carrying server id `id` in `version`'s layout.
pub(crate) fn quic_short(version: CidVersion, id: u32) -> Vec<u8> {
    let dcid = cid_for(version, id, [0x5a; CID_LEN]).expect("id fits");
    Datagram { header: Header::Short { dcid }, payload: b"REQ 1 1\n".to_vec() }.emit()
}

/// A QUIC v1 long header of `kind` with destination CID `dcid`.
pub(crate) fn quic_long(kind: LongType, dcid: Vec<u8>) -> Vec<u8> {
    quic_long_in(VERSION_1, kind, dcid)
}

/// A QUIC long header of `kind` in `version` (type bits as that version numbers them).
pub(crate) fn quic_long_in(version: u32, kind: LongType, dcid: Vec<u8>) -> Vec<u8> {
    Datagram { header: Header::Long { kind, version, dcid, scid: vec![7; 8] }, payload: b"REQ 1 0\n".to_vec() }.emit()
}
