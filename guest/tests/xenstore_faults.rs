//! A misbehaving xenstored: every damaged reply becomes a typed error, never a panic, and
//! the client recovers whenever the byte stream is still framed.

mod common;

use guest::xen::xenstore::{XenstoreClient, XsError, XsOps};
use xen_bindings::abi::xs_wire::{XsdSockmsgType, XENSTORE_ERROR_PROTO};
use xen_bindings::sim::xs_ring::PageField;
use xen_bindings::sim::{ReplyFault, SimConfig, SimXen};
use xen_bindings::traits::Clock;
use xen_bindings::Errno;

fn setup() -> (SimXen, XenstoreClient<SimXen>) {
    common::xs_world(SimConfig::default())
}

fn fault(sim: &SimXen, f: ReplyFault) {
    sim.xs_faults(|x| x.reply_faults.push_back(f));
}

/// Xenstored's side sets ring index `field` to `ahead` past index `base`.
fn set_index(sim: &SimXen, field: PageField, base: PageField, ahead: u32) {
    let st = sim.lock();
    let page = st.xenstored.page();
    let v = page.field(base).load(std::sync::atomic::Ordering::SeqCst);
    page.field(field)
        .store(v.wrapping_add(ahead), std::sync::atomic::Ordering::SeqCst);
}

const MS: u64 = 1_000_000;

type Op = fn(&mut XenstoreClient<SimXen>) -> bool;

#[test]
fn error_strings_known_and_unknown() {
    let (sim, mut c) = setup();
    fault(&sim, ReplyFault::Error("EBUSY".into()));
    assert_eq!(c.read("domid"), Err(XsError::Xs(Errno::EBUSY)));
    fault(&sim, ReplyFault::Error("EQUOTA".into()));
    assert_eq!(
        c.read("domid"),
        Err(XsError::UnknownXsError("EQUOTA".into()))
    );
    fault(&sim, ReplyFault::Error(String::new()));
    assert_eq!(
        c.write("data/x", b"1"),
        Err(XsError::UnknownXsError(String::new()))
    );
    assert_eq!(c.read("domid").unwrap(), b"1", "still connected");
}

#[test]
fn wrong_req_id_then_recovery() {
    let (sim, mut c) = setup();
    fault(&sim, ReplyFault::ReqId(0xdead));
    assert!(matches!(
        c.read("domid"),
        Err(XsError::UnexpectedReqId { got: 0xdead, .. })
    ));
    assert_eq!(c.read("domid").unwrap(), b"1");
}

#[test]
fn wrong_and_unknown_types() {
    let (sim, mut c) = setup();
    fault(&sim, ReplyFault::Type(XsdSockmsgType::Directory.as_u32()));
    assert_eq!(
        c.read("domid"),
        Err(XsError::UnexpectedType {
            expected: XsdSockmsgType::Read.as_u32(),
            got: XsdSockmsgType::Directory.as_u32()
        })
    );
    fault(&sim, ReplyFault::Type(20)); // the removed XS_RESTRICT
    assert_eq!(c.read("domid"), Err(XsError::UnknownType { type_: 20 }));
    fault(&sim, ReplyFault::Type(0xffff));
    assert_eq!(c.read("domid"), Err(XsError::UnknownType { type_: 0xffff }));
    assert_eq!(c.read("domid").unwrap(), b"1");
}

#[test]
fn malformed_payloads() {
    let (sim, mut c) = setup();
    fault(&sim, ReplyFault::Payload(b"a\0b".to_vec()));
    assert!(matches!(c.directory("data"), Err(XsError::Malformed(_))));
    fault(&sim, ReplyFault::Payload(b"KO\0".to_vec()));
    assert!(matches!(
        c.write("data/x", b"1"),
        Err(XsError::Malformed(_))
    ));
    fault(&sim, ReplyFault::Payload(b"z9\0".to_vec()));
    assert!(matches!(c.get_perms("data"), Err(XsError::Malformed(_))));
    fault(&sim, ReplyFault::Payload(b"0\0".to_vec()));
    assert!(matches!(c.transaction_start(), Err(XsError::Malformed(_))));
    fault(&sim, ReplyFault::Payload(b"99999999999\0".to_vec()));
    assert!(matches!(c.transaction_start(), Err(XsError::Malformed(_))));
    fault(&sim, ReplyFault::Payload(b"\xff\xfe\0".to_vec()));
    assert_eq!(c.directory("data"), Err(XsError::NotUtf8));
    assert_eq!(c.read("domid").unwrap(), b"1");
}

#[test]
fn oversized_reply_breaks_the_connection_for_good() {
    let (sim, mut c) = setup();
    fault(&sim, ReplyFault::HeaderOnlyWithLen(4097));
    assert_eq!(c.read("domid"), Err(XsError::Oversized { len: 4097 }));
    assert_eq!(c.broken(), Some(&XsError::Oversized { len: 4097 }));
    assert_eq!(c.read("domid"), Err(XsError::Disconnected));
    assert_eq!(c.wait_watch_event(MS), Err(XsError::Disconnected));
}

#[test]
fn a_silent_daemon_times_out_and_the_late_reply_is_dropped() {
    let (sim, mut c) = setup();
    c.set_timeout_ns(20 * MS);
    sim.xs_faults(|f| f.stalled = true);
    let t0 = sim.now_ns();
    assert_eq!(c.read("domid"), Err(XsError::Timeout));
    assert_eq!(
        sim.now_ns(),
        t0 + 20 * MS,
        "waited on the clock, not spinning"
    );
    assert!(sim.stats().polls < 10, "{:?}", sim.stats());
    sim.xs_faults(|f| f.stalled = false);
    // The first read's reply arrives now, ahead of the second's: it must not be taken
    // for the second's answer.
    assert_eq!(c.read("name").unwrap(), b"guest");
    assert_eq!(c.stats().stale_replies, 1);
}

#[test]
fn a_dropped_reply_times_out() {
    let (sim, mut c) = setup();
    c.set_timeout_ns(MS);
    fault(&sim, ReplyFault::Drop);
    assert_eq!(c.write("data/x", b"1"), Err(XsError::Timeout));
    assert_eq!(sim.xs_read("data/x").unwrap(), b"1", "it was processed");
    assert_eq!(c.read("data/x").unwrap(), b"1");
}

#[test]
fn corrupt_ring_indices() {
    let (sim, mut c) = setup();
    set_index(&sim, PageField::RspProd, PageField::RspCons, 2000);
    assert!(matches!(c.read("domid"), Err(XsError::RingCorrupt { .. })));
    assert_eq!(c.read("domid"), Err(XsError::Disconnected));
}

#[test]
fn corrupt_request_index_from_the_daemon_side() {
    let (sim, mut c) = setup();
    // The daemon claims to have consumed bytes we never produced.
    set_index(&sim, PageField::ReqCons, PageField::ReqProd, 5);
    assert!(matches!(c.read("domid"), Err(XsError::RingCorrupt { .. })));
}

#[test]
fn server_error_field_is_reported() {
    let (sim, mut c) = setup();
    sim.lock()
        .xenstored
        .page()
        .field(PageField::Error)
        .store(XENSTORE_ERROR_PROTO, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        c.read("domid"),
        Err(XsError::ServerError(XENSTORE_ERROR_PROTO))
    );
    assert_eq!(c.read("domid"), Err(XsError::Disconnected));
}

#[test]
fn replies_trickling_in_byte_by_byte() {
    let (sim, mut c) = setup();
    sim.xs_faults(|f| f.byte_at_a_time = true);
    let big = vec![b'z'; 3000];
    c.write("data/big", &big).unwrap();
    assert_eq!(c.read("data/big").unwrap(), big);
    c.watch("data", "d").unwrap();
    assert_eq!(c.wait_watch_event(MS).unwrap().unwrap().path, "data");
    let v = c.transaction(|t| t.read("domid")).unwrap();
    assert_eq!(v, b"1");
    assert_eq!(sim.lock().xenstored.broken(), None);
}

#[test]
fn every_reply_fault_leaves_the_client_usable_or_cleanly_broken() {
    let faults = [
        ReplyFault::Error("EINVAL".into()),
        ReplyFault::Error("\u{1F980}".into()),
        ReplyFault::ReqId(0),
        ReplyFault::Type(XsdSockmsgType::WatchEvent.as_u32()),
        ReplyFault::Type(XsdSockmsgType::Error.as_u32()),
        ReplyFault::Payload(Vec::new()),
        ReplyFault::Payload(vec![0; 4096]),
        ReplyFault::HeaderOnlyWithLen(u32::MAX),
        ReplyFault::Drop,
    ];
    for f in faults {
        let (sim, mut c) = setup();
        c.set_timeout_ns(MS);
        fault(&sim, f.clone());
        let ops: [Op; 5] = [
            |c| c.read("domid").is_ok(),
            |c| c.directory("data").is_ok(),
            |c| c.get_perms("data").is_ok(),
            |c| c.transaction_start().is_ok(),
            |c| c.get_domain_path(1).is_ok(),
        ];
        for op in ops {
            op(&mut c);
        }
        // Afterwards: either the connection works or it says it is broken.
        match c.broken() {
            None => assert_eq!(c.read("domid").unwrap(), b"1", "{f:?}"),
            Some(_) => assert_eq!(c.read("domid"), Err(XsError::Disconnected), "{f:?}"),
        }
    }
}
