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
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod prog {
    use aya_ebpf::{
        bindings::{BPF_TCP_ESTABLISHED, BPF_TCP_NEW_SYN_RECV, BPF_TCP_SYN_RECV, sk_action::SK_PASS},
        macros::{map, sk_reuseport},
        maps::{Array, PerCpuArray, ReusePortSockArray},
        programs::SkReuseportContext,
    };
    use zrlab_common::reuseport::{Generation, MAX_SOCKETS, counter};

    #[map(name = "RS_SOCKETS")]
    static SOCKETS: ReusePortSockArray = ReusePortSockArray::with_max_entries(MAX_SOCKETS, 0);

    #[map(name = "RS_GENERATION")]
    static GENERATION: Array<Generation> = Array::with_max_entries(1, 0);

    #[map(name = "RS_COUNTERS")]
    static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::SLOTS, 0);

    #[inline(always)]
    fn count(slot: u32) {
        if let Some(value) = COUNTERS.get_ptr_mut(slot) {
            // SAFETY: a per-CPU slot: no other CPU writes it.
            unsafe { *value += 1 };
        }
    }

    /// Selects a socket of the generation by the flow's hash; whether it did.
    #[inline(always)]
    fn select(ctx: &SkReuseportContext) -> bool {
        let Some(generation) = GENERATION.get(0).copied() else { return false };
        if generation.count == 0 {
            return false;
        }
        let index = generation.first + ctx.hash() % generation.count;
        if SOCKETS.select_reuseport(ctx, index).is_ok() {
            true
        } else {
            count(counter::SELECT_FAILED);
            false
        }
    }

    #[sk_reuseport]
    pub fn rs_select(ctx: SkReuseportContext) -> u32 {
        if select(&ctx) {
            count(counter::SELECTED);
        }
        SK_PASS
    }

    #[sk_reuseport(migrate)]
    pub fn rs_select_or_migrate(ctx: SkReuseportContext) -> u32 {
        // SAFETY: a field of the context the kernel passed.
        let migrating = unsafe { (*ctx.md).__bindgen_anon_4.migrating_sk };
        if !select(&ctx) {
            return SK_PASS;
        }
        if migrating.is_null() {
            count(counter::SELECTED);
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
