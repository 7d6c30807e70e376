//! The zero-reset traffic-engineering lab: network-namespace topologies, the control plane, the
//! workloads that measure resets, misroutes and drops, scenarios with their negative controls,
//! and reports.
//!
//! Module map:
//! - [`netns`], [`cgroup`], [`nl`]: the kernel objects, one operation per function;
//! - [`lb`]: the XDP load balancer's control plane (Maglev, maps, counters);
//! - [`topology`]: topology files and the built, self-removing [`topology::Lab`];
//! - [`workload`]: the service, the client flows, their accounting;
//! - [`scenario`]: scenario files, expectations, the runner;
//! - [`packet`]: typed test packets (emit, parse, describe) for conformance and fuzzing;
//! - [`capture`]: `AF_PACKET` captures inside the lab; [`pcap`]: reading and writing pcap files;
//! - [`replay`]: packet traces: generated, replayed offline through the LB;
//! - [`report`]: table, JSON and Markdown;
//! - [`clean`], [`run_id`]: finding and removing what killed runs left; [`keep`]: a kept run's
//!   live data path (the keeper process, `status`, `event`), started through [`handoff`];
//! - [`port443`]: the many-sockets-on-443 measurements and bind-conflict cases;
//! - [`server_id`]: which backend carries which server id, and which ids are live;
//! - [`release`]: how old and new process of a service hand over its sockets;
//! - [`timeline`]: a run's per-second view (capacity, failures, releases) and its SVG plot;
//! - [`tpr`]: the sock_ops programs that put the server id in a TCP header option;
//! - [`features`]: kernel feature probes; [`bpf`]: the embedded eBPF objects.

pub mod bpf;
mod bpf_sys;
pub mod capture;
pub mod cgroup;
pub mod clean;
pub mod error;
pub mod ethtool;
pub mod features;
pub mod handoff;
pub mod keep;
pub mod lb;
pub mod netns;
pub mod nl;
pub mod packet;
pub mod pcap;
pub mod port443;
pub mod release;
pub mod replay;
pub mod report;
pub mod run_id;
pub mod scenario;
pub mod server_id;
pub mod spec;
pub mod timeline;
pub mod topology;
pub mod tpr;
pub mod workload;

pub use error::{LabError, Result};
