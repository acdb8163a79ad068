//! memory.h: reservations, add_to_physmap, memory_map, PoD target.

use super::DomId;
use crate::assert_layout;

pub const XENMEM_INCREASE_RESERVATION: u32 = 0;
pub const XENMEM_DECREASE_RESERVATION: u32 = 1;
pub const XENMEM_MAXIMUM_RAM_PAGE: u32 = 2;
pub const XENMEM_CURRENT_RESERVATION: u32 = 3;
pub const XENMEM_MAXIMUM_RESERVATION: u32 = 4;
pub const XENMEM_POPULATE_PHYSMAP: u32 = 6;
pub const XENMEM_ADD_TO_PHYSMAP: u32 = 7;
pub const XENMEM_MEMORY_MAP: u32 = 10;
pub const XENMEM_MAXIMUM_GPFN: u32 = 14;
pub const XENMEM_SET_POD_TARGET: u32 = 16;
pub const XENMEM_GET_POD_TARGET: u32 = 17;

/// `struct xen_memory_reservation`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct XenMemoryReservation {
    /// Guest handle to an array of `xen_pfn_t` (one gfn per extent).
    pub extent_start: *mut u64,
    pub nr_extents: u64,
    pub extent_order: u32,
    pub mem_flags: u32,
    pub domid: DomId,
}
assert_layout!(
    XenMemoryReservation,
    size = 32,
    extent_start = 0,
    nr_extents = 8,
    extent_order = 16,
    mem_flags = 20,
    domid = 24
);

/// `XENMAPSPACE_*` for [`XenAddToPhysmap::space`].
pub mod mapspace {
    pub const SHARED_INFO: u32 = 0;
    pub const GRANT_TABLE: u32 = 1;
    pub const GMFN: u32 = 2;
    pub const GMFN_RANGE: u32 = 3;
    pub const GMFN_FOREIGN: u32 = 4;
    pub const DEV_MMIO: u32 = 5;
}
/// `XENMAPIDX_grant_table_status`: or-ed into `idx` for a status frame (v2 only).
pub const XENMAPIDX_GRANT_TABLE_STATUS: u64 = 0x8000_0000;

/// `struct xen_add_to_physmap`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct XenAddToPhysmap {
    pub domid: DomId,
    /// Pages in the range, for `GMFN_RANGE` only.
    pub size: u16,
    pub space: u32,
    pub idx: u64,
    pub gpfn: u64,
}
assert_layout!(
    XenAddToPhysmap,
    size = 24,
    domid = 0,
    size = 2,
    space = 4,
    idx = 8,
    gpfn = 16
);

/// `struct xen_memory_map` (for `XENMEM_memory_map`: the guest's E820 as Xen knows it).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct XenMemoryMap {
    pub nr_entries: u32,
    pub buffer: *mut u8,
}
assert_layout!(XenMemoryMap, size = 16, nr_entries = 0, buffer = 8);

/// `struct xen_pod_target`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct XenPodTarget {
    pub target_pages: u64,
    pub tot_pages: u64,
    pub pod_cache_pages: u64,
    pub pod_entries: u64,
    pub domid: DomId,
}
assert_layout!(
    XenPodTarget,
    size = 40,
    target_pages = 0,
    tot_pages = 8,
    pod_cache_pages = 16,
    pod_entries = 24,
    domid = 32
);
