//! How a backend's service is released (DESIGN.md section 1, "Socket-level release"): the
//! strategies a scenario chooses from, and the `[release]` section that chooses.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::release::{
    dispatcher::Dispatcher, drain::Drain, restart::Restart, reuseport_bpf::ReuseportBpf, sk_lookup::SkLookup,
    takeover::Takeover,
};
use zrlab_features::Feature;
use zrlab_host::error::Result;

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

    /// Whether it takes backends out of the LB's rings (so it needs an `[lb]` section).
    pub(crate) fn uses_lb(self) -> bool {
        matches!(self, Self::Drain)
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
    /// The machinery of one backend under this strategy (a dispatcher's program loaded, no
    /// socket in it yet); `ports`: the service's TCP and UDP ports.
    pub(super) async fn dispatcher(&self, ports: (u16, u16)) -> Result<Box<dyn Dispatcher>> {
        Ok(match self.strategy {
            Strategy::Restart => Box::new(Restart),
            Strategy::Drain => Box::new(Drain { period: Duration::from_millis(self.drain_ms) }),
            Strategy::Takeover => Box::new(Takeover { forward: self.forward }),
            Strategy::ReuseportBpf => Box::new(ReuseportBpf::load().await?),
            Strategy::SkLookup => Box::new(SkLookup::load(ports)?),
        })
    }
}

fn default_drain_ms() -> u64 {
    1000
}

fn default_forward() -> bool {
    true
}
