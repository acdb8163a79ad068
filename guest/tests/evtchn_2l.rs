//! The upcall handler's and idle wait's event channel logic (`guest::xen::evtchn`)
//! against Xen's side of the 2-level ABI (`xen_bindings::sim::evtchn_2l`): selector and
//! mask edge cases, several vCPUs, and a property test that no event is lost or invented.

use std::collections::BTreeSet;

use guest::xen::evtchn::{self, VcpuWords, Words};
use proptest::prelude::*;
use xen_bindings::sim::evtchn_2l::TwoLevel;
use xen_bindings::traits::Port;

const TIMER: usize = 1;
const IPI: usize = 2;

fn words(x: &TwoLevel) -> Words<'_> {
    Words {
        pending: &x.pending,
        mask: &x.mask,
    }
}

fn vcpu(x: &TwoLevel, v: usize) -> VcpuWords<'_> {
    VcpuWords {
        upcall_pending: &x.vcpus[v].upcall_pending,
        pending_sel: &x.vcpus[v].pending_sel,
    }
}

/// vCPU `v`'s own ports: timer and IPI (what the kernel binds per vCPU).
fn own(v: usize) -> [(Port, usize); 2] {
    [(10 + 2 * v as u32, TIMER), (11 + 2 * v as u32, IPI)]
}

fn upcall(x: &TwoLevel, v: usize) -> usize {
    evtchn::upcall(vcpu(x, v), words(x), &own(v))
}

#[test]
fn the_timer_wakes_its_vcpu_and_is_consumed() {
    let x = TwoLevel::new(1);
    assert!(x.raise(10, 0), "an idle unmasked port injects an upcall");
    assert_eq!(upcall(&x, 0), TIMER);
    assert!(!x.is_pending(10), "the handler consumed its own port");
    assert_eq!(
        x.vcpus[0]
            .upcall_pending
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    assert_eq!(
        x.vcpus[0]
            .pending_sel
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    assert!(
        x.raise(10, 0),
        "consumed: the next timer raises a new upcall"
    );
}

#[test]
fn another_port_in_the_same_word_is_left_for_thread_context() {
    let x = TwoLevel::new(1);
    // Xenstore's port shares word 0 with the timer.
    assert!(x.raise(3, 0));
    assert_eq!(upcall(&x, 0), 0, "not ours: no wake reason");
    assert!(x.is_pending(3), "the upcall must not consume other ports");
    // The selector is gone, yet thread context still finds the port by its pending bit.
    assert!(evtchn::unmask_and_check(words(&x), &[3]));
    assert!(evtchn::take(words(&x), 3));
    assert!(!evtchn::unmask_and_check(words(&x), &[3]));
}

#[test]
fn an_event_after_the_selector_was_taken_raises_a_new_upcall() {
    let x = TwoLevel::new(1);
    assert!(x.raise(3, 0));
    assert_eq!(upcall(&x, 0), 0);
    // Port 3 is still pending (thread context has not served it), the selector is clear:
    // the timer in the same word must still get through.
    assert!(
        x.raise(10, 0),
        "the selector bit was consumed, so Xen flags it again"
    );
    assert_eq!(upcall(&x, 0), TIMER);
}

#[test]
fn a_masked_port_raises_no_upcall_but_is_found_before_halting() {
    let x = TwoLevel::new(1);
    x.set_mask(70);
    assert!(!x.raise(70, 0), "masked: pending, but no upcall");
    assert_eq!(
        x.vcpus[0]
            .pending_sel
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    // The idle wait unmasks, then checks: the event is not slept through.
    assert!(evtchn::unmask_and_check(words(&x), &[70]));
    assert!(evtchn::take(words(&x), 70));
}

#[test]
fn unmask_by_hypercall_delivers_a_pending_port() {
    let x = TwoLevel::new(1);
    x.set_mask(10);
    assert!(!x.raise(10, 0));
    assert!(
        x.unmask_hypercall(10, 0),
        "EVTCHNOP_unmask of a pending port injects"
    );
    assert_eq!(upcall(&x, 0), TIMER);
}

#[test]
fn a_spurious_selector_bit_wakes_nobody() {
    let x = TwoLevel::new(1);
    assert!(x.raise(10, 0));
    // Thread context raced the upcall and served the port first.
    assert!(evtchn::take(words(&x), 10));
    assert_eq!(upcall(&x, 0), 0);
}

#[test]
fn own_ports_in_high_words_and_port_0_is_never_consumed() {
    let x = TwoLevel::new(1);
    let own = [(4000, TIMER), (0, IPI)];
    assert!(x.raise(4000, 0));
    assert_eq!(evtchn::upcall(vcpu(&x, 0), words(&x), &own), TIMER);
    assert!(!evtchn::take(words(&x), 0));
    assert!(!evtchn::unmask_and_check(words(&x), &[0, 4096, u32::MAX]));
}

#[test]
fn each_vcpu_takes_only_its_own_ports() {
    let x = TwoLevel::new(2);
    // vCPU 1's IPI (13) and vCPU 0's timer (10) share word 0, but their selectors differ.
    assert!(x.raise(13, 1));
    assert!(x.raise(10, 0));
    assert_eq!(upcall(&x, 0), TIMER);
    assert!(x.is_pending(13), "vCPU 0 must not take vCPU 1's IPI");
    assert_eq!(upcall(&x, 1), IPI);
    assert!(!x.is_pending(13));
}

#[test]
fn coalesced_events_give_one_wake_and_one_upcall() {
    let x = TwoLevel::new(1);
    assert!(x.raise(10, 0));
    assert!(!x.raise(10, 0), "already pending");
    assert!(
        !x.raise(11, 0),
        "same word already flagged, upcall already pending"
    );
    assert_eq!(upcall(&x, 0), TIMER | IPI);
    assert_eq!(
        x.vcpus[0].upcalls.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

#[derive(Clone, Debug)]
enum Op {
    /// Xen raises one of the ports (own ports of either vCPU, or others).
    Raise(u8),
    /// The guest masks an "other" port (own ports stay unmasked in the kernel).
    Mask(u8),
    /// vCPU n takes its pending upcall (interrupts were off until now).
    Deliver(u8),
    /// Thread context serves the other ports it waits on.
    Serve,
}

const OTHERS: [Port; 4] = [3, 64, 65, 700];

fn port_of(i: u8) -> (Port, usize) {
    // 0..4: own ports of vCPU 0 and 1 (bound to their vCPU); 4..8: others (on vCPU 0).
    match i % 8 {
        0 => (10, 0),
        1 => (11, 0),
        2 => (12, 1),
        3 => (13, 1),
        n => (OTHERS[n as usize - 4], 0),
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..8).prop_map(Op::Raise),
        1 => (4u8..8).prop_map(Op::Mask),
        3 => (0u8..2).prop_map(Op::Deliver),
        2 => Just(Op::Serve),
    ]
}

proptest! {
    /// Whatever the interleaving: every raise of an own port is reported by exactly one
    /// upcall of its vCPU (coalescing repeats), nothing is reported that was not raised,
    /// and every other port raised is found by thread context.
    #[test]
    fn no_event_is_lost_or_invented(ops in proptest::collection::vec(op(), 1..200)) {
        let x = TwoLevel::new(2);
        let mut owed_upcall = [false; 2];
        let mut own_outstanding: BTreeSet<Port> = BTreeSet::new();
        let mut others_outstanding: BTreeSet<Port> = BTreeSet::new();
        let deliver = |v: usize, own_outstanding: &mut BTreeSet<Port>| -> Result<(), TestCaseError> {
            let r = upcall(&x, v);
            for (port, reason) in own(v) {
                let was = own_outstanding.remove(&port);
                prop_assert_eq!(r & reason != 0, was, "port {} on vCPU {}", port, v);
            }
            Ok(())
        };
        for op in ops {
            match op {
                Op::Raise(i) => {
                    let (p, v) = port_of(i);
                    if x.raise(p, v) {
                        owed_upcall[v] = true;
                    }
                    if i % 8 < 4 { own_outstanding.insert(p); } else { others_outstanding.insert(p); }
                }
                Op::Mask(i) => x.set_mask(port_of(i).0),
                Op::Deliver(v) => {
                    let v = v as usize;
                    if std::mem::take(&mut owed_upcall[v]) {
                        deliver(v, &mut own_outstanding)?;
                    }
                }
                Op::Serve => {
                    let any = evtchn::unmask_and_check(words(&x), &OTHERS);
                    prop_assert_eq!(any, !others_outstanding.is_empty());
                    for p in OTHERS {
                        prop_assert_eq!(evtchn::take(words(&x), p), others_outstanding.remove(&p));
                    }
                }
            }
        }
        // Settle: deliver what is owed; every own event must have been reported.
        for (v, owed) in owed_upcall.into_iter().enumerate() {
            if owed {
                deliver(v, &mut own_outstanding)?;
            }
        }
        prop_assert!(own_outstanding.is_empty(), "own events never reported: {:?}", own_outstanding);
        prop_assert_eq!(evtchn::unmask_and_check(words(&x), &OTHERS), !others_outstanding.is_empty());
    }
}
