//! The memory model: sections, memmap, page states and the frame allocator behind one
//! mutation lock, with lock-free readers protected by grace periods.

use core::fmt;
use core::ptr::NonNull;

use spin::Mutex;

use super::buddy::{FreeLists, MAX_ORDER};
use super::census::{Census, Stats};
use super::geometry::{
    section_start_pfn, subsection_start_pfn, Pfn, PfnRange, MAX_PFN, PAGES_PER_SECTION,
    PAGES_PER_SUBSECTION, SUBSECTIONS_PER_SECTION,
};
use super::grace::{GracePeriod, ReadToken};
use super::memmap::{fill_block, init_block, Memmap, MemmapToken, MEMMAP_LAYOUT};
use super::page::{
    check_transition, ForeignMap, IllegalTransition, PageDesc, PageState, Phase, Raw, StateKind,
    STATE_KINDS,
};
use super::section::{Section, SectionKind, SectionRoot, CHUNK_LAYOUT, SECTION_KINDS};
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
struct Uniform(Raw);

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
    token: MemmapToken,
    free: FreeLists,
    phase: Phase,
    stats: Stats,
}

/// The memory model. Build it at boot with [`super::boot::build`] (or empty with
/// [`MemModel::new`] and add sections).
///
/// Mutations take an internal spin lock. Readers use [`MemModel::read`] and never take it.
/// Never hold a [`ReadGuard`] while calling a mutating method: removal waits for guards.
pub struct MemModel<S: MemmapStorage> {
    root: SectionRoot,
    grace: GracePeriod,
    inner: Mutex<Inner<S>>,
}

fn block_range(pfn: Pfn, order: u8) -> PfnRange {
    PfnRange::from_count(pfn, 1 << order)
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

/// Split `[start, end)` into maximal aligned buddy blocks.
fn for_each_block(range: PfnRange, mut f: impl FnMut(Pfn, u8)) {
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
        ReadGuard {
            root: &self.root,
            _token: self.grace.read(),
        }
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

    // ---- census -------------------------------------------------------------------------

    /// Counts kept incrementally (cheap).
    pub fn census(&self) -> Census {
        let g = self.inner.lock();
        let mut c = Census::from_stats(&g.stats, &g.free, g.phase);
        self.count_sections(&mut c);
        c
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
    fn placement(&self, pfn: Pfn) -> Result<(SectionKind, bool), MmError> {
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
        self.take_free_block(order, PageState::Allocated)
    }

    /// Take any free block of `order` off the free lists into state `to`.
    fn take_free_block(&self, order: u8, to: PageState) -> Result<Pfn, MmError> {
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
        for p in block_range(pfn, order).iter() {
            mm.desc(p).store(Raw::State(to));
        }
        let kind = self
            .placement(pfn)
            .expect("free block in an active section")
            .0;
        g.stats
            .move_pages(kind, StateKind::Free, to.kind(), 1 << order);
        Ok(pfn)
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
        for p in range.iter() {
            mm.desc(p).store(Raw::Free(None));
        }
        g.free.insert(&mm, pfn, order);
        g.stats.move_pages(kind, from, StateKind::Free, 1 << order);
        Ok(())
    }

    /// Take a free block of `order` out of the allocator for ballooning out
    /// (Free -> Offline). The caller then returns the frames to Xen; if Xen refuses, it
    /// gives them back with [`MemModel::populate`].
    pub fn balloon_out(&self, order: u8) -> Result<Pfn, MmError> {
        self.take_free_block(order, PageState::Offline)
    }

    /// Take a whole free subsection (an order-9 block) for order-9 ballooning.
    pub fn balloon_out_subsection(&self) -> Result<Pfn, MmError> {
        self.balloon_out(MAX_ORDER)
    }

    /// Take up to `max` free blocks of `order` lying inside `range` out of the allocator
    /// (Free -> Offline), highest subsection first: the balloon's way to give back a
    /// preferred part of RAM (hot-added sections before boot RAM). Larger free blocks are
    /// split; subsections that are not active online RAM are skipped. Each block goes to
    /// `sink`; returns how many were taken (0 when the range has no free block of
    /// `order`). Cost: one descriptor load per `2^order` pages scanned.
    pub fn balloon_out_from(
        &self,
        range: PfnRange,
        order: u8,
        max: usize,
        mut sink: impl FnMut(Pfn),
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
                    for q in block_range(Pfn(p), order).iter() {
                        mm.desc(q).store(Raw::State(PageState::Offline));
                    }
                    g.stats
                        .move_pages(kind, StateKind::Free, StateKind::Offline, size);
                    sink(Pfn(p));
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
        g.stats.move_pages(
            SectionKind::Device,
            StateKind::Foreign,
            StateKind::Unpopulated,
            1,
        );
        Ok(map)
    }

    // ---- sections and subsections -------------------------------------------------------

    /// Add the subsections of `range` (subsection aligned) as `kind`: RAM pages start
    /// Offline (hotplugged memory is never Reserved), device pages Unpopulated. The
    /// subsections are active on return; RAM sections still need
    /// [`MemModel::online_section`] and [`MemModel::populate`].
    pub fn add_subsections(&self, range: PfnRange, kind: SectionKind) -> Result<(), MmError> {
        let init = if kind.is_ram() {
            Raw::State(PageState::Offline)
        } else {
            Raw::State(PageState::Unpopulated)
        };
        let mut g = self.inner.lock();
        self.add_with(&mut g, range, kind, false, Uniform(init))
    }

    /// Add a whole section (see [`MemModel::add_subsections`]).
    pub fn add_section(&self, nr: usize, kind: SectionKind) -> Result<(), MmError> {
        self.add_subsections(
            PfnRange::from_count(section_start_pfn(nr), PAGES_PER_SECTION),
            kind,
        )
    }

    /// The worker behind adding subsections: allocate every chunk and memmap block first
    /// (rolling back on failure), then initialise, activate, optionally online, and put
    /// Free pages on the free lists.
    pub(crate) fn add_with(
        &self,
        g: &mut Inner<S>,
        range: PfnRange,
        kind: SectionKind,
        online: bool,
        mut init: impl InitPages,
    ) -> Result<(), MmError> {
        if !range.is_subsection_aligned() {
            return Err(MmError::Misaligned {
                pfn: range.start,
                order: MAX_ORDER,
            });
        }
        if range.end.0 > MAX_PFN {
            return Err(MmError::OutOfRange(range.end));
        }
        let subsections = || {
            (range.start.0..range.end.0)
                .step_by(PAGES_PER_SUBSECTION as usize)
                .map(Pfn)
        };
        // Check everything before allocating anything.
        for first in subsections() {
            if let Some(s) = self.root.section_of(first) {
                if s.present() & (1 << first.subsection_in_section()) != 0 {
                    return Err(MmError::AlreadyPresent(first));
                }
                match s.kind() {
                    Some(have) if have != kind => {
                        return Err(MmError::KindMismatch {
                            pfn: first,
                            section: have,
                            wanted: kind,
                        })
                    }
                    _ => {}
                }
            }
        }
        // Chunks: kept even if a later step fails (empty slots are harmless and reused).
        for first in subsections() {
            if !self.root.has_chunk(first.section()) {
                let mem = g
                    .storage
                    .alloc(CHUNK_LAYOUT)
                    .ok_or(MmError::StorageExhausted {
                        bytes: CHUNK_LAYOUT.size(),
                    })?;
                self.root.install_chunk(first.section(), mem);
                g.stats.chunk_bytes += CHUNK_LAYOUT.size() as u64;
            }
        }
        // Memmap blocks: parked in the (not yet present) slots; undone on failure.
        for (n, first) in subsections().enumerate() {
            let s = self.section(first);
            match g.storage.alloc(MEMMAP_LAYOUT) {
                Some(mem) => s.set_memmap_ptr(first.subsection_in_section(), Some(mem.cast())),
                None => {
                    for undo in subsections().take(n) {
                        let s = self.section(undo);
                        let idx = undo.subsection_in_section();
                        let p = s.memmap_ptr(idx).expect("parked memmap block");
                        s.set_memmap_ptr(idx, None);
                        // SAFETY: `p` came from `alloc(MEMMAP_LAYOUT)` just above and was
                        // never published (its present bit is clear).
                        unsafe { g.storage.free(p.cast(), MEMMAP_LAYOUT) };
                    }
                    return Err(MmError::StorageExhausted {
                        bytes: MEMMAP_LAYOUT.size(),
                    });
                }
            }
        }
        // Initialise, then publish: present, kind, and active last (Release).
        let mut nr = usize::MAX;
        for first in subsections() {
            let s = self.section(first);
            let idx = first.subsection_in_section();
            let mem = s.memmap_ptr(idx).expect("parked memmap block");
            let uniform = init.uniform(first);
            // Which pages start Free, to put them on the free lists without re-reading.
            let mut free = [0u64; PAGES_PER_SUBSECTION as usize / 64];
            match uniform {
                Some(raw) => {
                    debug_assert!(online || raw.kind() != StateKind::Free);
                    fill_block(mem.cast(), raw);
                    g.stats.add_pages(kind, raw, PAGES_PER_SUBSECTION);
                    if raw.kind() == StateKind::Free {
                        free = [u64::MAX; PAGES_PER_SUBSECTION as usize / 64];
                    }
                }
                None => {
                    let stats = &mut g.stats;
                    init_block(mem.cast(), first, |pfn| {
                        let raw = init.page(pfn);
                        debug_assert!(online || raw.kind() != StateKind::Free);
                        stats.add_pages(kind, raw, 1);
                        if raw.kind() == StateKind::Free {
                            let i = pfn.index_in_subsection();
                            free[i / 64] |= 1 << (i % 64);
                        }
                        raw
                    });
                }
            }
            if s.present() == 0 {
                s.set_kind(Some(kind));
                g.stats.sections_present += 1;
            }
            s.set_present_bit(idx, true);
            s.activate(idx);
            g.stats.present_subsections += 1;
            g.stats.memmap_bytes += MEMMAP_LAYOUT.size() as u64;
            if !online {
                continue;
            }
            if first.section() != nr {
                nr = first.section();
                if !s.online() {
                    s.set_online(true);
                    g.stats.sections_online += 1;
                }
            }
            let mm = Memmap::new(&self.root, &g.token);
            if free.iter().all(|&w| w == u64::MAX) {
                g.free.insert(&mm, first, MAX_ORDER);
                continue;
            }
            let is_free = |i: u64| free[i as usize / 64] & (1 << (i % 64)) != 0;
            let mut i = 0;
            while i < PAGES_PER_SUBSECTION {
                if !is_free(i) {
                    i += 1;
                    continue;
                }
                let start = i;
                while i < PAGES_PER_SUBSECTION && is_free(i) {
                    i += 1;
                }
                let run = PfnRange::new(first.add(start), first.add(i));
                for_each_block(run, |p, k| g.free.insert(&mm, p, k));
            }
        }
        Ok(())
    }

    fn section(&self, pfn: Pfn) -> &Section {
        self.root
            .section_of(pfn)
            .expect("section chunk installed before use")
    }

    /// Remove the subsections of `range` (subsection aligned). Every page must be Offline
    /// or Unpopulated (nothing owns a frame). Order: clear active, wait a grace period
    /// (walkers that may hold descriptors finish), free memmap, clear present.
    pub fn remove_subsections(&self, range: PfnRange) -> Result<(), MmError> {
        if !range.is_subsection_aligned() {
            return Err(MmError::Misaligned {
                pfn: range.start,
                order: MAX_ORDER,
            });
        }
        let mut g = self.inner.lock();
        let g = &mut *g;
        {
            let mm = Memmap::new(&self.root, &g.token);
            for first in (range.start.0..range.end.0)
                .step_by(PAGES_PER_SUBSECTION as usize)
                .map(Pfn)
            {
                self.placement(first)?;
                for pfn in PfnRange::from_count(first, PAGES_PER_SUBSECTION).iter() {
                    let state = mm.desc(pfn).load().kind();
                    if !matches!(state, StateKind::Offline | StateKind::Unpopulated) {
                        return Err(MmError::Busy { pfn, state });
                    }
                }
            }
        }
        let subsections = || {
            (range.start.0..range.end.0)
                .step_by(PAGES_PER_SUBSECTION as usize)
                .map(Pfn)
        };
        for first in subsections() {
            self.section(first)
                .deactivate(1 << first.subsection_in_section());
        }
        self.grace.synchronize();
        for first in subsections() {
            let s = self.section(first);
            let idx = first.subsection_in_section();
            let kind = s.kind().expect("present section has a kind");
            {
                let mm = Memmap::new(&self.root, &g.token);
                for pfn in PfnRange::from_count(first, PAGES_PER_SUBSECTION).iter() {
                    g.stats.add_page(kind, mm.desc(pfn).load(), -1);
                }
            }
            self.free_memmap(g, s, idx);
            if s.present() == 0 {
                if s.online() {
                    s.set_online(false);
                    g.stats.sections_online -= 1;
                }
                s.set_kind(None);
                g.stats.sections_present -= 1;
            }
        }
        Ok(())
    }

    /// Free one deactivated subsection's memmap. Taking the token by `&mut` proves no
    /// descriptor reference from the writers' view is alive.
    fn free_memmap(&self, g: &mut Inner<S>, s: &Section, idx: usize) {
        let _exclusive: &mut MemmapToken = &mut g.token;
        let p = s.memmap_ptr(idx).expect("present subsection has memmap");
        s.set_present_bit(idx, false);
        s.set_memmap_ptr(idx, None);
        // SAFETY: the subsection was deactivated and a grace period has passed, so no
        // reader holds a descriptor; writers' views borrow the token, which we hold
        // exclusively. `p` came from `alloc(MEMMAP_LAYOUT)` in `add_with`.
        unsafe { g.storage.free(p.cast(), MEMMAP_LAYOUT) };
        g.stats.present_subsections -= 1;
        g.stats.memmap_bytes -= MEMMAP_LAYOUT.size() as u64;
    }

    /// Remove a whole section (see [`MemModel::remove_subsections`]).
    pub fn remove_section(&self, nr: usize) -> Result<(), MmError> {
        self.remove_subsections(PfnRange::from_count(
            section_start_pfn(nr),
            PAGES_PER_SECTION,
        ))
    }

    /// Online a RAM section: its pages become reachable through `pfn_to_online_page` and
    /// may be populated into the allocator.
    pub fn online_section(&self, nr: usize) -> Result<(), MmError> {
        let mut g = self.inner.lock();
        let first = section_start_pfn(nr);
        let s = self
            .root
            .section(nr)
            .filter(|s| s.present() != 0)
            .ok_or(MmError::NotActive(first))?;
        let kind = s.kind().ok_or(MmError::NotActive(first))?;
        if !kind.is_ram() {
            return Err(MmError::WrongSection {
                pfn: first,
                kind,
                online: false,
            });
        }
        if !s.online() {
            s.set_online(true);
            g.stats.sections_online += 1;
        }
        Ok(())
    }

    /// Offline a RAM section whose pages are all Offline (ballooned out or never
    /// populated).
    pub fn offline_section(&self, nr: usize) -> Result<(), MmError> {
        let mut g = self.inner.lock();
        let g = &mut *g;
        let first = section_start_pfn(nr);
        let s = self
            .root
            .section(nr)
            .filter(|s| s.present() != 0)
            .ok_or(MmError::NotActive(first))?;
        let mm = Memmap::new(&self.root, &g.token);
        let present = s.present();
        for idx in (0..SUBSECTIONS_PER_SECTION).filter(|i| present & (1 << i) != 0) {
            let sub = subsection_start_pfn(nr, idx);
            for pfn in PfnRange::from_count(sub, PAGES_PER_SUBSECTION).iter() {
                let state = mm.desc(pfn).load().kind();
                if state != StateKind::Offline {
                    return Err(MmError::Busy { pfn, state });
                }
            }
        }
        if s.online() {
            s.set_online(false);
            g.stats.sections_online -= 1;
        }
        Ok(())
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

// ---- read side -------------------------------------------------------------------------

/// A read-side critical section. Descriptors reached through it stay valid until it is
/// dropped; removal waits for it.
pub struct ReadGuard<'m> {
    root: &'m SectionRoot,
    _token: ReadToken<'m>,
}

/// A page reached through a [`ReadGuard`].
#[derive(Clone, Copy)]
pub struct PageRef<'g> {
    pfn: Pfn,
    kind: SectionKind,
    /// Whether the section was online when the page was reached.
    online: bool,
    desc: &'g PageDesc,
}

impl PageRef<'_> {
    /// The page's pfn.
    pub fn pfn(&self) -> Pfn {
        self.pfn
    }
    /// Kind of the page's section.
    pub fn section_kind(&self) -> SectionKind {
        self.kind
    }
    /// Whether the page's section was online when the page was reached (for RAM: its
    /// pages are managed by the kernel and the balloon).
    pub fn section_online(&self) -> bool {
        self.online
    }
    /// Current state (a consistent snapshot).
    pub fn state(&self) -> PageState {
        self.desc.state()
    }
    /// Whether the page is RAM (false for non-RAM pages of partly-RAM subsections).
    pub fn is_ram(&self) -> bool {
        self.desc.is_ram()
    }
}

impl fmt::Debug for PageRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} {} {:?}", self.pfn, self.kind, self.state())
    }
}

impl<'m> ReadGuard<'m> {
    fn lookup(&self, pfn: Pfn) -> Option<(PageRef<'_>, bool)> {
        let s = self.root.section_of(pfn)?;
        let idx = pfn.subsection_in_section();
        if s.active() & (1 << idx) == 0 {
            return None;
        }
        let base = s.memmap_ptr(idx)?;
        let kind = s.kind()?;
        // SAFETY: the active bit was seen (Acquire) inside this read-side section: the
        // block is initialised (written before the Release that set the bit), and removal
        // clears the bit and then waits for this guard before freeing the block. The
        // reference is bound to `&self`, so it cannot outlive the guard.
        let desc = unsafe { base.add(pfn.index_in_subsection()).as_ref() };
        let online = s.online();
        Some((
            PageRef {
                pfn,
                kind,
                online,
                desc,
            },
            online,
        ))
    }

    /// The page of an active subsection, whatever its section (`pfn_active` + memmap).
    pub fn pfn_to_page(&self, pfn: Pfn) -> Option<PageRef<'_>> {
        self.lookup(pfn).map(|(p, _)| p)
    }

    /// The page if its subsection is active and its section online RAM.
    pub fn pfn_to_online_page(&self, pfn: Pfn) -> Option<PageRef<'_>> {
        match self.lookup(pfn)? {
            (p, true) if p.kind.is_ram() => Some(p),
            _ => None,
        }
    }

    /// The page if its subsection is active and its section a device range.
    pub fn pfn_to_device_page(&self, pfn: Pfn) -> Option<PageRef<'_>> {
        match self.lookup(pfn)? {
            (p, _) if p.kind == SectionKind::Device => Some(p),
            _ => None,
        }
    }

    /// Every page of an active subsection in `range`, in pfn order; holes and absent
    /// sections are skipped without touching memory.
    pub fn active_pages(&self, range: PfnRange) -> ActivePages<'_, 'm> {
        ActivePages {
            guard: self,
            next: range.start,
            end: Pfn(range.end.0.min(MAX_PFN)),
            cached: None,
        }
    }
}

/// Iterator of [`ReadGuard::active_pages`].
pub struct ActivePages<'g, 'm> {
    guard: &'g ReadGuard<'m>,
    next: Pfn,
    end: Pfn,
    /// (subsection number, memmap block, section kind, online) of the current subsection.
    cached: Option<(u64, NonNull<PageDesc>, SectionKind, bool)>,
}

impl<'g> Iterator for ActivePages<'g, '_> {
    type Item = PageRef<'g>;

    fn next(&mut self) -> Option<PageRef<'g>> {
        while self.next < self.end {
            let pfn = self.next;
            if let Some((sub, base, kind, online)) = self.cached {
                if sub == pfn.subsection() {
                    self.next = pfn.add(1);
                    // SAFETY: as in `ReadGuard::lookup`: `base` was read after seeing the
                    // subsection active under the guard this iterator borrows for 'g.
                    let desc = unsafe { base.add(pfn.index_in_subsection()).as_ref() };
                    return Some(PageRef {
                        pfn,
                        kind,
                        online,
                        desc,
                    });
                }
            }
            self.cached = None;
            let root = self.guard.root;
            let Some(s) = root.section_of(pfn) else {
                // No chunk: jump to the next section that has one.
                let nr = root.next_chunk_section(pfn.section() + 1)?;
                self.next = section_start_pfn(nr).max(pfn);
                continue;
            };
            let idx = pfn.subsection_in_section();
            let active = s.active() & !((1u64 << idx) - 1);
            if active == 0 {
                self.next = section_start_pfn(pfn.section() + 1);
                continue;
            }
            let first = active.trailing_zeros() as usize;
            if first != idx {
                self.next = subsection_start_pfn(pfn.section(), first);
                continue;
            }
            match (s.memmap_ptr(idx), s.kind()) {
                (Some(base), Some(kind)) => {
                    self.cached = Some((pfn.subsection(), base, kind, s.online()))
                }
                _ => self.next = pfn.subsection_start().add(PAGES_PER_SUBSECTION),
            }
        }
        None
    }
}
