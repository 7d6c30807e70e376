//! `zrlab-host`: the kernel objects the lab acts on, one operation per function: network
//! namespaces, netlink (links, addresses, routes, nexthops), cgroups and the sockets in them,
//! ethtool, raw `bpf(2)` calls, `AF_PACKET` captures, run ids and the clean-up of what killed
//! runs left; the lab's error type, TOML file reading, and the kernel's release (`uname -r`).
//!
//! It must not import the lab crates above it (topology, workloads, the control plane,
//! scenarios); it builds without the eBPF toolchain.

pub mod bpf_sys;
pub mod bpffs;
pub mod capture;
pub mod cgroup;
pub mod clean;
pub mod error;
pub mod ethtool;
mod kernel;
pub mod netns;
pub mod nl;
pub mod run_id;
pub mod toml_file;

pub use error::{LabError, Result};
pub use kernel::kernel_release;
