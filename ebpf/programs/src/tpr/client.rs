//! `tpr_client`: reads the server id from the SYN-ACK and echoes it on every later segment.
//!
//! - `ACTIVE_ESTABLISHED_CB`: the kernel hands over the SYN-ACK that completed the handshake;
//!   an id in it goes to socket storage and the connection starts writing options (so the
//!   handshake's final ACK is the first segment with the echo, the SYN never is). No option, or
//!   id 0: nothing to echo (counted as skipped);
//! - `HDR_OPT_LEN_CB`: reserve 6 bytes on every segment, and when the kernel sizes the MSS (no
//!   segment), so that full-sized segments leave room for the option;
//! - `WRITE_HDR_OPT_CB`: write `{0xB7, 6, id}`.

use core::ptr;

use aya_ebpf::{
    bindings::{
        BPF_SK_STORAGE_GET_F_CREATE, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_HDR_OPT_LEN_CB,
        BPF_SOCK_OPS_WRITE_HDR_OPT_CB,
    },
    helpers::generated::bpf_sk_storage_get,
    programs::SockOpsContext,
};
use zrlab_common::tpr::{ECHO_KIND, SERVER_KIND, counter};

use crate::{
    maps::{PEER_ID, count},
    opt::{self, TCP_SYN, WRITE},
};

/// The connection's id slot in socket storage, created if `create`.
#[inline(always)]
fn peer_id(ctx: &SockOpsContext, create: bool) -> Option<*mut u32> {
    // SAFETY: a field of the context the kernel passed.
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    if sk.is_null() {
        return None;
    }
    let flags = if create { u64::from(BPF_SK_STORAGE_GET_F_CREATE) } else { 0 };
    // SAFETY: the map is a socket storage map and `sk` a socket the kernel passed.
    let slot =
        unsafe { bpf_sk_storage_get(ptr::from_ref(&PEER_ID).cast_mut().cast(), sk.cast(), ptr::null_mut(), flags) };
    (!slot.is_null()).then_some(slot.cast())
}

/// Handles one callback.
#[inline(always)]
pub fn on_op(ctx: &SockOpsContext) {
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => match opt::load(ctx, SERVER_KIND) {
            Some(id) if id != 0 => match peer_id(ctx, true) {
                Some(slot) => {
                    // SAFETY: the kernel's storage for this socket, sized for a u32.
                    unsafe { *slot = id };
                    count(counter::PARSED);
                    opt::set_flags(ctx, WRITE, 0);
                }
                None => count(counter::WRITE_ERRORS),
            },
            _ => count(counter::SKIPPED),
        },
        BPF_SOCK_OPS_HDR_OPT_LEN_CB if opt::tcp_flags(ctx) & TCP_SYN == 0 => opt::reserve(ctx),
        BPF_SOCK_OPS_WRITE_HDR_OPT_CB if opt::tcp_flags(ctx) & TCP_SYN == 0 => match peer_id(ctx, false) {
            // SAFETY: as above.
            Some(slot) => {
                if opt::store(ctx, ECHO_KIND, unsafe { *slot }) {
                    count(counter::ECHOED);
                }
            }
            None => count(counter::WRITE_ERRORS),
        },
        _ => {}
    }
}
