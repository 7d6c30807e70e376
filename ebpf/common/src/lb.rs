//! `xdp_lb`: the L4 load balancer's maps, values, counters and the pure functions both sides
//! must compute identically (the flow hash, the server id in a QUIC connection id).
//!
//! Addresses are stored as four `u32` words holding the address bytes in network order (an IPv4
//! address uses the first word, the rest zero); ports are network order too. Everything here is
//! `#[repr(C)]` with explicit padding.

/// Name of the VIP table (`VipKey` -> `VipMeta`).
pub const VIPS_MAP: &str = "LB_VIPS";
/// Name of the set of addresses that carry at least one VIP (`[u32; 4]` -> `u32`).
pub const VIP_ADDRS_MAP: &str = "LB_VIP_ADDRS";
/// Name of the VIP-address filter: [`VIP_FILTER_WORDS`] `u64` words in which bit
/// [`vip_filter_bit`] of every address that carries a VIP is set. A clear bit proves that an
/// address carries none, at the cost of a multiply and an array load instead of a hash lookup
/// in [`VIP_ADDRS_MAP`]: most packets an LB sharing a host sees are not for a VIP. A set bit
/// may be another address's; the set decides then.
pub const VIP_FILTER_MAP: &str = "LB_VIP_FILTER";
/// Bits of the VIP-address filter: with at most `4 * MAX_VIPS` addresses set, a non-VIP
/// address finds its bit set (and pays the set's lookup too) at most once in 1,024.
pub const VIP_FILTER_BITS: u32 = 1 << 16;
/// Words of the VIP-address filter.
pub const VIP_FILTER_WORDS: u32 = VIP_FILTER_BITS / 64;
/// Name of the rings: an array of maps, one array of [`RING_BLOCKS`] [`RingBlock`]s per VIP.
pub const RINGS_MAP: &str = "LB_RINGS";
/// Name of the real (backend) table: index -> `Real`.
pub const REALS_MAP: &str = "LB_REALS";
/// Name of the live server-id table for ids that share their slot ([`ID_SLOTS_MAP`]): [`IdKey`]
/// (a server id within a VIP) -> real index. An id routes only within the VIPs its real is a
/// member of (up or drained): a packet to VIP A carrying the id of a real that serves only VIP
/// B falls back to the table and ring.
pub const SERVER_IDS_MAP: &str = "LB_SERVER_IDS";
/// Name of the live ids' slots: an array of maps whose one entry is an array of
/// [`ID_SLOT_COUNT`] [`IdSlot`]s, each live id in slot [`id_slot`] of its id with its real and
/// the VIPs it routes within. An id looked up in an array costs an index and a load (the verifier
/// inlines both lookups); in the hash table [`SERVER_IDS_MAP`] it cost an id-routed packet about
/// 28 ns, a third of a table hit. Ids whose slot another live id has too stay in
/// [`SERVER_IDS_MAP`] (their slot says so). The control plane builds a whole new array on every
/// change and swaps it in with one update of the outer array, so a packet sees the old ids or
/// the new ones, never a half-written slot.
pub const ID_SLOTS_MAP: &str = "LB_ID_SLOTS";
/// Slots of the live ids' array (a power of two).
pub const ID_SLOT_COUNT: u32 = 4_096;

/// One slot of the live ids' array ([`ID_SLOTS_MAP`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdSlot {
    /// The live id in this slot; 0 (never an id): none, or several (see `shared`).
    pub id: u32,
    /// Its real's index.
    pub real: u32,
    /// The VIPs it routes within: bit `vip_num` for each.
    pub vips: u32,
    /// 1 if several live ids have this slot: all of them are in [`SERVER_IDS_MAP`].
    pub shared: u32,
}

/// The slot of server id `id` in the live ids' array: a multiplicative hash's top bits, so that
/// ids drawn at random and ids numbered from 1 both spread.
#[inline(always)]
pub fn id_slot(id: u32) -> u32 {
    id.wrapping_mul(0x9e37_79b1) >> (32 - ID_SLOT_COUNT.trailing_zeros())
}

const _: () = assert!(ID_SLOT_COUNT.is_power_of_two() && MAX_VIPS <= 32, "a slot's VIP set is one u32");
/// Name of the IPv4 flows' connection table (keys [`ConnKey`]): one LRU hash shared by every
/// CPU, each CPU with an LRU list of its own ([`CONN_TABLE_FLAGS`]).
pub const CONN_TABLE_MAP: &str = "LB_CONNS";
/// Name of the IPv6 flows' connection table (keys [`ConnKeyV6`]).
pub const CONN6_TABLE_MAP: &str = "LB_CONNS6";
/// Name of the SYN cache: an array of [`SYN_CACHE_SLOTS`] [`SynSlot`]s per possible CPU, the route of
/// each CPU's recent SYNs, one slot per flow hash (direct-mapped). A SYN writes its slot and no
/// connection table: a table insert is the costliest step of a new flow (the kernel pops a
/// free node and pushes the replaced one under locks, a chain of calls), and a SYN that never
/// completes (a flood) then costs no table work at all and cannot evict an established flow's
/// entry. The flow's next packet that misses the table on that CPU finds its slot and moves
/// the route into the table. (A SYN whose 5-tuple has an entry, a reused 5-tuple, overwrites
/// it instead: the flow's next packet then follows it on any CPU.) A slot that another SYN took
/// meanwhile is a miss: the flow is routed by the ring, as katran routes a flow whose entry
/// was evicted.
pub const SYN_CACHE_MAP: &str = "LB_SYN_CACHE";
/// Name of the VIP generations: an array of `1 + MAX_VIPS` `u32`s. Entry 0, the VIPs'
/// generation, moves on after the control plane adds a VIP or changes a VIP's flags: a SYN-cache
/// slot of the current generation was routed by the VIPs as they are, so the flow's next packet
/// may take its route before the VIP lookup (a hash of a 20-byte key on the way of every first
/// packet after a SYN). Entry `1 + vip_num` moves on after VIP `vip_num`'s flags change: a slot
/// from before is stale (its flow starts afresh under the new flags), whatever else changed.
pub const VIP_GENS_MAP: &str = "LB_VIP_GENS";
/// Flags of the SYN cache: `BPF_F_MMAPABLE`, which page-aligns an array's values.
pub const SYN_CACHE_FLAGS: u32 = 1 << 10;
/// Slots of each CPU's SYN cache (a power of two): 1 MiB per CPU. With S SYNs in
/// flight on a CPU within one round trip, a flow finds its slot taken with a chance of about
/// S / 16,384.
pub const SYN_CACHE_SLOTS: u32 = 16_384;
/// Name of the program's read-only global holding its [`Config`], set when the object is loaded.
pub const CONFIG_GLOBAL: &str = "LB_CONFIG";
/// Name of the ICMP answers' rate limiter: a per-CPU array of one [`IcmpRate`].
pub const ICMP_RATE_MAP: &str = "LB_ICMP_RATE";

/// One CPU's ICMP "too big" answers in the current one-second window.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IcmpRate {
    /// When the window started (`bpf_ktime_get_ns`).
    pub window_ns: u64,
    /// Answers sent in it.
    pub sent: u64,
}

/// Name of the per-CPU counters: one entry, a [`CounterBlock`].
pub const COUNTERS_MAP: &str = "LB_COUNTERS";

/// Largest ring (a prime, as Maglev wants); the default size of every VIP's ring.
pub const MAX_RING: u32 = 65_537;
/// Ring slots per [`RingBlock`].
pub const RING_BLOCK: u32 = 32;
/// A ring's slots in the kernel: blocks of [`RING_BLOCK`] real indices, 16 bits each, one cache
/// line per block. The kernel keeps an array's values 8 bytes apart at least, so a ring of one
/// `u32` slot per element took 512 KiB, and a new flow's slot was a cold line of it; in blocks
/// it takes 128 KiB.
pub type RingBlock = [u16; RING_BLOCK as usize];
/// Blocks of the largest ring.
pub const RING_BLOCKS: u32 = MAX_RING.div_ceil(RING_BLOCK);

/// Where ring slot `slot` lives: its block and its lane in the block.
#[inline(always)]
pub fn ring_position(slot: u32) -> (u32, usize) {
    (slot / RING_BLOCK, (slot % RING_BLOCK) as usize)
}
/// VIPs the maps hold.
pub const MAX_VIPS: u32 = 16;
/// Reals the maps hold.
pub const MAX_REALS: u32 = 1024;
const _: () = assert!(MAX_REALS <= 1 << 16, "a ring slot holds a real index in 16 bits");
/// Entries of the live-id table: (VIP, server id) pairs.
pub const MAX_SERVER_IDS: u32 = 16_384;
/// Each CPU's share of a connection table: the table holds this many entries per possible CPU
/// (user space sizes it when it loads the object; the object's own size is one CPU's share).
pub const CONN_TABLE_PER_CPU: u32 = 32_768;
/// Flags of the connection tables: `BPF_F_NO_COMMON_LRU`. One hash table that every CPU reads
/// and writes, with an LRU list per CPU: a CPU evicts only the entries it inserted, so a flood on
/// one CPU cannot push out another CPU's flows, and an insert takes no lock that other CPUs
/// share (the common LRU list's lock and shared free list cost a new flow about 35 ns of 160 by
/// katran's method). The kernel splits the entries evenly over the possible CPUs, hence the
/// size per CPU. One table, not one per CPU with a shared fallback (as before): a flow costs one
/// insert, not two; a packet on any CPU finds the entry any CPU wrote; and a flow moved to
/// another real (a SYN of a reused 5-tuple, a server id that corrects its entry) has one entry
/// to overwrite, with no per-CPU copy left stale.
pub const CONN_TABLE_FLAGS: u32 = 1 << 1;

/// VIP flag: route TCP by the server id in the TPR header option.
pub const VIP_F_TCP_ID_ROUTING: u32 = 1 << 0;
/// VIP flag: route QUIC by the server id in the connection id.
pub const VIP_F_QUIC_ID_ROUTING: u32 = 1 << 1;
/// VIP flag: no connection table (every packet hashes on the ring). For negative controls.
pub const VIP_F_NO_LRU: u32 = 1 << 2;
/// VIP flag: hash every packet afresh with a random salt (no flow consistency at all). For the
/// negative control of the basic scenario.
pub const VIP_F_HASH_PER_PACKET: u32 = 1 << 3;

/// Real flag: the real's address is IPv6.
pub const REAL_F_IPV6: u32 = 1 << 0;

/// The TPR TCP option: kind (katran's 0xB7), length, u32 server id in network order.
pub const TPR_KIND: u8 = 0xb7;
/// Length of the TPR option.
pub const TPR_LEN: u8 = 6;
/// Options the walk looks at before giving up (katran: 15).
pub const TPR_MAX_OPTIONS: u32 = 15;

/// Shortest QUIC connection id that is routed by id.
pub const QUIC_MIN_CID: u32 = 8;

/// Key of the live-id table: a server id within a VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IdKey {
    /// The VIP's number (`VipMeta::vip_num`).
    pub vip_num: u32,
    /// The server id.
    pub id: u32,
}

/// QUIC version 1 (RFC 9000): long-header types Initial 0, 0-RTT 1, Handshake 2, Retry 3.
pub const QUIC_VERSION_1: u32 = 1;
/// QUIC version 2 (RFC 9369): long-header types Retry 0, Initial 1, 0-RTT 2, Handshake 3.
pub const QUIC_VERSION_2: u32 = 0x6b33_43cf;

/// A VIP: address, port (0 for any port) and protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VipKey {
    /// Address words (network order bytes).
    pub addr: [u32; 4],
    /// Port, network order; 0 matches any port.
    pub port: u16,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub proto: u8,
    /// Padding (zero).
    pub pad: u8,
}

/// What the LB knows about a VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipMeta {
    /// `VIP_F_*` flags.
    pub flags: u32,
    /// Index of the VIP's ring and counters (below `MAX_VIPS`).
    pub vip_num: u32,
    /// Entries of the ring in use (at most `MAX_RING`; a prime).
    pub ring_size: u32,
    /// Padding (zero).
    pub pad: u32,
}

/// A real (backend) the LB encapsulates to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Real {
    /// Address words (network order bytes).
    pub addr: [u32; 4],
    /// `REAL_F_*` flags.
    pub flags: u32,
    /// The path MTU to the real: the largest outer packet (IP header and payload) that reaches
    /// it; 0 when unknown (no check). A VIP packet that would not fit once encapsulated is
    /// answered with ICMP "fragmentation needed" / ICMPv6 "packet too big" carrying what fits
    /// (this less the outer header), and not sent.
    pub mtu: u32,
}

/// A flow, as parsed: the ring's hash input, and what a connection-table entry must match.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Source address words.
    pub src: [u32; 4],
    /// Destination address words.
    pub dst: [u32; 4],
    /// Source and destination port: the first word of the TCP or UDP header, as in memory. One
    /// word, not two halves: BPF code that stored two `u16`s and then read the word back (for
    /// the keys and hashes) stalled on store forwarding on every packet.
    pub ports: u32,
    /// IP protocol.
    pub proto: u8,
}

impl FlowKey {
    /// Source and destination port, each in network order as on the wire.
    #[inline(always)]
    pub fn port_pair(&self) -> [u16; 2] {
        let [a, b, c, d] = self.ports.to_ne_bytes();
        [u16::from_ne_bytes([a, b]), u16::from_ne_bytes([c, d])]
    }

    /// The word the hashes mix for the ports: the source port (as [`FlowKey::port_pair`] gives
    /// it) in the high half, the destination port in the low.
    #[inline(always)]
    pub fn hash_ports(&self) -> u32 {
        let [sport, dport] = self.port_pair();
        (u32::from(sport) << 16) | u32::from(dport)
    }
}

/// The IPv4 connection table's key: three words, exact. The kernel hashes and compares the
/// whole key on every lookup (`jhash2` mixes once per three words beyond the last three); with
/// the 40-byte [`FlowKey`] as the key, whose padding bytes the compiler cleared with a call to
/// BPF's byte-wise `memset`, a table hit cost about 18 ns (15%) more on the benchmark machine.
/// Hence no padding fields here or in [`FlowKey`]. The protocol is XORed into the destination
/// word, so two flows that differ only in destination and protocol can share a key: the entry
/// carries the full addresses and the protocol, and a hit counts only if they match
/// ([`ConnEntry::matches`]). Such flows would need two VIP addresses 6 ^ 17 apart, one served
/// over TCP and the other over UDP, and the same source address and ports.
///
/// IPv6 flows have a table of their own under the exact [`ConnKeyV6`]: an IPv6 address folded
/// to one word would let a sender that picks the low bits of its own address overwrite another
/// flow's entry with one spoofed packet (the victim is then reset after the next ring change).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnKey {
    /// Source address (the IPv4 address's word).
    pub src: u32,
    /// Destination address, XOR the IP protocol.
    pub dst_proto: u32,
    /// Source and destination port, as [`FlowKey::ports`].
    pub ports: u32,
}

impl ConnKey {
    /// The key of IPv4 flow `flow`.
    #[inline(always)]
    pub fn of(flow: &FlowKey) -> Self {
        Self { src: flow.src[0], dst_proto: flow.dst[0] ^ u32::from(flow.proto), ports: flow.ports }
    }
}

/// The IPv6 connection table's key: the whole 5-tuple, as katran keys its flows, with no
/// padding bytes (the protocol takes a word of its own). Exact: two flows never share an entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnKeyV6 {
    /// Source address words.
    pub src: [u32; 4],
    /// Destination address words.
    pub dst: [u32; 4],
    /// Source and destination port, as [`FlowKey::ports`].
    pub ports: u32,
    /// IP protocol.
    pub proto: u32,
}

impl ConnKeyV6 {
    /// The key of IPv6 flow `flow`.
    #[inline(always)]
    pub fn of(flow: &FlowKey) -> Self {
        Self { src: flow.src, dst: flow.dst, ports: flow.ports, proto: u32::from(flow.proto) }
    }
}

/// A connection-table entry: everything an established flow's packet needs, so that a table
/// hit costs no VIP lookup, and what the IPv4 key does not pin down. The IPv6 tables hold it
/// too (one value type for both families; their exact key needs no match check). Aligned to 8
/// bytes (as the kernel aligns map values) so that [`ConnEntry::matches`] reads the addresses
/// as 64-bit words.
///
/// `T` is the entry's tail, the one part that differs between program versions: `u32`
/// (padding) for `xdp_lb`, [`EntryStamp`] for `xdp_lb_next` ([`ConnEntryNext`]), the variant an
/// in-place upgrade moves to. The two differ in layout (56 and 64 bytes), so an upgrade
/// migrates every entry instead of handing the tables over.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnEntry<T = u32> {
    /// The real index the flow goes to.
    pub real: u32,
    /// The flow's VIP (`VipMeta::vip_num`), for its counters.
    pub vip_num: u32,
    /// The VIP's flags when the entry was written (`VIP_F_*`).
    pub flags: u32,
    /// The flow's IP protocol.
    pub proto: u32,
    /// The flow's source address words.
    pub src: [u32; 4],
    /// The flow's destination address words.
    pub dst: [u32; 4],
    /// Padding (zero).
    pub pad: u32,
    /// The version's tail ([`EntryTail`]).
    pub tail: T,
}

/// The tail of a connection-table entry: what a program version writes there for a new entry.
pub trait EntryTail: Copy {
    /// The tail of an entry the program writes.
    const FRESH: Self;
}

impl EntryTail for u32 {
    /// Padding: zero.
    const FRESH: Self = 0;
}

/// The tail of `xdp_lb_next`'s entries: who wrote the entry. It makes the layout differ from
/// `xdp_lb`'s (which an upgrade must then migrate), and lets a reader tell entries the new
/// version wrote from entries an upgrade carried over.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntryStamp {
    /// The layout version of the program that wrote the entry ([`NEXT_LAYOUT`]), or of the
    /// table it was migrated from.
    pub version: u32,
    /// 1 if an upgrade migrated the entry from an older layout, 0 if the program wrote it.
    pub migrated: u32,
    /// Padding (zero).
    pub pad: u32,
}

/// The layout version of `xdp_lb` (whose entries carry no stamp).
pub const CURRENT_LAYOUT: u32 = 1;
/// The layout version of `xdp_lb_next`.
pub const NEXT_LAYOUT: u32 = 2;

impl EntryTail for EntryStamp {
    const FRESH: Self = Self { version: NEXT_LAYOUT, migrated: 0, pad: 0 };
}

/// `xdp_lb_next`'s connection-table entry.
pub type ConnEntryNext = ConnEntry<EntryStamp>;

impl<T: EntryTail> ConnEntry<T> {
    /// An entry sending `flow` to `real` for VIP `vip_num` with the VIP's `flags`.
    #[inline(always)]
    pub fn new(flow: &FlowKey, real: u32, vip_num: u32, flags: u32) -> Self {
        Self {
            real,
            vip_num,
            flags,
            proto: u32::from(flow.proto),
            src: flow.src,
            dst: flow.dst,
            pad: 0,
            tail: T::FRESH,
        }
    }
}

impl<T> ConnEntry<T> {
    /// Whether this entry is `flow`'s (its key, [`ConnKey::of`], matched already).
    #[inline(always)]
    pub fn matches(&self, flow: &FlowKey) -> bool {
        same_flow(self.proto, &self.src, &self.dst, flow)
    }
}

/// Whether protocol `proto` and addresses `src` and `dst` (8-byte aligned, as in the structs
/// that hold them) are `flow`'s. Without branches, so the compiler emits no `memcmp` (which BPF
/// gets as a byte loop), and with the addresses read as 64-bit words: half the loads of reading
/// them word by word, and for IPv4 the flow's side is its first word, zero-extended.
#[inline(always)]
fn same_flow(proto: u32, src: &[u32; 4], dst: &[u32; 4], flow: &FlowKey) -> bool {
    debug_assert!(src.as_ptr().cast::<u64>().is_aligned() && dst.as_ptr().cast::<u64>().is_aligned());
    // SAFETY: every caller passes fields at 8-byte offsets of a struct aligned to 8 (asserted
    // below): both are valid, aligned `[u64; 2]`.
    let (src, dst) = unsafe { (*src.as_ptr().cast::<[u64; 2]>(), *dst.as_ptr().cast::<[u64; 2]>()) };
    let pairs = |w: &[u32; 4]| [join(w[0], w[1]), join(w[2], w[3])];
    let (flow_src, flow_dst) = (pairs(&flow.src), pairs(&flow.dst));
    let diff = u64::from(proto ^ u32::from(flow.proto))
        | (src[0] ^ flow_src[0])
        | (src[1] ^ flow_src[1])
        | (dst[0] ^ flow_dst[0])
        | (dst[1] ^ flow_dst[1]);
    diff == 0
}

const _: () = {
    assert!(core::mem::offset_of!(ConnEntry, src) == 16);
    assert!(core::mem::offset_of!(ConnEntry, dst) == 32);
    assert!(core::mem::size_of::<ConnEntry>() == 56);
    assert!(core::mem::offset_of!(ConnEntryNext, src) == 16);
    assert!(core::mem::offset_of!(ConnEntryNext, dst) == 32);
    // No padding byte (they are `Pod`): 52 bytes of fields, then the 12-byte stamp.
    assert!(core::mem::size_of::<ConnEntryNext>() == 64);
};

/// A slot of the SYN cache ([`SYN_CACHE_MAP`]): a SYN's flow and route, and the generations
/// ([`VIP_GENS_MAP`]) it was routed under. Zeroed, or with protocol 0 (taken), it matches no
/// TCP flow. One layout for every program version (an in-place upgrade hands the cache over).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynSlot {
    /// The flow's ports, as [`FlowKey::ports`].
    pub ports: u32,
    /// The flow's IP protocol.
    pub proto: u32,
    /// The VIPs' generation (entry 0 of [`VIP_GENS_MAP`]) when the SYN was routed.
    pub vips_gen: u32,
    /// The generation of the flags of the SYN's VIP (its entry of [`VIP_GENS_MAP`]) then.
    pub flags_gen: u32,
    /// The real the SYN went to.
    pub real: u32,
    /// The SYN's VIP (`VipMeta::vip_num`).
    pub vip_num: u32,
    /// The VIP's flags then.
    pub flags: u32,
    /// Padding (zero).
    pub pad: u32,
    /// The flow's source address words.
    pub src: [u32; 4],
    /// The flow's destination address words.
    pub dst: [u32; 4],
}

impl SynSlot {
    /// Whether this slot holds `flow`'s SYN.
    #[inline(always)]
    pub fn holds(&self, flow: &FlowKey) -> bool {
        self.ports == flow.ports && same_flow(self.proto, &self.src, &self.dst, flow)
    }
}

const _: () = {
    assert!(core::mem::offset_of!(SynSlot, src) == 32);
    assert!(core::mem::offset_of!(SynSlot, dst) == 48);
    // One cache line: the array's values are page-aligned ([`SYN_CACHE_FLAGS`]).
    assert!(core::mem::size_of::<SynSlot>() == 64);
};

/// The SYN-cache slot of the flow whose seeded flow hash ([`flow_hash`]) is `hash`.
#[inline(always)]
pub fn syn_cache_index(hash: u32) -> u32 {
    hash & (SYN_CACHE_SLOTS - 1)
}

const _: () = assert!(SYN_CACHE_SLOTS.is_power_of_two());

/// Two consecutive address words as the 64-bit word they make in memory.
#[inline(always)]
fn join(first: u32, second: u32) -> u64 {
    let (a, b) = (first.to_ne_bytes(), second.to_ne_bytes());
    u64::from_ne_bytes([a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3]])
}

/// The LB's configuration: fixed when the object is loaded, so it is a read-only global of the
/// program (`CONFIG_GLOBAL`, in `.rodata`), as Cilium configures its programs, not the entry
/// of a one-entry array: reading a global is a load from an address the verifier fixed, where
/// the array cost a map lookup on every forwarded packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Outer IPv4 source: `base | (flow hash & !mask)` where `mask` keeps the prefix.
    pub encap_src_v4: u32,
    /// Netmask of the IPv4 outer-source prefix (network order).
    pub encap_src_v4_mask: u32,
    /// Outer IPv6 source prefix: the first three words; the fourth comes from the flow hash.
    pub encap_src_v6: [u32; 4],
    /// Seed of the flow hash.
    pub hash_seed: u32,
    /// The most ICMP "too big" answers each CPU sends per second (0: none at all); VIP packets
    /// too big for their real beyond that are dropped, counted ([`counter::TOO_BIG_LIMITED`]).
    pub icmp_too_big_per_sec: u32,
}

/// Per-VIP counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipStats {
    /// Packets to the VIP that were encapsulated.
    pub packets: u64,
    /// Their bytes (inner packet length).
    pub bytes: u64,
}

/// Every counter of the LB on one CPU: the single entry of the per-CPU array `COUNTERS_MAP`.
/// One entry, so that a packet costs one counter lookup however many counters it moves (a
/// forwarded packet moves a global slot, its VIP's and its real's: with one map each, the three
/// lookups cost about 3% of a table hit). 8.6 KB per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CounterBlock {
    /// Global slots ([`counter`]).
    pub global: [u64; counter::SLOTS as usize],
    /// Per VIP, by `VipMeta::vip_num`.
    pub vips: [VipStats; MAX_VIPS as usize],
    /// Packets per real, by real index.
    pub reals: [u64; MAX_REALS as usize],
}

/// Global counter slots (`CounterBlock::global`). Each says which path a packet took, so a
/// report can tell "our program chose" apart from "the kernel's default happened".
pub mod counter {
    /// Not IPv4/IPv6, or too short for an IP header: passed.
    pub const NOT_IP: u32 = 0;
    /// Destination is not a VIP address: passed untouched.
    pub const NON_VIP: u32 = 1;
    /// VIP address but no VIP for this port/protocol: passed.
    pub const NO_SERVICE: u32 = 2;
    /// IPv4 options: passed to the stack.
    pub const IP_OPTIONS: u32 = 3;
    /// Fragments (and IPv6 extension headers): passed to the stack.
    pub const FRAGMENTS: u32 = 4;
    /// Lengths that disagree with the frame, bad header lengths, truncated headers: dropped.
    pub const MALFORMED: u32 = 5;
    /// ICMP other than errors (echo requests...), and other protocols, to a VIP address:
    /// passed.
    pub const OTHER_PROTO: u32 = 6;
    /// Connection-table hits.
    pub const LRU_HIT: u32 = 7;
    /// Connection-table misses.
    pub const LRU_MISS: u32 = 8;
    /// Packets routed by the consistent-hash ring.
    pub const RING_ROUTED: u32 = 9;
    /// TCP packets routed by the TPR server id.
    pub const TCP_ID_ROUTED: u32 = 10;
    /// QUIC packets routed by the connection-id server id.
    pub const QUIC_ID_ROUTED: u32 = 11;
    /// An id that is 0, unknown or dead: fell back.
    pub const ID_UNKNOWN: u32 = 12;
    /// A malformed TCP option list (the walk stopped; fell back).
    pub const OPT_MALFORMED: u32 = 13;
    /// QUIC packets that carry no routable id (Initial, 0-RTT, short CID, version 0): hashed.
    pub const QUIC_HASHED: u32 = 14;
    /// Packets encapsulated and transmitted.
    pub const TX: u32 = 15;
    /// Encapsulation failed (no headroom, no real): aborted.
    pub const ENCAP_FAILED: u32 = 16;
    /// A bounds check the program's own earlier checks should have made impossible failed (a
    /// bug, or a kernel that lays the frame out differently): the packet passed. Never moves
    /// in the suites; the fuzz suite asserts it.
    pub const INTERNAL: u32 = 17;
    /// Flows whose first packet after the SYN found the SYN's route in the SYN cache (and moved
    /// it into the connection tables).
    pub const SYN_CACHE_HIT: u32 = 18;
    /// Packets forwarded by `xdp_lb_next` (never by `xdp_lb`): after an in-place upgrade, that
    /// the new version is the one handling the traffic.
    pub const NEXT_TX: u32 = 19;
    /// VIP packets too big for their real's path once encapsulated, answered with ICMP
    /// "fragmentation needed" / ICMPv6 "packet too big" (`XDP_TX` back to the sender).
    pub const TOO_BIG: u32 = 20;
    /// Of those, beyond the answers' rate limit: dropped without an answer.
    pub const TOO_BIG_LIMITED: u32 = 21;
    /// VIP packets too big for their real's path with IPv4's "don't fragment" clear: dropped (an
    /// XDP program cannot fragment), and too big ICMP errors (no error answers an error).
    pub const TOO_BIG_DROPPED: u32 = 22;
    /// ICMP and ICMPv6 errors to a VIP that quote a packet of one of its flows: sent to that
    /// flow's real (by its table entry, else the ring), so the backend learns the path MTU.
    pub const ICMP_ROUTED: u32 = 23;
    /// ICMP errors to a VIP whose quote is too short to hold the quoted packet's ports, or
    /// whose quoted header is unusable (IPv4 options): dropped, never guessed at.
    pub const ICMP_QUOTE_BAD: u32 = 24;
    /// ICMP errors to a VIP address about a packet that is no VIP's (another source, protocol
    /// or port): passed untouched.
    pub const ICMP_NOT_OURS: u32 = 25;
    /// Of the SYN-cache hits, those taken before the VIP lookup (no VIP added and no VIP's flags
    /// changed since the SYN): the shortcut that spares the first packet after a SYN a hash
    /// lookup.
    pub const SYN_CACHE_EARLY: u32 = 26;
    /// Number of slots.
    pub const SLOTS: u32 = 27;
    /// Each slot's name, for reports.
    pub const NAMES: [&str; SLOTS as usize] = [
        "not_ip",
        "non_vip",
        "no_service",
        "ip_options",
        "fragments",
        "malformed",
        "other_proto",
        "lru_hit",
        "lru_miss",
        "ring_routed",
        "tcp_id_routed",
        "quic_id_routed",
        "id_unknown",
        "opt_malformed",
        "quic_hashed",
        "tx",
        "encap_failed",
        "internal",
        "syn_cache_hit",
        "next_tx",
        "too_big",
        "too_big_limited",
        "too_big_dropped",
        "icmp_routed",
        "icmp_quote_bad",
        "icmp_not_ours",
        "syn_cache_early",
    ];
}

/// The bit of address `addr` (its words, as [`VipKey::addr`]) in the VIP-address filter
/// ([`VIP_FILTER_MAP`]): the words folded into one, then Fibonacci hashing (multiply by 2^32
/// over the golden ratio, keep the top bits). An IPv4 address's other words are zero, so its
/// bit costs a multiply and a shift.
#[inline(always)]
pub fn vip_filter_bit(addr: &[u32; 4]) -> u32 {
    let folded = addr[0] ^ addr[1].rotate_left(8) ^ addr[2].rotate_left(16) ^ addr[3].rotate_left(24);
    folded.wrapping_mul(0x9E37_79B9) >> (32 - VIP_FILTER_BITS.trailing_zeros())
}

/// The flow hash: MurmurHash3 (x86, 32-bit) over the 5-tuple's words, seeded.
///
/// Shared by the BPF program and user space so that expected outputs and models pick the same
/// ring entry as the kernel does.
#[inline(always)]
pub fn flow_hash(key: &FlowKey, seed: u32) -> u32 {
    let mut h = seed;
    let mut i = 0;
    while i < 4 {
        h = murmur_round(h, key.src[i]);
        h = murmur_round(h, key.dst[i]);
        i += 1;
    }
    h = murmur_round(h, key.hash_ports());
    h = murmur_round(h, u32::from(key.proto));
    fmix32(h ^ 40)
}

/// A cheap per-flow hash for the outer header (the host bits of the outer IPv4 source, the
/// outer IPv6 source's last word and flow label), so that a backend's receive-side hashing
/// spreads flows. Not the ring's hash: it only needs to differ between flows, and it runs on
/// every packet, table hits included.
#[inline(always)]
pub fn encap_hash(key: &FlowKey) -> u32 {
    let mut h = key.src[0] ^ key.src[1] ^ key.src[2] ^ key.src[3] ^ key.hash_ports();
    h ^= h >> 16;
    h = h.wrapping_mul(0x045d_9f3b);
    h ^ (h >> 16)
}

#[inline(always)]
fn murmur_round(h: u32, word: u32) -> u32 {
    let mut k = word.wrapping_mul(0xcc9e_2d51);
    k = k.rotate_left(15);
    k = k.wrapping_mul(0x1b87_3593);
    let h = h ^ k;
    h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The server id a QUIC connection id carries, by its version bits (katran's layouts):
/// v1 = 16 bits from bit 2, v2 = bytes 1..=3, v3 = bytes 1..=4. Version 0 carries none.
/// `cid` holds at least the first five bytes of the connection id.
#[inline(always)]
pub fn quic_server_id(cid: &[u8; 5]) -> Option<u32> {
    match cid[0] >> 6 {
        1 => Some((u32::from(cid[0] & 0x3f) << 10) | (u32::from(cid[1]) << 2) | (u32::from(cid[2]) >> 6)),
        2 => Some((u32::from(cid[1]) << 16) | (u32::from(cid[2]) << 8) | u32::from(cid[3])),
        3 => Some(u32::from_be_bytes([cid[1], cid[2], cid[3], cid[4]])),
        _ => None,
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;

    // SAFETY: all of these are #[repr(C)] plain data with explicit padding.
    unsafe impl aya::Pod for VipKey {}
    unsafe impl aya::Pod for VipMeta {}
    unsafe impl aya::Pod for Real {}
    unsafe impl aya::Pod for IcmpRate {}
    unsafe impl aya::Pod for ConnKey {}
    unsafe impl aya::Pod for ConnKeyV6 {}
    unsafe impl aya::Pod for IdKey {}
    unsafe impl aya::Pod for IdSlot {}
    unsafe impl aya::Pod for ConnEntry {}
    unsafe impl aya::Pod for ConnEntryNext {}
    unsafe impl aya::Pod for EntryStamp {}
    unsafe impl aya::Pod for SynSlot {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for VipStats {}
    unsafe impl aya::Pod for CounterBlock {}
}
