//! A kept lab is a live lab: `run --keep` leaves the data path attached (held by a keeper
//! process), a plain TCP client in the client namespace gets the service's answer through the
//! XDP LB, `event` changes the LB and `status` shows it, and `clean` leaves nothing behind,
//! checked by namespace inode: no process holds any of the run's namespaces, no cgroup, no pin.
//! The same when the process that kept the run was SIGKILLed, and for a kept replay (its UDP
//! service answers through the replay's LB configuration).

mod common;

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpStream},
    os::unix::fs::MetadataExt as _,
    process::{Command, Stdio},
    time::Duration,
};

use zrlab_host::netns::Netns;
use zrlab_wire::message::Reply;

const VIP: &str = "203.0.113.10:8080";
const TIMEOUT: Duration = Duration::from_secs(10);

#[test]
fn kept_lb_basic_answers_takes_events_and_cleans_up() {
    common::require_root();
    let _lock = common::exclusive();
    let _cleanup = CleanOnDrop;
    let run = Command::new(common::zrlab_exe())
        .arg("run")
        .arg(common::fixtures().join("scenarios/lb-basic.toml"))
        .arg("--keep")
        .arg("--out")
        .arg(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("keep-live"))
        .output()
        .expect("zrlab run --keep");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "zrlab run --keep: {stdout}{}", String::from_utf8_lossy(&run.stderr));
    check_live_and_clean(&prefix_of(&stdout), ask_the_vip);
}

#[test]
fn kept_replay_answers_takes_events_and_cleans_up() {
    common::require_root();
    let _lock = common::exclusive();
    let _cleanup = CleanOnDrop;
    let run = Command::new(common::zrlab_exe())
        .arg("replay")
        .arg(common::fixtures().join("traces/quic.pcap"))
        .arg("--keep")
        .arg("--out")
        .arg(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("keep-replay"))
        .output()
        .expect("zrlab replay --keep");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "zrlab replay --keep: {stdout}{}", String::from_utf8_lossy(&run.stderr));
    check_live_and_clean(&prefix_of(&stdout), ask_the_vip_over_udp);
}

#[test]
fn a_kept_run_survives_the_sigkill_of_the_process_that_kept_it() {
    common::require_root();
    let _lock = common::exclusive();
    let _cleanup = CleanOnDrop;
    let mut child = Command::new(common::zrlab_exe())
        .arg("run")
        .arg(common::fixtures().join("scenarios/lb-basic.toml"))
        .arg("--keep")
        .arg("--out")
        .arg(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("keep-killed"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("zrlab run --keep");
    // Read until the run says it kept the topology (its keeper is ready by then), then kill it.
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.expect("stdout");
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("cargo xtask lab clean") {
            break;
        }
    }
    let _ = child.kill();
    child.wait().expect("reap");
    check_live_and_clean(&prefix_of(&seen), ask_the_vip);
}

/// Connects, drains the answering backend through `event`, sees it in `status`, cleans, and
/// checks by inode that nothing of the run survives.
fn check_live_and_clean(prefix: &str, ask: fn(&str) -> Reply) {
    let inodes: Vec<u64> = std::fs::read_dir("/run/netns")
        .expect("/run/netns")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.metadata().expect("stat").ino())
        .collect();
    assert!(inodes.len() >= 8, "the kept namespaces exist: {inodes:?}");

    let reply = ask(prefix);
    let backend = reply.who.node;
    let drained = zrlab(&["event", "--run", prefix, "drain-backend", &format!("backend={backend}")]);
    assert!(drained.contains("drained"), "the event reached the LB: {drained}");
    let status = zrlab(&["status", prefix, "--json"]);
    let status: serde_json::Value = serde_json::from_str(&status).expect("status JSON");
    let reals = status["lb"]["reals"].as_array().expect("reals");
    let entry = reals.iter().find(|r| r[0] == backend.as_str()).expect("the backend in the status");
    assert_eq!(entry[3], false, "status shows {backend} out of the rings: {entry}");
    for ring in status["lb"]["rings"].as_array().expect("rings") {
        let slots = ring[1].as_array().expect("shares").iter().find(|s| s[0] == backend.as_str()).expect("a share");
        assert_eq!(slots[1], 0, "{backend} owns no slot of {} after the drain", ring[0]);
    }
    assert!(
        status["programs"]
            .as_array()
            .expect("programs")
            .iter()
            .any(|p| p.as_str().is_some_and(|p| p.ends_with("xdp_lb"))),
        "the LB programs are attached"
    );
    let keeper = status["keeper"].as_u64().expect("keeper pid");
    // Still answering after the change (the drained backend keeps nothing new: any backend).
    ask(prefix);

    zrlab(&["clean"]);
    // Gone, or a zombie its new parent has not reaped (the process that started it may be
    // gone, and PID 1 of a container may not reap): either way it holds nothing.
    let state = std::fs::read_to_string(format!("/proc/{keeper}/stat")).unwrap_or_default();
    let running = state.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z'));
    assert!(!running, "the keeper is gone: {state}");
    let held: Vec<u64> = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| std::fs::metadata(e.path().join("ns/net")).ok())
        .map(|m| m.ino())
        .filter(|ino| inodes.contains(ino))
        .collect();
    assert_eq!(held, Vec::<u64>::new(), "no process holds a namespace of the run");
    assert_eq!(common::objects_with_prefix(prefix), Vec::<String>::new(), "no namespace, cgroup or pin left");
}

/// A plain TCP connection from the client's namespace to the VIP; the service's answer.
fn ask_the_vip(prefix: &str) -> Reply {
    let netns = Netns::open(&format!("{prefix}-client")).expect("client namespace");
    let answer = netns.run(|| -> std::io::Result<String> {
        let vip: SocketAddr = VIP.parse().expect("valid");
        let stream = TcpStream::connect_timeout(&vip, TIMEOUT)?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        (&stream).write_all(b"REQ 1 0\n")?;
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line)?;
        Ok(line)
    });
    netns.keep();
    let line = answer.expect("enter the client").expect("the VIP answers");
    Reply::parse(&line).expect("a service reply")
}

/// A QUIC-like Initial from the client's namespace to the VIP's UDP port; the service's answer.
fn ask_the_vip_over_udp(prefix: &str) -> Reply {
    use zrlab_wire::{
        message::Request,
        quic::{Datagram, Header, LongType, VERSION_1},
    };
    let netns = Netns::open(&format!("{prefix}-client")).expect("client namespace");
    let answer = netns.run(|| -> std::io::Result<Vec<u8>> {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
        socket.set_read_timeout(Some(TIMEOUT))?;
        socket.connect(VIP)?;
        let header = Header::Long { kind: LongType::Initial, version: VERSION_1, dcid: vec![7; 8], scid: vec![9; 8] };
        socket.send(&Datagram { header, payload: Request::new(1, 0).emit().into_bytes() }.emit())?;
        let mut buf = vec![0u8; 2048];
        let len = socket.recv(&mut buf)?;
        buf.truncate(len);
        Ok(buf)
    });
    netns.keep();
    let bytes = answer.expect("enter the client").expect("the VIP answers over UDP");
    let datagram = Datagram::parse(&bytes).expect("a datagram");
    Reply::parse_bytes(&datagram.payload).expect("a service reply")
}

fn zrlab(args: &[&str]) -> String {
    let out = Command::new(common::zrlab_exe()).args(args).output().expect("zrlab");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "zrlab {args:?}: {text}{}", String::from_utf8_lossy(&out.stderr));
    text
}

/// The prefix in the first `ip netns exec zrlabk-...-<node>` line.
fn prefix_of(stdout: &str) -> String {
    let at = stdout.find("ip netns exec zrlabk-").expect("a kept namespace") + "ip netns exec ".len();
    let name = stdout[at..].split_whitespace().next().expect("a name");
    name.rsplit_once('-').expect("prefix-node").0.to_owned()
}

struct CleanOnDrop;

impl Drop for CleanOnDrop {
    fn drop(&mut self) {
        let _ = Command::new(common::zrlab_exe()).arg("clean").output();
    }
}
