//! `xdp_drop_ack`: a test fixture that drops pure ACKs (TCP flags exactly ACK, no payload) to
//! one port, so that a handshake's final ACK never arrives: the server keeps the connection as a
//! request (`TCP_NEW_SYN_RECV`) or, with Fast Open, as a child in `TCP_SYN_RECV`, as the
//! kernel's `migrate_reuseport` selftest arranges. Everything else passes. The port is the
//! read-only global `DROP_ACK_PORT` (host order), set at load.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod prog {
    use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
    use zrlab_ebpf::net::{ETH_LEN, ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP, read_at};

    #[unsafe(no_mangle)]
    static DROP_ACK_PORT: u16 = 0;

    /// TCP flags byte: ACK alone.
    const ACK_ONLY: u8 = 0x10;

    #[xdp]
    pub fn xdp_drop_ack(ctx: XdpContext) -> u32 {
        match drop_it(&ctx) {
            Ok(true) => xdp_action::XDP_DROP,
            _ => xdp_action::XDP_PASS,
        }
    }

    fn be16(ctx: &XdpContext, offset: usize) -> Result<usize, ()> {
        Ok(usize::from(u16::from_be_bytes(read_at::<[u8; 2]>(ctx, offset)?)))
    }

    #[inline(always)]
    fn drop_it(ctx: &XdpContext) -> Result<bool, ()> {
        let proto = be16(ctx, 12)? as u16;
        // (IP header length, IP packet length, L4 protocol)
        let (ip_len, total, l4) = if proto == ETH_P_IP {
            let ihl = usize::from(read_at::<u8>(ctx, ETH_LEN)? & 0x0f) * 4;
            (ihl, be16(ctx, ETH_LEN + 2)?, read_at::<u8>(ctx, ETH_LEN + 9)?)
        } else if proto == ETH_P_IPV6 {
            (40, 40 + be16(ctx, ETH_LEN + 4)?, read_at::<u8>(ctx, ETH_LEN + 6)?)
        } else {
            return Ok(false);
        };
        if l4 != IPPROTO_TCP || !(20..=40).contains(&ip_len) {
            return Ok(false);
        }
        let tcp = ETH_LEN + ip_len;
        // SAFETY: a volatile read of a static the loader may have rewritten.
        let port = unsafe { core::ptr::read_volatile(&DROP_ACK_PORT) };
        if be16(ctx, tcp + 2)? != usize::from(port) {
            return Ok(false);
        }
        let doff = usize::from(read_at::<u8>(ctx, tcp + 12)? >> 4) * 4;
        let flags = read_at::<u8>(ctx, tcp + 13)?;
        Ok(flags == ACK_ONLY && total == ip_len + doff)
    }
}

#[cfg(target_arch = "bpf")]
use zrlab_ebpf as _;

#[cfg(not(target_arch = "bpf"))]
fn main() {}
