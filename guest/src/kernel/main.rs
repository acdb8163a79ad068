//! The guest kernel: wires arch -> memory -> Xen drivers -> event loop. Everything here
//! is glue around the host-tested library (`guest::mm`, `guest::xen`): the asm, the
//! hypercalls and the one loop that drives the drivers.
//!
//! ```text
//!  main.rs ── boot.rs      copy hvm_start_info (cmdline, memmap) out of low RAM
//!     │    ── arch/        entry stub, per-vCPU GDT/TSS/IST, IDT, LAPIC, GS per-CPU
//!     │                    block, CPU ops, mem functions, page tables
//!     │    ── hv.rs        the real Xen behind xen_bindings::traits (hypercall page,
//!     │                    shared_info, event channels, waiting, clock)
//!     │    ── irq.rs       upcall vector, VIRQ_TIMER, IPIs; smp.rs (APs, vcpu-set)
//!     │    ── kmem.rs      the memory model from start_info; kheap.rs (heap in 2 MiB
//!     │                    frames from it); klog.rs (log → port 0xE9 + PV console)
//!     └─▶ run.rs           console, xenstore, ready, then the event loop:
//!           ├─ balloon + hotplug steps   (guest::xen::{balloon, hotplug})
//!           ├─ grants.rs                 grant table + the two-guest handshake
//!           ├─ walk.rs                   the saveable-page walker (`walk`)
//!           ├─ race.rs                   memmap walkers on the APs (`race`)
//!           └─ selftest.rs               the in-guest self-tests (`selftest`)
//! ```
//!
//! Contexts (see `smp.rs`, `irq.rs`): vCPU 0 runs every driver — control, xenstore,
//! console, balloon, hotplug, grants, suspend — in thread context from the event loop.
//! APs (`vcpus=` > 1) run only their work item (the race walkers, `race.rs`) and park
//! when asked. Interrupts are enabled only inside the idle halt (`Xen::wait`: `sti; hlt`
//! until an event channel, the vCPU's VIRQ_TIMER single-shot or an IPI fires); the upcall
//! handler only clears pending bits and records what woke us, so no walker, lock or
//! allocation ever runs in interrupt context and the grace period has no interrupt
//! readers to cover. Locks: the model's own (see `guest::mm`), the heap's, the log's —
//! all taken in thread context only.
//! Dependencies point down the picture: `arch` names nothing else of the kernel.
//!
//! Boot order: entry stub (long mode, SSE, low 4 GiB identity-mapped) → log on port 0xE9,
//! early heap → copy what start_info points at (it sits in low RAM) → command line →
//! GDT/IDT → Xen (hypercall page, shared_info, clock) → how much RAM may be touched
//! (populate-on-demand) → the memory model → the PoD excess back to Xen → page tables for
//! RAM above 4 GiB → PV console → xenstore → ready → the mode the command line asked for
//! (normally: the event loop serving control, balloon and hotplug).
#![no_std]
#![no_main]

extern crate alloc;

mod arch;
mod boot;
mod boottime;
mod grants;
mod hv;
mod irq;
mod kheap;
mod klog;
mod kmem;
mod race;
mod run;
mod selftest;
mod smp;
mod walk;

use core::panic::PanicInfo;
use core::sync::atomic::{AtomicBool, Ordering};

use guest::xen::balloon::driver::{Balloon, BalloonConfig};
use xen_bindings::traits::{Clock, MemoryReservation, Sched, ShutdownReason};

use arch::cpu;

#[global_allocator]
static HEAP: kheap::KernelHeap = kheap::KernelHeap::new();

/// isa-debug-exit: QEMU exits with status `(value << 1) | 1` (plain-QEMU boot tests only).
const QEMU_EXIT_PORT: u16 = 0xf4;
/// Exit value for "booted, found no Xen, reported it" under plain QEMU (status 33).
const QEMU_EXIT_NO_XEN: u8 = 0x10;
/// Exit value after a panic under plain QEMU (status 35).
const QEMU_EXIT_PANIC: u8 = 0x11;

#[no_mangle]
extern "C" fn kernel_main(start_info_paddr: u32) -> ! {
    boottime::start();
    arch::percpu::install_boot();
    klog::init(log::LevelFilter::Info);
    HEAP.init_early();
    log::info!(
        target: klog::DEBUGCON,
        "xenguest-rs {} booting (PVH, start_info at {:#x})",
        env!("CARGO_PKG_VERSION"),
        start_info_paddr
    );
    // SAFETY: Xen / QEMU pass the physical address of hvm_start_info in %ebx; the boot
    // page tables identity-map it.
    let info = match unsafe { boot::BootInfo::capture(start_info_paddr as u64) } {
        Ok(i) => i,
        Err(e) => panic!("bad hvm_start_info: {e}"),
    };
    let cmdline = guest::cmdline::Cmdline::parse(info.cmdline());
    log::set_max_level(cmdline.loglevel.to_filter());
    if cmdline.debugcon_all {
        klog::debugcon_all();
    }
    log::info!("command line: \"{}\"", info.cmdline());
    for (word, why) in &cmdline.rejected {
        log::warn!("command line: ignoring \"{word}\": {why}");
    }
    arch::idt::init();
    info.log_memmap();
    boottime::mark("early");
    let xen = match hv::Xen::init() {
        None => None,
        Some(Err(e)) => panic!("Xen found but shared_info could not be mapped: {e}"),
        Some(Ok(xen)) => Some(*hv::XEN.call_once(|| xen)),
    };
    if xen.is_some() {
        guest::mm::set_grace_hooks(&GRACE_HOOKS);
        if let Err(e) = irq::setup_this_cpu() {
            panic!("cannot set up event delivery by interrupt on vCPU 0: {e}");
        }
    }
    boottime::mark("xen");
    // Under populate-on-demand only Xen's tot_pages may be touched: the memory model
    // must know before it builds anything.
    let touchable = xen.and_then(|x| match x.current_reservation() {
        Ok(tot) => kmem::touchable_ram_pages(&info, tot),
        Err(e) => panic!("XENMEM_current_reservation failed: {e}"),
    });
    boottime::mark("reservation");
    if let Some(t) = touchable {
        log::info!(
            "populate-on-demand: {} of {} RAM pages may be touched",
            t,
            info.ram_bytes() >> 12
        );
    }
    let mm = kmem::init(&info, touchable);
    boottime::mark("memmap");
    // The populate-on-demand excess goes back to Xen before anything else happens: it is
    // Offline in the model, so nothing touches it, and releasing it now keeps Xen's PoD
    // entries within the cache that backs them.
    // The ceiling: boot RAM plus the hot-plug window (guest::mm::hotplug "Limits").
    let ceiling_kib = (info.ram_bytes() + guest::mm::hotplug::DEFAULT_HOTPLUG_RAM_BYTES) / 1024;
    log::info!(
        "balloon: the most this guest can reach is {} MiB (boot RAM + 64 GiB hot-plug window)",
        ceiling_kib / 1024
    );
    let mut balloon = Balloon::new(BalloonConfig {
        ceiling_kib: Some(ceiling_kib),
        ..BalloonConfig::default()
    })
    .with_clock(hv::uptime_ns)
    .with_cpu_clock(hv::running_ns);
    if cmdline.balloon_scrub {
        balloon = balloon.with_scrubber(hv::scrub_frames);
    } else {
        log::warn!("balloon: pages go back to Xen unscrubbed (balloon-scrub=off)");
    }
    if let Some(mut x) = xen {
        let now = x.now_ns();
        match balloon.adopt_boot_offline(mm, &mut x, now) {
            Ok(0) => {}
            Ok(pages) => log::info!(
                "populate-on-demand: released {} KiB beyond the target to Xen",
                pages * 4
            ),
            Err(e) => log::error!(
                "populate-on-demand: releasing the excess failed ({e}); the balloon retries"
            ),
        }
    }
    boottime::mark("balloon");
    kmem::map_ram_above_4g(&info);
    boottime::mark("paging");

    match xen {
        None => {
            // Plain QEMU: port 0xE9 is the only sink.
            klog::debugcon_all();
            kmem::log_layout(mm);
            log::warn!("no Xen hypervisor found (CPUID 0x40000000-0x4000ff00): nothing to do");
            log::info!(
                "boot without Xen: {} MiB RAM in the memmap",
                info.ram_bytes() >> 20
            );
            cpu::outb(QEMU_EXIT_PORT, QEMU_EXIT_NO_XEN);
            cpu::halt_forever();
        }
        Some(xen) => {
            log::info!(
                "Xen {}.{} (CPUID base {:#x}), hypercall page at {:#x}",
                xen.cpuid.major,
                xen.cpuid.minor,
                xen.cpuid.base,
                arch::entry::hypercall_page_paddr()
            );
            run::run(xen, &info, &cmdline, mm, balloon)
        }
    }
}

/// The grace period's view of this kernel: vCPU ids, Xen's clock, and `SCHEDOP_yield`
/// while waiting for a reader (who may be a sibling vCPU Xen has not scheduled).
static GRACE_HOOKS: guest::mm::GraceHooks = guest::mm::GraceHooks {
    cpu: || arch::percpu::id() as usize,
    now_ns: hv::uptime_ns,
    relax: irq::sched_yield,
};

static PANICKING: AtomicBool = AtomicBool::new(false);

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    use core::fmt::Write;
    // A panic while panicking (e.g. in the console path): go straight to the shutdown.
    // The console says everything from here on at once (see klog's `HOLD_NOTIFY`).
    klog::release_notifications_on_panic();
    if !PANICKING.swap(true, Ordering::Relaxed) {
        struct Raw;
        impl Write for Raw {
            fn write_str(&mut self, s: &str) -> core::fmt::Result {
                klog::write_raw(s.as_bytes());
                Ok(())
            }
        }
        let _ = match info.location() {
            Some(l) => writeln!(
                Raw,
                "PANIC at {}:{}:{}: {}",
                l.file(),
                l.line(),
                l.column(),
                info.message()
            ),
            None => writeln!(Raw, "PANIC: {}", info.message()),
        };
    }
    if let Some(xen) = hv::XEN.get() {
        // on_crash in the xl config decides what happens next (preserve, restart, ...).
        let _ = xen.shutdown(ShutdownReason::Crash);
    } else {
        cpu::outb(QEMU_EXIT_PORT, QEMU_EXIT_PANIC);
    }
    cpu::halt_forever()
}
