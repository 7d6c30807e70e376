//! `tpr_fill`: a test fixture that writes one option on every segment after the handshake, as
//! another program of the cgroup would, before `tpr_client` writes its echo: as configured
//! (`zrlab_common::tpr::FillConfig`, a read-only global set at load), it reserves as much of the
//! space left as it may and writes one option of its kind over it. The suites attach it before
//! `tpr_client` to prove that a full option space costs the echo, not the connection
//! (`zrlab_common::tpr::counter::NO_SPACE`), and that an echo another program already wrote is
//! counted, not duplicated (`WRITE_ERRORS`).
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
    use zrlab_common::tpr::FillConfig;

    /// The TCP option space.
    const MAX_OPTIONS: u32 = 40;

    #[unsafe(no_mangle)]
    static FILL_CONFIG: FillConfig = FillConfig::FULL;

    #[sock_ops]
    pub fn tpr_fill(ctx: SockOpsContext) -> u32 {
        // SAFETY: a volatile read of a static the loader may have rewritten.
        let config = unsafe { core::ptr::read_volatile(&FILL_CONFIG) };
        let max = u32::from(config.max_len).min(MAX_OPTIONS);
        match ctx.op() {
            BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => {
                let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG) as i32);
            }
            BPF_SOCK_OPS_HDR_OPT_LEN_CB => {
                // The largest reservation that still fits takes all that is left.
                let mut len = max;
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
                opt[0] = config.kind;
                let mut len = max;
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
