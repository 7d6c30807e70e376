//! `reuseport_select`: the socket dispatcher of a release (DESIGN.md section 1, "Socket-level
//! release"): an `SK_REUSEPORT` program that picks a listener or UDP socket from a
//! `REUSEPORT_SOCKARRAY` instead of the kernel's hash over the whole group.
//!
//! Sockets are grouped in **generations** (as Cloudflare's udpgrm does): a release's old and new
//! process each put their sockets at consecutive indices of the array, and the configuration
//! ([`Generation`]) names the range that takes new flows. A new process flips it when it is
//! ready, not when it has bound. With the migrate variant (5.14+), requests still queued on a
//! listener that closes are handed to the same range instead of being reset.

/// Name of the socket array (index -> socket).
pub const SOCKETS_MAP: &str = "RS_SOCKETS";
/// Name of the one-entry array holding the [`Generation`] that takes new flows.
pub const GENERATION_MAP: &str = "RS_GENERATION";
/// Name of the per-CPU array of `u64` counters ([`counter`]).
pub const COUNTERS_MAP: &str = "RS_COUNTERS";
/// Slots of the socket array.
pub const MAX_SOCKETS: u32 = 64;

/// The sockets that take new flows: indices `first .. first + count` of the socket array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Generation {
    /// First index.
    pub first: u32,
    /// How many (0: nobody is ready; the kernel's own choice stands).
    pub count: u32,
}

/// Counter slots.
pub mod counter {
    /// A new flow (SYN or datagram) sent to the generation.
    pub const SELECTED: u32 = 0;
    /// A connection in the accept queue of a closing listener (`TCP_ESTABLISHED`) moved.
    pub const MIGRATED_ESTABLISHED: u32 = 1;
    /// A Fast Open connection still waiting for its final ACK (`TCP_SYN_RECV`) moved.
    pub const MIGRATED_SYN_RECV: u32 = 2;
    /// A request (`TCP_NEW_SYN_RECV`) moved by its SYN-ACK retransmission timer.
    pub const MIGRATED_REQUEST_TIMER: u32 = 3;
    /// A request (`TCP_NEW_SYN_RECV`) moved when its final ACK arrived.
    pub const MIGRATED_REQUEST_ACK: u32 = 4;
    /// The generation's socket could not be selected (empty slot, wrong protocol): the kernel's
    /// choice stood.
    pub const SELECT_FAILED: u32 = 5;
    /// Number of slots.
    pub const SLOTS: u32 = 6;
    /// Slot names, for reports.
    pub const NAMES: [&str; SLOTS as usize] = [
        "selected",
        "migrated_established",
        "migrated_syn_recv",
        "migrated_request_timer",
        "migrated_request_ack",
        "select_failed",
    ];
}

#[cfg(feature = "user")]
// SAFETY: `#[repr(C)]` plain data without padding.
unsafe impl aya::Pod for Generation {}
