//! The one ethtool setting the lab changes: transmit checksum offload, through the
//! `SIOCETHTOOL` ioctl (`ethtool -K <dev> tx off`).
//!
//! A veth "offloads" transmit checksums by never computing them: the receiving stack in the
//! same machine is told not to check. A load balancer that carries such a packet in a tunnel to
//! another host would deliver a wrong checksum, so client nodes compute theirs.

use std::{ffi::CString, os::fd::AsRawFd as _};

use socket2::{Domain, Socket, Type};

use crate::error::{LabError, Result};

/// `ETHTOOL_STXCSUM` (include/uapi/linux/ethtool.h).
const ETHTOOL_STXCSUM: u32 = 0x0000_0017;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

#[repr(C)]
struct Ifreq {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: *mut EthtoolValue,
    _pad: [u8; 16],
}

/// `ethtool -K <ifname> tx off`, in the calling thread's namespace.
pub fn disable_tx_checksum(ifname: &str) -> Result<()> {
    let name = CString::new(ifname).map_err(|_| LabError::Unsupported(format!("interface name {ifname:?}")))?;
    let bytes = name.as_bytes_with_nul();
    if bytes.len() > libc::IFNAMSIZ {
        return Err(LabError::Unsupported(format!("interface name {ifname:?} is too long")));
    }
    let socket =
        Socket::new(Domain::IPV4, Type::DGRAM, None).map_err(|e| LabError::os("socket for ethtool on", ifname, e))?;
    let mut value = EthtoolValue { cmd: ETHTOOL_STXCSUM, data: 0 };
    let mut req = Ifreq { name: [0; libc::IFNAMSIZ], data: &mut value, _pad: [0; 16] };
    for (dst, src) in req.name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: req is a valid ifreq whose data points at a live ethtool_value.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCETHTOOL, &mut req) } != 0 {
        return Err(LabError::last_os("ethtool -K tx off", ifname.to_owned()));
    }
    Ok(())
}
