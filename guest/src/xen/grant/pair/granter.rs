//! The granting side: allocate N frames, fill them with the pattern, grant them to the
//! peer, publish refs and an event channel, check the mapper's checksum, and end access
//! (deferred while the peer still maps a grant) when the mapper unmaps, dies or is
//! withdrawn.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use xen_bindings::abi::grant_table::GrantRef;
use xen_bindings::traits::{Clock, DomId, EventChannels, Port};

use super::super::handshake::{encode_refs, pattern_byte_with, Checksum, DIR, NONCE_KEY};
use super::protocol::{
    encode_checksum, fail, parse_checksum, parse_domid, peer_path, publish, read_opt, read_peer,
    share_dir, stamp, Introduction,
};
use super::{Env, FrameAccess, Kit, PairState, Watcher, PAGE_BYTES, TOKEN};
use crate::mm::{MemModel, MemmapStorage, Pfn};
use crate::xen::grant::{EndAccess, GrantTable};
use crate::xen::xenstore::XsOps;

/// How often the granter retries end-access of grants the peer still maps.
pub const RETRY_NS: u64 = 1_000_000_000;

/// The granting side.
pub struct Granter {
    me: DomId,
    intro: Introduction,
    pages: u32,
    writable: bool,
    /// How many pages hold the mapper's stamp, once it said it wrote them.
    writes_seen: Option<usize>,
    state: PairState,
    peer: Option<DomId>,
    /// Our frames and the refs granting them, in page order.
    grants: Vec<(Pfn, GrantRef)>,
    /// Refs ended while mapped, with their frames (freed once released).
    deferred: Vec<(GrantRef, Pfn)>,
    port: Option<Port>,
    expected: u64,
    peer_seen: bool,
    verified: Option<bool>,
    notified: bool,
    last_retry_ns: u64,
    error: Option<String>,
}

impl Granter {
    /// A granter of `pages` pages for the guest `me`.
    pub fn new(me: DomId, pages: u32) -> Granter {
        Granter {
            me,
            intro: Introduction::default(),
            pages,
            writable: false,
            writes_seen: None,
            state: PairState::WaitPeer,
            peer: None,
            grants: Vec::new(),
            deferred: Vec::new(),
            port: None,
            expected: 0,
            peer_seen: false,
            verified: None,
            notified: false,
            last_retry_ns: 0,
            error: None,
        }
    }

    /// Grant read-write instead of read-only.
    pub fn writable(mut self, writable: bool) -> Granter {
        self.writable = writable;
        self
    }

    /// Pages holding the mapper's stamp (read-write grants, after its `write`).
    pub fn writes_seen(&self) -> Option<usize> {
        self.writes_seen
    }

    /// Where it is.
    pub fn state(&self) -> PairState {
        self.state
    }

    /// The last error, if any.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// The mapper's checksum matched (`Some(true)`), did not, or has not come yet.
    pub fn verified(&self) -> Option<bool> {
        self.verified
    }

    /// Frames granted and not yet released (granted + deferred).
    pub fn frames_held(&self) -> usize {
        self.grants.len() + self.deferred.len()
    }

    /// The peer's event channel fired at least once.
    pub fn notified(&self) -> bool {
        self.notified
    }

    fn fail<X: XsOps>(&mut self, xs: &mut X, what: String) {
        self.error = Some(fail(xs, "granter", what));
        self.state = PairState::Failed;
    }

    /// After resuming in a new domain: every grant and the event channel are gone with
    /// the old domain, so the frames come back to us now (none can still be mapped: the
    /// table they were granted from no longer exists). The role ends; the kernel starts a
    /// fresh one for the new domain. Returns how many frames were freed.
    pub fn resumed<S: MemmapStorage>(&mut self, mm: &MemModel<S>) -> usize {
        let frames: Vec<Pfn> = self
            .grants
            .drain(..)
            .map(|(pfn, _)| pfn)
            .chain(self.deferred.drain(..).map(|(_, pfn)| pfn))
            .collect();
        for &pfn in &frames {
            free_frame(mm, pfn);
        }
        self.port = None;
        self.state = PairState::Ended;
        frames.len()
    }

    /// One step: called at start, on every watch event with [`TOKEN`], and at least once
    /// a second. Never panics on anything a peer or the toolstack wrote.
    pub fn tick<K: Kit>(&mut self, table: &mut GrantTable<'_>, env: &mut Env<'_, K>) {
        match self.state {
            PairState::WaitPeer => self.wait_peer(table, env),
            PairState::Granted => self.granted(table, env),
            PairState::Ending => self.retry(table, env),
            _ => {}
        }
    }

    fn wait_peer<K: Kit>(&mut self, table: &mut GrantTable<'_>, env: &mut Env<'_, K>) {
        let Some(peer) = self.intro.poll(env.xs, self.me) else {
            return;
        };
        self.peer = Some(peer);
        // The toolstack's nonce for the pattern (none: 0, the plain pattern).
        let nonce = match read_opt(env.xs, NONCE_KEY) {
            Ok(None) => 0,
            Ok(Some(raw)) => match parse_checksum(&raw) {
                Some(n) => n,
                None => {
                    return self.fail(
                        env.xs,
                        format!("{NONCE_KEY} is not 16 lower-case hex digits"),
                    )
                }
            },
            Err(e) => return self.fail(env.xs, format!("cannot read {NONCE_KEY}: {e:?}")),
        };
        // Frames first: a failure gives back everything taken so far.
        let mut frames = Vec::new();
        for _ in 0..self.pages {
            match env.mm.alloc_frames(0) {
                Ok(pfn) => frames.push(pfn),
                Err(e) => {
                    for &p in &frames {
                        let _ = env.mm.free_frames(p, 0);
                    }
                    return self.fail(
                        env.xs,
                        format!("cannot allocate {} frames: {e}", self.pages),
                    );
                }
            }
        }
        // The expected checksum from what the frames hold after the fill.
        let mut sum = Checksum::new();
        let mut buf = [0u8; PAGE_BYTES];
        for (i, &pfn) in frames.iter().enumerate() {
            env.frames
                .fill(pfn, &|b| pattern_byte_with(nonce, i as u32, b));
            env.frames.read(pfn, &mut buf);
            sum.update(&buf);
        }
        self.expected = sum.value();
        for &pfn in &frames {
            match table.grant_access(peer, pfn.0, !self.writable) {
                Ok(gref) => self.grants.push((pfn, gref)),
                Err(e) => {
                    let granted = self.grants.len();
                    for &(_, gref) in &self.grants {
                        // Never published, never mapped: released at once.
                        let _ = table.end_access(gref);
                    }
                    self.grants.clear();
                    for &p in &frames {
                        let _ = env.mm.free_frames(p, 0);
                    }
                    return self.fail(
                        env.xs,
                        format!("grant {} of {}: {e}", granted + 1, self.pages),
                    );
                }
            }
        }
        let port = match env.ev.alloc_unbound(peer) {
            Ok(p) => p,
            Err(e) => {
                log::warn!("grant-test: no event channel for d{peer} ({e:?}); xenstore only");
                0
            }
        };
        self.port = (port != 0).then_some(port);
        let refs: Vec<GrantRef> = self.grants.iter().map(|&(_, r)| r).collect();
        let r = share_dir(env.xs, self.me, peer).and_then(|()| {
            publish(
                env.xs,
                &[
                    ("pages", format!("{}", self.pages)),
                    ("access", if self.writable { "rw" } else { "ro" }.into()),
                    ("refs", encode_refs(&refs)),
                    ("evtchn", format!("{port}")),
                    ("state", PairState::Granted.as_str().into()),
                ],
            )
        });
        if let Err(e) = r {
            // The peer may have seen part of it; end access the careful way.
            log::error!("grant-test: cannot publish the grants: {e:?}; ending them");
            self.error = Some(format!("publish: {e:?}"));
            return self.end_all(table, env);
        }
        for path in [peer_path(peer, "state"), format!("{DIR}/peer")] {
            if let Err(e) = env.xs.watch_path(&path, TOKEN) {
                log::warn!("grant-test: cannot watch {path} ({e:?}); polling once a second");
            }
        }
        self.state = PairState::Granted;
        log::info!(
            "grant-test: granted {} pages to d{peer} (refs {}..={}), event channel {port}",
            self.pages,
            refs.first().copied().unwrap_or(0),
            refs.last().copied().unwrap_or(0)
        );
    }

    fn granted<K: Kit>(&mut self, table: &mut GrantTable<'_>, env: &mut Env<'_, K>) {
        let peer = self.peer.expect("granted to a peer");
        if let Some(port) = self.port {
            if env.ev.take_pending(port) && !self.notified {
                self.notified = true;
                log::info!("grant-test: d{peer} notified us on event channel {port}");
            }
        }
        // The toolstack withdraws the introduction (removes or changes our `peer`) when
        // the peer is gone for good — the one signal that also covers a peer that died
        // before it ever shared its directory with us (an unprivileged domain cannot ask
        // xenstored or Xen whether another domain exists).
        match read_opt(env.xs, &format!("{DIR}/peer")) {
            Ok(Some(raw)) if parse_domid(&raw, self.me) == Ok(peer) => {}
            Ok(now) => {
                log::warn!(
                    "grant-test: the toolstack withdrew d{peer} ({DIR}/peer is now {:?}); ending our grants",
                    now.as_deref().map(String::from_utf8_lossy)
                );
                return self.end_all(table, env);
            }
            Err(e) => log::warn!("grant-test: cannot read {DIR}/peer: {e:?}"),
        }
        let state = match read_peer(env.xs, peer, "state") {
            Ok(s) => s,
            Err(e) => return log::warn!("grant-test: cannot read d{peer}'s state: {e:?}"),
        };
        match state.as_deref() {
            None if self.peer_seen => {
                log::warn!(
                    "grant-test: d{peer} is gone (its data/grant-test vanished); ending our grants"
                );
                return self.end_all(table, env);
            }
            None => return,
            Some(_) => self.peer_seen = true,
        }
        if self.verified.is_none() {
            if let Ok(Some(raw)) = read_peer(env.xs, peer, "checksum") {
                let ok = parse_checksum(&raw) == Some(self.expected);
                self.verified = Some(ok);
                if ok {
                    log::info!(
                        "grant-test: d{peer}'s checksum matches ({})",
                        encode_checksum(self.expected)
                    );
                } else {
                    log::error!(
                        "grant-test: d{peer}'s checksum {:?} != ours {}",
                        String::from_utf8_lossy(&raw),
                        encode_checksum(self.expected)
                    );
                }
                let v = if ok { "ok" } else { "mismatch" };
                if let Err(e) = publish(env.xs, &[("verified", v.into())]) {
                    log::warn!("grant-test: cannot publish verified: {e:?}");
                }
            }
        }
        if self.writable && self.writes_seen.is_none() {
            if let Ok(Some(n)) = read_peer(env.xs, peer, "written") {
                // The mapper wrote through its read-write mappings: look in our frames.
                let seen = self
                    .grants
                    .iter()
                    .enumerate()
                    .filter(|&(i, &(pfn, _))| {
                        let mut buf = [0u8; PAGE_BYTES];
                        env.frames.read(pfn, &mut buf);
                        buf[..8] == stamp(i as u32).to_le_bytes()
                    })
                    .count();
                log::info!(
                    "grant-test: d{peer} says it wrote {} pages; {seen} of our {} frames hold its stamp",
                    String::from_utf8_lossy(&n),
                    self.grants.len()
                );
                self.writes_seen = Some(seen);
                let _ = publish(env.xs, &[("writes-seen", format!("{seen}"))]);
            }
        }
        if matches!(
            state.as_deref(),
            Some(b"unmapped" | b"reclaimed" | b"failed")
        ) {
            log::info!(
                "grant-test: d{peer} is {}; ending our grants",
                String::from_utf8_lossy(state.as_deref().unwrap_or_default())
            );
            self.end_all(table, env);
        }
    }

    /// End access to every grant; released frames go back to the allocator, the rest
    /// wait on the deferred list.
    fn end_all<K: Kit>(&mut self, table: &mut GrantTable<'_>, env: &mut Env<'_, K>) {
        let (mut released, mut deferred) = (0, 0);
        for (pfn, gref) in core::mem::take(&mut self.grants) {
            match table.end_access(gref) {
                Ok(EndAccess::Released) => {
                    released += 1;
                    free_frame(env.mm, pfn);
                }
                Ok(EndAccess::Deferred) => {
                    deferred += 1;
                    self.deferred.push((gref, pfn));
                }
                Err(e) => {
                    // Our own bookkeeping disagrees: keep the frame (a leak beats handing
                    // out a page a peer may still write).
                    log::error!("grant-test: end access of ref {gref}: {e}; frame {pfn:?} kept");
                }
            }
        }
        log::info!("grant-test: ended access: {released} released, {deferred} deferred");
        self.last_retry_ns = env.ev.now_ns();
        self.state = PairState::Ending;
        self.finish_if_done(env);
    }

    fn retry<K: Kit>(&mut self, table: &mut GrantTable<'_>, env: &mut Env<'_, K>) {
        let now = env.ev.now_ns();
        if now.saturating_sub(self.last_retry_ns) < RETRY_NS {
            return;
        }
        self.last_retry_ns = now;
        for r in table.retry_deferred() {
            if let Some(i) = self.deferred.iter().position(|&(g, _)| g == r.gref) {
                let (_, pfn) = self.deferred.swap_remove(i);
                free_frame(env.mm, pfn);
            }
        }
        self.finish_if_done(env);
    }

    fn finish_if_done<K: Kit>(&mut self, env: &mut Env<'_, K>) {
        if !self.deferred.is_empty() {
            let _ = publish(env.xs, &[("state", PairState::Ending.as_str().into())]);
            return;
        }
        if let Some(port) = self.port.take() {
            if let Err(e) = env.ev.close(port) {
                log::warn!("grant-test: closing event channel {port}: {e:?}");
            }
        }
        self.state = PairState::Ended;
        log::info!("grant-test: every grant released, every frame freed");
        if let Err(e) = publish(env.xs, &[("state", PairState::Ended.as_str().into())]) {
            log::warn!("grant-test: cannot publish state: {e:?}");
        }
    }
}

fn free_frame<S: MemmapStorage>(mm: &MemModel<S>, pfn: Pfn) {
    if let Err(e) = mm.free_frames(pfn, 0) {
        log::error!("grant-test: freeing {pfn:?}: {e}");
    }
}
