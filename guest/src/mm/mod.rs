//! The memory model: sparse memmap in sections and subsections, page states, frame
//! allocator.
//!
//! - [`geometry`]: pfn, section (128 MiB), subsection (2 MiB) arithmetic.
//! - [`page`]: page states, the transition state machine, the 16-byte descriptor.
//! - [`section`]: section kinds and the sparse two-level section root.
//! - [`storage`]: where memmap storage comes from (injected): the boot region, then 2 MiB
//!   frames of the model's own allocator for everything added later ([`FrameReserve`]).
//! - [`model`]: [`MemModel`] — add/remove subsections, `pfn_valid` / `pfn_active` /
//!   `pfn_to_online_page` / `pfn_to_device_page`, walkers under a read guard, the frame
//!   allocator and the page-state operations.
//! - [`boot`]: building the model from the start_info memmap.
//! - [`census`]: counts for logs and xenstore.
//! - [`hotplug`]: the hot-add window, adding and removing hot-plug RAM sections, the
//!   saveable-page walker.
//!
//! Boot, in the kernel's order (host-runnable with a heap-backed provider):
//!
//! ```
//! use guest::mm::boot::{self, BootConfig, MemmapEntry, E820_RAM};
//! use guest::mm::{HeapStorage, PageState, Pfn, PfnRange};
//!
//! let memmap = [MemmapEntry { addr: 0, size: 256 << 20, kind: E820_RAM }];
//! let reserved = [PfnRange::covering_bytes(1 << 20, 2 << 20)]; // kernel image
//! let cfg = BootConfig { memmap: &memmap, reserved: &reserved, touchable_ram_pages: None };
//! // The kernel sizes a BumpStorage with boot::plan + boot::find_storage_region instead.
//! let mm = boot::build(&cfg, HeapStorage).unwrap();
//! mm.end_boot();
//! for s in mm.sections() {
//!     log::info!("{s}");
//! }
//! let frame = mm.alloc_frames(0).unwrap();
//! assert_eq!(mm.read().pfn_to_online_page(frame).unwrap().state(), PageState::Allocated);
//! mm.free_frames(frame, 0).unwrap();
//! assert_eq!(mm.census().ram_pages(), 65536);
//! assert!(mm.read().pfn_to_online_page(Pfn::from_addr(1 << 30)).is_none());
//! ```

pub mod boot;
mod buddy;
pub mod census;
pub mod geometry;
mod grace;
pub mod hotplug;
mod memmap;
pub mod model;
#[cfg(test)]
mod model_tests;
pub mod page;
pub mod read;
pub mod section;
mod sections;
pub mod storage;

pub use buddy::MAX_ORDER;
pub use census::Census;
pub use geometry::{Pfn, PfnRange};
pub use grace::{set_hooks as set_grace_hooks, GraceHooks, GraceStats};
pub use memmap::MEMMAP_BYTES_PER_SUBSECTION;
pub use model::{MemModel, MmError, RaceBug, SectionInfo};
pub use page::{ForeignMap, IllegalTransition, PageState, Phase, StateKind};
pub use read::{ActivePages, PageRef, ReadGuard};
pub use section::SectionKind;
pub use section::SECTION_TABLE_CHUNK_BYTES;
pub use storage::{
    Budgeted, BumpStorage, FrameMap, FrameReserve, HeapFrames, HeapStorage, IdentityFrames,
    MemmapStorage,
};
