//! Offline replay: every frame of a trace through `xdp_lb` with `BPF_PROG_TEST_RUN`, in order,
//! with one loaded program whose connection tables carry over from frame to frame, as on an LB
//! node that received the trace (`cargo xtask replay offline`).
//!
//! The result: the frames the program emitted (`XDP_TX`: the encapsulated packets, for an output
//! pcap), counts per verdict, and per flow (protocol, client, VIP) the reals its packets went
//! to, in order. A flow whose packets went to more than one real is **split**. Non-IP frames
//! (by EtherType) are skipped and counted; IP frames that are not TCP or UDP count under one
//! flow per protocol and address pair, IP frames whose header does not parse under one flow. The program runs on the calling thread's CPU; a flow whose frames ran on
//! different CPUs is found in the connection table every CPU shares, as on a real node.

use std::{collections::BTreeMap, fmt::Write as _, net::IpAddr};

use serde::Serialize;

use crate::config::LbConfig;
use zrlab_control::lb::{Balancer, Settings, run_once};
use zrlab_host::error::Result;
use zrlab_wire::{
    packet::{ETH_P_IP, ETH_P_IPV6, EthPayload, FrameRepr, IpPayload},
    pcap::Frame,
};

/// XDP verdicts by number.
const VERDICTS: [&str; 4] = ["aborted", "drop", "pass", "tx"];

/// One flow's replay.
#[derive(Clone, Debug, Serialize)]
pub struct FlowSummary {
    /// `tcp 198.51.100.2:20000 > 203.0.113.10:8080` (or `udp`, or `ip <proto>` without ports).
    pub flow: String,
    /// 1-based number of its first frame in the trace.
    pub first_frame: usize,
    /// Its frames.
    pub frames: u64,
    /// Frames by verdict.
    pub verdicts: BTreeMap<&'static str, u64>,
    /// The reals its transmitted frames went to, in the order first seen.
    pub reals: Vec<IpAddr>,
    /// Frame numbers (1-based) where the real changed.
    pub moved_at: Vec<usize>,
    /// Whether its frames are addressed to a configured VIP (only those flows are judged).
    pub to_vip: bool,
    /// The real of its last transmitted frame.
    #[serde(skip)]
    last_real: Option<IpAddr>,
}

impl FlowSummary {
    /// Whether the flow went to more than one real.
    pub fn split(&self) -> bool {
        self.reals.len() > 1
    }
}

/// A whole replay.
#[derive(Clone, Debug, Serialize)]
pub struct Offline {
    /// Frames in the trace.
    pub frames: u64,
    /// Non-IP frames, not replayed.
    pub skipped_non_ip: u64,
    /// Replayed frames by verdict.
    pub verdicts: BTreeMap<&'static str, u64>,
    /// Per flow, in order of first appearance.
    pub flows: Vec<FlowSummary>,
    /// What the program transmitted, in order (timestamps of the input frames).
    #[serde(skip)]
    pub outputs: Vec<Frame>,
}

impl Offline {
    /// Flows split between reals.
    pub fn split_flows(&self) -> usize {
        self.flows.iter().filter(|f| f.split()).count()
    }

    /// Flows the replay judges: addressed to a VIP, with at least one frame the LB sent on.
    pub fn judged_flows(&self) -> usize {
        self.flows.iter().filter(|f| f.to_vip && !f.reals.is_empty()).count()
    }

    /// Why the replay cannot be judged, if it cannot: no flow to judge is no pass.
    pub fn not_judged(&self) -> Option<String> {
        (self.judged_flows() == 0).then(|| {
            format!(
                "nothing to judge: of {} flows, none addressed to a configured VIP had a frame the LB sent on",
                self.flows.len()
            )
        })
    }

    /// A stable text summary (the suites snapshot it).
    pub fn summary(&self) -> String {
        let verdicts =
            |v: &BTreeMap<&str, u64>| v.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ");
        let mut out = format!(
            "frames {} (non-IP skipped {}): {}\nflows {}, judged {}, split {}\n",
            self.frames,
            self.skipped_non_ip,
            verdicts(&self.verdicts),
            self.flows.len(),
            self.judged_flows(),
            self.split_flows()
        );
        for f in &self.flows {
            let reals: Vec<String> = f.reals.iter().map(ToString::to_string).collect();
            let _ = write!(
                out,
                "{} (from frame {}): {} frames, {}",
                f.flow,
                f.first_frame,
                f.frames,
                verdicts(&f.verdicts)
            );
            if !reals.is_empty() {
                let _ = write!(out, "; to {}", reals.join(" then "));
            }
            if f.split() {
                let _ = write!(out, " SPLIT at frames {:?}", f.moved_at);
            }
            out.push('\n');
        }
        out
    }
}

/// Replays `frames` through a fresh `xdp_lb` configured by `config`.
pub fn run(frames: &[Frame], config: &LbConfig) -> Result<Offline> {
    let mut lb = Balancer::load(&Settings::default())?;
    config.apply(&mut lb)?;
    let program = lb.program("xdp_lb")?;
    let mut flows: Vec<FlowSummary> = Vec::new();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    let mut replay = Offline {
        frames: frames.len() as u64,
        skipped_non_ip: 0,
        verdicts: BTreeMap::new(),
        flows: Vec::new(),
        outputs: Vec::new(),
    };
    for (i, frame) in frames.iter().enumerate() {
        let number = i + 1;
        let Some(flow) = flow_of(&frame.data) else {
            replay.skipped_non_ip += 1;
            continue;
        };
        let (verdict, output) = run_once(program, &frame.data)?;
        let name = VERDICTS.get(verdict as usize).copied().unwrap_or("unknown");
        *replay.verdicts.entry(name).or_default() += 1;
        let at = *index.entry(flow.clone()).or_insert_with(|| {
            flows.push(FlowSummary {
                flow,
                to_vip: config.addresses_a_vip(&frame.data),
                first_frame: number,
                frames: 0,
                verdicts: BTreeMap::new(),
                reals: Vec::new(),
                moved_at: Vec::new(),
                last_real: None,
            });
            flows.len() - 1
        });
        let summary = &mut flows[at];
        summary.frames += 1;
        *summary.verdicts.entry(name).or_default() += 1;
        if name == "tx" {
            if let Some(real) = outer_destination(&output)
                && summary.last_real != Some(real)
            {
                if summary.last_real.is_some() {
                    summary.moved_at.push(number);
                }
                summary.last_real = Some(real);
                if !summary.reals.contains(&real) {
                    summary.reals.push(real);
                }
            }
            replay.outputs.push(Frame { at: frame.at, data: output });
        }
    }
    replay.flows = flows;
    Ok(replay)
}

/// The flow a frame belongs to; `None` for non-IP frames (by EtherType). IP frames whose header
/// does not parse belong to one flow of their own: the LB still sees them.
pub(super) fn flow_of(data: &[u8]) -> Option<String> {
    let ethertype = u16::from_be_bytes(data.get(12..14)?.try_into().ok()?);
    if ethertype != ETH_P_IP && ethertype != ETH_P_IPV6 {
        return None;
    }
    let Some(EthPayload::Ip(ip)) = FrameRepr::parse(data).map(|f| f.payload) else {
        return Some("ip (header does not parse)".into());
    };
    let addr = |a: IpAddr, port: u16| match a {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    };
    Some(match &ip.payload {
        IpPayload::Tcp(t) => format!("tcp {} > {}", addr(ip.src, t.sport), addr(ip.dst, t.dport)),
        IpPayload::Udp(u) => format!("udp {} > {}", addr(ip.src, u.sport), addr(ip.dst, u.dport)),
        IpPayload::Ip(_) => format!("ip-in-ip {} > {}", ip.src, ip.dst),
        IpPayload::Other(proto, payload) => match icmp_error_about(*proto, payload) {
            // An ICMP error belongs with the flow whose packet it quotes (the LB sends it to
            // that flow's real): errors about different flows are different flows.
            Some(about) => format!("icmp error about {about}"),
            None => format!("ip {proto} {} > {}", ip.src, ip.dst),
        },
    })
}

/// The flow an ICMP (`proto` 1) or ICMPv6 (58) error `message` quotes, written from the client's
/// side (`udp 198.51.100.2:40000 > 203.0.113.10:443`): destination unreachable, or ICMPv6 packet
/// too big, quoting a TCP or UDP header's ports. `None` for anything else.
fn icmp_error_about(proto: u8, message: &[u8]) -> Option<String> {
    let kind = *message.first()?;
    let quote = message.get(8..)?;
    let (header, l4, src, dst): (usize, u8, IpAddr, IpAddr) = match (proto, kind) {
        (1, 3) if quote.first()? >> 4 == 4 => {
            let header = usize::from(quote[0] & 0x0f) * 4;
            let addr = |at: usize| Some(IpAddr::from(<[u8; 4]>::try_from(quote.get(at..at + 4)?).ok()?));
            (header, *quote.get(9)?, addr(12)?, addr(16)?)
        }
        (58, 1 | 2) if quote.first()? >> 4 == 6 => {
            let addr = |at: usize| Some(IpAddr::from(<[u8; 16]>::try_from(quote.get(at..at + 16)?).ok()?));
            (40, *quote.get(6)?, addr(8)?, addr(24)?)
        }
        _ => return None,
    };
    let ports = quote.get(header..header + 4)?;
    let (sport, dport) = (u16::from_be_bytes([ports[0], ports[1]]), u16::from_be_bytes([ports[2], ports[3]]));
    let name = match l4 {
        6 => "tcp",
        17 => "udp",
        _ => return None,
    };
    let addr = |a: IpAddr, port: u16| match a {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    };
    Some(format!("{name} {} > {}", addr(dst, dport), addr(src, sport)))
}

/// The outer destination of an encapsulated frame.
pub(super) fn outer_destination(data: &[u8]) -> Option<IpAddr> {
    FrameRepr::parse(data)?.ip_packet().map(|ip| ip.dst)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ICMP port unreachable from a client quoting a UDP reply of the VIP is the quoted
    /// flow's, from the client's side; an ICMPv6 packet too big likewise; other messages and
    /// quotes without ports are not.
    #[test]
    fn an_icmp_error_belongs_to_the_flow_it_quotes() {
        let mut v4 = vec![3, 3, 0, 0, 0, 0, 0, 0, 0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0];
        v4.extend_from_slice(&[203, 0, 113, 10, 198, 51, 100, 2, 0x01, 0xbb, 0x9c, 0x40, 0, 8, 0, 0]);
        assert_eq!(icmp_error_about(1, &v4).as_deref(), Some("udp 198.51.100.2:40000 > 203.0.113.10:443"));
        let mut v6 = vec![2, 0, 0, 0, 0, 0, 5, 0, 0x60, 0, 0, 0, 0, 8, 6, 64];
        v6.extend_from_slice(&"2001:db8:ffff::10".parse::<std::net::Ipv6Addr>().expect("address").octets());
        v6.extend_from_slice(&"2001:db8:100::2".parse::<std::net::Ipv6Addr>().expect("address").octets());
        v6.extend_from_slice(&[0, 80, 0x9c, 0x41]);
        assert_eq!(icmp_error_about(58, &v6).as_deref(), Some("tcp [2001:db8:100::2]:40001 > [2001:db8:ffff::10]:80"));
        let echo = [8, 0, 0, 0, 0, 1, 0, 1];
        assert_eq!(icmp_error_about(1, &echo), None);
        assert_eq!(icmp_error_about(1, &v4[..8 + 20 + 2]), None, "a quote without both ports");
    }
}
