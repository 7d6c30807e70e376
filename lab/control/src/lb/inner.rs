//! The inner maps of the LB's map-in-map table of rings, created with BTF for their keys and
//! values, as the loader creates the outer map's template.
//!
//! Why not plain maps: an inner map must equal its outer map's template, and kernels of the 6.1
//! series compare `timer_off`, which is -ENOENT for a map created with BTF (the loader's
//! template) and -EINVAL for one created without (`kernel/bpf/map_in_map.c`,
//! `bpf_map_meta_equal`). A plain inner map is refused there with EINVAL. So these maps carry a
//! small BTF of their own: `u32`, `conn_key` and `conn_entry`, each as wide as the program's
//! types (the kernel checks sizes, not member names; `conn_key` is as wide as the family's key).

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::maps::{Map, MapData};
use zrlab_common::lb::{RING_BLOCK, RING_BLOCKS, RingBlock, ring_position};

use zrlab_host::{
    bpf_sys::{BTF_LOAD, MAP_CREATE, MAP_TYPE_ARRAY, MAP_UPDATE_BATCH, MapCreateAttr, fd_from, sys_bpf},
    error::{LabError, Result},
};

/// BTF type ids in [`btf_blob`].
const TYPE_U32: u32 = 1;
const TYPE_RING_BLOCK: u32 = 2;

#[repr(C)]
#[derive(Default)]
struct BtfLoadAttr {
    btf: u64,
    btf_log_buf: u64,
    btf_size: u32,
    btf_log_size: u32,
    btf_log_level: u32,
    /// `btf_flags` on newer kernels; explicit so that the struct's tail is zeroes, which the
    /// kernel requires of every byte past the fields it knows (implicit padding is not).
    btf_flags: u32,
}

/// The batch part of `union bpf_attr` (kernel 5.6+).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// The BTF of the inner maps' keys and values: [1] INT "u32" (4 bytes, 32 bits, unsigned) and
/// [2] STRUCT "ring_block" of `u32` words, as wide as a [`RingBlock`].
fn btf_blob() -> Vec<u8> {
    let mut strings = vec![0u8];
    let mut name = |s: &str| {
        let off = strings.len() as u32;
        strings.extend_from_slice(s.as_bytes());
        strings.push(0);
        off
    };
    let words = size_of::<RingBlock>() / 4;
    let mut types: Vec<u32> = vec![name("u32"), 1 << 24, 4, 32];
    types.extend([name("ring_block"), (4 << 24) | words as u32, (words * 4) as u32]);
    for i in 0..words {
        types.extend([name(&format!("w{i}")), TYPE_U32, (i * 32) as u32]);
    }
    let type_bytes: Vec<u8> = types.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let mut blob = Vec::new();
    blob.extend_from_slice(&0xeb9fu16.to_ne_bytes());
    blob.extend_from_slice(&[1, 0]);
    for word in [24u32, 0, type_bytes.len() as u32, type_bytes.len() as u32, strings.len() as u32] {
        blob.extend_from_slice(&word.to_ne_bytes());
    }
    blob.extend_from_slice(&type_bytes);
    blob.extend_from_slice(&strings);
    blob
}

/// Creates an array of `max_entries` ring blocks.
fn create(max_entries: u32, name: &str) -> Result<MapData> {
    let blob = btf_blob();
    let mut log = vec![0u8; 4096];
    let mut attr = BtfLoadAttr {
        btf: blob.as_ptr() as u64,
        btf_size: blob.len() as u32,
        btf_log_buf: log.as_mut_ptr() as u64,
        btf_log_size: log.len() as u32,
        btf_log_level: 1,
        btf_flags: 0,
    };
    let btf = sys_bpf(BTF_LOAD, &mut attr).map(fd_from).map_err(|e| {
        let text = String::from_utf8_lossy(&log[..log.iter().position(|b| *b == 0).unwrap_or(0)]).trim().to_owned();
        LabError::Bpf { what: format!("load the BTF of inner map {name}"), message: format!("{e}; BTF log: {text}") }
    })?;
    let mut map_name = [0u8; 16];
    for (dst, src) in map_name.iter_mut().zip(name.bytes().take(15)) {
        *dst = src;
    }
    let mut attr = MapCreateAttr {
        map_type: MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: size_of::<RingBlock>() as u32,
        max_entries,
        map_flags: 0,
        map_name,
        btf_fd: btf.as_raw_fd() as u32,
        btf_key_type_id: TYPE_U32,
        btf_value_type_id: TYPE_RING_BLOCK,
        ..Default::default()
    };
    let fd = sys_bpf(MAP_CREATE, &mut attr)
        .map(fd_from)
        .map_err(|e| LabError::Bpf { what: format!("create inner map {name}"), message: e.to_string() })?;
    MapData::from_fd(fd).map_err(|e| LabError::Bpf { what: format!("wrap inner map {name}"), message: e.to_string() })
}

/// A ring holding real index `slots[i]` in slot `i` (packed into [`RingBlock`]s, as
/// `zrlab_common::lb::ring_position` places them), written with one batch update (a ring change
/// costs one system call, not one per block).
pub(super) fn ring(name: &str, slots: &[u32]) -> Result<Map> {
    let data = create(RING_BLOCKS, name)?;
    let mut blocks: Vec<RingBlock> = vec![[0; RING_BLOCK as usize]; slots.len().div_ceil(RING_BLOCK as usize)];
    for (slot, real) in slots.iter().enumerate() {
        let (block, lane) = ring_position(slot as u32);
        blocks[block as usize][lane] = u16::try_from(*real).map_err(|_| {
            LabError::Unsupported(format!("ring {name}: real index {real} does not fit a ring slot (16 bits)"))
        })?;
    }
    let keys: Vec<u32> = (0..blocks.len() as u32).collect();
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: blocks.as_ptr() as u64,
        count: blocks.len() as u32,
        map_fd: data.fd().as_fd().as_raw_fd() as u32,
        ..Default::default()
    };
    // `keys` and `values` hold `count` keys and blocks; the kernel reads them during the call.
    let filled = sys_bpf(MAP_UPDATE_BATCH, &mut attr);
    if filled.is_err() || attr.count as usize != blocks.len() {
        return Err(LabError::Bpf {
            what: format!("fill ring {name} (batch update)"),
            message: format!("{} of {} blocks written: {filled:?}", attr.count, blocks.len()),
        });
    }
    Ok(Map::Array(data))
}
