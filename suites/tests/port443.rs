//! The many-sockets-on-443 suite: bind-conflict semantics (one test per case) and the
//! bind-scaling verdict.
//!
//! Every kernel is compared with **one expected table** (`snapshots/port443__<case>.snap`):
//! the six series the matrix boots (5.10 to 7.3) and the host's all behave alike today. A
//! kernel series that differs on purpose gets an entry in [`DEVIATIONS`] (its whole observed
//! text for that case); any other difference fails the case, named, on any kernel, known or
//! not: never a pass without a comparison.

mod common;

use test_case::test_case;
use zrlab_features::{
    Feature, kernel_version,
    port443::{
        conflicts::{self, CASES, Mode},
        scaling::{self, BindRegression},
    },
    port443_scaling_options,
};
use zrlab_wire::Family;

use common::runtime;

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
    for family in [Family::Ipv4, Family::Ipv6] {
        if case.v6_only_case && family == Family::Ipv4 {
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
    match DEVIATIONS.iter().find(|d| d.series == series && d.case == name) {
        Some(deviation) => assert_eq!(
            observed, deviation.observed,
            "case {name} on kernel series {series}: not the recorded deviation ({})",
            deviation.why
        ),
        None => insta::assert_snapshot!(name, observed),
    }
}

/// A kernel series whose outcome of one case differs from the expected table, on purpose.
struct Deviation {
    /// `major.minor`.
    series: &'static str,
    /// The case.
    case: &'static str,
    /// Its whole observed text on that series.
    observed: &'static str,
    /// Why it differs (the kernel change behind it).
    why: &'static str,
}

/// None today: every series the matrix boots matches the expected table.
const DEVIATIONS: &[Deviation] = &[];

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
    // The expectation comes from the bhash2 probe (the kernel's symbol table), not from the
    // version number: a backport or a custom kernel is judged by what it has.
    let (bhash2, seen) = runtime().block_on(Feature::Bhash2.probe_with_detail()).expect("bhash2 probe");
    let version = kernel_version();
    if bhash2 {
        assert_eq!(
            report.verdict,
            BindRegression::RegressionAbsent,
            "kernel {version:?} has bhash2 ({seen}): bind must scale (worst ratio {:.2}, limit {:.1})",
            report.worst_bind_ratio,
            report.ratio_limit
        );
    } else {
        // Without bhash2 the regression is the expected finding, reported by the matrix.
        assert_eq!(report.verdict, BindRegression::RegressionPresent, "kernel {version:?} lacks bhash2 ({seen})");
        eprintln!("EXPECTED FINDING: the 443 bind regression is present on {version:?} ({seen})");
    }
}
