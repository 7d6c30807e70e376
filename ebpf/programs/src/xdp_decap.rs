//! `xdp_decap`: strips the LB's IPIP header on backends and passes the inner packet to the stack
//! (see `zrlab_common::decap`). The backend kernel has no `ipip` module here, which is why this is
//! a BPF program (as katran's decap is).
//!
//! Only tunnel packets addressed to one of this host's configured addresses are touched; other
//! traffic passes untouched. A tunnel packet for this host whose outer header is malformed
//! (length disagreeing with the frame, options, a fragment, an inner version that does not match
//! the outer protocol) is dropped: it could not be delivered correctly anyway.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod prog {
    use aya_ebpf::{
        bindings::xdp_action,
        helpers::generated::bpf_xdp_adjust_head,
        macros::{map, xdp},
        maps::{HashMap, PerCpuArray},
        programs::XdpContext,
    };
    use zrlab_common::{
        addr::{words_v4, words_v6},
        decap::{MAX_DSTS, counter},
    };
    use zrlab_ebpf::net::{
        ETH_LEN, ETH_MIN_FRAME, ETH_P_IP, ETH_P_IPV6, EthHdr, IPPROTO_IPIP, IPPROTO_IPV6, IPV4_LEN, IPV6_LEN, Ipv4Hdr,
        Ipv6Hdr, frame_len, ptr_at, read_at,
    };

    #[map(name = "DECAP_DSTS")]
    static DSTS: HashMap<[u32; 4], u32> = HashMap::with_max_entries(MAX_DSTS, 0);

    #[map(name = "DECAP_COUNTERS")]
    static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::SLOTS, 0);

    fn count(slot: u32) {
        zrlab_ebpf::counters::bump(&COUNTERS, slot);
    }

    #[xdp]
    pub fn xdp_decap(ctx: XdpContext) -> u32 {
        try_decap(&ctx).unwrap_or_else(|()| {
            count(counter::INTERNAL);
            xdp_action::XDP_PASS
        })
    }

    /// What the outer header says: (outer length, inner is IPv6, counter slot).
    struct Tunnel {
        outer_len: usize,
        inner_v6: bool,
        slot: u32,
    }

    fn for_us(dst: &[u32; 4]) -> bool {
        // SAFETY (verifier): a plain map lookup.
        unsafe { DSTS.get(dst) }.is_some()
    }

    /// Not a tunnel packet for this host: passed untouched, counted.
    fn passed() -> u32 {
        count(counter::PASSED);
        xdp_action::XDP_PASS
    }

    fn fits_frame(ip_len: usize, frame_ip_len: usize) -> bool {
        ip_len == frame_ip_len || (ip_len < frame_ip_len && frame_ip_len + ETH_LEN <= ETH_MIN_FRAME)
    }

    #[inline(always)]
    fn try_decap(ctx: &XdpContext) -> Result<u32, ()> {
        // A frame too short for the headers read is no tunnel packet: passed, counted as such
        // (it used to leave through the error exit, uncounted).
        let Ok(eth) = read_at::<EthHdr>(ctx, 0) else { return Ok(passed()) };
        let frame_ip_len = frame_len(ctx) - ETH_LEN;
        let tunnel = match u16::from_be_bytes(eth.proto) {
            ETH_P_IP => {
                let Ok(ip) = read_at::<Ipv4Hdr>(ctx, ETH_LEN) else { return Ok(passed()) };
                if (ip.proto != IPPROTO_IPIP && ip.proto != IPPROTO_IPV6) || !for_us(&words_v4(ip.dst)) {
                    count(counter::PASSED);
                    return Ok(xdp_action::XDP_PASS);
                }
                let tot = usize::from(u16::from_be_bytes(ip.tot_len));
                if ip.vihl != 0x45 || !fits_frame(tot, frame_ip_len) || u16::from_be_bytes(ip.frag) & 0x3fff != 0 {
                    count(counter::MALFORMED);
                    return Ok(xdp_action::XDP_DROP);
                }
                let inner_v6 = ip.proto == IPPROTO_IPV6;
                Tunnel {
                    outer_len: IPV4_LEN,
                    inner_v6,
                    slot: if inner_v6 { counter::V6_IN_V4 } else { counter::V4_IN_V4 },
                }
            }
            ETH_P_IPV6 => {
                let Ok(ip) = read_at::<Ipv6Hdr>(ctx, ETH_LEN) else { return Ok(passed()) };
                if (ip.nexthdr != IPPROTO_IPIP && ip.nexthdr != IPPROTO_IPV6) || !for_us(&words_v6(ip.dst)) {
                    count(counter::PASSED);
                    return Ok(xdp_action::XDP_PASS);
                }
                let tot = IPV6_LEN + usize::from(u16::from_be_bytes(ip.payload_len));
                if ip.vtcfl[0] >> 4 != 6 || !fits_frame(tot, frame_ip_len) {
                    count(counter::MALFORMED);
                    return Ok(xdp_action::XDP_DROP);
                }
                let inner_v6 = ip.nexthdr == IPPROTO_IPV6;
                Tunnel {
                    outer_len: IPV6_LEN,
                    inner_v6,
                    slot: if inner_v6 { counter::V6_IN_V6 } else { counter::V4_IN_V6 },
                }
            }
            _ => {
                count(counter::PASSED);
                return Ok(xdp_action::XDP_PASS);
            }
        };
        // The inner header must be there and of the version the outer protocol announces.
        let inner_first = read_at::<u8>(ctx, ETH_LEN + tunnel.outer_len);
        let want = if tunnel.inner_v6 { 6 } else { 4 };
        if inner_first.map(|b| b >> 4) != Ok(want) {
            count(counter::MALFORMED);
            return Ok(xdp_action::XDP_DROP);
        }
        // SAFETY: shrinking the head by the outer header; pointers are re-derived below.
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, tunnel.outer_len as i32) } != 0 {
            count(counter::MALFORMED);
            return Ok(xdp_action::XDP_DROP);
        }
        let new_eth = EthHdr {
            dst: eth.dst,
            src: eth.src,
            proto: if tunnel.inner_v6 { ETH_P_IPV6 } else { ETH_P_IP }.to_be_bytes(),
        };
        // SAFETY: ptr_at checked the bounds; EthHdr is plain bytes.
        unsafe { *ptr_at::<EthHdr>(ctx, 0)? = new_eth };
        count(tunnel.slot);
        Ok(xdp_action::XDP_PASS)
    }
}

#[cfg(target_arch = "bpf")]
use zrlab_ebpf as _;

#[cfg(not(target_arch = "bpf"))]
fn main() {}
