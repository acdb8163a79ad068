//! The xenstore client against the simulated xenstored: every operation, its errors,
//! relative paths, and a model check of random operation sequences.

mod common;

use std::collections::BTreeMap;

use guest::xen::xenstore::{XenstoreClient, XsError, XsOps, XsPerm, XsPermKind};
use proptest::prelude::*;
use xen_bindings::abi::xs_wire::XsdSockmsgType;
use xen_bindings::sim::{SimConfig, SimXen};
use xen_bindings::Errno;

/// We are domain 5.
fn setup() -> (SimXen, XenstoreClient<SimXen>) {
    common::xs_domain(5)
}

#[test]
fn reads_what_the_toolstack_wrote() {
    let (sim, mut c) = setup();
    assert_eq!(c.read("domid").unwrap(), b"5");
    assert_eq!(
        c.read_string("/local/domain/5/memory/target").unwrap(),
        "262144"
    );
    sim.xs_write("data/k", "v\0with nul").unwrap();
    assert_eq!(c.read("data/k").unwrap(), b"v\0with nul");
}

#[test]
fn write_then_read_relative_and_absolute() {
    let (sim, mut c) = setup();
    c.write("data/a/b", b"hello").unwrap();
    assert_eq!(sim.xs_read("/local/domain/5/data/a/b").unwrap(), b"hello");
    assert_eq!(c.read("/local/domain/5/data/a/b").unwrap(), b"hello");
    // The created parent is owned by the guest and empty.
    assert_eq!(c.read("data/a").unwrap(), b"");
    assert_eq!(
        c.get_perms("data/a").unwrap(),
        vec![XsPerm::new(XsPermKind::None, 5)]
    );
    c.write("data/a/b", b"").unwrap();
    assert_eq!(c.read("data/a/b").unwrap(), b"");
}

#[test]
fn missing_nodes_and_forbidden_writes_are_errno_errors() {
    let (_sim, mut c) = setup();
    assert_eq!(c.read("data/nope"), Err(XsError::Xs(Errno::ENOENT)));
    assert!(c.read("data/nope").unwrap_err().is_enoent());
    assert!(!c.exists("data/nope").unwrap());
    assert!(c.exists("data").unwrap());
    // The guest's home itself is read-only for the guest (libxl's perms).
    assert_eq!(c.write("name", b"x"), Err(XsError::Xs(Errno::EACCES)));
    assert_eq!(c.write("newnode", b"x"), Err(XsError::Xs(Errno::EACCES)));
    // Other domains' nodes are invisible: a missing node under `/local/domain` (dom0's,
    // unreadable to us) is EACCES, like xenstored's `errno_from_parents`.
    assert_eq!(c.read("/local/domain/0"), Err(XsError::Xs(Errno::EACCES)));
    // xenstored rejects bad path syntax.
    assert_eq!(c.read("data//x"), Err(XsError::Xs(Errno::EINVAL)));
    assert_eq!(c.read("data/x/"), Err(XsError::Xs(Errno::EINVAL)));
}

/// Another domain's tree as libxl lays it out (home `n0,r7`, `data` `n7`), with one
/// directory shared with us (`n7,r5`) holding `state`.
fn peer_tree(sim: &SimXen) {
    let p = |k, d| XsPerm::new(k, d);
    sim.xs_write("/local/domain/7/data/shared/state", "up")
        .unwrap();
    sim.xs_set_perms(
        "/local/domain/7",
        vec![p(XsPermKind::None, 0), p(XsPermKind::Read, 7)],
    )
    .unwrap();
    sim.xs_set_perms("/local/domain/7/data", vec![p(XsPermKind::None, 7)])
        .unwrap();
    let shared = vec![p(XsPermKind::None, 7), p(XsPermKind::Read, 5)];
    sim.xs_set_perms("/local/domain/7/data/shared", shared.clone())
        .unwrap();
    sim.xs_set_perms("/local/domain/7/data/shared/state", shared)
        .unwrap();
}

const EACCES: Result<Vec<u8>, XsError> = Err(XsError::Xs(Errno::EACCES));
const ENOENT: Result<Vec<u8>, XsError> = Err(XsError::Xs(Errno::ENOENT));

#[test]
fn a_missing_node_is_enoent_only_below_a_readable_ancestor() {
    // xenstored's `errno_from_parents`: the nearest existing ancestor decides.
    let (sim, mut c) = setup();
    peer_tree(&sim);
    assert_eq!(c.read("/local/domain/7/data/shared/state").unwrap(), b"up");
    // Nearest existing ancestor readable: ENOENT.
    assert_eq!(c.read("/local/domain/7/data/shared/nope"), ENOENT);
    assert_eq!(c.read("/local/domain/7/data/shared/nope/deeper"), ENOENT);
    assert!(!c.exists("/local/domain/7/data/shared/nope").unwrap());
    assert_eq!(c.read("data/nope/deeper"), ENOENT);
    assert_eq!(c.read("nope"), ENOENT, "our home is readable to us");
    // Not readable: EACCES, whether the node exists or not.
    assert_eq!(c.read("/local/domain/7/data"), EACCES);
    assert_eq!(c.read("/local/domain/7/data/nope"), EACCES);
    assert_eq!(c.read("/local/domain/7/data/nope/deeper"), EACCES);
    assert_eq!(
        c.read("/local/domain/9/x"),
        EACCES,
        "/local/domain is dom0's"
    );
    assert_eq!(
        c.exists("/local/domain/7/data/nope"),
        Err(XsError::Xs(Errno::EACCES))
    );
    // Directory and get-perms take the same path.
    assert_eq!(
        c.directory("/local/domain/7/data/shared/nope"),
        Err(XsError::Xs(Errno::ENOENT))
    );
    assert_eq!(
        c.directory("/local/domain/7/data/nope"),
        Err(XsError::Xs(Errno::EACCES))
    );
    assert_eq!(
        c.get_perms("/local/domain/7/data/shared/nope"),
        Err(XsError::Xs(Errno::ENOENT))
    );
    assert_eq!(
        c.get_perms("/local/domain/7/data/nope"),
        Err(XsError::Xs(Errno::EACCES))
    );
    // So do transactions.
    let tx = c.transaction_start().unwrap();
    assert_eq!(
        c.in_transaction(tx).read("/local/domain/7/data/nope"),
        EACCES
    );
    assert_eq!(
        c.in_transaction(tx)
            .read("/local/domain/7/data/shared/nope"),
        ENOENT
    );
    c.transaction_end(tx, false).unwrap();

    // The peer's tree goes: everything below /local/domain/7 is now EACCES.
    sim.xs_rm("/local/domain/7").unwrap();
    assert_eq!(c.read("/local/domain/7/data/shared/state"), EACCES);
    assert_eq!(c.read("/local/domain/7"), EACCES);
    // The toolstack (dom0) still gets ENOENT.
    assert_eq!(
        sim.xs_read("/local/domain/7/data/shared/state"),
        Err(Errno::ENOENT)
    );
}

#[test]
fn writes_removes_and_perm_changes_ask_the_nearest_ancestor_for_write() {
    let (sim, mut c) = setup();
    peer_tree(&sim);
    let mine = [XsPerm::new(XsPermKind::None, 5)];
    // Create below a read-only ancestor: EACCES.
    assert_eq!(
        c.write("/local/domain/7/data/shared/new", b"x"),
        Err(XsError::Xs(Errno::EACCES))
    );
    // Removing a missing node is fine only if we may write the nearest ancestor (and the
    // parent exists).
    c.rm("data/gone").unwrap();
    assert_eq!(
        c.rm("/local/domain/7/data/shared/gone"),
        Err(XsError::Xs(Errno::EACCES))
    );
    assert_eq!(
        c.rm("/local/domain/7/data/shared"),
        Err(XsError::Xs(Errno::EACCES))
    );
    assert_eq!(c.rm("/local/domain/9/x"), Err(XsError::Xs(Errno::EACCES)));
    assert_eq!(c.rm("data/gone/deeper"), Err(XsError::Xs(Errno::ENOENT)));
    // Set-perms of a missing node: ENOENT below a writable ancestor, else EACCES.
    assert_eq!(
        c.set_perms("data/gone", &mine),
        Err(XsError::Xs(Errno::ENOENT))
    );
    assert_eq!(
        c.set_perms("/local/domain/7/data/shared/gone", &mine),
        Err(XsError::Xs(Errno::EACCES))
    );
    assert_eq!(
        sim.xs_read("/local/domain/7/data/shared/state").unwrap(),
        b"up"
    );
}

#[test]
fn bad_arguments_are_refused_before_sending() {
    let (sim, mut c) = setup();
    let before = sim.xs_requests().len();
    assert_eq!(c.read(""), Err(XsError::InvalidArgument("path")));
    assert_eq!(c.write("a\0b", b"v"), Err(XsError::InvalidArgument("path")));
    assert_eq!(
        c.watch("data", "t\0"),
        Err(XsError::InvalidArgument("token"))
    );
    assert_eq!(
        c.write("data/big", &vec![b'x'; 4096]),
        Err(XsError::TooLong { len: 4096 + 9 })
    );
    assert_eq!(
        c.set_perms("data", &[]),
        Err(XsError::InvalidArgument("empty permission list"))
    );
    assert_eq!(sim.xs_requests().len(), before, "nothing reached xenstored");
}

#[test]
fn mkdir_rm_and_directory() {
    let (sim, mut c) = setup();
    c.mkdir("data/d/e").unwrap();
    c.mkdir("data/d/e").unwrap(); // exists: fine
    c.write("data/d/f", b"1").unwrap();
    let mut names = c.directory("data/d").unwrap();
    names.sort();
    assert_eq!(names, ["e", "f"]);
    assert_eq!(c.directory("data/d/e").unwrap(), Vec::<String>::new());
    c.rm("data/d").unwrap();
    assert_eq!(sim.xs_read("data/d/f"), Err(Errno::ENOENT));
    c.rm("data/d").unwrap(); // gone, parent exists: fine
    assert_eq!(c.rm("data/d/e"), Err(XsError::Xs(Errno::ENOENT)));
    assert_eq!(c.directory("data/d"), Err(XsError::Xs(Errno::ENOENT)));
    assert!(c
        .directory("/local/domain/5")
        .unwrap()
        .contains(&"control".to_string()));
}

#[test]
fn get_and_set_perms() {
    let (sim, mut c) = setup();
    assert_eq!(
        c.get_perms("").unwrap_err(),
        XsError::InvalidArgument("path")
    );
    assert_eq!(
        c.get_perms("/local/domain/5").unwrap(),
        vec![
            XsPerm::new(XsPermKind::None, 0),
            XsPerm::new(XsPermKind::Read, 5)
        ]
    );
    c.write("data/shared", b"x").unwrap();
    let perms = [
        XsPerm::new(XsPermKind::None, 5),
        XsPerm::new(XsPermKind::Read, 0),
        XsPerm::new(XsPermKind::Both, 7),
    ];
    c.set_perms("data/shared", &perms).unwrap();
    assert_eq!(sim.xs_get_perms("data/shared").unwrap(), perms);
    assert_eq!(c.get_perms("data/shared").unwrap(), perms);
    // Only the owner may change them.
    assert_eq!(
        c.set_perms("memory/target", &perms),
        Err(XsError::Xs(Errno::EACCES))
    );
    // Give the node away: now the guest can neither read nor change it.
    c.set_perms("data/shared", &[XsPerm::new(XsPermKind::None, 0)])
        .unwrap();
    assert_eq!(c.read("data/shared"), Err(XsError::Xs(Errno::EACCES)));
}

#[test]
fn domain_path_and_non_utf8_values() {
    let (sim, mut c) = setup();
    assert_eq!(c.get_domain_path(5).unwrap(), "/local/domain/5");
    assert_eq!(c.get_domain_path(0).unwrap(), "/local/domain/0");
    sim.xs_write("data/bin", [0xff, 0xfe]).unwrap();
    assert_eq!(c.read("data/bin").unwrap(), [0xff, 0xfe]);
    assert_eq!(c.read_string("data/bin"), Err(XsError::NotUtf8));
}

#[test]
fn requests_carry_distinct_nonzero_ids_and_no_transaction() {
    let (sim, mut c) = setup();
    for _ in 0..5 {
        c.read("domid").unwrap();
    }
    let reqs = sim.xs_requests();
    assert_eq!(reqs.len(), 5);
    let mut ids: Vec<u32> = reqs.iter().map(|r| r.req_id).collect();
    assert!(ids.iter().all(|&i| i != 0));
    ids.dedup();
    assert_eq!(ids.len(), 5);
    assert!(reqs.iter().all(|r| r.tx_id == 0 && r.payload == b"domid\0"));
}

#[derive(Clone, Debug)]
enum Op {
    Write(usize, Vec<u8>),
    Rm(usize),
    Read(usize),
    Dir,
}

const KEYS: [&str; 4] = ["data/m/a", "data/m/b", "data/m/a/x", "data/m/c"];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..KEYS.len(), prop::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(k, v)| Op::Write(k, v)),
        (0..KEYS.len()).prop_map(Op::Rm),
        (0..KEYS.len()).prop_map(Op::Read),
        Just(Op::Dir),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random writes/removes/reads agree with a map model, across ring wrap-around.
    #[test]
    fn random_ops_match_a_model(
        ops in prop::collection::vec(op(), 1..40),
        start in prop_oneof![Just(0u32), (u32::MAX - 2048)..=u32::MAX],
    ) {
        let (_sim, mut c) =
            common::xs_world(SimConfig { domid: 5, xs_ring_start: start, ..SimConfig::default() });
        c.mkdir("data/m").unwrap();
        let mut model: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
        for o in ops {
            match o {
                Op::Write(k, v) => {
                    c.write(KEYS[k], &v).unwrap();
                    // Parent created implicitly.
                    if KEYS[k] == "data/m/a/x" {
                        model.entry("data/m/a").or_default();
                    }
                    model.insert(KEYS[k], v);
                }
                Op::Rm(k) => {
                    let r = c.rm(KEYS[k]);
                    if KEYS[k] == "data/m/a/x" && !model.contains_key("data/m/a") {
                        prop_assert_eq!(r, Err(XsError::Xs(Errno::ENOENT)));
                    } else {
                        r.unwrap();
                    }
                    model.retain(|key, _| !(*key == KEYS[k] || key.starts_with(&format!("{}/", KEYS[k]))));
                }
                Op::Read(k) => match model.get(KEYS[k]) {
                    Some(v) => prop_assert_eq!(&c.read(KEYS[k]).unwrap(), v),
                    None => prop_assert_eq!(c.read(KEYS[k]), Err(XsError::Xs(Errno::ENOENT))),
                },
                Op::Dir => {
                    let mut got = c.directory("data/m").unwrap();
                    got.sort();
                    let want: Vec<String> = model
                        .keys()
                        .filter_map(|k| k.strip_prefix("data/m/"))
                        .filter(|k| !k.contains('/'))
                        .map(String::from)
                        .collect();
                    prop_assert_eq!(got, want);
                }
            }
        }
    }
}

#[test]
fn big_directories_are_listed_in_parts() {
    let (sim, mut c) = setup();
    let mut want: Vec<String> = (0..300)
        .map(|i| format!("entry-with-a-long-name-{i:04}"))
        .collect();
    for n in &want {
        sim.xs_write(&format!("data/big/{n}"), "").unwrap();
    }
    let mut got = c.directory("data/big").unwrap();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    let t = xen_bindings::abi::xs_wire::XsdSockmsgType::DirectoryPart.as_u32();
    let parts = sim.xs_requests().iter().filter(|r| r.type_ == t).count();
    assert!(parts >= 2, "{parts} parts");
    // Inside a transaction too.
    let n = c.transaction(|t| t.directory("data/big")).unwrap().len();
    assert_eq!(n, 300);
}

#[test]
fn a_directory_changing_between_parts_is_listed_again() {
    let (sim, mut c) = setup();
    for i in 0..300 {
        sim.xs_write(&format!("data/big/name-long-enough-to-need-parts-{i}"), "")
            .unwrap();
    }
    // The plain listing is too big (E2BIG); the first part then claims another
    // generation and a phantom entry, so the second part's generation differs.
    sim.xs_faults(|f| {
        f.reply_faults
            .push_back(xen_bindings::sim::ReplyFault::Error("E2BIG".into()));
        f.reply_faults
            .push_back(xen_bindings::sim::ReplyFault::Payload(
                b"1\0phantom\0".to_vec(),
            ));
    });
    let got = c.directory("data/big").unwrap();
    assert_eq!(got.len(), 300);
    assert!(!got.contains(&"phantom".to_string()));
}

#[test]
fn read_many_answers_in_order_in_one_round_trip() {
    let (sim, mut c) = setup();
    sim.xs_write("data/p/b", "2").unwrap();
    let before = sim.stats().notifies;
    let r = c.read_many(&["domid", "data/p/missing", "data/p/b", "bad\0path"]);
    assert_eq!(r[0].as_deref(), Ok(&b"5"[..]));
    assert_eq!(
        r[1],
        Err(XsError::Xs(Errno::ENOENT)),
        "an error stays in its slot"
    );
    assert_eq!(r[2].as_deref(), Ok(&b"2"[..]));
    assert!(r[3].is_err(), "a bad argument fails alone");
    assert_eq!(sim.xs_requests().len(), 3, "the bad path was never sent");
    // One kick to send all three, at most one after taking the replies: a round trip
    // each would need six.
    assert!(sim.stats().notifies - before <= 2, "{:?}", sim.stats());
}

#[test]
fn batch_writes_and_watches_in_order() {
    use guest::xen::xenstore::XsReq;
    let (sim, mut c) = setup();
    let before = sim.stats().notifies;
    let r = c.batch(&[
        XsReq::Write("data/q/a", b"1"),
        XsReq::Watch("control/shutdown", "tok"),
        XsReq::Write("/local/domain/0/forbidden", b"x"),
        XsReq::Read("data/q/a"),
        XsReq::Write("data/q/ready", b"1"),
    ]);
    assert_eq!(r[0], Ok(vec![]));
    assert_eq!(r[1], Ok(vec![]));
    assert_eq!(
        r[2],
        Err(XsError::Xs(Errno::EACCES)),
        "a refused write fails alone"
    );
    assert_eq!(r[3], Ok(b"1".to_vec()), "a read sees the write before it");
    assert_eq!(r[4], Ok(vec![]));
    assert!(sim.stats().notifies - before <= 2, "{:?}", sim.stats());
    assert_eq!(sim.xs_read("data/q/a").unwrap(), b"1");
    assert_eq!(sim.xs_read("data/q/ready").unwrap(), b"1");
    let types: Vec<u32> = sim.xs_requests().iter().map(|q| q.type_).collect();
    assert_eq!(
        types,
        [
            XsdSockmsgType::Write.as_u32(),
            XsdSockmsgType::Watch.as_u32(),
            XsdSockmsgType::Write.as_u32(),
            XsdSockmsgType::Read.as_u32(),
            XsdSockmsgType::Write.as_u32()
        ],
        "sent in the order given"
    );
    // The watch is registered (kept for a resume) and fires once at once.
    assert_eq!(c.watches(), [("control/shutdown".into(), "tok".into())]);
    let ev = c
        .wait_watch_event(1_000_000)
        .unwrap()
        .expect("the initial event");
    assert_eq!(ev.token, "tok");
}

#[test]
fn a_pipeline_to_a_silent_daemon_times_out_whole_and_late_replies_are_dropped() {
    let (sim, mut c) = setup();
    c.set_timeout_ns(20_000_000);
    sim.xs_faults(|f| f.stalled = true);
    let r = c.read_many(&["domid", "name", "memory/target"]);
    assert!(r.iter().all(|x| *x == Err(XsError::Timeout)), "{r:?}");
    sim.xs_faults(|f| f.stalled = false);
    // All three late replies come ahead of this one's, and none is taken for it.
    assert_eq!(c.read("name").unwrap(), b"guest");
    assert_eq!(c.stats().stale_replies, 3);
}

#[test]
fn a_posted_write_lands_in_order_and_a_refusal_is_counted_not_lost() {
    let (sim, mut c) = setup();
    c.post_write("data/balloon/state", b"working").unwrap();
    // Not collected yet: nothing has read the ring since.
    assert_eq!(c.posted_writes(), 1);
    // A later request sees the posted write applied first (xenstored's order), and the
    // posted reply is collected on the way, not taken for the read's.
    assert_eq!(c.read("data/balloon/state").unwrap(), b"working");
    assert_eq!(c.posted_writes(), 0);
    assert_eq!(
        sim.xs_read("/local/domain/5/data/balloon/state").unwrap(),
        b"working"
    );
    // The guest's home is read-only to it: the posted write is refused, which the next
    // call finds, counts and logs; that call itself is unaffected.
    c.post_write("name", b"x").unwrap();
    assert_eq!(c.read("domid").unwrap(), b"5");
    let st = c.stats();
    assert_eq!(st.posted_errors, 1);
    assert_eq!((st.stale_replies, st.unexpected_replies), (0, 0));
    // A bad path is refused before anything is sent.
    assert!(c.post_write("data/bad\0path", b"x").is_err());
    assert_eq!(c.posted_writes(), 0);
}

#[test]
fn more_late_replies_than_the_abandoned_list_holds_do_not_break_the_connection() {
    // A stalled daemon times out a pipeline longer than the list of abandoned ids (32):
    // the replies that come late anyway are older than anything asked since, and
    // xenstored answers in order, so each later request still gets its own reply.
    let (sim, mut c) = setup();
    c.set_timeout_ns(20_000_000);
    sim.xs_faults(|f| f.stalled = true);
    let paths: Vec<String> = (0..40).map(|_| "domid".to_string()).collect();
    let refs: Vec<&str> = paths.iter().map(|s| s.as_str()).collect();
    let r = c.read_many(&refs);
    assert!(r.iter().all(|x| *x == Err(XsError::Timeout)), "{r:?}");
    sim.xs_faults(|f| f.stalled = false);
    assert_eq!(c.read("name").unwrap(), b"guest");
    assert_eq!(c.read("domid").unwrap(), b"5");
    assert_eq!(c.stats().stale_replies, 40);
}
