//! The inner maps of the LB's map-in-map tables (the rings, the live ids' slots), created with
//! BTF for their keys and values, as the loader creates the outer maps' templates, and filled
//! before any packet can see them.
//!
//! Why not plain maps: an inner map must equal its outer map's template, and kernels of the 6.1
//! series compare `timer_off` (`kernel/bpf/map_in_map.c`, `bpf_map_meta_equal`), which depends on
//! the value's BTF: -ENOENT for a struct without a timer, -EINVAL for any other type and for a
//! map created without BTF. So these maps carry a small BTF of their own whose value type is of
//! the template's kind: an array of `u16` for a ring block, a struct for an id slot (the kernel
//! checks kinds and sizes, not names).

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::maps::{Map, MapData};
use zrlab_common::lb::{ID_SLOT_COUNT, IdSlot, RING_BLOCK, RING_BLOCKS, RingBlock, ring_position};

use zrlab_host::{
    bpf_sys::{BTF_LOAD, MAP_CREATE, MAP_TYPE_ARRAY, MAP_UPDATE_BATCH, MapCreateAttr, fd_from, sys_bpf},
    error::{LabError, Result},
};

/// BTF type ids in [`btf_blob`].
const TYPE_U32: u32 = 1;
const TYPE_U16: u32 = 2;
const TYPE_RING_BLOCK: u32 = 3;
const TYPE_ID_SLOT: u32 = 4;

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

/// The BTF of the inner maps' keys and values: [1] INT "u32", [2] INT "u16", [3] an ARRAY of
/// [`RING_BLOCK`] `u16`s (a [`RingBlock`]), [4] STRUCT "id_slot" of four `u32` members (an
/// [`IdSlot`]).
fn btf_blob() -> Vec<u8> {
    let strings = b"\0u32\0u16\0id_slot\0id\0real\0vips\0shared\0";
    // [1] INT "u32" (name at offset 1, kind INT, 4 bytes, 32 bits), [2] INT "u16" (offset 5).
    let ints = [[1, 1 << 24, 4, 32], [5, 1 << 24, 2, 16]];
    // [3] ARRAY (no name, kind ARRAY, size 0): element type, index type, elements.
    let array = [0, 3 << 24, 0, TYPE_U16, TYPE_U32, RING_BLOCK];
    // [4] STRUCT "id_slot" (offset 9, kind STRUCT, 4 members, 16 bytes), then each member's
    // name, type and bit offset.
    let slot = [9, (4 << 24) | 4, 16, 17, TYPE_U32, 0, 20, TYPE_U32, 32, 25, TYPE_U32, 64, 30, TYPE_U32, 96];
    let types: Vec<u32> = ints.into_iter().flatten().chain(array).chain(slot).collect();
    let type_bytes: Vec<u8> = types.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let mut blob = Vec::new();
    blob.extend_from_slice(&0xeb9fu16.to_ne_bytes());
    blob.extend_from_slice(&[1, 0]);
    for word in [24u32, 0, type_bytes.len() as u32, type_bytes.len() as u32, strings.len() as u32] {
        blob.extend_from_slice(&word.to_ne_bytes());
    }
    blob.extend_from_slice(&type_bytes);
    blob.extend_from_slice(strings);
    blob
}

/// Creates an array of `max_entries` values of BTF type `value` (`size` bytes each) and writes
/// `values` from index 0 with one batch update (a ring change costs one system call, not one
/// per block).
fn array<T>(name: &str, (value, size): (u32, usize), max_entries: u32, values: &[T]) -> Result<MapData> {
    assert_eq!(size, size_of::<T>(), "the BTF type's size is the value's");
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
        value_size: size as u32,
        max_entries,
        map_name,
        btf_fd: btf.as_raw_fd() as u32,
        btf_key_type_id: TYPE_U32,
        btf_value_type_id: value,
        ..Default::default()
    };
    let fd = sys_bpf(MAP_CREATE, &mut attr)
        .map(fd_from)
        .map_err(|e| LabError::Bpf { what: format!("create inner map {name}"), message: e.to_string() })?;
    let data = MapData::from_fd(fd)
        .map_err(|e| LabError::Bpf { what: format!("wrap inner map {name}"), message: e.to_string() })?;
    let keys: Vec<u32> = (0..values.len() as u32).collect();
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: values.len() as u32,
        map_fd: data.fd().as_fd().as_raw_fd() as u32,
        ..Default::default()
    };
    // `keys` and `values` hold `count` keys and values; the kernel reads them during the call.
    // It succeeds only when it wrote them all, and otherwise says how many it wrote.
    let filled = sys_bpf(MAP_UPDATE_BATCH, &mut attr);
    if filled.is_err() {
        return Err(LabError::Bpf {
            what: format!("fill inner map {name} (batch update)"),
            message: format!("{} of {} values written: {filled:?}", attr.count, values.len()),
        });
    }
    Ok(data)
}

/// A ring holding real index `slots[i]` in slot `i`, packed into [`RingBlock`]s as
/// `zrlab_common::lb::ring_position` places them.
pub(super) fn ring(name: &str, slots: &[u32]) -> Result<Map> {
    let mut blocks: Vec<RingBlock> = vec![[0; RING_BLOCK as usize]; slots.len().div_ceil(RING_BLOCK as usize)];
    for (slot, real) in slots.iter().enumerate() {
        let (block, lane) = ring_position(slot as u32);
        blocks[block as usize][lane] = u16::try_from(*real).map_err(|_| {
            LabError::Unsupported(format!("ring {name}: real index {real} does not fit a ring slot (16 bits)"))
        })?;
    }
    Ok(Map::Array(array(name, (TYPE_RING_BLOCK, size_of::<RingBlock>()), RING_BLOCKS, &blocks)?))
}

/// The live ids' slots (`zrlab_common::lb::ID_SLOTS_MAP`), `slots` from index 0.
pub(super) fn id_slots(name: &str, slots: &[IdSlot]) -> Result<Map> {
    Ok(Map::Array(array(name, (TYPE_ID_SLOT, size_of::<IdSlot>()), ID_SLOT_COUNT, slots)?))
}
