//! `reuseport_select`: the socket dispatcher of a release (DESIGN.md section 1, "Socket-level
//! release"): an `SK_REUSEPORT` program that picks a listener or UDP socket from a
//! `REUSEPORT_SOCKARRAY` instead of the kernel's hash over the whole group.
//!
//! Sockets are grouped in **generations** (as Cloudflare's udpgrm does): a release's old and new
//! process each put their sockets at consecutive indices of the array, and the configuration
//! ([`Generation`]) names the range that takes new flows. A new process flips it when it is
//! ready, not when it has bound. With the migrate variant (5.14+), requests still queued on a
//! listener that closes are handed to the same range instead of being reset.
//!
//! A process owns one **slot** (0..[`MAX_SLOTS`]): its TCP listener sits at index `slot`, its UDP
//! socket at `UDP_BASE + slot`. A generation is a range of slots. Existing UDP flows stay with
//! their process: the service writes its slot into the free low six bits of the first byte of
//! every connection id it issues (layouts v2 and v3: the server id lives in the bytes after),
//! and a short-header datagram goes to the socket of the slot its id names, whatever the
//! generation says.

/// Name of the socket array (index -> socket).
pub const SOCKETS_MAP: &str = "RS_SOCKETS";
/// Name of the one-entry array holding the [`Generation`] that takes new flows.
pub const GENERATION_MAP: &str = "RS_GENERATION";
/// Name of the per-CPU array of `u64` counters ([`counter`]).
pub const COUNTERS_MAP: &str = "RS_COUNTERS";
/// Slots of the socket array.
pub const MAX_SOCKETS: u32 = 64;
/// Index of slot 0's UDP socket (TCP listeners sit below).
pub const UDP_BASE: u32 = MAX_SOCKETS / 2;
/// Process slots (one TCP and one UDP index each); a slot fits the six free bits of a CID.
pub const MAX_SLOTS: u32 = UDP_BASE;
/// The slot a connection id names: the low six bits of its first byte, for layouts that leave
/// them free (v2 `10` and v3 `11` in the top bits); `None` for v1 and version 0.
#[inline(always)]
pub fn slot_of_cid(first: u8) -> Option<u32> {
    (first >> 7 == 1).then_some(u32::from(first & 0x3f)).filter(|slot| *slot < MAX_SLOTS)
}

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
    /// A datagram of an existing UDP flow sent to the socket its connection id names.
    pub const BY_CID: u32 = 6;
    /// A connection id named a slot without a socket (its process is gone): sent to the
    /// generation instead.
    pub const CID_ORPHANED: u32 = 7;
    /// Number of slots.
    pub const SLOTS: u32 = 8;
    /// Slot names, for reports.
    pub const NAMES: [&str; SLOTS as usize] = [
        "selected",
        "migrated_established",
        "migrated_syn_recv",
        "migrated_request_timer",
        "migrated_request_ack",
        "select_failed",
        "by_cid",
        "cid_orphaned",
    ];
}

#[cfg(feature = "user")]
// SAFETY: `#[repr(C)]` plain data without padding.
unsafe impl aya::Pod for Generation {}
