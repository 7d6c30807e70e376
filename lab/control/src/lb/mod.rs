//! The XDP L4 load balancer's user space: Maglev ring generation ([`maglev`]) and the per-node
//! control plane ([`balancer`]), its health checks ([`health`]), its in-place upgrades ([`upgrade`]), the backends' decapsulation ([`decap`]), and a reference
//! model of the data path ([`model`]) the suites diff the BPF program against.

pub(crate) mod balancer;
pub(crate) mod decap;
pub mod health;
mod inner;
pub mod maglev;
pub mod model;
pub mod upgrade;

pub use balancer::{Balancer, Counters, RealSpec, Settings, TableKey, VipOptions, VipSpec, run_once};
pub use decap::{Decap, DecapCounters};
pub use upgrade::{Upgrade, Version};
