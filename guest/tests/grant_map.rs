//! Mapping a simulated peer's grants into the device range of the memory model: slots,
//! batches of 64, contents through the mapping, census and walker views, failures,
//! peer death, grant-table frames, and the balloon working around foreign pages.

mod common;

use common::MIB;
use guest::mm::geometry::{MAX_PFN, PAGES_PER_SUBSECTION};
use guest::mm::hotplug::{saveable_walk, HotplugWindow};
use guest::mm::{HeapStorage, MemModel, PageState, Pfn, PfnRange, SectionKind, StateKind};
use guest::xen::balloon::{Balloon, BalloonConfig, StepOutcome};
use guest::xen::grant::{
    handshake, ForeignMapper, MapError, MapRequest, Reclaimed, UnmapError, Unmapped, DOMID_XEN,
    MAX_BATCH, TABLE_FRAME_HANDLE,
};
use xen_bindings::abi::grant_table::gntst;
use xen_bindings::sim::grant::{Frame, SimGrants, FRAME_BYTES};
use xen_bindings::sim::memory::SimMemory;
use xen_bindings::traits::GrantOps;
use xen_bindings::Errno;

const ME: u16 = 1;
const PEER: u16 = 2;

/// `ram_mib` MiB of RAM with a 2 MiB kernel image, and its hotplug window.
fn model(ram_mib: u64) -> (MemModel<HeapStorage>, HotplugWindow) {
    common::ram_model(ram_mib, 2)
}

/// A booted guest, its hotplug window, the simulated grant side of Xen, and our mapper
/// over the guest's device window.
type Rig = (
    MemModel<HeapStorage>,
    HotplugWindow,
    SimGrants,
    ForeignMapper,
);

fn rig(ram_mib: u64) -> Rig {
    let (mm, window) = model(ram_mib);
    let mapper = ForeignMapper::new(window.device);
    (mm, window, SimGrants::new(ME, 1, 64), mapper)
}

/// One batch of maps that must all succeed; the slots, in request order.
fn map_all(
    mapper: &mut ForeignMapper,
    mm: &MemModel<HeapStorage>,
    sim: &mut SimGrants,
    reqs: &[MapRequest],
) -> Vec<Pfn> {
    mapper
        .map_batch(mm, sim, reqs)
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

/// The handshake's page pattern, distinct per peer and page.
fn pattern(peer: u16, idx: usize) -> Frame {
    let mut f = [0u8; FRAME_BYTES];
    for (i, b) in f.iter_mut().enumerate() {
        *b = handshake::pattern_byte(u32::from(peer) << 16 | idx as u32, i);
    }
    f
}

/// A peer with `n` frames, each filled with its pattern and granted to us.
fn peer_granting(sim: &SimGrants, peer: u16, n: usize, readonly: bool) -> Vec<MapRequest> {
    sim.add_peer(peer, n, n + 16);
    (0..n)
        .map(|i| {
            sim.peer_write_frame(peer, i, &pattern(peer, i));
            MapRequest {
                domid: peer,
                gref: sim.peer_grant(peer, i, ME, readonly),
                readonly,
            }
        })
        .collect()
}

fn device_state(mm: &MemModel<HeapStorage>, pfn: Pfn) -> PageState {
    mm.read().pfn_to_device_page(pfn).unwrap().state()
}

#[test]
fn map_64_verify_unmap_and_census_sees_foreign_only_while_mapped() {
    let (mm, window, mut sim, mut mapper) = rig(64);
    let reqs = peer_granting(&sim, PEER, 64, true);
    let ram_before = mm.census().ram_pages();

    let slots = map_all(&mut mapper, &mm, &mut sim, &reqs);
    assert_eq!(sim.stats().calls, 1, "one hypercall for the batch");
    for (i, &pfn) in slots.iter().enumerate() {
        assert!(window.device.contains(pfn));
        assert_eq!(
            sim.mapped_frame(pfn.0).unwrap(),
            pattern(PEER, i),
            "slot {i}"
        );
        let (dom, gref, handle) = sim.mapping_at(pfn.0).unwrap();
        match device_state(&mm, pfn) {
            PageState::Foreign(m) => {
                assert_eq!((m.domid, m.gref, m.handle), (dom, gref, handle));
                assert_eq!(m.gref, reqs[i].gref);
            }
            s => panic!("{pfn:?} is {s:?}"),
        }
        // Never online RAM.
        assert!(mm.read().pfn_to_online_page(pfn).is_none());
    }
    let c = mm.census();
    assert_eq!(c.pages_of(SectionKind::Device, StateKind::Foreign), 64);
    assert_eq!(
        c.pages_of(SectionKind::Device, StateKind::Unpopulated),
        PAGES_PER_SUBSECTION - 64
    );
    assert_eq!(c.pages_of(SectionKind::Device, StateKind::Reserved), 0);
    assert_eq!(c.ram_pages(), ram_before, "foreign pages are not our RAM");
    assert_eq!(mm.recount().unwrap(), c);
    // The walker counts them by state and never reads them.
    let st = saveable_walk(&mm, PfnRange::new(Pfn(0), Pfn(MAX_PFN)), |pfn| {
        assert!(!window.device.contains(pfn), "walker read {pfn:?}");
        0
    });
    assert_eq!(st.skipped_in(StateKind::Foreign), 64);
    assert_eq!(mapper.status().foreign_mapped, 64);
    // What the mapper would write back: the checksum over the mapped pages equals the
    // granter's over its own frames.
    let mapped: Vec<Frame> = slots
        .iter()
        .map(|p| sim.mapped_frame(p.0).unwrap())
        .collect();
    let theirs: Vec<Frame> = (0..64).map(|i| sim.peer_frame(PEER, i)).collect();
    assert_eq!(
        handshake::checksum(mapped.iter().map(|f| &f[..])),
        handshake::checksum(theirs.iter().map(|f| &f[..]))
    );
    assert!(mapped
        .iter()
        .enumerate()
        .all(|(i, f)| handshake::pattern_ok(u32::from(PEER) << 16 | i as u32, f)));
    // The peer cannot end access while we map.
    assert!(!sim.peer_end_access(PEER, reqs[0].gref));

    let res = mapper.unmap_batch(&mm, &mut sim, &slots).unwrap();
    assert!(res.iter().all(|r| matches!(r, Ok(Unmapped::Done(_)))));
    for &pfn in &slots {
        assert_eq!(device_state(&mm, pfn), PageState::Unpopulated);
    }
    assert!(sim.mapped_gfns().is_empty());
    let c = mm.census();
    assert_eq!(c.pages_in(StateKind::Foreign), 0);
    assert_eq!(
        c.pages_of(SectionKind::Device, StateKind::Unpopulated),
        PAGES_PER_SUBSECTION
    );
    assert_eq!(c.pages_of(SectionKind::Device, StateKind::Reserved), 0);
    assert_eq!(mm.recount().unwrap(), c);
    assert!(sim.peer_end_access(PEER, reqs[0].gref));
    let s = mapper.status();
    assert_eq!(
        (s.foreign_mapped, s.slots_free, s.slots_total),
        (0, 512, 512)
    );
    // Slots are reused, not leaked: mapping again needs no new subsection.
    let reqs = peer_granting(&sim, 3, 64, false);
    mapper.map_batch(&mm, &mut sim, &reqs).unwrap();
    assert_eq!(mapper.subsections().len(), 1);
}

#[test]
fn writable_maps_write_through_and_read_only_ones_refuse() {
    let (mm, _, mut sim, mut mapper) = rig(64);
    let mut reqs = peer_granting(&sim, PEER, 2, false);
    reqs[1].readonly = true;
    let slots = map_all(&mut mapper, &mm, &mut sim, &reqs);
    let data = [0x5a; FRAME_BYTES];
    sim.write_mapped(slots[0].0, &data).unwrap();
    assert_eq!(sim.peer_frame(PEER, 0), data);
    assert_eq!(sim.write_mapped(slots[1].0, &data), Err(Errno::EROFS));
    assert_eq!(sim.peer_frame(PEER, 1), pattern(PEER, 1));
}

#[test]
fn failed_maps_are_typed_and_leave_slots_unpopulated() {
    let (mm, _, mut sim, mut mapper) = rig(64);
    let good = peer_granting(&sim, PEER, 4, true);
    sim.add_peer(5, 1, 16);
    let ro_only = MapRequest {
        readonly: false,
        ..good[1]
    };
    sim.faults(|f| {
        f.deny.insert(5);
    });
    let reqs = [
        good[0],
        MapRequest {
            gref: 4000,
            ..good[0]
        },
        MapRequest {
            domid: 9,
            ..good[0]
        },
        ro_only,
        MapRequest {
            domid: 5,
            gref: 8,
            readonly: true,
        },
        good[2],
    ];
    let res = mapper.map_batch(&mm, &mut sim, &reqs).unwrap();
    assert!(res[0].is_ok() && res[5].is_ok());
    assert_eq!(res[1], Err(MapError::BadGref));
    assert_eq!(res[2], Err(MapError::BadDomain));
    assert_eq!(res[3], Err(MapError::General));
    assert_eq!(res[4], Err(MapError::PermissionDenied));
    let c = mm.census();
    assert_eq!(c.pages_in(StateKind::Foreign), 2);
    assert_eq!(mapper.status().slots_free, PAGES_PER_SUBSECTION - 2);
    assert_eq!(mapper.counters().map_failures, 4);
    assert_eq!(sim.mapped_gfns().len(), 2);

    // A whole-call failure maps nothing; a partial one keeps exactly what Xen did.
    sim.faults(|f| f.fail_calls = Some((Errno::EFAULT, 1)));
    let res = mapper.map_batch(&mm, &mut sim, &good[3..]).unwrap();
    assert_eq!(res, [Err(MapError::Hypercall(Errno::EFAULT))]);
    sim.faults(|f| {
        f.fail_after_ops = Some(1);
        f.map_status = Some((gntst::EAGAIN, 1));
    });
    let res = mapper
        .map_batch(&mm, &mut sim, &[good[3], good[3], good[3]])
        .unwrap();
    assert_eq!(res[0], Err(MapError::Again));
    assert_eq!(res[1], Err(MapError::Hypercall(Errno::EFAULT)));
    assert_eq!(res[2], Err(MapError::Hypercall(Errno::EFAULT)));
    let res = mapper.map_batch(&mm, &mut sim, &good[3..]).unwrap();
    assert!(res[0].is_ok());
    assert_eq!(mm.census().pages_in(StateKind::Foreign), 3);
    assert_eq!(sim.mapped_gfns().len(), 3);
    assert_eq!(mm.recount().unwrap(), mm.census());
    // Batches are bounded.
    let many = vec![good[0]; MAX_BATCH + 1];
    assert_eq!(
        mapper.map_batch(&mm, &mut sim, &many).unwrap_err(),
        MapError::BatchTooLarge
    );
}

#[test]
fn failed_unmaps_keep_the_slot_foreign_and_non_foreign_pfns_are_refused() {
    let (mm, _, mut sim, mut mapper) = rig(64);
    let reqs = peer_granting(&sim, PEER, 2, true);
    let slots = map_all(&mut mapper, &mm, &mut sim, &reqs);
    sim.faults(|f| f.unmap_status = Some((gntst::GENERAL_ERROR, 1)));
    let free = slots[1].add(1);
    let res = mapper
        .unmap_batch(&mm, &mut sim, &[slots[0], free, Pfn(0x100)])
        .unwrap();
    assert_eq!(res[0], Err(UnmapError::Status(gntst::GENERAL_ERROR)));
    assert_eq!(res[1], Err(UnmapError::NotMapped(free)));
    assert_eq!(res[2], Err(UnmapError::NotMapped(Pfn(0x100))));
    assert!(matches!(device_state(&mm, slots[0]), PageState::Foreign(_)));
    assert_eq!(sim.mapped_gfns().len(), 2);
    sim.faults(|f| f.fail_calls = Some((Errno::EAGAIN, 1)));
    let res = mapper.unmap_batch(&mm, &mut sim, &slots).unwrap();
    assert!(res
        .iter()
        .all(|r| *r == Err(UnmapError::Hypercall(Errno::EAGAIN))));
    let twice = [slots[0], slots[1], slots[0]];
    let res = mapper.unmap_batch(&mm, &mut sim, &twice).unwrap();
    assert!(matches!(res[0], Ok(Unmapped::Done(_))));
    assert!(matches!(res[1], Ok(Unmapped::Done(_))));
    assert_eq!(res[2], Err(UnmapError::NotMapped(slots[0])));
    assert_eq!(mm.census().pages_in(StateKind::Foreign), 0);
    assert_eq!(mapper.status().slots_free, PAGES_PER_SUBSECTION);
}

#[test]
fn granter_death_while_mapped_reclaims_every_slot_and_new_maps_fail() {
    let (mm, _, mut sim, mut mapper) = rig(64);
    let dying = peer_granting(&sim, PEER, 100, true);
    let other = peer_granting(&sim, 3, 10, true);
    for chunk in dying.chunks(MAX_BATCH) {
        mapper.map_batch(&mm, &mut sim, chunk).unwrap();
    }
    mapper.map_batch(&mm, &mut sim, &other).unwrap();
    sim.destroy_peer(PEER);
    // A zombie while we hold its pages: contents still readable, new maps refused.
    let s0 = mapper.slots_of(&mm, PEER)[0];
    assert_eq!(sim.mapped_frame(s0.0).unwrap(), pattern(PEER, 0));
    let res = mapper.map_batch(&mm, &mut sim, &dying[..1]).unwrap();
    assert_eq!(res, [Err(MapError::BadDomain)]);

    let rep = mapper.reclaim_domain(&mm, &mut sim, PEER);
    assert_eq!(
        rep,
        Reclaimed {
            unmapped: 100,
            already_gone: 0,
            failed: 0
        }
    );
    assert!(
        !sim.peer_exists(PEER),
        "the zombie goes with the last unmap"
    );
    assert!(mapper.slots_of(&mm, PEER).is_empty());
    assert_eq!(mm.census().pages_in(StateKind::Foreign), 10);
    assert_eq!(mapper.slots_of(&mm, 3).len(), 10);
    assert_eq!(mapper.status().foreign_mapped, 10);
    // Nothing left: a second reclaim is a no-op.
    assert_eq!(
        mapper.reclaim_domain(&mm, &mut sim, PEER),
        Reclaimed::default()
    );
    assert_eq!(mm.recount().unwrap(), mm.census());
}

#[test]
fn mappings_xen_already_dropped_just_return_their_slots() {
    let (mm, _, mut sim, mut mapper) = rig(64);
    let reqs = peer_granting(&sim, PEER, 5, false);
    mapper.map_batch(&mm, &mut sim, &reqs).unwrap();
    sim.destroy_peer(PEER);
    sim.revoke_mappings_of(PEER);
    let rep = mapper.reclaim_domain(&mm, &mut sim, PEER);
    assert_eq!((rep.unmapped, rep.already_gone, rep.failed), (0, 5, 0));
    assert_eq!(mm.census().pages_in(StateKind::Foreign), 0);
    assert_eq!(mapper.counters().already_gone, 5);
    // A refused unmap during reclaim leaves the slot for the next attempt.
    let reqs = peer_granting(&sim, 4, 3, false);
    mapper.map_batch(&mm, &mut sim, &reqs).unwrap();
    sim.faults(|f| f.unmap_status = Some((gntst::GENERAL_ERROR, 1)));
    let rep = mapper.reclaim_domain(&mm, &mut sim, 4);
    assert_eq!((rep.unmapped, rep.failed), (2, 1));
    let rep = mapper.reclaim_domain(&mm, &mut sim, 4);
    assert_eq!((rep.unmapped, rep.failed), (1, 0));
}

#[test]
fn grant_table_frames_sit_in_device_slots_as_xen_pages() {
    let (mm, _, mut sim, mut mapper) = rig(64);
    let ram = mm.census().ram_pages();
    let (nr, max) = sim.query_size().unwrap();
    assert_eq!((nr, max), (1, 64));
    let r = mapper.map_table_frames(&mm, &mut sim, 0, 4).unwrap();
    assert_eq!(r.len(), 4);
    assert_eq!(sim.query_size().unwrap().0, 4);
    let gfns = sim.table_gfns();
    for (i, pfn) in r.iter().enumerate() {
        assert_eq!(gfns[&(i as u32)], pfn.0);
        match device_state(&mm, pfn) {
            PageState::Foreign(m) => {
                assert_eq!(
                    (m.domid, m.gref, m.handle),
                    (DOMID_XEN, i as u32, TABLE_FRAME_HANDLE)
                )
            }
            s => panic!("{s:?}"),
        }
    }
    assert_eq!(mm.census().ram_pages(), ram);
    assert_eq!(mapper.status().table_frames, 4);
    // Not unmappable as grants, not reclaimable.
    let res = mapper.unmap_batch(&mm, &mut sim, &[r.start]).unwrap();
    assert_eq!(res, [Err(UnmapError::NotMapped(r.start))]);
    assert_eq!(
        mapper.reclaim_domain(&mm, &mut sim, DOMID_XEN),
        Reclaimed::default()
    );
    // Grant maps go elsewhere.
    let reqs = peer_granting(&sim, PEER, 1, true);
    let p = mapper.map_batch(&mm, &mut sim, &reqs).unwrap()[0].unwrap();
    assert!(!r.contains(p));
    // A failing add leaves the untouched slots free.
    sim.faults(|f| f.fail_calls = Some((Errno::EINVAL, 1)));
    let free = mapper.status().slots_free;
    assert_eq!(
        mapper.map_table_frames(&mm, &mut sim, 4, 2),
        Err(MapError::Hypercall(Errno::EINVAL))
    );
    assert_eq!(mapper.status().slots_free, free + PAGES_PER_SUBSECTION);
    let s = mapper.status();
    assert_eq!(
        s.foreign_mapped + s.slots_free + s.table_frames,
        s.slots_total
    );
}

#[test]
fn a_full_device_window_is_reported_and_nothing_is_mapped() {
    let (mm, _) = model(64);
    let window = HotplugWindow::with_sizes(&common::ram_memmap(64), 128 * MIB, 128 * MIB).unwrap();
    // A window of one subsection.
    let dev = PfnRange::from_count(window.device.start, PAGES_PER_SUBSECTION);
    let mut sim = SimGrants::new(ME, 1, 64);
    let mut mapper = ForeignMapper::new(dev);
    let reqs = peer_granting(&sim, PEER, 600, true);
    let mut mapped = 0;
    for chunk in reqs[..512].chunks(MAX_BATCH) {
        mapped += mapper
            .map_batch(&mm, &mut sim, chunk)
            .unwrap()
            .iter()
            .filter(|r| r.is_ok())
            .count();
    }
    assert_eq!(mapped, 512);
    assert_eq!(
        mapper
            .map_batch(&mm, &mut sim, &reqs[512..520])
            .unwrap_err(),
        MapError::WindowFull
    );
    assert_eq!(sim.mapped_gfns().len(), 512);
    assert_eq!(mm.census().pages_in(StateKind::Foreign), 512);
}

/// The balloon goes down and up while foreign pages are mapped: it never touches them,
/// they never count as RAM, and accounting against Xen closes after every settle.
#[test]
fn ballooning_around_foreign_pages() {
    let (mm, _, mut sim, mut mapper) = rig(128);
    let mut xen = SimMemory::new(&[(0, 128 * 256)], 128 * 256 + 256);
    let mut balloon = Balloon::new(BalloonConfig::default());
    let mut now = 1_000_000_000u64;
    balloon.adopt_boot_offline(&mm, &mut xen, now).unwrap();
    let reqs = peer_granting(&sim, PEER, 128, false);
    let mut slots = Vec::new();
    for chunk in reqs.chunks(MAX_BATCH) {
        for r in mapper.map_batch(&mm, &mut sim, chunk).unwrap() {
            slots.push(r.unwrap());
        }
    }
    let check = |mm: &MemModel<HeapStorage>, xen: &SimMemory, sim: &SimGrants| {
        let c = mm.census();
        assert_eq!(c.pages_in(StateKind::Foreign), 128);
        assert_eq!(c.ram_pages(), xen.tot_pages(), "own RAM == Xen's tot_pages");
        for gfn in sim.mapped_gfns() {
            assert!(
                !xen.is_populated(gfn),
                "foreign gfn {gfn:#x} counted as RAM"
            );
        }
        assert_eq!(mm.recount().unwrap(), c);
    };
    check(&mm, &xen, &sim);
    for target in [64u64, 128, 48, 100] {
        balloon
            .set_target(format!("{}", target * 1024).as_bytes(), 128 * 1024, now)
            .unwrap();
        for _ in 0..10_000 {
            match balloon.step(&mm, &mut xen, now) {
                StepOutcome::Progress => {}
                StepOutcome::BackingOff { until_ns } => now = until_ns,
                StepOutcome::Done => break,
                o => panic!("{o:?}"),
            }
        }
        check(&mm, &xen, &sim);
        balloon.check_accounting(&mm, &mut xen).unwrap();
        // The balloon did move (within its slack of the target).
        let tot_mib = xen.tot_pages() / 256;
        assert!(
            tot_mib.abs_diff(target) <= 2,
            "target {target}, at {tot_mib} MiB"
        );
        for (i, &pfn) in slots.iter().enumerate() {
            assert!(matches!(device_state(&mm, pfn), PageState::Foreign(_)));
            assert_eq!(sim.mapped_frame(pfn.0).unwrap(), pattern(PEER, i));
        }
    }
    let res = mapper.unmap_batch(&mm, &mut sim, &slots[..64]).unwrap();
    assert!(res.iter().all(Result::is_ok));
    assert_eq!(mm.census().pages_in(StateKind::Foreign), 64);
    assert_eq!(mm.census().ram_pages(), xen.tot_pages());
}

/// 16,384 grants (32 device subsections) mapped in batches of 64, then unmapped: the
/// device subsections are removed again and their memmap goes back; a second round works
/// the same. A round that leaves one page mapped keeps exactly that subsection.
#[test]
fn sixteen_thousand_grants_map_and_their_device_memmap_goes_back() {
    const N: usize = 16_384;
    let (mm, window, mut sim, mut mapper) = rig(64);
    sim.add_peer(PEER, N, N + 16);
    let reqs: Vec<MapRequest> = (0..N)
        .map(|i| MapRequest {
            domid: PEER,
            gref: sim.peer_grant(PEER, i, ME, true),
            readonly: true,
        })
        .collect();
    let memmap0 = mm.census().memmap_bytes;
    for round in 0..2 {
        let mut slots = Vec::with_capacity(N);
        for chunk in reqs.chunks(MAX_BATCH) {
            slots.extend(map_all(&mut mapper, &mm, &mut sim, chunk));
        }
        let c = mm.census();
        assert_eq!(
            c.pages_of(SectionKind::Device, StateKind::Foreign),
            N as u64
        );
        assert_eq!(
            mapper.subsections().len(),
            N / PAGES_PER_SUBSECTION as usize
        );
        assert_eq!(c.memmap_bytes - memmap0, 32 * 8192, "round {round}");
        assert!(slots.iter().all(|p| window.device.contains(*p)));
        // Unmap all but the last page: its subsection stays, the other 31 go.
        let (rest, last) = slots.split_at(N - 1);
        for chunk in rest.chunks(MAX_BATCH) {
            let r = mapper.unmap_batch(&mm, &mut sim, chunk).unwrap();
            assert!(r.iter().all(|r| matches!(r, Ok(Unmapped::Done(_)))));
        }
        assert_eq!(mapper.shrink(&mm), 31);
        assert_eq!(mm.census().memmap_bytes - memmap0, 8192);
        assert!(matches!(device_state(&mm, last[0]), PageState::Foreign(_)));
        mapper.unmap_batch(&mm, &mut sim, last).unwrap();
        assert_eq!(mapper.shrink(&mm), 1);
        let c = mm.census();
        assert_eq!(
            c.memmap_bytes, memmap0,
            "every device subsection's memmap back"
        );
        assert_eq!(
            c.by_kind[SectionKind::Device.index()].subsections_present,
            0
        );
        assert_eq!(mapper.status().slots_total, 0);
        assert_eq!(mm.recount().unwrap(), c);
    }
    assert_eq!(mapper.counters().subsections_removed, 64);
}
