//! Header layouts and bounds-checked packet access.
//!
//! Every struct has alignment 1 (multi-byte fields are byte arrays), because packet data is only
//! 2-byte aligned after a 14-byte Ethernet header: a typed read of a `u32` field would be
//! undefined behaviour. [`ptr_at`] is the single bounds check every header read goes through, so
//! the verifier always sees the same pattern and an out-of-bounds read becomes `Err(())`.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;

/// Ethernet header length.
pub const ETH_LEN: usize = 14;
/// IPv4 header length without options.
pub const IPV4_LEN: usize = 20;
/// IPv6 fixed header length.
pub const IPV6_LEN: usize = 40;
/// TCP header length without options.
pub const TCP_LEN: usize = 20;
/// UDP header length.
pub const UDP_LEN: usize = 8;
/// Shortest Ethernet frame (without FCS); shorter IP packets arrive padded to it.
pub const ETH_MIN_FRAME: usize = 60;

/// EtherType IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// EtherType IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// IP protocol numbers.
pub const IPPROTO_IPIP: u8 = 4;
/// TCP.
pub const IPPROTO_TCP: u8 = 6;
/// UDP.
pub const IPPROTO_UDP: u8 = 17;
/// IPv6 in IP.
pub const IPPROTO_IPV6: u8 = 41;
/// ICMP.
pub const IPPROTO_ICMP: u8 = 1;
/// ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;
/// ICMP and ICMPv6 header length (type, code, checksum, and the word after them).
pub const ICMP_LEN: usize = 8;
/// ICMP destination unreachable (code 4: fragmentation needed).
pub const ICMP_DEST_UNREACH: u8 = 3;
/// The code of ICMP "fragmentation needed and DF set".
pub const ICMP_FRAG_NEEDED: u8 = 4;
/// ICMPv6 destination unreachable.
pub const ICMPV6_DEST_UNREACH: u8 = 1;
/// ICMPv6 packet too big.
pub const ICMPV6_PKT_TOOBIG: u8 = 2;

/// Ethernet header.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EthHdr {
    /// Destination MAC.
    pub dst: [u8; 6],
    /// Source MAC.
    pub src: [u8; 6],
    /// EtherType, network order.
    pub proto: [u8; 2],
}

/// IPv4 header (no options).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    /// Version and IHL.
    pub vihl: u8,
    /// TOS / DSCP+ECN.
    pub tos: u8,
    /// Total length.
    pub tot_len: [u8; 2],
    /// Identification.
    pub id: [u8; 2],
    /// Flags and fragment offset.
    pub frag: [u8; 2],
    /// TTL.
    pub ttl: u8,
    /// Protocol.
    pub proto: u8,
    /// Header checksum.
    pub csum: [u8; 2],
    /// Source address.
    pub src: [u8; 4],
    /// Destination address.
    pub dst: [u8; 4],
}

/// IPv6 fixed header.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv6Hdr {
    /// Version, traffic class, flow label.
    pub vtcfl: [u8; 4],
    /// Payload length.
    pub payload_len: [u8; 2],
    /// Next header.
    pub nexthdr: u8,
    /// Hop limit.
    pub hop: u8,
    /// Source address.
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
}

/// The fixed part of a TCP header up to and including the flags.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TcpHdr {
    /// Source port.
    pub sport: [u8; 2],
    /// Destination port.
    pub dport: [u8; 2],
    /// Sequence number.
    pub seq: [u8; 4],
    /// Acknowledgement number.
    pub ack: [u8; 4],
    /// Data offset (high nibble).
    pub doff: u8,
    /// Flags.
    pub flags: u8,
}

/// UDP header.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct UdpHdr {
    /// Source port.
    pub sport: [u8; 2],
    /// Destination port.
    pub dport: [u8; 2],
    /// Length.
    pub len: [u8; 2],
    /// Checksum.
    pub csum: [u8; 2],
}

/// TCP SYN flag.
pub const TCP_SYN: u8 = 0x02;
/// TCP ACK flag.
pub const TCP_ACK: u8 = 0x10;

/// A pointer to a `T` at `offset` into the packet, if the packet holds all of it.
///
/// The check reaches the verifier as `pointer + size > data_end` on the very register it then
/// dereferences. Left alone, LLVM rewrites `p + 1 > end` as `p >= end`, which the verifier
/// cannot turn into a readable range when `offset` is variable (as in the option walk), and it
/// may compute the checked and the returned pointer separately; [`opaque`] stops both.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, ()> {
    let ptr = opaque(ctx.data() + offset);
    let access_end = opaque(ptr + size_of::<T>());
    if access_end > ctx.data_end() {
        return Err(());
    }
    Ok(ptr as *mut T)
}

/// Loads the 4 bytes at `base + OFF` as one word, bytes in memory order (the maps' address
/// words).
///
/// One instruction even when the address is not 4-byte aligned (header fields after the
/// 14-byte Ethernet header are only 2-byte aligned): Rust would split such a read into single
/// bytes, while the verifier accepts unaligned packet access on architectures that handle it
/// (x86-64, arm64). The offset is an immediate of the instruction: with `base + offset` in a
/// register, every access cost a copy and an add of its own, and a register for the sum.
///
/// # Safety
/// The 4 bytes at `base + OFF` must be inside the packet, as the verifier knows it.
#[inline(always)]
pub unsafe fn load32<const OFF: i16>(base: usize) -> u32 {
    let value: u64;
    // SAFETY: the caller guarantees the 4 bytes are readable.
    unsafe {
        core::arch::asm!("{0} = *(u32 *)({1} + {2})", out(reg) value, in(reg) base, const OFF, options(readonly, nostack))
    };
    // SAFETY: a BPF 32-bit load zero-extends into its 64-bit register. Told so, the compiler
    // drops the two shifts it would otherwise spend re-zero-extending the value wherever it is
    // used as a 64-bit number (address words joined, keys folded).
    unsafe { core::hint::assert_unchecked(value <= u64::from(u32::MAX)) };
    value as u32
}

/// Loads the 2 bytes at `base + OFF` as one half-word, bytes in memory order.
///
/// # Safety
/// As [`load32`], for 2 bytes.
#[inline(always)]
pub unsafe fn load16<const OFF: i16>(base: usize) -> u16 {
    let value: u64;
    // SAFETY: the caller guarantees the 2 bytes are readable.
    unsafe {
        core::arch::asm!("{0} = *(u16 *)({1} + {2})", out(reg) value, in(reg) base, const OFF, options(readonly, nostack))
    };
    // SAFETY: as in `load32`, for a 16-bit load.
    unsafe { core::hint::assert_unchecked(value <= u64::from(u16::MAX)) };
    value as u16
}

/// Stores `value` (bytes in memory order) into the 4 bytes at `base + OFF`, in one instruction.
/// The value goes in as it is: the store takes its low 32 bits, so zero-extending it first (two
/// shifts) would be wasted.
///
/// # Safety
/// The 4 bytes at `base + OFF` must be inside the packet, as the verifier knows it.
#[inline(always)]
pub unsafe fn store32<const OFF: i16>(base: usize, value: u32) {
    // SAFETY: the caller guarantees the 4 bytes are writable.
    unsafe { core::arch::asm!("*(u32 *)({0} + {1}) = {2}", in(reg) base, const OFF, in(reg) value, options(nostack)) };
}

/// Stores `value` (bytes in memory order) into the 2 bytes at `base + OFF`.
///
/// # Safety
/// As [`store32`], for 2 bytes.
#[inline(always)]
pub unsafe fn store16<const OFF: i16>(base: usize, value: u16) {
    // SAFETY: the caller guarantees the 2 bytes are writable.
    unsafe { core::arch::asm!("*(u16 *)({0} + {1}) = {2}", in(reg) base, const OFF, in(reg) value, options(nostack)) };
}

/// A bounds-checked base address of `len` packet bytes at `offset` (for the word accessors).
#[inline(always)]
pub fn span(ctx: &XdpContext, offset: usize, len: usize) -> Result<usize, ()> {
    let ptr = opaque(ctx.data() + offset);
    let access_end = opaque(ptr + len);
    if access_end > ctx.data_end() {
        return Err(());
    }
    Ok(ptr)
}

/// Folds a one's-complement sum of 16-bit words into the checksum field value (bytes in memory
/// order when the words were summed in memory order: the Internet checksum does not depend on
/// byte order).
#[inline(always)]
pub fn fold_csum(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Returns `x` unchanged, hidden from the optimiser (an empty `asm!` with `x` in a register).
#[inline(always)]
pub fn opaque(mut x: usize) -> usize {
    // SAFETY: a register move onto itself: it reads and writes one register, nothing else. (An
    // empty template would give two line-info records one instruction offset, which the kernel
    // refuses.)
    unsafe { core::arch::asm!("{0} = {0}", inout(reg) x, options(nomem, nostack)) };
    x
}

/// Reads a `T` at `offset` (bounds-checked).
#[inline(always)]
pub fn read_at<T: Copy>(ctx: &XdpContext, offset: usize) -> Result<T, ()> {
    // SAFETY: ptr_at checked that the packet holds size_of::<T>() bytes at offset, and T has
    // alignment 1 (every header type here is made of bytes).
    Ok(unsafe { *ptr_at::<T>(ctx, offset)? })
}

/// Frame length (data_end - data).
#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> usize {
    ctx.data_end() - ctx.data()
}
