//! The eBPF objects built by `build.rs`, embedded in the binary.
//!
//! Each program of `ebpf/programs` is its own object, so a node loads only what it runs.

use aya::{Ebpf, EbpfError};

/// One embedded eBPF object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Object {
    /// `xdp_pass`: counts and passes every frame (`zrlab_common::pass`).
    XdpPass,
    /// `xdp_lb` and `xdp_lb_bench`: the L4 load balancer (`zrlab_common::lb`).
    XdpLb,
}

impl Object {
    /// The object's name (its `[[bin]]` name in `ebpf/programs`).
    pub fn name(self) -> &'static str {
        match self {
            Self::XdpPass => "xdp_pass",
            Self::XdpLb => "xdp_lb",
        }
    }

    /// The object's ELF bytes, aligned as aya needs.
    pub fn bytes(self) -> &'static [u8] {
        match self {
            Self::XdpPass => aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp_pass")),
            Self::XdpLb => aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp_lb")),
        }
    }

    /// Parses the object and creates its maps (programs are loaded by the caller).
    pub fn load(self) -> Result<Ebpf, EbpfError> {
        Ebpf::load(self.bytes())
    }
}
