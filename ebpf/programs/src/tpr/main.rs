//! `tpr`: the server id in a TCP header option, written by the server's sock_ops program on its
//! SYN-ACK and echoed by the client's on every later segment (wire format and counters in
//! `zrlab_common::tpr`).
//!
//! Two programs, one object (they share the counters' layout; each side loads only its own):
//! - [`server`]'s `tpr_server`, attached to the backend service's cgroup;
//! - [`client`]'s `tpr_client`, attached to the client's cgroup.
//!
//! Both return 1 on every path: a sock_ops program's return value is the reply to the callbacks
//! that expect one (none of ours do), and nothing here may fail a connection.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod client;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod opt;
#[cfg(target_arch = "bpf")]
mod server;

#[cfg(target_arch = "bpf")]
mod prog {
    use aya_ebpf::{macros::sock_ops, programs::SockOpsContext};

    #[sock_ops]
    pub fn tpr_server(ctx: SockOpsContext) -> u32 {
        super::server::on_op(&ctx);
        1
    }

    #[sock_ops]
    pub fn tpr_client(ctx: SockOpsContext) -> u32 {
        super::client::on_op(&ctx);
        1
    }
}

#[cfg(target_arch = "bpf")]
use zrlab_ebpf as _;

#[cfg(not(target_arch = "bpf"))]
fn main() {}
