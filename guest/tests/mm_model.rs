//! The memory model through its public API: boot from start_info-style memmaps, frame
//! allocation, the census, and walkers racing removal on other threads.

mod common;

use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{acpi_entry, boot_config, booted, ram_entry, Quarantine, MIB};
use guest::mm::boot::{self, BootError, MemmapEntry};
use guest::mm::census::CensusKey;
use guest::mm::geometry::{subsection_start_pfn, PAGES_PER_SUBSECTION};
use guest::mm::{
    ForeignMap, HeapStorage, MemModel, MemmapStorage, MmError, PageState, Pfn, PfnRange,
    SectionKind, StateKind, MAX_ORDER,
};

/// Heap storage that counts outstanding bytes, can be told to fail, and on free poisons a
/// block and keeps it (quarantine), so a reader touching freed memmap sees an invalid
/// descriptor tag and panics instead of silently reading reused memory.
#[derive(Clone, Default)]
struct Checked {
    outstanding: Arc<AtomicIsize>,
    budget: Arc<AtomicUsize>,
    quarantine: Quarantine,
}

impl Checked {
    fn unlimited() -> Checked {
        let c = Checked::default();
        c.budget.store(usize::MAX, Ordering::SeqCst);
        c
    }
    fn outstanding(&self) -> isize {
        self.outstanding.load(Ordering::SeqCst)
    }
}

impl MemmapStorage for Checked {
    fn alloc(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        let left = self.budget.load(Ordering::SeqCst);
        if layout.size() > left {
            return None;
        }
        self.budget.store(left - layout.size(), Ordering::SeqCst);
        self.outstanding
            .fetch_add(layout.size() as isize, Ordering::SeqCst);
        HeapStorage.alloc(layout)
    }

    unsafe fn free(&mut self, ptr: NonNull<u8>, layout: Layout) {
        self.outstanding
            .fetch_sub(layout.size() as isize, Ordering::SeqCst);
        // SAFETY: the block came from `HeapStorage.alloc(layout)` (above) and the model
        // gives it back and never uses it again.
        unsafe { self.quarantine.keep(ptr, layout) };
    }
}

/// 256 MiB of RAM and Xen's ACPI tables.
fn pvh_256() -> [MemmapEntry; 2] {
    [ram_entry(256), acpi_entry()]
}

#[test]
fn boot_then_run_the_frame_allocator() {
    let reserved = [PfnRange::covering_bytes(MIB, 3 * MIB)];
    let m = booted(&pvh_256(), &reserved, Checked::unlimited());
    let c0 = m.census();
    assert_eq!(c0.pages_in(StateKind::Reserved), 768);
    assert_eq!(c0.pages_in(StateKind::Free), 65536 - 768);

    let mut held = Vec::new();
    for order in (0..=MAX_ORDER).cycle().take(200) {
        held.push((m.alloc_frames(order).unwrap(), order));
    }
    let allocated: u64 = held.iter().map(|&(_, o)| 1u64 << o).sum();
    let c = m.recount().unwrap();
    assert_eq!(c.pages_in(StateKind::Allocated), allocated);
    assert_eq!(
        c.ram_pages(),
        65536,
        "allocating moves pages, never loses them"
    );
    // No two allocations overlap, and all avoid the reserved image.
    let mut pages: Vec<u64> = held
        .iter()
        .flat_map(|&(p, o)| p.0..p.0 + (1 << o))
        .collect();
    pages.sort_unstable();
    pages.dedup();
    assert_eq!(pages.len() as u64, allocated);
    assert!(pages.iter().all(|&p| !reserved[0].contains(Pfn(p))));
    for (p, o) in held {
        m.free_frames(p, o).unwrap();
    }
    assert_eq!(m.recount().unwrap(), c0, "everything coalesces back");

    // Balloon out whole subsections, then populate them back.
    let out: Vec<Pfn> = (0..10)
        .map(|_| m.balloon_out_subsection().unwrap())
        .collect();
    assert!(out.iter().all(|p| p.0 % PAGES_PER_SUBSECTION == 0));
    let c = m.census();
    assert_eq!(c.pages_in(StateKind::Offline), 10 * 512);
    assert_eq!(c.ram_pages(), 65536 - 10 * 512);
    for p in out {
        assert_eq!(
            m.read().pfn_to_online_page(p).unwrap().state(),
            PageState::Offline
        );
        m.populate(p, 9).unwrap();
    }
    assert_eq!(m.recount().unwrap(), c0);
}

#[test]
fn census_fields_name_every_number() {
    let map = pvh_256();
    let m = boot::build(&boot_config(&map, &[]), HeapStorage).unwrap();
    m.add_section(40, SectionKind::Device).unwrap();
    let c = m.census();
    let get = |key: &str| {
        c.fields()
            .find(|(k, _)| k.to_string() == key)
            .unwrap_or_else(|| panic!("no {key}"))
            .1
    };
    assert_eq!(get("pages/boot-ram/free"), 65536);
    assert_eq!(get("pages/device/unpopulated"), 32768);
    assert_eq!(get("pages/ram"), 65536);
    assert_eq!(get("sections/present"), 3);
    assert_eq!(get("sections/online"), 2);
    assert_eq!(get("subsections/active"), 128 + 64);
    assert_eq!(get("memmap-bytes"), (128 + 64) * 8192);
    assert_eq!(get("free-blocks/9"), 128);
    let keys: Vec<String> = c.fields().map(|(k, _)| k.to_string()).collect();
    let mut unique = keys.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), keys.len(), "keys are unique");
    assert!(matches!(
        c.fields().nth(7),
        Some((CensusKey::Pages(_, _), _))
    ));
}

#[test]
fn a_walker_holding_a_guard_blocks_memmap_free() {
    let storage = Checked::unlimited();
    let m = Arc::new(MemModel::new(storage.clone()));
    let dev = PfnRange::from_count(subsection_start_pfn(8, 0), 2 * PAGES_PER_SUBSECTION);
    m.add_subsections(dev, SectionKind::Device).unwrap();
    let map = ForeignMap {
        domid: 3,
        gref: 77,
        handle: 5,
    };
    m.map_foreign(dev.start, map).unwrap();
    m.unmap_foreign(dev.start).unwrap();

    let (entered_tx, entered_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let reader = {
        let m = m.clone();
        std::thread::spawn(move || {
            let g = m.read();
            let page = g.pfn_to_device_page(dev.start).unwrap();
            entered_tx.send(()).unwrap();
            release_rx.recv().unwrap();
            // Removal has cleared the active bit by now, but our descriptor is intact.
            assert!(!m.pfn_active(dev.start));
            assert_eq!(page.state(), PageState::Unpopulated);
            assert!(
                g.pfn_to_device_page(dev.start).is_none(),
                "new lookups see inactive"
            );
        })
    };
    entered_rx.recv().unwrap();
    let before = storage.outstanding();
    let removed = Arc::new(AtomicBool::new(false));
    let remover = {
        let (m, removed) = (m.clone(), removed.clone());
        std::thread::spawn(move || {
            m.remove_subsections(dev).unwrap();
            removed.store(true, Ordering::SeqCst);
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        !removed.load(Ordering::SeqCst),
        "memmap freed under a walker"
    );
    assert_eq!(storage.outstanding(), before, "nothing freed yet");
    release_tx.send(()).unwrap();
    reader.join().unwrap();
    remover.join().unwrap();
    assert!(removed.load(Ordering::SeqCst));
    assert_eq!(storage.outstanding(), before - 2 * 8192);
    assert!(!m.pfn_valid(dev.start));
}

#[test]
fn readers_on_other_threads_survive_add_and_remove_storms() {
    let storage = Checked::unlimited();
    let m = Arc::new(MemModel::new(storage.clone()));
    let ram = PfnRange::from_count(Pfn(0), 4 * PAGES_PER_SUBSECTION);
    m.add_subsections(ram, SectionKind::HotplugRam).unwrap();
    m.online_section(0).unwrap();
    m.populate(Pfn(0), 9).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (m, stop) = (m.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut seen = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let g = m.read();
                    for p in g.active_pages(PfnRange::new(Pfn(0), Pfn(1 << 20))) {
                        // A freed (poisoned) descriptor would panic inside state().
                        let s = p.state();
                        match p.section_kind() {
                            SectionKind::Device => {
                                assert!(matches!(s, PageState::Unpopulated | PageState::Foreign(_)))
                            }
                            _ => assert_ne!(s, PageState::Unpopulated),
                        }
                        seen += 1;
                    }
                }
                seen
            })
        })
        .collect();
    for round in 0..300u32 {
        let nr = 1 + (round as usize % 7);
        let range = PfnRange::from_count(subsection_start_pfn(nr, 0), 4 * PAGES_PER_SUBSECTION);
        m.add_subsections(range, SectionKind::Device).unwrap();
        let map = ForeignMap {
            domid: 1,
            gref: round,
            handle: round,
        };
        m.map_foreign(range.start, map).unwrap();
        let f = m.alloc_frames((round % 4) as u8).unwrap();
        m.unmap_foreign(range.start).unwrap();
        m.remove_subsections(range).unwrap();
        m.free_frames(f, (round % 4) as u8).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let seen: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert!(seen > 0);
    m.recount().unwrap();
}

#[test]
fn storage_failure_leaves_no_half_present_subsection() {
    let storage = Checked::default();
    storage.budget.store(usize::MAX, Ordering::SeqCst);
    let m = MemModel::new(storage.clone());
    // Install the chunk first, then allow exactly two memmap blocks.
    m.add_subsections(PfnRange::from_count(Pfn(0), 512), SectionKind::HotplugRam)
        .unwrap();
    let base = storage.outstanding();
    storage.budget.store(2 * 8192, Ordering::SeqCst);
    let range = PfnRange::from_count(Pfn(512), 4 * 512);
    let before = m.census();
    assert_eq!(
        m.add_subsections(range, SectionKind::HotplugRam),
        Err(MmError::StorageExhausted { bytes: 8192 })
    );
    assert_eq!(
        storage.outstanding(),
        base,
        "the two blocks were given back"
    );
    assert_eq!(m.census(), before);
    assert!(range
        .iter()
        .step_by(512)
        .all(|p| !m.pfn_valid(p) && !m.pfn_active(p)));
    storage.budget.store(usize::MAX, Ordering::SeqCst);
    m.add_subsections(range, SectionKind::HotplugRam).unwrap();
    assert_eq!(m.census().subsections_present, 5);
    drop(m);
    assert_eq!(
        storage.outstanding(),
        0,
        "dropping the model returns everything"
    );
}

#[test]
fn failed_boot_returns_all_storage() {
    let map = pvh_256();
    let cfg = boot_config(&map, &[]);
    let p = boot::plan(&cfg).unwrap();
    let storage = Checked::default();
    storage
        .budget
        .store(p.storage_bytes as usize / 2, Ordering::SeqCst);
    let r = boot::build(&cfg, storage.clone());
    assert!(matches!(
        r,
        Err(BootError::Model(MmError::StorageExhausted { .. }))
    ));
    assert_eq!(storage.outstanding(), 0);
}

/// The negative control of the race scenario, on the host and deterministic: a reader
/// holds a descriptor of a device subsection while another thread removes it. With the
/// grace period the remover waits and the descriptor stays valid; with the `NoGrace` bug
/// switched on the remover frees at once and the reader finds poison (`checked` = None).
#[test]
fn a_missing_grace_period_leaves_a_reader_on_poison() {
    use guest::mm::RaceBug;
    for bug in [RaceBug::None, RaceBug::NoGrace] {
        let m = Arc::new(MemModel::new(Checked::unlimited()));
        let range = PfnRange::from_count(Pfn(1 << 20), PAGES_PER_SUBSECTION);
        m.add_subsections(range, SectionKind::Device).unwrap();
        m.set_race_bug(bug);
        let g = m.read();
        let page = g.pfn_to_device_page(range.start).unwrap();
        assert_eq!(page.checked(), Some((PageState::Unpopulated, true)));
        let done = Arc::new(AtomicBool::new(false));
        let remover = {
            let (m, done) = (m.clone(), done.clone());
            std::thread::spawn(move || {
                m.remove_subsections(range).unwrap();
                done.store(true, Ordering::SeqCst);
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        match bug {
            RaceBug::None => {
                assert!(
                    !done.load(Ordering::SeqCst),
                    "removal did not wait for the reader"
                );
                assert_eq!(page.checked(), Some((PageState::Unpopulated, true)));
            }
            _ => {
                assert!(done.load(Ordering::SeqCst), "the bug should not wait");
                assert_eq!(page.checked(), None, "freed memmap must read as poison");
            }
        }
        drop(g);
        remover.join().unwrap();
        assert!(!m.pfn_active(range.start));
    }
}
