//! `zrlab-wire`: the lab's wire formats, with no I/O and no kernel: typed packets (Ethernet,
//! IPv4/IPv6, TCP with its options, UDP; parse, emit, describe), QUIC datagrams and their
//! connection ids, the service's request/reply messages, and pcap files.
//!
//! It owns the bytes; it must not import any other lab crate. Everything above it builds and
//! tests it without root and without the eBPF toolchain.

mod family;
pub mod message;
pub mod packet;
pub mod pcap;
mod proto;
pub mod quic;

pub use family::Family;
pub use proto::Proto;
