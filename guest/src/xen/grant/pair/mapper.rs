//! The mapping side: wait for the granter's refs, map them into the device range in
//! batches, verify the pattern, bind and notify the event channel, publish the checksum;
//! then serve the toolstack's commands (`unmap`, `verify`, `write`, `bench`, `churn`,
//! `still`) and unmap everything when the granter dies.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use xen_bindings::abi::grant_table::GrantRef;
use xen_bindings::traits::{Clock, DomId, EventChannels, GrantOps, Port};

use super::super::handshake::{self, parse_refs, Checksum, DIR};
use super::protocol::{
    encode_checksum, fail, peer_path, publish, read_opt, read_peer, share_dir, stamp, Introduction,
};
use super::{Env, FrameAccess, Kit, PairState, Watcher, PAGE_BYTES, TOKEN};
use crate::mm::{MemModel, MemmapStorage, Pfn};
use crate::xen::grant::{ForeignMapper, MapRequest, Unmapped, MAX_BATCH};
use crate::xen::xenstore::XsOps;

mod bench;

pub use bench::BENCH_ROUNDS;
use bench::{bench_key, ChurnPhase, CHURN_CHECK_ROUNDS};

/// The mapping side.
pub struct Mapper {
    me: DomId,
    intro: Introduction,
    /// The granter published `access=rw`: map read-write.
    writable: bool,
    state: PairState,
    peer: Option<DomId>,
    /// The granter's refs, in page order.
    refs: Vec<GrantRef>,
    slots: Vec<Pfn>,
    port: Option<Port>,
    checksum: Option<u64>,
    /// The pattern's nonce as read from the granter's page 0 at the first verify.
    nonce: Option<u64>,
    map_ns: u64,
    verify_ns: u64,
    verify_runs: u64,
    bench_runs: u64,
    /// `churn` is on: every tick unmaps, shrinks and maps again (until `still`).
    churning: bool,
    churn_rounds: u64,
    churn_phase: ChurnPhase,
    /// Time spent in churn rounds (ns).
    churn_ns: u64,
    /// When `churn-rounds` was last published (ns).
    churn_published_ns: u64,
    unmap_ns: u64,
    error: Option<String>,
}

impl Mapper {
    /// A mapper for the guest `me`.
    pub fn new(me: DomId) -> Mapper {
        Mapper {
            me,
            intro: Introduction::default(),
            writable: false,
            state: PairState::WaitPeer,
            peer: None,
            refs: Vec::new(),
            slots: Vec::new(),
            port: None,
            checksum: None,
            nonce: None,
            map_ns: 0,
            verify_ns: 0,
            verify_runs: 0,
            bench_runs: 0,
            churning: false,
            churn_rounds: 0,
            churn_phase: ChurnPhase::Unmap,
            churn_ns: 0,
            churn_published_ns: 0,
            unmap_ns: 0,
            error: None,
        }
    }

    /// Whether the mapper wants to run again at once (`churn` is on).
    pub fn busy(&self) -> bool {
        self.churning && self.state == PairState::Mapped
    }

    /// Where it is.
    pub fn state(&self) -> PairState {
        self.state
    }

    /// The last error, if any.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// Slots holding the peer's pages now.
    pub fn slots(&self) -> &[Pfn] {
        &self.slots
    }

    /// Nanoseconds the map hypercalls (with their bookkeeping), the verification of
    /// the contents, and the unmap took.
    pub fn timings_ns(&self) -> (u64, u64, u64) {
        (self.map_ns, self.verify_ns, self.unmap_ns)
    }

    fn fail<X: XsOps>(&mut self, xs: &mut X, what: String) {
        self.error = Some(fail(xs, "mapper", what));
        self.state = PairState::Failed;
    }

    /// After resuming in a new domain: the mappings and the event channel are gone (the
    /// kernel returns the slots with `ForeignMapper::forget_foreign`). The role ends.
    pub fn resumed(&mut self) {
        self.slots.clear();
        self.port = None;
        self.state = PairState::Ended;
    }

    /// One step; called like [`super::Granter::tick`].
    pub fn tick<K: Kit>(&mut self, mapper: &mut ForeignMapper, env: &mut Env<'_, K>) {
        match self.state {
            PairState::WaitPeer => self.wait_peer(env),
            PairState::WaitGrants => self.wait_grants(mapper, env),
            PairState::Mapped => self.mapped(mapper, env),
            PairState::Unmapped | PairState::Reclaimed | PairState::Failed
                if !self.slots.is_empty() =>
            {
                self.unmap_leftovers(mapper, env)
            }
            _ => {}
        }
    }

    /// Slots Xen refused to unmap (at `unmap`, at reclaim, or after a failed map) still
    /// hold the peer's pages: try again on every tick until they are gone.
    fn unmap_leftovers<K: Kit>(&mut self, mapper: &mut ForeignMapper, env: &mut Env<'_, K>) {
        let left = format!("{}", self.unmap_all(mapper, env.mm, env.gnt, MAX_BATCH));
        let mut fields = alloc::vec![("mapped", left.clone())];
        if self.state == PairState::Reclaimed {
            fields.push(("reclaim-failed", left));
        }
        let _ = publish(env.xs, &fields);
    }

    fn wait_peer<K: Kit>(&mut self, env: &mut Env<'_, K>) {
        let Some(peer) = self.intro.poll(env.xs, self.me) else {
            return;
        };
        self.peer = Some(peer);
        let r = share_dir(env.xs, self.me, peer)
            .and_then(|()| publish(env.xs, &[("state", PairState::WaitGrants.as_str().into())]));
        if let Err(e) = r {
            return self.fail(env.xs, format!("cannot share {DIR} with d{peer}: {e:?}"));
        }
        for path in [peer_path(peer, "state"), format!("{DIR}/command")] {
            if let Err(e) = env.xs.watch_path(&path, TOKEN) {
                log::warn!("grant-test: cannot watch {path} ({e:?}); polling once a second");
            }
        }
        self.state = PairState::WaitGrants;
        log::info!("grant-test: waiting for d{peer}'s grants");
    }

    fn wait_grants<K: Kit>(&mut self, mapper: &mut ForeignMapper, env: &mut Env<'_, K>) {
        let peer = self.peer.expect("a peer");
        match read_peer(env.xs, peer, "state") {
            Ok(Some(s)) if s == b"granted" => {}
            // Not shared with us yet, or not granted yet.
            Ok(_) => return,
            Err(e) => return log::debug!("grant-test: d{peer}'s state: {e:?}"),
        }
        let refs = match read_peer(env.xs, peer, "refs") {
            Ok(Some(raw)) => match parse_refs(&raw) {
                Ok(r) => r,
                Err(e) => return self.fail(env.xs, format!("d{peer}'s refs: {e:?}")),
            },
            other => {
                return self.fail(
                    env.xs,
                    format!("d{peer} is granted but has no refs: {other:?}"),
                )
            }
        };
        let remote_port = read_peer(env.xs, peer, "evtchn")
            .ok()
            .flatten()
            .and_then(|v| core::str::from_utf8(&v).ok()?.parse::<Port>().ok())
            .unwrap_or(0);
        self.refs = refs;
        self.writable = matches!(read_peer(env.xs, peer, "access"), Ok(Some(a)) if a == b"rw");
        let t0 = env.ev.now_ns();
        if let Err(why) = self.map_all(mapper, env.mm, env.gnt, MAX_BATCH) {
            self.unmap_all(mapper, env.mm, env.gnt, MAX_BATCH);
            return self.fail(env.xs, why);
        }
        let n_refs = self.refs.len();
        self.map_ns = env.ev.now_ns().saturating_sub(t0);
        // Verify and checksum through the mappings.
        let (wrong, sum) = self.verify(env);
        self.verify_ns = env.ev.now_ns().saturating_sub(t0) - self.map_ns;
        self.checksum = Some(sum);
        if wrong != 0 {
            log::error!(
                "grant-test: {wrong} of {} pages do not hold the pattern",
                n_refs
            );
        }
        if remote_port != 0 {
            match env.ev.bind_interdomain(peer, remote_port) {
                Ok(p) => self.port = Some(p),
                Err(e) => log::warn!(
                    "grant-test: cannot bind d{peer}'s event channel {remote_port}: {e:?}"
                ),
            }
        }
        self.state = PairState::Mapped;
        let r = publish(
            env.xs,
            &[
                ("mapped", format!("{}", self.slots.len())),
                ("pattern-errors", format!("{wrong}")),
                ("map-us", format!("{}", self.map_ns / 1000)),
                ("verify-us", format!("{}", self.verify_ns / 1000)),
                ("checksum", encode_checksum(sum)),
                ("pattern-nonce", encode_checksum(self.nonce.unwrap_or(0))),
                ("state", PairState::Mapped.as_str().into()),
            ],
        );
        if let Err(e) = r {
            log::warn!("grant-test: cannot publish the checksum: {e:?}");
        }
        if let Some(p) = self.port {
            if let Err(e) = env.ev.notify(p) {
                log::warn!("grant-test: notify on {p}: {e:?}");
            }
        }
        log::info!(
            "grant-test: mapped {} pages of d{peer} in {} us ({} batches of <= {MAX_BATCH}), verified in {} us: pattern {}, checksum {}",
            self.slots.len(),
            self.map_ns / 1000,
            n_refs.div_ceil(MAX_BATCH),
            self.verify_ns / 1000,
            if wrong == 0 { "ok" } else { "WRONG" },
            encode_checksum(sum)
        );
    }

    fn mapped<K: Kit>(&mut self, mapper: &mut ForeignMapper, env: &mut Env<'_, K>) {
        let peer = self.peer.expect("a peer");
        if self.churning {
            // xenstore (the peer's state, a command) only between rounds, every few: a
            // round trip to dom0 costs more than a round.
            let ended = self.churn_step(mapper, env);
            if self.churning && !(ended && self.churn_rounds.is_multiple_of(CHURN_CHECK_ROUNDS)) {
                return;
            }
        }
        match read_peer(env.xs, peer, "state") {
            Ok(None) => {
                log::warn!(
                    "grant-test: d{peer} is gone while {} of its pages are mapped; reclaiming",
                    self.slots.len()
                );
                let rep = mapper.reclaim_domain(env.mm, env.gnt, peer);
                // Slots Xen refused to unmap stay Foreign: keep them (retried by `tick`).
                self.slots = mapper.slots_of(env.mm, peer);
                self.close_port(env);
                self.state = PairState::Reclaimed;
                let _ = publish(
                    env.xs,
                    &[
                        ("reclaimed", format!("{}", rep.unmapped + rep.already_gone)),
                        ("reclaim-failed", format!("{}", rep.failed)),
                        ("state", PairState::Reclaimed.as_str().into()),
                    ],
                );
                return;
            }
            Ok(Some(_)) => {}
            Err(e) => log::debug!("grant-test: d{peer}'s state: {e:?}"),
        }
        let cmd = match read_opt(env.xs, &format!("{DIR}/command")) {
            Ok(Some(c)) if !c.is_empty() => c,
            _ => return,
        };
        match &cmd[..] {
            b"unmap" => {
                self.churning = false;
                let t0 = env.ev.now_ns();
                let left = self.unmap_all(mapper, env.mm, env.gnt, MAX_BATCH);
                self.unmap_ns = env.ev.now_ns().saturating_sub(t0);
                mapper.shrink(env.mm);
                self.close_port(env);
                log::info!(
                    "grant-test: unmapped d{peer}'s pages in {} us ({left} left)",
                    self.unmap_ns / 1000
                );
                self.state = PairState::Unmapped;
                let _ = publish(
                    env.xs,
                    &[
                        ("unmap-us", format!("{}", self.unmap_ns / 1000)),
                        ("mapped", format!("{left}")),
                        ("command", String::new()),
                        ("state", PairState::Unmapped.as_str().into()),
                    ],
                );
            }
            b"bench" => {
                let r = self.bench(mapper, env, BENCH_ROUNDS);
                let (wrong, _) = self.verify(env);
                let mut fields = Vec::new();
                match r {
                    Ok(rows) => {
                        for r in rows {
                            log::info!(
                                "grant-test: bench: batch {}: map {} us ({} in Xen), unmap {} us ({} in Xen) per hypercall ({} pages, {BENCH_ROUNDS} rounds)",
                                r.batch,
                                r.map_us,
                                r.map_xen_us,
                                r.unmap_us,
                                r.unmap_xen_us,
                                self.refs.len()
                            );
                            for (what, v) in [
                                ("map-us", r.map_us),
                                ("unmap-us", r.unmap_us),
                                ("map-xen-us", r.map_xen_us),
                                ("unmap-xen-us", r.unmap_xen_us),
                            ] {
                                fields.push((bench_key(r.batch, what), format!("{v}")));
                            }
                        }
                    }
                    Err(e) => {
                        log::error!("grant-test: {e}");
                        fields.push(("bench/error".into(), e));
                    }
                }
                fields.push(("pattern-errors".into(), format!("{wrong}")));
                fields.push(("mapped".into(), format!("{}", self.slots.len())));
                fields.push(("command".into(), String::new()));
                self.bench_runs += 1;
                fields.push(("bench-runs".into(), format!("{}", self.bench_runs)));
                let refs: Vec<(&str, String)> = fields
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.clone()))
                    .collect();
                let _ = publish(env.xs, &refs);
            }
            b"churn" => {
                self.churning = true;
                log::info!("grant-test: churn: unmapping, shrinking and mapping d{peer}'s pages without pause");
                let _ = publish(
                    env.xs,
                    &[("churning", "1".into()), ("command", String::new())],
                );
            }
            b"still" => self.still(env),
            b"write" if self.writable => {
                for (i, &pfn) in self.slots.iter().enumerate() {
                    env.frames.write_u64(pfn, 0, stamp(i as u32));
                }
                log::info!(
                    "grant-test: stamped {} pages of d{peer} through read-write mappings",
                    self.slots.len()
                );
                let _ = publish(
                    env.xs,
                    &[
                        ("written", format!("{}", self.slots.len())),
                        ("command", String::new()),
                    ],
                );
            }
            b"write" => {
                log::warn!("grant-test: write refused: d{peer}'s pages are mapped read-only");
                let _ = publish(
                    env.xs,
                    &[
                        ("command-error", "write: mapped read-only".into()),
                        ("command", String::new()),
                    ],
                );
            }
            b"verify" => {
                // Read every mapped page again (e.g. after the balloon ran): foreign
                // pages must still be there, untouched by anything of ours.
                let (wrong, sum) = self.verify(env);
                self.verify_runs += 1;
                log::info!(
                    "grant-test: re-verified {} pages of d{peer}: {wrong} wrong, checksum {}",
                    self.slots.len(),
                    encode_checksum(sum)
                );
                let _ = publish(
                    env.xs,
                    &[
                        ("pattern-errors", format!("{wrong}")),
                        ("checksum", encode_checksum(sum)),
                        ("command", String::new()),
                        ("verify-runs", format!("{}", self.verify_runs)),
                    ],
                );
            }
            other => {
                log::warn!(
                    "grant-test: unknown command {:?} ignored",
                    String::from_utf8_lossy(other)
                );
                let _ = publish(env.xs, &[("command", String::new())]);
            }
        }
    }

    /// Reads every mapped page: how many do not hold their pattern, and the checksum.
    fn verify<K: Kit>(&mut self, env: &mut Env<'_, K>) -> (usize, u64) {
        let mut sum = Checksum::new();
        let mut wrong = 0;
        let mut buf = [0u8; PAGE_BYTES];
        for (i, &pfn) in self.slots.iter().enumerate() {
            env.frames.read(pfn, &mut buf);
            // The nonce is known only from the granter's frame (first read of page 0).
            let nonce = *self
                .nonce
                .get_or_insert_with(|| handshake::pattern_nonce(&buf));
            if !handshake::pattern_ok_with(nonce, i as u32, &buf) {
                wrong += 1;
            }
            sum.update(&buf);
        }
        (wrong, sum.value())
    }

    /// Maps every published ref, `batch` per hypercall, into `slots` (in ref order, so
    /// slot `i` holds page `i`). On an error the slots mapped so far stay in `slots`.
    fn map_all<S: MemmapStorage, G: GrantOps>(
        &mut self,
        mapper: &mut ForeignMapper,
        mm: &MemModel<S>,
        gnt: &mut G,
        batch: usize,
    ) -> Result<(), String> {
        let peer = self.peer.expect("a peer");
        for chunk in self.refs.chunks(batch) {
            let reqs: Vec<MapRequest> = chunk
                .iter()
                .map(|&gref| MapRequest {
                    domid: peer,
                    gref,
                    readonly: !self.writable,
                })
                .collect();
            let res = mapper
                .map_batch(mm, gnt, &reqs)
                .map_err(|e| format!("map batch: {e}"))?;
            let mut bad = None;
            for (r, req) in res.into_iter().zip(&reqs) {
                match r {
                    Ok(pfn) => self.slots.push(pfn),
                    Err(e) => {
                        bad.get_or_insert(format!("map of d{peer} ref {}: {e}", req.gref));
                    }
                }
            }
            if let Some(why) = bad {
                return Err(why);
            }
        }
        Ok(())
    }

    /// Unmaps every slot; returns how many stay mapped (Xen refused).
    fn unmap_all<S: MemmapStorage, G: GrantOps>(
        &mut self,
        mapper: &mut ForeignMapper,
        mm: &MemModel<S>,
        gnt: &mut G,
        batch: usize,
    ) -> usize {
        let mut left = Vec::new();
        for chunk in self.slots.chunks(batch) {
            match mapper.unmap_batch(mm, gnt, chunk) {
                Ok(res) => {
                    for (r, &pfn) in res.into_iter().zip(chunk) {
                        match r {
                            Ok(Unmapped::Done(_) | Unmapped::AlreadyGone(_)) => {}
                            Err(e) => {
                                log::error!("grant-test: unmap of {pfn:?}: {e}");
                                left.push(pfn);
                            }
                        }
                    }
                }
                Err(e) => {
                    log::error!("grant-test: unmap batch: {e}");
                    left.extend_from_slice(chunk);
                }
            }
        }
        self.slots = left;
        self.slots.len()
    }

    fn close_port<K: Kit>(&mut self, env: &mut Env<'_, K>) {
        if let Some(p) = self.port.take() {
            if let Err(e) = env.ev.close(p) {
                log::warn!("grant-test: closing event channel {p}: {e:?}");
            }
        }
    }
}
