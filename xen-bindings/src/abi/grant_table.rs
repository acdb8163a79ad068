//! grant_table.h: v1 grant entries and the map/unmap/setup/query operations.

use super::DomId;
use crate::assert_layout;

pub type GrantRef = u32;
pub type GrantHandle = u32;

pub const GNTTABOP_MAP_GRANT_REF: u32 = 0;
pub const GNTTABOP_UNMAP_GRANT_REF: u32 = 1;
pub const GNTTABOP_SETUP_TABLE: u32 = 2;
pub const GNTTABOP_QUERY_SIZE: u32 = 6;
pub const GNTTABOP_SET_VERSION: u32 = 8;

/// `struct grant_entry_v1`: one slot of our grant table, written by us, read by Xen.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GrantEntryV1 {
    pub flags: u16,
    pub domid: DomId,
    pub frame: u32,
}
assert_layout!(GrantEntryV1, size = 8, flags = 0, domid = 2, frame = 4);

/// `GTF_*` flags of a v1 grant entry.
pub mod gtf {
    pub const INVALID: u16 = 0;
    pub const PERMIT_ACCESS: u16 = 1;
    pub const ACCEPT_TRANSFER: u16 = 2;
    pub const TYPE_MASK: u16 = 3;
    pub const READONLY: u16 = 1 << 2;
    /// Set by Xen while the peer has the grant mapped for reading.
    pub const READING: u16 = 1 << 3;
    /// Set by Xen while the peer has the grant mapped for writing.
    pub const WRITING: u16 = 1 << 4;
}

/// `GNTMAP_*` flags for [`GnttabMapGrantRef::flags`].
pub mod gntmap {
    pub const DEVICE_MAP: u32 = 1 << 0;
    pub const HOST_MAP: u32 = 1 << 1;
    pub const READONLY: u32 = 1 << 2;
    pub const APPLICATION_MAP: u32 = 1 << 3;
    pub const CONTAINS_PTE: u32 = 1 << 4;
}

/// `GNTST_*` status codes.
pub mod gntst {
    pub const OKAY: i16 = 0;
    pub const GENERAL_ERROR: i16 = -1;
    pub const BAD_DOMAIN: i16 = -2;
    pub const BAD_GNTREF: i16 = -3;
    pub const BAD_HANDLE: i16 = -4;
    pub const BAD_VIRT_ADDR: i16 = -5;
    pub const BAD_DEV_ADDR: i16 = -6;
    pub const NO_DEVICE_SPACE: i16 = -7;
    pub const PERMISSION_DENIED: i16 = -8;
    pub const BAD_PAGE: i16 = -9;
    pub const BAD_COPY_ARG: i16 = -10;
    pub const ADDRESS_TOO_BIG: i16 = -11;
    pub const EAGAIN: i16 = -12;
    pub const NO_SPACE: i16 = -13;
}

/// `struct gnttab_map_grant_ref`. For an HVM/PVH guest `host_addr` is the guest-physical
/// address the foreign frame is mapped at.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GnttabMapGrantRef {
    pub host_addr: u64,
    pub flags: u32,
    pub ref_: GrantRef,
    pub dom: DomId,
    pub status: i16,
    pub handle: GrantHandle,
    pub dev_bus_addr: u64,
}
assert_layout!(
    GnttabMapGrantRef,
    size = 32,
    host_addr = 0,
    flags = 8,
    ref_ = 12,
    dom = 16,
    status = 18,
    handle = 20,
    dev_bus_addr = 24
);

/// `struct gnttab_unmap_grant_ref`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GnttabUnmapGrantRef {
    pub host_addr: u64,
    pub dev_bus_addr: u64,
    pub handle: GrantHandle,
    pub status: i16,
}
assert_layout!(
    GnttabUnmapGrantRef,
    size = 24,
    host_addr = 0,
    dev_bus_addr = 8,
    handle = 16,
    status = 20
);

/// `struct gnttab_setup_table`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GnttabSetupTable {
    pub dom: DomId,
    pub nr_frames: u32,
    pub status: i16,
    pub frame_list: *mut u64,
}
assert_layout!(
    GnttabSetupTable,
    size = 24,
    dom = 0,
    nr_frames = 4,
    status = 8,
    frame_list = 16
);

/// `struct gnttab_query_size`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GnttabQuerySize {
    pub dom: DomId,
    pub nr_frames: u32,
    pub max_nr_frames: u32,
    pub status: i16,
}
assert_layout!(
    GnttabQuerySize,
    size = 16,
    dom = 0,
    nr_frames = 4,
    max_nr_frames = 8,
    status = 12
);

/// v1 grant entries per 4 KiB grant frame.
pub const GRANT_ENTRIES_PER_FRAME_V1: usize = 4096 / core::mem::size_of::<GrantEntryV1>();
