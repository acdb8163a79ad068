//! Watches against the simulated xenstored: initial events, changes from the toolstack
//! and from the guest, events arriving while a reply is awaited, unwatch, timeouts.

mod common;

use guest::xen::xenstore::{WatchEvent, XenstoreClient, XsError, XsOps, XsPerm, XsPermKind};
use xen_bindings::sim::SimXen;
use xen_bindings::traits::Clock;
use xen_bindings::Errno;

/// We are domain 4.
fn setup() -> (SimXen, XenstoreClient<SimXen>) {
    common::xs_domain(4)
}

fn ev(path: &str, token: &str) -> WatchEvent {
    WatchEvent {
        path: path.into(),
        token: token.into(),
    }
}

const MS: u64 = 1_000_000;

#[test]
fn watch_fires_once_at_registration() {
    let (_sim, mut c) = setup();
    c.watch("control/shutdown", "sd").unwrap();
    assert_eq!(
        c.wait_watch_event(MS).unwrap(),
        Some(ev("control/shutdown", "sd"))
    );
    assert_eq!(c.wait_watch_event(MS).unwrap(), None);
}

#[test]
fn toolstack_writes_fire_relative_and_absolute_watches() {
    let (sim, mut c) = setup();
    c.watch("control/shutdown", "rel").unwrap();
    c.watch("/local/domain/4/control", "abs").unwrap();
    assert_eq!(
        c.take_watch_event().unwrap(),
        Some(ev("control/shutdown", "rel"))
    );
    assert_eq!(
        c.take_watch_event().unwrap(),
        Some(ev("/local/domain/4/control", "abs"))
    );
    assert_eq!(c.take_watch_event().unwrap(), None);

    sim.xs_write("control/shutdown", "poweroff").unwrap();
    let mut got = vec![
        c.wait_watch_event(MS).unwrap().unwrap(),
        c.wait_watch_event(MS).unwrap().unwrap(),
    ];
    got.sort_by(|a, b| a.token.cmp(&b.token));
    assert_eq!(
        got,
        [
            ev("/local/domain/4/control/shutdown", "abs"),
            ev("control/shutdown", "rel")
        ]
    );
    assert_eq!(c.read_string("control/shutdown").unwrap(), "poweroff");
    // A sibling only fires the parent watch.
    sim.xs_write("control/other", "1").unwrap();
    assert_eq!(
        c.wait_watch_event(MS).unwrap(),
        Some(ev("/local/domain/4/control/other", "abs"))
    );
    assert_eq!(c.wait_watch_event(MS).unwrap(), None);
}

#[test]
fn removing_a_parent_fires_watches_below_it() {
    let (sim, mut c) = setup();
    c.write("data/a/b/c", b"1").unwrap();
    c.watch("data/a/b/c", "deep").unwrap();
    assert_eq!(c.take_watch_event().unwrap().unwrap().token, "deep");
    sim.xs_rm("data/a").unwrap();
    assert_eq!(
        c.wait_watch_event(MS).unwrap(),
        Some(ev("data/a/b/c", "deep"))
    );
}

/// Every event queued for us now.
fn drain(c: &mut XenstoreClient<SimXen>) -> Vec<WatchEvent> {
    let mut got = Vec::new();
    while let Some(e) = c.take_watch_event().unwrap() {
        got.push(e);
    }
    got
}

#[test]
fn removing_a_subtree_fires_once_per_removed_node_and_once_above() {
    // xenstored's `delnode_sub`: the root of the removal fires watches on it and its
    // ancestors, each node below only watches on exactly that node.
    let (_sim, mut c) = setup();
    c.write("data/a/b/c", b"1").unwrap();
    c.write("data/a/d", b"2").unwrap();
    for (path, token) in [
        ("data", "above"),
        ("data/a", "root"),
        ("data/a/b", "dir"),
        ("data/a/b/c", "leaf"),
        ("data/a/nope", "missing"),
    ] {
        c.watch(path, token).unwrap();
    }
    drain(&mut c);
    c.rm("data/a").unwrap();
    let mut got = drain(&mut c);
    got.sort_by(|a, b| a.token.cmp(&b.token));
    assert_eq!(
        got,
        [
            ev("data/a", "above"),
            ev("data/a/b", "dir"),
            ev("data/a/b/c", "leaf"),
            ev("data/a", "root"),
        ],
        "nothing for a watched node that did not exist"
    );
}

#[test]
fn removing_another_domain_s_tree_fires_what_we_may_read() {
    // The toolstack removes dead domain 7's tree. Each removed node fires if we could
    // read it or its parent (xenstored's `watch_permitted`), judged before it goes.
    let (sim, mut c) = setup();
    let p = |k, d| XsPerm::new(k, d);
    let home = "/local/domain/7";
    for k in ["shared/state", "half/state", "secret/state"] {
        sim.xs_write(&format!("{home}/data/{k}"), "x").unwrap();
    }
    sim.xs_set_perms(home, vec![p(XsPermKind::None, 0), p(XsPermKind::Read, 7)])
        .unwrap();
    let private = vec![p(XsPermKind::None, 7)];
    let shared = vec![p(XsPermKind::None, 7), p(XsPermKind::Read, 4)];
    for (node, perms) in [
        ("data", &private),
        ("data/shared", &shared),
        ("data/shared/state", &shared),
        // Readable directory, unreadable node: the parent lets the event through.
        ("data/half", &shared),
        ("data/half/state", &private),
        ("data/secret", &private),
        ("data/secret/state", &private),
    ] {
        sim.xs_set_perms(&format!("{home}/{node}"), perms.clone())
            .unwrap();
    }
    for (node, token) in [
        ("data/shared/state", "shared"),
        ("data/half/state", "half"),
        ("data/secret/state", "secret"),
        ("data/shared/none", "missing"),
        ("", "home"),
    ] {
        let path = format!("{home}/{node}");
        c.watch(path.trim_end_matches('/'), token).unwrap();
    }
    c.watch("/local/domain", "above").unwrap();
    drain(&mut c);

    sim.xs_rm(home).unwrap();
    let mut got = drain(&mut c);
    got.sort_by(|a, b| a.token.cmp(&b.token));
    assert_eq!(
        got,
        [
            ev(&format!("{home}/data/half/state"), "half"),
            ev(&format!("{home}/data/shared/state"), "shared"),
        ],
        "the home and /local/domain are dom0's: no event on them or above"
    );
}

#[test]
fn a_permission_change_fires_for_who_could_read_before_or_after() {
    let (sim, mut c) = setup();
    let p = |k, d| XsPerm::new(k, d);
    let node = "/local/domain/7/data/x";
    sim.xs_write(node, "v").unwrap();
    sim.xs_set_perms("/local/domain/7/data", vec![p(XsPermKind::None, 7)])
        .unwrap();
    sim.xs_set_perms(node, vec![p(XsPermKind::None, 7)])
        .unwrap();
    c.watch(node, "t").unwrap();
    drain(&mut c);
    // Unreadable to unreadable: nothing.
    sim.xs_set_perms(node, vec![p(XsPermKind::Write, 7)])
        .unwrap();
    sim.xs_write(node, "w").unwrap();
    assert_eq!(drain(&mut c), []);
    // Shared: fires (new permissions).
    sim.xs_set_perms(node, vec![p(XsPermKind::None, 7), p(XsPermKind::Read, 4)])
        .unwrap();
    assert_eq!(drain(&mut c), [ev(node, "t")]);
    // Unshared: fires too (old permissions), then nothing.
    sim.xs_set_perms(node, vec![p(XsPermKind::None, 7)])
        .unwrap();
    assert_eq!(drain(&mut c), [ev(node, "t")]);
    sim.xs_write(node, "z").unwrap();
    sim.xs_rm(node).unwrap();
    assert_eq!(drain(&mut c), []);
}

#[test]
fn a_removal_in_a_transaction_fires_at_commit_like_outside() {
    let (_sim, mut c) = setup();
    c.write("data/a/b", b"1").unwrap();
    c.watch("data", "above").unwrap();
    c.watch("data/a/b", "leaf").unwrap();
    drain(&mut c);
    let tx = c.transaction_start().unwrap();
    c.in_transaction(tx).rm("data/a").unwrap();
    assert_eq!(drain(&mut c), []);
    c.transaction_end(tx, true).unwrap();
    let mut got = drain(&mut c);
    got.sort_by(|a, b| a.token.cmp(&b.token));
    assert_eq!(got, [ev("data/a", "above"), ev("data/a/b", "leaf")]);
}

#[test]
fn events_arriving_while_a_reply_is_awaited_are_queued() {
    let (sim, mut c) = setup();
    c.watch("data", "d").unwrap();
    assert_eq!(c.take_watch_event().unwrap().unwrap().token, "d");
    // xenstored queues the event of our own write before the write's reply.
    c.write("data/x", b"1").unwrap();
    assert_eq!(c.pending_watch_events(), 1);
    // The toolstack writes twice while xenstored sits on our read for 5 ms.
    sim.xs_faults(|f| f.stalled = true);
    let t0 = sim.now_ns();
    sim.at(t0 + 2 * MS, |st| {
        st.xs_write("data/y", b"2").unwrap();
        st.xs_write("data/z", b"3").unwrap();
    });
    sim.at(t0 + 5 * MS, |st| {
        st.xenstored.faults.stalled = false;
        st.run_backends();
    });
    // The stalled daemon releases both events together with the reply, ahead of it: the
    // client must queue them while it looks for the reply.
    assert_eq!(c.read("data/x").unwrap(), b"1");
    assert!(sim.now_ns() >= t0 + 5 * MS);
    assert_eq!(c.take_watch_event().unwrap(), Some(ev("data/x", "d")));
    assert_eq!(c.take_watch_event().unwrap(), Some(ev("data/y", "d")));
    assert_eq!(c.take_watch_event().unwrap(), Some(ev("data/z", "d")));
    assert_eq!(c.take_watch_event().unwrap(), None);
}

#[test]
fn an_event_delivered_mid_request_is_not_lost() {
    let (sim, mut c) = setup();
    c.watch("control/shutdown", "sd").unwrap();
    c.take_watch_event().unwrap();
    // The reply to our read is dropped by xenstored, so the client waits; meanwhile the
    // toolstack requests a shutdown. The read times out but the event survives.
    c.set_timeout_ns(10 * MS);
    sim.xs_faults(|f| {
        f.reply_faults
            .push_back(xen_bindings::sim::ReplyFault::Drop)
    });
    let t0 = sim.now_ns();
    sim.at(t0 + MS, |st| {
        st.xs_write("control/shutdown", b"reboot").unwrap()
    });
    assert_eq!(c.read("domid"), Err(XsError::Timeout));
    assert_eq!(
        c.take_watch_event().unwrap(),
        Some(ev("control/shutdown", "sd"))
    );
}

#[test]
fn waiting_for_an_event_times_out_on_the_simulated_clock() {
    let (sim, mut c) = setup();
    let t0 = sim.now_ns();
    assert_eq!(c.wait_watch_event(50 * MS).unwrap(), None);
    assert_eq!(sim.now_ns(), t0 + 50 * MS);
    c.watch("memory/target", "mt").unwrap();
    c.take_watch_event().unwrap();
    sim.at(t0 + 80 * MS, |st| {
        st.xs_write("memory/target", b"1024").unwrap()
    });
    assert_eq!(
        c.wait_watch_event(1000 * MS).unwrap(),
        Some(ev("memory/target", "mt"))
    );
    assert_eq!(
        sim.now_ns(),
        t0 + 80 * MS,
        "woke at the event, not the deadline"
    );
}

#[test]
fn unwatch_stops_events_and_drops_queued_ones() {
    let (sim, mut c) = setup();
    c.watch("data", "a").unwrap();
    c.watch("data", "b").unwrap();
    sim.xs_write("data/q", "1").unwrap();
    c.unwatch("data", "a").unwrap();
    let mut left = Vec::new();
    while let Some(e) = c.take_watch_event().unwrap() {
        left.push(e);
    }
    assert!(left.iter().all(|e| e.token == "b"), "{left:?}");
    assert_eq!(left.len(), 2, "initial + data/q for b");
    sim.xs_write("data/q", "2").unwrap();
    assert_eq!(c.wait_watch_event(MS).unwrap(), Some(ev("data/q", "b")));
    assert_eq!(c.wait_watch_event(MS).unwrap(), None);
    assert_eq!(c.unwatch("data", "a"), Err(XsError::Xs(Errno::ENOENT)));
}

#[test]
fn duplicate_watches_and_special_paths() {
    let (_sim, mut c) = setup();
    c.watch("data", "t").unwrap();
    assert_eq!(c.watch("data", "t"), Err(XsError::Xs(Errno::EEXIST)));
    c.watch("@releaseDomain", "rel").unwrap();
    let mut got = Vec::new();
    while let Some(e) = c.take_watch_event().unwrap() {
        got.push(e);
    }
    assert_eq!(got, [ev("data", "t"), ev("@releaseDomain", "rel")]);
}

#[test]
fn event_queue_is_bounded() {
    let (sim, mut c) = setup();
    c.watch("data", "d").unwrap();
    let n = guest::xen::xenstore::MAX_QUEUED_EVENTS + 10;
    for i in 0..n {
        sim.xs_write("data/flood", i.to_string()).unwrap();
        // A request makes the client take everything in the ring.
        c.read("domid").unwrap();
    }
    assert_eq!(
        c.pending_watch_events(),
        guest::xen::xenstore::MAX_QUEUED_EVENTS
    );
    assert_eq!(c.stats().dropped_events, 11);
    // The newest survive.
    let mut last = None;
    while let Some(e) = c.take_watch_event().unwrap() {
        last = Some(e);
    }
    assert_eq!(last, Some(ev("data/flood", "d")));
}
