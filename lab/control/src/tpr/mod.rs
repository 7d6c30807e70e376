//! Stateless routing's host side: the `tpr` sock_ops programs (the server id in a TCP header
//! option; wire format in `zrlab_common::tpr`), loaded and attached to a node's cgroup.
//!
//! Public surface: [`Side`], [`SockOpsTpr`] (one side attached to one cgroup, with its id and
//! counters) and [`TprCounters`]; [`bench`] measures what the mechanism costs. Which id a backend carries is the server-id registry's
//! business (`crate::server_id`); this module only programs what it is told.

mod sockops;

pub use sockops::{Side, SockOpsTpr, TprCounters};
