//! `restart` (baseline): stop the old process, then start the new one. Its connections are
//! reset and new ones are refused in between.

use crate::release::dispatcher::{Dispatcher, Step};

/// The `restart` strategy (no state of its own).
#[derive(Debug)]
pub(super) struct Restart;

impl Dispatcher for Restart {
    fn service_flags(&self, _slot: u32) -> Vec<String> {
        // Stopped means stopped: the old process exits at once.
        vec!["--drain-timeout=0s".into()]
    }

    fn steps(&self) -> Vec<Step> {
        vec![Step::StopOld, Step::StartNew]
    }
}
