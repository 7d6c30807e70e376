//! One node of a built lab: its namespace and the netlink connection inside it.

use super::spec::Role;
use crate::{netns::Netns, nl::Nl};

/// One node of the lab.
#[derive(Debug)]
pub struct Node {
    /// Its role in the topology.
    pub role: Role,
    /// Its namespace.
    pub netns: Netns,
    /// Netlink inside that namespace.
    pub nl: Nl,
}
