//! A simulated domain reservation: the p2m (which gfns have a frame), `max_pages`,
//! populate-on-demand, order limits, preemption and refusal — for balloon host tests.
//!
//! Rules follow Xen 4.17 (common/memory.c, arch/x86/mm/p2m-pod.c) as far as a guest can
//! observe them:
//! * `populate_physmap` / `decrease_reservation` return the number of extents done; they
//!   stop early when preempted, at `max_pages`, when the host is out of memory, or at an
//!   extent they cannot handle (already populated / not populated).
//! * An extent order above the limit for domUs does nothing (0 extents done).
//! * PoD: gfns in the PoD set have no frame yet. Touching one takes a page from the PoD
//!   cache; with the cache empty Xen kills the domain ("out of PoD memory"). Releasing a
//!   PoD gfn with `decrease_reservation` drops the entry and shrinks what must be backed;
//!   once fewer entries than cache pages are left, the cache is trimmed to the entries.
//!   Releasing a populated gfn while entries outnumber the cache puts its frame in the
//!   cache instead of freeing it (`steal_for_cache`): `tot_pages` does not drop.
//! * `xl mem-set` on a PoD domain sets the PoD target ([`SimMemory::set_pod_target`],
//!   `p2m_pod_set_mem_target`): Xen resizes the cache itself, before the guest balloons.

use alloc::collections::BTreeSet;
use alloc::format;
use alloc::string::String;

use crate::traits::{Gfn, MemoryReservation};
use crate::Errno;

/// Largest extent order Xen lets a domU use (2 MiB).
pub const DOMU_MAX_ORDER: u32 = 9;

#[derive(Clone, Debug, Default)]
pub struct MemFaults {
    /// Fail the next N calls outright with this errno.
    pub fail_calls: Option<(Errno, u32)>,
    /// Do at most this many extents per call (Xen preempts long calls).
    pub max_extents_per_call: Option<usize>,
}

#[derive(Clone, Debug)]
pub struct SimMemory {
    /// gfns backed by a frame.
    populated: BTreeSet<Gfn>,
    /// gfns that are populate-on-demand entries (no frame until touched).
    pod: BTreeSet<Gfn>,
    /// Frames reserved for PoD entries that get touched.
    pub pod_cache: u64,
    /// Xen's limit (`xl mem-max`, lowered by `xl mem-set` to target + 1 MiB).
    pub max_pages: u64,
    /// Frames the host can still hand out.
    pub host_free_pages: u64,
    pub max_order: u32,
    pub faults: MemFaults,
    /// Set when Xen would have killed the domain, with why.
    pub killed: Option<String>,
    /// Hypercalls issued, for "never spins" checks.
    pub calls: u64,
}

impl SimMemory {
    /// A domain whose `[first_gfn, first_gfn + pages)` are populated (memory == maxmem).
    pub fn new(ranges: &[(Gfn, u64)], max_pages: u64) -> Self {
        let populated = ranges.iter().flat_map(|&(s, n)| s..s + n).collect();
        SimMemory {
            populated,
            pod: BTreeSet::new(),
            pod_cache: 0,
            max_pages,
            host_free_pages: u64::MAX / 2,
            max_order: DOMU_MAX_ORDER,
            faults: MemFaults::default(),
            killed: None,
            calls: 0,
        }
    }

    /// Also populate `ranges` (non-RAM pages the toolstack backs: special pages, ACPI
    /// tables), which Xen counts in `tot_pages`.
    pub fn with_populated(mut self, ranges: &[(Gfn, u64)]) -> Self {
        self.populated
            .extend(ranges.iter().flat_map(|&(s, n)| s..s + n));
        self
    }

    /// Frames behind populated gfns (PoD cache excluded).
    pub fn populated_pages(&self) -> u64 {
        self.populated.len() as u64
    }

    /// `XEN_DOMCTL_set_pod_target` as libxl issues it on `xl mem-set` (arch/x86/mm/
    /// p2m-pod.c `p2m_pod_set_mem_target`): with outstanding PoD entries, resize the cache
    /// to `target - populated`, at most the outstanding entries. Frames leaving the cache
    /// go back to the host.
    pub fn set_pod_target(&mut self, target_pages: u64) {
        if self.pod.is_empty() {
            return;
        }
        let populated = self.populated.len() as u64;
        let want = target_pages
            .saturating_sub(populated)
            .min(self.pod.len() as u64);
        if want < self.pod_cache {
            self.host_free_pages += self.pod_cache - want;
            self.pod_cache = want;
        } else {
            let add = (want - self.pod_cache).min(self.host_free_pages);
            self.host_free_pages -= add;
            self.pod_cache += add;
        }
    }

    /// A PoD domain (`memory < maxmem`): every gfn of `ranges` is a PoD entry, and
    /// `target_pages` frames stand behind them.
    pub fn new_pod(ranges: &[(Gfn, u64)], target_pages: u64, max_pages: u64) -> Self {
        let mut m = Self::new(&[], max_pages);
        m.pod = ranges.iter().flat_map(|&(s, n)| s..s + n).collect();
        m.pod_cache = target_pages;
        m
    }

    /// Xen's `tot_pages`: frames the domain owns, including the PoD cache.
    pub fn tot_pages(&self) -> u64 {
        self.populated.len() as u64 + self.pod_cache
    }

    pub fn is_populated(&self, gfn: Gfn) -> bool {
        self.populated.contains(&gfn)
    }

    /// Populated gfns in `[start, end)`: e.g. none may be behind a range the guest still
    /// has to hot-add, populate or has hot-removed.
    pub fn populated_in(&self, start: Gfn, end: Gfn) -> u64 {
        if end <= start {
            return 0;
        }
        self.populated.range(start..end).count() as u64
    }

    pub fn is_pod(&self, gfn: Gfn) -> bool {
        self.pod.contains(&gfn)
    }

    pub fn pod_entries(&self) -> u64 {
        self.pod.len() as u64
    }

    /// The guest reads or writes `gfn`. Returns false if that access would be fatal.
    pub fn touch(&mut self, gfn: Gfn) -> bool {
        if self.populated.contains(&gfn) {
            return true;
        }
        if self.pod.remove(&gfn) {
            if self.pod_cache == 0 {
                self.killed = Some(format!("out of PoD memory touching gfn {gfn:#x}"));
                return false;
            }
            self.pod_cache -= 1;
            self.populated.insert(gfn);
            return true;
        }
        self.killed = Some(format!("access to unpopulated gfn {gfn:#x}"));
        false
    }

    fn begin_call(&mut self) -> Result<usize, Errno> {
        self.calls += 1;
        if let Some((e, n)) = self.faults.fail_calls {
            self.faults.fail_calls = (n > 1).then_some((e, n - 1));
            return Err(e);
        }
        Ok(self.faults.max_extents_per_call.unwrap_or(usize::MAX))
    }
}

impl MemoryReservation for SimMemory {
    fn populate_physmap(&mut self, gfns: &[Gfn], order: u32) -> Result<usize, Errno> {
        let budget = self.begin_call()?;
        if order > self.max_order {
            return Ok(0);
        }
        let n = 1u64 << order;
        for (done, &g) in gfns.iter().enumerate() {
            if done == budget || self.tot_pages() + n > self.max_pages || self.host_free_pages < n {
                return Ok(done);
            }
            if g & (n - 1) != 0 || (g..g + n).any(|p| self.populated.contains(&p)) {
                return Ok(done);
            }
            for p in g..g + n {
                // Populating over a PoD entry replaces it.
                self.pod.remove(&p);
                self.populated.insert(p);
            }
            self.host_free_pages -= n;
        }
        Ok(gfns.len())
    }

    fn decrease_reservation(&mut self, gfns: &[Gfn], order: u32) -> Result<usize, Errno> {
        let budget = self.begin_call()?;
        if order > self.max_order {
            return Ok(0);
        }
        let n = 1u64 << order;
        for (done, &g) in gfns.iter().enumerate() {
            if done == budget
                || g & (n - 1) != 0
                || !(g..g + n).all(|p| self.populated.contains(&p) || self.pod.contains(&p))
            {
                return Ok(done);
            }
            // p2m_pod_decrease_reservation: while entries outnumber the cache, populated
            // frames are stolen for the cache rather than freed.
            let steal = self.pod.len() as u64 > self.pod_cache;
            for p in g..g + n {
                if self.populated.remove(&p) {
                    if steal {
                        self.pod_cache += 1;
                    } else {
                        self.host_free_pages += 1;
                    }
                } else {
                    self.pod.remove(&p);
                }
            }
            // Xen trims the PoD cache so it never exceeds the outstanding entries.
            if self.pod_cache > self.pod.len() as u64 {
                self.host_free_pages += self.pod_cache - self.pod.len() as u64;
                self.pod_cache = self.pod.len() as u64;
            }
        }
        Ok(gfns.len())
    }

    fn current_reservation(&self) -> Result<u64, Errno> {
        Ok(self.tot_pages())
    }

    fn maximum_reservation(&self) -> Result<u64, Errno> {
        Ok(self.max_pages)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn populate_stops_at_max_pages_and_is_partial() {
        let mut m = SimMemory::new(&[(0, 1024)], 1024 + 600);
        let gfns: Vec<Gfn> = (0..4).map(|i| 2048 + i * 512).collect();
        assert_eq!(m.populate_physmap(&gfns, 9), Ok(1));
        assert_eq!(m.tot_pages(), 1536);
        assert!(m.is_populated(2048) && !m.is_populated(2560));
        assert_eq!(
            m.populate_physmap(&[1 << 20], 10),
            Ok(0),
            "order above the domU limit"
        );
    }

    #[test]
    fn populated_in_counts_only_the_range() {
        let mut m = SimMemory::new(&[(0, 1024)], 1 << 20);
        assert_eq!(m.populated_in(0, 1024), 1024);
        assert_eq!(m.populated_in(512, 2048), 512);
        assert_eq!(m.populated_in(1024, 1 << 20), 0);
        assert_eq!(m.populate_physmap(&[0x100000], 9), Ok(1));
        assert_eq!(m.populated_in(0x100000, 0x100200), 512);
        assert_eq!(m.populated_in(0x100001, 0x100000), 0, "inverted range");
    }

    #[test]
    fn decrease_needs_populated_aligned_extents() {
        let mut m = SimMemory::new(&[(0, 1024)], 4096);
        assert_eq!(m.decrease_reservation(&[512, 1024], 9), Ok(1));
        assert_eq!(m.tot_pages(), 512);
        assert_eq!(m.decrease_reservation(&[3], 1), Ok(0), "misaligned");
        m.faults.fail_calls = Some((Errno::ENOMEM, 1));
        assert_eq!(m.decrease_reservation(&[0], 0), Err(Errno::ENOMEM));
        assert_eq!(m.decrease_reservation(&[0], 0), Ok(1));
    }

    #[test]
    fn pod_kills_a_guest_that_touches_beyond_its_target() {
        let mut m = SimMemory::new_pod(&[(0, 1000)], 10, 1000);
        assert_eq!(m.tot_pages(), 10);
        for g in 0..10 {
            assert!(m.touch(g));
        }
        assert!(!m.touch(10));
        assert!(m.killed.as_deref().unwrap().contains("PoD"));
        // Ballooning PoD entries out first is what keeps a guest alive.
        let mut m = SimMemory::new_pod(&[(0, 1000)], 10, 1000);
        let excess: Vec<Gfn> = (10..1000).collect();
        assert_eq!(m.decrease_reservation(&excess, 0), Ok(990));
        assert_eq!((m.pod_entries(), m.pod_cache), (10, 10));
        assert!((0..10).all(|g| m.touch(g)) && m.killed.is_none());
    }

    #[test]
    fn pod_cache_is_trimmed_and_stolen_like_xen() {
        // 1000 entries, 600 cache frames, 4 special pages.
        let mut m = SimMemory::new_pod(&[(0, 1000)], 600, 2000).with_populated(&[(5000, 4)]);
        assert_eq!(m.tot_pages(), 604);
        assert!((0..10).all(|g| m.touch(g)));
        assert_eq!(
            (m.pod_entries(), m.pod_cache, m.tot_pages()),
            (990, 590, 604)
        );
        // Entries outnumber the cache: a released populated frame goes into the cache.
        assert_eq!(m.decrease_reservation(&[0], 0), Ok(1));
        assert_eq!((m.pod_cache, m.tot_pages()), (591, 604));
        // Release entries until they are fewer than the cache: trimmed, frames freed.
        let excess: Vec<Gfn> = (500..1000).collect();
        let host = m.host_free_pages;
        assert_eq!(m.decrease_reservation(&excess, 0), Ok(500));
        assert_eq!((m.pod_entries(), m.pod_cache), (490, 490));
        assert_eq!(m.host_free_pages - host, 101);
        // Now entries == cache: releasing a populated frame frees it.
        assert_eq!(m.decrease_reservation(&[1], 0), Ok(1));
        assert_eq!((m.pod_cache, m.populated_pages()), (490, 4 + 8));
    }

    #[test]
    fn set_pod_target_resizes_the_cache_within_the_entries() {
        let mut m = SimMemory::new_pod(&[(0, 1000)], 600, 2000);
        m.host_free_pages = 1000;
        assert!((0..100).all(|g| m.touch(g)));
        m.set_pod_target(400);
        assert_eq!(
            (m.pod_cache, m.tot_pages(), m.host_free_pages),
            (300, 400, 1200)
        );
        m.set_pod_target(5000);
        assert_eq!(m.pod_cache, 900, "never more than the outstanding entries");
        assert_eq!(m.host_free_pages, 600);
        let mut plain = SimMemory::new(&[(0, 10)], 20);
        plain.set_pod_target(5);
        assert_eq!(plain.tot_pages(), 10, "no PoD entries: nothing to do");
    }

    #[test]
    fn populate_respects_order_limit_faults_and_host_memory() {
        let mut m = SimMemory::new(&[], 1 << 20);
        m.max_order = 0;
        assert_eq!(m.populate_physmap(&[0], 9), Ok(0));
        assert_eq!(m.populate_physmap(&[0, 1], 0), Ok(2));
        m.faults.max_extents_per_call = Some(1);
        assert_eq!(m.populate_physmap(&[2, 3], 0), Ok(1));
        m.faults.max_extents_per_call = None;
        m.host_free_pages = 1;
        assert_eq!(m.populate_physmap(&[4, 5], 0), Ok(1));
        assert_eq!(m.populate_physmap(&[3], 0), Ok(0), "host out of memory");
        assert_eq!(m.calls, 5);
    }
}
