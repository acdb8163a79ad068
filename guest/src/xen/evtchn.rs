//! The guest side of the 2-level event channel ABI, on atomic views of shared_info's
//! words (host-testable; the kernel's upcall handler and idle wait are thin callers).
//!
//! Xen's side (`xen/common/event_2l.c`): raising a port sets its pending bit; only if the
//! port is unmasked and its selector bit in the target vCPU's `evtchn_pending_sel` was
//! clear does it set that bit and, on `evtchn_upcall_pending`'s 0→1 edge, inject the
//! upcall vector. So an upcall must clear `evtchn_upcall_pending` before it swaps the
//! selector (a later event then raises a new upcall), and a consumer must look at pending
//! bits, not at the selector: the selector is consumed by whichever upcall ran first.
//!
//! Who consumes what: the upcall consumes only the vCPU's own ports (its `VIRQ_TIMER`
//! and IPI) and records them as wake reasons; every other port's pending bit stays for
//! thread context, which unmasks and checks the ports it waits on before it halts
//! ([`unmask_and_check`]) and takes them when it serves them ([`take`]).

use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use xen_bindings::abi::shared_info::NR_EVENT_CHANNELS_2L;
use xen_bindings::traits::Port;

/// shared_info's `evtchn_pending` and `evtchn_mask` arrays (64 words each).
#[derive(Clone, Copy, Debug)]
pub struct Words<'a> {
    pub pending: &'a [AtomicU64],
    pub mask: &'a [AtomicU64],
}

/// One vCPU's `evtchn_upcall_pending` and `evtchn_pending_sel`.
#[derive(Clone, Copy, Debug)]
pub struct VcpuWords<'a> {
    pub upcall_pending: &'a AtomicU8,
    pub pending_sel: &'a AtomicU64,
}

fn valid(port: Port) -> bool {
    port != 0 && port < NR_EVENT_CHANNELS_2L
}

fn bit(port: Port) -> (usize, u64) {
    ((port / 64) as usize, 1u64 << (port % 64))
}

/// The upcall's work: acknowledge it, take the selector, and consume those of `own`
/// (`(port, reason bit)`) that are pending. Returns the reasons found (OR of bits).
/// Other ports' pending bits are left alone. No locks, no allocation: interrupt context.
pub fn upcall(vcpu: VcpuWords<'_>, words: Words<'_>, own: &[(Port, usize)]) -> usize {
    // SeqCst (both): the clear is ordered before the selector swap, as Xen sets the
    // selector before the flag; an event after the clear raises a new upcall.
    vcpu.upcall_pending.store(0, Ordering::SeqCst);
    let sel = vcpu.pending_sel.swap(0, Ordering::SeqCst);
    let mut reasons = 0;
    for &(port, reason) in own {
        if !valid(port) {
            continue;
        }
        let (w, b) = bit(port);
        if sel & (1 << w) == 0 {
            continue;
        }
        // AcqRel: pairs with Xen's locked set of the bit; clearing it lets the next event
        // on the port raise an upcall again.
        if words.pending[w].fetch_and(!b, Ordering::AcqRel) & b != 0 {
            reasons |= reason;
        }
    }
    reasons
}

/// Unmasks each of `ports` and tells whether any is pending, leaving the pending bits
/// for their consumer. Called with interrupts off before halting: an event that lands
/// after the unmask raises an upcall (which ends the halt), one that landed before is
/// seen here, so none is slept through.
pub fn unmask_and_check(words: Words<'_>, ports: &[Port]) -> bool {
    let mut any = false;
    for &p in ports.iter().filter(|&&p| valid(p)) {
        let (w, b) = bit(p);
        // SeqCst (both): the unmask is ordered before the pending check; a masked event
        // raised in between (no upcall) is then still seen by the load.
        words.mask[w].fetch_and(!b, Ordering::SeqCst);
        any |= words.pending[w].load(Ordering::SeqCst) & b != 0;
    }
    any
}

/// Consumes `port`'s pending bit; whether it was set.
pub fn take(words: Words<'_>, port: Port) -> bool {
    if !valid(port) {
        return false;
    }
    let (w, b) = bit(port);
    // AcqRel: as in `upcall`.
    words.pending[w].fetch_and(!b, Ordering::AcqRel) & b != 0
}

/// Whether `port` is pending (not consumed).
pub fn is_pending(words: Words<'_>, port: Port) -> bool {
    if !valid(port) {
        return false;
    }
    let (w, b) = bit(port);
    // Acquire: pairs with Xen's set of the bit.
    words.pending[w].load(Ordering::Acquire) & b != 0
}
