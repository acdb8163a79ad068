//! The resume sequence against the simulated Xen: after `SHUTDOWN_suspend` returns in a
//! new domain the xenstore ring is zeroed, its event channel is new, watches and grant
//! mappings are gone and the grant table is empty; after a cancelled suspend nothing
//! changed. (Under real Xen: the save-*/migrate-* scenarios.)

mod common;

use guest::mm::hotplug::HotplugWindow;
use guest::mm::{HeapStorage, MemModel, PageState, SectionKind, StateKind};
use guest::xen::grant::{ForeignMapper, GrantTable, MapRequest, DOMID_XEN};
use guest::xen::xenstore::{WatchEvent, XenstoreClient, XsOps};
use xen_bindings::sim::grant::SimGrants;
use xen_bindings::sim::SimXen;
use xen_bindings::traits::{Sched, SuspendOutcome};

const MS: u64 = 1_000_000;

fn ev(path: &str, token: &str) -> WatchEvent {
    WatchEvent {
        path: path.into(),
        token: token.into(),
    }
}

/// A client with two watches, their initial events consumed.
fn watching() -> (SimXen, XenstoreClient<SimXen>) {
    let (sim, mut c) = common::xs_domain(3);
    c.watch("control/shutdown", "sd").unwrap();
    c.watch("memory/target", "tgt").unwrap();
    while c.wait_watch_event(MS).unwrap().is_some() {}
    (sim, c)
}

#[test]
fn resumed_in_a_new_domain_the_client_reconnects_and_rewatches() {
    let (sim, mut c) = watching();
    let old_port = sim.xs_port();
    c.write("data/x", b"1").unwrap();
    assert_eq!(sim.suspend().unwrap(), SuspendOutcome::Resumed);
    // What Xen and the toolstack did: new port, zeroed ring, no watches.
    let port = sim.xs_port();
    assert_ne!(port, old_port);
    assert!(sim.lock().xenstored.watches().is_empty());
    // Without the resume the client would talk to a dead port and time out.
    let failed = c.resume(port);
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(c.port(), port);
    let mut w = sim.lock().xenstored.watches();
    w.sort();
    assert_eq!(w.len(), 2, "both watches registered again: {w:?}");
    // Each fires once at once, so its owner re-reads what it watches.
    let mut got = vec![
        c.wait_watch_event(MS).unwrap().unwrap(),
        c.wait_watch_event(MS).unwrap().unwrap(),
    ];
    got.sort_by(|a, b| a.token.cmp(&b.token));
    assert_eq!(
        got,
        [ev("control/shutdown", "sd"), ev("memory/target", "tgt")]
    );
    // Requests work on the new connection, and the store kept its contents.
    assert_eq!(c.read("data/x").unwrap(), b"1");
    sim.xs_write("memory/target", "131072").unwrap();
    assert_eq!(
        c.wait_watch_event(MS).unwrap(),
        Some(ev("memory/target", "tgt"))
    );
    // Resuming twice is harmless.
    assert!(c.resume(port).is_empty());
    assert_eq!(sim.lock().xenstored.watches().len(), 2);
    assert_eq!(sim.lock().suspends, 1);
}

#[test]
fn a_cancelled_suspend_changes_nothing() {
    let (sim, mut c) = watching();
    let port = sim.xs_port();
    sim.lock().suspend_outcome = SuspendOutcome::Cancelled;
    assert_eq!(sim.suspend().unwrap(), SuspendOutcome::Cancelled);
    assert_eq!(sim.xs_port(), port);
    assert_eq!(sim.lock().xenstored.watches().len(), 2);
    c.write("data/y", b"2").unwrap();
    sim.xs_write("control/shutdown", "poweroff").unwrap();
    assert_eq!(
        c.wait_watch_event(MS).unwrap(),
        Some(ev("control/shutdown", "sd"))
    );
}

#[test]
fn unwatched_paths_are_not_registered_again() {
    let (sim, mut c) = watching();
    c.unwatch("memory/target", "tgt").unwrap();
    sim.suspend().unwrap();
    c.resume(sim.xs_port());
    assert_eq!(
        sim.lock().xenstored.watches().len(),
        1,
        "only control/shutdown"
    );
    assert_eq!(c.watches().len(), 1);
}

fn census_foreign(mm: &MemModel<HeapStorage>) -> u64 {
    mm.census()
        .pages_of(SectionKind::Device, StateKind::Foreign)
}

#[test]
fn grants_after_a_resume_table_frames_back_mappings_and_grants_forgotten() {
    let (mm, window): (MemModel<HeapStorage>, HotplugWindow) = common::ram_model(64, 2);
    let mut sim = SimGrants::new(1, 1, 64);
    let mut mapper = ForeignMapper::new(window.device);
    let table_range = mapper.map_table_frames(&mm, &mut sim, 0, 4).unwrap();
    let table_gfns = sim.table_gfns();
    let own = sim.own_table();
    let mut table = GrantTable::new(&own[..4 * 512]);
    // We grant two frames and map 8 of a peer's pages.
    let frame = mm.alloc_frames(0).unwrap();
    let g1 = table.grant_access(2, frame.0, true).unwrap();
    let g2 = table.grant_access(2, frame.0 + 1, false).unwrap();
    sim.add_peer(2, 8, 32);
    let reqs: Vec<MapRequest> = (0..8)
        .map(|i| MapRequest {
            domid: 2,
            gref: sim.peer_grant(2, i, 1, true),
            readonly: true,
        })
        .collect();
    let slots: Vec<_> = mapper
        .map_batch(&mm, &mut sim, &reqs)
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(census_foreign(&mm), 4 + 8);
    let ram = mm.census().ram_pages();

    sim.resume_in_new_domain();
    assert!(
        sim.table_gfns().is_empty(),
        "table frames gone with the old domain"
    );
    assert!(sim.mapped_gfns().is_empty());

    assert_eq!(mapper.readd_table_frames(&mm, &mut sim).unwrap(), 4);
    assert_eq!(sim.table_gfns(), table_gfns, "each frame back at its slot");
    assert_eq!(mapper.status().foreign_mapped, 8);
    assert_eq!(mapper.forget_foreign(&mm), 8);
    assert_eq!(mapper.status().foreign_mapped, 0);
    let st = mapper.status();
    assert_eq!(
        st.foreign_mapped + st.slots_free + st.table_frames,
        st.slots_total
    );
    for &s in &slots {
        assert_eq!(
            mm.read().pfn_to_device_page(s).unwrap().state(),
            PageState::Unpopulated,
            "{s:?} back to Unpopulated"
        );
    }
    for p in table_range.iter() {
        assert!(matches!(
            mm.read().pfn_to_device_page(p).unwrap().state(),
            PageState::Foreign(m) if m.domid == DOMID_XEN
        ));
    }
    assert_eq!(census_foreign(&mm), 4);
    let mut gone = table.forget_all();
    gone.sort_unstable();
    assert_eq!(gone, [g1, g2]);
    assert_eq!(table.status().outstanding, 0);
    assert_eq!(table.status().deferred, 0);
    assert_eq!(
        mm.census().ram_pages(),
        ram,
        "RAM untouched: frames are the granter's"
    );
    // The handshake can be redone: the same peer grants again, we map again.
    let again = MapRequest {
        domid: 2,
        gref: sim.peer_grant(2, 0, 1, true),
        readonly: true,
    };
    assert!(mapper.map_batch(&mm, &mut sim, &[again]).unwrap()[0].is_ok());
    assert!(table.grant_access(2, frame.0, true).is_ok());
    assert_eq!(mm.recount().unwrap(), mm.census());
}
