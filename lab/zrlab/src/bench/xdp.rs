//! `zrlab bench xdp`: the LB's cost per packet by conformance category, as a ratio to an empty
//! XDP program measured the same way in the same run, and the Maglev control plane's build
//! time and disruption.
//!
//! Two methods (DESIGN.md section 3), both with kernel-reported durations:
//! - **restoring** (the headline numbers): `BPF_PROG_TEST_RUN` with a large repeat count
//!   reuses one buffer, so the program measured is `xdp_lb_bench`, which runs the whole path
//!   and then undoes the encapsulation: every iteration sees the original frame. Floor: about
//!   the test loop's own cost per iteration.
//! - **katran's** (for comparison with katran's published numbers): the unmodified `xdp_lb`
//!   with repeat 1, called in a loop, averaging the reported durations. Its floor includes a
//!   fixed per-call cost, so its ratios are much smaller.
//!
//! Each case is measured in rounds, each a floor (`xdp_empty`) sample taken right before a
//! program sample by the same method; a case's ratio is the median of its rounds' ratios, its
//! ns/packet the median of its samples, and the printed floor the median of every floor sample.
//!
//! Both methods use one iteration count for the floor and the program, so a program sample
//! lasts several times as long as its floor sample. Samples of equal duration were tried and
//! dropped: every sample starts cold (the kernel swaps the program into the XDP dispatcher
//! before a repeated run and waits for an RCU grace period, in which this VM's CPU idles), so
//! a short sample costs more per iteration than a long one, and time-matched samples moved the
//! ratios by as much as the host's noise (up or down with the sample length). The kernel
//! reports a repeated run's duration per iteration in whole nanoseconds, rounded down (27
//! stands for anything in [27, 28)); half a nanosecond is added back to every restoring
//! sample, without which the ratio to a 27 ns floor is biased up by about 1.5%.
//!
//! The SYN flood: distinct SYNs (each a new flow: ring, then a SYN-cache slot) through the
//! unmodified `xdp_lb`, one call each on one pinned core, as a rate next to the same loop over
//! the empty program; and how many of 1,000 established flows (a SYN and then a packet of the
//! open connection each) still have their entry after 16k, 32k, 128k and 256k new flows (each
//! CPU's share of the table holds 32,768; a SYN writes no table, so SYNs that never complete
//! evict nothing). Connection set-up ([`Setup`]): what the SYN, the packet after it (the table
//! insert a SYN no longer makes) and the one after that cost each, median of five runs.
//!
//! Maglev disruption is measured for both ways a backend leaves (see [`super::maglev`]): a
//! health change (marked down: the control plane's path for health checks and drains) and a
//! removal from the configuration (plain Maglev's rebuild), each with the balance it leaves.

use std::{collections::BTreeMap, net::IpAddr, time::Instant};

use aya::programs::{TestRun as _, TestRunOptions, Xdp};
use serde::Serialize;

use zrlab_control::{
    bpf::{Loaded, Object},
    lb::{
        Balancer, RealSpec, Settings, VipOptions, VipSpec,
        maglev::{self, Backend},
    },
};
use zrlab_host::error::{LabError, Result};
use zrlab_wire::Proto;
use zrlab_wire::{
    packet::{ACK, FrameRepr, IpPayload, IpRepr, SYN, TcpRepr, UdpRepr, tcp_options::TcpOption},
    quic::{CID_LEN, CidVersion, Datagram, Header, LongType, VERSION_1, cid_for},
};

/// How to measure.
#[derive(Clone, Debug)]
pub(crate) struct Options {
    /// Iterations per `BPF_PROG_TEST_RUN` call of the restoring method (a tenth of it, at
    /// least 1,000, is the number of calls per katran-method sample).
    pub repeat: u32,
    /// Paired rounds per case (medians are reported).
    pub rounds: usize,
    /// Only the cases whose name contains this.
    pub only: Option<String>,
    /// Runs of the connection set-up measurement (each on fresh tables; medians reported).
    pub setup_runs: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self { repeat: 200_000, rounds: 21, only: None, setup_runs: 5 }
    }
}

/// One measured case.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Case {
    /// Category.
    pub name: String,
    /// Median nanoseconds per packet.
    pub ns_per_pkt: f64,
    /// Median over the rounds of the program's sample over the floor sample taken just before.
    pub ratio_to_floor: f64,
    /// The verdict the case produced (to show it took the intended path).
    pub verdict: String,
    /// Median nanoseconds per packet by katran's method (repeat 1 in a loop).
    pub katran_ns_per_pkt: f64,
    /// As `ratio_to_floor`, by katran's method.
    pub katran_ratio_to_floor: f64,
}

/// Disruption when `k` of `n` backends leave a table.
#[derive(Clone, Copy, Debug, Serialize)]
pub(crate) struct Disruption {
    /// How they leave: `"health"` (marked down: the control plane's path for health checks and
    /// drains) or `"removal"` (taken out of the configuration: plain Maglev's rebuild).
    pub change: &'static str,
    /// Backends before.
    pub n: usize,
    /// Backends that left.
    pub k: usize,
    /// Fraction of table entries whose owner changed.
    pub moved: f64,
    /// `k / n`: what only the leaving backends' entries would be.
    pub ideal: f64,
    /// `moved / ideal`.
    pub ratio: f64,
    /// The most slots a remaining backend owns afterwards, over the mean: 1.0 is perfect balance.
    pub peak_load: f64,
    /// Time to build the table after the change, milliseconds (one build).
    pub build_ms: f64,
}

/// The Maglev measurements.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct MaglevReport {
    /// Table size.
    pub size: u32,
    /// Backends in the timed build.
    pub backends: usize,
    /// Median build time, milliseconds.
    pub build_ms: f64,
    /// Disruption for several `k` of `n`.
    pub disruption: Vec<Disruption>,
}

/// The whole report (`target/bench/xdp.json`).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Report {
    /// `uname -r`.
    pub kernel: String,
    /// Median nanoseconds per packet of `xdp_empty` (restoring method's loop).
    pub floor_ns: f64,
    /// The floor samples' 90th percentile over their 10th: how busy the host was during the
    /// run. The LB touches more cache lines than the empty program, so a busy host slows it
    /// more and raises its ratios; on the benchmark VM runs in busy spells (floor 31-34 ns
    /// instead of 27-29) read up to a fifth higher.
    pub floor_spread: f64,
    /// The floor by katran's method.
    pub katran_floor_ns: f64,
    /// The LB's cases.
    pub cases: Vec<Case>,
    /// The Maglev control plane.
    pub maglev: MaglevReport,
    /// New flows one core pushes through, and what a table under pressure keeps.
    pub syn_flood: SynFlood,
    /// What a new connection's first packets cost each.
    pub setup: Setup,
}

/// A new connection's packets, by katran's method (repeat 1, the kernel's duration), over
/// [`SETUP_FLOWS`] distinct flows: the SYN (ring and SYN-cache slot), the first packet after it
/// (which moves the route from the SYN cache into the connection table: where the table
/// insert went), and the one after that (a table hit); each call follows a call of the empty
/// program, whose mean is the floor. Measured `runs` times through one LB, each run on flows
/// of its own (an LB per run was dropped while the next run measured, and kernel workers
/// freeing its tables on both cores disturbed it); every figure is the median over the runs
/// (a run's connection ratio is its three means over its floor).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Setup {
    /// Distinct flows per run.
    pub flows: u64,
    /// Each run's figures.
    pub runs: Vec<SetupRun>,
    /// Median over the runs of the SYN's ratio to the floor.
    pub syn_ratio: f64,
    /// Median over the runs of the packet after the SYN's ratio.
    pub first_ratio: f64,
    /// Median over the runs of the packet after that's ratio.
    pub later_ratio: f64,
    /// Median over the runs of the whole connection's ratio (the three packets together).
    pub connection_ratio: f64,
    /// Median over the runs of the floor, ns.
    pub floor_ns: f64,
}

/// One run of [`Setup`].
#[derive(Clone, Copy, Debug, Serialize)]
pub(crate) struct SetupRun {
    /// Mean ns of the SYN.
    pub syn_ns: f64,
    /// Mean ns of the packet after the SYN.
    pub first_ns: f64,
    /// Mean ns of the packet after that.
    pub later_ns: f64,
    /// Mean ns of the empty program, called the same way.
    pub floor_ns: f64,
}

impl SetupRun {
    /// The three packets together over the floor.
    fn connection_ratio(&self) -> f64 {
        (self.syn_ns + self.first_ns + self.later_ns) / self.floor_ns
    }
}

/// Distinct flows of [`Setup`].
const SETUP_FLOWS: u64 = 4_096;

/// A SYN flood: distinct SYNs, each a new flow that the program routes by the ring and inserts
/// into its connection tables.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct SynFlood {
    /// Distinct SYNs sent.
    pub syns: u64,
    /// SYNs per second through `xdp_lb` on one core, one `BPF_PROG_TEST_RUN` call each (wall
    /// clock, the call's own cost included).
    pub syns_per_s: f64,
    /// The same loop over `xdp_empty`: the ceiling of the loop itself.
    pub floor_calls_per_s: f64,
    /// Each CPU's share of the connection table (its entries over the possible CPUs).
    pub table_per_cpu: u32,
    /// Established flows that kept their entry after so many new flows.
    pub survival: Vec<Survival>,
}

/// Established flows' entries after a number of new flows.
#[derive(Clone, Copy, Debug, Serialize)]
pub(crate) struct Survival {
    /// New flows (distinct SYNs) since the established ones were placed.
    pub new_flows: u64,
    /// Established flows.
    pub established: u64,
    /// Of those, flows still in the table.
    pub kept: u64,
}

/// Established flows placed before the flood.
const ESTABLISHED: u64 = 1_000;

/// The `n`-th distinct flow's packet like `template` (a SYN or an ACK) to the benchmark's TCP
/// VIP (source address and port vary).
fn nth_flow(template: &[u8], n: u64) -> Vec<u8> {
    let mut frame = template.to_vec();
    // IPv4 source's last byte (offset 14 + 15) and the TCP source port (14 + 20): 256 x 64,000
    // distinct flows. The LB checks no checksum.
    frame[29] = (n % 256) as u8;
    frame[34..36].copy_from_slice(&(1_024 + (n / 256) as u16).to_be_bytes());
    frame
}

/// Pins the calling thread to CPU 0: the flood would fill CPU 0's share of the table.
fn pin_to_cpu0() -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is valid; sched_setaffinity reads it.
    let ret = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set)
    };
    if ret == 0 { Ok(()) } else { Err(LabError::os("pin to", "CPU 0", std::io::Error::last_os_error())) }
}

fn syn_flood(floor_program: &Xdp) -> Result<SynFlood> {
    use zrlab_common::lb::CONN_TABLE_PER_CPU;
    pin_to_cpu0()?;
    let lb = balancer()?;
    let program = lb.program("xdp_lb")?;
    let (template, ack) = (client_tcp(SYN), client_tcp(ACK));
    let before = lb.connections()?;
    // Established: the SYN, then a packet of the open connection (which moves the flow from
    // the SYN cache into the tables).
    for n in 0..ESTABLISHED {
        sample(program, &nth_flow(&template, n), 1)?;
        sample(program, &nth_flow(&ack, n), 1)?;
    }
    let established: Vec<_> = lb.connections()?.into_iter().filter(|k| !before.contains(k)).collect();
    let mut sent = ESTABLISHED;
    let mut survival = Vec::new();
    let mut flood_time = 0.0;
    for total in [CONN_TABLE_PER_CPU / 2, CONN_TABLE_PER_CPU, 4 * CONN_TABLE_PER_CPU, 8 * CONN_TABLE_PER_CPU] {
        let frames: Vec<Vec<u8>> = (sent..ESTABLISHED + u64::from(total)).map(|n| nth_flow(&template, n)).collect();
        let started = Instant::now();
        for frame in &frames {
            sample(program, frame, 1)?;
        }
        flood_time += started.elapsed().as_secs_f64();
        sent += frames.len() as u64;
        let now = lb.connections()?;
        let kept = established.iter().filter(|k| now.contains(k)).count() as u64;
        survival.push(Survival { new_flows: sent - ESTABLISHED, established: established.len() as u64, kept });
    }
    let flood = sent - ESTABLISHED;
    let started = Instant::now();
    for _ in 0..flood {
        sample(floor_program, &template, 1)?;
    }
    let floor_time = started.elapsed().as_secs_f64();
    Ok(SynFlood {
        syns: flood,
        syns_per_s: flood as f64 / flood_time,
        floor_calls_per_s: flood as f64 / floor_time,
        table_per_cpu: CONN_TABLE_PER_CPU,
        survival,
    })
}

/// Measures [`Setup`] `runs` times.
fn setup(floor_program: &Xdp, runs: usize) -> Result<Setup> {
    pin_to_cpu0()?;
    let lb = balancer()?;
    let program = lb.program("xdp_lb")?;
    let runs = (0..runs.max(1) as u64).map(|run| setup_run(program, floor_program, run)).collect::<Result<Vec<_>>>()?;
    let med = |f: &dyn Fn(&SetupRun) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    Ok(Setup {
        flows: SETUP_FLOWS,
        syn_ratio: med(&|r| r.syn_ns / r.floor_ns),
        first_ratio: med(&|r| r.first_ns / r.floor_ns),
        later_ratio: med(&|r| r.later_ns / r.floor_ns),
        connection_ratio: med(&SetupRun::connection_ratio),
        floor_ns: med(&|r| r.floor_ns),
        runs,
    })
}

/// Run `run` of [`Setup`], on flows of its own (numbered after the flood's and the other
/// runs').
fn setup_run(program: &Xdp, floor_program: &Xdp, run: u64) -> Result<SetupRun> {
    let (syn, ack) = (client_tcp(SYN), client_tcp(ACK));
    let (mut sums, mut floor) = ([0.0; 3], 0.0);
    for n in 0..SETUP_FLOWS {
        let flow = 2_000_000 + run * SETUP_FLOWS + n;
        for (sum, frame) in sums.iter_mut().zip([nth_flow(&syn, flow), nth_flow(&ack, flow), nth_flow(&ack, flow)]) {
            floor += sample(floor_program, &frame, 1)?.0;
            *sum += sample(program, &frame, 1)?.0;
        }
    }
    let mean = |sum: f64, calls: u64| sum / calls as f64;
    Ok(SetupRun {
        syn_ns: mean(sums[0], SETUP_FLOWS),
        first_ns: mean(sums[1], SETUP_FLOWS),
        later_ns: mean(sums[2], SETUP_FLOWS),
        floor_ns: mean(floor, 3 * SETUP_FLOWS),
    })
}

/// A TCP packet with `flags` from the benchmark's client to its TCP VIP, port 80 (the template
/// [`nth_flow`] varies).
fn client_tcp(flags: u8) -> Vec<u8> {
    tcp("198.51.100.2", "203.0.113.10", 80, flags, vec![])
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("valid address")
}

fn frame(src: &str, dst: &str, payload: IpPayload) -> Vec<u8> {
    FrameRepr::with_ip(IpRepr::new(ip(src), ip(dst), payload)).emit()
}

pub(crate) fn tcp(src: &str, dst: &str, dport: u16, flags: u8, options: Vec<TcpOption>) -> Vec<u8> {
    let mut tcp = TcpRepr::new(40000, dport, flags);
    tcp.options = options;
    frame(src, dst, IpPayload::Tcp(tcp))
}

fn udp(src: &str, dst: &str, dport: u16, payload: Vec<u8>) -> Vec<u8> {
    frame(src, dst, IpPayload::Udp(UdpRepr { sport: 40000, dport, payload }))
}

/// The benchmark's LB: one VIP per path, four IPv4 reals, ids 1..=4 live.
pub(crate) fn balancer() -> Result<Balancer> {
    let mut lb = Balancer::load(&Settings::default())?;
    let reals: Vec<RealSpec> = ["192.0.2.2", "192.0.2.6", "192.0.2.10", "192.0.2.14"]
        .iter()
        .map(|a| RealSpec { addr: ip(a), weight: 1, up: true })
        .collect();
    let v6reals: Vec<RealSpec> =
        ["2001:db8:1::2", "2001:db8:2::2"].iter().map(|a| RealSpec { addr: ip(a), weight: 1, up: true }).collect();
    let vip = |addr: &str, port: u16, proto: Proto| VipSpec::new(ip(addr), port, proto);
    lb.set_vip(
        &vip("203.0.113.10", 80, Proto::Tcp).with(VipOptions { tcp_id_routing: true, ..VipOptions::default() }),
        &reals,
    )?;
    lb.set_vip(
        &vip("203.0.113.10", 443, Proto::Udp).with(VipOptions { quic_id_routing: true, ..VipOptions::default() }),
        &reals,
    )?;
    lb.set_vip(&vip("203.0.113.10", 8080, Proto::Udp), &reals)?;
    lb.set_vip(&vip("2001:db8:ffff::10", 80, Proto::Tcp), &v6reals)?;
    lb.set_vip(&vip("203.0.113.20", 0, Proto::Tcp), &v6reals)?;
    lb.set_vip(
        &vip("203.0.113.40", 80, Proto::Tcp).with(VipOptions { no_lru: true, ..VipOptions::default() }),
        &reals,
    )?;
    let ids: BTreeMap<u32, IpAddr> = reals.iter().enumerate().map(|(i, r)| (i as u32 + 1, r.addr)).collect();
    lb.sync_server_ids(&ids)?;
    Ok(lb)
}

/// The categories: (name, frame). Each case gets one untimed warm-up call first, which puts the
/// flow of the table-hit cases in the table and gives the verdict printed.
fn bench_cases() -> Vec<(&'static str, Vec<u8>)> {
    let short = |id: u32| {
        let dcid = cid_for(CidVersion::V3, id, [0x5a; CID_LEN]).expect("fits");
        Datagram { header: Header::Short { dcid }, payload: b"REQ 1 1\n".to_vec() }.emit()
    };
    let initial = Datagram {
        header: Header::Long { kind: LongType::Initial, version: VERSION_1, dcid: vec![9; 8], scid: vec![7; 8] },
        payload: b"REQ 1 0\n".to_vec(),
    }
    .emit();
    let mut options = client_tcp(ACK);
    options[14] = 0x46;
    vec![
        ("v4 tcp, table hit (4in4)", client_tcp(ACK)),
        ("v4 udp, table hit", udp("198.51.100.2", "203.0.113.10", 8080, b"hello".to_vec())),
        ("v6 tcp, table hit (6in6)", tcp("2001:db8:100::2", "2001:db8:ffff::10", 80, ACK, vec![])),
        ("v4 tcp any-port vip, table hit (4in6)", tcp("198.51.100.2", "203.0.113.20", 22, ACK, vec![])),
        ("v4 tcp syn, ring and syn-cache slot", client_tcp(SYN)),
        ("v4 tcp, ring every packet (no table)", tcp("198.51.100.2", "203.0.113.40", 80, ACK, vec![])),
        ("v4 tcp, routed by TPR option", tcp("198.51.100.2", "203.0.113.10", 80, ACK, vec![TcpOption::ServerId(2)])),
        ("v4 quic short header, routed by id", udp("198.51.100.2", "203.0.113.10", 443, short(3))),
        ("v4 quic initial, hashed", udp("198.51.100.2", "203.0.113.10", 443, initial)),
        ("non-vip, passed", tcp("198.51.100.2", "203.0.113.99", 80, ACK, vec![])),
        ("vip, ipv4 options, passed", options),
        ("vip, truncated, dropped", {
            let mut f = client_tcp(ACK);
            f.truncate(40);
            f
        }),
    ]
}

/// One sample of the restoring method: `repeat` iterations in one call, ns per iteration (the
/// kernel's whole nanoseconds, plus half of one for its rounding down), and the verdict.
pub(crate) fn sample(program: &Xdp, frame: &[u8], repeat: u32) -> Result<(f64, u32)> {
    let result = program
        .test_run(TestRunOptions { data_in: Some(frame), repeat, ..TestRunOptions::new() })
        .map_err(|e| LabError::Bpf { what: "BPF_PROG_TEST_RUN".into(), message: e.to_string() })?;
    Ok((result.duration.as_nanos() as f64 + 0.5, result.return_value))
}

/// One sample of katran's method: repeat 1, `calls` times, mean of the reported durations.
fn sample_katran(program: &Xdp, frame: &[u8], calls: u32) -> Result<f64> {
    let mut total = 0u128;
    for _ in 0..calls {
        let result = program
            .test_run(TestRunOptions { data_in: Some(frame), repeat: 1, ..TestRunOptions::new() })
            .map_err(|e| LabError::Bpf { what: "BPF_PROG_TEST_RUN".into(), message: e.to_string() })?;
        total += result.duration.as_nanos();
    }
    Ok(total as f64 / f64::from(calls))
}

/// A case measured against the floor in pairs.
pub(crate) struct Paired {
    /// Every floor sample.
    pub(crate) floors: Vec<f64>,
    /// Median of the program's samples.
    pub(crate) ns: f64,
    /// Median of each round's program sample over the floor sample taken just before it.
    pub(crate) ratio: f64,
}

/// Runs `rounds` rounds of a floor sample followed at once by a program sample: a slow spell
/// of a busy machine then slows both, and the median of the rounds' ratios sees through it,
/// where medians taken seconds apart did not (ratios swung by a third between runs).
pub(crate) fn paired(
    rounds: usize,
    mut floor: impl FnMut() -> Result<f64>,
    mut program: impl FnMut() -> Result<f64>,
) -> Result<Paired> {
    let (mut floors, mut samples, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let f = floor()?;
        let p = program()?;
        floors.push(f);
        samples.push(p);
        ratios.push(p / f);
    }
    Ok(Paired { floors, ns: median(&samples), ratio: median(&ratios) })
}

pub(crate) fn median(v: &[f64]) -> f64 {
    quantile(v, 0.5)
}

/// The `q` quantile of `v` (nearest rank; `v` not empty).
fn quantile(v: &[f64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 * q) as usize).min(v.len() - 1)]
}

fn verdict_name(v: u32) -> String {
    match v {
        0 => "ABORTED",
        1 => "DROP",
        2 => "PASS",
        3 => "TX",
        _ => "?",
    }
    .to_owned()
}

/// Runs the benchmark.
pub(crate) fn run(opts: &Options) -> Result<Report> {
    if opts.rounds == 0 || opts.repeat == 0 {
        return Err(LabError::Usage(format!(
            "need at least one round and one iteration, got {} rounds of {}",
            opts.rounds, opts.repeat
        )));
    }
    let mut lb = balancer()?;
    lb.load_bench()?;
    let floor_object = Loaded::load(Object::XdpEmpty, &["xdp_empty"])?;
    let floor_program = floor_object.xdp("xdp_empty")?;
    let program = lb.program("xdp_lb_bench")?;
    let unmodified = lb.program("xdp_lb")?;
    let (mut floors, mut katran_floors) = (Vec::new(), Vec::new());
    let calls = (opts.repeat / 10).max(1_000);
    let selected: Vec<_> = bench_cases()
        .into_iter()
        .filter(|(name, _)| opts.only.as_ref().is_none_or(|o| name.contains(o.as_str())))
        .collect();
    if selected.is_empty() {
        let names: Vec<_> = bench_cases().into_iter().map(|(name, _)| name).collect();
        return Err(LabError::Usage(format!(
            "no benchmark case contains {:?}; the cases are: {}",
            opts.only.as_deref().unwrap_or_default(),
            names.join("; ")
        )));
    }
    let mut cases = Vec::new();
    for (name, frame) in selected {
        // The table-hit cases need the flow in the table before the first timed round.
        let (_, verdict) = sample(program, &frame, 1)?;
        let restoring = paired(
            opts.rounds,
            || Ok(sample(floor_program, &frame, opts.repeat)?.0),
            || Ok(sample(program, &frame, opts.repeat)?.0),
        )?;
        let katran = paired(
            opts.rounds,
            || sample_katran(floor_program, &frame, calls),
            || sample_katran(unmodified, &frame, calls),
        )?;
        floors.extend(restoring.floors);
        katran_floors.extend(katran.floors);
        cases.push(Case {
            name: name.to_owned(),
            ns_per_pkt: restoring.ns,
            ratio_to_floor: restoring.ratio,
            verdict: verdict_name(verdict),
            katran_ns_per_pkt: katran.ns,
            katran_ratio_to_floor: katran.ratio,
        });
    }
    let floor_spread = quantile(&floors, 0.9) / quantile(&floors, 0.1);
    let floor_ns = median(&floors);
    let katran_floor_ns = median(&katran_floors);
    Ok(Report {
        kernel: zrlab_host::kernel_release(),
        floor_ns,
        floor_spread,
        katran_floor_ns,
        cases,
        maglev: maglev_report(),
        // Before the flood, whose LB's maps (tens of megabytes) kernel workers free on both
        // cores after it returns.
        setup: setup(floor_program, opts.setup_runs)?,
        syn_flood: syn_flood(floor_program)?,
    })
}

fn backends(n: usize) -> Vec<Backend> {
    (0..n)
        .map(|i| Backend { key: format!("192.0.{}.{}", i / 250, i % 250 + 1).into_bytes(), weight: 1, up: true })
        .collect()
}

fn maglev_report() -> MaglevReport {
    const SIZE: u32 = zrlab_common::lb::MAX_RING;
    let set = backends(1000);
    let mut times: Vec<f64> = (0..7)
        .map(|_| {
            let started = Instant::now();
            let table = maglev::build(&set, SIZE).expect("valid backends");
            std::hint::black_box(table);
            started.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let mut disruption = Vec::new();
    for change in ["health", "removal"] {
        for (n, ks) in [(10, &[1, 2, 3][..]), (100, &[1, 5, 10][..]), (1000, &[1, 10, 100][..])] {
            let all = backends(n);
            let before = maglev::build(&all, SIZE).expect("valid");
            for &k in ks {
                // The k leaving backends are spread over the set, not the first k.
                let leaves = |i: usize| i.is_multiple_of(n / k) && i / (n / k) < k;
                let after: Vec<Backend> = all
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| change == "health" || !leaves(*i))
                    .map(|(i, b)| Backend { up: !leaves(i), ..b.clone() })
                    .collect();
                let started = Instant::now();
                let table = maglev::build(&after, SIZE).expect("valid");
                let build_ms = started.elapsed().as_secs_f64() * 1e3;
                let keys = |s: &[Backend]| s.iter().map(|b| b.key.clone()).collect::<Vec<_>>();
                let moved = maglev::changed_fraction(&before, &keys(&all), &table, &keys(&after));
                let ideal = k as f64 / n as f64;
                let owned = maglev::slots_per_backend(&table, after.len());
                let peak = f64::from(*owned.iter().max().expect("backends"));
                let peak_load = peak / (f64::from(SIZE) / (n - k) as f64);
                disruption.push(Disruption { change, n, k, moved, ideal, ratio: moved / ideal, peak_load, build_ms });
            }
        }
    }
    MaglevReport { size: SIZE, backends: set.len(), build_ms: times[times.len() / 2], disruption }
}

/// A floor spread above this marks a run taken while the host was busy (see
/// [`Report::floor_spread`]).
const BUSY_SPREAD: f64 = 1.15;

impl Report {
    /// The printed table.
    pub(crate) fn table(&self) -> String {
        let mut out = format!(
            "xdp_lb on kernel {} (BPF_PROG_TEST_RUN; restoring variant, and katran's repeat-1 method)\n",
            self.kernel
        );
        out.push_str(&format!(
            "{:<44}{:>10}{:>10}{:>12}{:>10}  {}\n",
            "case", "ns/pkt", "x floor", "katran ns", "x floor", "verdict"
        ));
        out.push_str(&format!(
            "{:<44}{:>10.1}{:>10.2}{:>12.1}{:>10.2}\n",
            "floor: xdp_empty", self.floor_ns, 1.0, self.katran_floor_ns, 1.0
        ));
        for c in &self.cases {
            out.push_str(&format!(
                "{:<44}{:>10.1}{:>10.2}{:>12.1}{:>10.2}  {}\n",
                c.name, c.ns_per_pkt, c.ratio_to_floor, c.katran_ns_per_pkt, c.katran_ratio_to_floor, c.verdict
            ));
        }
        out.push_str(&format!(
            "floor spread {:.2} (90th percentile of the floor samples over the 10th){}\n",
            self.floor_spread,
            if self.floor_spread > BUSY_SPREAD { ": the host was busy, ratios read high" } else { "" }
        ));
        let f = &self.syn_flood;
        out.push_str(&format!(
            "syn flood: {} distinct SYNs at {:.0}/s on one core (the same loop over the empty program: {:.0} calls/s), table {} entries per CPU\n",
            f.syns,
            f.syns_per_s,
            f.floor_calls_per_s,
            f.table_per_cpu
        ));
        for s in &f.survival {
            out.push_str(&format!(
                "syn flood: after {:>7} new flows, {:>4} of {} established flows keep their entry\n",
                s.new_flows, s.kept, s.established
            ));
        }
        let u = &self.setup;
        let each: Vec<_> = u.runs.iter().map(|r| format!("{:.2}", r.connection_ratio())).collect();
        out.push_str(&format!(
            "connection set-up ({} distinct flows, katran's method, median of {} runs): SYN {:.2}x, the packet after it (SYN cache into the table) {:.2}x, the one after that {:.2}x; the connection {:.2}x the floor ({:.1} ns; runs {})\n",
            u.flows,
            u.runs.len(),
            u.syn_ratio,
            u.first_ratio,
            u.later_ratio,
            u.connection_ratio,
            u.floor_ns,
            each.join(", ")
        ));
        let m = &self.maglev;
        out.push_str(&format!("maglev: build {} entries x {} backends: {:.2} ms\n", m.size, m.backends, m.build_ms));
        for d in &m.disruption {
            out.push_str(&format!(
                "maglev: {} of {} leave by {:<7}: {:>7.3}% of entries move, ideal {:.3}% ({:.3}x); peak load {:.3}x mean; build {:.1} ms\n",
                d.k,
                d.n,
                d.change,
                d.moved * 100.0,
                d.ideal * 100.0,
                d.ratio,
                d.peak_load,
                d.build_ms
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A machine that slows to a third for a spell: samples are taken one after another on a
    /// shared clock, and the spell covers the second half of the run.
    struct Machine {
        clock: std::cell::Cell<usize>,
    }

    impl Machine {
        fn sample(&self, cost: f64) -> f64 {
            let t = self.clock.get();
            self.clock.set(t + 1);
            if t >= 11 { cost * 3.0 } else { cost }
        }
    }

    #[test]
    fn paired_rounds_see_through_a_slow_spell() {
        // The true ratio is 3. Control: every floor sample first, then every program sample
        // (medians taken at different times) puts the floors before the spell and the
        // program inside it.
        let machine = Machine { clock: std::cell::Cell::new(0) };
        let floors: Vec<f64> = (0..11).map(|_| machine.sample(10.0)).collect();
        let programs: Vec<f64> = (0..11).map(|_| machine.sample(30.0)).collect();
        assert_eq!(median(&programs) / median(&floors), 9.0);

        let machine = Machine { clock: std::cell::Cell::new(0) };
        let paired = paired(11, || Ok(machine.sample(10.0)), || Ok(machine.sample(30.0))).unwrap();
        assert_eq!(paired.ratio, 3.0);
        assert_eq!(paired.floors.len(), 11);
    }
}
