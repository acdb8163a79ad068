//! The balloon driver: follows `memory/target` by handing frames back to Xen
//! (`XENMEM_decrease_reservation`) and taking them again (`XENMEM_populate_physmap`).
//!
//! Pure logic: Xen comes in as `&mut impl MemoryReservation`, the memory model as
//! `&MemModel`, time as `now_ns`. The kernel's loop is
//!
//! ```text
//! let mut b = Balloon::new(BalloonConfig::default());
//! b.adopt_boot_offline(mm, xen, now)?;         // PoD excess: release before anything else
//! on memory/target watch: b.set_target(value, static_max_kib, now);
//! loop: match b.step(mm, xen, now) {
//!     Progress               => call again soon (yield to other work first),
//!     BackingOff { until_ns } => poll with deadline until_ns (or a new target),
//!     Done                   => wait for a new target (then, at rest, hot-remove:
//!                               `Hotplug::try_hot_remove`),
//!     NeedHotplug { pages }  => `Hotplug::on_need_hotplug` (crate::xen::hotplug): on
//!                               Added step again; else wait for its deadline or a
//!                               new target,
//!     Error => log the status' last error; the driver has backed off, so a later
//!              step (timer or new target) retries without spinning,
//! }
//! after each step: write b.status(mm).fields() under data/balloon/
//! ```
//!
//! Units: targets are KiB (as xenstore has them); the driver counts 4 KiB pages and
//! compares the target with the model's own RAM, [`crate::mm::Census::ram_pages`]
//! (Reserved RAM + Free + Allocated). For PVH, libxl builds the memmap's RAM as
//! `max_memkb - video_memkb` and writes `memory/target` as `target_memkb - video_memkb`,
//! with `video_memkb = 0` for PVH (since "tools/libs/light: set video_mem for PVH
//! guests", 2022; before, -1 added a partial page of RAM, which the model ignores): both
//! count the same pages, so the difference Linux computes at its first target
//! (`static-max - initial pages`) is zero here and the target is used as it is. Under
//! populate-on-demand the memmap shows `static-max` of RAM; what boot marked Offline
//! beyond the touch limit is released by [`Balloon::adopt_boot_offline`]. What is left over — pages Xen accounts to the domain outside its RAM map — is
//! the constant [accounting offset](Balloon::check_accounting).
//!
//! Ballooned-out pages are kept as a list of extents (Linux's `ballooned_pages`), order 9
//! (a whole 2 MiB subsection, the largest extent a domU may use) where possible, order 0
//! otherwise. Their pages are Offline in the model: no frame behind them, never touched.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use xen_bindings::traits::{Gfn, MemoryReservation};
use xen_bindings::Errno;

use super::backoff::Backoff;
use super::target::{self, Target, TargetError};
use crate::mm::geometry::{MAX_PFN, PAGES_PER_SUBSECTION, SUBSECTION_SHIFT};
use crate::mm::{
    MemModel, MemmapStorage, MmError, PageState, Pfn, PfnRange, SectionKind, StateKind,
};

/// Order of a whole-subsection extent (2 MiB).
pub const ORDER_SUBSECTION: u32 = SUBSECTION_SHIFT;
const KIB_PER_PAGE: u64 = 4;

/// Default floor: 32 MiB. What this kernel needs to stay alive with room to spare: the
/// image and boot data (~3 MiB), memmap storage (8 KiB per 2 MiB of RAM: 4 MiB for a
/// 1 GiB maxmem, plus ~0.8 MiB of storage headroom), the heap (grows in 2 MiB frames;
/// xenstore, console and balloon buffers), page tables, and headroom for the allocator.
/// Linux has no floor and can balloon itself into an OOM panic.
pub const DEFAULT_FLOOR_KIB: u64 = 32 * 1024;

/// Extents per hypercall at order 9: 512 × 2 MiB = 1 GiB per call (a 4 KiB argument
/// array). Xen 4.17 preempts a long `XENMEM_{populate_physmap,decrease_reservation}`
/// itself (`hypercall_preempt_check` between extents, then a continuation that re-enters
/// the same hypercall with `start_extent` advanced in the command's upper bits): the
/// guest sees one call, and the vCPU is not held hostage meanwhile.
pub const DEFAULT_BATCH_ORDER9: usize = 512;
/// Extents per hypercall at order 0: 512 (2 MiB), as Linux's balloon does.
pub const DEFAULT_BATCH_ORDER0: usize = 512;

/// Tuning of the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BalloonConfig {
    /// The driver never goes below this much RAM (KiB); lower targets are clamped.
    pub floor_kib: u64,
    /// Order-9 extents per hypercall.
    pub batch_order9: usize,
    /// Order-0 extents per hypercall.
    pub batch_order0: usize,
    /// The most RAM this guest can reach (KiB): boot RAM plus the hot-plug window
    /// (`crate::mm::hotplug` "Limits"). Higher targets are clamped to it, with one log
    /// line and the state `clamped`. `None`: no ceiling.
    pub ceiling_kib: Option<u64>,
}

impl Default for BalloonConfig {
    fn default() -> Self {
        BalloonConfig {
            floor_kib: DEFAULT_FLOOR_KIB,
            batch_order9: DEFAULT_BATCH_ORDER9,
            batch_order0: DEFAULT_BATCH_ORDER0,
            ceiling_kib: None,
        }
    }
}

/// What [`Balloon::step`] says to do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepOutcome {
    /// At the target exactly (or clamped at the floor), or no target yet: wait for one.
    Done,
    /// Work was done and more is left: call again soon.
    Progress,
    /// Xen refused or nothing could be done: do not call before `until_ns` (a new
    /// target may come earlier and is acted on at once).
    BackingOff { until_ns: u64 },
    /// The target is above everything the guest has ever had: only hotplug can add the
    /// missing `pages`. Wait for a new target.
    NeedHotplug { pages: u64 },
    /// The memory model refused a transition (a bug); see the status' last error. The
    /// driver backs off before trying again.
    Error,
}

/// The driver's state as published in `data/balloon/state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BalloonState {
    /// No valid target read yet.
    Waiting,
    Done,
    Working,
    BackingOff,
    /// At the floor, above the requested target.
    Clamped,
    /// The last `memory/target` value was rejected, or the model refused a step.
    Error,
    /// The target needs memory hotplug.
    NeedHotplug,
}

impl BalloonState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Done => "done",
            Self::Working => "working",
            Self::BackingOff => "backing-off",
            Self::Clamped => "clamped",
            Self::Error => "error",
            Self::NeedHotplug => "need-hotplug",
        }
    }
}

impl fmt::Display for BalloonState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One balloon step — from a new target until the model holds it — on the guest's own
/// clock (Xen system time), split into time inside the reservation hypercalls (Xen's
/// work: freeing or allocating and scrubbing frames, p2m updates) and everything else
/// (ours: memmap updates, batch building, the event loop, hot-add). Published under
/// `data/balloon/step/` when the step ends ([`Balloon::last_step`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepTiming {
    /// Steps finished since boot (1 for the first).
    pub seq: u64,
    /// The effective target (KiB).
    pub target_kib: u64,
    /// From the target being set to reaching it.
    pub total_ns: u64,
    /// Inside `populate_physmap` / `decrease_reservation`.
    pub hypercall_ns: u64,
    /// Those hypercalls.
    pub hypercalls: u64,
    /// Outside them, in the memory model: taking free blocks out before a release,
    /// handing populated blocks to the allocator after a populate (memmap updates).
    pub model_ns: u64,
    /// Outside them, zeroing pages that held our data before Xen gets them.
    pub scrub_ns: u64,
    /// Pages moved (populated + released).
    pub pages: u64,
    /// The balloon vCPU's time on a physical CPU over the step, by Xen's runstate
    /// account (0 without a CPU clock): the wall time above also holds the time it
    /// waited for the CPU while dom0 or another guest ran (steal).
    pub cpu_ns: u64,
    /// Of which inside the reservation hypercalls.
    pub hypercall_cpu_ns: u64,
}

impl StepTiming {
    /// Time outside the hypercalls: ours.
    pub fn outside_ns(&self) -> u64 {
        self.total_ns.saturating_sub(self.hypercall_ns)
    }

    /// Time outside the hypercalls per thousand of the step (0 for an empty step).
    pub fn outside_permille(&self) -> u64 {
        self.permille_of_step(self.outside_ns())
    }

    /// CPU time outside the hypercalls: our own work, without the time we waited for
    /// the CPU.
    pub fn outside_cpu_ns(&self) -> u64 {
        self.cpu_ns.saturating_sub(self.hypercall_cpu_ns)
    }

    /// [`Self::outside_cpu_ns`] per thousand of the step's wall time.
    pub fn outside_cpu_permille(&self) -> u64 {
        self.permille_of_step(self.outside_cpu_ns())
    }

    /// `ns` per thousand of the step's wall time (0 for an empty step).
    fn permille_of_step(&self, ns: u64) -> u64 {
        (ns * 1000).checked_div(self.total_ns).unwrap_or(0)
    }
}

/// Counters since boot; index `[0]` is order 0, `[1]` order 9.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Extents Xen took back (decrease_reservation), boot PoD excess included.
    pub released: [u64; 2],
    /// Extents Xen backed again (populate_physmap).
    pub populated: [u64; 2],
    /// Pages of the boot populate-on-demand excess released.
    pub boot_excess_pages: u64,
    /// populate_physmap + decrease_reservation calls.
    pub hypercalls: u64,
    /// Times the driver started or extended a backoff.
    pub backoffs: u64,
    /// `memory/target` values rejected.
    pub rejected_targets: u64,
    /// Accounting checks that found the offset changed.
    pub accounting_mismatches: u64,
    /// Pages zeroed before going back to Xen ([`Balloon::with_scrubber`]).
    pub scrubbed_pages: u64,
}

/// Why the accounting check failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccountingError {
    /// `XENMEM_current_reservation` failed.
    Xen(Errno),
    /// `tot_pages - ram_pages` is not the offset measured at init.
    Mismatch { expected: i64, found: i64 },
}

impl fmt::Display for AccountingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Xen(e) => write!(f, "current_reservation: {e}"),
            Self::Mismatch { expected, found } => write!(
                f,
                "accounting: Xen tot_pages - model RAM = {found} pages, expected {expected}"
            ),
        }
    }
}

/// Why [`Balloon::forget_hotplugged`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForgetError {
    /// Pages of the range are still populated (not on the ballooned lists).
    InUse { pages: u64 },
    /// The range is not (inside) a range given to [`Balloon::adopt_hotplugged`].
    NotHotplugged,
}

impl fmt::Display for ForgetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InUse { pages } => write!(f, "{pages} pages still populated"),
            Self::NotHotplugged => f.write_str("not a hot-added range"),
        }
    }
}

/// A step that could not finish; decides the outcome.
enum Failure {
    /// The hypercall failed.
    Xen(&'static str, Errno),
    /// Nothing could be done (Xen did 0 extents, or no free page to give).
    Stuck(&'static str),
    /// The model refused a transition.
    Model(&'static str, MmError),
}

fn idx(order: u32) -> usize {
    (order == ORDER_SUBSECTION) as usize
}

/// The balloon driver's state.
pub struct Balloon {
    cfg: BalloonConfig,
    target: Option<Target>,
    /// Effective target in pages (`effective_kib / 4`).
    target_pages: u64,
    /// Ballooned-out extents by order (`[0]` order 0, `[1]` order 9): Offline in the
    /// model, no frame in Xen. Used LIFO, like Linux.
    ballooned: [Vec<Gfn>; 2],
    /// Boot-time Offline extents (populate-on-demand excess) not yet released to Xen:
    /// still PoD entries there. Released before any other work; never populated.
    unreleased: [Vec<Gfn>; 2],
    /// Whether the boot Offline pages were collected.
    adopted: bool,
    /// Whether any boot page was Offline: a populate-on-demand domain.
    pod: bool,
    backoff: Backoff,
    /// Xen did 0 order-9 extents while order 0 worked (host fragmented, order limit,
    /// or near max_pages): skip order 9 until the target changes or a backoff ends.
    order9_refused: bool,
    state: BalloonState,
    /// The last `memory/target` write was rejected (state shows `error` until a valid one).
    target_rejected: bool,
    last_error: String,
    counters: Counters,
    /// `tot_pages - ram_pages` measured once the boot excess is gone.
    offset: Option<i64>,
    /// The last measured `tot_pages - ram_pages`.
    last_delta: Option<i64>,
    target_set_ns: u64,
    /// The CPU clock's reading when the last target was set.
    target_set_cpu_ns: u64,
    /// Nanoseconds from the last target to reaching it.
    reached_after_ns: Option<u64>,
    need_hotplug_pages: u64,
    /// Hot-added ranges handed over by [`Balloon::adopt_hotplugged`], ascending. Going
    /// down, free memory is taken from these first (highest first), so hot-added sections
    /// empty out and can be removed; see [`Balloon::adopt_hotplugged`].
    hotplugged: Vec<PfnRange>,
    /// Reused hypercall argument buffer.
    batch: Vec<Gfn>,
    /// For a batch being given back: which extents the model took Allocated because they
    /// may hold our data (zeroed, then Offline, before the hypercall; `scrub_batch`).
    batch_dirty: Vec<bool>,
    /// Pages to hold below the target for now: free memory handed back to Xen before a
    /// suspend ([`Balloon::set_handback`]).
    handback_pages: u64,
    /// Zeroes `2^order` frames at a gfn ([`Balloon::with_scrubber`]); `None`: pages go
    /// back to Xen as they are.
    scrub: Option<fn(Gfn, u32)>,
    /// The clock for [`StepTiming`] (Xen system time, ns); `None`: no step timing.
    clock: Option<fn() -> u64>,
    /// This vCPU's time on a CPU ([`Balloon::with_cpu_clock`]).
    cpu_clock: Option<fn() -> u64>,
    /// The step in progress (since the last new target).
    step_timing: StepTiming,
    /// The last finished step.
    last_step: Option<StepTiming>,
    /// Steps finished since boot.
    steps_done: u64,
}

impl Balloon {
    pub fn new(cfg: BalloonConfig) -> Balloon {
        Balloon {
            cfg: BalloonConfig {
                batch_order9: cfg.batch_order9.max(1),
                batch_order0: cfg.batch_order0.max(1),
                ..cfg
            },
            target: None,
            target_pages: 0,
            ballooned: [Vec::new(), Vec::new()],
            unreleased: [Vec::new(), Vec::new()],
            adopted: false,
            pod: false,
            backoff: Backoff::default(),
            order9_refused: false,
            state: BalloonState::Waiting,
            target_rejected: false,
            last_error: String::new(),
            counters: Counters::default(),
            offset: None,
            last_delta: None,
            target_set_ns: 0,
            target_set_cpu_ns: 0,
            reached_after_ns: None,
            need_hotplug_pages: 0,
            hotplugged: Vec::new(),
            batch: Vec::new(),
            batch_dirty: Vec::new(),
            handback_pages: 0,
            scrub: None,
            clock: None,
            cpu_clock: None,
            step_timing: StepTiming::default(),
            last_step: None,
            steps_done: 0,
        }
    }

    /// Zero every extent that may hold our data ([`MemModel::needs_scrub`]) with `scrub`
    /// before it goes back to Xen. Xen 4.17 does not scrub what a live domain frees
    /// (`free_domheap_pages`: "we expect a domain to clear pages before freeing them, if it
    /// cares about the secrecy of their contents"), and hands the frames to the next
    /// domain that populates; Linux zeroes every ballooned page (`xen_scrub_pages`).
    pub fn with_scrubber(mut self, scrub: fn(Gfn, u32)) -> Balloon {
        self.scrub = Some(scrub);
        self
    }

    /// Time each step against `clock` (Xen system time in ns, the kernel's
    /// `hv::uptime_ns`): inside the reservation hypercalls vs outside ([`StepTiming`]).
    pub fn with_clock(mut self, clock: fn() -> u64) -> Balloon {
        self.clock = Some(clock);
        self
    }

    /// Also split each step's time by this vCPU's time on a CPU (`clock`: nanoseconds it
    /// has run, Xen's runstate account), so that time spent waiting for the CPU is not
    /// taken for ours.
    pub fn with_cpu_clock(mut self, clock: fn() -> u64) -> Balloon {
        self.cpu_clock = Some(clock);
        self
    }

    /// The CPU clock's reading, if there is one.
    fn cpu_now(&self) -> Option<u64> {
        self.cpu_clock.map(|c| c())
    }

    /// The last finished step's timing (needs [`Balloon::with_clock`]).
    pub fn last_step(&self) -> Option<StepTiming> {
        self.last_step
    }

    /// The clock's reading, if there is a clock.
    fn clock_now(&self) -> Option<u64> {
        self.clock.map(|c| c())
    }

    /// Charge the memory model's bookkeeping that started at `t0` to the step in progress.
    fn charge_model(&mut self, t0: Option<u64>) {
        if let (Some(t0), Some(t1)) = (t0, self.clock_now()) {
            self.step_timing.model_ns += t1.saturating_sub(t0);
        }
    }

    /// Empty the batch (and its dirty flags) for extents to give back.
    fn clear_batch(&mut self) {
        self.batch.clear();
        self.batch_dirty.clear();
    }

    /// Appends an extent taken for giving back, and whether the model took it Allocated
    /// for zeroing, to the batch.
    fn batch_sink(&mut self) -> impl FnMut(Pfn, bool) + '_ {
        let (batch, dirty) = (&mut self.batch, &mut self.batch_dirty);
        move |p, d| {
            batch.push(p.0);
            dirty.push(d);
        }
    }

    /// Zero the extents of the batch that the model took Allocated because they may hold
    /// our data ([`Balloon::with_scrubber`]), then let them go Offline: the whole batch is
    /// Offline when this returns Ok. A whole subsection zeroed holds nothing of ours
    /// afterwards, whatever Xen does with it.
    fn scrub_batch<S: MemmapStorage>(
        &mut self,
        mm: &MemModel<S>,
        order: u32,
    ) -> Result<(), Failure> {
        let Some(scrub) = self.scrub else {
            return Ok(());
        };
        let t0 = self.clock_now();
        let mut pages = 0;
        for (&g, &dirty) in self.batch.iter().zip(&self.batch_dirty) {
            if dirty {
                scrub(g, order);
                mm.offline_scrubbed(Pfn(g), order as u8)
                    .map_err(|e| Failure::Model("offline_scrubbed", e))?;
                pages += 1u64 << order;
            }
        }
        self.counters.scrubbed_pages += pages;
        if pages != 0 {
            if let (Some(t0), Some(t1)) = (t0, self.clock_now()) {
                self.step_timing.scrub_ns += t1.saturating_sub(t0);
            }
        }
        Ok(())
    }

    /// Charge one reservation hypercall that started at `t0` and moved `pages` to the
    /// step in progress.
    fn charge(&mut self, t0: Option<u64>, c0: Option<u64>, pages: u64) {
        self.step_timing.hypercalls += 1;
        self.step_timing.pages += pages;
        if let (Some(t0), Some(t1)) = (t0, self.clock_now()) {
            self.step_timing.hypercall_ns += t1.saturating_sub(t0);
        }
        if let (Some(c0), Some(c1)) = (c0, self.cpu_now()) {
            self.step_timing.hypercall_cpu_ns += c1.saturating_sub(c0);
        }
    }

    pub fn config(&self) -> &BalloonConfig {
        &self.cfg
    }

    /// The target being worked towards, if any.
    pub fn target(&self) -> Option<Target> {
        self.target
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Pages ballooned out (in Xen's hands), boot excess not yet released excluded.
    pub fn ballooned_pages(&self) -> u64 {
        self.ballooned[0].len() as u64 + ((self.ballooned[1].len() as u64) << ORDER_SUBSECTION)
    }

    /// Boot Offline pages still to be released.
    pub fn unreleased_pages(&self) -> u64 {
        self.unreleased[0].len() as u64 + ((self.unreleased[1].len() as u64) << ORDER_SUBSECTION)
    }

    /// The accounting offset measured at init, once known.
    pub fn accounting_offset(&self) -> Option<i64> {
        self.offset
    }

    /// A new `memory/target` value (raw xenstore bytes, KiB). Garbage and values above
    /// `static_max_kib` are rejected with a typed error: the current target and work are
    /// kept, the status shows `error` and the reason. A value below the floor is clamped.
    /// A valid target resets the backoff so it is acted on at once.
    pub fn set_target(
        &mut self,
        raw: &[u8],
        static_max_kib: u64,
        now_ns: u64,
    ) -> Result<Target, TargetError> {
        // The CPU clock starts with the wall clock's `now_ns`, before the log line below.
        let cpu_now = self.cpu_now().unwrap_or(0);
        let shown = &raw[..raw.len().min(40)];
        let parsed = target::parse_target(raw, self.cfg.floor_kib, static_max_kib);
        let parsed = parsed.map(|t| match self.cfg.ceiling_kib {
            Some(c) if t.effective_kib > c => Target {
                effective_kib: c.max(self.cfg.floor_kib),
                ..t
            },
            _ => t,
        });
        match parsed {
            Err(e) => {
                self.counters.rejected_targets += 1;
                self.target_rejected = true;
                self.last_error = format!("memory/target \"{}\": {e}", shown.escape_ascii());
                log::warn!(
                    "balloon: rejected {}; keeping target {:?} KiB",
                    self.last_error,
                    self.target.map(|t| t.effective_kib)
                );
                Err(e)
            }
            Ok(t) => {
                if t.effective_kib < t.requested_kib {
                    log::warn!(
                        "balloon: target {} KiB is above what this guest can reach (boot RAM + hot-plug window), clamped to {} KiB",
                        t.requested_kib,
                        t.effective_kib
                    );
                } else if t.clamped() {
                    log::warn!(
                        "balloon: target {} KiB is below the floor, clamped to {} KiB",
                        t.requested_kib,
                        t.effective_kib
                    );
                } else {
                    // Debug, not info: a line costs ~0.1 ms of CPU under TCG inside the
                    // step's time, and the step's end logs the target with its outcome
                    // (`settled` in the kernel's loop).
                    log::debug!("balloon: target {} KiB", t.requested_kib);
                }
                // The same value again (a watch re-fires, or the toolstack re-writes it after
                // `xl mem-max`) still retries at once, but keeps the time-to-target clock.
                if self.target != Some(t) {
                    self.target_set_ns = now_ns;
                    self.target_set_cpu_ns = cpu_now;
                    self.reached_after_ns = None;
                    self.step_timing = StepTiming {
                        target_kib: t.effective_kib,
                        ..StepTiming::default()
                    };
                }
                self.target = Some(t);
                self.target_pages = t.effective_kib / KIB_PER_PAGE;
                self.target_rejected = false;
                self.backoff.reset();
                self.order9_refused = false;
                self.need_hotplug_pages = 0;
                self.state = BalloonState::Working;
                Ok(t)
            }
        }
    }

    /// Collect the pages boot left Offline (RAM beyond the populate-on-demand touch limit)
    /// and release them to Xen before anything else happens: under PoD they are entries
    /// Xen must back if touched, and the domain would be killed once they outnumber its
    /// target. Whole Offline subsections go as order-9 extents, the rest as order 0. Only
    /// memmap descriptors are read; the frames themselves are never touched.
    ///
    /// Returns the pages released. What Xen did not take (error or no progress) stays
    /// queued, and [`Balloon::step`] releases it before any other work (a step also
    /// collects the boot Offline pages itself if this was never called). The walk happens
    /// once; calling this again only retries what is still queued. The accounting offset
    /// is measured when the queue is empty.
    pub fn adopt_boot_offline<S: MemmapStorage, X: MemoryReservation>(
        &mut self,
        mm: &MemModel<S>,
        xen: &mut X,
        now_ns: u64,
    ) -> Result<u64, Errno> {
        self.collect_boot_offline(mm);
        let before = self.unreleased_pages();
        while self.unreleased_pages() != 0 {
            match self.release_boot_batch(xen) {
                Ok(0) => {
                    self.back_off(now_ns, "boot excess: Xen released none".into());
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    self.back_off(now_ns, format!("boot excess: decrease_reservation: {e}"));
                    return Err(e);
                }
            }
        }
        let released = before - self.unreleased_pages();
        if released != 0 {
            log::info!(
                "balloon: released {} KiB of populate-on-demand excess ({} left)",
                released * KIB_PER_PAGE,
                self.unreleased_pages() * KIB_PER_PAGE
            );
        }
        self.measure_offset_once(mm, xen);
        Ok(released)
    }

    /// Take over a hot-added range (subsection aligned, every page Offline in an online
    /// hot-plug RAM section: no frame behind it) as ballooned order-9 extents, so that
    /// [`Balloon::step`] populates it like memory it gave back earlier. Call only once the
    /// kernel has mapped the range (populated pages join the allocator and get touched).
    ///
    /// Policy (no knob, unlike Linux's `memhp_default_state`): hot-added memory is online
    /// at once and is the **last** to be populated and the **first** to be given back.
    /// Its extents go to the bottom of the ballooned stack, so going up repopulates
    /// boot RAM first; going down takes free blocks from hot-added ranges, highest first,
    /// before any boot RAM ([`MemModel::balloon_out_from`]). A hot-added section thus
    /// empties out as early as possible and can be removed (its memmap freed): see
    /// [`Balloon::ballooned_in`] and [`Balloon::forget_hotplugged`].
    ///
    /// Returns the pages adopted. Nothing changes on error.
    pub fn adopt_hotplugged<S: MemmapStorage>(
        &mut self,
        mm: &MemModel<S>,
        range: PfnRange,
    ) -> Result<u64, MmError> {
        if !range.is_subsection_aligned() || range.is_empty() {
            return Err(MmError::Misaligned {
                pfn: range.start,
                order: ORDER_SUBSECTION as u8,
            });
        }
        if self
            .hotplugged
            .iter()
            .any(|r| !r.intersect(&range).is_empty())
        {
            return Err(MmError::AlreadyPresent(range.start));
        }
        mm.check_offline(range, SectionKind::HotplugRam)?;
        // Bottom of the stack (used from the end), lowest subsection last-but-first:
        // hot-added extents populate after boot RAM's, in ascending order.
        let n = range.len() >> ORDER_SUBSECTION;
        let extents: Vec<Gfn> = (0..n)
            .rev()
            .map(|i| range.start.0 + (i << ORDER_SUBSECTION))
            .collect();
        self.ballooned[1].splice(0..0, extents);
        let at = self.hotplugged.partition_point(|r| r.start < range.start);
        self.hotplugged.insert(at, range);
        if self.state == BalloonState::NeedHotplug {
            self.state = BalloonState::Working;
        }
        self.need_hotplug_pages = 0;
        self.backoff.reset();
        log::info!(
            "balloon: adopted hot-added {:?} ({} KiB) as ballooned",
            range,
            range.len() * KIB_PER_PAGE
        );
        Ok(range.len())
    }

    /// Pages of `range` on the ballooned lists (Offline, no frame in Xen).
    pub fn ballooned_in(&self, range: PfnRange) -> u64 {
        let o0 = self.ballooned[0]
            .iter()
            .filter(|&&g| range.contains(Pfn(g)));
        let o9 = self.ballooned[1].iter().filter(|&&g| {
            range.contains(Pfn(g)) && range.contains(Pfn(g + PAGES_PER_SUBSECTION - 1))
        });
        o0.count() as u64 + ((o9.count() as u64) << ORDER_SUBSECTION)
    }

    /// Pages in order-9 extents on the ballooned lists outside every hot-added range
    /// (boot RAM's holes, whole subsections).
    pub fn ballooned_outside_hotplugged(&self) -> u64 {
        let hot = |g: Gfn| self.hotplugged.iter().any(|r| r.contains(Pfn(g)));
        let o9 = self.ballooned[1].iter().filter(|&&g| !hot(g)).count() as u64;
        o9 << ORDER_SUBSECTION
    }

    /// Whether the model holds more RAM than the (effective) target: going down.
    pub fn above_target<S: MemmapStorage>(&self, mm: &MemModel<S>) -> bool {
        self.target.is_some() && mm.ram_pages() > self.target_pages
    }

    /// Retry at once (something freed memory the driver may now give back).
    pub fn retry_now(&mut self) {
        self.backoff.reset();
    }

    /// Give the wholly free subsections of hot-added `range` back to Xen at order 9 (a
    /// storage frame given back is one) and put them at the **bottom** of the ballooned
    /// stack, so that the balloon, now below its target by a multiple of 512 pages,
    /// populates other order-9 holes first (boot RAM's, at the top of the stack) and
    /// `range` empties out. Returns the pages given back; what Xen did not take goes back
    /// to the allocator.
    pub fn evacuate<S: MemmapStorage, X: MemoryReservation>(
        &mut self,
        mm: &MemModel<S>,
        xen: &mut X,
        range: PfnRange,
    ) -> Result<u64, String> {
        let mut moved = 0;
        {
            let (order, max) = (ORDER_SUBSECTION, self.cfg.batch_order9);
            loop {
                self.clear_batch();
                let scrub = self.scrub.is_some();
                let n = mm
                    .balloon_out_from(range, order as u8, max, scrub, self.batch_sink())
                    .map_err(|e| format!("balloon_out_from: {e}"))?;
                if n == 0 {
                    break;
                }
                if let Err(Failure::Model(what, e)) = self.scrub_batch(mm, order) {
                    let _ = self.undo_take(mm, order);
                    return Err(format!("{what}: {e}"));
                }
                self.counters.hypercalls += 1;
                let (t0, c0) = (self.clock_now(), self.cpu_now());
                let r = xen.decrease_reservation(&self.batch, order);
                let k = r.map_or(0, |k| k.min(self.batch.len()));
                self.charge(t0, c0, (k as u64) << order);
                self.counters.released[idx(order)] += k as u64;
                let taken: Vec<Gfn> = self.batch[..k].to_vec();
                self.ballooned[idx(order)].splice(0..0, taken);
                for &g in &self.batch[k..] {
                    mm.populate(Pfn(g), order as u8)
                        .map_err(|e| format!("populate (not released): {e}"))?;
                }
                moved += (k as u64) << order;
                if k < n {
                    break;
                }
            }
        }
        if moved != 0 {
            self.state = BalloonState::Working;
            self.backoff.reset();
        }
        Ok(moved)
    }

    /// Whether the last step reached the target (or the floor): `done` or `clamped`.
    pub fn at_rest(&self) -> bool {
        matches!(self.state, BalloonState::Done | BalloonState::Clamped)
    }

    /// Hot-added ranges the balloon manages, ascending.
    pub fn hotplugged(&self) -> &[PfnRange] {
        &self.hotplugged
    }

    /// Give up a hot-added range that is about to be hot-removed: every page of it must
    /// be on the ballooned lists (all Offline); its extents are dropped from them and it
    /// stops being a preferred range. On error nothing changes. Returns the pages dropped.
    ///
    /// Undo with [`Balloon::adopt_hotplugged`] if the removal then fails.
    pub fn forget_hotplugged(&mut self, range: PfnRange) -> Result<u64, ForgetError> {
        let ballooned = self.ballooned_in(range);
        if ballooned != range.len() {
            return Err(ForgetError::InUse {
                pages: range.len() - ballooned,
            });
        }
        if !self
            .hotplugged
            .iter()
            .any(|r| r.start <= range.start && range.end <= r.end)
        {
            return Err(ForgetError::NotHotplugged);
        }
        self.ballooned[0].retain(|&g| !range.contains(Pfn(g)));
        self.ballooned[1].retain(|&g| !range.contains(Pfn(g)));
        let mut kept = Vec::with_capacity(self.hotplugged.len() + 1);
        for r in self.hotplugged.drain(..) {
            let left = PfnRange::new(r.start, range.start.min(r.end));
            let right = PfnRange::new(range.end.max(r.start), r.end);
            kept.extend([left, right].into_iter().filter(|p| !p.is_empty()));
        }
        self.hotplugged = kept;
        Ok(ballooned)
    }

    fn collect_boot_offline<S: MemmapStorage>(&mut self, mm: &MemModel<S>) {
        if self.adopted {
            return;
        }
        self.adopted = true;
        // The census counts Offline boot RAM already: without populate-on-demand there is
        // none, and the walk below (every page's descriptor) is skipped.
        if mm
            .census()
            .pages_of(SectionKind::BootRam, StateKind::Offline)
            == 0
        {
            self.pod = false;
            return;
        }
        let guard = mm.read();
        let mut sub = u64::MAX;
        let mut offline: Vec<Gfn> = Vec::new();
        let flush = |offline: &mut Vec<Gfn>, unreleased: &mut [Vec<Gfn>; 2]| {
            if offline.len() as u64 == PAGES_PER_SUBSECTION {
                unreleased[1].push(offline[0]);
            } else {
                unreleased[0].extend_from_slice(offline);
            }
            offline.clear();
        };
        for page in guard.active_pages(PfnRange::new(Pfn(0), Pfn(MAX_PFN))) {
            // Only boot RAM: hot-added Offline pages never had a frame (nothing to release)
            // and are adopted by `adopt_hotplugged`.
            if page.section_kind() != SectionKind::BootRam || page.state() != PageState::Offline {
                continue;
            }
            let pfn = page.pfn();
            if pfn.subsection() != sub {
                flush(&mut offline, &mut self.unreleased);
                sub = pfn.subsection();
            }
            offline.push(pfn.0);
        }
        flush(&mut offline, &mut self.unreleased);
        // Released lowest first; lists are used from the end.
        self.unreleased[0].reverse();
        self.unreleased[1].reverse();
        self.pod = self.unreleased_pages() != 0;
    }

    /// One decrease_reservation of queued boot extents (order 9 first). Released extents
    /// join the ballooned list; the rest stay queued (still PoD entries: never populate
    /// them into the allocator).
    fn release_boot_batch<X: MemoryReservation>(&mut self, xen: &mut X) -> Result<usize, Errno> {
        let (order, max) = if self.unreleased[1].is_empty() {
            (0, self.cfg.batch_order0)
        } else {
            (ORDER_SUBSECTION, self.cfg.batch_order9)
        };
        let list = &mut self.unreleased[idx(order)];
        let n = max.min(list.len());
        self.batch.clear();
        self.batch.extend(list.drain(list.len() - n..).rev());
        self.counters.hypercalls += 1;
        let (t0, c0) = (self.clock_now(), self.cpu_now());
        let r = xen.decrease_reservation(&self.batch, order);
        let k = r.map_or(0, |k| k.min(self.batch.len()));
        self.charge(t0, c0, (k as u64) << order);
        self.ballooned[idx(order)].extend_from_slice(&self.batch[..k]);
        self.counters.released[idx(order)] += k as u64;
        self.counters.boot_excess_pages += (k as u64) << order;
        self.unreleased[idx(order)].extend(self.batch[k..].iter().rev());
        r.map(|_| k)
    }

    /// Hold `pages` below the target until called again with 0: before a suspend, free
    /// memory goes back to Xen so that a save image carries only what is in use (Linux
    /// saves every populated page); after the resume the balloon takes it again. The
    /// target itself, its status and `memory/target` are untouched.
    pub fn set_handback(&mut self, pages: u64) {
        if pages != self.handback_pages {
            self.handback_pages = pages;
            self.reached_after_ns = None;
        }
    }

    /// Releases every ballooned-out extent again, one hypercall each, and returns how
    /// many pages Xen took. For a resume in a new domain whose `tot_pages` exceeds what
    /// the model owns: a frame released during the last round of a live migration may
    /// have been sent before and arrive populated. Extents that are holes fail
    /// harmlessly (Xen releases nothing there); the model is not touched — they are
    /// Offline either way.
    pub fn release_ballooned_again<X: MemoryReservation>(&mut self, xen: &mut X) -> u64 {
        let mut pages = 0;
        for (i, order) in [(0, 0u32), (1, ORDER_SUBSECTION)] {
            for k in 0..self.ballooned[i].len() {
                let gfn = self.ballooned[i][k];
                self.counters.hypercalls += 1;
                if let Ok(1) = xen.decrease_reservation(&[gfn], order) {
                    pages += 1 << order;
                }
            }
        }
        pages
    }

    /// Pages currently held below the target by [`Balloon::set_handback`].
    pub fn handback_pages(&self) -> u64 {
        self.handback_pages
    }

    /// Do a bounded amount of work (at most two hypercalls) toward the target.
    pub fn step<S: MemmapStorage, X: MemoryReservation>(
        &mut self,
        mm: &MemModel<S>,
        xen: &mut X,
        now_ns: u64,
    ) -> StepOutcome {
        self.collect_boot_offline(mm);
        if !self.backoff.ready(now_ns) {
            let until_ns = self.backoff.deadline().unwrap_or(now_ns);
            return StepOutcome::BackingOff { until_ns };
        }
        if self.backoff.backing_off() {
            // A retry after a backoff: order 9 may work again (limit raised, host freed).
            self.order9_refused = false;
        }
        let result = if self.unreleased_pages() != 0 {
            match self.release_boot_batch(xen) {
                Ok(0) => Err(Failure::Stuck("boot excess: Xen released none")),
                Ok(_) => Ok(StepOutcome::Progress),
                Err(e) => Err(Failure::Xen("boot excess: decrease_reservation", e)),
            }
        } else {
            self.toward_target(mm, xen, now_ns)
        };
        let outcome = match result {
            Ok(o) => {
                // Done too: a step that reaches the target in the round of its hypercall.
                if matches!(o, StepOutcome::Progress | StepOutcome::Done) {
                    self.backoff.reset();
                }
                o
            }
            Err(Failure::Xen(what, e)) => self.back_off(now_ns, format!("{what}: {e}")),
            Err(Failure::Stuck(what)) => self.back_off(now_ns, what.into()),
            Err(Failure::Model(what, e)) => {
                let msg = format!("{what}: memory model refused: {e}");
                log::error!("balloon: {msg}");
                self.last_error = msg;
                self.backoff.failed(now_ns);
                self.counters.backoffs += 1;
                StepOutcome::Error
            }
        };
        self.state = match outcome {
            StepOutcome::Done if self.target.is_none() => BalloonState::Waiting,
            StepOutcome::Done if self.target.is_some_and(|t| t.clamped()) => BalloonState::Clamped,
            StepOutcome::Done => BalloonState::Done,
            StepOutcome::Progress => BalloonState::Working,
            StepOutcome::BackingOff { .. } => BalloonState::BackingOff,
            StepOutcome::NeedHotplug { .. } => BalloonState::NeedHotplug,
            StepOutcome::Error => BalloonState::Error,
        };
        self.measure_offset_once(mm, xen);
        // Once a step stops (done, backing off, ...), not after each of its rounds: a
        // mismatch made mid-step is still there at its end (Xen's count and the model's
        // only move together), and each check is a hypercall inside the step's time. A
        // mismatch is logged and recorded in the status by the check itself.
        if outcome != StepOutcome::Progress {
            let _ = self.check_accounting(mm, xen);
        }
        outcome
    }

    fn back_off(&mut self, now_ns: u64, why: String) -> StepOutcome {
        let until_ns = self.backoff.failed(now_ns);
        self.counters.backoffs += 1;
        log::warn!(
            "balloon: {why}; retrying in {} ms",
            self.backoff.delay_ns() / 1_000_000
        );
        self.last_error = why;
        StepOutcome::BackingOff { until_ns }
    }

    fn toward_target<S: MemmapStorage, X: MemoryReservation>(
        &mut self,
        mm: &MemModel<S>,
        xen: &mut X,
        now_ns: u64,
    ) -> Result<StepOutcome, Failure> {
        if self.target.is_none() {
            return Ok(StepOutcome::Done);
        }
        let current = mm.ram_pages();
        let goal = self.target_pages.saturating_sub(self.handback_pages);
        let r = if current > goal {
            self.need_hotplug_pages = 0;
            self.balloon_down(mm, xen, current - goal)?
        } else if current < goal {
            self.balloon_up(mm, xen, goal - current)?
        } else {
            self.reached(goal, now_ns);
            return Ok(StepOutcome::Done);
        };
        if r == StepOutcome::Progress && mm.ram_pages() == goal {
            // The round that made the last hypercall ends the step: a second round only to
            // find the goal held would add the event loop's turn to the step's time.
            self.reached(goal, self.clock_now().unwrap_or(now_ns));
            return Ok(StepOutcome::Done);
        }
        Ok(r)
    }

    /// The model holds `goal` RAM pages: the step toward the target ends at `now_ns` (the
    /// wall clock's reading; the CPU clock is read here, before anything is logged, so
    /// both end the step where it ended).
    fn reached(&mut self, goal: u64, now_ns: u64) {
        self.need_hotplug_pages = 0;
        if self.reached_after_ns.is_some() {
            return;
        }
        let took = now_ns.saturating_sub(self.target_set_ns);
        let cpu_ns = self
            .cpu_now()
            .map_or(0, |c| c.saturating_sub(self.target_set_cpu_ns));
        self.reached_after_ns = Some(took);
        log::info!(
            "balloon: at target {} KiB after {} ms",
            goal * KIB_PER_PAGE,
            took / 1_000_000
        );
        if self.clock.is_some() && self.step_timing.hypercalls != 0 {
            self.steps_done += 1;
            let s = StepTiming {
                seq: self.steps_done,
                total_ns: took,
                cpu_ns,
                ..self.step_timing
            };
            log::info!(
                "balloon: step to {} KiB: {} us, {} us in {} hypercall(s), {} us outside ({}.{} %; {} us of it in the memory model); on the CPU {} us, {} us of it outside the hypercalls ({}.{} % of the step)",
                s.target_kib,
                s.total_ns / 1000,
                s.hypercall_ns / 1000,
                s.hypercalls,
                s.outside_ns() / 1000,
                s.outside_permille() / 10,
                s.outside_permille() % 10,
                s.model_ns / 1000,
                s.cpu_ns / 1000,
                s.outside_cpu_ns() / 1000,
                s.outside_cpu_permille() / 10,
                s.outside_cpu_permille() % 10
            );
            self.last_step = Some(s);
        }
    }

    /// Give `need` pages back to Xen: whole free subsections as order-9 extents while at
    /// least 512 pages must go, then order-0 pages. Free memory of hot-added ranges goes
    /// first, at either order (see [`Balloon::adopt_hotplugged`]): a fragmented hot-added
    /// subsection is given back page by page before any boot RAM, so that hot-added
    /// sections empty out and can be removed. At most two hypercalls.
    fn balloon_down<S: MemmapStorage, X: MemoryReservation>(
        &mut self,
        mm: &MemModel<S>,
        xen: &mut X,
        need: u64,
    ) -> Result<StepOutcome, Failure> {
        let order9 = need >= PAGES_PER_SUBSECTION && !self.order9_refused;
        let n9 = (need >> ORDER_SUBSECTION).min(self.cfg.batch_order9 as u64) as usize;
        let n0 = need.min(self.cfg.batch_order0 as u64) as usize;
        // (order, how many, hot-added ranges only)
        let plan = [
            (ORDER_SUBSECTION, n9, true),
            (0, n0, true),
            (ORDER_SUBSECTION, n9, false),
            (0, n0, false),
        ];
        for (order, n, hot_only) in plan {
            if order == ORDER_SUBSECTION && (!order9 || self.order9_refused) {
                continue;
            }
            if hot_only && self.hotplugged.is_empty() {
                continue;
            }
            let t0 = self.clock_now();
            self.take_free(mm, order, n, hot_only)?;
            self.charge_model(t0);
            if self.batch.is_empty() {
                continue;
            }
            return match self.decrease(mm, xen, order)? {
                Ok(0) if order == ORDER_SUBSECTION => {
                    // Try order 0 (same preference) in this step; Xen did nothing yet.
                    self.order9_refused = true;
                    continue;
                }
                Ok(0) => Err(Failure::Stuck("decrease_reservation: Xen released none")),
                Ok(_) => Ok(StepOutcome::Progress),
                Err(e) if order == ORDER_SUBSECTION => {
                    Err(Failure::Xen("decrease_reservation order 9", e))
                }
                Err(e) => Err(Failure::Xen("decrease_reservation", e)),
            };
        }
        Err(Failure::Stuck("no free page to balloon out"))
    }

    /// Fill the batch with up to `n` free blocks of `order`, now Offline: from hot-added
    /// ranges first (highest first), then — unless `hot_only` — anywhere.
    fn take_free<S: MemmapStorage>(
        &mut self,
        mm: &MemModel<S>,
        order: u32,
        n: usize,
        hot_only: bool,
    ) -> Result<(), Failure> {
        self.clear_batch();
        let scrub = self.scrub.is_some();
        for i in (0..self.hotplugged.len()).rev() {
            let want = n - self.batch.len();
            if want == 0 {
                break;
            }
            let range = self.hotplugged[i];
            let r = mm.balloon_out_from(range, order as u8, want, scrub, self.batch_sink());
            if let Err(e) = r {
                self.undo_take(mm, order)?;
                return Err(Failure::Model("balloon_out_from", e));
            }
        }
        if hot_only {
            return Ok(());
        }
        let r = if order == 0 {
            // Single pages as the fewest free blocks that hold them.
            let want = n - self.batch.len();
            mm.balloon_out_pages(want, scrub, self.batch_sink())
                .map_err(|e| ("balloon_out_pages", e))
        } else {
            let mut r = Ok(0);
            while self.batch.len() < n {
                let taken = if scrub {
                    mm.balloon_out_scrubbing(order as u8)
                } else {
                    mm.balloon_out(order as u8).map(|p| (p, false))
                };
                match taken {
                    Ok((pfn, dirty)) => self.batch_sink()(pfn, dirty),
                    Err(MmError::OutOfMemory { .. }) => break,
                    Err(e) => {
                        r = Err(("balloon_out", e));
                        break;
                    }
                }
            }
            r
        };
        if let Err((what, e)) = r {
            self.undo_take(mm, order)?;
            return Err(Failure::Model(what, e));
        }
        Ok(())
    }

    /// Return the whole batch to the allocator (it was never given to Xen): Offline
    /// extents are populated back, ones still held Allocated for zeroing are freed.
    fn undo_take<S: MemmapStorage>(&mut self, mm: &MemModel<S>, order: u32) -> Result<(), Failure> {
        for &g in &self.batch {
            mm.populate(Pfn(g), order as u8)
                .or_else(|_| mm.free_frames(Pfn(g), order as u8))
                .map_err(|e| Failure::Model("populate (undo)", e))?;
        }
        self.clear_batch();
        Ok(())
    }

    /// decrease_reservation of the batch. Xen took a prefix of k extents: those stay
    /// Offline and join the ballooned list; the rest were never given away — their frames
    /// are still backed — so they go straight back to the allocator (Offline -> Free).
    /// The outer error is the model's, the inner one Xen's.
    fn decrease<S: MemmapStorage, X: MemoryReservation>(
        &mut self,
        mm: &MemModel<S>,
        xen: &mut X,
        order: u32,
    ) -> Result<Result<usize, Errno>, Failure> {
        if let Err(e) = self.scrub_batch(mm, order) {
            self.undo_take(mm, order)?;
            return Err(e);
        }
        self.counters.hypercalls += 1;
        let (t0, c0) = (self.clock_now(), self.cpu_now());
        let r = xen.decrease_reservation(&self.batch, order);
        let k = r.map_or(0, |k| k.min(self.batch.len()));
        self.charge(t0, c0, (k as u64) << order);
        self.ballooned[idx(order)].extend_from_slice(&self.batch[..k]);
        self.counters.released[idx(order)] += k as u64;
        for &g in &self.batch[k..] {
            mm.populate(Pfn(g), order as u8)
                .map_err(|e| Failure::Model("populate (not released)", e))?;
        }
        Ok(r.map(|_| k))
    }

    /// Take `need` pages back from Xen into ballooned extents: order 9 while at least 512
    /// pages are wanted, then order 0 (splitting an order-9 extent if needed: its pages
    /// are all Offline, so any of them may be populated alone).
    fn balloon_up<S: MemmapStorage, X: MemoryReservation>(
        &mut self,
        mm: &MemModel<S>,
        xen: &mut X,
        need: u64,
    ) -> Result<StepOutcome, Failure> {
        if self.ballooned_pages() == 0 {
            if self.need_hotplug_pages != need {
                // Info, not a warning: growing past boot RAM after `xl mem-max` is what
                // hotplug is for (a warning also costs the step a line on port 0xE9).
                log::info!(
                    "balloon: target is {} KiB above all memory this guest has had; \
                     needs hotplug",
                    need * KIB_PER_PAGE
                );
            }
            self.need_hotplug_pages = need;
            return Ok(StepOutcome::NeedHotplug { pages: need });
        }
        let o9 = idx(ORDER_SUBSECTION);
        if need >= PAGES_PER_SUBSECTION && !self.order9_refused && !self.ballooned[o9].is_empty() {
            let n = (need >> ORDER_SUBSECTION)
                .min(self.cfg.batch_order9 as u64)
                .min(self.ballooned[o9].len() as u64) as usize;
            let list = &mut self.ballooned[o9];
            self.batch.clear();
            self.batch.extend(list.drain(list.len() - n..).rev());
            match self.populate(mm, xen, ORDER_SUBSECTION)? {
                Ok(0) => self.order9_refused = true,
                Ok(_) => return Ok(StepOutcome::Progress),
                Err(e) => return Err(Failure::Xen("populate_physmap order 9", e)),
            }
        }
        let want = need.min(self.cfg.batch_order0 as u64) as usize;
        while self.ballooned[0].len() < want {
            let Some(first) = self.ballooned[o9].pop() else {
                break;
            };
            // Highest first, so the list (used from the end) populates ascending.
            self.ballooned[0].extend((first..first + PAGES_PER_SUBSECTION).rev());
        }
        let list = &mut self.ballooned[0];
        let n = want.min(list.len());
        self.batch.clear();
        self.batch.extend(list.drain(list.len() - n..).rev());
        match self.populate(mm, xen, 0)? {
            Ok(0) => Err(Failure::Stuck(
                "populate_physmap: Xen populated none (domain at max_pages or host out of memory)",
            )),
            Ok(_) => Ok(StepOutcome::Progress),
            Err(e) => Err(Failure::Xen("populate_physmap", e)),
        }
    }

    /// populate_physmap of the batch: the first k extents have frames now and join the
    /// allocator (Offline -> Free); the rest stay ballooned.
    fn populate<S: MemmapStorage, X: MemoryReservation>(
        &mut self,
        mm: &MemModel<S>,
        xen: &mut X,
        order: u32,
    ) -> Result<Result<usize, Errno>, Failure> {
        self.counters.hypercalls += 1;
        let (t0, c0) = (self.clock_now(), self.cpu_now());
        let r = xen.populate_physmap(&self.batch, order);
        let k = r.map_or(0, |k| k.min(self.batch.len()));
        self.charge(t0, c0, (k as u64) << order);
        self.counters.populated[idx(order)] += k as u64;
        // Back on the list first so the bookkeeping is whole even if the model refuses.
        self.ballooned[idx(order)].extend(self.batch[k..].iter().rev());
        let t1 = self.clock_now();
        if order == 0 {
            // Single pages: their runs join as whole blocks.
            mm.populate_pages(self.batch[..k].iter().map(|&g| Pfn(g)))
                .map_err(|e| Failure::Model("populate", e))?;
        } else {
            for &g in &self.batch[..k] {
                mm.populate(Pfn(g), order as u8)
                    .map_err(|e| Failure::Model("populate", e))?;
            }
        }
        self.charge_model(t1);
        Ok(r.map(|_| k))
    }

    fn measure_offset_once<S: MemmapStorage, X: MemoryReservation>(
        &mut self,
        mm: &MemModel<S>,
        xen: &mut X,
    ) {
        if self.offset.is_some() || !self.adopted || self.unreleased_pages() != 0 {
            return;
        }
        if let Ok(tot) = xen.current_reservation() {
            let delta = tot as i64 - mm.ram_pages() as i64;
            self.offset = Some(delta);
            self.last_delta = Some(delta);
            log::info!(
                "balloon: accounting offset {delta} pages (Xen tot_pages {tot} - model RAM)"
            );
        }
    }

    /// Rule 5 of the memory model: Xen's `tot_pages` minus the model's RAM pages is a
    /// constant, measured once the boot populate-on-demand excess is released (releasing
    /// it may trim Xen's PoD cache, a one-time change). The offset is what Xen accounts to
    /// the domain outside its RAM map: the special pages (xenstore and console rings,
    /// ...), the ACPI tables, the PoD cache not yet handed out, minus the RAM page whose
    /// frame shared_info's mapping replaced. A mismatch is logged, counted, and shown in
    /// the status; it is never corrected silently. Before the offset is known this
    /// returns `Ok`.
    ///
    /// [`Balloon::step`] runs it after every step. In a populate-on-demand domain Xen
    /// itself moves `tot_pages` when the toolstack sets a new target
    /// (`p2m_pod_set_mem_target` shrinks the PoD cache before the guest has ballooned),
    /// so there the offset only holds at rest (done, clamped, need-hotplug): while
    /// working or backing off the delta is recorded but not judged.
    pub fn check_accounting<S: MemmapStorage, X: MemoryReservation>(
        &mut self,
        mm: &MemModel<S>,
        xen: &mut X,
    ) -> Result<(), AccountingError> {
        let Some(expected) = self.offset else {
            return Ok(());
        };
        let tot = xen.current_reservation().map_err(AccountingError::Xen)?;
        let found = tot as i64 - mm.ram_pages() as i64;
        self.last_delta = Some(found);
        let at_rest = matches!(
            self.state,
            BalloonState::Done
                | BalloonState::Clamped
                | BalloonState::NeedHotplug
                | BalloonState::Waiting
        );
        if found == expected || (self.pod && !at_rest) {
            return Ok(());
        }
        self.counters.accounting_mismatches += 1;
        let e = AccountingError::Mismatch { expected, found };
        log::error!("balloon: {e}");
        self.last_error = format!("{e}");
        Err(e)
    }

    /// A snapshot for `data/balloon/`.
    pub fn status<S: MemmapStorage>(&self, mm: &MemModel<S>) -> BalloonStatus {
        BalloonStatus {
            current_kib: mm.ram_pages() * KIB_PER_PAGE,
            target_kib: self.target.map(|t| t.requested_kib),
            effective_target_kib: self.target.map(|t| t.effective_kib),
            ballooned_kib: (self.ballooned_pages() + self.unreleased_pages()) * KIB_PER_PAGE,
            state: if self.target_rejected {
                BalloonState::Error
            } else {
                self.state
            },
            last_error: self.last_error.clone(),
            counters: self.counters,
            backoff_ms: self.backoff.delay_ns() / 1_000_000,
            need_hotplug_kib: self.need_hotplug_pages * KIB_PER_PAGE,
            reached_ms: self.reached_after_ns.map(|ns| ns / 1_000_000),
            accounting_offset: self.offset,
            accounting_delta: self.last_delta,
            last_step: self.last_step,
        }
    }
}

/// The driver's numbers as published under the guest's `data/balloon/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BalloonStatus {
    /// The model's RAM (Reserved RAM + Free + Allocated) in KiB.
    pub current_kib: u64,
    /// The last valid `memory/target` (KiB).
    pub target_kib: Option<u64>,
    /// What the driver aims at: the target, or the floor if higher.
    pub effective_target_kib: Option<u64>,
    /// Memory ballooned out (boot PoD excess included).
    pub ballooned_kib: u64,
    pub state: BalloonState,
    pub last_error: String,
    pub counters: Counters,
    /// Current backoff delay (0: not backing off).
    pub backoff_ms: u64,
    /// Memory only hotplug could add (0 unless the state is `need-hotplug`).
    pub need_hotplug_kib: u64,
    /// From the last target to reaching it.
    pub reached_ms: Option<u64>,
    /// Xen `tot_pages - ram_pages` measured at init.
    pub accounting_offset: Option<i64>,
    /// The same, at the last check.
    pub accounting_delta: Option<i64>,
    /// The last finished step's timing, if the driver has a clock.
    pub last_step: Option<StepTiming>,
}

impl BalloonStatus {
    /// (key under `data/balloon/`, value). Keys:
    ///
    /// | key | value |
    /// |---|---|
    /// | `current-kib` | model RAM, KiB |
    /// | `target-kib` | last valid `memory/target` (empty before one) |
    /// | `effective-target-kib` | target after the floor (empty before one) |
    /// | `ballooned-kib` | memory handed back to Xen |
    /// | `state` | `waiting` `done` `working` `backing-off` `clamped` `error` `need-hotplug` |
    /// | `last-error` | text of the last rejection or failure (empty if none) |
    /// | `extents/released/order-9`, `extents/released/order-0` | extents Xen took |
    /// | `extents/populated/order-9`, `extents/populated/order-0` | extents Xen backed |
    /// | `boot-excess-kib` | populate-on-demand excess released at boot |
    /// | `scrubbed-kib` | memory zeroed before going back to Xen (it had held our data) |
    /// | `hypercalls` | populate_physmap + decrease_reservation calls |
    /// | `backoffs` | backoffs started or extended |
    /// | `backoff-ms` | current backoff delay |
    /// | `rejected-targets` | `memory/target` values rejected |
    /// | `need-hotplug-kib` | memory only hotplug could add |
    /// | `reached-ms` | time from the last target to reaching it (empty until reached) |
    /// | `accounting/offset-pages` | Xen `tot_pages` − model RAM at init (empty until known) |
    /// | `accounting/delta-pages` | the same at the last check |
    /// | `accounting/mismatches` | checks where the two differed |
    /// | `step/seq` | steps timed since boot (the rest of `step/` is the last one's; absent before the first) |
    /// | `step/target-kib` | that step's target |
    /// | `step/total-us` | new target → reached, guest clock |
    /// | `step/hypercall-us` | of which inside `populate_physmap` / `decrease_reservation` |
    /// | `step/outside-us` | the rest: ours |
    /// | `step/model-us` | of the rest, in the memory model (memmap updates, free lists) |
    /// | `step/scrub-us` | of the rest, zeroing pages that held our data |
    /// | `step/outside-permille` | outside / total × 1000 |
    /// | `step/cpu-us` | the balloon vCPU's time on a CPU over the step (Xen's runstate; the rest of `total-us` it waited for the CPU or blocked) |
    /// | `step/outside-cpu-us` | of `cpu-us`, outside the hypercalls: our own work |
    /// | `step/outside-cpu-permille` | outside-cpu / total × 1000 |
    /// | `step/hypercalls` | reservation hypercalls in the step |
    /// | `step/pages` | pages moved in the step |
    pub fn fields(&self) -> impl Iterator<Item = (&'static str, String)> + '_ {
        let opt = |v: Option<u64>| v.map_or(String::new(), |v| format!("{v}"));
        let opti = |v: Option<i64>| v.map_or(String::new(), |v| format!("{v}"));
        let c = &self.counters;
        [
            ("current-kib", format!("{}", self.current_kib)),
            ("target-kib", opt(self.target_kib)),
            ("effective-target-kib", opt(self.effective_target_kib)),
            ("ballooned-kib", format!("{}", self.ballooned_kib)),
            ("state", String::from(self.state.as_str())),
            ("last-error", self.last_error.clone()),
            ("extents/released/order-9", format!("{}", c.released[1])),
            ("extents/released/order-0", format!("{}", c.released[0])),
            ("extents/populated/order-9", format!("{}", c.populated[1])),
            ("extents/populated/order-0", format!("{}", c.populated[0])),
            (
                "boot-excess-kib",
                format!("{}", c.boot_excess_pages * KIB_PER_PAGE),
            ),
            (
                "scrubbed-kib",
                format!("{}", c.scrubbed_pages * KIB_PER_PAGE),
            ),
            ("hypercalls", format!("{}", c.hypercalls)),
            ("backoffs", format!("{}", c.backoffs)),
            ("backoff-ms", format!("{}", self.backoff_ms)),
            ("rejected-targets", format!("{}", c.rejected_targets)),
            ("need-hotplug-kib", format!("{}", self.need_hotplug_kib)),
            ("reached-ms", opt(self.reached_ms)),
            ("accounting/offset-pages", opti(self.accounting_offset)),
            ("accounting/delta-pages", opti(self.accounting_delta)),
            (
                "accounting/mismatches",
                format!("{}", c.accounting_mismatches),
            ),
        ]
        .into_iter()
        .chain(self.last_step.into_iter().flat_map(|s| {
            [
                ("step/seq", format!("{}", s.seq)),
                ("step/target-kib", format!("{}", s.target_kib)),
                ("step/total-us", format!("{}", s.total_ns / 1000)),
                ("step/hypercall-us", format!("{}", s.hypercall_ns / 1000)),
                ("step/outside-us", format!("{}", s.outside_ns() / 1000)),
                ("step/model-us", format!("{}", s.model_ns / 1000)),
                ("step/scrub-us", format!("{}", s.scrub_ns / 1000)),
                ("step/cpu-us", format!("{}", s.cpu_ns / 1000)),
                (
                    "step/outside-cpu-us",
                    format!("{}", s.outside_cpu_ns() / 1000),
                ),
                (
                    "step/outside-cpu-permille",
                    format!("{}", s.outside_cpu_permille()),
                ),
                ("step/outside-permille", format!("{}", s.outside_permille())),
                ("step/hypercalls", format!("{}", s.hypercalls)),
                ("step/pages", format!("{}", s.pages)),
            ]
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::boot::{self, BootConfig, MemmapEntry, E820_ACPI, E820_RAM, E820_RESERVED};
    use crate::mm::HeapStorage;
    use proptest::prelude::*;
    use xen_bindings::sim::memory::SimMemory;

    const MIB: u64 = 1 << 20;
    const SEC: u64 = 1_000_000_000;
    /// What Xen populates outside the RAM map of a PVH domU: ACPI tables at 0xfc000000
    /// and the special pages (xenstore, console, ...) at 0xfeff8000.
    const ACPI: (Gfn, u64) = (0xfc000, 11);
    const SPECIAL: (Gfn, u64) = (0xfeff8, 8);
    const NONRAM: u64 = ACPI.1 + SPECIAL.1;

    struct World {
        mm: MemModel<HeapStorage>,
        xen: SimMemory,
        now: u64,
    }

    fn build(ram_mib: u64, touchable: Option<u64>) -> MemModel<HeapStorage> {
        let map = [
            MemmapEntry {
                addr: 0,
                size: ram_mib * MIB,
                kind: E820_RAM,
            },
            MemmapEntry {
                addr: ACPI.0 << 12,
                size: ACPI.1 << 12,
                kind: E820_ACPI,
            },
            MemmapEntry {
                addr: SPECIAL.0 << 12,
                size: SPECIAL.1 << 12,
                kind: E820_RESERVED,
            },
        ];
        // Kernel image at 1 MiB, start_info in page 1.
        let reserved = [
            PfnRange::covering_bytes(MIB, 2 * MIB + 123),
            PfnRange::covering_bytes(0x1000, 0x100),
        ];
        let cfg = BootConfig {
            memmap: &map,
            reserved: &reserved,
            touchable_ram_pages: touchable,
        };
        let mm = boot::build(&cfg, HeapStorage).unwrap();
        mm.end_boot();
        mm
    }

    /// memory == maxmem: every RAM page backed; Xen's limit is memory + 1 MiB.
    fn world(ram_mib: u64) -> World {
        let pages = ram_mib * 256;
        let xen = SimMemory::new(&[(0, pages), ACPI, SPECIAL], pages + NONRAM + 256);
        World {
            mm: build(ram_mib, None),
            xen,
            now: SEC,
        }
    }

    /// memory < maxmem: populate-on-demand. The touch limit is what the kernel computes
    /// (`kmem::touchable_ram_pages`: tot_pages - non-RAM - 256 pages of slack).
    fn pod_world(maxmem_mib: u64, memory_mib: u64) -> World {
        let pages = maxmem_mib * 256;
        let xen = SimMemory::new_pod(&[(0, pages)], memory_mib * 256, pages + NONRAM + 256)
            .with_populated(&[ACPI, SPECIAL]);
        let touchable = xen.tot_pages() - NONRAM - 256;
        World {
            mm: build(maxmem_mib, Some(touchable)),
            xen,
            now: SEC,
        }
    }

    fn kib(mib: u64) -> Vec<u8> {
        kib_raw(mib * 1024)
    }

    fn kib_raw(kib: u64) -> Vec<u8> {
        format!("{kib}").into_bytes()
    }

    fn ram(w: &World) -> u64 {
        w.mm.census().ram_pages()
    }

    /// The invariants after any step: the census is consistent; the kernel may touch every
    /// page the model says it owns (Reserved RAM, Free, Allocated) and Xen does not kill
    /// it; no Offline page has a frame; Xen's tot_pages - model RAM is the init offset.
    fn check(w: &mut World, b: &Balloon) {
        let c = w.mm.recount().expect("census consistent");
        assert_eq!(c.ram_pages(), w.mm.census().ram_pages());
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
        drop(g);
        assert!(w.xen.killed.is_none());
        if let Some(offset) = b.accounting_offset() {
            assert_eq!(w.xen.tot_pages() as i64 - c.ram_pages() as i64, offset);
        }
        assert_eq!(b.counters().accounting_mismatches, 0);
    }

    /// Step until the driver rests; waits out backoffs. Returns (outcome, steps).
    fn settle(w: &mut World, b: &mut Balloon, check_each: bool) -> (StepOutcome, u32) {
        for steps in 1..10_000 {
            let o = b.step(&w.mm, &mut w.xen, w.now);
            if check_each {
                check(w, b);
            }
            match o {
                StepOutcome::Progress => {}
                StepOutcome::BackingOff { until_ns } => w.now = until_ns,
                o => return (o, steps),
            }
        }
        panic!("the driver never rested");
    }

    fn status_field(b: &Balloon, w: &World, key: &str) -> String {
        b.status(&w.mm).fields().find(|(k, _)| *k == key).unwrap().1
    }

    #[test]
    fn handback_holds_pages_below_the_target_until_cleared() {
        let mut w = world(256);
        let mut b = Balloon::new(BalloonConfig::default());
        b.set_target(&kib(256), 256 * 1024, w.now).unwrap();
        assert_eq!(settle(&mut w, &mut b, false).0, StepOutcome::Done);
        let full = ram(&w);
        let free = w.mm.census().pages_in(crate::mm::StateKind::Free);
        // Before a suspend: every free page but 4 MiB goes back to Xen.
        b.set_handback(free - 1024);
        assert_eq!(settle(&mut w, &mut b, true).0, StepOutcome::Done);
        assert_eq!(ram(&w), full - (free - 1024));
        assert_eq!(w.mm.census().pages_in(crate::mm::StateKind::Free), 1024);
        // The target and what is published as the target are untouched.
        assert_eq!(
            status_field(&b, &w, "target-kib"),
            format!("{}", 256 * 1024)
        );
        assert_eq!(b.handback_pages(), free - 1024);
        // After the resume: taken again.
        b.set_handback(0);
        assert_eq!(settle(&mut w, &mut b, true).0, StepOutcome::Done);
        assert_eq!(ram(&w), full);
    }

    #[test]
    fn ballooned_extents_that_arrived_populated_are_released_again() {
        let mut w = world(256);
        let mut b = Balloon::new(BalloonConfig::default());
        b.set_target(&kib(64), 256 * 1024, w.now).unwrap();
        assert_eq!(settle(&mut w, &mut b, false).0, StepOutcome::Done);
        let tot = w.xen.tot_pages();
        // Nothing to release: every ballooned extent is a hole.
        assert_eq!(b.release_ballooned_again(&mut w.xen), 0);
        assert_eq!(w.xen.tot_pages(), tot);
        // A migration stream brought some of them back (sent before they were released):
        // two order-9 extents and three order-0 pages.
        let back: Vec<Gfn> = b.ballooned[1][..2]
            .iter()
            .flat_map(|&g| g..g + PAGES_PER_SUBSECTION)
            .chain(b.ballooned[0].iter().take(3).copied())
            .collect();
        w.xen = core::mem::replace(&mut w.xen, SimMemory::new(&[], 0))
            .with_populated(&back.iter().map(|&g| (g, 1)).collect::<Vec<_>>());
        assert_eq!(w.xen.tot_pages(), tot + back.len() as u64);
        assert_eq!(b.release_ballooned_again(&mut w.xen), back.len() as u64);
        assert_eq!(w.xen.tot_pages(), tot);
        check(&mut w, &b);
    }

    #[test]
    fn down_to_a_quarter_and_back_up_reaches_the_target_exactly() {
        let mut w = world(256);
        let mut b = Balloon::new(BalloonConfig::default());
        assert_eq!(b.adopt_boot_offline(&w.mm, &mut w.xen, w.now), Ok(0));
        assert_eq!(b.accounting_offset(), Some(NONRAM as i64));
        assert_eq!(ram(&w), 65536);
        b.set_target(&kib(64), 256 * 1024, w.now).unwrap();
        assert_eq!(settle(&mut w, &mut b, true).0, StepOutcome::Done);
        assert_eq!(ram(&w), 16384);
        // 49152 pages = 96 whole free subsections: order 9 only, one batch (≤ 512 a call).
        assert_eq!(b.counters().released, [0, 96]);
        assert_eq!(b.counters().hypercalls, 1);
        assert_eq!(b.status(&w.mm).state, BalloonState::Done);
        assert_eq!(b.status(&w.mm).ballooned_kib, 192 * 1024);
        b.set_target(&kib(256), 256 * 1024, w.now).unwrap();
        assert_eq!(settle(&mut w, &mut b, true).0, StepOutcome::Done);
        assert_eq!(ram(&w), 65536);
        assert_eq!(b.counters().populated, [0, 96]);
        assert_eq!(b.counters().hypercalls, 2);
        // A target that is not a whole number of subsections: order 0 for the rest.
        b.set_target(b"102412", 256 * 1024, w.now).unwrap();
        assert_eq!(settle(&mut w, &mut b, true).0, StepOutcome::Done);
        assert_eq!(ram(&w), 102412 / 4);
        let c = b.counters();
        assert_eq!(c.released[1], 96 + (65536 - 25603) / 512);
        assert_eq!(c.released[0], (65536 - 25603) % 512);
        b.set_target(b"102416", 256 * 1024, w.now).unwrap();
        assert_eq!(settle(&mut w, &mut b, true).0, StepOutcome::Done);
        assert_eq!(ram(&w), 25604);
        assert_eq!(b.counters().populated[0], 1);
        assert_eq!(w.xen.tot_pages(), 25604 + NONRAM);
    }

    std::thread_local! {
        static FAKE_NS: core::cell::Cell<u64> = const { core::cell::Cell::new(0) };
    }

    /// A clock that advances 1 µs per reading (this thread's own).
    fn fake_clock() -> u64 {
        FAKE_NS.with(|c| {
            c.set(c.get() + 1000);
            c.get()
        })
    }

    #[test]
    fn one_hypercall_per_gib_and_each_step_is_timed() {
        // 1 GiB -> 256 MiB -> 1 GiB: 384 order-9 extents each way, one call each way.
        let mut w = world(1024);
        let mut b = Balloon::new(BalloonConfig::default()).with_clock(fake_clock);
        assert_eq!(b.adopt_boot_offline(&w.mm, &mut w.xen, w.now), Ok(0));
        assert!(b.status(&w.mm).last_step.is_none());
        for (mib, seq) in [(256u64, 1u64), (1024, 2)] {
            let h0 = b.counters().hypercalls;
            let start = fake_clock();
            b.set_target(&kib(mib), 1024 * 1024, start).unwrap();
            assert_eq!(settle_at(&mut w, &mut b, fake_clock), StepOutcome::Done);
            assert_eq!(ram(&w), mib * 256);
            assert_eq!(b.counters().hypercalls - h0, 1, "one call for 768 MiB");
            let s = b.last_step().expect("the step was timed");
            assert_eq!((s.seq, s.target_kib, s.hypercalls), (seq, mib * 1024, 1));
            assert_eq!(s.pages, 768 * 256);
            // Two clock readings around the one hypercall: 1 µs inside.
            assert_eq!(s.hypercall_ns, 1000);
            assert!(s.total_ns > s.hypercall_ns);
            assert_eq!(s.outside_ns(), s.total_ns - 1000);
            let f: Vec<_> = b.status(&w.mm).fields().collect();
            let get = |k: &str| f.iter().find(|(key, _)| *key == k).map(|(_, v)| v.clone());
            assert_eq!(get("step/seq"), Some(format!("{seq}")));
            assert_eq!(get("step/hypercalls"), Some("1".into()));
            assert_eq!(get("step/hypercall-us"), Some("1".into()));
            check(&mut w, &b);
        }
        // A target that is already held is no step.
        b.set_target(&kib(1024), 1024 * 1024, fake_clock()).unwrap();
        assert_eq!(settle_at(&mut w, &mut b, fake_clock), StepOutcome::Done);
        assert_eq!(b.last_step().unwrap().seq, 2);
    }

    /// Step until not Progress, with `now` from `clock`.
    fn settle_at(w: &mut World, b: &mut Balloon, clock: fn() -> u64) -> StepOutcome {
        for _ in 0..10_000 {
            let o = b.step(&w.mm, &mut w.xen, clock());
            if o != StepOutcome::Progress {
                return o;
            }
        }
        panic!("no settle");
    }

    #[test]
    fn fragmented_memory_falls_back_to_order_0() {
        let mut w = world(128);
        // The kernel holds one page in every subsection: no whole free subsection left.
        let mut all = Vec::new();
        while let Ok(p) = w.mm.alloc_frames(0) {
            all.push(p);
        }
        for p in all.into_iter().filter(|p| p.index_in_subsection() != 7) {
            w.mm.free_frames(p, 0).unwrap();
        }
        let mut b = Balloon::new(BalloonConfig::default());
        b.adopt_boot_offline(&w.mm, &mut w.xen, w.now).unwrap();
        b.set_target(&kib(64), 128 * 1024, w.now).unwrap();
        assert_eq!(settle(&mut w, &mut b, true).0, StepOutcome::Done);
        assert_eq!(ram(&w), 16384);
        assert_eq!(b.counters().released, [16384, 0]);
        assert_eq!(b.counters().hypercalls, 16384 / 512);
    }

    std::thread_local! {
        /// Pages holding "our data" (this thread's test), until scrubbed.
        static WRITTEN: core::cell::RefCell<std::collections::BTreeSet<Gfn>> =
            const { core::cell::RefCell::new(std::collections::BTreeSet::new()) };
    }

    fn record_scrub(gfn: Gfn, order: u32) {
        WRITTEN.with(|w| {
            let mut w = w.borrow_mut();
            for g in gfn..gfn + (1 << order) {
                w.remove(&g);
            }
        });
    }

    /// Allocate `2^order` frames, write "data" into them, free them.
    fn write_and_free(w: &World, order: u8) -> Pfn {
        let p = w.mm.alloc_frames(order).unwrap();
        WRITTEN.with(|set| set.borrow_mut().extend(p.0..p.0 + (1 << order)));
        w.mm.free_frames(p, order).unwrap();
        p
    }

    /// Pages with our data that Xen holds no more (released unscrubbed).
    fn leaked(w: &World) -> usize {
        WRITTEN.with(|set| {
            set.borrow()
                .iter()
                .filter(|&&g| !w.xen.is_populated(g))
                .count()
        })
    }

    /// Balloon 128 MiB down to 4 and back twice, with data written into an order-9 block
    /// and order-0 pages and freed, Xen taking extents up to `max_order`; returns the most
    /// pages of ours Xen held at any round (released unscrubbed), how many written pages
    /// went to Xen at all, and the balloon.
    fn scrub_run(scrub: bool, max_order: u32) -> (usize, usize, Balloon) {
        WRITTEN.with(|set| set.borrow_mut().clear());
        let mut w = world(128);
        w.xen.max_order = max_order;
        let mut b = Balloon::new(BalloonConfig {
            floor_kib: 4 * 1024,
            ..BalloonConfig::default()
        });
        if scrub {
            b = b.with_scrubber(record_scrub);
        }
        b.adopt_boot_offline(&w.mm, &mut w.xen, w.now).unwrap();
        write_and_free(&w, 9);
        for _ in 0..40 {
            write_and_free(&w, 0);
        }
        let written: Vec<Gfn> = WRITTEN.with(|set| set.borrow().iter().copied().collect());
        let (mut leaks, mut given) = (0, 0);
        for mib in [4u64, 128, 4, 128] {
            b.set_target(&kib(mib), 128 * 1024, w.now).unwrap();
            for _ in 0..1000 {
                let o = b.step(&w.mm, &mut w.xen, w.now);
                leaks = leaks.max(leaked(&w));
                if o != StepOutcome::Progress {
                    break;
                }
            }
            assert_eq!(ram(&w), mib * 256);
            given = given.max(written.iter().filter(|&&g| !w.xen.is_populated(g)).count());
            check(&mut w, &b);
        }
        (leaks, given, b)
    }

    #[test]
    fn pages_that_held_our_data_are_zeroed_before_xen_gets_them() {
        let (leaks, given, b) = scrub_run(true, 9);
        assert_eq!(leaks, 0);
        // The written block did go to Xen (so the check above had something to catch).
        assert!(given >= 512, "{given}");
        let scrubbed = b.counters().scrubbed_pages;
        assert!(scrubbed >= 512, "{scrubbed}");
        // Memory that only ever came from Xen is not zeroed: 2 x 124 MiB went out, and the
        // written subsection, zeroed whole once, is clean the second time.
        assert!(scrubbed < 4 * 512, "{scrubbed} pages zeroed");
        // Xen refuses order 9 (its order limit): the pages go as order-0 extents.
        let (leaks, given, b) = scrub_run(true, 0);
        assert_eq!(leaks, 0);
        assert!(given >= 512, "{given}");
        assert!(b.counters().scrubbed_pages >= 512);
        // Negative control: without the scrubber the same runs hand our data to Xen.
        for max_order in [9, 0] {
            let (leaks, _, b) = scrub_run(false, max_order);
            assert!(leaks >= 512, "{leaks}");
            assert_eq!(b.counters().scrubbed_pages, 0);
        }
    }

    #[test]
    fn xen_order_limit_falls_back_to_order_0_without_spinning() {
        let mut w = world(128);
        w.xen.max_order = 0;
        let mut b = Balloon::new(BalloonConfig::default());
        b.adopt_boot_offline(&w.mm, &mut w.xen, w.now).unwrap();
        b.set_target(&kib(64), 128 * 1024, w.now).unwrap();
        let (o, steps) = settle(&mut w, &mut b, true);
        assert_eq!((o, ram(&w)), (StepOutcome::Done, 16384));
        assert_eq!(b.counters().released, [16384, 0]);
        // One refused order-9 call, then order 0 only (the refusal is remembered); the
        // round of the last call ends the step.
        assert_eq!(b.counters().hypercalls, 1 + 32);
        assert_eq!(steps, 32);
        b.set_target(&kib(128), 128 * 1024, w.now).unwrap();
        assert_eq!(settle(&mut w, &mut b, true).0, StepOutcome::Done);
        assert_eq!(ram(&w), 32768);
        assert_eq!(b.counters().populated, [16384, 0]);
    }

    #[test]
    fn partial_completion_converges() {
        let mut w = world(256);
        w.xen.faults.max_extents_per_call = Some(3);
        let mut b = Balloon::new(BalloonConfig::default());
        b.adopt_boot_offline(&w.mm, &mut w.xen, w.now).unwrap();
        b.set_target(b"65540", 256 * 1024, w.now).unwrap();
        assert_eq!(settle(&mut w, &mut b, true).0, StepOutcome::Done);
        assert_eq!(ram(&w), 16385);
        assert_eq!(b.counters().backoffs, 0, "partial success is progress");
        b.set_target(&kib(200), 256 * 1024, w.now).unwrap();
        assert_eq!(settle(&mut w, &mut b, true).0, StepOutcome::Done);
        assert_eq!(ram(&w), 200 * 256);
        assert_eq!(b.counters().backoffs, 0);
    }

    #[test]
    fn hypercall_errors_return_pages_and_back_off() {
        let mut w = world(128);
        let mut b = Balloon::new(BalloonConfig::default());
        b.adopt_boot_offline(&w.mm, &mut w.xen, w.now).unwrap();
        w.xen.faults.fail_calls = Some((Errno::ENOMEM, 3));
        b.set_target(&kib(64), 128 * 1024, w.now).unwrap();
        let t0 = w.now;
        let o = b.step(&w.mm, &mut w.xen, w.now);
        assert_eq!(o, StepOutcome::BackingOff { until_ns: t0 + SEC });
        check(&mut w, &b);
        assert_eq!(ram(&w), 32768, "pages Xen did not take are Free again");
        assert!(b.status(&w.mm).last_error.contains("ENOMEM"));
        assert_eq!(b.status(&w.mm).state, BalloonState::BackingOff);
        // Before the deadline: no hypercall.
        let calls = w.xen.calls;
        assert_eq!(b.step(&w.mm, &mut w.xen, t0 + SEC - 1), o);
        assert_eq!(w.xen.calls, calls);
        assert_eq!(settle(&mut w, &mut b, true).0, StepOutcome::Done);
        assert_eq!(ram(&w), 16384);
        assert_eq!(b.counters().backoffs, 3);
        assert_eq!(w.now, t0 + (1 + 2 + 4) * SEC);
    }

    #[test]
    fn refused_populate_backs_off_without_spinning_then_reaches_the_target() {
        let mut w = world(256);
        let mut b = Balloon::new(BalloonConfig::default());
        b.adopt_boot_offline(&w.mm, &mut w.xen, w.now).unwrap();
        b.set_target(&kib(64), 256 * 1024, w.now).unwrap();
        settle(&mut w, &mut b, false);
        // `xl mem-max` below the next target: Xen stops at 100 MiB (+ its own pages).
        w.xen.max_pages = 100 * 256 + NONRAM;
        b.set_target(&kib(200), 256 * 1024, w.now).unwrap();
        let calls0 = w.xen.calls;
        let start = w.now;
        let mut delays = Vec::new();
        while w.now < start + 600 * SEC {
            match b.step(&w.mm, &mut w.xen, w.now) {
                StepOutcome::Progress => {}
                StepOutcome::BackingOff { until_ns } => {
                    delays.push((until_ns - w.now) / SEC);
                    w.now = until_ns;
                }
                o => panic!("{o:?}"),
            }
        }
        check(&mut w, &b);
        assert_eq!(ram(&w), 100 * 256, "what was gained is kept");
        assert_eq!(&delays[..7], [1, 2, 4, 8, 16, 32, 32]);
        assert!(delays.iter().all(|&d| d <= 32));
        // Ten minutes of refusal cost a few dozen hypercalls, not millions.
        let refused_calls = w.xen.calls - calls0;
        assert!(refused_calls <= 60, "{refused_calls} hypercalls");
        let s = b.status(&w.mm);
        assert_eq!(s.state, BalloonState::BackingOff);
        assert!(s.last_error.contains("populated none"), "{}", s.last_error);
        assert_eq!(s.backoff_ms, 32_000);
        // The limit is raised: the next retry reaches the target.
        w.xen.max_pages = 256 * 256 + NONRAM + 256;
        assert_eq!(settle(&mut w, &mut b, true).0, StepOutcome::Done);
        assert_eq!(ram(&w), 200 * 256);
        assert_eq!(b.status(&w.mm).backoff_ms, 0);
        // And a new target is acted on at once even in the middle of a backoff.
        w.xen.max_pages = 0;
        b.set_target(&kib(256), 256 * 1024, w.now).unwrap();
        assert!(matches!(
            b.step(&w.mm, &mut w.xen, w.now),
            StepOutcome::BackingOff { .. }
        ));
        w.xen.max_pages = u64::MAX;
        let calls = w.xen.calls;
        b.set_target(&kib(250), 256 * 1024, w.now).unwrap();
        // One call and the target is reached, in the same round.
        assert_eq!(b.step(&w.mm, &mut w.xen, w.now), StepOutcome::Done);
        assert_eq!(w.xen.calls, calls + 1);
        assert_eq!(ram(&w), 250 * 256);
    }

    #[test]
    fn pod_boot_releases_the_excess_before_touching_it() {
        // memory=64, maxmem=1024.
        let mut w = pod_world(1024, 64);
        let touchable = 64 * 256 - 256;
        assert_eq!(ram(&w), touchable);
        // The kernel has touched its image and boot data, nothing else.
        {
            let g = w.mm.read();
            for p in g.active_pages(PfnRange::new(Pfn(0), Pfn(MAX_PFN))) {
                if p.is_ram() && p.state() == PageState::Reserved {
                    assert!(w.xen.touch(p.pfn().0));
                }
            }
        }
        let mut b = Balloon::new(BalloonConfig::default());
        let released = b.adopt_boot_offline(&w.mm, &mut w.xen, w.now).unwrap();
        assert_eq!(released, 262144 - touchable);
        // 16128 = 31.5 subsections: half of subsection 31 goes as order 0.
        assert_eq!(b.counters().released, [256, (262144 - 16384) / 512]);
        assert_eq!(b.counters().boot_excess_pages, released);
        assert_eq!(
            w.xen.pod_entries() + w.xen.populated_pages() - NONRAM,
            touchable
        );
        assert!(w.xen.pod_cache <= w.xen.pod_entries());
        assert_eq!(
            b.accounting_offset(),
            Some(w.xen.tot_pages() as i64 - touchable as i64)
        );
        check(&mut w, &b);
        // The toolstack's first target (64 MiB) is a little above the touch limit.
        b.set_target(&kib(64), 1024 * 1024, w.now).unwrap();
        assert_eq!(settle(&mut w, &mut b, true).0, StepOutcome::Done);
        assert_eq!(ram(&w), 16384);
        // Up to maxmem and back down.
        b.set_target(&kib(1024), 1024 * 1024, w.now).unwrap();
        assert_eq!(settle(&mut w, &mut b, true).0, StepOutcome::Done);
        assert_eq!(ram(&w), 262144);
        b.set_target(&kib(64), 1024 * 1024, w.now).unwrap();
        assert_eq!(settle(&mut w, &mut b, true).0, StepOutcome::Done);
        assert_eq!(ram(&w), 16384);
        assert!(w.xen.killed.is_none());
    }

    #[test]
    fn pod_release_interrupted_at_boot_finishes_in_step() {
        let mut w = pod_world(512, 64);
        w.xen.faults.fail_calls = Some((Errno::EAGAIN, 1));
        let mut b = Balloon::new(BalloonConfig::default());
        assert_eq!(
            b.adopt_boot_offline(&w.mm, &mut w.xen, w.now),
            Err(Errno::EAGAIN)
        );
        assert!(b.unreleased_pages() > 0 && b.accounting_offset().is_none());
        w.xen.faults.max_extents_per_call = Some(5);
        // Even a target is not acted on before the excess is gone.
        b.set_target(&kib(32), 512 * 1024, w.now).unwrap();
        let (o, _) = settle(&mut w, &mut b, false);
        assert_eq!(o, StepOutcome::Done);
        assert_eq!(b.unreleased_pages(), 0);
        assert!(b.accounting_offset().is_some());
        check(&mut w, &b);
        assert_eq!(ram(&w), 8192);
    }

    #[test]
    fn step_without_adopt_still_releases_the_boot_excess_first() {
        let mut w = pod_world(256, 64);
        let mut b = Balloon::new(BalloonConfig::default());
        b.set_target(&kib(64), 256 * 1024, w.now).unwrap();
        let excess = 65536 - ram(&w);
        // The first steps only release (order 9 first, then the order-0 rest).
        assert_eq!(b.step(&w.mm, &mut w.xen, w.now), StepOutcome::Progress);
        assert_eq!(b.counters().released[0], 0);
        assert_eq!(settle(&mut w, &mut b, true).0, StepOutcome::Done);
        assert_eq!(b.counters().boot_excess_pages, excess);
        assert_eq!(ram(&w), 16384);
        assert_eq!(b.status(&w.mm).ballooned_kib, (65536 - 16384) * 4);
    }

    #[test]
    fn pod_mem_set_moves_tot_pages_first_and_the_offset_holds_at_rest() {
        let mut w = pod_world(512, 128);
        let mut b = Balloon::new(BalloonConfig {
            batch_order9: 8,
            ..BalloonConfig::default()
        });
        b.adopt_boot_offline(&w.mm, &mut w.xen, w.now).unwrap();
        let offset = b.accounting_offset().unwrap();
        b.set_target(&kib(128), 512 * 1024, w.now).unwrap();
        assert_eq!(settle(&mut w, &mut b, false).0, StepOutcome::Done);
        // `xl mem-set 64`: libxl sets Xen's PoD target before the guest sees the watch.
        w.xen.set_pod_target(64 * 256 + NONRAM);
        b.set_target(&kib(64), 512 * 1024, w.now).unwrap();
        assert_eq!(b.step(&w.mm, &mut w.xen, w.now), StepOutcome::Progress);
        // The step checks only once it stops; a check mid-flight (as a status reader
        // might make) sees the delta off (Xen shrank its cache first), and does not judge.
        assert_eq!(b.counters().accounting_mismatches, 0);
        assert_eq!(b.check_accounting(&w.mm, &mut w.xen), Ok(()));
        let s = b.status(&w.mm);
        assert!(s.accounting_delta.unwrap() < offset, "{s:?}");
        assert_eq!(s.counters.accounting_mismatches, 0);
        assert_eq!(settle(&mut w, &mut b, false).0, StepOutcome::Done);
        assert_eq!(ram(&w), 64 * 256);
        assert_eq!(b.check_accounting(&w.mm, &mut w.xen), Ok(()));
        assert_eq!(b.accounting_offset(), Some(offset));
        check(&mut w, &b);
    }

    #[test]
    fn bad_targets_keep_state_and_are_reported() {
        let mut w = world(256);
        let mut b = Balloon::new(BalloonConfig::default());
        b.adopt_boot_offline(&w.mm, &mut w.xen, w.now).unwrap();
        assert_eq!(status_field(&b, &w, "state"), "waiting");
        b.set_target(&kib(128), 256 * 1024, w.now).unwrap();
        settle(&mut w, &mut b, false);
        let calls = w.xen.calls;
        let bad: [(&[u8], TargetError); 6] = [
            (b"", TargetError::Empty),
            (b"abc", TargetError::NotDecimal),
            (b"-5", TargetError::NotDecimal),
            (b"0x4000", TargetError::NotDecimal),
            (b"1234567890123456789012345", TargetError::Overflow),
            (
                b"307200",
                TargetError::AboveMax {
                    kib: 307200,
                    max_kib: 262144,
                },
            ),
        ];
        for (n, (raw, err)) in bad.into_iter().enumerate() {
            assert_eq!(b.set_target(raw, 256 * 1024, w.now), Err(err.clone()));
            let s = b.status(&w.mm);
            assert_eq!(s.state, BalloonState::Error);
            assert!(s.last_error.contains(&format!("{err}")), "{}", s.last_error);
            assert_eq!(s.target_kib, Some(128 * 1024), "target kept");
            assert_eq!(s.counters.rejected_targets, n as u64 + 1);
            assert_eq!(b.step(&w.mm, &mut w.xen, w.now), StepOutcome::Done);
            assert_eq!(ram(&w), 128 * 256);
        }
        assert_eq!(w.xen.calls, calls, "garbage caused no hypercall");
        // Below the floor: clamped at 32 MiB, and shown.
        let t = b.set_target(b"1024", 256 * 1024, w.now).unwrap();
        assert!(t.clamped());
        assert_eq!(settle(&mut w, &mut b, true).0, StepOutcome::Done);
        assert_eq!(ram(&w), DEFAULT_FLOOR_KIB / 4);
        assert_eq!(status_field(&b, &w, "state"), "clamped");
        assert_eq!(status_field(&b, &w, "target-kib"), "1024");
        assert_eq!(status_field(&b, &w, "effective-target-kib"), "32768");
        // Zero too.
        b.set_target(b"0", 256 * 1024, w.now).unwrap();
        assert_eq!(settle(&mut w, &mut b, true).0, StepOutcome::Done);
        assert_eq!(ram(&w), DEFAULT_FLOOR_KIB / 4);
        // The next valid mem-set is followed.
        b.set_target(b"196608\n", 256 * 1024, w.now).unwrap();
        assert_eq!(settle(&mut w, &mut b, true).0, StepOutcome::Done);
        assert_eq!(ram(&w), 192 * 256);
        assert_eq!(status_field(&b, &w, "state"), "done");
    }

    #[test]
    fn target_above_all_memory_needs_hotplug_and_does_not_spin() {
        let mut w = world(256);
        let mut b = Balloon::new(BalloonConfig::default());
        b.adopt_boot_offline(&w.mm, &mut w.xen, w.now).unwrap();
        b.set_target(&kib(200), 512 * 1024, w.now).unwrap();
        settle(&mut w, &mut b, false);
        // After `xl mem-max 512`: 400 MiB is 144 MiB beyond boot RAM.
        b.set_target(&kib(400), 512 * 1024, w.now).unwrap();
        w.xen.max_pages = 512 * 256 + NONRAM + 256;
        let (o, _) = settle(&mut w, &mut b, true);
        assert_eq!(o, StepOutcome::NeedHotplug { pages: 144 * 256 });
        assert_eq!(ram(&w), 65536, "everything ballooned came back first");
        let calls = w.xen.calls;
        for _ in 0..100 {
            assert_eq!(
                b.step(&w.mm, &mut w.xen, w.now),
                StepOutcome::NeedHotplug { pages: 144 * 256 }
            );
        }
        assert_eq!(w.xen.calls, calls);
        assert_eq!(status_field(&b, &w, "state"), "need-hotplug");
        assert_eq!(
            status_field(&b, &w, "need-hotplug-kib"),
            format!("{}", 144 * 1024)
        );
    }

    #[test]
    fn status_fields_and_accounting_mismatch_are_published() {
        let mut w = world(128);
        let mut b = Balloon::new(BalloonConfig::default());
        let s = b.status(&w.mm);
        assert_eq!((s.target_kib, s.accounting_offset), (None, None));
        b.adopt_boot_offline(&w.mm, &mut w.xen, w.now).unwrap();
        b.set_target(&kib(64), 128 * 1024, 3 * SEC).unwrap();
        w.now = 5 * SEC;
        settle(&mut w, &mut b, false);
        let fields: Vec<(&str, String)> = b.status(&w.mm).fields().collect();
        let keys: Vec<&str> = fields.iter().map(|f| f.0).collect();
        assert_eq!(
            keys,
            [
                "current-kib",
                "target-kib",
                "effective-target-kib",
                "ballooned-kib",
                "state",
                "last-error",
                "extents/released/order-9",
                "extents/released/order-0",
                "extents/populated/order-9",
                "extents/populated/order-0",
                "boot-excess-kib",
                "scrubbed-kib",
                "hypercalls",
                "backoffs",
                "backoff-ms",
                "rejected-targets",
                "need-hotplug-kib",
                "reached-ms",
                "accounting/offset-pages",
                "accounting/delta-pages",
                "accounting/mismatches",
            ]
        );
        let get = |k: &str| fields.iter().find(|f| f.0 == k).unwrap().1.as_str();
        assert_eq!(get("current-kib"), "65536");
        assert_eq!(get("target-kib"), "65536");
        assert_eq!(get("ballooned-kib"), "65536");
        assert_eq!(get("extents/released/order-9"), "32");
        assert_eq!(get("hypercalls"), "1");
        assert_eq!(get("reached-ms"), "2000");
        assert_eq!(get("accounting/offset-pages"), "19");
        assert_eq!(get("accounting/mismatches"), "0");
        // Xen changes the domain behind the model's back (a frame appears that the model
        // does not know): reported, never absorbed.
        w.xen.populate_physmap(&[0x100000], 0).unwrap();
        // 4 MiB and one page: an order-9 round and an order-0 round.
        b.set_target(&kib_raw(60 * 1024 - 4), 128 * 1024, w.now)
            .unwrap();
        let (_, steps) = settle(&mut w, &mut b, false);
        // Checked (and reported) once the step stops, not after each of its rounds.
        assert_eq!(steps, 2);
        assert_eq!(b.counters().accounting_mismatches, 1);
        let s = b.status(&w.mm);
        assert_eq!(
            (s.accounting_offset, s.accounting_delta),
            (Some(19), Some(20))
        );
        assert!(s.last_error.contains("accounting"), "{}", s.last_error);
        assert_eq!(
            b.check_accounting(&w.mm, &mut w.xen),
            Err(AccountingError::Mismatch {
                expected: 19,
                found: 20
            })
        );
    }

    #[derive(Clone, Debug)]
    enum Op {
        Target(u64),
        Garbage(Vec<u8>),
        Partial(usize),
        Fail(u32),
        MaxPages(u64),
        OrderLimit(bool),
        Alloc(u16),
        FreeAll,
        Wait(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u64..140 * 1024).prop_map(Op::Target),
            1 => proptest::collection::vec(any::<u8>(), 0..8).prop_map(Op::Garbage),
            1 => (1usize..8).prop_map(Op::Partial),
            1 => (1u32..4).prop_map(Op::Fail),
            1 => (16u64..160).prop_map(Op::MaxPages),
            1 => any::<bool>().prop_map(Op::OrderLimit),
            1 => (0u16..3000).prop_map(Op::Alloc),
            1 => Just(Op::FreeAll),
            1 => (0u64..40).prop_map(Op::Wait),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        #[test]
        fn random_targets_and_faults_keep_the_invariants(
            ops in proptest::collection::vec(op(), 1..24),
            pod in any::<bool>(),
        ) {
            let mut w = if pod { pod_world(128, 96) } else { world(128) };
            let max_kib = 128 * 1024;
            let floor = DEFAULT_FLOOR_KIB / 4;
            let mut b = Balloon::new(BalloonConfig::default());
            let _ = b.adopt_boot_offline(&w.mm, &mut w.xen, w.now);
            let mut held = Vec::new();
            for op in ops {
                match op {
                    Op::Target(k) => {
                        let before = b.target();
                        let r = b.set_target(format!("{k}").as_bytes(), max_kib, w.now);
                        prop_assert_eq!(r.is_err(), k > max_kib);
                        if r.is_err() {
                            prop_assert_eq!(b.target(), before);
                        }
                    }
                    Op::Garbage(raw) => {
                        let before = b.target();
                        if b.set_target(&raw, max_kib, w.now).is_err() {
                            prop_assert_eq!(b.target(), before);
                        }
                    }
                    Op::Partial(n) => w.xen.faults.max_extents_per_call = Some(n),
                    Op::Fail(n) => w.xen.faults.fail_calls = Some((Errno::ENOMEM, n)),
                    Op::MaxPages(mib) => w.xen.max_pages = mib * 256 + NONRAM,
                    Op::OrderLimit(on) => w.xen.max_order = if on { 0 } else { 9 },
                    Op::Alloc(n) => {
                        for _ in 0..n {
                            match w.mm.alloc_frames(0) {
                                Ok(p) => held.push(p),
                                Err(_) => break,
                            }
                        }
                    }
                    Op::FreeAll => {
                        for p in held.drain(..) {
                            w.mm.free_frames(p, 0).unwrap();
                        }
                    }
                    Op::Wait(s) => w.now += s * SEC,
                }
                let ram_before = ram(&w);
                for _ in 0..6 {
                    let calls = w.xen.calls;
                    let o = b.step(&w.mm, &mut w.xen, w.now);
                    // Bounded work per step: an order-9 try and an order-0 fallback at most.
                    prop_assert!(w.xen.calls - calls <= 2);
                    match o {
                        StepOutcome::BackingOff { until_ns } => w.now = until_ns,
                        StepOutcome::Error => prop_assert!(false, "{}", b.status(&w.mm).last_error),
                        _ => {}
                    }
                    let r = ram(&w);
                    // Never below the floor (unless it started there).
                    prop_assert!(r >= floor.min(ram_before));
                }
                check(&mut w, &b);
            }
            // Faults cleared and the limit raised: the last target is reached exactly.
            w.xen.faults = Default::default();
            w.xen.max_order = 9;
            w.xen.max_pages = u64::MAX / 4;
            for p in held.drain(..) {
                w.mm.free_frames(p, 0).unwrap();
            }
            let (o, _) = settle(&mut w, &mut b, false);
            check(&mut w, &b);
            if let Some(t) = b.target() {
                prop_assert_eq!(o, StepOutcome::Done);
                prop_assert_eq!(ram(&w), t.effective_kib / 4);
            }
        }
    }
}
