//! Zero-downtime release on a backend: how old and new process of a service hand over its
//! sockets (DESIGN.md section 1, "Socket-level release").
//!
//! Public surface so far: [`ReuseportDispatch`], the `SK_REUSEPORT` dispatcher (sockets in
//! generations, the ready generation takes new flows, the migrate variant moves a closing
//! listener's requests) with its [`ReuseportCounters`]. The release strategies and their
//! scenarios build on it (issue "Zero-downtime release on backends").

mod reuseport;

pub use reuseport::{Dispatch, ReuseportCounters, ReuseportDispatch};
