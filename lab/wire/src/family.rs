//! The address family of an address, a socket, a route or a nexthop group.

use std::net::IpAddr;

use serde::Deserialize;

/// IPv4 or IPv6 (in files: `ipv4`, `ipv6`; IPv4 when a file leaves it out).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    /// IPv4.
    #[default]
    Ipv4,
    /// IPv6.
    Ipv6,
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Ipv4 => "IPv4",
            Self::Ipv6 => "IPv6",
        })
    }
}

impl Family {
    /// Whether `ip` is of this family.
    pub fn matches(self, ip: IpAddr) -> bool {
        matches!((self, ip), (Self::Ipv4, IpAddr::V4(_)) | (Self::Ipv6, IpAddr::V6(_)))
    }
}
