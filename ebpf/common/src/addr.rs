//! How the maps hold an address: four `u32` words, the address's bytes in network order read as
//! native words (an IPv4 address in the first word, the rest zero). The one home of this
//! layout, for the programs and, behind the `user` feature, for user space's `IpAddr`s.

/// The four address words of an IPv4 address (first word; the rest zero).
#[inline(always)]
pub fn words_v4(addr: [u8; 4]) -> [u32; 4] {
    [u32::from_ne_bytes(addr), 0, 0, 0]
}

/// The four address words of an IPv6 address.
#[inline(always)]
pub fn words_v6(addr: [u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([addr[0], addr[1], addr[2], addr[3]]),
        u32::from_ne_bytes([addr[4], addr[5], addr[6], addr[7]]),
        u32::from_ne_bytes([addr[8], addr[9], addr[10], addr[11]]),
        u32::from_ne_bytes([addr[12], addr[13], addr[14], addr[15]]),
    ]
}

/// The address words of `addr`.
#[cfg(feature = "user")]
pub fn words(addr: core::net::IpAddr) -> [u32; 4] {
    match addr {
        core::net::IpAddr::V4(v4) => words_v4(v4.octets()),
        core::net::IpAddr::V6(v6) => words_v6(v6.octets()),
    }
}
