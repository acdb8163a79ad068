//! Xen's side of the 2-level event channel ABI over shared memory words, as
//! `xen/common/event_2l.c` does it: for host tests of a guest's upcall handler and idle
//! wait, which see only these words and the upcall vector.
//!
//! The words are atomics, as in shared_info, so tests can also run the "Xen" and "guest"
//! sides on different threads.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use crate::abi::shared_info::NR_EVENT_CHANNELS_2L;
use crate::traits::Port;

/// One vCPU's words in its `vcpu_info`, and how many upcalls Xen injected into it.
#[derive(Debug, Default)]
pub struct Vcpu {
    pub upcall_pending: AtomicU8,
    pub pending_sel: AtomicU64,
    pub upcalls: AtomicU64,
}

/// The shared words of one domain with `n` vCPUs.
#[derive(Debug)]
pub struct TwoLevel {
    pub pending: [AtomicU64; 64],
    pub mask: [AtomicU64; 64],
    pub vcpus: Vec<Vcpu>,
}

impl TwoLevel {
    /// Every port unmasked and idle (as a guest leaves them after binding).
    pub fn new(n: usize) -> Self {
        TwoLevel {
            pending: core::array::from_fn(|_| AtomicU64::new(0)),
            mask: core::array::from_fn(|_| AtomicU64::new(0)),
            vcpus: (0..n).map(|_| Vcpu::default()).collect(),
        }
    }

    fn bit(port: Port) -> (usize, u64) {
        assert!(
            port < NR_EVENT_CHANNELS_2L,
            "port {port} beyond the 2-level ABI"
        );
        ((port / 64) as usize, 1u64 << (port % 64))
    }

    /// Xen raises `port`, bound to `vcpu` (`evtchn_2l_set_pending`). Returns whether an
    /// upcall was injected (the caller then runs the guest's handler on that vCPU).
    pub fn raise(&self, port: Port, vcpu: usize) -> bool {
        let (w, b) = Self::bit(port);
        if self.pending[w].fetch_or(b, Ordering::SeqCst) & b != 0 {
            return false; // already pending: nothing new to deliver
        }
        if self.mask[w].load(Ordering::SeqCst) & b != 0 {
            return false;
        }
        self.mark(w, vcpu)
    }

    /// `EVTCHNOP_unmask` (`evtchn_2l_unmask`): clears the mask; a pending port then
    /// reaches the vCPU as if raised now.
    pub fn unmask_hypercall(&self, port: Port, vcpu: usize) -> bool {
        let (w, b) = Self::bit(port);
        if self.mask[w].fetch_and(!b, Ordering::SeqCst) & b == 0 {
            return false;
        }
        if self.pending[w].load(Ordering::SeqCst) & b == 0 {
            return false;
        }
        self.mark(w, vcpu)
    }

    /// Masks `port` (what a guest does with a locked bit set).
    pub fn set_mask(&self, port: Port) {
        let (w, b) = Self::bit(port);
        self.mask[w].fetch_or(b, Ordering::SeqCst);
    }

    fn mark(&self, word: usize, vcpu: usize) -> bool {
        let v = &self.vcpus[vcpu];
        if v.pending_sel.fetch_or(1 << word, Ordering::SeqCst) & (1 << word) != 0 {
            return false; // the vCPU already has this word flagged
        }
        // vcpu_mark_events_pending: the vector only on the flag's 0 -> 1 edge.
        if v.upcall_pending.swap(1, Ordering::SeqCst) != 0 {
            return false;
        }
        v.upcalls.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Whether `port` is pending.
    pub fn is_pending(&self, port: Port) -> bool {
        let (w, b) = Self::bit(port);
        self.pending[w].load(Ordering::SeqCst) & b != 0
    }
}
