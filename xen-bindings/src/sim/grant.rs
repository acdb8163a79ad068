//! Simulated grant tables: the guest's own v1 table (which simulated peers map) and
//! simulated peer domains with their own tables and frames (which the guest maps).
//!
//! [`SimGrants`] is a clonable handle like [`super::SimXen`]: give one clone to the code
//! under test (it implements [`GrantOps`]) and keep one to play the peers, inject faults
//! and inspect state. It is independent of `SimXen` and `SimMemory`; a test that wants
//! both checks their interplay itself (e.g. that no mapped gfn is populated RAM).
//!
//! What is modelled after Xen 4.17 (common/grant_table.c), as far as a guest observes it:
//! * **Map** (`map_grant_ref`), checked in Xen's order: `GNTMAP_host_map` must be set and
//!   `host_addr` page aligned (`GNTST_general_error`); the granting domain must exist and
//!   not be dying (`GNTST_bad_domain`); XSM may refuse ([`GrantFaults::deny`],
//!   `GNTST_permission_denied`); the ref must be inside the granter's table
//!   (`GNTST_bad_gntref`); the entry must be `GTF_permit_access` for the mapping domain
//!   and, for a writable map, not `GTF_readonly` (`GNTST_general_error`, as Xen's
//!   `_set_status_v1`); the granted frame must exist (`GNTST_bad_page`). On success the
//!   entry gets `GTF_reading` (and `GTF_writing` for a writable map) for as long as any
//!   mapping of it exists, and the map gets a fresh handle.
//! * **Unmap** (`unmap_grant_ref`): an unknown handle is `GNTST_bad_handle`; a
//!   `host_addr` other than the one mapped is `GNTST_general_error`. The last unmap of an
//!   entry clears `GTF_reading`/`GTF_writing`.
//! * **Peer death** ([`SimGrants::destroy_peer`]): the domain becomes dying. New maps of
//!   its grants fail with `GNTST_bad_domain` (Xen may answer a map of a dying domain's
//!   grant with another error while the zombie exists; once it is gone it is
//!   `bad_domain`, which is what a guest must handle anyway). Mappings the guest already
//!   holds stay valid: Xen keeps the dying domain as a zombie whose pages are pinned by
//!   those mappings, and unmapping them returns `GNTST_okay`; the zombie disappears with
//!   the last one. Mappings the dying peer held of *our* grants are dropped at once
//!   (Xen's `gnttab_release_mappings` at domain kill), clearing our entries'
//!   `GTF_reading`/`GTF_writing` so a deferred end-access can complete.
//! * **Not Xen**: [`SimGrants::revoke_mappings_of`] forgets the guest's mappings of a
//!   peer as if they had been torn down behind its back (unmap then says
//!   `GNTST_bad_handle`) — a fault to test that the guest treats "already gone" as gone.
//!   Mapping over a gfn that already holds a grant mapping is refused with
//!   `GNTST_general_error` (real Xen would silently replace it): it is a guest bug the
//!   tests must see.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;
use spin::{Mutex, MutexGuard};

use crate::abi::grant_table::{
    gntmap, gntst, gtf, GnttabMapGrantRef, GnttabUnmapGrantRef, GrantEntryV1, GrantHandle,
    GrantRef, GRANT_ENTRIES_PER_FRAME_V1,
};
use crate::traits::{DomId, Gfn, GrantEntryShared, GrantOps};
use crate::Errno;

/// Bytes in a frame.
pub const FRAME_BYTES: usize = 4096;
/// A frame's contents.
pub type Frame = [u8; FRAME_BYTES];

/// Fault injection.
#[derive(Clone, Debug, Default)]
pub struct GrantFaults {
    /// Fail the next N map, unmap or add_table_frame hypercalls outright with
    /// this errno, doing nothing.
    pub fail_calls: Option<(Errno, u32)>,
    /// Fail the next map/unmap hypercall with `EFAULT` after processing this many ops
    /// (Xen fails a batch when it cannot copy an op; earlier ops are done).
    pub fail_after_ops: Option<usize>,
    /// The next N map ops fail with this status before any check.
    pub map_status: Option<(i16, u32)>,
    /// The next N unmap ops fail with this status before any check (nothing unmapped).
    pub unmap_status: Option<(i16, u32)>,
    /// XSM refuses maps of these domains' grants (`GNTST_permission_denied`).
    pub deny: BTreeSet<DomId>,
}

/// Counters tests can assert on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GrantSimStats {
    /// Map/unmap hypercalls issued.
    pub calls: u64,
    /// Map ops seen, and those that succeeded.
    pub map_ops: u64,
    pub maps_ok: u64,
    /// Unmap ops seen, and those that succeeded.
    pub unmap_ops: u64,
    pub unmaps_ok: u64,
}

struct Peer {
    entries: Vec<GrantEntryV1>,
    frames: Vec<Box<Frame>>,
    /// (readers, writers) per gref with any mapping.
    pins: BTreeMap<GrantRef, (u32, u32)>,
    dying: bool,
}

#[derive(Clone, Copy, Debug)]
struct Mapping {
    peer: DomId,
    gref: GrantRef,
    gfn: Gfn,
    readonly: bool,
}

#[derive(Clone, Copy, Debug)]
struct PeerMapping {
    peer: DomId,
    gref: GrantRef,
    readonly: bool,
}

/// A peer's mapping of one of our grants, as [`SimGrants::peer_map_own`] made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnMapped {
    /// Handle for [`SimGrants::peer_unmap_own`].
    pub handle: GrantHandle,
    /// The frame our entry named.
    pub frame: u32,
}

/// Everything the simulated grant subsystem knows.
pub struct GrantState {
    /// The guest's domain id.
    pub domid: DomId,
    own: Arc<[GrantEntryShared]>,
    own_frames: u32,
    max_frames: u32,
    table_gfns: BTreeMap<u32, Gfn>,
    own_pins: BTreeMap<GrantRef, (u32, u32)>,
    peers: BTreeMap<DomId, Peer>,
    maps: BTreeMap<GrantHandle, Mapping>,
    by_gfn: BTreeMap<Gfn, GrantHandle>,
    next_handle: GrantHandle,
    peer_maps: BTreeMap<GrantHandle, PeerMapping>,
    next_peer_handle: GrantHandle,
    /// Fault injection.
    pub faults: GrantFaults,
    /// Counters.
    pub stats: GrantSimStats,
}

/// Handle to the simulated grant subsystem. Clones share the same state.
#[derive(Clone)]
pub struct SimGrants {
    inner: Arc<Mutex<GrantState>>,
}

fn take_fault<T: Copy>(f: &mut Option<(T, u32)>) -> Option<T> {
    let (v, n) = (*f)?;
    *f = if n > 1 { Some((v, n - 1)) } else { None };
    Some(v)
}

fn pin_flags(pins: Option<&(u32, u32)>) -> u16 {
    match pins {
        Some(&(r, w)) => {
            (if r > 0 { gtf::READING } else { 0 }) | (if w > 0 { gtf::WRITING } else { 0 })
        }
        None => 0,
    }
}

impl SimGrants {
    /// The guest is `domid`; its table starts with `nr_frames` and may grow to
    /// `max_frames` frames (Xen's `max_grant_frames`, 64 by default).
    pub fn new(domid: DomId, nr_frames: u32, max_frames: u32) -> SimGrants {
        let own: Arc<[GrantEntryShared]> = (0..max_frames as usize * GRANT_ENTRIES_PER_FRAME_V1)
            .map(|_| GrantEntryShared::default())
            .collect();
        SimGrants {
            inner: Arc::new(Mutex::new(GrantState {
                domid,
                own,
                own_frames: nr_frames.min(max_frames),
                max_frames,
                table_gfns: BTreeMap::new(),
                own_pins: BTreeMap::new(),
                peers: BTreeMap::new(),
                maps: BTreeMap::new(),
                by_gfn: BTreeMap::new(),
                next_handle: 1,
                peer_maps: BTreeMap::new(),
                next_peer_handle: 1,
                faults: GrantFaults::default(),
                stats: GrantSimStats::default(),
            })),
        }
    }

    /// What a restore or migration does to the guest's grant side: a new, empty table
    /// (every entry zeroed, no pins; its frames are in no gfn until added again), no
    /// mapping of a peer's grants, no peer mapping ours. Peers and their grants stay.
    pub fn resume_in_new_domain(&self) {
        let mut st = self.lock();
        for e in st.own.iter() {
            // Relaxed: the guest is suspended; it reads the table only after resuming.
            e.flags.store(0, Ordering::Relaxed);
            e.domid.store(0, Ordering::Relaxed);
            e.frame.store(0, Ordering::Relaxed);
        }
        st.table_gfns.clear();
        st.own_pins.clear();
        st.maps.clear();
        st.by_gfn.clear();
        st.peer_maps.clear();
    }

    /// The whole state, locked.
    pub fn lock(&self) -> MutexGuard<'_, GrantState> {
        self.inner.lock()
    }

    /// Our grant table's memory, all `max_frames` of it; the first
    /// `query_size().0 * 512` entries are live. Kept alive by the returned `Arc`.
    pub fn own_table(&self) -> Arc<[GrantEntryShared]> {
        self.lock().own.clone()
    }

    /// Where [`GrantOps::add_table_frame`] put each table frame.
    pub fn table_gfns(&self) -> BTreeMap<u32, Gfn> {
        self.lock().table_gfns.clone()
    }

    /// Changes fault injection.
    pub fn faults(&self, f: impl FnOnce(&mut GrantFaults)) {
        f(&mut self.lock().faults)
    }

    /// Counters.
    pub fn stats(&self) -> GrantSimStats {
        self.lock().stats
    }

    // ---- peers granting to us ---------------------------------------------------------

    /// A new peer domain with `frames` zeroed frames (its gfns `0..frames`) and a grant
    /// table of `entries` entries.
    pub fn add_peer(&self, domid: DomId, frames: usize, entries: usize) {
        let peer = Peer {
            entries: vec![GrantEntryV1::default(); entries],
            frames: (0..frames).map(|_| Box::new([0u8; FRAME_BYTES])).collect(),
            pins: BTreeMap::new(),
            dying: false,
        };
        self.lock().peers.insert(domid, peer);
    }

    /// Whether `domid` exists (alive or a zombie).
    pub fn peer_exists(&self, domid: DomId) -> bool {
        self.lock().peers.contains_key(&domid)
    }

    /// Fill the peer's frame `idx`.
    pub fn peer_write_frame(&self, domid: DomId, idx: usize, data: &Frame) {
        let mut st = self.lock();
        let peer = st.peers.get_mut(&domid).expect("no such peer");
        *peer.frames[idx] = *data;
    }

    /// The peer's frame `idx`.
    pub fn peer_frame(&self, domid: DomId, idx: usize) -> Frame {
        *self.lock().peers[&domid].frames[idx]
    }

    /// The peer grants its frame `idx` to `to` in its lowest free entry (from 8, like a
    /// Linux peer). Returns the ref.
    pub fn peer_grant(&self, domid: DomId, idx: usize, to: DomId, readonly: bool) -> GrantRef {
        let mut st = self.lock();
        let peer = st.peers.get_mut(&domid).expect("no such peer");
        assert!(idx < peer.frames.len(), "peer has no frame {idx}");
        let gref = (8..peer.entries.len())
            .find(|&r| {
                peer.entries[r].flags & gtf::TYPE_MASK == 0
                    && !peer.pins.contains_key(&(r as GrantRef))
            })
            .expect("peer grant table full");
        let ro = if readonly { gtf::READONLY } else { 0 };
        peer.entries[gref] = GrantEntryV1 {
            flags: gtf::PERMIT_ACCESS | ro,
            domid: to,
            frame: idx as u32,
        };
        gref as GrantRef
    }

    /// The peer ends access to `gref` as a careful guest does: only if nobody maps it.
    /// Returns whether the entry was cleared.
    pub fn peer_end_access(&self, domid: DomId, gref: GrantRef) -> bool {
        let mut st = self.lock();
        let peer = st.peers.get_mut(&domid).expect("no such peer");
        if peer.pins.contains_key(&gref) {
            return false;
        }
        peer.entries[gref as usize].flags = 0;
        true
    }

    /// The peer's entry (flags include `GTF_reading`/`GTF_writing` while mapped).
    pub fn peer_entry(&self, domid: DomId, gref: GrantRef) -> GrantEntryV1 {
        let st = self.lock();
        let peer = &st.peers[&domid];
        let mut e = peer.entries[gref as usize];
        e.flags |= pin_flags(peer.pins.get(&gref));
        e
    }

    /// `xl destroy` of a peer: see the module docs for what happens to mappings.
    pub fn destroy_peer(&self, domid: DomId) {
        let mut st = self.lock();
        let st = &mut *st;
        let Some(peer) = st.peers.get_mut(&domid) else {
            return;
        };
        peer.dying = true;
        // Xen's gnttab_release_mappings: the dying domain's mappings of our grants go.
        let gone: Vec<GrantHandle> = st
            .peer_maps
            .iter()
            .filter(|(_, m)| m.peer == domid)
            .map(|(&h, _)| h)
            .collect();
        for h in gone {
            Self::drop_peer_mapping(st, h);
        }
        Self::reap_zombie(st, domid);
    }

    /// Fault (not Xen behaviour): forget every mapping the guest holds of `domid`'s
    /// grants without telling the guest; its later unmaps get `GNTST_bad_handle`.
    pub fn revoke_mappings_of(&self, domid: DomId) {
        let mut st = self.lock();
        let st = &mut *st;
        let gone: Vec<GrantHandle> = st
            .maps
            .iter()
            .filter(|(_, m)| m.peer == domid)
            .map(|(&h, _)| h)
            .collect();
        for h in gone {
            Self::drop_mapping(st, h);
        }
        Self::reap_zombie(st, domid);
    }

    /// The contents of the foreign frame the guest has mapped at `gfn`.
    pub fn mapped_frame(&self, gfn: Gfn) -> Option<Frame> {
        let st = self.lock();
        let m = st.maps[st.by_gfn.get(&gfn)?];
        Some(*st.peers[&m.peer].frames[Self::frame_of(&st, &m)])
    }

    /// The guest writes `data` through its mapping at `gfn`. `Err(EROFS)` for a
    /// read-only mapping, `Err(EFAULT)` where nothing is mapped.
    pub fn write_mapped(&self, gfn: Gfn, data: &Frame) -> Result<(), Errno> {
        let mut st = self.lock();
        let h = *st.by_gfn.get(&gfn).ok_or(Errno::EFAULT)?;
        let m = st.maps[&h];
        if m.readonly {
            return Err(Errno::EROFS);
        }
        let idx = Self::frame_of(&st, &m);
        *st.peers.get_mut(&m.peer).unwrap().frames[idx] = *data;
        Ok(())
    }

    /// Every gfn where the guest has a grant mapping, ascending.
    pub fn mapped_gfns(&self) -> Vec<Gfn> {
        self.lock().by_gfn.keys().copied().collect()
    }

    /// (domid, gref, handle) of the guest's mapping at `gfn`.
    pub fn mapping_at(&self, gfn: Gfn) -> Option<(DomId, GrantRef, GrantHandle)> {
        let st = self.lock();
        let h = *st.by_gfn.get(&gfn)?;
        let m = st.maps[&h];
        Some((m.peer, m.gref, h))
    }

    // ---- peers mapping our grants -----------------------------------------------------

    /// Peer `peer` maps our grant `gref` (Xen's checks on our shared entry, with a
    /// cmpxchg that sets `GTF_reading`/`GTF_writing`). Returns the handle and our frame,
    /// or the `GNTST_*` status.
    pub fn peer_map_own(
        &self,
        peer: DomId,
        gref: GrantRef,
        readonly: bool,
    ) -> Result<OwnMapped, i16> {
        let mut st = self.lock();
        let st = &mut *st;
        if st.peers.get(&peer).is_none_or(|p| p.dying) {
            return Err(gntst::BAD_DOMAIN);
        }
        let live = st.own_frames as usize * GRANT_ENTRIES_PER_FRAME_V1;
        if gref as usize >= live {
            return Err(gntst::BAD_GNTREF);
        }
        let e = &st.own[gref as usize];
        let want = gtf::READING | if readonly { 0 } else { gtf::WRITING };
        // Acquire pairs with the guest's Release store of the flags when granting: the
        // domid and frame it wrote before are visible once PERMIT_ACCESS is seen.
        let mut cur = e.flags.load(Ordering::Acquire);
        loop {
            // Relaxed: ordered after the guest's writes by the Acquire load of the flags.
            let domid = e.domid.load(Ordering::Relaxed);
            if cur & gtf::TYPE_MASK != gtf::PERMIT_ACCESS || domid != peer {
                return Err(gntst::GENERAL_ERROR);
            }
            if !readonly && cur & gtf::READONLY != 0 {
                return Err(gntst::GENERAL_ERROR);
            }
            // AcqRel: the flag update is ordered against the guest's cmpxchg in
            // end-access (same location); Acquire keeps the frame read after it.
            match e
                .flags
                .compare_exchange(cur, cur | want, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        // Relaxed: as domid, after an Acquire of the flags that granted access.
        let frame = e.frame.load(Ordering::Relaxed);
        let pins = st.own_pins.entry(gref).or_default();
        pins.0 += 1;
        pins.1 += !readonly as u32;
        let handle = st.next_peer_handle;
        st.next_peer_handle += 1;
        st.peer_maps.insert(
            handle,
            PeerMapping {
                peer,
                gref,
                readonly,
            },
        );
        Ok(OwnMapped { handle, frame })
    }

    /// The peer unmaps our grant; the last unmap of an entry clears its
    /// `GTF_reading`/`GTF_writing`.
    pub fn peer_unmap_own(&self, handle: GrantHandle) -> Result<(), i16> {
        let mut st = self.lock();
        if !st.peer_maps.contains_key(&handle) {
            return Err(gntst::BAD_HANDLE);
        }
        Self::drop_peer_mapping(&mut st, handle);
        Ok(())
    }

    /// How many peer mappings of our grants exist.
    pub fn own_mapped_count(&self) -> usize {
        self.lock().peer_maps.len()
    }

    fn drop_peer_mapping(st: &mut GrantState, handle: GrantHandle) {
        let m = st.peer_maps.remove(&handle).expect("known handle");
        let pins = st.own_pins.get_mut(&m.gref).expect("pinned");
        pins.0 -= 1;
        pins.1 -= !m.readonly as u32;
        let keep = pin_flags(Some(pins));
        if *pins == (0, 0) {
            st.own_pins.remove(&m.gref);
        }
        let clear = (gtf::READING | gtf::WRITING) & !keep;
        // Release pairs with the guest's Acquire cmpxchg in end-access: everything the
        // peer did through the mapping happens before the guest reuses the frame.
        st.own[m.gref as usize]
            .flags
            .fetch_and(!clear, Ordering::Release);
    }

    // ---- internals ----------------------------------------------------------------------

    fn frame_of(st: &GrantState, m: &Mapping) -> usize {
        st.peers[&m.peer].entries[m.gref as usize].frame as usize
    }

    fn drop_mapping(st: &mut GrantState, handle: GrantHandle) {
        let m = st.maps.remove(&handle).expect("known handle");
        st.by_gfn.remove(&m.gfn);
        let peer = st.peers.get_mut(&m.peer).expect("mapped peer exists");
        let pins = peer.pins.get_mut(&m.gref).expect("pinned");
        pins.0 -= 1;
        pins.1 -= !m.readonly as u32;
        if *pins == (0, 0) {
            peer.pins.remove(&m.gref);
        }
    }

    /// A dying peer disappears once nothing of it is mapped any more.
    fn reap_zombie(st: &mut GrantState, domid: DomId) {
        let gone = st
            .peers
            .get(&domid)
            .is_some_and(|p| p.dying && p.pins.is_empty());
        if gone {
            st.peers.remove(&domid);
        }
    }

    fn begin_call(st: &mut GrantState) -> Result<(), Errno> {
        st.stats.calls += 1;
        match take_fault(&mut st.faults.fail_calls) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn map_one(st: &mut GrantState, op: &mut GnttabMapGrantRef) {
        st.stats.map_ops += 1;
        if let Some(s) = take_fault(&mut st.faults.map_status) {
            op.status = s;
            return;
        }
        op.status = match Self::try_map(st, op) {
            Ok(handle) => {
                op.handle = handle;
                st.stats.maps_ok += 1;
                gntst::OKAY
            }
            Err(s) => s,
        };
    }

    fn try_map(st: &mut GrantState, op: &GnttabMapGrantRef) -> Result<GrantHandle, i16> {
        if op.flags & gntmap::HOST_MAP == 0 || !op.host_addr.is_multiple_of(FRAME_BYTES as u64) {
            return Err(gntst::GENERAL_ERROR);
        }
        let readonly = op.flags & gntmap::READONLY != 0;
        let me = st.domid;
        let peer = match st.peers.get_mut(&op.dom) {
            Some(p) if !p.dying => p,
            _ => return Err(gntst::BAD_DOMAIN),
        };
        if st.faults.deny.contains(&op.dom) {
            return Err(gntst::PERMISSION_DENIED);
        }
        let Some(e) = peer.entries.get(op.ref_ as usize).copied() else {
            return Err(gntst::BAD_GNTREF);
        };
        if e.flags & gtf::TYPE_MASK != gtf::PERMIT_ACCESS || e.domid != me {
            return Err(gntst::GENERAL_ERROR);
        }
        if !readonly && e.flags & gtf::READONLY != 0 {
            return Err(gntst::GENERAL_ERROR);
        }
        if e.frame as usize >= peer.frames.len() {
            return Err(gntst::BAD_PAGE);
        }
        let gfn = op.host_addr / FRAME_BYTES as u64;
        if st.by_gfn.contains_key(&gfn) {
            return Err(gntst::GENERAL_ERROR);
        }
        let pins = peer.pins.entry(op.ref_).or_default();
        pins.0 += 1;
        pins.1 += !readonly as u32;
        let handle = st.next_handle;
        st.next_handle += 1;
        st.maps.insert(
            handle,
            Mapping {
                peer: op.dom,
                gref: op.ref_,
                gfn,
                readonly,
            },
        );
        st.by_gfn.insert(gfn, handle);
        Ok(handle)
    }

    fn unmap_one(st: &mut GrantState, op: &mut GnttabUnmapGrantRef) {
        st.stats.unmap_ops += 1;
        if let Some(s) = take_fault(&mut st.faults.unmap_status) {
            op.status = s;
            return;
        }
        let Some(m) = st.maps.get(&op.handle).copied() else {
            op.status = gntst::BAD_HANDLE;
            return;
        };
        if op.host_addr != m.gfn * FRAME_BYTES as u64 {
            op.status = gntst::GENERAL_ERROR;
            return;
        }
        Self::drop_mapping(st, op.handle);
        Self::reap_zombie(st, m.peer);
        st.stats.unmaps_ok += 1;
        op.status = gntst::OKAY;
    }
}

impl GrantOps for SimGrants {
    fn query_size(&mut self) -> Result<(u32, u32), Errno> {
        let st = self.lock();
        Ok((st.own_frames, st.max_frames))
    }

    fn add_table_frame(&mut self, idx: u32, gfn: Gfn) -> Result<(), Errno> {
        let mut st = self.lock();
        Self::begin_call(&mut st)?;
        if idx >= st.max_frames {
            return Err(Errno::EINVAL);
        }
        st.own_frames = st.own_frames.max(idx + 1);
        st.table_gfns.insert(idx, gfn);
        Ok(())
    }

    fn map_grant_refs(&mut self, ops: &mut [GnttabMapGrantRef]) -> Result<(), Errno> {
        let mut st = self.lock();
        Self::begin_call(&mut st)?;
        let stop = st.faults.fail_after_ops.take();
        for (i, op) in ops.iter_mut().enumerate() {
            if stop == Some(i) {
                return Err(Errno::EFAULT);
            }
            Self::map_one(&mut st, op);
        }
        Ok(())
    }

    fn unmap_grant_refs(&mut self, ops: &mut [GnttabUnmapGrantRef]) -> Result<(), Errno> {
        let mut st = self.lock();
        Self::begin_call(&mut st)?;
        let stop = st.faults.fail_after_ops.take();
        for (i, op) in ops.iter_mut().enumerate() {
            if stop == Some(i) {
                return Err(Errno::EFAULT);
            }
            Self::unmap_one(&mut st, op);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map_op(dom: DomId, gref: GrantRef, gfn: Gfn, ro: bool) -> GnttabMapGrantRef {
        GnttabMapGrantRef {
            host_addr: gfn * 4096,
            flags: gntmap::HOST_MAP | if ro { gntmap::READONLY } else { 0 },
            ref_: gref,
            dom,
            status: 1,
            ..Default::default()
        }
    }

    #[test]
    fn map_checks_follow_xen_and_pins_set_reading_writing() {
        let mut g = SimGrants::new(1, 1, 4);
        g.add_peer(2, 4, 32);
        let mut page = [0u8; FRAME_BYTES];
        page[0] = 0xab;
        g.peer_write_frame(2, 1, &page);
        let rw = g.peer_grant(2, 1, 1, false);
        let ro = g.peer_grant(2, 2, 1, true);
        let other = g.peer_grant(2, 3, 9, false);
        assert_eq!(rw, 8);
        let mut ops = [
            map_op(2, rw, 100, false),
            map_op(2, ro, 101, false), // writable map of a read-only grant
            map_op(2, other, 102, true),
            map_op(2, 999, 103, true),
            map_op(3, 8, 104, true),
            map_op(2, ro, 105, true),
            map_op(2, rw, 100, true), // gfn taken
        ];
        g.map_grant_refs(&mut ops).unwrap();
        let st: Vec<i16> = ops.iter().map(|o| o.status).collect();
        assert_eq!(
            st,
            [
                gntst::OKAY,
                gntst::GENERAL_ERROR,
                gntst::GENERAL_ERROR,
                gntst::BAD_GNTREF,
                gntst::BAD_DOMAIN,
                gntst::OKAY,
                gntst::GENERAL_ERROR
            ]
        );
        assert_eq!(g.mapped_frame(100).unwrap()[0], 0xab);
        assert_eq!(g.write_mapped(105, &page), Err(Errno::EROFS));
        let e = g.peer_entry(2, rw);
        assert_eq!(
            e.flags & (gtf::READING | gtf::WRITING),
            gtf::READING | gtf::WRITING
        );
        assert_eq!(g.peer_entry(2, ro).flags & gtf::WRITING, 0);
        assert!(!g.peer_end_access(2, rw));
        let mut un = [GnttabUnmapGrantRef {
            host_addr: 100 * 4096,
            handle: ops[0].handle,
            status: 1,
            ..Default::default()
        }];
        g.unmap_grant_refs(&mut un).unwrap();
        assert_eq!(un[0].status, gntst::OKAY);
        assert_eq!(g.peer_entry(2, rw).flags & (gtf::READING | gtf::WRITING), 0);
        g.unmap_grant_refs(&mut un).unwrap();
        assert_eq!(un[0].status, gntst::BAD_HANDLE);
        assert!(g.peer_end_access(2, rw));
    }

    #[test]
    fn dying_peer_is_a_zombie_until_its_last_page_is_unmapped() {
        let mut g = SimGrants::new(1, 1, 4);
        g.add_peer(2, 2, 16);
        let a = g.peer_grant(2, 0, 1, false);
        let b = g.peer_grant(2, 1, 1, false);
        let mut ops = [map_op(2, a, 10, false)];
        g.map_grant_refs(&mut ops).unwrap();
        g.destroy_peer(2);
        assert!(g.peer_exists(2));
        let mut again = [map_op(2, b, 11, false)];
        g.map_grant_refs(&mut again).unwrap();
        assert_eq!(again[0].status, gntst::BAD_DOMAIN);
        let mut un = [GnttabUnmapGrantRef {
            host_addr: 10 * 4096,
            handle: ops[0].handle,
            status: 1,
            ..Default::default()
        }];
        g.unmap_grant_refs(&mut un).unwrap();
        assert_eq!(un[0].status, gntst::OKAY);
        assert!(!g.peer_exists(2));
    }

    #[test]
    fn peers_map_our_entries_with_xen_checks_and_death_releases_them() {
        let g = SimGrants::new(1, 1, 4);
        g.add_peer(2, 0, 8);
        let t = g.own_table();
        // Relaxed stores published by the Release store of the flags, as a guest does.
        t[9].domid.store(2, Ordering::Relaxed);
        t[9].frame.store(0x1234, Ordering::Relaxed);
        t[9].flags
            .store(gtf::PERMIT_ACCESS | gtf::READONLY, Ordering::Release);
        assert_eq!(g.peer_map_own(2, 9, false), Err(gntst::GENERAL_ERROR));
        assert_eq!(g.peer_map_own(3, 9, true), Err(gntst::BAD_DOMAIN));
        assert_eq!(g.peer_map_own(2, 512, true), Err(gntst::BAD_GNTREF));
        let m = g.peer_map_own(2, 9, true).unwrap();
        assert_eq!(m.frame, 0x1234);
        // Relaxed loads: one thread, the lock inside the sim orders everything here.
        assert_ne!(t[9].flags.load(Ordering::Relaxed) & gtf::READING, 0);
        g.destroy_peer(2);
        assert_eq!(t[9].flags.load(Ordering::Relaxed) & gtf::READING, 0);
        assert_eq!(g.own_mapped_count(), 0);
        assert_eq!(g.peer_unmap_own(m.handle), Err(gntst::BAD_HANDLE));
    }

    #[test]
    fn faults_fail_calls_and_partial_batches() {
        let mut g = SimGrants::new(1, 1, 4);
        g.add_peer(2, 2, 16);
        let a = g.peer_grant(2, 0, 1, false);
        let b = g.peer_grant(2, 1, 1, false);
        g.faults(|f| f.fail_calls = Some((Errno::EAGAIN, 1)));
        let mut ops = [map_op(2, a, 10, false), map_op(2, b, 11, false)];
        assert_eq!(g.map_grant_refs(&mut ops), Err(Errno::EAGAIN));
        assert_eq!(ops[0].status, 1);
        g.faults(|f| f.fail_after_ops = Some(1));
        assert_eq!(g.map_grant_refs(&mut ops), Err(Errno::EFAULT));
        assert_eq!((ops[0].status, ops[1].status), (gntst::OKAY, 1));
        g.faults(|f| {
            f.deny.insert(2);
        });
        let mut ops = [map_op(2, b, 11, false)];
        g.map_grant_refs(&mut ops).unwrap();
        assert_eq!(ops[0].status, gntst::PERMISSION_DENIED);
        assert_eq!(g.mapped_gfns(), [10]);
        g.revoke_mappings_of(2);
        assert!(g.mapped_gfns().is_empty());
        assert_eq!(g.peer_entry(2, a).flags & gtf::READING, 0);
    }
}
