//! `xdp_pass`: counts every frame and passes it to the stack (see `zrlab_common::pass`).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod prog {
    use aya_ebpf::{bindings::xdp_action, macros::map, macros::xdp, maps::PerCpuArray, programs::XdpContext};
    use zrlab_common::pass::{SLOT_FRAMES, SLOTS};

    #[map(name = "PASS_COUNTERS")]
    static PASS_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(SLOTS, 0);

    #[xdp]
    pub fn xdp_pass(_ctx: XdpContext) -> u32 {
        if let Some(frames) = PASS_COUNTERS.get_ptr_mut(SLOT_FRAMES) {
            // Per-CPU slot: no other CPU writes it, so a plain add is exact.
            unsafe { *frames += 1 };
        }
        xdp_action::XDP_PASS
    }
}

#[cfg(target_arch = "bpf")]
use zrlab_ebpf as _;

#[cfg(not(target_arch = "bpf"))]
fn main() {}
