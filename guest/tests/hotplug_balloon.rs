//! Memory hotplug and hot-remove against the simulated Xen: the balloon's NeedHotplug
//! turned into hot-added sections, populated at order 9, emptied first on the way down,
//! removed with their memmap freed, re-added; failures rolled back and retried without
//! spinning; the saveable-page walker interleaved with all of it.

mod common;

use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use common::{booted, poison, pvh_memmap, Quarantine, ACPI, MIB, SPECIAL};
use guest::mm::geometry::{section_start_pfn, MAX_PFN, PAGES_PER_SECTION, PAGES_PER_SUBSECTION};
use guest::mm::hotplug::{hot_add, hot_remove_section, saveable_walk, HotplugError, HotplugWindow};
use guest::mm::{
    Budgeted, BumpStorage, FrameReserve, HeapFrames, HeapStorage, MemModel, MemmapStorage, MmError,
    PageState, Pfn, PfnRange, SectionKind, StateKind, MEMMAP_BYTES_PER_SUBSECTION,
};
use guest::xen::balloon::{Balloon, BalloonConfig, StepOutcome};
use guest::xen::hotplug::{Hotplug, HotplugCounters, HotplugOutcome};
use xen_bindings::sim::memory::SimMemory;
use xen_bindings::traits::MemoryReservation;

const SEC: u64 = 1_000_000_000;
const NONRAM: u64 = ACPI.1 + SPECIAL.1;
const SECTION_MEMMAP: u64 = 64 * MEMMAP_BYTES_PER_SUBSECTION as u64;

struct World<S: MemmapStorage> {
    mm: MemModel<S>,
    xen: SimMemory,
    now: u64,
    balloon: Balloon,
    hp: Hotplug,
    /// Ranges the "kernel" mapped, in order.
    mapped: Vec<PfnRange>,
}

/// memory == maxmem == `ram_mib`; `xl mem-max` already raised Xen's limit to `max_mib`.
/// First section of the default hot-add window: 4 GiB of device window from 4 GiB, then
/// hot-added RAM (`HotplugWindow`).
const HP: usize = 64;
/// Its first byte.
const HP_BASE: u64 = 8 << 30;

fn world<S: MemmapStorage>(ram_mib: u64, max_mib: u64, storage: S) -> World<S> {
    let map = pvh_memmap(ram_mib);
    let reserved = [
        PfnRange::covering_bytes(MIB, 2 * MIB + 123),
        PfnRange::covering_bytes(0x1000, 0x100),
    ];
    let mm = booted(&map, &reserved, storage);
    let pages = ram_mib * 256;
    let xen = SimMemory::new(&[(0, pages), ACPI, SPECIAL], max_mib * 256 + NONRAM + 256);
    let hp = Hotplug::new(HotplugWindow::from_memmap(&map).unwrap());
    let mut w = World {
        mm,
        xen,
        now: SEC,
        balloon: Balloon::new(BalloonConfig::default()),
        hp,
        mapped: Vec::new(),
    };
    w.balloon
        .adopt_boot_offline(&w.mm, &mut w.xen, w.now)
        .unwrap();
    w
}

fn kib(mib: u64) -> Vec<u8> {
    format!("{}", mib * 1024).into_bytes()
}

fn ram<S: MemmapStorage>(w: &World<S>) -> u64 {
    w.mm.census().ram_pages()
}

/// Run the kernel's loop until the balloon rests: NeedHotplug goes to the hotplug driver
/// (whose `map` checks that nothing of the range is backed or in use yet), backoffs are
/// waited out, and at rest emptied hot-added sections are removed.
fn settle<S: MemmapStorage>(w: &mut World<S>) -> StepOutcome {
    let mut backoffs = 0;
    for _ in 0..20_000 {
        let o = w.balloon.step(&w.mm, &mut w.xen, w.now);
        match o {
            StepOutcome::Progress => continue,
            StepOutcome::BackingOff { until_ns } => {
                // As the kernel: still above the target, emptied hot-added sections go
                // (their memmap may be what is left to give back).
                let r = w.hp.try_hot_remove(&w.mm, &mut w.balloon);
                if !r.sections.is_empty() && w.balloon.above_target(&w.mm) {
                    w.balloon.retry_now();
                    continue;
                }
                // Stuck (e.g. nothing free to give back): the caller checks and moves on.
                backoffs += 1;
                if backoffs == 12 {
                    return o;
                }
                w.now = until_ns
            }
            StepOutcome::NeedHotplug { pages } => {
                let (mm, xen, mapped) = (&w.mm, &w.xen, &mut w.mapped);
                let r =
                    w.hp.on_need_hotplug(mm, &mut w.balloon, pages, w.now, |range| {
                        // Mapped before anything is populated or touched.
                        assert_eq!(xen.populated_in(range.start.0, range.end.0), 0);
                        let g = mm.read();
                        assert!(g
                            .active_pages(range)
                            .all(|p| p.state() == PageState::Offline));
                        mapped.push(range);
                        Ok::<(), &str>(())
                    });
                match r {
                    HotplugOutcome::Added(_) => continue,
                    HotplugOutcome::BackingOff { .. } => return o,
                }
            }
            StepOutcome::Done | StepOutcome::Error => {
                w.hp.try_hot_remove(&w.mm, &mut w.balloon);
                if o == StepOutcome::Done && w.hp.evacuate(&w.mm, &mut w.balloon, &mut w.xen) != 0 {
                    continue;
                }
                return o;
            }
        }
    }
    panic!("never rested");
}

/// Invariants: census consistent; every Offline RAM page unbacked, every Free/Allocated/
/// Reserved RAM page touchable; the accounting offset constant; every hot-added page is
/// either populated or on the balloon's lists; the walker reads only backed frames.
fn check<S: MemmapStorage>(w: &mut World<S>) {
    let c = w.mm.recount().expect("census consistent");
    assert_eq!(c, w.mm.census());
    {
        let g = w.mm.read();
        for p in g.active_pages(PfnRange::new(Pfn(0), Pfn(MAX_PFN))) {
            if !p.is_ram() {
                continue;
            }
            match p.state() {
                PageState::Offline => assert!(!w.xen.is_populated(p.pfn().0), "{p:?} backed"),
                PageState::Free | PageState::Allocated | PageState::Reserved => {
                    assert!(w.xen.touch(p.pfn().0), "{p:?}: {:?}", w.xen.killed)
                }
                s => panic!("{p:?} in {s:?}"),
            }
        }
    }
    assert!(w.xen.killed.is_none());
    let offset = w.balloon.accounting_offset().unwrap();
    assert_eq!(w.xen.tot_pages() as i64 - c.ram_pages() as i64, offset);
    assert_eq!(w.balloon.counters().accounting_mismatches, 0);
    // Every hot-added section is managed by the balloon: its Offline pages are exactly
    // the ballooned ones.
    for s in w.mm.sections() {
        if s.kind != Some(SectionKind::HotplugRam) {
            assert!(!w.hp.window().ram_sections().contains(&s.nr));
            continue;
        }
        assert!(s.online && s.active == u64::MAX && s.present == u64::MAX);
        let range = PfnRange::from_count(section_start_pfn(s.nr), PAGES_PER_SECTION);
        let counts = w.mm.section_pages(s.nr).unwrap();
        assert_eq!(
            counts[StateKind::Offline.index()],
            w.balloon.ballooned_in(range)
        );
        assert_eq!(
            counts[StateKind::Reserved.index()],
            0,
            "hot-added never Reserved"
        );
    }
    // The walker reads exactly the online Free/Allocated pages, all backed.
    let xen = &mut w.xen;
    let st = saveable_walk(&w.mm, PfnRange::new(Pfn(0), Pfn(MAX_PFN)), |pfn| {
        assert!(xen.touch(pfn.0), "walker read an unbacked frame {pfn:?}");
        pfn.0.wrapping_mul(0x9e37_79b9)
    });
    assert_eq!(
        st.pages,
        c.pages_in(StateKind::Free) + c.pages_in(StateKind::Allocated)
    );
    assert_eq!(
        st.skipped_in(StateKind::Offline),
        c.pages_in(StateKind::Offline)
    );
    assert_eq!(st.seen, c.pages_total());
}

fn hotplug_sections<S: MemmapStorage>(w: &World<S>) -> Vec<usize> {
    w.mm.sections()
        .filter(|s| s.kind == Some(SectionKind::HotplugRam))
        .map(|s| s.nr)
        .collect()
}

fn census_field<S: MemmapStorage>(mm: &MemModel<S>, key: &str) -> u64 {
    mm.census()
        .fields()
        .find(|(k, _)| k.to_string() == key)
        .unwrap_or_else(|| panic!("no {key}"))
        .1
}

fn hp_field<S: MemmapStorage>(w: &World<S>, key: &str) -> String {
    w.hp.status(&w.mm)
        .fields()
        .find(|(k, _)| *k == key)
        .unwrap_or_else(|| panic!("no {key}"))
        .1
}

/// `hotplug-add` then `hotplug-remove`: 256 MiB, mem-max 1024, mem-set 768 → hot-add of
/// 4 sections at 4 GiB, populated at order 9; down to 128 → hot-added sections emptied
/// first and removed, memmap freed; up again → re-added on the same storage.
#[test]
fn hot_add_populate_remove_and_re_add() {
    let mut buf = vec![0u64; (8 * MIB / 8) as usize];
    let base = NonNull::new(buf.as_mut_ptr().cast::<u8>()).unwrap();
    // SAFETY: `buf` is 8 MiB, owned by this test and outlives the model (dropped below).
    // The provider claims guest pages [128 MiB, 136 MiB): boot marks them Reserved.
    let storage = unsafe { BumpStorage::new(base, PfnRange::from_count(Pfn(0x8000), 2048)) };
    let mut w = world(256, 1024, storage);
    let boot_memmap = w.mm.census().memmap_bytes;
    w.balloon.set_target(&kib(256), 1024 * 1024, w.now).unwrap();
    assert_eq!(settle(&mut w), StepOutcome::Done);

    // xl mem-set 768.
    w.balloon.set_target(&kib(768), 1024 * 1024, w.now).unwrap();
    let populated9 = w.balloon.counters().populated[1];
    assert_eq!(settle(&mut w), StepOutcome::Done);
    assert_eq!(ram(&w), 768 * 256);
    check(&mut w);
    let hp_base = Pfn::from_addr(HP_BASE);
    assert_eq!(hotplug_sections(&w), [HP, HP + 1, HP + 2, HP + 3]);
    assert_eq!(
        w.mapped,
        [PfnRange::from_count(hp_base, 4 * PAGES_PER_SECTION)]
    );
    assert_eq!(
        w.balloon.counters().populated[1] - populated9,
        4 * 64,
        "order 9 per subsection"
    );
    assert_eq!(
        w.xen
            .populated_in(hp_base.0, hp_base.0 + 4 * PAGES_PER_SECTION),
        4 * PAGES_PER_SECTION
    );
    assert_eq!(census_field(&w.mm, "sections/hotplug-ram/present"), 4);
    assert_eq!(census_field(&w.mm, "sections/hotplug-ram/online"), 4);
    assert_eq!(census_field(&w.mm, "subsections/hotplug-ram/active"), 256);
    assert_eq!(census_field(&w.mm, "kib/hotplug-ram"), 512 * 1024);
    assert_eq!(
        census_field(&w.mm, "memmap-bytes/hotplug-ram"),
        4 * SECTION_MEMMAP
    );
    assert_eq!(census_field(&w.mm, "sections/boot-ram/present"), 2);
    assert_eq!(w.mm.census().memmap_bytes, boot_memmap + 4 * SECTION_MEMMAP);
    assert_eq!(hp_field(&w, "sections-added"), "4");
    assert_eq!(hp_field(&w, "kib"), "524288");
    assert_eq!(hp_field(&w, "window/ram-start"), format!("{HP_BASE:#x}"));
    let used = w.mm.with_storage(|s| s.used_bytes());

    // Reorder the free lists so that boot RAM is what the allocator hands out first
    // (freed last): the preference for hot-added memory must come from the balloon.
    let mut all = Vec::new();
    while let Ok(p) = w.mm.alloc_frames(9) {
        all.push(p);
    }
    all.sort_by_key(|p| std::cmp::Reverse(*p));
    for p in all {
        w.mm.free_frames(p, 9).unwrap();
    }
    let first = w.mm.alloc_frames(9).unwrap();
    assert!(first.0 < hp_base.0, "boot RAM first in the allocator");
    w.mm.free_frames(first, 9).unwrap();

    // Down to 600: only hot-added memory goes, highest section first.
    w.balloon.set_target(&kib(600), 1024 * 1024, w.now).unwrap();
    assert_eq!(settle(&mut w), StepOutcome::Done);
    check(&mut w);
    // 168 MiB out: section HP+3 (128 MiB) emptied and removed, 40 MiB of section HP+2.
    let c = w.mm.census();
    assert_eq!(c.pages_of(SectionKind::BootRam, StateKind::Offline), 0);
    assert_eq!(
        c.pages_of(SectionKind::HotplugRam, StateKind::Offline),
        40 * 256
    );
    assert_eq!(hotplug_sections(&w), [HP, HP + 1, HP + 2]);
    assert_eq!(w.hp.counters().sections_removed, 1);
    assert_eq!(w.mm.census().memmap_bytes, boot_memmap + 3 * SECTION_MEMMAP);
    let s34 = w.mm.section_pages(HP + 2).unwrap();
    assert_eq!(s34[StateKind::Offline.index()], 40 * 256);

    // Down to 128: every hot-added section removed, memmap back to the boot amount.
    w.balloon.set_target(&kib(128), 1024 * 1024, w.now).unwrap();
    assert_eq!(settle(&mut w), StepOutcome::Done);
    check(&mut w);
    assert_eq!(ram(&w), 128 * 256);
    assert!(hotplug_sections(&w).is_empty());
    assert_eq!(w.mm.census().memmap_bytes, boot_memmap);
    assert_eq!(census_field(&w.mm, "memmap-bytes/hotplug-ram"), 0);
    assert_eq!(census_field(&w.mm, "subsections/hotplug-ram/active"), 0);
    assert_eq!(
        hp_field(&w, "memmap-freed-bytes"),
        format!("{}", 4 * SECTION_MEMMAP)
    );
    assert_eq!(
        w.xen
            .populated_in(hp_base.0, hp_base.0 + 64 * PAGES_PER_SECTION),
        0
    );
    assert!(w.balloon.hotplugged().is_empty());
    assert_eq!(
        w.balloon.ballooned_pages(),
        128 * 256,
        "only boot RAM is ballooned"
    );

    // Up again: boot RAM first, then a re-add of two sections on the freed memmap blocks.
    w.balloon.set_target(&kib(512), 1024 * 1024, w.now).unwrap();
    assert_eq!(settle(&mut w), StepOutcome::Done);
    check(&mut w);
    assert_eq!(ram(&w), 512 * 256);
    assert_eq!(hotplug_sections(&w), [HP, HP + 1]);
    assert_eq!(
        w.mm.with_storage(|s| s.used_bytes()),
        used,
        "storage reused"
    );
    assert_eq!(w.hp.counters().adds, 2);
    drop(w);
    drop(buf);
}

/// Budget that lets the boot model and `extra` bytes of further memmap be allocated.
fn budgeted_world(extra: usize) -> World<Budgeted<HeapStorage>> {
    let mut w = world(256, 2048, Budgeted::new(HeapStorage, usize::MAX));
    let used = w.mm.with_storage(|s| s.used());
    w.mm.with_storage(|s| s.set_budget(used + extra));
    w.balloon.set_target(&kib(256), 2048 * 1024, w.now).unwrap();
    assert_eq!(settle(&mut w), StepOutcome::Done);
    w
}

/// The fault: the memmap of the second of two sections cannot be allocated (storage
/// exhausted mid-request). The first section stays, whole, and is populated (growth by
/// steps); the second leaves no present/active/online trace; the typed error is in the
/// status; the rest is retried only after the backoff, and then it works.
#[test]
fn storage_exhaustion_mid_request_leaves_only_whole_sections() {
    // Room for one section and a half of memmap (and the one section-table chunk).
    let mut w = budgeted_world(SECTION_MEMMAP as usize * 3 / 2 + 64 * 1024);
    let census0 = w.mm.census();
    w.balloon.set_target(&kib(400), 2048 * 1024, w.now).unwrap();
    let t0 = w.now;
    // Section HP added and populated; HP + 1 refused: 16 MiB still missing.
    assert_eq!(settle(&mut w), StepOutcome::NeedHotplug { pages: 16 * 256 });
    assert_eq!(hotplug_sections(&w), [HP]);
    assert_eq!(ram(&w), 384 * 256);
    let s = w.mm.section_info(HP).unwrap();
    assert_eq!((s.present, s.active, s.online), (u64::MAX, u64::MAX, true));
    if let Some(s) = w.mm.section_info(HP + 1) {
        assert_eq!((s.present, s.active, s.online, s.kind), (0, 0, false, None));
    }
    assert!(!w.mm.pfn_valid(section_start_pfn(HP + 1)));
    assert_eq!(
        w.mm.census().memmap_bytes,
        census0.memmap_bytes + SECTION_MEMMAP,
        "exactly one whole section's memmap more"
    );
    assert!(matches!(
        w.hp.last_error(),
        Some(HotplugError::Storage { section, .. }) if section == HP + 1
    ));
    assert_eq!(hp_field(&w, "partial-adds"), "1");
    assert_eq!(hp_field(&w, "last-error-kind"), "storage");
    assert_eq!(hp_field(&w, "failures"), "1");
    assert_eq!(hp_field(&w, "state"), "backing-off");
    let t1 = w.hp.retry_at().unwrap();
    assert!(t1 > t0);
    check(&mut w);

    // A caller that keeps asking gets BackingOff at once: no attempt, no allocation.
    for _ in 0..100 {
        let r =
            w.hp.on_need_hotplug(&w.mm, &mut w.balloon, 16 * 256, w.now, |_| {
                Ok::<(), &str>(())
            });
        assert_eq!(r, HotplugOutcome::BackingOff { until_ns: t1 });
    }
    assert_eq!(w.hp.counters().failures, 1);
    assert_eq!(w.hp.counters().deferred, 100);
    // The storage is freed up (the budget lifted): the retry works.
    w.mm.with_storage(|s| s.set_budget(usize::MAX));
    w.now = t1;
    assert_eq!(settle(&mut w), StepOutcome::Done);
    assert_eq!(ram(&w), 400 * 256);
    assert_eq!(hotplug_sections(&w), [HP, HP + 1]);
    assert_eq!(hp_field(&w, "state"), "idle");
    check(&mut w);
}

/// A new target retries a failed add at once; a failing `map` rolls the add back.
#[test]
fn map_failure_rolls_back_and_new_target_retries() {
    let mut w = budgeted_world(usize::MAX / 4);
    let memmap0 = w.mm.census().memmap_bytes;
    w.balloon.set_target(&kib(300), 2048 * 1024, w.now).unwrap();
    let o = w.balloon.step(&w.mm, &mut w.xen, w.now);
    let StepOutcome::NeedHotplug { pages } = o else {
        panic!("{o:?}")
    };
    let r =
        w.hp.on_need_hotplug(&w.mm, &mut w.balloon, pages, w.now, |_| {
            Err("no page-table frame")
        });
    assert!(matches!(r, HotplugOutcome::BackingOff { .. }));
    assert!(matches!(w.hp.last_error(), Some(HotplugError::Map { .. })));
    assert!(hp_field(&w, "last-error").contains("no page-table frame"));
    assert!(hotplug_sections(&w).is_empty());
    assert!(w.balloon.hotplugged().is_empty());
    assert_eq!(w.balloon.ballooned_pages(), 0);
    assert_eq!(w.mm.census().memmap_bytes, memmap0);
    // A new target (same value re-written after `xl mem-max`) retries at once.
    w.balloon.set_target(&kib(300), 2048 * 1024, w.now).unwrap();
    w.hp.new_target();
    assert_eq!(settle(&mut w), StepOutcome::Done);
    assert_eq!(ram(&w), 300 * 256);
    check(&mut w);
}

#[test]
fn hot_add_takes_the_lowest_free_sections_and_reports_a_full_window() {
    let map = pvh_memmap(256);
    let window = HotplugWindow::with_sizes(&map, 3 * 128 * MIB, 128 * MIB).unwrap();
    let mm = booted(&map, &[], HeapStorage);
    let a = hot_add(&mm, &window, 1).unwrap();
    assert_eq!(
        (a.sections.as_slice(), a.pages),
        (&[33][..], PAGES_PER_SECTION)
    );
    // Every page Offline (never Reserved), section online, every subsection active.
    let info = mm.section_info(33).unwrap();
    assert_eq!(
        (info.online, info.active, info.present),
        (true, u64::MAX, u64::MAX)
    );
    let counts = mm.section_pages(33).unwrap();
    assert_eq!(counts[StateKind::Offline.index()], PAGES_PER_SECTION);
    assert_eq!(mm.census().ram_pages(), 65536, "nothing populated yet");
    // Exactly one section more than the need: two.
    let b = hot_add(&mm, &window, PAGES_PER_SECTION + 1).unwrap();
    assert_eq!((b.sections.as_slice(), b.short_pages), (&[34, 35][..], 0));
    assert_eq!(
        b.ranges,
        [PfnRange::from_count(
            section_start_pfn(34),
            2 * PAGES_PER_SECTION
        )]
    );
    assert_eq!(
        hot_add(&mm, &window, 5),
        Err(HotplugError::WindowFull {
            needed_pages: 5,
            window_pages: 3 * PAGES_PER_SECTION
        })
    );
    // A removed section's slot is reused first; a short window adds what it has.
    hot_remove_section(&mm, 34).unwrap();
    let c = hot_add(&mm, &window, 3 * PAGES_PER_SECTION).unwrap();
    assert_eq!(
        (c.sections.as_slice(), c.short_pages),
        (&[34][..], 2 * PAGES_PER_SECTION)
    );
    assert_eq!(hot_add(&mm, &window, 0).unwrap().pages, 0);
    // Boot RAM cannot be hot-removed; a section with a populated page cannot either.
    assert!(matches!(
        hot_remove_section(&mm, 0),
        Err(MmError::WrongSection { .. })
    ));
    mm.populate(section_start_pfn(35), 0).unwrap();
    assert!(matches!(
        hot_remove_section(&mm, 35),
        Err(MmError::Busy { .. })
    ));
    let info = mm.section_info(35).unwrap();
    assert!(
        info.online && info.active == u64::MAX,
        "unchanged after refusal"
    );
    mm.recount().unwrap();
}

#[test]
fn balloon_out_from_takes_only_inside_the_range_highest_first() {
    let mm = MemModel::new(HeapStorage);
    mm.end_boot();
    for nr in [0, 1] {
        mm.add_section(nr, SectionKind::HotplugRam).unwrap();
        mm.online_section(nr).unwrap();
    }
    for sub in 0..4 {
        mm.populate(Pfn(sub * PAGES_PER_SUBSECTION), 9).unwrap();
        mm.populate(section_start_pfn(1).add(sub * PAGES_PER_SUBSECTION), 9)
            .unwrap();
    }
    let inside = PfnRange::from_count(section_start_pfn(1), PAGES_PER_SECTION);
    let mut got = Vec::new();
    assert_eq!(
        mm.balloon_out_from(inside, 9, 3, false, |p, _| got.push(p)),
        Ok(3)
    );
    let s1 = section_start_pfn(1).0;
    assert_eq!(got, [Pfn(s1 + 3 * 512), Pfn(s1 + 2 * 512), Pfn(s1 + 512)]);
    assert!(got
        .iter()
        .all(|&p| mm.read().pfn_to_online_page(p).unwrap().state() == PageState::Offline));
    // Order 0 splits the last free subsection of the range, and stops at its end.
    got.clear();
    assert_eq!(
        mm.balloon_out_from(inside, 0, 1000, false, |p, _| got.push(p)),
        Ok(512)
    );
    assert!(got
        .iter()
        .all(|&p| PfnRange::from_count(Pfn(s1), 512).contains(p)));
    assert_eq!(
        mm.balloon_out_from(inside, 0, 1000, false, |_, _| ()),
        Ok(0)
    );
    // Nothing outside the range changed state.
    let c = mm.section_pages(0).unwrap();
    assert_eq!(c[StateKind::Free.index()], 4 * 512);
    // A subsection with one allocated page has no free order-9 block, and the
    // allocated page itself is not taken.
    let one = mm.alloc_frames(0).unwrap();
    let sub = PfnRange::from_count(one.subsection_start(), PAGES_PER_SUBSECTION);
    assert_eq!(mm.balloon_out_from(sub, 9, 5, false, |_, _| ()), Ok(0));
    assert_eq!(
        mm.balloon_out_from(PfnRange::from_count(one, 1), 0, 5, false, |_, _| ()),
        Ok(0)
    );
    assert_eq!(
        mm.balloon_out_from(sub, 10, 5, false, |_, _| ()),
        Err(MmError::BadOrder(10))
    );
    // Only part of a subsection: blocks wholly inside the range, aligned to the order.
    let part = PfnRange::new(sub.start.add(100), sub.start.add(300));
    got.clear();
    assert_eq!(
        mm.balloon_out_from(part, 6, 10, false, |p, _| got.push(p)),
        Ok(2)
    );
    assert!(got
        .iter()
        .all(|p| p.0 % 64 == 0 && part.contains(*p) && part.contains(p.add(63))));
    mm.recount().unwrap();
}

/// Storage that hands out poisoned blocks (an invalid descriptor tag) and poisons and
/// quarantines freed ones: a reader that sees an active bit before the descriptors are
/// initialised, or reads memmap after it was freed, panics.
#[derive(Clone, Default)]
struct Poisoned {
    quarantine: Quarantine,
    outstanding: Arc<AtomicU64>,
}

impl MemmapStorage for Poisoned {
    fn alloc(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        let p = HeapStorage.alloc(layout)?;
        if layout.size() == MEMMAP_BYTES_PER_SUBSECTION {
            // SAFETY: a fresh block of `layout.size()` bytes, ours alone.
            unsafe { poison(p, layout) };
        } else {
            // SAFETY: fresh block of `layout.size()` bytes; section tables start zeroed.
            unsafe { p.as_ptr().write_bytes(0, layout.size()) };
        }
        // SeqCst: a plain counter read after the threads are joined; no pairing needed.
        self.outstanding
            .fetch_add(layout.size() as u64, Ordering::SeqCst);
        Some(p)
    }

    unsafe fn free(&mut self, ptr: NonNull<u8>, layout: Layout) {
        // SeqCst: as in `alloc`.
        self.outstanding
            .fetch_sub(layout.size() as u64, Ordering::SeqCst);
        // SAFETY: the block came from `HeapStorage.alloc(layout)` (above) and the model
        // gives it back and never uses it again.
        unsafe { self.quarantine.keep(ptr, layout) };
    }
}

/// Walkers on other threads while the main thread hot-adds, populates, balloons out and
/// hot-removes sections: they never see a descriptor of an inactive subsection (poison
/// on allocation) nor freed memmap (poison on free), and never read an Offline frame.
///
/// Page *states* change only while no walk is running (the `frames` write lock, as a
/// hibernation writer freezes the balloon); hot-add and hot-remove run concurrently with
/// the walks, which is what the active bits and the grace period are for.
#[test]
fn walkers_race_hot_add_and_hot_remove() {
    let storage = Poisoned::default();
    let mm = Arc::new(MemModel::new(storage.clone()));
    mm.add_section(0, SectionKind::BootRam).unwrap();
    mm.online_section(0).unwrap();
    for sub in 0..8 {
        mm.populate(Pfn(sub * PAGES_PER_SUBSECTION), 9).unwrap();
    }
    mm.end_boot();
    let window = HotplugWindow::with_sizes(&[], 4 * 128 * MIB, 0).unwrap();
    let frames = Arc::new(RwLock::new(SimMemory::new(&[(0, 8 * 512)], u64::MAX / 4)));
    let stop = Arc::new(AtomicBool::new(false));
    let walkers: Vec<_> = (0..2)
        .map(|_| {
            let (mm, stop, frames) = (mm.clone(), stop.clone(), frames.clone());
            std::thread::spawn(move || {
                let (mut walks, mut hot, mut read) = (0u64, 0u64, 0u64);
                // Relaxed: a stop flag; the join orders everything after it.
                while !stop.load(Ordering::Relaxed) {
                    let f = frames.read().unwrap();
                    let st = saveable_walk(&mm, PfnRange::new(Pfn(0), Pfn(MAX_PFN)), |pfn| {
                        assert!(f.is_populated(pfn.0), "walker read unbacked {pfn:?}");
                        pfn.0
                    });
                    drop(f);
                    hot += st.skipped_in(StateKind::Offline);
                    read += st.pages;
                    walks += 1;
                }
                (walks, hot, read)
            })
        })
        .collect();
    for round in 0..60u64 {
        let want = 1 + (round % 3) * PAGES_PER_SECTION;
        let added = hot_add(&*mm, &window, want).unwrap();
        for &nr in &added.sections {
            let mut f = frames.write().unwrap();
            for sub in 0..(1 + round % 4) {
                let p = section_start_pfn(nr).add(sub * PAGES_PER_SUBSECTION);
                assert_eq!(f.populate_physmap(&[p.0], 9), Ok(1));
                mm.populate(p, 9).unwrap();
            }
        }
        std::thread::yield_now();
        for &nr in &added.sections {
            let range = PfnRange::from_count(section_start_pfn(nr), PAGES_PER_SECTION);
            let mut f = frames.write().unwrap();
            let mut out = Vec::new();
            mm.balloon_out_from(range, 9, 64, false, |p, _| out.push(p.0))
                .unwrap();
            assert_eq!(f.decrease_reservation(&out, 9), Ok(out.len()));
        }
        for &nr in added.sections.iter().rev() {
            hot_remove_section(&*mm, nr).unwrap();
        }
    }
    // Relaxed: see the walkers' load.
    stop.store(true, Ordering::Relaxed);
    let (walks, hot, read) = walkers
        .into_iter()
        .map(|t| t.join().unwrap())
        .fold((0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2));
    eprintln!("{walks} walks, {hot} hot-added Offline pages skipped, {read} frames read");
    assert!(walks > 0);
    assert!(hotplug_sections_of(&mm).is_empty());
    mm.recount().unwrap();
    // Only the boot section's memmap is left; every freed block was given back.
    assert_eq!(
        mm.census().memmap_bytes,
        64 * MEMMAP_BYTES_PER_SUBSECTION as u64
    );
    // SeqCst: as in `alloc` (threads joined above).
    let outstanding = storage.outstanding.load(Ordering::SeqCst);
    assert_eq!(
        outstanding,
        mm.census().memmap_bytes + mm.census().section_table_bytes - 32 * 1024
    );
}

fn hotplug_sections_of<S: MemmapStorage>(mm: &MemModel<S>) -> Vec<usize> {
    mm.sections()
        .filter(|s| s.kind == Some(SectionKind::HotplugRam))
        .map(|s| s.nr)
        .collect()
}

/// `hotplug-walk`: seeded random walks of 120 steps across the boot/hotplug boundary
/// (targets from 40 to 640 MiB on a 128 MiB domain), with allocations held across
/// steps, storage failures, Xen preemption, and the saveable walker and every invariant
/// checked after each step.
#[test]
fn random_walk_across_the_boot_hotplug_boundary() {
    // More seeds: HOTPLUG_WALK_SEEDS=3,4,5 cargo test -p guest --test hotplug_balloon
    let seeds: Vec<u64> = std::env::var("HOTPLUG_WALK_SEEDS").map_or(vec![1, 42], |v| {
        v.split(',').map(|s| s.trim().parse().unwrap()).collect()
    });
    let (mut failures, mut removed) = (0, 0);
    for seed in seeds {
        let c = random_walk(seed, 120);
        failures += c.failures;
        removed += c.sections_removed;
    }
    // The walks did exercise the failure path and hot-remove.
    assert!(
        failures > 0 && removed > 0,
        "{failures} failures, {removed} removed"
    );
}

fn random_walk(seed: u64, steps: usize) -> HotplugCounters {
    let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move |n: u64| {
        // xorshift64*
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        (rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) % n
    };
    let mut w = world(128, 640, Budgeted::new(HeapStorage, usize::MAX));
    let max_kib = 640 * 1024;
    w.balloon.set_target(&kib(128), max_kib, w.now).unwrap();
    settle(&mut w);
    let offset = w.balloon.accounting_offset().unwrap();
    let mut held: Vec<(Pfn, u8)> = Vec::new();
    let (mut crossings, mut removed_max) = (0, 0);
    let mut above = false;
    for step in 0..steps {
        match next(10) {
            0..=4 => {
                let mib = 40 + next(640 - 40);
                w.balloon.set_target(&kib(mib), max_kib, w.now).unwrap();
                w.hp.new_target();
            }
            5 => {
                for _ in 0..next(1500) {
                    let order = next(3) as u8 * 4;
                    match w.mm.alloc_frames(order) {
                        Ok(p) => held.push((p, order)),
                        Err(_) => break,
                    }
                }
            }
            6 => {
                for (p, order) in held.drain(..) {
                    w.mm.free_frames(p, order).unwrap();
                }
            }
            7 => {
                // Storage nearly full for a while: hot-adds fail and are rolled back.
                let used = w.mm.with_storage(|s| s.used());
                let budget = if next(2) == 0 {
                    used + 100_000
                } else {
                    usize::MAX
                };
                w.mm.with_storage(|s| s.set_budget(budget));
            }
            8 => w.xen.faults.max_extents_per_call = Some(1 + next(40) as usize),
            _ => w.now += next(40) * SEC,
        }
        let o = settle(&mut w);
        check(&mut w);
        assert_eq!(w.balloon.accounting_offset(), Some(offset));
        let hot = !hotplug_sections(&w).is_empty();
        if hot != above {
            crossings += 1;
            above = hot;
        }
        removed_max = removed_max.max(w.hp.counters().sections_removed);
        if let StepOutcome::NeedHotplug { .. } = o {
            // Only a backing-off hotplug (storage budget) may leave the balloon short.
            assert!(
                w.hp.retry_at().is_some(),
                "step {step}: short without a reason"
            );
        }
        assert!(!matches!(o, StepOutcome::Error), "step {step}: {o:?}");
    }
    // Held frames may sit in hot-added sections (they then stay, as they must).
    for (p, order) in held.drain(..) {
        w.mm.free_frames(p, order).unwrap();
    }
    w.mm.with_storage(|s| s.set_budget(usize::MAX));
    w.xen.faults = Default::default();
    w.balloon.set_target(&kib(64), max_kib, w.now).unwrap();
    w.hp.new_target();
    assert_eq!(settle(&mut w), StepOutcome::Done);
    check(&mut w);
    assert!(
        hotplug_sections(&w).is_empty(),
        "all hot-added memory removed"
    );
    assert_eq!(census_field(&w.mm, "memmap-bytes/hotplug-ram"), 0);
    let c = w.hp.counters();
    eprintln!(
        "seed {seed}: {crossings} crossings, {} adds, {} sections added, {} removed, \
         {} failures, {} deferred",
        c.adds, c.sections_added, c.sections_removed, c.failures, c.deferred
    );
    assert!(
        crossings >= 4,
        "seed {seed}: only {crossings} boundary crossings"
    );
    assert!(removed_max > 0, "seed {seed}: {c:?}");
    *c
}

/// The walker alone: what it reads and skips, on a model with every state.
#[test]
fn saveable_walk_reads_only_online_free_and_allocated_pages() {
    let mut w = world(128, 1024, HeapStorage);
    w.balloon.set_target(&kib(96), 1024 * 1024, w.now).unwrap();
    settle(&mut w);
    let window = *w.hp.window();
    let added = hot_add(&w.mm, &window, 1).unwrap();
    let dev = PfnRange::from_count(window.device.start, 2 * PAGES_PER_SUBSECTION);
    w.mm.add_subsections(dev, SectionKind::Device).unwrap();
    let a = w.mm.alloc_frames(3).unwrap();
    let mut read = Vec::new();
    let st = saveable_walk(&w.mm, PfnRange::new(Pfn(0), Pfn(MAX_PFN)), |pfn| {
        assert!(w.xen.is_populated(pfn.0), "{pfn:?} unbacked");
        read.push(pfn);
        7
    });
    let c = w.mm.census();
    assert_eq!(st.pages, read.len() as u64);
    assert_eq!(
        st.pages,
        96 * 256 - c.pages_in(StateKind::Reserved) + c.reserved_nonram.iter().sum::<u64>()
    );
    assert!(read.contains(&a) && read.windows(2).all(|p| p[0] < p[1]));
    assert_eq!(st.skipped_in(StateKind::Offline), 32 * 256 + added.pages);
    assert_eq!(st.skipped_in(StateKind::Unpopulated), 1024);
    assert_eq!(
        st.skipped_in(StateKind::Reserved),
        c.pages_in(StateKind::Reserved)
    );
    assert_eq!(st.seen, c.pages_total());
    // Same pages, same checksum; a different set, a different one.
    let again = saveable_walk(&w.mm, PfnRange::new(Pfn(0), Pfn(MAX_PFN)), |_| 7);
    assert_eq!(again, st);
    w.mm.free_frames(a, 3).unwrap();
    w.mm.balloon_out_pfn(a).unwrap();
    let other = saveable_walk(&w.mm, PfnRange::new(Pfn(0), Pfn(MAX_PFN)), |_| 7);
    assert_ne!(other.checksum, st.checksum);
    assert_eq!(other.pages, st.pages - 1);
    // Only the range asked for.
    let sub = saveable_walk(&w.mm, PfnRange::from_count(Pfn(4096), 100), |_| 0);
    assert_eq!(sub.seen, 100);
}

/// The balloon adopts only hot-added, online, wholly Offline ranges, once; it forgets
/// only ranges it holds wholly ballooned, splitting its ranges as needed.
#[test]
fn adopt_and_forget_refuse_what_is_not_theirs() {
    let mut w = world(128, 1024, HeapStorage);
    let window = *w.hp.window();
    let boot = PfnRange::from_count(Pfn(0x4000), PAGES_PER_SUBSECTION);
    assert!(matches!(
        w.balloon.adopt_hotplugged(&w.mm, boot),
        Err(MmError::WrongSection {
            kind: SectionKind::BootRam,
            ..
        })
    ));
    assert_eq!(
        w.balloon.adopt_hotplugged(&w.mm, window.ram),
        Err(MmError::NotActive(window.ram.start))
    );
    let added = hot_add(&w.mm, &window, 3 * PAGES_PER_SECTION).unwrap();
    let r = added.ranges[0];
    assert_eq!(r.len(), 3 * PAGES_PER_SECTION);
    assert!(matches!(
        w.balloon
            .adopt_hotplugged(&w.mm, PfnRange::new(r.start, r.start.add(100))),
        Err(MmError::Misaligned { .. })
    ));
    w.mm.populate(r.start.add(7), 0).unwrap();
    assert_eq!(
        w.balloon.adopt_hotplugged(&w.mm, r),
        Err(MmError::Busy {
            pfn: r.start.add(7),
            state: StateKind::Free
        })
    );
    w.mm.balloon_out_pfn(r.start.add(7)).unwrap();
    assert_eq!(w.balloon.ballooned_pages(), 0, "nothing adopted on refusal");
    assert_eq!(w.balloon.adopt_hotplugged(&w.mm, r), Ok(r.len()));
    assert_eq!(
        w.balloon.adopt_hotplugged(&w.mm, r),
        Err(MmError::AlreadyPresent(r.start))
    );
    assert_eq!(w.balloon.ballooned_in(r), r.len());
    // Forget: boot RAM is not ballooned; the middle section splits the range.
    assert!(w.balloon.forget_hotplugged(boot).is_err());
    let mid = PfnRange::from_count(r.start.add(PAGES_PER_SECTION), PAGES_PER_SECTION);
    assert_eq!(w.balloon.forget_hotplugged(mid), Ok(PAGES_PER_SECTION));
    assert_eq!(
        w.balloon.hotplugged(),
        [
            PfnRange::from_count(r.start, PAGES_PER_SECTION),
            PfnRange::new(mid.end, r.end)
        ]
    );
    assert_eq!(w.balloon.ballooned_pages(), 2 * PAGES_PER_SECTION);
    assert!(
        w.balloon.forget_hotplugged(mid).is_err(),
        "already forgotten"
    );
    hot_remove_section(&w.mm, mid.start.section()).unwrap();
    // A range partly populated is in use and stays.
    w.balloon.set_target(&kib(130), 1024 * 1024, w.now).unwrap();
    assert_eq!(settle(&mut w), StepOutcome::Done);
    let low = PfnRange::from_count(r.start, PAGES_PER_SECTION);
    assert_eq!(w.balloon.ballooned_in(low), PAGES_PER_SECTION - 512);
    assert!(w.balloon.forget_hotplugged(low).is_err());
    assert_eq!(
        hotplug_sections(&w),
        [HP],
        "wholly ballooned section HP+2 removed at rest"
    );
    check(&mut w);
}

// ---------------------------------------------------------------- growth without a ceiling

/// The kernel's storage shape: a boot region (here a budgeted heap, closed after boot
/// plus `headroom` bytes) and 2 MiB frames of the model's own RAM for the rest.
type Reserve = FrameReserve<Budgeted<HeapStorage>, HeapFrames>;

fn reserve_world(ram_mib: u64, max_mib: u64, headroom: usize) -> World<Reserve> {
    let mut w = world(
        ram_mib,
        max_mib,
        FrameReserve::new(Budgeted::new(HeapStorage, usize::MAX), HeapFrames)
            .keeping(5 * guest::mm::SECTION_TABLE_CHUNK_BYTES),
    );
    w.mm.with_storage(|s| {
        let used = s.inner().used();
        s.inner_mut().set_budget(used + headroom);
    });
    w.balloon
        .set_target(&kib(ram_mib), max_mib * 1024, w.now)
        .unwrap();
    assert_eq!(settle(&mut w), StepOutcome::Done);
    w
}

/// Census and Xen agree (rule 5), every hot-added section whole, and nothing Reserved in
/// them — the cheap part of `check`, for worlds too large to walk page by page often.
fn check_books(w: &mut World<Reserve>) {
    let c = w.mm.recount().expect("census consistent");
    let offset = w.balloon.accounting_offset().unwrap();
    assert_eq!(w.xen.tot_pages() as i64 - c.ram_pages() as i64, offset);
    assert_eq!(w.balloon.counters().accounting_mismatches, 0);
    for s in
        w.mm.sections()
            .filter(|s| s.kind == Some(SectionKind::HotplugRam))
    {
        assert!(s.online && s.active == u64::MAX && s.present == u64::MAX);
    }
}

/// A guest booted at 256 MiB whose boot region holds the memmap of one more section
/// fills the whole 64 GiB window (512 sections, 256 MiB of memmap) by steps, each step's
/// memmap paid for by memory the step before added; then empties it again: every
/// hot-added section removed, every storage frame back, memmap back to the boot amount.
#[test]
fn whole_window_filled_by_steps_and_emptied() {
    let window_mib = 64 * 1024;
    // The kernel's headroom: the window's section-table chunks and one section's memmap.
    let headroom = SECTION_MEMMAP as usize + 5 * guest::mm::SECTION_TABLE_CHUNK_BYTES;
    let mut w = reserve_world(256, 256 + window_mib, headroom);
    let boot_memmap = w.mm.census().memmap_bytes;
    let boot_ram = ram(&w);
    w.balloon
        .set_target(&kib(256 + window_mib), (256 + window_mib) * 1024, w.now)
        .unwrap();
    assert_eq!(settle(&mut w), StepOutcome::Done);
    assert_eq!(ram(&w), (256 + window_mib) * 256);
    assert_eq!(hotplug_sections(&w).len(), 512, "the whole window");
    let c = w.mm.census();
    assert_eq!(c.memmap_bytes - boot_memmap, 512 * SECTION_MEMMAP);
    let frames = w.mm.with_storage(|s| s.frames());
    // 256 MiB of memmap in 2 MiB frames: 128, less what the boot headroom held.
    assert!((127..=129).contains(&frames), "{frames} frames");
    assert!(w.hp.counters().partial_adds > 0, "it grew by steps");
    assert_eq!(w.hp.counters().failures, 0, "never stuck");
    check_books(&mut w);
    // Beyond the window: WindowFull, nothing added, the guest stays whole.
    let r =
        w.hp.on_need_hotplug(&w.mm, &mut w.balloon, 256, w.now, |_| Ok::<(), &str>(()));
    assert!(matches!(r, HotplugOutcome::BackingOff { .. }));
    assert!(matches!(
        w.hp.last_error(),
        Some(HotplugError::WindowFull { .. })
    ));

    // Down to 128 MiB: the memmap (256 MiB) is more than the target, so sections go
    // while the balloon is still above it; storage frames left in surviving hot-added
    // sections are moved out.
    w.balloon
        .set_target(&kib(128), (256 + window_mib) * 1024, w.now)
        .unwrap();
    w.hp.new_target();
    let mut o = settle(&mut w);
    for _ in 0..10 {
        if o == StepOutcome::Done {
            break;
        }
        w.now += 64 * SEC;
        o = settle(&mut w);
    }
    assert_eq!(
        o,
        StepOutcome::Done,
        "{}",
        w.balloon.status(&w.mm).last_error
    );
    assert_eq!(ram(&w), 128 * 256);
    assert!(
        hotplug_sections(&w).is_empty(),
        "every hot-added section removed"
    );
    assert_eq!(w.mm.census().memmap_bytes, boot_memmap);
    assert_eq!(
        w.mm.with_storage(|s| s.frames()),
        0,
        "every storage frame back"
    );
    assert!(w.balloon.hotplugged().is_empty());
    check(&mut w);
    // And up again past boot RAM.
    w.balloon
        .set_target(&kib(1024), (256 + window_mib) * 1024, w.now)
        .unwrap();
    w.hp.new_target();
    assert_eq!(settle(&mut w), StepOutcome::Done);
    assert_eq!(ram(&w), 1024 * 256);
    assert!(boot_ram < ram(&w));
    check(&mut w);
}

/// From a 64 MiB boot whose boot region has no headroom at all: the first section's
/// memmap comes from boot RAM's free 2 MiB blocks, and 2 GiB are reached.
#[test]
fn small_boot_reaches_two_gib_with_memmap_from_its_own_ram() {
    let mut w = reserve_world(64, 2048, 0);
    w.balloon
        .set_target(&kib(2048), 2048 * 1024, w.now)
        .unwrap();
    assert_eq!(settle(&mut w), StepOutcome::Done);
    assert_eq!(ram(&w), 2048 * 256);
    assert_eq!(hotplug_sections(&w).len(), 16);
    assert!(w.mm.with_storage(|s| s.frames()) >= 4);
    check(&mut w);
}

/// A target above boot RAM + window is clamped (one log line, state `clamped`).
#[test]
fn targets_beyond_the_window_are_clamped_to_the_ceiling() {
    let mut b = Balloon::new(BalloonConfig {
        ceiling_kib: Some(1024 * 1024),
        ..BalloonConfig::default()
    });
    let t = b.set_target(&kib(4096), 8192 * 1024, 0).unwrap();
    assert_eq!(
        (t.requested_kib, t.effective_kib),
        (4096 * 1024, 1024 * 1024)
    );
    assert!(t.clamped());
    let t = b.set_target(&kib(512), 8192 * 1024, 0).unwrap();
    assert!(!t.clamped());
}

/// The storage invariants after any settle: the model's memmap is the boot memmap plus
/// 512 KiB per hot-added section; no storage frame is kept empty; frame slots in use
/// never exceed what the frames hold.
fn check_storage(w: &World<Reserve>, boot_memmap: u64) {
    let hot = hotplug_sections(w).len() as u64;
    assert_eq!(
        w.mm.census().memmap_bytes,
        boot_memmap + hot * SECTION_MEMMAP
    );
    let (frames, used) = w.mm.with_storage(|s| (s.frames(), s.frame_bytes_used()));
    let slots = used / MEMMAP_BYTES_PER_SUBSECTION;
    assert!(
        frames <= slots,
        "{frames} frames for {slots} slots in use: an empty frame kept"
    );
    assert!(slots <= frames * 256);
    assert!(
        slots as u64 <= hot * 64,
        "frame slots beyond the hot-added memmap"
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(8))]

    /// Random grow/shrink sequences from a 128 MiB boot whose boot region has room for
    /// chunks only: every target reached exactly, census = Xen, only whole sections,
    /// storage as `check_storage` says; at the end, down to 64 MiB: nothing hot-added
    /// left, every frame back.
    #[test]
    fn random_grow_and_shrink_keep_storage_and_books_whole(
        targets in proptest::collection::vec(64u64..=2048, 1..6)
    ) {
        let mut w = reserve_world(128, 2048, 5 * guest::mm::SECTION_TABLE_CHUNK_BYTES);
        let boot_memmap = w.mm.census().memmap_bytes;
        for &t in targets.iter().chain([64].iter()) {
            w.balloon.set_target(&kib(t), 2048 * 1024, w.now).unwrap();
            w.hp.new_target();
            let mut o = settle(&mut w);
            for _ in 0..8 {
                if o == StepOutcome::Done {
                    break;
                }
                w.now += 64 * SEC;
                o = settle(&mut w);
            }
            proptest::prop_assert_eq!(o, StepOutcome::Done, "target {} MiB: {}", t, w.balloon.status(&w.mm).last_error);
            proptest::prop_assert_eq!(ram(&w), t * 256);
            check_books(&mut w);
            check_storage(&w, boot_memmap);
        }
        proptest::prop_assert!(hotplug_sections(&w).is_empty());
        proptest::prop_assert_eq!(w.mm.with_storage(|s| s.frames()), 0);
        proptest::prop_assert_eq!(w.mm.census().memmap_bytes, boot_memmap);
        proptest::prop_assert_eq!(w.hp.counters().failures, 0);
    }
}

/// Storage frames that had to come from a hot-added section (boot RAM had no free 2 MiB
/// block) keep it alive after the sections whose memmap they held are gone; once emptied
/// and back in the allocator, those Free pages are moved out (given back to Xen, boot
/// RAM's holes populated instead) and the section goes too.
#[test]
fn storage_frames_in_a_hot_section_are_evacuated_so_it_can_go() {
    let headroom = SECTION_MEMMAP as usize + 5 * guest::mm::SECTION_TABLE_CHUNK_BYTES;
    let mut w = reserve_world(128, 2048, headroom);
    // Boot RAM has no free 2 MiB block left.
    let mut hog = Vec::new();
    while let Ok(p) = w.mm.alloc_frames(9) {
        hog.push(p);
    }
    w.balloon
        .set_target(&kib(1024), 2048 * 1024, w.now)
        .unwrap();
    assert_eq!(settle(&mut w), StepOutcome::Done);
    assert_eq!(hotplug_sections(&w), (HP..HP + 7).collect::<Vec<_>>());
    assert!(
        w.hp.counters().partial_adds > 0,
        "the first section from the headroom, then steps"
    );
    for p in hog {
        w.mm.free_frames(p, 9).unwrap();
    }
    let boot_memmap = w.mm.census().memmap_bytes - 7 * SECTION_MEMMAP;
    w.balloon.set_target(&kib(64), 2048 * 1024, w.now).unwrap();
    assert_eq!(settle(&mut w), StepOutcome::Done);
    assert_eq!(ram(&w), 64 * 256);
    assert!(w.hp.counters().evacuated_pages > 0);
    assert!(
        hotplug_sections(&w).is_empty(),
        "{:?}",
        hotplug_sections(&w)
    );
    assert_eq!(w.mm.with_storage(|s| s.frames()), 0);
    assert_eq!(w.mm.census().memmap_bytes, boot_memmap);
    check(&mut w);
}

/// A provider capped by a budget (the `hotplug-fail` switch) gains nothing from frames:
/// a refill stops after one instead of taking every free 2 MiB block, and the trim gives
/// it back.
#[test]
fn a_capped_provider_takes_one_frame_not_all() {
    let w = world(
        256,
        1024,
        Budgeted::new(
            FrameReserve::new(Budgeted::new(HeapStorage, usize::MAX), HeapFrames),
            usize::MAX,
        ),
    );
    w.mm.with_storage(|s| s.set_budget(s.used()));
    let free = w.mm.census().pages_in(StateKind::Free);
    assert!(matches!(
        w.mm.refill_storage(1 << 20),
        Err(MmError::StorageExhausted { .. })
    ));
    assert_eq!(w.mm.with_storage(|s| s.frames()), 1);
    assert_eq!(w.mm.trim_storage(), 1);
    assert_eq!(w.mm.census().pages_in(StateKind::Free), free);
}

/// A CPU clock that advances 1 µs per reading.
static FAKE_CPU_NS: AtomicU64 = AtomicU64::new(0);
fn fake_cpu_clock() -> u64 {
    FAKE_CPU_NS.fetch_add(1000, Ordering::Relaxed) + 1000
}

#[test]
fn a_hot_add_publishes_its_cpu_time_by_phase() {
    let mut w = world(256, 1024, HeapStorage);
    w.hp = Hotplug::new(HotplugWindow::from_memmap(&pvh_memmap(256)).unwrap())
        .with_cpu_clock(fake_cpu_clock);
    let field = |w: &World<HeapStorage>, k: &str| {
        w.hp.status(&w.mm)
            .fields()
            .find(|(key, _)| *key == k)
            .map(|(_, v)| v)
            .unwrap()
    };
    assert_eq!(field(&w, "last-add/sections"), "0", "nothing added yet");
    w.balloon.set_target(&kib(768), 1024 * 1024, w.now).unwrap();
    assert_eq!(settle(&mut w), StepOutcome::Done);
    let t = w.hp.last_add();
    // Five marks, one reading each: every phase saw exactly one tick.
    assert_eq!(t.sections, 4);
    assert_eq!(
        (t.refill_ns, t.build_ns, t.map_ns, t.adopt_ns),
        (1000, 1000, 1000, 1000)
    );
    for k in ["refill", "build", "map", "adopt"] {
        assert_eq!(field(&w, &format!("last-add/{k}-us")), "1");
    }
    assert_eq!(field(&w, "last-add/sections"), "4");
}
