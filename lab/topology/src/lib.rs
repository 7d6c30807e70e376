//! `zrlab-topology`: topologies, the file format ([`spec`]) and the built lab ([`Lab`]): network
//! namespaces, veths, addresses, routes and nexthop groups made through `zrlab-host`, removed on
//! drop.
//!
//! It uses `zrlab-host` alone; it must not import workloads, the control plane or scenarios.

mod build;
mod losses;
mod node;
pub mod spec;

pub use build::{Lab, Spawned};
pub use node::Node;

/// A change of a nexthop group's members, as a timeline applies it (the events that touch
/// groups, in the topology's own terms).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupChange {
    /// `member` left `group`.
    Remove {
        /// The group.
        group: String,
        /// The member node.
        member: String,
    },
    /// `member`'s slot of `group` went to `with`.
    Replace {
        /// The group.
        group: String,
        /// The member node that left.
        member: String,
        /// The node that took its slot.
        with: String,
    },
    /// `member` joined `group` at the end.
    Add {
        /// The group.
        group: String,
        /// The member node.
        member: String,
    },
}

impl GroupChange {
    /// The group it changes.
    pub fn group(&self) -> &str {
        match self {
            Self::Remove { group, .. } | Self::Replace { group, .. } | Self::Add { group, .. } => group,
        }
    }
}
pub use losses::Loss;
pub use spec::{Role, Topology};
