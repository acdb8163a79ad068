//! Memory-model benchmarks (issue 4). Numbers, not assertions: `cargo bench -p guest --bench mm`.
//!
//! 1. memmap init for 1 GiB of RAM vs a plain memset of the same memmap bytes (the
//!    physical limit of writing the descriptors);
//! 2. `pfn_to_online_page` ns per call over a sparse 1 TiB space;
//! 3. the walker's pfns per second;
//! 4. descriptor bytes per 4 KiB page;
//! 5. hot-add and hot-remove per section with the kernel's storage shape (memmap in 2 MiB
//!    frames taken from the model's own allocator);
//! 6. the balloon's order-0 search of hot-added memory that has no free page; 7. its
//!    Offline check before adopting hot-added memory.

use std::hint::black_box;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use guest::mm::boot::{self, BootConfig, MemmapEntry, E820_RAM};
use guest::mm::hotplug::{hot_add, hot_remove_section, storage_for_sections, HotplugWindow};
use guest::mm::{
    Budgeted, BumpStorage, FrameReserve, HeapFrames, HeapStorage, PageState, Pfn, PfnRange,
    MEMMAP_BYTES_PER_SUBSECTION,
};

const GIB: u64 = 1 << 30;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ram(addr: u64, size: u64) -> MemmapEntry {
    MemmapEntry {
        addr,
        size,
        kind: E820_RAM,
    }
}

fn main() {
    // 1. memmap init for 1 GiB.
    let one_gib = [ram(0, GIB)];
    let cfg = BootConfig {
        memmap: &one_gib,
        reserved: &[],
        touchable_ram_pages: None,
    };
    // As the kernel does it: storage bumped from one region (claimed at the top of RAM).
    let plan = boot::plan(&cfg).expect("plan");
    let pages = plan.storage_pages();
    let mut region = vec![0u8; (pages as usize + 1) * 4096];
    let base = (region.as_mut_ptr() as usize).next_multiple_of(4096);
    let claimed = PfnRange::new(Pfn(GIB / 4096 - pages), Pfn(GIB / 4096));
    let memmap_bytes = (GIB / 4096) as usize * (MEMMAP_BYTES_PER_SUBSECTION / 512);
    // The kernel-shaped init and the hot memset of as many bytes, interleaved round by
    // round (in alternating order), so that a machine that speeds up or slows down
    // during the run moves both alike; both write memory the first round touched.
    let mut buf = vec![1u8; memmap_bytes];
    let (mut bump_rounds, mut memset_rounds) = (Vec::new(), Vec::new());
    for round in 0..101u8 {
        let init_round = |rounds: &mut Vec<Duration>| {
            // SAFETY: `region` outlives the model and holds `pages` aligned pages at base.
            let storage =
                unsafe { BumpStorage::new(NonNull::new(base as *mut u8).unwrap(), claimed) };
            let t = Instant::now();
            let mm = boot::build(&cfg, storage).expect("build 1 GiB (bump storage)");
            rounds.push(t.elapsed());
            black_box(&mm);
        };
        let memset_round = |rounds: &mut Vec<Duration>, buf: &mut Vec<u8>| {
            let t = Instant::now();
            // SAFETY: buf is memmap_bytes long.
            unsafe { std::ptr::write_bytes(black_box(buf.as_mut_ptr()), round, memmap_bytes) };
            rounds.push(t.elapsed());
            black_box(&buf);
        };
        if round % 2 == 0 {
            init_round(&mut bump_rounds);
            memset_round(&mut memset_rounds, &mut buf);
        } else {
            memset_round(&mut memset_rounds, &mut buf);
            init_round(&mut bump_rounds);
        }
    }
    // Round 0 pays the first touch of both buffers: left out.
    let init_bump = median(bump_rounds.split_off(1));
    let memset_hot = median(memset_rounds.split_off(1));
    let init = median(
        (0..15)
            .map(|_| {
                let t = Instant::now();
                let mm = boot::build(&cfg, HeapStorage).expect("build 1 GiB");
                let d = t.elapsed();
                black_box(&mm);
                d
            })
            .collect(),
    );
    // The fair limit writes fresh memory too (init's storage is newly allocated, so it
    // pays the first-touch faults); the hot memset is the bare bandwidth bound.
    let memset_fresh = median(
        (0..15)
            .map(|i| {
                let t = Instant::now();
                let mut v: Vec<u8> = Vec::with_capacity(memmap_bytes);
                // SAFETY: capacity is memmap_bytes; the bytes are written before any read.
                unsafe {
                    std::ptr::write_bytes(black_box(v.as_mut_ptr()), i as u8, memmap_bytes);
                    v.set_len(memmap_bytes);
                }
                let d = t.elapsed();
                black_box(&v);
                d
            })
            .collect(),
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "memmap init, 1 GiB, storage bumped from one region as in the kernel: {:.3} ms ({:.0} % of memset)",
        ms(init_bump),
        100.0 * memset_hot.as_secs_f64() / init_bump.as_secs_f64()
    );
    println!(
        "memmap init, 1 GiB ({} KiB of descriptors): {:.3} ms; memset of as many fresh bytes: {:.3} ms ({:.0} %); hot memset: {:.3} ms ({:.0} %)",
        memmap_bytes >> 10,
        ms(init),
        ms(memset_fresh),
        100.0 * memset_fresh.as_secs_f64() / init.as_secs_f64(),
        ms(memset_hot),
        100.0 * memset_hot.as_secs_f64() / init.as_secs_f64()
    );

    // 2. Lookups over a sparse 1 TiB: one 128 MiB RAM section every 8 GiB.
    let sparse: Vec<MemmapEntry> = (0..128).map(|i| ram(i * 8 * GIB, 128 << 20)).collect();
    let cfg = BootConfig {
        memmap: &sparse,
        reserved: &[],
        touchable_ram_pages: None,
    };
    let mm = boot::build(&cfg, HeapStorage).expect("build sparse 1 TiB");
    let span = 1u64 << 28; // pfns in 1 TiB
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let pfns: Vec<Pfn> = (0..1_000_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            Pfn(x % span)
        })
        .collect();
    let g = mm.read();
    let t = Instant::now();
    let mut hits = 0u64;
    for &p in &pfns {
        hits += g.pfn_to_online_page(black_box(p)).is_some() as u64;
    }
    let per = t.elapsed().as_secs_f64() * 1e9 / pfns.len() as f64;
    println!(
        "pfn_to_online_page over a sparse 1 TiB (128 sections): {per:.1} ns per call ({} of {} random pfns online)",
        hits,
        pfns.len()
    );

    // 3. Walker throughput over the whole sparse space.
    let t = Instant::now();
    let mut n = 0u64;
    let mut free = 0u64;
    for page in g.active_pages(PfnRange::new(Pfn(0), Pfn(span))) {
        n += 1;
        free += (page.state() == PageState::Free) as u64;
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "walker: {n} active pfns in {:.2} ms = {:.0} Mpfn/s ({free} free)",
        secs * 1e3,
        n as f64 / secs / 1e6
    );
    drop(g);

    // 4. Descriptor size.
    println!(
        "descriptor: {} bytes per 4 KiB page (Linux struct page: 64)",
        MEMMAP_BYTES_PER_SUBSECTION / 512
    );

    // 5. Hot-add / hot-remove per section, memmap from frames of the model's own RAM
    //    (boot 2 GiB; the boot storage closed right after boot, as in the kernel).
    let two = [ram(0, 2 * GIB)];
    let cfg = BootConfig {
        memmap: &two,
        reserved: &[],
        touchable_ram_pages: None,
    };
    let storage = FrameReserve::new(Budgeted::new(HeapStorage, usize::MAX), HeapFrames);
    let mm = boot::build(&cfg, storage).expect("build 2 GiB");
    mm.end_boot();
    mm.with_storage(|s| {
        let used = s.inner().used();
        s.inner_mut()
            .set_budget(used + 5 * guest::mm::SECTION_TABLE_CHUNK_BYTES);
    });
    let window = HotplugWindow::from_memmap(&two).expect("window");
    let sections = 64;
    let mut add = Vec::new();
    for _ in 0..sections {
        let t = Instant::now();
        mm.refill_storage(storage_for_sections(1)).expect("refill");
        let a = hot_add(&mm, &window, 1).expect("hot-add");
        add.push(t.elapsed());
        black_box(a);
    }
    // 6. The balloon asking all-Offline hot-added memory (never populated) for single
    //    free pages, as a step does once those sections are ballooned out: none to find.
    let first = window.ram_sections().next().expect("a hot-plug section");
    let hot = PfnRange::from_count(
        guest::mm::geometry::section_start_pfn(first),
        sections as u64 * guest::mm::geometry::PAGES_PER_SECTION,
    );
    let mut scan = Vec::new();
    for _ in 0..11 {
        let t = Instant::now();
        let n = mm.balloon_out_from(hot, 0, 1 << 14, false, |p, _| {
            black_box(p);
        });
        scan.push(t.elapsed());
        assert_eq!(n, Ok(0));
    }
    println!(
        "balloon_out_from, order 0, over {} MiB of all-Offline hot-added memory: median {:.3} ms",
        hot.len() / 256,
        median(scan).as_secs_f64() * 1e3
    );
    // 7. The balloon's check before adopting hot-added memory: every page Offline.
    let mut check = Vec::new();
    for _ in 0..11 {
        let t = Instant::now();
        mm.check_offline(hot, guest::mm::SectionKind::HotplugRam)
            .expect("all Offline");
        check.push(t.elapsed());
    }
    println!(
        "check_offline over the same {} MiB: median {:.3} ms",
        hot.len() / 256,
        median(check).as_secs_f64() * 1e3
    );
    let frames = mm.with_storage(|s| guest::mm::MemmapStorage::frames(s));
    let mut remove = Vec::new();
    for nr in window
        .ram_sections()
        .take(sections)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
    {
        let t = Instant::now();
        hot_remove_section(&mm, nr).expect("hot-remove");
        mm.trim_storage();
        remove.push(t.elapsed());
    }
    println!(
        "hot-add per section (refill + memmap init + active + online): median {:.3} ms; hot-remove (+ grace period, memmap and frames back): median {:.3} ms; {sections} sections used {frames} storage frames",
        median(add).as_secs_f64() * 1e3,
        median(remove).as_secs_f64() * 1e3,
    );
}
