//! Memory hotplug and hot-remove in the model: where hot-added sections go, adding and
//! removing them, and a walker that is safe against both.
//!
//! Life of a hot-added section (the seed thread's points 4 and 5):
//!
//! ```text
//! hot_add:    memmap allocated and initialised, every page Offline (never Reserved)
//!             -> subsections active (Release, after their descriptors are written)
//!             -> section online (no policy knob: always, at once)
//! kernel:     maps the new range, then the balloon adopts it as ballooned extents and
//!             populates it (Offline -> Free, order 9 per subsection)
//! ...         ballooning down takes hot-added memory first, highest section first
//! hot_remove: every page Offline again -> section offline -> active bits cleared
//!             -> grace period (walkers that may hold a descriptor finish)
//!             -> memmap freed -> section absent
//! ```
//!
//! **Where the memmap of a hot-added section lives**: in the kernel's existing RAM, not
//! inside the new section (Linux's `memmap_on_memory`). Inside the section, the first
//! 512 KiB would have to be populated and touched before the section's descriptors
//! exist, their pages would be neither Offline nor ballooned (the first subsection could
//! never be given back whole at order 9), and removal would free the memmap from under
//! itself. Outside costs 8 KiB of existing RAM per 2 MiB added (4 MiB per GiB, 1/256;
//! Linux: 16 MiB per GiB). The storage provider hands out the boot region's headroom
//! first, then 2 MiB frames the caller took from the model's allocator beforehand
//! (`MemModel::refill_storage`, lowest address first: boot RAM, then the lowest
//! hot-added sections). So the memory that can hold memmap grows with what is added:
//! **growth by steps** — when there is not enough for the memmap of everything asked
//! for, [`hot_add`] adds the sections that fit, the balloon populates them, and the next
//! request finds room in them for the rest. All-or-nothing holds per section, not per
//! request. A removed section's memmap goes back to the provider, and an emptied frame
//! back to the allocator (`MemModel::trim_storage`).
//!
//! **Limits**: the window is [`DEFAULT_HOTPLUG_RAM_BYTES`] (64 GiB), so a guest reaches
//! boot RAM + 64 GiB at most, from any boot size at or above the balloon's floor: the
//! first section needs 512 KiB of memmap (+ a 67 KiB section-table chunk), which the
//! boot region's headroom holds; every later step is paid for by the step before it.
//! Memmap for the whole window is 256 MiB (our RAM, Allocated; 4 MiB per GiB plus at most
//! one partly used 2 MiB frame).

use alloc::vec::Vec;
use core::fmt;

use super::boot::MemmapEntry;
use super::geometry::{
    section_start_pfn, Pfn, PfnRange, MAX_PFN, PAGES_PER_SECTION, PAGE_SIZE, SECTION_SHIFT,
    SUBSECTIONS_PER_SECTION,
};
use super::model::{MemModel, MmError};
use super::page::{PageState, StateKind, STATE_KINDS};
use super::section::SectionKind;
use super::section::SECTION_TABLE_CHUNK_BYTES;
use super::storage::MemmapStorage;

const GIB: u64 = 1 << 30;
/// Bytes per section (128 MiB).
pub const SECTION_BYTES: u64 = PAGES_PER_SECTION * PAGE_SIZE;
/// Hot-added RAM never starts below 4 GiB.
pub const HOTPLUG_MIN_BASE: u64 = 4 * GIB;
/// Default size of the hot-add window: 64 GiB (512 sections). A larger `xl mem-max`
/// leaves the rest unreachable (reported as [`HotplugError::WindowFull`]).
pub const DEFAULT_HOTPLUG_RAM_BYTES: u64 = 64 * GIB;
/// Default size of the device window for foreign (grant) mappings: 4 GiB (32 sections).
/// Memmap only exists for subsections in use, so an unused window costs nothing.
pub const DEFAULT_DEVICE_BYTES: u64 = 4 * GIB;

/// The guest-physical address space reserved for the device range where foreign
/// (grant-mapped) pages and our grant-table frames get pfns and, above it, for hot-added
/// RAM.
///
/// Chosen from the start_info memmap alone, at boot:
///
/// ```text
/// base   = round_up(max(4 GiB, end of the highest memmap entry of ANY type), 128 MiB)
/// device = [base, base + device_bytes)           kind device
/// ram    = [device.end, device.end + ram_bytes)  kind hotplug RAM
/// ```
///
/// Why the device window comes first: the grant-table frames live there from boot, and
/// Xen's save stream carries a record for every pfn up to the highest one ever mapped
/// (measured: a 256 MiB guest with its table at 68 GiB saved a 411 MB image in 54 s,
/// 8 bytes for each of the 17.8 M pfns below it). Low in the address space, the table
/// costs nothing there; hot-added RAM raises that mark only as far as it is used.
///
/// Why nothing can collide with it:
/// - **MMIO**: a PVH domU has no emulated devices, so no BARs or PCI hole; the only
///   fixed ranges (LAPIC at 0xfee00000, the special pages, ACPI tables) sit below 4 GiB,
///   and everything Xen tells the guest about is in the memmap, which lies wholly below
///   `base` (any type counts, not only RAM).
/// - **Boot RAM**: RAM above 4 GiB is a memmap entry too, so it ends below `base`.
/// - **Each other**: the two windows are disjoint, section aligned, and of different
///   section kinds; a section has one kind, so a device section can never be taken for
///   RAM or the other way round.
/// - **The model**: both end below the 64 TiB it covers ([`WindowError`] otherwise).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HotplugWindow {
    /// Where hot-added RAM goes (section aligned).
    pub ram: PfnRange,
    /// Where device (foreign-page) sections go (section aligned), right below `ram`.
    pub device: PfnRange,
}

/// Why no window could be placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowError {
    /// The windows would end beyond the model's 64 TiB.
    BeyondMaxPhys {
        /// Where the RAM window would start.
        base: u64,
    },
}

impl fmt::Display for WindowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BeyondMaxPhys { base } => {
                write!(f, "hotplug window at {base:#x} would end beyond 64 TiB")
            }
        }
    }
}

impl HotplugWindow {
    /// The window with the default sizes ([`DEFAULT_HOTPLUG_RAM_BYTES`],
    /// [`DEFAULT_DEVICE_BYTES`]).
    pub fn from_memmap(memmap: &[MemmapEntry]) -> Result<HotplugWindow, WindowError> {
        Self::with_sizes(memmap, DEFAULT_HOTPLUG_RAM_BYTES, DEFAULT_DEVICE_BYTES)
    }

    /// The window with `ram_bytes` of hot-add space and `device_bytes` of device space,
    /// each rounded down to whole sections.
    pub fn with_sizes(
        memmap: &[MemmapEntry],
        ram_bytes: u64,
        device_bytes: u64,
    ) -> Result<HotplugWindow, WindowError> {
        let top = memmap
            .iter()
            .filter(|e| e.size != 0)
            .map(|e| e.addr.saturating_add(e.size))
            .fold(HOTPLUG_MIN_BASE, u64::max);
        let base = top
            .checked_next_multiple_of(SECTION_BYTES)
            .ok_or(WindowError::BeyondMaxPhys { base: top })?;
        let sections = |bytes: u64| (bytes / SECTION_BYTES) << SECTION_SHIFT;
        let start = Pfn::from_addr(base);
        let device = PfnRange::from_count(start, sections(device_bytes));
        let ram = PfnRange::from_count(device.end, sections(ram_bytes));
        if device.end.0 > MAX_PFN || ram.end.0 > MAX_PFN {
            return Err(WindowError::BeyondMaxPhys { base });
        }
        Ok(HotplugWindow { ram, device })
    }

    /// Section numbers of the RAM window.
    pub fn ram_sections(&self) -> core::ops::Range<usize> {
        self.ram.start.section()..self.ram.end.section()
    }

    /// Section numbers of the device window.
    pub fn device_sections(&self) -> core::ops::Range<usize> {
        self.device.start.section()..self.device.end.section()
    }
}

impl fmt::Display for HotplugWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "hotplug RAM [{:#x}, {:#x}) ({} MiB), device [{:#x}, {:#x}) ({} MiB)",
            self.ram.start.addr(),
            self.ram.end.addr(),
            (self.ram.len() * PAGE_SIZE) >> 20,
            self.device.start.addr(),
            self.device.end.addr(),
            (self.device.len() * PAGE_SIZE) >> 20,
        )
    }
}

/// Why a hot-add (or the steps around it) failed. Nothing is left half-added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HotplugError {
    /// Every section of the window is already present.
    WindowFull {
        /// Pages that were asked for.
        needed_pages: u64,
        /// Size of the window.
        window_pages: u64,
    },
    /// The storage provider had no room for the section's memmap (or section table).
    Storage {
        /// The section being added.
        section: usize,
        /// Bytes asked for.
        bytes: usize,
    },
    /// The model refused (a bug: the window overlaps something).
    Model {
        /// The section being added or removed.
        section: usize,
        /// What it said.
        error: MmError,
    },
    /// The kernel could not map the new range (page tables).
    Map {
        /// The range.
        range: PfnRange,
    },
    /// The balloon refused to adopt the new range (a bug).
    Adopt {
        /// The range.
        range: PfnRange,
        /// What the model said.
        error: MmError,
    },
}

impl fmt::Display for HotplugError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WindowFull {
                needed_pages,
                window_pages,
            } => write!(
                f,
                "hotplug window full ({} MiB): {} MiB more needed",
                window_pages >> 8,
                needed_pages >> 8
            ),
            Self::Storage { section, bytes } => write!(
                f,
                "no storage for the memmap of section {section:#x} ({bytes} bytes)"
            ),
            Self::Model { section, error } => write!(f, "section {section:#x}: {error}"),
            Self::Map { range } => write!(f, "mapping {range:?} failed"),
            Self::Adopt { range, error } => write!(f, "balloon refused {range:?}: {error}"),
        }
    }
}

impl HotplugError {
    /// Short name for xenstore (`hotplug/last-error-kind`).
    pub const fn name(&self) -> &'static str {
        match self {
            Self::WindowFull { .. } => "window-full",
            Self::Storage { .. } => "storage",
            Self::Model { .. } => "model",
            Self::Map { .. } => "map",
            Self::Adopt { .. } => "adopt",
        }
    }
}

/// What [`hot_add`] added: whole sections, every page Offline, online.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HotAdded {
    /// Section numbers, ascending.
    pub sections: Vec<usize>,
    /// The same as pfn ranges, contiguous sections merged.
    pub ranges: Vec<PfnRange>,
    /// Pages added (with memmap, Offline).
    pub pages: u64,
    /// Of the pages asked for, those not added now (the window had no room, or the
    /// memmap storage ran short: see `stopped`).
    pub short_pages: u64,
    /// Why fewer sections were added than asked for, if a section failed (sections are
    /// added whole or not at all; those before it stay).
    pub stopped: Option<HotplugError>,
}

fn section_range(nr: usize) -> PfnRange {
    PfnRange::from_count(section_start_pfn(nr), PAGES_PER_SECTION)
}

fn is_absent<S: MemmapStorage>(mm: &MemModel<S>, nr: usize) -> bool {
    mm.section_info(nr).is_none_or(|s| s.present == 0)
}

/// Add as few hot-plug RAM sections as cover `pages_needed`, lowest free section of the
/// window first. Each section's memmap is allocated and initialised with every page
/// Offline; its subsections become active only then (the model publishes the active
/// bits with Release after the descriptors), and the section is onlined. The pages have
/// no frame yet: the caller maps the returned ranges and hands them to the balloon
/// (`Balloon::adopt_hotplugged`), which populates them.
///
/// If the window has fewer free sections than needed, those it has are added and the
/// rest is reported in [`HotAdded::short_pages`]; with none free, `WindowFull`.
///
/// All or nothing **per section**: a section that cannot be added (memmap storage
/// exhausted, ...) leaves no present, active or online trace (section-table chunks may
/// stay allocated: they are reused). The sections added before it stay and are
/// returned, with the failure in [`HotAdded::stopped`] (growth by steps: once they are
/// populated, their memory can hold the memmap of the rest). If the first section fails,
/// its error is returned.
pub fn hot_add<S: MemmapStorage>(
    mm: &MemModel<S>,
    window: &HotplugWindow,
    pages_needed: u64,
) -> Result<HotAdded, HotplugError> {
    let mut added = HotAdded::default();
    if pages_needed == 0 {
        return Ok(added);
    }
    let want = pages_needed.div_ceil(PAGES_PER_SECTION) as usize;
    let free: Vec<usize> = window
        .ram_sections()
        .filter(|&nr| is_absent(mm, nr))
        .take(want)
        .collect();
    if free.is_empty() {
        return Err(HotplugError::WindowFull {
            needed_pages: pages_needed,
            window_pages: window.ram.len(),
        });
    }
    for &nr in &free {
        let r = mm.add_section(nr, SectionKind::HotplugRam).and_then(|()| {
            mm.online_section(nr).inspect_err(|_| {
                // Never onlined, all Offline: removable as it is.
                let _ = mm.remove_section(nr);
            })
        });
        if let Err(error) = r {
            let e = match error {
                MmError::StorageExhausted { bytes } => HotplugError::Storage { section: nr, bytes },
                error => HotplugError::Model { section: nr, error },
            };
            if added.sections.is_empty() {
                log::warn!("hotplug: adding section {nr:#x} failed ({error}); nothing added");
                return Err(e);
            }
            log::info!(
                "hotplug: section {nr:#x} not added now ({e}); going on with the {} added",
                added.sections.len()
            );
            added.stopped = Some(e);
            break;
        }
        added.sections.push(nr);
    }
    for &nr in &added.sections {
        let r = section_range(nr);
        match added.ranges.last_mut() {
            Some(last) if last.end == r.start => last.end = r.end,
            _ => added.ranges.push(r),
        }
    }
    added.pages = added.sections.len() as u64 * PAGES_PER_SECTION;
    added.short_pages = pages_needed.saturating_sub(added.pages);
    log::info!(
        "hotplug: added {} section(s) {:?} ({} MiB), all Offline, online",
        added.sections.len(),
        added.ranges,
        added.pages >> 8
    );
    Ok(added)
}

/// Bytes of memmap storage a hot-add of `sections` sections needs at most: their memmap
/// and one section-table chunk.
pub fn storage_for_sections(sections: usize) -> usize {
    sections * SECTION_MEMMAP_BYTES + SECTION_TABLE_CHUNK_BYTES
}

/// Memmap bytes of one whole section (64 subsections of 8 KiB: 512 KiB).
pub const SECTION_MEMMAP_BYTES: usize =
    SUBSECTIONS_PER_SECTION * super::memmap::MEMMAP_BYTES_PER_SUBSECTION;

/// Remove hot-plug RAM section `nr` whose pages are all Offline (no frame behind any of
/// them): offline it, then remove it (clear active -> grace period -> free memmap ->
/// absent). Returns the memmap bytes freed. On error nothing changes (a section
/// offlined for the attempt is onlined again).
pub fn hot_remove_section<S: MemmapStorage>(mm: &MemModel<S>, nr: usize) -> Result<u64, MmError> {
    let first = section_start_pfn(nr);
    let info = mm
        .section_info(nr)
        .filter(|s| s.present != 0)
        .ok_or(MmError::NotActive(first))?;
    let kind = info.kind.ok_or(MmError::NotActive(first))?;
    if kind != SectionKind::HotplugRam {
        return Err(MmError::WrongSection {
            pfn: first,
            kind,
            online: info.online,
        });
    }
    let before = mm.census().memmap_bytes;
    mm.offline_section(nr)?;
    if let Err(e) = mm.remove_section(nr) {
        if info.online {
            mm.online_section(nr)
                .expect("re-onlining a present RAM section");
        }
        return Err(e);
    }
    Ok(before - mm.census().memmap_bytes)
}

/// What [`saveable_walk`] saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SaveableStats {
    /// Pages whose frame was read (online Free/Allocated RAM).
    pub pages: u64,
    /// Order-dependent combination of the frames' checksums and pfns.
    pub checksum: u64,
    /// Pages skipped by state (index with [`StateKind::index`]); Free/Allocated pages
    /// are counted here only when their section is not online RAM (never, if the model
    /// is right).
    pub skipped: [u64; STATE_KINDS.len()],
    /// Pages of active subsections seen in all (saved + skipped + corrupt).
    pub seen: u64,
    /// Descriptors that held no valid state (poisoned or never initialised memmap):
    /// never, unless the model's ordering is broken.
    pub corrupt: u64,
}

impl SaveableStats {
    /// Pages skipped in `state`.
    pub fn skipped_in(&self, state: StateKind) -> u64 {
        self.skipped[state.index()]
    }
}

/// Walk `range` the way a hibernation image writer would: under one read guard, through
/// the active subsections only, read (`read_frame`, returning a checksum of the frame)
/// every online Free or Allocated RAM page and skip everything else by its state —
/// Reserved, Offline (no frame: a touch is fatal), Unpopulated, Foreign — without ever
/// calling `read_frame` for it.
///
/// Safe against hot-add and hot-remove running concurrently: a subsection being added is
/// not seen until its descriptors are initialised (active bit, Release/Acquire), and one
/// being removed has its memmap freed only after this guard is dropped. Page *states*
/// are not frozen: like Linux's hibernation (which freezes tasks first), the caller must
/// not balloon concurrently, or a Free page could lose its frame between the state check
/// and the read. The kernel runs the walk between balloon steps on its one vCPU.
pub fn saveable_walk<S: MemmapStorage>(
    mm: &MemModel<S>,
    range: PfnRange,
    mut read_frame: impl FnMut(Pfn) -> u64,
) -> SaveableStats {
    let mut st = SaveableStats::default();
    let guard = mm.read();
    for page in guard.active_pages(range) {
        st.seen += 1;
        let Some((state, is_ram)) = page.checked() else {
            st.corrupt += 1;
            continue;
        };
        let saveable = matches!(state, PageState::Free | PageState::Allocated)
            && is_ram
            && page.section_kind().is_ram()
            && page.section_online();
        if !saveable {
            st.skipped[state.kind().index()] += 1;
            continue;
        }
        let sum = read_frame(page.pfn());
        // FNV-style mixing: the checksum depends on which pages were read, in order.
        st.checksum = (st.checksum ^ sum ^ page.pfn().0).wrapping_mul(0x0100_0000_01b3);
        st.pages += 1;
    }
    st
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::boot::{E820_ACPI, E820_RAM, E820_RESERVED};

    const MIB: u64 = 1 << 20;

    fn e(addr: u64, size: u64, kind: u32) -> MemmapEntry {
        MemmapEntry { addr, size, kind }
    }

    /// What libxl gives a 256 MiB PVH domU: RAM from 0, ACPI tables and the special
    /// pages just below 4 GiB.
    fn pvh_256() -> [MemmapEntry; 3] {
        [
            e(0, 256 * MIB, E820_RAM),
            e(0xfc00_0000, 0xb000, E820_ACPI),
            e(0xfeff_8000, 0x8000, E820_RESERVED),
        ]
    }

    #[test]
    fn small_domu_window_starts_at_4g() {
        let w = HotplugWindow::from_memmap(&pvh_256()).unwrap();
        assert_eq!(w.device.start.addr(), 4 << 30);
        assert_eq!(w.ram.len() * PAGE_SIZE, DEFAULT_HOTPLUG_RAM_BYTES);
        assert_eq!(w.ram.start, w.device.end);
        assert_eq!(w.device.len() * PAGE_SIZE, DEFAULT_DEVICE_BYTES);
        assert_eq!(w.device_sections(), 32..32 + 32);
        assert_eq!(w.ram_sections(), 64..64 + 512);
        for entry in pvh_256() {
            assert!(entry.addr + entry.size <= w.device.start.addr());
        }
    }

    #[test]
    fn ram_above_4g_pushes_the_window_up_to_a_section_boundary() {
        // 8 GiB: 3 GiB below the hole, 5 GiB from 4 GiB to 9 GiB, plus 1 MiB odd tail.
        let map = [
            e(0, 3 << 30, E820_RAM),
            e(0xfc00_0000, 0xb000, E820_ACPI),
            e(4 << 30, (5 << 30) + MIB, E820_RAM),
        ];
        let w = HotplugWindow::from_memmap(&map).unwrap();
        assert_eq!(w.device.start.addr(), (9 << 30) + 128 * MIB);
        assert_eq!(w.ram.start.addr() % SECTION_BYTES, 0);
        // Exactly at a boundary: no gap.
        let map = [e(0, 3 << 30, E820_RAM), e(4 << 30, 5 << 30, E820_RAM)];
        let w = HotplugWindow::from_memmap(&map).unwrap();
        assert_eq!(w.device.start.addr(), 9 << 30);
    }

    #[test]
    fn a_high_non_ram_entry_counts_too() {
        let mut map = pvh_256().to_vec();
        map.push(e(0x40_0000_0000 + 5, 4096, E820_RESERVED));
        let w = HotplugWindow::with_sizes(&map, 2 << 30, 256 * MIB).unwrap();
        assert_eq!(w.device.start.addr(), 0x40_0000_0000 + SECTION_BYTES);
        assert_eq!(w.ram.start, w.device.end);
        assert_eq!(w.ram.len() * PAGE_SIZE, 2 << 30);
        assert_eq!(w.device.len() * PAGE_SIZE, 256 * MIB);
        // Odd sizes round down to whole sections; an empty entry is ignored.
        map.push(e(0x7f_0000_0000, 0, E820_RESERVED));
        let w = HotplugWindow::with_sizes(&map, 200 * MIB, 100 * MIB).unwrap();
        assert_eq!((w.ram.len(), w.device.len()), (PAGES_PER_SECTION, 0));
        assert_eq!(w.ram.start.addr(), 0x40_0000_0000 + SECTION_BYTES);
        assert_eq!(w.device.start, w.ram.start);
        // Near the top of the 64 TiB the model covers: refused.
        let top = [e((64 << 40) - GIB, 4096, E820_RESERVED)];
        assert!(HotplugWindow::from_memmap(&top).is_err());
        let top = [e(u64::MAX - 10, 4, E820_RESERVED)];
        assert!(HotplugWindow::from_memmap(&top).is_err());
    }
}
