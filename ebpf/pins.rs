// Pins of the kernel-side build (DESIGN.md section 3): the one place they are written down.
// Included (`include!`) by `xtask/src/setup.rs`, which installs them, and by `lab/build.rs`,
// which builds with them; keep it free of anything but constants.

/// Toolchain that compiles the eBPF crate (rustc 1.97, LLVM 22.1), installed with `rust-src`.
/// Its LLVM must match the one `bpf-linker` links against.
const EBPF_TOOLCHAIN: &str = "nightly-2026-05-20";

/// bpf-linker release, installed with `cargo install --locked --no-default-features
/// --features llvm-<LLVM_MAJOR>`.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// LLVM major version bpf-linker is built against (Debian's `llvm-<N>-dev`).
const LLVM_MAJOR: &str = "22";
