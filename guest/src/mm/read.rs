//! The read side: a walker enters a read-side critical section ([`ReadGuard`]) and
//! reaches descriptors only through `pfn_to_page` / `pfn_to_online_page` /
//! `pfn_to_device_page` (the seed's API) or [`ActivePages`]. Each lookup checks the
//! subsection's active bit (Acquire, pairing with the Release that publishes a built
//! memmap); removal clears the bit and waits for every guard before freeing the memmap.

use core::fmt;
use core::ptr::NonNull;

use super::geometry::{
    section_start_pfn, subsection_start_pfn, Pfn, PfnRange, MAX_PFN, PAGES_PER_SUBSECTION,
};
use super::grace::ReadToken;
use super::page::{PageDesc, PageState};
use super::section::{SectionKind, SectionRoot};

/// A read-side critical section. Descriptors reached through it stay valid until it is
/// dropped; removal waits for it.
pub struct ReadGuard<'m> {
    root: &'m SectionRoot,
    _token: ReadToken<'m>,
}

impl<'m> ReadGuard<'m> {
    /// Enters a read-side critical section over `root` (the caller took `token`).
    pub(super) fn new(root: &'m SectionRoot, token: ReadToken<'m>) -> Self {
        ReadGuard {
            root,
            _token: token,
        }
    }
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
    /// State and RAM-ness, or `None` if the descriptor holds no valid state — which the
    /// model promises never happens to a page reached through a guard (the race
    /// walkers count it as a detection).
    pub fn checked(&self) -> Option<(PageState, bool)> {
        self.desc.checked()
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

    /// Changes so far to section `nr` (subsections going active/inactive, device pages
    /// mapped/unmapped); 0 for a section that never existed. A walker that reads it
    /// before and after a pass over the section knows whether the pass overlapped one.
    pub fn section_changes(&self, nr: usize) -> u64 {
        self.root.section(nr).map_or(0, |s| s.changes())
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
