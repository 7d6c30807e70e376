//! Test packets: typed representations that emit and parse Ethernet frames, for the
//! conformance and fuzz suites and the XDP benchmark.
//!
//! The shape follows smoltcp's `wire` module: a `Repr` per layer with `emit` (which produces a
//! valid packet of exactly the right length, checksums included, computed with pnet) and
//! `parse` (which checks lengths before reading, and keeps whatever it cannot understand as
//! raw bytes instead of failing, so that an LB output can always be described). Malformed
//! packets are made by emitting a valid one and then mutating bytes ([`Frame`] helpers), so
//! every mutation is explicit in the test that makes it.
//!
//! [`describe`] renders a frame as stable text for snapshots.

pub mod tcp_options;

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use pnet_packet::{
    Packet as _,
    tcp::{TcpPacket, ipv4_checksum as tcp4, ipv6_checksum as tcp6},
    udp::{UdpPacket, ipv4_checksum as udp4, ipv6_checksum as udp6},
};

use self::tcp_options::TcpOption;

/// EtherType IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// EtherType IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// Ethernet header length.
pub(crate) const ETH_LEN: usize = 14;

/// An Ethernet frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameRepr {
    /// Destination MAC.
    pub dst_mac: [u8; 6],
    /// Source MAC.
    pub src_mac: [u8; 6],
    /// What it carries.
    pub payload: EthPayload,
}

/// An Ethernet payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EthPayload {
    /// An IP packet.
    Ip(IpRepr),
    /// Anything else (EtherType, bytes).
    Other(u16, Vec<u8>),
}

/// An IPv4 or IPv6 packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpRepr {
    /// Source address.
    pub src: IpAddr,
    /// Destination address (same family).
    pub dst: IpAddr,
    /// TOS / traffic class.
    pub tos: u8,
    /// TTL / hop limit.
    pub ttl: u8,
    /// IPv4: identification. IPv6: flow label (20 bits).
    pub id: u32,
    /// IPv4 flags and fragment offset as on the wire (DF = 0x4000, MF = 0x2000).
    pub frag: u16,
    /// IPv4 option bytes (a multiple of 4 bytes; empty for IPv6).
    pub options: Vec<u8>,
    /// The payload.
    pub payload: IpPayload,
}

/// An IP payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IpPayload {
    /// TCP.
    Tcp(TcpRepr),
    /// UDP.
    Udp(UdpRepr),
    /// An IP packet inside (IPIP: protocol 4 or 41).
    Ip(Box<IpRepr>),
    /// Any other protocol (number, bytes).
    Other(u8, Vec<u8>),
}

/// A TCP segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpRepr {
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgement number.
    pub ack: u32,
    /// Flags (SYN 0x02, ACK 0x10, ...).
    pub flags: u8,
    /// Options, emitted in order and padded with EOL to a multiple of 4 bytes.
    pub options: Vec<TcpOption>,
    /// Raw option bytes appended after `options` (for malformed lists).
    pub raw_options: Vec<u8>,
    /// Payload.
    pub payload: Vec<u8>,
}

/// A UDP datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpRepr {
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Payload.
    pub payload: Vec<u8>,
}

/// TCP flag SYN.
pub const SYN: u8 = 0x02;
/// TCP flag ACK.
pub const ACK: u8 = 0x10;
/// TCP flag PSH.
pub const PSH: u8 = 0x08;

impl TcpRepr {
    /// A segment with default numbers and no options or payload.
    pub fn new(sport: u16, dport: u16, flags: u8) -> Self {
        Self {
            sport,
            dport,
            seq: 1000,
            ack: if flags & ACK != 0 { 2000 } else { 0 },
            flags,
            options: vec![],
            raw_options: vec![],
            payload: vec![],
        }
    }

    fn option_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        for option in &self.options {
            option.emit(&mut bytes);
        }
        bytes.extend_from_slice(&self.raw_options);
        while bytes.len() % 4 != 0 {
            bytes.push(0);
        }
        bytes
    }

    fn emit(&self, src: IpAddr, dst: IpAddr) -> Vec<u8> {
        let options = self.option_bytes();
        let hdr_len = 20 + options.len();
        let mut out = Vec::with_capacity(hdr_len + self.payload.len());
        out.extend_from_slice(&self.sport.to_be_bytes());
        out.extend_from_slice(&self.dport.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.ack.to_be_bytes());
        out.push(((hdr_len / 4) as u8) << 4);
        out.push(self.flags);
        out.extend_from_slice(&65_535u16.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(&options);
        out.extend_from_slice(&self.payload);
        let packet = TcpPacket::new(&out).expect("a full header");
        let csum = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => tcp4(&packet, &s, &d),
            (IpAddr::V6(s), IpAddr::V6(d)) => tcp6(&packet, &s, &d),
            _ => 0,
        };
        out[16..18].copy_from_slice(&csum.to_be_bytes());
        out
    }

    fn parse(bytes: &[u8]) -> Option<Self> {
        let packet = TcpPacket::new(bytes)?;
        let hdr_len = usize::from(packet.get_data_offset()) * 4;
        if hdr_len < 20 || hdr_len > bytes.len() {
            return None;
        }
        let mut options = Vec::new();
        let mut rest = &bytes[20..hdr_len];
        let mut raw_options = Vec::new();
        while !rest.is_empty() {
            match TcpOption::parse(rest) {
                Ok((next, option)) => {
                    options.push(option);
                    rest = next;
                }
                Err(_) => {
                    raw_options = rest.to_vec();
                    break;
                }
            }
        }
        Some(Self {
            sport: packet.get_source(),
            dport: packet.get_destination(),
            seq: packet.get_sequence(),
            ack: packet.get_acknowledgement(),
            flags: packet.get_flags(),
            options,
            raw_options,
            payload: bytes[hdr_len..].to_vec(),
        })
    }
}

impl UdpRepr {
    fn emit(&self, src: IpAddr, dst: IpAddr) -> Vec<u8> {
        let len = 8 + self.payload.len();
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&self.sport.to_be_bytes());
        out.extend_from_slice(&self.dport.to_be_bytes());
        out.extend_from_slice(&(len as u16).to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.payload);
        let packet = UdpPacket::new(&out).expect("a full header");
        let csum = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => udp4(&packet, &s, &d),
            (IpAddr::V6(s), IpAddr::V6(d)) => udp6(&packet, &s, &d),
            _ => 0,
        };
        out[6..8].copy_from_slice(&csum.to_be_bytes());
        out
    }

    fn parse(bytes: &[u8]) -> Option<Self> {
        let packet = UdpPacket::new(bytes)?;
        if usize::from(packet.get_length()) != bytes.len() {
            return None;
        }
        Some(Self { sport: packet.get_source(), dport: packet.get_destination(), payload: packet.payload().to_vec() })
    }
}

impl IpRepr {
    /// A packet from `src` to `dst` with default TTL and no options.
    pub fn new(src: IpAddr, dst: IpAddr, payload: IpPayload) -> Self {
        Self { src, dst, tos: 0, ttl: 64, id: 0, frag: 0, options: vec![], payload }
    }

    fn proto(&self) -> u8 {
        match &self.payload {
            IpPayload::Tcp(_) => 6,
            IpPayload::Udp(_) => 17,
            IpPayload::Ip(inner) if inner.src.is_ipv4() => 4,
            IpPayload::Ip(_) => 41,
            IpPayload::Other(proto, _) => *proto,
        }
    }

    /// Emits the IP packet (header and payload).
    pub fn emit(&self) -> Vec<u8> {
        let payload = match &self.payload {
            IpPayload::Tcp(tcp) => tcp.emit(self.src, self.dst),
            IpPayload::Udp(udp) => udp.emit(self.src, self.dst),
            IpPayload::Ip(inner) => inner.emit(),
            IpPayload::Other(_, bytes) => bytes.clone(),
        };
        match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let hdr_len = 20 + self.options.len();
                let mut out = Vec::with_capacity(hdr_len + payload.len());
                out.push(0x40 | (hdr_len / 4) as u8);
                out.push(self.tos);
                out.extend_from_slice(&((hdr_len + payload.len()) as u16).to_be_bytes());
                out.extend_from_slice(&(self.id as u16).to_be_bytes());
                out.extend_from_slice(&self.frag.to_be_bytes());
                out.push(self.ttl);
                out.push(self.proto());
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(&src.octets());
                out.extend_from_slice(&dst.octets());
                out.extend_from_slice(&self.options);
                let packet = pnet_packet::ipv4::Ipv4Packet::new(&out).expect("a full header");
                let csum = pnet_packet::ipv4::checksum(&packet);
                out[10..12].copy_from_slice(&csum.to_be_bytes());
                out.extend_from_slice(&payload);
                out
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                let mut out = Vec::with_capacity(40 + payload.len());
                let vtcfl = (6u32 << 28) | (u32::from(self.tos) << 20) | (self.id & 0xf_ffff);
                out.extend_from_slice(&vtcfl.to_be_bytes());
                out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
                out.push(self.proto());
                out.push(self.ttl);
                out.extend_from_slice(&src.octets());
                out.extend_from_slice(&dst.octets());
                out.extend_from_slice(&payload);
                out
            }
            _ => panic!("IpRepr with mixed address families"),
        }
    }

    /// Parses an IP packet; anything past a header it cannot read is kept as raw bytes.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let version = bytes.first()? >> 4;
        let (mut repr, proto, payload) = match version {
            4 => {
                let hdr_len = usize::from(bytes[0] & 0x0f) * 4;
                if bytes.len() < 20 || hdr_len < 20 || hdr_len > bytes.len() {
                    return None;
                }
                let tot = usize::from(u16::from_be_bytes([bytes[2], bytes[3]])).clamp(hdr_len, bytes.len());
                let src = Ipv4Addr::from(<[u8; 4]>::try_from(&bytes[12..16]).ok()?);
                let dst = Ipv4Addr::from(<[u8; 4]>::try_from(&bytes[16..20]).ok()?);
                let repr = Self {
                    src: src.into(),
                    dst: dst.into(),
                    tos: bytes[1],
                    ttl: bytes[8],
                    id: u32::from(u16::from_be_bytes([bytes[4], bytes[5]])),
                    frag: u16::from_be_bytes([bytes[6], bytes[7]]),
                    options: bytes[20..hdr_len].to_vec(),
                    payload: IpPayload::Other(0, vec![]),
                };
                (repr, bytes[9], &bytes[hdr_len..tot])
            }
            6 => {
                if bytes.len() < 40 {
                    return None;
                }
                let vtcfl = u32::from_be_bytes(bytes[0..4].try_into().ok()?);
                let len = (40 + usize::from(u16::from_be_bytes([bytes[4], bytes[5]]))).min(bytes.len());
                let src = Ipv6Addr::from(<[u8; 16]>::try_from(&bytes[8..24]).ok()?);
                let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&bytes[24..40]).ok()?);
                let repr = Self {
                    src: src.into(),
                    dst: dst.into(),
                    tos: (vtcfl >> 20) as u8,
                    ttl: bytes[7],
                    id: vtcfl & 0xf_ffff,
                    frag: 0,
                    options: vec![],
                    payload: IpPayload::Other(0, vec![]),
                };
                (repr, bytes[6], &bytes[40..len])
            }
            _ => return None,
        };
        repr.payload = match proto {
            6 => TcpRepr::parse(payload).map(IpPayload::Tcp),
            17 => UdpRepr::parse(payload).map(IpPayload::Udp),
            4 | 41 => IpRepr::parse(payload).map(|inner| IpPayload::Ip(Box::new(inner))),
            _ => None,
        }
        .unwrap_or_else(|| IpPayload::Other(proto, payload.to_vec()));
        Some(repr)
    }
}

impl FrameRepr {
    /// A frame between two fixed lab MACs carrying `ip`.
    pub fn with_ip(ip: IpRepr) -> Self {
        Self { dst_mac: [0x02, 0, 0, 0, 0, 0xb1], src_mac: [0x02, 0, 0, 0, 0, 0xa1], payload: EthPayload::Ip(ip) }
    }

    /// Emits the frame.
    pub fn emit(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.dst_mac);
        out.extend_from_slice(&self.src_mac);
        match &self.payload {
            EthPayload::Ip(ip) => {
                out.extend_from_slice(&if ip.src.is_ipv4() { ETH_P_IP } else { ETH_P_IPV6 }.to_be_bytes());
                out.extend_from_slice(&ip.emit());
            }
            EthPayload::Other(kind, bytes) => {
                out.extend_from_slice(&kind.to_be_bytes());
                out.extend_from_slice(bytes);
            }
        }
        out
    }

    /// Parses a frame (lenient: see the module docs). `None` if shorter than an Ethernet header.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < ETH_LEN {
            return None;
        }
        let kind = u16::from_be_bytes([bytes[12], bytes[13]]);
        let body = &bytes[ETH_LEN..];
        let payload = match kind {
            ETH_P_IP | ETH_P_IPV6 => IpRepr::parse(body).map(EthPayload::Ip),
            _ => None,
        }
        .unwrap_or_else(|| EthPayload::Other(kind, body.to_vec()));
        Some(Self { dst_mac: bytes[0..6].try_into().ok()?, src_mac: bytes[6..12].try_into().ok()?, payload })
    }

    /// The IP packet the frame carries, if any.
    pub fn ip_packet(&self) -> Option<&IpRepr> {
        match &self.payload {
            EthPayload::Ip(ip) => Some(ip),
            EthPayload::Other(..) => None,
        }
    }
}

/// Renders a frame as stable text, one header per line.
pub fn describe(bytes: &[u8]) -> String {
    let Some(frame) = FrameRepr::parse(bytes) else {
        return format!("short frame ({} bytes)\n", bytes.len());
    };
    let mac = |m: &[u8; 6]| m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    let mut out = format!("eth {} > {} ({} bytes)\n", mac(&frame.src_mac), mac(&frame.dst_mac), bytes.len());
    match &frame.payload {
        EthPayload::Ip(ip) => describe_ip(ip, 1, &mut out),
        EthPayload::Other(kind, body) => {
            let _ = writeln!(out, "  ethertype {kind:#06x}, {} bytes", body.len());
        }
    }
    out
}

fn describe_ip(ip: &IpRepr, depth: usize, out: &mut String) {
    let pad = "  ".repeat(depth);
    let family = if ip.src.is_ipv4() { "ipv4" } else { "ipv6" };
    let extra = if ip.src.is_ipv4() {
        format!(
            " id {} frag {:#06x}{}",
            ip.id,
            ip.frag,
            if ip.options.is_empty() { String::new() } else { format!(" options {}B", ip.options.len()) }
        )
    } else {
        format!(" flowlabel {:#07x}", ip.id)
    };
    let _ = writeln!(out, "{pad}{family} {} > {} tos {:#04x} ttl {}{extra}", ip.src, ip.dst, ip.tos, ip.ttl);
    match &ip.payload {
        IpPayload::Tcp(tcp) => {
            let _ = writeln!(
                out,
                "{pad}  tcp {} > {} flags {:#04x} options {:?}{} payload {}B",
                tcp.sport,
                tcp.dport,
                tcp.flags,
                tcp.options,
                if tcp.raw_options.is_empty() { String::new() } else { format!(" raw {:02x?}", tcp.raw_options) },
                tcp.payload.len()
            );
        }
        IpPayload::Udp(udp) => {
            let _ = writeln!(out, "{pad}  udp {} > {} payload {}B", udp.sport, udp.dport, udp.payload.len());
        }
        IpPayload::Ip(inner) => describe_ip(inner, depth + 1, out),
        IpPayload::Other(proto, bytes) => {
            let _ = writeln!(out, "{pad}  proto {proto} payload {}B", bytes.len());
        }
    }
}
