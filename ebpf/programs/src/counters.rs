//! Per-CPU counter arrays: the one increment every program's counters go through.

use aya_ebpf::maps::PerCpuArray;

/// Adds one to slot `slot` of this CPU's copy of `counters`; a slot out of range counts nothing
/// (callers pass constants of their counter module, so the verifier sees the bound).
#[inline(always)]
pub fn bump(counters: &PerCpuArray<u64>, slot: u32) {
    if let Some(value) = counters.get_ptr_mut(slot) {
        // SAFETY: a per-CPU slot: no other CPU writes it, and the program is not re-entered on
        // this CPU while it runs.
        unsafe { *value += 1 };
    }
}
