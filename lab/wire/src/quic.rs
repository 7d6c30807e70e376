//! QUIC-shaped datagrams for the lab's UDP flows, and katran's server-id layouts in
//! connection ids.
//!
//! The UDP workload speaks just enough QUIC for a load balancer to route it the way katran
//! routes QUIC (RFC 9000 section 17 invariants; DESIGN.md section 1):
//! - a flow opens with a long-header Initial whose destination CID is client-chosen random bytes
//!   (an LB cannot route it by id: it hashes);
//! - the server answers with a CID of its own that embeds its server id;
//! - every later datagram is a short header whose destination CID is that server CID (8 bytes).
//!
//! Server-id layouts, by the version in the CID's top two bits:
//! v1 = 16-bit id in bits 2..17; v2 = 24-bit id in bytes 1..=3; v3 = 32-bit id in bytes 1..=4.

/// Length of the CIDs the lab issues (and the length an LB assumes for short headers).
pub const CID_LEN: usize = 8;

/// A malformed datagram.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed QUIC datagram: {0}")]
pub struct QuicError(&'static str);

/// Long-header packet types (RFC 9000 section 17.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LongType {
    /// Initial.
    Initial,
    /// 0-RTT.
    ZeroRtt,
    /// Handshake.
    Handshake,
    /// Retry.
    Retry,
}

/// A datagram's header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Header {
    /// A long header.
    Long {
        /// Packet type.
        kind: LongType,
        /// QUIC version.
        version: u32,
        /// Destination CID (0..=20 bytes).
        dcid: Vec<u8>,
        /// Source CID (0..=20 bytes).
        scid: Vec<u8>,
    },
    /// A short header with a [`CID_LEN`]-byte destination CID.
    Short {
        /// Destination CID.
        dcid: [u8; CID_LEN],
    },
}

/// A datagram: header and opaque payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datagram {
    /// The header.
    pub header: Header,
    /// The payload (the lab puts a [`super::wire`] line here).
    pub payload: Vec<u8>,
}

/// QUIC version 1 (RFC 9000).
pub const VERSION_1: u32 = 1;
/// QUIC version 2 (RFC 9369), which numbers the long-header types differently.
pub const VERSION_2: u32 = 0x6b33_43cf;

impl LongType {
    /// The type a long header's type bits (`first byte >> 4 & 3`) mean in `version`: RFC 9000
    /// section 17.2 for v1, RFC 9369 section 3.2 for v2; `None` for any other version (type
    /// bits are version-specific, and version negotiation has none).
    pub fn of_bits(bits: u8, version: u32) -> Option<Self> {
        let v1 = [Self::Initial, Self::ZeroRtt, Self::Handshake, Self::Retry];
        let v2 = [Self::Retry, Self::Initial, Self::ZeroRtt, Self::Handshake];
        match version {
            VERSION_1 => Some(v1[usize::from(bits & 3)]),
            VERSION_2 => Some(v2[usize::from(bits & 3)]),
            _ => None,
        }
    }

    /// The type bits of this type in `version` (v1's numbering for versions other than 2).
    pub(crate) fn bits(self, version: u32) -> u8 {
        let v1 = match self {
            Self::Initial => 0,
            Self::ZeroRtt => 1,
            Self::Handshake => 2,
            Self::Retry => 3,
        };
        if version == VERSION_2 { (v1 + 1) & 3 } else { v1 }
    }
}
const MAX_CID: usize = 20;

impl Datagram {
    /// Encoded length.
    pub(crate) fn buffer_len(&self) -> usize {
        let header = match &self.header {
            Header::Long { dcid, scid, .. } => 1 + 4 + 1 + dcid.len() + 1 + scid.len(),
            Header::Short { .. } => 1 + CID_LEN,
        };
        header + self.payload.len()
    }

    /// Encodes the datagram.
    pub fn emit(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.buffer_len());
        match &self.header {
            Header::Long { kind, version, dcid, scid } => {
                out.push(0xc0 | (kind.bits(*version) << 4));
                out.extend_from_slice(&version.to_be_bytes());
                out.push(dcid.len() as u8);
                out.extend_from_slice(dcid);
                out.push(scid.len() as u8);
                out.extend_from_slice(scid);
            }
            Header::Short { dcid } => {
                out.push(0x40);
                out.extend_from_slice(dcid);
            }
        }
        out.extend_from_slice(&self.payload);
        out
    }

    /// Decodes a datagram.
    pub fn parse(buf: &[u8]) -> Result<Self, QuicError> {
        let first = *buf.first().ok_or(QuicError("empty"))?;
        if first & 0x40 == 0 {
            return Err(QuicError("fixed bit not set"));
        }
        if first & 0x80 == 0 {
            let dcid = buf.get(1..1 + CID_LEN).ok_or(QuicError("short header truncated"))?;
            return Ok(Self {
                header: Header::Short { dcid: dcid.try_into().expect("CID_LEN bytes") },
                payload: buf[1 + CID_LEN..].to_vec(),
            });
        }
        let version = u32::from_be_bytes(buf.get(1..5).ok_or(QuicError("version truncated"))?.try_into().expect("4"));
        // Versions other than 1 and 2 are read with v1's type numbers (the lab speaks v1).
        let kind = LongType::of_bits((first >> 4) & 0x3, version)
            .or_else(|| LongType::of_bits((first >> 4) & 0x3, VERSION_1))
            .expect("v1 types every bit pattern");
        let mut at = 5;
        let mut cid = |buf: &[u8]| -> Result<Vec<u8>, QuicError> {
            let len = usize::from(*buf.get(at).ok_or(QuicError("CID length truncated"))?);
            if len > MAX_CID {
                return Err(QuicError("CID longer than 20 bytes"));
            }
            let cid = buf.get(at + 1..at + 1 + len).ok_or(QuicError("CID truncated"))?.to_vec();
            at += 1 + len;
            Ok(cid)
        };
        let dcid = cid(buf)?;
        let scid = cid(buf)?;
        Ok(Self { header: Header::Long { kind, version, dcid, scid }, payload: buf[at..].to_vec() })
    }
}

/// katran's CID layouts for server ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CidVersion {
    /// 16-bit server id in bits 2..17.
    V1,
    /// 24-bit server id in bytes 1..=3.
    V2,
    /// 32-bit server id in bytes 1..=4.
    V3,
}

impl CidVersion {
    /// The largest server id the layout can carry.
    pub fn max_id(self) -> u32 {
        match self {
            Self::V1 => 0xffff,
            Self::V2 => 0xff_ffff,
            Self::V3 => u32::MAX,
        }
    }
}

/// A server CID carrying `server_id` in `version`'s layout; bits the layout leaves free come
/// from `entropy`. `None` when the id does not fit the layout.
pub fn cid_for(version: CidVersion, server_id: u32, entropy: [u8; CID_LEN]) -> Option<[u8; CID_LEN]> {
    if server_id > version.max_id() {
        return None;
    }
    let mut cid = entropy;
    let id = server_id.to_be_bytes();
    match version {
        CidVersion::V1 => {
            // bits 0-1: version; bits 2..17: id; the rest entropy.
            cid[0] = 0x40 | ((server_id >> 10) as u8 & 0x3f);
            cid[1] = (server_id >> 2) as u8;
            cid[2] = ((server_id as u8 & 0x3) << 6) | (cid[2] & 0x3f);
        }
        CidVersion::V2 => {
            cid[0] = 0x80 | (cid[0] & 0x3f);
            cid[1..4].copy_from_slice(&id[1..4]);
        }
        CidVersion::V3 => {
            cid[0] = 0xc0 | (cid[0] & 0x3f);
            cid[1..5].copy_from_slice(&id);
        }
    }
    Some(cid)
}

#[cfg(test)]
mod tests {
    use zrlab_common::lb::quic_server_id;

    use super::*;

    #[test]
    /// The encoder against the data path's decoder (`zrlab_common::lb::quic_server_id`).
    fn every_layout_round_trips_its_largest_and_smallest_id() {
        for version in [CidVersion::V1, CidVersion::V2, CidVersion::V3] {
            for id in [1, 0x1234 & version.max_id(), version.max_id()] {
                for entropy in [[0u8; CID_LEN], [0xff; CID_LEN]] {
                    let cid = cid_for(version, id, entropy).unwrap();
                    assert_eq!(
                        quic_server_id(cid[..5].try_into().unwrap()),
                        Some(id),
                        "{version:?} {id:#x} {entropy:?}"
                    );
                }
            }
        }
        for version in [CidVersion::V1, CidVersion::V2] {
            assert_eq!(cid_for(version, version.max_id() + 1, [0; CID_LEN]), None, "{version:?}");
        }
    }

    #[test]
    fn long_header_types_follow_the_version() {
        use LongType::*;
        // RFC 9000 17.2 and RFC 9369 3.2.
        let v1 = [Initial, ZeroRtt, Handshake, Retry];
        let v2 = [Retry, Initial, ZeroRtt, Handshake];
        for bits in 0..4u8 {
            assert_eq!(LongType::of_bits(bits, VERSION_1), Some(v1[usize::from(bits)]));
            assert_eq!(LongType::of_bits(bits, VERSION_2), Some(v2[usize::from(bits)]));
            assert_eq!(v1[usize::from(bits)].bits(VERSION_1), bits);
            assert_eq!(v2[usize::from(bits)].bits(VERSION_2), bits);
        }
        assert_eq!(LongType::of_bits(2, 0), None, "version negotiation has no types");
        assert_eq!(LongType::of_bits(2, 0xff00_001d), None, "a draft version's types are unknown");
    }

    #[test]
    fn datagrams_round_trip_and_truncations_fail() {
        let long = Datagram {
            header: Header::Long { kind: LongType::Initial, version: VERSION_1, dcid: vec![1; 8], scid: vec![2; 8] },
            payload: b"REQ 1 0\n".to_vec(),
        };
        let short = Datagram { header: Header::Short { dcid: [3; CID_LEN] }, payload: b"x".to_vec() };
        for d in [long, short] {
            let bytes = d.emit();
            assert_eq!(bytes.len(), d.buffer_len());
            assert_eq!(Datagram::parse(&bytes), Ok(d.clone()));
            let header_len = d.buffer_len() - d.payload.len();
            for cut in 0..header_len {
                assert!(Datagram::parse(&bytes[..cut]).is_err(), "cut at {cut}");
            }
        }
    }
}
