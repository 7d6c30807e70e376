//! Types shared by the lab's eBPF programs (`zrlab-ebpf`) and user space (`zrlab`).
//!
//! One module per program, each holding that program's map names, slot constants and
//! `#[repr(C)]` values. Rules every type here follows:
//! - plain `#[repr(C)]` with explicit padding and `u32`/`u8` flags instead of `bool`, so both
//!   sides agree on every byte;
//! - `aya::Pod` is implemented only with the `user` feature, so the kernel side never depends on
//!   aya.
#![no_std]

pub mod addr;
pub mod decap;
pub mod drop;
pub mod impair;
pub mod lb;
pub mod pass;
pub mod reuseport;
pub mod sklookup;
pub mod tpr;
