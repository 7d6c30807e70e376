//! `drain` (baseline): take the backend out of the LB's rings, wait the drain period, restart it
//! and put it back. Connections that outlive the drain period are reset.

use std::time::Duration;

use crate::release::dispatcher::{Dispatcher, Step};

/// The `drain` strategy.
#[derive(Debug)]
pub(super) struct Drain {
    /// How long the backend stays out of the rings before its process is stopped.
    pub(super) period: Duration,
}

impl Dispatcher for Drain {
    fn service_flags(&self, _slot: u32) -> Vec<String> {
        // Stopped means stopped: the old process exits at once.
        vec!["--drain-timeout=0s".into()]
    }

    fn steps(&self) -> Vec<Step> {
        vec![Step::Health(false), Step::Wait(self.period), Step::StopOld, Step::StartNew, Step::Health(true)]
    }
}
