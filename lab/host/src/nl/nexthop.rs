//! Nexthop objects and groups: `RTM_{NEW,DEL,GET}NEXTHOP` (`ip nexthop ...`).
//!
//! netlink-packet-route 0.34 has routes that point at a nexthop id (`RTA_NH_ID`) but no messages
//! to create nexthops, so this module adds the ones the lab needs as a netlink-proto message type
//! of its own. Layouts follow `include/uapi/linux/nexthop.h` (v6.18): a `struct nhmsg` header
//! followed by `NHA_*` attributes; a group is a `NHA_GROUP` array of `struct nexthop_grp`,
//! with `NHA_GROUP_TYPE` (hash-threshold or resilient) and, for resilient groups, a nested
//! `NHA_RES_GROUP` carrying the bucket count.

use std::net::IpAddr;

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, NLA_F_NESTED, NetlinkDeserializable, NetlinkHeader, NetlinkSerializable, Nla,
    NlaBuffer, NlasIterator, Parseable,
};

const RTM_NEWNEXTHOP: u16 = 104;
const RTM_DELNEXTHOP: u16 = 105;
const RTM_GETNEXTHOP: u16 = 106;

const NHA_ID: u16 = 1;
const NHA_GROUP: u16 = 2;
const NHA_GROUP_TYPE: u16 = 3;
const NHA_OIF: u16 = 5;
const NHA_GATEWAY: u16 = 6;
const NHA_RES_GROUP: u16 = 12;

const NHA_RES_GROUP_BUCKETS: u16 = 1;
const NHA_RES_GROUP_IDLE_TIMER: u16 = 2;
const NHA_RES_GROUP_UNBALANCED_TIMER: u16 = 3;

const NEXTHOP_GRP_TYPE_MPATH: u16 = 0;
const NEXTHOP_GRP_TYPE_RES: u16 = 1;

/// `sizeof(struct nhmsg)`.
const HEADER_LEN: usize = 8;
/// `sizeof(struct nexthop_grp)`.
const GROUP_ENTRY_LEN: usize = 8;

/// How a group spreads flows over its members.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GroupType {
    /// Hash-threshold (`type mpath`): the hash space is cut into one range per member, so a
    /// change in membership moves range boundaries and with them flows of other members.
    HashThreshold,
    /// Resilient (`type resilient`, kernel 5.13+): a table of buckets; removing a member only
    /// reassigns that member's buckets.
    Resilient,
}

/// One member of a group: a nexthop id and its weight (1..=256).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupMember {
    /// The member nexthop's id.
    pub id: u32,
    /// Its weight (the kernel stores weight - 1).
    pub weight: u16,
}

/// The `struct nhmsg` header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NexthopHeader {
    /// `AF_INET`, `AF_INET6`, or `AF_UNSPEC` for groups.
    pub family: u8,
    /// Route scope.
    pub scope: u8,
    /// Route protocol.
    pub protocol: u8,
    /// `RTNH_F_*` flags.
    pub flags: u32,
}

/// An `NHA_*` attribute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NexthopAttribute {
    /// `NHA_ID`.
    Id(u32),
    /// `NHA_GROUP`.
    Group(Vec<GroupMember>),
    /// `NHA_GROUP_TYPE`.
    GroupType(GroupType),
    /// `NHA_OIF`: output interface index.
    Oif(u32),
    /// `NHA_GATEWAY`.
    Gateway(IpAddr),
    /// `NHA_RES_GROUP`: resilient-group parameters.
    ResGroup(Vec<ResGroupAttribute>),
    /// Anything else, kept as is.
    Other(DefaultNla),
}

/// An `NHA_RES_GROUP_*` attribute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResGroupAttribute {
    /// Number of buckets.
    Buckets(u16),
    /// Idle timer (clock_t, 1/100 s).
    IdleTimer(u32),
    /// Unbalanced timer (clock_t, 1/100 s).
    UnbalancedTimer(u32),
    /// Anything else.
    Other(DefaultNla),
}

/// A nexthop message (header + attributes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NexthopMessage {
    /// The header.
    pub header: NexthopHeader,
    /// The attributes.
    pub attributes: Vec<NexthopAttribute>,
}

impl NexthopMessage {
    /// The `NHA_ID` of the message, if any.
    pub fn id(&self) -> Option<u32> {
        self.attributes.iter().find_map(|a| match a {
            NexthopAttribute::Id(id) => Some(*id),
            _ => None,
        })
    }

    /// The group members, if the message describes a group.
    pub fn group(&self) -> Option<&[GroupMember]> {
        self.attributes.iter().find_map(|a| match a {
            NexthopAttribute::Group(members) => Some(members.as_slice()),
            _ => None,
        })
    }

    /// The group type, if the message describes a group.
    pub fn group_type(&self) -> Option<GroupType> {
        let kind = self.attributes.iter().find_map(|a| match a {
            NexthopAttribute::GroupType(kind) => Some(*kind),
            _ => None,
        });
        // The kernel omits NHA_GROUP_TYPE for hash-threshold groups on dumps of old kernels.
        kind.or_else(|| self.group().map(|_| GroupType::HashThreshold))
    }

    /// The bucket count of a resilient group.
    pub fn buckets(&self) -> Option<u16> {
        self.attributes.iter().find_map(|a| match a {
            NexthopAttribute::ResGroup(attrs) => attrs.iter().find_map(|r| match r {
                ResGroupAttribute::Buckets(n) => Some(*n),
                _ => None,
            }),
            _ => None,
        })
    }

    /// The gateway of a single nexthop.
    pub fn gateway(&self) -> Option<IpAddr> {
        self.attributes.iter().find_map(|a| match a {
            NexthopAttribute::Gateway(gw) => Some(*gw),
            _ => None,
        })
    }
}

/// The messages of this family that the lab sends and receives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum NexthopNetlinkMessage {
    /// `RTM_NEWNEXTHOP`.
    New(NexthopMessage),
    /// `RTM_DELNEXTHOP`.
    Del(NexthopMessage),
    /// `RTM_GETNEXTHOP`.
    Get(NexthopMessage),
}

impl NexthopNetlinkMessage {
    fn message(&self) -> &NexthopMessage {
        match self {
            Self::New(m) | Self::Del(m) | Self::Get(m) => m,
        }
    }
}

impl NetlinkSerializable for NexthopNetlinkMessage {
    fn message_type(&self) -> u16 {
        match self {
            Self::New(_) => RTM_NEWNEXTHOP,
            Self::Del(_) => RTM_DELNEXTHOP,
            Self::Get(_) => RTM_GETNEXTHOP,
        }
    }

    fn buffer_len(&self) -> usize {
        HEADER_LEN + self.message().attributes.as_slice().buffer_len()
    }

    fn serialize(&self, buffer: &mut [u8]) {
        let msg = self.message();
        buffer[0] = msg.header.family;
        buffer[1] = msg.header.scope;
        buffer[2] = msg.header.protocol;
        buffer[3] = 0;
        buffer[4..8].copy_from_slice(&msg.header.flags.to_ne_bytes());
        msg.attributes.as_slice().emit(&mut buffer[HEADER_LEN..]);
    }
}

impl NetlinkDeserializable for NexthopNetlinkMessage {
    type Error = DecodeError;

    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Self, Self::Error> {
        if payload.len() < HEADER_LEN {
            return Err(DecodeError::from(format!("nhmsg too short: {} bytes", payload.len())));
        }
        let nh_header = NexthopHeader {
            family: payload[0],
            scope: payload[1],
            protocol: payload[2],
            flags: u32::from_ne_bytes(payload[4..8].try_into().expect("4 bytes")),
        };
        let mut attributes = Vec::new();
        for nla in NlasIterator::new(&payload[HEADER_LEN..]) {
            attributes.push(NexthopAttribute::parse(&nla?)?);
        }
        let message = NexthopMessage { header: nh_header, attributes };
        match header.message_type {
            RTM_NEWNEXTHOP => Ok(Self::New(message)),
            RTM_DELNEXTHOP => Ok(Self::Del(message)),
            RTM_GETNEXTHOP => Ok(Self::Get(message)),
            other => Err(DecodeError::from(format!("unexpected nexthop message type {other}"))),
        }
    }
}

impl Nla for NexthopAttribute {
    fn value_len(&self) -> usize {
        match self {
            Self::Id(_) | Self::Oif(_) => 4,
            Self::GroupType(_) => 2,
            Self::Group(members) => members.len() * GROUP_ENTRY_LEN,
            Self::Gateway(IpAddr::V4(_)) => 4,
            Self::Gateway(IpAddr::V6(_)) => 16,
            Self::ResGroup(attrs) => attrs.as_slice().buffer_len(),
            Self::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            Self::Id(_) => NHA_ID,
            Self::Group(_) => NHA_GROUP,
            Self::GroupType(_) => NHA_GROUP_TYPE,
            Self::Oif(_) => NHA_OIF,
            Self::Gateway(_) => NHA_GATEWAY,
            // The kernel parses nexthop messages strictly: nested attributes need the flag.
            Self::ResGroup(_) => NHA_RES_GROUP | NLA_F_NESTED,
            Self::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            Self::Id(v) | Self::Oif(v) => buffer.copy_from_slice(&v.to_ne_bytes()),
            Self::GroupType(kind) => {
                let raw = match kind {
                    GroupType::HashThreshold => NEXTHOP_GRP_TYPE_MPATH,
                    GroupType::Resilient => NEXTHOP_GRP_TYPE_RES,
                };
                buffer.copy_from_slice(&raw.to_ne_bytes());
            }
            Self::Group(members) => {
                for (chunk, member) in buffer.chunks_exact_mut(GROUP_ENTRY_LEN).zip(members) {
                    // struct nexthop_grp { u32 id; u8 weight; u8 weight_high; u16 resvd2; },
                    // weight stored minus one.
                    let stored = member.weight.saturating_sub(1);
                    chunk[0..4].copy_from_slice(&member.id.to_ne_bytes());
                    chunk[4] = (stored & 0xff) as u8;
                    chunk[5] = (stored >> 8) as u8;
                    chunk[6..8].fill(0);
                }
            }
            Self::Gateway(IpAddr::V4(ip)) => buffer.copy_from_slice(&ip.octets()),
            Self::Gateway(IpAddr::V6(ip)) => buffer.copy_from_slice(&ip.octets()),
            Self::ResGroup(attrs) => attrs.as_slice().emit(buffer),
            Self::Other(nla) => nla.emit_value(buffer),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for NexthopAttribute {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let value = buf.value();
        Ok(match buf.kind() {
            NHA_ID => Self::Id(u32_of(value)?),
            NHA_OIF => Self::Oif(u32_of(value)?),
            NHA_GROUP_TYPE => Self::GroupType(match u16_of(value)? {
                NEXTHOP_GRP_TYPE_MPATH => GroupType::HashThreshold,
                NEXTHOP_GRP_TYPE_RES => GroupType::Resilient,
                other => return Err(DecodeError::from(format!("unknown group type {other}"))),
            }),
            NHA_GROUP => {
                if !value.len().is_multiple_of(GROUP_ENTRY_LEN) {
                    return Err(DecodeError::from(format!("NHA_GROUP of {} bytes", value.len())));
                }
                Self::Group(
                    value
                        .chunks_exact(GROUP_ENTRY_LEN)
                        .map(|c| GroupMember {
                            id: u32::from_ne_bytes(c[0..4].try_into().expect("4 bytes")),
                            weight: (u16::from(c[5]) << 8 | u16::from(c[4])) + 1,
                        })
                        .collect(),
                )
            }
            NHA_GATEWAY => Self::Gateway(match value.len() {
                4 => IpAddr::from(<[u8; 4]>::try_from(value).expect("4 bytes")),
                16 => IpAddr::from(<[u8; 16]>::try_from(value).expect("16 bytes")),
                n => return Err(DecodeError::from(format!("NHA_GATEWAY of {n} bytes"))),
            }),
            NHA_RES_GROUP => {
                let mut attrs = Vec::new();
                for nla in NlasIterator::new(value) {
                    let nla = nla?;
                    attrs.push(match nla.kind() {
                        NHA_RES_GROUP_BUCKETS => ResGroupAttribute::Buckets(u16_of(nla.value())?),
                        NHA_RES_GROUP_IDLE_TIMER => ResGroupAttribute::IdleTimer(u32_of(nla.value())?),
                        NHA_RES_GROUP_UNBALANCED_TIMER => ResGroupAttribute::UnbalancedTimer(u32_of(nla.value())?),
                        _ => ResGroupAttribute::Other(DefaultNla::parse(&nla)?),
                    });
                }
                Self::ResGroup(attrs)
            }
            _ => Self::Other(DefaultNla::parse(buf)?),
        })
    }
}

impl Nla for ResGroupAttribute {
    fn value_len(&self) -> usize {
        match self {
            Self::Buckets(_) => 2,
            Self::IdleTimer(_) | Self::UnbalancedTimer(_) => 4,
            Self::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            Self::Buckets(_) => NHA_RES_GROUP_BUCKETS,
            Self::IdleTimer(_) => NHA_RES_GROUP_IDLE_TIMER,
            Self::UnbalancedTimer(_) => NHA_RES_GROUP_UNBALANCED_TIMER,
            Self::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            Self::Buckets(n) => buffer.copy_from_slice(&n.to_ne_bytes()),
            Self::IdleTimer(t) | Self::UnbalancedTimer(t) => buffer.copy_from_slice(&t.to_ne_bytes()),
            Self::Other(nla) => nla.emit_value(buffer),
        }
    }
}

fn u32_of(value: &[u8]) -> Result<u32, DecodeError> {
    Ok(u32::from_ne_bytes(
        value.try_into().map_err(|_| DecodeError::from(format!("expected 4 bytes, got {}", value.len())))?,
    ))
}

fn u16_of(value: &[u8]) -> Result<u16, DecodeError> {
    Ok(u16::from_ne_bytes(
        value.try_into().map_err(|_| DecodeError::from(format!("expected 2 bytes, got {}", value.len())))?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_of(message_type: u16) -> NetlinkHeader {
        let mut header = NetlinkHeader::default();
        header.message_type = message_type;
        header
    }

    fn round_trip(msg: NexthopNetlinkMessage) {
        let mut buf = vec![0xa5; msg.buffer_len()];
        msg.serialize(&mut buf);
        let header = header_of(msg.message_type());
        assert_eq!(NexthopNetlinkMessage::deserialize(&header, &buf).unwrap(), msg);
    }

    #[test]
    fn resilient_group_round_trips() {
        round_trip(NexthopNetlinkMessage::New(NexthopMessage {
            header: NexthopHeader::default(),
            attributes: vec![
                NexthopAttribute::Id(100),
                NexthopAttribute::Group(vec![GroupMember { id: 1, weight: 1 }, GroupMember { id: 2, weight: 256 }]),
                NexthopAttribute::GroupType(GroupType::Resilient),
                NexthopAttribute::ResGroup(vec![ResGroupAttribute::Buckets(128)]),
            ],
        }));
    }

    #[test]
    fn gateway_nexthop_round_trips() {
        round_trip(NexthopNetlinkMessage::New(NexthopMessage {
            header: NexthopHeader { family: libc::AF_INET6 as u8, ..Default::default() },
            attributes: vec![
                NexthopAttribute::Id(7),
                NexthopAttribute::Oif(3),
                NexthopAttribute::Gateway("2001:db8::1".parse().unwrap()),
            ],
        }));
    }

    #[test]
    fn group_encoding_matches_the_kernel_struct() {
        let attr = NexthopAttribute::Group(vec![GroupMember { id: 0x0102_0304, weight: 3 }]);
        let mut buf = vec![0xa5; attr.value_len()];
        attr.emit_value(&mut buf);
        let mut expected = 0x0102_0304u32.to_ne_bytes().to_vec();
        expected.extend_from_slice(&[2, 0, 0, 0]);
        assert_eq!(buf, expected);
    }

    #[test]
    fn truncated_header_is_an_error() {
        let header = header_of(RTM_NEWNEXTHOP);
        assert!(NexthopNetlinkMessage::deserialize(&header, &[0; 7]).is_err());
    }
}
