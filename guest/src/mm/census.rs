//! The census: how many pages are in which state, per section kind, and what the model
//! itself costs. The kernel logs it (`Display`) and publishes [`Census::fields`] under its
//! xenstore `data/mm/`.

use core::fmt;

use super::buddy::{FreeLists, MAX_ORDER};
use super::geometry::{PAGES_PER_SUBSECTION, PAGE_SIZE};
use super::memmap::MEMMAP_BYTES_PER_SUBSECTION;
use super::page::{Phase, Raw, StateKind, STATE_KINDS};
use super::section::{SectionKind, ROOT_ENTRIES, SECTION_KINDS};

/// Counters kept under the mutation lock; the census is a copy of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Stats {
    pub(crate) pages: [[u64; STATE_KINDS.len()]; SECTION_KINDS.len()],
    pub(crate) holes: [u64; SECTION_KINDS.len()],
    pub(crate) present_subsections: u64,
    pub(crate) sections_present: u64,
    pub(crate) sections_online: u64,
    pub(crate) memmap_bytes: u64,
    pub(crate) chunk_bytes: u64,
}

impl Stats {
    pub(crate) fn move_pages(&mut self, kind: SectionKind, from: StateKind, to: StateKind, n: u64) {
        self.pages[kind.index()][from.index()] -= n;
        self.pages[kind.index()][to.index()] += n;
    }
    pub(crate) fn add_pages(&mut self, kind: SectionKind, raw: Raw, n: u64) {
        self.pages[kind.index()][raw.kind().index()] += n;
        if raw == Raw::Hole {
            self.holes[kind.index()] += n;
        }
    }
    pub(crate) fn add_page(&mut self, kind: SectionKind, raw: Raw, sign: i8) {
        let slot = &mut self.pages[kind.index()][raw.kind().index()];
        if sign > 0 {
            *slot += 1;
        } else {
            *slot -= 1;
        }
        if raw == Raw::Hole {
            if sign > 0 {
                self.holes[kind.index()] += 1;
            } else {
                self.holes[kind.index()] -= 1;
            }
        }
    }
}

/// Counts at one moment, all exact (taken under the mutation lock).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Census {
    /// Boot or running.
    pub phase: Phase,
    /// Pages per `[section kind][state]` (index with `SectionKind::index`,
    /// `StateKind::index`).
    pub pages: [[u64; STATE_KINDS.len()]; SECTION_KINDS.len()],
    /// Of the Reserved pages per kind, those that are not RAM (holes in partly-RAM
    /// subsections).
    pub reserved_nonram: [u64; SECTION_KINDS.len()],
    /// Sections with at least one present subsection.
    pub sections_present: u64,
    /// Sections online.
    pub sections_online: u64,
    /// Subsections with memmap.
    pub subsections_present: u64,
    /// Subsections whose memmap is active.
    pub subsections_active: u64,
    /// Bytes of memmap (descriptors).
    pub memmap_bytes: u64,
    /// Bytes of section tables (root + chunks).
    pub section_table_bytes: u64,
    /// Free blocks per order.
    pub free_blocks: [u64; MAX_ORDER as usize + 1],
    /// Sections and subsections per section kind (index with `SectionKind::index`).
    pub by_kind: [KindCounts; SECTION_KINDS.len()],
}

/// Sections and subsections of one kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KindCounts {
    /// Sections with at least one present subsection.
    pub sections_present: u64,
    /// Of those, online.
    pub sections_online: u64,
    /// Subsections with memmap.
    pub subsections_present: u64,
    /// Subsections whose memmap is active.
    pub subsections_active: u64,
}

impl KindCounts {
    /// Guest-physical space described by memmap, in KiB (2 MiB per present subsection):
    /// for hotplug RAM, what hotplug added.
    pub const fn kib(&self) -> u64 {
        self.subsections_present * (PAGES_PER_SUBSECTION * PAGE_SIZE / 1024)
    }
    /// Memmap bytes of these subsections.
    pub const fn memmap_bytes(&self) -> u64 {
        self.subsections_present * MEMMAP_BYTES_PER_SUBSECTION as u64
    }
}

impl Census {
    pub(crate) fn from_stats(stats: &Stats, free: &FreeLists, phase: Phase) -> Census {
        let mut free_blocks = [0; MAX_ORDER as usize + 1];
        for (k, b) in free_blocks.iter_mut().enumerate() {
            *b = free.blocks(k as u8);
        }
        Census {
            phase,
            pages: stats.pages,
            reserved_nonram: stats.holes,
            sections_present: stats.sections_present,
            sections_online: stats.sections_online,
            subsections_present: stats.present_subsections,
            // Filled in by the model from the sections' active maps.
            subsections_active: 0,
            memmap_bytes: stats.memmap_bytes,
            section_table_bytes: stats.chunk_bytes + (ROOT_ENTRIES * size_of::<usize>()) as u64,
            free_blocks,
            // Filled in by the model from the sections' maps.
            by_kind: [KindCounts::default(); SECTION_KINDS.len()],
        }
    }

    /// Pages of `kind` in `state`.
    pub fn pages_of(&self, kind: SectionKind, state: StateKind) -> u64 {
        self.pages[kind.index()][state.index()]
    }

    /// Pages in `state`, all kinds.
    pub fn pages_in(&self, state: StateKind) -> u64 {
        SECTION_KINDS.iter().map(|&k| self.pages_of(k, state)).sum()
    }

    /// Pages with a descriptor.
    pub fn pages_total(&self) -> u64 {
        STATE_KINDS.iter().map(|&s| self.pages_in(s)).sum()
    }

    /// The domain's own populated RAM as the model sees it: Reserved RAM + Free +
    /// Allocated. This is what Xen's `tot_pages` should match (rule 5).
    pub fn ram_pages(&self) -> u64 {
        let reserved_ram =
            self.pages_in(StateKind::Reserved) - self.reserved_nonram.iter().sum::<u64>();
        reserved_ram + self.pages_in(StateKind::Free) + self.pages_in(StateKind::Allocated)
    }

    /// Every number with a stable key, e.g. `pages/boot-ram/free`, for xenstore.
    pub fn fields(&self) -> impl Iterator<Item = (CensusKey, u64)> + '_ {
        let scalar = [
            (CensusKey::SectionsPresent, self.sections_present),
            (CensusKey::SectionsOnline, self.sections_online),
            (CensusKey::SubsectionsPresent, self.subsections_present),
            (CensusKey::SubsectionsActive, self.subsections_active),
            (CensusKey::MemmapBytes, self.memmap_bytes),
            (CensusKey::SectionTableBytes, self.section_table_bytes),
            (CensusKey::RamPages, self.ram_pages()),
        ];
        let pages = SECTION_KINDS.into_iter().flat_map(move |k| {
            STATE_KINDS
                .into_iter()
                .map(move |s| (CensusKey::Pages(k, s), self.pages_of(k, s)))
                .chain(core::iter::once((
                    CensusKey::ReservedNonRam(k),
                    self.reserved_nonram[k.index()],
                )))
        });
        let blocks =
            (0..=MAX_ORDER).map(|o| (CensusKey::FreeBlocks(o), self.free_blocks[o as usize]));
        let kinds = SECTION_KINDS.into_iter().flat_map(move |k| {
            let c = self.by_kind[k.index()];
            [
                (CensusKey::KindSectionsPresent(k), c.sections_present),
                (CensusKey::KindSectionsOnline(k), c.sections_online),
                (CensusKey::KindSubsectionsActive(k), c.subsections_active),
                (CensusKey::KindKib(k), c.kib()),
                (CensusKey::KindMemmapBytes(k), c.memmap_bytes()),
            ]
        });
        scalar.into_iter().chain(pages).chain(blocks).chain(kinds)
    }
}

/// The name of one census number; `Display` gives its xenstore key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CensusKey {
    /// `sections/present`
    SectionsPresent,
    /// `sections/online`
    SectionsOnline,
    /// `subsections/present`
    SubsectionsPresent,
    /// `subsections/active`
    SubsectionsActive,
    /// `memmap-bytes`
    MemmapBytes,
    /// `section-table-bytes`
    SectionTableBytes,
    /// `pages/ram`
    RamPages,
    /// `pages/<kind>/<state>`
    Pages(SectionKind, StateKind),
    /// `pages/<kind>/reserved-nonram`
    ReservedNonRam(SectionKind),
    /// `free-blocks/<order>`
    FreeBlocks(u8),
    /// `sections/<kind>/present`
    KindSectionsPresent(SectionKind),
    /// `sections/<kind>/online`
    KindSectionsOnline(SectionKind),
    /// `subsections/<kind>/active`
    KindSubsectionsActive(SectionKind),
    /// `kib/<kind>`: space with memmap, e.g. `kib/hotplug-ram` is what hotplug added
    KindKib(SectionKind),
    /// `memmap-bytes/<kind>`
    KindMemmapBytes(SectionKind),
}

impl fmt::Display for CensusKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CensusKey::SectionsPresent => f.write_str("sections/present"),
            CensusKey::SectionsOnline => f.write_str("sections/online"),
            CensusKey::SubsectionsPresent => f.write_str("subsections/present"),
            CensusKey::SubsectionsActive => f.write_str("subsections/active"),
            CensusKey::MemmapBytes => f.write_str("memmap-bytes"),
            CensusKey::SectionTableBytes => f.write_str("section-table-bytes"),
            CensusKey::RamPages => f.write_str("pages/ram"),
            CensusKey::Pages(k, s) => write!(f, "pages/{k}/{s}"),
            CensusKey::ReservedNonRam(k) => write!(f, "pages/{k}/reserved-nonram"),
            CensusKey::FreeBlocks(o) => write!(f, "free-blocks/{o}"),
            CensusKey::KindSectionsPresent(k) => write!(f, "sections/{k}/present"),
            CensusKey::KindSectionsOnline(k) => write!(f, "sections/{k}/online"),
            CensusKey::KindSubsectionsActive(k) => write!(f, "subsections/{k}/active"),
            CensusKey::KindKib(k) => write!(f, "kib/{k}"),
            CensusKey::KindMemmapBytes(k) => write!(f, "memmap-bytes/{k}"),
        }
    }
}

impl fmt::Display for Census {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "mm: {:?}: sections {} present {} online, subsections {} present {} active, \
             memmap {} KiB, section tables {} KiB",
            self.phase,
            self.sections_present,
            self.sections_online,
            self.subsections_present,
            self.subsections_active,
            self.memmap_bytes / 1024,
            self.section_table_bytes / 1024,
        )?;
        for k in SECTION_KINDS {
            if STATE_KINDS.iter().all(|&s| self.pages_of(k, s) == 0) {
                continue;
            }
            write!(f, "mm: {k}:")?;
            for s in STATE_KINDS {
                write!(f, " {s} {}", self.pages_of(k, s))?;
            }
            let c = &self.by_kind[k.index()];
            writeln!(
                f,
                " (reserved non-RAM {}); sections {} present {} online, {} KiB, \
                 memmap {} KiB",
                self.reserved_nonram[k.index()],
                c.sections_present,
                c.sections_online,
                c.kib(),
                c.memmap_bytes() / 1024
            )?;
        }
        write!(
            f,
            "mm: ram {} pages ({} KiB), free blocks by order {:?}",
            self.ram_pages(),
            self.ram_pages() * 4,
            self.free_blocks
        )
    }
}
