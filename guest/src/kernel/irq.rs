//! Events by interrupt: each vCPU's upcall vector, its `VIRQ_TIMER` and IPI ports, and
//! the one way any code here waits — [`wait`], which halts with `sti; hlt` until an event
//! or a deadline.
//!
//! ```text
//!  Xen sets a port's pending bit (shared_info), its word's bit in the port's vCPU's
//!  selector, upcall_pending → LAPIC vector UPCALL_VECTOR on that vCPU
//!     └─▶ upcall() (IST 3, IF=0): clear upcall_pending, take the selector, take only this
//!         vCPU's own timer/IPI bits (→ PerCpu::woken); every other pending bit stays in
//!         shared_info for its consumer (`take_pending` in thread context); EOI.
//!  wait(ports, deadline) (thread context, IF=0): unmask + check the ports, check woken,
//!     arm the single-shot timer, `sti; hlt; cli`, repeat.
//! ```
//!
//! Context: interrupts are enabled only inside [`wait`]'s `sti; hlt`, so the upcall never
//! interrupts kernel code: it cannot meet a held lock, a walker never runs in interrupt
//! context, and the grace period has no interrupt-context readers to cover. Interdomain
//! ports (xenstore, console, grant peers) notify vCPU 0 (Xen's default binding), which
//! runs every driver; a vCPU's own timer and IPI ports notify only that vCPU.

use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicU8, Ordering};

use guest::xen::evtchn;
use xen_bindings::abi::event_channel as ev;
use xen_bindings::abi::hvm::{XenHvmEvtchnUpcallVector, HVMOP_SET_EVTCHN_UPCALL_VECTOR};
use xen_bindings::abi::shared_info::{SharedInfo, VcpuInfo, LEGACY_MAX_VCPUS};
use xen_bindings::abi::vcpu::{
    VcpuRegisterRunstateMemoryArea, VcpuRegisterVcpuInfo, VcpuSetSingleshotTimer,
    VCPUOP_REGISTER_RUNSTATE_MEMORY_AREA, VCPUOP_REGISTER_VCPU_INFO, VCPUOP_SET_SINGLESHOT_TIMER,
    VCPUOP_STOP_SINGLESHOT_TIMER,
};
use xen_bindings::hypercall as hc;
use xen_bindings::traits::Port;
use xen_bindings::Errno;

use crate::arch::{cpu, idt, lapic, percpu};

/// `PerCpu::woken` bit: this vCPU's single-shot timer fired.
pub const WOKEN_TIMER: usize = 1 << 0;
/// `PerCpu::woken` bit: another vCPU sent this one an IPI.
pub const WOKEN_IPI: usize = 1 << 1;

/// shared_info, once mapped (set by `hv` at boot; the same page after a resume).
// Release/Acquire: the store follows the mapping hypercall; readers on other vCPUs then
// see the mapped page.
static SHARED: AtomicPtr<SharedInfo> = AtomicPtr::new(core::ptr::null_mut());

/// Tells the interrupt path where shared_info is and installs the upcall handler.
pub fn init(shared: *mut SharedInfo) {
    SHARED.store(shared, Ordering::Release);
    idt::set_upcall_handler(upcall);
}

fn shared() -> *mut SharedInfo {
    SHARED.load(Ordering::Acquire)
}

/// shared_info's pending and mask arrays as atomic words.
pub fn words() -> evtchn::Words<'static> {
    let si = shared();
    // SAFETY: both arrays live in the mapped shared_info page (mapped for the kernel's
    // lifetime, the same page after a resume) and Xen updates them with atomic
    // operations, so shared atomic views are sound; `AtomicU64` has u64's layout.
    unsafe {
        evtchn::Words {
            pending: &*(core::ptr::addr_of_mut!((*si).evtchn_pending) as *const [AtomicU64; 64]),
            mask: &*(core::ptr::addr_of_mut!((*si).evtchn_mask) as *const [AtomicU64; 64]),
        }
    }
}

/// The calling vCPU's `vcpu_info`: its registered area, else its slot in shared_info
/// (ids below 32 have one; `setup_this_cpu` refuses others).
pub fn this_vcpu_info() -> *mut VcpuInfo {
    let me = percpu::this();
    // Relaxed: only this vCPU stores the pointer (in `setup_this_cpu`).
    let p = me.vcpu_info.load(Ordering::Relaxed);
    if !p.is_null() {
        return p;
    }
    let id = (me.id as usize).min(LEGACY_MAX_VCPUS - 1);
    // SAFETY: address of slot `id` of the mapped shared_info (no reference created).
    unsafe { &raw mut (*shared()).vcpu_info[id] }
}

/// `VCPUOP_register_vcpu_info` for the calling vCPU: Xen copies the shared_info slot into
/// our area, keeps the area from now on and raises one spurious upcall (every selector
/// bit set), which the handler absorbs. Once per vCPU per domain.
fn register_vcpu_info(me: &'static percpu::PerCpu) -> Result<(), Errno> {
    let area = me.vcpu_info_area.0.get();
    let addr = area as u64;
    let mut r = VcpuRegisterVcpuInfo {
        mfn: addr >> 12,
        offset: (addr & 0xfff) as u32,
        rsvd: 0,
    };
    // SAFETY: r names 64 bytes of ours (identity-mapped, 64-byte aligned, inside one
    // frame) that live as long as the kernel (the per-CPU block is never freed).
    unsafe { hc::vcpu_op(VCPUOP_REGISTER_VCPU_INFO, me.id, (&raw mut r).cast())? };
    // Relaxed: read only by this vCPU (`this_vcpu_info`), after this store.
    me.vcpu_info.store(area, Ordering::Relaxed);
    Ok(())
}

/// `VCPUOP_register_runstate_memory_area` for the calling vCPU: from now on its CPU time
/// is a read of memory ([`crate::hv::running_ns`]), not a hypercall per reading. Xen
/// copies the current runstate in at once. Registrations die with the domain, so this
/// runs again after a resume in a new one; re-registering in the same domain is allowed.
fn register_runstate_area(me: &'static percpu::PerCpu) -> Result<(), Errno> {
    let area = me.runstate_area.0.get();
    let mut r = VcpuRegisterRunstateMemoryArea { addr: area as u64 };
    // SAFETY: r names 48 bytes of ours (identity-mapped in the one page table every vCPU
    // uses, 64-byte aligned, inside one page) that live as long as the kernel.
    unsafe {
        hc::vcpu_op(
            VCPUOP_REGISTER_RUNSTATE_MEMORY_AREA,
            me.id,
            (&raw mut r).cast(),
        )?
    };
    // Relaxed: read only by this vCPU (`hv::running_ns`), after this store.
    me.runstate.store(area, Ordering::Relaxed);
    Ok(())
}

/// The upcall (IDT vector [`idt::UPCALL_VECTOR`], IF=0, IST 3). No locks, no logging.
fn upcall() {
    let me = percpu::this();
    let vi = this_vcpu_info();
    // SAFETY: `vi` is this vCPU's vcpu_info (registered area or shared_info slot); Xen
    // writes these fields with atomic operations, so atomic views of them are sound.
    let vcpu = unsafe {
        evtchn::VcpuWords {
            upcall_pending: AtomicU8::from_ptr(&raw mut (*vi).evtchn_upcall_pending),
            pending_sel: AtomicU64::from_ptr((&raw mut (*vi).evtchn_pending_sel).cast()),
        }
    };
    // Relaxed: the ports are stored by this vCPU's own setup, before its upcall vector
    // was registered.
    let own = [
        (me.timer_port.load(Ordering::Relaxed), WOKEN_TIMER),
        (me.ipi_port.load(Ordering::Relaxed), WOKEN_IPI),
    ];
    let woken = evtchn::upcall(vcpu, words(), &own);
    if woken != 0 {
        // Release: pairs with the Acquire swap in `take_woken`.
        me.woken.fetch_or(woken, Ordering::Release);
    }
}

/// Takes this vCPU's wake reasons (`WOKEN_*`).
pub fn take_woken() -> usize {
    // Acquire: pairs with the upcall's Release `fetch_or`.
    percpu::this().woken.swap(0, Ordering::Acquire)
}

/// Blocks the calling vCPU until one of `ports` is pending, an IPI or wake reason in
/// `stop_on` arrives, or Xen system time reaches `deadline_xen_ns` (0: none). Returns the
/// wake reasons taken (`WOKEN_*`; the timer's is consumed here). Interrupts are enabled
/// only inside the halt; nothing spins.
pub fn wait(ports: &[Port], deadline_xen_ns: u64, now_xen_ns: impl Fn() -> u64) -> usize {
    let me = percpu::this();
    let mut armed = false;
    let mut reasons = 0;
    loop {
        let new = take_woken();
        if new & WOKEN_TIMER != 0 {
            // Fired (perhaps for an earlier deadline): arm again if still early.
            armed = false;
        }
        reasons |= new;
        if evtchn::unmask_and_check(words(), ports) || reasons & WOKEN_IPI != 0 {
            break;
        }
        if deadline_xen_ns != 0 && now_xen_ns() >= deadline_xen_ns {
            break;
        }
        if deadline_xen_ns != 0 && me.timer_port.load(Ordering::Relaxed) != 0 && !armed {
            armed = set_timer(deadline_xen_ns).is_ok();
        }
        if deadline_xen_ns != 0 && !armed {
            // No timer to wake us: do not sleep past the deadline; let Xen run others.
            sched_yield();
            continue;
        }
        cpu::wait_for_interrupt();
    }
    if armed {
        let _ = stop_timer();
    }
    reasons
}

/// `VCPUOP_set_singleshot_timer` for the calling vCPU (Xen system time).
fn set_timer(deadline_xen_ns: u64) -> Result<(), Errno> {
    let mut t = VcpuSetSingleshotTimer {
        timeout_abs_ns: deadline_xen_ns,
        flags: 0,
    };
    // SAFETY: t is a valid vcpu_set_singleshot_timer; the op applies to the calling vCPU.
    unsafe {
        hc::vcpu_op(
            VCPUOP_SET_SINGLESHOT_TIMER,
            percpu::id(),
            (&raw mut t).cast(),
        )
    }
    .map(drop)
}

fn stop_timer() -> Result<(), Errno> {
    // SAFETY: VCPUOP_stop_singleshot_timer takes no argument.
    unsafe {
        hc::vcpu_op(
            VCPUOP_STOP_SINGLESHOT_TIMER,
            percpu::id(),
            core::ptr::null_mut(),
        )
    }
    .map(drop)
}

/// `SCHEDOP_yield`: let Xen run another vCPU (a waiter that must poll something no event
/// announces, e.g. a sibling's reader count).
pub fn sched_yield() {
    // SAFETY: SCHEDOP_yield takes no argument.
    let _ = unsafe {
        hc::sched_op(
            xen_bindings::abi::sched::SCHEDOP_yield,
            core::ptr::null_mut(),
        )
    };
}

/// Per-vCPU event setup, run by the vCPU itself (at its start and after a resume in a
/// new domain, where every binding is gone): LAPIC on, the upcall vector, `VIRQ_TIMER`
/// and an IPI port bound to it. Idempotent for the LAPIC and vector.
pub fn setup_this_cpu() -> Result<(), Errno> {
    let me = percpu::this();
    // A fresh start or a new domain: nothing is registered yet, so the shared_info slot
    // is where Xen writes until the registration below. Relaxed: this vCPU only.
    me.vcpu_info.store(core::ptr::null_mut(), Ordering::Relaxed);
    me.runstate.store(core::ptr::null_mut(), Ordering::Relaxed);
    if me.id as usize >= LEGACY_MAX_VCPUS {
        // Without a slot it could not take the upcall that registration raises.
        return Err(Errno::ENOSYS);
    }
    lapic::enable(idt::SPURIOUS_VECTOR);
    let mut v = XenHvmEvtchnUpcallVector {
        vcpu: me.id,
        vector: idt::UPCALL_VECTOR,
    };
    // SAFETY: v is a valid xen_hvm_evtchn_upcall_vector for ourselves.
    unsafe { hc::hvm_op(HVMOP_SET_EVTCHN_UPCALL_VECTOR, (&raw mut v).cast())? };
    let mut b = ev::EvtchnBindVirq {
        virq: ev::VIRQ_TIMER,
        vcpu: me.id,
        port: 0,
    };
    // SAFETY: b is a valid evtchn_bind_virq.
    unsafe { hc::event_channel_op(ev::EVTCHNOP_bind_virq, (&raw mut b).cast())? };
    let mut i = ev::EvtchnBindIpi {
        vcpu: me.id,
        port: 0,
    };
    // SAFETY: i is a valid evtchn_bind_ipi.
    unsafe { hc::event_channel_op(ev::EVTCHNOP_bind_ipi, (&raw mut i).cast())? };
    for p in [b.port, i.port] {
        let mut u = ev::EvtchnUnmask { port: p };
        // SAFETY: u is a valid evtchn_unmask.
        unsafe { hc::event_channel_op(ev::EVTCHNOP_unmask, (&raw mut u).cast())? };
    }
    // Relaxed: read by this vCPU's upcall (which these stores precede in program order)
    // and by senders of IPIs after they saw this vCPU online (a Release elsewhere).
    me.timer_port.store(b.port, Ordering::Relaxed);
    me.ipi_port.store(i.port, Ordering::Relaxed);
    if let Err(e) = register_runstate_area(me) {
        // Not fatal: CPU time falls back to VCPUOP_get_runstate_info.
        log::warn!(
            "vcpu {}: runstate area refused ({e:?}); CPU time by hypercall",
            me.id
        );
    }
    // Last: the vector is set, so the spurious upcall Xen raises is delivered (at the
    // next `sti`) and absorbed instead of leaving upcall_pending stuck at 1.
    register_vcpu_info(me)
}

/// Sends an IPI to the vCPU whose IPI port is `port`.
pub fn send_ipi(port: Port) -> Result<(), Errno> {
    let mut s = ev::EvtchnSend { port };
    // SAFETY: s is a valid evtchn_send.
    unsafe { hc::event_channel_op(ev::EVTCHNOP_send, (&raw mut s).cast()) }.map(drop)
}
