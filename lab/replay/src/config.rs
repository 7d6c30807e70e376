//! The LB configuration a replay runs with: VIPs with their reals, and each real's weight,
//! state and server id. The same notions as a scenario's `[lb]` section and the server-id
//! registry, written out for one LB node.
//!
//! ```toml
//! [[vip]]
//! addr = "203.0.113.10"
//! port = 8080              # 0: any port
//! proto = "tcp"            # or "udp"
//! tcp_id_routing = true    # the VIP's policy: any key of `zrlab_control::lb::VipOptions`
//! reals = ["192.0.2.2", "192.0.2.6"]
//!
//! [[real]]
//! addr = "192.0.2.2"
//! weight = 1               # default 1; 0: not in the configuration
//! state = "serving"        # serving (default) | drained (out of the rings, id live) | down
//! server_id = 1001         # optional; live while serving or drained
//! ```
//!
//! Errors name the file and the field, as for topologies and scenarios.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::Path,
};

use serde::Deserialize;

use zrlab_control::{
    lb::{Balancer, RealSpec, VipOptions, VipSpec},
    server_id::Membership,
};
use zrlab_host::{
    error::{LabError, Result},
    toml_file::{SpecError, from_table, read_table},
};
use zrlab_wire::{
    Proto,
    packet::{EthPayload, FrameRepr, IpPayload},
    pcap::Frame,
};

/// A VIP and its reals.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipEntry {
    /// Address.
    pub addr: IpAddr,
    /// Port (0: any).
    pub port: u16,
    /// Transport.
    pub proto: Proto,
    /// Its policy (`tcp_id_routing`, `ring_size`, ...: the keys of `VipOptions`).
    #[serde(flatten)]
    pub options: VipOptions,
    /// Its reals (each defined in `[[real]]`).
    pub reals: Vec<IpAddr>,
}

fn default_weight() -> u32 {
    1
}

/// A real's state, as the server-id registry knows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// In the rings.
    #[default]
    Serving,
    /// Out of the rings, keeps its flows and its id.
    Drained,
    /// Its host is down: out of the rings, its id not live.
    Down,
}

/// A real.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RealEntry {
    /// Address (the tunnel's destination).
    pub addr: IpAddr,
    /// Weight (0: not in the configuration).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// State.
    #[serde(default)]
    pub state: State,
    /// Server id (TPR option, QUIC connection id).
    #[serde(default)]
    pub server_id: Option<u32>,
}

impl RealEntry {
    fn membership(&self) -> Membership {
        match (self.weight, self.state) {
            (0, _) => Membership::Removed,
            (_, State::Serving) => Membership::Serving,
            (_, State::Drained) => Membership::Drained,
            (_, State::Down) => Membership::Down,
        }
    }
}

/// A replay's LB configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LbConfig {
    /// The VIPs.
    pub vip: Vec<VipEntry>,
    /// The reals.
    pub real: Vec<RealEntry>,
}

impl LbConfig {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, SpecError> {
        let config: Self = from_table(path, "", read_table(path)?)?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), SpecError> {
        let err = |field: String, message: String| SpecError::new(path, field, message);
        if self.vip.is_empty() {
            return Err(err("vip".into(), "at least one [[vip]] is needed".into()));
        }
        let mut addrs = BTreeSet::new();
        let mut ids = BTreeSet::new();
        for (i, real) in self.real.iter().enumerate() {
            if !addrs.insert(real.addr) {
                return Err(err(format!("real[{i}].addr"), format!("{} is defined twice", real.addr)));
            }
            if let Some(id) = real.server_id {
                if id == 0 {
                    return Err(err(format!("real[{i}].server_id"), "0 means \"no id\" on the wire".into()));
                }
                if !ids.insert(id) {
                    return Err(err(format!("real[{i}].server_id"), format!("{id} is used twice")));
                }
            }
        }
        for (i, vip) in self.vip.iter().enumerate() {
            if let Some(why) = vip.options.invalid() {
                return Err(err(format!("vip[{i}].ring_size"), why));
            }
            if vip.reals.is_empty() {
                return Err(err(format!("vip[{i}].reals"), "at least one real is needed".into()));
            }
            for (j, addr) in vip.reals.iter().enumerate() {
                if !addrs.contains(addr) {
                    return Err(err(format!("vip[{i}].reals[{j}]"), format!("{addr} has no [[real]] entry")));
                }
            }
            if !vip.reals.iter().any(|a| self.real_of(*a).is_some_and(|r| r.membership() == Membership::Serving)) {
                return Err(err(
                    format!("vip[{i}].reals"),
                    "no real is serving (weight above 0, state serving)".into(),
                ));
            }
        }
        Ok(())
    }

    /// Whether `frame` is addressed to one of the VIPs (its address and protocol, and its port
    /// unless the VIP takes any).
    pub fn addresses_a_vip(&self, frame: &[u8]) -> bool {
        let Some(EthPayload::Ip(ip)) = FrameRepr::parse(frame).map(|f| f.payload) else { return false };
        let (proto, port) = match &ip.payload {
            IpPayload::Tcp(tcp) => (Proto::Tcp, tcp.dport),
            IpPayload::Udp(udp) => (Proto::Udp, udp.dport),
            _ => return false,
        };
        self.vip.iter().any(|v| v.addr == ip.dst && v.proto == proto && (v.port == 0 || v.port == port))
    }

    /// Fails, naming `trace` and the VIPs, when no frame of `frames` is addressed to a VIP: a
    /// replay of it would judge nothing and must not pass.
    pub fn require_vip_frames(&self, trace: &Path, frames: &[Frame]) -> Result<()> {
        if frames.iter().any(|f| self.addresses_a_vip(&f.data)) {
            return Ok(());
        }
        let vips: Vec<String> = self.vip.iter().map(|v| format!("{} {}:{}", v.proto, v.addr, v.port)).collect();
        Err(LabError::Usage(format!(
            "{}: none of its {} frames is addressed to a configured VIP ({}): a replay would judge nothing",
            trace.display(),
            frames.len(),
            vips.join(", ")
        )))
    }

    fn real_of(&self, addr: IpAddr) -> Option<&RealEntry> {
        self.real.iter().find(|r| r.addr == addr)
    }

    /// Every VIP with its reals, as the LB's control plane takes them (drained and down reals
    /// are not up).
    pub(crate) fn vips(&self) -> Vec<(VipSpec, Vec<RealSpec>)> {
        self.vip
            .iter()
            .map(|vip| {
                let spec = VipSpec::new(vip.addr, vip.port, vip.proto).with(vip.options.clone());
                let reals = vip
                    .reals
                    .iter()
                    .filter_map(|addr| self.real_of(*addr))
                    .map(|r| RealSpec { addr: r.addr, weight: r.weight, up: r.membership() == Membership::Serving })
                    .collect();
                (spec, reals)
            })
            .collect()
    }

    /// The live ids (serving and drained reals'): id -> real.
    pub(crate) fn live_ids(&self) -> BTreeMap<u32, IpAddr> {
        self.real.iter().filter(|r| r.membership().id_live()).filter_map(|r| Some((r.server_id?, r.addr))).collect()
    }

    /// The server id of the real at `addr`, if it has one.
    pub(crate) fn server_id_of(&self, addr: IpAddr) -> Option<u32> {
        self.real_of(addr)?.server_id
    }

    /// Configures `balancer`: every VIP's ring, and the live ids.
    pub fn apply(&self, balancer: &mut Balancer) -> Result<()> {
        for (spec, reals) in self.vips() {
            balancer.set_vip(&spec, &reals)?;
        }
        balancer.sync_server_ids(&self.live_ids())
    }
}
