//! Topologies: the file format ([`spec`]) and the built lab ([`Lab`]).

mod build;
mod losses;
pub mod spec;

pub use build::{Lab, Node, Spawned};
pub use losses::Loss;
pub use spec::{Family, Role, Topology};
