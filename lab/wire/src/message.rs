//! The request/reply format of the lab's service, one text line per message.
//!
//! A request names its flow and sequence number; a reply repeats both and names the socket that
//! answered: node, instance and pid (DESIGN.md section 2: "every service reply names its
//! backend and process"). Text keeps a captured packet or `nc` session readable.
//!
//! ```text
//! REQ <flow> <seq> [<upload>]
//! REP <flow> <seq> <node> <instance> <pid> <known>
//! ```
//! A TCP request with `upload` (1 to [`MAX_UPLOAD`]) is followed by that many bytes, which the
//! service reads before it replies: what makes a flow send full-size segments.
//! `known` is 1 when the answering socket owns the flow (a TCP connection always does; a UDP
//! service knows the connection ids it issued), 0 when the datagram reached it by mistake.

use std::fmt;

/// A message that could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed {what}: {line:?}")]
pub struct WireError {
    /// Which message was expected.
    pub what: &'static str,
    /// The offending text.
    pub line: String,
}

/// The socket that answered: what a reply names.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Identity {
    /// The node (backend) name.
    pub node: String,
    /// The service instance on that node (`a`, `b`, ... for releases).
    pub instance: String,
    /// The process id.
    pub pid: u32,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}[{}]", self.node, self.instance, self.pid)
    }
}

/// The most bytes a request uploads.
pub const MAX_UPLOAD: u32 = 1 << 20;

/// A client request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// The flow's number.
    pub flow: u32,
    /// The request's number within the flow.
    pub seq: u64,
    /// Bytes that follow the line (TCP only; 0: none).
    pub upload: u32,
}

/// A service reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The flow's number (echoed).
    pub flow: u32,
    /// The request's number (echoed).
    pub seq: u64,
    /// The answering socket.
    pub who: Identity,
    /// Whether the answering socket owns the flow.
    pub known: bool,
}

impl Request {
    /// Request `seq` of flow `flow`, uploading nothing.
    pub fn new(flow: u32, seq: u64) -> Self {
        Self { flow, seq, upload: 0 }
    }

    /// The request as a line (with its newline).
    pub fn emit(&self) -> String {
        match self.upload {
            0 => format!("REQ {} {}\n", self.flow, self.seq),
            upload => format!("REQ {} {} {upload}\n", self.flow, self.seq),
        }
    }

    /// Parses a datagram payload (a line as bytes).
    pub fn parse_bytes(bytes: &[u8]) -> Result<Self, WireError> {
        Self::parse(text_of("request", bytes)?)
    }

    /// Parses a line (trailing newline optional).
    pub fn parse(line: &str) -> Result<Self, WireError> {
        let err = || WireError { what: "request", line: line.to_owned() };
        let mut words = line.trim_end().split(' ');
        if words.next() != Some("REQ") {
            return Err(err());
        }
        let flow = words.next().and_then(|w| w.parse().ok()).ok_or_else(err)?;
        let seq = words.next().and_then(|w| w.parse().ok()).ok_or_else(err)?;
        let upload = match words.next() {
            None => 0,
            Some(w) => w.parse().ok().filter(|n| (1..=MAX_UPLOAD).contains(n)).ok_or_else(err)?,
        };
        if words.next().is_some() {
            return Err(err());
        }
        Ok(Self { flow, seq, upload })
    }
}

impl Reply {
    /// The reply as a line (with its newline).
    pub fn emit(&self) -> String {
        let Identity { node, instance, pid } = &self.who;
        format!("REP {} {} {node} {instance} {pid} {}\n", self.flow, self.seq, u8::from(self.known))
    }

    /// Parses a datagram payload (a line as bytes).
    pub fn parse_bytes(bytes: &[u8]) -> Result<Self, WireError> {
        Self::parse(text_of("reply", bytes)?)
    }

    /// Parses a line (trailing newline optional).
    pub fn parse(line: &str) -> Result<Self, WireError> {
        let err = || WireError { what: "reply", line: line.to_owned() };
        let words: Vec<&str> = line.trim_end().split(' ').collect();
        let [tag, flow, seq, node, instance, pid, known] = words.as_slice() else {
            return Err(err());
        };
        if *tag != "REP" || node.is_empty() || instance.is_empty() {
            return Err(err());
        }
        Ok(Self {
            flow: flow.parse().map_err(|_| err())?,
            seq: seq.parse().map_err(|_| err())?,
            who: Identity {
                node: (*node).to_owned(),
                instance: (*instance).to_owned(),
                pid: pid.parse().map_err(|_| err())?,
            },
            known: match *known {
                "1" => true,
                "0" => false,
                _ => return Err(err()),
            },
        })
    }
}

fn text_of<'a>(what: &'static str, bytes: &'a [u8]) -> Result<&'a str, WireError> {
    std::str::from_utf8(bytes).map_err(|_| WireError { what, line: String::from_utf8_lossy(bytes).into_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let req = Request::new(7, 42);
        assert_eq!(req.emit(), "REQ 7 42\n");
        assert_eq!(Request::parse(&req.emit()), Ok(req));
        let upload = Request { upload: 4_000, ..req };
        assert_eq!(upload.emit(), "REQ 7 42 4000\n");
        assert_eq!(Request::parse(&upload.emit()), Ok(upload));
        let rep = Reply {
            flow: 7,
            seq: 42,
            who: Identity { node: "be1".into(), instance: "a".into(), pid: 99 },
            known: true,
        };
        assert_eq!(rep.emit(), "REP 7 42 be1 a 99 1\n");
        assert_eq!(Reply::parse(&rep.emit()), Ok(rep));
    }

    #[test]
    fn rejects_malformed_lines() {
        // An upload of 0 (written as no upload) or beyond `MAX_UPLOAD`, or a fourth word.
        for bad in ["", "REQ", "REQ 1", "REQ x 1", "REQ 1 2 0", "REQ 1 2 1048577", "REQ 1 2 3 4", "REP 1 2", "REQ -1 2"]
        {
            assert!(Request::parse(bad).is_err(), "{bad:?}");
        }
        for bad in ["REP 1 2 be1 a 9", "REP 1 2 be1 a 9 2", "REP 1 2  a 9 1", "REQ 1 2 be1 a 9 1"] {
            assert!(Reply::parse(bad).is_err(), "{bad:?}");
        }
    }
}
