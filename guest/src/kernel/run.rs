//! After Xen is found: console, xenstore, ready, and the mode the command line asked for.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::ptr::NonNull;

use guest::cmdline::{Cmdline, Mode};
use guest::mm::hotplug::HotplugWindow;
use guest::mm::PfnRange;
use guest::xen::balloon::driver::{Balloon, StepOutcome};
use guest::xen::control::{parse_shutdown, ShutdownRequest};
use guest::xen::hotplug::{Hotplug, HotplugOutcome};
use guest::xen::xenstore::{XenstoreClient, XsError, XsOps, XsReq};
use xen_bindings::abi::hvm::param;
use xen_bindings::abi::vcpu::{RUNSTATE_BLOCKED, RUNSTATE_RUNNABLE, RUNSTATE_RUNNING};
use xen_bindings::traits::{Clock, MemoryReservation, Sched, ShutdownReason, SuspendOutcome};

use crate::boot::BootInfo;
use crate::hv::{Xen, Xenstore};
use crate::kmem::Model;
use crate::{klog, selftest};

/// Watch token for `control/shutdown`.
const TOKEN_SHUTDOWN: &str = "control/shutdown";

pub fn run(
    xen: Xen,
    info: &BootInfo,
    cmdline: &Cmdline,
    mm: &'static Model,
    balloon: Balloon,
) -> ! {
    attach_console(&xen);
    crate::boottime::mark("console");
    // Test switch `say=`: raw lines on both sinks, exactly as given (harness-forgery).
    for line in &cmdline.say {
        klog::write_raw(format!("{line}\n").as_bytes());
    }
    // Every xenstore round trip wakes xenstored in dom0, which on a busy host means
    // waiting for it: the boot makes one (two with more than one vCPU: their
    // availability decides what data/smp says).
    let mut xs = match connect_xenstore(&xen) {
        Ok(xs) => xs,
        Err(e) => panic!("cannot connect to xenstore: {e:?}"),
    };
    let cpu_paths = crate::smp::probe_max();
    if crate::smp::max_vcpus() > 1 {
        let paths: Vec<&str> = cpu_paths.iter().map(|p| p.as_str()).collect();
        crate::smp::start(&xen, xs.read_many(&paths));
    } else {
        // vCPU 0 is online whatever cpu/0/availability says.
        crate::smp::start(&xen, Vec::new());
    }
    crate::boottime::mark("smp");
    let online = format!("{}", crate::smp::online());
    let max = format!("{}", crate::smp::max_vcpus());
    let mut reqs = alloc::vec![XsReq::Read("domid"), XsReq::Read("memory/target")];
    reqs.extend(FEATURES.map(|k| XsReq::Write(k, b"1")));
    reqs.extend([
        XsReq::Write("data/smp/online", online.as_bytes()),
        XsReq::Write("data/smp/max", max.as_bytes()),
        XsReq::Watch("control/shutdown", TOKEN_SHUTDOWN),
        // Last: the toolstack may act on it, and everything above is in place by then.
        XsReq::Write("data/ready", b"1"),
    ]);
    let mut results = xs.batch(&reqs).into_iter();
    crate::boottime::mark("xenstore");
    let domid = parse_u64("domid", results.next().expect("one result per request"));
    let target = parse_u64(
        "memory/target",
        results.next().expect("one result per request"),
    );
    for (req, r) in reqs[2..].iter().zip(results) {
        report_boot_request(req, r.map(drop));
    }
    crate::boottime::mark("ready");
    log::info!(
        target: klog::DEBUGCON,
        "ready domid={} target_kib={}",
        domid.map_or("?".into(), |d| format!("{d}")),
        target.map_or("?".into(), |t| format!("{t}"))
    );
    klog::release_console_notifications();
    if let Some(line) = crate::boottime::summary(|t| xen.tsc_delta_ns(t)) {
        // Xen's account of vCPU 0 since it was created: the wall time above includes
        // waiting for the one physical CPU (dom0's xl and daemons) and for xenstored.
        let rs = xen.runstate(0).map_or(String::new(), |t| {
            let ms = |ns: u64| ns as f64 / 1e6;
            format!(
                "; vCPU 0 by Xen's account: running {:.1} ms, waiting for a CPU {:.1} ms, blocked {:.1} ms",
                ms(t[RUNSTATE_RUNNING]),
                ms(t[RUNSTATE_RUNNABLE]),
                ms(t[RUNSTATE_BLOCKED])
            )
        });
        log::info!("boot: {line}{rs}");
    }
    crate::kmem::log_layout(mm);
    let extra = crate::kmem::xen_extra_pages(info);
    log::info!(
        "mm: Xen should account {extra} pages beyond our RAM (special pages + ACPI - shared_info)"
    );
    publish_census(&mut xs, mm, extra);
    match cmdline.mode {
        Mode::Selftest => {
            let verdict = selftest::run(&xen, &mut xs, info);
            log::info!("shutdown: poweroff after the self-tests");
            // The XTF convention: this is the last console line, then poweroff.
            klog::write_raw(format!("Test result: {verdict}\n").as_bytes());
            let e = xen.shutdown(ShutdownReason::Poweroff);
            panic!("SCHEDOP_shutdown(poweroff) returned: {e:?}")
        }
        Mode::Panic => panic!("deliberate panic (command line \"panic\")"),
        Mode::Normal => {
            let hotplug = match HotplugWindow::from_memmap(&crate::kmem::memmap_entries(info)) {
                Ok(w) => {
                    log::info!("hotplug: {w}");
                    Hotplug::new(w).with_cpu_clock(crate::hv::running_ns)
                }
                Err(e) => panic!("no room for a hotplug window: {e:?}"),
            };
            let walk = cmdline
                .walk
                .then(|| crate::walk::Walker::new(hotplug.window()));
            if cmdline.race_bug != guest::mm::RaceBug::None {
                log::warn!(
                    "race-bug={:?}: the memory model runs with an injected ordering bug (test switch)",
                    cmdline.race_bug
                );
                mm.set_race_bug(cmdline.race_bug);
            }
            if cmdline.race {
                crate::race::start(mm, hotplug.window());
            }
            if let Some((marker, mib)) = cmdline.fill {
                let pages = crate::kmem::fill_and_free(mm, marker, mib);
                log::info!("fill: {pages} pages marked and freed (test switch)");
                publish_fields(&mut xs, "data/fill", &[("pages", format!("{pages}"))]);
            }
            let me = domid.and_then(|d| u16::try_from(d).ok()).unwrap_or(0);
            let grants = crate::grants::setup(&xen, mm, hotplug.window(), cmdline.grant, me);
            let mut m = Memory {
                mm,
                balloon,
                hotplug,
                xen_extra: extra,
                hotplug_fail: cmdline.hotplug_fail,
                walk,
                grants,
                suspend: SuspendStats::default(),
                suspend_handback: cmdline.suspend_handback,
            };
            if let Some(f) = m.grants.as_mut().and_then(|g| g.changed_fields()) {
                publish_fields(&mut xs, "data/grant", &f);
                publish_census(&mut xs, mm, extra);
            }
            publish_fields(&mut xs, "data/suspend", &m.suspend.fields());
            event_loop(&xen, &mut xs, &mut m)
        }
    }
}

fn attach_console(xen: &Xen) {
    match (
        xen.hvm_param(param::CONSOLE_PFN),
        xen.hvm_param(param::CONSOLE_EVTCHN),
    ) {
        (Ok(pfn), Ok(port)) if pfn != 0 => {
            // SAFETY: HVM_PARAM_CONSOLE_PFN names our console ring page, below 4 GiB and
            // thus identity-mapped by the boot tables.
            unsafe { klog::attach_console((pfn << 12) as *mut _, port as u32) };
            log::info!("console ring at pfn {pfn:#x}, event channel {port}");
        }
        (a, b) => {
            klog::debugcon_all();
            log::warn!("no PV console ({a:?}, {b:?}): logging to port 0xE9 only")
        }
    }
}

fn connect_xenstore(xen: &Xen) -> Result<Xenstore, &'static str> {
    let pfn = xen
        .hvm_param(param::STORE_PFN)
        .map_err(|_| "HVM_PARAM_STORE_PFN unreadable")?;
    let port = xen
        .hvm_param(param::STORE_EVTCHN)
        .map_err(|_| "HVM_PARAM_STORE_EVTCHN unreadable")?;
    let page = NonNull::new((pfn << 12) as *mut _).ok_or("no xenstore page")?;
    log::info!("xenstore ring at pfn {pfn:#x}, event channel {port}");
    // SAFETY: the store page is ours (identity-mapped, below 4 GiB) and only the client
    // touches it from here on.
    Ok(unsafe { XenstoreClient::new(*xen, page, port as u32) })
}

fn read_u64(xs: &mut Xenstore, path: &str) -> Option<u64> {
    parse_u64(path, xs.read(path))
}

fn parse_u64(path: &str, r: Result<Vec<u8>, XsError>) -> Option<u64> {
    match r.map(|v| {
        core::str::from_utf8(&v)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
    }) {
        Ok(Some(v)) => Some(v),
        Ok(None) => {
            log::warn!("xenstore {path}: not a number");
            None
        }
        Err(e) => {
            log::warn!("xenstore {path}: {e:?}");
            None
        }
    }
}

/// What we tell the toolstack: the `control/shutdown` requests we honour, and that we
/// follow `memory/target`.
const FEATURES: [&str; 3] = [
    "control/feature-poweroff",
    "control/feature-reboot",
    "control/feature-balloon",
];

/// Logs how one request written before ready went.
fn report_boot_request(req: &XsReq<'_>, r: Result<(), XsError>) {
    let e = match r {
        Ok(()) => return,
        Err(e) => e,
    };
    match *req {
        // libxl 4.17 pre-creates feature-poweroff/-reboot/-suspend writable for the
        // guest, but not feature-balloon (measured: EACCES); data/balloon/ tells the same.
        XsReq::Write("control/feature-balloon", _)
            if e.errno() == Some(xen_bindings::Errno::EACCES) =>
        {
            log::info!("control/feature-balloon is not writable for us (libxl does not create it)")
        }
        XsReq::Watch(path, _) => {
            log::error!("cannot watch {path} ({e:?}): xl shutdown will not work")
        }
        XsReq::Write(path, _) => log::warn!("cannot write {path}: {e:?}"),
        XsReq::Read(path) => log::warn!("cannot read {path}: {e:?}"),
    }
}

/// [`FEATURES`] again (after a resume: the new domain's xenstore has none of it).
fn announce_features(xs: &mut Xenstore) {
    let reqs = FEATURES.map(|k| XsReq::Write(k, b"1"));
    for (req, r) in reqs.iter().zip(xs.batch(&reqs)) {
        report_boot_request(req, r.map(drop));
    }
}

/// Watch token for `memory/target`.
const TOKEN_TARGET: &str = "memory/target";
/// Watch token for `cpu` (`xl vcpu-set` writes `cpu/<n>/availability`).
const TOKEN_CPU: &str = "cpu";

/// Longest the loop sleeps with nothing to do (it also wakes on every watch event).
const IDLE_NS: u64 = 1_000_000_000;

/// The memory drivers the event loop runs: the balloon and hotplug, over the model.
pub struct Memory<'a> {
    pub mm: &'a Model,
    pub balloon: Balloon,
    pub hotplug: Hotplug,
    /// Pages Xen accounts to us beyond our RAM ([`crate::kmem::xen_extra_pages`]).
    pub xen_extra: u64,
    /// Test switch `hotplug-fail=N`: hot-adds whose memmap allocation is made to fail.
    pub hotplug_fail: u32,
    /// Run the saveable-page walker after every settle (`walk` on the command line).
    pub walk: Option<crate::walk::Walker>,
    /// Our grant table and foreign mapper (None if Xen refused to set them up).
    pub grants: Option<crate::grants::Grants>,
    /// Suspend / resume counters, published under `data/suspend/`.
    pub suspend: SuspendStats,
    /// Hand free memory back to Xen before a suspend (`suspend-handback=`).
    pub suspend_handback: bool,
}

/// What `data/suspend/` shows.
#[derive(Clone, Copy, Debug, Default)]
pub struct SuspendStats {
    /// Suspends we made (`SCHEDOP_shutdown(SHUTDOWN_suspend)` calls).
    pub suspends: u64,
    /// Of those, how many resumed in a new domain (restore, migration).
    pub resumes: u64,
    /// Of those, how many were cancelled (`xl save -c`, a failed save or migration).
    pub cancelled: u64,
    /// Suspends Xen refused (the hypercall failed; we carried on).
    pub refused: u64,
    /// From the hypercall's return to connections restored, last time (µs).
    pub last_resume_us: u64,
    /// From the request to the hypercall, last time (µs).
    pub last_quiesce_us: u64,
    /// Free pages handed back to Xen before the last suspend.
    pub handed_back_pages: u64,
    /// Pages that arrived populated in the new domain although handed back or ballooned
    /// out (released again at once), last resume.
    pub released_again_pages: u64,
}

impl SuspendStats {
    fn fields(&self) -> [(&'static str, String); 8] {
        [
            ("suspends", format!("{}", self.suspends)),
            ("resumes", format!("{}", self.resumes)),
            ("cancelled", format!("{}", self.cancelled)),
            ("refused", format!("{}", self.refused)),
            ("last-resume-us", format!("{}", self.last_resume_us)),
            ("last-quiesce-us", format!("{}", self.last_quiesce_us)),
            ("handed-back-pages", format!("{}", self.handed_back_pages)),
            (
                "released-again-pages",
                format!("{}", self.released_again_pages),
            ),
        ]
    }
}

/// Least time between handshake steps that no watch event asked for (its peer-death
/// check and deferred end-access retries run on these).
const GRANT_POLL_NS: u64 = 500_000_000;
/// How often `data/race` is refreshed while the race walkers run.
const RACE_PUBLISH_NS: u64 = 2_000_000_000;

/// Serves the control and memory watches until the toolstack asks us to go.
fn event_loop(xen: &Xen, xs: &mut Xenstore, m: &mut Memory<'_>) -> ! {
    let mut hv = *xen;
    if let Err(e) = xs.watch("memory/target", TOKEN_TARGET) {
        log::error!("cannot watch memory/target ({e:?}): xl mem-set will not work");
    }
    if let Err(e) = xs.watch("cpu", TOKEN_CPU) {
        log::error!("cannot watch cpu ({e:?}): xl vcpu-set will not work");
    }
    let mut outcome = StepOutcome::Done;
    // Balloon rounds (`step` calls) since the last new target.
    let mut rounds = 0u32;
    let mut grant_due = 0;
    let mut race_due = 0;
    loop {
        // While the balloon makes progress only peek at xenstore; otherwise sleep until
        // its (or hotplug's) backoff ends or something happens.
        let now = xen.now_ns();
        let grants_busy = m.grants.as_ref().is_some_and(|g| g.busy());
        let timeout = match outcome {
            _ if grants_busy => 0,
            StepOutcome::Progress => 0,
            StepOutcome::BackingOff { until_ns } => until_ns.saturating_sub(now).min(IDLE_NS),
            _ => IDLE_NS,
        };
        match xs.wait_watch_event(timeout) {
            Ok(Some(ev)) if ev.token == TOKEN_SHUTDOWN => {
                if handle_shutdown(xen, xs, m, &mut outcome) {
                    grant_due = 0;
                }
            }
            Ok(Some(ev)) if ev.token == TOKEN_TARGET => {
                if new_target(xen, xs, &mut m.balloon) {
                    // The step's lines reach dom0 when it stops (or after its first
                    // hypercall, if it needs more): see `hold_console_notifications`.
                    crate::klog::hold_console_notifications();
                    m.hotplug.new_target();
                    outcome = StepOutcome::Progress;
                    rounds = 0;
                }
            }
            Ok(Some(ev)) if ev.token == guest::xen::grant::pair::TOKEN => grant_due = 0,
            Ok(Some(ev)) if ev.token == TOKEN_CPU => {
                if crate::smp::apply_availability(xen, xs) != 0 {
                    publish_smp(xs);
                }
            }
            Ok(Some(ev)) => log::debug!("watch event {} ({}) not for us", ev.path, ev.token),
            Ok(None) => {}
            Err(XsError::Disconnected) => {
                // Nothing more can reach us through xenstore; keep the balloon's state and
                // stay alive for `xl destroy`, waking rarely (an event would wake a
                // port-less poll at once, so give it a deadline instead).
                log::error!("xenstore connection is broken; idling");
                let _ = xen.poll(&[], xen.now_ns() + 10 * IDLE_NS);
            }
            Err(e) => log::warn!("xenstore: {e:?}"),
        }
        let was_working = matches!(outcome, StepOutcome::Progress);
        let due = match outcome {
            StepOutcome::BackingOff { until_ns } => xen.now_ns() >= until_ns,
            _ => true,
        };
        if due {
            outcome = m.balloon.step(m.mm, &mut hv, xen.now_ns());
            if let StepOutcome::NeedHotplug { pages } = outcome {
                outcome = hot_add(xen, m, pages);
            }
            rounds = rounds.saturating_add(1);
            if rounds == 1 && outcome == StepOutcome::Progress {
                // A step of one hypercall ends in its round (the balloon sees the target
                // reached) and goes straight to its final status in `settled`; one that
                // needs another round tells dom0 (posted, not waited for; a refusal is
                // logged when the reply arrives).
                if let Err(e) = xs.post_write("data/balloon/state", b"working") {
                    log::warn!("cannot publish data/balloon/state: {e:?}");
                }
                crate::klog::release_console_notifications();
            }
        }
        if was_working && !matches!(outcome, StepOutcome::Progress) {
            let again = settled(xen, xs, m, outcome);
            crate::klog::release_console_notifications();
            if again {
                // Hot-remove freed memory the balloon can give back, or moved pages it
                // must make up for: keep stepping.
                outcome = StepOutcome::Progress;
            }
        }
        if crate::race::running() && xen.now_ns() >= race_due {
            let t0 = xen.now_ns();
            race_due = t0 + RACE_PUBLISH_NS;
            publish_fields(xs, "data/race", &crate::race::fields(m.mm));
            crate::race::published(xen.now_ns() - t0);
        }
        if let Some(g) = m.grants.as_mut() {
            let now = xen.now_ns();
            let due = now >= grant_due;
            if due || g.busy() {
                if due {
                    grant_due = now + GRANT_POLL_NS;
                }
                g.tick(xen, xs, m.mm);
                if g.busy() {
                    // Between churn phases the walkers on other vCPUs get the host CPU,
                    // so the next phase changes the device window under them.
                    crate::irq::sched_yield();
                }
                // A churning mapper changes its fields every round: publish them at the
                // poll interval only (each write is a round trip to dom0).
                if due || !g.busy() {
                    if let Some(f) = g.changed_fields() {
                        publish_fields(xs, "data/grant", &f);
                        publish_census(xs, m.mm, m.xen_extra);
                    }
                }
            }
        }
    }
}

/// The target needs more than boot RAM + ballooned pages: add sections (memmap built,
/// subsections active, section online, page tables mapped — in that order, before the
/// balloon populates anything), then let the balloon fill them.
fn hot_add(xen: &Xen, m: &mut Memory<'_>, pages: u64) -> StepOutcome {
    let now = xen.now_ns();
    if m.hotplug.retry_at().is_none_or(|t| now >= t) {
        // The test switch: no memmap storage left for this attempt.
        let fail = m.hotplug_fail > 0;
        m.hotplug_fail = m.hotplug_fail.saturating_sub(1);
        m.mm.with_storage(|s| s.set_budget(if fail { s.used() } else { usize::MAX }));
        if fail {
            log::warn!(
                "hotplug: test switch hotplug-fail: this hot-add's memmap allocation will fail"
            );
        }
    }
    let map = |r: PfnRange| {
        crate::arch::page_tables::map(r.start.addr(), r.end.addr())
            .map(drop)
            .map_err(|e| format!("page tables: {e:?}"))
    };
    match m
        .hotplug
        .on_need_hotplug(m.mm, &mut m.balloon, pages, now, map)
    {
        // The hotplug driver logs what it added.
        HotplugOutcome::Added(_) => StepOutcome::Progress,
        HotplugOutcome::BackingOff { until_ns } => {
            if let Some(e) = m.hotplug.last_error() {
                log::warn!(
                    "hotplug: {e}; retrying in {} ms",
                    until_ns.saturating_sub(now) / 1_000_000
                );
            }
            StepOutcome::BackingOff { until_ns }
        }
    }
}

/// Reads `memory/target` (and `memory/static-max`, which `xl mem-max` may have raised) and
/// hands the raw value to the balloon, which parses it strictly. True if it took it.
fn new_target(xen: &Xen, xs: &mut Xenstore, balloon: &mut Balloon) -> bool {
    // Both in one round trip to xenstored: `xl mem-set` is waiting on the step.
    let mut r = xs
        .batch(&[
            XsReq::Read("memory/target"),
            XsReq::Read("memory/static-max"),
        ])
        .into_iter();
    let raw = match r.next().expect("one result per request") {
        Ok(v) => v,
        Err(e) => {
            log::warn!("cannot read memory/target: {e:?}");
            return false;
        }
    };
    let static_max = parse_u64(
        "memory/static-max",
        r.next().expect("one result per request"),
    )
    .unwrap_or(u64::MAX);
    match balloon.set_target(&raw, static_max, xen.now_ns()) {
        // `working` is published only if the step needs more than one hypercall (see
        // `event_loop`): a write now would wake xenstored in dom0, which on a shared CPU
        // runs in the middle of the step.
        Ok(_) => true,
        Err(_) => {
            // Rejected and logged by the balloon; the state it keeps is unchanged.
            publish_balloon(xs, balloon, None);
            false
        }
    }
}

/// The balloon stopped working (target reached, clamped, backing off, ...): remove
/// hot-added sections that are entirely ballooned out (also while still above the
/// target: their memmap may be what keeps it from getting there), move pages out of
/// hot-added sections that only returned storage frames keep alive, then publish the
/// numbers. (`step` has already checked the accounting against Xen; a mismatch shows in
/// the status.) True if the balloon has work again.
fn settled(xen: &Xen, xs: &mut Xenstore, m: &mut Memory<'_>, outcome: StepOutcome) -> bool {
    let mut again = false;
    if matches!(outcome, StepOutcome::Done | StepOutcome::BackingOff { .. }) {
        let r = m.hotplug.try_hot_remove(m.mm, &mut m.balloon);
        for range in &r.ranges {
            log::info!(
                "hotplug: removed [{:#x}-{:#x}): inactive, memmap freed",
                range.start.addr(),
                range.end.addr()
            );
        }
        if !r.sections.is_empty() {
            log::info!(
                "hotplug: {} KiB of memmap given back ({} storage frame(s) back to the allocator)",
                r.memmap_bytes >> 10,
                r.frames_returned
            );
            if m.balloon.above_target(m.mm) {
                m.balloon.retry_now();
                again = true;
            }
        }
        let mut hv = *xen;
        if m.hotplug.evacuate(m.mm, &mut m.balloon, &mut hv) != 0 {
            again = true;
        }
    }
    let status = m.balloon.status(m.mm);
    match outcome {
        StepOutcome::Done => log::info!(
            "balloon: target {} KiB reached in {} ms ({} KiB ballooned out)",
            status.effective_target_kib.unwrap_or(0),
            status.reached_ms.unwrap_or(0),
            status.ballooned_kib
        ),
        other => log::info!(
            "balloon: target {} KiB: {} ({other:?})",
            status.effective_target_kib.unwrap_or(0),
            status.state
        ),
    }
    publish_balloon(xs, &m.balloon, Some(m.mm));
    let hotplug: Vec<_> = m.hotplug.status(m.mm).fields().collect();
    publish_fields(xs, "data/hotplug", &hotplug);
    if let Some(w) = m.walk.as_mut() {
        // Between balloon steps, like a hibernation writer with tasks frozen.
        w.run(m.mm);
        publish_fields(xs, "data/mm/walk", &w.fields());
    }
    publish_census(xs, m.mm, m.xen_extra);
    again
}

/// Writes `(key, value)` pairs under `dir` in one transaction, so a reader never sees
/// numbers from two different moments.
fn publish_fields<K: core::fmt::Display>(xs: &mut Xenstore, dir: &str, fields: &[(K, String)]) {
    let paths: Vec<String> = fields.iter().map(|(k, _)| format!("{dir}/{k}")).collect();
    let nodes: Vec<(&str, &[u8])> = paths
        .iter()
        .zip(fields)
        .map(|(p, (_, v))| (p.as_str(), v.as_bytes()))
        .collect();
    // Three round trips (start, every write at once, commit), not one per field.
    let r: Result<(), XsError> = xs.transaction(|tx| tx.write_many(&nodes).into_iter().collect());
    if let Err(e) = r {
        log::warn!("cannot publish {dir}: {e:?}");
    }
}

/// Publishes the balloon's status under `data/balloon/`.
fn publish_balloon(xs: &mut Xenstore, balloon: &Balloon, mm: Option<&Model>) {
    let Some(mm) = mm.or_else(|| crate::kmem::MM.get()) else {
        return;
    };
    let mut fields: Vec<_> = balloon.status(mm).fields().collect();
    fields.push(("floor-kib", format!("{}", balloon.config().floor_kib)));
    if let Some(c) = balloon.config().ceiling_kib {
        fields.push(("ceiling-kib", format!("{c}")));
    }
    publish_fields(xs, "data/balloon", &fields);
}

/// Serves a `control/shutdown` request. True after a suspend (the caller re-runs its
/// periodic work at once).
fn handle_shutdown(
    xen: &Xen,
    xs: &mut Xenstore,
    m: &mut Memory<'_>,
    outcome: &mut StepOutcome,
) -> bool {
    let value = match xs.read("control/shutdown") {
        Ok(v) => v,
        Err(e) if e.is_enoent() => return false,
        Err(e) => {
            log::warn!("cannot read control/shutdown: {e:?}");
            return false;
        }
    };
    let request = parse_shutdown(&value);
    if matches!(
        request,
        ShutdownRequest::Shutdown(_) | ShutdownRequest::Suspend
    ) {
        // Acknowledge like Linux does, so the toolstack sees the request was taken
        // (libxl waits for this before it waits for the shutdown itself).
        if let Err(e) = xs.write("control/shutdown", b"") {
            log::warn!("cannot acknowledge control/shutdown: {e:?}");
        }
    }
    match request {
        ShutdownRequest::None => false,
        ShutdownRequest::Unknown => {
            log::warn!(
                "control/shutdown: ignoring unknown request {:?}",
                core::str::from_utf8(&value).unwrap_or("<binary>")
            );
            false
        }
        ShutdownRequest::Shutdown(reason) => shutdown(xen, reason),
        ShutdownRequest::Suspend => {
            suspend(xen, xs, m, outcome);
            true
        }
    }
}

/// Longest the balloon may keep working before a suspend goes ahead anyway.
const QUIESCE_NS: u64 = 10_000_000_000;

/// Free pages kept when handing memory back before a suspend (4 MiB): enough for the
/// resume path (heap, page tables) before the balloon takes the rest again.
const HANDBACK_RESERVE_PAGES: u64 = 1024;

/// `xl save` / `xl migrate`: quiesce, `SHUTDOWN_suspend`, then carry on — in a new domain
/// (restore, migration: re-establish every connection) or in this one (cancelled).
///
/// Quiesce: everything runs from this one loop, so no hypercall batch, balloon step or
/// grant operation is half-done here. The balloon is first stepped to its target (up to
/// [`QUIESCE_NS`]): libxl restores a domain with a limit of target + 1 MiB, so holding
/// more than the target could fail the restore.
fn suspend(xen: &Xen, xs: &mut Xenstore, m: &mut Memory<'_>, outcome: &mut StepOutcome) {
    let t0 = xen.now_ns();
    let mut hv = *xen;
    let ram_before = m.mm.census().ram_pages();
    if m.suspend_handback {
        let free = m.mm.census().pages_in(guest::mm::StateKind::Free);
        m.balloon
            .set_handback(free.saturating_sub(HANDBACK_RESERVE_PAGES));
        *outcome = StepOutcome::Progress;
    }
    while matches!(outcome, StepOutcome::Progress) && xen.now_ns() - t0 < QUIESCE_NS {
        *outcome = m.balloon.step(m.mm, &mut hv, xen.now_ns());
    }
    if matches!(outcome, StepOutcome::Progress) {
        log::warn!("suspend: the balloon is still working; suspending anyway");
    }
    m.suspend.handed_back_pages = ram_before.saturating_sub(m.mm.census().ram_pages());
    if let Err(e) = xen.prepare_suspend() {
        log::warn!("suspend: cannot set HVM_PARAM_CALLBACK_IRQ ({e:?}): a cancelled suspend will look like a resume");
    }
    let census = m.mm.census();
    log::info!(
        "suspend: {} RAM pages, {} KiB ballooned out; SHUTDOWN_suspend",
        census.ram_pages(),
        m.balloon.status(m.mm).ballooned_kib
    );
    m.suspend.suspends += 1;
    // Every AP parks (down in Xen's view: no context in the image); they come back below.
    let parked = crate::smp::park_all(xen);
    let t1 = xen.now_ns();
    m.suspend.last_quiesce_us = (t1 - t0) / 1000;
    // Nothing may log between the hypercall's return and `resumed_in_new_domain`: in a
    // new domain the log's clock reads shared_info, which is not mapped yet.
    match xen.suspend() {
        Ok(SuspendOutcome::Resumed) => {
            if let Err(e) = xen.resumed_in_new_domain() {
                panic!("resumed in a new domain, but shared_info cannot be mapped: {e:?}");
            }
            let t2 = xen.now_ns();
            m.suspend.resumes += 1;
            release_again_if_populated(xen, m);
            reconnect(xen, xs, m);
            m.suspend.last_resume_us = (xen.now_ns() - t2) / 1000;
            log::info!(
                "resume: in a new domain; connections restored in {} us",
                m.suspend.last_resume_us
            );
        }
        Ok(SuspendOutcome::Cancelled) => {
            m.suspend.cancelled += 1;
            log::info!("resume: suspend cancelled (checkpoint or failed save); carrying on");
        }
        Err(e) => {
            m.suspend.refused += 1;
            log::error!("suspend: SCHEDOP_shutdown(suspend) failed ({e:?}); carrying on");
        }
    }
    crate::smp::unpark(xen, parked);
    // Take the handed-back memory again; and a resume without a new target must still
    // re-check it (the restore set Xen's limit).
    m.balloon.set_handback(0);
    *outcome = StepOutcome::Progress;
    m.hotplug.new_target();
    publish_all(xs, m);
}

/// In a new domain, Xen must own exactly what the model says is RAM (+ the constant
/// extra). More means frames we had released arrived populated (a frame handed back
/// during the last round of a live migration may have been sent in an earlier round):
/// release the ballooned-out extents again before anything is populated.
fn release_again_if_populated(xen: &Xen, m: &mut Memory<'_>) {
    let expected = m.mm.census().ram_pages() + m.xen_extra;
    let mut hv = *xen;
    match hv.current_reservation() {
        Ok(tot) if tot > expected => {
            let n = m.balloon.release_ballooned_again(&mut hv);
            log::warn!(
                "resume: Xen owns {tot} pages, the model {expected}: frames released before the suspend arrived populated; {n} pages released again"
            );
            m.suspend.released_again_pages = n;
        }
        Ok(_) => m.suspend.released_again_pages = 0,
        Err(e) => log::warn!("resume: XENMEM_current_reservation failed ({e:?})"),
    }
}

/// After resuming in a new domain: console and xenstore (same pages, zeroed; new ports),
/// every watch, the features, `data/` (the new domain's xenstore has none of it), and
/// grants (our table frames again; everything granted or mapped in the old domain is
/// gone).
fn reconnect(xen: &Xen, xs: &mut Xenstore, m: &mut Memory<'_>) {
    match xen.hvm_param(param::CONSOLE_EVTCHN) {
        Ok(port) => klog::console_resumed(port as u32),
        Err(e) => log::warn!("resume: HVM_PARAM_CONSOLE_EVTCHN unreadable ({e:?})"),
    }
    match xen.hvm_param(param::STORE_EVTCHN) {
        Ok(port) => {
            for (path, e) in xs.resume(port as u32) {
                log::error!("resume: cannot watch {path} again: {e:?}");
            }
            log::info!(
                "resume: xenstore on event channel {port}, {} watches",
                xs.watches().len()
            );
        }
        Err(e) => log::error!("resume: HVM_PARAM_STORE_EVTCHN unreadable ({e:?})"),
    }
    let domid = read_u64(xs, "domid");
    announce_features(xs);
    if let Some(g) = m.grants.as_mut() {
        let me = domid.and_then(|d| u16::try_from(d).ok()).unwrap_or(0);
        g.resumed(xen, m.mm, me);
    }
    if let Err(e) = xs.write("data/ready", b"1") {
        log::warn!("cannot write data/ready: {e:?}");
    }
    log::info!(
        "ready domid={} (resumed)",
        domid.map_or("?".into(), |d| format!("{d}"))
    );
}

/// `data/smp`: vCPUs online and the most the domain may have.
fn publish_smp(xs: &mut Xenstore) {
    let fields = [
        ("online", format!("{}", crate::smp::online())),
        ("max", format!("{}", crate::smp::max_vcpus())),
    ];
    publish_fields(xs, "data/smp", &fields);
}

/// Writes every `data/` directory we own.
fn publish_all(xs: &mut Xenstore, m: &mut Memory<'_>) {
    publish_smp(xs);
    publish_balloon(xs, &m.balloon, Some(m.mm));
    let hotplug: Vec<_> = m.hotplug.status(m.mm).fields().collect();
    publish_fields(xs, "data/hotplug", &hotplug);
    publish_fields(xs, "data/suspend", &m.suspend.fields());
    if let Some(f) = m.grants.as_mut().and_then(|g| g.changed_fields()) {
        publish_fields(xs, "data/grant", &f);
    }
    publish_census(xs, m.mm, m.xen_extra);
}

pub fn shutdown(xen: &Xen, reason: ShutdownReason) -> ! {
    let name = match reason {
        ShutdownReason::Poweroff => "poweroff",
        ShutdownReason::Reboot => "reboot",
        ShutdownReason::Suspend => "suspend",
        ShutdownReason::Crash => "crash",
        ShutdownReason::Watchdog => "watchdog",
    };
    log::info!("shutdown: {name}");
    let e = xen.shutdown(reason);
    panic!("SCHEDOP_shutdown({name}) returned: {e:?}")
}

/// Publishes the memory census under `data/mm/`.
///
/// `data/mm/expected-tot-pages` is what Xen's `tot_pages` for the domain must be: our RAM
/// plus `xen_extra` ([`crate::kmem::xen_extra_pages`]).
pub fn publish_census(xs: &mut Xenstore, mm: &Model, xen_extra: u64) {
    let census = mm.census();
    let mut fields: Vec<(String, String)> = census
        .fields()
        .map(|(k, v)| (format!("{k}"), format!("{v}")))
        .collect();
    fields.push((
        "expected-tot-pages".into(),
        format!("{}", census.ram_pages() + xen_extra),
    ));
    publish_fields(xs, "data/mm", &fields);
}
