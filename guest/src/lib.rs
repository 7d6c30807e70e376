//! The guest side of the kernel matrix (`cargo xtask matrix`), shared with the host.
//!
//! - [`plan`]: what to run, as a line-based text file the host writes and the guest reads
//!   (no serde: `zrlab-init` links statically against nothing but libc);
//! - [`runner`]: runs a plan's steps one after another, each with a timeout, its output in a
//!   log file and its outcome in `results.txt`. The host kernel runs the same plan natively
//!   through this module; under QEMU, `zrlab-init` runs it as PID 1;
//! - [`boot`]: the initramfs's own configuration (modules to load, 9p shares to mount).
//!
//! What this crate does not do: decide what a result means. The host reads `results.txt` and
//! the step logs and turns them into report cells.

pub mod boot;
pub mod plan;
pub mod runner;

/// The line the init prints when every step ran and exited 0 (or was skipped by a probe).
pub const INIT_SUCCESS: &str = "init: success";
/// The line the init prints otherwise.
pub const INIT_FAILURE: &str = "init: failure";
/// Prefix of the init's progress lines on the console (`init: step NAME ...`).
pub const STEP_MARKER: &str = "init: step ";
