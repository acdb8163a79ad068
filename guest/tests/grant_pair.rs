//! The two-guest grant handshake (`xen::grant::pair`) against the simulator: the test
//! plays the *other* guest through toolstack-side xenstore writes under
//! `/local/domain/<PEER>/data/grant-test/` and through `SimGrants` (a simulated granter
//! for our `Mapper`, a simulated mapper of our grants for our `Granter`), and checks
//! what each machine publishes, what it holds in the memory model, and what the
//! simulated Xen holds.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use guest::mm::hotplug::HotplugWindow;
use guest::mm::{HeapStorage, MemModel, PageState, Pfn, PfnRange, SectionKind, StateKind};
use guest::xen::grant::handshake::{self, encode_refs, parse_refs};
use guest::xen::grant::pair::{
    encode_checksum, stamp, Env, FrameAccess, Granter, Kit, Mapper, PairState, BENCH_ROUNDS,
    PAGE_BYTES, RETRY_NS, TOKEN,
};
use guest::xen::grant::{ForeignMapper, GrantTable, RefState, MAX_BATCH};
use guest::xen::xenstore::{WatchEvent, XenstoreClient, XsError, XsOps};
use proptest::prelude::*;
use xen_bindings::abi::grant_table::{gntst, gtf, GRANT_ENTRIES_PER_FRAME_V1};
use xen_bindings::abi::xs_wire::{XsPerm, XsPermKind};
use xen_bindings::sim::evtchn::Binding;
use xen_bindings::sim::grant::{Frame, SimGrants};
use xen_bindings::sim::SimXen;
use xen_bindings::traits::{GrantEntryShared, Port};
use xen_bindings::Errno;

const ME: u16 = 3;
const PEER: u16 = 5;
/// The event channel the simulated granter publishes.
const PEER_PORT: Port = 7;

// ---- the world the machines run in ---------------------------------------------------

/// Our frames (written by the granter) and the foreign slots (read through the sim).
struct Frames {
    own: BTreeMap<Pfn, Frame>,
    grants: SimGrants,
    /// The device window: a slot there with nothing mapped reads as all ones and drops
    /// writes (as an HVM-type guest sees a gfn with nothing behind it).
    device: PfnRange,
}

/// The simulator's types for the handshake.
struct SimKit;

impl Kit for SimKit {
    type Storage = HeapStorage;
    type Xs = XenstoreClient<SimXen>;
    type Grants = SimGrants;
    type Events = SimXen;
    type Frames = Frames;
}

impl FrameAccess for Frames {
    fn fill(&mut self, pfn: Pfn, byte: &dyn Fn(usize) -> u8) {
        let f = self.own.entry(pfn).or_insert([0; PAGE_BYTES]);
        for (i, b) in f.iter_mut().enumerate() {
            *b = byte(i);
        }
    }

    fn write_u64(&mut self, pfn: Pfn, offset: usize, v: u64) {
        let at = offset..offset + 8;
        if let Some(mut f) = self.grants.mapped_frame(pfn.0) {
            f[at].copy_from_slice(&v.to_le_bytes());
            // A write through a read-only mapping would fault in the kernel.
            self.grants
                .write_mapped(pfn.0, &f)
                .unwrap_or_else(|e| panic!("write through the mapping at {pfn:?}: {e:?}"));
        } else if let Some(f) = self.own.get_mut(&pfn) {
            f[at].copy_from_slice(&v.to_le_bytes());
        } else if self.device.contains(pfn) {
            // Nothing behind the slot (Xen dropped the mapping): the write goes nowhere.
        } else {
            panic!("write to {pfn:?}: neither a frame of ours nor a mapped slot");
        }
    }

    fn read(&mut self, pfn: Pfn, buf: &mut [u8; PAGE_BYTES]) {
        if let Some(f) = self.grants.mapped_frame(pfn.0) {
            *buf = f;
        } else if let Some(f) = self.own.get(&pfn) {
            *buf = *f;
        } else if self.device.contains(pfn) {
            buf.fill(0xff);
        } else {
            panic!("read of {pfn:?}: neither a frame of ours nor a mapped slot");
        }
    }
}

struct World {
    sim: SimXen,
    xs: XenstoreClient<SimXen>,
    gnt: SimGrants,
    mm: MemModel<HeapStorage>,
    window: HotplugWindow,
    frames: Frames,
}

impl World {
    fn new(ram_mib: u64) -> World {
        let (sim, xs) = common::xs_domain(ME);
        let gnt = SimGrants::new(ME, 1, 4);
        // A 2 MiB kernel image.
        let (mm, window) = common::ram_model(ram_mib, 2);
        let frames = Frames {
            own: BTreeMap::new(),
            grants: gnt.clone(),
            device: window.device,
        };
        World {
            sim,
            xs,
            gnt,
            mm,
            window,
            frames,
        }
    }

    fn env(&mut self) -> Env<'_, SimKit> {
        Env {
            mm: &self.mm,
            xs: &mut self.xs,
            gnt: &mut self.gnt,
            ev: &self.sim,
            frames: &mut self.frames,
        }
    }

    /// Our own `data/grant-test/<key>`, read as the toolstack.
    fn ours(&self, key: &str) -> Option<String> {
        match self.sim.xs_read(&format!("data/grant-test/{key}")) {
            Ok(v) => Some(String::from_utf8(v).unwrap()),
            Err(Errno::ENOENT) => None,
            Err(e) => panic!("reading our {key}: {e:?}"),
        }
    }

    /// The toolstack writes our `data/grant-test/peer`.
    fn set_peer(&self, v: &str) {
        self.sim.xs_write("data/grant-test/peer", v).unwrap();
    }

    /// The toolstack introduces PEER.
    fn introduce(&self) {
        self.set_peer(&PEER.to_string());
    }

    /// The toolstack writes our `data/grant-test/command`.
    fn command(&self, c: &str) {
        self.sim.xs_write("data/grant-test/command", c).unwrap();
    }

    /// The peer writes its `data/grant-test/<key>`.
    fn peer_write(&self, key: &str, v: impl AsRef<[u8]>) {
        self.sim.xs_write(&peer_key(key), v).unwrap();
    }

    /// The peer's domain directory as libxl makes it, with its `data/grant-test`
    /// shared with us (read) or not.
    fn peer_dir(&self, shared: bool) {
        let home = format!("/local/domain/{PEER}");
        self.sim.xs_write(&home, "").unwrap();
        self.sim
            .xs_set_perms(
                &home,
                vec![perm(XsPermKind::None, 0), perm(XsPermKind::Read, PEER)],
            )
            .unwrap();
        self.sim.xs_write(&format!("{home}/data"), "").unwrap();
        self.sim
            .xs_set_perms(&format!("{home}/data"), vec![perm(XsPermKind::None, PEER)])
            .unwrap();
        self.sim.xs_write(&peer_key(""), "").unwrap();
        self.share_peer_dir(shared);
    }

    /// `xenstore-chmod -r` of the peer's `data/grant-test`: nodes carry their own
    /// permissions, so the ones already there change too.
    fn share_peer_dir(&self, shared: bool) {
        let mut p = vec![perm(XsPermKind::None, PEER)];
        if shared {
            p.push(perm(XsPermKind::Read, ME));
        }
        self.sim.xs_set_perms(&peer_key(""), p.clone()).unwrap();
        for child in self.sim.xs_directory(&peer_key("")).unwrap() {
            self.sim.xs_set_perms(&peer_key(&child), p.clone()).unwrap();
        }
    }

    /// The peer's domain dies as far as xenstore is concerned: its tree goes.
    fn rm_peer_dir(&self) {
        self.sim.xs_rm(&format!("/local/domain/{PEER}")).unwrap();
    }

    /// Every watch event queued for us.
    fn events(&mut self) -> Vec<WatchEvent> {
        let mut out = Vec::new();
        while let Some(e) = self.xs.take_watch_event().unwrap() {
            out.push(e);
        }
        out
    }

    /// Our `rejected-peers` counts `n` refusals and there is a `peer-error`.
    fn assert_rejected(&self, n: usize, bad: &str) {
        assert_eq!(self.ours("rejected-peers"), Some(n.to_string()), "{bad:?}");
        assert!(self.ours("peer-error").is_some(), "{bad:?}");
    }

    fn port(&self, port: Port) -> Option<Binding> {
        self.sim.lock().evtchn.get(port).map(|p| p.binding)
    }

    fn port_sends(&self, port: Port) -> u64 {
        self.sim.lock().evtchn.get(port).unwrap().sends
    }

    fn allocated(&self) -> u64 {
        self.mm.census().pages_in(StateKind::Allocated)
    }

    fn foreign(&self) -> u64 {
        self.mm
            .census()
            .pages_of(SectionKind::Device, StateKind::Foreign)
    }

    fn device_state(&self, pfn: Pfn) -> PageState {
        self.mm.read().pfn_to_device_page(pfn).unwrap().state()
    }

    /// After an unmap round a slot is Unpopulated, or its device subsection — wholly
    /// free — was removed and its memmap given back (then no descriptor is reachable).
    fn slot_is_free(&self, pfn: Pfn) -> bool {
        let g = self.mm.read();
        match g.pfn_to_device_page(pfn) {
            Some(p) => p.state() == PageState::Unpopulated,
            None => !self.mm.pfn_valid(pfn),
        }
    }

    fn state_of(&self, pfn: Pfn) -> PageState {
        self.mm.read().pfn_to_page(pfn).unwrap().state()
    }

    // ---- PEER as the mapper of our grants (through the simulated Xen) ----

    /// PEER's domain comes up in the simulated Xen, with no frames of its own.
    fn add_mapping_peer(&self) {
        self.gnt.add_peer(PEER, 0, 8);
    }

    /// PEER maps every ref read-only; returns the handles and the frames.
    fn peer_maps(&self, refs: &[u32]) -> Vec<(u32, Pfn)> {
        refs.iter()
            .map(|&r| {
                let m = self.gnt.peer_map_own(PEER, r, true).unwrap();
                (m.handle, Pfn(u64::from(m.frame)))
            })
            .collect()
    }

    /// PEER comes up and maps every ref read-only; returns the handles and the frames.
    fn peer_maps_all(&self, refs: &[u32]) -> Vec<(u32, Pfn)> {
        self.add_mapping_peer();
        self.peer_maps(refs)
    }

    /// PEER unmaps each of `maps`.
    fn peer_unmaps(&self, maps: &[(u32, Pfn)]) {
        for &(h, _) in maps {
            self.gnt.peer_unmap_own(h).unwrap();
        }
    }

    // ---- PEER as the granter of pages to us ----

    /// PEER with `n` pattern pages granted to us, read-only unless `writable`; returns
    /// the refs (page order).
    fn granter_of(&self, n: usize, writable: bool) -> Vec<u32> {
        self.gnt.add_peer(PEER, n, n + 16);
        (0..n)
            .map(|i| {
                self.gnt.peer_write_frame(PEER, i, &pattern(i));
                self.gnt.peer_grant(PEER, i, ME, !writable)
            })
            .collect()
    }

    /// PEER with `n` pattern pages granted read-only to us; returns the refs (page
    /// order).
    fn sim_granter(&self, n: usize) -> Vec<u32> {
        self.granter_of(n, false)
    }

    /// PEER publishes refs, evtchn and state=granted.
    fn publish_grants(&self, refs: &[u32]) {
        self.peer_write("pages", refs.len().to_string());
        self.peer_write("refs", encode_refs(refs));
        self.peer_write("evtchn", PEER_PORT.to_string());
        self.peer_write("state", "granted");
    }

    /// PEER's directory, shared with us, with its grants published.
    fn share_grants(&self, refs: &[u32]) {
        self.peer_dir(true);
        self.publish_grants(refs);
    }

    /// PEER with `n` pattern pages, granted read-write (or, lying, read-only), its
    /// directory shared and `access=rw` and the grants published; returns the refs.
    fn rw_granter(&self, n: usize, grant_rw: bool) -> Vec<u32> {
        let refs = self.granter_of(n, grant_rw);
        self.peer_dir(true);
        self.peer_write("access", "rw");
        self.publish_grants(&refs);
        refs
    }
}

fn perm(kind: XsPermKind, domid: u16) -> XsPerm {
    XsPerm::new(kind, domid)
}

fn peer_key(key: &str) -> String {
    if key.is_empty() {
        format!("/local/domain/{PEER}/data/grant-test")
    } else {
        format!("/local/domain/{PEER}/data/grant-test/{key}")
    }
}

/// Page `idx` of the handshake pattern.
fn pattern(idx: usize) -> Frame {
    let mut f = [0u8; PAGE_BYTES];
    for (i, b) in f.iter_mut().enumerate() {
        *b = handshake::pattern_byte(idx as u32, i);
    }
    f
}

fn pattern_sum(n: usize) -> u64 {
    let pages: Vec<Frame> = (0..n).map(pattern).collect();
    handshake::checksum(pages.iter().map(|p| &p[..]))
}

/// The live part of our simulated grant table. The table memory is leaked (one small
/// block per test) so that a fixture can own the `GrantTable` that borrows it.
fn live(mem: Arc<[GrantEntryShared]>) -> &'static [GrantEntryShared] {
    &Box::leak(Box::new(mem))[..GRANT_ENTRIES_PER_FRAME_V1]
}

fn is_watch_on(events: &[WatchEvent], path: &str) -> bool {
    events.iter().any(|e| e.path == path && e.token == TOKEN)
}

// ---- the machines on our side ------------------------------------------------------------

/// Our granter of `pages` pages, with our grant table, in its world.
struct GranterRig {
    w: World,
    t: GrantTable<'static>,
    g: Granter,
    pages: usize,
    /// Frames allocated before the granter allocated any.
    alloc0: u64,
}

impl GranterRig {
    /// A read-only granter in a 64 MiB guest.
    fn new(pages: usize) -> GranterRig {
        GranterRig::on(World::new(64), pages)
    }

    fn on(w: World, pages: usize) -> GranterRig {
        let t = GrantTable::new(live(w.gnt.own_table()));
        let alloc0 = w.allocated();
        GranterRig {
            w,
            t,
            g: Granter::new(ME, pages as u32),
            pages,
            alloc0,
        }
    }

    /// The granter grants read-write access.
    fn writable(self) -> GranterRig {
        GranterRig {
            g: self.g.writable(true),
            ..self
        }
    }

    fn tick(&mut self) {
        self.g.tick(&mut self.t, &mut self.w.env());
    }

    /// The toolstack introduces PEER; a tick.
    fn introduce(&mut self) {
        self.w.introduce();
        self.tick();
    }

    /// Introduced, the granter has published its grants to PEER; returns the refs and
    /// the event channel.
    fn grant(&mut self) -> (Vec<u32>, Port) {
        self.introduce();
        assert_eq!(
            self.g.state(),
            PairState::Granted,
            "error: {:?}",
            self.g.error()
        );
        let refs = parse_refs(self.w.ours("refs").unwrap().as_bytes()).unwrap();
        assert_eq!(refs.len(), self.pages);
        let port: Port = self.w.ours("evtchn").unwrap().parse().unwrap();
        (refs, port)
    }

    /// PEER writes its state; a tick.
    fn peer_says(&mut self, state: &str) {
        self.w.peer_write("state", state);
        self.tick();
    }

    /// PEER's directory appears, shared with us or not, with `state`; a tick.
    fn peer_appears(&mut self, shared: bool, state: &str) {
        self.w.peer_dir(shared);
        self.peer_says(state);
    }

    /// Failed, saying `because`.
    fn assert_failed(&self, because: &str) {
        assert_eq!(self.g.state(), PairState::Failed);
        let error = self.g.error();
        assert!(error.is_some_and(|e| e.contains(because)), "{error:?}");
    }

    /// Ended, and every frame it allocated given back.
    fn assert_ended(&self) {
        assert_eq!(
            self.g.state(),
            PairState::Ended,
            "error: {:?}",
            self.g.error()
        );
        assert_eq!(self.w.allocated(), self.alloc0, "every frame freed");
    }
}

/// A granter of 4 pages that has granted to PEER, whose directory has appeared (shared
/// with us or not) saying `wait-grants`: still Granted.
fn waiting_granter(shared: bool) -> GranterRig {
    let mut r = GranterRig::new(4);
    r.grant();
    r.peer_appears(shared, "wait-grants");
    assert_eq!(r.g.state(), PairState::Granted);
    r
}

/// Our mapper, with its device-window slots, in its world.
struct MapperRig {
    w: World,
    fm: ForeignMapper,
    m: Mapper,
}

impl MapperRig {
    /// A mapper in a 64 MiB guest.
    fn new() -> MapperRig {
        MapperRig::on(World::new(64))
    }

    fn on(w: World) -> MapperRig {
        MapperRig {
            fm: ForeignMapper::new(w.window.device),
            m: Mapper::new(ME),
            w,
        }
    }

    fn tick(&mut self) {
        self.m.tick(&mut self.fm, &mut self.w.env());
    }

    /// The toolstack introduces PEER; two ticks (one sees the peer, one its grants).
    fn introduce(&mut self) {
        self.w.introduce();
        self.tick();
        self.tick();
    }

    /// The toolstack writes our command; a tick.
    fn command(&mut self, c: &str) {
        self.w.command(c);
        self.tick();
    }

    /// Mapped `n` pages of PEER as a read-only granter; returns its refs.
    fn map_granter(&mut self, n: usize) -> Vec<u32> {
        let refs = self.w.sim_granter(n);
        self.w.share_grants(&refs);
        self.introduce();
        assert_eq!(
            self.m.state(),
            PairState::Mapped,
            "error: {:?}",
            self.m.error()
        );
        refs
    }

    /// Failed, saying `because`.
    fn assert_failed(&self, because: &str) {
        assert_eq!(self.m.state(), PairState::Failed);
        let error = self.m.error();
        assert!(error.is_some_and(|e| e.contains(because)), "{error:?}");
    }

    /// No slot held, nothing foreign in the model, nothing mapped in Xen.
    fn assert_nothing_mapped(&self) {
        assert_eq!(self.w.foreign(), 0);
        assert!(self.m.slots().is_empty());
        assert!(self.w.gnt.mapped_gfns().is_empty());
    }
}

// ---- granter ---------------------------------------------------------------------------

/// Values of `data/grant-test/peer` both roles refuse (we are ME = 3).
const BAD_PEERS: [&str; 10] = [
    "",
    "00",
    "3",
    "abc",
    "07",
    "+5",
    "5 ",
    "32752",
    "99999999999",
    "\u{e9}",
];

#[test]
fn granter_happy_path_grants_verifies_and_frees_everything() {
    const N: usize = 16;
    let mut r = GranterRig::new(N);

    // No peer yet: nothing happens, nothing is published.
    r.tick();
    assert_eq!(r.g.state(), PairState::WaitPeer);
    assert_eq!(r.w.ours("state"), None);
    assert_eq!(r.w.allocated(), r.alloc0);

    let (refs, port) = r.grant();
    assert_eq!(r.w.allocated(), r.alloc0 + N as u64, "N frames allocated");
    assert_eq!(r.g.frames_held(), N);
    assert_eq!(r.w.ours("pages").as_deref(), Some("16"));
    assert_eq!(r.w.ours("state").as_deref(), Some("granted"));
    assert_eq!(r.t.status().outstanding, N as u64);
    let mut sorted = refs.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), N, "distinct refs");
    assert!(refs.iter().all(|&gref| gref >= 8));
    // An unbound port for the peer.
    assert_eq!(r.w.port(port), Some(Binding::Unbound { remote: PEER }));
    // The directory: ours, the peer may read (and so may what we wrote into it).
    let dir_perms = vec![perm(XsPermKind::None, ME), perm(XsPermKind::Read, PEER)];
    for node in [
        "data/grant-test",
        "data/grant-test/refs",
        "data/grant-test/state",
    ] {
        assert_eq!(r.w.sim.xs_get_perms(node).unwrap(), dir_perms, "{node}");
    }
    // Every entry grants read-only access to PEER.
    for &gref in &refs {
        assert_eq!(
            r.t.entry_flags(gref),
            Some(gtf::PERMIT_ACCESS | gtf::READONLY),
            "ref {gref}"
        );
        assert!(matches!(
            r.t.ref_state(gref),
            Some(RefState::Granted {
                domid: PEER,
                readonly: true,
                ..
            })
        ));
    }
    // It watches the peer's state.
    let ev = r.w.events();
    assert!(is_watch_on(&ev, &peer_key("state")), "{ev:?}");

    // The simulated mapper maps every ref; a writable map of a read-only grant fails.
    r.w.add_mapping_peer();
    assert_eq!(
        r.w.gnt.peer_map_own(PEER, refs[0], false),
        Err(gntst::GENERAL_ERROR)
    );
    let maps = r.w.peer_maps(&refs);
    for (i, &(_, pfn)) in maps.iter().enumerate() {
        assert_eq!(r.w.state_of(pfn), PageState::Allocated, "page {i}");
        assert_eq!(
            r.w.frames.own[&pfn],
            pattern(i),
            "page {i} holds pattern {i}"
        );
        assert_ne!(r.t.entry_flags(refs[i]).unwrap() & gtf::READING, 0);
    }

    // Still unseen: the peer's xenstore does not exist yet.
    r.tick();
    assert_eq!(r.g.state(), PairState::Granted);

    // The peer publishes its checksum and state=mapped, and notifies.
    r.w.peer_dir(true);
    r.w.peer_write("checksum", encode_checksum(pattern_sum(N)));
    r.w.peer_write("state", "mapped");
    assert!(is_watch_on(&r.w.events(), &peer_key("state")));
    r.w.sim.lock().evtchn.set_pending(port);
    assert!(!r.g.notified());
    r.tick();
    assert_eq!(r.g.state(), PairState::Granted);
    assert_eq!(r.g.verified(), Some(true));
    assert!(r.g.notified());
    assert_eq!(r.w.ours("verified").as_deref(), Some("ok"));
    assert_eq!(r.w.allocated(), r.alloc0 + N as u64);

    // The peer unmaps and says so: every grant ends and every frame goes back.
    r.w.peer_unmaps(&maps);
    r.peer_says("unmapped");
    r.assert_ended();
    assert_eq!(r.w.ours("state").as_deref(), Some("ended"));
    assert_eq!(r.g.frames_held(), 0);
    let st = r.t.status();
    assert_eq!((st.outstanding, st.deferred), (0, 0));
    for &gref in &refs {
        assert_eq!(r.t.entry_flags(gref), Some(0));
        assert_eq!(r.t.ref_state(gref), Some(RefState::Free));
    }
    assert_eq!(r.w.port(port), None, "event channel closed");
    assert_eq!(r.g.error(), None);
    // Ended is final: more ticks change nothing.
    r.tick();
    r.assert_ended();
}

#[test]
fn granter_reports_a_wrong_checksum_as_mismatch() {
    for bad in [
        encode_checksum(pattern_sum(8) ^ 1),
        // Only 7 pages' worth: the mapper missed one.
        encode_checksum(pattern_sum(7)),
        "not a checksum".to_string(),
        encode_checksum(pattern_sum(8)).to_uppercase(),
    ] {
        let mut r = GranterRig::new(8);
        r.grant();
        r.w.peer_dir(true);
        r.w.peer_write("checksum", &bad);
        r.peer_says("mapped");
        assert_eq!(r.g.verified(), Some(false), "{bad:?}");
        assert_eq!(r.w.ours("verified").as_deref(), Some("mismatch"), "{bad:?}");
        assert_eq!(r.g.state(), PairState::Granted);
    }
}

/// Page `idx` of the pattern salted with `nonce`.
fn salted(nonce: u64, idx: usize) -> Frame {
    let mut f = [0u8; PAGE_BYTES];
    for (i, b) in f.iter_mut().enumerate() {
        *b = handshake::pattern_byte_with(nonce, idx as u32, i);
    }
    f
}

fn salted_sum(nonce: u64, n: usize) -> u64 {
    let pages: Vec<Frame> = (0..n).map(|i| salted(nonce, i)).collect();
    handshake::checksum(pages.iter().map(|p| &p[..]))
}

const NONCE: u64 = 0x5eed_f00d_1234_abcd;

#[test]
fn granter_salts_its_frames_with_the_toolstack_nonce() {
    const N: usize = 8;
    let mut r = GranterRig::new(N);
    r.w.sim
        .xs_write(handshake::NONCE_KEY, encode_checksum(NONCE))
        .unwrap();
    let (refs, _) = r.grant();
    r.w.add_mapping_peer();
    let maps = r.w.peer_maps(&refs);
    for (i, &(_, pfn)) in maps.iter().enumerate() {
        assert_eq!(r.w.frames.own[&pfn], salted(NONCE, i), "page {i}");
    }
    assert_eq!(handshake::pattern_nonce(&r.w.frames.own[&maps[0].1]), NONCE);
    // The unsalted checksum (a mapper that never read the frames) is a mismatch ...
    r.w.peer_dir(true);
    r.w.peer_write("checksum", encode_checksum(pattern_sum(N)));
    r.peer_says("mapped");
    assert_eq!(r.w.ours("verified").as_deref(), Some("mismatch"));
    // ... the salted one matches.
    let mut r = GranterRig::new(N);
    r.w.sim
        .xs_write(handshake::NONCE_KEY, encode_checksum(NONCE))
        .unwrap();
    r.grant();
    r.w.peer_dir(true);
    r.w.peer_write("checksum", encode_checksum(salted_sum(NONCE, N)));
    r.peer_says("mapped");
    assert_eq!(r.w.ours("verified").as_deref(), Some("ok"));
}

#[test]
fn granter_refuses_a_malformed_nonce_and_allocates_nothing() {
    for bad in ["", "xyz", "5EEDF00D1234ABCD", "5eedf00d1234abc"] {
        let mut r = GranterRig::new(4);
        r.w.sim.xs_write(handshake::NONCE_KEY, bad).unwrap();
        r.introduce();
        r.assert_failed("data/grant-nonce is not 16 lower-case hex digits");
        assert_eq!(r.w.allocated(), r.alloc0, "{bad:?}");
    }
}

#[test]
fn mapper_learns_the_nonce_only_from_the_granter_s_frames() {
    const N: usize = 8;
    let mut r = MapperRig::new();
    r.w.gnt.add_peer(PEER, N, N + 16);
    let refs: Vec<u32> = (0..N)
        .map(|i| {
            r.w.gnt.peer_write_frame(PEER, i, &salted(NONCE, i));
            r.w.gnt.peer_grant(PEER, i, ME, true)
        })
        .collect();
    r.w.share_grants(&refs);
    r.introduce();
    assert_eq!(r.m.state(), PairState::Mapped, "error: {:?}", r.m.error());
    assert_eq!(r.w.ours("pattern-nonce"), Some(encode_checksum(NONCE)));
    assert_eq!(r.w.ours("pattern-errors").as_deref(), Some("0"));
    assert_eq!(
        r.w.ours("checksum"),
        Some(encode_checksum(salted_sum(NONCE, N)))
    );
    // Re-verifying keeps the nonce; a frame that changed under the mapping is wrong.
    r.w.gnt.peer_write_frame(PEER, 3, &salted(NONCE ^ 1, 3));
    r.command("verify");
    assert_eq!(r.w.ours("pattern-errors").as_deref(), Some("1"));
    assert_eq!(r.w.ours("pattern-nonce"), Some(encode_checksum(NONCE)));
}

#[test]
fn granter_ends_when_the_toolstack_withdraws_a_peer_that_never_shared() {
    // The mapper died before it ever shared its directory: its state never became
    // readable, so only the toolstack can tell us. Removing our `peer` does.
    let mut r = GranterRig::new(4);
    r.grant();
    r.tick();
    assert_eq!(r.g.state(), PairState::Granted);
    r.w.sim.xs_rm("data/grant-test/peer").unwrap();
    r.tick();
    r.assert_ended();
    assert_eq!(r.t.status().outstanding, 0);

    // Changing the introduction to another domain withdraws it too.
    let mut r = GranterRig::new(4);
    r.grant();
    r.w.set_peer("9");
    r.tick();
    r.assert_ended();
}

#[test]
fn granter_ends_at_once_when_the_dead_mapper_s_mappings_are_gone() {
    let mut r = GranterRig::new(8);
    let (refs, port) = r.grant();
    r.w.peer_maps_all(&refs);
    r.peer_appears(true, "wait-grants");
    assert_eq!(r.g.state(), PairState::Granted);

    // xl destroy: Xen drops the peer's mappings of our grants, then its tree goes.
    r.w.gnt.destroy_peer(PEER);
    assert_eq!(r.w.gnt.own_mapped_count(), 0);
    assert_eq!(r.t.entry_flags(refs[0]).unwrap() & gtf::READING, 0);
    r.w.rm_peer_dir();
    r.tick();
    r.assert_ended();
    assert_eq!(r.w.ours("state").as_deref(), Some("ended"));
    assert_eq!(r.t.status().outstanding, 0);
    assert_eq!(r.t.status().deferred, 0);
    assert_eq!(r.w.port(port), None);
}

#[test]
fn granter_defers_while_the_dead_mapper_still_maps_and_frees_only_what_is_released() {
    const N: usize = 8;
    let mut r = GranterRig::new(N);
    let (refs, port) = r.grant();
    let maps = r.w.peer_maps_all(&refs);
    r.peer_appears(true, "mapped");

    // The peer had unmapped half when it died; its xenstore tree goes first, Xen has not
    // torn down its domain yet.
    r.w.peer_unmaps(&maps[..N / 2]);
    r.w.rm_peer_dir();
    r.tick();
    assert_eq!(r.g.state(), PairState::Ending);
    assert_eq!(r.w.ours("state").as_deref(), Some("ending"));
    assert_eq!(r.g.frames_held(), N / 2);
    assert_eq!(
        r.w.allocated(),
        r.alloc0 + (N / 2) as u64,
        "only released frames freed"
    );
    assert_eq!(r.t.status().deferred, (N / 2) as u64);
    for (i, &gref) in refs.iter().enumerate() {
        let (state, pfn) = (r.t.ref_state(gref).unwrap(), maps[i].1);
        if i < N / 2 {
            assert_eq!(state, RefState::Free, "ref {gref}");
        } else {
            assert!(
                matches!(state, RefState::Deferred { domid: PEER, .. }),
                "ref {gref}"
            );
            assert_eq!(r.w.state_of(pfn), PageState::Allocated, "mapped frame kept");
        }
    }
    // The port stays until the end.
    assert!(r.w.port(port).is_some());

    // Xen kills the domain: its mappings go. Nothing is retried before RETRY_NS.
    r.w.gnt.destroy_peer(PEER);
    r.w.sim.advance(RETRY_NS / 2);
    r.tick();
    assert_eq!(r.g.state(), PairState::Ending);
    assert_eq!(r.w.allocated(), r.alloc0 + (N / 2) as u64);
    r.w.sim.advance(RETRY_NS / 2);
    r.tick();
    r.assert_ended();
    assert_eq!(r.w.ours("state").as_deref(), Some("ended"));
    assert_eq!(r.g.frames_held(), 0);
    assert_eq!((r.t.status().outstanding, r.t.status().deferred), (0, 0));
    assert_eq!(r.w.port(port), None);
}

#[test]
fn granter_keeps_a_frame_the_peer_still_maps_after_saying_unmapped() {
    const N: usize = 4;
    let mut r = GranterRig::new(N);
    let (refs, _) = r.grant();
    let maps = r.w.peer_maps_all(&refs);
    // A second mapping of ref 0: one unmap is not enough.
    let extra = r.w.gnt.peer_map_own(PEER, refs[0], true).unwrap();
    r.w.peer_dir(true);
    r.w.peer_write("checksum", encode_checksum(pattern_sum(N)));
    r.w.peer_unmaps(&maps[1..]);
    r.w.peer_unmaps(&maps[..1]);
    r.peer_says("unmapped");
    assert_eq!(r.g.verified(), Some(true));
    assert_eq!(r.g.state(), PairState::Ending);
    assert_eq!(r.g.frames_held(), 1);
    assert_eq!(r.w.allocated(), r.alloc0 + 1);
    assert_eq!(r.t.deferred().collect::<Vec<_>>(), [refs[0]]);
    // Retries while still mapped free nothing and keep the entry granting.
    for _ in 0..3 {
        r.w.sim.advance(RETRY_NS);
        r.tick();
        assert_eq!(r.g.state(), PairState::Ending);
        assert_eq!(r.w.allocated(), r.alloc0 + 1);
        assert_eq!(r.w.state_of(maps[0].1), PageState::Allocated);
        assert_ne!(r.t.entry_flags(refs[0]).unwrap() & gtf::PERMIT_ACCESS, 0);
        assert_eq!(r.w.ours("state").as_deref(), Some("ending"));
    }
    r.w.gnt.peer_unmap_own(extra.handle).unwrap();
    r.tick();
    assert_eq!(r.g.state(), PairState::Ending, "not before RETRY_NS");
    r.w.sim.advance(RETRY_NS);
    r.tick();
    r.assert_ended();
    assert_eq!(r.t.status().deferred, 0);
    assert_eq!(r.t.entry_flags(refs[0]), Some(0));
}

#[test]
fn granter_ends_when_the_peer_fails_or_reclaims() {
    for peer_state in ["failed", "reclaimed"] {
        let mut r = waiting_granter(true);
        r.peer_says(peer_state);
        assert_eq!(r.g.state(), PairState::Ended, "{peer_state}");
        r.assert_ended();
        assert_eq!(r.g.verified(), None);
        assert_eq!(r.w.ours("verified"), None);
    }
}

#[test]
fn granter_refuses_garbage_peers_allocates_nothing_and_keeps_waiting() {
    let mut r = GranterRig::new(8);
    for (k, bad) in BAD_PEERS.iter().enumerate() {
        r.w.set_peer(bad);
        r.tick();
        // Polled again with the same value: refused, not counted twice.
        r.tick();
        assert_eq!(r.g.state(), PairState::WaitPeer, "{bad:?}");
        r.w.assert_rejected(k + 1, bad);
        let err = r.w.ours("peer-error").unwrap();
        assert!(err.contains(&format!("{bad:?}")), "{bad:?}: {err}");
        assert_eq!(r.w.ours("state"), None, "{bad:?}");
        assert_eq!(r.w.ours("refs"), None);
        assert_eq!(r.w.allocated(), r.alloc0, "{bad:?}");
        assert_eq!(r.g.frames_held(), 0);
        assert_eq!(r.t.status().outstanding, 0);
        assert!(r.w.frames.own.is_empty());
        // No event channel beyond xenstore's.
        assert_eq!(r.w.port(r.w.sim.xs_port() + 1), None);
    }
    // A good value at last.
    r.grant();
    assert_eq!(r.w.allocated(), r.alloc0 + 8);
    assert_eq!(
        r.w.ours("rejected-peers"),
        Some(BAD_PEERS.len().to_string())
    );
}

#[test]
fn granter_gives_back_everything_when_refs_run_out() {
    let mut r = GranterRig::new(128);
    // Somebody else holds all but 100 refs.
    let others: Vec<u32> = (0..504 - 100)
        .map(|_| r.t.grant_access(9, 0x10, true).unwrap())
        .collect();
    r.introduce();
    r.assert_failed("grant 101 of 128");
    assert_eq!(r.w.allocated(), r.alloc0);
    assert_eq!(r.g.frames_held(), 0);
    assert_eq!(r.t.status().outstanding, others.len() as u64);
    assert_eq!(r.t.status().free, 100);
    assert_eq!(r.w.ours("refs"), None);
}

#[test]
fn granter_gives_back_its_frames_when_memory_runs_out() {
    let w = World::new(64);
    let mut hog = Vec::new();
    while let Ok(p) = w.mm.alloc_frames(0) {
        hog.push(p);
    }
    for p in hog.drain(..10) {
        w.mm.free_frames(p, 0).unwrap();
    }
    let mut r = GranterRig::on(w, 16);
    r.introduce();
    assert_eq!(r.g.state(), PairState::Failed);
    assert_eq!(r.w.allocated(), r.alloc0);
    assert_eq!(r.t.status().outstanding, 0);
    assert_eq!(r.w.mm.census().pages_in(StateKind::Free), 10);
}

// ---- mapper ----------------------------------------------------------------------------

fn mapper_happy_path(n: usize) {
    let mut r = MapperRig::new();
    let ram0 = r.w.mm.census().ram_pages();
    let refs = r.w.sim_granter(n);
    // Granted, but the directory not yet shared with us.
    r.w.peer_dir(false);
    r.w.publish_grants(&refs);

    r.tick();
    assert_eq!(r.m.state(), PairState::WaitPeer);
    assert_eq!(r.w.ours("state"), None);

    r.w.introduce();
    r.tick();
    assert_eq!(r.m.state(), PairState::WaitGrants);
    assert_eq!(r.w.ours("state").as_deref(), Some("wait-grants"));
    assert_eq!(
        r.w.sim.xs_get_perms("data/grant-test/state").unwrap(),
        [perm(XsPermKind::None, ME), perm(XsPermKind::Read, PEER)]
    );
    let ev = r.w.events();
    assert!(is_watch_on(&ev, &peer_key("state")), "{ev:?}");
    assert!(is_watch_on(&ev, "data/grant-test/command"), "{ev:?}");

    // EACCES on the granter's state: keep waiting, map nothing.
    r.tick();
    assert_eq!(r.m.state(), PairState::WaitGrants);
    assert_eq!(r.w.gnt.stats().calls, 0);
    assert_eq!(r.w.foreign(), 0);

    r.w.share_peer_dir(true);
    r.tick();
    assert_eq!(r.m.state(), PairState::Mapped, "error: {:?}", r.m.error());
    let batches = n.div_ceil(MAX_BATCH) as u64;
    assert_eq!(r.w.gnt.stats().calls, batches, "map batches");
    assert_eq!(r.m.slots().len(), n);
    assert_eq!(
        r.w.foreign(),
        n as u64,
        "census: foreign pages in the device range"
    );
    assert_eq!(r.w.mm.census().ram_pages(), ram0);
    assert_eq!(r.fm.status().foreign_mapped, n as u64);
    for (i, &pfn) in r.m.slots().iter().enumerate() {
        assert!(r.w.window.device.contains(pfn));
        match r.w.device_state(pfn) {
            PageState::Foreign(f) => assert_eq!((f.domid, f.gref), (PEER, refs[i]), "slot {i}"),
            s => panic!("slot {i} {pfn:?} is {s:?}"),
        }
        assert_eq!(r.w.gnt.mapped_frame(pfn.0).unwrap(), pattern(i));
        assert_ne!(r.w.gnt.peer_entry(PEER, refs[i]).flags & gtf::READING, 0);
    }
    assert_eq!(
        r.w.ours("checksum").unwrap(),
        encode_checksum(pattern_sum(n))
    );
    assert_eq!(r.w.ours("pattern-errors").as_deref(), Some("0"));
    assert_eq!(r.w.ours("mapped"), Some(n.to_string()));
    assert_eq!(r.w.ours("state").as_deref(), Some("mapped"));
    assert!(r.w.ours("map-us").unwrap().parse::<u64>().is_ok());
    assert!(r.w.ours("verify-us").unwrap().parse::<u64>().is_ok());
    // Bound to the granter's port and notified it once.
    let bound: Vec<(Port, u64)> = {
        let st = r.w.sim.lock();
        (1..32)
            .filter_map(|p| st.evtchn.get(p).map(|s| (p, s)))
            .filter(|(_, s)| {
                s.binding
                    == Binding::Interdomain {
                        remote: PEER,
                        remote_port: PEER_PORT,
                    }
            })
            .map(|(p, s)| (p, s.sends))
            .collect()
    };
    assert_eq!(bound.len(), 1, "{bound:?}");
    let port = bound[0].0;
    assert_eq!(r.w.port_sends(port), 1);

    // More ticks and an unknown command change nothing (the command is consumed).
    r.w.command("frobnicate");
    assert!(is_watch_on(&r.w.events(), "data/grant-test/command"));
    r.tick();
    assert_eq!(r.w.ours("command").as_deref(), Some(""), "command consumed");
    r.tick();
    assert_eq!(r.m.state(), PairState::Mapped);
    assert_eq!(r.w.foreign(), n as u64);
    assert_eq!(r.w.gnt.stats().calls, batches);

    // The toolstack says unmap.
    let slots = r.m.slots().to_vec();
    r.command("unmap");
    assert_eq!(r.m.state(), PairState::Unmapped, "error: {:?}", r.m.error());
    assert!(r.m.slots().is_empty());
    for &pfn in &slots {
        assert!(r.w.slot_is_free(pfn), "{pfn:?}");
    }
    // Every wholly free device subsection went, its memmap with it.
    assert_eq!(r.fm.status().slots_free, 0, "no free slot left behind");
    assert_eq!(r.w.foreign(), 0);
    assert_eq!(r.fm.status().foreign_mapped, 0);
    assert!(r.w.gnt.mapped_gfns().is_empty());
    assert_eq!(r.w.gnt.stats().unmaps_ok, n as u64);
    assert_eq!(r.w.gnt.stats().calls, 2 * batches);
    assert_eq!(r.w.ours("state").as_deref(), Some("unmapped"));
    assert_eq!(r.w.ours("mapped").as_deref(), Some("0"));
    assert_eq!(r.w.ours("command").as_deref(), Some(""));
    assert!(r.w.ours("unmap-us").is_some());
    assert_eq!(r.w.port(port), None, "event channel closed");
    // The granter can end access now.
    for &gref in &refs {
        assert_eq!(r.w.gnt.peer_entry(PEER, gref).flags & gtf::READING, 0);
        assert!(r.w.gnt.peer_end_access(PEER, gref));
    }
    assert_eq!(r.m.error(), None);
}

#[test]
fn mapper_happy_path_64_pages_one_batch() {
    mapper_happy_path(64);
}

#[test]
fn mapper_happy_path_100_pages_two_batches() {
    mapper_happy_path(100);
}

#[test]
fn mapper_counts_pages_without_the_pattern() {
    let mut r = MapperRig::new();
    let refs = r.w.sim_granter(10);
    let mut bad = pattern(3);
    bad[100] ^= 0xff;
    r.w.gnt.peer_write_frame(PEER, 3, &bad);
    r.w.gnt.peer_write_frame(PEER, 7, &pattern(6));
    r.w.share_grants(&refs);
    r.introduce();
    assert_eq!(r.m.state(), PairState::Mapped);
    assert_eq!(r.w.ours("pattern-errors").as_deref(), Some("2"));
    let pages: Vec<Frame> = (0..10).map(|i| r.w.gnt.peer_frame(PEER, i)).collect();
    assert_eq!(
        r.w.ours("checksum").unwrap(),
        encode_checksum(handshake::checksum(pages.iter().map(|p| &p[..])))
    );
    assert_ne!(
        r.w.ours("checksum").unwrap(),
        encode_checksum(pattern_sum(10))
    );
}

#[test]
fn mapper_reclaims_a_dead_granter_s_pages() {
    const N: usize = 70;
    let mut r = MapperRig::new();
    r.map_granter(N);
    let slots = r.m.slots().to_vec();

    r.w.gnt.destroy_peer(PEER);
    assert!(r.w.gnt.peer_exists(PEER), "a zombie while we map it");
    r.w.rm_peer_dir();
    r.tick();
    assert_eq!(
        r.m.state(),
        PairState::Reclaimed,
        "error: {:?}",
        r.m.error()
    );
    r.assert_nothing_mapped();
    for &pfn in &slots {
        assert!(r.w.slot_is_free(pfn), "{pfn:?}");
    }
    assert_eq!(r.w.mm.census().pages_in(StateKind::Foreign), 0);
    assert!(
        !r.w.gnt.peer_exists(PEER),
        "the zombie went with the last unmap"
    );
    assert_eq!(r.w.ours("state").as_deref(), Some("reclaimed"));
    assert_eq!(r.w.ours("reclaimed"), Some(N.to_string()));
    assert_eq!(r.w.ours("reclaim-failed").as_deref(), Some("0"));
    assert_eq!(r.fm.status().foreign_mapped, 0);
    assert_eq!(r.fm.status().slots_free, r.fm.status().slots_total);
}

#[test]
fn mapper_reclaim_counts_mappings_xen_already_dropped() {
    let mut r = MapperRig::new();
    r.map_granter(5);
    r.w.gnt.revoke_mappings_of(PEER);
    r.w.gnt.destroy_peer(PEER);
    r.w.rm_peer_dir();
    r.tick();
    assert_eq!(r.m.state(), PairState::Reclaimed);
    assert_eq!(r.w.ours("reclaimed").as_deref(), Some("5"));
    assert_eq!(r.w.foreign(), 0);
    assert!(r.m.slots().is_empty());
}

#[test]
fn mapper_keeps_and_retries_slots_xen_refused_to_unmap_at_reclaim() {
    let mut r = MapperRig::new();
    r.map_granter(5);
    r.w.gnt.destroy_peer(PEER);
    r.w.rm_peer_dir();
    r.w.gnt
        .faults(|f| f.unmap_status = Some((gntst::GENERAL_ERROR, 2)));
    r.tick();
    assert_eq!(r.m.state(), PairState::Reclaimed);
    assert_eq!(r.w.ours("reclaim-failed").as_deref(), Some("2"));
    assert_eq!(r.w.foreign(), 2);
    assert_eq!(
        r.m.slots().len(),
        2,
        "the slots still mapped stay accounted"
    );
    assert!(r.w.gnt.peer_exists(PEER), "zombie pinned by our 2 mappings");
    // A later tick tries again.
    r.tick();
    assert_eq!(r.m.state(), PairState::Reclaimed);
    r.assert_nothing_mapped();
    assert!(!r.w.gnt.peer_exists(PEER));
}

#[test]
fn mapper_refuses_garbage_refs_and_leaves_nothing_mapped() {
    let too_many: Vec<u32> = (8..8 + guest::xen::grant::handshake::MAX_REFS as u32 + 1).collect();
    for bad in [
        "08".to_string(),
        "1".to_string(),
        String::new(),
        "8  9".to_string(),
        "8 9 ".to_string(),
        "-8".to_string(),
        "0x8".to_string(),
        encode_refs(&too_many),
    ] {
        let mut r = MapperRig::new();
        r.w.sim_granter(4);
        r.w.peer_dir(true);
        r.w.peer_write("refs", &bad);
        r.w.peer_write("state", "granted");
        r.introduce();
        assert_eq!(r.m.state(), PairState::Failed, "{bad:?}");
        assert!(r.m.error().is_some_and(|e| e.contains("refs")), "{bad:?}");
        assert_eq!(r.w.ours("state").as_deref(), Some("failed"));
        assert!(r.w.ours("error").is_some());
        assert_eq!(r.w.ours("checksum"), None);
        assert_eq!(r.w.gnt.stats().calls, 0, "{bad:?}: nothing mapped");
        assert_eq!(r.w.foreign(), 0);
        assert!(r.m.slots().is_empty());
    }
    // Granted but no refs at all.
    let mut r = MapperRig::new();
    r.w.peer_dir(true);
    r.w.peer_write("state", "granted");
    r.introduce();
    assert_eq!(r.m.state(), PairState::Failed);
    assert_eq!(r.w.foreign(), 0);
}

#[test]
fn mapper_unmaps_everything_when_a_ref_of_the_second_batch_fails() {
    let mut r = MapperRig::new();
    let mut refs = r.w.sim_granter(100);
    // Page 80's ref does not exist in the granter's table; page 90's grants another domain.
    refs[80] = 999;
    refs[90] = r.w.gnt.peer_grant(PEER, 90, 42, true);
    r.w.share_grants(&refs);
    r.introduce();
    r.assert_failed("999");
    r.assert_nothing_mapped();
    assert_eq!(r.fm.status().foreign_mapped, 0);
    assert_eq!(r.w.ours("checksum"), None);
    assert!(r.w.gnt.peer_end_access(PEER, refs[0]));
}

#[test]
fn mapper_refuses_garbage_peers_and_keeps_waiting() {
    let mut r = MapperRig::new();
    let refs = r.w.sim_granter(3);
    r.w.share_grants(&refs);
    for (k, bad) in BAD_PEERS.iter().enumerate() {
        r.w.set_peer(bad);
        r.tick();
        r.tick();
        assert_eq!(r.m.state(), PairState::WaitPeer, "{bad:?}");
        r.w.assert_rejected(k + 1, bad);
        assert_eq!(r.w.ours("state"), None);
        assert_eq!(r.w.gnt.stats().calls, 0);
    }
    r.introduce();
    assert_eq!(r.m.state(), PairState::Mapped);
    assert_eq!(r.w.foreign(), 3);
}

#[test]
fn mapper_fails_cleanly_when_the_granter_dies_before_the_map() {
    let mut r = MapperRig::new();
    let refs = r.w.sim_granter(8);
    r.w.share_grants(&refs);
    r.w.introduce();
    r.tick();
    r.w.gnt.destroy_peer(PEER);
    r.tick();
    assert_eq!(r.m.state(), PairState::Failed);
    assert_eq!(r.w.foreign(), 0);
    assert!(r.m.slots().is_empty());
}

#[test]
fn mapper_verify_command_rereads_the_mapped_pages() {
    let mut r = MapperRig::new();
    r.map_granter(12);
    let sum = encode_checksum(pattern_sum(12));
    assert_eq!(r.w.ours("checksum"), Some(sum.clone()));
    let calls = r.w.gnt.stats().calls;

    r.command("verify");
    assert_eq!(r.m.state(), PairState::Mapped);
    assert_eq!(r.w.ours("verify-runs").as_deref(), Some("1"));
    assert_eq!(r.w.ours("pattern-errors").as_deref(), Some("0"));
    assert_eq!(r.w.ours("checksum"), Some(sum.clone()));
    assert_eq!(r.w.ours("command").as_deref(), Some(""));
    assert_eq!(r.w.gnt.stats().calls, calls, "no map or unmap");

    // The granter changes page 2 behind the mapping: the next verify sees it.
    let mut p = pattern(2);
    p[4095] ^= 1;
    r.w.gnt.peer_write_frame(PEER, 2, &p);
    r.command("verify");
    assert_eq!(r.w.ours("verify-runs").as_deref(), Some("2"));
    assert_eq!(r.w.ours("pattern-errors").as_deref(), Some("1"));
    assert_ne!(r.w.ours("checksum"), Some(sum));
    assert_eq!(r.m.slots().len(), 12);
    assert_eq!(r.w.foreign(), 12);
}

#[test]
fn mapper_bench_command_remaps_everything_in_page_order() {
    const N: usize = 70;
    let mut r = MapperRig::new();
    let refs = r.map_granter(N);
    let calls = r.w.gnt.stats().calls;
    r.command("bench");
    assert_eq!(r.m.state(), PairState::Mapped);
    // Per round: unmap and map, in 2 batches of <= 64, then in N batches of 1.
    let rounds = u64::from(BENCH_ROUNDS);
    assert_eq!(
        r.w.gnt.stats().calls - calls,
        rounds * 2 * (2 + N as u64),
        "hypercalls"
    );
    let us = |key: &str| -> u64 {
        r.w.ours(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{key}"))
    };
    for b in [64, 1] {
        for w in ["map", "unmap"] {
            // Xen's part of a call (inside the hypercall) is part of the whole.
            let all = us(&format!("bench/batch-{b}/{w}-us"));
            let xen = us(&format!("bench/batch-{b}/{w}-xen-us"));
            assert!(xen <= all, "batch {b} {w}: {xen} us in Xen of {all}");
        }
    }
    assert_eq!(r.w.ours("bench/error"), None);
    assert_eq!(r.w.ours("bench-runs").as_deref(), Some("1"));
    assert_eq!(r.w.ours("pattern-errors").as_deref(), Some("0"));
    assert_eq!(r.w.ours("mapped"), Some(N.to_string()));
    assert_eq!(r.w.ours("command").as_deref(), Some(""));
    assert_eq!(r.m.slots().len(), N);
    assert_eq!(r.w.foreign(), N as u64);
    assert_eq!(r.w.gnt.mapped_gfns().len(), N);
    for (i, &pfn) in r.m.slots().iter().enumerate() {
        assert_eq!(r.w.gnt.mapping_at(pfn.0).unwrap().1, refs[i], "slot {i}");
        assert_eq!(r.w.gnt.mapped_frame(pfn.0).unwrap(), pattern(i));
    }
    // Still unmaps cleanly afterwards.
    r.command("unmap");
    assert_eq!(r.m.state(), PairState::Unmapped);
    assert_eq!(r.w.foreign(), 0);
    assert!(r.w.gnt.mapped_gfns().is_empty());
}

#[test]
fn mapper_bench_that_cannot_remap_keeps_its_accounting() {
    let mut r = MapperRig::new();
    r.map_granter(10);
    // The granter died (Xen side) but its tree is still there: the unmaps work, the
    // maps are refused.
    r.w.gnt.destroy_peer(PEER);
    r.command("bench");
    assert!(r.w.ours("bench/error").is_some());
    assert_eq!(r.w.ours("mapped").as_deref(), Some("0"));
    assert!(r.m.slots().is_empty());
    assert_eq!(r.w.foreign(), 0);
    assert!(!r.w.gnt.peer_exists(PEER));
    r.w.rm_peer_dir();
    r.tick();
    assert_eq!(r.m.state(), PairState::Reclaimed);
    assert_eq!(r.w.foreign(), 0);
}

#[test]
fn mapper_churn_remaps_round_after_round_until_still() {
    const N: usize = 70;
    let mut r = MapperRig::new();
    let refs = r.map_granter(N);
    let removed = r.fm.counters().subsections_removed;
    r.command("churn");
    assert!(r.m.busy());
    assert_eq!(r.w.ours("churning").as_deref(), Some("1"));
    assert_eq!(r.w.ours("command").as_deref(), Some(""));
    let calls = r.w.gnt.stats().calls;
    // A round is three ticks: unmap, shrink, map.
    for _ in 0..5 * 3 {
        r.tick();
    }
    // Per round: 2 unmap and 2 map batches of <= 64.
    assert_eq!(r.w.gnt.stats().calls - calls, 5 * 4, "hypercalls");
    // Every round empties the foreign pages' subsections (the table frames have their
    // own), removes them and maps into fresh ones.
    assert!(
        r.fm.counters().subsections_removed >= removed + 5,
        "subsections removed per round"
    );
    assert_eq!(r.w.foreign(), N as u64);
    // `still` is seen at the next xenstore look (every CHURN_CHECK_ROUNDS rounds).
    r.w.command("still");
    let mut ticks = 0;
    while r.m.busy() {
        r.tick();
        ticks += 1;
        assert!(ticks <= 16 * 3, "still not seen within 16 rounds");
    }
    assert_eq!(r.m.state(), PairState::Mapped);
    assert_eq!(r.w.ours("churn-rounds").as_deref(), Some("16"));
    assert_eq!(r.w.ours("churning").as_deref(), Some("0"));
    assert_eq!(r.w.ours("pattern-errors").as_deref(), Some("0"));
    assert_eq!(r.w.ours("mapped"), Some(N.to_string()));
    assert_eq!(r.w.ours("churn/error"), None);
    for (i, &pfn) in r.m.slots().iter().enumerate() {
        assert_eq!(r.w.gnt.mapping_at(pfn.0).unwrap().1, refs[i], "slot {i}");
    }
    let calls = r.w.gnt.stats().calls;
    r.tick();
    assert_eq!(r.w.gnt.stats().calls, calls, "still: no more rounds");
    r.command("unmap");
    assert_eq!(r.m.state(), PairState::Unmapped);
    assert_eq!(r.w.foreign(), 0);
}

#[test]
fn mapper_churn_that_cannot_remap_stops_and_fails_without_leaking() {
    let mut r = MapperRig::new();
    r.map_granter(10);
    r.command("churn");
    for _ in 0..3 {
        r.tick();
    }
    // The granter died (Xen side), its tree still there: unmaps work, maps are refused.
    r.w.gnt.destroy_peer(PEER);
    for _ in 0..3 {
        r.tick();
    }
    assert!(r.w.ours("churn/error").is_some());
    assert_eq!(r.w.ours("churning").as_deref(), Some("0"));
    assert!(!r.m.busy());
    assert_eq!(r.m.state(), PairState::Failed);
    assert!(r.m.slots().is_empty());
    assert_eq!(r.w.foreign(), 0);
    let calls = r.w.gnt.stats().calls;
    r.tick();
    assert_eq!(r.w.gnt.stats().calls, calls, "no churn after the failure");
}

#[test]
fn granter_rw_grants_writable_access_and_finds_the_mapper_s_stamps() {
    const N: usize = 4;
    let mut r = GranterRig::new(N).writable();
    let (refs, _) = r.grant();
    assert_eq!(r.w.ours("access").as_deref(), Some("rw"));
    r.w.add_mapping_peer();
    let mut maps = Vec::new();
    for &gref in &refs {
        assert_eq!(
            r.t.entry_flags(gref),
            Some(gtf::PERMIT_ACCESS),
            "ref {gref}"
        );
        let m = r.w.gnt.peer_map_own(PEER, gref, false).unwrap();
        assert_eq!(
            r.t.entry_flags(gref).unwrap() & (gtf::READING | gtf::WRITING),
            gtf::READING | gtf::WRITING
        );
        maps.push((m.handle, Pfn(u64::from(m.frame))));
    }
    // The mapper stamps pages 0, 1 and 3 (page 2 with the wrong index) through its
    // mappings, which land in our frames.
    for (i, &(_, pfn)) in maps.iter().enumerate() {
        let v = stamp(if i == 2 { 7 } else { i as u32 });
        r.w.frames.own.get_mut(&pfn).unwrap()[..8].copy_from_slice(&v.to_le_bytes());
    }
    r.peer_appears(true, "mapped");
    assert_eq!(
        r.g.writes_seen(),
        None,
        "not before the mapper says it wrote"
    );
    r.w.peer_write("written", N.to_string());
    r.tick();
    assert_eq!(r.g.writes_seen(), Some(N - 1));
    assert_eq!(r.w.ours("writes-seen"), Some((N - 1).to_string()));
    r.w.peer_unmaps(&maps);
    r.peer_says("unmapped");
    r.assert_ended();
}

#[test]
fn granter_ro_refuses_writable_maps_and_ignores_written() {
    let mut r = GranterRig::new(2);
    let (refs, _) = r.grant();
    assert_eq!(r.w.ours("access").as_deref(), Some("ro"));
    r.w.add_mapping_peer();
    assert_eq!(
        r.w.gnt.peer_map_own(PEER, refs[0], false),
        Err(gntst::GENERAL_ERROR)
    );
    r.w.peer_dir(true);
    r.w.peer_write("written", "2");
    r.peer_says("mapped");
    assert_eq!(r.g.writes_seen(), None);
    assert_eq!(r.w.ours("writes-seen"), None);
}

#[test]
fn mapper_maps_rw_grants_writable_and_stamps_them_on_write() {
    const N: usize = 66;
    let mut r = MapperRig::new();
    let refs = r.w.rw_granter(N, true);
    r.introduce();
    assert_eq!(r.m.state(), PairState::Mapped, "error: {:?}", r.m.error());
    assert_eq!(r.w.ours("pattern-errors").as_deref(), Some("0"));
    for &gref in &refs {
        assert_ne!(
            r.w.gnt.peer_entry(PEER, gref).flags & gtf::WRITING,
            0,
            "ref {gref}"
        );
    }
    r.command("write");
    assert_eq!(r.w.ours("written"), Some(N.to_string()));
    assert_eq!(r.w.ours("command").as_deref(), Some(""));
    for i in 0..N {
        let f = r.w.gnt.peer_frame(PEER, i);
        assert_eq!(f[..8], stamp(i as u32).to_le_bytes(), "page {i}");
        assert_eq!(f[8..], pattern(i)[8..], "page {i}: only the stamp changed");
    }
    r.command("unmap");
    assert_eq!(r.m.state(), PairState::Unmapped);
    assert_eq!(r.w.foreign(), 0);
}

#[test]
fn mapper_refuses_write_on_read_only_mappings() {
    let mut r = MapperRig::new();
    r.map_granter(3);
    r.command("write");
    assert_eq!(r.m.state(), PairState::Mapped);
    assert_eq!(
        r.w.ours("command-error").as_deref(),
        Some("write: mapped read-only")
    );
    assert_eq!(r.w.ours("written"), None);
    assert_eq!(r.w.ours("command").as_deref(), Some(""));
    for i in 0..3 {
        assert_eq!(r.w.gnt.peer_frame(PEER, i), pattern(i));
    }
}

#[test]
fn mapper_fails_cleanly_when_rw_is_announced_but_the_grants_are_read_only() {
    let mut r = MapperRig::new();
    r.w.rw_granter(70, false);
    r.introduce();
    r.assert_failed("General");
    r.assert_nothing_mapped();
}

#[test]
fn granter_takes_an_unreadable_peer_state_after_seeing_it_as_gone() {
    // xenstored answers EACCES for a removed node whose nearest parent we cannot read.
    // Unreadable before the peer ever shared: just wait.
    let mut r = waiting_granter(false);
    r.w.share_peer_dir(true);
    r.tick();
    assert_eq!(r.g.state(), PairState::Granted);
    r.w.share_peer_dir(false);
    r.tick();
    r.assert_ended();
}

#[test]
fn a_removed_peer_fires_our_watch_and_then_reads_as_eacces() {
    // `xl destroy` removes the peer's tree: xenstored fires our watch on the peer's state
    // (we may read that node) and then answers EACCES, not ENOENT, for it: the nearest
    // node left, `/local/domain`, is dom0's. The granter takes that as gone.
    let mut r = waiting_granter(true);
    let _ = r.w.events();
    r.w.rm_peer_dir();
    let ev = r.w.events();
    assert!(is_watch_on(&ev, &peer_key("state")), "{ev:?}");
    assert_eq!(
        r.w.xs.read(&peer_key("state")),
        Err(XsError::Xs(Errno::EACCES))
    );
    r.tick();
    r.assert_ended();
}

#[test]
fn a_removed_peer_that_never_shared_fires_nothing() {
    // Neither the state node nor its parent was readable to us: no event (xenstored's
    // `watch_permitted`), and the read is EACCES before and after.
    let mut r = waiting_granter(false);
    let _ = r.w.events();
    assert_eq!(
        r.w.xs.read(&peer_key("state")),
        Err(XsError::Xs(Errno::EACCES))
    );
    r.w.rm_peer_dir();
    assert_eq!(r.w.events(), []);
    assert_eq!(
        r.w.xs.read(&peer_key("state")),
        Err(XsError::Xs(Errno::EACCES))
    );
    r.tick();
    assert_eq!(r.g.state(), PairState::Granted, "it never saw the peer");
}

#[test]
fn mapper_takes_an_unreadable_granter_state_as_gone() {
    let mut r = MapperRig::new();
    r.map_granter(3);
    r.w.share_peer_dir(false);
    r.tick();
    assert_eq!(r.m.state(), PairState::Reclaimed);
    assert_eq!(r.w.ours("reclaimed").as_deref(), Some("3"));
    assert_eq!(r.w.foreign(), 0);
    assert!(r.w.gnt.mapped_gfns().is_empty());
}

// ---- random interleavings ----------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Tick,
    /// The toolstack writes our `peer` (valid or garbage).
    SetPeer {
        valid: bool,
    },
    /// The granter publishes its refs (valid, garbage, or one bad ref) and state=granted.
    Publish {
        refs: u8,
    },
    /// The granter's state changes to something other than granted, or vanishes.
    PeerState {
        v: u8,
    },
    /// The granter shares its directory with us, or stops.
    Share {
        shared: bool,
    },
    /// The toolstack writes our `command`.
    Command {
        v: u8,
    },
    /// The granter dies: Xen (zombie) and/or its xenstore tree.
    PeerDies {
        destroy: bool,
        rm: bool,
    },
    /// Xen drops our mappings behind our back.
    Revoke,
    /// The next N unmap ops fail.
    FailUnmap {
        n: u8,
    },
    /// The next map op fails.
    FailMap,
    /// The next hypercall fails outright.
    FailCall,
    Advance,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => Just(Op::Tick),
        2 => any::<bool>().prop_map(|valid| Op::SetPeer { valid }),
        3 => (0..4u8).prop_map(|refs| Op::Publish { refs }),
        1 => (0..4u8).prop_map(|v| Op::PeerState { v }),
        1 => any::<bool>().prop_map(|shared| Op::Share { shared }),
        2 => (0..6u8).prop_map(|v| Op::Command { v }),
        1 => (any::<bool>(), any::<bool>())
            .prop_map(|(destroy, rm)| Op::PeerDies { destroy, rm }),
        1 => Just(Op::Revoke),
        1 => (1..4u8).prop_map(|n| Op::FailUnmap { n }),
        1 => Just(Op::FailMap),
        1 => Just(Op::FailCall),
        1 => Just(Op::Advance),
    ]
}

fn check(r: &MapperRig) -> Result<(), TestCaseError> {
    let c = r.w.mm.census();
    let slots = r.m.slots();
    prop_assert_eq!(
        c.pages_of(SectionKind::Device, StateKind::Foreign),
        slots.len() as u64,
        "foreign pages vs the mapper's slots (state {:?})",
        r.m.state()
    );
    prop_assert_eq!(c.pages_in(StateKind::Foreign), slots.len() as u64);
    prop_assert_eq!(r.fm.status().foreign_mapped, slots.len() as u64);
    prop_assert_eq!(c.pages_of(SectionKind::Device, StateKind::Reserved), 0);
    for &pfn in slots {
        prop_assert!(
            matches!(r.w.device_state(pfn), PageState::Foreign(f) if f.domid == PEER),
            "{:?}",
            pfn
        );
    }
    // Xen maps nothing we do not account for.
    for gfn in r.w.gnt.mapped_gfns() {
        prop_assert!(slots.contains(&Pfn(gfn)), "Xen maps {} unaccounted", gfn);
    }
    match r.m.state() {
        PairState::WaitPeer | PairState::WaitGrants => prop_assert!(slots.is_empty()),
        PairState::Mapped | PairState::Unmapped | PairState::Reclaimed | PairState::Failed => {}
        s => prop_assert!(false, "a mapper is never {:?}", s),
    }
    Ok(())
}

fn run(pages: usize, introduced: bool, rw: bool, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut r = MapperRig::on(World::new(32));
    let refs = if rw {
        r.w.rw_granter(pages, true)
    } else {
        let refs = r.w.sim_granter(pages);
        r.w.peer_dir(true);
        refs
    };
    if introduced {
        // Most cases start introduced and granted, so that the ops hit a mapped mapper.
        r.w.set_peer("5");
        r.w.publish_grants(&refs);
    }
    let mut peer_alive = true;
    for op in ops {
        match op {
            Op::Tick => r.tick(),
            Op::SetPeer { valid } => {
                r.w.set_peer(if valid { "5" } else { "05" });
            }
            Op::Publish { refs: kind } => {
                let v = match kind {
                    0 | 1 => encode_refs(&refs),
                    2 => "8 08".to_string(),
                    _ => {
                        let mut bad = refs.clone();
                        *bad.last_mut().unwrap() = 4000;
                        encode_refs(&bad)
                    }
                };
                // Writes into a removed tree recreate it as dom0's (inherited from
                // `/local/domain`), unreadable to us: as good as gone for the machine.
                r.w.peer_write("refs", v);
                r.w.peer_write("evtchn", "7");
                r.w.peer_write("state", "granted");
            }
            Op::PeerState { v } => match v {
                0 => r.w.peer_write("state", "ended"),
                1 => r.w.peer_write("state", ""),
                2 => r.w.peer_write("state", "granted"),
                _ => {
                    let _ = r.w.sim.xs_rm(&peer_key("state"));
                }
            },
            Op::Share { shared } => {
                if r.w.sim.xs_read(&peer_key("")).is_ok() {
                    r.w.share_peer_dir(shared);
                }
            }
            Op::Command { v } => {
                r.w.command(["unmap", "bogus", "", "verify", "bench", "write"][v as usize]);
            }
            Op::PeerDies { destroy, rm } => {
                if destroy && peer_alive {
                    r.w.gnt.destroy_peer(PEER);
                    peer_alive = false;
                }
                if rm {
                    r.w.rm_peer_dir();
                }
            }
            Op::Revoke => r.w.gnt.revoke_mappings_of(PEER),
            Op::FailUnmap { n } => {
                r.w.gnt
                    .faults(|f| f.unmap_status = Some((gntst::GENERAL_ERROR, u32::from(n))))
            }
            Op::FailMap => {
                r.w.gnt
                    .faults(|f| f.map_status = Some((gntst::GENERAL_ERROR, 1)))
            }
            Op::FailCall => r.w.gnt.faults(|f| f.fail_calls = Some((Errno::EAGAIN, 1))),
            Op::Advance => r.w.sim.advance(RETRY_NS),
        }
        // Drain watch events as the kernel would (it ticks on each).
        let _ = r.w.events();
        check(&r)?;
    }
    // Whatever happened, once faults stop and the granter is gone, a few ticks leave
    // nothing mapped.
    r.w.gnt.faults(|f| *f = Default::default());
    r.w.gnt.destroy_peer(PEER);
    r.w.rm_peer_dir();
    for _ in 0..3 {
        r.tick();
        check(&r)?;
    }
    prop_assert!(
        r.m.slots().is_empty(),
        "{:?} with {:?} still mapped after the granter is gone",
        r.m.state(),
        r.m.slots()
    );
    prop_assert_eq!(r.w.mm.census().pages_in(StateKind::Foreign), 0);
    prop_assert!(r.w.gnt.mapped_gfns().is_empty());
    prop_assert!(!r.w.gnt.peer_exists(PEER), "the zombie granter is gone");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn mapper_never_leaves_foreign_pages_unaccounted(
        pages in 1usize..=130,
        introduced in proptest::bool::weighted(0.8),
        rw in any::<bool>(),
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        run(pages, introduced, rw, ops)?;
    }
}

/// What the simulated mapper of our grants does.
#[derive(Clone, Debug)]
enum GOp {
    Tick,
    /// The toolstack writes our `peer` (valid or garbage).
    SetPeer {
        valid: bool,
    },
    /// The peer maps one of the refs we published (if any).
    Map {
        pick: usize,
    },
    /// The peer unmaps one of its mappings.
    Unmap {
        pick: usize,
    },
    /// The peer's state: wait-grants, mapped, unmapped, failed, reclaimed, garbage.
    State {
        v: u8,
    },
    /// The peer's checksum, right or wrong.
    Checksum {
        right: bool,
    },
    /// The peer shares its directory with us, or stops.
    Share {
        shared: bool,
    },
    /// The peer dies: Xen (its mappings of our grants go) and/or its xenstore tree.
    Dies {
        destroy: bool,
        rm: bool,
    },
    /// The peer notifies our event channel.
    Notify,
    Advance,
}

fn gop() -> impl Strategy<Value = GOp> {
    prop_oneof![
        6 => Just(GOp::Tick),
        1 => any::<bool>().prop_map(|valid| GOp::SetPeer { valid }),
        4 => any::<usize>().prop_map(|pick| GOp::Map { pick }),
        3 => any::<usize>().prop_map(|pick| GOp::Unmap { pick }),
        3 => (0..6u8).prop_map(|v| GOp::State { v }),
        1 => any::<bool>().prop_map(|right| GOp::Checksum { right }),
        1 => any::<bool>().prop_map(|shared| GOp::Share { shared }),
        1 => (any::<bool>(), any::<bool>()).prop_map(|(destroy, rm)| GOp::Dies { destroy, rm }),
        1 => Just(GOp::Notify),
        2 => Just(GOp::Advance),
    ]
}

/// The granter's safety: a frame a peer maps is never freed, and what it holds is
/// exactly what the allocator and the grant table say.
fn check_granter(r: &GranterRig, maps: &[(u32, u32, Pfn)]) -> Result<(), TestCaseError> {
    prop_assert_eq!(r.w.allocated(), r.alloc0 + r.g.frames_held() as u64);
    let st = r.t.status();
    prop_assert_eq!(st.outstanding + st.deferred, r.g.frames_held() as u64);
    for &(_, gref, pfn) in maps {
        prop_assert_eq!(
            r.w.state_of(pfn),
            PageState::Allocated,
            "ref {} still mapped but its frame was freed",
            gref
        );
        let rs = r.t.ref_state(gref);
        prop_assert!(
            matches!(
                rs,
                Some(RefState::Granted { .. } | RefState::Deferred { .. })
            ),
            "ref {} mapped but {:?}",
            gref,
            rs
        );
    }
    match r.g.state() {
        PairState::WaitPeer => prop_assert_eq!(r.g.frames_held(), 0),
        PairState::Granted | PairState::Ending => {}
        PairState::Ended => prop_assert_eq!(r.g.frames_held(), 0),
        s => prop_assert!(false, "granter in {:?} ({:?})", s, r.g.error()),
    }
    Ok(())
}

fn run_granter(pages: u32, ops: Vec<GOp>) -> Result<(), TestCaseError> {
    let mut r = GranterRig::on(World::new(32), pages as usize);
    r.w.add_mapping_peer();
    r.w.peer_dir(true);
    // (handle, ref, frame) of the peer's live mappings of our grants.
    let mut maps: Vec<(u32, u32, Pfn)> = Vec::new();
    for op in ops {
        match op {
            GOp::Tick => r.tick(),
            GOp::SetPeer { valid } => r.w.set_peer(if valid { "5" } else { "5x" }),
            GOp::Map { pick } => {
                if let Some(refs) = r.w.ours("refs") {
                    let refs = parse_refs(refs.as_bytes()).unwrap();
                    let gref = refs[pick % refs.len()];
                    if let Ok(m) = r.w.gnt.peer_map_own(PEER, gref, true) {
                        maps.push((m.handle, gref, Pfn(u64::from(m.frame))));
                    }
                }
            }
            GOp::Unmap { pick } => {
                if !maps.is_empty() {
                    let (h, _, _) = maps.swap_remove(pick % maps.len());
                    r.w.gnt.peer_unmap_own(h).unwrap();
                }
            }
            GOp::State { v } => {
                let s = [
                    "wait-grants",
                    "mapped",
                    "unmapped",
                    "failed",
                    "reclaimed",
                    "?",
                ];
                r.w.peer_write("state", s[v as usize]);
            }
            GOp::Checksum { right } => {
                let sum = pattern_sum(pages as usize) ^ u64::from(!right);
                r.w.peer_write("checksum", encode_checksum(sum));
            }
            GOp::Share { shared } => {
                if r.w.sim.xs_read(&peer_key("")).is_ok() {
                    r.w.share_peer_dir(shared);
                }
            }
            GOp::Dies { destroy, rm } => {
                if destroy {
                    // Xen drops the dying peer's mappings of our grants.
                    r.w.gnt.destroy_peer(PEER);
                    maps.clear();
                }
                if rm {
                    r.w.rm_peer_dir();
                }
            }
            GOp::Notify => {
                if let Some(p) = r.w.ours("evtchn").and_then(|p| p.parse().ok()) {
                    r.w.sim.lock().evtchn.set_pending(p);
                }
            }
            GOp::Advance => r.w.sim.advance(RETRY_NS / 2),
        }
        let _ = r.w.events();
        check_granter(&r, &maps)?;
        prop_assert_eq!(r.w.gnt.own_mapped_count(), maps.len());
    }
    // The peer dies for good and says goodbye readably: everything comes back.
    r.w.gnt.destroy_peer(PEER);
    maps.clear();
    r.w.peer_dir(true);
    r.w.peer_write("state", "unmapped");
    for _ in 0..3 {
        r.tick();
        r.w.sim.advance(RETRY_NS);
        check_granter(&r, &maps)?;
    }
    prop_assert!(
        matches!(r.g.state(), PairState::WaitPeer | PairState::Ended),
        "{:?}",
        r.g.state()
    );
    prop_assert_eq!(r.w.allocated(), r.alloc0);
    prop_assert_eq!(r.t.status().outstanding + r.t.status().deferred, 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn granter_never_frees_a_mapped_frame_and_gives_everything_back(
        pages in 1u32..=40,
        ops in proptest::collection::vec(gop(), 1..40),
    ) {
        run_granter(pages, ops)?;
    }
}
