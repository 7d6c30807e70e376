//! One node of a built lab: its namespace and the netlink connection inside it.

use crate::spec::Role;
use zrlab_host::{netns::Netns, nl::Nl};

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
