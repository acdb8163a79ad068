//! The grace period under a kernel's hooks (its own test binary: the hooks are global).
//! A guard held across a call that waits for a grace period on the same CPU is caught by
//! an assertion instead of hanging; a reader on another CPU is waited for, politely
//! (`relax`), and the wait is timed.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use guest::mm::{set_grace_hooks, GraceHooks, HeapStorage, MemModel, Pfn, PfnRange, SectionKind};

static NEXT_CPU: AtomicUsize = AtomicUsize::new(0);
static RELAXED: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static CPU: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// Each test thread is its own "CPU".
fn cpu() -> usize {
    CPU.with(|c| {
        if c.get() == usize::MAX {
            c.set(NEXT_CPU.fetch_add(1, Ordering::SeqCst));
        }
        c.get()
    })
}

fn now_ns() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

fn relax() {
    RELAXED.fetch_add(1, Ordering::SeqCst);
    std::thread::yield_now();
}

static HOOKS: GraceHooks = GraceHooks { cpu, now_ns, relax };

fn device_model() -> (MemModel<HeapStorage>, PfnRange) {
    set_grace_hooks(&HOOKS);
    let m = MemModel::new(HeapStorage);
    let range = PfnRange::from_count(Pfn(1 << 20), 512);
    m.add_subsections(range, SectionKind::Device).unwrap();
    (m, range)
}

#[test]
fn waiting_for_a_grace_period_inside_ones_own_read_side_is_caught() {
    let (m, range) = device_model();
    let g = m.read();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| m.remove_subsections(range)));
    let msg = r.expect_err("must not wait for itself");
    let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("would wait for itself"), "{msg}");
    drop(g);
}

#[test]
fn a_reader_on_another_cpu_is_waited_for_politely_and_timed() {
    let (m, range) = device_model();
    let m = Arc::new(m);
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = {
        let m = m.clone();
        std::thread::spawn(move || {
            let g = m.read();
            tx.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(50));
            drop(g);
        })
    };
    rx.recv().unwrap();
    let before = RELAXED.load(Ordering::SeqCst);
    m.remove_subsections(range).unwrap();
    reader.join().unwrap();
    assert!(
        RELAXED.load(Ordering::SeqCst) > before,
        "the wait never relaxed"
    );
    let st = m.grace_stats();
    assert_eq!(st.waits, 1);
    assert!(st.max_us >= 10_000, "{st:?}");
    assert_eq!(st.median_us as u64, st.max_us);
}
