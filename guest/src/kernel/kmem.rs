//! The kernel's memory: the memory model built from start_info, the heap and page tables
//! drawing frames from it.
//!
//! Order at boot: (1) under populate-on-demand, how much RAM may be touched (Xen's
//! `tot_pages` is the PoD target); (2) build the sparse memmap with storage carved from
//! touchable RAM below 4 GiB (mapped by the entry stub's tables) — memmap of memory added
//! later comes from 2 MiB frames of the model's own allocator ([`FrameReserve`], topped up
//! by the hotplug driver and the grant mapper before they add); (3) only now map RAM
//! above 4 GiB, with page-table pages from the frame allocator; (4) the heap grows in
//! 2 MiB frames from the allocator ([`crate::kheap`]).

use core::ptr::NonNull;

use guest::mm::boot::{self, BootConfig, MemmapEntry, MAX_MEMMAP_ENTRIES};
use guest::mm::{
    Budgeted, BumpStorage, FrameReserve, IdentityFrames, MemModel, Pfn, PfnRange,
    SECTION_TABLE_CHUNK_BYTES,
};
use xen_bindings::abi::start_info::memmap_type;

use crate::arch::entry;
use crate::boot::BootInfo;

/// The model's memmap storage: one region carved at boot, then 2 MiB frames of our own
/// RAM for whatever is added later, behind a budget so the `hotplug-fail` test switch can
/// make a hot-add's memmap allocation fail.
pub type Storage = Budgeted<FrameReserve<BumpStorage, IdentityFrames>>;
pub type Model = MemModel<Storage>;

/// The one memory model, set once at boot.
pub static MM: spin::Once<Model> = spin::Once::new();

/// Extra memmap storage reserved at boot for what is added later, before any 2 MiB frame
/// is taken from the allocator: the section-table chunks of the hot-plug and device
/// windows (5 × 67 KiB) and the memmap of the first hot-added section (512 KiB). It is
/// no ceiling: storage beyond it comes from our RAM as it grows (growth by steps).
const STORAGE_HEADROOM: u64 = SECTION_TABLE_CHUNK_BYTES as u64 * 5 + (512 << 10);

/// Slack below Xen's PoD target, so that boot never touches the last pages it may touch.
const POD_SLACK_PAGES: u64 = 256;

const FOUR_G: u64 = 1 << 32;

/// RAM pages we may touch, or None when all of it is backed (no PoD).
///
/// With populate-on-demand Xen's `tot_pages` is the PoD target; Xen also accounts the
/// special pages and ACPI tables (non-RAM ranges of the memmap below 4 GiB) to us.
pub fn touchable_ram_pages(info: &BootInfo, tot_pages: u64) -> Option<u64> {
    let ram = info.ram_bytes() >> 12;
    if tot_pages >= ram {
        return None;
    }
    Some(tot_pages.saturating_sub(nonram_pages(info) + POD_SLACK_PAGES))
}

/// Pages of the non-RAM memmap entries below 4 GiB: for a PVH domU the special pages
/// (console, xenstore, ...) and the ACPI tables, which the toolstack populates and Xen
/// accounts to the domain.
fn nonram_pages(info: &BootInfo) -> u64 {
    info.memmap()
        .iter()
        .filter(|e| e.type_ != memmap_type::RAM && e.addr < FOUR_G)
        .map(|e| e.size.div_ceil(4096))
        .sum()
}

/// How far Xen's `tot_pages` lies above the census' own RAM (`pages/ram`): the non-RAM
/// pages Xen accounts to us, minus the RAM page the shared_info mapping replaced (Xen
/// frees the frame that was there; the descriptor stays Reserved as part of the image).
pub fn xen_extra_pages(info: &BootInfo) -> u64 {
    nonram_pages(info).saturating_sub(crate::hv::SHARED_INFO_PAGES)
}

/// The start_info memmap in the memory model's terms.
pub fn memmap_entries(info: &BootInfo) -> alloc::vec::Vec<MemmapEntry> {
    info.memmap()
        .iter()
        .take(MAX_MEMMAP_ENTRIES)
        .map(MemmapEntry::from)
        .collect()
}

/// Builds the memory model from start_info and installs it in [`MM`].
pub fn init(info: &BootInfo, touchable: Option<u64>) -> &'static Model {
    let entries = memmap_entries(info);
    let n = entries.len();
    let (ks, ke) = entry::kernel_extent();
    let mut reserved = [PfnRange::new(Pfn(0), Pfn(0)); 5];
    reserved[0] = PfnRange::covering_bytes(ks, ke - ks);
    for (r, &(addr, len)) in reserved[1..].iter_mut().zip(&info.loader_ranges) {
        if len != 0 {
            *r = PfnRange::covering_bytes(addr, len);
        }
    }
    let cfg = BootConfig {
        memmap: &entries[..n],
        reserved: &reserved,
        touchable_ram_pages: touchable,
    };
    let mut plan = match boot::plan(&cfg) {
        Ok(p) => p,
        Err(e) => panic!("memmap from start_info is unusable: {e}"),
    };
    plan.storage_bytes += STORAGE_HEADROOM;
    let Some(region) = boot::find_storage_region(&cfg, &plan, Pfn(FOUR_G >> 12)) else {
        panic!(
            "no touchable RAM below 4 GiB for {} KiB of memmap storage",
            plan.storage_bytes >> 10
        )
    };
    crate::boottime::mark("memmap-plan");
    let base = NonNull::new(region.start.addr() as *mut u8).expect("storage region at pfn 0");
    // SAFETY: `region` is touchable RAM below 4 GiB (identity-mapped by the boot tables),
    // clear of the kernel image and loader data, and used by nothing else: the builder
    // marks it Reserved.
    let bump = unsafe { BumpStorage::new(base, region) };
    // SAFETY: frames given to the reserve are order-9 blocks of our RAM from the model's
    // allocator (Allocated to the reserve until taken back): backed, and mapped at their
    // own address (RAM below 4 GiB by the entry stub, above by `map_ram_above_4g`,
    // hot-added ranges by the hotplug driver's map callback before they are populated).
    let frames = unsafe { IdentityFrames::new() };
    // The window's section-table chunks stay in the boot region (they never leave).
    let reserve = FrameReserve::new(bump, frames).keeping(5 * SECTION_TABLE_CHUNK_BYTES);
    let storage = Budgeted::new(reserve, usize::MAX);
    let mm = match boot::build(&cfg, storage) {
        Ok(m) => m,
        Err(e) => panic!("cannot build the memory model: {e}"),
    };
    crate::boottime::mark("memmap-build");
    mm.end_boot();
    let mm = MM.call_once(|| mm);
    crate::arch::page_tables::set_table_source(table_frame);
    log::info!(
        "mm: {} RAM pages, {} subsections, memmap storage [{:#x}-{:#x}) ({} KiB incl. {} KiB headroom), touch limit pfn {:#x}",
        plan.ram_pages,
        plan.subsections,
        region.start.addr(),
        region.end.addr(),
        (region.len() * 4096) >> 10,
        STORAGE_HEADROOM >> 10,
        plan.touch_limit.0
    );
    mm
}

/// The sections and the census, one line each (after ready under Xen: each line costs
/// an exit and a line of Xen's serial console, which a booting guest waits for).
pub fn log_layout(mm: &Model) {
    for s in mm.sections() {
        log::info!("mm: {s}");
    }
    log_census(mm);
}

/// The entry stub mapped the low 4 GiB; map RAM above it too (tables from the allocator).
pub fn map_ram_above_4g(info: &BootInfo) {
    for e in info.memmap().iter().filter(|e| e.type_ == memmap_type::RAM) {
        let end = e.addr.saturating_add(e.size);
        if end > FOUR_G {
            let start = e.addr.max(FOUR_G);
            match crate::arch::page_tables::map(start, end) {
                Ok(n) => log::info!(
                    "paging: mapped RAM [{start:#x}-{end:#x}) above 4 GiB ({n} x 2 MiB, {} table pages)",
                    crate::arch::page_tables::tables_allocated()
                ),
                Err(err) => log::error!("paging: cannot map RAM [{start:#x}-{end:#x}): {err:?}"),
            }
        }
    }
}

/// A frame from the model's allocator for a new page table (Allocated: it counts as our
/// RAM).
fn table_frame() -> Option<u64> {
    Some(MM.get()?.alloc_frames(0).ok()?.addr())
}

/// Logs the census, one line each (the Display form is multi-line).
pub fn log_census(mm: &Model) {
    let text = alloc::format!("{}", mm.census());
    for line in text.lines() {
        log::info!("{line}");
    }
}

/// Test switch `fill=MARKER:MIB` (balloon-scrub scenario): allocate `mib` MiB as 2 MiB
/// blocks, write `marker` twice at the start of every page, and free them again — data of
/// ours in Free pages, which the balloon must zero before Xen gets them. Returns the pages
/// filled (fewer if the allocator ran out of 2 MiB blocks).
pub fn fill_and_free(mm: &Model, marker: u64, mib: u64) -> u64 {
    let mut blocks = alloc::vec::Vec::new();
    while (blocks.len() as u64) < mib / 2 {
        match mm.alloc_frames(9) {
            Ok(p) => blocks.push(p),
            Err(_) => break,
        }
    }
    for p in &blocks {
        for i in 0..512u64 {
            let page = (p.addr() + i * 4096) as *mut [u64; 2];
            // SAFETY: the block was just allocated to us (Free -> Allocated): backed,
            // identity-mapped RAM that nothing else uses.
            unsafe { page.write_volatile([marker, marker]) };
        }
    }
    for p in &blocks {
        mm.free_frames(*p, 9)
            .expect("freeing a block just allocated");
    }
    blocks.len() as u64 * 512
}
