//! The LB's maps (layouts in `zrlab_common::lb`) and counter helpers.

use aya_ebpf::{
    btf_maps::{Array as BtfArray, ArrayOfMaps, LruHashMap as BtfLruHashMap},
    macros::{btf_map, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use zrlab_common::lb::{
    Config, ConnEntry, ConnKey, LRU_FALLBACK_SIZE, LRU_PER_CPU_SIZE, MAX_CPUS, MAX_REALS, MAX_RING, MAX_SERVER_IDS,
    MAX_VIPS, Real, VipKey, VipMeta, VipStats, counter,
};

#[map(name = "LB_VIPS")]
pub static VIPS: HashMap<VipKey, VipMeta> = HashMap::with_max_entries(MAX_VIPS * 4, 0);

#[map(name = "LB_VIP_ADDRS")]
pub static VIP_ADDRS: HashMap<[u32; 4], u32> = HashMap::with_max_entries(MAX_VIPS * 4, 0);

/// One Maglev ring per VIP (indexed by `VipMeta::vip_num`). A ring change builds a whole new
/// inner array and swaps it in with one update of this outer array: a packet sees the old ring
/// or the new one, never a half-written one, and the kernel frees the old ring only after
/// every program that may still read it has finished (RCU).
#[btf_map(name = "LB_RINGS")]
pub static RINGS: ArrayOfMaps<BtfArray<u32, { MAX_RING as usize }>, { MAX_VIPS as usize }> = ArrayOfMaps::new();

#[map(name = "LB_REALS")]
pub static REALS: Array<Real> = Array::with_max_entries(MAX_REALS, 0);

#[map(name = "LB_SERVER_IDS")]
pub static SERVER_IDS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_SERVER_IDS, 0);

/// One connection table per CPU (as katran): the control plane creates them; a CPU without one
/// uses the fallback alone.
#[btf_map(name = "LB_LRU_PER_CPU")]
pub static LRU_PER_CPU: ArrayOfMaps<
    BtfLruHashMap<ConnKey, ConnEntry, { LRU_PER_CPU_SIZE as usize }>,
    { MAX_CPUS as usize },
> = ArrayOfMaps::new();

/// Shared by all CPUs: consulted on a per-CPU miss, so a flow whose packets reach another CPU
/// (veth has no RSS to pin them) still finds its real.
#[map(name = "LB_LRU_FALLBACK")]
pub static LRU_FALLBACK: LruHashMap<ConnKey, ConnEntry> = LruHashMap::with_max_entries(LRU_FALLBACK_SIZE, 0);

#[map(name = "LB_CONFIG")]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// One per-CPU entry holding every global counter: one map lookup per packet, however many
/// counters the packet moves.
#[map(name = "LB_COUNTERS")]
pub static COUNTERS: PerCpuArray<[u64; counter::SLOTS as usize]> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "LB_VIP_STATS")]
pub static VIP_STATS: PerCpuArray<VipStats> = PerCpuArray::with_max_entries(MAX_VIPS, 0);

#[map(name = "LB_REAL_STATS")]
pub static REAL_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_REALS, 0);

/// This CPU's global counters, looked up once per packet.
pub struct Stats(Option<*mut [u64; counter::SLOTS as usize]>);

impl Stats {
    /// Looks up this CPU's counters.
    #[inline(always)]
    pub fn get() -> Self {
        Self(COUNTERS.get_ptr_mut(0))
    }

    /// Adds one to counter `slot`.
    #[inline(always)]
    pub fn add(&self, slot: u32) {
        if let Some(counters) = self.0 {
            if let Some(value) = unsafe { (*counters).get_mut(slot as usize) } {
                // SAFETY: a per-CPU entry: no other CPU writes it.
                *value += 1;
            }
        }
    }
}
