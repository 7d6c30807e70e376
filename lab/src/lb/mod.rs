//! The XDP L4 load balancer's user space: Maglev ring generation ([`maglev`]) and the per-node
//! control plane ([`balancer`]).

pub mod balancer;
pub mod maglev;

pub use balancer::{Balancer, Counters, Proto, RealSpec, Settings, VipSpec};
