//! Finding and removing what lab runs left behind.
//!
//! A run whose owner died without tearing down (SIGKILL, a power cut) leaves namespaces in
//! `/run/netns` and a cgroup subtree, named with its [`RunId`]. The lab pins no BPF object:
//! programs live as long as the process (or the kept run's keeper) holding them, or the
//! namespace or cgroup they are attached to.
//! [`clean`] removes those of runs whose owner is gone; a live run is never touched.
//! Kept runs (`--keep`) are removed only when asked for explicitly.

use std::path::{Path, PathBuf};

use crate::{
    cgroup::{cgroup2_root, remove_tree},
    error::{LabError, Result},
    netns,
    run_id::RunId,
};

/// Which dead runs to remove.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Dead runs that were not kept: what every run does before it starts.
    Crashed,
    /// Every dead run, kept ones included: `zrlab clean`.
    AllDead,
}

/// What a clean removed.
#[derive(Debug, Default)]
pub struct Cleaned {
    /// Namespaces removed.
    pub namespaces: Vec<String>,
    /// Cgroup subtrees removed.
    pub cgroups: Vec<PathBuf>,
}

impl Cleaned {
    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty() && self.cgroups.is_empty()
    }
}

/// What a lab object's name says about whether it may be removed now.
fn removable(name: &str, scope: Scope) -> bool {
    match RunId::parse(name) {
        Some((run, _)) => !run.owner_alive() && (scope == Scope::AllDead || !run.kept),
        None => false,
    }
}

/// Removes the leftovers of dead runs; errors are collected, not fatal to the rest.
pub fn clean(scope: Scope) -> Result<Cleaned> {
    let mut cleaned = Cleaned::default();
    let mut errors = Vec::new();
    for name in netns::list()? {
        if removable(&name, scope) {
            match netns::remove_by_name(&name) {
                Ok(()) => cleaned.namespaces.push(name),
                Err(e) => errors.push(e),
            }
        }
    }
    // No cgroup v2 mount means no cgroups can have been left behind.
    if let Ok(root) = cgroup2_root() {
        for dir in lab_dirs(&root, scope) {
            match remove_tree(&dir) {
                Ok(()) => cleaned.cgroups.push(dir),
                Err(e) => errors.push(e),
            }
        }
    }
    if errors.is_empty() { Ok(cleaned) } else { Err(LabError::Teardown(errors)) }
}

/// The lab-named directories directly under `root` that `scope` allows removing.
fn lab_dirs(root: &Path, scope: Scope) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let name = entry.file_name().into_string().ok()?;
            removable(&name, scope).then(|| entry.path())
        })
        .collect()
}

/// Every object of any lab run (live or dead) that exists now (namespaces, cgroup subtrees):
/// for tests and `zrlab list`.
pub fn inventory() -> Result<Vec<String>> {
    let mut found: Vec<String> =
        netns::list()?.into_iter().filter(|n| RunId::is_lab_name(n)).map(|n| format!("netns {n}")).collect();
    for root in cgroup2_root().into_iter() {
        if let Ok(entries) = std::fs::read_dir(&root) {
            for entry in entries.flatten() {
                if let Ok(name) = entry.file_name().into_string()
                    && RunId::is_lab_name(&name)
                {
                    found.push(entry.path().display().to_string());
                }
            }
        }
    }
    Ok(found)
}
