//! Sections and the sparse root that finds them.
//!
//! Like Linux's SPARSEMEM_EXTREME: a fixed root array of pointers to chunks of section
//! slots; a chunk is allocated (from the memmap storage provider) the first time one of its
//! sections gets a present subsection, and lives as long as the model. 64 TiB needs 2^19
//! section slots; the root has 4096 entries (32 KiB) and a chunk holds 128 sections
//! (16 GiB of guest-physical space), so a sparse space costs only the chunks it uses.

use core::alloc::Layout;
use core::fmt;
use core::ptr::{null_mut, NonNull};
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicU8, Ordering};

use super::geometry::{Pfn, MAX_SECTIONS, SUBSECTIONS_PER_SECTION};
use super::page::PageDesc;

/// What a section's memory is. A section has one kind, fixed while any subsection is
/// present. Extend here (e.g. persistent memory) rather than adding booleans.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum SectionKind {
    /// RAM the domain was started with.
    BootRam = 1,
    /// RAM added at runtime (after `xl mem-max`).
    HotplugRam = 2,
    /// Guest-physical space without own RAM, for foreign (grant) mappings.
    Device = 3,
}

/// Every kind, in census order.
pub const SECTION_KINDS: [SectionKind; 3] = [
    SectionKind::BootRam,
    SectionKind::HotplugRam,
    SectionKind::Device,
];

impl SectionKind {
    /// Index into census arrays.
    pub const fn index(self) -> usize {
        self as usize - 1
    }
    /// Name used in logs and xenstore keys.
    pub const fn name(self) -> &'static str {
        match self {
            SectionKind::BootRam => "boot-ram",
            SectionKind::HotplugRam => "hotplug-ram",
            SectionKind::Device => "device",
        }
    }
    /// Whether pages of this kind are the domain's own RAM (can be online, Free, ...).
    pub const fn is_ram(self) -> bool {
        matches!(self, SectionKind::BootRam | SectionKind::HotplugRam)
    }
    const fn from_u8(v: u8) -> Option<SectionKind> {
        match v {
            1 => Some(SectionKind::BootRam),
            2 => Some(SectionKind::HotplugRam),
            3 => Some(SectionKind::Device),
            _ => None,
        }
    }
}

impl fmt::Display for SectionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One 128 MiB section. All fields are written under the model's mutation lock and read
/// locklessly.
pub(crate) struct Section {
    /// `SectionKind as u8`, 0 while no subsection is present.
    kind: AtomicU8,
    online: AtomicBool,
    /// Subsections with memmap storage.
    present: AtomicU64,
    /// Subsections whose every descriptor is initialised and may be dereferenced.
    active: AtomicU64,
    /// Subsections where a page that held our data went back to the allocator (freed
    /// after being Allocated or Reserved) since the subsection last became present or
    /// was scrubbed whole: their Free pages must be zeroed before Xen gets them (Xen 4.17
    /// does not scrub what a live domain frees; `free_domheap_pages`).
    dirty: AtomicU64,
    /// Memmap block (512 descriptors) of each present subsection.
    memmap: [AtomicPtr<PageDesc>; SUBSECTIONS_PER_SECTION],
    /// Bumped by every change a walker could be caught in: a subsection going active or
    /// inactive, a device page mapped or unmapped. Diagnostics only (the race walkers
    /// count a pass over the section that saw it move as an overlap).
    changes: AtomicU64,
}

impl Section {
    pub(crate) fn kind(&self) -> Option<SectionKind> {
        // Relaxed: the kind is written before the first `active` bit is set (Release), and
        // readers that act on it have loaded `active` with Acquire first; writers hold the
        // lock.
        SectionKind::from_u8(self.kind.load(Ordering::Relaxed))
    }
    pub(crate) fn set_kind(&self, kind: Option<SectionKind>) {
        // Relaxed: published by the Release store of an `active` bit (see `kind`).
        self.kind
            .store(kind.map_or(0, |k| k as u8), Ordering::Relaxed);
    }
    pub(crate) fn online(&self) -> bool {
        // Acquire pairs with the Release in `set_online`.
        self.online.load(Ordering::Acquire)
    }
    pub(crate) fn set_online(&self, on: bool) {
        // Release pairs with the Acquire in `online`: a reader that sees the section
        // online sees the page states written before onlining.
        self.online.store(on, Ordering::Release);
    }
    pub(crate) fn present(&self) -> u64 {
        // Relaxed: `present` only says storage exists; nothing is dereferenced on its
        // strength without also checking `active` (readers) or holding the lock (writers).
        self.present.load(Ordering::Relaxed)
    }
    pub(crate) fn set_present_bit(&self, idx: usize, on: bool) {
        // Relaxed: see `present`. A load and a store, not a locked RMW: only writers
        // change `present`, and they hold the model's lock.
        let was = self.present.load(Ordering::Relaxed);
        let now = if on {
            was | 1 << idx
        } else {
            was & !(1 << idx)
        };
        self.present.store(now, Ordering::Relaxed);
        // New or removed storage: whatever the frames held is not ours any more (a
        // subsection becomes present with every page Offline, or is removed that way).
        self.dirty.fetch_and(!(1 << idx), Ordering::Relaxed);
    }
    /// Subsections that may hold our data in Free pages (see the field).
    pub(crate) fn dirty(&self) -> u64 {
        // Relaxed: set and cleared under the model's mutation lock, or (clearing) by the
        // balloon for a subsection whose every page it holds Offline, so no page of it can
        // be freed meanwhile; a reader about to give a block away took it off the free
        // lists under that lock, after the free that set the bit.
        self.dirty.load(Ordering::Relaxed)
    }
    pub(crate) fn mark_dirty(&self, idx: usize) {
        // Relaxed: see `dirty`.
        self.dirty.fetch_or(1 << idx, Ordering::Relaxed);
    }
    pub(crate) fn clear_dirty(&self, idx: usize) {
        // Relaxed: see `dirty`.
        self.dirty.fetch_and(!(1 << idx), Ordering::Relaxed);
    }
    pub(crate) fn active(&self) -> u64 {
        // Acquire pairs with the Release in `activate`: seeing a bit means seeing every
        // descriptor of that subsection initialised and its memmap pointer stored.
        self.active.load(Ordering::Acquire)
    }
    /// Mark the subsections of `mask` active. Call only after all their descriptors are
    /// written.
    pub(crate) fn activate(&self, mask: u64) {
        // Release pairs with the Acquire in `active`.
        self.active.fetch_or(mask, Ordering::Release);
        self.bump_changes();
    }
    /// Counts a change (see `changes`).
    pub(crate) fn bump_changes(&self) {
        // SeqCst pairs with the SeqCst loads in `changes`: a walker whose pass brackets
        // this bump reads different values before and after it.
        self.changes.fetch_add(1, Ordering::SeqCst);
    }
    /// Changes so far.
    pub(crate) fn changes(&self) -> u64 {
        // SeqCst: see `bump_changes`.
        self.changes.load(Ordering::SeqCst)
    }
    /// Clear the active bits of `mask`. The caller then waits a grace period before the
    /// memmap may be freed.
    pub(crate) fn deactivate(&self, mask: u64) {
        // Relaxed is enough for the bit itself: the grace period's SeqCst epoch flip that
        // follows in program order publishes it to every reader entering afterwards, and
        // readers that entered before are waited for.
        self.active.fetch_and(!mask, Ordering::Relaxed);
        self.bump_changes();
    }
    pub(crate) fn memmap_ptr(&self, idx: usize) -> Option<NonNull<PageDesc>> {
        // Relaxed: stored before `activate` (Release) and read after `active` (Acquire) or
        // under the lock that stored it.
        NonNull::new(self.memmap[idx].load(Ordering::Relaxed))
    }
    pub(crate) fn set_memmap_ptr(&self, idx: usize, p: Option<NonNull<PageDesc>>) {
        // Relaxed: see `memmap_ptr`.
        self.memmap[idx].store(p.map_or(null_mut(), NonNull::as_ptr), Ordering::Relaxed);
    }
}

/// Sections per chunk (16 GiB of guest-physical space).
pub(crate) const SECTIONS_PER_CHUNK: usize = 128;
/// Entries of the root.
pub(crate) const ROOT_ENTRIES: usize = MAX_SECTIONS / SECTIONS_PER_CHUNK;

pub(crate) struct SectionChunk {
    sections: [Section; SECTIONS_PER_CHUNK],
}

/// Layout of one chunk, as requested from the storage provider.
pub(crate) const CHUNK_LAYOUT: Layout = Layout::new::<SectionChunk>();
/// Bytes of one section-table chunk (16 GiB of guest-physical space), as storage
/// providers see it.
pub const SECTION_TABLE_CHUNK_BYTES: usize = CHUNK_LAYOUT.size();

/// The sparse root.
pub(crate) struct SectionRoot {
    chunks: [AtomicPtr<SectionChunk>; ROOT_ENTRIES],
}

impl SectionRoot {
    pub(crate) const fn new() -> SectionRoot {
        SectionRoot {
            chunks: [const { AtomicPtr::new(null_mut()) }; ROOT_ENTRIES],
        }
    }

    /// The section slot `nr`, if its chunk exists.
    pub(crate) fn section(&self, nr: usize) -> Option<&Section> {
        let chunk = self.chunks.get(nr / SECTIONS_PER_CHUNK)?;
        // Acquire pairs with the Release in `install_chunk`: the zeroed chunk is visible.
        let p = chunk.load(Ordering::Acquire);
        // SAFETY: a non-null entry points to a zero-initialised chunk installed by
        // `install_chunk`; chunks are freed only by `take_chunks`, which needs `&mut self`,
        // so none is freed while `&self` is borrowed.
        let chunk = unsafe { p.as_ref() }?;
        Some(&chunk.sections[nr % SECTIONS_PER_CHUNK])
    }

    /// The section holding `pfn`, if its chunk exists.
    pub(crate) fn section_of(&self, pfn: Pfn) -> Option<&Section> {
        if !pfn.in_range() {
            return None;
        }
        self.section(pfn.section())
    }

    pub(crate) fn has_chunk(&self, nr: usize) -> bool {
        self.section(nr).is_some()
    }

    /// Install fresh storage of [`CHUNK_LAYOUT`] as the chunk holding section `nr`.
    /// Caller holds the mutation lock and has checked that the chunk is missing.
    pub(crate) fn install_chunk(&self, nr: usize, mem: NonNull<u8>) {
        let p = mem.cast::<SectionChunk>();
        // SAFETY: `mem` is fresh, exclusively owned storage of CHUNK_LAYOUT (size and
        // alignment of SectionChunk). Every field of a section is an atomic integer, bool
        // or pointer, for which all-zero bytes are a valid value (0, false, null): the
        // zeroed chunk is a valid SectionChunk of empty sections.
        unsafe { p.as_ptr().write_bytes(0, 1) };
        // Release pairs with the Acquire in `section`.
        self.chunks[nr / SECTIONS_PER_CHUNK].store(p.as_ptr(), Ordering::Release);
    }

    /// Remove every chunk (model teardown) and hand back their storage.
    pub(crate) fn take_chunks(&mut self, mut f: impl FnMut(NonNull<u8>)) {
        for c in &mut self.chunks {
            if let Some(p) = NonNull::new(core::mem::replace(c.get_mut(), null_mut())) {
                f(p.cast());
            }
        }
    }

    /// Numbers of the sections whose chunk exists, from `from` on, for scans.
    pub(crate) fn next_chunk_section(&self, from: usize) -> Option<usize> {
        let mut c = from / SECTIONS_PER_CHUNK;
        while c < ROOT_ENTRIES {
            // Acquire: as in `section`.
            if !self.chunks[c].load(Ordering::Acquire).is_null() {
                return Some(if c == from / SECTIONS_PER_CHUNK {
                    from
                } else {
                    c * SECTIONS_PER_CHUNK
                });
            }
            c += 1;
        }
        None
    }
}
