//! The many-sockets-on-443 regression (DESIGN.md section 1): bind and listener-lookup scaling,
//! and the bind-conflict semantics of the incident.
//!
//! Old kernels keyed the bind hash by port alone: with thousands of sockets on 443, every
//! `bind()` walked one chain under a BH-disabling spinlock (CPU spikes, stalled softirqs), and
//! before the second listener hash (lhash2, 4.16/4.17) every SYN walked the listeners too. The
//! second bind hash (bhash2, 6.1) keys by address and port. [`scaling`] measures both costs as
//! ratios to N = 100 in the same run and names the verdict; [`conflicts`] records which
//! combinations of addresses and flags may share the port on the running kernel.
//!
//! Everything runs in namespaces of its own (named like lab runs, so `zrlab clean` finds a
//! killed run's leftovers); the machine's own sockets are never touched.

pub mod conflicts;
mod holder;
mod ping;
pub mod scaling;
mod sockets;
