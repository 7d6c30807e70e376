//! The many-sockets-on-443 suite: bind-conflict semantics (one test per case, outcomes
//! snapshotted per kernel series) and the bind-scaling verdict.

mod common;

use std::path::Path;

use test_case::test_case;
use zrlab::{
    features::{kernel_version, port443_scaling_options},
    port443::{
        conflicts::{self, CASES, Family, Mode},
        scaling::{self, Verdict},
    },
};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

/// Every case the test-case list below names, to catch a case added without its test.
const COVERED: &[&str] = &[
    "incident",
    "incident-wildcard-first",
    "specific-then-wildcard",
    "wildcard-then-specific",
    "wildcard-then-specific-reuseport",
    "same-address-reuseport",
    "same-address-reuseport-then-plain",
    "same-address-plain-then-reuseport",
    "distinct-addresses-plain",
    "reuseaddr-specific-then-wildcard",
    "reuseaddr-same-address",
    "reuseaddr-and-reuseport",
    "ipv4-then-dual-stack-wildcard",
    "ipv4-then-v6only-wildcard",
];

#[test]
fn every_case_has_a_test() {
    let names: Vec<&str> = CASES.iter().map(|c| c.name).collect();
    assert_eq!(names, COVERED);
}

#[test_case("incident")]
#[test_case("incident-wildcard-first")]
#[test_case("specific-then-wildcard")]
#[test_case("wildcard-then-specific")]
#[test_case("wildcard-then-specific-reuseport")]
#[test_case("same-address-reuseport")]
#[test_case("same-address-reuseport-then-plain")]
#[test_case("same-address-plain-then-reuseport")]
#[test_case("distinct-addresses-plain")]
#[test_case("reuseaddr-specific-then-wildcard")]
#[test_case("reuseaddr-same-address")]
#[test_case("reuseaddr-and-reuseport")]
#[test_case("ipv4-then-dual-stack-wildcard")]
#[test_case("ipv4-then-v6only-wildcard")]
fn bind_conflicts(name: &str) {
    common::require_root();
    let case = CASES.iter().find(|c| c.name == name).expect("a known case");
    let mut lines = Vec::new();
    for family in [Family::V4, Family::V6] {
        if case.v6_only_case && family == Family::V4 {
            continue;
        }
        for mode in [Mode::BoundOnly, Mode::Listening] {
            let outcomes = runtime().block_on(conflicts::run(case, family, mode)).expect("case ran");
            lines.push(conflicts::describe(case, family, mode, &outcomes));
        }
    }
    let observed = lines.join("\n");
    let (major, minor) = kernel_version().expect("kernel version");
    let series = format!("{major}.{minor}");
    let reference =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/snapshots/port443__{name}@{series}.snap"));
    if !reference.exists() && std::env::var_os("INSTA_UPDATE").is_none_or(|v| v != "always") {
        // A kernel series nobody has recorded yet: a finding for the matrix, not a pass.
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("port443-{series}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.txt")), &observed).unwrap();
        eprintln!("SKIPPED comparison: no recorded outcomes for kernel series {series}; observed:\n{observed}");
        return;
    }
    insta::with_settings!({ snapshot_suffix => series }, {
        insta::assert_snapshot!(name, observed);
    });
}

#[test]
fn bind_scaling_verdict_matches_the_kernel() {
    common::require_root();
    // Timing: keep the zrlab runs of other tests off the CPUs meanwhile.
    let _lock = common::exclusive();
    // The full sizes (up to 24,000 sockets) unless ZRLAB_PORT443_SIZES says otherwise: the
    // kernel matrix uses smaller ones in TCG guests.
    let opts = port443_scaling_options();
    let report = runtime().block_on(scaling::run(&opts)).expect("measurements");
    eprintln!("{}", report.table());
    assert_eq!(report.bind.iter().map(|p| p.n).collect::<Vec<_>>(), opts.sizes);
    let version = kernel_version().expect("kernel version");
    if version >= (6, 1) {
        assert_eq!(
            report.verdict,
            Verdict::RegressionAbsent,
            "kernel {version:?} has bhash2: bind must scale (worst ratio {:.2}, limit {:.1})",
            report.worst_bind_ratio,
            report.ratio_limit
        );
    } else {
        // Before bhash2 the regression is the expected finding, reported by the matrix.
        assert_eq!(report.verdict, Verdict::RegressionPresent, "kernel {version:?} predates bhash2");
        eprintln!("EXPECTED FINDING: the 443 bind regression is present on {version:?}");
    }
}
