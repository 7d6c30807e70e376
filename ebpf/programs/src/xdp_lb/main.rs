//! `xdp_lb`: the L4 load balancer (katran-class). See `zrlab_common::lb` for the maps.
//!
//! Path of a packet: [`parse`] validates it and builds the flow (or decides pass/drop),
//! [`route`] picks the real (connection table, server id, VIP and Maglev ring), [`encap`] wraps
//! it in IPIP towards the real and transmits it back out (`XDP_TX`).
//!
//! Policy for what is not a clean VIP packet (documented in the README, tested by the
//! conformance suite): non-IP frames and packets to non-VIP addresses pass untouched; to a VIP
//! address, IPv4 options, fragments, IPv6 extension headers, ICMP other than errors and other
//! protocols pass to the stack (which does not own the VIP and drops them); lengths that
//! disagree with the frame, bad header lengths and truncated headers are dropped. ICMP errors
//! to a VIP about one of its flows go to that flow's real (`parse::icmp_error`); a VIP packet
//! too big for its real's path once encapsulated is answered with ICMP "too big" ([`icmp`]). What is validated is structure (see the
//! README): not checksums or TTL, which the tunnel carries unchanged to the backend's stack.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod encap;
#[cfg(target_arch = "bpf")]
mod icmp;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod route;

#[cfg(target_arch = "bpf")]
mod prog;

/// This version's connection-table layout: `xdp_lb`'s (`zrlab_common::lb::ConnEntry`).
#[cfg(target_arch = "bpf")]
mod layout {
    /// A connection-table entry.
    pub type ConnEntry = zrlab_common::lb::ConnEntry;
    /// A SYN-cache slot.
    /// Whether this is `xdp_lb_next` (which counts `counter::NEXT_TX`).
    pub const NEXT: bool = false;
}

#[cfg(target_arch = "bpf")]
use zrlab_ebpf as _;

#[cfg(not(target_arch = "bpf"))]
fn main() {}
