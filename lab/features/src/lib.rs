//! `zrlab-features`: kernel features the lab depends on, detected by trying them, never by
//! reading the version, and the many-sockets-on-443 suite ([`port443`]). It uses `zrlab-host`
//! alone (raw `bpf(2)` calls, not the embedded objects), so it builds without the eBPF
//! toolchain; it must not import the control plane or scenarios.
//!
//!
//! A scenario lists what it `requires`; a kernel that lacks one gets an explicit skip that names
//! the feature and the kernel version that introduced it (DESIGN.md section 4). `zrlab features`
//! (and the kernel matrix) probes every one and cross-checks the result against that table:
//! a kernel whose probe disagrees with its version is a finding.
//!
//! How each is tried:
//! - BPF features ([`bpf`]): load a tiny hand-assembled program of the type, with the attach
//!   type, the helper or the context field the feature adds (and run or attach it where that is
//!   the feature);
//! - resilient nexthop groups: create one in a scratch namespace over netlink;
//! - lhash2 and bhash2 cannot be loaded: they are hash tables inside the TCP stack. lhash2 is
//!   detected by behaviour ([`timing`]): with thousands of listeners on port 443, connection
//!   set-up costs the same as with a hundred. bhash2 is detected by structure: the kernel's
//!   symbol table holds the function that creates its buckets (`inet_bind2_bucket_create`), so
//!   the 443 suite can compare its measured `bind()` scaling with a probe that measured nothing.

mod bpf;
pub mod port443;
mod timing;

use std::{collections::BTreeMap, sync::Mutex};

use serde::{Deserialize, Serialize};

pub use timing::{PORT443_SIZES_ENV, port443_scaling_options};

use zrlab_host::{
    error::Result,
    netns::Netns,
    nl::{Nl, nexthop::GroupType},
    run_id::RunId,
};

/// A kernel feature a scenario can require.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Feature {
    /// `BPF_PROG_TEST_RUN`: run a program on a supplied packet (4.12).
    BpfProgTestRun,
    /// `BPF_PROG_TYPE_SOCK_OPS` (4.13).
    SockOps,
    /// The listener hash keyed by address and port (4.16/4.17).
    Lhash2,
    /// `BPF_PROG_TYPE_SK_REUSEPORT` with `BPF_MAP_TYPE_REUSEPORT_SOCKARRAY` (4.19).
    SkReuseport,
    /// The `bpf_sk_assign` helper (5.6).
    SkAssign,
    /// `BPF_PROG_TYPE_SK_LOOKUP` (5.9).
    SkLookup,
    /// `bpf_{load,store,reserve}_hdr_opt`: TCP header options from sock_ops (5.10).
    TcpHeaderOptions,
    /// `BPF_SK_REUSEPORT_SELECT_OR_MIGRATE`: TCP request migration (5.14).
    SelectOrMigrate,
    /// The bind hash keyed by address and port (6.1).
    Bhash2,
    /// Resilient nexthop groups (`ip nexthop add ... type resilient`, 5.13).
    ResilientNexthopGroups,
    /// TCX: tc BPF programs attached by link, without a qdisc (6.6).
    Tcx,
}

impl Feature {
    /// Every feature, in the order of DESIGN.md section 4 (resilient groups last).
    pub(crate) const ALL: [Feature; 11] = [
        Self::BpfProgTestRun,
        Self::SockOps,
        Self::Lhash2,
        Self::SkReuseport,
        Self::SkAssign,
        Self::SkLookup,
        Self::TcpHeaderOptions,
        Self::SelectOrMigrate,
        Self::Bhash2,
        Self::ResilientNexthopGroups,
        Self::Tcx,
    ];

    /// The feature's name in scenario files, plans and reports (`sk-lookup`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::BpfProgTestRun => "bpf-prog-test-run",
            Self::SockOps => "sock-ops",
            Self::Lhash2 => "lhash2",
            Self::SkReuseport => "sk-reuseport",
            Self::SkAssign => "sk-assign",
            Self::SkLookup => "sk-lookup",
            Self::TcpHeaderOptions => "tcp-header-options",
            Self::SelectOrMigrate => "select-or-migrate",
            Self::Bhash2 => "bhash2",
            Self::ResilientNexthopGroups => "resilient-nexthop-groups",
            Self::Tcx => "tcx",
        }
    }

    /// The first kernel `(major, minor)` with the feature, per DESIGN.md section 4.
    pub fn since(self) -> (u32, u32) {
        match self {
            Self::BpfProgTestRun => (4, 12),
            Self::SockOps => (4, 13),
            Self::Lhash2 => (4, 17),
            Self::SkReuseport => (4, 19),
            Self::SkAssign => (5, 6),
            Self::SkLookup => (5, 9),
            Self::TcpHeaderOptions => (5, 10),
            Self::SelectOrMigrate => (5, 14),
            Self::Bhash2 => (6, 1),
            Self::ResilientNexthopGroups => (5, 13),
            Self::Tcx => (6, 6),
        }
    }

    /// What the feature is, and since when the kernel has it.
    pub fn describe(self) -> &'static str {
        match self {
            Self::BpfProgTestRun => "BPF_PROG_TEST_RUN (kernel 4.12+)",
            Self::SockOps => "sock_ops programs (kernel 4.13+)",
            Self::Lhash2 => "the lhash2 listener hash (kernel 4.16/4.17+)",
            Self::SkReuseport => "SK_REUSEPORT programs with REUSEPORT_SOCKARRAY (kernel 4.19+)",
            Self::SkAssign => "the bpf_sk_assign helper (kernel 5.6+)",
            Self::SkLookup => "SK_LOOKUP programs (kernel 5.9+)",
            Self::TcpHeaderOptions => "TCP header option helpers for sock_ops (kernel 5.10+)",
            Self::SelectOrMigrate => "SK_REUSEPORT_SELECT_OR_MIGRATE, TCP request migration (kernel 5.14+)",
            Self::Bhash2 => "the bhash2 bind hash (kernel 6.1+)",
            Self::ResilientNexthopGroups => "resilient nexthop groups (kernel 5.13+)",
            Self::Tcx => "TCX, tc programs attached without a qdisc (kernel 6.6+)",
        }
    }

    /// How the probe tries the feature.
    pub(crate) fn method(self) -> &'static str {
        match self {
            Self::BpfProgTestRun => "load an XDP program, run it with BPF_PROG_TEST_RUN",
            Self::SockOps => "load a sock_ops program",
            Self::Lhash2 => "timing: connection set-up with N listeners on 443 vs 100",
            Self::SkReuseport => "load an sk_reuseport program selecting from a sockarray",
            Self::SkAssign => "load a tc program calling bpf_sk_assign (verifier log)",
            Self::SkLookup => "load an sk_lookup program, attach it to a scratch netns",
            Self::TcpHeaderOptions => "load a sock_ops program calling bpf_reserve_hdr_opt",
            Self::SelectOrMigrate => "load a SELECT_OR_MIGRATE program reading migrating_sk",
            Self::Bhash2 => "symbol inet_bind2_bucket_create in /proc/kallsyms",
            Self::ResilientNexthopGroups => "create a resilient group in a scratch netns",
            Self::Tcx => "load a tc program, attach it with TCX to lo of a scratch netns",
        }
    }

    /// Whether the running kernel has the feature (probed once per process).
    pub async fn probe(self) -> Result<bool> {
        Ok(self.probe_with_detail().await?.0)
    }

    /// Whether the running kernel has the feature, and what the probe saw (probed once per
    /// process; the two timing probes share one measurement).
    pub async fn probe_with_detail(self) -> Result<(bool, String)> {
        static CACHE: Mutex<BTreeMap<Feature, (bool, String)>> = Mutex::new(BTreeMap::new());
        if let Some(known) = CACHE.lock().expect("not poisoned").get(&self) {
            return Ok(known.clone());
        }
        let verdict = match self {
            Self::BpfProgTestRun => bpf::test_run()?,
            Self::SockOps => bpf::sock_ops()?,
            Self::SkReuseport => bpf::sk_reuseport()?,
            Self::SkAssign => bpf::sk_assign()?,
            Self::SkLookup => {
                let netns = Netns::create(&RunId::new(false).name("probe"))?;
                bpf::sk_lookup(&netns)?
            }
            Self::TcpHeaderOptions => bpf::tcp_header_options()?,
            Self::Tcx => {
                let netns = Netns::create(&RunId::new(false).name("probe"))?;
                netns.run(bpf::tcx)??
            }
            Self::SelectOrMigrate => bpf::select_or_migrate()?,
            Self::Lhash2 => {
                // Measured, so noisy: a measurement that disagrees with the version table is
                // repeated before the disagreement counts (see `settle`).
                let table = kernel_version().map(|v| v >= self.since());
                let mut seen = Vec::new();
                loop {
                    seen.push(timing::probe().await?);
                    if let Some(verdict) = settle(table, &seen) {
                        break verdict;
                    }
                }
            }
            Self::Bhash2 => kallsyms_has("inet_bind2_bucket_create")?,
            Self::ResilientNexthopGroups => {
                let present = probe_resilient_groups().await?;
                let what = if present { "created" } else { "refused" };
                (present, format!("a resilient group was {what}"))
            }
        };
        CACHE.lock().expect("not poisoned").insert(self, verdict.clone());
        Ok(verdict)
    }
}

/// Whether the kernel's symbol table names `symbol` (names are listed whatever
/// `kptr_restrict` hides of the addresses).
fn kallsyms_has(symbol: &str) -> Result<(bool, String)> {
    const PATH: &str = "/proc/kallsyms";
    let text = std::fs::read_to_string(PATH).map_err(|e| zrlab_host::error::LabError::os("read", PATH, e))?;
    if text.is_empty() {
        return Err(zrlab_host::error::LabError::Usage(format!("{PATH} is empty: a kernel without CONFIG_KALLSYMS")));
    }
    let present = text.lines().any(|line| line.split_whitespace().nth(2) == Some(symbol));
    Ok((present, format!("{symbol} {} in {PATH}", if present { "listed" } else { "not listed" })))
}

/// Measurements a timing probe takes at most before it calls a disagreement with the table.
const TIMING_TRIES: usize = 3;

/// The verdict of a measured probe from its measurements so far (`seen`, oldest first), or
/// `None` to measure once more: a measurement that agrees with the version table (`table`)
/// settles it; a disagreement counts only when [`TIMING_TRIES`] measurements all disagree. The
/// detail lists every measurement, so a report shows what was seen.
fn settle(table: Option<bool>, seen: &[(bool, String)]) -> Option<(bool, String)> {
    let last = seen.last()?;
    let agrees = table.is_none_or(|t| t == last.0);
    if !agrees && seen.len() < TIMING_TRIES {
        return None;
    }
    let detail = match seen.len() {
        1 => last.1.clone(),
        n => {
            let all: Vec<String> = seen.iter().enumerate().map(|(i, (_, d))| format!("try {}: {d}", i + 1)).collect();
            format!("{} (measured {n} times: {})", last.1, all.join("; "))
        }
    };
    Some((last.0, detail))
}

/// One feature probed on the running kernel, with the version table's opinion.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Probe {
    /// The feature.
    pub feature: Feature,
    /// What trying it showed.
    pub present: bool,
    /// The version table's first kernel, `major.minor`.
    pub since: String,
    /// Whether the table says this kernel has it (`None` when `uname -r` does not parse).
    pub table_says: Option<bool>,
    /// How it was tried.
    pub method: String,
    /// What the probe saw.
    pub detail: String,
}

impl Probe {
    /// Whether the probe and the version table agree (a disagreement is a finding).
    pub(crate) fn agrees(&self) -> bool {
        self.table_says.is_none_or(|expected| expected == self.present)
    }
}

/// Probes every feature of [`Feature::ALL`] on the running kernel.
pub async fn probe_all() -> Result<Vec<Probe>> {
    let version = kernel_version();
    let mut probes = Vec::new();
    for feature in Feature::ALL {
        let (present, detail) = feature.probe_with_detail().await?;
        let (major, minor) = feature.since();
        probes.push(Probe {
            feature,
            present,
            since: format!("{major}.{minor}"),
            table_says: version.map(|v| v >= feature.since()),
            method: feature.method().into(),
            detail,
        });
    }
    Ok(probes)
}

/// The probes as a fixed-width table.
pub fn table(probes: &[Probe]) -> String {
    let mut out = format!(
        "kernel {}\n{:<26}{:<9}{:<7}{:<10}{}\n",
        zrlab_host::kernel_release(),
        "feature",
        "probe",
        "since",
        "table",
        "detail"
    );
    for p in probes {
        let table = match (p.table_says, p.agrees()) {
            (None, _) => "?",
            (Some(_), true) => "agrees",
            (Some(_), false) => "DIFFERS",
        };
        out.push_str(&format!(
            "{:<26}{:<9}{:<7}{:<10}{}\n",
            p.feature.name(),
            if p.present { "present" } else { "absent" },
            p.since,
            table,
            p.detail
        ));
    }
    out
}

/// `(major, minor)` of the running kernel, from `uname -r`.
pub fn kernel_version() -> Option<(u32, u32)> {
    let release = zrlab_host::kernel_release();
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Makes a resilient group in a scratch namespace (named like a lab run, so a crash leaves
/// nothing `zrlab clean` would not find).
async fn probe_resilient_groups() -> Result<bool> {
    let netns = Netns::create(&RunId::new(false).name("probe"))?;
    let nl = Nl::connect(&netns)?;
    nl.veth_add("probe0", "probe1", &netns).await?;
    nl.addr_add("probe0", "192.0.2.1/24".parse().expect("valid")).await?;
    nl.link_up("probe0").await?;
    nl.link_up("probe1").await?;
    nl.nexthop_add(1, "192.0.2.2".parse().expect("valid"), "probe0").await?;
    Ok(nl.nexthop_group_set(2, &[1], GroupType::Resilient, 8, false).await.is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(present: bool, ratio: &str) -> (bool, String) {
        (present, format!("{ratio}x"))
    }

    #[test]
    fn a_timing_probe_repeats_a_disagreement_before_it_counts() {
        // Agreeing at once: settled, as measured.
        assert_eq!(settle(Some(true), &[m(true, "1.2")]), Some(m(true, "1.2")));
        // One noisy measurement disagrees: measure again; the second agrees: settled on it.
        assert_eq!(settle(Some(true), &[m(false, "9.1")]), None);
        let settled = settle(Some(true), &[m(false, "9.1"), m(true, "1.3")]).expect("settled");
        assert!(settled.0);
        assert!(settled.1.contains("try 1: 9.1x") && settled.1.contains("try 2: 1.3x"), "{}", settled.1);
        // Three disagreements: a real finding, with every ratio in the detail.
        assert_eq!(settle(Some(true), &[m(false, "9"), m(false, "8")]), None);
        let finding = settle(Some(true), &[m(false, "9"), m(false, "8"), m(false, "7")]).expect("settled");
        assert!(!finding.0 && finding.1.contains("measured 3 times"), "{}", finding.1);
        // No table opinion (unparsable kernel version): the first measurement stands.
        assert_eq!(settle(None, &[m(false, "9")]), Some(m(false, "9")));
    }
}
