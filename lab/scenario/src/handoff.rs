//! Handing a kept run to its keeper: starting `zrlab keeper` (`zrlab::keep`) in a node of the
//! kept lab and waiting until it is ready.
//!
//! It lives apart from `keep` so that the runs that keep a lab (scenario runs, replays) do not
//! depend on the keeper, which depends on them (it adopts what they ran). The arguments written
//! here are the ones `keep::KeeperArgs` parses.

use std::{path::Path, time::Duration};

use zrlab_host::error::{LabError, Result};
use zrlab_topology::Lab;

/// What a kept run ran, for its keeper.
#[derive(Clone, Copy, Debug)]
pub enum KeptRun<'a> {
    /// A scenario file (the keeper deploys its main variant).
    Scenario(&'a Path),
    /// A replay scenario file (the keeper deploys its LB configuration and events).
    Replay(&'a Path),
}

/// Starts the keeper of `lab` (a kept run of `what`) in `node` and waits until it is ready.
pub async fn start_keeper(lab: &mut Lab, node: &str, exe: &Path, what: KeptRun<'_>, timeout: Duration) -> Result<()> {
    let (flag, file) = match what {
        KeptRun::Scenario(file) => ("scenario", file),
        KeptRun::Replay(file) => ("replay", file),
    };
    let file = file.canonicalize().map_err(|e| LabError::os("resolve", file.display().to_string(), e))?;
    let args = vec!["keeper".to_owned(), format!("--run={}", lab.run_id()), format!("--{flag}={}", file.display())];
    crate::release::launch(lab, node, exe, &args, timeout).await.map(drop)
}
