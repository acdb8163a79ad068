//! The mapping side: slots in the device range for foreign pages, batched grant
//! map/unmap, and reclaiming a dead peer's pages.
//!
//! A slot is a pfn of a device subsection of the memory model. The mapper adds device
//! subsections (2 MiB, 512 slots, 8 KiB of memmap each) inside the device window on
//! demand, lowest first; their pages start Unpopulated. A map puts the foreign frame at
//! the slot's guest-physical address and records `Foreign{domid, gref, handle}` in the
//! slot's descriptor; an unmap returns it to Unpopulated. Foreign pages are never in the
//! frame allocator, never Reserved, and not counted as our RAM (`Census::ram_pages`
//! counts Reserved RAM, Free and Allocated only); walkers skip them by state.
//!
//! The model's descriptors are the one record of which slot holds what: the free-slot
//! list here only says where to look first, and every slot taken from it is checked to
//! be Unpopulated.

use alloc::vec::Vec;
use core::fmt;

use xen_bindings::abi::grant_table::{
    gntmap, gntst, GnttabMapGrantRef, GnttabUnmapGrantRef, GrantHandle, GrantRef,
};
use xen_bindings::traits::{DomId, GrantOps};
use xen_bindings::Errno;

use crate::mm::geometry::PAGES_PER_SUBSECTION;
use crate::mm::{
    ForeignMap, MemModel, MemmapStorage, MmError, PageState, Pfn, PfnRange,
    MEMMAP_BYTES_PER_SUBSECTION, SECTION_TABLE_CHUNK_BYTES,
};

/// Most ops per map or unmap hypercall.
pub const MAX_BATCH: usize = 64;
/// `DOMID_XEN`: owner recorded for our own grant-table frames placed in device slots.
pub const DOMID_XEN: DomId = 0x7ff2;
/// Handle recorded for a grant-table frame (no map handle: it is not a grant mapping).
pub const TABLE_FRAME_HANDLE: GrantHandle = u32::MAX;
/// A status no `GNTST_*` has: "Xen did not reach this op".
const NOT_DONE: i16 = 1;

/// Why a foreign page could not be mapped. The slot stays Unpopulated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// `GNTST_bad_domain`: the granter does not exist (or is dying).
    BadDomain,
    /// `GNTST_bad_gntref`: no such ref in the granter's table.
    BadGref,
    /// `GNTST_permission_denied`: refused by policy (XSM).
    PermissionDenied,
    /// `GNTST_general_error`: the entry does not grant us (this) access.
    General,
    /// `GNTST_bad_page`: the granted frame is not valid.
    BadPage,
    /// `GNTST_eagain`: the granted frame is paged out; retry later.
    Again,
    /// Another `GNTST_*`.
    Status(i16),
    /// The hypercall failed before reaching this op.
    Hypercall(Errno),
    /// The device window has no room for another subsection of slots.
    WindowFull,
    /// The memory model refused (adding slots, or recording the mapping).
    Model(MmError),
    /// More than [`MAX_BATCH`] requests.
    BatchTooLarge,
}

impl MapError {
    fn from_status(s: i16) -> MapError {
        match s {
            gntst::BAD_DOMAIN => MapError::BadDomain,
            gntst::BAD_GNTREF => MapError::BadGref,
            gntst::PERMISSION_DENIED => MapError::PermissionDenied,
            gntst::GENERAL_ERROR => MapError::General,
            gntst::BAD_PAGE => MapError::BadPage,
            gntst::EAGAIN => MapError::Again,
            s => MapError::Status(s),
        }
    }
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A grant of another domain to map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapRequest {
    /// The granting domain.
    pub domid: DomId,
    /// Its grant ref.
    pub gref: GrantRef,
    /// Map read-only.
    pub readonly: bool,
}

/// What an unmap did. Either way the slot is Unpopulated again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unmapped {
    /// Xen unmapped it.
    Done(ForeignMap),
    /// Xen no longer knew the mapping (`GNTST_bad_handle`): nothing was mapped any more.
    AlreadyGone(ForeignMap),
}

/// Why a slot could not be unmapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnmapError {
    /// The pfn is not a Foreign page of the device range (or is a grant-table frame).
    NotMapped(Pfn),
    /// Xen refused with this status; the slot stays Foreign (retry later).
    Status(i16),
    /// The hypercall failed before reaching this op; the slot stays Foreign.
    Hypercall(Errno),
    /// More than [`MAX_BATCH`] pfns.
    BatchTooLarge,
}

impl fmt::Display for UnmapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What [`ForeignMapper::reclaim_domain`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reclaimed {
    /// Slots Xen unmapped.
    pub unmapped: u64,
    /// Slots whose mapping Xen had already dropped.
    pub already_gone: u64,
    /// Slots still Foreign (Xen refused the unmap; retry).
    pub failed: u64,
}

/// Counters, for logs and xenstore.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapCounters {
    /// Pages mapped.
    pub mapped: u64,
    /// Map requests that failed.
    pub map_failures: u64,
    /// Pages unmapped (including already gone).
    pub unmapped: u64,
    /// Of those, already gone at Xen.
    pub already_gone: u64,
    /// Unmap requests that failed.
    pub unmap_failures: u64,
    /// Map and unmap hypercalls issued.
    pub batches: u64,
    /// Device subsections added.
    pub subsections_added: u64,
    /// Device subsections removed again (every slot free: memmap given back).
    pub subsections_removed: u64,
}

/// Numbers published under `data/grant/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapperStatus {
    /// Foreign pages mapped now (grant mappings, not table frames).
    pub foreign_mapped: u64,
    /// Free slots.
    pub slots_free: u64,
    /// Slots in all: the pages of the device subsections added for foreign pages, and
    /// the table frames (their subsections hold nothing else):
    /// `foreign_mapped + slots_free + table_frames`.
    pub slots_total: u64,
    /// Our grant-table frames held in slots.
    pub table_frames: u64,
    /// Pages of the table frames' subsections that hold no frame (Unpopulated, never
    /// a slot): the model's device census is `slots_total + table_spare`.
    pub table_spare: u64,
}

impl MapperStatus {
    /// `(key, value)` pairs for xenstore.
    pub fn fields(&self) -> [(&'static str, u64); 4] {
        [
            ("grant/foreign-mapped", self.foreign_mapped),
            ("grant/device-slots-free", self.slots_free),
            ("grant/device-slots", self.slots_total),
            ("grant/table-frames", self.table_frames),
        ]
    }
}

/// Slots for foreign pages in the device window, and the map/unmap logic.
pub struct ForeignMapper {
    window: PfnRange,
    added: Vec<PfnRange>,
    /// Free slots, highest first (pop takes the lowest).
    free: Vec<Pfn>,
    foreign: u64,
    table_frames: u64,
    /// Subsections given to table frames (in `added`; never a foreign page's slot).
    table_subsections: u64,
    counters: MapCounters,
}

impl ForeignMapper {
    /// A mapper over the device window (`HotplugWindow::device`); nothing is added to the
    /// model until the first map.
    pub fn new(window: PfnRange) -> ForeignMapper {
        ForeignMapper {
            window,
            added: Vec::new(),
            free: Vec::new(),
            foreign: 0,
            table_frames: 0,
            table_subsections: 0,
            counters: MapCounters::default(),
        }
    }

    /// The device window.
    pub fn window(&self) -> PfnRange {
        self.window
    }

    /// Device subsections added so far, in order.
    pub fn subsections(&self) -> &[PfnRange] {
        &self.added
    }

    /// Counters.
    pub fn counters(&self) -> &MapCounters {
        &self.counters
    }

    /// Numbers for xenstore.
    pub fn status(&self) -> MapperStatus {
        MapperStatus {
            foreign_mapped: self.foreign,
            slots_free: self.free.len() as u64,
            slots_total: (self.added.len() as u64 - self.table_subsections) * PAGES_PER_SUBSECTION
                + self.table_frames,
            table_frames: self.table_frames,
            table_spare: self.table_subsections * PAGES_PER_SUBSECTION - self.table_frames,
        }
    }

    /// Add the lowest absent subsection of the window as device memory (memmap built,
    /// every page Unpopulated, then active) and make its pages free slots.
    fn grow<S: MemmapStorage>(&mut self, mm: &MemModel<S>) -> Result<PfnRange, MapError> {
        let start = (self.window.start.0..self.window.end.0)
            .step_by(PAGES_PER_SUBSECTION as usize)
            .map(Pfn)
            .find(|&p| !mm.pfn_valid(p) && p.0 + PAGES_PER_SUBSECTION <= self.window.end.0)
            .ok_or(MapError::WindowFull)?;
        let range = PfnRange::from_count(start, PAGES_PER_SUBSECTION);
        // Memmap storage from our own RAM if the provider is short (outside the model's
        // lock; see `crate::mm::storage`). A shortfall shows as the add's error.
        let _ = mm.refill_storage(MEMMAP_BYTES_PER_SUBSECTION + SECTION_TABLE_CHUNK_BYTES);
        if let Err(e) = mm.add_subsections(range, crate::mm::SectionKind::Device) {
            mm.trim_storage();
            return Err(MapError::Model(e));
        }
        self.added.push(range);
        self.counters.subsections_added += 1;
        // Keep `free` sorted highest first so the lowest slot is handed out next.
        self.free.extend(range.iter());
        self.free.sort_unstable_by(|a, b| b.cmp(a));
        Ok(range)
    }

    /// An Unpopulated slot, adding a subsection when none is free.
    fn take_slot<S: MemmapStorage>(&mut self, mm: &MemModel<S>) -> Result<Pfn, MapError> {
        loop {
            let Some(pfn) = self.free.pop() else {
                self.grow(mm)?;
                continue;
            };
            let g = mm.read();
            match g.pfn_to_device_page(pfn).map(|p| p.state()) {
                Some(PageState::Unpopulated) => return Ok(pfn),
                other => log::error!("grant: free slot {pfn:?} is {other:?}; skipped"),
            }
        }
    }

    fn put_slot(&mut self, pfn: Pfn) {
        // Back on top: the next map reuses it.
        self.free.push(pfn);
    }

    /// Map a batch of at most [`MAX_BATCH`] grants, one slot each, with one
    /// `GNTTABOP_map_grant_ref`. Per request: the slot (now Foreign) or why not (slot
    /// stays Unpopulated and free). Fails as a whole only for a batch too large or when
    /// no slots can be had (nothing is mapped then).
    pub fn map_batch<S: MemmapStorage, G: GrantOps>(
        &mut self,
        mm: &MemModel<S>,
        xen: &mut G,
        reqs: &[MapRequest],
    ) -> Result<Vec<Result<Pfn, MapError>>, MapError> {
        if reqs.len() > MAX_BATCH {
            return Err(MapError::BatchTooLarge);
        }
        let mut slots = Vec::with_capacity(reqs.len());
        for _ in reqs {
            match self.take_slot(mm) {
                Ok(p) => slots.push(p),
                Err(e) => {
                    for &p in slots.iter().rev() {
                        self.put_slot(p);
                    }
                    return Err(e);
                }
            }
        }
        let mut ops: Vec<GnttabMapGrantRef> = reqs
            .iter()
            .zip(&slots)
            .map(|(r, pfn)| GnttabMapGrantRef {
                host_addr: pfn.addr(),
                flags: gntmap::HOST_MAP | if r.readonly { gntmap::READONLY } else { 0 },
                ref_: r.gref,
                dom: r.domid,
                status: NOT_DONE,
                handle: 0,
                dev_bus_addr: 0,
            })
            .collect();
        self.counters.batches += 1;
        let call = xen.map_grant_refs(&mut ops);
        let mut out = Vec::with_capacity(reqs.len());
        // Each op on its own status: even a failed call may have mapped a prefix.
        for (op, &pfn) in ops.iter().zip(&slots) {
            let r = match (op.status, call) {
                (gntst::OKAY, _) => self.record(mm, xen, pfn, op),
                (NOT_DONE, Err(e)) => Err(MapError::Hypercall(e)),
                (NOT_DONE, Ok(())) => Err(MapError::Status(NOT_DONE)),
                (s, _) => Err(MapError::from_status(s)),
            };
            if r.is_err() {
                self.put_slot(pfn);
                self.counters.map_failures += 1;
            }
            out.push(r);
        }
        Ok(out)
    }

    /// Record a successful map in the slot's descriptor; if the model refuses (a bug),
    /// undo the map at Xen so nothing stays mapped unrecorded.
    fn record<S: MemmapStorage, G: GrantOps>(
        &mut self,
        mm: &MemModel<S>,
        xen: &mut G,
        pfn: Pfn,
        op: &GnttabMapGrantRef,
    ) -> Result<Pfn, MapError> {
        let map = ForeignMap {
            domid: op.dom,
            gref: op.ref_,
            handle: op.handle,
        };
        match mm.map_foreign(pfn, map) {
            Ok(()) => {
                self.foreign += 1;
                self.counters.mapped += 1;
                Ok(pfn)
            }
            Err(e) => {
                log::error!("grant: model refused {map:?} at {pfn:?}: {e}; unmapping");
                let mut un = [GnttabUnmapGrantRef {
                    host_addr: pfn.addr(),
                    dev_bus_addr: 0,
                    handle: op.handle,
                    status: NOT_DONE,
                }];
                let _ = xen.unmap_grant_refs(&mut un);
                Err(MapError::Model(e))
            }
        }
    }

    /// Unmap a batch of at most [`MAX_BATCH`] slots with one `GNTTABOP_unmap_grant_ref`.
    /// Per slot: what was mapped (the slot is Unpopulated and free again), or why not
    /// (the slot stays Foreign).
    pub fn unmap_batch<S: MemmapStorage, G: GrantOps>(
        &mut self,
        mm: &MemModel<S>,
        xen: &mut G,
        pfns: &[Pfn],
    ) -> Result<Vec<Result<Unmapped, UnmapError>>, UnmapError> {
        if pfns.len() > MAX_BATCH {
            return Err(UnmapError::BatchTooLarge);
        }
        let mut out: Vec<Result<Unmapped, UnmapError>> = Vec::with_capacity(pfns.len());
        let mut todo: Vec<(usize, Pfn, ForeignMap)> = Vec::new();
        {
            let g = mm.read();
            for (i, &pfn) in pfns.iter().enumerate() {
                // A pfn named twice is unmapped once; the repeat is not mapped (any more).
                let repeat = todo.iter().any(|&(_, p, _)| p == pfn);
                match g.pfn_to_device_page(pfn).map(|p| p.state()) {
                    Some(PageState::Foreign(m)) if m.domid != DOMID_XEN && !repeat => {
                        todo.push((i, pfn, m));
                        out.push(Err(UnmapError::Status(NOT_DONE)));
                    }
                    _ => out.push(Err(UnmapError::NotMapped(pfn))),
                }
            }
        }
        if todo.is_empty() {
            return Ok(out);
        }
        let mut ops: Vec<GnttabUnmapGrantRef> = todo
            .iter()
            .map(|&(_, pfn, m)| GnttabUnmapGrantRef {
                host_addr: pfn.addr(),
                dev_bus_addr: 0,
                handle: m.handle,
                status: NOT_DONE,
            })
            .collect();
        self.counters.batches += 1;
        let call = xen.unmap_grant_refs(&mut ops);
        for (op, &(i, pfn, m)) in ops.iter().zip(&todo) {
            let r = match (op.status, call) {
                (gntst::OKAY, _) => Ok(Unmapped::Done(m)),
                (gntst::BAD_HANDLE, _) => Ok(Unmapped::AlreadyGone(m)),
                (NOT_DONE, Err(e)) => Err(UnmapError::Hypercall(e)),
                (s, _) => Err(UnmapError::Status(s)),
            };
            match r {
                Ok(u) => {
                    let was = mm
                        .unmap_foreign(pfn)
                        .expect("a Foreign device page seen under the guard");
                    debug_assert_eq!(was, m);
                    self.foreign -= 1;
                    self.counters.unmapped += 1;
                    if matches!(u, Unmapped::AlreadyGone(_)) {
                        self.counters.already_gone += 1;
                        log::info!("grant: {m:?} at {pfn:?} was already unmapped by Xen");
                    }
                    self.put_slot(pfn);
                }
                Err(_) => self.counters.unmap_failures += 1,
            }
            out[i] = r;
        }
        Ok(out)
    }

    /// Every slot mapping a grant of `domid`, ascending (a walk of the device window's
    /// descriptors).
    pub fn slots_of<S: MemmapStorage>(&self, mm: &MemModel<S>, domid: DomId) -> Vec<Pfn> {
        let g = mm.read();
        self.added
            .iter()
            .flat_map(|r| g.active_pages(*r))
            .filter(|p| matches!(p.state(), PageState::Foreign(m) if m.domid == domid))
            .map(|p| p.pfn())
            .collect()
    }

    /// The peer `domid` died (its xenstore directory vanished, or the kernel learnt it
    /// otherwise): unmap every slot holding one of its grants, in batches. A mapping Xen
    /// already dropped just returns its slot. Slots Xen refuses to unmap stay Foreign
    /// and are counted in `failed` (call again later).
    pub fn reclaim_domain<S: MemmapStorage, G: GrantOps>(
        &mut self,
        mm: &MemModel<S>,
        xen: &mut G,
        domid: DomId,
    ) -> Reclaimed {
        let mut rep = Reclaimed::default();
        if domid == DOMID_XEN {
            return rep;
        }
        let slots = self.slots_of(mm, domid);
        for chunk in slots.chunks(MAX_BATCH) {
            let res = self
                .unmap_batch(mm, xen, chunk)
                .expect("chunks are at most MAX_BATCH");
            for r in res {
                match r {
                    Ok(Unmapped::Done(_)) => rep.unmapped += 1,
                    Ok(Unmapped::AlreadyGone(_)) => rep.already_gone += 1,
                    Err(_) => rep.failed += 1,
                }
            }
        }
        log::info!("grant: reclaimed d{domid}: {rep:?}");
        self.shrink(mm);
        rep
    }

    /// After resuming in a new domain: our grant-table frames are not in the save image,
    /// so put every one back at the slot it had (`XENMEM_add_to_physmap` again; the
    /// model still records the slots as Xen's frames). Returns how many were re-added.
    pub fn readd_table_frames<S: MemmapStorage, G: GrantOps>(
        &self,
        mm: &MemModel<S>,
        xen: &mut G,
    ) -> Result<u32, Errno> {
        let frames = self.slots_of(mm, DOMID_XEN);
        let g = mm.read();
        let mut n = 0;
        for pfn in frames {
            let Some(PageState::Foreign(m)) = g.pfn_to_device_page(pfn).map(|p| p.state()) else {
                continue;
            };
            if m.handle == TABLE_FRAME_HANDLE {
                xen.add_table_frame(m.gref, pfn.0)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// After resuming in a new domain: the grant mappings we held exist no more (they
    /// were mappings in the old domain). Every slot holding another domain's page goes
    /// back to Unpopulated and free, without a hypercall. Returns how many.
    pub fn forget_foreign<S: MemmapStorage>(&mut self, mm: &MemModel<S>) -> usize {
        let mut n = 0;
        let slots: Vec<Pfn> = {
            let g = mm.read();
            self.added
                .iter()
                .flat_map(|r| g.active_pages(*r))
                .filter(|p| matches!(p.state(), PageState::Foreign(m) if m.domid != DOMID_XEN))
                .map(|p| p.pfn())
                .collect()
        };
        for pfn in slots {
            match mm.unmap_foreign(pfn) {
                Ok(_) => {
                    self.put_slot(pfn);
                    self.foreign -= 1;
                    n += 1;
                }
                Err(e) => log::error!("grant: forgetting {pfn:?} after resume: {e}"),
            }
        }
        n
    }

    /// Remove every device subsection whose 512 slots are all free (every page
    /// Unpopulated): inactive, grace period, memmap given back to the storage provider,
    /// emptied storage frames back to the allocator. Called after a round of unmaps (not
    /// after each batch: a map/unmap loop would add and remove subsections every time).
    /// Returns the subsections removed.
    pub fn shrink<S: MemmapStorage>(&mut self, mm: &MemModel<S>) -> usize {
        let mut free_in = alloc::collections::BTreeMap::<u64, u64>::new();
        for p in &self.free {
            *free_in.entry(p.subsection()).or_default() += 1;
        }
        let mut removed = 0;
        let mut kept = Vec::with_capacity(self.added.len());
        for &r in &self.added {
            if free_in.get(&r.start.subsection()) != Some(&PAGES_PER_SUBSECTION) {
                kept.push(r);
                continue;
            }
            match mm.remove_subsections(r) {
                Ok(()) => {
                    self.free.retain(|p| !r.contains(*p));
                    removed += 1;
                }
                Err(e) => {
                    log::error!("grant: removing free device subsection {r:?}: {e}");
                    kept.push(r);
                }
            }
        }
        self.added = kept;
        if removed != 0 {
            self.counters.subsections_removed += removed as u64;
            let frames = mm.trim_storage();
            log::debug!(
                "grant: removed {removed} free device subsection(s), {} KiB of memmap back ({frames} storage frame(s) to the allocator)",
                removed * MEMMAP_BYTES_PER_SUBSECTION / 1024
            );
        }
        removed
    }

    /// Place grant-table frames `first..first + n` of our own table in `n` contiguous
    /// fresh slots (`XENMEM_add_to_physmap`, space grant_table), recording each as
    /// `Foreign{DOMID_XEN, gref: frame index, TABLE_FRAME_HANDLE}`: the frames are Xen's,
    /// not our RAM. Returns the slots; the kernel maps them and views them as the
    /// table's entries. `n` is at most 512 (one subsection).
    pub fn map_table_frames<S: MemmapStorage, G: GrantOps>(
        &mut self,
        mm: &MemModel<S>,
        xen: &mut G,
        first: u32,
        n: u32,
    ) -> Result<PfnRange, MapError> {
        if n as u64 > PAGES_PER_SUBSECTION {
            return Err(MapError::BatchTooLarge);
        }
        let fresh = self.grow(mm)?;
        let range = PfnRange::from_count(fresh.start, n as u64);
        // The table frames keep their subsection to themselves: foreign pages go to
        // others, which empty (and are removed, `shrink`) when every mapping is undone.
        self.free.retain(|p| !fresh.contains(*p));
        for (i, pfn) in range.iter().enumerate() {
            let idx = first + i as u32;
            if let Err(e) = xen.add_table_frame(idx, pfn.0) {
                // Frames already added stay where Xen put them (there is no call to take
                // a grant frame back out of the physmap) and stay recorded, their
                // subsection a table one; with none added it is an ordinary one.
                if i == 0 {
                    self.free.extend(fresh.iter());
                    self.free.sort_unstable_by(|a, b| b.cmp(a));
                } else {
                    self.table_subsections += 1;
                }
                return Err(MapError::Hypercall(e));
            }
            let map = ForeignMap {
                domid: DOMID_XEN,
                gref: idx,
                handle: TABLE_FRAME_HANDLE,
            };
            // A fresh slot is Unpopulated in a device subsection: the model cannot refuse.
            mm.map_foreign(pfn, map)
                .expect("fresh device slot takes a table frame");
            self.table_frames += 1;
        }
        self.table_subsections += 1;
        Ok(range)
    }
}
