//! The small interfaces the guest's logic is written against.
//!
//! The kernel implements them with real hypercalls (`guest/src/xen/hv.rs`); the host tests
//! implement them with the simulated Xen ([`crate::sim`], feature `sim`). Logic above them
//! (xenstore client, balloon, grants) never issues a hypercall itself.

use crate::Errno;

/// An event-channel port.
pub type Port = u32;
/// A domain id.
pub type DomId = u16;
/// A guest frame number (for PVH: the guest's own pfn).
pub type Gfn = u64;

/// Why a domain shuts down (`SHUTDOWN_*` in sched.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ShutdownReason {
    Poweroff = 0,
    Reboot = 1,
    Suspend = 2,
    Crash = 3,
    Watchdog = 4,
}

/// Xen system time: nanoseconds since the domain's clock started, monotonic.
pub trait Clock {
    fn now_ns(&self) -> u64;
}

/// Event channels of the calling domain (event_channel.h), 2-level ABI.
pub trait EventChannels {
    /// `EVTCHNOP_send`.
    fn notify(&self, port: Port) -> Result<(), Errno>;
    /// Test-and-clear the port's pending bit in shared_info. True if it was pending.
    fn take_pending(&self, port: Port) -> bool;
    /// `EVTCHNOP_alloc_unbound` for `remote` to bind to.
    fn alloc_unbound(&self, remote: DomId) -> Result<Port, Errno>;
    /// `EVTCHNOP_bind_interdomain`.
    fn bind_interdomain(&self, remote: DomId, remote_port: Port) -> Result<Port, Errno>;
    /// `EVTCHNOP_close`.
    fn close(&self, port: Port) -> Result<(), Errno>;
    /// `EVTCHNOP_unmask`.
    fn unmask(&self, port: Port) -> Result<(), Errno>;
}

/// Scheduler operations (sched.h).
pub trait Sched {
    /// `SCHEDOP_poll`: block until one of `ports` is pending or Xen system time reaches
    /// `deadline_ns` (0: no deadline). Returns at once if a port is already pending.
    fn poll(&self, ports: &[Port], deadline_ns: u64) -> Result<(), Errno>;
    /// `SCHEDOP_shutdown`. Under real Xen it does not return on success.
    fn shutdown(&self, reason: ShutdownReason) -> Result<(), Errno>;
    /// `SCHEDOP_shutdown(SHUTDOWN_suspend)`: returns once the domain runs again, saying
    /// whether it did so in a new domain (restore, migration) or the suspend was cancelled
    /// (`xl save -c`, a failed save). Xen returns 0 / 1; libxl patches the 1 in only when
    /// `HVM_PARAM_CALLBACK_IRQ` is set (`xg_resume.c`, `modify_returncode`).
    fn suspend(&self) -> Result<SuspendOutcome, Errno>;
}

/// How a suspend ended (the return value of `SCHEDOP_shutdown(SHUTDOWN_suspend)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SuspendOutcome {
    /// 0: running in a new domain: shared_info, grant frames, event channels and
    /// registrations are gone; the xenstore and console rings are zeroed, their ports new.
    Resumed,
    /// 1: the same domain carries on; nothing was lost.
    Cancelled,
}

impl SuspendOutcome {
    /// From the hypercall's return value (anything but 0 means the domain carried on).
    pub fn from_return(rax: u64) -> SuspendOutcome {
        if rax == 0 {
            SuspendOutcome::Resumed
        } else {
            SuspendOutcome::Cancelled
        }
    }
}

/// The domain's memory reservation (memory.h). Extents are `2^order` pages each.
pub trait MemoryReservation {
    /// `XENMEM_populate_physmap`: back `gfns[i] .. gfns[i] + 2^order` with fresh frames.
    /// Returns how many extents (a prefix of `gfns`) were populated; fewer than asked is
    /// normal (Xen preempts, or the domain hit its limit).
    fn populate_physmap(&mut self, gfns: &[Gfn], order: u32) -> Result<usize, Errno>;
    /// `XENMEM_decrease_reservation`: give the frames behind the extents back to Xen.
    /// Returns how many extents (a prefix of `gfns`) were released.
    fn decrease_reservation(&mut self, gfns: &[Gfn], order: u32) -> Result<usize, Errno>;
    /// `XENMEM_current_reservation`: pages the domain owns (Xen's `tot_pages`).
    fn current_reservation(&self) -> Result<u64, Errno>;
    /// `XENMEM_maximum_reservation`: Xen's limit for the domain (`max_pages`).
    fn maximum_reservation(&self) -> Result<u64, Errno>;
}

/// One v1 grant entry (`struct grant_entry_v1`) as the guest and Xen share it: the same
/// 8-byte layout as [`crate::abi::grant_table::GrantEntryV1`], with every field atomic
/// because Xen (on behalf of a peer) updates `flags` while the guest reads and writes the
/// entry. The kernel views its mapped grant frames as `&[GrantEntryShared]`; the
/// simulated Xen hands out the same type.
#[repr(C)]
#[derive(Debug, Default)]
pub struct GrantEntryShared {
    /// `GTF_*` ([`crate::abi::grant_table::gtf`]).
    pub flags: core::sync::atomic::AtomicU16,
    /// The domain the grant is for.
    pub domid: core::sync::atomic::AtomicU16,
    /// The granted frame (the granter's gfn).
    pub frame: core::sync::atomic::AtomicU32,
}
crate::assert_layout!(GrantEntryShared, size = 8, flags = 0, domid = 2, frame = 4);
const _: () = assert!(
    core::mem::size_of::<GrantEntryShared>()
        == core::mem::size_of::<crate::abi::grant_table::GrantEntryV1>()
);

/// Grant-table operations of the calling domain (grant_table.h, v1 entries).
///
/// The granting side needs no hypercall per grant (the guest writes its own entries);
/// what it needs from Xen is the table itself: for an auto-translated (PVH) guest each
/// table frame is placed into the guest's physical address space with
/// `XENMEM_add_to_physmap` (space `XENMAPSPACE_grant_table`, `idx` = frame index,
/// `gpfn` = where). The mapping side issues batched `GNTTABOP_map_grant_ref` /
/// `GNTTABOP_unmap_grant_ref`.
pub trait GrantOps {
    /// `GNTTABOP_query_size` for `DOMID_SELF`: `(nr_frames, max_nr_frames)` of our table.
    fn query_size(&mut self) -> Result<(u32, u32), Errno>;
    /// `XENMEM_add_to_physmap(XENMAPSPACE_grant_table, idx, gfn)`: make grant-table frame
    /// `idx` appear at `gfn` (Xen grows the table to `idx + 1` frames if needed). `gfn`
    /// must be a pfn without RAM behind it (Xen would drop the page that was there).
    fn add_table_frame(&mut self, idx: u32, gfn: Gfn) -> Result<(), Errno>;
    /// `GNTTABOP_map_grant_ref` on a batch. `Err` means the hypercall itself failed;
    /// otherwise every op's `status` (`GNTST_*`) and, on `GNTST_okay`, `handle` are set.
    /// Even with `Err`, ops Xen reached before failing carry their status: callers must
    /// pre-set a status that is no `GNTST_*` value and inspect each op afterwards.
    fn map_grant_refs(
        &mut self,
        ops: &mut [crate::abi::grant_table::GnttabMapGrantRef],
    ) -> Result<(), Errno>;
    /// `GNTTABOP_unmap_grant_ref` on a batch; statuses as for [`GrantOps::map_grant_refs`].
    fn unmap_grant_refs(
        &mut self,
        ops: &mut [crate::abi::grant_table::GnttabUnmapGrantRef],
    ) -> Result<(), Errno>;
}
