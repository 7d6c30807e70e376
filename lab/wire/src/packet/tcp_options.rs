//! TCP options, and the reference TPR option walk.
//!
//! [`TcpOption::parse`] follows smoltcp's `TcpOption::parse`: it returns the rest of the buffer
//! and one option, matches on `(kind, length)`, treats a wrong length as an error and keeps
//! unknown kinds. [`tpr_server_id`] maps DESIGN.md's wire rules for the LB's walk onto it one to
//! one, so it is the reference the BPF walk is diffed against (conformance and fuzz suites).

use zrlab_common::lb::{TPR_KIND, TPR_LEN, TPR_MAX_OPTIONS};

/// One TCP option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TcpOption {
    /// End of option list (kind 0).
    EndOfList,
    /// No operation (kind 1).
    NoOperation,
    /// Maximum segment size (kind 2, length 4).
    MaxSegmentSize(u16),
    /// The TPR server id (kind 0xB7, length 6, network order).
    ServerId(u32),
    /// Any other option, kept as is.
    Unknown {
        /// Kind.
        kind: u8,
        /// Data (without kind and length).
        data: Vec<u8>,
    },
}

/// A malformed option list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    /// The length byte is missing (the option list ends after the kind).
    #[error("option length missing")]
    Truncated,
    /// Length 0 or 1, or running past the end of the options.
    #[error("option length {0} is impossible here")]
    BadLength(u8),
    /// A known kind with the wrong length.
    #[error("option kind {kind:#x} with length {len}")]
    WrongLength {
        /// Kind.
        kind: u8,
        /// Length found.
        len: u8,
    },
}

impl TcpOption {
    /// Parses the first option of `buf` (non-empty), returning the rest.
    pub fn parse(buf: &[u8]) -> Result<(&[u8], TcpOption), OptionError> {
        match buf[0] {
            0 => Ok((&buf[1..], Self::EndOfList)),
            1 => Ok((&buf[1..], Self::NoOperation)),
            kind => {
                let len = *buf.get(1).ok_or(OptionError::Truncated)?;
                if len < 2 || usize::from(len) > buf.len() {
                    return Err(OptionError::BadLength(len));
                }
                let data = &buf[2..usize::from(len)];
                let option = match (kind, len) {
                    (2, 4) => Self::MaxSegmentSize(u16::from_be_bytes([data[0], data[1]])),
                    (2, _) => return Err(OptionError::WrongLength { kind, len }),
                    (TPR_KIND, TPR_LEN) => Self::ServerId(u32::from_be_bytes([data[0], data[1], data[2], data[3]])),
                    (TPR_KIND, _) => return Err(OptionError::WrongLength { kind, len }),
                    _ => Self::Unknown { kind, data: data.to_vec() },
                };
                Ok((&buf[usize::from(len)..], option))
            }
        }
    }

    /// Appends the option's bytes to `out`.
    pub fn emit(&self, out: &mut Vec<u8>) {
        match self {
            Self::EndOfList => out.push(0),
            Self::NoOperation => out.push(1),
            Self::MaxSegmentSize(mss) => {
                out.extend_from_slice(&[2, 4]);
                out.extend_from_slice(&mss.to_be_bytes());
            }
            Self::ServerId(id) => {
                out.extend_from_slice(&[TPR_KIND, TPR_LEN]);
                out.extend_from_slice(&id.to_be_bytes());
            }
            Self::Unknown { kind, data } => {
                out.push(*kind);
                out.push((data.len() + 2) as u8);
                out.extend_from_slice(data);
            }
        }
    }
}

/// What the TPR walk finds in an option list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TprWalk {
    /// A well-formed TPR option with a non-zero id (the first one wins).
    Id(u32),
    /// No usable id: none present, id 0, EOL first, or the walk's bound reached.
    NoId,
    /// The walk stopped at a malformed option; nothing after it is trusted.
    Malformed,
}

/// The reference walk (DESIGN.md): the first well-formed 0xB7 option wins; EOL ends the walk; a
/// malformed option (length 0 or 1, running past the options, wrong length for 0xB7) ends it;
/// at most [`TPR_MAX_OPTIONS`] options are looked at; id 0 means none.
pub fn tpr_server_id(options: &[u8]) -> TprWalk {
    let mut rest = options;
    for _ in 0..TPR_MAX_OPTIONS {
        if rest.is_empty() {
            return TprWalk::NoId;
        }
        match TcpOption::parse(rest) {
            Ok((_, TcpOption::EndOfList)) => return TprWalk::NoId,
            Ok((_, TcpOption::ServerId(0))) => return TprWalk::NoId,
            Ok((_, TcpOption::ServerId(id))) => return TprWalk::Id(id),
            // A wrong length for a kind the LB does not care about (an MSS of length 3) is
            // still a well-formed length byte: the BPF walk only checks 0xB7's length.
            Err(OptionError::WrongLength { kind, len }) if kind != TPR_KIND => {
                rest = &rest[usize::from(len)..];
            }
            Err(_) => return TprWalk::Malformed,
            Ok((next, _)) => rest = next,
        }
    }
    TprWalk::NoId
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_follows_the_wire_rules() {
        let tpr = |id: u32| {
            let mut v = vec![TPR_KIND, TPR_LEN];
            v.extend_from_slice(&id.to_be_bytes());
            v
        };
        let cat = |parts: &[&[u8]]| parts.concat();
        assert_eq!(tpr_server_id(&tpr(7)), TprWalk::Id(7));
        assert_eq!(tpr_server_id(&cat(&[&[1, 1], &tpr(7)])), TprWalk::Id(7));
        assert_eq!(tpr_server_id(&cat(&[&tpr(7), &tpr(9)])), TprWalk::Id(7), "first wins");
        assert_eq!(tpr_server_id(&cat(&[&[0], &tpr(7)])), TprWalk::NoId, "EOL ends the walk");
        assert_eq!(tpr_server_id(&tpr(0)), TprWalk::NoId, "id 0");
        assert_eq!(tpr_server_id(&[TPR_KIND, 5, 0, 0, 0, 7]), TprWalk::Malformed);
        assert_eq!(tpr_server_id(&cat(&[&[8, 1], &tpr(7)])), TprWalk::Malformed, "length 1");
        assert_eq!(tpr_server_id(&cat(&[&[8, 0], &tpr(7)])), TprWalk::Malformed, "length 0");
        assert_eq!(tpr_server_id(&[8, 10, 0]), TprWalk::Malformed, "past the end");
        assert_eq!(tpr_server_id(&[8]), TprWalk::Malformed, "length missing");
        assert_eq!(tpr_server_id(&cat(&[&[1; 15], &tpr(7)])), TprWalk::NoId, "bounded walk");
        assert_eq!(tpr_server_id(&cat(&[&[1; 14], &tpr(7)])), TprWalk::Id(7));
    }

    #[test]
    fn options_round_trip() {
        for option in [
            TcpOption::MaxSegmentSize(1460),
            TcpOption::ServerId(0xdead_beef),
            TcpOption::Unknown { kind: 8, data: vec![1; 8] },
            TcpOption::NoOperation,
        ] {
            let mut buf = Vec::new();
            option.emit(&mut buf);
            assert_eq!(TcpOption::parse(&buf), Ok((&[][..], option)));
        }
    }
}
