//! The seed's race, run for real (command line `race`): while vCPU 0 follows `xl mem-set`
//! — hot-adding and hot-removing sections — and maps and unmaps foreign pages, every other
//! vCPU walks the memmap without pause. Three walkers, by vCPU id:
//!
//! | vCPU | walker | what it reads |
//! |---|---|---|
//! | 1, 4, … | census | every active page's state, counted by kind (the device window swept again after every present RAM section, for twice that section's time) |
//! | 2, 5, … | saveable | [`saveable_walk`], the hibernation writer's view (no frame read) |
//! | 3, 6, … | pfn scan | `pfn_to_online_page` over boot RAM and the hot-add window, `pfn_to_device_page` over the device window (swept again after every present RAM section, for twice that section's time), every pfn of every active subsection |
//!
//! A walker enters the read side once per section. It counts an **overlap** when the
//! section changed (a subsection went active or inactive, a device page was mapped or
//! unmapped: `ReadGuard::section_changes`) while it was inside, and a **detection** when a
//! descriptor it reached through the guard held no valid state: freed memmap is poisoned
//! and fresh memmap is poisoned until initialised, so a walker that outlives a grace
//! period or sees an active bit too early reads poison. A correct model gives overlaps
//! and no detections; the `race-bug=` switches must give detections.
//!
//! Census and pfn-scan visits yield the host CPU, guard held, between finding a descriptor
//! and reading it ([`reader_delay`]; in the first active subsection of a section, and in
//! every subsection of a device section): on one host CPU that is what lets a change land
//! inside a pass.
//!
//! Context: the walkers run in thread context on APs ([`crate::smp::set_work`]), never in
//! interrupt context, and stop between sections when vCPU 0 asks an AP to park.

use core::sync::atomic::{AtomicU64, Ordering};

use guest::mm::hotplug::{saveable_walk, HotplugWindow};
use guest::mm::{Pfn, PfnRange, ReadGuard, SectionKind, StateKind};

use crate::kmem::Model;

/// Pages per section and per subsection.
const SECTION_PAGES: u64 = guest::mm::geometry::PAGES_PER_SECTION;
const SUB_PAGES: u64 = guest::mm::geometry::PAGES_PER_SUBSECTION;

/// The three walkers.
const WALKERS: [&str; 3] = ["census", "saveable", "pfn-scan"];
// `visit` and `work` index walkers by position.
const _: () = assert!(SAVEABLE == 1 && PFN_SCAN == 2 && WALKERS.len() == 3);

/// One walker kind's counters (summed over the vCPUs running it). Relaxed throughout:
/// statistics, read by vCPU 0 for `data/race`.
struct Counters {
    passes: AtomicU64,
    sections: AtomicU64,
    pages: AtomicU64,
    overlaps: AtomicU64,
    detections: AtomicU64,
}

static COUNTERS: [Counters; 3] = [const {
    Counters {
        passes: AtomicU64::new(0),
        sections: AtomicU64::new(0),
        pages: AtomicU64::new(0),
        overlaps: AtomicU64::new(0),
        detections: AtomicU64::new(0),
    }
}; 3];

struct Ctx {
    mm: &'static Model,
    window: HotplugWindow,
    /// Everything a page can live in: boot RAM up to the higher window's end.
    all: PfnRange,
}

static CTX: spin::Once<Ctx> = spin::Once::new();

/// Starts the walkers on every AP (now and whenever one comes online).
pub fn start(mm: &'static Model, window: &HotplugWindow) {
    CTX.call_once(|| Ctx {
        mm,
        window: *window,
        all: PfnRange::new(Pfn(0), window.device.end.max(window.ram.end)),
    });
    crate::smp::set_work(work);
    log::info!("race: walkers ({}) on every vCPU but 0", WALKERS.join(", "));
}

/// Whether the walkers run.
pub fn running() -> bool {
    CTX.get().is_some()
}

/// One pass of this AP's walker; stops early if vCPU 0 wants the AP.
fn work(id: u32) -> bool {
    let Some(ctx) = CTX.get() else { return false };
    let w = (id as usize - 1) % WALKERS.len();
    let first = ctx.all.start.0 / SECTION_PAGES;
    let end = ctx.all.end.0.div_ceil(SECTION_PAGES);
    let device = ctx.window.device_sections();
    for nr in first..end {
        if crate::smp::stop_requested(id) {
            return true;
        }
        let t0 = tsc();
        let pages = visit(ctx, w, id, nr);
        if w != SAVEABLE && pages > 0 && !device.contains(&(nr as usize)) {
            // Device subsections change at grant speed (every map and unmap), RAM
            // sections only when hotplug adds or removes them. On one host CPU a walker
            // sees a change only if it is preempted inside the section that changes:
            // after every present RAM section, the walkers that read device descriptors
            // sweep the device window for twice as long as that section took, so that
            // most of their preemptions fall inside a device subsection while a grant
            // peer maps and unmaps. (The saveable walk skips device pages.)
            let budget = 2 * (tsc() - t0);
            let t1 = tsc();
            loop {
                let seen: u64 = device.clone().map(|d| visit(ctx, w, id, d as u64)).sum();
                // An empty window has nothing to change under us: on to RAM.
                if seen == 0 || tsc() - t1 >= budget || crate::smp::stop_requested(id) {
                    break;
                }
            }
        }
    }
    COUNTERS[w].passes.fetch_add(1, Ordering::Relaxed);
    true
}

/// The TSC (invariant under Xen: a clock for durations on this vCPU).
fn tsc() -> u64 {
    // SAFETY: rdtsc has no side effects and is allowed at CPL 0.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Whether the reader delay comes before reading the `pages`-th page of a visit: in the
/// middle of its first active subsection, and in a device section (where subsections
/// come and go one at a time, a grant round each) in the middle of every one.
fn delay_due(pages: u64, device: bool) -> bool {
    pages % SUB_PAGES == SUB_PAGES / 2 && (device || pages < SUB_PAGES)
}

/// The reader delay (as rcutorture's): give up the host CPU inside the read-side section,
/// holding a descriptor found through the guard. On one host CPU a change of vCPU 0's —
/// a removal, a grant map or unmap — can land inside a walker's pass only while the
/// walker is off the CPU; this puts it off the CPU at the worst moment, so a removal that
/// frees the memmap without a grace period is read right after.
fn reader_delay() {
    crate::irq::sched_yield();
}

/// Indexes of the saveable and pfn-scan walkers in [`WALKERS`].
const SAVEABLE: usize = 1;
const PFN_SCAN: usize = 2;

/// Walker `w`'s visit of section `nr`, counted; returns the pages it saw.
fn visit(ctx: &Ctx, w: usize, id: u32, nr: u64) -> u64 {
    let range = PfnRange::from_count(Pfn(nr * SECTION_PAGES), SECTION_PAGES);
    if w == SAVEABLE {
        let (st, before, after) = saveable_section(ctx.mm, nr as usize, range);
        note(w, id, nr, st.seen, st.corrupt, before != after);
        return st.seen;
    }
    let g = ctx.mm.read();
    let before = g.section_changes(nr as usize);
    let (pages, bad) = if w == 0 {
        census_walk(&g, range, ctx.window.device.contains(range.start))
    } else {
        pfn_scan(&g, range, &ctx.window)
    };
    let after = g.section_changes(nr as usize);
    drop(g);
    note(w, id, nr, pages, bad, before != after);
    pages
}

/// Counts one section visit; logs the first detection of each walker.
fn note(w: usize, id: u32, nr: u64, pages: u64, bad: u64, changed: bool) {
    let c = &COUNTERS[w];
    if pages == 0 && !changed {
        return;
    }
    c.sections.fetch_add(1, Ordering::Relaxed);
    c.pages.fetch_add(pages, Ordering::Relaxed);
    if changed {
        c.overlaps.fetch_add(1, Ordering::Relaxed);
    }
    if bad != 0 && c.detections.fetch_add(bad, Ordering::Relaxed) == 0 {
        log::error!(
            "race: DETECTED by the {} walker on vCPU {id}: {bad} descriptor(s) of section {nr:#x} held no valid state (freed or uninitialised memmap)",
            WALKERS[w]
        );
    }
}

/// The census walker over one section: every active page's state. Returns (pages, bad).
fn census_walk(g: &ReadGuard<'_>, range: PfnRange, device: bool) -> (u64, u64) {
    let mut by_kind = [0u64; 6];
    let (mut pages, mut bad) = (0, 0);
    for p in g.active_pages(range) {
        pages += 1;
        if delay_due(pages, device) {
            reader_delay();
        }
        match p.checked() {
            Some((s, _)) => by_kind[s.kind().index()] += 1,
            None => bad += 1,
        }
    }
    // Foreign pages only in device sections, Free/Allocated only in RAM ones: a state
    // in the wrong kind of section is as much a broken model as poison.
    if let Some(p) = g.active_pages(range).next() {
        let device = p.section_kind() == SectionKind::Device;
        let wrong = if device {
            by_kind[StateKind::Free.index()] + by_kind[StateKind::Allocated.index()]
        } else {
            by_kind[StateKind::Foreign.index()]
        };
        bad += wrong;
    }
    (pages, bad)
}

/// The saveable-page walker over one section, with the section's change count around
/// it (it takes its own guard).
fn saveable_section(
    mm: &Model,
    nr: usize,
    range: PfnRange,
) -> (guest::mm::hotplug::SaveableStats, u64, u64) {
    let before = mm.read().section_changes(nr);
    // No frame is read: a concurrent balloon step may take a Free frame away.
    let st = saveable_walk(mm, range, |_| 0);
    let after = mm.read().section_changes(nr);
    (st, before, after)
}

/// `pfn_to_online_page` / `pfn_to_device_page` for every pfn of every active subsection
/// of the section, by window. Returns (pages, bad).
fn pfn_scan(g: &ReadGuard<'_>, range: PfnRange, w: &HotplugWindow) -> (u64, u64) {
    let device = range.start.0 >= w.device.start.0 && range.start.0 < w.device.end.0;
    let (mut pages, mut bad) = (0, 0);
    let mut sub = range.start.0;
    while sub < range.end.0 {
        if g.pfn_to_page(Pfn(sub)).is_some() {
            for pfn in sub..sub + SUB_PAGES {
                let p = if device {
                    g.pfn_to_device_page(Pfn(pfn))
                } else {
                    g.pfn_to_online_page(Pfn(pfn))
                };
                if let Some(p) = p {
                    pages += 1;
                    if delay_due(pages, device) {
                        reader_delay();
                    }
                    if p.checked().is_none() {
                        bad += 1;
                    }
                }
            }
        }
        sub += SUB_PAGES;
    }
    (pages, bad)
}

/// Time vCPU 0 spent writing `data/race` (ns). Relaxed: a statistic of vCPU 0's own.
static PUBLISH_NS: AtomicU64 = AtomicU64::new(0);

/// vCPU 0 wrote `data/race`, which took `ns`.
pub fn published(ns: u64) {
    PUBLISH_NS.fetch_add(ns, Ordering::Relaxed);
}

/// `data/race` fields: per walker passes/sections/pages/overlaps/detections, the totals,
/// and vCPU 0's grace-period waits.
pub fn fields(mm: &Model) -> alloc::vec::Vec<(alloc::string::String, alloc::string::String)> {
    use alloc::format;
    let mut f = alloc::vec::Vec::new();
    let (mut overlaps, mut detections, mut passes) = (0, 0, 0);
    for (name, c) in WALKERS.iter().zip(&COUNTERS) {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        overlaps += r(&c.overlaps);
        detections += r(&c.detections);
        passes += r(&c.passes);
        for (k, v) in [
            ("passes", r(&c.passes)),
            ("sections", r(&c.sections)),
            ("pages", r(&c.pages)),
            ("overlaps", r(&c.overlaps)),
            ("detections", r(&c.detections)),
        ] {
            f.push((format!("{name}/{k}"), format!("{v}")));
        }
    }
    let g = mm.grace_stats();
    for (k, v) in [
        ("passes", passes),
        ("overlaps", overlaps),
        ("detections", detections),
        ("grace-waits", g.waits),
        ("grace-median-us", g.median_us as u64),
        ("grace-max-us", g.max_us),
        ("publish-ms", PUBLISH_NS.load(Ordering::Relaxed) / 1_000_000),
    ] {
        f.push((k.into(), format!("{v}")));
    }
    f
}
