//! How a backend's service is released (DESIGN.md section 1, "Socket-level release"): the
//! strategies a scenario chooses from, and the `[release]` section that chooses.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use zrlab_features::Feature;

/// A release strategy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Stop the old process, then start the new one (baseline): its connections are reset and
    /// new ones are refused in between; its UDP flows' ids are unknown to the new process.
    Restart,
    /// Take the backend out of the LB's rings, wait the drain period, then restart it and put
    /// it back (baseline): connections that outlive the drain period are reset.
    Drain,
    /// The new process takes the listening TCP socket and the UDP sockets from the old one
    /// (`SCM_RIGHTS` over a Unix socket, `workload::handover`); the old one stops accepting and
    /// reading, serves its connections until they end, and answers the datagrams of its UDP
    /// flows that the new process forwards to it in user space (`forward`; without it the new
    /// process answers them as unknown: misroutes).
    Takeover,
    /// Both processes bind with `SO_REUSEPORT`; an `SK_REUSEPORT` program picks the socket from
    /// a `REUSEPORT_SOCKARRAY`: new flows go to the generation the new process flips to when it
    /// is ready, UDP flows stay with the process their connection id names, and the requests
    /// queued on the old listener when it closes migrate (select-or-migrate).
    ReuseportBpf,
    /// An `SK_LOOKUP` program steers the service's ports to the ready process's sockets through
    /// a socket map; UDP flows stay with their process by a 4-tuple table; queued requests of
    /// the closing listener migrate through the kernel's `tcp_migrate_req`.
    SkLookup,
}

impl Strategy {
    /// The kernel features it needs (the scenario loader adds them to the scenario's).
    pub fn requires(self) -> &'static [Feature] {
        match self {
            Self::Restart | Self::Drain | Self::Takeover => &[],
            Self::ReuseportBpf => &[Feature::SkReuseport, Feature::SelectOrMigrate],
            // `tcp_migrate_req` came with select-or-migrate (5.14).
            Self::SkLookup => &[Feature::SkLookup, Feature::SelectOrMigrate],
        }
    }

    /// Whether both processes bind the service's ports with `SO_REUSEPORT`.
    pub fn shares_ports(self) -> bool {
        matches!(self, Self::ReuseportBpf | Self::SkLookup)
    }

    /// The name scenario files use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Restart => "restart",
            Self::Drain => "drain",
            Self::Takeover => "takeover",
            Self::ReuseportBpf => "reuseport-bpf",
            Self::SkLookup => "sk-lookup",
        }
    }
}

/// A scenario's `[release]` section.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseSpec {
    /// The strategy.
    pub strategy: Strategy,
    /// How long `drain` waits with the backend out of the rings before it stops the process.
    #[serde(default = "default_drain_ms")]
    pub drain_ms: u64,
    /// Whether `takeover` forwards the old process's UDP flows to it (default on).
    #[serde(default = "default_forward")]
    pub forward: bool,
}

impl ReleaseSpec {
    /// [`ReleaseSpec::drain_ms`] as a duration.
    pub fn drain_period(&self) -> Duration {
        Duration::from_millis(self.drain_ms)
    }
}

fn default_drain_ms() -> u64 {
    1000
}

fn default_forward() -> bool {
    true
}
