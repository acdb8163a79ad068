//! The guest's ring code against the simulated xenstored's (written separately): byte
//! streams survive index wrap-around, full rings and arbitrary chunking, in both
//! directions; whole requests of random sizes survive it too.

mod common;

use std::ptr::NonNull;

use guest::xen::xenstore::ring::XsRing;
use guest::xen::xenstore::XsOps;
use proptest::prelude::*;
use xen_bindings::sim::xs_ring::{ServerRing, SharedPage};
use xen_bindings::sim::{SimConfig, SimXen};

fn guest_ring(page: &SharedPage) -> XsRing {
    // SAFETY: `page` outlives the returned ring in every test below, and the ring is the
    // only guest-side user.
    unsafe { XsRing::new(NonNull::new(page.as_ptr()).unwrap()) }
}

fn start_index() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0u32), (u32::MAX - 4096)..=u32::MAX, any::<u32>(),]
}

/// A start index, a byte stream of up to a few rings' worth, and the sizes the writer
/// and the reader use in turn.
fn stream_case() -> impl Strategy<Value = (u32, Vec<u8>, Vec<usize>, Vec<usize>)> {
    let chunk_sizes = || prop::collection::vec(1usize..1500, 1..20);
    (
        start_index(),
        prop::collection::vec(any::<u8>(), 0..5000),
        chunk_sizes(),
        chunk_sizes(),
    )
}

/// The guest's and the daemon's ends of the ring on `page`.
fn ends(page: &SharedPage) -> (XsRing, ServerRing<'_>) {
    (guest_ring(page), ServerRing::new(page))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Guest -> xenstored: the guest writes chunks (partially when the ring is full), the
    /// daemon reads in its own chunk sizes; the stream arrives intact and in order.
    #[test]
    fn request_stream_is_intact((start, data, writes, reads) in stream_case()) {
        let page = SharedPage::new(start);
        let (mut g, s) = ends(&page);
        let (mut sent, mut got) = (0usize, Vec::new());
        let mut i = 0;
        while got.len() < data.len() {
            let w = writes[i % writes.len()].min(data.len() - sent);
            let n = g.write_req(&data[sent..sent + w]).unwrap();
            prop_assert!(n <= w);
            sent += n;
            prop_assert!(g.req_space().unwrap() <= 1024);
            s.read_req(&mut got, reads[i % reads.len()]).unwrap();
            prop_assert!(sent - got.len() <= 1024, "never more than a ring in flight");
            i += 1;
        }
        prop_assert_eq!(got, data);
        prop_assert_eq!(s.req_pending(), 0);
    }

    /// xenstored -> guest, symmetric.
    #[test]
    fn response_stream_is_intact((start, data, writes, reads) in stream_case()) {
        let page = SharedPage::new(start);
        let (mut g, s) = ends(&page);
        let (mut sent, mut got) = (0usize, Vec::new());
        let mut buf = vec![0u8; 1500];
        let mut i = 0;
        while got.len() < data.len() {
            sent += s.write_rsp(&data[sent..], writes[i % writes.len()]).unwrap();
            let want = reads[i % reads.len()];
            let n = g.read_rsp(&mut buf[..want]).unwrap();
            got.extend_from_slice(&buf[..n]);
            prop_assert_eq!(g.rsp_available().unwrap(), sent - got.len());
            i += 1;
        }
        prop_assert_eq!(got, data);
    }

    /// Whole client round trips with values of random sizes (up to the payload limit, so
    /// many requests and replies are larger than the ring) across index wrap-around, with
    /// replies arriving whole or one byte at a time. Whole replies come from a daemon that
    /// works only when notified, as C xenstored: the client notifies after emptying a full
    /// reply ring (and only then), or a reply larger than the ring never arrives.
    #[test]
    fn client_round_trips_any_size(
        start in start_index(),
        sizes in prop::collection::vec(0usize..4080, 1..8),
        trickle: bool,
        seed: u8,
    ) {
        let sim = SimXen::new(SimConfig { xs_ring_start: start, ..SimConfig::default() });
        sim.xs_faults(|f| {
            f.byte_at_a_time = trickle;
            f.only_on_notify = !trickle;
        });
        let mut c = common::xs_client(&sim);
        for (i, &n) in sizes.iter().enumerate() {
            let v: Vec<u8> = (0..n).map(|j| (j as u8).wrapping_mul(31).wrapping_add(seed ^ i as u8)).collect();
            c.write("data/v", &v).unwrap();
            prop_assert_eq!(&sim.xs_read("data/v").unwrap(), &v);
            prop_assert_eq!(c.read("data/v").unwrap(), v);
        }
        prop_assert_eq!(sim.lock().xenstored.broken(), None);
        let st = sim.lock();
        let r = ServerRing::new(st.xenstored.page());
        prop_assert_eq!((r.req_pending(), r.rsp_unread()), (0, 0), "nothing left over");
    }
}

#[test]
fn indices_really_wrap_past_u32_max() {
    let sim = SimXen::new(SimConfig {
        xs_ring_start: u32::MAX - 100,
        ..SimConfig::default()
    });
    let mut c = common::xs_client(&sim);
    c.write("data/x", &[7u8; 3000]).unwrap();
    assert_eq!(c.read("data/x").unwrap(), vec![7u8; 3000]);
    let st = sim.lock();
    let p = st.xenstored.page().as_ptr();
    // SAFETY: plain reads of the live page; nothing runs concurrently.
    let (req_prod, rsp_prod) = unsafe { ((*p).req_prod, (*p).rsp_prod) };
    assert!(
        req_prod < 10_000 && rsp_prod < 10_000,
        "{req_prod} {rsp_prod}"
    );
}
