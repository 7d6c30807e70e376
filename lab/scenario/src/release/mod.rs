//! Zero-downtime release on a backend: how old and new process of a service hand over its
//! sockets (DESIGN.md section 1, "Socket-level release").
//!
//! Public surface: the [`Strategy`] a scenario chooses (`[release]`: [`ReleaseSpec`]), the
//! [`Fleet`] of a scenario's service processes that releases backends by it, and the two
//! dispatchers it deploys: [`ReuseportDispatch`] (`SK_REUSEPORT`, sockets in generations, the
//! ready generation takes new flows, UDP flows stay with the process their connection id names,
//! the migrate variant moves a closing listener's requests) and [`SkLookupDispatch`]
//! (`SK_LOOKUP`, the ready slot takes new flows, UDP flows stay by 4-tuple).

mod fds;
mod fleet;
mod strategy;

pub use fleet::{Fleet, FleetCounters, Launched, launch};
pub use strategy::{ReleaseSpec, Strategy};
