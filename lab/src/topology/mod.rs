//! Topologies: the file format ([`spec`]) and the built lab ([`Lab`]).

mod build;
pub mod spec;

pub use build::{Lab, Node, Spawned};
pub use spec::{Family, Role, Topology};
