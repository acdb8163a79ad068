//! Built-in self-tests (`selftest` on the command line), run against the real Xen.
//!
//! Each test returns `Ok` or a reason; the verdict is `SUCCESS` when all pass, `FAILURE`
//! otherwise, printed in XTF's `Test result:` convention by the caller.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use guest::mm::{PageState, Pfn};
use guest::xen::xenstore::{XsError, XsOps};
use xen_bindings::hypercall;
use xen_bindings::traits::{Clock, EventChannels, MemoryReservation, Sched};
use xen_bindings::Errno;

use crate::arch::idt::BREAKPOINTS;
use crate::boot::BootInfo;
use crate::hv::{Xen, Xenstore};
use crate::kmem::Model;

type Outcome = Result<(), String>;
/// A named self-test; it gets the xenstore connection (most ignore it).
type Test<'a> = (&'static str, &'a mut dyn FnMut(&mut Xenstore) -> Outcome);

fn check(cond: bool, what: impl FnOnce() -> String) -> Outcome {
    if cond {
        Ok(())
    } else {
        Err(what())
    }
}

pub fn run(xen: &Xen, xs: &mut Xenstore, info: &BootInfo) -> &'static str {
    let (mut x, mut x2) = (*xen, *xen);
    let mm = crate::kmem::MM
        .get()
        .expect("memory model built before the self-tests");
    let tests: [Test<'_>; 15] = [
        ("idt-int3-on-ist", &mut |_| int3()),
        ("idt-keeps-sse-state", &mut |_| int3_keeps_sse()),
        ("heap", &mut |_| heap()),
        ("memmap", &mut |_| {
            check(info.ram_bytes() > 0, || {
                "no RAM in the start_info memmap".into()
            })
        }),
        ("mm-recount", &mut |_| mm_recount(mm)),
        ("mm-pfn-api", &mut |_| mm_pfn_api(mm, info)),
        ("balloon-roundtrip", &mut |_| balloon_roundtrip(mm, &mut x2)),
        ("clock-and-poll-timeout", &mut |_| clock(xen)),
        ("runstate-area", &mut |_| runstate_area(xen)),
        ("hypercall-errors", &mut |_| hypercall_errors()),
        ("reservation", &mut |_| reservation(&mut x)),
        ("event-channel", &mut |_| event_channel(xen)),
        ("xenstore-rw", &mut xenstore_rw),
        ("xenstore-transaction", &mut xenstore_tx),
        ("xenstore-watch", &mut xenstore_watch),
    ];
    let mut failed = 0;
    for (name, t) in tests {
        match t(xs) {
            Ok(()) => log::info!("selftest {name}: ok"),
            Err(why) => {
                failed += 1;
                log::error!("selftest {name}: FAILED: {why}");
            }
        }
    }
    let _ = xs.rm("data/selftest");
    if failed == 0 {
        "SUCCESS"
    } else {
        "FAILURE"
    }
}

fn int3() -> Outcome {
    // Relaxed: same vCPU; the int3 handler's increment is program-ordered before us.
    let before = BREAKPOINTS.load(Ordering::Relaxed);
    // SAFETY: int3 traps to our #BP handler (on IST1), which counts and returns.
    unsafe { core::arch::asm!("int3") };
    let after = BREAKPOINTS.load(Ordering::Relaxed);
    check(after == before + 1, || {
        format!("breakpoint count {before} -> {after}")
    })
}

/// An interrupted function's XMM registers survive a handler that uses them all (the #BP
/// handler zeroes every one, as any Rust handler may use them): the entry code saves and
/// restores the SSE state around the handler.
fn int3_keeps_sse() -> Outcome {
    let want: [[u64; 2]; 16] =
        core::array::from_fn(|i| [0x0123_4567_89ab_cdef ^ i as u64, 0xfedc_ba98_7654_3210 << i]);
    let mut got = [[0u64; 2]; 16];
    // SAFETY: reads 256 bytes from `want` and writes 256 to `got` (both 16 x 16 bytes);
    // the XMM registers are declared clobbered; int3 returns (see `int3`).
    unsafe {
        core::arch::asm!(
            "movdqu xmm0, [{p} + 0]",
            "movdqu xmm1, [{p} + 16]",
            "movdqu xmm2, [{p} + 32]",
            "movdqu xmm3, [{p} + 48]",
            "movdqu xmm4, [{p} + 64]",
            "movdqu xmm5, [{p} + 80]",
            "movdqu xmm6, [{p} + 96]",
            "movdqu xmm7, [{p} + 112]",
            "movdqu xmm8, [{p} + 128]",
            "movdqu xmm9, [{p} + 144]",
            "movdqu xmm10, [{p} + 160]",
            "movdqu xmm11, [{p} + 176]",
            "movdqu xmm12, [{p} + 192]",
            "movdqu xmm13, [{p} + 208]",
            "movdqu xmm14, [{p} + 224]",
            "movdqu xmm15, [{p} + 240]",
            "int3",
            "movdqu [{o} + 0], xmm0",
            "movdqu [{o} + 16], xmm1",
            "movdqu [{o} + 32], xmm2",
            "movdqu [{o} + 48], xmm3",
            "movdqu [{o} + 64], xmm4",
            "movdqu [{o} + 80], xmm5",
            "movdqu [{o} + 96], xmm6",
            "movdqu [{o} + 112], xmm7",
            "movdqu [{o} + 128], xmm8",
            "movdqu [{o} + 144], xmm9",
            "movdqu [{o} + 160], xmm10",
            "movdqu [{o} + 176], xmm11",
            "movdqu [{o} + 192], xmm12",
            "movdqu [{o} + 208], xmm13",
            "movdqu [{o} + 224], xmm14",
            "movdqu [{o} + 240], xmm15",
            p = in(reg) want.as_ptr(),
            o = in(reg) got.as_mut_ptr(),
            clobber_abi("C"),
        )
    };
    let bad: Vec<usize> = (0..16).filter(|&i| got[i] != want[i]).collect();
    check(bad.is_empty(), || {
        format!("XMM registers {bad:?} changed across an interrupt")
    })
}

fn heap() -> Outcome {
    let n = 1 << 20;
    let mut v: Vec<u64> = vec![0; n / 8];
    for (i, w) in v.iter_mut().enumerate() {
        *w = i as u64 * 0x9e37_79b9;
    }
    let bad = v
        .iter()
        .enumerate()
        .filter(|(i, w)| **w != *i as u64 * 0x9e37_79b9)
        .count();
    check(bad == 0, || format!("{bad} words corrupted"))
}

/// The running counters agree with a full walk of every present subsection.
fn mm_recount(mm: &Model) -> Outcome {
    let walked = mm.recount().map_err(|e| format!("recount: {e}"))?;
    let census = mm.census();
    check(walked == census, || {
        format!("walk {walked:?} vs counters {census:?}")
    })
}

/// The seed's API on the booted memmap: RAM is online, holes and absent memory are not,
/// nothing is a device page, and a frame allocated from the model is Allocated.
fn mm_pfn_api(mm: &Model, info: &BootInfo) -> Outcome {
    let g = mm.read();
    let ram_end = info
        .memmap()
        .iter()
        .filter(|e| e.type_ == xen_bindings::abi::start_info::memmap_type::RAM)
        .map(|e| e.addr + e.size)
        .max()
        .unwrap_or(0);
    let last = Pfn(ram_end / 4096 - 1);
    check(g.pfn_to_online_page(last).is_some(), || {
        format!("last RAM pfn {last:?} not online")
    })?;
    check(g.pfn_to_device_page(last).is_none(), || {
        format!("RAM pfn {last:?} is a device page")
    })?;
    // Far above anything: no section, so neither valid nor active.
    let absent = Pfn(1 << 33);
    check(!mm.pfn_valid(absent) && !mm.pfn_active(absent), || {
        "pfn 2^33 valid/active".into()
    })?;
    check(g.pfn_to_online_page(absent).is_none(), || {
        "pfn 2^33 online".into()
    })?;
    drop(g);
    let pfn = mm
        .alloc_frames(0)
        .map_err(|e| format!("alloc_frames(0): {e}"))?;
    let state = mm.read().pfn_to_online_page(pfn).map(|p| p.state());
    mm.free_frames(pfn, 0)
        .map_err(|e| format!("free_frames: {e}"))?;
    check(state == Some(PageState::Allocated), || {
        format!("allocated frame is {state:?}")
    })
}

/// One 2 MiB subsection out to Xen and back: tot_pages follows, the census follows, and
/// the frame comes back usable (we write and read it after repopulating).
fn balloon_roundtrip(mm: &Model, xen: &mut Xen) -> Outcome {
    let tot0 = xen
        .current_reservation()
        .map_err(|e| format!("current: {e}"))?;
    let ram0 = mm.census().ram_pages();
    let pfn = mm
        .balloon_out_subsection()
        .map_err(|e| format!("balloon_out_subsection: {e}"))?;
    let done = xen
        .decrease_reservation(&[pfn.0], 9)
        .map_err(|e| format!("decrease: {e}"))?;
    check(done == 1, || {
        format!("decrease_reservation did {done} of 1 order-9 extents")
    })?;
    let tot1 = xen
        .current_reservation()
        .map_err(|e| format!("current: {e}"))?;
    let ram1 = mm.census().ram_pages();
    let done = xen
        .populate_physmap(&[pfn.0], 9)
        .map_err(|e| format!("populate: {e}"))?;
    check(done == 1, || {
        format!("populate_physmap did {done} of 1 order-9 extents")
    })?;
    mm.populate(pfn, 9)
        .map_err(|e| format!("model populate: {e}"))?;
    check(tot0 - tot1 == 512 && ram0 - ram1 == 512, || {
        format!("tot_pages {tot0} -> {tot1}, census RAM {ram0} -> {ram1}: want both -512")
    })?;
    let tot2 = xen
        .current_reservation()
        .map_err(|e| format!("current: {e}"))?;
    check(tot2 == tot0 && mm.census().ram_pages() == ram0, || {
        format!("after repopulate tot_pages {tot2}, want {tot0}")
    })?;
    // The repopulated frame is ours again: take it, write and read it, give it back.
    let p = mm
        .alloc_frames(9)
        .map_err(|e| format!("alloc_frames(9): {e}"))?;
    let words = p.addr() as *mut u64;
    // SAFETY: an order-9 block just allocated to us: backed by Xen and identity-mapped.
    let ok = unsafe {
        for i in 0..512 * 512 {
            words.add(i).write_volatile(i as u64 ^ 0x5a5a);
        }
        (0..512 * 512).all(|i| words.add(i).read_volatile() == i as u64 ^ 0x5a5a)
    };
    mm.free_frames(p, 9)
        .map_err(|e| format!("free_frames: {e}"))?;
    check(ok, || {
        "repopulated memory did not keep what was written".into()
    })
}

fn clock(xen: &Xen) -> Outcome {
    let t0 = xen.now_ns();
    let t1 = xen.now_ns();
    check(t1 >= t0, || format!("clock went back: {t0} -> {t1}"))?;
    // SCHEDOP_poll with no ports and a deadline 20 ms ahead must block until then.
    xen.poll(&[], t0 + 20_000_000)
        .map_err(|e| format!("poll: {e}"))?;
    let dt = xen.now_ns() - t0;
    check((20_000_000..10_000_000_000).contains(&dt), || {
        format!("poll slept {dt} ns, asked 20 ms")
    })
}

/// CPU time from the registered runstate area agrees with Xen's hypercall answer, and
/// time spent blocked is not counted as running.
fn runstate_area(xen: &Xen) -> Outcome {
    use xen_bindings::abi::vcpu::RUNSTATE_RUNNING;
    let me = crate::arch::percpu::this();
    check(!me.runstate.load(Ordering::Relaxed).is_null(), || {
        "no runstate area registered".into()
    })?;
    // Area, hypercall, area: Xen's answer lies between ours (both are Xen system time;
    // 100 µs for the pvclock's distance from Xen's NOW()).
    let slack = 100_000;
    let a = crate::hv::running_ns();
    let h = xen
        .runstate(me.id)
        .map_err(|e| format!("VCPUOP_get_runstate_info: {e}"))?[RUNSTATE_RUNNING];
    let b = crate::hv::running_ns();
    check(a <= h + slack && h <= b + slack && b >= a, || {
        format!("running ns: area {a}, hypercall {h}, area {b}: not in order")
    })?;
    // Blocked for 20 ms: the area's clock must not count it (a reader that extrapolated
    // from a stale entry stamp would).
    let t0 = xen.now_ns();
    let c0 = crate::hv::running_ns();
    xen.poll(&[], t0 + 20_000_000)
        .map_err(|e| format!("poll: {e}"))?;
    let ran = crate::hv::running_ns() - c0;
    let wall = xen.now_ns() - t0;
    log::info!("runstate-area: {ran} ns running of {wall} ns around a 20 ms block");
    check(ran < wall / 2, || {
        format!("blocked 20 ms but the area says {ran} ns of {wall} ns were running")
    })
}

fn hypercall_errors() -> Outcome {
    // SAFETY: an unknown memory_op subcommand is rejected by Xen without side effects.
    let r = unsafe { hypercall::memory_op(0xdead, core::ptr::null_mut()) };
    check(r == Err(Errno::ENOSYS), || {
        format!("memory_op(0xdead) = {r:?}, want ENOSYS")
    })?;
    // SAFETY: hypercall 60 does not exist; Xen answers -ENOSYS.
    let r = Errno::check(unsafe { hypercall::hypercall(60, 0, 0, 0, 0, 0) });
    check(r == Err(Errno::ENOSYS), || {
        format!("hypercall 60 = {r:?}, want ENOSYS")
    })
}

fn reservation(xen: &mut Xen) -> Outcome {
    let cur = xen
        .current_reservation()
        .map_err(|e| format!("current: {e}"))?;
    let max = xen
        .maximum_reservation()
        .map_err(|e| format!("maximum: {e}"))?;
    log::info!("reservation: tot_pages {cur}, max_pages {max}");
    check(cur > 0 && cur <= max, || {
        format!("tot_pages {cur} vs max_pages {max}")
    })
}

fn event_channel(xen: &Xen) -> Outcome {
    // An unbound port for dom0, closed again: the allocator and close both work.
    let port = xen
        .alloc_unbound(0)
        .map_err(|e| format!("alloc_unbound: {e}"))?;
    xen.close(port).map_err(|e| format!("close({port}): {e}"))?;
    let r = xen.close(port);
    check(r.is_err(), || {
        format!("closing port {port} twice succeeded")
    })
}

fn xenstore_rw(xs: &mut Xenstore) -> Outcome {
    let e = |what: &str| {
        let w = String::from(what);
        move |err| format!("{w}: {err:?}")
    };
    xs.write("data/selftest/a", b"hello").map_err(e("write"))?;
    let v = xs.read("data/selftest/a").map_err(e("read"))?;
    check(v == b"hello", || format!("read back {v:?}"))?;
    let dir = xs.directory("data/selftest").map_err(e("directory"))?;
    check(dir.iter().any(|d| d == "a"), || {
        format!("directory {dir:?}")
    })?;
    let perms = xs.get_perms("data/selftest/a").map_err(e("get_perms"))?;
    let domid: u16 = xs
        .read_string("domid")
        .map_err(e("domid"))?
        .parse()
        .map_err(|_| String::from("domid"))?;
    check(perms.first().is_some_and(|p| p.domid == domid), || {
        format!("owner of our node: {perms:?}")
    })?;
    xs.mkdir("data/selftest/d").map_err(e("mkdir"))?;
    xs.rm("data/selftest/a").map_err(e("rm"))?;
    match xs.read("data/selftest/a") {
        Err(err) if err.is_enoent() => Ok(()),
        other => Err(format!("read after rm: {other:?}")),
    }?;
    Ok(())
}

fn xenstore_tx(xs: &mut Xenstore) -> Outcome {
    let v = xs
        .transaction(|tx| {
            tx.write("data/selftest/tx", b"42")?;
            tx.read("data/selftest/tx")
        })
        .map_err(|e| format!("transaction: {e:?}"))?;
    check(v == b"42", || format!("read in transaction {v:?}"))?;
    let after = xs
        .read("data/selftest/tx")
        .map_err(|e| format!("read after commit: {e:?}"))?;
    check(after == b"42", || format!("after commit {after:?}"))
}

fn xenstore_watch(xs: &mut Xenstore) -> Outcome {
    let e = |what: &'static str| move |err| format!("{what}: {err:?}");
    xs.watch("data/selftest/w", "selftest-w")
        .map_err(e("watch"))?;
    // xenstored fires once at registration.
    let first = next_event_for(xs, "selftest-w").map_err(e("initial event"))?;
    check(first.is_some(), || "no initial event".into())?;
    xs.write("data/selftest/w/x", b"1").map_err(e("write"))?;
    let ev = next_event_for(xs, "selftest-w").map_err(e("event"))?;
    check(
        ev.as_ref()
            .is_some_and(|p| p.ends_with("data/selftest/w/x")),
        || format!("event {ev:?}"),
    )?;
    xs.unwatch("data/selftest/w", "selftest-w")
        .map_err(e("unwatch"))
}

/// The path of the next event for `token` within 2 s, skipping other watches' events
/// (e.g. the initial `control/shutdown` one).
fn next_event_for(xs: &mut Xenstore, token: &str) -> Result<Option<String>, XsError> {
    loop {
        match xs.wait_watch_event(2_000_000_000)? {
            Some(ev) if ev.token == token => return Ok(Some(ev.path)),
            Some(ev) => log::debug!("selftest: skipping event {} ({})", ev.path, ev.token),
            None => return Ok(None),
        }
    }
}
