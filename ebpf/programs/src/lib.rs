//! Kernel-side helpers shared by the lab's eBPF programs.
//!
//! Each program is its own `[[bin]]` (one object file per program); this library holds what they
//! share. On the host the crate compiles to an empty library: `lab/build.rs` depends on it only
//! so that cargo rebuilds the objects when it changes.
#![no_std]

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // The verifier rejects any program that could reach this; it exists to satisfy `no_std`.
    loop {}
}
