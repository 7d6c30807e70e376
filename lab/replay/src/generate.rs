//! Seeded traces of what an LB node receives from clients (`cargo xtask trace gen`).
//!
//! Every trace is a pure function of its [`GenOptions`]: the same options write the same bytes,
//! so the committed traces under `fixtures/traces/` can be regenerated and checked. Flows are
//! interleaved round by round (each round, every flow sends its next packet), one round every
//! [`ROUND`].
//!
//! - `tcp`: long-lived connections: SYN, the handshake's final ACK, then requests (PSH|ACK with
//!   a line of payload). With server ids, every segment after the SYN echoes one (the TPR
//!   option, kind 0xB7), as the lab's client program does;
//! - `quic`: QUIC-like flows: an Initial with a random destination CID, then short headers whose
//!   CID carries a server id (v3 layout), as the lab's service issues them;
//!
//! Which id a flow carries ([`Ids`]): the id of the real an LB with a given configuration sends
//! its first packet to (the reference model, `lb::model`, routes it), as in a capture of a real
//! fleet, where the server that answered the SYN is the one whose id the client echoes; or one
//! drawn at random from a list (a fleet whose ids disagree with its LBs); or none.
//! - `syn-burst`: one SYN from each of many source ports;
//! - any kind with `malformed_pct`: that share of frames is replaced by a malformed one (cut
//!   short, a bad IPv4 header length, an IP length longer than the frame, a TPR option of the
//!   wrong length, a non-IP frame).

use std::{net::IpAddr, time::Duration};

use rand::{Rng as _, SeedableRng as _, seq::IndexedRandom as _};
use rand_chacha::ChaCha8Rng;

use crate::config::LbConfig;
use zrlab_control::lb::{
    Settings,
    model::{Model, XdpAction},
};
use zrlab_wire::{
    packet::{ACK, FrameRepr, IpPayload, IpRepr, PSH, SYN, TcpRepr, UdpRepr, tcp_options::TcpOption},
    pcap::Frame,
    quic::{CID_LEN, CidVersion, Datagram, Header, LongType, VERSION_1, cid_for},
};

/// Time between two rounds.
pub(crate) const ROUND: Duration = Duration::from_millis(10);
/// First client port (flow `i` uses `FIRST_PORT + i`).
pub(crate) const FIRST_PORT: u16 = 20_000;

/// What a trace holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Long-lived TCP connections.
    Tcp,
    /// QUIC-like UDP flows.
    Quic,
    /// SYNs from many ports.
    SynBurst,
}

/// How to generate.
#[derive(Clone, Debug)]
pub struct GenOptions {
    /// What the trace holds.
    pub kind: Kind,
    /// Seed of every random choice.
    pub seed: u64,
    /// Flows.
    pub flows: u32,
    /// Packets per flow (SYN bursts: 1).
    pub packets: u32,
    /// The client's address.
    pub client: IpAddr,
    /// The VIP.
    pub vip: IpAddr,
    /// The VIP's port.
    pub port: u16,
    /// Which server id each flow carries.
    pub ids: Ids,
    /// Percent of frames replaced by malformed ones.
    pub malformed_pct: u32,
}

/// Which server id a flow carries.
#[derive(Clone, Debug)]
pub enum Ids {
    /// None: TCP without the option (QUIC needs ids).
    None,
    /// One drawn at random per flow from this list.
    Random(Vec<u32>),
    /// The id of the real an LB with this configuration sends the flow's first packet to.
    AsRouted(Box<LbConfig>),
}

/// A problem with the options.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("trace gen: {0}")]
pub struct GenError(String);

/// The trace's frames.
pub fn generate(opts: &GenOptions) -> Result<Vec<Frame>, GenError> {
    if opts.client.is_ipv4() != opts.vip.is_ipv4() {
        return Err(GenError("client and VIP must be of one address family".into()));
    }
    if opts.flows == 0 || opts.flows > 20_000 {
        return Err(GenError(format!("flows must be 1..=20000, not {}", opts.flows)));
    }
    if opts.malformed_pct > 100 {
        return Err(GenError(format!("malformed share {}% is above 100%", opts.malformed_pct)));
    }
    if opts.kind == Kind::Quic && matches!(opts.ids, Ids::None) {
        return Err(GenError("QUIC flows need server ids for their connection ids".into()));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let cids: Vec<[u8; CID_LEN]> = (0..opts.flows).map(|_| rng.random()).collect();
    let ids: Vec<Option<u32>> = match &opts.ids {
        Ids::None => vec![None; opts.flows as usize],
        Ids::Random(list) => (0..opts.flows).map(|_| list.choose(&mut rng).copied()).collect(),
        Ids::AsRouted(config) => {
            let mut model = Model::new(Settings::default());
            for (spec, reals) in config.vips() {
                model.set_vip(&spec, &reals).map_err(|e| GenError(format!("the configuration's rings: {e}")))?;
            }
            (0..opts.flows)
                .map(|flow| {
                    let port = FIRST_PORT + flow as u16;
                    let first = match opts.kind {
                        Kind::Quic => quic(opts, port, 0, None, cids[flow as usize]),
                        Kind::Tcp | Kind::SynBurst => tcp(opts, port, 0, None),
                    };
                    match model.process(&first) {
                        XdpAction::Tx { real, .. } => config.server_id_of(real),
                        _ => None,
                    }
                })
                .collect()
        }
    };
    let packets = if opts.kind == Kind::SynBurst { 1 } else { opts.packets.max(1) };
    let mut frames = Vec::new();
    for round in 0..packets {
        for flow in 0..opts.flows {
            let port = FIRST_PORT + flow as u16;
            let at = ROUND * round + Duration::from_micros(u64::from(flow));
            let mut data = match opts.kind {
                Kind::Tcp | Kind::SynBurst => tcp(opts, port, round, ids[flow as usize]),
                Kind::Quic => quic(opts, port, round, ids[flow as usize], cids[flow as usize]),
            };
            if rng.random_range(0..100) < opts.malformed_pct {
                data = malform(data, &mut rng);
            }
            frames.push(Frame { at, data });
        }
    }
    Ok(frames)
}

fn frame(opts: &GenOptions, payload: IpPayload) -> Vec<u8> {
    FrameRepr::with_ip(IpRepr::new(opts.client, opts.vip, payload)).emit()
}

/// Packet `round` of a TCP flow from `port`.
fn tcp(opts: &GenOptions, port: u16, round: u32, id: Option<u32>) -> Vec<u8> {
    let isn = 1_000 + u32::from(port);
    let mut segment = TcpRepr::new(port, opts.port, if round == 0 { SYN } else { ACK });
    segment.seq = isn + round.saturating_sub(1) * 16 + u32::from(round > 0);
    segment.ack = if round == 0 { 0 } else { 5_000 + round * 64 };
    if round >= 2 {
        segment.flags = PSH | ACK;
        segment.payload = format!("REQ {port} {}\n", round - 2).into_bytes();
    }
    if round > 0
        && let Some(id) = id
    {
        segment.options = vec![TcpOption::NoOperation, TcpOption::NoOperation, TcpOption::ServerId(id)];
    }
    frame(opts, IpPayload::Tcp(segment))
}

/// Packet `round` of a QUIC flow from `port`: an Initial, then short headers to the server's CID.
fn quic(opts: &GenOptions, port: u16, round: u32, id: Option<u32>, entropy: [u8; CID_LEN]) -> Vec<u8> {
    let header = match (round, id.and_then(|id| cid_for(CidVersion::V3, id, entropy))) {
        (1.., Some(dcid)) => Header::Short { dcid },
        _ => Header::Long { kind: LongType::Initial, version: VERSION_1, dcid: entropy.to_vec(), scid: vec![0x5a; 8] },
    };
    let datagram = Datagram { header, payload: format!("REQ {port} {round}\n").into_bytes() };
    frame(opts, IpPayload::Udp(UdpRepr { sport: port, dport: opts.port, payload: datagram.emit() }))
}

/// One of the malformed variants of `frame`.
fn malform(mut frame: Vec<u8>, rng: &mut ChaCha8Rng) -> Vec<u8> {
    let v4 = frame.get(12..14) == Some(&[0x08, 0x00]);
    match rng.random_range(0..5) {
        // Cut inside the transport header.
        0 => frame.truncate(14 + if v4 { 20 } else { 40 } + 4),
        // IPv4 header length 4 words (below the minimum); IPv6: a bad version nibble.
        1 => frame[14] = if v4 { 0x44 } else { 0x50 },
        // An IP length longer than the frame.
        2 => {
            let at = if v4 { 16 } else { 18 };
            frame[at] = 0xff;
        }
        // Not IP at all (ARP's EtherType).
        3 => frame[12..14].copy_from_slice(&[0x08, 0x06]),
        // A byte flipped in the payload area (valid headers, odd content).
        _ => {
            let last = frame.len() - 1;
            frame[last] ^= 0xff;
        }
    }
    frame
}
