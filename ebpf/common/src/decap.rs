//! `xdp_decap`: strips the LB's IPIP header on backends (4in4, 6in6, 4in6, 6in4) and passes the
//! inner packet to the stack.

/// Name of the set of outer destination addresses to decapsulate (`[u32; 4]` -> `u32`): the
/// backend's own addresses. Tunnelled packets to other addresses pass untouched.
pub const DECAP_DSTS_MAP: &str = "DECAP_DSTS";
/// Name of the per-CPU counters.
pub const COUNTERS_MAP: &str = "DECAP_COUNTERS";
/// Addresses the destination set holds.
pub const MAX_DSTS: u32 = 64;

/// Counter slots.
pub mod counter {
    /// IPv4 in IPv4 decapsulated.
    pub const V4_IN_V4: u32 = 0;
    /// IPv6 in IPv6 decapsulated.
    pub const V6_IN_V6: u32 = 1;
    /// IPv4 in IPv6 decapsulated.
    pub const V4_IN_V6: u32 = 2;
    /// IPv6 in IPv4 decapsulated.
    pub const V6_IN_V4: u32 = 3;
    /// Not a tunnel packet for this host: passed untouched.
    pub const PASSED: u32 = 4;
    /// A tunnel packet for this host whose outer header is malformed: dropped.
    pub const MALFORMED: u32 = 5;
    /// A bounds check the program's own earlier checks should have made impossible failed: the
    /// packet passed. Never moves in the suites.
    pub const INTERNAL: u32 = 6;
    /// Number of slots.
    pub const SLOTS: u32 = 7;
}
