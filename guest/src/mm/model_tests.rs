//! The model against a simple reference: random sequences of add / online / populate /
//! alloc / free / balloon / foreign map / offline / remove, checked after every step.

use std::collections::BTreeMap;
use std::vec::Vec;

use proptest::prelude::*;

use super::geometry::{subsection_start_pfn, Pfn, PfnRange, MAX_SECTIONS, PAGES_PER_SUBSECTION};
use super::page::{ForeignMap, PageState, StateKind};
use super::section::SectionKind;
use super::storage::HeapStorage;
use super::{MemModel, MmError, MAX_ORDER};

/// Sections used: low, adjacent-ish, in the middle of a 16 GiB chunk, the very top.
const SLOTS: [usize; 4] = [0, 3, 1 << 12, MAX_SECTIONS - 1];
/// Subsections per section the test uses (keeps the reference small).
const SUBS: usize = 4;

#[derive(Clone, Debug)]
enum Op {
    Add {
        slot: usize,
        idx: usize,
        n: usize,
        device: bool,
    },
    Remove {
        slot: usize,
        idx: usize,
        n: usize,
    },
    Online(usize),
    Offline(usize),
    Populate {
        slot: usize,
        idx: usize,
        block: u64,
        order: u8,
    },
    Alloc(u8),
    Free(usize),
    FreeAll,
    PopulateAll(usize),
    FreeAnywhere {
        slot: usize,
        idx: usize,
        block: u64,
        order: u8,
    },
    BalloonOut(u8),
    /// `balloon_out_from` of the slot's subsections.
    BalloonOutFrom {
        slot: usize,
        order: u8,
        max: usize,
    },
    /// `balloon_out_pages` of this many single pages.
    BalloonOutPages(usize),
    /// `populate_pages` of these offsets in a subsection, in this order.
    PopulatePages {
        slot: usize,
        idx: usize,
        offs: Vec<u64>,
    },
    Map {
        slot: usize,
        idx: usize,
        off: u64,
    },
    Unmap(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let slot = 0..SLOTS.len();
    let idx = 0..SUBS;
    prop_oneof![
        3 => (slot.clone(), idx.clone(), 1..3usize, any::<bool>())
            .prop_map(|(slot, idx, n, device)| Op::Add { slot, idx, n, device }),
        1 => (slot.clone(), idx.clone(), 1..3usize)
            .prop_map(|(slot, idx, n)| Op::Remove { slot, idx, n }),
        2 => slot.clone().prop_map(Op::Online),
        1 => slot.clone().prop_map(Op::Offline),
        4 => (slot.clone(), idx.clone(), 0..512u64, 0..=MAX_ORDER).prop_map(
            |(slot, idx, b, order)| Op::Populate { slot, idx, block: b >> order, order }
        ),
        4 => (0..=MAX_ORDER).prop_map(Op::Alloc),
        3 => any::<usize>().prop_map(Op::Free),
        1 => Just(Op::FreeAll),
        2 => (0..SLOTS.len()).prop_map(Op::PopulateAll),
        1 => (slot.clone(), idx.clone(), 0..512u64, 0..=MAX_ORDER).prop_map(
            |(slot, idx, b, order)| Op::FreeAnywhere { slot, idx, block: b >> order, order }
        ),
        2 => (0..=MAX_ORDER).prop_map(Op::BalloonOut),
        2 => (1..1200usize).prop_map(Op::BalloonOutPages),
        2 => (slot.clone(), 0..=MAX_ORDER, 1..40usize)
            .prop_map(|(slot, order, max)| Op::BalloonOutFrom { slot, order, max }),
        2 => (slot.clone(), idx.clone(), prop::collection::vec(0..512u64, 1..300))
            .prop_map(|(slot, idx, offs)| Op::PopulatePages { slot, idx, offs }),
        2 => (slot, idx, 0..512u64).prop_map(|(slot, idx, off)| Op::Map { slot, idx, off }),
        1 => any::<usize>().prop_map(Op::Unmap),
    ]
}

#[derive(Default)]
struct Reference {
    pages: BTreeMap<Pfn, StateKind>,
    kinds: BTreeMap<usize, SectionKind>,
    online: BTreeMap<usize, bool>,
    allocated: Vec<(Pfn, u8)>,
    foreign: Vec<(Pfn, ForeignMap)>,
    next_gref: u32,
    /// Pages that hold "our data": allocated since they last came from Xen. Freeing
    /// keeps the data; a balloon op that takes such a page must find it needing a scrub,
    /// and the page is clean once scrubbed (as the balloon would before Xen gets it).
    data: std::collections::BTreeSet<Pfn>,
}

fn sub_range(slot: usize, idx: usize, n: usize) -> PfnRange {
    let n = n.min(SUBS - idx);
    PfnRange::from_count(
        subsection_start_pfn(SLOTS[slot], idx),
        n as u64 * PAGES_PER_SUBSECTION,
    )
}

impl Reference {
    fn section_of(&self, pfn: Pfn) -> Option<(SectionKind, bool)> {
        if !self.pages.contains_key(&pfn) {
            return None;
        }
        let nr = pfn.section();
        Some((
            self.kinds[&nr],
            self.online.get(&nr).copied().unwrap_or(false),
        ))
    }

    fn all(&self, r: PfnRange, want: StateKind) -> bool {
        r.iter().all(|p| self.pages.get(&p) == Some(&want))
    }

    fn online_ram(&self, pfn: Pfn) -> bool {
        matches!(self.section_of(pfn), Some((k, true)) if k.is_ram())
    }

    /// Does an aligned all-Free block of `order` exist in online RAM?
    fn has_free_block(&self, order: u8) -> bool {
        let n = 1u64 << order;
        self.pages.iter().any(|(&p, &s)| {
            s == StateKind::Free
                && p.0 % n == 0
                && self.online_ram(p)
                && self.all(PfnRange::from_count(p, n), StateKind::Free)
        })
    }

    fn set(&mut self, r: PfnRange, s: StateKind) {
        for p in r.iter() {
            self.pages.insert(p, s);
        }
    }

    /// A block just taken for ballooning by a scrubbing take, `dirty` if the model took
    /// it Allocated for zeroing: every page of it that holds our data must be so. The
    /// block is then zeroed (its data gone) and handed on Offline, as the balloon does.
    fn ballooned(
        &mut self,
        m: &MemModel<HeapStorage>,
        block: PfnRange,
        dirty: bool,
    ) -> Result<(), TestCaseError> {
        for p in block.iter() {
            if self.data.remove(&p) {
                prop_assert!(dirty, "{:?} holds our data, taken without a scrub", p);
            }
        }
        if dirty {
            prop_assert!(self.all(block, StateKind::Free));
            prop_assert_eq!(
                m.offline_scrubbed(block.start, block.len().ilog2() as u8),
                Ok(())
            );
            // Handed on once: a second time finds it Offline.
            prop_assert!(m
                .offline_scrubbed(block.start, block.len().ilog2() as u8)
                .is_err());
        }
        self.set(block, StateKind::Offline);
        Ok(())
    }
}

fn apply(m: &MemModel<HeapStorage>, r: &mut Reference, op: &Op) -> Result<(), TestCaseError> {
    match *op {
        Op::Add {
            slot,
            idx,
            n,
            device,
        } => {
            let range = sub_range(slot, idx, n);
            let kind = if device {
                SectionKind::Device
            } else {
                SectionKind::HotplugRam
            };
            let nr = SLOTS[slot];
            let ok = range.iter().all(|p| !r.pages.contains_key(&p))
                && r.kinds.get(&nr).is_none_or(|&k| k == kind);
            let res = m.add_subsections(range, kind);
            prop_assert_eq!(res.is_ok(), ok, "add {:?}: {:?}", range, res);
            if ok {
                r.kinds.insert(nr, kind);
                let s = if device {
                    StateKind::Unpopulated
                } else {
                    StateKind::Offline
                };
                r.set(range, s);
            }
        }
        Op::Remove { slot, idx, n } => {
            let range = sub_range(slot, idx, n);
            let ok = range.iter().all(|p| {
                matches!(
                    r.pages.get(&p),
                    Some(StateKind::Offline | StateKind::Unpopulated)
                )
            });
            let res = m.remove_subsections(range);
            prop_assert_eq!(res.is_ok(), ok, "remove {:?}: {:?}", range, res);
            if ok {
                for p in range.iter() {
                    r.pages.remove(&p);
                }
                let nr = SLOTS[slot];
                let first = subsection_start_pfn(nr, 0);
                if r.pages.range(first..first.add(1 << 15)).next().is_none() {
                    r.kinds.remove(&nr);
                    r.online.remove(&nr);
                }
            }
        }
        Op::Online(slot) => {
            let nr = SLOTS[slot];
            let ok = r.kinds.get(&nr).is_some_and(|k| k.is_ram());
            prop_assert_eq!(m.online_section(nr).is_ok(), ok);
            if ok {
                r.online.insert(nr, true);
            }
        }
        Op::Offline(slot) => {
            let nr = SLOTS[slot];
            let first = subsection_start_pfn(nr, 0);
            let ok = r.kinds.contains_key(&nr)
                && r.pages
                    .range(first..first.add(1 << 15))
                    .all(|(_, &s)| s == StateKind::Offline);
            prop_assert_eq!(m.offline_section(nr).is_ok(), ok);
            if ok {
                r.online.insert(nr, false);
            }
        }
        Op::Populate {
            slot,
            idx,
            block,
            order,
        } => {
            let pfn = subsection_start_pfn(SLOTS[slot], idx).add(block << order);
            let range = PfnRange::from_count(pfn, 1 << order);
            let ok = r.online_ram(pfn) && r.all(range, StateKind::Offline);
            let res = m.populate(pfn, order);
            prop_assert_eq!(res.is_ok(), ok, "populate {:?}/{}: {:?}", pfn, order, res);
            if ok {
                r.set(range, StateKind::Free);
            }
        }
        Op::Alloc(order) | Op::BalloonOut(order) => {
            let ok = r.has_free_block(order);
            let balloon = matches!(op, Op::BalloonOut(_));
            let res = if balloon {
                m.balloon_out_scrubbing(order)
            } else {
                m.alloc_frames(order).map(|p| (p, false))
            };
            prop_assert_eq!(res.is_ok(), ok, "{:?}: {:?}", op, res);
            if let Ok((pfn, dirty)) = res {
                let range = PfnRange::from_count(pfn, 1 << order);
                prop_assert!(r.online_ram(pfn));
                prop_assert!(r.all(range, StateKind::Free), "handed out a non-free block");
                if balloon {
                    r.ballooned(m, range, dirty)?;
                } else {
                    r.set(range, StateKind::Allocated);
                    r.allocated.push((pfn, order));
                    r.data.extend(range.iter());
                }
            } else {
                prop_assert_eq!(res, Err(MmError::OutOfMemory { order }));
            }
        }
        Op::BalloonOutFrom { slot, order, max } => {
            let range = sub_range(slot, 0, SUBS);
            let mut got = Vec::new();
            let res = m.balloon_out_from(range, order, max, true, |p, d| got.push((p, d)));
            prop_assert_eq!(res, Ok(got.len()), "{:?}", op);
            prop_assert!(got.len() <= max);
            let size = 1u64 << order;
            for &(p, dirty) in &got {
                let block = PfnRange::from_count(p, size);
                prop_assert!(p.0 % size == 0 && range.contains(p), "{:?}: {:?}", op, p);
                prop_assert!(r.online_ram(p));
                prop_assert!(
                    r.all(block, StateKind::Free),
                    "{:?}: took a non-free block",
                    op
                );
                r.ballooned(m, block, dirty)?;
            }
            if got.len() < max {
                // Stopped short: no aligned all-Free block of `order` is left in range.
                let left = (range.start.0..range.end.0)
                    .step_by(size as usize)
                    .any(|p| {
                        r.online_ram(Pfn(p))
                            && r.all(PfnRange::from_count(Pfn(p), size), StateKind::Free)
                    });
                prop_assert!(!left, "{:?}: a free block was left behind", op);
            }
        }
        Op::BalloonOutPages(n) => {
            let free = r.pages.values().filter(|&&s| s == StateKind::Free).count();
            let mut got = Vec::new();
            let res = m.balloon_out_pages(n, true, |p, d| got.push((p, d)));
            prop_assert_eq!(res, Ok(n.min(free)), "{:?}", op);
            prop_assert_eq!(got.len(), n.min(free));
            for &(pfn, dirty) in &got {
                prop_assert!(r.online_ram(pfn));
                prop_assert_eq!(
                    r.pages.get(&pfn),
                    Some(&StateKind::Free),
                    "handed out twice or not free"
                );
                r.ballooned(m, PfnRange::from_count(pfn, 1), dirty)?;
            }
        }
        Op::PopulatePages {
            slot,
            idx,
            ref offs,
        } => {
            let first = subsection_start_pfn(SLOTS[slot], idx);
            let mut offs = offs.clone();
            // No duplicates (the contract), kept in the generated order.
            let mut seen = std::collections::BTreeSet::new();
            offs.retain(|&o| seen.insert(o));
            let pfns: Vec<Pfn> = offs.iter().map(|&o| first.add(o)).collect();
            let res = m.populate_pages(pfns);
            // Page by page, ascending: those before the first refused one join.
            let mut want_ok = true;
            for &o in seen.iter() {
                let pfn = first.add(o);
                if !(r.online_ram(pfn) && r.pages[&pfn] == StateKind::Offline) {
                    want_ok = false;
                    break;
                }
                r.pages.insert(pfn, StateKind::Free);
            }
            prop_assert_eq!(res.is_ok(), want_ok, "{:?}: {:?}", op, res);
        }
        Op::Free(i) => {
            if r.allocated.is_empty() {
                return Ok(());
            }
            let (pfn, order) = r.allocated.swap_remove(i % r.allocated.len());
            prop_assert_eq!(m.free_frames(pfn, order), Ok(()));
            r.set(PfnRange::from_count(pfn, 1 << order), StateKind::Free);
            // A second free of the same block is a double free.
            let again = m.free_frames(pfn, order);
            prop_assert!(matches!(again, Err(MmError::Illegal { .. })), "{:?}", again);
        }
        Op::FreeAll => {
            for (pfn, order) in core::mem::take(&mut r.allocated) {
                prop_assert_eq!(m.free_frames(pfn, order), Ok(()));
                r.set(PfnRange::from_count(pfn, 1 << order), StateKind::Free);
            }
        }
        Op::PopulateAll(slot) => {
            // Page by page, so that whole subsections only come back by coalescing.
            for idx in 0..SUBS {
                for pfn in sub_range(slot, idx, 1).iter() {
                    let ok = r.online_ram(pfn) && r.pages[&pfn] == StateKind::Offline;
                    prop_assert_eq!(m.populate(pfn, 0).is_ok(), ok);
                    if ok {
                        r.pages.insert(pfn, StateKind::Free);
                    }
                }
            }
        }
        Op::FreeAnywhere {
            slot,
            idx,
            block,
            order,
        } => {
            let pfn = subsection_start_pfn(SLOTS[slot], idx).add(block << order);
            let range = PfnRange::from_count(pfn, 1 << order);
            let ok = r.online_ram(pfn) && r.all(range, StateKind::Allocated);
            prop_assert_eq!(m.free_frames(pfn, order).is_ok(), ok);
            if ok {
                r.set(range, StateKind::Free);
                // Forget the blocks now freed (they may be parts of bigger ones).
                r.allocated.retain(|&(p, o)| {
                    !PfnRange::from_count(p, 1 << o)
                        .iter()
                        .any(|q| range.contains(q))
                });
                // Parts of a bigger allocated block that stay allocated: re-register them
                // as order-0 blocks so that Free(i) can still return them.
                let leftovers: Vec<Pfn> = r
                    .pages
                    .iter()
                    .filter(|(_, &s)| s == StateKind::Allocated)
                    .map(|(&p, _)| p)
                    .filter(|p| {
                        !r.allocated
                            .iter()
                            .any(|&(b, o)| PfnRange::from_count(b, 1 << o).contains(*p))
                    })
                    .collect();
                r.allocated.extend(leftovers.into_iter().map(|p| (p, 0)));
            }
        }
        Op::Map { slot, idx, off } => {
            let pfn = subsection_start_pfn(SLOTS[slot], idx).add(off);
            let ok = matches!(r.section_of(pfn), Some((SectionKind::Device, _)))
                && r.pages[&pfn] == StateKind::Unpopulated;
            r.next_gref += 1;
            let map = ForeignMap {
                domid: 7,
                gref: r.next_gref,
                handle: r.next_gref * 3,
            };
            prop_assert_eq!(m.map_foreign(pfn, map).is_ok(), ok);
            if ok {
                r.pages.insert(pfn, StateKind::Foreign);
                r.foreign.push((pfn, map));
            }
        }
        Op::Unmap(i) => {
            if r.foreign.is_empty() {
                return Ok(());
            }
            let (pfn, map) = r.foreign.swap_remove(i % r.foreign.len());
            prop_assert_eq!(m.unmap_foreign(pfn), Ok(map));
            r.pages.insert(pfn, StateKind::Unpopulated);
            prop_assert!(m.unmap_foreign(pfn).is_err(), "unmapped twice");
        }
    }
    Ok(())
}

fn check(m: &MemModel<HeapStorage>, r: &Reference) -> Result<(), TestCaseError> {
    let census = m
        .recount()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(census, m.census());
    for kind in [SectionKind::HotplugRam, SectionKind::Device] {
        for state in super::page::STATE_KINDS {
            let want = r
                .pages
                .iter()
                .filter(|(p, &s)| s == state && r.kinds[&p.section()] == kind)
                .count() as u64;
            prop_assert_eq!(census.pages_of(kind, state), want, "{} {}", kind, state);
        }
    }
    let guard = m.read();
    for &nr in &SLOTS {
        for idx in 0..SUBS {
            let first = subsection_start_pfn(nr, idx);
            for pfn in [first, first.add(1), first.add(PAGES_PER_SUBSECTION - 1)] {
                let want = r.pages.get(&pfn).copied();
                prop_assert_eq!(m.pfn_valid(pfn), want.is_some());
                prop_assert_eq!(m.pfn_active(pfn), want.is_some());
                let sec = r.section_of(pfn);
                let online = guard.pfn_to_online_page(pfn);
                let device = guard.pfn_to_device_page(pfn);
                let want_online = matches!(sec, Some((k, true)) if k.is_ram());
                let want_device = matches!(sec, Some((SectionKind::Device, _)));
                prop_assert_eq!(online.is_some(), want_online, "{:?}", pfn);
                prop_assert_eq!(device.is_some(), want_device, "{:?}", pfn);
                if let Some(p) = online.or(device) {
                    prop_assert_eq!(Some(p.state().kind()), want);
                }
                // Outside the subsections the test uses, nothing is ever reachable.
                let beyond = subsection_start_pfn(nr, SUBS).add(pfn.index_in_subsection() as u64);
                prop_assert!(guard.pfn_to_page(beyond).is_none());
            }
        }
    }
    // The walker visits exactly the reference's pages, in order.
    let walked: Vec<Pfn> = guard
        .active_pages(PfnRange::new(Pfn(0), Pfn(u64::MAX)))
        .map(|p| p.pfn())
        .collect();
    let want: Vec<Pfn> = r.pages.keys().copied().collect();
    prop_assert_eq!(walked, want);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]
    #[test]
    fn model_agrees_with_reference(ops in prop::collection::vec(op(), 1..60)) {
        let m = MemModel::new(HeapStorage);
        m.end_boot();
        let mut r = Reference::default();
        for op in &ops {
            apply(&m, &mut r, op)?;
            check(&m, &r)?;
        }
    }
}

/// Allocator and balloon ops only, on two online RAM sections whose memory Xen has
/// populated: pages holding our data are freed and ballooned out often.
fn data_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..=MAX_ORDER).prop_map(Op::Alloc),
        3 => any::<usize>().prop_map(Op::Free),
        1 => Just(Op::FreeAll),
        2 => (0..2usize).prop_map(Op::PopulateAll),
        2 => (0..=MAX_ORDER).prop_map(Op::BalloonOut),
        2 => (1..1200usize).prop_map(Op::BalloonOutPages),
        1 => (0..2usize, 0..=MAX_ORDER, 1..40usize)
            .prop_map(|(slot, order, max)| Op::BalloonOutFrom { slot, order, max }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]
    /// No page that held our data leaves for Xen without `needs_scrub` saying so (the
    /// check is in `Reference::ballooned`).
    #[test]
    fn pages_with_our_data_always_need_a_scrub(ops in prop::collection::vec(data_op(), 1..80)) {
        let m = MemModel::new(HeapStorage);
        m.end_boot();
        let mut r = Reference::default();
        for slot in 0..2 {
            let setup = [
                Op::Add { slot, idx: 0, n: 4, device: false },
                Op::Online(slot),
                Op::PopulateAll(slot),
            ];
            for op in &setup {
                apply(&m, &mut r, op)?;
            }
        }
        for op in &ops {
            apply(&m, &mut r, op)?;
            check(&m, &r)?;
        }
    }
}

#[test]
fn check_offline_names_the_first_page_that_is_not() {
    let m = MemModel::new(HeapStorage);
    m.end_boot();
    let nr = 40;
    let first = subsection_start_pfn(nr, 0);
    let whole = PfnRange::from_count(first, 1 << 15);
    let kind = SectionKind::HotplugRam;
    assert_eq!(m.check_offline(whole, kind), Err(MmError::NotActive(first)));
    m.add_section(nr, kind).unwrap();
    assert!(matches!(
        m.check_offline(whole, kind),
        Err(MmError::WrongSection { online: false, .. })
    ));
    m.online_section(nr).unwrap();
    assert_eq!(m.check_offline(whole, kind), Ok(()));
    assert!(matches!(
        m.check_offline(whole, SectionKind::BootRam),
        Err(MmError::WrongSection { online: true, .. })
    ));
    // One Free block in the fourth subsection: its first page is named, even for a
    // range that starts in the middle of a subsection.
    let sub3 = subsection_start_pfn(nr, 3);
    m.populate(sub3.add(8), 3).unwrap();
    let busy = Err(MmError::Busy {
        pfn: sub3.add(8),
        state: StateKind::Free,
    });
    assert_eq!(m.check_offline(whole, kind), busy);
    assert_eq!(
        m.check_offline(PfnRange::new(first.add(5), sub3.add(9)), kind),
        busy
    );
    assert_eq!(
        m.check_offline(PfnRange::new(first.add(5), sub3.add(8)), kind),
        Ok(())
    );
    assert_eq!(
        m.check_offline(PfnRange::new(sub3.add(16), whole.end), kind),
        Ok(())
    );
    // Past the section: the next one is not there.
    assert_eq!(
        m.check_offline(PfnRange::new(sub3.add(16), whole.end.add(1)), kind),
        Err(MmError::NotActive(whole.end))
    );
}

#[test]
fn hotplug_section_life_cycle() {
    let m = MemModel::new(HeapStorage);
    m.end_boot();
    let nr = 40; // 5 GiB
    m.add_section(nr, SectionKind::HotplugRam).unwrap();
    let c = m.census();
    assert_eq!(
        c.pages_of(SectionKind::HotplugRam, StateKind::Offline),
        1 << 15
    );
    assert_eq!(
        c.pages_in(StateKind::Reserved),
        0,
        "hotplugged memory is never Reserved"
    );
    let first = subsection_start_pfn(nr, 0);
    assert!(
        m.read().pfn_to_online_page(first).is_none(),
        "not online yet"
    );
    assert!(m.read().pfn_to_page(first).is_some());
    assert!(matches!(
        m.populate(first, 9),
        Err(MmError::WrongSection { .. })
    ));
    m.online_section(nr).unwrap();
    m.populate(first, 9).unwrap();
    assert_eq!(
        m.read().pfn_to_online_page(first).unwrap().state(),
        PageState::Free
    );
    assert!(matches!(m.remove_section(nr), Err(MmError::Busy { .. })));
    assert!(matches!(m.offline_section(nr), Err(MmError::Busy { .. })));
    assert_eq!(m.balloon_out_subsection().unwrap(), first);
    m.offline_section(nr).unwrap();
    m.remove_section(nr).unwrap();
    assert!(!m.pfn_valid(first));
    assert!(m.sections().next().is_none());
    let c = m.recount().unwrap();
    assert_eq!(
        (c.pages_total(), c.memmap_bytes, c.sections_online),
        (0, 0, 0)
    );
}

/// A model with one online hot-plug section of which the first four subsections are
/// present and wholly Free.
fn four_free_subsections() -> MemModel<HeapStorage> {
    let m = MemModel::new(HeapStorage);
    m.add_subsections(
        PfnRange::from_count(Pfn(0), 4 * 512),
        SectionKind::HotplugRam,
    )
    .unwrap();
    m.online_section(0).unwrap();
    for s in 0..4 {
        m.populate(Pfn(s * 512), 9).unwrap();
    }
    m
}

#[test]
fn single_pages_go_out_as_few_blocks_and_come_back_whole() {
    let m = four_free_subsections();
    // 300 pages = 256 + 32 + 8 + 4: four blocks, all from one subsection.
    let mut got = Vec::new();
    assert_eq!(m.balloon_out_pages(300, false, |p, _| got.push(p)), Ok(300));
    assert!(got.iter().all(|p| p.subsection() == got[0].subsection()));
    let c = m.recount().unwrap();
    assert_eq!(c.free_blocks[9], 3);
    assert_eq!(
        c.free_blocks[..9].iter().sum::<u64>(),
        4,
        "{:?}",
        c.free_blocks
    );
    // Back in any order: the runs rejoin as whole blocks, and the subsection merges.
    got.reverse();
    got.swap(3, 200);
    m.populate_pages(got.iter().copied()).unwrap();
    let c = m.recount().unwrap();
    assert_eq!(c.free_blocks[9], 4);
    assert_eq!(c.free_blocks[..9].iter().sum::<u64>(), 0);
    // More than there is: everything free, then a clean stop.
    let mut all = Vec::new();
    assert_eq!(
        m.balloon_out_pages(5000, false, |p, _| all.push(p)),
        Ok(2048)
    );
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 2048);
    // A page that is not Offline stops the populate there, ascending; nothing after it
    // changes.
    m.populate(Pfn(10), 0).unwrap();
    let err = m.populate_pages([Pfn(12), Pfn(9), Pfn(10), Pfn(11)]);
    assert!(err.is_err(), "{err:?}");
    let guard = m.read();
    let state = |p: u64| guard.pfn_to_online_page(Pfn(p)).unwrap().state().kind();
    assert_eq!(state(9), StateKind::Free);
    assert_eq!(state(11), StateKind::Offline);
    assert_eq!(state(12), StateKind::Offline);
}

#[test]
fn balloon_out_from_finds_the_last_free_pages_and_skips_when_there_are_none() {
    let m = MemModel::new(HeapStorage);
    let range = PfnRange::from_count(Pfn(0), 4 * 512);
    m.add_subsections(range, SectionKind::HotplugRam).unwrap();
    m.online_section(0).unwrap();
    // All Offline: nothing to find (the census says so without a scan).
    assert_eq!(m.balloon_out_from(range, 0, 100, false, |_, _| {}), Ok(0));
    // Eight free pages in the last subsection: all found, one by one.
    m.populate(Pfn(3 * 512 + 40), 3).unwrap();
    let mut got = Vec::new();
    assert_eq!(
        m.balloon_out_from(range, 0, 100, false, |p, _| got.push(p)),
        Ok(8)
    );
    assert_eq!(got.first(), Some(&Pfn(3 * 512 + 40)));
    assert_eq!(m.balloon_out_from(range, 0, 100, false, |_, _| {}), Ok(0));
    assert_eq!(
        m.census()
            .pages_of(SectionKind::HotplugRam, StateKind::Free),
        0
    );
}

#[test]
fn buddy_coalesces_back_to_whole_subsections() {
    let m = four_free_subsections();
    let mut got = Vec::new();
    for order in [0u8, 3, 0, 1, 9, 2, 0, 5, 7, 0] {
        got.push((m.alloc_frames(order).unwrap(), order));
    }
    m.recount().unwrap();
    for &(p, o) in got.iter().rev() {
        m.free_frames(p, o).unwrap();
    }
    let c = m.recount().unwrap();
    assert_eq!(c.free_blocks[9], 4);
    assert_eq!(c.free_blocks[..9].iter().sum::<u64>(), 0);
    // A specific page can be ballooned out of the middle of a block, and back.
    m.balloon_out_pfn(Pfn(777)).unwrap();
    assert_eq!(m.recount().unwrap().free_blocks[9], 3);
    m.populate(Pfn(777), 0).unwrap();
    assert_eq!(m.recount().unwrap().free_blocks[9], 4);
}

#[test]
fn illegal_transitions_are_refused_and_change_nothing() {
    let m = MemModel::new(HeapStorage);
    m.add_subsections(PfnRange::from_count(Pfn(0), 512), SectionKind::HotplugRam)
        .unwrap();
    m.add_subsections(PfnRange::from_count(Pfn(1 << 15), 512), SectionKind::Device)
        .unwrap();
    m.online_section(0).unwrap();
    m.populate(Pfn(0), 8).unwrap();
    let before = m.recount().unwrap();
    // Offline -> Allocated (freeing an unpopulated page).
    assert!(matches!(
        m.free_frames(Pfn(300), 0),
        Err(MmError::Illegal { .. })
    ));
    // Free -> Free.
    assert!(matches!(
        m.populate(Pfn(0), 0),
        Err(MmError::Illegal { .. })
    ));
    // Foreign mappings only in device sections, Foreign -> Free never.
    let map = ForeignMap {
        domid: 1,
        gref: 2,
        handle: 3,
    };
    assert!(matches!(
        m.map_foreign(Pfn(0), map),
        Err(MmError::WrongSection { .. })
    ));
    m.map_foreign(Pfn(1 << 15), map).unwrap();
    assert!(matches!(
        m.free_frames(Pfn(1 << 15), 0),
        Err(MmError::WrongSection { .. })
    ));
    assert!(matches!(
        m.map_foreign(Pfn(1 << 15), map),
        Err(MmError::Illegal { .. })
    ));
    assert!(matches!(
        m.online_section(1),
        Err(MmError::WrongSection { .. })
    ));
    m.unmap_foreign(Pfn(1 << 15)).unwrap();
    // Reserve is boot-only; a partly illegal range changes nothing.
    assert!(matches!(
        m.reserve(PfnRange::from_count(Pfn(250), 10)),
        Err(MmError::Illegal { .. })
    ));
    assert_eq!(m.recount().unwrap(), before);
    m.reserve(PfnRange::from_count(Pfn(10), 3)).unwrap();
    m.end_boot();
    assert!(matches!(
        m.reserve(PfnRange::from_count(Pfn(20), 1)),
        Err(MmError::Illegal { .. })
    ));
    m.release_reserved(PfnRange::from_count(Pfn(10), 3))
        .unwrap();
    assert_eq!(
        m.recount().unwrap().free_blocks[8],
        1,
        "released pages coalesce"
    );
}

#[test]
fn misuse_gives_typed_errors() {
    let m = MemModel::new(HeapStorage);
    assert_eq!(m.alloc_frames(10), Err(MmError::BadOrder(10)));
    assert_eq!(m.alloc_frames(0), Err(MmError::OutOfMemory { order: 0 }));
    assert_eq!(
        m.free_frames(Pfn(3), 1),
        Err(MmError::Misaligned {
            pfn: Pfn(3),
            order: 1
        })
    );
    assert_eq!(
        m.free_frames(Pfn(1 << 34), 0),
        Err(MmError::OutOfRange(Pfn(1 << 34)))
    );
    assert_eq!(m.free_frames(Pfn(0), 0), Err(MmError::NotActive(Pfn(0))));
    assert!(matches!(
        m.add_subsections(PfnRange::from_count(Pfn(1), 512), SectionKind::Device),
        Err(MmError::Misaligned { .. })
    ));
    m.add_subsections(PfnRange::from_count(Pfn(0), 512), SectionKind::Device)
        .unwrap();
    assert_eq!(
        m.add_subsections(PfnRange::from_count(Pfn(0), 512), SectionKind::Device),
        Err(MmError::AlreadyPresent(Pfn(0)))
    );
    assert!(matches!(
        m.add_subsections(PfnRange::from_count(Pfn(512), 512), SectionKind::HotplugRam),
        Err(MmError::KindMismatch { .. })
    ));
}

#[derive(Clone, Debug)]
enum BuddyOp {
    Alloc(u8),
    Free(usize),
    BalloonOutPfn(u64),
    Populate(usize),
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]
    /// Random alloc / free / balloon sequences over 3 online subsections: blocks never
    /// overlap, counts close after every step, and freeing everything coalesces back to
    /// three order-9 blocks.
    #[test]
    fn buddy_invariants_hold(ops in prop::collection::vec(prop_oneof![
        4 => (0..=MAX_ORDER).prop_map(BuddyOp::Alloc),
        3 => any::<usize>().prop_map(BuddyOp::Free),
        1 => (0..3 * 512u64).prop_map(BuddyOp::BalloonOutPfn),
        1 => any::<usize>().prop_map(BuddyOp::Populate),
    ], 1..120)) {
        const PAGES: u64 = 3 * 512;
        let m = MemModel::new(HeapStorage);
        m.add_subsections(PfnRange::from_count(Pfn(0), PAGES), SectionKind::HotplugRam)
            .unwrap();
        m.online_section(0).unwrap();
        for s in 0..3 {
            m.populate(Pfn(s * 512), 9).unwrap();
        }
        let mut owner = [0u8; PAGES as usize]; // 0 free, 1 allocated, 2 ballooned
        let mut blocks: Vec<(Pfn, u8)> = Vec::new();
        let mut ballooned: Vec<Pfn> = Vec::new();
        for op in &ops {
            match *op {
                BuddyOp::Alloc(order) => match m.alloc_frames(order) {
                    Ok(p) => {
                        prop_assert!(p.0.is_multiple_of(1 << order));
                        for i in p.0..p.0 + (1 << order) {
                            prop_assert_eq!(owner[i as usize], 0, "double allocation");
                            owner[i as usize] = 1;
                        }
                        blocks.push((p, order));
                    }
                    Err(e) => {
                        prop_assert_eq!(e, MmError::OutOfMemory { order });
                        // Full coalescing: no aligned free run of this order exists.
                        let n = 1usize << order;
                        prop_assert!(!owner.chunks(n).any(|c| c.iter().all(|&o| o == 0)));
                    }
                },
                BuddyOp::Free(i) if !blocks.is_empty() => {
                    let (p, o) = blocks.swap_remove(i % blocks.len());
                    m.free_frames(p, o).unwrap();
                    owner[p.0 as usize..(p.0 + (1 << o)) as usize].fill(0);
                }
                BuddyOp::BalloonOutPfn(p) => {
                    let res = m.balloon_out_pfn(Pfn(p));
                    prop_assert_eq!(res.is_ok(), owner[p as usize] == 0);
                    if res.is_ok() {
                        owner[p as usize] = 2;
                        ballooned.push(Pfn(p));
                    }
                }
                BuddyOp::Populate(i) if !ballooned.is_empty() => {
                    let p = ballooned.swap_remove(i % ballooned.len());
                    m.populate(p, 0).unwrap();
                    owner[p.0 as usize] = 0;
                }
                _ => {}
            }
            let c = m.recount().map_err(|e| TestCaseError::fail(e.to_string()))?;
            let count = |v| owner.iter().filter(|&&o| o == v).count() as u64;
            prop_assert_eq!(c.pages_in(StateKind::Free), count(0));
            prop_assert_eq!(c.pages_in(StateKind::Allocated), count(1));
            prop_assert_eq!(c.pages_in(StateKind::Offline), count(2));
        }
        for (p, o) in blocks {
            m.free_frames(p, o).unwrap();
        }
        for p in ballooned {
            m.populate(p, 0).unwrap();
        }
        let c = m.recount().map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(c.free_blocks[9], 3);
        prop_assert_eq!(c.free_blocks.iter().sum::<u64>(), 3);
    }
}
