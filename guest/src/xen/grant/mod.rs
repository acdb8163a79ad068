//! Grant tables: granting our pages to other domains, and mapping pages other domains
//! granted to us (foreign pages) into the device range of the memory model.
//!
//! ```text
//!   our frames (Allocated) ─▶ table::GrantTable ─▶ v1 entries Xen reads ─▶ peer maps them
//!   peer's grants ─▶ mapper::ForeignMapper::map_batch ─▶ GNTTABOP_map_grant_ref
//!                      └─▶ device-range slot: Unpopulated → Foreign{domid, gref, handle}
//!                          (never Reserved, never RAM; back to Unpopulated on unmap)
//!   pair/  the two-guest test handshake over xenstore (granter and mapper roles)
//!   handshake  its value formats, page pattern and checksum
//! ```
//!
//! - [`table`]: [`GrantTable`] over our v1 entries — grant read-only or read-write,
//!   end access with a cmpxchg that succeeds only when no peer maps the grant, and a
//!   deferred list (like Linux's `gnttab_end_foreign_access`) for grants still mapped.
//! - [`mapper`]: [`ForeignMapper`] — device-range slots, batched
//!   `GNTTABOP_map_grant_ref` / `unmap_grant_ref`, reclaiming a dead peer's slots, and
//!   placing our own grant-table frames.
//! - [`handshake`]: xenstore layout, strict value parsing, page pattern and checksum of
//!   the two-guest test handshake.
//!
//! Xen is reached only through [`xen_bindings::traits::GrantOps`].
//!
//! How the kernel uses it:
//!
//! 1. At boot, with the memory model built: `ForeignMapper::new(window.device)` (the
//!    device part of `mm::hotplug::HotplugWindow`, above the hot-add RAM window and
//!    beyond anything in the start_info memmap, so it collides with nothing).
//! 2. `GrantOps::query_size` gives `(nr_frames, max_nr_frames)`; choose `n` frames
//!    (`n <= max_nr_frames`, at most 512) and call `mapper.map_table_frames(mm, xen, 0,
//!    n)`: it adds a fresh device subsection, puts table frame `i` at slot `i` with
//!    `XENMEM_add_to_physmap(XENMAPSPACE_grant_table)` and records the slots as
//!    `Foreign{DOMID_XEN}` (Xen's frames: not our RAM, never ballooned). The kernel maps
//!    the returned pfn range write-back in its page tables and views it as
//!    `&'static [GrantEntryShared]` (`n * 512` entries) for `GrantTable::new`. More
//!    frames later: `map_table_frames(mm, xen, n, m)` gives a second range, which a
//!    contiguous virtual mapping turns into one longer slice for `GrantTable::grow`.
//! 3. Granter: `grant_access(peer, pfn, readonly)` per page, publish the refs; at
//!    teardown `end_access` each; on `Deferred` keep the page allocated and call
//!    `retry_deferred` periodically (once a second), freeing the frames it reports.
//! 4. Mapper: `map_batch` (≤ 64 grants per call); the slot pfns are device-range
//!    addresses the kernel maps to read the foreign frames; `unmap_batch` when done;
//!    `reclaim_domain(peer)` when the peer's xenstore directory disappears.
//! 5. Status under `data/grant/`: `GrantTable::status().fields()` and
//!    `ForeignMapper::status().fields()`; the census already counts `pages/device/*`.

pub mod handshake;
pub mod mapper;
pub mod pair;
pub mod table;

pub use mapper::{
    ForeignMapper, MapCounters, MapError, MapRequest, MapperStatus, Reclaimed, UnmapError,
    Unmapped, DOMID_XEN, MAX_BATCH, TABLE_FRAME_HANDLE,
};
pub use table::{
    EndAccess, GrantCounters, GrantTable, GrantTableError, GrantTableStatus, RefState, Released,
    NR_RESERVED_ENTRIES,
};
