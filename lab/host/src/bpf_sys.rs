//! The raw `bpf(2)` system call, for what aya does not offer: the feature probes' hand-assembled
//! programs (`features::bpf`), the LB's inner maps created with BTF (`lb::inner`), and links whose
//! descriptor the lab keeps, so that an in-place upgrade can swap their program
//! ([`link_create`], [`link_update`]; aya hides a link's descriptor).
//!
//! Numbers are the kernel's UAPI (`include/uapi/linux/bpf.h`). Each `*Attr` struct is a
//! `#[repr(C)]` prefix of `union bpf_attr`; the kernel zero-extends what it is given.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
};

/// `BPF_MAP_CREATE`.
pub const MAP_CREATE: libc::c_long = 0;
/// `BPF_PROG_LOAD`.
pub const PROG_LOAD: libc::c_long = 5;
/// `BPF_PROG_TEST_RUN`.
pub const PROG_TEST_RUN: libc::c_long = 10;
/// `BPF_BTF_LOAD`.
pub const BTF_LOAD: libc::c_long = 18;
/// `BPF_MAP_UPDATE_BATCH` (5.6+).
pub const MAP_UPDATE_BATCH: libc::c_long = 26;
/// `BPF_LINK_CREATE`.
pub const LINK_CREATE: libc::c_long = 28;
/// `BPF_LINK_UPDATE`.
pub const LINK_UPDATE: libc::c_long = 29;

/// `BPF_CGROUP_SOCK_OPS`: a sock_ops program on a cgroup.
pub const ATTACH_CGROUP_SOCK_OPS: u32 = 3;
/// `BPF_SK_LOOKUP`: an sk_lookup program on a network namespace.
pub const ATTACH_SK_LOOKUP: u32 = 36;

/// `BPF_MAP_TYPE_ARRAY`.
pub const MAP_TYPE_ARRAY: u32 = 2;
/// `BPF_MAP_TYPE_REUSEPORT_SOCKARRAY`.
pub const MAP_TYPE_REUSEPORT_SOCKARRAY: u32 = 20;

/// The `BPF_MAP_CREATE` part of `union bpf_attr`, up to the BTF type ids.
#[repr(C)]
#[derive(Default)]
pub struct MapCreateAttr {
    /// `BPF_MAP_TYPE_*`.
    pub map_type: u32,
    /// Key size in bytes.
    pub key_size: u32,
    /// Value size in bytes.
    pub value_size: u32,
    /// Entries the map holds.
    pub max_entries: u32,
    /// `BPF_F_*` creation flags.
    pub map_flags: u32,
    /// For a map of maps: a template of the inner maps.
    pub inner_map_fd: u32,
    /// NUMA node (with `BPF_F_NUMA_NODE`).
    pub numa_node: u32,
    /// Name, NUL-padded (the kernel keeps 15 bytes).
    pub map_name: [u8; 16],
    /// Device to offload to (0: none).
    pub map_ifindex: u32,
    /// BTF object describing key and value (0: none).
    pub btf_fd: u32,
    /// The key's type in `btf_fd`.
    pub btf_key_type_id: u32,
    /// The value's type in `btf_fd`.
    pub btf_value_type_id: u32,
}

/// The `BPF_LINK_CREATE` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
pub struct LinkCreateAttr {
    /// The program.
    pub prog_fd: u32,
    /// What it attaches to: a cgroup or namespace descriptor, or an interface index.
    pub target_fd: u32,
    /// `BPF_*` attach type.
    pub attach_type: u32,
    /// Flags (0).
    pub flags: u32,
}

/// The `BPF_LINK_UPDATE` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

/// Attaches program `prog` to `target` as `attach_type` with a link: the link's descriptor.
/// The program stays attached until every descriptor of the link is closed.
pub fn link_create(prog: BorrowedFd<'_>, target: BorrowedFd<'_>, attach_type: u32) -> io::Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_fd: target.as_raw_fd() as u32,
        attach_type,
        flags: 0,
    };
    sys_bpf(LINK_CREATE, &mut attr).map(fd_from)
}

/// Replaces the program of `link` with `prog` in one step: every event runs the old program or
/// the new one. The kernel refuses a program of another type or attach type.
pub fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = LinkUpdateAttr {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: prog.as_raw_fd() as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    sys_bpf(LINK_UPDATE, &mut attr).map(drop)
}

/// `bpf(cmd, attr, sizeof attr)`: the non-negative result, or the OS error.
pub fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, initialised `#[repr(C)]` prefix of `union bpf_attr` whose size
    // is passed along; the kernel zero-extends it and writes only within it.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size_of::<T>() as libc::c_uint) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

/// The descriptor a successful `sys_bpf` returned, owned.
pub fn fd_from(rc: libc::c_long) -> OwnedFd {
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(rc as i32) }
}
