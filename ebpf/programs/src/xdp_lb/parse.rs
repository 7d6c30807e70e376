//! Validation of a frame: is it a VIP packet we may forward, and what is its flow?
//!
//! Order matters: the destination address is checked against the VIP addresses first, so
//! traffic for anything else (the LB host itself, transit) passes untouched even if malformed.
//! Only VIP traffic is validated strictly, and only validated packets come out as
//! [`Parsed::Vip`].

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use zrlab_common::lb::{FlowKey, VipKey, VipMeta, counter};
use zrlab_ebpf::net::{
    ETH_LEN, ETH_MIN_FRAME, ETH_P_IP, ETH_P_IPV6, EthHdr, IPPROTO_TCP, IPPROTO_UDP, IPV4_LEN, IPV6_LEN, Ipv4Hdr,
    Ipv6Hdr, TCP_LEN, TcpHdr, UDP_LEN, UdpHdr, frame_len, read_at, words_v4, words_v6,
};

use super::maps::{VIP_ADDRS, VIPS, count};

/// A validated packet to a VIP.
pub struct Pkt {
    /// IPv6 (else IPv4).
    pub v6: bool,
    /// Offset of the L4 header.
    pub l4_off: usize,
    /// Length of the IP packet (header and payload): what gets encapsulated.
    pub ip_len: usize,
    /// Bytes after the Ethernet header (more than `ip_len` when the frame was padded).
    pub frame_ip_len: usize,
    /// TOS / traffic class, copied to the outer header.
    pub tos: u8,
    /// TCP flags (0 for UDP).
    pub tcp_flags: u8,
    /// TCP header length in bytes (0 for UDP).
    pub tcp_hdr_len: usize,
    /// The flow.
    pub flow: FlowKey,
    /// The VIP it belongs to.
    pub vip: VipMeta,
}

/// The outcome of parsing.
pub enum Parsed {
    /// A valid packet for a VIP: route it.
    Vip(Pkt),
    /// Decided already: pass or drop.
    Verdict(u32),
}

const PASS: u32 = xdp_action::XDP_PASS;
const DROP: u32 = xdp_action::XDP_DROP;

#[inline(always)]
fn verdict(slot: u32, action: u32) -> Result<Parsed, ()> {
    count(slot);
    Ok(Parsed::Verdict(action))
}

/// IPv6 extension headers and fragments: not parsed by the LB.
#[inline(always)]
fn is_ipv6_extension(nexthdr: u8) -> bool {
    matches!(nexthdr, 0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140)
}

/// Parses the frame in `ctx`.
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Parsed, ()> {
    let Ok(eth) = read_at::<EthHdr>(ctx, 0) else {
        return verdict(counter::NOT_IP, PASS);
    };
    let frame_ip_len = frame_len(ctx) - ETH_LEN;
    let (v6, dst, src, ip_len, proto, tos) = match u16::from_be_bytes(eth.proto) {
        ETH_P_IP => {
            let Ok(ip) = read_at::<Ipv4Hdr>(ctx, ETH_LEN) else {
                return verdict(counter::NOT_IP, PASS);
            };
            let dst = words_v4(ip.dst);
            // SAFETY (verifier): a plain map lookup.
            if unsafe { VIP_ADDRS.get(&dst) }.is_none() {
                return verdict(counter::NON_VIP, PASS);
            }
            let ihl = usize::from(ip.vihl & 0x0f) * 4;
            if ip.vihl >> 4 != 4 || ihl < IPV4_LEN {
                return verdict(counter::MALFORMED, DROP);
            }
            if ihl > IPV4_LEN {
                return verdict(counter::IP_OPTIONS, PASS);
            }
            let tot = usize::from(u16::from_be_bytes(ip.tot_len));
            if tot < IPV4_LEN || !fits_frame(tot, frame_ip_len) {
                return verdict(counter::MALFORMED, DROP);
            }
            // MF set or a non-zero offset: a fragment.
            if u16::from_be_bytes(ip.frag) & 0x3fff != 0 {
                return verdict(counter::FRAGMENTS, PASS);
            }
            (false, dst, words_v4(ip.src), tot, ip.proto, ip.tos)
        }
        ETH_P_IPV6 => {
            let Ok(ip) = read_at::<Ipv6Hdr>(ctx, ETH_LEN) else {
                return verdict(counter::NOT_IP, PASS);
            };
            let dst = words_v6(ip.dst);
            // SAFETY (verifier): a plain map lookup.
            if unsafe { VIP_ADDRS.get(&dst) }.is_none() {
                return verdict(counter::NON_VIP, PASS);
            }
            if ip.vtcfl[0] >> 4 != 6 {
                return verdict(counter::MALFORMED, DROP);
            }
            let tot = IPV6_LEN + usize::from(u16::from_be_bytes(ip.payload_len));
            if !fits_frame(tot, frame_ip_len) {
                return verdict(counter::MALFORMED, DROP);
            }
            if is_ipv6_extension(ip.nexthdr) {
                return verdict(counter::FRAGMENTS, PASS);
            }
            let tclass = (ip.vtcfl[0] << 4) | (ip.vtcfl[1] >> 4);
            (true, dst, words_v6(ip.src), tot, ip.nexthdr, tclass)
        }
        _ => return verdict(counter::NOT_IP, PASS),
    };
    let l4_off = ETH_LEN + if v6 { IPV6_LEN } else { IPV4_LEN };
    let l4_len = ip_len - (l4_off - ETH_LEN);
    let (ports, tcp_flags, tcp_hdr_len) = match proto {
        IPPROTO_TCP => {
            if l4_len < TCP_LEN {
                return verdict(counter::MALFORMED, DROP);
            }
            let tcp = read_at::<TcpHdr>(ctx, l4_off)?;
            let hdr_len = usize::from(tcp.doff >> 4) * 4;
            if hdr_len < TCP_LEN || hdr_len > l4_len {
                return verdict(counter::MALFORMED, DROP);
            }
            ([u16::from_ne_bytes(tcp.sport), u16::from_ne_bytes(tcp.dport)], tcp.flags, hdr_len)
        }
        IPPROTO_UDP => {
            if l4_len < UDP_LEN {
                return verdict(counter::MALFORMED, DROP);
            }
            let udp = read_at::<UdpHdr>(ctx, l4_off)?;
            if usize::from(u16::from_be_bytes(udp.len)) != l4_len {
                return verdict(counter::MALFORMED, DROP);
            }
            ([u16::from_ne_bytes(udp.sport), u16::from_ne_bytes(udp.dport)], 0, 0)
        }
        _ => return verdict(counter::OTHER_PROTO, PASS),
    };
    let mut key = VipKey { addr: dst, port: ports[1], proto, pad: 0 };
    // SAFETY (verifier): plain map lookups; the value is copied out at once.
    let vip = match unsafe { VIPS.get(&key) } {
        Some(meta) => *meta,
        None => {
            key.port = 0;
            match unsafe { VIPS.get(&key) } {
                Some(meta) => *meta,
                None => return verdict(counter::NO_SERVICE, PASS),
            }
        }
    };
    Ok(Parsed::Vip(Pkt {
        v6,
        l4_off,
        ip_len,
        frame_ip_len,
        tos,
        tcp_flags,
        tcp_hdr_len,
        flow: FlowKey { src, dst, ports, proto, pad: [0; 3] },
        vip,
    }))
}

/// Whether an IP packet of `ip_len` bytes agrees with the `frame_ip_len` bytes the frame holds
/// after its Ethernet header: equal, or shorter only because a minimum-size frame was padded.
#[inline(always)]
fn fits_frame(ip_len: usize, frame_ip_len: usize) -> bool {
    ip_len == frame_ip_len || (ip_len < frame_ip_len && frame_ip_len + ETH_LEN <= ETH_MIN_FRAME)
}
