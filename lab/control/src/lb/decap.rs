//! The backends' side of the tunnel: `xdp_decap`, its set of addresses, its counters.

use std::net::IpAddr;

use aya::maps::HashMap;
use zrlab_common::{
    addr::words,
    decap::{COUNTERS_MAP, DECAP_DSTS_MAP, counter},
};

use crate::bpf::{Loaded, Object, map_err, sum_counters};
use zrlab_host::{error::Result, netns::Netns};

/// A loaded `xdp_decap`.
#[derive(Debug)]
pub struct Decap {
    bpf: Loaded,
}

/// Decapsulation counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DecapCounters {
    /// IPv4 in IPv4.
    pub v4_in_v4: u64,
    /// IPv6 in IPv6.
    pub v6_in_v6: u64,
    /// IPv4 in IPv6.
    pub v4_in_v6: u64,
    /// IPv6 in IPv4.
    pub v6_in_v4: u64,
    /// Passed untouched.
    pub passed: u64,
    /// Dropped as malformed.
    pub malformed: u64,
    /// Passed after a check that should not fail failed (`counter::INTERNAL`).
    pub internal: u64,
}

impl Decap {
    /// Loads and verifies `xdp_decap`, decapsulating packets addressed to `addrs`.
    pub fn load(addrs: &[IpAddr]) -> Result<Self> {
        let mut bpf = Loaded::load(Object::XdpDecap, &["xdp_decap"])?;
        let mut dsts: HashMap<_, [u32; 4], u32> =
            HashMap::try_from(bpf.map_mut(DECAP_DSTS_MAP)?).map_err(map_err("DECAP_DSTS"))?;
        for addr in addrs {
            dsts.insert(words(*addr), 1, 0).map_err(map_err("write DECAP_DSTS"))?;
        }
        Ok(Self { bpf })
    }

    /// Attaches it in native mode to `ifname` inside `netns`.
    pub fn attach(&mut self, netns: &Netns, ifname: &str) -> Result<()> {
        self.bpf.attach_xdp("xdp_decap", netns, ifname)
    }

    /// The program, e.g. for `BPF_PROG_TEST_RUN`.
    pub fn program(&self) -> Result<&aya::programs::Xdp> {
        self.bpf.xdp("xdp_decap")
    }

    /// Its counters.
    pub fn counters(&self) -> Result<DecapCounters> {
        let c = sum_counters(self.bpf.map(COUNTERS_MAP)?, counter::SLOTS, "read DECAP_COUNTERS")?;
        Ok(DecapCounters {
            v4_in_v4: c[counter::V4_IN_V4 as usize],
            v6_in_v6: c[counter::V6_IN_V6 as usize],
            v4_in_v6: c[counter::V4_IN_V6 as usize],
            v6_in_v4: c[counter::V6_IN_V4 as usize],
            passed: c[counter::PASSED as usize],
            malformed: c[counter::MALFORMED as usize],
            internal: c[counter::INTERNAL as usize],
        })
    }
}
