//! Balloon benchmark (issue 13): the guest's own work in a 768 MiB step — building the
//! extent batch from the memory model and updating the memmap after the hypercall —
//! with a Xen that does nothing (every call succeeds at once), so all the time measured
//! is ours. Numbers, not assertions: `cargo bench -p guest --bench balloon`.
//!
//! Under real Xen the same path is timed by the guest itself (`data/balloon/step/`,
//! `scripts/bench`): there the hypercall is the bulk and this is the part that must stay
//! under 5 % of a step.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use guest::mm::boot::{self, BootConfig, MemmapEntry, E820_RAM};
use guest::mm::{HeapStorage, MemModel};
use guest::xen::balloon::{Balloon, BalloonConfig, StepOutcome};
use xen_bindings::traits::{Gfn, MemoryReservation};
use xen_bindings::Errno;

const MIB: u64 = 1 << 20;

/// A Xen that takes or backs every extent at once and counts `tot_pages`.
struct NullXen {
    tot: u64,
    calls: u64,
}

impl MemoryReservation for NullXen {
    fn populate_physmap(&mut self, gfns: &[Gfn], order: u32) -> Result<usize, Errno> {
        self.calls += 1;
        self.tot += (gfns.len() as u64) << order;
        Ok(gfns.len())
    }
    fn decrease_reservation(&mut self, gfns: &[Gfn], order: u32) -> Result<usize, Errno> {
        self.calls += 1;
        self.tot -= (gfns.len() as u64) << order;
        Ok(gfns.len())
    }
    fn current_reservation(&self) -> Result<u64, Errno> {
        Ok(self.tot)
    }
    fn maximum_reservation(&self) -> Result<u64, Errno> {
        Ok(u64::MAX)
    }
}

fn clock() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

fn model(ram_mib: u64) -> MemModel<HeapStorage> {
    let map = [MemmapEntry {
        addr: 0,
        size: ram_mib * MIB,
        kind: E820_RAM,
    }];
    let cfg = BootConfig {
        memmap: &map,
        reserved: &[],
        touchable_ram_pages: None,
    };
    let mm = boot::build(&cfg, HeapStorage).expect("build");
    mm.end_boot();
    mm
}

fn step_to(b: &mut Balloon, mm: &MemModel<HeapStorage>, xen: &mut NullXen, mib: u64) -> Duration {
    step_to_kib(b, mm, xen, mib * 1024)
}

fn step_to_kib(
    b: &mut Balloon,
    mm: &MemModel<HeapStorage>,
    xen: &mut NullXen,
    kib: u64,
) -> Duration {
    let t = Instant::now();
    b.set_target(format!("{kib}").as_bytes(), 1024 * 1024, clock())
        .expect("target");
    loop {
        match b.step(mm, xen, clock()) {
            StepOutcome::Progress => {}
            StepOutcome::Done => break,
            o => panic!("unexpected {o:?}"),
        }
    }
    t.elapsed()
}

/// Prints the median of each direction's steps of `pages` pages.
fn report(names: [&str; 2], down: Vec<Duration>, up: Vec<Duration>, pages: u64) {
    for (what, mut v) in names.into_iter().zip([down, up]) {
        v.sort();
        let med = v[v.len() / 2];
        println!(
            "  {what}: median {:>9.2} us  ({:.1} ns per page)",
            med.as_secs_f64() * 1e6,
            med.as_nanos() as f64 / pages as f64
        );
    }
}

fn main() {
    let mm = model(1024);
    let mut xen = NullXen {
        tot: 1024 * 256,
        calls: 0,
    };
    let mut b = Balloon::new(BalloonConfig::default()).with_clock(clock);
    b.adopt_boot_offline(&mm, &mut xen, clock()).expect("adopt");
    println!("balloon step of 768 MiB (196608 pages, 384 order-9 extents), Xen doing nothing:");
    let (mut down, mut up) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let c0 = xen.calls;
        down.push(step_to(&mut b, &mm, &mut xen, 256));
        let calls_down = xen.calls - c0;
        let c1 = xen.calls;
        up.push(step_to(&mut b, &mm, &mut xen, 1024));
        assert_eq!((calls_down, xen.calls - c1), (1, 1), "one call per step");
    }
    report(["down 1024 -> 256", "up   256 -> 1024"], down, up, 196608);
    // A step that is not a whole number of 2 MiB extents ends in order-0 pages: 1 MiB
    // (256 single pages) out and back.
    println!("balloon step of 1 MiB (256 order-0 pages), Xen doing nothing:");
    let (mut down, mut up) = (Vec::new(), Vec::new());
    for _ in 0..21 {
        down.push(step_to_kib(&mut b, &mm, &mut xen, 1024 * 1024 - 1024));
        up.push(step_to_kib(&mut b, &mm, &mut xen, 1024 * 1024));
    }
    report(["down 1024 -> 1023", "up   1023 -> 1024"], down, up, 256);
    let s = b.last_step().expect("timed");
    println!(
        "  last step (guest clock): total {} us, in the (null) hypercall {} us, {} call(s)",
        s.total_ns / 1000,
        s.hypercall_ns / 1000,
        s.hypercalls
    );
}
