//! `xdp_lb_next`: the version of `xdp_lb` an in-place upgrade moves to. The same data path
//! (these are `xdp_lb`'s modules), built with another connection-table layout: its entries end
//! in an `EntryStamp` (`zrlab_common::lb::ConnEntryNext`, 64 bytes against 56), so an upgrade
//! must migrate the tables' entries, not hand the tables over; and it counts what it forwards
//! (`counter::NEXT_TX`), which shows that the new version handles the traffic after the swap.
//! Its program keeps the name `xdp_lb`, as a new release of a program does.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
#[path = "encap.rs"]
mod encap;
#[cfg(target_arch = "bpf")]
#[path = "icmp.rs"]
mod icmp;
#[cfg(target_arch = "bpf")]
#[path = "maps.rs"]
mod maps;
#[cfg(target_arch = "bpf")]
#[path = "parse.rs"]
mod parse;
#[cfg(target_arch = "bpf")]
#[path = "route.rs"]
mod route;

#[cfg(target_arch = "bpf")]
#[path = "prog.rs"]
mod prog;

/// This version's connection-table layout: `zrlab_common::lb::ConnEntryNext`.
#[cfg(target_arch = "bpf")]
mod layout {
    /// A connection-table entry.
    pub type ConnEntry = zrlab_common::lb::ConnEntryNext;
    /// A SYN-cache slot.
    /// Whether this is `xdp_lb_next` (which counts `counter::NEXT_TX`).
    pub const NEXT: bool = true;
}

#[cfg(target_arch = "bpf")]
use zrlab_ebpf as _;

#[cfg(not(target_arch = "bpf"))]
fn main() {}
