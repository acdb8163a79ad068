//! The memory hotplug driver: turns the balloon's `NeedHotplug` into hot-added sections
//! and gives emptied hot-added sections back (hot-remove), with retries that never spin.
//!
//! The kernel's part (page tables, xenstore, timing) around it:
//!
//! ```text
//! boot:   let window = HotplugWindow::from_memmap(start_info memmap)?;  // log it
//!         let mut hp = Hotplug::new(window);
//! new memory/target: hp.new_target();          // a failed add is retried at once
//! balloon step says NeedHotplug { pages } (or `hp.retry_at()` passed while it still
//!         does): match hp.on_need_hotplug(mm, &mut balloon, pages, now, |range| map(range)) {
//!     HotplugOutcome::Added(a)              => step the balloon again (it populates a.ranges)
//!     HotplugOutcome::BackingOff { until_ns } => wait until then or a new target
//! }
//! balloon at rest (Done / Clamped): let r = hp.try_hot_remove(mm, &mut balloon);
//!         (optionally unmap r.ranges; nothing touches them anyway)
//! after either: write hp.status(mm).fields() under data/hotplug/, census under data/mm/
//! ```
//!
//! The `map` callback must make the range accessible (direct map / page tables) before it
//! returns: the balloon populates the range only after the callback succeeded and the
//! range was adopted, and populated pages join the allocator, whose users touch them. If
//! it fails, the sections are removed again and the failure is reported like any other.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use super::balloon::backoff::Backoff;
use super::balloon::Balloon;
use crate::mm::geometry::{section_start_pfn, PAGES_PER_SECTION};
use crate::mm::hotplug::{
    hot_add, hot_remove_section, storage_for_sections, HotAdded, HotplugError, HotplugWindow,
};
use crate::mm::{MemModel, MemmapStorage, MmError, PfnRange, SectionKind, StateKind};
use xen_bindings::traits::MemoryReservation;

/// What [`Hotplug::on_need_hotplug`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HotplugOutcome {
    /// Sections were added, mapped and handed to the balloon: step it.
    Added(HotAdded),
    /// Nothing was done now (an earlier failure is being backed off, or this attempt
    /// failed: see [`Hotplug::last_error`]). Try again at `until_ns` or on a new target.
    BackingOff {
        /// Do not call before this (Xen system time, ns).
        until_ns: u64,
    },
}

/// What [`Hotplug::try_hot_remove`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HotRemoved {
    /// Sections removed, highest first.
    pub sections: Vec<usize>,
    /// Their ranges.
    pub ranges: Vec<PfnRange>,
    /// Memmap bytes given back to the storage provider.
    pub memmap_bytes: u64,
    /// Storage frames that emptied and went back to the allocator.
    pub frames_returned: usize,
}

/// Counters since boot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HotplugCounters {
    /// Successful hot-adds (calls).
    pub adds: u64,
    /// Sections hot-added.
    pub sections_added: u64,
    /// Sections hot-removed.
    pub sections_removed: u64,
    /// Failed hot-add attempts (each rolled back).
    pub failures: u64,
    /// Calls refused because a backoff was running (no work done).
    pub deferred: u64,
    /// Memmap bytes freed by hot-remove.
    pub memmap_bytes_freed: u64,
    /// Hot-adds that added fewer sections than asked for because memmap storage ran short
    /// (growth by steps: the rest follows once these are populated).
    pub partial_adds: u64,
    /// 2 MiB frames taken from the allocator for memmap storage / given back.
    pub storage_frames_taken: u64,
    /// See `storage_frames_taken`.
    pub storage_frames_returned: u64,
    /// Pages moved out of hot-added sections (Free pages left there by returned storage
    /// frames) so the sections could be removed.
    pub evacuated_pages: u64,
}

/// Where the CPU time of the last successful hot-add went, by phase, on this vCPU's CPU
/// clock ([`Hotplug::with_cpu_clock`]; all 0 without one). Published under
/// `data/hotplug/last-add/` so a benchmark can say which part of a hot-add step is ours.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddTiming {
    /// Sections added.
    pub sections: u64,
    /// Taking 2 MiB blocks of our RAM for memmap storage.
    pub refill_ns: u64,
    /// Building the sections: memmap filled Offline, subsections active, online.
    pub build_ns: u64,
    /// Page tables for the new ranges.
    pub map_ns: u64,
    /// The balloon adopting the ranges (with its check that every page is Offline).
    pub adopt_ns: u64,
}

/// The hotplug driver's state.
pub struct Hotplug {
    window: HotplugWindow,
    backoff: Backoff,
    counters: HotplugCounters,
    last_error: Option<HotplugError>,
    last_error_text: String,
    /// This vCPU's time on a CPU, for [`AddTiming`].
    cpu_clock: Option<fn() -> u64>,
    last_add: AddTiming,
}

impl Hotplug {
    /// A driver adding sections inside `window`.
    pub fn new(window: HotplugWindow) -> Hotplug {
        Hotplug {
            window,
            backoff: Backoff::default(),
            counters: HotplugCounters::default(),
            last_error: None,
            last_error_text: String::new(),
            cpu_clock: None,
            last_add: AddTiming::default(),
        }
    }

    /// Times each hot-add's phases with `clock` (ns of this vCPU on a CPU).
    pub fn with_cpu_clock(mut self, clock: fn() -> u64) -> Hotplug {
        self.cpu_clock = Some(clock);
        self
    }

    /// The last successful hot-add's phases.
    pub fn last_add(&self) -> AddTiming {
        self.last_add
    }

    fn cpu_now(&self) -> u64 {
        self.cpu_clock.map_or(0, |c| c())
    }

    /// The window sections are added in.
    pub fn window(&self) -> &HotplugWindow {
        &self.window
    }

    /// Counters since boot.
    pub fn counters(&self) -> &HotplugCounters {
        &self.counters
    }

    /// The last failure, if any (kept after later successes, for the status).
    pub fn last_error(&self) -> Option<HotplugError> {
        self.last_error
    }

    /// When a backed-off hot-add may be tried again, if one is backing off.
    pub fn retry_at(&self) -> Option<u64> {
        self.backoff.deadline()
    }

    /// A new `memory/target`: retry at once (the toolstack may have fixed the cause, or
    /// the new target may need less).
    pub fn new_target(&mut self) {
        self.backoff.reset();
    }

    /// React to the balloon's `NeedHotplug { pages }`: add the sections (every page
    /// Offline, online), have the kernel `map` each new range, and give the ranges to the
    /// balloon as ballooned extents ([`Balloon::adopt_hotplugged`]) so its next steps
    /// populate them at order 9.
    ///
    /// On failure everything this call did is undone (sections removed, memmap freed,
    /// nothing adopted), the error is recorded for the status, and the driver backs off
    /// (1 s doubling to 32 s): calls before the deadline return `BackingOff` at once
    /// without trying, so a caller cannot make it spin.
    pub fn on_need_hotplug<S: MemmapStorage, E: fmt::Display>(
        &mut self,
        mm: &MemModel<S>,
        balloon: &mut Balloon,
        pages: u64,
        now_ns: u64,
        mut map: impl FnMut(PfnRange) -> Result<(), E>,
    ) -> HotplugOutcome {
        if !self.backoff.ready(now_ns) {
            self.counters.deferred += 1;
            let until_ns = self.backoff.deadline().unwrap_or(now_ns);
            return HotplugOutcome::BackingOff { until_ns };
        }
        // Storage for the memmap first, outside the model's lock: as much as this
        // request needs, or as much as free 2 MiB blocks allow (hot_add then adds what
        // fits; the rest comes once those sections are populated).
        let free_sections = self
            .window
            .ram_sections()
            .filter(|&nr| mm.section_info(nr).is_none_or(|s| s.present == 0))
            .count();
        let want = (pages.div_ceil(PAGES_PER_SECTION) as usize).min(free_sections);
        let mut short = String::new();
        let c0 = self.cpu_now();
        let before = mm.with_storage(|s| s.frames());
        if let Err(e) = mm.refill_storage(storage_for_sections(want.max(1))) {
            short = match e {
                MmError::OutOfMemory { .. } => {
                    String::from(" (no free 2 MiB block of our RAM left for memmap storage)")
                }
                e => format!(" (storage refill: {e})"),
            };
            log::debug!("hotplug: storage refill stopped short{short}");
        }
        let taken = mm.with_storage(|s| s.frames()).saturating_sub(before);
        self.counters.storage_frames_taken += taken as u64;
        let c1 = self.cpu_now();
        let added = match hot_add(mm, &self.window, pages) {
            Ok(a) => a,
            Err(e) => {
                self.trim(mm);
                return self.fail(now_ns, e, short);
            }
        };
        let c2 = self.cpu_now();
        for (n, &range) in added.ranges.iter().enumerate() {
            if let Err(why) = map(range) {
                self.undo(mm, balloon, &added, n);
                return self.fail(now_ns, HotplugError::Map { range }, format!(": {why}"));
            }
        }
        let c3 = self.cpu_now();
        for (n, &range) in added.ranges.iter().enumerate() {
            if let Err(error) = balloon.adopt_hotplugged(mm, range) {
                self.undo(mm, balloon, &added, n);
                return self.fail(now_ns, HotplugError::Adopt { range, error }, String::new());
            }
        }
        let c4 = self.cpu_now();
        if let Some(why) = added.stopped {
            // Not a failure: progress was made; the next NeedHotplug continues.
            self.counters.partial_adds += 1;
            log::info!(
                "hotplug: growing by steps: {} of {} section(s) now ({why}); the rest once they are populated",
                added.sections.len(),
                want
            );
        }
        self.last_add = AddTiming {
            sections: added.sections.len() as u64,
            refill_ns: c1.saturating_sub(c0),
            build_ns: c2.saturating_sub(c1),
            map_ns: c3.saturating_sub(c2),
            adopt_ns: c4.saturating_sub(c3),
        };
        self.trim(mm);
        self.backoff.reset();
        self.counters.adds += 1;
        self.counters.sections_added += added.sections.len() as u64;
        HotplugOutcome::Added(added)
    }

    /// Give emptied storage frames back to the allocator.
    fn trim<S: MemmapStorage>(&mut self, mm: &MemModel<S>) -> usize {
        let n = mm.trim_storage();
        self.counters.storage_frames_returned += n as u64;
        n
    }

    /// Remove what `on_need_hotplug` added after `adopted` of its ranges were adopted.
    fn undo<S: MemmapStorage>(
        &mut self,
        mm: &MemModel<S>,
        balloon: &mut Balloon,
        added: &HotAdded,
        adopted: usize,
    ) {
        for &range in &added.ranges[..adopted] {
            // Just adopted, nothing populated yet: every page is still ballooned.
            let _ = balloon.forget_hotplugged(range);
        }
        for &nr in added.sections.iter().rev() {
            if let Err(e) = hot_remove_section(mm, nr) {
                log::error!("hotplug: undo of section {nr:#x} failed: {e}");
            }
        }
        self.trim(mm);
    }

    fn fail(&mut self, now_ns: u64, e: HotplugError, detail: String) -> HotplugOutcome {
        let until_ns = self.backoff.failed(now_ns);
        self.counters.failures += 1;
        self.last_error = Some(e);
        self.last_error_text = format!("{e}{detail}");
        log::warn!(
            "hotplug: {}; rolled back, retrying in {} ms",
            self.last_error_text,
            self.backoff.delay_ns() / 1_000_000
        );
        HotplugOutcome::BackingOff { until_ns }
    }

    /// Remove every hot-added section whose pages are all ballooned out (Offline, no
    /// frame), highest first: its extents leave the balloon's lists, then the section
    /// goes offline -> inactive -> grace period -> memmap freed -> absent; storage frames
    /// that emptied go back to the allocator. Does nothing unless the balloon is at rest
    /// (`done` or `clamped`) or still above its target (going down, e.g. stuck because
    /// the memmap of what is to be removed is most of what is left): a balloon going up
    /// would only need the section again.
    ///
    /// Policy (see [`Balloon::adopt_hotplugged`]): going down, the balloon empties
    /// hot-added sections first, highest first, so this removes them in that order and
    /// boot RAM is never removed.
    pub fn try_hot_remove<S: MemmapStorage>(
        &mut self,
        mm: &MemModel<S>,
        balloon: &mut Balloon,
    ) -> HotRemoved {
        let mut removed = HotRemoved::default();
        if !balloon.at_rest() && !balloon.above_target(mm) {
            return removed;
        }
        for nr in self.window.ram_sections().rev() {
            let Some(info) = mm.section_info(nr) else {
                continue;
            };
            if info.present == 0 || info.kind != Some(SectionKind::HotplugRam) {
                continue;
            }
            let range = PfnRange::from_count(section_start_pfn(nr), PAGES_PER_SECTION);
            if balloon.ballooned_in(range) != PAGES_PER_SECTION
                || balloon.forget_hotplugged(range).is_err()
            {
                continue;
            }
            match hot_remove_section(mm, nr) {
                Ok(bytes) => {
                    removed.sections.push(nr);
                    removed.ranges.push(range);
                    removed.memmap_bytes += bytes;
                }
                Err(error) => {
                    // The balloon's lists said all Offline and the model disagrees: a bug.
                    // Give the range back to the balloon and report it.
                    log::error!("hotplug: removing section {nr:#x}: {error}");
                    let _ = balloon.adopt_hotplugged(mm, range);
                    self.last_error = Some(HotplugError::Model { section: nr, error });
                    self.last_error_text = format!("hot-remove section {nr:#x}: {error}");
                }
            }
        }
        if !removed.sections.is_empty() {
            removed.frames_returned = self.trim(mm);
            self.counters.sections_removed += removed.sections.len() as u64;
            self.counters.memmap_bytes_freed += removed.memmap_bytes;
            log::info!(
                "hotplug: removed {} section(s), {} KiB of memmap freed",
                removed.sections.len(),
                removed.memmap_bytes / 1024
            );
        }
        removed
    }

    /// After hot-remove, storage frames that lived in a still-present hot-added section
    /// went back to the allocator as Free pages, and the balloon — at its target — has no
    /// reason to give them back: the section could never be removed. Move them: give the
    /// Free pages of such sections (no Allocated or Reserved page left) back to Xen
    /// ([`Balloon::evacuate`]); the balloon then populates as many pages elsewhere (boot
    /// RAM's holes) and the section empties. Only when the balloon has that many pages
    /// ballooned outside hot-added sections (else it would populate the same ones again).
    /// Returns the pages moved: if any, step the balloon again.
    pub fn evacuate<S: MemmapStorage, X: MemoryReservation>(
        &mut self,
        mm: &MemModel<S>,
        balloon: &mut Balloon,
        xen: &mut X,
    ) -> u64 {
        if !balloon.at_rest() {
            return 0;
        }
        let mut moved = 0;
        for nr in self.window.ram_sections().rev() {
            let Some(info) = mm.section_info(nr) else {
                continue;
            };
            if info.present == 0 || info.kind != Some(SectionKind::HotplugRam) {
                continue;
            }
            let Some(counts) = mm.section_pages(nr) else {
                continue;
            };
            let busy = counts[StateKind::Allocated.index()] + counts[StateKind::Reserved.index()];
            let free = counts[StateKind::Free.index()];
            if busy != 0 || free == 0 || balloon.ballooned_outside_hotplugged() < moved + free {
                continue;
            }
            let range = PfnRange::from_count(section_start_pfn(nr), PAGES_PER_SECTION);
            match balloon.evacuate(mm, xen, range) {
                Ok(n) => moved += n,
                Err(e) => log::warn!("hotplug: evacuating section {nr:#x}: {e}"),
            }
        }
        if moved != 0 {
            self.counters.evacuated_pages += moved;
            log::info!(
                "hotplug: moved {} KiB out of emptied hot-added sections so they can go",
                moved * 4
            );
        }
        moved
    }

    /// A snapshot for `data/hotplug/`.
    pub fn status<S: MemmapStorage>(&self, mm: &MemModel<S>) -> HotplugStatus {
        let c = mm.census().by_kind[SectionKind::HotplugRam.index()];
        HotplugStatus {
            window: self.window,
            backing_off: self.backoff.backing_off(),
            backoff_ms: self.backoff.delay_ns() / 1_000_000,
            last_error: self.last_error,
            last_error_text: self.last_error_text.clone(),
            counters: self.counters,
            sections_present: c.sections_present,
            sections_online: c.sections_online,
            subsections_active: c.subsections_active,
            hotplug_kib: c.kib(),
            memmap_bytes: c.memmap_bytes(),
            storage_frames: mm.with_storage(|s| s.frames()),
            storage_free_bytes: mm.with_storage(|s| s.free_bytes()).unwrap_or(0),
            last_add: self.last_add,
        }
    }
}

/// Nanoseconds as whole microseconds.
fn us(ns: u64) -> String {
    format!("{}", ns / 1000)
}

/// The hotplug driver's numbers as published under the guest's `data/hotplug/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HotplugStatus {
    /// The windows.
    pub window: HotplugWindow,
    /// Whether a failed hot-add is being backed off.
    pub backing_off: bool,
    /// Current backoff delay.
    pub backoff_ms: u64,
    /// The last failure.
    pub last_error: Option<HotplugError>,
    /// Its text.
    pub last_error_text: String,
    /// Counters.
    pub counters: HotplugCounters,
    /// Hot-plug RAM sections present now.
    pub sections_present: u64,
    /// Of those, online.
    pub sections_online: u64,
    /// Their active subsections.
    pub subsections_active: u64,
    /// Hot-added space now (KiB).
    pub hotplug_kib: u64,
    /// Memmap bytes of hot-added sections now.
    pub memmap_bytes: u64,
    /// Storage frames held now.
    pub storage_frames: usize,
    /// Storage bytes free now (`None` from an unbounded provider: shown as 0).
    pub storage_free_bytes: usize,
    /// The last successful hot-add's phases.
    pub last_add: AddTiming,
}

impl HotplugStatus {
    /// (key under `data/hotplug/`, value). Keys:
    ///
    /// | key | value |
    /// |---|---|
    /// | `state` | `idle` or `backing-off` |
    /// | `last-error` | text of the last failure (empty if none) |
    /// | `last-error-kind` | `window-full` `storage` `model` `map` `adopt` (empty if none) |
    /// | `failures` | failed hot-add attempts, each rolled back |
    /// | `deferred` | calls refused during a backoff |
    /// | `backoff-ms` | current backoff delay |
    /// | `adds`, `sections-added`, `sections-removed` | since boot |
    /// | `memmap-freed-bytes` | memmap given back by hot-remove since boot |
    /// | `partial-adds` | hot-adds that added what fit (growth by steps) |
    /// | `storage/frames-taken`, `storage/frames-returned` | 2 MiB frames of our RAM taken for memmap storage / given back, since boot |
    /// | `storage/frames`, `storage/free-bytes` | frames held now; storage bytes free now (boot region + frames) |
    /// | `evacuated-pages` | Free pages moved out of emptied hot-added sections |
    /// | `sections/present`, `sections/online`, `subsections/active` | hot-plug RAM now |
    /// | `kib` | hot-added space now |
    /// | `memmap-bytes` | memmap of hot-added sections now |
    /// | `window/ram-start`, `window/ram-kib` | hot-add window (hex address, KiB) |
    /// | `window/device-start`, `window/device-kib` | device window |
    /// | `last-add/sections`, `last-add/{refill,build,map,adopt}-us` | the last hot-add's CPU time by phase ([`AddTiming`]) |
    pub fn fields(&self) -> impl Iterator<Item = (&'static str, String)> + '_ {
        let c = &self.counters;
        let state = if self.backing_off {
            "backing-off"
        } else {
            "idle"
        };
        [
            ("state", String::from(state)),
            ("last-error", self.last_error_text.clone()),
            (
                "last-error-kind",
                String::from(self.last_error.map_or("", |e| e.name())),
            ),
            ("failures", format!("{}", c.failures)),
            ("deferred", format!("{}", c.deferred)),
            ("backoff-ms", format!("{}", self.backoff_ms)),
            ("adds", format!("{}", c.adds)),
            ("sections-added", format!("{}", c.sections_added)),
            ("sections-removed", format!("{}", c.sections_removed)),
            ("memmap-freed-bytes", format!("{}", c.memmap_bytes_freed)),
            ("partial-adds", format!("{}", c.partial_adds)),
            (
                "storage/frames-taken",
                format!("{}", c.storage_frames_taken),
            ),
            (
                "storage/frames-returned",
                format!("{}", c.storage_frames_returned),
            ),
            ("storage/frames", format!("{}", self.storage_frames)),
            ("storage/free-bytes", format!("{}", self.storage_free_bytes)),
            ("evacuated-pages", format!("{}", c.evacuated_pages)),
            ("sections/present", format!("{}", self.sections_present)),
            ("sections/online", format!("{}", self.sections_online)),
            ("subsections/active", format!("{}", self.subsections_active)),
            ("kib", format!("{}", self.hotplug_kib)),
            ("memmap-bytes", format!("{}", self.memmap_bytes)),
            (
                "window/ram-start",
                format!("{:#x}", self.window.ram.start.addr()),
            ),
            ("window/ram-kib", format!("{}", self.window.ram.len() * 4)),
            (
                "window/device-start",
                format!("{:#x}", self.window.device.start.addr()),
            ),
            (
                "window/device-kib",
                format!("{}", self.window.device.len() * 4),
            ),
            ("last-add/sections", format!("{}", self.last_add.sections)),
            ("last-add/refill-us", us(self.last_add.refill_ns)),
            ("last-add/build-us", us(self.last_add.build_ns)),
            ("last-add/map-us", us(self.last_add.map_ns)),
            ("last-add/adopt-us", us(self.last_add.adopt_ns)),
        ]
        .into_iter()
    }
}
