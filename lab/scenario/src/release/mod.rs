//! Zero-downtime release on a backend: how old and new process of a service hand over its
//! sockets (DESIGN.md section 1, "Socket-level release").
//!
//! Public surface: the [`Strategy`] a scenario chooses (`[release]`: [`ReleaseSpec`]) and the
//! [`Fleet`] of a scenario's service processes that releases backends by it. Each strategy is
//! one variant of [`Strategy`] and one file implementing the fleet's `Dispatcher` trait
//! (`dispatcher.rs`): its processes' service flags and the steps of a release, and for the two
//! that dispatch in the kernel the socket map they keep: `reuseport_bpf.rs` (`SK_REUSEPORT`,
//! sockets in generations, the ready generation takes new flows, UDP flows stay with the process
//! their connection id names, the migrate variant moves a closing listener's requests) and
//! `sk_lookup.rs` (`SK_LOOKUP`, the ready slot takes new flows, UDP flows stay by 4-tuple).

mod dispatcher;
mod drain;
mod fds;
mod fleet;
mod probe;
mod restart;
mod reuseport_bpf;
mod sk_lookup;
mod strategy;
mod takeover;

pub use fleet::{Fleet, FleetCounters, Launched, ReleaseRecord, launch};
pub use probe::ProbeTally;
pub use strategy::{ReleaseSpec, Strategy};
