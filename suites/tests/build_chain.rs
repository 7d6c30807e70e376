//! The eBPF build chain: the object built by `lab/build.rs` is embedded, loads, verifies and
//! runs. Proven by running `xdp_pass` through `BPF_PROG_TEST_RUN` and reading its counter.

mod common;

use aya::{
    maps::PerCpuArray,
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use zrlab_common::pass::{COUNTERS_MAP, SLOT_FRAMES};
use zrlab_control::bpf::Object;

#[test]
fn embedded_xdp_pass_loads_runs_and_counts() {
    common::require_root();
    let mut ebpf = Object::XdpPass.load().expect("load xdp_pass object");
    let program: &mut Xdp = ebpf.program_mut("xdp_pass").expect("program xdp_pass").try_into().expect("an XDP program");
    program.load().expect("verifier accepts xdp_pass");
    // An Ethernet frame with an IPv4 ethertype: xdp_pass does not parse it, any frame will do.
    let mut frame = vec![0u8; 64];
    frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let repeat = 3;
    let result = program
        .test_run(TestRunOptions { data_in: Some(&frame), repeat, ..TestRunOptions::new() })
        .expect("BPF_PROG_TEST_RUN");
    assert_eq!(result.return_value, 2, "XDP_PASS");
    let counters: PerCpuArray<_, u64> =
        PerCpuArray::try_from(ebpf.map(COUNTERS_MAP).expect("counters map")).expect("a per-CPU array");
    let frames: u64 = counters.get(&SLOT_FRAMES, 0).expect("slot").iter().sum();
    assert_eq!(frames, u64::from(repeat), "the program counted every run");
}
