//! The raw `bpf(2)` system call, for what aya does not offer: the feature probes' hand-assembled
//! programs (`features::bpf`) and the LB's inner maps created with BTF (`lb::inner`).
//!
//! Numbers are the kernel's UAPI (`include/uapi/linux/bpf.h`). Each `*Attr` struct is a
//! `#[repr(C)]` prefix of `union bpf_attr`; the kernel zero-extends what it is given.

use std::{
    io,
    os::fd::{FromRawFd as _, OwnedFd},
};

/// `BPF_MAP_CREATE`.
pub(crate) const MAP_CREATE: libc::c_long = 0;
/// `BPF_PROG_LOAD`.
pub(crate) const PROG_LOAD: libc::c_long = 5;
/// `BPF_PROG_TEST_RUN`.
pub(crate) const PROG_TEST_RUN: libc::c_long = 10;
/// `BPF_BTF_LOAD`.
pub(crate) const BTF_LOAD: libc::c_long = 18;
/// `BPF_MAP_UPDATE_BATCH` (5.6+).
pub(crate) const MAP_UPDATE_BATCH: libc::c_long = 26;
/// `BPF_LINK_CREATE`.
pub(crate) const LINK_CREATE: libc::c_long = 28;

/// `BPF_MAP_TYPE_ARRAY`.
pub(crate) const MAP_TYPE_ARRAY: u32 = 2;
/// `BPF_MAP_TYPE_LRU_HASH`.
pub(crate) const MAP_TYPE_LRU_HASH: u32 = 9;
/// `BPF_MAP_TYPE_REUSEPORT_SOCKARRAY`.
pub(crate) const MAP_TYPE_REUSEPORT_SOCKARRAY: u32 = 20;

/// The `BPF_MAP_CREATE` part of `union bpf_attr`, up to the BTF type ids.
#[repr(C)]
#[derive(Default)]
pub(crate) struct MapCreateAttr {
    pub(crate) map_type: u32,
    pub(crate) key_size: u32,
    pub(crate) value_size: u32,
    pub(crate) max_entries: u32,
    pub(crate) map_flags: u32,
    pub(crate) inner_map_fd: u32,
    pub(crate) numa_node: u32,
    pub(crate) map_name: [u8; 16],
    pub(crate) map_ifindex: u32,
    pub(crate) btf_fd: u32,
    pub(crate) btf_key_type_id: u32,
    pub(crate) btf_value_type_id: u32,
}

/// `bpf(cmd, attr, sizeof attr)`: the non-negative result, or the OS error.
pub(crate) fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, initialised `#[repr(C)]` prefix of `union bpf_attr` whose size
    // is passed along; the kernel zero-extends it and writes only within it.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size_of::<T>() as libc::c_uint) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

/// The descriptor a successful `sys_bpf` returned, owned.
pub(crate) fn fd_from(rc: libc::c_long) -> OwnedFd {
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(rc as i32) }
}
