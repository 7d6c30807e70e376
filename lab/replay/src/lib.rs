//! `zrlab-replay`: packet-trace replay, incidents reproduced from a pcap. It sits on
//! `zrlab-scenario` (deployments, events, the keeper's handoff); it must not import the binary.
//!
//! - traces are classic pcap files, read and written by [`zrlab_wire::pcap`];
//! - [`generate`]: seeded traces of what an LB node receives: long-lived TCP flows with handshakes
//!   (and the server-id echo), QUIC-like UDP flows that switch to server-issued connection ids,
//!   SYN bursts, a share of malformed frames;
//! - [`config`]: the LB configuration a replay runs with (VIPs, reals, health, server ids);
//! - [`offline`]: every packet of a trace through `xdp_lb` with `BPF_PROG_TEST_RUN` (the
//!   connection table carries over from packet to packet), the frames it emitted, and a
//!   per-flow summary of which real each flow went to.
//!
//! - [`lab`]: the trace into the lab, through router, LB nodes and backends, with events at
//!   packet numbers, captures at every hop and a verdict per flow.

pub mod config;
pub mod generate;
pub mod lab;
pub mod offline;
