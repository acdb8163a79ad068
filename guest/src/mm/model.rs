//! The memory model: sections, memmap, page states and the frame allocator behind one
//! mutation lock, with lock-free readers protected by grace periods.

use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU8, Ordering};

use spin::Mutex;

use super::buddy::{FreeLists, MAX_ORDER};
use super::census::{Census, Stats};
use super::geometry::{
    section_start_pfn, subsection_start_pfn, Pfn, PfnRange, MAX_PFN, PAGES_PER_SUBSECTION,
    SUBSECTIONS_PER_SECTION,
};
use super::grace::GracePeriod;
use super::memmap::{Memmap, MemmapToken, MEMMAP_LAYOUT};
use super::page::{
    check_transition, ForeignMap, IllegalTransition, PageDesc, PageState, Phase, Raw, StateKind,
    STATE_KINDS,
};
use super::read::ReadGuard;
use super::section::{SectionKind, SectionRoot, CHUNK_LAYOUT, SECTION_KINDS};
use super::storage::MemmapStorage;

/// Why a model operation was refused. Nothing is changed when an error is returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmError {
    /// The pfn is beyond the 64 TiB the model covers.
    OutOfRange(Pfn),
    /// A block or range is not aligned to its order (subsection ops: order 9).
    Misaligned {
        /// Start of the block.
        pfn: Pfn,
        /// Its order.
        order: u8,
    },
    /// Order above [`MAX_ORDER`].
    BadOrder(u8),
    /// No active subsection holds the pfn.
    NotActive(Pfn),
    /// The subsection is already present.
    AlreadyPresent(Pfn),
    /// The section already holds subsections of another kind.
    KindMismatch {
        /// The pfn asked for.
        pfn: Pfn,
        /// Kind the section has.
        section: SectionKind,
        /// Kind asked for.
        wanted: SectionKind,
    },
    /// The operation needs another kind of section, or an online/offline one.
    WrongSection {
        /// The pfn asked for.
        pfn: Pfn,
        /// Kind of its section.
        kind: SectionKind,
        /// Whether the section is online.
        online: bool,
    },
    /// A non-RAM page inside a present subsection: it has no other state than Reserved.
    NotRam(Pfn),
    /// The page state machine refuses the transition.
    Illegal {
        /// The page.
        pfn: Pfn,
        /// What was refused.
        transition: IllegalTransition,
    },
    /// A page in this state prevents removing or offlining its subsection or section.
    Busy {
        /// The page.
        pfn: Pfn,
        /// Its state.
        state: StateKind,
    },
    /// The storage provider could not supply memmap or section storage.
    StorageExhausted {
        /// Bytes that were asked for.
        bytes: usize,
    },
    /// No free block of this order.
    OutOfMemory {
        /// Order asked for.
        order: u8,
    },
}

impl fmt::Display for MmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MmError::Illegal { pfn, transition } => write!(f, "{transition} at {pfn:?}"),
            other => write!(f, "{other:?}"),
        }
    }
}

fn illegal(pfn: Pfn, transition: IllegalTransition) -> MmError {
    log::warn!("mm: refused {} at {:?}", transition, pfn);
    MmError::Illegal { pfn, transition }
}

/// A snapshot of one section's maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SectionInfo {
    /// Section number.
    pub nr: usize,
    /// Its kind (None: no present subsection).
    pub kind: Option<SectionKind>,
    /// Whether its pages are online.
    pub online: bool,
    /// Subsections with memmap storage.
    pub present: u64,
    /// Subsections whose memmap may be used.
    pub active: u64,
}

impl fmt::Display for SectionInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = self.kind.map_or("none", SectionKind::name);
        write!(
            f,
            "section {:#x} [{:#x}, {:#x}) {} {} present {:#018x} active {:#018x}",
            self.nr,
            section_start_pfn(self.nr).addr(),
            section_start_pfn(self.nr + 1).addr(),
            kind,
            if self.online { "online" } else { "offline" },
            self.present,
            self.active,
        )
    }
}

/// How the pages of a new subsection start.
pub(crate) trait InitPages {
    /// The state of every page of the subsection starting at `first`, when they all
    /// share one (the fast path: no per-page decision).
    fn uniform(&mut self, first: Pfn) -> Option<Raw>;
    /// The state of one page.
    fn page(&mut self, pfn: Pfn) -> Raw;
}

/// Every page starts in the same state.
pub(super) struct Uniform(pub(super) Raw);

impl InitPages for Uniform {
    fn uniform(&mut self, _: Pfn) -> Option<Raw> {
        Some(self.0)
    }
    fn page(&mut self, _: Pfn) -> Raw {
        self.0
    }
}

pub(crate) struct Inner<S> {
    pub(crate) storage: S,
    pub(super) token: MemmapToken,
    pub(super) free: FreeLists,
    pub(super) phase: Phase,
    pub(super) stats: Stats,
}

/// The memory model. Build it at boot with [`super::boot::build`] (or empty with
/// [`MemModel::new`] and add sections).
///
/// Mutations take an internal spin lock. Readers use [`MemModel::read`] and never take it.
/// Never hold a [`ReadGuard`] while calling a mutating method: removal waits for guards.
pub struct MemModel<S: MemmapStorage> {
    pub(super) root: SectionRoot,
    pub(super) grace: GracePeriod,
    pub(super) inner: Mutex<Inner<S>>,
    /// [`RaceBug`] as u8 (test switch).
    race_bug: AtomicU8,
}

/// Ordering bugs a test can switch on (command line `race-bug=`), to show that the race
/// walkers can see them. Never on outside such a test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RaceBug {
    /// Correct ordering.
    None = 0,
    /// Set a subsection's active bit before its descriptors are initialised.
    EarlyActive = 1,
    /// Free a removed subsection's memmap without waiting for a grace period.
    NoGrace = 2,
}

fn block_range(pfn: Pfn, order: u8) -> PfnRange {
    PfnRange::from_count(pfn, 1 << order)
}

/// The first page of `run` (inside one present subsection) that is not Offline, with its
/// state; for the mutation lock holder. One word per descriptor while all are Offline
/// ([`PageDesc::holds_plain`]); the states are decoded only to name the offender.
pub(super) fn first_not_offline(mm: &Memmap<'_>, run: PfnRange) -> Option<(Pfn, StateKind)> {
    let descs = mm
        .run(run.start, run.len() as usize)
        .expect("a run inside one present subsection");
    if descs.iter().all(|d| d.holds_plain(PageDesc::OFFLINE_WORD0)) {
        return None;
    }
    run.iter()
        .map(|p| (p, mm.desc(p).load().kind()))
        .find(|&(_, state)| state != StateKind::Offline)
}

fn check_block(pfn: Pfn, order: u8) -> Result<(), MmError> {
    if order > MAX_ORDER {
        return Err(MmError::BadOrder(order));
    }
    if !pfn.in_range() {
        return Err(MmError::OutOfRange(pfn));
    }
    if !pfn.0.is_multiple_of(1 << order) {
        return Err(MmError::Misaligned { pfn, order });
    }
    Ok(())
}

/// Give every page of a block just taken off the free lists the plain state whose word 0
/// is `w0`. Unlinking made the head a tail like the rest, so every page is a plain Free
/// tail and one word each is stored.
fn mark_taken(descs: &[PageDesc], w0: u64) {
    descs.iter().for_each(|d| {
        debug_assert!(
            d.holds_plain(PageDesc::FREE_TAIL_WORD0),
            "a taken free block holds a head"
        );
        d.store_plain(w0)
    });
}

/// Split `[start, end)` into maximal aligned buddy blocks.
pub(super) fn for_each_block(range: PfnRange, mut f: impl FnMut(Pfn, u8)) {
    let mut p = range.start.0;
    while p < range.end.0 {
        let align = if p == 0 {
            MAX_ORDER as u32
        } else {
            p.trailing_zeros()
        };
        let fit = 63 - (range.end.0 - p).leading_zeros();
        let k = align.min(fit).min(MAX_ORDER as u32) as u8;
        f(Pfn(p), k);
        p += 1 << k;
    }
}

impl<S: MemmapStorage> MemModel<S> {
    /// An empty model (no section present) in the boot phase.
    pub const fn new(storage: S) -> MemModel<S> {
        MemModel {
            root: SectionRoot::new(),
            grace: GracePeriod::new(),
            race_bug: AtomicU8::new(0),
            inner: Mutex::new(Inner {
                storage,
                token: MemmapToken::new(),
                free: FreeLists::new(),
                phase: Phase::Boot,
                stats: Stats {
                    pages: [[0; STATE_KINDS.len()]; SECTION_KINDS.len()],
                    holes: [0; SECTION_KINDS.len()],
                    present_subsections: 0,
                    sections_present: 0,
                    sections_online: 0,
                    memmap_bytes: 0,
                    chunk_bytes: 0,
                },
            }),
        }
    }

    // ---- lock-free queries -------------------------------------------------------------

    /// Whether the subsection of `pfn` has memmap storage (Linux `pfn_valid`). Does not
    /// mean the descriptors may be used: see [`MemModel::pfn_active`].
    pub fn pfn_valid(&self, pfn: Pfn) -> bool {
        self.root
            .section_of(pfn)
            .is_some_and(|s| s.present() & (1 << pfn.subsection_in_section()) != 0)
    }

    /// Whether the subsection of `pfn` is active: memmap initialised and not being torn
    /// down. Without a read guard the answer may be stale by the time it is used.
    pub fn pfn_active(&self, pfn: Pfn) -> bool {
        self.root
            .section_of(pfn)
            .is_some_and(|s| s.active() & (1 << pfn.subsection_in_section()) != 0)
    }

    /// Enter the read side: descriptors reached through the guard stay valid until it
    /// is dropped.
    pub fn read(&self) -> ReadGuard<'_> {
        ReadGuard::new(&self.root, self.grace.read())
    }

    /// The maps of section `nr`.
    pub fn section_info(&self, nr: usize) -> Option<SectionInfo> {
        let s = self.root.section(nr)?;
        Some(SectionInfo {
            nr,
            kind: s.kind(),
            online: s.online(),
            present: s.present(),
            active: s.active(),
        })
    }

    /// Every section with a present subsection, in order.
    pub fn sections(&self) -> impl Iterator<Item = SectionInfo> + '_ {
        let mut nr = 0;
        core::iter::from_fn(move || loop {
            nr = self.root.next_chunk_section(nr)?;
            let info = self.section_info(nr);
            nr += 1;
            match info {
                Some(i) if i.present != 0 => return Some(i),
                _ => continue,
            }
        })
    }

    /// Readers currently inside (diagnostics).
    pub fn readers(&self) -> usize {
        self.grace.readers()
    }

    /// Grace-period waits so far (timed only under a kernel's hooks).
    pub fn grace_stats(&self) -> super::grace::GraceStats {
        self.grace.stats()
    }

    /// Test switch: inject one of the ordering bugs the race walkers must detect.
    pub fn set_race_bug(&self, bug: RaceBug) {
        // Relaxed: read by the remover/adder under the mutation lock, set once at boot.
        self.race_bug.store(bug as u8, Ordering::Relaxed);
    }

    pub(super) fn race_bug(&self) -> RaceBug {
        // Relaxed: see `set_race_bug`.
        match self.race_bug.load(Ordering::Relaxed) {
            1 => RaceBug::EarlyActive,
            2 => RaceBug::NoGrace,
            _ => RaceBug::None,
        }
    }

    fn section_of_pfn(&self, pfn: Pfn) -> &super::section::Section {
        self.root.section_of(pfn).expect("device pfn has a section")
    }

    // ---- census -------------------------------------------------------------------------

    /// Counts kept incrementally (cheap).
    pub fn census(&self) -> Census {
        let g = self.inner.lock();
        let mut c = Census::from_stats(&g.stats, &g.free, g.phase);
        self.count_sections(&mut c);
        c
    }

    /// [`Census::ram_pages`] alone, from the counters (what the balloon asks every step;
    /// no walk over the sections' maps).
    pub fn ram_pages(&self) -> u64 {
        let g = self.inner.lock();
        Census::from_stats(&g.stats, &g.free, g.phase).ram_pages()
    }

    /// Fill the census numbers read from the sections' maps (lock held, so they agree
    /// with the counters): active subsections, and sections and subsections per kind.
    fn count_sections(&self, c: &mut Census) {
        for s in self.sections() {
            let Some(kind) = s.kind else { continue };
            let k = kind.index();
            c.subsections_active += s.active.count_ones() as u64;
            c.by_kind[k].sections_present += 1;
            c.by_kind[k].sections_online += s.online as u64;
            c.by_kind[k].subsections_present += s.present.count_ones() as u64;
            c.by_kind[k].subsections_active += s.active.count_ones() as u64;
        }
    }

    /// Counts recomputed by walking every present subsection, plus a check of the free
    /// lists; for tests and self-checks. Errors name the inconsistency found.
    pub fn recount(&self) -> Result<Census, &'static str> {
        let g = self.inner.lock();
        let mm = Memmap::new(&self.root, &g.token);
        let mut stats = Stats {
            memmap_bytes: g.stats.memmap_bytes,
            chunk_bytes: g.stats.chunk_bytes,
            ..Stats::default()
        };
        let mut free_in_online = 0;
        for info in self.sections() {
            let kind = info.kind.ok_or("present section without kind")?;
            stats.sections_present += 1;
            stats.sections_online += info.online as u64;
            if info.present != info.active {
                return Err("present and active maps differ outside removal");
            }
            for idx in 0..SUBSECTIONS_PER_SECTION {
                if info.present & (1 << idx) == 0 {
                    continue;
                }
                stats.present_subsections += 1;
                let first = subsection_start_pfn(info.nr, idx);
                for pfn in PfnRange::from_count(first, PAGES_PER_SUBSECTION).iter() {
                    let raw = mm.desc(pfn).load();
                    stats.add_page(kind, raw, 1);
                    let k = raw.kind();
                    if k == StateKind::Free {
                        if !(kind.is_ram() && info.online) {
                            return Err("free page outside an online RAM section");
                        }
                        free_in_online += 1;
                    }
                    if matches!(k, StateKind::Unpopulated | StateKind::Foreign)
                        != (kind == SectionKind::Device)
                    {
                        return Err("device state outside a device section or vice versa");
                    }
                }
            }
        }
        if stats != g.stats {
            return Err("incremental counters differ from a walk");
        }
        if g.free.verify(&mm)? != free_in_online {
            return Err("free lists do not hold exactly the Free pages");
        }
        let mut c = Census::from_stats(&stats, &g.free, g.phase);
        self.count_sections(&mut c);
        Ok(c)
    }

    // ---- phase --------------------------------------------------------------------------

    /// End the boot phase: from now on no page may become Reserved.
    pub fn end_boot(&self) {
        self.inner.lock().phase = Phase::Running;
    }

    /// Current phase.
    pub fn phase(&self) -> Phase {
        self.inner.lock().phase
    }

    // ---- lock-held helpers --------------------------------------------------------------

    /// Kind and online flag of the active subsection holding `pfn`.
    pub(super) fn placement(&self, pfn: Pfn) -> Result<(SectionKind, bool), MmError> {
        if !pfn.in_range() {
            return Err(MmError::OutOfRange(pfn));
        }
        let s = self.root.section_of(pfn).ok_or(MmError::NotActive(pfn))?;
        if s.active() & (1 << pfn.subsection_in_section()) == 0 {
            return Err(MmError::NotActive(pfn));
        }
        Ok((s.kind().ok_or(MmError::NotActive(pfn))?, s.online()))
    }

    fn require_online_ram(&self, pfn: Pfn) -> Result<SectionKind, MmError> {
        match self.placement(pfn)? {
            (kind, true) if kind.is_ram() => Ok(kind),
            (kind, online) => Err(MmError::WrongSection { pfn, kind, online }),
        }
    }

    fn require_device(&self, pfn: Pfn) -> Result<(), MmError> {
        match self.placement(pfn)? {
            (SectionKind::Device, _) => Ok(()),
            (kind, online) => Err(MmError::WrongSection { pfn, kind, online }),
        }
    }

    /// Check that every page of `range` may go to `to`; returns nothing, changes nothing.
    fn check_range(
        mm: &Memmap<'_>,
        phase: Phase,
        range: PfnRange,
        to: StateKind,
    ) -> Result<(), MmError> {
        for pfn in range.iter() {
            let raw = mm.desc(pfn).load();
            if raw == Raw::Hole {
                return Err(MmError::NotRam(pfn));
            }
            check_transition(raw.kind(), to, phase).map_err(|t| illegal(pfn, t))?;
        }
        Ok(())
    }

    // ---- frame allocator ----------------------------------------------------------------

    /// Allocate `2^order` contiguous frames (Free -> Allocated).
    pub fn alloc_frames(&self, order: u8) -> Result<Pfn, MmError> {
        self.take_free_block(order, PageState::Allocated, false)
            .map(|(p, _)| p)
    }

    /// Take any free block of `order` off the free lists into state `to`. With `scrub`, a
    /// block going Offline that may hold our data ([`MemModel::needs_scrub`]) goes
    /// Allocated instead, for the caller to zero and hand on with
    /// [`MemModel::offline_scrubbed`]; the flag says which.
    fn take_free_block(
        &self,
        order: u8,
        to: PageState,
        scrub: bool,
    ) -> Result<(Pfn, bool), MmError> {
        if order > MAX_ORDER {
            return Err(MmError::BadOrder(order));
        }
        let mut g = self.inner.lock();
        let g = &mut *g;
        let mm = Memmap::new(&self.root, &g.token);
        let pfn = g
            .free
            .alloc(&mm, order)
            .ok_or(MmError::OutOfMemory { order })?;
        let (to, dirty) = match to {
            PageState::Offline => self.balloon_take(pfn, scrub),
            to => (to, false),
        };
        let descs = mm
            .run(pfn, 1 << order)
            .expect("a free block lies in one present subsection");
        match PageDesc::plain_word0(Raw::State(to)) {
            Some(w0) => mark_taken(descs, w0),
            None => descs.iter().for_each(|d| d.store(Raw::State(to))),
        }
        let kind = self
            .placement(pfn)
            .expect("free block in an active section")
            .0;
        g.stats
            .move_pages(kind, StateKind::Free, to.kind(), 1 << order);
        Ok((pfn, dirty))
    }

    /// Allocate the lowest-addressed free block of `2^order` frames (Free -> Allocated):
    /// for long-lived kernel data such as memmap storage, which then sits in boot RAM
    /// (or the lowest hot-added section) rather than wherever the free lists point —
    /// hot-added sections are emptied highest first, and an Allocated frame keeps its
    /// section from being removed. Cost: one descriptor load per `2^order` pages scanned.
    pub fn alloc_frames_lowest(&self, order: u8) -> Result<Pfn, MmError> {
        if order > MAX_ORDER {
            return Err(MmError::BadOrder(order));
        }
        let mut g = self.inner.lock();
        let g = &mut *g;
        let mm = Memmap::new(&self.root, &g.token);
        let size = 1u64 << order;
        for info in self.sections() {
            let Some(kind) = info.kind.filter(|k| k.is_ram()) else {
                continue;
            };
            if !info.online {
                continue;
            }
            for idx in (0..SUBSECTIONS_PER_SECTION).filter(|i| info.active & (1 << i) != 0) {
                let first = subsection_start_pfn(info.nr, idx);
                let mut p = first.0;
                while p < first.0 + PAGES_PER_SUBSECTION {
                    if mm.desc(Pfn(p)).load().kind() == StateKind::Free
                        && g.free.take_block(&mm, Pfn(p), order)
                    {
                        for q in block_range(Pfn(p), order).iter() {
                            mm.desc(q).store(Raw::State(PageState::Allocated));
                        }
                        g.stats
                            .move_pages(kind, StateKind::Free, StateKind::Allocated, size);
                        return Ok(Pfn(p));
                    }
                    p += size;
                }
            }
        }
        Err(MmError::OutOfMemory { order })
    }

    /// Top up the storage provider so it can hand out at least `bytes` more without new
    /// frames: order-9 blocks of our own RAM, lowest first ([`Self::alloc_frames_lowest`]),
    /// become Allocated and go to [`MemmapStorage::add_frame`]. Takes the mutation lock
    /// once per frame and never while the provider runs (the provider itself is called
    /// under the lock and must not allocate). Returns the frames added; stops early (and
    /// says so with `Err`) when the allocator has no free 2 MiB block or the provider
    /// takes no (more) frames. A provider without a bound (heap) needs nothing.
    pub fn refill_storage(&self, bytes: usize) -> Result<usize, MmError> {
        let mut added = 0;
        loop {
            let free = match self.with_storage(|s| s.free_bytes()) {
                None => return Ok(added),
                Some(f) if f >= bytes => return Ok(added),
                Some(f) => f,
            };
            let pfn = self.alloc_frames_lowest(MAX_ORDER)?;
            if !self.with_storage(|s| s.add_frame(pfn)) {
                self.free_frames(pfn, MAX_ORDER)
                    .expect("giving back a frame just allocated");
                return Err(MmError::StorageExhausted { bytes });
            }
            added += 1;
            if self
                .with_storage(|s| s.free_bytes())
                .is_some_and(|f| f <= free)
            {
                // The frame did not make room (a budget caps the provider): stop, or this
                // would take every free 2 MiB block. The unused frame goes back with the
                // caller's next `trim_storage`.
                return Err(MmError::StorageExhausted { bytes });
            }
        }
    }

    /// Give the provider's emptied frames back to the allocator (Allocated -> Free).
    /// Returns how many. Call after removing memory, with no lock held.
    pub fn trim_storage(&self) -> usize {
        let mut n = 0;
        while let Some(pfn) = self.with_storage(|s| s.take_empty_frame()) {
            self.free_frames(pfn, MAX_ORDER)
                .expect("a storage frame is an Allocated order-9 block");
            n += 1;
        }
        n
    }

    /// Return frames from [`MemModel::alloc_frames`] (Allocated -> Free), coalescing.
    pub fn free_frames(&self, pfn: Pfn, order: u8) -> Result<(), MmError> {
        // Reserved -> Free is legal too, but through `release_reserved` only.
        self.give_free_block(pfn, order, StateKind::Allocated)
    }

    /// Put the block `[pfn, pfn + 2^order)`, every page of it in state `from`, on the free
    /// lists (-> Free, coalescing). The section must be online RAM.
    fn give_free_block(&self, pfn: Pfn, order: u8, from: StateKind) -> Result<(), MmError> {
        check_block(pfn, order)?;
        let mut g = self.inner.lock();
        let g = &mut *g;
        let kind = self.require_online_ram(pfn)?;
        let mm = Memmap::new(&self.root, &g.token);
        let range = block_range(pfn, order);
        // Fast path (the balloon's populate of whole subsections): every page in state
        // `from` and `from -> Free` legal, checked and moved in one pass over the block's
        // descriptors. `from` is a plain state (word 1 empty), so one word per descriptor
        // is loaded and one stored ([`PageDesc::move_plain_run`]). Anything else (the pass
        // found a page in another state and put the block back) takes the page-by-page
        // path below for its error.
        let plain_from = match from {
            StateKind::Allocated => Some(PageDesc::ALLOCATED_WORD0),
            StateKind::Offline => PageDesc::plain_word0(Raw::State(PageState::Offline)),
            _ => None,
        };
        let moved = match (plain_from, mm.run(pfn, 1 << order)) {
            (Some(w0), Some(descs)) if check_transition(from, StateKind::Free, g.phase).is_ok() => {
                PageDesc::move_plain_run(descs, w0, PageDesc::FREE_TAIL_WORD0).is_ok()
            }
            _ => false,
        };
        if !moved {
            Self::check_range(&mm, g.phase, range, StateKind::Free)?;
            for p in range.iter() {
                let have = mm.desc(p).load().kind();
                if have != from {
                    let t = IllegalTransition {
                        from: have,
                        to: StateKind::Free,
                        phase: g.phase,
                    };
                    return Err(illegal(p, t));
                }
            }
            range.iter().for_each(|p| mm.desc(p).store(Raw::Free(None)));
        }
        if from != StateKind::Offline {
            // The block held our data: it must be zeroed before Xen gets it. (A block
            // lies in one subsection: MAX_ORDER is a subsection.)
            self.mark_dirty(pfn);
        }
        g.free.insert(&mm, pfn, order);
        g.stats.move_pages(kind, from, StateKind::Free, 1 << order);
        Ok(())
    }

    fn mark_dirty(&self, pfn: Pfn) {
        if let Some(s) = self.root.section_of(pfn) {
            s.mark_dirty(pfn.subsection_in_section());
        }
    }

    /// The subsection at `pfn` was zeroed whole and every page of it is Offline: it holds
    /// nothing of ours any more.
    fn clear_dirty(&self, pfn: Pfn) {
        if let Some(s) = self.root.section_of(pfn) {
            s.clear_dirty(pfn.subsection_in_section());
        }
    }

    /// Where a block taken off the free lists for ballooning goes: Offline, or, with
    /// `scrub` and if it may hold our data, Allocated to the caller for zeroing (`true`).
    fn balloon_take(&self, pfn: Pfn, scrub: bool) -> (PageState, bool) {
        if scrub && self.needs_scrub(pfn) {
            (PageState::Allocated, true)
        } else {
            (PageState::Offline, false)
        }
    }

    /// Whether the Free block at `pfn` (just taken off the free lists to give to Xen) may
    /// hold our data: its subsection had a page freed after being Allocated or Reserved
    /// since the subsection became present or was last zeroed whole
    /// ([`MemModel::offline_scrubbed`]). Pages that only ever came from Xen (boot RAM
    /// never allocated, populated extents) hold nothing of ours.
    pub fn needs_scrub(&self, pfn: Pfn) -> bool {
        self.root
            .section_of(pfn)
            .is_some_and(|s| s.dirty() & (1 << pfn.subsection_in_section()) != 0)
    }

    /// Take a free block of `order` out of the allocator for ballooning out
    /// (Free -> Offline). The caller then returns the frames to Xen; if Xen refuses, it
    /// gives them back with [`MemModel::populate`].
    pub fn balloon_out(&self, order: u8) -> Result<Pfn, MmError> {
        self.take_free_block(order, PageState::Offline, false)
            .map(|(p, _)| p)
    }

    /// [`MemModel::balloon_out`] for a caller that zeroes what held our data: a block
    /// that may (its subsection is dirty) goes Allocated, flagged `true`; the caller zeroes
    /// it and hands it on with [`MemModel::offline_scrubbed`]. No code writes an Offline
    /// frame (DESIGN rule 3), so the zeroing happens while the caller owns the block.
    pub fn balloon_out_scrubbing(&self, order: u8) -> Result<(Pfn, bool), MmError> {
        self.take_free_block(order, PageState::Offline, true)
    }

    /// A block taken Allocated by a scrubbing balloon take, now zeroed, goes Offline
    /// (Allocated -> Offline, one pass over its descriptors); a whole subsection holds
    /// nothing of ours afterwards (its dirty bit is cleared). The caller then gives it to
    /// Xen.
    pub fn offline_scrubbed(&self, pfn: Pfn, order: u8) -> Result<(), MmError> {
        check_block(pfn, order)?;
        let mut g = self.inner.lock();
        let g = &mut *g;
        let kind = self.require_online_ram(pfn)?;
        let mm = Memmap::new(&self.root, &g.token);
        let descs = mm.run(pfn, 1 << order).ok_or(MmError::NotActive(pfn))?;
        if let Err(i) =
            PageDesc::move_plain_run(descs, PageDesc::ALLOCATED_WORD0, PageDesc::OFFLINE_WORD0)
        {
            let p = pfn.add(i as u64);
            let t = IllegalTransition {
                from: mm.desc(p).load().kind(),
                to: StateKind::Offline,
                phase: g.phase,
            };
            return Err(illegal(p, t));
        }
        g.stats
            .move_pages(kind, StateKind::Allocated, StateKind::Offline, 1 << order);
        if order == MAX_ORDER {
            self.clear_dirty(pfn);
        }
        Ok(())
    }

    /// Take up to `max` single pages out of the allocator for ballooning out
    /// (Free -> Offline) as the fewest free blocks that hold them: the largest power of two
    /// not above what is still wanted, smaller ones once no block that large is free. Each
    /// page goes to `sink`, ascending within a block, with `true` if it went Allocated
    /// instead (`scrub`: see [`MemModel::balloon_out_scrubbing`]); returns how many were
    /// taken (fewer than `max` only when no free page is left). One lock and one pass per
    /// block: the balloon's order-0 tail of a step costs what a few blocks cost, not `max`
    /// calls.
    pub fn balloon_out_pages(
        &self,
        max: usize,
        scrub: bool,
        mut sink: impl FnMut(Pfn, bool),
    ) -> Result<usize, MmError> {
        let mut taken = 0;
        let mut order = MAX_ORDER;
        while taken < max {
            order = order.min((max - taken).ilog2() as u8);
            match self.take_free_block(order, PageState::Offline, scrub) {
                Ok((pfn, dirty)) => {
                    (0..1u64 << order).for_each(|i| sink(pfn.add(i), dirty));
                    taken += 1 << order;
                }
                // Nothing this large is free: nothing larger either.
                Err(MmError::OutOfMemory { .. }) if order > 0 => order -= 1,
                Err(MmError::OutOfMemory { .. }) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(taken)
    }

    /// Take a whole free subsection (an order-9 block) for order-9 ballooning.
    pub fn balloon_out_subsection(&self) -> Result<Pfn, MmError> {
        self.balloon_out(MAX_ORDER)
    }

    /// Take up to `max` free blocks of `order` lying inside `range` out of the allocator
    /// (Free -> Offline), highest subsection first: the balloon's way to give back a
    /// preferred part of RAM (hot-added sections before boot RAM). Larger free blocks are
    /// split; subsections that are not active online RAM are skipped. Each block goes to
    /// `sink`, with `true` if it went Allocated instead (`scrub`: see
    /// [`MemModel::balloon_out_scrubbing`]); returns how many were taken (0 when the range
    /// has no free block of
    /// `order`). Cost: one descriptor load per `2^order` pages scanned, none in sections
    /// of a kind with no Free page left.
    pub fn balloon_out_from(
        &self,
        range: PfnRange,
        order: u8,
        max: usize,
        scrub: bool,
        mut sink: impl FnMut(Pfn, bool),
    ) -> Result<usize, MmError> {
        if order > MAX_ORDER {
            return Err(MmError::BadOrder(order));
        }
        let range = PfnRange::new(range.start, Pfn(range.end.0.min(MAX_PFN)));
        if range.is_empty() || max == 0 {
            return Ok(0);
        }
        let mut g = self.inner.lock();
        let g = &mut *g;
        let mm = Memmap::new(&self.root, &g.token);
        let size = 1u64 << order;
        let mut taken = 0;
        let subs = range.start.subsection()..=Pfn(range.end.0 - 1).subsection();
        for sub in subs.rev() {
            let first = Pfn(sub * PAGES_PER_SUBSECTION);
            let kind = match self.placement(first) {
                Ok((kind, true)) if kind.is_ram() => kind,
                _ => continue,
            };
            // The census knows when no page of this kind is Free any more (a hot-added
            // range all ballooned out): skip the scan, one descriptor load per page at
            // order 0 (measured: 9 ms of a 768 -> 192 MiB step under TCG, for nothing).
            if g.stats.pages[kind.index()][StateKind::Free.index()] == 0 {
                continue;
            }
            let lo = range.start.max(first).0.next_multiple_of(size);
            let hi = range.end.0.min(first.0 + PAGES_PER_SUBSECTION);
            let mut p = lo;
            while p + size <= hi && taken < max {
                // A free page at an aligned position: the block holding it is either big
                // enough (take our part of it) or smaller, and then — the buddy merges
                // every whole free aligned block — this aligned block is not wholly free.
                if mm.desc(Pfn(p)).load().kind() == StateKind::Free
                    && g.free.take_block(&mm, Pfn(p), order)
                {
                    let descs = mm
                        .run(Pfn(p), size as usize)
                        .expect("a free block lies in one present subsection");
                    let (to, dirty) = self.balloon_take(Pfn(p), scrub);
                    let w0 = PageDesc::plain_word0(Raw::State(to))
                        .expect("Offline and Allocated are plain states");
                    mark_taken(descs, w0);
                    g.stats.move_pages(kind, StateKind::Free, to.kind(), size);
                    sink(Pfn(p), dirty);
                    taken += 1;
                }
                p += size;
            }
            if taken == max {
                break;
            }
        }
        Ok(taken)
    }

    /// Check, changing nothing, that every page of `range` is Offline in an active,
    /// online section of `kind` (what the balloon requires before it adopts a hot-added
    /// range as ballooned). Errors name the first page that is not: `NotActive`,
    /// `WrongSection` or `Busy` with the state found. Under the mutation lock, one word
    /// per descriptor ([`PageDesc::holds_plain`]): 512 MiB costs 131,072 loads, not a
    /// reader's snapshot of each page.
    pub fn check_offline(&self, range: PfnRange, kind: SectionKind) -> Result<(), MmError> {
        let g = self.inner.lock();
        let mm = Memmap::new(&self.root, &g.token);
        // Every page of `kind` Offline (the census says so: a hot-add with the earlier
        // ones ballooned out, or none): the placement check alone, no descriptor loads.
        let counts = &g.stats.pages[kind.index()];
        let all_offline = counts[StateKind::Offline.index()] == counts.iter().sum::<u64>();
        let mut pfn = range.start;
        while pfn < range.end {
            let end = Pfn((pfn.subsection() + 1) * PAGES_PER_SUBSECTION).min(range.end);
            match self.placement(pfn)? {
                (k, true) if k == kind => {}
                (k, online) => {
                    return Err(MmError::WrongSection {
                        pfn,
                        kind: k,
                        online,
                    })
                }
            }
            if all_offline {
                pfn = end;
                continue;
            }
            if let Some((pfn, state)) = first_not_offline(&mm, PfnRange::new(pfn, end)) {
                return Err(MmError::Busy { pfn, state });
            }
            pfn = end;
        }
        Ok(())
    }

    /// Pages of section `nr` per state (index with [`StateKind::index`]), counted by
    /// walking its present subsections under the mutation lock; `None` if it has none.
    pub fn section_pages(&self, nr: usize) -> Option<[u64; STATE_KINDS.len()]> {
        let g = self.inner.lock();
        let mm = Memmap::new(&self.root, &g.token);
        let present = self.root.section(nr)?.present();
        if present == 0 {
            return None;
        }
        let mut counts = [0; STATE_KINDS.len()];
        for idx in (0..SUBSECTIONS_PER_SECTION).filter(|i| present & (1 << i) != 0) {
            let first = subsection_start_pfn(nr, idx);
            for pfn in PfnRange::from_count(first, PAGES_PER_SUBSECTION).iter() {
                counts[mm.desc(pfn).load().kind().index()] += 1;
            }
        }
        Some(counts)
    }

    /// Ballooning out a specific Free page (Free -> Offline), e.g. one a PoD target says
    /// must go.
    pub fn balloon_out_pfn(&self, pfn: Pfn) -> Result<(), MmError> {
        let mut g = self.inner.lock();
        let g = &mut *g;
        let kind = self.require_online_ram(pfn)?;
        let mm = Memmap::new(&self.root, &g.token);
        Self::check_range(&mm, g.phase, block_range(pfn, 0), StateKind::Offline)?;
        // Allocated -> Offline is legal too, but only for a block the balloon zeroed
        // (`offline_scrubbed`): this takes Free pages only.
        let have = mm.desc(pfn).load().kind();
        if have != StateKind::Free {
            let t = IllegalTransition {
                from: have,
                to: StateKind::Offline,
                phase: g.phase,
            };
            return Err(illegal(pfn, t));
        }
        let taken = g.free.take(&mm, pfn);
        assert!(
            taken,
            "Free page of an online section not on the free lists"
        );
        mm.desc(pfn).store(Raw::State(PageState::Offline));
        g.stats
            .move_pages(kind, StateKind::Free, StateKind::Offline, 1);
        Ok(())
    }

    /// Frames Xen has populated (again) behind `[pfn, pfn + 2^order)` join the allocator
    /// (Offline -> Free). The section must be online RAM.
    pub fn populate(&self, pfn: Pfn, order: u8) -> Result<(), MmError> {
        self.give_free_block(pfn, order, StateKind::Offline)
    }

    /// [`MemModel::populate`] of single pages, any order of `pfns`, no duplicates: their
    /// runs join the allocator as the largest aligned blocks they hold, one lock and one
    /// pass per block. On an error every page before the failing one (ascending) has
    /// joined, the failing one and those after it are unchanged, as page by page.
    pub fn populate_pages(&self, pfns: impl IntoIterator<Item = Pfn>) -> Result<(), MmError> {
        let mut sorted: Vec<u64> = pfns.into_iter().map(|p| p.0).collect();
        sorted.sort_unstable();
        let mut result = Ok(());
        let mut i = 0;
        while i < sorted.len() && result.is_ok() {
            let start = sorted[i];
            let mut end = start + 1;
            i += 1;
            while i < sorted.len() && sorted[i] == end {
                end += 1;
                i += 1;
            }
            for_each_block(PfnRange::new(Pfn(start), Pfn(end)), |p, k| {
                if result.is_ok() && self.populate(p, k).is_err() {
                    // Page by page for the exact error and the pages before it.
                    result = (0..1u64 << k).try_for_each(|j| self.populate(p.add(j), 0));
                }
            });
        }
        result
    }

    /// Mark RAM pages Reserved (boot only): Free pages leave the allocator, Allocated ones
    /// change owner. All-or-nothing.
    pub fn reserve(&self, range: PfnRange) -> Result<(), MmError> {
        let mut g = self.inner.lock();
        let g = &mut *g;
        let mm = Memmap::new(&self.root, &g.token);
        for pfn in range.iter() {
            self.require_online_ram(pfn)?;
        }
        Self::check_range(&mm, g.phase, range, StateKind::Reserved)?;
        for pfn in range.iter() {
            let kind = self.placement(pfn)?.0;
            let from = mm.desc(pfn).load().kind();
            if from == StateKind::Free {
                let taken = g.free.take(&mm, pfn);
                assert!(
                    taken,
                    "Free page of an online section not on the free lists"
                );
            }
            mm.desc(pfn).store(Raw::State(PageState::Reserved));
            g.stats.move_pages(kind, from, StateKind::Reserved, 1);
        }
        Ok(())
    }

    /// Hand Reserved RAM (e.g. boot page tables no longer needed) to the allocator.
    pub fn release_reserved(&self, range: PfnRange) -> Result<(), MmError> {
        let mut g = self.inner.lock();
        let g = &mut *g;
        let mm = Memmap::new(&self.root, &g.token);
        for pfn in range.iter() {
            self.require_online_ram(pfn)?;
            let raw = mm.desc(pfn).load();
            if raw == Raw::Hole {
                return Err(MmError::NotRam(pfn));
            }
            if raw.kind() != StateKind::Reserved {
                let t = IllegalTransition {
                    from: raw.kind(),
                    to: StateKind::Free,
                    phase: g.phase,
                };
                return Err(illegal(pfn, t));
            }
        }
        for pfn in range.iter() {
            let kind = self.placement(pfn)?.0;
            // Reserved pages held the kernel's boot data.
            self.mark_dirty(pfn);
            mm.desc(pfn).store(Raw::Free(None));
            g.free.insert(&mm, pfn, 0);
            g.stats
                .move_pages(kind, StateKind::Reserved, StateKind::Free, 1);
        }
        Ok(())
    }

    // ---- foreign pages ------------------------------------------------------------------

    /// Record a grant mapping at a device pfn (Unpopulated -> Foreign).
    pub fn map_foreign(&self, pfn: Pfn, map: ForeignMap) -> Result<(), MmError> {
        let mut g = self.inner.lock();
        let g = &mut *g;
        self.require_device(pfn)?;
        let mm = Memmap::new(&self.root, &g.token);
        Self::check_range(&mm, g.phase, block_range(pfn, 0), StateKind::Foreign)?;
        mm.desc(pfn).store(Raw::State(PageState::Foreign(map)));
        self.section_of_pfn(pfn).bump_changes();
        g.stats.move_pages(
            SectionKind::Device,
            StateKind::Unpopulated,
            StateKind::Foreign,
            1,
        );
        Ok(())
    }

    /// Forget a grant mapping (Foreign -> Unpopulated); returns what was mapped.
    pub fn unmap_foreign(&self, pfn: Pfn) -> Result<ForeignMap, MmError> {
        let mut g = self.inner.lock();
        let g = &mut *g;
        self.require_device(pfn)?;
        let mm = Memmap::new(&self.root, &g.token);
        Self::check_range(&mm, g.phase, block_range(pfn, 0), StateKind::Unpopulated)?;
        let PageState::Foreign(map) = mm.desc(pfn).state() else {
            unreachable!("only Foreign may become Unpopulated");
        };
        mm.desc(pfn).store(Raw::State(PageState::Unpopulated));
        self.section_of_pfn(pfn).bump_changes();
        g.stats.move_pages(
            SectionKind::Device,
            StateKind::Foreign,
            StateKind::Unpopulated,
            1,
        );
        Ok(map)
    }

    /// Use the storage provider (e.g. to read or change a [`super::Budgeted`] budget).
    pub fn with_storage<R>(&self, f: impl FnOnce(&mut S) -> R) -> R {
        f(&mut self.inner.lock().storage)
    }

    /// Run `f` with the lock held (boot builder).
    pub(crate) fn with_inner<R>(&self, f: impl FnOnce(&Self, &mut Inner<S>) -> R) -> R {
        let mut g = self.inner.lock();
        f(self, &mut g)
    }
}

impl<S: MemmapStorage> Drop for MemModel<S> {
    fn drop(&mut self) {
        let inner = self.inner.get_mut();
        let mut nr = 0;
        while let Some(next) = self.root.next_chunk_section(nr) {
            nr = next + 1;
            let Some(s) = self.root.section(next) else {
                continue;
            };
            for idx in 0..SUBSECTIONS_PER_SECTION {
                if let Some(p) = s.memmap_ptr(idx) {
                    s.set_memmap_ptr(idx, None);
                    // SAFETY: `&mut self`: no reader or writer view exists; `p` came from
                    // `alloc(MEMMAP_LAYOUT)`.
                    unsafe { inner.storage.free(p.cast(), MEMMAP_LAYOUT) };
                }
            }
        }
        let storage = &mut inner.storage;
        self.root.take_chunks(|p| {
            // SAFETY: chunks came from `alloc(CHUNK_LAYOUT)` and, with `&mut self`, no
            // reference into them remains.
            unsafe { storage.free(p, CHUNK_LAYOUT) }
        });
    }
}
