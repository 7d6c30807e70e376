//! Where a lab lost packets: the kernel's own drop counters in every namespace, read when a
//! run ends, so that a report that counts drops also says at which hop they happened.
//!
//! Two sources per node: each link's `rx_dropped`/`tx_dropped` (for a veth these include XDP
//! frames its peer had no ring space for) and the protocol counters of
//! `/proc/thread-self/net/{snmp,netstat}` read from a thread inside the namespace (socket
//! buffers that overflowed, listen queues that did, IP discards). Only nonzero counters are
//! kept: a clean run reports nothing.

use serde::Serialize;

use crate::node::Node;
use zrlab_host::error::{LabError, Result};

/// The protocol counters that mean a packet was lost (`Proto:Name` as the kernel writes them).
const PROTOCOL_DROPS: &[&str] = &[
    "Ip:InDiscards",
    "Ip:OutDiscards",
    "Ip:OutNoRoutes",
    "Ip:InHdrErrors",
    "Ip:InAddrErrors",
    "Udp:InErrors",
    "Udp:RcvbufErrors",
    "Udp:SndbufErrors",
    "Udp:NoPorts",
    "TcpExt:ListenOverflows",
    "TcpExt:ListenDrops",
    "TcpExt:TCPBacklogDrop",
    "TcpExt:TCPRcvQDrop",
    "TcpExt:TCPReqQFullDrop",
];

/// One nonzero drop counter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Loss {
    /// The node.
    pub node: String,
    /// `<ifname>:rx_dropped`, `<ifname>:tx_dropped` or a protocol counter (`Udp:RcvbufErrors`).
    pub counter: String,
    /// Its value since the namespace was created.
    pub count: u64,
}

/// The nonzero drop counters of `node`.
pub(super) async fn of_node(name: &str, node: &Node) -> Result<Vec<Loss>> {
    let mut losses = Vec::new();
    let mut push = |counter: String, count: u64| {
        if count > 0 {
            losses.push(Loss { node: name.to_owned(), counter, count });
        }
    };
    for link in node.nl.links().await? {
        push(format!("{}:rx_dropped", link.name), link.rx_dropped);
        push(format!("{}:tx_dropped", link.name), link.tx_dropped);
    }
    for (counter, count) in protocol_counters_of(node)? {
        if PROTOCOL_DROPS.contains(&counter.as_str()) {
            push(counter, count);
        }
    }
    Ok(losses)
}

/// Every protocol counter of `node` (`/proc/thread-self/net/{snmp,netstat}`), as
/// `("Proto:Name", value)`.
pub(super) fn protocol_counters_of(node: &Node) -> Result<Vec<(String, u64)>> {
    let texts = node.netns.run(|| {
        ["snmp", "netstat"].map(|file| {
            let path = format!("/proc/thread-self/net/{file}");
            std::fs::read_to_string(&path).map_err(|e| LabError::os("read", path, e))
        })
    })?;
    let mut counters = Vec::new();
    for text in texts {
        counters.extend(protocol_counters(&text?));
    }
    Ok(counters)
}

/// The counters of a `/proc/net/snmp`-style file: pairs of lines `Proto: names...` and
/// `Proto: values...`, as `("Proto:Name", value)`. Values that are not counters (negative,
/// like `Tcp:MaxConn`) are left out.
fn protocol_counters(text: &str) -> Vec<(String, u64)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for pair in lines.chunks_exact(2) {
        let (Some((proto, names)), Some((proto2, values))) = (pair[0].split_once(':'), pair[1].split_once(':')) else {
            continue;
        };
        if proto != proto2 {
            continue;
        }
        for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
            if let Ok(value) = value.parse::<u64>() {
                out.push((format!("{proto}:{name}"), value));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_pair_header_and_value_lines() {
        let text = "Ip: Forwarding DefaultTTL InDiscards\nIp: 1 64 3\n\
                    Tcp: RtoAlgorithm MaxConn\nTcp: 1 -1\n\
                    Udp: InDatagrams RcvbufErrors\nUdp: 10 2\n";
        assert_eq!(
            protocol_counters(text),
            [
                ("Ip:Forwarding".to_owned(), 1),
                ("Ip:DefaultTTL".to_owned(), 64),
                ("Ip:InDiscards".to_owned(), 3),
                ("Tcp:RtoAlgorithm".to_owned(), 1),
                ("Udp:InDatagrams".to_owned(), 10),
                ("Udp:RcvbufErrors".to_owned(), 2),
            ]
        );
    }

    #[test]
    fn every_listed_counter_exists_on_this_kernel() {
        // A misspelt name would silently never match.
        let mut known = Vec::new();
        for file in ["snmp", "netstat"] {
            let text = std::fs::read_to_string(format!("/proc/thread-self/net/{file}")).unwrap();
            known.extend(protocol_counters(&text).into_iter().map(|(name, _)| name));
        }
        for name in PROTOCOL_DROPS {
            assert!(known.iter().any(|k| k == name), "{name} is not a counter of this kernel");
        }
    }
}
