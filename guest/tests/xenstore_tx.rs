//! Transactions against the simulated xenstored: isolation, commit, conflicts and the
//! bounded EAGAIN retry of `XenstoreClient::transaction`.

mod common;

use std::cell::Cell;

use guest::xen::xenstore::{XenstoreClient, XsError, XsOps, DEFAULT_TX_ATTEMPTS};
use xen_bindings::abi::xs_wire::XsdSockmsgType;
use xen_bindings::sim::SimXen;
use xen_bindings::Errno;

/// We are domain 2.
fn setup() -> (SimXen, XenstoreClient<SimXen>) {
    common::xs_domain(2)
}

fn count(sim: &SimXen, t: XsdSockmsgType) -> usize {
    sim.xs_requests()
        .iter()
        .filter(|r| r.type_ == t.as_u32())
        .count()
}

#[test]
fn changes_are_invisible_until_commit() {
    let (sim, mut c) = setup();
    let tx = c.transaction_start().unwrap();
    {
        let mut t = c.in_transaction(tx);
        t.write("data/a", b"1").unwrap();
        t.write("data/b/c", b"2").unwrap();
        assert_eq!(
            t.read("data/a").unwrap(),
            b"1",
            "the transaction sees its writes"
        );
    }
    assert_eq!(sim.xs_read("data/a"), Err(Errno::ENOENT));
    assert_eq!(c.read("data/a"), Err(XsError::Xs(Errno::ENOENT)));
    c.transaction_end(tx, true).unwrap();
    assert_eq!(sim.xs_read("data/a").unwrap(), b"1");
    assert_eq!(sim.xs_read("data/b/c").unwrap(), b"2");
    let reqs = sim.xs_requests();
    assert!(reqs
        .iter()
        .filter(|r| r.type_ == XsdSockmsgType::Write.as_u32())
        .all(|r| r.tx_id == tx.0));
}

#[test]
fn abort_discards() {
    let (sim, mut c) = setup();
    let tx = c.transaction_start().unwrap();
    c.in_transaction(tx).write("data/a", b"1").unwrap();
    c.transaction_end(tx, false).unwrap();
    assert_eq!(sim.xs_read("data/a"), Err(Errno::ENOENT));
    assert_eq!(
        c.transaction_end(tx, true),
        Err(XsError::Xs(Errno::ENOENT)),
        "the id is gone"
    );
    assert!(sim.lock().xenstored.open_transactions().is_empty());
}

#[test]
fn closure_helper_commits_and_returns_its_value() {
    let (sim, mut c) = setup();
    sim.xs_write("data/counter", "41").unwrap();
    let v = c
        .transaction(|t| {
            let n: u32 = t.read_string("data/counter")?.parse().unwrap();
            t.write("data/counter", (n + 1).to_string().as_bytes())?;
            Ok(n + 1)
        })
        .unwrap();
    assert_eq!(v, 42);
    assert_eq!(sim.xs_read("data/counter").unwrap(), b"42");
}

#[test]
fn a_real_conflict_is_retried_and_the_retry_sees_the_new_value() {
    let (sim, mut c) = setup();
    sim.xs_write("data/counter", "1").unwrap();
    let attempts = Cell::new(0);
    let toolstack = sim.clone();
    let v = c
        .transaction(|t| {
            attempts.set(attempts.get() + 1);
            let n: u32 = t.read_string("data/counter")?.parse().unwrap();
            if attempts.get() == 1 {
                // Someone else changes what we read before we commit.
                toolstack.xs_write("data/counter", "10").unwrap();
            }
            t.write("data/counter", (n * 2).to_string().as_bytes())?;
            Ok(n * 2)
        })
        .unwrap();
    assert_eq!(attempts.get(), 2);
    assert_eq!(v, 20);
    assert_eq!(sim.xs_read("data/counter").unwrap(), b"20");
}

#[test]
fn unrelated_changes_do_not_conflict() {
    let (sim, mut c) = setup();
    let toolstack = sim.clone();
    let attempts = Cell::new(0);
    c.transaction(|t| {
        attempts.set(attempts.get() + 1);
        t.write("data/mine", b"x")?;
        toolstack.xs_write("memory/target", "1").unwrap();
        Ok(())
    })
    .unwrap();
    assert_eq!(attempts.get(), 1);
}

#[test]
fn forced_eagain_below_the_bound_is_retried() {
    let (sim, mut c) = setup();
    let n = DEFAULT_TX_ATTEMPTS - 1;
    sim.xs_faults(|f| f.commit_eagain = n);
    c.transaction(|t| t.write("data/x", b"v")).unwrap();
    assert_eq!(sim.xs_read("data/x").unwrap(), b"v");
    assert_eq!(
        count(&sim, XsdSockmsgType::TransactionStart),
        n as usize + 1
    );
    assert_eq!(count(&sim, XsdSockmsgType::TransactionEnd), n as usize + 1);
}

#[test]
fn eagain_beyond_the_bound_is_an_error_and_nothing_is_applied() {
    let (sim, mut c) = setup();
    c.set_transaction_attempts(3);
    sim.xs_faults(|f| f.commit_eagain = 100);
    assert_eq!(
        c.transaction(|t| t.write("data/x", b"v")),
        Err(XsError::TransactionConflict { attempts: 3 })
    );
    assert_eq!(count(&sim, XsdSockmsgType::TransactionStart), 3);
    assert_eq!(sim.xs_read("data/x"), Err(Errno::ENOENT));
    assert!(sim.lock().xenstored.open_transactions().is_empty());
}

#[test]
fn a_failing_closure_aborts_without_retry() {
    let (sim, mut c) = setup();
    let r: Result<(), _> = c.transaction(|t| {
        t.write("data/x", b"v")?;
        t.read("data/missing")?;
        Ok(())
    });
    assert_eq!(r, Err(XsError::Xs(Errno::ENOENT)));
    assert_eq!(count(&sim, XsdSockmsgType::TransactionStart), 1);
    let ends: Vec<_> = sim
        .xs_requests()
        .into_iter()
        .filter(|r| r.type_ == XsdSockmsgType::TransactionEnd.as_u32())
        .collect();
    assert_eq!(ends.len(), 1);
    assert_eq!(ends[0].payload, b"F\0", "aborted, not committed");
    assert_eq!(sim.xs_read("data/x"), Err(Errno::ENOENT));
}

#[test]
fn eagain_inside_the_closure_retries_too() {
    let (sim, mut c) = setup();
    let attempts = Cell::new(0);
    c.transaction(|t| {
        attempts.set(attempts.get() + 1);
        if attempts.get() < 3 {
            return Err(XsError::Xs(Errno::EAGAIN));
        }
        t.write("data/x", b"v")
    })
    .unwrap();
    assert_eq!(attempts.get(), 3);
    assert_eq!(sim.xs_read("data/x").unwrap(), b"v");
}

#[test]
fn watches_fire_at_commit_not_before() {
    let (sim, mut c) = setup();
    c.watch("data", "d").unwrap();
    c.take_watch_event().unwrap();
    let tx = c.transaction_start().unwrap();
    c.in_transaction(tx).write("data/t", b"1").unwrap();
    assert_eq!(c.take_watch_event().unwrap(), None);
    c.transaction_end(tx, true).unwrap();
    let e = c.take_watch_event().unwrap().unwrap();
    assert_eq!(e.path, "data/t");
    assert_eq!(sim.xs_read("data/t").unwrap(), b"1");
}

#[test]
fn too_many_open_transactions_is_an_error() {
    let (_sim, mut c) = setup();
    let mut open = Vec::new();
    loop {
        match c.transaction_start() {
            Ok(t) => open.push(t),
            Err(e) => {
                assert_eq!(e, XsError::Xs(Errno::ENOSPC));
                break;
            }
        }
        assert!(open.len() <= 64, "xenstored must enforce a quota");
    }
    for t in open {
        c.transaction_end(t, false).unwrap();
    }
    c.transaction_start().unwrap();
}
