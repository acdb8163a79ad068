//! After Xen is found: console, xenstore, ready, and the mode the command line asked for.

use alloc::format;
use core::ptr::NonNull;

use guest::cmdline::{Cmdline, Mode};
use guest::xen::balloon::driver::{Balloon, StepOutcome};
use guest::xen::control::{parse_shutdown, ShutdownRequest};
use guest::xen::xenstore::{XenstoreClient, XsError, XsOps};
use xen_bindings::abi::hvm::param;
use xen_bindings::traits::{Clock, Sched, ShutdownReason};

use crate::boot::BootInfo;
use crate::hv::Xen;
use crate::kmem::Model;
use crate::{klog, selftest};

pub type Xenstore = XenstoreClient<Xen>;

/// Watch token for `control/shutdown`.
const TOKEN_SHUTDOWN: &str = "control/shutdown";

pub fn run(xen: Xen, info: &BootInfo, cmdline: &Cmdline, mm: &Model, balloon: &mut Balloon) -> ! {
    attach_console(&xen);
    let mut xs = match connect_xenstore(&xen) {
        Ok(xs) => xs,
        Err(e) => panic!("cannot connect to xenstore: {e:?}"),
    };
    let domid = read_u64(&mut xs, "domid");
    let target = read_u64(&mut xs, "memory/target");
    announce_features(&mut xs);
    if let Err(e) = xs.watch("control/shutdown", TOKEN_SHUTDOWN) {
        log::error!("cannot watch control/shutdown ({e:?}): xl shutdown will not work");
    }
    if let Err(e) = xs.write("data/ready", b"1") {
        log::warn!("cannot write data/ready: {e:?}");
    }
    log::info!(
        "ready domid={} target_kib={}",
        domid.map_or("?".into(), |d| format!("{d}")),
        target.map_or("?".into(), |t| format!("{t}"))
    );
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
        Mode::Normal => event_loop(&xen, &mut xs, mm, balloon, extra),
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
        (a, b) => log::warn!("no PV console ({a:?}, {b:?}): logging to port 0xE9 only"),
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
    match xs.read_string(path).map(|s| s.parse::<u64>()) {
        Ok(Ok(v)) => Some(v),
        Ok(Err(_)) => {
            log::warn!("xenstore {path}: not a number");
            None
        }
        Err(e) => {
            log::warn!("xenstore {path}: {e:?}");
            None
        }
    }
}

/// Tells the toolstack which `control/shutdown` requests we honour, and that we follow
/// `memory/target` (libxl reads `feature-balloon`).
fn announce_features(xs: &mut Xenstore) {
    for key in [
        "control/feature-poweroff",
        "control/feature-reboot",
        "control/feature-balloon",
    ] {
        if let Err(e) = xs.write(key, b"1") {
            log::warn!("cannot write {key}: {e:?}");
        }
    }
}

/// Watch token for `memory/target`.
const TOKEN_TARGET: &str = "memory/target";

/// Longest the loop sleeps with nothing to do (it also wakes on every watch event).
const IDLE_NS: u64 = 1_000_000_000;

/// Serves the control and balloon watches until the toolstack asks us to go.
fn event_loop(
    xen: &Xen,
    xs: &mut Xenstore,
    mm: &Model,
    balloon: &mut Balloon,
    xen_extra: u64,
) -> ! {
    let mut hv = *xen;
    if let Err(e) = xs.watch("memory/target", TOKEN_TARGET) {
        log::error!("cannot watch memory/target ({e:?}): xl mem-set will not work");
    }
    let mut outcome = StepOutcome::Done;
    loop {
        // While the balloon makes progress only peek at xenstore; otherwise sleep until
        // its backoff ends or something happens.
        let now = xen.now_ns();
        let timeout = match outcome {
            StepOutcome::Progress => 0,
            StepOutcome::BackingOff { until_ns } => until_ns.saturating_sub(now).min(IDLE_NS),
            _ => IDLE_NS,
        };
        match xs.wait_watch_event(timeout) {
            Ok(Some(ev)) if ev.token == TOKEN_SHUTDOWN => handle_shutdown(xen, xs),
            Ok(Some(ev)) if ev.token == TOKEN_TARGET => {
                if new_target(xen, xs, balloon) {
                    outcome = StepOutcome::Progress;
                }
            }
            Ok(Some(ev)) => log::debug!("watch event {} ({}) not for us", ev.path, ev.token),
            Ok(None) => {}
            Err(XsError::Disconnected) => {
                // Nothing more can reach us; stay alive for `xl destroy` without spinning.
                log::error!("xenstore connection is broken; idling");
                let _ = xen.poll(&[], 0);
            }
            Err(e) => log::warn!("xenstore: {e:?}"),
        }
        let was_working = matches!(outcome, StepOutcome::Progress);
        let due = match outcome {
            StepOutcome::BackingOff { until_ns } => xen.now_ns() >= until_ns,
            _ => true,
        };
        if due {
            outcome = balloon.step(mm, &mut hv, xen.now_ns());
        }
        if was_working && !matches!(outcome, StepOutcome::Progress) {
            settled(xs, mm, balloon, xen_extra, outcome);
        }
    }
}

/// Reads `memory/target` (and `memory/static-max`, which `xl mem-max` may have raised) and
/// hands the raw value to the balloon, which parses it strictly. True if it took it.
fn new_target(xen: &Xen, xs: &mut Xenstore, balloon: &mut Balloon) -> bool {
    let raw = match xs.read("memory/target") {
        Ok(v) => v,
        Err(e) => {
            log::warn!("cannot read memory/target: {e:?}");
            return false;
        }
    };
    let static_max = read_u64(xs, "memory/static-max").unwrap_or(u64::MAX);
    match balloon.set_target(&raw, static_max, xen.now_ns()) {
        Ok(_) => {
            let _ = xs.write("data/balloon/state", b"working");
            true
        }
        Err(_) => {
            // Rejected and logged by the balloon; the state it keeps is unchanged.
            publish_balloon(xs, balloon, None);
            false
        }
    }
}

/// The balloon stopped working (target reached, clamped, backing off, ...): publish the
/// numbers. (`step` has already checked the accounting against Xen; a mismatch shows in
/// the status.)
fn settled(xs: &mut Xenstore, mm: &Model, balloon: &Balloon, xen_extra: u64, outcome: StepOutcome) {
    let status = balloon.status(mm);
    match outcome {
        StepOutcome::Done => log::info!(
            "balloon: target {} KiB reached in {} ms ({} KiB ballooned out)",
            status.effective_target_kib.unwrap_or(0),
            status.reached_ms.unwrap_or(0),
            status.ballooned_kib
        ),
        other => log::info!("balloon: {} ({other:?})", status.state),
    }
    publish_balloon(xs, balloon, Some(mm));
    publish_census(xs, mm, xen_extra);
}

/// Publishes the balloon's status under `data/balloon/` in one transaction.
fn publish_balloon(xs: &mut Xenstore, balloon: &Balloon, mm: Option<&Model>) {
    let Some(mm) = mm.or_else(|| crate::kmem::MM.get()) else {
        return;
    };
    let status = balloon.status(mm);
    let floor = format!("{}", balloon.config().floor_kib);
    let r = xs.transaction(|tx| {
        for (key, value) in status.fields() {
            tx.write(&format!("data/balloon/{key}"), value.as_bytes())?;
        }
        tx.write("data/balloon/floor-kib", floor.as_bytes())
    });
    if let Err(e) = r {
        log::warn!("cannot publish the balloon status under data/balloon: {e:?}");
    }
}

fn handle_shutdown(xen: &Xen, xs: &mut Xenstore) {
    let value = match xs.read("control/shutdown") {
        Ok(v) => v,
        Err(e) if e.is_enoent() => return,
        Err(e) => {
            log::warn!("cannot read control/shutdown: {e:?}");
            return;
        }
    };
    match parse_shutdown(&value) {
        ShutdownRequest::None => {}
        ShutdownRequest::Unknown => {
            log::warn!(
                "control/shutdown: ignoring unknown request {:?}",
                core::str::from_utf8(&value).unwrap_or("<binary>")
            )
        }
        ShutdownRequest::Shutdown(reason) => {
            // Acknowledge like Linux does, so the toolstack sees the request was taken.
            if let Err(e) = xs.write("control/shutdown", b"") {
                log::warn!("cannot acknowledge control/shutdown: {e:?}");
            }
            shutdown(xen, reason)
        }
    }
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

/// Publishes the memory census under `data/mm/` in one transaction, so a reader never sees
/// numbers from two different moments.
///
/// `data/mm/expected-tot-pages` is what Xen's `tot_pages` for the domain must be: our RAM
/// plus `xen_extra` ([`crate::kmem::xen_extra_pages`]).
pub fn publish_census(xs: &mut Xenstore, mm: &Model, xen_extra: u64) {
    let census = mm.census();
    let expected = census.ram_pages() + xen_extra;
    let r = xs.transaction(|tx| {
        for (key, value) in census.fields() {
            tx.write(&format!("data/mm/{key}"), format!("{value}").as_bytes())?;
        }
        tx.write(
            "data/mm/expected-tot-pages",
            format!("{expected}").as_bytes(),
        )
    });
    if let Err(e) = r {
        log::warn!("cannot publish the census under data/mm: {e:?}");
    }
}
