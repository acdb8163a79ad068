//! The kernel's grant tables: our v1 table placed in the device window, the foreign
//! mapper over the same window, and (if the command line gives a role) the two-guest
//! handshake. The logic is in `guest::xen::grant`; this is where it meets page tables.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use guest::mm::hotplug::HotplugWindow;
use guest::mm::Pfn;
use guest::xen::grant::pair::{Env, FrameAccess, Kit, Pair, Role, PAGE_BYTES};
use guest::xen::grant::{ForeignMapper, GrantTable};
use xen_bindings::abi::grant_table::GRANT_ENTRIES_PER_FRAME_V1;
use xen_bindings::traits::{DomId, GrantEntryShared, GrantOps};

use crate::hv::{Xen, Xenstore};
use crate::kmem::Model;

/// Grant-table frames we set up at least: 4 frames are 2040 usable refs. A granter role
/// of more pages gets enough frames for all of them (16,384 pages: 33 frames); Xen's
/// default `max_grant_frames` is 32 (64 in 4.17), and the query's maximum caps it.
const TABLE_FRAMES: u32 = 4;

/// Frames for `pages` grants beside the reserved entries.
fn table_frames_for(role: Option<Role>) -> u32 {
    let pages = match role {
        Some(Role::Granter { pages, .. }) => pages,
        _ => 0,
    };
    let per = GRANT_ENTRIES_PER_FRAME_V1 as u32;
    (pages + guest::xen::grant::NR_RESERVED_ENTRIES)
        .div_ceil(per)
        .max(TABLE_FRAMES)
}

/// The grant state the event loop owns.
pub struct Grants {
    pub table: GrantTable<'static>,
    pub mapper: ForeignMapper,
    pub pair: Option<Pair>,
    /// The role the command line asked for (a new domain starts it afresh).
    role: Option<Role>,
    /// Table frames as `(nr_frames, max_nr_frames)` from `GNTTABOP_query_size` at boot.
    pub query: (u32, u32),
    /// What `data/grant/` was last given, so it is rewritten only when something moved.
    published: Vec<(&'static str, String)>,
}

/// Places our grant table in the device window and builds the mapper. `None` (logged)
/// when Xen refuses: the guest runs on without grants.
pub fn setup(
    xen: &Xen,
    mm: &Model,
    window: &HotplugWindow,
    role: Option<Role>,
    me: DomId,
) -> Option<Grants> {
    let mut hv = *xen;
    let query = match hv.query_size() {
        Ok(q) => q,
        Err(e) => {
            log::error!("grant: GNTTABOP_query_size failed ({e:?}); no grant table");
            return None;
        }
    };
    let n = table_frames_for(role).min(query.1);
    let mut mapper = ForeignMapper::new(window.device);
    let range = match mapper.map_table_frames(mm, &mut hv, 0, n) {
        Ok(r) => r,
        Err(e) => {
            log::error!("grant: cannot place {n} table frames in the device window: {e}");
            return None;
        }
    };
    if let Err(e) = crate::arch::page_tables::map(range.start.addr(), range.end.addr()) {
        log::error!("grant: no page tables for the table frames: {e:?}");
        return None;
    }
    // SAFETY: `range` now holds Xen's grant-table frames (add_to_physmap succeeded for
    // each), identity-mapped just above, and they stay there for the domain's life (no
    // call takes a table frame back out). `GrantEntryShared` has the v1 entry's layout
    // (asserted in xen-bindings) and is all atomics, so sharing it with Xen is sound.
    let entries: &'static [GrantEntryShared] = unsafe {
        core::slice::from_raw_parts(
            range.start.addr() as *const GrantEntryShared,
            n as usize * GRANT_ENTRIES_PER_FRAME_V1,
        )
    };
    let table = GrantTable::new(entries);
    log::info!(
        "grant: v1 table of {n} frames at [{:#x}-{:#x}) (Xen: {} frames now, max {}), {} refs; foreign pages go to [{:#x}-{:#x})",
        range.start.addr(),
        range.end.addr(),
        query.0,
        query.1,
        table.status().refs,
        window.device.start.addr(),
        window.device.end.addr()
    );
    let pair = role.map(|r| {
        log::info!("grant-test: role {r:?}; waiting for data/grant-test/peer");
        Pair::new(r, me)
    });
    Some(Grants {
        table,
        mapper,
        pair,
        role,
        query,
        published: Vec::new(),
    })
}

/// The kernel's types for the handshake.
struct KernelKit;

impl Kit for KernelKit {
    type Storage = crate::kmem::Storage;
    type Xs = Xenstore;
    type Grants = Xen;
    type Events = Xen;
    type Frames = KernelFrames;
}

/// Frame contents through the identity map. A device subsection gets its page tables
/// on first use (2 MiB at a time; mapping an address with nothing behind it is harmless
/// until it is touched, and the mapper touches only slots it mapped).
pub struct KernelFrames;

impl KernelFrames {
    fn ensure_mapped(pfn: Pfn) -> Result<(), String> {
        crate::arch::page_tables::map(pfn.addr(), pfn.addr() + PAGE_BYTES as u64)
            .map(drop)
            .map_err(|e| format!("page tables for {pfn:?}: {e:?}"))
    }
}

impl FrameAccess for KernelFrames {
    fn fill(&mut self, pfn: Pfn, byte: &dyn Fn(usize) -> u8) {
        if let Err(e) = Self::ensure_mapped(pfn) {
            return log::error!("grant-test: {e}");
        }
        let p = pfn.addr() as *mut u8;
        for i in 0..PAGE_BYTES {
            // SAFETY: `pfn` is a frame the allocator gave the granter (ours, populated),
            // mapped above; nobody else writes it until it is granted.
            unsafe { p.add(i).write(byte(i)) };
        }
    }

    fn write_u64(&mut self, pfn: Pfn, offset: usize, v: u64) {
        if let Err(e) = Self::ensure_mapped(pfn) {
            return log::error!("grant-test: {e}");
        }
        debug_assert!(offset.is_multiple_of(8) && offset < PAGE_BYTES);
        // SAFETY: `pfn` is a slot holding a read-write grant mapping (the mapper checks),
        // mapped above; the offset is inside the page. Volatile: the page is shared with
        // the granter, the store must happen.
        unsafe { (pfn.addr() as *mut u64).add(offset / 8).write_volatile(v) };
    }

    fn read(&mut self, pfn: Pfn, buf: &mut [u8; PAGE_BYTES]) {
        if let Err(e) = Self::ensure_mapped(pfn) {
            buf.fill(0);
            return log::error!("grant-test: {e}");
        }
        let p = pfn.addr() as *const u64;
        for (i, chunk) in buf.chunks_exact_mut(8).enumerate() {
            // SAFETY: `pfn` is our frame or a slot the mapper holds a grant mapping in
            // (checked by the caller's state), mapped above. Volatile: the granter may
            // write its page concurrently; we want whatever is there, not a cached view.
            let v = unsafe { p.add(i).read_volatile() };
            chunk.copy_from_slice(&v.to_le_bytes());
        }
    }
}

impl Grants {
    /// After resuming in a new domain (domid `me` now): our table frames back in place,
    /// every grant and foreign mapping of the old domain forgotten (their frames and slots
    /// reclaimed), and the handshake role started afresh.
    pub fn resumed(&mut self, xen: &Xen, mm: &Model, me: DomId) {
        let mut hv = *xen;
        match self.mapper.readd_table_frames(mm, &mut hv) {
            Ok(n) => log::info!("grant: {n} table frames added again"),
            Err(e) => log::error!("grant: re-adding the table frames failed ({e:?})"),
        }
        let slots = self.mapper.forget_foreign(mm);
        let refs = self.table.forget_all();
        let frames = self.pair.as_mut().map_or(0, |p| p.resumed(mm));
        log::info!(
            "grant: resumed: {} grants, {slots} foreign mappings and {frames} granted frames of the old domain reclaimed",
            refs.len()
        );
        self.pair = self.role.map(|r| Pair::new(r, me));
        self.published.clear();
    }

    /// Whether the role wants to tick again at once (a churning mapper): the event loop
    /// then does not sleep.
    pub fn busy(&self) -> bool {
        self.pair.as_ref().is_some_and(Pair::busy)
    }

    /// One step of the handshake, if this guest has a role.
    pub fn tick(&mut self, xen: &Xen, xs: &mut Xenstore, mm: &Model) {
        let Some(pair) = self.pair.as_mut() else {
            return;
        };
        let mut hv = *xen;
        let mut env = Env::<KernelKit> {
            mm,
            xs,
            gnt: &mut hv,
            ev: xen,
            frames: &mut KernelFrames,
        };
        match pair {
            Pair::Granter(g) => g.tick(&mut self.table, &mut env),
            Pair::Mapper(m) => m.tick(&mut self.mapper, &mut env),
        }
    }

    /// The `data/grant/` fields if they differ from what was last published (then they
    /// count as published).
    pub fn changed_fields(&mut self) -> Option<Vec<(&'static str, String)>> {
        let now = self.fields();
        if now == self.published {
            return None;
        }
        self.published.clone_from(&now);
        Some(now)
    }

    /// Everything published under `data/grant/`.
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        let mut out: Vec<(&'static str, String)> = self
            .table
            .status()
            .fields()
            .into_iter()
            .chain(self.mapper.status().fields())
            .map(|(k, v)| (k.trim_start_matches("grant/"), format!("{v}")))
            .collect();
        let c = self.mapper.counters();
        out.push(("map-batches", format!("{}", c.batches)));
        out.push(("map-failures", format!("{}", c.map_failures)));
        out.push(("unmap-failures", format!("{}", c.unmap_failures)));
        out.push(("max-table-frames", format!("{}", self.query.1)));
        if let Some(p) = &self.pair {
            out.push(("role", p.role().into()));
            out.push(("pair-state", p.state().as_str().into()));
        }
        out
    }
}
