//! Grace periods: removal waits until no walker that might hold a descriptor remains.
//!
//! A tiny SRCU: readers count themselves in one of two slots chosen by the epoch parity;
//! a remover (serialised by the model's mutation lock) first clears the `active` bits,
//! then flips the epoch and waits for the slot it flipped away from to drain. Readers that
//! enter after the flip use the other slot and are guaranteed to see the cleared bits, so a
//! stream of new readers cannot starve the remover. Single vCPU today; correct for many.

use core::sync::atomic::{AtomicUsize, Ordering};

/// Reader registry and epoch.
#[derive(Debug, Default)]
pub struct GracePeriod {
    epoch: AtomicUsize,
    readers: [AtomicUsize; 2],
}

/// Proof of being counted as a reader; dropping it leaves the read side.
#[derive(Debug)]
pub struct ReadToken<'a> {
    grace: &'a GracePeriod,
    slot: usize,
}

impl GracePeriod {
    /// No readers, epoch 0.
    pub const fn new() -> GracePeriod {
        GracePeriod {
            epoch: AtomicUsize::new(0),
            readers: [AtomicUsize::new(0), AtomicUsize::new(0)],
        }
    }

    /// Enter the read side.
    pub fn read(&self) -> ReadToken<'_> {
        loop {
            // SeqCst (all three): these form a Dekker pattern with `synchronize`: either the
            // remover's scan sees our count, or our later loads of `active` follow the
            // remover's flip (which follows its clearing of `active`).
            let epoch = self.epoch.load(Ordering::SeqCst);
            let slot = epoch & 1;
            self.readers[slot].fetch_add(1, Ordering::SeqCst);
            if self.epoch.load(Ordering::SeqCst) == epoch {
                return ReadToken { grace: self, slot };
            }
            // The epoch moved between choosing and counting: a remover may already have
            // scanned this slot. Retry in the current one.
            // Release pairs with the remover's SeqCst scan of this slot.
            self.readers[slot].fetch_sub(1, Ordering::Release);
        }
    }

    /// Wait until every reader that entered before this call has left. Call with the
    /// mutation lock held, after clearing the `active` bits of what is being removed.
    pub fn synchronize(&self) {
        // SeqCst: the flip is ordered after the caller's clearing of `active` and before
        // the scan; readers pair with it in `read`.
        let old = self.epoch.fetch_add(1, Ordering::SeqCst);
        // SeqCst scan pairs with the readers' SeqCst increment and Release decrement: once
        // it reads zero, every read-side section counted in this slot has ended.
        while self.readers[old & 1].load(Ordering::SeqCst) != 0 {
            core::hint::spin_loop();
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
