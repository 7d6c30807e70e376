//! `xdp_pass`: passes every frame to the stack and counts it.
//!
//! The lab attaches it to veth peers that receive `XDP_TX` frames (a veth peer needs an XDP
//! program for such frames to arrive, DESIGN.md section 3), and the build-chain test runs it
//! through `BPF_PROG_TEST_RUN` to prove the embedded object loads and runs.

/// Name of the per-CPU array of counters.
pub const COUNTERS_MAP: &str = "PASS_COUNTERS";

/// Slot of the counters map that counts frames the program saw.
pub const SLOT_FRAMES: u32 = 0;

/// Number of slots in the counters map.
pub const SLOTS: u32 = 1;
