//! The transport protocols the lab carries: a VIP's, a flow's, a trace's.

use serde::{Deserialize, Serialize};

/// TCP or UDP (in files and reports: `tcp`, `udp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP: long-lived connections.
    Tcp,
    /// UDP: QUIC-like flows.
    Udp,
}

impl Proto {
    /// The IP protocol number (RFC 790's assigned numbers: TCP 6, UDP 17).
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
        }
    }
}

impl std::fmt::Display for Proto {
    /// As files and reports write it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}
