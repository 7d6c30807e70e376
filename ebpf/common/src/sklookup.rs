//! `sk_lookup_steer`: the alternative dispatcher of a release (DESIGN.md section 1): an
//! `SK_LOOKUP` program attached to a backend's network namespace steers the service's ports to
//! the sockets of the ready process, chosen in a socket map, before the kernel's own socket
//! lookup.
//!
//! Layout as the `SK_REUSEPORT` dispatcher's (`crate::reuseport`): a process owns a slot, its
//! TCP listener at index `slot` of the socket map and its UDP socket at `UDP_BASE + slot`.
//! The ready slot ([`READY_MAP`]) takes new flows. TCP needs nothing more: the lookup runs only
//! for packets no established connection claims (SYNs). UDP sockets are unconnected, so every
//! datagram is looked up: the program remembers each UDP flow's slot by its 4-tuple
//! ([`UdpFlow`], an LRU table), so an existing flow stays with its process; a remembered slot
//! whose socket is gone sends the flow to the ready slot (counted). Sockets are assigned with
//! `BPF_SK_LOOKUP_F_NO_REUSEPORT`: both processes bind the port with `SO_REUSEPORT`, and the
//! program's choice must not be re-hashed over the group.

pub use crate::reuseport::{MAX_SLOTS, MAX_SOCKETS, UDP_BASE};

/// Name of the socket map (index -> socket).
pub const SOCKETS_MAP: &str = "SL_SOCKETS";
/// Name of the one-entry array holding the ready slot ([`NO_SLOT`]: none, the kernel decides).
pub const READY_MAP: &str = "SL_READY";
/// Name of the UDP flow table ([`UdpFlow`] -> slot).
pub const FLOWS_MAP: &str = "SL_FLOWS";
/// Name of the one-entry array holding the [`Ports`] steered.
pub const PORTS_MAP: &str = "SL_PORTS";
/// Name of the per-CPU array of `u64` counters ([`counter`]).
pub const COUNTERS_MAP: &str = "SL_COUNTERS";
/// UDP flows remembered (LRU).
pub const MAX_FLOWS: u32 = 65_536;
/// The ready slot's value when no process is ready.
pub const NO_SLOT: u32 = u32::MAX;

/// The service's local ports (host order) the program steers; others are left to the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ports {
    /// TCP port (0: none).
    pub tcp: u32,
    /// UDP port (0: none).
    pub udp: u32,
}

/// A UDP flow, as the lookup sees it: the remote address and port and the local port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct UdpFlow {
    /// Remote address words (IPv4 in the first, the rest zero).
    pub remote: [u32; 4],
    /// Remote port, network order, as the context carries it.
    pub remote_port: u32,
    /// Local port, host order.
    pub local_port: u32,
}

/// Counter slots.
pub mod counter {
    /// A new flow (TCP SYN or a UDP flow's first datagram) sent to the ready slot.
    pub const STEERED_NEW: u32 = 0;
    /// A datagram of a remembered UDP flow sent to its own slot.
    pub const STEERED_FLOW: u32 = 1;
    /// A remembered UDP flow's slot had no socket any more: sent to the ready slot.
    pub const FLOW_ORPHANED: u32 = 2;
    /// The chosen socket could not be assigned (an empty index): the kernel's lookup decided.
    pub const ASSIGN_FAILED: u32 = 3;
    /// Number of slots.
    pub const SLOTS: u32 = 4;
    /// Slot names, for reports.
    pub const NAMES: [&str; SLOTS as usize] = ["steered_new", "steered_flow", "flow_orphaned", "assign_failed"];
}

#[cfg(feature = "user")]
mod pod {
    use super::*;

    // SAFETY: #[repr(C)] plain data without padding.
    unsafe impl aya::Pod for Ports {}
    unsafe impl aya::Pod for UdpFlow {}
}
