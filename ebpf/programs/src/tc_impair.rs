//! `tc_impair`: seeded loss and duplication on one interface, per direction (see
//! `zrlab_common::impair`). Attached with TCX (kernel 6.6+) at ingress and egress; it returns
//! "next" for every frame it keeps, so other TCX programs of the interface still run.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod prog {
    use aya_ebpf::{
        bindings::{BPF_F_INGRESS, TC_ACT_SHOT, TC_ACT_UNSPEC},
        helpers::bpf_get_smp_processor_id,
        macros::{classifier, map},
        maps::{Array, PerCpuArray},
        programs::TcContext,
    };
    use zrlab_common::impair::{DUP_MARK, EGRESS, Fate, INGRESS, ImpairConfig, counter, draw};
    use zrlab_ebpf::net::{ETH_LEN, ETH_P_IP, ETH_P_IPV6, IPPROTO_IPIP, IPPROTO_IPV6, IPPROTO_TCP, IPPROTO_UDP};

    #[map(name = "IMPAIR_CONFIG")]
    static CONFIG: Array<ImpairConfig> = Array::with_max_entries(2, 0);

    #[map(name = "IMPAIR_SEQUENCE")]
    static SEQUENCE: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

    #[map(name = "IMPAIR_COUNTERS")]
    static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::SLOTS, 0);

    #[classifier]
    pub fn impair_ingress(ctx: TcContext) -> i32 {
        impair(&ctx, INGRESS)
    }

    #[classifier]
    pub fn impair_egress(ctx: TcContext) -> i32 {
        impair(&ctx, EGRESS)
    }

    fn count(direction: u32, slot: u32) {
        zrlab_ebpf::counters::bump(&COUNTERS, direction * counter::PER_DIRECTION + slot);
    }

    /// The frame's L4 protocol, if it is IPv4 or IPv6, looking through one IP-in-IP header
    /// (the LB's tunnel: a VIP packet between the router and an LB node, or on its way to a
    /// backend, is a TCP segment or UDP datagram all the same). No extension headers.
    fn l4(ctx: &TcContext) -> Option<u8> {
        let mut offset = ETH_LEN;
        let mut version = match u16::from_be(ctx.load::<u16>(12).ok()?) {
            ETH_P_IP => 4,
            ETH_P_IPV6 => 6,
            _ => return None,
        };
        for _ in 0..2 {
            let (proto, header) = if version == 4 {
                (ctx.load::<u8>(offset + 9).ok()?, usize::from(ctx.load::<u8>(offset).ok()? & 0x0f) * 4)
            } else {
                (ctx.load::<u8>(offset + 6).ok()?, 40)
            };
            match proto {
                IPPROTO_IPIP => version = 4,
                IPPROTO_IPV6 => version = 6,
                other => return Some(other),
            }
            offset += header;
        }
        None
    }

    #[inline(always)]
    fn impair(ctx: &TcContext, direction: u32) -> i32 {
        // SAFETY: `skb` points at the program's context for the call's duration.
        let (mark, ifindex) = unsafe { ((*ctx.skb.skb).mark, (*ctx.skb.skb).ifindex) };
        if mark & DUP_MARK != 0 {
            // A duplicate made here, back in the hook: on its way, unmarked.
            ctx.set_mark(mark & !DUP_MARK);
            return TC_ACT_UNSPEC;
        }
        let Some(config) = CONFIG.get(direction) else { return TC_ACT_UNSPEC };
        count(direction, counter::SEEN);
        if config.drop_ppm == 0 && config.dup_ppm == 0 {
            return TC_ACT_UNSPEC;
        }
        let Some(sequence) = SEQUENCE.get_ptr_mut(direction) else { return TC_ACT_UNSPEC };
        // SAFETY: a per-CPU slot, not shared with another CPU; the program is not re-entered on
        // this CPU while it runs.
        let n = unsafe {
            let n = *sequence;
            *sequence = n + 1;
            n
        };
        // SAFETY: no preconditions.
        let cpu = unsafe { bpf_get_smp_processor_id() };
        match draw(config, direction, cpu, n) {
            Fate::Pass => TC_ACT_UNSPEC,
            Fate::Drop => {
                count(direction, counter::DROPPED);
                match l4(ctx) {
                    Some(IPPROTO_TCP) => count(direction, counter::DROPPED_TCP),
                    Some(IPPROTO_UDP) => count(direction, counter::DROPPED_UDP),
                    _ => {}
                }
                TC_ACT_SHOT
            }
            Fate::Duplicate => {
                // The copy leaves marked (the mark is copied with the frame), the original
                // goes on unmarked.
                ctx.set_mark(mark | DUP_MARK);
                let flags = if direction == INGRESS { u64::from(BPF_F_INGRESS) } else { 0 };
                let cloned = ctx.clone_redirect(ifindex, flags);
                ctx.set_mark(mark);
                count(direction, if cloned.is_ok() { counter::DUPLICATED } else { counter::DUP_FAILED });
                TC_ACT_UNSPEC
            }
        }
    }
}

#[cfg(target_arch = "bpf")]
use zrlab_ebpf as _;

#[cfg(not(target_arch = "bpf"))]
fn main() {}
