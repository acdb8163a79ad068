//! Building the model at boot from the start_info (e820-style) memmap.
//!
//! A pure function of: the firmware memmap, the ranges the kernel already uses (image,
//! boot page tables, start_info, ...), a limit on how much RAM may be touched
//! (populate-on-demand), and a memmap storage provider. RAM subsections become present,
//! active and online (kind boot RAM); a subsection only partly RAM is present and its
//! non-RAM pages are Reserved holes; subsections without RAM get no memmap.

use core::fmt;

use super::geometry::{Pfn, PfnRange, MAX_PFN, PAGES_PER_SUBSECTION, PAGE_SIZE};
use super::memmap::MEMMAP_LAYOUT;
use super::model::{InitPages, MemModel, MmError};
use super::page::{PageState, Raw};
use super::section::{SectionKind, CHUNK_LAYOUT, SECTIONS_PER_CHUNK};
use super::storage::MemmapStorage;

use xen_bindings::abi::start_info::{memmap_type, HvmMemmapEntry};

/// e820 type of usable RAM.
pub const E820_RAM: u32 = memmap_type::RAM;
/// e820 type of reserved ranges.
pub const E820_RESERVED: u32 = memmap_type::RESERVED;
/// e820 type of ACPI tables (reclaimable).
pub const E820_ACPI: u32 = memmap_type::ACPI;
/// e820 type of ACPI NVS.
pub const E820_NVS: u32 = memmap_type::NVS;
/// e820 type of unusable ranges.
pub const E820_UNUSABLE: u32 = memmap_type::UNUSABLE;

/// Entries accepted (Linux's E820_MAX_ENTRIES_ZEROPAGE is 128).
pub const MAX_MEMMAP_ENTRIES: usize = 128;

/// One entry of the start_info memmap (`hvm_memmap_table_entry`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MemmapEntry {
    /// First byte.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// e820 type ([`E820_RAM`], ...).
    pub kind: u32,
}

impl From<&HvmMemmapEntry> for MemmapEntry {
    fn from(e: &HvmMemmapEntry) -> MemmapEntry {
        MemmapEntry {
            addr: e.addr,
            size: e.size,
            kind: e.type_,
        }
    }
}

impl MemmapEntry {
    fn end(&self) -> u64 {
        self.addr + self.size
    }
}

/// Why a boot memmap was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootError {
    /// More than [`MAX_MEMMAP_ENTRIES`] entries.
    TooManyEntries(usize),
    /// `addr + size` overflows.
    Overflow(MemmapEntry),
    /// RAM beyond the 64 TiB the model covers.
    RamBeyondMaxPhys(MemmapEntry),
    /// Two entries of different types overlap.
    Overlap(MemmapEntry, MemmapEntry),
    /// No whole page of RAM.
    NoRam,
    /// The storage provider claims pages that are not touchable RAM.
    StorageNotTouchableRam(PfnRange),
    /// The storage provider claims pages the kernel already uses.
    StorageOverlapsReserved(PfnRange),
    /// Building the model failed (storage exhausted); nothing was left half-built.
    Model(MmError),
}

impl fmt::Display for BootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "boot memmap: {self:?}")
    }
}

impl From<MmError> for BootError {
    fn from(e: MmError) -> BootError {
        BootError::Model(e)
    }
}

/// A validated memmap: sorted, zero-length entries dropped, touching entries of one type
/// merged, non-RAM beyond 64 TiB clipped.
#[derive(Clone)]
pub struct BootLayout {
    entries: [MemmapEntry; MAX_MEMMAP_ENTRIES],
    len: usize,
}

impl BootLayout {
    /// Validate and normalise `memmap` (any order).
    pub fn parse(memmap: &[MemmapEntry]) -> Result<BootLayout, BootError> {
        if memmap.len() > MAX_MEMMAP_ENTRIES {
            return Err(BootError::TooManyEntries(memmap.len()));
        }
        let max_addr = MAX_PFN * PAGE_SIZE;
        let mut entries = [MemmapEntry::default(); MAX_MEMMAP_ENTRIES];
        let mut len = 0;
        for e in memmap {
            if e.addr.checked_add(e.size).is_none() {
                return Err(BootError::Overflow(*e));
            }
            if e.size == 0 || e.addr >= max_addr && e.kind != E820_RAM {
                continue;
            }
            if e.end() > max_addr {
                if e.kind == E820_RAM {
                    return Err(BootError::RamBeyondMaxPhys(*e));
                }
                entries[len] = MemmapEntry {
                    size: max_addr - e.addr,
                    ..*e
                };
            } else {
                entries[len] = *e;
            }
            len += 1;
        }
        // Insertion sort: no allocator at this point of boot, and n <= 128.
        for i in 1..len {
            let mut j = i;
            while j > 0 && entries[j - 1].addr > entries[j].addr {
                entries.swap(j - 1, j);
                j -= 1;
            }
        }
        let mut out = 0;
        for i in 0..len {
            let e = entries[i];
            if out > 0 {
                let last = &mut entries[out - 1];
                if e.addr < last.end() && e.kind != last.kind {
                    return Err(BootError::Overlap(*last, e));
                }
                if e.addr <= last.end() && e.kind == last.kind {
                    let end = last.end().max(e.end());
                    last.size = end - last.addr;
                    continue;
                }
            }
            entries[out] = e;
            out += 1;
        }
        let layout = BootLayout { entries, len: out };
        if layout.ram().next().is_none() {
            return Err(BootError::NoRam);
        }
        Ok(layout)
    }

    /// The normalised entries.
    pub fn entries(&self) -> &[MemmapEntry] {
        &self.entries[..self.len]
    }

    /// Whole pages of RAM, ascending.
    pub fn ram(&self) -> impl Iterator<Item = PfnRange> + '_ {
        self.entries()
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| PfnRange::inside_bytes(e.addr, e.size))
            .filter(|r| !r.is_empty())
    }

    /// Whether `pfn` is a whole page of RAM.
    pub fn is_ram(&self, pfn: Pfn) -> bool {
        self.ram().any(|r| r.contains(pfn))
    }

    /// Pages of RAM.
    pub fn ram_pages(&self) -> u64 {
        self.ram().map(|r| r.len()).sum()
    }

    /// Maximal runs of subsections holding at least one RAM page, ascending.
    pub fn present_runs(&self) -> impl Iterator<Item = PfnRange> + '_ {
        let mut ram = self.ram().map(|r| {
            PfnRange::new(
                r.start.subsection_start(),
                Pfn(r.end.0.next_multiple_of(PAGES_PER_SUBSECTION)),
            )
        });
        let mut cur = ram.next();
        core::iter::from_fn(move || {
            let mut run = cur?;
            loop {
                cur = ram.next();
                match cur {
                    Some(r) if r.start <= run.end => run.end = run.end.max(r.end),
                    _ => return Some(run),
                }
            }
        })
    }

    /// The pfn below which exactly `touchable` RAM pages lie (everything if `None` or if
    /// there is less RAM).
    pub fn touch_limit(&self, touchable: Option<u64>) -> Pfn {
        let Some(mut left) = touchable else {
            return Pfn(MAX_PFN);
        };
        for r in self.ram() {
            if left < r.len() {
                return r.start.add(left);
            }
            left -= r.len();
        }
        Pfn(MAX_PFN)
    }
}

/// What the boot model needs, before building it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootConfig<'a> {
    /// The start_info memmap.
    pub memmap: &'a [MemmapEntry],
    /// Pages already in use (kernel image, boot page tables, start_info, command line,
    /// ...). They become Reserved where they are RAM. Build with
    /// [`PfnRange::covering_bytes`].
    pub reserved: &'a [PfnRange],
    /// How many RAM pages (counted from the lowest address) may be touched:
    /// populate-on-demand's target. RAM above becomes Offline, and memmap storage must
    /// lie below. `None`: all RAM.
    pub touchable_ram_pages: Option<u64>,
}

/// Sizes of the model a [`BootConfig`] will produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootPlan {
    /// Pages of RAM in the memmap.
    pub ram_pages: u64,
    /// Present subsections (each needs 8 KiB of memmap).
    pub subsections: u64,
    /// Section-table chunks needed.
    pub chunks: u64,
    /// Bytes a storage provider must be able to hand out (memmap + chunks + alignment).
    pub storage_bytes: u64,
    /// RAM at or above this pfn becomes Offline.
    pub touch_limit: Pfn,
}

impl BootPlan {
    /// Pages of storage, rounded up.
    pub fn storage_pages(&self) -> u64 {
        self.storage_bytes.div_ceil(PAGE_SIZE)
    }
}

/// Compute the sizes of the boot model.
pub fn plan(cfg: &BootConfig<'_>) -> Result<BootPlan, BootError> {
    let layout = BootLayout::parse(cfg.memmap)?;
    Ok(plan_layout(&layout, cfg))
}

fn plan_layout(layout: &BootLayout, cfg: &BootConfig<'_>) -> BootPlan {
    let mut subsections = 0;
    let mut chunks = 0;
    let mut last_chunk = None;
    for run in layout.present_runs() {
        subsections += run.len() / PAGES_PER_SUBSECTION;
        let first = run.start.section() / SECTIONS_PER_CHUNK;
        let last = Pfn(run.end.0 - 1).section() / SECTIONS_PER_CHUNK;
        let first = if last_chunk == Some(first) {
            first + 1
        } else {
            first
        };
        if last >= first {
            chunks += (last - first + 1) as u64;
        }
        last_chunk = Some(last);
    }
    // Chunks first, then memmap blocks: one alignment pad between them at most.
    let storage_bytes = chunks * CHUNK_LAYOUT.size() as u64
        + MEMMAP_LAYOUT.align() as u64
        + subsections * MEMMAP_LAYOUT.size() as u64;
    BootPlan {
        ram_pages: layout.ram_pages(),
        subsections,
        chunks,
        storage_bytes,
        touch_limit: layout.touch_limit(cfg.touchable_ram_pages),
    }
}

/// A run of touchable RAM, clear of `cfg.reserved`, big enough for the plan's storage:
/// the highest such run (low memory stays for whatever needs it), or `None`.
/// `below` bounds the search, e.g. to what the kernel's page tables map.
pub fn find_storage_region(cfg: &BootConfig<'_>, plan: &BootPlan, below: Pfn) -> Option<PfnRange> {
    let layout = BootLayout::parse(cfg.memmap).ok()?;
    let need = plan.storage_pages();
    let mut best = None;
    for ram in layout.ram() {
        let ram = ram.intersect(&PfnRange::new(Pfn(0), plan.touch_limit.min(below)));
        // Walk the gaps between reserved ranges inside this RAM range.
        let mut start = ram.start;
        while start < ram.end {
            let blocker = cfg
                .reserved
                .iter()
                .filter(|r| !r.intersect(&PfnRange::new(start, ram.end)).is_empty())
                .min_by_key(|r| r.start);
            let gap_end = blocker.map_or(ram.end, |r| r.start.max(start));
            if gap_end.0 - start.0 >= need {
                best = Some(PfnRange::from_count(Pfn(gap_end.0 - need), need));
            }
            match blocker {
                Some(r) => start = r.end.max(start.add(1)),
                None => break,
            }
        }
    }
    best
}

/// Page classification for the builder, with a cursor for ascending queries.
struct Classify<'a> {
    layout: &'a BootLayout,
    reserved: &'a [PfnRange],
    claimed: Option<PfnRange>,
    touch_limit: Pfn,
    cursor: usize,
}

impl Classify<'_> {
    fn is_ram(&mut self, pfn: Pfn) -> bool {
        let entries = self.layout.entries();
        if self.cursor >= entries.len() || entries[self.cursor].addr > pfn.addr() {
            self.cursor = 0;
        }
        while self.cursor < entries.len() && entries[self.cursor].end() <= pfn.addr() {
            self.cursor += 1;
        }
        // Entries are sorted and disjoint: only this one can cover the page wholly.
        entries.get(self.cursor).is_some_and(|e| {
            e.kind == E820_RAM && e.addr <= pfn.addr() && pfn.addr() + PAGE_SIZE <= e.end()
        })
    }

    fn fits_one_ram_entry(&self, r: PfnRange) -> bool {
        self.layout
            .entries()
            .iter()
            .any(|e| e.kind == E820_RAM && e.addr <= r.start.addr() && r.end.addr() <= e.end())
    }
}

impl InitPages for &mut Classify<'_> {
    fn uniform(&mut self, first: Pfn) -> Option<Raw> {
        let r = PfnRange::from_count(first, PAGES_PER_SUBSECTION);
        let used = |u: &PfnRange| !u.intersect(&r).is_empty();
        if !self.fits_one_ram_entry(r) || self.claimed.is_some_and(|c| used(&c)) {
            return None;
        }
        if self.reserved.iter().any(used) {
            return None;
        }
        if r.end <= self.touch_limit {
            Some(Raw::Free(None))
        } else if r.start >= self.touch_limit {
            Some(Raw::State(PageState::Offline))
        } else {
            None
        }
    }

    fn page(&mut self, pfn: Pfn) -> Raw {
        self.state(pfn)
    }
}

impl Classify<'_> {
    fn state(&mut self, pfn: Pfn) -> Raw {
        if !self.is_ram(pfn) {
            Raw::Hole
        } else if self.claimed.is_some_and(|c| c.contains(pfn))
            || self.reserved.iter().any(|r| r.contains(pfn))
        {
            Raw::State(PageState::Reserved)
        } else if pfn >= self.touch_limit {
            Raw::State(PageState::Offline)
        } else {
            Raw::Free(None)
        }
    }
}

/// Build the boot model. On error nothing is leaked: the partly built model is dropped
/// and gives its storage back.
pub fn build<S: MemmapStorage>(cfg: &BootConfig<'_>, storage: S) -> Result<MemModel<S>, BootError> {
    let layout = BootLayout::parse(cfg.memmap)?;
    let touch_limit = layout.touch_limit(cfg.touchable_ram_pages);
    let claimed = storage.claimed().filter(|c| !c.is_empty());
    if let Some(c) = claimed {
        let mut cls = Classify {
            layout: &layout,
            reserved: &[],
            claimed: None,
            touch_limit,
            cursor: 0,
        };
        if c.end > touch_limit || c.iter().any(|p| !cls.is_ram(p)) {
            return Err(BootError::StorageNotTouchableRam(c));
        }
        if cfg.reserved.iter().any(|r| !r.intersect(&c).is_empty()) {
            return Err(BootError::StorageOverlapsReserved(c));
        }
    }
    let model = MemModel::new(storage);
    let mut cls = Classify {
        layout: &layout,
        reserved: cfg.reserved,
        claimed,
        touch_limit,
        cursor: 0,
    };
    model.with_inner(|m, g| -> Result<(), MmError> {
        for run in layout.present_runs() {
            m.add_with(g, run, SectionKind::BootRam, true, &mut cls)?;
        }
        Ok(())
    })?;
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::page::StateKind;
    use crate::mm::storage::{Budgeted, BumpStorage, HeapStorage};
    use core::ptr::NonNull;
    use std::vec::Vec;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn e(addr: u64, size: u64, kind: u32) -> MemmapEntry {
        MemmapEntry { addr, size, kind }
    }

    /// q35 with 6 GiB: the 2–4 GiB hole (MMCONFIG, firmware), RAM above 4 GiB, a
    /// sub-page RAM end at 0x9fc00 (EBDA).
    fn q35() -> Vec<MemmapEntry> {
        std::vec![
            e(0, 0x9fc00, E820_RAM),
            e(0x9fc00, 0x400, E820_RESERVED),
            e(0xf0000, 0x10000, E820_RESERVED),
            e(MIB, 2 * GIB - MIB, E820_RAM),
            e(0xb000_0000, 0x1000_0000, E820_RESERVED),
            e(0xfed1_c000, 0x4000, E820_RESERVED),
            e(0xfffc_0000, 0x40000, E820_RESERVED),
            e(4 * GIB, 4 * GIB, E820_RAM),
        ]
    }

    fn heap_model(cfg: &BootConfig<'_>) -> MemModel<HeapStorage> {
        build(cfg, HeapStorage).unwrap()
    }

    #[test]
    fn q35_holes_and_partial_subsection_are_exact() {
        let map = q35();
        let cfg = BootConfig {
            memmap: &map,
            reserved: &[],
            touchable_ram_pages: None,
        };
        let m = heap_model(&cfg);
        let c = m.recount().unwrap();
        let low_ram = 0x9f; // 0x9fc00 rounds down to 159 whole pages
        let ram = low_ram + (2 * GIB - MIB) / 4096 + 4 * GIB / 4096;
        let holes = 256 - low_ram; // the rest of the first MiB, in subsection 0
        assert_eq!(c.pages_in(StateKind::Free), ram);
        assert_eq!(c.pages_in(StateKind::Reserved), holes);
        assert_eq!(c.reserved_nonram[SectionKind::BootRam.index()], holes);
        assert_eq!(c.ram_pages(), ram);
        assert_eq!(c.subsections_present, (2 * GIB + 4 * GIB) / (2 * MIB));
        assert_eq!(c.subsections_active, c.subsections_present);
        assert_eq!((c.sections_present, c.sections_online), (48, 48));
        assert_eq!(c.memmap_bytes, c.subsections_present * 8192);
        // The hole between 2 and 4 GiB has no memmap at all.
        let hole = Pfn::from_addr(3 * GIB);
        assert!(!m.pfn_valid(hole) && m.read().pfn_to_page(hole).is_none());
        let g = m.read();
        let ebda = g.pfn_to_online_page(Pfn(0x9f)).unwrap();
        assert_eq!((ebda.state(), ebda.is_ram()), (PageState::Reserved, false));
        assert_eq!(
            g.pfn_to_online_page(Pfn(0x9e)).unwrap().state(),
            PageState::Free
        );
        drop(g);
        // Non-RAM pages never reach the allocator, not even when "released".
        assert_eq!(
            m.release_reserved(PfnRange::from_count(Pfn(0x9f), 1)),
            Err(MmError::NotRam(Pfn(0x9f)))
        );
    }

    #[test]
    fn pc_map_unsorted_with_zero_length_entries_equals_sorted() {
        let sorted = std::vec![
            e(0, 0xa0000, E820_RAM),
            e(0xf0000, 0x10000, E820_RESERVED),
            e(MIB, 3 * GIB - MIB, E820_RAM),
            e(0xfeff_c000, 0x4000, E820_RESERVED),
            e(0xfffc_0000, 0x40000, E820_RESERVED),
            e(4 * GIB, GIB, E820_RAM),
        ];
        let mut shuffled = sorted.clone();
        shuffled.reverse();
        shuffled.insert(2, e(0x5000_0000, 0, E820_RESERVED));
        shuffled.push(e(0x1234_5000, 0, E820_RAM));
        let a = BootLayout::parse(&sorted).unwrap();
        let b = BootLayout::parse(&shuffled).unwrap();
        assert_eq!(a.entries(), b.entries());
        assert_eq!(a.entries(), &sorted[..]);
        let cfg = BootConfig {
            memmap: &shuffled,
            reserved: &[],
            touchable_ram_pages: None,
        };
        let c = heap_model(&cfg).recount().unwrap();
        assert_eq!(
            c.pages_in(StateKind::Free),
            0xa0 + (3 * GIB - MIB) / 4096 + GIB / 4096
        );
        assert_eq!(c.reserved_nonram[0], 0x100 - 0xa0);
    }

    #[test]
    fn bad_memmaps_give_clear_errors() {
        let overlap = [e(0, 2 * MIB, E820_RAM), e(MIB, MIB, E820_RESERVED)];
        assert_eq!(
            BootLayout::parse(&overlap).err(),
            Some(BootError::Overlap(overlap[0], overlap[1]))
        );
        // Same-type overlaps and touching entries merge.
        let merged =
            BootLayout::parse(&[e(MIB, 2 * MIB, 1), e(0, 2 * MIB, 1), e(3 * MIB, MIB, 1)]).unwrap();
        assert_eq!(merged.entries(), &[e(0, 4 * MIB, E820_RAM)]);
        let wrap = e(u64::MAX - 10, 100, E820_RAM);
        assert_eq!(
            BootLayout::parse(&[wrap]).err(),
            Some(BootError::Overflow(wrap))
        );
        let huge = e(63 << 40, 2 << 40, E820_RAM);
        assert_eq!(
            BootLayout::parse(&[huge]).err(),
            Some(BootError::RamBeyondMaxPhys(huge))
        );
        // Non-RAM beyond 64 TiB (a big BAR) is clipped, not an error.
        let ok = BootLayout::parse(&[e(0, MIB, 1), e(63 << 40, 2 << 40, 2)]).unwrap();
        assert_eq!(ok.entries()[1].addr + ok.entries()[1].size, 64 << 40);
        assert_eq!(
            BootLayout::parse(&[e(0, 0xfff, E820_RAM), e(MIB, 0, E820_RAM)]).err(),
            Some(BootError::NoRam)
        );
        let many = [e(0, 4096, 1); MAX_MEMMAP_ENTRIES + 1];
        assert_eq!(
            BootLayout::parse(&many).err(),
            Some(BootError::TooManyEntries(MAX_MEMMAP_ENTRIES + 1))
        );
    }

    /// A page-aligned host buffer standing in for guest RAM `pages`.
    struct FakeRam {
        buf: Vec<[u8; 4096]>,
    }

    impl FakeRam {
        fn new(pages: u64) -> FakeRam {
            FakeRam {
                buf: std::vec![[0u8; 4096]; pages as usize],
            }
        }
        fn storage(&mut self, region: PfnRange) -> BumpStorage {
            assert!(self.buf.len() as u64 >= region.len());
            let base = NonNull::new(self.buf.as_mut_ptr().cast::<u8>()).unwrap();
            // SAFETY: the buffer holds at least `region.len()` pages, is used by nothing
            // else, and outlives the model in every test.
            unsafe { BumpStorage::new(base, region) }
        }
    }

    #[test]
    fn xen_pvh_domu_256mib_census_is_exact() {
        // A Xen PVH domU with memory=256: one RAM range from 0, ACPI tables near 4 GiB.
        let map = [e(0, 256 * MIB, E820_RAM), e(0xfc00_0000, 0xb000, E820_ACPI)];
        let image = PfnRange::covering_bytes(MIB, 2 * MIB + 123);
        let start_info = PfnRange::covering_bytes(0x1000, 0x100);
        let reserved = [image, start_info];
        let cfg = BootConfig {
            memmap: &map,
            reserved: &reserved,
            touchable_ram_pages: None,
        };
        let p = plan(&cfg).unwrap();
        assert_eq!((p.subsections, p.chunks, p.ram_pages), (128, 1, 65536));
        let region = find_storage_region(&cfg, &p, Pfn(u64::MAX)).unwrap();
        assert_eq!(region.end, Pfn(65536), "highest touchable RAM");
        // Bounded by what the page tables map, it moves down.
        let low = find_storage_region(&cfg, &p, Pfn(2000)).unwrap();
        assert_eq!(low.end, Pfn(2000));
        // Too little room below the bound: none.
        assert_eq!(find_storage_region(&cfg, &p, Pfn(200)), None);
        assert_eq!(region.len(), p.storage_pages());
        let mut ram = FakeRam::new(region.len());
        let m = build(&cfg, ram.storage(region)).unwrap();
        let c = m.recount().unwrap();
        let reserved_pages = image.len() + 1 + region.len();
        assert_eq!(image.len(), 513);
        assert_eq!(c.pages_in(StateKind::Reserved), reserved_pages);
        assert_eq!(c.pages_in(StateKind::Free), 65536 - reserved_pages);
        assert_eq!(c.pages_in(StateKind::Offline), 0);
        assert_eq!(c.reserved_nonram, [0, 0, 0]);
        assert_eq!(c.ram_pages(), 65536);
        assert_eq!((c.sections_present, c.sections_online), (2, 2));
        assert_eq!((c.subsections_present, c.memmap_bytes), (128, 128 * 8192));
        let layout: std::vec::Vec<std::string::String> =
            m.sections().map(|s| s.to_string()).collect();
        assert_eq!(
            layout,
            [
                "section 0x0 [0x0, 0x8000000) boot-ram online present 0xffffffffffffffff \
                 active 0xffffffffffffffff",
                "section 0x1 [0x8000000, 0x10000000) boot-ram online present \
                 0xffffffffffffffff active 0xffffffffffffffff",
            ]
        );
        assert!(
            !m.pfn_valid(Pfn::from_addr(0xfc00_0000)),
            "ACPI range has no memmap"
        );
        let used = m.with_storage(|s| s.used_bytes());
        assert!(used as u64 <= p.storage_bytes && p.storage_bytes - used as u64 <= 16);
        // The storage region is Reserved, the page below it Free.
        let g = m.read();
        assert_eq!(
            g.pfn_to_online_page(region.start).unwrap().state(),
            PageState::Reserved
        );
        assert_eq!(
            g.pfn_to_online_page(Pfn(region.start.0 - 1))
                .unwrap()
                .state(),
            PageState::Free
        );
        drop(g);
        let text = std::format!("{c}");
        assert!(text.contains("boot-ram: reserved 788 free 64748"), "{text}");
    }

    #[test]
    fn pod_ram_beyond_the_touchable_limit_is_offline() {
        // memory=256, maxmem=512: Xen's memmap shows 512 MiB, only 256 may be touched.
        let map = [e(0, 512 * MIB, E820_RAM)];
        let reserved = [PfnRange::covering_bytes(MIB, MIB)];
        let cfg = BootConfig {
            memmap: &map,
            reserved: &reserved,
            touchable_ram_pages: Some(65536),
        };
        let p = plan(&cfg).unwrap();
        assert_eq!(p.touch_limit, Pfn(65536));
        let region = find_storage_region(&cfg, &p, Pfn(u64::MAX)).unwrap();
        assert!(region.end <= p.touch_limit);
        // Storage over a reserved range is refused.
        let over = PfnRange::from_count(Pfn(256), region.len());
        let mut ram0 = FakeRam::new(region.len());
        assert!(matches!(
            build(&cfg, ram0.storage(over)),
            Err(BootError::StorageOverlapsReserved(_))
        ));
        let mut ram = FakeRam::new(region.len());
        let m = build(&cfg, ram.storage(region)).unwrap();
        let c = m.recount().unwrap();
        assert_eq!(c.pages_in(StateKind::Offline), 65536);
        assert_eq!(
            c.pages_in(StateKind::Free) + c.pages_in(StateKind::Reserved),
            65536
        );
        // The model's own RAM is exactly the touchable part.
        assert_eq!(c.ram_pages(), 65536);
        assert_eq!(
            m.read().pfn_to_online_page(Pfn(65536)).unwrap().state(),
            PageState::Offline
        );
        // Storage claimed above the limit is refused before anything is built.
        let bad = PfnRange::from_count(Pfn(70000), region.len());
        let mut ram2 = FakeRam::new(region.len());
        assert_eq!(
            build(&cfg, ram2.storage(bad))
                .err()
                .map(|e| std::format!("{e:?}")),
            Some(std::format!("{:?}", BootError::StorageNotTouchableRam(bad)))
        );
        // So is storage in a non-RAM range.
        let map = [
            e(0, 128 * MIB, E820_RAM),
            e(128 * MIB, 4 * MIB, E820_RESERVED),
        ];
        let cfg = BootConfig {
            memmap: &map,
            reserved: &[],
            touchable_ram_pages: None,
        };
        let bad = PfnRange::from_count(Pfn::from_addr(128 * MIB), 4);
        let mut ram3 = FakeRam::new(4);
        assert!(matches!(
            build(&cfg, ram3.storage(bad)),
            Err(BootError::StorageNotTouchableRam(_))
        ));
    }

    #[test]
    fn sparse_64_tib_space_costs_only_what_it_uses() {
        let top = (64 << 40) - 128 * MIB;
        let map = [e(0, 128 * MIB, E820_RAM), e(top, 128 * MIB, E820_RAM)];
        let cfg = BootConfig {
            memmap: &map,
            reserved: &[],
            touchable_ram_pages: None,
        };
        let p = plan(&cfg).unwrap();
        assert_eq!((p.subsections, p.chunks), (128, 2));
        let m = heap_model(&cfg);
        let c = m.recount().unwrap();
        assert_eq!(c.sections_present, 2);
        assert_eq!(
            c.section_table_bytes,
            2 * CHUNK_LAYOUT.size() as u64 + 4096 * 8
        );
        let last = Pfn((64 << 28) - 1);
        assert!(last.in_range());
        let g = m.read();
        assert_eq!(g.pfn_to_online_page(last).unwrap().state(), PageState::Free);
        assert!(g.pfn_to_online_page(Pfn::from_addr(32 << 40)).is_none());
        // The walker crosses 64 TiB of mostly nothing quickly.
        let n = g.active_pages(PfnRange::new(Pfn(0), Pfn(u64::MAX))).count();
        assert_eq!(n as u64, 2 * 32768);
    }

    #[test]
    fn storage_failure_rolls_back_and_leaks_nothing() {
        let map = [e(0, 256 * MIB, E820_RAM)];
        let cfg = BootConfig {
            memmap: &map,
            reserved: &[],
            touchable_ram_pages: None,
        };
        let p = plan(&cfg).unwrap();
        for budget in [0, CHUNK_LAYOUT.size(), p.storage_bytes as usize - 8192] {
            let r = build(&cfg, Budgeted::new(HeapStorage, budget));
            assert!(
                matches!(r, Err(BootError::Model(MmError::StorageExhausted { .. }))),
                "budget {budget}"
            );
        }
        let m = build(&cfg, Budgeted::new(HeapStorage, p.storage_bytes as usize)).unwrap();
        assert_eq!(m.census().subsections_present, 128);
    }
}
