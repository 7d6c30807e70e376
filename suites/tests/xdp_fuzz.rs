//! Seeded, reproducible fuzzing of `xdp_lb` and `xdp_decap` through `BPF_PROG_TEST_RUN`.
//!
//! Frames are valid packets (to VIPs and elsewhere, with random options, QUIC headers and
//! ports), then zero to three random mutations (byte flips, header-field rewrites, truncation,
//! trailing bytes, EtherType swaps), plus wholly random frames. Every frame must get the same
//! verdict and output from the BPF program as from the reference model; every `XDP_TX` output
//! must be a well-formed IPIP packet whose inner packet is the input's and whose outer
//! destination is a configured real; non-VIP input is never encapsulated. Every LB output is
//! then fed to `xdp_decap`, which must give back the input's IP packet.
//!
//! Each frame runs on a CPU the seeded generator picks (CPU 0 or 1 when two are online), so a
//! flow's packets meet different SYN caches and each CPU's share of the connection table, as they
//! do on a host whose NIC does not pin flows to CPUs; the model keeps each CPU's SYN cache.
//!
//! The default run is short; `ZRLAB_FUZZ_PACKETS=1000000` (what `cargo xtask fuzz` sets) runs a
//! million. `ZRLAB_FUZZ_SEED` picks the seed; a failure prints the seed and the frame's index.

mod common;

use std::net::IpAddr;

use common::xdp::*;
use rand::{Rng, SeedableRng, seq::IndexedRandom};
use rand_chacha::ChaCha8Rng;
use zrlab_control::lb::{Decap, model::XdpAction};
use zrlab_wire::{
    packet::{self, ACK, FrameRepr, IpPayload, PSH, SYN, tcp_options::TcpOption},
    quic::{CidVersion, LongType},
};

const DEFAULT_PACKETS: u64 = 20_000;
/// Frames per fresh LB: far fewer flows than the connection tables hold, so no eviction makes
/// the BPF tables differ from the model's (which never evicts).
const EPOCH: u64 = 8_192;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[test]
fn random_and_mutated_frames_agree_with_the_model() {
    common::require_root();
    let cpus = if have_two_cpus("the fuzz's second CPU (every frame runs on CPU 0)") { 2 } else { 1 };
    let packets = env_u64("ZRLAB_FUZZ_PACKETS", DEFAULT_PACKETS);
    let seed = env_u64("ZRLAB_FUZZ_SEED", 0x5eed);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let reals: Vec<IpAddr> = fixture_vips().iter().flat_map(|(_, r)| r.iter().map(|r| r.addr)).collect();
    let decap = Decap::load(&reals).expect("decap");
    let mut fx = Fixture::new();
    let mut tx = 0u64;
    for i in 0..packets {
        if i > 0 && i % EPOCH == 0 {
            assert_no_internal_errors(&fx, &decap);
            fx = Fixture::new();
        }
        let frame = generate(&mut rng);
        let cpu = rng.random_range(0..cpus);
        let context = || format!("seed {seed:#x}, frame {i} on CPU {cpu}: {}", hex(&frame));
        pin_to_cpu(cpu);
        let (verdict, output) = test_run(fx.lb.program("xdp_lb").unwrap(), &frame);
        match fx.model.process_on(cpu, &frame) {
            XdpAction::Pass(why) => assert_eq!((verdict, &output), (PASS, &frame), "pass ({why:?}); {}", context()),
            XdpAction::Drop(why) => assert_eq!(verdict, DROP, "drop ({why:?}); {}", context()),
            XdpAction::TooBig { output: expected, .. } => {
                assert_eq!((verdict, &output), (TX, &expected), "too big; {}", context());
            }
            XdpAction::Tx { real, output: expected, .. } => {
                assert_eq!(verdict, TX, "tx to {real}; {}", context());
                assert_eq!(output, expected, "output; {}", context());
                check_ipip(&frame, &output, &reals).unwrap_or_else(|e| panic!("{e}; {}", context()));
                let (verdict, inner) = test_run(decap.program().unwrap(), &output);
                assert_eq!(verdict, PASS, "decap; {}", context());
                assert_eq!(&inner[14..], &frame[14..14 + inner.len() - 14], "decap output; {}", context());
                tx += 1;
            }
        }
        // The decap program on arbitrary input: pass or drop, and a change only ever strips
        // exactly one outer header.
        let (verdict, output) = test_run(decap.program().unwrap(), &frame);
        assert!(verdict == PASS || verdict == DROP, "decap verdict {verdict}; {}", context());
        if verdict == PASS && output != frame {
            let outer = frame.len() - output.len();
            assert!(outer == 20 || outer == 40, "decap stripped {outer} bytes; {}", context());
            assert_eq!(&output[14..], &frame[14 + outer..], "decap kept the inner bytes; {}", context());
        }
    }
    assert_no_internal_errors(&fx, &decap);
    eprintln!("fuzzed {packets} frames (seed {seed:#x}), {tx} encapsulated");
    assert!(tx > packets / 10, "the generator reaches the encapsulation path ({tx} of {packets})");
}

/// Neither program took its internal-error exit (a failed check that earlier checks should
/// have made impossible: the packet passes, counted).
fn assert_no_internal_errors(fx: &Fixture, decap: &Decap) {
    let lb = fx.lb.counters().expect("LB counters").get(zrlab_common::lb::counter::INTERNAL);
    let decap = decap.counters().expect("decap counters").internal;
    assert_eq!((lb, decap), (0, 0), "internal errors (xdp_lb, xdp_decap)");
}

/// Checks an `XDP_TX` output: outer IPv4/IPv6 with protocol 4/41 matching the inner version,
/// lengths consistent, outer destination a configured real, inner packet equal to the input's.
fn check_ipip(input: &[u8], output: &[u8], reals: &[IpAddr]) -> Result<(), String> {
    let frame = FrameRepr::parse(output).ok_or("output shorter than an Ethernet header")?;
    let outer = frame.ip_packet().ok_or("output is not IP")?;
    if !reals.contains(&outer.dst) {
        return Err(format!("outer destination {} is not a configured real", outer.dst));
    }
    let outer_len = if outer.src.is_ipv4() { 20 } else { 40 };
    let inner = &output[14 + outer_len..];
    let input_ip_len = match input[14] >> 4 {
        4 => usize::from(u16::from_be_bytes([input[16], input[17]])),
        _ => 40 + usize::from(u16::from_be_bytes([input[18], input[19]])),
    };
    if inner != &input[14..14 + input_ip_len] {
        return Err("inner packet differs from the input".into());
    }
    match &outer.payload {
        IpPayload::Ip(_) | IpPayload::Other(4 | 41, _) => Ok(()),
        other => Err(format!("outer payload is not IPIP: {other:?}")),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const VIPS: [(&str, u16, bool); 7] = [
    ("203.0.113.10", 80, true),
    ("203.0.113.10", 443, false),
    ("203.0.113.10", 8080, false),
    ("2001:db8:ffff::10", 80, true),
    ("203.0.113.20", 0, true),
    ("2001:db8:ffff::20", 443, false),
    ("203.0.113.40", 80, true),
];

fn generate(rng: &mut ChaCha8Rng) -> Vec<u8> {
    if rng.random_ratio(1, 20) {
        let len = rng.random_range(14..200);
        let mut frame: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        // Keep some of them IP-shaped so they get past the first check.
        if rng.random_bool(0.5) {
            frame[12..14].copy_from_slice(if rng.random_bool(0.5) { &[0x08, 0x00] } else { &[0x86, 0xdd] });
        }
        return frame;
    }
    let mut frame = match rng.random_range(0..20) {
        0 | 1 => icmp_about(rng),
        2 => big(rng),
        _ => valid(rng),
    };
    for _ in 0..rng.random_range(0..=3) {
        mutate(rng, &mut frame);
    }
    frame
}

/// An ICMP (or ICMPv6) message to a VIP address quoting a random prefix of a packet from the
/// VIP to a client (a backend's reply): errors of every kind the LB routes, and others.
fn icmp_about(rng: &mut ChaCha8Rng) -> Vec<u8> {
    let (vip, port, tcp_vip) = *VIPS.choose(rng).unwrap();
    let v6 = vip.contains(':');
    let client = if v6 { "2001:db8:100::2" } else { CLIENT4 };
    let sport = if port == 0 { rng.random() } else { port };
    let cport = 40_000 + rng.random_range(0..256u16);
    let reply = if tcp_vip {
        tcp(vip, sport, client, cport, ACK, vec![])
    } else {
        udp(vip, sport, client, cport, b"REP 1 0\n")
    };
    let quoted = &reply[14..14 + rng.random_range(0..=reply.len() - 14)];
    let kind = if v6 { *[1u8, 2, 3, 128].choose(rng).unwrap() } else { *[3u8, 3, 11, 8].choose(rng).unwrap() };
    let word: [u8; 4] = rng.random();
    let builder = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let mut out = Vec::new();
    let code = rng.random_range(0..5);
    match (vip.parse::<IpAddr>().unwrap(), v6) {
        (IpAddr::V6(to), true) => builder
            .ipv6([0x20, 1, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xfe], to.octets(), 64)
            .icmpv6_raw(kind, code, word)
            .write(&mut out, quoted),
        (IpAddr::V4(to), false) => {
            builder.ipv4([192, 0, 2, 254], to.octets(), 64).icmpv4_raw(kind, code, word).write(&mut out, quoted)
        }
        _ => unreachable!("one family"),
    }
    .expect("an ICMP frame");
    out
}

/// A packet around the path MTUs of the fixture's reals (`fixture_path_mtus`), DF set or not.
fn big(rng: &mut ChaCha8Rng) -> Vec<u8> {
    let sport = 40_000 + rng.random_range(0..256u16);
    if rng.random_bool(0.5) {
        let mut repr = FrameRepr::parse(&tcp(CLIENT4, sport, "203.0.113.20", 22, ACK, vec![])).unwrap();
        if let packet::EthPayload::Ip(ip) = &mut repr.payload {
            ip.frag = if rng.random_bool(0.8) { 0x4000 } else { 0 };
            if let IpPayload::Tcp(tcp) = &mut ip.payload {
                tcp.payload = vec![0x5a; rng.random_range(1_300..1_360)];
            }
        }
        repr.emit()
    } else {
        udp("2001:db8:100::2", sport, "2001:db8:ffff::20", 443, &vec![0x5a; rng.random_range(1_200..1_260)])
    }
}

fn valid(rng: &mut ChaCha8Rng) -> Vec<u8> {
    let (vip, port, tcp_vip) = *VIPS.choose(rng).unwrap();
    let to_vip = rng.random_ratio(9, 10);
    let v6 = vip.contains(':');
    let dst = if to_vip {
        vip
    } else if v6 {
        "2001:db8:ffff::99"
    } else {
        "203.0.113.99"
    };
    let src = if v6 {
        *["2001:db8:100::2", "2001:db8:100::3"].choose(rng).unwrap()
    } else {
        *[CLIENT4, "198.51.100.3"].choose(rng).unwrap()
    };
    // A small port space: the flows stay well below the tables' sizes.
    let sport = 40_000 + rng.random_range(0..256u16);
    let dport = if port == 0 { rng.random() } else { port };
    if tcp_vip {
        let flags = *[SYN, ACK, ACK | PSH, SYN | ACK].choose(rng).unwrap();
        let mut options = Vec::new();
        for _ in 0..rng.random_range(0..4) {
            options.push(match rng.random_range(0..5) {
                0 => TcpOption::NoOperation,
                1 => TcpOption::MaxSegmentSize(1460),
                2 => TcpOption::Unknown { kind: 8, data: vec![0; 8] },
                _ => TcpOption::ServerId(*[0, 100, 200, 300, 400, 999].choose(rng).unwrap()),
            });
        }
        let mut frame = tcp(src, sport, dst, dport, flags, options);
        if rng.random_ratio(1, 10) {
            let mut repr = FrameRepr::parse(&frame).unwrap();
            if let packet::EthPayload::Ip(ip) = &mut repr.payload
                && let IpPayload::Tcp(tcp) = &mut ip.payload
            {
                tcp.payload = (0..rng.random_range(1..300)).map(|_| rng.random()).collect();
            }
            frame = repr.emit();
        }
        frame
    } else {
        let payload = match rng.random_range(0..4) {
            0 => quic_short(
                *[CidVersion::V1, CidVersion::V2, CidVersion::V3].choose(rng).unwrap(),
                *[100, 200, 300, 400, 999].choose(rng).unwrap(),
            ),
            1 => {
                let kind =
                    *[LongType::Initial, LongType::ZeroRtt, LongType::Handshake, LongType::Retry].choose(rng).unwrap();
                let len = rng.random_range(0..21);
                quic_long(kind, (0..len).map(|_| rng.random()).collect())
            }
            2 => (0..rng.random_range(0..40)).map(|_| rng.random()).collect(),
            _ => b"REQ 1 1\n".to_vec(),
        };
        udp(src, sport, dst, dport, &payload)
    }
}

/// Header offsets worth rewriting: version/IHL, lengths, fragment fields, protocol, TCP data
/// offset and flags, UDP length, the first payload bytes.
const HOT: [usize; 14] = [12, 13, 14, 16, 17, 18, 19, 20, 21, 23, 46, 47, 38, 39];

fn mutate(rng: &mut ChaCha8Rng, frame: &mut Vec<u8>) {
    match rng.random_range(0..5) {
        0 if !frame.is_empty() => {
            let at = rng.random_range(0..frame.len());
            frame[at] ^= 1 << rng.random_range(0..8);
        }
        1 => {
            let at = *HOT.choose(rng).unwrap();
            if at < frame.len() {
                frame[at] = rng.random();
            }
        }
        2 if frame.len() > 14 => {
            let len = rng.random_range(14..frame.len());
            frame.truncate(len);
        }
        3 => {
            for _ in 0..rng.random_range(1..50) {
                frame.push(rng.random());
            }
        }
        _ => {
            let kinds: [[u8; 2]; 3] = [[0x08, 0x00], [0x86, 0xdd], [0x08, 0x06]];
            frame[12..14].copy_from_slice(kinds.choose(rng).unwrap());
        }
    }
}
