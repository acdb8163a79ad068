//! The granting side against simulated peers that map our grants through Xen's checks:
//! grant, end access, deferred release while mapped, mapper death.

use guest::xen::grant::{EndAccess, GrantTable, GrantTableError, RefState, Released};
use xen_bindings::abi::grant_table::{gntst, gtf, GRANT_ENTRIES_PER_FRAME_V1};
use xen_bindings::sim::grant::SimGrants;
use xen_bindings::traits::GrantOps;

const ME: u16 = 1;
const MAPPER: u16 = 2;

#[test]
fn a_peer_maps_our_grants_as_granted_and_not_otherwise() {
    let mut sim = SimGrants::new(ME, 1, 4);
    sim.add_peer(MAPPER, 0, 8);
    sim.add_peer(3, 0, 8);
    let mem = sim.own_table();
    let (nr, _) = sim.query_size().unwrap();
    let mut t = GrantTable::new(&mem[..nr as usize * GRANT_ENTRIES_PER_FRAME_V1]);
    let ro = t.grant_access(MAPPER, 0x100, true).unwrap();
    let rw = t.grant_access(MAPPER, 0x101, false).unwrap();
    assert!(ro >= 8 && rw >= 8);
    assert_eq!(
        sim.peer_map_own(MAPPER, ro, false),
        Err(gntst::GENERAL_ERROR)
    );
    assert_eq!(sim.peer_map_own(3, rw, true), Err(gntst::GENERAL_ERROR));
    assert_eq!(sim.peer_map_own(MAPPER, 5, true), Err(gntst::GENERAL_ERROR));
    let m = sim.peer_map_own(MAPPER, ro, true).unwrap();
    assert_eq!(m.frame, 0x100);
    let w = sim.peer_map_own(MAPPER, rw, false).unwrap();
    assert_eq!(w.frame, 0x101);
    assert_eq!(
        t.entry_flags(rw).unwrap() & (gtf::READING | gtf::WRITING),
        gtf::READING | gtf::WRITING
    );
    // Ended while mapped: deferred, and the peer's mapping stays valid.
    assert_eq!(t.end_access(rw), Ok(EndAccess::Deferred));
    assert_eq!(t.end_access(ro), Ok(EndAccess::Deferred));
    assert_eq!(t.status().deferred, 2);
    assert_eq!(t.status().outstanding, 0);
    sim.peer_unmap_own(w.handle).unwrap();
    assert_eq!(
        t.retry_deferred(),
        [Released {
            gref: rw,
            domid: MAPPER,
            frame: 0x101
        }]
    );
    // Revoked: the peer can no longer map it.
    assert_eq!(
        sim.peer_map_own(MAPPER, rw, true),
        Err(gntst::GENERAL_ERROR)
    );
    assert_eq!(
        t.ref_state(ro),
        Some(RefState::Deferred {
            domid: MAPPER,
            frame: 0x100
        })
    );
    sim.peer_unmap_own(m.handle).unwrap();
    assert_eq!(t.retry_deferred().len(), 1);
    assert_eq!(t.status().deferred, 0);
}

#[test]
fn sixty_four_pages_granted_mapped_and_the_mapper_dies() {
    let sim = SimGrants::new(ME, 1, 4);
    sim.add_peer(MAPPER, 0, 8);
    let mem = sim.own_table();
    let mut t = GrantTable::new(&mem[..GRANT_ENTRIES_PER_FRAME_V1]);
    let refs: Vec<u32> = (0..64)
        .map(|i| t.grant_access(MAPPER, 0x1000 + i, false).unwrap())
        .collect();
    assert_eq!(t.status().outstanding, 64);
    let handles: Vec<u32> = refs
        .iter()
        .map(|&r| sim.peer_map_own(MAPPER, r, false).unwrap().handle)
        .collect();
    // Teardown while the peer still maps everything: all deferred.
    for &r in &refs {
        assert_eq!(t.end_access(r), Ok(EndAccess::Deferred));
    }
    // The peer unmaps half; one retry pass frees exactly those.
    for &h in &handles[..32] {
        sim.peer_unmap_own(h).unwrap();
    }
    let released = t.retry_deferred();
    assert_eq!(released.len(), 32);
    assert!(released.iter().all(|r| refs[..32].contains(&r.gref)));
    // New grants never get a still-mapped ref.
    for _ in 0..32 {
        let g = t.grant_access(3, 7, true).unwrap();
        assert!(!refs[32..].contains(&g), "ref {g} reused while mapped");
    }
    // The mapper is destroyed: Xen drops its mappings, the rest is released.
    sim.destroy_peer(MAPPER);
    assert_eq!(sim.own_mapped_count(), 0);
    let released = t.retry_deferred();
    assert_eq!(released.len(), 32);
    assert_eq!(t.status().deferred, 0);
    for &r in &refs[32..] {
        assert_eq!(t.entry_flags(r), Some(0));
        assert_eq!(t.ref_state(r), Some(RefState::Free));
    }
    let c = t.counters();
    assert_eq!((c.deferred, c.deferred_released), (64, 64));
}

#[test]
fn the_table_grows_when_xen_adds_frames() {
    let mut sim = SimGrants::new(ME, 1, 2);
    let mem = sim.own_table();
    let mut t = GrantTable::new(&mem[..GRANT_ENTRIES_PER_FRAME_V1]);
    for _ in 0..GRANT_ENTRIES_PER_FRAME_V1 - 8 {
        t.grant_access(MAPPER, 1, true).unwrap();
    }
    assert_eq!(
        t.grant_access(MAPPER, 1, true),
        Err(GrantTableError::NoFreeRefs)
    );
    sim.add_table_frame(1, 0x9_0000).unwrap();
    let (nr, max) = sim.query_size().unwrap();
    assert_eq!((nr, max), (2, 2));
    t.grow(&mem[..nr as usize * GRANT_ENTRIES_PER_FRAME_V1])
        .unwrap();
    let r = t.grant_access(MAPPER, 1, true).unwrap();
    assert_eq!(r as usize, GRANT_ENTRIES_PER_FRAME_V1);
    // Xen honours refs in the new frame.
    sim.add_peer(MAPPER, 0, 8);
    assert!(sim.peer_map_own(MAPPER, r, true).is_ok());
    assert!(sim.add_table_frame(2, 0x9_0001).is_err());
}
