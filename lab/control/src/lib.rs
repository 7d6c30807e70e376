//! `zrlab-control`: the embedded BPF objects and everything that programs them: the XDP load
//! balancer's control plane (maps, Maglev rings, counters) and its reference model, backend
//! decapsulation, server ids and their registry, the sock_ops TCP-option programs, and the
//! SK_REUSEPORT and SK_LOOKUP dispatchers of a release, the lab's link impairment, and handing a
//! loaded object over to a new version of itself while it runs.
//!
//! The only lab crate whose build needs the eBPF toolchain (`build.rs`). It must not import
//! the scenario, replay or binary crates.

pub mod bpf;
pub mod handover;
pub mod impair;
pub mod lb;
pub mod reuseport;
pub mod server_id;
pub mod sklookup;
pub mod tpr;
