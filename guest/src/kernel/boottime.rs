//! Where boot time goes, on the guest's own clock: the TSC read at named points from the
//! first instruction of `kernel_main` on, turned into milliseconds once Xen's clock
//! record gives the TSC's rate. One line at ready (`boot: first instruction -> ready`),
//! which `bench-boot` reads; nothing else depends on it. Once the runstate area is
//! registered (the "xen" phase) each mark also reads vCPU 0's time on a CPU, so the line
//! tells the phases that worked from those that waited for dom0.
//!
//! Only vCPU 0 marks, in thread context, before the APs start; the lock is there because
//! a static needs one, and is never contended.

use alloc::string::String;
use core::fmt::Write;

use crate::arch::cpu;

const MAX_MARKS: usize = 24;

struct Marks {
    start: u64,
    /// (phase, TSC at its end, vCPU 0's time on a CPU at its end if cheap to read).
    at: [(&'static str, u64, Option<u64>); MAX_MARKS],
    n: usize,
}

/// The marks so far. Taken by vCPU 0 in thread context during boot only.
static MARKS: spin::Mutex<Marks> = spin::Mutex::new(Marks {
    start: 0,
    at: [("", 0, None); MAX_MARKS],
    n: 0,
});

/// The first instruction of `kernel_main` (the entry stub before it only sets up long
/// mode and the boot page tables).
pub fn start() {
    let mut m = MARKS.lock();
    m.start = cpu::rdtsc();
    m.n = 0;
}

/// The phase called `name` ends now (it began at the previous mark).
pub fn mark(name: &'static str) {
    let t = cpu::rdtsc();
    let on_cpu = crate::hv::running_ns_from_area();
    let mut m = MARKS.lock();
    if m.start != 0 && m.n < MAX_MARKS {
        let n = m.n;
        m.at[n] = (name, t, on_cpu);
        m.n += 1;
    }
}

/// `first instruction -> ready 41.3 ms (early 2.1, xen 0.8, ...); on a CPU (to xen 2.5,
/// reservation 0.2, ...)`, with `to_ns` turning TSC ticks into nanoseconds: the second
/// list from the first mark with a CPU time on (the first entry is the vCPU's time on a
/// CPU since Xen created it). None without marks.
pub fn summary(to_ns: impl Fn(u64) -> u64) -> Option<String> {
    let m = MARKS.lock();
    if m.start == 0 || m.n == 0 {
        return None;
    }
    let ms = |ticks: u64| to_ns(ticks) as f64 / 1e6;
    let total_ticks = m.at[m.n - 1].1.wrapping_sub(m.start);
    let mut s = String::new();
    let _ = write!(s, "first instruction -> ready {:.1} ms (", ms(total_ticks));
    let mut prev = m.start;
    for (i, &(name, t, _)) in m.at[..m.n].iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let _ = write!(s, "{sep}{name} {:.1}", ms(t.wrapping_sub(prev)));
        prev = t;
    }
    s.push(')');
    let mut prev_cpu = None;
    for &(name, _, cpu) in &m.at[..m.n] {
        let Some(cpu) = cpu else { continue };
        let _ = match prev_cpu {
            None => write!(s, "; on a CPU (to {name} {:.1}", cpu as f64 / 1e6),
            Some(p) => write!(s, ", {name} {:.1}", cpu.saturating_sub(p) as f64 / 1e6),
        };
        prev_cpu = Some(cpu);
    }
    if prev_cpu.is_some() {
        s.push(')');
    }
    Some(s)
}
