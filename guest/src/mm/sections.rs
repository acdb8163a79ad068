//! Adding and removing memory: subsections and sections come and go under the mutation
//! lock, in the order the model promises walkers — memmap built, then active (Release),
//! then online; on the way out offline, inactive, a grace period, and only then the
//! memmap freed.

use core::ptr::NonNull;

use super::buddy::MAX_ORDER;
use super::geometry::{
    section_start_pfn, subsection_start_pfn, Pfn, PfnRange, MAX_PFN, PAGES_PER_SECTION,
    PAGES_PER_SUBSECTION, SUBSECTIONS_PER_SECTION,
};
use super::memmap::{
    copy_block, fill_block, init_block, poison_block, Memmap, MemmapToken, MEMMAP_LAYOUT,
};
use super::model::{
    first_not_offline, for_each_block, InitPages, Inner, MemModel, MmError, RaceBug, Uniform,
};
use super::page::{PageDesc, PageState, Raw, StateKind};
use super::section::{Section, SectionKind, CHUNK_LAYOUT};
use super::storage::MemmapStorage;
use bitvec::{array::BitArray, BitArr};

/// One bit per page of a subsection (set: the page starts Free).
type FreeMap = BitArr!(for PAGES_PER_SUBSECTION as usize, in u64);

impl<S: MemmapStorage> MemModel<S> {
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
        let early_active = self.race_bug() == RaceBug::EarlyActive;
        // Memmap blocks: parked in the (not yet present) slots; undone on failure.
        for (n, first) in subsections().enumerate() {
            let s = self.section(first);
            match g.storage.alloc(MEMMAP_LAYOUT) {
                Some(mem) => {
                    // Poison a fresh block only if a reader can reach it before its
                    // initialisation, i.e. with the injected bug (as Linux poisons memmap
                    // only under debug options). Without it the active bit is published
                    // after the fill below, so poisoning first would double the stores
                    // of every hot-add (memmap init at half of memset speed). Freed
                    // blocks are always poisoned: storage never hands out a valid state,
                    // and a never-used frame's zeroes are tag 0, no state either.
                    if early_active {
                        poison_block(mem);
                    }
                    s.set_memmap_ptr(first.subsection_in_section(), Some(mem.cast()))
                }
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
        if early_active {
            // Injected bug (test switch): walkers may now reach the poisoned blocks.
            for first in subsections() {
                let s = self.section(first);
                if s.kind().is_none() {
                    s.set_kind(Some(kind));
                }
                s.activate(1 << first.subsection_in_section());
            }
        }
        // Initialise, then publish: present, kind, and active last (Release), once per
        // section for all of its subsections in `range` (one atomic RMW of the section's
        // active mask instead of one per subsection; the host build spent ~15 % of a boot
        // memmap init in locked instructions). Free pages go on the free lists before
        // their subsection is active: walkers see the links with the states.
        let mut nr = usize::MAX;
        let mut pending: Option<(&Section, u64)> = None;
        // The last block filled with one state, to copy instead of filling again (its
        // descriptors 1..512 stay as filled: the free lists write only a block's first).
        let mut template: Option<(Raw, NonNull<PageDesc>)> = None;
        for first in subsections() {
            if early_active {
                // The bug's window is as wide as one scheduling quantum, as if the
                // initialisation slept on an allocation: let the other CPUs run.
                super::grace::relax();
            }
            let s = self.section(first);
            let idx = first.subsection_in_section();
            match pending {
                Some((p, mask)) if first.section() != nr => {
                    p.activate(mask);
                    pending = None;
                }
                _ => {}
            }
            let mem = s.memmap_ptr(idx).expect("parked memmap block");
            let uniform = init.uniform(first);
            // Which pages start Free, to put them on the free lists without re-reading.
            let mut free: FreeMap = BitArray::ZERO;
            match uniform {
                Some(raw) => {
                    debug_assert!(online || raw.kind() != StateKind::Free);
                    match template {
                        Some((t, src)) if t == raw => {
                            copy_block(mem.cast(), src, raw);
                        }
                        _ => template = Some((raw, fill_block(mem.cast(), raw))),
                    }
                    g.stats.add_pages(kind, raw, PAGES_PER_SUBSECTION);
                    if raw.kind() == StateKind::Free {
                        free.fill(true);
                    }
                }
                None => {
                    let stats = &mut g.stats;
                    init_block(mem.cast(), first, |pfn| {
                        let raw = init.page(pfn);
                        debug_assert!(online || raw.kind() != StateKind::Free);
                        stats.add_pages(kind, raw, 1);
                        if raw.kind() == StateKind::Free {
                            free.set(pfn.index_in_subsection(), true);
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
            pending = Some((s, pending.map_or(0, |(_, m)| m) | 1 << idx));
            g.stats.present_subsections += 1;
            g.stats.memmap_bytes += MEMMAP_LAYOUT.size() as u64;
            if first.section() != nr {
                nr = first.section();
                if online && !s.online() {
                    s.set_online(true);
                    g.stats.sections_online += 1;
                }
            }
            if !online {
                continue;
            }
            let mm = Memmap::new(&self.root, &g.token);
            if free.all() {
                g.free.insert(&mm, first, MAX_ORDER);
                continue;
            }
            // Each run of free pages goes on the free lists as aligned buddy blocks.
            let mut i = 0;
            while let Some(off) = free[i..].first_one() {
                let start = i + off;
                i = start + free[start..].first_zero().unwrap_or(free.len() - start);
                let run = PfnRange::new(first.add(start as u64), first.add(i as u64));
                for_each_block(run, |p, k| g.free.insert(&mm, p, k));
            }
        }
        if let Some((p, mask)) = pending {
            p.activate(mask);
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
        self.grace.assert_not_reading();
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
        // One RMW of each section's active mask, as in `add_with`.
        let mut pending: Option<(usize, &Section, u64)> = None;
        for first in subsections() {
            let bit = 1 << first.subsection_in_section();
            pending = match pending {
                Some((nr, s, mask)) if nr == first.section() => Some((nr, s, mask | bit)),
                other => {
                    if let Some((_, s, mask)) = other {
                        s.deactivate(mask);
                    }
                    Some((first.section(), self.section(first), bit))
                }
            };
        }
        if let Some((_, s, mask)) = pending {
            s.deactivate(mask);
        }
        if self.race_bug() != RaceBug::NoGrace {
            self.grace.synchronize();
        }
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
        poison_block(p.cast());
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

    /// Section `nr` and its first pfn, if any of its subsections is present.
    fn present_section(&self, nr: usize) -> Result<(Pfn, &Section), MmError> {
        let first = section_start_pfn(nr);
        self.root
            .section(nr)
            .filter(|s| s.present() != 0)
            .map(|s| (first, s))
            .ok_or(MmError::NotActive(first))
    }

    /// Online a RAM section: its pages become reachable through `pfn_to_online_page` and
    /// may be populated into the allocator.
    pub fn online_section(&self, nr: usize) -> Result<(), MmError> {
        let mut g = self.inner.lock();
        let (first, s) = self.present_section(nr)?;
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
        let (_, s) = self.present_section(nr)?;
        let mm = Memmap::new(&self.root, &g.token);
        let present = s.present();
        for idx in (0..SUBSECTIONS_PER_SECTION).filter(|i| present & (1 << i) != 0) {
            let sub = subsection_start_pfn(nr, idx);
            let run = PfnRange::from_count(sub, PAGES_PER_SUBSECTION);
            if let Some((pfn, state)) = first_not_offline(&mm, run) {
                return Err(MmError::Busy { pfn, state });
            }
        }
        if s.online() {
            s.set_online(false);
            g.stats.sections_online -= 1;
        }
        Ok(())
    }
}
