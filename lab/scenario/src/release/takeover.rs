//! `takeover`: every process listens on a handover socket; the new one is started with
//! `--takeover` naming the old one's, receives its sockets (`workload::handover`), and the old
//! one drains itself once the new one asked.

use crate::release::dispatcher::{Dispatcher, OLD_SERVES, Step};

/// The `takeover` strategy.
#[derive(Debug)]
pub(super) struct Takeover {
    /// Whether the new process forwards the old one's UDP flows to it.
    pub(super) forward: bool,
}

impl Dispatcher for Takeover {
    fn service_flags(&self, slot: u32) -> Vec<String> {
        let mut flags = vec![format!("--handover={}", handover_name(slot))];
        if slot > 0 {
            flags.push(format!("--takeover={}", handover_name(slot - 1)));
            if self.forward {
                flags.push("--forward".into());
            }
        }
        flags.push(OLD_SERVES.into());
        flags
    }

    fn steps(&self) -> Vec<Step> {
        vec![Step::StartNew]
    }
}

/// The handover socket name of a backend's process in `slot` (abstract, private to the
/// backend's namespace).
fn handover_name(slot: u32) -> String {
    format!("zrlab-handover-{slot}")
}
