//! Packet-trace replay: the committed traces are what the generator writes, their offline
//! replays through `xdp_lb` (`BPF_PROG_TEST_RUN`) are snapshotted per flow, the output pcap reads
//! in tcpdump, and bad traces and configurations fail with the file and the offset or field.
//! In the lab: every committed trace keeps every flow on one backend; without events the lab's
//! backend choices are the offline replay's; a failover at a packet offset splits flows with id
//! routing off (the control) and none with it on.

mod common;

use std::path::{Path, PathBuf};

use zrlab_replay::{
    config::LbConfig,
    generate::{GenOptions, Ids, Kind, generate},
    lab::{LabReplay, Pacing, ReplaySpec, RunOptions},
    offline,
};
use zrlab_wire::pcap;

/// The committed traces and the options that generate them (`cargo xtask trace gen` with the
/// same options writes the same bytes).
fn committed() -> Vec<(&'static str, GenOptions)> {
    let config = LbConfig::load(&common::fixtures().join("lb/replay.toml")).unwrap_or_else(|e| panic!("{e}"));
    let base = |kind: Kind, seed: u64| GenOptions {
        kind,
        seed,
        flows: 20,
        packets: 6,
        client: "198.51.100.2".parse().expect("valid"),
        vip: "203.0.113.10".parse().expect("valid"),
        port: 8080,
        ids: Ids::AsRouted(Box::new(config.clone())),
        malformed_pct: 0,
    };
    vec![
        ("tcp-tpr.pcap", base(Kind::Tcp, 1)),
        ("quic.pcap", base(Kind::Quic, 2)),
        ("syn-burst.pcap", GenOptions { flows: 200, ids: Ids::None, ..base(Kind::SynBurst, 3) }),
        ("tcp-malformed.pcap", GenOptions { flows: 10, malformed_pct: 20, ..base(Kind::Tcp, 4) }),
        // The lab replay's failover: enough flows that some certainly change LB node and backend.
        ("tcp-failover.pcap", GenOptions { flows: 60, ..base(Kind::Tcp, 5) }),
    ]
}

fn trace(name: &str) -> PathBuf {
    common::fixtures().join("traces").join(name)
}

#[test]
fn committed_traces_are_what_the_generator_writes() {
    for (name, opts) in committed() {
        let generated = generate(&opts).expect("generate");
        let read = pcap::read(&trace(name)).unwrap_or_else(|e| panic!("{e}")).frames;
        assert_eq!(read, generated, "{name}: regenerate it with `cargo xtask trace gen` and these options: {opts:?}");
        let size = std::fs::metadata(trace(name)).expect("size").len();
        assert!(size < 64 * 1024, "{name}: committed traces stay small ({size} bytes)");
    }
}

#[test]
fn offline_replay_of_each_committed_trace() {
    common::require_root();
    let config = LbConfig::load(&common::fixtures().join("lb/replay.toml")).unwrap_or_else(|e| panic!("{e}"));
    for (name, _) in committed() {
        let frames = pcap::read(&trace(name)).expect("trace").frames;
        let replay = offline::run(&frames, &config).expect("replay");
        assert_eq!(replay.split_flows(), 0, "{name}: no event, so no flow may be split:\n{}", replay.summary());
        insta::assert_snapshot!(name, replay.summary());
    }
}

#[test]
fn id_routing_keeps_drained_backends_flows_after_a_ring_change() {
    common::require_root();
    // The flows placed by one configuration, then the rest of the trace after a ring change
    // (a real drained, another down), on a second LB node that never saw them (a failover):
    // flows carrying a live id keep their real; the down real's flows fall back to the ring.
    let frames = pcap::read(&trace("tcp-tpr.pcap")).expect("trace").frames;
    let before = LbConfig::load(&common::fixtures().join("lb/replay.toml")).expect("config");
    let after = LbConfig::load(&common::fixtures().join("lb/replay-drained.toml")).expect("config");
    let half = frames.len() / 2;
    let first = offline::run(&frames[..half], &before).expect("replay");
    let second = offline::run(&frames[half..], &after).expect("replay");
    let real_of = |r: &offline::Offline, flow: &str| r.flows.iter().find(|f| f.flow == flow).map(|f| f.reals.clone());
    let mut kept = 0;
    let mut moved = Vec::new();
    for flow in &first.flows {
        let (Some(a), Some(b)) = (real_of(&first, &flow.flow), real_of(&second, &flow.flow)) else { continue };
        if a == b {
            kept += 1;
        } else {
            moved.push((flow.flow.clone(), a, b));
        }
    }
    let down: std::net::IpAddr = "192.0.2.6".parse().expect("valid");
    let drained: std::net::IpAddr = "192.0.2.14".parse().expect("valid");
    assert!(kept > 0, "flows kept their real");
    assert!(
        moved.iter().all(|(_, a, _)| a == &vec![down]),
        "only the down real's flows moved (their id is dead): {moved:?}"
    );
    assert!(first.flows.iter().any(|f| f.reals == vec![drained]), "the drained real had flows to keep");

    // Control: the same failover without id routing: the drained real's flows move too.
    let mut blind = after.clone();
    for vip in &mut blind.vip {
        vip.options.tcp_id_routing = false;
    }
    let second = offline::run(&frames[half..], &blind).expect("replay");
    let lost = first
        .flows
        .iter()
        .filter(|f| f.reals == vec![drained])
        .filter(|f| real_of(&second, &f.flow).is_some_and(|b| b != f.reals))
        .count();
    assert!(lost > 0, "without id routing the drained real's flows land elsewhere");
}

#[test]
fn output_pcap_reads_in_tcpdump() {
    common::require_root();
    let config = LbConfig::load(&common::fixtures().join("lb/replay.toml")).expect("config");
    let frames = pcap::read(&trace("tcp-tpr.pcap")).expect("trace").frames;
    let replay = offline::run(&frames, &config).expect("replay");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("replay-offline-out.pcap");
    pcap::write(&out, &replay.outputs).expect("write");
    let tcpdump = std::process::Command::new("tcpdump").args(["-nn", "-r"]).arg(&out).output().expect("tcpdump");
    let text = String::from_utf8_lossy(&tcpdump.stdout);
    assert!(tcpdump.status.success(), "tcpdump: {}", String::from_utf8_lossy(&tcpdump.stderr));
    assert_eq!(text.lines().count(), replay.outputs.len(), "one line per frame the LB sent");
    assert!(text.contains("198.51.100.2.20000 > 203.0.113.10.8080"), "the inner packets show:\n{text}");
}

/// Every bad trace and configuration fails with the file and the offset or field.
#[test]
fn bad_traces_and_configs_name_file_and_offset() {
    let mut out = String::new();
    let dir = common::fixtures().join("invalid/traces");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).expect("dir").map(|e| e.expect("entry").path()).collect();
    files.sort();
    for file in files {
        let message = match pcap::read(&file) {
            Ok(trace) => format!("read {} frames", trace.frames.len()),
            Err(e) => e.to_string(),
        };
        out.push_str(&format!("{}\n    {}\n", file.file_name().expect("name").to_string_lossy(), message));
    }
    let dir = common::fixtures().join("invalid/lb");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).expect("dir").map(|e| e.expect("entry").path()).collect();
    files.sort();
    for file in files {
        let message = match LbConfig::load(&file) {
            Ok(_) => "accepted".into(),
            Err(e) => e.to_string(),
        };
        out.push_str(&format!("{}\n    {}\n", file.file_name().expect("name").to_string_lossy(), message));
    }
    let fixtures = common::fixtures().display().to_string();
    insta::assert_snapshot!(out.replace(&fixtures, "<fixtures>"));
}

#[test]
fn non_ip_frames_are_counted_not_replayed() {
    common::require_root();
    let config = LbConfig::load(&common::fixtures().join("lb/replay.toml")).expect("config");
    let frames = pcap::read(&trace("tcp-malformed.pcap")).expect("trace").frames;
    let replay = offline::run(&frames, &config).expect("replay");
    let non_ip = frames.iter().filter(|f| f.data.get(12..14) == Some(&[0x08, 0x06])).count() as u64;
    assert!(non_ip > 0, "the malformed trace has non-IP frames");
    assert_eq!(replay.skipped_non_ip, non_ip);
    assert_eq!(replay.verdicts.values().sum::<u64>() + non_ip, frames.len() as u64, "every other frame replayed");
}

/// Real captures load: a classic pcap cut by a snap length (`tcpdump -s 128`) and a pcapng
/// file with nanosecond timestamps, both made from `tcp-failover.pcap` by
/// `fixtures/traces/captures/make_captures.py`. Until issue 20 the first was refused
/// (`pcap-file` 2.0 rejects a record longer than the snap length) and the second too (classic
/// pcap only). Each replays as the trace it holds: the same frames at the same times (the
/// cut frames padded back to their length), the same flows to the same reals.
#[test]
fn real_captures_load_and_replay_as_the_trace_they_hold() {
    common::require_root();
    let original = pcap::read(&trace("tcp-failover.pcap")).expect("trace");
    let captures = common::fixtures().join("traces/captures");
    let pcapng = pcap::read(&captures.join("tcp-failover.pcapng")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((pcapng.format, pcapng.padded), (pcap::Format::PcapNg, 0));
    assert_eq!(pcapng.frames, original.frames, "the same frames at the same times");
    let cut = pcap::read(&captures.join("tcp-snap128.pcap")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((cut.format, cut.padded), (pcap::Format::Pcap, 300), "every segment with a payload was cut");
    assert_eq!(cut.frames.len(), original.frames.len());
    for (cut, whole) in cut.frames.iter().zip(&original.frames) {
        assert_eq!(cut.at, whole.at);
        // The captured bytes, but for the IPv4 total length the fixture gave the payload.
        let kept = whole.data.len().min(128);
        assert_eq!((&cut.data[..16], &cut.data[18..kept]), (&whole.data[..16], &whole.data[18..kept]), "headers kept");
    }
    let config = LbConfig::load(&common::fixtures().join("lb/replay.toml")).expect("config");
    let expected = offline::run(&original.frames, &config).expect("replay").summary();
    for frames in [&pcapng.frames, &cut.frames] {
        assert_eq!(offline::run(frames, &config).expect("replay").summary(), expected);
    }
}

/// A replay with nothing to judge does not pass: a trace none of whose frames is addressed to a
/// configured VIP is refused before anything runs (until issue 20 it replayed and exited 0),
/// and an offline replay whose VIP flows the LB never sent on says why it cannot be judged.
#[test]
fn a_replay_with_nothing_to_judge_fails_and_says_why() {
    common::require_root();
    let path = trace("tcp-failover.pcap");
    let frames = pcap::read(&path).expect("trace").frames;
    let text = std::fs::read_to_string(common::fixtures().join("lb/replay.toml")).expect("config");
    let other = std::env::temp_dir().join(format!("zrlab-other-vip-{}.toml", std::process::id()));
    std::fs::write(&other, text.replace("203.0.113.10", "203.0.113.99")).expect("write");
    let config = LbConfig::load(&other).unwrap_or_else(|e| panic!("{e}"));
    let _ = std::fs::remove_file(&other);
    let refused = config.require_vip_frames(&path, &frames).expect_err("no frame for a VIP");
    assert!(refused.to_string().contains("none of its 360 frames is addressed to a configured VIP"), "{refused}");
    let replay = offline::run(&frames, &config).expect("replay");
    assert_eq!(replay.judged_flows(), 0);
    assert!(replay.not_judged().is_some_and(|why| why.starts_with("nothing to judge")), "{:?}", replay.not_judged());
    let config = LbConfig::load(&common::fixtures().join("lb/replay.toml")).expect("config");
    assert_eq!(offline::run(&frames, &config).expect("replay").not_judged(), None);
}

/// `zrlab --junit F replay offline`: the XML, read back by a JUnit parser, has one case for
/// the replay and one per judged flow, all passing for a committed trace; with a configuration
/// whose VIP no frame is addressed to, the command fails and names the reason.
#[test]
fn replay_offline_writes_junit_one_case_per_judged_flow() {
    common::require_root();
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("junit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let xml = dir.join("replay.xml");
    let run = std::process::Command::new(common::zrlab_exe())
        .args(["--out".as_ref(), dir.as_os_str(), "--junit".as_ref(), xml.as_os_str()])
        .args(["replay".as_ref(), "offline".as_ref(), trace("tcp-failover.pcap").as_os_str()])
        .args(["--config".as_ref(), common::fixtures().join("lb/replay.toml").as_os_str()])
        .output()
        .expect("zrlab replay offline");
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let text = std::fs::read_to_string(&xml).expect("the JUnit file");
    let doc = roxmltree::Document::parse(&text).expect("well-formed XML");
    let cases: Vec<_> = doc.descendants().filter(|n| n.has_tag_name("testcase")).collect();
    assert_eq!(cases.len(), 61, "the replay itself and its 60 flows");
    assert!(cases.iter().all(|c| !c.children().any(|n| n.has_tag_name("failure"))), "{text}");
    assert!(
        cases
            .iter()
            .any(|c| c.attribute("name") == Some("tcp 198.51.100.2:20000 > 203.0.113.10:8080 stays on one real"))
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `trace` replayed in the lab with replay scenario `scenario` (under `fixtures/replay/`).
fn lab_replay(trace_name: &str, scenario: &str) -> LabReplay {
    common::require_root();
    let spec = ReplaySpec::load(&common::fixtures().join("replay").join(scenario)).unwrap_or_else(|e| panic!("{e}"));
    let path = trace(trace_name);
    let frames = pcap::read(&path).expect("trace").frames;
    let out = std::env::temp_dir().join(format!("zrlab-replay-{}-{trace_name}-{scenario}", std::process::id()));
    let opts =
        RunOptions { pacing: Pacing::Speed(1.0), out: out.clone(), service_exe: common::zrlab_exe(), keep: false };
    let replay = common::runtime()
        .block_on(zrlab_replay::lab::run(&path, &frames, &spec, &opts, &mut |_| {}))
        .unwrap_or_else(|e| panic!("{trace_name} with {scenario}: {e}"));
    for capture in &replay.captures {
        assert!(out.join(&capture.file).exists(), "capture {} written", capture.file);
        assert_eq!(capture.dropped, 0, "capture {} lost frames", capture.file);
    }
    assert_eq!(replay.not_judged(), None, "{trace_name} with {scenario}");
    let _ = std::fs::remove_dir_all(&out);
    replay
}

/// Each committed trace replayed in the lab once: every flow stays on one backend, UDP flows
/// on one socket, and, without events, the lab's three LB nodes choose what the offline
/// replay's one program chooses, flow by flow (the same configuration, ring and ids). One lab
/// per trace: under TCG a lab's set-up is most of a replay's cost.
#[test]
fn lab_replay_of_each_committed_trace_keeps_flows_on_one_backend_as_offline_chose() {
    let config = LbConfig::load(&common::fixtures().join("lb/replay.toml")).unwrap_or_else(|e| panic!("{e}"));
    for (name, _) in committed() {
        let replay = lab_replay(name, "lab.toml");
        assert_eq!(replay.split_flows(), 0, "{name}:\n{}", replay.markdown());
        assert!(replay.flows.iter().all(|f| f.backends.len() == 1), "{name}: every flow reached its backend");
        // UDP flows reached a service socket on their backend, and only that one.
        for flow in replay.flows.iter().filter(|f| f.flow.starts_with("udp")) {
            assert_eq!(flow.sockets.len(), 1, "{name}: {} answered by {:?}", flow.flow, flow.sockets);
            assert!(flow.sockets[0].starts_with(&format!("{}/", flow.backends[0])), "{name}: {flow:?}");
        }
        let offline = offline::run(&pcap::read(&trace(name)).expect("trace").frames, &config).expect("offline");
        let offline_reals: std::collections::BTreeMap<&str, &Vec<std::net::IpAddr>> =
            offline.flows.iter().filter(|f| !f.reals.is_empty()).map(|f| (f.flow.as_str(), &f.reals)).collect();
        // The client's kernel answers replayed replies it holds no socket for with ICMP port
        // unreachable to the VIP, which the LB sends on to the quoted flow's backend (ICMP errors
        // to a VIP): flows of the live lab that the trace does not have, each on one backend.
        let traced: Vec<_> = replay.flows.iter().filter(|f| !f.flow.starts_with("icmp error")).collect();
        assert_eq!(traced.len(), offline_reals.len(), "{name}: the same flows reach a real");
        for flow in traced {
            assert_eq!(Some(&&flow.reals), offline_reals.get(flow.flow.as_str()), "{name}: {}", flow.flow);
        }
    }
}

/// A failover after packet 180 of 360 (be4 drained, two of three LB nodes leave ECMP): with
/// id routing every flow stays; without it (the control) flows split, and the report names
/// them with their frames in each capture.
#[test]
fn lab_replay_failover_splits_flows_only_without_id_routing() {
    let with_ids = lab_replay("tcp-failover.pcap", "failover-ids.toml");
    assert!(
        with_ids.flows.iter().any(|f| f.lb_nodes.len() > 1),
        "the failover moved flows to another LB node:\n{}",
        with_ids.markdown()
    );
    assert_eq!(with_ids.split_flows(), 0, "{}", with_ids.markdown());
    let without = lab_replay("tcp-failover.pcap", "failover-no-ids.toml");
    assert!(without.split_flows() > 0, "the control splits flows:\n{}", without.markdown());
    for flow in without.flows.iter().filter(|f| f.split) {
        assert!(flow.frames.keys().filter(|c| c.starts_with("backend-in-")).count() > 1, "{}", flow.flow);
    }
}
