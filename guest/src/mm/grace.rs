//! Grace periods: removal waits until no walker that might hold a descriptor remains.
//!
//! A tiny SRCU: readers count themselves in one of two slots chosen by the epoch parity;
//! a remover (serialised by the model's mutation lock) first clears the `active` bits,
//! then flips the epoch and waits for the slot it flipped away from to drain. Readers that
//! enter after the flip use the other slot and are guaranteed to see the cleared bits, so a
//! stream of new readers cannot starve the remover.
//!
//! Under a kernel ([`set_hooks`]) the remover waits politely (`relax`: the kernel yields
//! the vCPU to Xen, since the reader it waits for may be a preempted sibling vCPU), each
//! wait is timed, and a reader and a remover on the *same* CPU — a guard held across a
//! call that waits for a grace period, which would wait for itself forever — is caught
//! by an assertion instead of hanging.

use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// What the kernel tells the grace period about its CPUs and clock.
#[derive(Debug)]
pub struct GraceHooks {
    /// The calling CPU's index (< [`MAX_CONTEXTS`]).
    pub cpu: fn() -> usize,
    /// A monotonic clock in ns (wait statistics).
    pub now_ns: fn() -> u64,
    /// Called while waiting for readers (e.g. yield the vCPU to the hypervisor).
    pub relax: fn(),
}

/// CPUs whose read-side nesting is tracked.
pub const MAX_CONTEXTS: usize = 64;
/// Grace-period wait times kept for the median.
const SAMPLES: usize = 128;

static HOOKS: spin::Once<&'static GraceHooks> = spin::Once::new();

/// Installs the kernel's hooks (once, at boot, before a second CPU runs). Without them
/// (host tests) waits spin and nothing is timed or checked per CPU.
pub fn set_hooks(h: &'static GraceHooks) {
    HOOKS.call_once(|| h);
}

fn hooks() -> Option<&'static GraceHooks> {
    HOOKS.get().copied()
}

/// Lets other CPUs run (the kernel's `relax` hook; nothing without hooks).
pub(crate) fn relax() {
    if let Some(h) = hooks() {
        (h.relax)();
    }
}

/// Reader registry and epoch.
#[derive(Debug)]
pub struct GracePeriod {
    epoch: AtomicUsize,
    readers: [AtomicUsize; 2],
    /// Read-side nesting per CPU (only with hooks): written by that CPU alone.
    depth: [AtomicU32; MAX_CONTEXTS],
    waits: AtomicU64,
    wait_max_ns: AtomicU64,
    /// The last [`SAMPLES`] waits in µs (a ring indexed by `waits`).
    samples: [AtomicU32; SAMPLES],
}

impl Default for GracePeriod {
    fn default() -> Self {
        Self::new()
    }
}

/// Grace-period waits so far (the race scenario publishes them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GraceStats {
    pub waits: u64,
    /// Median of the last up to 128 waits.
    pub median_us: u32,
    pub max_us: u64,
}

/// Proof of being counted as a reader; dropping it leaves the read side.
#[derive(Debug)]
pub struct ReadToken<'a> {
    grace: &'a GracePeriod,
    slot: usize,
    /// The CPU whose `depth` this reader raised (with hooks).
    cpu: Option<usize>,
}

impl GracePeriod {
    /// No readers, epoch 0.
    pub const fn new() -> GracePeriod {
        GracePeriod {
            epoch: AtomicUsize::new(0),
            readers: [AtomicUsize::new(0), AtomicUsize::new(0)],
            depth: [const { AtomicU32::new(0) }; MAX_CONTEXTS],
            waits: AtomicU64::new(0),
            wait_max_ns: AtomicU64::new(0),
            samples: [const { AtomicU32::new(0) }; SAMPLES],
        }
    }

    /// Enter the read side.
    pub fn read(&self) -> ReadToken<'_> {
        let cpu = hooks().map(|h| (h.cpu)() % MAX_CONTEXTS);
        if let Some(c) = cpu {
            // Relaxed: only this CPU touches its own counter.
            self.depth[c].fetch_add(1, Ordering::Relaxed);
        }
        loop {
            // SeqCst (all three): these form a Dekker pattern with `synchronize`: either the
            // remover's scan sees our count, or our later loads of `active` follow the
            // remover's flip (which follows its clearing of `active`).
            let epoch = self.epoch.load(Ordering::SeqCst);
            let slot = epoch & 1;
            self.readers[slot].fetch_add(1, Ordering::SeqCst);
            if self.epoch.load(Ordering::SeqCst) == epoch {
                return ReadToken {
                    grace: self,
                    slot,
                    cpu,
                };
            }
            // The epoch moved between choosing and counting: a remover may already have
            // scanned this slot. Retry in the current one.
            // Release pairs with the remover's SeqCst scan of this slot.
            self.readers[slot].fetch_sub(1, Ordering::Release);
        }
    }

    /// Wait until every reader that entered before this call has left. Call with the
    /// mutation lock held, after clearing the `active` bits of what is being removed.
    ///
    /// # Panics
    /// If the calling CPU is itself inside a read-side section (with hooks): it would wait
    /// for itself forever.
    pub fn synchronize(&self) {
        self.assert_not_reading();
        let h = hooks();
        let t0 = h.map(|h| (h.now_ns)());
        // SeqCst: the flip is ordered after the caller's clearing of `active` and before
        // the scan; readers pair with it in `read`.
        let old = self.epoch.fetch_add(1, Ordering::SeqCst);
        // SeqCst scan pairs with the readers' SeqCst increment and Release decrement: once
        // it reads zero, every read-side section counted in this slot has ended.
        while self.readers[old & 1].load(Ordering::SeqCst) != 0 {
            match h {
                Some(h) => (h.relax)(),
                None => core::hint::spin_loop(),
            }
        }
        if let (Some(h), Some(t0)) = (h, t0) {
            let ns = (h.now_ns)().saturating_sub(t0);
            // Relaxed (all): statistics, written by the one remover (mutation lock held).
            let n = self.waits.fetch_add(1, Ordering::Relaxed);
            self.samples[n as usize % SAMPLES].store((ns / 1000) as u32, Ordering::Relaxed);
            self.wait_max_ns.fetch_max(ns, Ordering::Relaxed);
        }
    }

    /// Panics if the calling CPU is inside a read-side section (with hooks): removers call
    /// it before they change anything, so the failure leaves the model as it was.
    pub fn assert_not_reading(&self) {
        if let Some(h) = hooks() {
            let c = (h.cpu)() % MAX_CONTEXTS;
            // Relaxed: this CPU's own counter.
            let d = self.depth[c].load(Ordering::Relaxed);
            assert!(
                d == 0,
                "grace period waited for on CPU {c} inside {d} read-side section(s) of its own: it would wait for itself forever"
            );
        }
    }

    /// Grace-period waits so far (with hooks; zeros without).
    pub fn stats(&self) -> GraceStats {
        // Relaxed (all): a snapshot for reporting.
        let waits = self.waits.load(Ordering::Relaxed);
        let n = (waits as usize).min(SAMPLES);
        let mut v = [0u32; SAMPLES];
        for (i, d) in v.iter_mut().enumerate().take(n) {
            *d = self.samples[i].load(Ordering::Relaxed);
        }
        v[..n].sort_unstable();
        GraceStats {
            waits,
            median_us: if n == 0 { 0 } else { v[n / 2] },
            max_us: self.wait_max_ns.load(Ordering::Relaxed) / 1000,
        }
    }

    /// Readers currently inside (diagnostics and tests).
    pub fn readers(&self) -> usize {
        // Relaxed: a snapshot for reporting, orders nothing.
        self.readers[0].load(Ordering::Relaxed) + self.readers[1].load(Ordering::Relaxed)
    }
}

impl Drop for ReadToken<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.cpu {
            // Relaxed: only this CPU touches its own counter.
            self.grace.depth[c].fetch_sub(1, Ordering::Relaxed);
        }
        // Release: every descriptor access of this read side happens before the remover's
        // SeqCst scan sees the count drop, and so before it frees memmap.
        self.grace.readers[self.slot].fetch_sub(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    #[test]
    fn synchronize_waits_for_an_old_reader_but_not_for_new_ones() {
        let g = Arc::new(GracePeriod::new());
        let done = Arc::new(AtomicBool::new(false));
        let token = g.read();
        let remover = {
            let (g, done) = (g.clone(), done.clone());
            std::thread::spawn(move || {
                g.synchronize();
                done.store(true, Ordering::SeqCst);
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(
            !done.load(Ordering::SeqCst),
            "grace period ended under a reader"
        );
        // A reader entering now (after the flip) must not hold the remover up.
        let late = g.read();
        drop(token);
        remover.join().unwrap();
        assert!(done.load(Ordering::SeqCst));
        assert_eq!(g.readers(), 1);
        drop(late);
        assert_eq!(g.readers(), 0);
        g.synchronize();
    }
}
