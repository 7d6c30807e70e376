//! The XDP L4 load balancer's user space: Maglev ring generation ([`maglev`]) and the per-node
//! control plane ([`balancer`]), and the backends' decapsulation ([`decap`]).

pub mod balancer;
pub mod decap;
pub mod maglev;

pub use balancer::{Balancer, Counters, Proto, RealSpec, Settings, VipSpec};
pub use decap::{Decap, DecapCounters};
