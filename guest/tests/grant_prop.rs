//! Random sequences of grant / peer map / end access / retry on the granting side and
//! peer grant / map / unmap / peer death / reclaim / faults on the mapping side, with
//! the invariants checked after every step:
//! - no ref of ours is reused (or revoked) while a peer maps it;
//! - every device slot is Unpopulated, or Foreign with the handle Xen holds for exactly
//!   that (domid, gref) at that gfn, and Xen maps nothing we have not recorded;
//! - census, mapper status, grant-table status and the simulated Xen agree; no device
//!   page is Reserved; our RAM count never moves.

mod common;

use std::collections::BTreeMap;

use guest::mm::{HeapStorage, MemModel, PageState, Pfn, SectionKind, StateKind};
use guest::xen::grant::{
    EndAccess, ForeignMapper, GrantTable, MapRequest, RefState, Unmapped, DOMID_XEN,
};
use proptest::prelude::*;
use xen_bindings::abi::grant_table::{gntst, gtf, GRANT_ENTRIES_PER_FRAME_V1};
use xen_bindings::sim::grant::SimGrants;
use xen_bindings::traits::GrantOps;
use xen_bindings::Errno;

const ME: u16 = 1;
const PEERS: [u16; 3] = [2, 3, 4];
const PEER_FRAMES: usize = 40;

#[derive(Clone, Debug)]
enum Op {
    Grant {
        peer: usize,
        readonly: bool,
    },
    PeerMapOwn {
        pick: usize,
        readonly: bool,
    },
    PeerUnmapOwn {
        pick: usize,
    },
    End {
        pick: usize,
    },
    Retry,
    PeerGrant {
        peer: usize,
        n: usize,
        readonly: bool,
    },
    Map {
        start: usize,
        n: usize,
        readonly: bool,
    },
    Unmap {
        start: usize,
        n: usize,
    },
    DestroyPeer {
        peer: usize,
        reclaim: bool,
    },
    Revoke {
        peer: usize,
    },
    Reclaim {
        peer: usize,
    },
    FailNextCall,
    FailNextUnmap,
    TableFrame,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize, any::<bool>()).prop_map(|(peer, readonly)| Op::Grant { peer, readonly }),
        4 => (any::<usize>(), any::<bool>())
            .prop_map(|(pick, readonly)| Op::PeerMapOwn { pick, readonly }),
        3 => any::<usize>().prop_map(|pick| Op::PeerUnmapOwn { pick }),
        3 => any::<usize>().prop_map(|pick| Op::End { pick }),
        2 => Just(Op::Retry),
        3 => (0..3usize, 1..12usize, any::<bool>())
            .prop_map(|(peer, n, readonly)| Op::PeerGrant { peer, n, readonly }),
        4 => (any::<usize>(), 1..70usize, any::<bool>())
            .prop_map(|(start, n, readonly)| Op::Map { start, n, readonly }),
        3 => (any::<usize>(), 1..70usize).prop_map(|(start, n)| Op::Unmap { start, n }),
        1 => (0..3usize, any::<bool>()).prop_map(|(peer, reclaim)| Op::DestroyPeer { peer, reclaim }),
        1 => (0..3usize).prop_map(|peer| Op::Revoke { peer }),
        1 => (0..3usize).prop_map(|peer| Op::Reclaim { peer }),
        1 => Just(Op::FailNextCall),
        1 => Just(Op::FailNextUnmap),
        1 => Just(Op::TableFrame),
    ]
}

/// A peer's mapping of one of our grants, as the test saw it made.
#[derive(Clone, Copy, Debug)]
struct OwnMap {
    peer: u16,
    gref: u32,
    frame: u32,
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    // 32 MiB of RAM, a 1 MiB kernel image.
    let (mm, window) = common::ram_model(32, 1);
    let mut sim = SimGrants::new(ME, 1, 4);
    for p in PEERS {
        sim.add_peer(p, PEER_FRAMES, 256);
    }
    let mem = sim.own_table();
    let mut table = GrantTable::new(&mem[..GRANT_ENTRIES_PER_FRAME_V1]);
    let mut mapper = ForeignMapper::new(window.device);
    let ram = mm.census().ram_pages();
    let mut next_frame = 0x1000u32;
    // Our granted refs (in grant order) and the peers' live mappings of them.
    let mut granted: Vec<u32> = Vec::new();
    let mut own_maps: BTreeMap<u32, OwnMap> = BTreeMap::new();
    // Grants peers made to us that we may map.
    let mut offers: Vec<MapRequest> = Vec::new();
    let mut dead = [false; 3];

    for op in ops {
        match op {
            Op::Grant { peer, readonly } => {
                next_frame += 1;
                if let Ok(r) = table.grant_access(PEERS[peer], u64::from(next_frame), readonly) {
                    prop_assert!(
                        !own_maps.values().any(|m| m.gref == r),
                        "ref {} handed out while mapped",
                        r
                    );
                    granted.push(r);
                }
            }
            Op::PeerMapOwn { pick, readonly } if !granted.is_empty() => {
                let r = granted[pick % granted.len()];
                let Some(RefState::Granted {
                    domid,
                    frame,
                    readonly: ro,
                }) = table.ref_state(r)
                else {
                    continue;
                };
                match sim.peer_map_own(domid, r, readonly) {
                    Ok(m) => {
                        prop_assert!(readonly || !ro);
                        prop_assert_eq!(m.frame, frame);
                        own_maps.insert(
                            m.handle,
                            OwnMap {
                                peer: domid,
                                gref: r,
                                frame,
                            },
                        );
                    }
                    Err(s) => {
                        let is_dead = dead[PEERS.iter().position(|&p| p == domid).unwrap()];
                        prop_assert!(
                            (s == gntst::GENERAL_ERROR && ro && !readonly)
                                || (s == gntst::BAD_DOMAIN && is_dead),
                            "map of granted ref {} refused with {}",
                            r,
                            s
                        );
                    }
                }
            }
            Op::PeerUnmapOwn { pick } if !own_maps.is_empty() => {
                let h = *own_maps.keys().nth(pick % own_maps.len()).unwrap();
                sim.peer_unmap_own(h).unwrap();
                own_maps.remove(&h);
            }
            Op::End { pick } if !granted.is_empty() => {
                let r = granted.swap_remove(pick % granted.len());
                let mapped = own_maps.values().any(|m| m.gref == r);
                match table.end_access(r) {
                    Ok(EndAccess::Released) => prop_assert!(!mapped),
                    Ok(EndAccess::Deferred) => prop_assert!(mapped),
                    Err(e) => prop_assert!(false, "end_access({}) = {:?}", r, e),
                }
            }
            Op::Retry => {
                for rel in table.retry_deferred() {
                    prop_assert!(!own_maps.values().any(|m| m.gref == rel.gref));
                }
                for r in table.deferred() {
                    let f = table.entry_flags(r).unwrap();
                    prop_assert!(f & (gtf::READING | gtf::WRITING) != 0, "ref {} stuck", r);
                }
            }
            Op::PeerGrant { peer, n, readonly } if !dead[peer] => {
                for i in 0..n {
                    let gref = sim.peer_grant(PEERS[peer], i % PEER_FRAMES, ME, readonly);
                    offers.push(MapRequest {
                        domid: PEERS[peer],
                        gref,
                        readonly,
                    });
                }
            }
            Op::Map { start, n, readonly } if !offers.is_empty() => {
                let reqs: Vec<MapRequest> = (0..n.min(64))
                    .map(|i| MapRequest {
                        readonly: readonly || offers[(start + i) % offers.len()].readonly,
                        ..offers[(start + i) % offers.len()]
                    })
                    .collect();
                let res = mapper.map_batch(&mm, &mut sim, &reqs).unwrap();
                prop_assert_eq!(res.len(), reqs.len());
            }
            Op::Unmap { start, n } => {
                let slots: Vec<Pfn> = mapper.subsections().iter().flat_map(|r| r.iter()).collect();
                if slots.is_empty() {
                    continue;
                }
                let pick: Vec<Pfn> = (0..n.min(64))
                    .map(|i| slots[(start + i * 7) % slots.len()])
                    .collect();
                let res = mapper.unmap_batch(&mm, &mut sim, &pick).unwrap();
                for (pfn, r) in pick.iter().zip(res) {
                    if let Ok(Unmapped::Done(_) | Unmapped::AlreadyGone(_)) = r {
                        let g = mm.read();
                        prop_assert_eq!(
                            g.pfn_to_device_page(*pfn).unwrap().state(),
                            PageState::Unpopulated
                        );
                    }
                }
            }
            Op::DestroyPeer { peer, reclaim } if !dead[peer] => {
                dead[peer] = true;
                sim.destroy_peer(PEERS[peer]);
                own_maps.retain(|_, m| m.peer != PEERS[peer]);
                offers.retain(|o| o.domid != PEERS[peer]);
                if reclaim {
                    let rep = mapper.reclaim_domain(&mm, &mut sim, PEERS[peer]);
                    // An injected unmap fault leaves its slot for a later reclaim.
                    let left = mapper.slots_of(&mm, PEERS[peer]).len() as u64;
                    prop_assert_eq!(left, rep.failed);
                    if rep.failed == 0 {
                        prop_assert!(!sim.peer_exists(PEERS[peer]));
                    }
                }
            }
            Op::Revoke { peer } => sim.revoke_mappings_of(PEERS[peer]),
            Op::Reclaim { peer } => {
                let before = mapper.slots_of(&mm, PEERS[peer]).len() as u64;
                let rep = mapper.reclaim_domain(&mm, &mut sim, PEERS[peer]);
                prop_assert_eq!(rep.unmapped + rep.already_gone + rep.failed, before);
            }
            Op::FailNextCall => sim.faults(|f| f.fail_calls = Some((Errno::EFAULT, 1))),
            Op::TableFrame => {
                // Another frame of our own table, placed in a device slot; the table
                // grows over it.
                let (nr, max) = sim.query_size().unwrap();
                match mapper.map_table_frames(&mm, &mut sim, nr, 1) {
                    Ok(_) => {
                        let (now, _) = sim.query_size().unwrap();
                        prop_assert_eq!(now, nr + 1);
                        table
                            .grow(&mem[..now as usize * GRANT_ENTRIES_PER_FRAME_V1])
                            .unwrap();
                    }
                    Err(e) => prop_assert!(
                        nr == max || matches!(e, guest::xen::grant::MapError::Hypercall(_)),
                        "{:?}",
                        e
                    ),
                }
            }
            Op::FailNextUnmap => sim.faults(|f| f.unmap_status = Some((gntst::GENERAL_ERROR, 1))),
            _ => {}
        }
        check(&mm, &sim, &table, &mapper, &own_maps, ram)?;
    }
    // Teardown: every peer dies, every slot comes back, every deferred ref is released.
    sim.faults(|f| *f = Default::default());
    for p in PEERS {
        sim.destroy_peer(p);
        mapper.reclaim_domain(&mm, &mut sim, p);
    }
    own_maps.clear();
    table.retry_deferred();
    check(&mm, &sim, &table, &mapper, &own_maps, ram)?;
    prop_assert_eq!(table.status().deferred, 0);
    prop_assert_eq!(
        mm.census().pages_in(StateKind::Foreign),
        mapper.status().table_frames
    );
    prop_assert!(sim.mapped_gfns().is_empty());
    Ok(())
}

fn check(
    mm: &MemModel<HeapStorage>,
    sim: &SimGrants,
    table: &GrantTable<'_>,
    mapper: &ForeignMapper,
    own_maps: &BTreeMap<u32, OwnMap>,
    ram: u64,
) -> Result<(), TestCaseError> {
    // Granting side: a mapped ref is still ours for that peer and frame, with access.
    for m in own_maps.values() {
        match table.ref_state(m.gref) {
            Some(RefState::Granted { domid, frame, .. })
            | Some(RefState::Deferred { domid, frame }) => {
                prop_assert_eq!((domid, frame), (m.peer, m.frame), "ref {} reused", m.gref)
            }
            s => prop_assert!(false, "ref {} mapped but {:?}", m.gref, s),
        }
        let f = table.entry_flags(m.gref).unwrap();
        prop_assert!(f & gtf::PERMIT_ACCESS != 0 && f & gtf::READING != 0);
    }
    let st = table.status();
    prop_assert_eq!(st.outstanding + st.deferred + st.free, st.refs);
    prop_assert_eq!(st.deferred as usize, table.deferred().count());

    // Mapping side: slots against Xen's view.
    let mut foreign = 0u64;
    let mut tables = 0u64;
    {
        let g = mm.read();
        for r in mapper.subsections() {
            for p in g.active_pages(*r) {
                match p.state() {
                    PageState::Unpopulated => {
                        prop_assert_eq!(sim.mapping_at(p.pfn().0), None, "{:?}", p.pfn())
                    }
                    PageState::Foreign(m) if m.domid == DOMID_XEN => {
                        let gfns = sim.table_gfns();
                        prop_assert_eq!(gfns.get(&m.gref), Some(&p.pfn().0));
                        tables += 1;
                    }
                    PageState::Foreign(m) => {
                        foreign += 1;
                        // Xen may have dropped it behind our back (revoked): then the
                        // next unmap says bad_handle; otherwise it must match exactly.
                        if let Some(x) = sim.mapping_at(p.pfn().0) {
                            prop_assert_eq!(x, (m.domid, m.gref, m.handle));
                        }
                    }
                    s => prop_assert!(false, "{:?} in a device slot", s),
                }
            }
        }
        for gfn in sim.mapped_gfns() {
            let page = g.pfn_to_device_page(Pfn(gfn));
            prop_assert!(
                matches!(page.map(|p| p.state()), Some(PageState::Foreign(_))),
                "Xen maps gfn {:#x} we do not record",
                gfn
            );
        }
    }
    let c = mm.census();
    let s = mapper.status();
    prop_assert_eq!(c.pages_in(StateKind::Foreign), foreign + tables);
    prop_assert_eq!(s.foreign_mapped, foreign);
    prop_assert_eq!(s.table_frames, tables);
    prop_assert_eq!(s.foreign_mapped + s.slots_free + tables, s.slots_total);
    prop_assert_eq!(c.pages_of(SectionKind::Device, StateKind::Reserved), 0);
    prop_assert_eq!(
        c.pages_of(SectionKind::Device, StateKind::Unpopulated) + foreign + tables,
        s.slots_total + s.table_spare
    );
    prop_assert_eq!(c.ram_pages(), ram);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn random_grant_map_unmap_end_access_and_peer_death(
        ops in proptest::collection::vec(op(), 1..120)
    ) {
        run(ops)?;
    }
}
