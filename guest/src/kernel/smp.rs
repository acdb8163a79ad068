//! Every vCPU the toolstack enables: bring-up by hypercall (`VCPUOP_initialise` in 64-bit
//! mode, then `VCPUOP_up`), `xl vcpu-set` (`cpu/<n>/availability`), and parking around a
//! suspend.
//!
//! ```text
//!  vCPU 0 (event loop)                         AP n
//!  start / apply_availability ─ initialise+up ─▶ ap_entry → ap_main: GDT/TSS/IDT, GS,
//!                                                  LAPIC, upcall vector, VIRQ_TIMER, IPI
//!                                                  state = Online ──▶ ap_loop:
//!  request Offline + IPI ──────────────────────▶   sees the request between work items,
//!  wait for Xen's is_up = 0 (yielding)              state = Down, VCPUOP_down(self)
//!  VCPUOP_up ──────────────────────────────────▶   returns from VCPUOP_down, Online again
//! ```
//!
//! Context: every function here but `ap_main`/`ap_loop` runs on vCPU 0 in thread context.
//! An AP only runs its work item ([`set_work`]: the race walkers) and its own setup; it
//! never takes the model's mutation lock, a xenstore request or a balloon step. vCPU 0 is
//! never taken offline: `xl vcpu-set` asking for it is refused with a log line (it runs
//! every driver, and Xen powers a domain off when its last vCPU goes down).
//!
//! Across a suspend every AP is parked (down in Xen's view, so it has no context in the
//! save image); after a cancelled suspend `VCPUOP_up` resumes it where it parked, after
//! a resume in a new domain (where it was never initialised) it starts from `ap_entry`
//! again and redoes its setup, since every event binding was lost.

use alloc::boxed::Box;
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU8, AtomicUsize, Ordering};

use xen_bindings::abi::vcpu::{
    VcpuHvmContext, VcpuHvmX86_64, VCPUOP_DOWN, VCPUOP_INITIALISE, VCPUOP_IS_UP, VCPUOP_UP,
    VCPU_HVM_MODE_64B,
};
use xen_bindings::hypercall as hc;
use xen_bindings::Errno;

use crate::arch::cpu;
use crate::arch::idt::{self, CpuTables};
use crate::arch::percpu::{self, PerCpu};
use crate::hv::{Xen, Xenstore};
use crate::irq;
use guest::xen::xenstore::{XsError, XsOps};
use xen_bindings::traits::Clock;

/// vCPUs this kernel can run: those with a `vcpu_info` slot in shared_info.
pub const MAX_CPUS: usize = xen_bindings::abi::shared_info::LEGACY_MAX_VCPUS;
/// Each AP's stack.
const AP_STACK_BYTES: usize = 128 * 1024;
/// How long vCPU 0 waits for an AP to come up or go down.
const HANDSHAKE_NS: u64 = 5_000_000_000;

/// An AP's life as vCPU 0 sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum CpuState {
    /// Never started (or started in a domain we no longer run in).
    Absent = 0,
    /// Initialised and upped; has not finished its setup yet.
    Starting = 1,
    /// Running its loop.
    Online = 2,
    /// Parked in `VCPUOP_down` (offline by request, or around a suspend).
    Down = 3,
}

const REQ_NONE: u8 = 0;
const REQ_DOWN: u8 = 1;

/// What an AP needs to start: handed over in %rdi.
struct ApBoot {
    id: u32,
    stack_top: u64,
    tables: AtomicPtr<CpuTables>,
    percpu: AtomicPtr<PerCpu>,
}

/// One vCPU's slot. `state` is written by the AP (Starting → Online, → Down) and by
/// vCPU 0 (Absent/Down → Starting); `request` only by vCPU 0.
struct Slot {
    state: AtomicU8,
    request: AtomicU8,
    boot: AtomicPtr<ApBoot>,
}

static SLOTS: [Slot; MAX_CPUS] = [const {
    Slot {
        state: AtomicU8::new(CpuState::Absent as u8),
        request: AtomicU8::new(REQ_NONE),
        boot: AtomicPtr::new(core::ptr::null_mut()),
    }
}; MAX_CPUS];

/// `max_vcpus` of the domain (probed once), 0 before [`start`].
static MAX_VCPUS: AtomicU32 = AtomicU32::new(0);

/// What an AP does while online: returns after a bounded piece of work (so requests are
/// seen), or `false` if there is nothing to do (the AP then sleeps until an IPI).
type Work = fn(u32) -> bool;
/// Relaxed: set on vCPU 0 before the APs it concerns are started (VCPUOP_up orders it),
/// or changed while they run and read again at their next loop.
static WORK: AtomicUsize = AtomicUsize::new(0);

/// Installs the APs' work item.
pub fn set_work(w: Work) {
    WORK.store(w as usize, Ordering::Relaxed);
}

fn slot(id: u32) -> &'static Slot {
    &SLOTS[id as usize]
}

/// The state of vCPU `id` (vCPU 0 is always Online).
pub fn state(id: u32) -> CpuState {
    if id == 0 {
        return CpuState::Online;
    }
    // Acquire: pairs with the AP's Release stores, so its setup is visible.
    match slot(id).state.load(Ordering::Acquire) {
        1 => CpuState::Starting,
        2 => CpuState::Online,
        3 => CpuState::Down,
        _ => CpuState::Absent,
    }
}

/// Whether vCPU 0 asked AP `id` to park (its work item checks between pieces).
pub fn stop_requested(id: u32) -> bool {
    // Relaxed: a hint; `ap_loop` re-reads it with Acquire before acting.
    slot(id).request.load(Ordering::Relaxed) != REQ_NONE
}

/// `max_vcpus` of the domain.
pub fn max_vcpus() -> u32 {
    MAX_VCPUS.load(Ordering::Relaxed).max(1)
}

/// vCPUs online now.
pub fn online() -> u32 {
    (0..max_vcpus())
        .filter(|&i| state(i) == CpuState::Online)
        .count() as u32
}

fn vcpu_op(cmd: u32, id: u32, arg: *mut u8) -> Result<u64, Errno> {
    // SAFETY: every caller passes the structure `cmd` expects, or null where it takes none.
    unsafe { hc::vcpu_op(cmd, id, arg) }
}

/// Xen's view: whether vCPU `id` is up.
fn xen_is_up(id: u32) -> Result<bool, Errno> {
    vcpu_op(VCPUOP_IS_UP, id, core::ptr::null_mut()).map(|r| r != 0)
}

/// Finds `max_vcpus` (`VCPUOP_is_up` answers `-ENOENT` past it).
fn probe() -> u32 {
    let mut n = 1;
    while (n as usize) < 4096 {
        match xen_is_up(n) {
            Err(Errno::ENOENT) => break,
            _ => n += 1,
        }
    }
    n
}

/// At boot, before xenstore is read: finds `max_vcpus` (hypercalls only). Returns the
/// xenstore paths [`start`] needs, so that the caller can read them with its own.
pub fn probe_max() -> alloc::vec::Vec<alloc::string::String> {
    let max = probe();
    MAX_VCPUS.store(max, Ordering::Relaxed);
    if max as usize > MAX_CPUS {
        log::warn!(
            "smp: max_vcpus = {max}; vCPUs {MAX_CPUS} and above have no shared_info slot and stay down"
        );
    }
    availability_paths()
}

/// At boot: brings up every vCPU whose `cpu/<n>/availability` (the values read for
/// [`probe_max`]'s paths, in order) is `online`.
pub fn start(xen: &Xen, values: alloc::vec::Vec<Result<alloc::vec::Vec<u8>, XsError>>) {
    apply(xen, values);
    log::info!("smp: {} of {} vCPUs online", online(), max_vcpus());
}

/// `cpu/<n>/availability` for every vCPU we can run.
fn availability_paths() -> alloc::vec::Vec<alloc::string::String> {
    (0..max_vcpus().min(MAX_CPUS as u32))
        .map(|id| alloc::format!("cpu/{id}/availability"))
        .collect()
}

/// Makes the running vCPUs match `cpu/<n>/availability` (the `cpu` watch that `xl
/// vcpu-set` fires). Returns how many vCPUs changed.
pub fn apply_availability(xen: &Xen, xs: &mut Xenstore) -> u32 {
    let owned = availability_paths();
    let paths: alloc::vec::Vec<&str> = owned.iter().map(|p| p.as_str()).collect();
    // One round trip for all of them.
    apply(xen, xs.read_many(&paths))
}

/// Brings vCPU `n` up or down as `values[n]` (its `cpu/<n>/availability`) says.
fn apply(xen: &Xen, values: alloc::vec::Vec<Result<alloc::vec::Vec<u8>, XsError>>) -> u32 {
    let mut changed = 0;
    for (id, value) in (0u32..).zip(values) {
        let want = match value {
            Ok(v) if v == b"online" => true,
            Ok(v) if v == b"offline" => false,
            Ok(v) => {
                log::warn!(
                    "smp: cpu/{id}/availability = {:?}: neither online nor offline; ignored",
                    core::str::from_utf8(&v).unwrap_or("<binary>")
                );
                continue;
            }
            Err(_) => continue,
        };
        let online = state(id) == CpuState::Online;
        if id == 0 {
            if !want {
                log::warn!("smp: vCPU 0 cannot go offline (it runs every driver); refused");
            }
            continue;
        }
        let r = match (want, online) {
            (true, false) => bring_up(xen, id),
            (false, true) => take_down(xen, id),
            _ => continue,
        };
        match r {
            Ok(()) => {
                changed += 1;
                log::info!("smp: vCPU {id} {}", if want { "online" } else { "offline" });
            }
            Err(e) => log::error!(
                "smp: vCPU {id} did not go {}: {e}",
                if want { "online" } else { "offline" }
            ),
        }
    }
    changed
}

fn boot_block(id: u32) -> &'static ApBoot {
    let s = slot(id);
    // Acquire: pairs with the Release below (only vCPU 0 runs this, so Relaxed would do).
    let p = s.boot.load(Ordering::Acquire);
    if !p.is_null() {
        // SAFETY: leaked below, lives forever.
        return unsafe { &*p };
    }
    let stack = Box::leak(alloc::vec![0u8; AP_STACK_BYTES].into_boxed_slice());
    let top = (stack.as_ptr() as u64 + AP_STACK_BYTES as u64) & !15;
    let b = Box::leak(Box::new(ApBoot {
        id,
        stack_top: top,
        tables: AtomicPtr::new(Box::into_raw(Box::new(CpuTables::new()))),
        percpu: AtomicPtr::new(Box::into_raw(Box::new(PerCpu::new(id)))),
    }));
    s.boot.store(b, Ordering::Release);
    b
}

/// Starts (or restarts) AP `id` and waits until it is online.
fn bring_up(xen: &Xen, id: u32) -> Result<(), Errno> {
    let s = slot(id);
    // Relaxed: the AP reads it after VCPUOP_up (a hypercall orders it).
    s.request.store(REQ_NONE, Ordering::Relaxed);
    // Release: pairs with nothing the AP needs; a plain marker for `state`.
    s.state.store(CpuState::Starting as u8, Ordering::Release);
    match vcpu_op(VCPUOP_UP, id, core::ptr::null_mut()) {
        Ok(_) => {}
        // Never initialised in this domain (first start, or after a restore).
        Err(Errno::EINVAL) => {
            let b = boot_block(id);
            let mut ctx = VcpuHvmContext {
                mode: VCPU_HVM_MODE_64B,
                x86_64: VcpuHvmX86_64 {
                    rip: ap_entry_addr(),
                    rsp: b.stack_top,
                    rdi: b as *const ApBoot as u64,
                    rflags: 0x2,
                    cr0: cpu::read_cr0(),
                    cr3: cpu::read_cr3(),
                    cr4: cpu::read_cr4(),
                    // SAFETY: reading EFER has no side effects.
                    efer: unsafe { cpu::rdmsr(0xc000_0080) },
                    ..Default::default()
                },
                ..Default::default()
            };
            match vcpu_op(VCPUOP_INITIALISE, id, (&raw mut ctx).cast()) {
                Ok(_) | Err(Errno::EEXIST) => {}
                Err(e) => {
                    s.state.store(CpuState::Absent as u8, Ordering::Release);
                    return Err(e);
                }
            }
            vcpu_op(VCPUOP_UP, id, core::ptr::null_mut())?;
        }
        Err(e) => return Err(e),
    }
    wait_until(xen, || state(id) == CpuState::Online)
        .map_err(|()| Errno::EBUSY)
        .inspect_err(|_| log::error!("smp: vCPU {id} was upped but did not come online"))
}

/// Asks AP `id` to park and waits until Xen shows it down.
fn take_down(xen: &Xen, id: u32) -> Result<(), Errno> {
    let s = slot(id);
    // Release: pairs with the AP's Acquire load in `ap_loop`.
    s.request.store(REQ_DOWN, Ordering::Release);
    if let Some(p) = percpu_of(id) {
        let port = p.ipi_port.load(Ordering::Relaxed);
        if port != 0 {
            let _ = irq::send_ipi(port);
        }
    }
    wait_until(xen, || {
        state(id) == CpuState::Down && matches!(xen_is_up(id), Ok(false))
    })
    .map_err(|()| Errno::EBUSY)
}

fn percpu_of(id: u32) -> Option<&'static PerCpu> {
    // Acquire: pairs with the Release in `boot_block`.
    let b = slot(id).boot.load(Ordering::Acquire);
    if b.is_null() {
        return None;
    }
    // SAFETY: boot blocks and their PerCpu are leaked: they live forever.
    unsafe { (*b).percpu.load(Ordering::Relaxed).as_ref() }
}

/// Waits (halting between 1 ms timer ticks, never spinning) until `done` or the deadline.
fn wait_until(xen: &Xen, mut done: impl FnMut() -> bool) -> Result<(), ()> {
    let deadline = xen.now_ns() + HANDSHAKE_NS;
    loop {
        if done() {
            return Ok(());
        }
        let now = xen.now_ns();
        if now >= deadline {
            return Err(());
        }
        xen.wait(&[], now + 1_000_000);
    }
}

/// Before a suspend: parks every online AP. Returns which were online (to restart).
pub fn park_all(xen: &Xen) -> u64 {
    let mut was = 0u64;
    for id in 1..max_vcpus().min(MAX_CPUS as u32) {
        if state(id) == CpuState::Online {
            was |= 1 << id;
            if let Err(e) = take_down(xen, id) {
                log::error!("suspend: vCPU {id} did not park ({e}); suspending anyway");
            }
        }
    }
    was
}

/// After a suspend (either outcome): restarts the APs `park_all` parked.
pub fn unpark(xen: &Xen, was: u64) {
    for id in 1..max_vcpus().min(MAX_CPUS as u32) {
        if was & (1 << id) != 0 {
            if let Err(e) = bring_up(xen, id) {
                log::error!("resume: vCPU {id} did not come back: {e}");
            }
        }
    }
}

// --- the AP side ----------------------------------------------------------------------

core::arch::global_asm!(
    ".pushsection .text.ap, \"ax\"",
    ".global ap_entry",
    // Long mode, flat CS/DS/SS from Xen, rsp = our stack top (16-aligned), rdi = ApBoot.
    "ap_entry:",
    "cli",
    "cld",
    "call {main}",
    "ud2",
    ".popsection",
    main = sym ap_main,
);

extern "C" {
    fn ap_entry();
}

fn ap_entry_addr() -> u64 {
    ap_entry as *const () as u64
}

/// First Rust on an AP: its own tables before anything can fault, then GS, SSE state and
/// event delivery; then its loop.
extern "C" fn ap_main(boot: &'static ApBoot) -> ! {
    // SAFETY: the tables and per-CPU block were leaked for this AP alone.
    let (tables, pc) = unsafe {
        (
            &mut *boot.tables.load(Ordering::Relaxed),
            &mut *boot.percpu.load(Ordering::Relaxed),
        )
    };
    idt::load(tables);
    percpu::install(pc);
    // SAFETY: resets x87/SSE state to the defaults the compiler expects (as the boot stub
    // does on vCPU 0).
    unsafe {
        let mxcsr: u32 = 0x1f80;
        core::arch::asm!("fninit", "ldmxcsr [{}]", in(reg) &mxcsr);
    }
    if let Err(e) = irq::setup_this_cpu() {
        panic!("vCPU {}: event delivery setup failed: {e}", boot.id);
    }
    // Release: pairs with vCPU 0's Acquire in `state`.
    slot(boot.id)
        .state
        .store(CpuState::Online as u8, Ordering::Release);
    ap_loop(boot.id)
}

fn ap_loop(id: u32) -> ! {
    let s = slot(id);
    let xen = *crate::hv::XEN.get().expect("APs start after Xen is set up");
    loop {
        // Acquire: pairs with vCPU 0's Release in `take_down`.
        if s.request.load(Ordering::Acquire) == REQ_DOWN {
            s.request.store(REQ_NONE, Ordering::Relaxed);
            // Release: everything this AP did is visible before vCPU 0 sees it parked.
            s.state.store(CpuState::Down as u8, Ordering::Release);
            // Returns after a VCPUOP_up in this same domain.
            let _ = vcpu_op(VCPUOP_DOWN, id, core::ptr::null_mut());
            s.state.store(CpuState::Online as u8, Ordering::Release);
            continue;
        }
        let w = WORK.load(Ordering::Relaxed);
        // SAFETY: only `set_work` stores here, always a `Work`.
        let did = w != 0 && unsafe { core::mem::transmute::<usize, Work>(w) }(id);
        if !did {
            // Nothing to do: sleep until an IPI (a request) or a second passes.
            xen.wait(&[], xen.now_ns() + 1_000_000_000);
        }
    }
}
