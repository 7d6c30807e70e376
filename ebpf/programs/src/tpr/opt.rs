//! The option itself and the kernel's header-option helpers (aya wraps none of them).

use aya_ebpf::{
    bindings::{BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG, bpf_sock_ops},
    helpers::generated::{bpf_load_hdr_opt, bpf_reserve_hdr_opt, bpf_sock_ops_cb_flags_set, bpf_store_hdr_opt},
    programs::SockOpsContext,
};
use zrlab_common::tpr::{OPT_LEN, counter};

use crate::maps::count;

/// `-ENOSPC`: the option space cannot take the reservation.
const ENOSPC: i64 = -28;
/// TCP header flags as `skb_tcp_flags` carries them.
pub const TCP_SYN: u32 = 0x02;
/// See [`TCP_SYN`].
pub const TCP_ACK: u32 = 0x10;

/// The `sock_ops` context's raw pointer, as the helpers take it.
#[inline(always)]
pub fn ops(ctx: &SockOpsContext) -> *mut bpf_sock_ops {
    ctx.ops
}

/// The TCP flags of the segment being written or parsed (0 when the kernel asks for the
/// option length without a segment, to size the MSS).
#[inline(always)]
pub fn tcp_flags(ctx: &SockOpsContext) -> u32 {
    // SAFETY: a field of the context the kernel passed.
    unsafe { (*ctx.ops).skb_tcp_flags }
}

/// Reserves room for one option (in `HDR_OPT_LEN_CB`); a full option space is counted, not an
/// error.
#[inline(always)]
pub fn reserve(ctx: &SockOpsContext) {
    // SAFETY: the helper reads the context only.
    let ret = unsafe { bpf_reserve_hdr_opt(ops(ctx), u32::from(OPT_LEN), 0) };
    // From `HDR_OPT_LEN_CB` with no flags and a valid length, the helper's one failure is
    // -ENOSPC (its -EPERM and -EINVAL are for other callbacks and bad arguments).
    if ret != 0 {
        count(counter::NO_SPACE);
    }
}

/// Writes `{kind, OPT_LEN, id}` into the segment's reserved space; whether it did. The space
/// is shared by every program of the cgroup: when others filled it (our reservation may have
/// failed), the store fails with `-ENOSPC`, counted as no space.
#[inline(always)]
pub fn store(ctx: &SockOpsContext, kind: u8, id: u32) -> bool {
    let id = id.to_be_bytes();
    let opt = [kind, OPT_LEN, id[0], id[1], id[2], id[3]];
    // SAFETY: `opt` is a live local of the length passed.
    let ret = unsafe { bpf_store_hdr_opt(ops(ctx), opt.as_ptr().cast(), u32::from(OPT_LEN), 0) };
    if ret == ENOSPC {
        count(counter::NO_SPACE);
    } else if ret != 0 {
        count(counter::WRITE_ERRORS);
    }
    ret == 0
}

/// The id of option `kind` in the segment the callback is about: `None` when it has none, or
/// one of another length (malformed: nothing of it is trusted).
#[inline(always)]
pub fn load(ctx: &SockOpsContext, kind: u8) -> Option<u32> {
    // Searched by kind: byte 1 zero means "match the kind alone"; the kernel copies the whole
    // option (kind, length, data) over the buffer and returns its length.
    let mut buf = [kind, 0, 0, 0, 0, 0];
    // SAFETY: `buf` is a live local of the length passed.
    let ret = unsafe { bpf_load_hdr_opt(ops(ctx), buf.as_mut_ptr().cast(), u32::from(OPT_LEN), 0) };
    (ret == i64::from(OPT_LEN) && buf[1] == OPT_LEN).then(|| u32::from_be_bytes([buf[2], buf[3], buf[4], buf[5]]))
}

/// Sets the connection's callback flags to `flags` (the other flags as they were).
#[inline(always)]
pub fn set_flags(ctx: &SockOpsContext, set: u32, clear: u32) {
    let flags = (ctx.cb_flags() | set) & !clear;
    // SAFETY: the helper validates the flags itself.
    unsafe { bpf_sock_ops_cb_flags_set(ops(ctx), flags as i32) };
}

/// The flag that makes the kernel call us to size and write options.
pub const WRITE: u32 = BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG;
