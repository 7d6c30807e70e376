//! A reference model of `xdp_lb`'s data path, in plain Rust, written from the specification
//! (DESIGN.md section 1 and the policy in the program's module docs), not from the program:
//! the same validation, the same routing order, the same encapsulation, byte for byte.
//!
//! The conformance suite runs every case through the BPF program (`BPF_PROG_TEST_RUN`) and
//! through this model and requires identical verdicts and output bytes; the fuzz suite does the
//! same for a million random and mutated frames. Two implementations catch what neither catches
//! alone only if they share no code, so the model shares only data with the program (the rings
//! Maglev builds, the configuration), and nothing of its code:
//! - headers are parsed by etherparse (the program reads words at fixed offsets); the model
//!   applies the LB's policy (which check drops, which passes, in which order) to its fields;
//! - the flow hash is its own MurmurHash3 (x86, 32-bit) over a byte message, checked against
//!   the algorithm's published known answers ([`murmur3_32`]); the outer headers' hash is
//!   written from its byte-level definition ([`encap_hash`]);
//! - QUIC connection ids are decoded by its own reading of DESIGN.md's layouts
//!   ([`cid_server_id`], known answers computed by hand); long-header types by RFC 9000's and
//!   RFC 9369's tables (`workload::quic::LongType`); TPR options by the lab's option codec;
//! - the connection table is keyed as the specification keys it (IPv4: source, destination with
//!   the protocol XORed into its first byte, ports; IPv6: the exact 5-tuple), so flows whose
//!   IPv4 keys collide replace each other's entries as in the kernel. It never evicts
//!   otherwise: the suites stay far below the table's size. The program's table is one for
//!   every CPU too (an LRU list per CPU); the specification says a flow's packets follow its
//!   route on any CPU, and a SYN starts the flow anew everywhere;
//! - a SYN's route waits in its CPU's direct-mapped SYN cache (slot: the flow hash modulo
//!   `SYN_CACHE_SLOTS`) until the flow's next packet on that CPU moves it into the table, unless
//!   the flow has an entry already, which the SYN rewrites; a later SYN in the same slot takes
//!   it over. A next packet on another CPU misses the cache and is routed by the ring (the same
//!   real unless the ring changed in between: the one case the specification lets move).
//!
//! Pure: no I/O, no clock.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use etherparse::{
    EtherType, Ethernet2HeaderSlice, Ipv4HeaderSlice, Ipv6HeaderSlice, TcpHeaderSlice, UdpHeaderSlice, err,
};

use crate::lb::{
    balancer::{RealSpec, Settings, VipSpec},
    maglev::{self, Backend},
};
use zrlab_common::lb::SYN_CACHE_SLOTS;

use zrlab_wire::{
    Proto,
    packet::tcp_options::{TprWalk, tpr_server_id},
    quic::LongType,
};

/// Why a packet was passed or dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// Not IPv4/IPv6, or too short for an IP header.
    NotIp,
    /// Not addressed to a VIP address.
    NonVip,
    /// A VIP address, but no VIP for the port and protocol.
    NoService,
    /// IPv4 options.
    IpOptions,
    /// A fragment or an IPv6 extension header.
    Fragment,
    /// ICMP or another protocol.
    OtherProto,
    /// A length or header field that does not add up.
    Malformed,
    /// An ICMP error to a VIP address whose quote cannot hold the quoted packet's ports, or
    /// quotes an IPv4 header with options.
    IcmpQuoteBad,
    /// An ICMP error to a VIP address about a packet that is no VIP's.
    IcmpNotOurs,
    /// Too big for the real's path, and not to be answered: IPv4 with "don't fragment" clear,
    /// or an ICMP error.
    TooBig,
}

/// How the real was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// The TPR option's server id.
    TcpId(u32),
    /// The QUIC connection id's server id.
    QuicId(u32),
    /// The connection table.
    Table,
    /// The Maglev ring (a new flow, a SYN, or no table).
    Ring,
    /// A per-packet random hash on the ring (the control's broken LB): the real is not
    /// predictable, only that it is one of the VIP's.
    Random,
}

/// The model's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XdpAction {
    /// `XDP_PASS`.
    Pass(Why),
    /// `XDP_DROP`.
    Drop(Why),
    /// `XDP_TX` of an ICMP "fragmentation needed" / ICMPv6 "packet too big" back to the
    /// sender: the packet would not fit the path to its real (`real`) once encapsulated.
    TooBig {
        /// The real whose path is too small.
        real: IpAddr,
        /// The size the answer says fits.
        mtu: u32,
        /// The exact frame the program must emit.
        output: Vec<u8>,
    },
    /// `XDP_TX` of `output` towards `real`.
    Tx {
        /// The chosen real.
        real: IpAddr,
        /// How.
        path: Path,
        /// The exact frame the program must emit (for [`Path::Random`], with the first real's
        /// address: compare everything but the outer destination).
        output: Vec<u8>,
    },
}

/// A VIP as the model looks it up: address, port (0: any), IP protocol.
type VipId = (IpAddr, u16, u8);

struct Vip {
    spec: VipSpec,
    reals: Vec<RealSpec>,
    ring: Vec<u32>,
}

/// A flow's 5-tuple.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Flow {
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    proto: u8,
}

/// A flow's key in the connection table, as the specification keys it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum TableKey {
    /// Source, destination with the protocol XORed into its first byte, ports.
    V4([u8; 4], [u8; 4], u16, u16),
    /// The exact 5-tuple.
    V6(Flow),
}

impl TableKey {
    fn of(flow: &Flow) -> Self {
        match (flow.src, flow.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let mut dst = dst.octets();
                dst[0] ^= flow.proto;
                Self::V4(src.octets(), dst, flow.sport, flow.dport)
            }
            _ => Self::V6(*flow),
        }
    }
}

/// The model LB.
pub struct Model {
    settings: Settings,
    vips: BTreeMap<VipId, Vip>,
    server_ids: BTreeMap<u32, IpAddr>,
    table: HashMap<TableKey, (Flow, IpAddr)>,
    /// Each CPU's SYN cache: (CPU, slot) -> the SYN's flow and real.
    syn_cache: HashMap<(usize, u32), (Flow, IpAddr)>,
    /// The path MTU to each real that has one.
    path_mtus: HashMap<IpAddr, u32>,
}

const ETH: usize = 14;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
/// Shortest QUIC connection id that carries a server id.
const MIN_CID: usize = 8;

/// Whether an IP packet of `ip_len` bytes agrees with a frame holding `frame_ip_len` bytes
/// after its Ethernet header: equal, or shorter only because a minimum-size (60-byte) frame was
/// padded.
fn fits_frame(ip_len: usize, frame_ip_len: usize) -> bool {
    ip_len == frame_ip_len || (ip_len < frame_ip_len && frame_ip_len + ETH <= 60)
}

/// IPv6 next-header values the LB does not parse past: the extension headers of IANA's
/// registry (RFC 8200 section 4, RFC 7045), fragments among them. etherparse keeps the list.
fn is_ipv6_extension(next: u8) -> bool {
    etherparse::IpNumber(next).is_ipv6_ext_header_value()
}

struct Pkt {
    v6: bool,
    l4: usize,
    ip_len: usize,
    tos: u8,
    syn: bool,
    ack: bool,
    tcp_hdr_len: usize,
    /// IPv4's "don't fragment" (IPv6: always).
    df: bool,
    /// An ICMP error about the flow (the quoted packet's flow, turned around).
    icmp: bool,
    flow: Flow,
    vip: VipId,
}

impl Model {
    /// An empty model with `settings`.
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            vips: BTreeMap::new(),
            server_ids: BTreeMap::new(),
            table: HashMap::new(),
            syn_cache: HashMap::new(),
            path_mtus: HashMap::new(),
        }
    }

    /// As [`super::Balancer::set_path_mtu`].
    pub fn set_path_mtu(&mut self, real: IpAddr, mtu: u32) {
        self.path_mtus.insert(real, mtu);
    }

    /// As [`super::Balancer::set_vip`].
    /// A VIP whose flags change (id routing, no table, per-packet hashing) starts its flows
    /// afresh: no table entry or waiting SYN of its flows survives the change, in any family.
    pub fn set_vip(&mut self, vip: &VipSpec, reals: &[RealSpec]) -> Result<(), maglev::MaglevError> {
        let backends: Vec<Backend> = reals.iter().map(RealSpec::backend).collect();
        let ring = maglev::build(&backends, vip.options.ring_size)?;
        let id = vip_id(vip);
        let flags = |v: &VipSpec| {
            let o = &v.options;
            (o.tcp_id_routing, o.quic_id_routing, o.no_lru, o.hash_per_packet)
        };
        let changed = self.vips.get(&id).is_some_and(|old| flags(&old.spec) != flags(vip));
        self.vips.insert(id, Vip { spec: vip.clone(), reals: reals.to_vec(), ring });
        if changed {
            let ours = |model: &Self, flow: &Flow| model.vip_of(flow) == Some(id);
            let stale: Vec<TableKey> = self.table.iter().filter(|(_, (f, _))| ours(self, f)).map(|(k, _)| *k).collect();
            for key in stale {
                self.table.remove(&key);
            }
            let waiting: Vec<(usize, u32)> =
                self.syn_cache.iter().filter(|(_, (f, _))| ours(self, f)).map(|(k, _)| *k).collect();
            for slot in waiting {
                self.syn_cache.remove(&slot);
            }
        }
        Ok(())
    }

    /// The VIP a flow's packets are looked up under: exact port first, then any port.
    fn vip_of(&self, flow: &Flow) -> Option<VipId> {
        [(flow.dst, flow.dport, flow.proto), (flow.dst, 0, flow.proto)]
            .into_iter()
            .find(|id| self.vips.contains_key(id))
    }

    /// As [`super::Balancer::sync_server_ids`].
    pub fn sync_server_ids(&mut self, live: &BTreeMap<u32, IpAddr>) {
        self.server_ids = live.clone();
    }

    /// What `xdp_lb` does with `frame` on CPU 0.
    pub fn process(&mut self, frame: &[u8]) -> XdpAction {
        self.process_on(0, frame)
    }

    /// What `xdp_lb` does with `frame` on CPU `cpu` (its SYN cache is the CPU's own).
    pub fn process_on(&mut self, cpu: usize, frame: &[u8]) -> XdpAction {
        let pkt = match self.parse(frame) {
            Ok(pkt) => pkt,
            Err(verdict) => return verdict,
        };
        let (real, path) = self.route(cpu, frame, &pkt);
        let outer = if real.is_ipv6() { 40 } else { 20 };
        if let Some(&mtu) = self.path_mtus.get(&real)
            && pkt.ip_len + outer > mtu as usize
        {
            if pkt.icmp || !pkt.df {
                return XdpAction::Drop(Why::TooBig);
            }
            let fits = mtu - outer as u32;
            let fits = if pkt.v6 { fits.max(1280) } else { fits };
            return XdpAction::TooBig { real, mtu: fits, output: too_big_answer(frame, &pkt, fits) };
        }
        let output = self.encap(frame, &pkt, real);
        XdpAction::Tx { real, path, output }
    }

    fn is_vip_addr(&self, addr: IpAddr) -> bool {
        self.vips.keys().any(|(a, _, _)| *a == addr)
    }

    /// A packet that failed a check: passed untouched if its destination carries no VIP at all,
    /// else `verdict`.
    fn refuse(&self, dst: IpAddr, verdict: XdpAction) -> XdpAction {
        if self.is_vip_addr(dst) { verdict } else { XdpAction::Pass(Why::NonVip) }
    }

    fn parse(&self, f: &[u8]) -> Result<Pkt, XdpAction> {
        let Ok(eth) = Ethernet2HeaderSlice::from_slice(f) else { return Err(XdpAction::Pass(Why::NotIp)) };
        let ip = &f[ETH..];
        let frame_ip_len = ip.len();
        let malformed = XdpAction::Drop(Why::Malformed);
        let (v6, src, dst, ip_len, proto, tos, df) = match eth.ether_type() {
            EtherType::IPV4 => {
                if ip.len() < 20 {
                    return Err(XdpAction::Pass(Why::NotIp));
                }
                // The address is read before any check: a packet for no VIP address passes
                // whatever is wrong with it, and no parser yields fields of a broken header.
                let dst = IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&ip[16..20]).expect("4 bytes")));
                let hdr = match Ipv4HeaderSlice::from_slice(ip) {
                    Ok(hdr) if hdr.ihl() > 5 => return Err(self.refuse(dst, XdpAction::Pass(Why::IpOptions))),
                    Ok(hdr) => hdr,
                    // Only a header with options can be longer than the 20 bytes present.
                    Err(err::ipv4::HeaderSliceError::Len(_)) => {
                        return Err(self.refuse(dst, XdpAction::Pass(Why::IpOptions)));
                    }
                    Err(err::ipv4::HeaderSliceError::Content(_)) => return Err(self.refuse(dst, malformed)),
                };
                let tot = usize::from(hdr.total_len());
                if tot < 20 || !fits_frame(tot, frame_ip_len) {
                    return Err(self.refuse(dst, malformed));
                }
                if hdr.more_fragments() || hdr.fragments_offset().value() != 0 {
                    return Err(self.refuse(dst, XdpAction::Pass(Why::Fragment)));
                }
                let tos = (hdr.dcp().value() << 2) | hdr.ecn().value();
                (false, IpAddr::V4(hdr.source_addr()), dst, tot, hdr.protocol().0, tos, hdr.dont_fragment())
            }
            EtherType::IPV6 => {
                if ip.len() < 40 {
                    return Err(XdpAction::Pass(Why::NotIp));
                }
                let dst = IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).expect("16 bytes")));
                let Ok(hdr) = Ipv6HeaderSlice::from_slice(ip) else { return Err(self.refuse(dst, malformed)) };
                let tot = 40 + usize::from(hdr.payload_length());
                if !fits_frame(tot, frame_ip_len) {
                    return Err(self.refuse(dst, malformed));
                }
                let next = hdr.next_header().0;
                if is_ipv6_extension(next) {
                    return Err(self.refuse(dst, XdpAction::Pass(Why::Fragment)));
                }
                (true, IpAddr::V6(hdr.source_addr()), dst, tot, next, hdr.traffic_class(), true)
            }
            _ => return Err(XdpAction::Pass(Why::NotIp)),
        };
        let l4 = ETH + if v6 { 40 } else { 20 };
        let segment = &f[l4..ETH + ip_len];
        if proto == if v6 { IPPROTO_ICMPV6 } else { IPPROTO_ICMP } {
            let flow = self.icmp_error_flow(v6, dst, segment)?;
            if !self.is_vip_addr(dst) {
                return Err(XdpAction::Pass(Why::NonVip));
            }
            let vip = self.vip_of(&flow).ok_or(XdpAction::Pass(Why::NoService))?;
            let (syn, ack, tcp_hdr_len, icmp) = (false, false, 0, true);
            return Ok(Pkt { v6, l4, ip_len, tos, syn, ack, tcp_hdr_len, df: true, icmp, flow, vip });
        }
        let (sport, dport, syn, ack, tcp_hdr_len) = match proto {
            IPPROTO_TCP => {
                let Ok(tcp) = TcpHeaderSlice::from_slice(segment) else { return Err(self.refuse(dst, malformed)) };
                (tcp.source_port(), tcp.destination_port(), tcp.syn(), tcp.ack(), tcp.slice().len())
            }
            IPPROTO_UDP => {
                let Ok(udp) = UdpHeaderSlice::from_slice(segment) else { return Err(self.refuse(dst, malformed)) };
                if usize::from(udp.length()) != segment.len() {
                    return Err(self.refuse(dst, malformed));
                }
                (udp.source_port(), udp.destination_port(), false, false, 0)
            }
            _ => return Err(self.refuse(dst, XdpAction::Pass(Why::OtherProto))),
        };
        if !self.is_vip_addr(dst) {
            return Err(XdpAction::Pass(Why::NonVip));
        }
        let flow = Flow { src, dst, sport, dport, proto };
        let vip = self.vip_of(&flow).ok_or(XdpAction::Pass(Why::NoService))?;
        Ok(Pkt { v6, l4, ip_len, tos, syn, ack, tcp_hdr_len, df, icmp: false, flow, vip })
    }

    /// The flow an ICMP (IPv4) or ICMPv6 message `msg` to VIP address `dst` is an error about:
    /// the quoted packet's (its source `dst`, a TCP or UDP packet) turned around, the client's
    /// side as the source. Else the verdict: other messages pass; a quote too short for the
    /// quoted header and its ports, or of an IPv4 header with options, is dropped; a quoted
    /// packet from another address or of another protocol passes (not a VIP flow's).
    fn icmp_error_flow(&self, v6: bool, dst: IpAddr, msg: &[u8]) -> Result<Flow, XdpAction> {
        if msg.len() < 8 {
            return Err(self.refuse(dst, XdpAction::Drop(Why::Malformed)));
        }
        let kind = msg[0];
        // ICMP: destination unreachable (fragmentation needed among its codes); ICMPv6:
        // destination unreachable and packet too big.
        let error = if v6 { kind == 1 || kind == 2 } else { kind == 3 };
        if !error {
            return Err(self.refuse(dst, XdpAction::Pass(Why::OtherProto)));
        }
        let quote = &msg[8..];
        let header = if v6 { 40 } else { 20 };
        if quote.len() < header + 4 {
            return Err(self.refuse(dst, XdpAction::Drop(Why::IcmpQuoteBad)));
        }
        let (src, inner_dst, proto) = if v6 {
            if quote[0] >> 4 != 6 {
                return Err(self.refuse(dst, XdpAction::Drop(Why::IcmpQuoteBad)));
            }
            let addr = |at: usize| IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&quote[at..at + 16]).expect("16")));
            (addr(8), addr(24), quote[6])
        } else {
            // Version 4 with a 20-byte header: no options.
            if quote[0] != 0x45 {
                return Err(self.refuse(dst, XdpAction::Drop(Why::IcmpQuoteBad)));
            }
            let addr = |at: usize| IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&quote[at..at + 4]).expect("4")));
            (addr(12), addr(16), quote[9])
        };
        if src != dst || (proto != IPPROTO_TCP && proto != IPPROTO_UDP) {
            return Err(self.refuse(dst, XdpAction::Pass(Why::IcmpNotOurs)));
        }
        let port = |at: usize| u16::from_be_bytes([quote[header + at], quote[header + at + 1]]);
        Ok(Flow { src: inner_dst, dst: src, sport: port(2), dport: port(0), proto })
    }

    fn route(&mut self, cpu: usize, f: &[u8], pkt: &Pkt) -> (IpAddr, Path) {
        // An ICMP error goes where its flow's packets go: the table, else the ring (with the
        // configured seed whatever the VIP's flags); it writes nothing.
        if pkt.icmp {
            if let Some(real) = self.remembered(&pkt.flow) {
                return (real, Path::Table);
            }
            let vip = &self.vips[&pkt.vip];
            let hash = flow_hash(&pkt.flow, self.settings.hash_seed);
            return (vip.reals[vip.ring[(hash % vip.spec.options.ring_size) as usize] as usize].addr, Path::Ring);
        }
        let vip = &self.vips[&pkt.vip];
        let spec = vip.spec.options.clone();
        let id = if pkt.flow.proto == IPPROTO_TCP && spec.tcp_id_routing && !pkt.syn {
            match tpr_server_id(&f[pkt.l4 + 20..pkt.l4 + pkt.tcp_hdr_len]) {
                TprWalk::Id(id) => Some((id, Path::TcpId(id))),
                TprWalk::NoId | TprWalk::Malformed => None,
            }
        } else if pkt.flow.proto == IPPROTO_UDP && spec.quic_id_routing {
            quic_id(&f[pkt.l4 + 8..ETH + pkt.ip_len]).map(|id| (id, Path::QuicId(id)))
        } else {
            None
        };
        // A live id routes only within the VIPs its real is a member of (a weight, up or not).
        if let Some((id, path)) = id
            && let Some(real) = self.server_ids.get(&id).copied()
            && vip.reals.iter().any(|r| r.addr == real && r.weight > 0)
        {
            if !spec.no_lru {
                self.remember(&pkt.flow, real);
            }
            return (real, path);
        }
        let ring_real = |hash: u32| {
            let vip = &self.vips[&pkt.vip];
            vip.reals[vip.ring[(hash % vip.spec.options.ring_size) as usize] as usize].addr
        };
        if spec.hash_per_packet {
            return (self.vips[&pkt.vip].reals[0].addr, Path::Random);
        }
        let hash = flow_hash(&pkt.flow, self.settings.hash_seed);
        if spec.no_lru {
            return (ring_real(hash), Path::Ring);
        }
        let new_connection = pkt.flow.proto == IPPROTO_TCP && pkt.syn && !pkt.ack;
        let slot = (cpu, hash % SYN_CACHE_SLOTS);
        if new_connection {
            let real = ring_real(hash);
            if self.remembered(&pkt.flow).is_some() {
                self.remember(&pkt.flow, real);
            } else {
                self.syn_cache.insert(slot, (pkt.flow, real));
            }
            return (real, Path::Ring);
        }
        if let Some(real) = self.remembered(&pkt.flow) {
            return (real, Path::Table);
        }
        if let Some(&(owner, real)) = self.syn_cache.get(&slot)
            && owner == pkt.flow
        {
            self.syn_cache.remove(&slot);
            self.remember(&pkt.flow, real);
            return (real, Path::Table);
        }
        let real = ring_real(hash);
        self.remember(&pkt.flow, real);
        (real, Path::Ring)
    }

    /// The table's real for `flow`: an entry under its key that holds another flow is a miss.
    fn remembered(&self, flow: &Flow) -> Option<IpAddr> {
        self.table.get(&TableKey::of(flow)).filter(|(owner, _)| owner == flow).map(|(_, real)| *real)
    }

    fn remember(&mut self, flow: &Flow, real: IpAddr) {
        self.table.insert(TableKey::of(flow), (*flow, real));
    }

    fn encap(&self, f: &[u8], pkt: &Pkt, real: IpAddr) -> Vec<u8> {
        let hash = encap_hash(&pkt.flow).to_le_bytes();
        let inner = &f[ETH..ETH + pkt.ip_len];
        let inner_proto = if pkt.v6 { 41 } else { 4 };
        let mut out = Vec::with_capacity(ETH + 40 + inner.len());
        out.extend_from_slice(&f[6..12]);
        out.extend_from_slice(&f[0..6]);
        match real {
            IpAddr::V4(dst) => {
                out.extend_from_slice(&0x0800u16.to_be_bytes());
                // The source's host bits (under the configured prefix) carry the hash's bytes.
                let (base, mask) =
                    (self.settings.encap_src_v4.network().octets(), self.settings.encap_src_v4.netmask().octets());
                let src: Vec<u8> = (0..4).map(|i| (base[i] & mask[i]) | (hash[i] & !mask[i])).collect();
                let mut hdr = vec![0x45, pkt.tos];
                hdr.extend_from_slice(&((20 + pkt.ip_len) as u16).to_be_bytes());
                hdr.extend_from_slice(&[0, 0, 0x40, 0, 64, inner_proto, 0, 0]);
                hdr.extend_from_slice(&src);
                hdr.extend_from_slice(&dst.octets());
                let csum = ipv4_checksum(&hdr);
                hdr[10..12].copy_from_slice(&csum.to_be_bytes());
                out.extend_from_slice(&hdr);
            }
            IpAddr::V6(dst) => {
                out.extend_from_slice(&0x86ddu16.to_be_bytes());
                let label = u32::from_le_bytes(hash) & 0xf_ffff;
                let vtcfl = (6u32 << 28) | (u32::from(pkt.tos) << 20) | label;
                out.extend_from_slice(&vtcfl.to_be_bytes());
                out.extend_from_slice(&(pkt.ip_len as u16).to_be_bytes());
                out.push(inner_proto);
                out.push(64);
                // The prefix's first 12 bytes, then the hash's bytes.
                out.extend_from_slice(&self.settings.encap_src_v6.network().octets()[..12]);
                out.extend_from_slice(&hash);
                out.extend_from_slice(&dst.octets());
            }
        }
        out.extend_from_slice(inner);
        out
    }
}

/// The ICMP "fragmentation needed" (IPv4) or ICMPv6 "packet too big" answer to frame `f`
/// (packet `pkt`), saying `mtu` fits: back to the sender from the address it sent to, quoting
/// the packet's IP header and the 8 bytes after it. Built by etherparse (checksums included).
fn too_big_answer(f: &[u8], pkt: &Pkt, mtu: u32) -> Vec<u8> {
    use etherparse::{IpHeaders, Ipv4Header, PacketBuilder, icmpv4};
    let quote = &f[ETH..pkt.l4 + 8];
    let macs = (<[u8; 6]>::try_from(&f[0..6]).expect("6"), <[u8; 6]>::try_from(&f[6..12]).expect("6"));
    let builder = PacketBuilder::ethernet2(macs.0, macs.1);
    let mut out = Vec::new();
    let written = match (pkt.flow.dst, pkt.flow.src) {
        (IpAddr::V4(vip), IpAddr::V4(client)) => {
            let mut ip = Ipv4Header::new(0, 64, etherparse::IpNumber::ICMP, vip.octets(), client.octets())
                .expect("a valid header");
            // As Linux and katran send ICMP errors: "don't fragment" clear.
            ip.dont_fragment = false;
            let frag = icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: mtu as u16 };
            builder
                .ip(IpHeaders::Ipv4(ip, Default::default()))
                .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(frag))
                .write(&mut out, quote)
        }
        (IpAddr::V6(vip), IpAddr::V6(client)) => builder
            .ipv6(vip.octets(), client.octets(), 64)
            .icmpv6(etherparse::Icmpv6Type::PacketTooBig { mtu })
            .write(&mut out, quote),
        _ => unreachable!("a flow's addresses are of one family"),
    };
    written.expect("an ICMP answer fits in memory");
    out
}

fn vip_id(vip: &VipSpec) -> VipId {
    let proto = match vip.proto {
        Proto::Tcp => IPPROTO_TCP,
        Proto::Udp => IPPROTO_UDP,
    };
    (vip.addr, vip.port, proto)
}

/// An address as 16 bytes: IPv6 as it is, IPv4 in the first four, zeros after.
fn bytes16(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v4) => {
            let mut out = [0; 16];
            out[..4].copy_from_slice(&v4.octets());
            out
        }
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The ring's flow hash: [`murmur3_32`] with the configured seed over 40 bytes: the source and
/// destination addresses ([`bytes16`]) interleaved four bytes at a time (source bytes 0-3,
/// destination bytes 0-3, source bytes 4-7, ...), the destination port and the source port as
/// on the wire, the protocol and three zero bytes.
fn flow_hash(flow: &Flow, seed: u32) -> u32 {
    let (src, dst) = (bytes16(flow.src), bytes16(flow.dst));
    let mut message = Vec::with_capacity(40);
    for (s, d) in src.chunks(4).zip(dst.chunks(4)) {
        message.extend_from_slice(s);
        message.extend_from_slice(d);
    }
    message.extend_from_slice(&flow.dport.to_be_bytes());
    message.extend_from_slice(&flow.sport.to_be_bytes());
    message.extend_from_slice(&[flow.proto, 0, 0, 0]);
    murmur3_32(&message, seed)
}

/// MurmurHash3, x86 32-bit variant (Austin Appleby's `MurmurHash3_x86_32`): blocks of four
/// bytes read little-endian, a tail of up to three bytes, the length, the finaliser.
pub(crate) fn murmur3_32(data: &[u8], seed: u32) -> u32 {
    const C1: u32 = 0xcc9e_2d51;
    const C2: u32 = 0x1b87_3593;
    let scramble = |k: u32| k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    let mut h = seed;
    let blocks = data.chunks_exact(4);
    let tail = blocks.remainder();
    for block in blocks {
        h ^= scramble(u32::from_le_bytes(block.try_into().expect("4 bytes")));
        h = h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
    }
    if !tail.is_empty() {
        let k = tail.iter().rev().fold(0u32, |k, b| (k << 8) | u32::from(*b));
        h ^= scramble(k);
    }
    h ^= data.len() as u32;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The outer headers' per-flow hash: the XOR of the source address's four-byte groups
/// ([`bytes16`]) and of the destination and source ports (as on the wire), read as a
/// little-endian word, then one multiply-xorshift round.
fn encap_hash(flow: &Flow) -> u32 {
    let src = bytes16(flow.src);
    let [d0, d1] = flow.dport.to_be_bytes();
    let [s0, s1] = flow.sport.to_be_bytes();
    let mut folded = [d0, d1, s0, s1];
    for group in src.chunks(4) {
        for (byte, b) in folded.iter_mut().zip(group) {
            *byte ^= b;
        }
    }
    let mut h = u32::from_le_bytes(folded);
    h ^= h >> 16;
    h = h.wrapping_mul(0x045d_9f3b);
    h ^ (h >> 16)
}

/// The server id of a QUIC datagram whose UDP payload is `payload`, per the LB's rules
/// (DESIGN.md section 1): Handshake and Retry long headers (types by version; any version but
/// 1 and 2 hashes) with a destination CID of at least 8 bytes, and short headers (an 8-byte
/// CID assumed) carry one; `None` when it carries no routable id.
fn quic_id(payload: &[u8]) -> Option<u32> {
    let first = *payload.first()?;
    let cid = if first & 0x80 != 0 {
        let version = u32::from_be_bytes(payload.get(1..5)?.try_into().expect("4 bytes"));
        let cid_len = usize::from(*payload.get(5)?);
        if !matches!(LongType::of_bits((first >> 4) & 0x3, version)?, LongType::Handshake | LongType::Retry)
            || cid_len < MIN_CID
        {
            return None;
        }
        payload.get(6..6 + cid_len)?
    } else {
        payload.get(1..1 + MIN_CID)?
    };
    cid_server_id(cid).filter(|id| *id != 0)
}

/// The server id a connection id carries, by DESIGN.md's layouts, named by the CID's first two
/// bits: `01` 16 bits from bit 2, `10` 24 bits from bit 8, `11` 32 bits from bit 8 (bits
/// counted from the most significant bit of the first byte); `00` carries none.
fn cid_server_id(cid: &[u8]) -> Option<u32> {
    // `len` bits from bit `from`, most significant first.
    let bits = |from: usize, len: usize| {
        (from..from + len).fold(0u32, |id, bit| (id << 1) | u32::from((cid[bit / 8] >> (7 - bit % 8)) & 1))
    };
    match cid.first()? >> 6 {
        0b01 => Some(bits(2, 16)),
        0b10 => Some(bits(8, 24)),
        0b11 => Some(bits(8, 32)),
        _ => None,
    }
}

/// The IPv4 header checksum (over a header whose checksum field is zero).
pub fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Published known answers of `MurmurHash3_x86_32` (SMHasher's reference implementation).
    #[test]
    fn murmur3_matches_published_vectors() {
        let cases: [(&[u8], u32, u32); 12] = [
            (b"", 0, 0),
            (b"", 1, 0x514e_28b7),
            (b"", 0xffff_ffff, 0x81f1_6f39),
            (&[0xff, 0xff, 0xff, 0xff], 0, 0x7629_3b50),
            (&[0x21, 0x43, 0x65, 0x87], 0, 0xf55b_516b),
            (&[0x21, 0x43, 0x65, 0x87], 0x5082_edee, 0x2362_f9de),
            (&[0x21, 0x43, 0x65], 0, 0x7e4a_8634),
            (&[0x21, 0x43], 0, 0xa0f7_b07a),
            (&[0x21], 0, 0x7266_1cf4),
            (&[0, 0, 0, 0], 0, 0x2362_f9de),
            (b"Hello, world!", 1234, 0xfaf6_cdb3),
            (b"The quick brown fox jumps over the lazy dog", 0, 0x2e4f_f723),
        ];
        for (data, seed, want) in cases {
            assert_eq!(murmur3_32(data, seed), want, "{data:?} seed {seed:#x}");
        }
    }

    /// Known answers computed by hand from DESIGN.md's layouts (not by any encoder).
    #[test]
    fn connection_ids_decode_by_layout() {
        // 01: id 0x1234 = 0001 0010 0011 0100 in bits 2..18: 01|000100 10001101 00|000000.
        assert_eq!(cid_server_id(&[0x44, 0x8d, 0x00, 0, 0, 0, 0, 0]), Some(0x1234));
        // 01: the largest id, all other bits set too.
        assert_eq!(cid_server_id(&[0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0]), Some(0xffff));
        // 10: six free bits, then the id in bytes 1..=3.
        assert_eq!(cid_server_id(&[0xbf, 0xab, 0xcd, 0xef, 0xff, 0, 0, 0]), Some(0xab_cdef));
        // 11: the id in bytes 1..=4.
        assert_eq!(cid_server_id(&[0xc0, 0x01, 0x02, 0x03, 0x04, 0xff, 0xff, 0xff]), Some(0x0102_0304));
        // 00 carries none.
        assert_eq!(cid_server_id(&[0x3f, 1, 2, 3, 4, 5, 6, 7]), None);
    }

    /// The flow hash's message for a known flow, byte by byte, and its hash through the
    /// reference algorithm.
    #[test]
    fn flow_hash_message_layout() {
        let flow = Flow {
            src: "10.0.0.1".parse().unwrap(),
            dst: "203.0.113.10".parse().unwrap(),
            sport: 0x1234,
            dport: 80,
            proto: 6,
        };
        let mut message = vec![10, 0, 0, 1, 203, 0, 113, 10];
        message.extend_from_slice(&[0; 24]);
        message.extend_from_slice(&[0, 80, 0x12, 0x34, 6, 0, 0, 0]);
        assert_eq!(flow_hash(&flow, 7), murmur3_32(&message, 7));
    }
}
