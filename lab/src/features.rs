//! Kernel features the lab depends on, detected by trying them, never by reading the version.
//!
//! A scenario lists what it `requires`; a kernel that lacks one gets an explicit skip that names
//! the feature and the kernel version that introduced it (DESIGN.md section 4).

use std::{collections::BTreeMap, sync::Mutex};

use serde::{Deserialize, Serialize};

use crate::{
    error::Result,
    netns::Netns,
    nl::{Nl, nexthop::GroupType},
    run_id::RunId,
};

/// A kernel feature a scenario can require.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Feature {
    /// Resilient nexthop groups (`ip nexthop add ... type resilient`).
    ResilientNexthopGroups,
}

impl Feature {
    /// What the feature is, and since when the kernel has it.
    pub fn describe(self) -> &'static str {
        match self {
            Self::ResilientNexthopGroups => "resilient nexthop groups (kernel 5.13+)",
        }
    }

    /// Whether the running kernel has the feature (probed once per process).
    pub async fn probe(self) -> Result<bool> {
        static CACHE: Mutex<BTreeMap<Feature, bool>> = Mutex::new(BTreeMap::new());
        if let Some(known) = CACHE.lock().expect("not poisoned").get(&self) {
            return Ok(*known);
        }
        let present = match self {
            Self::ResilientNexthopGroups => probe_resilient_groups().await?,
        };
        CACHE.lock().expect("not poisoned").insert(self, present);
        Ok(present)
    }
}

/// `(major, minor)` of the running kernel, from `uname -r`.
pub fn kernel_version() -> Option<(u32, u32)> {
    let release = crate::report::kernel_release();
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
