//! Classic pcap files (`pcap-file`), shared by captures (`zrlab_host::capture`) and replays
//! (`zrlab_replay`): read whole, with every error naming the file and the byte offset where
//! it was found; written with microsecond timestamps.
//!
//! Accepted: classic pcap, either byte order, micro- or nanosecond timestamps, link type
//! Ethernet. Refused with a clear error: a file that is not a pcap, pcapng (convert with
//! `tcpdump -r in.pcapng -w out.pcap`), other link types, a truncated header or record. What a
//! frame carries is not this module's business: non-IP frames are counted by whoever replays.

use std::{path::Path, time::Duration};

use pcap_file::{
    DataLink, PcapError,
    pcap::{PcapHeader, PcapPacket, PcapParser, PcapWriter},
};

/// A trace that could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}: offset {offset}: {message}")]
pub struct TraceError {
    /// The file, as given.
    pub file: String,
    /// Byte offset of the header or record at fault.
    pub offset: usize,
    /// What is wrong.
    pub message: String,
}

/// One frame of a trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Capture time (since the Unix epoch, or since the trace's start for generated ones).
    pub at: Duration,
    /// The frame, from the Ethernet header on.
    pub data: Vec<u8>,
}

/// Magic numbers of the first four bytes.
const PCAPNG_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];

/// Reads every frame of `path`.
pub fn read(path: &Path) -> Result<Vec<Frame>, TraceError> {
    let err = |offset: usize, message: String| TraceError { file: path.display().to_string(), offset, message };
    let bytes = std::fs::read(path).map_err(|e| err(0, format!("cannot read: {e}")))?;
    if bytes.starts_with(&PCAPNG_MAGIC) {
        return Err(err(
            0,
            "a pcapng file; the replay reads classic pcap (convert: tcpdump -r in.pcapng -w out.pcap)".into(),
        ));
    }
    let (mut rest, parser) = PcapParser::new(&bytes).map_err(|e| err(0, header_problem(&e)))?;
    let header = parser.header();
    if header.datalink != DataLink::ETHERNET {
        return Err(err(20, format!("link type {:?}: only Ethernet (1) traces can be replayed", header.datalink)));
    }
    let mut frames = Vec::new();
    while !rest.is_empty() {
        let offset = bytes.len() - rest.len();
        let (after, packet) = parser.next_packet(rest).map_err(|e| err(offset, record_problem(&e)))?;
        frames.push(Frame { at: packet.timestamp, data: packet.data.into_owned() });
        rest = after;
    }
    Ok(frames)
}

fn header_problem(e: &PcapError) -> String {
    match e {
        PcapError::IncompleteBuffer => "shorter than a pcap file header (24 bytes)".into(),
        PcapError::InvalidField(what) => format!("not a pcap file ({what})"),
        other => format!("not a pcap file: {other}"),
    }
}

fn record_problem(e: &PcapError) -> String {
    match e {
        PcapError::IncompleteBuffer => "truncated record (the file ends inside it)".into(),
        PcapError::InvalidField(what) => format!("bad record: {what}"),
        other => format!("bad record: {other}"),
    }
}

/// Writes `frames` to `path` as a classic pcap (Ethernet, microsecond timestamps).
pub fn write(path: &Path, frames: &[Frame]) -> std::io::Result<()> {
    let file = std::fs::File::create(path)?;
    let header = PcapHeader { datalink: DataLink::ETHERNET, snaplen: 65_535, ..PcapHeader::default() };
    let mut writer = PcapWriter::with_header(std::io::BufWriter::new(file), header).map_err(std::io::Error::other)?;
    for frame in frames {
        writer
            .write_packet(&PcapPacket::new(frame.at, frame.data.len() as u32, &frame.data))
            .map_err(std::io::Error::other)?;
    }
    Ok(())
}
