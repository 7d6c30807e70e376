//! Kernel-side helpers shared by the lab's eBPF programs.
//!
//! Each program is its own `[[bin]]` (one object file per program); this library holds what they
//! share: header layouts, the one bounds-checked accessor every header read goes through, and
//! the per-CPU counter increment.
//! On the host the crate compiles to an empty library: `lab/build.rs` depends on it only so that
//! cargo rebuilds the objects when it changes.
#![no_std]
// `net::opaque` needs `asm!`, which is unstable on the BPF target (the eBPF toolchain is a pinned
// nightly anyway).
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

#[cfg(target_arch = "bpf")]
pub mod counters;
#[cfg(target_arch = "bpf")]
pub mod net;

/// The license every object declares (GPL: some helpers the programs call are GPL-only); it
/// lives here, with the panic handler, because every program links this crate.
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // The verifier rejects any program that could reach this; it exists to satisfy `no_std`.
    loop {}
}
