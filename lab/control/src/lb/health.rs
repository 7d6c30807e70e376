//! Health checks of one LB node's backends, sent through the tunnel the data path uses.
//!
//! A probe is an ICMP echo request from the LB node to the VIP, inside the same IP-in-IP
//! header the LB puts on a VIP packet for that backend (outer destination: the real's
//! address). It therefore only comes back if the path a flow's packets take works end to end:
//! the route to the backend, the backend's link, its decapsulation, the VIP on its loopback,
//! its kernel. The echo reply comes back directly from the VIP, as every reply does (direct
//! server return), and is matched by the checker's identifier and the probe's sequence number.
//! An ICMP echo has no side effects on the services (a TCP probe to the VIP would leave a
//! half-open connection and a RST in the data path); a host whose services died but whose
//! kernel answers is the release machinery's concern, not this one's.
//!
//! Every `period` the checker sends one probe per backend and waits up to the end of the
//! period for the replies: a probe is answered within its period or failed. A backend is
//! declared down after `fall` failed probes in a row and up again after `rise` answered ones
//! ([`Tracker`]); each change is handed to the caller, which changes this node's rings. A
//! backend starts up (the configuration put it in the rings).

use std::{
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use etherparse::{Icmpv4Slice, Icmpv4Type, Icmpv6Slice, Icmpv6Type, Ipv4Slice, PacketBuilder};
use socket2::{Domain, Protocol, Socket, Type};
use zrlab_host::{
    error::{LabError, Result},
    netns::Netns,
};
use zrlab_wire::packet::{IpPayload, IpRepr};

/// How a node checks its backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthPolicy {
    /// One probe per backend per period; a probe not answered within its period failed.
    pub period: Duration,
    /// Answered probes in a row that bring a down backend back.
    pub rise: u32,
    /// Failed probes in a row that take an up backend out.
    pub fall: u32,
}

impl HealthPolicy {
    /// How long the checker takes at most to decide that a backend died: the round under way
    /// at the death may still have been answered, then `fall` rounds must fail, each decided
    /// at its period's end. Taking the backend out of the rings comes on top.
    pub fn detection_budget(&self) -> Duration {
        self.period * (self.fall + 1)
    }
}

/// A backend to check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// The real's address: the tunnel's outer destination.
    pub real: IpAddr,
    /// The VIP it serves: the probe's inner destination.
    pub vip: IpAddr,
}

/// The up/down state of each target under a rise/fall policy. Pure: no I/O, no clock.
#[derive(Clone, Debug)]
pub struct Tracker {
    rise: u32,
    fall: u32,
    /// Per target: up, and how many probes in a row disagreed with that.
    states: Vec<(bool, u32)>,
}

impl Tracker {
    /// `targets` targets, every one up.
    pub fn new(targets: usize, rise: u32, fall: u32) -> Self {
        Self { rise: rise.max(1), fall: fall.max(1), states: vec![(true, 0); targets] }
    }

    /// Records target `index`'s probe (answered or not); `Some(up)` when its state changes.
    pub fn observe(&mut self, index: usize, answered: bool) -> Option<bool> {
        let (up, streak) = &mut self.states[index];
        if answered == *up {
            *streak = 0;
            return None;
        }
        *streak += 1;
        let needed = if *up { self.fall } else { self.rise };
        if *streak < needed {
            return None;
        }
        *up = answered;
        *streak = 0;
        Some(answered)
    }
}

/// The probe for `target`: an ICMP echo request (`ident`, `seq`) from `inner_source` to the
/// VIP inside an IP-in-IP header from `outer_source` to the real. Sources must have the
/// families of the real and the VIP.
pub fn probe(outer_source: IpAddr, inner_source: IpAddr, target: Target, ident: u16, seq: u16) -> Result<Vec<u8>> {
    let build_err =
        |e: etherparse::err::packet::BuildWriteError| LabError::Unsupported(format!("build a health probe: {e}"));
    let mut inner = Vec::new();
    match (inner_source, target.vip) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => PacketBuilder::ipv4(src.octets(), dst.octets(), 64)
            .icmpv4_echo_request(ident, seq)
            .write(&mut inner, &[])
            .map_err(build_err)?,
        (IpAddr::V6(src), IpAddr::V6(dst)) => PacketBuilder::ipv6(src.octets(), dst.octets(), 64)
            .icmpv6_echo_request(ident, seq)
            .write(&mut inner, &[])
            .map_err(build_err)?,
        _ => return Err(LabError::Unsupported(format!("a probe from {inner_source} to VIP {}", target.vip))),
    }
    if outer_source.is_ipv4() != target.real.is_ipv4() {
        return Err(LabError::Unsupported(format!("a tunnel from {outer_source} to {}", target.real)));
    }
    let proto = if target.vip.is_ipv4() { 4 } else { 41 };
    Ok(IpRepr::new(outer_source, target.real, IpPayload::Other(proto, inner)).emit())
}

/// The sequence number of an echo reply with identifier `ident` in what a raw ICMP socket
/// of the family read: an IPv4 packet, or an ICMPv6 message (IPv6 raw sockets strip the
/// header). `None` for anything else.
pub fn echo_reply(read: &[u8], v6: bool, ident: u16) -> Option<u16> {
    let echo = if v6 {
        match Icmpv6Slice::from_slice(read).ok()?.icmp_type() {
            Icmpv6Type::EchoReply(echo) => echo,
            _ => return None,
        }
    } else {
        let ip = Ipv4Slice::from_slice(read).ok()?;
        match Icmpv4Slice::from_slice(ip.payload().payload).ok()?.icmp_type() {
            Icmpv4Type::EchoReply(echo) => echo,
            _ => return None,
        }
    };
    (echo.id == ident).then_some(echo.seq)
}

/// What the checker calls when a target's state changes: (target index, up).
pub type OnChange = Box<dyn FnMut(usize, bool) + Send>;

/// A running checker: a thread probing the targets until dropped.
pub struct Checker {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

/// The sockets of one checker, made inside the LB node's namespace (a socket stays in the
/// namespace it was made in, so the thread using them need not be).
struct Sockets {
    send_v4: Option<Socket>,
    send_v6: Option<Socket>,
    recv_v4: Option<Socket>,
    recv_v6: Option<Socket>,
}

impl Sockets {
    fn open(netns: &Netns, targets: &[Target]) -> Result<Self> {
        let needs = |f: fn(&Target) -> bool| targets.iter().any(f);
        let (send4, send6) = (needs(|t| t.real.is_ipv4()), needs(|t| t.real.is_ipv6()));
        let (recv4, recv6) = (needs(|t| t.vip.is_ipv4()), needs(|t| t.vip.is_ipv6()));
        let name = netns.name().to_owned();
        netns.run(move || {
            let raw = |domain: Domain, proto: i32, wanted: bool| -> Result<Option<Socket>> {
                if !wanted {
                    return Ok(None);
                }
                let socket = Socket::new(domain, Type::RAW, Some(Protocol::from(proto)))
                    .map_err(|e| LabError::os("open a raw socket for health probes in", name.clone(), e))?;
                socket.set_nonblocking(true).map_err(|e| LabError::os("set non-blocking", name.clone(), e))?;
                Ok(Some(socket))
            };
            Ok(Self {
                // IPPROTO_RAW: the probe carries its own (outer) IP header.
                send_v4: raw(Domain::IPV4, libc::IPPROTO_RAW, send4)?,
                send_v6: raw(Domain::IPV6, libc::IPPROTO_RAW, send6)?,
                recv_v4: raw(Domain::IPV4, libc::IPPROTO_ICMP, recv4)?,
                recv_v6: raw(Domain::IPV6, libc::IPPROTO_ICMPV6, recv6)?,
            })
        })?
    }
}

/// Fails unless `netns` has a route to every target's real: without one, every probe would
/// fail and the checker would take every backend out, which is a broken topology, not a
/// health change.
fn check_routes(netns: &Netns, node: &str, targets: &[Target]) -> Result<()> {
    let reals: Vec<IpAddr> = targets.iter().map(|t| t.real).collect();
    let node = node.to_owned();
    netns.run(move || {
        for real in reals {
            let any: SocketAddr = if real.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("valid");
            // Connecting a UDP socket only looks the route up; nothing is sent.
            std::net::UdpSocket::bind(any).and_then(|s| s.connect(SocketAddr::new(real, 9))).map_err(|e| {
                LabError::Unsupported(format!(
                    "LB node {node} has no route to backend address {real} for its health probes ({e}): \
                     give it one in the topology"
                ))
            })?;
        }
        Ok(())
    })?
}

impl Checker {
    /// Starts checking `targets` from LB node `node` (namespace `netns`), whose addresses
    /// are `sources` (one per family it probes from), calling `on_change` on every change.
    pub fn start(
        netns: &Netns,
        node: &str,
        sources: &[IpAddr],
        targets: Vec<Target>,
        policy: HealthPolicy,
        ident: u16,
        on_change: OnChange,
    ) -> Result<Self> {
        if targets.len() > usize::from(u16::MAX) {
            return Err(LabError::Unsupported(format!("{} health-check targets on one node", targets.len())));
        }
        let source = |of: IpAddr| {
            sources.iter().copied().find(|s| s.is_ipv4() == of.is_ipv4()).ok_or_else(|| {
                LabError::Unsupported(format!("LB node {node} has no address of {of}'s family to probe from"))
            })
        };
        let probes: Vec<Vec<u8>> =
            targets.iter().map(|t| probe(source(t.real)?, source(t.vip)?, *t, ident, 0)).collect::<Result<_>>()?;
        check_routes(netns, node, &targets)?;
        let sockets = Sockets::open(netns, &targets)?;
        let stop = Arc::new(AtomicBool::new(false));
        let looping = Run { sockets, targets, probes, policy, ident, stop: stop.clone(), on_change };
        let thread = thread::Builder::new()
            .name(format!("health {node}"))
            .spawn(move || looping.run())
            .map_err(|e| LabError::os("start the health checker of", node.to_owned(), e))?;
        Ok(Self { stop, thread: Some(thread) })
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            // A panic in the checker was reported by the panic hook already.
            let _ = thread.join();
        }
    }
}

/// The checker's loop and what it owns.
struct Run {
    sockets: Sockets,
    targets: Vec<Target>,
    /// Each target's probe, its sequence number patched in per round.
    probes: Vec<Vec<u8>>,
    policy: HealthPolicy,
    ident: u16,
    stop: Arc<AtomicBool>,
    on_change: OnChange,
}

impl Run {
    fn run(mut self) {
        let mut tracker = Tracker::new(self.targets.len(), self.policy.rise, self.policy.fall);
        let mut round: u32 = 0;
        while !self.stop.load(Ordering::Relaxed) {
            let deadline = Instant::now() + self.policy.period;
            // The round's first sequence number: a late reply to an earlier round's probe
            // carries another one and is ignored.
            let first = (round.wrapping_mul(self.targets.len() as u32) & 0xffff) as u16;
            for index in 0..self.targets.len() {
                self.send(index, first.wrapping_add(index as u16));
            }
            let mut answered = vec![false; self.targets.len()];
            self.collect(first, deadline, &mut answered);
            for (index, ok) in answered.into_iter().enumerate() {
                if let Some(up) = tracker.observe(index, ok) {
                    (self.on_change)(index, up);
                }
            }
            round = round.wrapping_add(1);
        }
    }

    /// Sends target `index`'s probe with sequence number `seq`. A probe that cannot be sent
    /// (the link is down) failed, like one that got no answer.
    fn send(&mut self, index: usize, seq: u16) {
        let target = self.targets[index];
        let packet = &mut self.probes[index];
        patch_seq(packet, target, seq);
        let socket = if target.real.is_ipv4() { &self.sockets.send_v4 } else { &self.sockets.send_v6 };
        if let Some(socket) = socket {
            let _ = socket.send_to(packet, &SocketAddr::new(target.real, 0).into());
        }
    }

    /// Reads replies until `deadline`, marking the targets whose probe of this round
    /// (sequence numbers from `first`) was answered.
    fn collect(&self, first: u16, deadline: Instant, answered: &mut [bool]) {
        let sockets: Vec<(&Socket, bool)> = [(&self.sockets.recv_v4, false), (&self.sockets.recv_v6, true)]
            .into_iter()
            .filter_map(|(s, v6)| s.as_ref().map(|s| (s, v6)))
            .collect();
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 2048];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.stop.load(Ordering::Relaxed) {
                return;
            }
            let mut fds: Vec<libc::pollfd> = sockets
                .iter()
                .map(|(s, _)| libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLIN, revents: 0 })
                .collect();
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
            // SAFETY: `fds` is a valid array of `fds.len()` pollfds for the call's duration.
            if unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) } <= 0 {
                continue;
            }
            for ((socket, v6), fd) in sockets.iter().zip(&fds) {
                if fd.revents == 0 {
                    continue;
                }
                while let Ok(len) = socket.recv(&mut buf) {
                    // SAFETY: `recv` initialised the first `len` bytes.
                    let read = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), len) };
                    if let Some(seq) = echo_reply(read, *v6, self.ident) {
                        let index = usize::from(seq.wrapping_sub(first));
                        if let Some(slot) = answered.get_mut(index) {
                            *slot = true;
                        }
                    }
                }
            }
        }
    }
}

/// Writes `seq` into `probe` (made by [`probe`] for `target`) and fixes the ICMP checksum
/// incrementally (RFC 1624), so the packet is not rebuilt every round. ICMPv6's checksum
/// covers the addresses too, but they do not change: the same incremental update holds.
fn patch_seq(probe: &mut [u8], target: Target, seq: u16) {
    let outer = if target.real.is_ipv4() { usize::from(probe[0] & 0x0f) * 4 } else { 40 };
    let inner = if target.vip.is_ipv4() { usize::from(probe[outer] & 0x0f) * 4 } else { 40 };
    let icmp = outer + inner;
    let old = u16::from_be_bytes([probe[icmp + 6], probe[icmp + 7]]);
    let sum = u16::from_be_bytes([probe[icmp + 2], probe[icmp + 3]]);
    // HC' = ~(~HC + ~m + m')
    let mut acc = u32::from(!sum) + u32::from(!old) + u32::from(seq);
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    let new_sum = !(acc as u16);
    probe[icmp + 2..icmp + 4].copy_from_slice(&new_sum.to_be_bytes());
    probe[icmp + 6..icmp + 8].copy_from_slice(&seq.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_goes_down_after_fall_failures_in_a_row_and_up_after_rise_answers() {
        let mut t = Tracker::new(2, 2, 3);
        // Two failures, an answer: the streak starts over.
        assert_eq!([t.observe(0, false), t.observe(0, false), t.observe(0, true)], [None; 3]);
        assert_eq!([t.observe(0, false), t.observe(0, false)], [None; 2]);
        assert_eq!(t.observe(0, false), Some(false), "the third failure in a row");
        assert_eq!(t.observe(0, false), None, "already down");
        assert_eq!(t.observe(0, true), None);
        assert_eq!(t.observe(0, true), Some(true), "the second answer in a row");
        // The other target never changed.
        assert_eq!(t.observe(1, true), None);
    }

    /// The round under way at a death may still have been answered, then `fall` rounds fail.
    #[test]
    fn the_detection_budget_is_one_round_more_than_fall() {
        let policy = HealthPolicy { period: Duration::from_millis(100), rise: 2, fall: 3 };
        assert_eq!(policy.detection_budget(), Duration::from_millis(400));
        let policy = HealthPolicy { period: Duration::from_millis(250), rise: 1, fall: 1 };
        assert_eq!(policy.detection_budget(), Duration::from_millis(500));
    }

    #[test]
    fn a_fall_of_one_takes_a_backend_out_at_its_first_failure() {
        let mut t = Tracker::new(1, 1, 1);
        assert_eq!(t.observe(0, false), Some(false));
        assert_eq!(t.observe(0, true), Some(true));
    }

    /// An independent decode of the probe (etherparse's full slicer, not the checker's
    /// reply parser): outer header to the real, IP-in-IP, echo request to the VIP, valid
    /// checksums after a sequence-number patch.
    #[test]
    fn a_probe_is_an_echo_request_to_the_vip_tunnelled_to_the_real() {
        let v4 = |s: &str| s.parse::<IpAddr>().unwrap();
        for (outer, inner, target) in [
            (v4("192.0.2.130"), v4("192.0.2.130"), Target { real: v4("192.0.2.14"), vip: v4("203.0.113.10") }),
            (v4("2001:db8::1"), v4("2001:db8::1"), Target { real: v4("2001:db8::2"), vip: v4("2001:db8:f::10") }),
            (v4("2001:db8::1"), v4("192.0.2.130"), Target { real: v4("2001:db8::2"), vip: v4("203.0.113.10") }),
        ] {
            let mut packet = probe(outer, inner, target, 0x1234, 0).unwrap();
            patch_seq(&mut packet, target, 0xbeef);
            let parsed = IpRepr::parse(&packet).unwrap();
            assert_eq!((parsed.src, parsed.dst), (outer, target.real));
            assert!(matches!(parsed.payload, IpPayload::Ip(_)), "IP in IP: {parsed:?}");
            let inner_bytes = &packet[if outer.is_ipv4() { 20 } else { 40 }..];
            let sliced = etherparse::SlicedPacket::from_ip(inner_bytes).unwrap();
            let (src, dst) = match sliced.net.unwrap() {
                etherparse::NetSlice::Ipv4(ip) => {
                    (IpAddr::from(ip.header().source_addr()), IpAddr::from(ip.header().destination_addr()))
                }
                etherparse::NetSlice::Ipv6(ip) => {
                    (IpAddr::from(ip.header().source_addr()), IpAddr::from(ip.header().destination_addr()))
                }
                other => panic!("{other:?}"),
            };
            assert_eq!((src, dst), (inner, target.vip));
            match sliced.transport.unwrap() {
                etherparse::TransportSlice::Icmpv4(icmp) => {
                    let Icmpv4Type::EchoRequest(echo) = icmp.icmp_type() else { panic!() };
                    assert_eq!((echo.id, echo.seq), (0x1234, 0xbeef));
                    assert_eq!(icmp.checksum(), icmp.header().icmp_type.calc_checksum(icmp.payload()));
                }
                etherparse::TransportSlice::Icmpv6(icmp) => {
                    let Icmpv6Type::EchoRequest(echo) = icmp.icmp_type() else { panic!() };
                    assert_eq!((echo.id, echo.seq), (0x1234, 0xbeef));
                    let (IpAddr::V6(s), IpAddr::V6(d)) = (src, dst) else { panic!() };
                    let want = icmp.icmp_type().calc_checksum(s.octets(), d.octets(), icmp.payload()).unwrap();
                    assert_eq!(icmp.checksum(), want);
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn only_echo_replies_with_our_identifier_count() {
        let reply = |id: u16, seq: u16| {
            let b = PacketBuilder::ipv4([203, 0, 113, 10], [192, 0, 2, 130], 64).icmpv4_echo_reply(id, seq);
            let mut out = Vec::new();
            b.write(&mut out, &[]).unwrap();
            out
        };
        assert_eq!(echo_reply(&reply(7, 42), false, 7), Some(42));
        assert_eq!(echo_reply(&reply(8, 42), false, 7), None, "another checker's");
        let request = {
            let b = PacketBuilder::ipv4([192, 0, 2, 130], [203, 0, 113, 10], 64).icmpv4_echo_request(7, 42);
            let mut out = Vec::new();
            b.write(&mut out, &[]).unwrap();
            out
        };
        assert_eq!(echo_reply(&request, false, 7), None, "a request is no reply");
        assert_eq!(echo_reply(&[0x45, 0, 0], false, 7), None, "truncated");
        let v6 = {
            let b = PacketBuilder::ipv6([0x20, 1, 0xd, 0xb8, 0, 0xf, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10], [0; 16], 64)
                .icmpv6_echo_reply(7, 9);
            let mut out = Vec::new();
            b.write(&mut out, &[]).unwrap();
            out[40..].to_vec()
        };
        assert_eq!(echo_reply(&v6, true, 7), Some(9));
    }
}
