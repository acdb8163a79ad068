//! The saveable-page walker in the kernel (command line `walk`): after every balloon
//! settle, walk all physical memory the way a hibernation image writer would
//! ([`guest::mm::hotplug::saveable_walk`]) and check what it saw against the census.
//!
//! Each online Free/Allocated frame is read — its first cache line, which is enough to
//! kill the domain if the frame had no backing; a full-page checksum of every page costs
//! about a second per GiB under QEMU TCG, too slow for a 100-step walk. Every other state
//! is skipped by its descriptor and never read.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use guest::mm::hotplug::{saveable_walk, HotplugWindow};
use guest::mm::{Pfn, PfnRange, StateKind};

use crate::kmem::Model;

pub struct Walker {
    /// Everything a page can live in: boot RAM up to the end of whichever window lies
    /// higher (the device window sits below the hot-add window since save/restore).
    range: PfnRange,
    runs: u64,
    mismatches: u64,
    last_pages: u64,
    last_seen: u64,
    last_checksum: u64,
    last_us: u64,
    last_foreign: u64,
}

impl Walker {
    pub fn new(window: &HotplugWindow) -> Self {
        Walker {
            range: PfnRange::new(Pfn(0), window.device.end.max(window.ram.end)),
            runs: 0,
            mismatches: 0,
            last_pages: 0,
            last_seen: 0,
            last_checksum: 0,
            last_us: 0,
            last_foreign: 0,
        }
    }

    /// One walk; a disagreement with the census is logged and counted.
    pub fn run(&mut self, mm: &Model) {
        let t0 = crate::hv::uptime_ns();
        let st = saveable_walk(mm, self.range, |pfn| {
            let line = pfn.addr() as *const u64;
            // SAFETY: the walker calls this only for online Free/Allocated pages, which
            // are backed by Xen and identity-mapped; nothing writes them concurrently on
            // this single vCPU.
            (0..8).fold(0u64, |acc, i| {
                acc.rotate_left(7) ^ unsafe { line.add(i).read_volatile() }
            })
        });
        self.last_us = (crate::hv::uptime_ns() - t0) / 1000;
        self.runs += 1;
        let census = mm.census();
        let want = census.pages_in(StateKind::Free) + census.pages_in(StateKind::Allocated);
        let wrong_state = st.skipped_in(StateKind::Free) + st.skipped_in(StateKind::Allocated);
        if st.pages != want
            || st.seen != census.pages_total()
            || wrong_state != 0
            || st.corrupt != 0
        {
            self.mismatches += 1;
            log::error!(
                "walk: saw {} saveable of {} pages, census has {want} Free+Allocated of {}; {wrong_state} Free/Allocated pages outside online RAM; {} corrupt descriptors",
                st.pages,
                st.seen,
                census.pages_total(),
                st.corrupt
            );
        }
        (self.last_pages, self.last_seen, self.last_checksum) = (st.pages, st.seen, st.checksum);
        self.last_foreign = st.skipped_in(StateKind::Foreign);
        log::info!(
            "walk #{}: {} saveable pages read, {} seen, checksum {:#018x}, {} us",
            self.runs,
            st.pages,
            st.seen,
            st.checksum,
            self.last_us
        );
    }

    /// For `data/mm/walk/`.
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        alloc::vec![
            ("runs", format!("{}", self.runs)),
            ("mismatches", format!("{}", self.mismatches)),
            ("pages", format!("{}", self.last_pages)),
            ("seen", format!("{}", self.last_seen)),
            ("checksum", format!("{:#x}", self.last_checksum)),
            ("us", format!("{}", self.last_us)),
            // Grant mappings and our table frames: counted by state, never read.
            ("skipped-foreign", format!("{}", self.last_foreign)),
        ]
    }
}
