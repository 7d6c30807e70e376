//! `tpr_server`: writes the backend's server id on its SYN-ACKs and checks the client's echo.
//!
//! - `TCP_LISTEN_CB`: the listener asks to write options; request sockets (whose SYN-ACKs the
//!   listener sends, SYN cookies included) use the listener's flags;
//! - `HDR_OPT_LEN_CB` / `WRITE_HDR_OPT_CB`: only for a SYN-ACK, reserve and write
//!   `{0xB6, 6, id}` (id 0: nothing, counted as skipped);
//! - `PASSIVE_ESTABLISHED_CB`: the new connection stops writing (its SYN-ACK was sent by the
//!   request socket), except a Fast Open child, which sends (and may resend) the SYN-ACK itself;
//!   it parses unknown options until the first echo, which it compares with its own id;
//! - `PARSE_HDR_OPT_CB`: that first echo; then parsing and writing stop, so an established
//!   connection costs nothing more.

use aya_ebpf::{
    bindings::{
        _bindgen_ty_34::BPF_WRITE_HDR_TCP_SYNACK_COOKIE, BPF_SOCK_OPS_HDR_OPT_LEN_CB, BPF_SOCK_OPS_PARSE_HDR_OPT_CB,
        BPF_SOCK_OPS_PARSE_UNKNOWN_HDR_OPT_CB_FLAG, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_TCP_LISTEN_CB,
        BPF_SOCK_OPS_WRITE_HDR_OPT_CB, BPF_TCP_SYN_RECV,
    },
    programs::SockOpsContext,
};
use zrlab_common::tpr::{ECHO_KIND, SERVER_KIND, counter};

use crate::{
    maps::{count, server_id},
    opt::{self, TCP_ACK, TCP_SYN, WRITE},
};

const PARSE: u32 = BPF_SOCK_OPS_PARSE_UNKNOWN_HDR_OPT_CB_FLAG;

#[inline(always)]
fn is_synack(ctx: &SockOpsContext) -> bool {
    opt::tcp_flags(ctx) & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK
}

/// Handles one callback.
#[inline(always)]
pub fn on_op(ctx: &SockOpsContext) {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_LISTEN_CB => opt::set_flags(ctx, WRITE, 0),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => {
            // SAFETY: a field of the context the kernel passed.
            let fast_open = unsafe { (*ctx.ops).state } == BPF_TCP_SYN_RECV;
            opt::set_flags(ctx, if fast_open { WRITE | PARSE } else { PARSE }, if fast_open { 0 } else { WRITE });
        }
        BPF_SOCK_OPS_HDR_OPT_LEN_CB if is_synack(ctx) => {
            if server_id() == 0 {
                count(counter::SKIPPED);
            } else {
                opt::reserve(ctx);
            }
        }
        BPF_SOCK_OPS_WRITE_HDR_OPT_CB if is_synack(ctx) => {
            let id = server_id();
            if id != 0 && opt::store(ctx, SERVER_KIND, id) {
                count(counter::WRITTEN);
                if ctx.arg(0) & BPF_WRITE_HDR_TCP_SYNACK_COOKIE != 0 {
                    count(counter::WRITTEN_COOKIE);
                }
            }
        }
        BPF_SOCK_OPS_PARSE_HDR_OPT_CB => {
            // Unknown options other than ours (another program's) do not end the check.
            if let Some(echoed) = opt::load(ctx, ECHO_KIND) {
                count(if echoed == server_id() { counter::ECHO_OK } else { counter::WRONG_ID });
                opt::set_flags(ctx, 0, PARSE | WRITE);
            }
        }
        _ => {}
    }
}
