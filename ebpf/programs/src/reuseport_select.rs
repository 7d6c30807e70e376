//! `reuseport_select`: picks the socket of a `SO_REUSEPORT` group for a new flow from the
//! generation that takes new flows (`zrlab_common::reuseport`), and, in its migrate variant,
//! hands the requests of a closing listener to that generation too.
//!
//! Two entry points on one body:
//! - `rs_select` (`BPF_SK_REUSEPORT_SELECT`): new flows only; a closing listener's queue is
//!   reset by the kernel (unless `net.ipv4.tcp_migrate_req` is set);
//! - `rs_select_or_migrate` (`BPF_SK_REUSEPORT_SELECT_OR_MIGRATE`, 5.14+): also called for every
//!   request of a closing listener (`migrating_sk` set), which it moves to the generation.
//!
//! Both return `SK_PASS` on every path: a failed selection leaves the kernel's own choice.
//!
//! UDP: a short-header datagram whose connection id names a slot (`slot_of_cid`) goes to that
//! slot's socket, so an existing flow stays with the process that issued its id; everything
//! else (Initial packets, ids without a slot, a slot whose process is gone) goes to the
//! generation.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod prog {
    use aya_ebpf::{
        bindings::{BPF_TCP_ESTABLISHED, BPF_TCP_NEW_SYN_RECV, BPF_TCP_SYN_RECV, sk_action::SK_PASS},
        helpers::bpf_skb_load_bytes,
        macros::{map, sk_reuseport},
        maps::{Array, PerCpuArray, ReusePortSockArray},
        programs::SkReuseportContext,
    };
    use zrlab_common::reuseport::{Generation, MAX_SOCKETS, UDP_BASE, counter, slot_of_cid};

    const IPPROTO_UDP: u32 = 17;
    const UDP_HEADER: u32 = 8;

    #[map(name = "RS_SOCKETS")]
    static SOCKETS: ReusePortSockArray = ReusePortSockArray::with_max_entries(MAX_SOCKETS, 0);

    #[map(name = "RS_GENERATION")]
    static GENERATION: Array<Generation> = Array::with_max_entries(1, 0);

    #[map(name = "RS_COUNTERS")]
    static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::SLOTS, 0);

    #[inline(always)]
    fn count(slot: u32) {
        zrlab_ebpf::counters::bump(&COUNTERS, slot);
    }

    /// For a UDP datagram of an existing flow: the slot its connection id names. The context's
    /// data starts at the UDP header (`sk_reuseport_md`); the payload after it starts with the
    /// QUIC header: a short header's first byte has bit 7 clear, and its connection id follows.
    #[inline(always)]
    fn cid_slot(ctx: &SkReuseportContext) -> Option<u32> {
        if ctx.ip_protocol() != IPPROTO_UDP {
            return None;
        }
        let mut head = [0u8; 2];
        // SAFETY: copies two bytes of the packet into `head`; the helper checks the bounds.
        let loaded = unsafe { bpf_skb_load_bytes(ctx.md.cast(), UDP_HEADER, head.as_mut_ptr().cast(), 2) };
        if loaded != 0 || head[0] & 0x80 != 0 {
            return None;
        }
        slot_of_cid(head[1])
    }

    /// Selects a socket: a UDP flow's own (see [`cid_slot`]), else one of the generation by the
    /// flow's hash; whether it did. `migrating`: for a closing listener's request (counted by
    /// the caller, by its state), not a new flow.
    #[inline(always)]
    fn select(ctx: &SkReuseportContext, migrating: bool) -> bool {
        let base = if ctx.ip_protocol() == IPPROTO_UDP { UDP_BASE } else { 0 };
        if let Some(slot) = cid_slot(ctx) {
            if SOCKETS.select_reuseport(ctx, base + slot).is_ok() {
                count(counter::BY_CID);
                return true;
            }
            count(counter::CID_ORPHANED);
        }
        let Some(generation) = GENERATION.get(0).copied() else { return false };
        if generation.count == 0 {
            return false;
        }
        let index = base + generation.first + ctx.hash() % generation.count;
        if SOCKETS.select_reuseport(ctx, index).is_ok() {
            if !migrating {
                count(counter::SELECTED);
            }
            true
        } else {
            count(counter::SELECT_FAILED);
            false
        }
    }

    #[sk_reuseport]
    pub fn rs_select(ctx: SkReuseportContext) -> u32 {
        select(&ctx, false);
        SK_PASS
    }

    #[sk_reuseport(migrate)]
    pub fn rs_select_or_migrate(ctx: SkReuseportContext) -> u32 {
        // SAFETY: a field of the context the kernel passed.
        let migrating = unsafe { (*ctx.md).__bindgen_anon_4.migrating_sk };
        if !select(&ctx, !migrating.is_null()) || migrating.is_null() {
            return SK_PASS;
        }
        // SAFETY: a socket the kernel passed, non-null.
        let state = unsafe { (*migrating).state };
        match state {
            BPF_TCP_ESTABLISHED => count(counter::MIGRATED_ESTABLISHED),
            BPF_TCP_SYN_RECV => count(counter::MIGRATED_SYN_RECV),
            // No packet: the request timer; with one: its final ACK.
            BPF_TCP_NEW_SYN_RECV if ctx.is_empty() => count(counter::MIGRATED_REQUEST_TIMER),
            BPF_TCP_NEW_SYN_RECV => count(counter::MIGRATED_REQUEST_ACK),
            _ => {}
        }
        SK_PASS
    }
}

#[cfg(target_arch = "bpf")]
use zrlab_ebpf as _;

#[cfg(not(target_arch = "bpf"))]
fn main() {}
