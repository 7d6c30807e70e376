//! `sk_lookup_steer`: steers a service's ports to the ready process's sockets
//! (`zrlab_common::sklookup` has the maps and the rules). Returns `SK_PASS` on every path: a
//! lookup it does not steer (other ports, nobody ready, an empty index) is the kernel's.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod prog {
    use aya_ebpf::{
        bindings::{BPF_SK_LOOKUP_F_NO_REUSEPORT, BPF_SK_LOOKUP_F_REPLACE, sk_action::SK_PASS},
        macros::{map, sk_lookup},
        maps::{Array, LruHashMap, PerCpuArray, SockMap},
        programs::SkLookupContext,
    };
    use zrlab_common::sklookup::{MAX_FLOWS, MAX_SOCKETS, NO_SLOT, Ports, UDP_BASE, UdpFlow, counter};

    const IPPROTO_TCP: u32 = 6;
    const IPPROTO_UDP: u32 = 17;
    const AF_INET6: u32 = 10;

    #[map(name = "SL_SOCKETS")]
    static SOCKETS: SockMap = SockMap::with_max_entries(MAX_SOCKETS, 0);

    #[map(name = "SL_READY")]
    static READY: Array<u32> = Array::with_max_entries(1, 0);

    #[map(name = "SL_FLOWS")]
    static FLOWS: LruHashMap<UdpFlow, u32> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

    #[map(name = "SL_PORTS")]
    static PORTS: Array<Ports> = Array::with_max_entries(1, 0);

    #[map(name = "SL_COUNTERS")]
    static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::SLOTS, 0);

    #[inline(always)]
    fn count(slot: u32) {
        zrlab_ebpf::counters::bump(&COUNTERS, slot);
    }

    /// A context field, loaded as it is (see the UDP branch below).
    #[inline(always)]
    fn field(at: &u32) -> u32 {
        // SAFETY: a reference to a field of the context the kernel passed.
        unsafe { core::ptr::read_volatile(at) }
    }

    /// Assigns slot `slot`'s socket (`base`: 0 for TCP, `UDP_BASE` for UDP); whether it did.
    #[inline(always)]
    fn assign(ctx: &SkLookupContext, base: u32, slot: u32) -> bool {
        // REPLACE: an earlier program of the namespace may have assigned a socket already.
        let flags = u64::from(BPF_SK_LOOKUP_F_NO_REUSEPORT | BPF_SK_LOOKUP_F_REPLACE);
        SOCKETS.redirect_sk_lookup(ctx, base + slot, flags).is_ok()
    }

    #[sk_lookup]
    pub fn sk_lookup_steer(ctx: SkLookupContext) -> u32 {
        // SAFETY: the context the kernel passed.
        let lookup = unsafe { &*ctx.lookup };
        let Some(ports) = PORTS.get(0).copied() else { return SK_PASS };
        let Some(ready) = READY.get(0).copied() else { return SK_PASS };
        match lookup.protocol {
            IPPROTO_TCP if ports.tcp != 0 && lookup.local_port == ports.tcp => {
                if ready == NO_SLOT {
                    return SK_PASS;
                }
                count(if assign(&ctx, 0, ready) { counter::STEERED_NEW } else { counter::ASSIGN_FAILED });
            }
            IPPROTO_UDP if ports.udp != 0 && lookup.local_port == ports.udp => {
                // Each context field read at its own constant offset, by volatile loads: the
                // verifier refuses a load through a context pointer the compiler computed (a
                // select between the two address fields).
                let remote = if lookup.family == AF_INET6 {
                    let ip6 = &lookup.remote_ip6;
                    [field(&ip6[0]), field(&ip6[1]), field(&ip6[2]), field(&ip6[3])]
                } else {
                    [field(&lookup.remote_ip4), 0, 0, 0]
                };
                let flow =
                    UdpFlow { remote, remote_port: u32::from(lookup.remote_port), local_port: lookup.local_port };
                // SAFETY (verifier): a plain map lookup, copied out at once.
                if let Some(slot) = unsafe { FLOWS.get(&flow) }.copied() {
                    if assign(&ctx, UDP_BASE, slot) {
                        count(counter::STEERED_FLOW);
                        return SK_PASS;
                    }
                    count(counter::FLOW_ORPHANED);
                }
                if ready == NO_SLOT {
                    return SK_PASS;
                }
                if assign(&ctx, UDP_BASE, ready) {
                    let _ = FLOWS.insert(&flow, &ready, 0);
                    count(counter::STEERED_NEW);
                } else {
                    count(counter::ASSIGN_FAILED);
                }
            }
            _ => {}
        }
        SK_PASS
    }
}

#[cfg(target_arch = "bpf")]
use zrlab_ebpf as _;

#[cfg(not(target_arch = "bpf"))]
fn main() {}
