//! `xdp_drop_ack`: a test fixture that drops handshake segments of one port (see
//! `zrlab_common::drop`): TCP segments without payload whose flags are exactly the configured
//! ones, to or from the port, the first `limit` of them. Everything else passes. The
//! configuration is the read-only global `DROP_CONFIG`, set at load; the default drops every
//! final ACK of a handshake to the port, as the kernel's `migrate_reuseport` selftest arranges.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod prog {
    use aya_ebpf::{
        bindings::xdp_action,
        macros::{map, xdp},
        maps::Array,
        programs::XdpContext,
    };
    use zrlab_common::drop::DropConfig;
    use zrlab_ebpf::net::{ETH_LEN, ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP, read_at};

    #[unsafe(no_mangle)]
    static DROP_CONFIG: DropConfig = DropConfig::final_acks(0);

    #[map(name = "DROP_DROPPED")]
    static DROPPED: Array<u32> = Array::with_max_entries(1, 0);

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
        let config = unsafe { core::ptr::read_volatile(&DROP_CONFIG) };
        let port = be16(ctx, tcp + if config.by_source != 0 { 0 } else { 2 })?;
        if port != usize::from(config.port) {
            return Ok(false);
        }
        let doff = usize::from(read_at::<u8>(ctx, tcp + 12)? >> 4) * 4;
        let flags = read_at::<u8>(ctx, tcp + 13)?;
        if flags != config.flags || total != ip_len + doff {
            return Ok(false);
        }
        let Some(dropped) = DROPPED.get_ptr_mut(0) else { return Ok(false) };
        // SAFETY: a valid map slot. Not atomic: a fixture for one connection at a time.
        unsafe {
            if config.limit != 0 && *dropped >= config.limit {
                return Ok(false);
            }
            *dropped += 1;
        }
        Ok(true)
    }
}

#[cfg(target_arch = "bpf")]
use zrlab_ebpf as _;

#[cfg(not(target_arch = "bpf"))]
fn main() {}
