//! Packet traces (`pcap-parser`), shared by captures (`zrlab_host::capture`) and replays
//! (`zrlab_replay`): read whole, with every error naming the file and the byte offset where
//! it was found; written as classic pcap with microsecond timestamps.
//!
//! Read: classic pcap (either byte order, micro- or nanosecond timestamps) and pcapng
//! (Wireshark's default: every section's byte order, every interface's timestamp resolution
//! and offset, enhanced and simple packet blocks), link type Ethernet. Real captures are often
//! cut to a snap length (`tcpdump -s 128`): such a record is kept, padded with zeros to the
//! frame's original length so that the lengths its headers state hold, and counted
//! ([`Trace::padded`]): its headers are the captured ones, the tail of its payload is not.
//! Refused with a clear error: a file that is neither, other link types, a truncated header or
//! record. What a frame carries is not this module's business: non-IP frames are counted by
//! whoever replays.

use std::{collections::BTreeMap, path::Path, time::Duration};

use pcap_parser::{
    Block, Linktype, PcapError, PcapHeader, ToVec as _, nom,
    pcap::{LegacyPcapBlock, parse_pcap_frame, parse_pcap_frame_be, parse_pcap_header},
    pcapng::{parse_block_be, parse_block_le},
    traits::PcapNGPacketBlock as _,
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

/// A trace's file format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Classic pcap.
    Pcap,
    /// pcapng.
    PcapNg,
}

/// A trace read from a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trace {
    /// Its frames, in order.
    pub frames: Vec<Frame>,
    /// Its format.
    pub format: Format,
    /// Frames the capture cut short (a snap length), padded with zeros to their original
    /// length.
    pub padded: u64,
}

/// The first four bytes of a pcapng file (a section header block).
const PCAPNG_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];
/// The link type every replayed frame has.
const ETHERNET: Linktype = Linktype(1);

/// Reads every frame of `path`.
pub fn read(path: &Path) -> Result<Trace, TraceError> {
    let err = |offset: usize, message: String| TraceError { file: path.display().to_string(), offset, message };
    let bytes = std::fs::read(path).map_err(|e| err(0, format!("cannot read: {e}")))?;
    let mut trace = Trace { frames: Vec::new(), format: Format::Pcap, padded: 0 };
    if bytes.starts_with(&PCAPNG_MAGIC) {
        trace.format = Format::PcapNg;
        read_pcapng(&bytes, &mut trace).map_err(|(offset, message)| err(offset, message))?;
    } else {
        read_pcap(&bytes, &mut trace).map_err(|(offset, message)| err(offset, message))?;
    }
    Ok(trace)
}

/// A problem at a byte offset.
type Problem = (usize, String);

fn read_pcap(bytes: &[u8], trace: &mut Trace) -> Result<(), Problem> {
    let (mut rest, header) = parse_pcap_header(bytes).map_err(|e| (0, header_problem(&e)))?;
    if header.network != ETHERNET {
        return Err((20, format!("link type {}: only Ethernet (1) traces can be replayed", header.network.0)));
    }
    let parse = if header.is_bigendian() { parse_pcap_frame_be } else { parse_pcap_frame };
    let fraction = if header.is_nanosecond_precision() { Duration::from_nanos } else { Duration::from_micros };
    while !rest.is_empty() {
        let offset = bytes.len() - rest.len();
        let (after, record) = parse(rest).map_err(|e| (offset, record_problem(&e)))?;
        let at = Duration::from_secs(record.ts_sec.into()) + fraction(record.ts_usec.into());
        trace.push(at, record.data, record.origlen);
        rest = after;
    }
    Ok(())
}

/// What a pcapng file says of an interface.
struct Interface {
    linktype: Linktype,
    /// Timestamp units per second.
    resolution: u64,
    /// Seconds added to every timestamp.
    offset: i64,
}

fn read_pcapng(bytes: &[u8], trace: &mut Trace) -> Result<(), Problem> {
    let mut rest = bytes;
    let mut big_endian = false;
    let mut interfaces: BTreeMap<u32, Interface> = BTreeMap::new();
    let mut last = Duration::ZERO;
    while !rest.is_empty() {
        let offset = bytes.len() - rest.len();
        let parse = if big_endian { parse_block_be } else { parse_block_le };
        let (after, block) = parse(rest).map_err(|e| (offset, record_problem(&e)))?;
        match block {
            Block::SectionHeader(shb) => {
                // Interfaces are numbered per section.
                big_endian = shb.big_endian();
                interfaces.clear();
            }
            Block::InterfaceDescription(idb) => {
                let resolution = idb.ts_resolution().ok_or_else(|| {
                    (offset, format!("interface timestamp resolution {:#x} is invalid", idb.if_tsresol))
                })?;
                let id = interfaces.len() as u32;
                interfaces.insert(id, Interface { linktype: idb.linktype, resolution, offset: idb.if_tsoffset });
            }
            Block::EnhancedPacket(epb) => {
                let interface = interfaces
                    .get(&epb.if_id)
                    .ok_or_else(|| (offset, format!("packet of interface {} that no block describes", epb.if_id)))?;
                if interface.linktype != ETHERNET {
                    return Err((offset, ethernet_only(interface.linktype)));
                }
                let ticks = (u64::from(epb.ts_high) << 32) | u64::from(epb.ts_low);
                let secs = (ticks / interface.resolution).saturating_add_signed(interface.offset);
                let fraction = ticks % interface.resolution;
                last = Duration::from_secs(secs)
                    + Duration::from_nanos(
                        (u128::from(fraction) * 1_000_000_000 / u128::from(interface.resolution)) as u64,
                    );
                trace.push(last, epb.packet_data(), epb.orig_len());
            }
            Block::SimplePacket(spb) => {
                // No interface number and no timestamp: the first interface, the last time seen.
                let interface = interfaces
                    .get(&0)
                    .ok_or_else(|| (offset, "a simple packet before any interface block".to_owned()))?;
                if interface.linktype != ETHERNET {
                    return Err((offset, ethernet_only(interface.linktype)));
                }
                trace.push(last, spb.packet_data(), spb.orig_len());
            }
            _ => {}
        }
        rest = after;
    }
    Ok(())
}

impl Trace {
    /// Adds a frame captured as `data` from one of `original` bytes.
    fn push(&mut self, at: Duration, data: &[u8], original: u32) {
        let mut data = data.to_vec();
        let original = original as usize;
        if data.len() < original {
            data.resize(original, 0);
            self.padded += 1;
        }
        self.frames.push(Frame { at, data });
    }
}

fn ethernet_only(linktype: Linktype) -> String {
    format!("link type {}: only Ethernet (1) traces can be replayed", linktype.0)
}

fn header_problem(e: &nom::Err<PcapError<&[u8]>>) -> String {
    match e {
        nom::Err::Incomplete(_) => "shorter than a pcap file header (24 bytes)".into(),
        _ => "neither a pcap nor a pcapng file (unknown magic number)".into(),
    }
}

fn record_problem(e: &nom::Err<PcapError<&[u8]>>) -> String {
    match e {
        nom::Err::Incomplete(_) => "truncated record (the file ends inside it)".into(),
        nom::Err::Error(e) | nom::Err::Failure(e) => format!("bad record: {}", describe(e)),
    }
}

/// A parser error without the input bytes it carries.
fn describe(e: &PcapError<&[u8]>) -> String {
    match e {
        PcapError::NomError(_, kind) => format!("{kind:?}"),
        PcapError::OwnedNomError(_, kind) => format!("{kind:?}"),
        other => other.to_string(),
    }
}

/// Writes `frames` to `path` as a classic pcap (Ethernet, microsecond timestamps).
pub fn write(path: &Path, frames: &[Frame]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let header = PcapHeader { snaplen: 65_535, ..PcapHeader::new() };
    out.write_all(&header.to_vec_raw().map_err(|e| std::io::Error::other(format!("{e:?}")))?)?;
    for frame in frames {
        let len = frame.data.len() as u32;
        let record = LegacyPcapBlock {
            ts_sec: frame.at.as_secs() as u32,
            ts_usec: frame.at.subsec_micros(),
            caplen: len,
            origlen: len,
            data: &frame.data,
        };
        out.write_all(&record.to_vec_raw().map_err(|e| std::io::Error::other(format!("{e:?}")))?)?;
    }
    out.flush()
}
