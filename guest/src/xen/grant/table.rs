//! The granting side: our v1 grant table, a free-ref list, grant and end-access with a
//! deferred list for grants a peer still has mapped.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::Ordering;

use xen_bindings::abi::grant_table::{gtf, GrantRef, GRANT_ENTRIES_PER_FRAME_V1};
use xen_bindings::traits::{DomId, GrantEntryShared};

/// Refs below this are never handed out (Linux's `GNTTAB_NR_RESERVED_ENTRIES`): by
/// convention the toolstack uses ref 0 (console) and ref 1 (xenstore) of every guest.
pub const NR_RESERVED_ENTRIES: u32 = 8;

/// Why a grant operation was refused. Nothing changes when one is returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantTableError {
    /// Every ref is granted or deferred (grow the table or retry the deferred list).
    NoFreeRefs,
    /// The ref is reserved, beyond the table, or not currently granted by us.
    NotGranted(GrantRef),
    /// A new entry slice does not extend the current one.
    BadGrow,
    /// A v1 entry holds a 32-bit frame number: frames at or above 16 TiB cannot be
    /// granted.
    FrameTooHigh(u64),
}

impl fmt::Display for GrantTableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What [`GrantTable::end_access`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndAccess {
    /// Access revoked; the ref is free again and the frame is ours to reuse.
    Released,
    /// The peer still has the grant mapped: access stays as it is, the ref is on the
    /// deferred list, and the frame must not be reused or freed until
    /// [`GrantTable::retry_deferred`] reports it released.
    Deferred,
}

/// Per-ref bookkeeping (ours, not Xen's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefState {
    /// Refs `0..NR_RESERVED_ENTRIES`.
    Reserved,
    /// On the free list.
    Free,
    /// Granted and not ended.
    Granted {
        /// The peer.
        domid: DomId,
        /// Our frame.
        frame: u32,
        /// Read-only grant.
        readonly: bool,
    },
    /// Ended while mapped; waiting on the deferred list.
    Deferred {
        /// The peer.
        domid: DomId,
        /// Our frame.
        frame: u32,
    },
}

/// Counters, for logs and xenstore.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GrantCounters {
    /// Grants made.
    pub granted: u64,
    /// End-access calls that released at once.
    pub ended: u64,
    /// End-access calls that had to defer.
    pub deferred: u64,
    /// Deferred refs released later.
    pub deferred_released: u64,
    /// Retry passes over the deferred list.
    pub retries: u64,
}

/// Numbers published under `data/grant/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrantTableStatus {
    /// Usable refs (table size minus reserved).
    pub refs: u64,
    /// Refs granted (not ended).
    pub outstanding: u64,
    /// Refs waiting on the deferred list.
    pub deferred: u64,
    /// Refs free.
    pub free: u64,
}

impl GrantTableStatus {
    /// `(key, value)` pairs for xenstore.
    pub fn fields(&self) -> [(&'static str, u64); 4] {
        [
            ("grant/refs", self.refs),
            ("grant/outstanding", self.outstanding),
            ("grant/deferred", self.deferred),
            ("grant/free", self.free),
        ]
    }
}

/// A released deferred grant: the frame may be reused now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Released {
    /// The ref (already back on the free list).
    pub gref: GrantRef,
    /// The peer it was granted to.
    pub domid: DomId,
    /// Our frame.
    pub frame: u32,
}

/// Our grant table over the live entries of the mapped grant frames.
///
/// The kernel maps the table frames (see [`super`]) and views them as a slice of
/// [`GrantEntryShared`]; Xen updates `flags` on behalf of peers, everything else is
/// written only here.
pub struct GrantTable<'t> {
    entries: &'t [GrantEntryShared],
    refs: Vec<RefState>,
    /// Free refs; popped from the back (LIFO keeps hot entries hot).
    free: Vec<GrantRef>,
    /// Ended-while-mapped refs, oldest first.
    deferred: VecDeque<GrantRef>,
    counters: GrantCounters,
}

impl<'t> GrantTable<'t> {
    /// A table over `entries` (whole frames' worth; those beyond the reserved ones must be
    /// unused: flags zero). Refs `0..8` are never handed out.
    pub fn new(entries: &'t [GrantEntryShared]) -> GrantTable<'t> {
        let mut t = GrantTable {
            entries: &[],
            refs: Vec::new(),
            free: Vec::new(),
            deferred: VecDeque::new(),
            counters: GrantCounters::default(),
        };
        t.grow(entries).expect("any slice extends the empty one");
        t
    }

    /// Use a longer slice over the same table after more frames were added; it must
    /// start where the current one does and be at least as long.
    pub fn grow(&mut self, entries: &'t [GrantEntryShared]) -> Result<(), GrantTableError> {
        let old = self.entries.len();
        if entries.len() < old
            || (old != 0 && !core::ptr::eq(entries.as_ptr(), self.entries.as_ptr()))
        {
            return Err(GrantTableError::BadGrow);
        }
        self.entries = entries;
        for r in old..entries.len() {
            let state = if (r as u32) < NR_RESERVED_ENTRIES {
                RefState::Reserved
            } else {
                RefState::Free
            };
            self.refs.push(state);
        }
        // Lowest refs on top of the stack.
        let new_free = (old.max(NR_RESERVED_ENTRIES as usize)..entries.len()).rev();
        let mut free: Vec<GrantRef> = new_free.map(|r| r as GrantRef).collect();
        free.append(&mut self.free);
        self.free = free;
        Ok(())
    }

    /// After resuming in a new domain the table is Xen's new one, empty but for the
    /// reserved entries the toolstack seeds: every grant we had is gone. Forget them all
    /// (granted and deferred alike) and return their refs; the frames behind them are the
    /// granter's to take back. The entries are not written: Xen zeroed them.
    pub fn forget_all(&mut self) -> Vec<GrantRef> {
        let mut gone = Vec::new();
        for (r, state) in self.refs.iter_mut().enumerate() {
            if !matches!(state, RefState::Reserved | RefState::Free) {
                *state = RefState::Free;
                gone.push(r as GrantRef);
            }
        }
        self.deferred.clear();
        self.free.extend(gone.iter().rev().copied());
        gone
    }

    /// Frames the table spans.
    pub fn frames(&self) -> usize {
        self.entries.len() / GRANT_ENTRIES_PER_FRAME_V1
    }

    /// Grant `domid` access to our frame `gfn` (read-only or read-write). Returns the ref
    /// to publish to the peer. The caller keeps the frame allocated until the grant is
    /// ended and released.
    pub fn grant_access(
        &mut self,
        domid: DomId,
        gfn: u64,
        readonly: bool,
    ) -> Result<GrantRef, GrantTableError> {
        let frame = u32::try_from(gfn).map_err(|_| GrantTableError::FrameTooHigh(gfn))?;
        let gref = self.free.pop().ok_or(GrantTableError::NoFreeRefs)?;
        let e = &self.entries[gref as usize];
        // Relaxed: a sanity check of our own bookkeeping; a free ref has no access, so
        // Xen does not write this entry.
        debug_assert_eq!(e.flags.load(Ordering::Relaxed), 0, "free ref {gref} in use");
        // Relaxed: published by the Release store of the flags below.
        e.domid.store(domid, Ordering::Relaxed);
        e.frame.store(frame, Ordering::Relaxed);
        let ro = if readonly { gtf::READONLY } else { 0 };
        // Release, and last: pairs with Xen's read of the flags before it reads domid and
        // frame (an Acquire cmpxchg in `_set_status_v1`): a peer that sees
        // PERMIT_ACCESS sees this domid and frame, never an older grant's.
        e.flags.store(gtf::PERMIT_ACCESS | ro, Ordering::Release);
        self.refs[gref as usize] = RefState::Granted {
            domid,
            frame,
            readonly,
        };
        self.counters.granted += 1;
        Ok(gref)
    }

    /// Try to revoke access in the entry: clear the flags with a cmpxchg only if no peer
    /// holds a mapping (`GTF_reading`/`GTF_writing` clear). True when revoked.
    fn try_revoke(&self, gref: GrantRef) -> bool {
        let flags = &self.entries[gref as usize].flags;
        // Acquire pairs with Xen's Release when it clears READING/WRITING at the peer's
        // unmap: what the peer did through its mapping happened before we look again.
        let mut cur = flags.load(Ordering::Acquire);
        loop {
            if cur & (gtf::READING | gtf::WRITING) != 0 {
                return false;
            }
            // Success AcqRel: ordered with Xen's cmpxchg that sets READING on a new map
            // (same location, so one of the two wins: if we win, Xen sees no
            // PERMIT_ACCESS and refuses the map); Acquire keeps our later reuse of the
            // frame after the revocation. Failure Acquire: as the load above.
            match flags.compare_exchange_weak(cur, 0, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    /// End access to `gref`. If the peer still has it mapped, the ref goes on the
    /// deferred list and is neither reused nor its frame to be touched until released.
    pub fn end_access(&mut self, gref: GrantRef) -> Result<EndAccess, GrantTableError> {
        let Some(&RefState::Granted { domid, frame, .. }) = self.refs.get(gref as usize) else {
            return Err(GrantTableError::NotGranted(gref));
        };
        if self.try_revoke(gref) {
            self.refs[gref as usize] = RefState::Free;
            self.free.push(gref);
            self.counters.ended += 1;
            Ok(EndAccess::Released)
        } else {
            self.refs[gref as usize] = RefState::Deferred { domid, frame };
            self.deferred.push_back(gref);
            self.counters.deferred += 1;
            log::debug!("grant: ref {gref} still mapped by d{domid}; deferred");
            Ok(EndAccess::Deferred)
        }
    }

    /// One pass over the deferred list (Linux retries once a second): every ref the
    /// peer no longer maps is revoked, freed, and reported so its frame can be reused.
    pub fn retry_deferred(&mut self) -> Vec<Released> {
        self.counters.retries += 1;
        let mut out = Vec::new();
        for _ in 0..self.deferred.len() {
            let gref = self.deferred.pop_front().expect("counted");
            let RefState::Deferred { domid, frame } = self.refs[gref as usize] else {
                unreachable!("deferred list holds only deferred refs");
            };
            if self.try_revoke(gref) {
                self.refs[gref as usize] = RefState::Free;
                self.free.push(gref);
                self.counters.deferred_released += 1;
                out.push(Released { gref, domid, frame });
            } else {
                self.deferred.push_back(gref);
            }
        }
        out
    }

    /// Our record of `gref`.
    pub fn ref_state(&self, gref: GrantRef) -> Option<RefState> {
        self.refs.get(gref as usize).copied()
    }

    /// The entry's current flags (Xen's view, including `GTF_reading`/`GTF_writing`).
    pub fn entry_flags(&self, gref: GrantRef) -> Option<u16> {
        // Relaxed: a diagnostic snapshot; nothing is read on the strength of it.
        self.entries
            .get(gref as usize)
            .map(|e| e.flags.load(Ordering::Relaxed))
    }

    /// Refs on the deferred list, oldest first.
    pub fn deferred(&self) -> impl Iterator<Item = GrantRef> + '_ {
        self.deferred.iter().copied()
    }

    /// Counters.
    pub fn counters(&self) -> &GrantCounters {
        &self.counters
    }

    /// Numbers for xenstore.
    pub fn status(&self) -> GrantTableStatus {
        let outstanding = self
            .refs
            .iter()
            .filter(|s| matches!(s, RefState::Granted { .. }))
            .count() as u64;
        GrantTableStatus {
            refs: self.refs.len().saturating_sub(NR_RESERVED_ENTRIES as usize) as u64,
            outstanding,
            deferred: self.deferred.len() as u64,
            free: self.free.len() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(n: usize) -> Vec<GrantEntryShared> {
        (0..n).map(|_| GrantEntryShared::default()).collect()
    }

    #[test]
    fn grants_skip_reserved_refs_and_write_flags_last() {
        let mem = table(512);
        let mut t = GrantTable::new(&mem);
        assert_eq!(t.status().free, 504);
        let a = t.grant_access(3, 0x42, true).unwrap();
        let b = t.grant_access(3, 0x43, false).unwrap();
        assert_eq!((a, b), (8, 9));
        assert_eq!(t.entry_flags(a), Some(gtf::PERMIT_ACCESS | gtf::READONLY));
        // Relaxed: single-threaded test; the grant's Release already happened.
        assert_eq!(mem[9].frame.load(Ordering::Relaxed), 0x43);
        assert_eq!(mem[9].domid.load(Ordering::Relaxed), 3);
        assert_eq!(t.end_access(a), Ok(EndAccess::Released));
        assert_eq!(t.entry_flags(a), Some(0));
        assert_eq!(t.end_access(a), Err(GrantTableError::NotGranted(a)));
        assert_eq!(t.end_access(1), Err(GrantTableError::NotGranted(1)));
        // Reused LIFO.
        assert_eq!(t.grant_access(4, 1, false), Ok(a));
        assert_eq!(
            t.grant_access(4, 1 << 32, false),
            Err(GrantTableError::FrameTooHigh(1 << 32))
        );
        assert_eq!(t.status().outstanding, 2);
    }

    #[test]
    fn a_mapped_grant_is_deferred_and_never_reused_until_unmapped() {
        let mem = table(16);
        let mut t = GrantTable::new(&mem);
        let refs: Vec<_> = (0..8)
            .map(|i| t.grant_access(2, i, false).unwrap())
            .collect();
        assert_eq!(
            t.grant_access(2, 99, false),
            Err(GrantTableError::NoFreeRefs)
        );
        // The peer maps ref 10 (Xen sets READING|WRITING; AcqRel as Xen's cmpxchg,
        // pairing with the table's Release grant and Acquire end-access).
        mem[10]
            .flags
            .fetch_or(gtf::READING | gtf::WRITING, Ordering::AcqRel);
        assert_eq!(t.end_access(10), Ok(EndAccess::Deferred));
        assert_eq!(
            t.ref_state(10),
            Some(RefState::Deferred { domid: 2, frame: 2 })
        );
        // Still PERMIT_ACCESS: the peer's mapping stays valid.
        assert_ne!(t.entry_flags(10).unwrap() & gtf::PERMIT_ACCESS, 0);
        for r in refs.iter().filter(|&&r| r != 10) {
            assert_eq!(t.end_access(*r), Ok(EndAccess::Released));
        }
        for _ in 0..7 {
            assert_ne!(t.grant_access(5, 0, true).unwrap(), 10);
        }
        assert_eq!(t.grant_access(5, 0, true), Err(GrantTableError::NoFreeRefs));
        assert!(t.retry_deferred().is_empty());
        // The peer unmaps: Release pairs with the Acquire in the table's revoke.
        mem[10]
            .flags
            .fetch_and(!(gtf::READING | gtf::WRITING), Ordering::Release);
        assert_eq!(
            t.retry_deferred(),
            [Released {
                gref: 10,
                domid: 2,
                frame: 2
            }]
        );
        assert_eq!(t.entry_flags(10), Some(0));
        assert_eq!(t.grant_access(5, 0, true), Ok(10));
        let c = t.counters();
        assert_eq!((c.deferred, c.deferred_released, c.retries), (1, 1, 2));
    }

    #[test]
    fn grow_extends_the_same_table_only() {
        let mem = table(1024);
        let mut t = GrantTable::new(&mem[..512]);
        for _ in 0..504 {
            t.grant_access(1, 0, false).unwrap();
        }
        assert_eq!(
            t.grant_access(1, 0, false),
            Err(GrantTableError::NoFreeRefs)
        );
        let other = table(1024);
        assert_eq!(t.grow(&other), Err(GrantTableError::BadGrow));
        assert_eq!(t.grow(&mem[..256]), Err(GrantTableError::BadGrow));
        t.grow(&mem).unwrap();
        assert_eq!(t.frames(), 2);
        assert_eq!(t.grant_access(1, 0, false), Ok(512));
        assert_eq!(t.status().outstanding, 505);
    }
}
