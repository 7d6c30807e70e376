//! `tpr_fill`: a test fixture that fills whatever TCP option space a connection has left on
//! every segment after the handshake, as another program or a crowded option list would: it
//! reserves all of it and writes one option of an unassigned kind (0xFD, RFC 4727's
//! experimental range) over all of it. The suites attach it before `tpr_client` to prove that a
//! full option space costs the echo, not the connection (`zrlab_common::tpr::counter::NO_SPACE`).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod prog {
    use aya_ebpf::{
        bindings::{
            BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_HDR_OPT_LEN_CB, BPF_SOCK_OPS_WRITE_HDR_OPT_CB,
            BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG,
        },
        helpers::generated::{bpf_reserve_hdr_opt, bpf_store_hdr_opt},
        macros::sock_ops,
        programs::SockOpsContext,
    };

    /// The TCP option space.
    const MAX_OPTIONS: u32 = 40;
    /// The kind the filler writes.
    const FILL_KIND: u8 = 0xfd;

    #[sock_ops]
    pub fn tpr_fill(ctx: SockOpsContext) -> u32 {
        match ctx.op() {
            BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => {
                let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG) as i32);
            }
            BPF_SOCK_OPS_HDR_OPT_LEN_CB => {
                // The largest reservation that still fits takes all that is left.
                let mut len = MAX_OPTIONS;
                while len >= 2 {
                    // SAFETY: the helper reads the context only.
                    if unsafe { bpf_reserve_hdr_opt(ctx.ops, len, 0) } == 0 {
                        break;
                    }
                    len -= 1;
                }
            }
            BPF_SOCK_OPS_WRITE_HDR_OPT_CB => {
                // The largest option that still fits fills what was reserved.
                let mut opt = [0u8; MAX_OPTIONS as usize];
                opt[0] = FILL_KIND;
                let mut len = MAX_OPTIONS;
                while len >= 2 {
                    opt[1] = len as u8;
                    // SAFETY: `opt` is a live local at least `len` long.
                    if unsafe { bpf_store_hdr_opt(ctx.ops, opt.as_ptr().cast(), len, 0) } == 0 {
                        break;
                    }
                    len -= 1;
                }
            }
            _ => {}
        }
        1
    }
}

#[cfg(target_arch = "bpf")]
use zrlab_ebpf as _;

#[cfg(not(target_arch = "bpf"))]
fn main() {}
