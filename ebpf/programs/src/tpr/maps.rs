//! The maps of both `tpr` programs (names in `zrlab_common::tpr`).

use aya_ebpf::{
    btf_maps::SkStorage,
    macros::{btf_map, map},
    maps::{Array, PerCpuArray},
};
use zrlab_common::tpr::counter;

/// The server's id (slot 0); 0 means "write nothing".
#[map(name = "TPR_SERVER_ID")]
pub static SERVER_ID: Array<u32> = Array::with_max_entries(1, 0);

/// Per-CPU counters, one slot per `zrlab_common::tpr::counter`.
#[map(name = "TPR_COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::SLOTS, 0);

/// A client connection's id to echo, from its SYN-ACK. Socket storage: it lives and dies with
/// the socket, no table to size or clean.
#[btf_map(name = "TPR_PEER_ID")]
pub static PEER_ID: SkStorage<u32> = SkStorage::new();

/// Adds one to counter `slot` (a constant at every call site).
#[inline(always)]
pub fn count(slot: u32) {
    zrlab_ebpf::counters::bump(&COUNTERS, slot);
}

/// The server's configured id.
#[inline(always)]
pub fn server_id() -> u32 {
    SERVER_ID.get(0).copied().unwrap_or(0)
}
