//! The real Xen behind `xen_bindings::traits`: hypercalls and shared_info.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use guest::xen::clock::{read_consistent, TimeInfo};
use xen_bindings::abi::event_channel as ev;
use xen_bindings::abi::grant_table::{
    GnttabMapGrantRef, GnttabQuerySize, GnttabUnmapGrantRef, GNTTABOP_MAP_GRANT_REF,
    GNTTABOP_QUERY_SIZE, GNTTABOP_UNMAP_GRANT_REF,
};
use xen_bindings::abi::hvm::{param, XenHvmParam, HVMOP_GET_PARAM, HVMOP_SET_PARAM};
use xen_bindings::abi::memory::{self as mem, mapspace, XenAddToPhysmap, XenMemoryReservation};
use xen_bindings::abi::sched::{SCHEDOP_shutdown, SchedShutdown};
use xen_bindings::abi::shared_info::SharedInfo;
use xen_bindings::abi::vcpu::{VcpuRunstateInfo, VCPUOP_GET_RUNSTATE_INFO};
use xen_bindings::abi::DOMID_SELF;
use xen_bindings::hypercall::{self as hc, XenCpuid};
use xen_bindings::traits::{
    Clock, DomId, EventChannels, Gfn, GrantOps, MemoryReservation, Port, Sched, ShutdownReason,
    SuspendOutcome,
};
use xen_bindings::Errno;

use crate::arch::{cpu, entry};
use crate::irq;

/// RAM pages whose frames Xen took back by mapping something over them (shared_info).
pub const SHARED_INFO_PAGES: u64 = 1;

/// The page Xen's shared_info is mapped over (its RAM frame goes back to Xen).
#[repr(C, align(4096))]
struct SharedInfoPage([u8; 4096]);
static mut SHARED_INFO_PAGE: SharedInfoPage = SharedInfoPage([0; 4096]);

/// The xenstore client over the real Xen (its ring, event channel and poll).
pub type Xenstore = guest::xen::xenstore::XenstoreClient<Xen>;

/// Handle to the hypervisor, once the hypercall page and shared_info are set up.
#[derive(Clone, Copy)]
pub struct Xen {
    shared: *mut SharedInfo,
    pub cpuid: XenCpuid,
}

// SAFETY: shared_info is a fixed page for the domain's life; fields are accessed atomically
// or under the pvclock seqlock.
unsafe impl Send for Xen {}
unsafe impl Sync for Xen {}

impl Xen {
    /// Finds Xen, installs the hypercall page, maps shared_info. None without Xen.
    pub fn init() -> Option<Result<Self, Errno>> {
        let cpuid = hc::detect_xen(cpu::cpuid)?;
        let xen = Self {
            shared: (&raw mut SHARED_INFO_PAGE) as *mut SharedInfo,
            cpuid,
        };
        Some(xen.attach().map(|()| {
            irq::init(xen.shared);
            xen
        }))
    }

    /// Installs the hypercall page and maps shared_info over its page. At boot, and again
    /// after resuming in a new domain (another host may need other stubs; shared_info is
    /// not part of a save image). Re-mapping an already mapped shared_info is harmless.
    fn attach(&self) -> Result<(), Errno> {
        let page = entry::hypercall_page_paddr();
        // SAFETY: the MSR from Xen's CPUID leaf takes the physical address of a page we own
        // (in .text, identity-mapped) for Xen to fill with hypercall stubs.
        unsafe { cpu::wrmsr(self.cpuid.hypercall_msr, page) };
        hc::set_hypercall_page(page as usize);
        let mut xatp = XenAddToPhysmap {
            domid: DOMID_SELF,
            size: 0,
            space: mapspace::SHARED_INFO,
            idx: 0,
            gpfn: self.shared as u64 >> 12,
        };
        // SAFETY: xatp is a valid xen_add_to_physmap for XENMEM_add_to_physmap.
        unsafe { hc::memory_op(mem::XENMEM_ADD_TO_PHYSMAP, (&raw mut xatp).cast()) }.map(drop)
    }

    /// Prepares for a suspend: remembers the clock (see [`Self::resumed_in_new_domain`])
    /// and sets `HVM_PARAM_CALLBACK_IRQ`, without which libxl cannot tell us that a
    /// suspend was cancelled (it patches the return value only for guests with PV drivers,
    /// judged by that parameter; Xen's PV shim sets it for the same reason). Interrupts
    /// stay disabled here, so the callback GSI never reaches us. The parameter is not in
    /// the save image: this runs before every suspend.
    pub fn prepare_suspend(&self) -> Result<(), Errno> {
        SUSPEND_CLOCK_NS.store(self.now_ns(), Ordering::Relaxed);
        self.set_hvm_param(param::CALLBACK_IRQ, 1)
    }

    /// After `SCHEDOP_shutdown(SHUTDOWN_suspend)` returned 0: hypercall page and
    /// shared_info again, and the clock rebased so that it never runs backwards (the new
    /// host's system time may be behind the old one's).
    pub fn resumed_in_new_domain(&self) -> Result<(), Errno> {
        self.attach()?;
        // Every binding and the upcall vector are gone with the old domain.
        irq::setup_this_cpu()?;
        let before = SUSPEND_CLOCK_NS.load(Ordering::Relaxed);
        let now = self.now_ns();
        if now < before {
            // Relaxed: only this (the one) vCPU reads the offset, in `now_ns`.
            CLOCK_OFFSET_NS.fetch_add(before - now, Ordering::Relaxed);
        }
        Ok(())
    }

    /// `HVMOP_set_param` for ourselves.
    pub fn set_hvm_param(&self, index: u32, value: u64) -> Result<(), Errno> {
        let mut p = XenHvmParam {
            domid: DOMID_SELF,
            index,
            value,
        };
        // SAFETY: p is a valid xen_hvm_param.
        unsafe { hc::hvm_op(HVMOP_SET_PARAM, (&raw mut p).cast()) }.map(drop)
    }

    fn time_info(&self) -> TimeInfo {
        // Each vCPU reads its own time record (Xen keeps it for the pCPU it runs on), in
        // its registered vcpu_info or its shared_info slot.
        let vi = irq::this_vcpu_info();
        // SAFETY: `vi` is this vCPU's vcpu_info; Xen writes it under the version seqlock
        // that `read_consistent` implements, so volatile reads suffice.
        unsafe {
            let t = &raw const (*vi).time;
            read_consistent(
                || (&raw const (*t).version).read_volatile(),
                || TimeInfo {
                    tsc_timestamp: (&raw const (*t).tsc_timestamp).read_volatile(),
                    system_time: (&raw const (*t).system_time).read_volatile(),
                    tsc_to_system_mul: (&raw const (*t).tsc_to_system_mul).read_volatile(),
                    tsc_shift: (&raw const (*t).tsc_shift).read_volatile(),
                },
            )
        }
    }

    /// `HVMOP_get_param`.
    pub fn hvm_param(&self, index: u32) -> Result<u64, Errno> {
        let mut p = XenHvmParam {
            domid: DOMID_SELF,
            index,
            value: 0,
        };
        // SAFETY: p is a valid xen_hvm_param.
        unsafe { hc::hvm_op(HVMOP_GET_PARAM, (&raw mut p).cast())? };
        Ok(p.value)
    }

    fn reservation(&self, cmd: u32, gfns: &[Gfn], order: u32) -> Result<usize, Errno> {
        let mut r = XenMemoryReservation {
            extent_start: gfns.as_ptr() as *mut u64,
            nr_extents: gfns.len() as u64,
            extent_order: order,
            mem_flags: 0,
            domid: DOMID_SELF,
        };
        // SAFETY: r points at `gfns`, which outlives the call. Xen only writes extent_start
        // for increase_reservation, which we never issue, so the shared slice is not written.
        let done = unsafe { hc::memory_op(cmd, (&raw mut r).cast())? };
        Ok(done as usize)
    }
}

/// Added to Xen's system time so that our clock never runs backwards across a migration.
static CLOCK_OFFSET_NS: AtomicU64 = AtomicU64::new(0);
/// Our clock when the last suspend began.
static SUSPEND_CLOCK_NS: AtomicU64 = AtomicU64::new(0);

impl Xen {
    /// Xen's system time (without our migration offset): what timers take.
    pub fn xen_now_ns(&self) -> u64 {
        self.time_info().ns_at(cpu::rdtsc())
    }

    /// Nanoseconds vCPU `id` has spent running, runnable (waiting for a physical CPU),
    /// blocked and offline, indexed by `RUNSTATE_*` (`VCPUOP_get_runstate_info`).
    pub fn runstate(&self, id: u32) -> Result<[u64; 4], Errno> {
        let mut r = VcpuRunstateInfo::default();
        // SAFETY: r is a valid vcpu_runstate_info that Xen fills in.
        unsafe { hc::vcpu_op(VCPUOP_GET_RUNSTATE_INFO, id, (&raw mut r).cast())? };
        Ok(r.time)
    }

    /// Nanoseconds for `ticks` of this vCPU's TSC (boot phase timing, [`crate::boottime`]).
    pub fn tsc_delta_ns(&self, ticks: u64) -> u64 {
        self.time_info().delta_ns(ticks)
    }

    /// Our clock's `t` in Xen system time.
    pub fn xen_time_of(&self, t: u64) -> u64 {
        // Relaxed: as in `now_ns`.
        t.saturating_sub(CLOCK_OFFSET_NS.load(Ordering::Relaxed))
            .max(1)
    }

    /// Blocks this vCPU until a port is pending, an IPI arrives or our clock reaches
    /// `deadline_ns` (0: none); see [`irq::wait`].
    pub fn wait(&self, ports: &[Port], deadline_ns: u64) -> usize {
        let d = if deadline_ns == 0 {
            0
        } else {
            self.xen_time_of(deadline_ns)
        };
        irq::wait(ports, d, || self.xen_now_ns())
    }
}

impl Clock for Xen {
    fn now_ns(&self) -> u64 {
        // Relaxed: the offset changes only in `resumed_in_new_domain`, on vCPU 0 while
        // every other vCPU is down.
        self.xen_now_ns() + CLOCK_OFFSET_NS.load(Ordering::Relaxed)
    }
}

impl EventChannels for Xen {
    fn notify(&self, port: Port) -> Result<(), Errno> {
        let mut s = ev::EvtchnSend { port };
        // SAFETY: s is a valid evtchn_send.
        unsafe { hc::event_channel_op(ev::EVTCHNOP_send, (&raw mut s).cast()) }.map(drop)
    }

    fn take_pending(&self, port: Port) -> bool {
        // The bit's AcqRel clear: acquire pairs with Xen's locked set after it wrote the
        // data the event announces (ring indices).
        guest::xen::evtchn::take(irq::words(), port)
    }

    fn alloc_unbound(&self, remote: DomId) -> Result<Port, Errno> {
        let mut a = ev::EvtchnAllocUnbound {
            dom: DOMID_SELF,
            remote_dom: remote,
            port: 0,
        };
        // SAFETY: a is a valid evtchn_alloc_unbound.
        unsafe { hc::event_channel_op(ev::EVTCHNOP_alloc_unbound, (&raw mut a).cast())? };
        Ok(a.port)
    }

    fn bind_interdomain(&self, remote: DomId, remote_port: Port) -> Result<Port, Errno> {
        let mut b = ev::EvtchnBindInterdomain {
            remote_dom: remote,
            remote_port,
            local_port: 0,
        };
        // SAFETY: b is a valid evtchn_bind_interdomain.
        unsafe { hc::event_channel_op(ev::EVTCHNOP_bind_interdomain, (&raw mut b).cast())? };
        Ok(b.local_port)
    }

    fn close(&self, port: Port) -> Result<(), Errno> {
        let mut c = ev::EvtchnClose { port };
        // SAFETY: c is a valid evtchn_close.
        unsafe { hc::event_channel_op(ev::EVTCHNOP_close, (&raw mut c).cast()) }.map(drop)
    }

    fn unmask(&self, port: Port) -> Result<(), Errno> {
        let mut u = ev::EvtchnUnmask { port };
        // SAFETY: u is a valid evtchn_unmask.
        unsafe { hc::event_channel_op(ev::EVTCHNOP_unmask, (&raw mut u).cast()) }.map(drop)
    }
}

impl Sched for Xen {
    /// Not `SCHEDOP_poll`: the vCPU halts with interrupts on until an event's upcall or
    /// its single-shot timer wakes it ([`irq::wait`]).
    fn poll(&self, ports: &[Port], deadline_ns: u64) -> Result<(), Errno> {
        self.wait(ports, deadline_ns);
        Ok(())
    }

    fn shutdown(&self, reason: ShutdownReason) -> Result<(), Errno> {
        let mut s = SchedShutdown {
            reason: reason as u32,
        };
        // SAFETY: SCHEDOP_shutdown takes a pointer to sched_shutdown.
        unsafe { hc::sched_op(SCHEDOP_shutdown, (&raw mut s).cast()) }.map(drop)
    }

    fn suspend(&self) -> Result<SuspendOutcome, Errno> {
        let mut s = SchedShutdown {
            reason: ShutdownReason::Suspend as u32,
        };
        // SAFETY: SCHEDOP_shutdown takes a pointer to sched_shutdown; for a PVH guest
        // SHUTDOWN_suspend has no further argument. It returns when we run again.
        let rax = unsafe { hc::sched_op(SCHEDOP_shutdown, (&raw mut s).cast()) }?;
        Ok(SuspendOutcome::from_return(rax))
    }
}

impl MemoryReservation for Xen {
    fn populate_physmap(&mut self, gfns: &[Gfn], order: u32) -> Result<usize, Errno> {
        self.reservation(mem::XENMEM_POPULATE_PHYSMAP, gfns, order)
    }

    fn decrease_reservation(&mut self, gfns: &[Gfn], order: u32) -> Result<usize, Errno> {
        self.reservation(mem::XENMEM_DECREASE_RESERVATION, gfns, order)
    }

    fn current_reservation(&self) -> Result<u64, Errno> {
        let mut d = DOMID_SELF;
        // SAFETY: XENMEM_current_reservation takes a pointer to a domid_t.
        unsafe { hc::memory_op(mem::XENMEM_CURRENT_RESERVATION, (&raw mut d).cast()) }
    }

    fn maximum_reservation(&self) -> Result<u64, Errno> {
        let mut d = DOMID_SELF;
        // SAFETY: XENMEM_maximum_reservation takes a pointer to a domid_t.
        unsafe { hc::memory_op(mem::XENMEM_MAXIMUM_RESERVATION, (&raw mut d).cast()) }
    }
}

impl GrantOps for Xen {
    fn query_size(&mut self) -> Result<(u32, u32), Errno> {
        let mut q = GnttabQuerySize {
            dom: DOMID_SELF,
            ..Default::default()
        };
        // SAFETY: one gnttab_query_size for GNTTABOP_query_size.
        unsafe { hc::grant_table_op(GNTTABOP_QUERY_SIZE, (&raw mut q).cast(), 1)? };
        match q.status {
            0 => Ok((q.nr_frames, q.max_nr_frames)),
            _ => Err(Errno::EINVAL),
        }
    }

    fn add_table_frame(&mut self, idx: u32, gfn: Gfn) -> Result<(), Errno> {
        let mut xatp = XenAddToPhysmap {
            domid: DOMID_SELF,
            size: 0,
            space: mapspace::GRANT_TABLE,
            idx: idx as u64,
            gpfn: gfn,
        };
        // SAFETY: xatp is a valid xen_add_to_physmap; the caller picked a gfn without RAM.
        unsafe { hc::memory_op(mem::XENMEM_ADD_TO_PHYSMAP, (&raw mut xatp).cast()) }.map(drop)
    }

    fn map_grant_refs(&mut self, ops: &mut [GnttabMapGrantRef]) -> Result<(), Errno> {
        // SAFETY: `ops` is a live array of gnttab_map_grant_ref that Xen fills in.
        unsafe {
            hc::grant_table_op(
                GNTTABOP_MAP_GRANT_REF,
                ops.as_mut_ptr().cast(),
                ops.len() as u32,
            )
        }
        .map(drop)
    }

    fn unmap_grant_refs(&mut self, ops: &mut [GnttabUnmapGrantRef]) -> Result<(), Errno> {
        // SAFETY: `ops` is a live array of gnttab_unmap_grant_ref that Xen fills in.
        unsafe {
            hc::grant_table_op(
                GNTTABOP_UNMAP_GRANT_REF,
                ops.as_mut_ptr().cast(),
                ops.len() as u32,
            )
        }
        .map(drop)
    }
}

/// Nanoseconds this vCPU has spent on a physical CPU (Xen's runstate account; 0 before
/// Xen is set up or if Xen refuses): the balloon's step split.
///
/// With this vCPU's runstate area registered it is a read of that area plus Xen system
/// time since the area's entry stamp (no hypercall: ~50 µs each under TCG, four per
/// balloon step); else `VCPUOP_get_runstate_info`.
pub fn running_ns() -> u64 {
    let me = crate::arch::percpu::this();
    let Some(xen) = XEN.get() else {
        return 0;
    };
    // Relaxed: stored by this vCPU only (`irq::setup_this_cpu`).
    let area = me.runstate.load(Ordering::Relaxed);
    if area.is_null() {
        return xen
            .runstate(me.id)
            .map_or(0, |t| t[xen_bindings::abi::vcpu::RUNSTATE_RUNNING]);
    }
    // SAFETY: `area` is this vCPU's registered runstate area in its per-CPU block (lives
    // as long as the kernel); Xen rewrites it only while this vCPU is switched out, which
    // the entry-stamp check in `running_ns` detects, so volatile reads suffice.
    unsafe {
        guest::xen::clock::running_ns(
            || (&raw const (*area).state_entry_time).read_volatile(),
            || guest::xen::clock::RunstateSnapshot {
                state: (&raw const (*area).state).read_volatile(),
                running_ns: (&raw const (*area).time[xen_bindings::abi::vcpu::RUNSTATE_RUNNING])
                    .read_volatile(),
            },
            || xen.xen_now_ns(),
        )
    }
}

/// [`running_ns`] only where it costs no hypercall (this vCPU's runstate area is
/// registered): for callers that must not add ~50 µs (the boot's phase marks).
pub fn running_ns_from_area() -> Option<u64> {
    // Relaxed: stored by this vCPU only (`irq::setup_this_cpu`).
    let registered = !crate::arch::percpu::this()
        .runstate
        .load(Ordering::Relaxed)
        .is_null();
    (registered && XEN.get().is_some()).then(running_ns)
}

/// Zero the `2^order` frames at `gfn` before the balloon gives them back to Xen.
pub fn scrub_frames(gfn: Gfn, order: u32) {
    let bytes = 4096usize << order;
    // SAFETY: the balloon calls this only for a block the model took Allocated to it for
    // zeroing (off the free lists, nobody else's, still backed: it goes Offline and to Xen
    // only afterwards) in online RAM, which is identity-mapped (boot RAM at boot,
    // hot-added sections before they go online).
    unsafe { core::ptr::write_bytes((gfn << 12) as *mut u8, 0, bytes) };
}

/// Xen system time for log timestamps (0 before Xen is set up).
pub fn uptime_ns() -> u64 {
    XEN.get().map_or(0, |x| x.now_ns())
}

/// The one hypervisor handle, set once during boot.
pub static XEN: spin::Once<Xen> = spin::Once::new();

/// Console notifications dropped because the ring stayed full (for the census later).
pub static CONSOLE_DROPPED: AtomicU32 = AtomicU32::new(0);
