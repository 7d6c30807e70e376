//! The LB's maps (layouts in `zrlab_common::lb`) and counter helpers.

use aya_ebpf::{
    btf_maps::{Array as BtfArray, ArrayOfMaps},
    macros::{btf_map, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use zrlab_common::lb::{
    CONN_TABLE_FLAGS, CONN_TABLE_PER_CPU, Config, ConnKey, ConnKeyV6, CounterBlock, ID_SLOT_COUNT, IcmpRate, IdKey,
    IdSlot, MAX_REALS, MAX_SERVER_IDS, MAX_VIPS, RING_BLOCKS, Real, RingBlock, SYN_CACHE_FLAGS, SYN_CACHE_SLOTS,
    SynSlot, VIP_FILTER_WORDS, VipKey, VipMeta, counter,
};
use zrlab_ebpf::net::opaque;

use super::layout::{ConnEntry, NEXT};

#[map(name = "LB_VIPS")]
pub static VIPS: HashMap<VipKey, VipMeta> = HashMap::with_max_entries(MAX_VIPS * 4, 0);

#[map(name = "LB_VIP_ADDRS")]
pub static VIP_ADDRS: HashMap<[u32; 4], u32> = HashMap::with_max_entries(MAX_VIPS * 4, 0);

/// The VIP-address filter (`zrlab_common::lb::VIP_FILTER_MAP`). An array: the verifier turns
/// its lookup into a bounds check and an address computation, no helper call.
#[map(name = "LB_VIP_FILTER")]
pub static VIP_FILTER: Array<u64> = Array::with_max_entries(VIP_FILTER_WORDS, 0);

/// One Maglev ring per VIP (indexed by `VipMeta::vip_num`). A ring change builds a whole new
/// inner array and swaps it in with one update of this outer array: a packet sees the old ring
/// or the new one, never a half-written one, and the kernel frees the old ring only after
/// every program that may still read it has finished (RCU).
#[btf_map(name = "LB_RINGS")]
pub static RINGS: ArrayOfMaps<BtfArray<RingBlock, { RING_BLOCKS as usize }>, { MAX_VIPS as usize }> =
    ArrayOfMaps::new();

#[map(name = "LB_REALS")]
pub static REALS: Array<Real> = Array::with_max_entries(MAX_REALS, 0);

#[map(name = "LB_SERVER_IDS")]
pub static SERVER_IDS: HashMap<IdKey, u32> = HashMap::with_max_entries(MAX_SERVER_IDS, 0);

/// The live ids' slots (`zrlab_common::lb::ID_SLOTS_MAP`): entry 0 is the array in use.
#[btf_map(name = "LB_ID_SLOTS")]
pub static LIVE_IDS: ArrayOfMaps<BtfArray<IdSlot, { ID_SLOT_COUNT as usize }>, 1> = ArrayOfMaps::new();

/// The IPv4 flows' connection table (`zrlab_common::lb::CONN_TABLE_MAP`), shared by every
/// CPU, with an LRU list per CPU (`CONN_TABLE_FLAGS`: why). Its size here is one CPU's share;
/// user space sizes it for the possible CPUs when it loads the object.
#[map(name = "LB_CONNS")]
pub static CONNS: LruHashMap<ConnKey, ConnEntry> = LruHashMap::with_max_entries(CONN_TABLE_PER_CPU, CONN_TABLE_FLAGS);

/// As [`CONNS`], for IPv6 flows under their exact key.
#[map(name = "LB_CONNS6")]
pub static CONNS6: LruHashMap<ConnKeyV6, ConnEntry> =
    LruHashMap::with_max_entries(CONN_TABLE_PER_CPU, CONN_TABLE_FLAGS);

/// Each CPU's SYN cache (`zrlab_common::lb::SYN_CACHE_MAP`), for both families: one array with
/// a part of `SYN_CACHE_SLOTS` slots per possible CPU (user space sizes it when it loads the
/// object; the object's own size is one CPU's part), and no CPU writes another's part.
/// `SYN_CACHE_FLAGS` (mappable) puts the slots on a page boundary, so each 64-byte slot is one
/// cache line; the lookup is inlined, an index and an address, where a per-CPU array's went
/// through a table of pointers (one more cold line per SYN) to slots that straddled lines.
#[map(name = "LB_SYN_CACHE")]
pub static SYN_CACHE: Array<SynSlot> = Array::with_max_entries(SYN_CACHE_SLOTS, SYN_CACHE_FLAGS);

/// The VIP generations (`zrlab_common::lb::VIP_GENS_MAP`). An array: the lookup is inlined.
#[map(name = "LB_VIP_GENS")]
pub static VIP_GENS: Array<u32> = Array::with_max_entries(1 + MAX_VIPS, 0);

/// Entry `i` of the VIP generations (0: the VIPs'; `1 + vip_num`: that VIP's flags').
#[inline(always)]
pub fn vip_gen(i: u32) -> u32 {
    VIP_GENS.get(i).copied().unwrap_or(0)
}

/// The configuration (`zrlab_common::lb::CONFIG_GLOBAL`): user space writes it into the
/// object before loading it. Read only through [`config`].
#[unsafe(no_mangle)]
static LB_CONFIG: Config =
    Config { encap_src_v4: 0, encap_src_v4_mask: 0, encap_src_v6: [0; 4], hash_seed: 0, icmp_too_big_per_sec: 0 };

/// Each CPU's ICMP "too big" answers in the current second (`zrlab_common::lb::ICMP_RATE_MAP`).
#[map(name = "LB_ICMP_RATE")]
pub static ICMP_RATE: PerCpuArray<IcmpRate> = PerCpuArray::with_max_entries(1, 0);

/// One field of the configuration, e.g. `config(|c| &c.hash_seed)`. A volatile load: to the
/// compiler the global is the zeros above, and it would fold them in.
#[inline(always)]
pub fn config<T: Copy + 'static>(field: impl FnOnce(&'static Config) -> &'static T) -> T {
    // SAFETY: a field of a static: valid and aligned.
    unsafe { core::ptr::read_volatile(field(&LB_CONFIG)) }
}

/// One per-CPU entry holding every counter: one map lookup per packet.
#[map(name = "LB_COUNTERS")]
pub static COUNTERS: PerCpuArray<CounterBlock> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's counters, looked up once per packet.
pub struct Stats(Option<*mut CounterBlock>);

impl Stats {
    /// Looks up this CPU's counters.
    #[inline(always)]
    pub fn get() -> Self {
        Self(COUNTERS.get_ptr_mut(0))
    }

    /// Adds one to global counter `slot`.
    #[inline(always)]
    pub fn add(&self, slot: u32) {
        // Every caller passes a constant slot (one call site picks one of two by a branch): the
        // verifiers know the offset, and the access needs no masking (see `index`).
        if let Some(block) = self.0 {
            // SAFETY: a per-CPU entry: no other CPU writes it.
            if let Some(value) = unsafe { (*block).global.get_mut(slot as usize) } {
                *value += 1;
            }
        }
    }

    /// Counts a packet of `bytes` bytes sent for VIP `vip_num` to real `real`.
    #[inline(always)]
    pub fn sent(&self, vip_num: u32, real: u32, bytes: u64) {
        let Some(block) = self.0 else { return };
        // SAFETY: as in `add`.
        let block = unsafe { &mut *block };
        block.global[counter::TX as usize] += 1;
        if NEXT {
            block.global[counter::NEXT_TX as usize] += 1;
        }
        if let Some(vip) = index::<{ MAX_VIPS as usize }>(vip_num).map(|i| &mut block.vips[i]) {
            vip.packets += 1;
            vip.bytes += bytes;
        }
        if let Some(i) = index::<{ MAX_REALS as usize }>(real) {
            block.reals[i] += 1;
        }
    }
}

/// `i` as an index below `N` (a power of two), in a form every verifier follows: checked, then
/// masked. The mask changes nothing, but the 5.10 and 6.1 verifiers lost the bound of the
/// compiler's comparison (made on a copy of the register) and refused the access into the
/// counter block as unbounded; [`opaque`] keeps the compiler from dropping the mask as
/// redundant.
#[inline(always)]
fn index<const N: usize>(i: u32) -> Option<usize> {
    const { assert!(N.is_power_of_two()) };
    let i = i as usize;
    (i < N).then(|| opaque(i) & (N - 1))
}
