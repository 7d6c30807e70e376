//! A reference model of `xdp_lb`'s data path, in plain Rust: the same validation, the same
//! routing order, the same encapsulation, byte for byte.
//!
//! The conformance suite runs every case through the BPF program (`BPF_PROG_TEST_RUN`) and
//! through this model and requires identical verdicts and output bytes; the fuzz suite does the
//! same for a million random and mutated frames. Two independent implementations of one
//! specification (DESIGN.md section 1 and the policy in the program's docs) catch what neither
//! catches alone. The model keeps one connection table (the union of the BPF per-CPU tables and
//! their fallback) under the program's folded key ([`ConnKey`]), so flows whose keys collide
//! replace each other's entries as in the kernel; it never evicts otherwise: the suites stay far
//! below the tables' sizes.
//!
//! What it still shares with the program (issue "Make the existing proofs trustworthy" tracks
//! the rest): the flow and encapsulation hashes and the folded key. QUIC connection ids are
//! decoded by the workload's codec (`workload::quic::server_id_of`, checked against hand-made
//! known answers), not by the program's `quic_server_id`; long-header types by RFC 9000 and
//! RFC 9369's tables (`LongType::of_bits`); the live-id check within a VIP from the VIP's own
//! reals.
//!
//! Pure: no I/O, no clock.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use zrlab_common::lb::{ConnKey, FlowKey, QUIC_MIN_CID, VipKey, encap_hash, flow_hash};

use super::{
    balancer::{RealSpec, Settings, VipSpec, words},
    maglev::{self, Backend},
};
use crate::packet::tcp_options::{TprWalk, tpr_server_id};

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
pub enum Verdict {
    /// `XDP_PASS`.
    Pass(Why),
    /// `XDP_DROP`.
    Drop(Why),
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

struct Vip {
    spec: VipSpec,
    reals: Vec<RealSpec>,
    ring: Vec<u32>,
}

/// The model LB.
pub struct Model {
    settings: Settings,
    vips: BTreeMap<VipKey, Vip>,
    server_ids: BTreeMap<u32, IpAddr>,
    table: HashMap<ConnKey, (FlowKey, IpAddr)>,
}

const ETH: usize = 14;

fn be16(b: &[u8], at: usize) -> usize {
    usize::from(u16::from_be_bytes([b[at], b[at + 1]]))
}

fn fits_frame(ip_len: usize, frame_ip_len: usize) -> bool {
    ip_len == frame_ip_len || (ip_len < frame_ip_len && frame_ip_len + ETH <= 60)
}

struct Pkt {
    v6: bool,
    l4: usize,
    ip_len: usize,
    tos: u8,
    tcp_flags: u8,
    tcp_hdr_len: usize,
    flow: FlowKey,
    vip: VipKey,
}

impl Model {
    /// An empty model with `settings`.
    pub fn new(settings: Settings) -> Self {
        Self { settings, vips: BTreeMap::new(), server_ids: BTreeMap::new(), table: HashMap::new() }
    }

    /// As [`super::Balancer::set_vip`].
    pub fn set_vip(&mut self, vip: &VipSpec, reals: &[RealSpec]) -> Result<(), maglev::MaglevError> {
        let backends: Vec<Backend> = reals.iter().map(RealSpec::backend).collect();
        let ring = maglev::build(&backends, vip.ring_size)?;
        let key = VipKey { addr: words(vip.addr), port: vip.port.to_be(), proto: vip.proto.number(), pad: 0 };
        self.vips.insert(key, Vip { spec: vip.clone(), reals: reals.to_vec(), ring });
        Ok(())
    }

    /// As [`super::Balancer::sync_server_ids`].
    pub fn sync_server_ids(&mut self, live: &BTreeMap<u32, IpAddr>) {
        self.server_ids = live.clone();
    }

    /// What `xdp_lb` does with `frame`.
    pub fn process(&mut self, frame: &[u8]) -> Verdict {
        let pkt = match self.parse(frame) {
            Ok(pkt) => pkt,
            Err(verdict) => return verdict,
        };
        let (real, path) = self.route(frame, &pkt);
        let output = self.encap(frame, &pkt, real);
        Verdict::Tx { real, path, output }
    }

    fn is_vip_addr(&self, addr: [u32; 4]) -> bool {
        self.vips.keys().any(|k| k.addr == addr)
    }

    fn parse(&self, f: &[u8]) -> Result<Pkt, Verdict> {
        if f.len() < ETH {
            return Err(Verdict::Pass(Why::NotIp));
        }
        let frame_ip_len = f.len() - ETH;
        let (v6, src, dst, ip_len, proto, tos) = match be16(f, 12) {
            0x0800 => {
                if f.len() < ETH + 20 {
                    return Err(Verdict::Pass(Why::NotIp));
                }
                let ip = &f[ETH..];
                let dst = words_of(&ip[16..20]);
                if !self.is_vip_addr(dst) {
                    return Err(Verdict::Pass(Why::NonVip));
                }
                let ihl = usize::from(ip[0] & 0xf) * 4;
                if ip[0] >> 4 != 4 || ihl < 20 {
                    return Err(Verdict::Drop(Why::Malformed));
                }
                if ihl > 20 {
                    return Err(Verdict::Pass(Why::IpOptions));
                }
                let tot = be16(ip, 2);
                if tot < 20 || !fits_frame(tot, frame_ip_len) {
                    return Err(Verdict::Drop(Why::Malformed));
                }
                if be16(ip, 6) & 0x3fff != 0 {
                    return Err(Verdict::Pass(Why::Fragment));
                }
                (false, words_of(&ip[12..16]), dst, tot, ip[9], ip[1])
            }
            0x86dd => {
                if f.len() < ETH + 40 {
                    return Err(Verdict::Pass(Why::NotIp));
                }
                let ip = &f[ETH..];
                let dst = words_of(&ip[24..40]);
                if !self.is_vip_addr(dst) {
                    return Err(Verdict::Pass(Why::NonVip));
                }
                if ip[0] >> 4 != 6 {
                    return Err(Verdict::Drop(Why::Malformed));
                }
                let tot = 40 + be16(ip, 4);
                if !fits_frame(tot, frame_ip_len) {
                    return Err(Verdict::Drop(Why::Malformed));
                }
                if matches!(ip[6], 0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140) {
                    return Err(Verdict::Pass(Why::Fragment));
                }
                (true, words_of(&ip[8..24]), dst, tot, ip[6], (ip[0] << 4) | (ip[1] >> 4))
            }
            _ => return Err(Verdict::Pass(Why::NotIp)),
        };
        let l4 = ETH + if v6 { 40 } else { 20 };
        let l4_len = ip_len - (l4 - ETH);
        let (ports, tcp_flags, tcp_hdr_len) = match proto {
            6 => {
                if l4_len < 20 {
                    return Err(Verdict::Drop(Why::Malformed));
                }
                let hdr_len = usize::from(f[l4 + 12] >> 4) * 4;
                if hdr_len < 20 || hdr_len > l4_len {
                    return Err(Verdict::Drop(Why::Malformed));
                }
                (ports_of(f, l4), f[l4 + 13], hdr_len)
            }
            17 => {
                if l4_len < 8 {
                    return Err(Verdict::Drop(Why::Malformed));
                }
                if be16(f, l4 + 4) != l4_len {
                    return Err(Verdict::Drop(Why::Malformed));
                }
                (ports_of(f, l4), 0, 0)
            }
            _ => return Err(Verdict::Pass(Why::OtherProto)),
        };
        let flow = FlowKey { src, dst, ports, proto };
        let mut vip = VipKey { addr: dst, port: flow.port_pair()[1], proto, pad: 0 };
        if !self.vips.contains_key(&vip) {
            vip.port = 0;
            if !self.vips.contains_key(&vip) {
                return Err(Verdict::Pass(Why::NoService));
            }
        }
        Ok(Pkt { v6, l4, ip_len, tos, tcp_flags, tcp_hdr_len, flow, vip })
    }

    fn route(&mut self, f: &[u8], pkt: &Pkt) -> (IpAddr, Path) {
        let vip = &self.vips[&pkt.vip];
        let spec = vip.spec.clone();
        let id = if pkt.flow.proto == 6 && spec.tcp_id_routing && pkt.tcp_flags & 0x02 == 0 {
            match tpr_server_id(&f[pkt.l4 + 20..pkt.l4 + pkt.tcp_hdr_len]) {
                TprWalk::Id(id) => Some((id, Path::TcpId(id))),
                TprWalk::NoId | TprWalk::Malformed => None,
            }
        } else if pkt.flow.proto == 17 && spec.quic_id_routing {
            quic_id(f, pkt).map(|id| (id, Path::QuicId(id)))
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
            vip.reals[vip.ring[(hash % vip.spec.ring_size) as usize] as usize].addr
        };
        if spec.hash_per_packet {
            return (self.vips[&pkt.vip].reals[0].addr, Path::Random);
        }
        let hash = flow_hash(&pkt.flow, self.settings.hash_seed);
        if spec.no_lru {
            return (ring_real(hash), Path::Ring);
        }
        let syn = pkt.flow.proto == 6 && pkt.tcp_flags & 0x12 == 0x02;
        if !syn && let Some(real) = self.remembered(&pkt.flow) {
            return (real, Path::Table);
        }
        let real = ring_real(hash);
        self.remember(&pkt.flow, real);
        (real, Path::Ring)
    }

    /// The table's real for `flow`: an entry under its key that holds other addresses is a miss.
    fn remembered(&self, flow: &FlowKey) -> Option<IpAddr> {
        self.table.get(&ConnKey::of(flow)).filter(|(owner, _)| owner == flow).map(|(_, real)| *real)
    }

    fn remember(&mut self, flow: &FlowKey, real: IpAddr) {
        self.table.insert(ConnKey::of(flow), (*flow, real));
    }

    fn encap(&self, f: &[u8], pkt: &Pkt, real: IpAddr) -> Vec<u8> {
        let hash = encap_hash(&pkt.flow);
        let inner = &f[ETH..ETH + pkt.ip_len];
        let inner_proto = if pkt.v6 { 41 } else { 4 };
        let mut out = Vec::with_capacity(ETH + 40 + inner.len());
        out.extend_from_slice(&f[6..12]);
        out.extend_from_slice(&f[0..6]);
        match real {
            IpAddr::V4(dst) => {
                out.extend_from_slice(&0x0800u16.to_be_bytes());
                let base = u32::from_ne_bytes(self.settings.encap_src_v4.network().octets());
                let mask = u32::from_ne_bytes(self.settings.encap_src_v4.netmask().octets());
                let src = (base & mask) | (hash & !mask);
                let mut hdr = vec![0x45, pkt.tos];
                hdr.extend_from_slice(&((20 + pkt.ip_len) as u16).to_be_bytes());
                hdr.extend_from_slice(&[0, 0, 0x40, 0, 64, inner_proto, 0, 0]);
                hdr.extend_from_slice(&src.to_ne_bytes());
                hdr.extend_from_slice(&dst.octets());
                let csum = ipv4_checksum(&hdr);
                hdr[10..12].copy_from_slice(&csum.to_be_bytes());
                out.extend_from_slice(&hdr);
            }
            IpAddr::V6(dst) => {
                out.extend_from_slice(&0x86ddu16.to_be_bytes());
                let vtcfl = (6u32 << 28) | (u32::from(pkt.tos) << 20) | (hash & 0xf_ffff);
                out.extend_from_slice(&vtcfl.to_be_bytes());
                out.extend_from_slice(&(pkt.ip_len as u16).to_be_bytes());
                out.push(inner_proto);
                out.push(64);
                let base = words(IpAddr::V6(self.settings.encap_src_v6.network()));
                for word in [base[0], base[1], base[2], hash] {
                    out.extend_from_slice(&word.to_ne_bytes());
                }
                out.extend_from_slice(&dst.octets());
            }
        }
        out.extend_from_slice(inner);
        out
    }

    /// The reals of the VIP `frame` is addressed to (for [`Path::Random`] checks).
    pub fn reals_of(&self, vip: &VipSpec) -> Vec<IpAddr> {
        let key = VipKey { addr: words(vip.addr), port: vip.port.to_be(), proto: vip.proto.number(), pad: 0 };
        self.vips.get(&key).map(|v| v.reals.iter().map(|r| r.addr).collect()).unwrap_or_default()
    }
}

fn words_of(bytes: &[u8]) -> [u32; 4] {
    let mut out = [0u32; 4];
    for (word, chunk) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *word = u32::from_ne_bytes(chunk.try_into().expect("4 bytes"));
    }
    out
}

fn ports_of(f: &[u8], l4: usize) -> u32 {
    u32::from_ne_bytes([f[l4], f[l4 + 1], f[l4 + 2], f[l4 + 3]])
}

/// The server id of a QUIC datagram (the rules of `xdp_lb`'s `quic_id`); `None` when it carries
/// no routable id. The connection id is decoded by the workload's codec (`workload::quic`), not
/// by the program's, and the long-header type by RFC 9000 / RFC 9369's tables.
fn quic_id(f: &[u8], pkt: &Pkt) -> Option<u32> {
    let payload = pkt.l4 + 8;
    let payload_len = pkt.ip_len - (pkt.l4 - ETH) - 8;
    let first = *f.get(payload)?;
    let cid_off = if first & 0x80 != 0 {
        if payload_len < 6 {
            return None;
        }
        let version = u32::from_be_bytes(f[payload + 1..payload + 5].try_into().expect("4 bytes"));
        let kind = crate::workload::quic::LongType::of_bits((first >> 4) & 0x3, version)?;
        if !matches!(kind, crate::workload::quic::LongType::Handshake | crate::workload::quic::LongType::Retry) {
            return None;
        }
        let cid_len = u32::from(f[payload + 5]);
        if cid_len < QUIC_MIN_CID || payload_len < 6 + cid_len as usize {
            return None;
        }
        payload + 6
    } else {
        if payload_len < 1 + QUIC_MIN_CID as usize {
            return None;
        }
        payload + 1
    };
    crate::workload::quic::server_id_of(&f[cid_off..cid_off + QUIC_MIN_CID as usize]).filter(|id| *id != 0)
}

/// The IPv4 header checksum (over a header whose checksum field is zero).
pub fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
