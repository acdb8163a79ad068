//! The two-guest grant handshake (split-driver style), as state machines over the
//! traits: a **granter** grants N pages of a known pattern to its peer, a **mapper** maps
//! them into its device range, verifies them and writes back a checksum; either side
//! survives the other's death.
//!
//! The toolstack (or the harness) introduces the two by writing the other's domid into
//! each guest's own `data/grant-test/peer` — as libxl writes a split driver's
//! backend/frontend paths. Everything else goes through the two guests' `data/`
//! directories (see [`super::handshake`] for the value formats):
//!
//! ```text
//! granter G                                  mapper M
//! data/grant-test/peer = M (toolstack)       data/grant-test/peer = G (toolstack)
//! perms: G owns, M may read                  perms: M owns, G may read
//! alloc N frames, fill pattern, grant r/o
//! refs, evtchn, state=granted  ───────────▶  (watch G's state) map in batches of 64,
//!                                            verify, bind evtchn;
//! (watch M's state) verified=ok|mismatch ◀── checksum, map-us, state=mapped, notify
//!                                            command=unmap (toolstack) → unmap,
//! end access, free frames, state=ended   ◀── unmap-us, state=unmapped
//! ```
//!
//! The mapper also takes commands in its own `data/grant-test/command` (it clears the key
//! when done): `unmap`, `verify` (read every mapped page again: `pattern-errors`,
//! `verify-runs`), `bench` (unmap and map everything [`BENCH_ROUNDS`] times with
//! hypercalls of 64 and of 1 page: `bench/batch-<n>/{map,unmap}-us` per hypercall).
//!
//! The toolstack may withdraw an introduction by removing (or changing) a guest's `peer`:
//! the granter then ends its grants — the only way it learns of a mapper that died before
//! it ever shared its directory.
//!
//! Peer death: when the other guest's `data/grant-test/state`, once readable, can no
//! longer be read (its xenstore tree is removed when the domain dies; see `read_peer`)
//! the mapper unmaps every slot of the granter
//! (`ForeignMapper::reclaim_domain`; the zombie granter's pages are freed with the last
//! unmap), and the granter ends access to every grant — deferred while Xen still holds
//! a mapping, retried once a second, each frame freed only once released.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use xen_bindings::abi::grant_table::GrantRef;
use xen_bindings::abi::xs_wire::{XsPerm, XsPermKind};
use xen_bindings::traits::{Clock, DomId, EventChannels, GrantOps, Port};

use super::handshake::{self, encode_refs, parse_refs, pattern_byte, Checksum, DIR};
use super::{EndAccess, ForeignMapper, GrantTable, MapRequest, Unmapped, MAX_BATCH};
use crate::mm::{MemModel, MemmapStorage, Pfn};
use crate::xen::xenstore::{XsError, XsOps};

/// Bytes in a page.
pub const PAGE_BYTES: usize = 4096;

/// Most pages one granter grants (what fits one `refs` value).
pub const MAX_PAGES: u32 = handshake::MAX_REFS as u32;

/// First reserved domid (`DOMID_FIRST_RESERVED`): no real peer has it or above.
const DOMID_FIRST_RESERVED: u64 = 0x7ff0;

/// How often the granter retries end-access of grants the peer still maps.
pub const RETRY_NS: u64 = 1_000_000_000;

/// Which side of the handshake this guest plays (command line `grant=give:N` or
/// `grant=map`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Grant `pages` pages to the peer.
    Granter {
        /// Pages to grant, `1..=MAX_PAGES`.
        pages: u32,
        /// Grant read-write (`give:N:rw`) rather than read-only.
        writable: bool,
    },
    /// Map the peer's grants.
    Mapper,
}

impl Role {
    /// Parses the value of `grant=`: `give:N`, `give:N:rw` or `map`.
    pub fn parse(v: &str) -> Result<Role, &'static str> {
        if v == "map" {
            return Ok(Role::Mapper);
        }
        let n = v
            .strip_prefix("give:")
            .ok_or("grant= must be give:N, give:N:rw or map")?;
        let (n, writable) = match n.strip_suffix(":rw") {
            Some(n) => (n, true),
            None => (n, false),
        };
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) || n.starts_with('0') {
            return Err("grant=give:N needs N in 1..=256");
        }
        match n.parse::<u32>() {
            Ok(pages) if (1..=MAX_PAGES).contains(&pages) => Ok(Role::Granter { pages, writable }),
            _ => Err("grant=give:N needs N in 1..=256"),
        }
    }
}

/// Read and write the frames the handshake uses. The kernel goes through its identity
/// map (mapping a device subsection's page tables on first use); tests use the simulator.
pub trait FrameAccess {
    /// Fill our own frame `pfn` with `byte(i)` at offset `i`.
    fn fill(&mut self, pfn: Pfn, byte: &dyn Fn(usize) -> u8);
    /// Store `v` (little-endian) at byte `offset` (8-aligned) of the frame at `pfn` (a
    /// foreign page mapped read-write there).
    fn write_u64(&mut self, pfn: Pfn, offset: usize, v: u64);
    /// Copy the frame at `pfn` (ours, or a foreign page mapped there) into `buf`.
    fn read(&mut self, pfn: Pfn, buf: &mut [u8; PAGE_BYTES]);
}

/// Registers xenstore watches (the client's `watch`, outside [`XsOps`]).
pub trait Watcher {
    /// Watch `path` with `token`.
    fn watch_path(&mut self, path: &str, token: &str) -> Result<(), XsError>;
}

impl<H: EventChannels + xen_bindings::traits::Sched + Clock> Watcher
    for crate::xen::xenstore::XenstoreClient<H>
{
    fn watch_path(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        self.watch(path, token)
    }
}

/// Watch token the handshake's watches use; the kernel ticks the role on its events.
pub const TOKEN: &str = "grant-test";

/// The types a role works with, bundled so that each step names one parameter: the
/// kernel and the host tests each implement it on a marker type.
pub trait Kit {
    /// The memory model's memmap storage.
    type Storage: MemmapStorage;
    /// Xenstore.
    type Xs: XsOps + Watcher;
    /// Grant hypercalls.
    type Grants: GrantOps;
    /// Event channels and the clock.
    type Events: EventChannels + Clock;
    /// Frame contents.
    type Frames: FrameAccess;
}

/// What a role needs from the kernel for one step.
pub struct Env<'a, K: Kit> {
    /// The memory model (frames for the granter, device slots for the mapper).
    pub mm: &'a MemModel<K::Storage>,
    /// Xenstore.
    pub xs: &'a mut K::Xs,
    /// Grant hypercalls.
    pub gnt: &'a mut K::Grants,
    /// Event channels and the clock.
    pub ev: &'a K::Events,
    /// Frame contents.
    pub frames: &'a mut K::Frames,
}

/// Where a role is. Published as `data/grant-test/state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PairState {
    /// No valid `data/grant-test/peer` yet (bad values are refused and counted).
    WaitPeer,
    /// Mapper: waiting for the granter's `state=granted`.
    WaitGrants,
    /// Granter: pages granted, refs published.
    Granted,
    /// Mapper: every page mapped and verified.
    Mapped,
    /// Granter: ending access; some grants are deferred (still mapped by Xen).
    Ending,
    /// Granter: every grant ended and released, frames freed.
    Ended,
    /// Mapper: unmapped on the toolstack's command.
    Unmapped,
    /// Mapper: the granter died; its slots were reclaimed.
    Reclaimed,
    /// Gave up; see the error.
    Failed,
}

impl PairState {
    /// The xenstore spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PairState::WaitPeer => "wait-peer",
            PairState::WaitGrants => "wait-grants",
            PairState::Granted => "granted",
            PairState::Mapped => "mapped",
            PairState::Ending => "ending",
            PairState::Ended => "ended",
            PairState::Unmapped => "unmapped",
            PairState::Reclaimed => "reclaimed",
            PairState::Failed => "failed",
        }
    }
}

/// Parses a peer domid strictly: canonical decimal, below the reserved ids, not `me`.
/// Dom0 is a valid peer (backends usually live there; `grant-bench` maps from it).
pub fn parse_domid(raw: &[u8], me: DomId) -> Result<DomId, &'static str> {
    let s = core::str::from_utf8(raw).map_err(|_| "not UTF-8")?;
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return Err("not a canonical decimal domid");
    }
    match s.parse::<u64>() {
        Ok(d) if d < DOMID_FIRST_RESERVED && d != u64::from(me) => Ok(d as DomId),
        Ok(d) if d == u64::from(me) => Err("the peer is ourselves"),
        _ => Err("domid out of range"),
    }
}

/// Reads `path`: `Ok(None)` when it does not exist.
fn read_opt<X: XsOps>(xs: &mut X, path: &str) -> Result<Option<Vec<u8>>, XsError> {
    match xs.read(path) {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_enoent() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes `data/grant-test/<key>` pairs in order. Callers put `state` last: the peer
/// and the harness act on `state`, so the values it announces are there before it.
fn publish<X: XsOps>(xs: &mut X, fields: &[(&str, String)]) -> Result<(), XsError> {
    for (k, v) in fields {
        xs.write(&format!("{DIR}/{k}"), v.as_bytes())?;
    }
    Ok(())
}

/// Makes our `data/grant-test` readable by `peer` (owner us, others nothing).
fn share_dir<X: XsOps>(xs: &mut X, me: DomId, peer: DomId) -> Result<(), XsError> {
    xs.mkdir(DIR)?;
    xs.set_perms(
        DIR,
        &[
            XsPerm::new(XsPermKind::None, me),
            XsPerm::new(XsPermKind::Read, peer),
        ],
    )
}

/// Reads the peer's `data/grant-test/<key>`: `Ok(None)` when we cannot see it. xenstored
/// answers EACCES, not ENOENT, for a node that is gone when its nearest existing parent
/// is unreadable (`/local/domain` is dom0's): so once a dead peer's tree is removed, its
/// nodes read as EACCES — as they did before it shared them with us.
fn read_peer<X: XsOps>(xs: &mut X, peer: DomId, key: &str) -> Result<Option<Vec<u8>>, XsError> {
    match xs.read(&peer_path(peer, key)) {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_enoent() || e.errno() == Some(xen_bindings::Errno::EACCES) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Logs and publishes why `role` gives up (`error`, then `state=failed`); returns `what`
/// for the role to keep.
fn fail<X: XsOps>(xs: &mut X, role: &str, what: String) -> String {
    log::error!("grant-test: {role}: {what}");
    let _ = publish(
        xs,
        &[
            ("error", what.clone()),
            ("state", PairState::Failed.as_str().into()),
        ],
    );
    what
}

/// The peer's `data/grant-test/<key>`.
fn peer_path(peer: DomId, key: &str) -> String {
    format!("/local/domain/{peer}/{DIR}/{key}")
}

/// The checksum as published: 16 lower-case hex digits.
pub fn encode_checksum(c: u64) -> String {
    format!("{c:016x}")
}

/// Parses a published checksum strictly (exactly 16 lower-case hex digits).
pub fn parse_checksum(raw: &[u8]) -> Option<u64> {
    if raw.len() != 16 || !raw.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u64::from_str_radix(core::str::from_utf8(raw).ok()?, 16).ok()
}

/// What the mapper's `write` command stores in the first 8 bytes of page `i` of a
/// read-write grant ("gnt" and the page index), for the granter to find in its frames.
pub fn stamp(i: u32) -> u64 {
    0x676e_7400_0000_0000 | u64::from(i)
}

/// Rounds of the mapper's `bench` command.
pub const BENCH_ROUNDS: u32 = 20;

fn bench_key(batch: usize, what: &str) -> String {
    format!("bench/batch-{batch}/{what}")
}

/// Reads our `data/grant-test/peer`. A bad value is refused with one log line and
/// `peer-error` / `rejected-peers` in xenstore; the role keeps waiting for a good one.
#[derive(Default)]
struct Introduction {
    rejected: u64,
    last_bad: Option<Vec<u8>>,
}

impl Introduction {
    fn poll<X: XsOps>(&mut self, xs: &mut X, me: DomId) -> Option<DomId> {
        let raw = match read_opt(xs, &format!("{DIR}/peer")) {
            Ok(Some(raw)) => raw,
            Ok(None) => return None,
            Err(e) => {
                log::warn!("grant-test: cannot read {DIR}/peer: {e:?}");
                return None;
            }
        };
        match parse_domid(&raw, me) {
            Ok(p) => Some(p),
            Err(why) => {
                // Polled every half second: say it once per bad value.
                if self.last_bad.as_deref() != Some(&raw[..]) {
                    self.rejected += 1;
                    let what = format!("bad {DIR}/peer {:?}: {why}", String::from_utf8_lossy(&raw));
                    log::warn!("grant-test: {what}; still waiting for a peer");
                    let _ = publish(
                        xs,
                        &[
                            ("peer-error", what),
                            ("rejected-peers", format!("{}", self.rejected)),
                        ],
                    );
                    self.last_bad = Some(raw);
                }
                None
            }
        }
    }
}

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
            env.frames.fill(pfn, &|b| pattern_byte(i as u32, b));
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
    map_ns: u64,
    verify_ns: u64,
    verify_runs: u64,
    bench_runs: u64,
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
            map_ns: 0,
            verify_ns: 0,
            verify_runs: 0,
            bench_runs: 0,
            unmap_ns: 0,
            error: None,
        }
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

    /// One step; called like [`Granter::tick`].
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
        let left = format!("{}", self.unmap_all(mapper, env, MAX_BATCH));
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
        if let Err(why) = self.map_all(mapper, env, MAX_BATCH) {
            self.unmap_all(mapper, env, MAX_BATCH);
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
                let t0 = env.ev.now_ns();
                let left = self.unmap_all(mapper, env, MAX_BATCH);
                self.unmap_ns = env.ev.now_ns().saturating_sub(t0);
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
                        for (batch, map_us, unmap_us) in rows {
                            log::info!(
                                "grant-test: bench: batch {batch}: map {map_us} us, unmap {unmap_us} us per hypercall ({} pages, {BENCH_ROUNDS} rounds)",
                                self.refs.len()
                            );
                            fields.push((bench_key(batch, "map-us"), format!("{map_us}")));
                            fields.push((bench_key(batch, "unmap-us"), format!("{unmap_us}")));
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
            if !handshake::pattern_ok(i as u32, &buf) {
                wrong += 1;
            }
            sum.update(&buf);
        }
        (wrong, sum.value())
    }

    /// Maps every published ref, `batch` per hypercall, into `slots` (in ref order, so
    /// slot `i` holds page `i`). On an error the slots mapped so far stay in `slots`.
    fn map_all<K: Kit>(
        &mut self,
        mapper: &mut ForeignMapper,
        env: &mut Env<'_, K>,
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
                .map_batch(env.mm, env.gnt, &reqs)
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

    /// `bench`: unmap and map all pages again, `rounds` times with batches of
    /// [`MAX_BATCH`] and then one page per hypercall. Returns the mean microseconds per
    /// hypercall as `[(batch, map_us, unmap_us)]`; the pages are mapped again afterwards.
    fn bench<K: Kit>(
        &mut self,
        mapper: &mut ForeignMapper,
        env: &mut Env<'_, K>,
        rounds: u32,
    ) -> Result<Vec<(usize, u64, u64)>, String> {
        let mut out = Vec::new();
        for batch in [MAX_BATCH, 1] {
            let calls = (self.refs.len().div_ceil(batch) as u64 * u64::from(rounds)).max(1);
            let (mut map_ns, mut unmap_ns) = (0, 0);
            for _ in 0..rounds {
                let t0 = env.ev.now_ns();
                let left = self.unmap_all(mapper, env, batch);
                let t1 = env.ev.now_ns();
                if left != 0 {
                    return Err(format!("bench: {left} pages stayed mapped"));
                }
                self.map_all(mapper, env, batch)?;
                map_ns += env.ev.now_ns() - t1;
                unmap_ns += t1 - t0;
            }
            out.push((batch, map_ns / calls / 1000, unmap_ns / calls / 1000));
        }
        Ok(out)
    }

    /// Unmaps every slot; returns how many stay mapped (Xen refused).
    fn unmap_all<K: Kit>(
        &mut self,
        mapper: &mut ForeignMapper,
        env: &mut Env<'_, K>,
        batch: usize,
    ) -> usize {
        let mut left = Vec::new();
        for chunk in self.slots.chunks(batch) {
            match mapper.unmap_batch(env.mm, env.gnt, chunk) {
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

/// Either role, for the kernel's event loop.
pub enum Pair {
    /// The granting side.
    Granter(Granter),
    /// The mapping side.
    Mapper(Mapper),
}

impl Pair {
    /// The role's machine for the guest `me`.
    pub fn new(role: Role, me: DomId) -> Pair {
        match role {
            Role::Granter { pages, writable } => {
                Pair::Granter(Granter::new(me, pages).writable(writable))
            }
            Role::Mapper => Pair::Mapper(Mapper::new(me)),
        }
    }

    /// Where it is.
    pub fn state(&self) -> PairState {
        match self {
            Pair::Granter(g) => g.state(),
            Pair::Mapper(m) => m.state(),
        }
    }

    /// The role's name.
    pub fn role(&self) -> &'static str {
        match self {
            Pair::Granter(_) => "granter",
            Pair::Mapper(_) => "mapper",
        }
    }
}

impl core::fmt::Display for PairState {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_and_domids_parse_strictly() {
        assert_eq!(Role::parse("map"), Ok(Role::Mapper));
        let give = |pages, writable| Ok(Role::Granter { pages, writable });
        assert_eq!(Role::parse("give:64"), give(64, false));
        assert_eq!(Role::parse("give:256"), give(256, false));
        assert_eq!(Role::parse("give:16:rw"), give(16, true));
        for bad in [
            "",
            "give",
            "give:",
            "give:0",
            "give:064",
            "give:257",
            "give:-1",
            "give:1x",
            "give:1:ro",
            "give::rw",
            "give:rw",
            "maps",
        ] {
            assert!(Role::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_domid(b"7", 3), Ok(7));
        assert_eq!(parse_domid(b"0", 3), Ok(0));
        for bad in [
            &b""[..],
            b"3",
            b"07",
            b"+7",
            b"32752",
            b"99999999999999999999",
            b"7 ",
        ] {
            assert!(
                parse_domid(bad, 3).is_err(),
                "{:?}",
                core::str::from_utf8(bad)
            );
        }
        assert_eq!(
            parse_checksum(encode_checksum(0xdead_beef).as_bytes()),
            Some(0xdead_beef)
        );
        for bad in [
            &b"deadbeef"[..],
            b"00000000DEADBEEF",
            b"0000000000000000 ",
            b"g000000000000000",
        ] {
            assert_eq!(parse_checksum(bad), None);
        }
    }
}
