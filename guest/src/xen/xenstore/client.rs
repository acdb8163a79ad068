//! The xenstore client: requests over the ring, watch events, transactions.

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;
use core::ptr::NonNull;

use xen_bindings::abi::xs_wire::{
    XenstoreDomainInterface, XsPerm, XsdSockmsgType, XENSTORE_RING_SIZE,
};
use xen_bindings::traits::{Clock, DomId, EventChannels, Port, Sched};
use xen_bindings::Errno;

use super::codec::{self, Decoder, Message, WatchEvent};
use super::ring::XsRing;
use super::XsError;

/// How long a request may wait for its reply by default (Xen system time).
pub const DEFAULT_TIMEOUT_NS: u64 = 10_000_000_000;
/// Attempts [`XenstoreClient::transaction`] makes before giving up on conflicts.
pub const DEFAULT_TX_ATTEMPTS: u32 = 8;
/// Watch events kept while nobody collects them; older ones are dropped beyond this.
pub const MAX_QUEUED_EVENTS: usize = 256;
/// Requests whose late replies are recognised and dropped.
const MAX_ABANDONED: usize = 32;

/// A transaction id handed out by xenstored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxId(pub u32);

/// Counters of peer misbehaviour the client absorbed without failing a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XsStats {
    /// Late replies to requests that had already failed (timeout etc.), dropped.
    pub stale_replies: u64,
    /// Replies nobody was waiting for, dropped.
    pub unexpected_replies: u64,
    /// Watch events dropped because the queue was full.
    pub dropped_events: u64,
    /// Watch events that did not parse, dropped.
    pub malformed_events: u64,
    /// Messages of unknown type not addressed to a waiting request, skipped.
    pub unknown_messages: u64,
    /// Writes sent with [`XenstoreClient::post_write`] that xenstored refused (logged).
    pub posted_errors: u64,
}

/// One request of [`XenstoreClient::batch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XsReq<'a> {
    /// A node's value (as [`XsOps::read`]).
    Read(&'a str),
    /// Set a node's value (as [`XsOps::write`]).
    Write(&'a str, &'a [u8]),
    /// Register a watch `(path, token)` (as [`XenstoreClient::watch`]).
    Watch(&'a str, &'a str),
}

/// A xenstore connection over the shared ring page.
///
/// `H` provides the event channel (notify / take_pending), `SCHEDOP_poll` and the clock:
/// the kernel's hypercall layer, or `xen_bindings::sim::SimXen` in tests.
pub struct XenstoreClient<H> {
    hv: H,
    ring: XsRing,
    port: Port,
    decoder: Decoder,
    /// Encoded requests not yet (fully) in the ring; `out_pos` bytes are already sent.
    out: Vec<u8>,
    out_pos: usize,
    next_req_id: u32,
    abandoned: VecDeque<u32>,
    /// Writes sent by [`Self::post_write`] whose reply has not come yet: `(req_id, path)`.
    posted: VecDeque<(u32, String)>,
    events: VecDeque<WatchEvent>,
    timeout_ns: u64,
    tx_attempts: u32,
    broken: Option<XsError>,
    stats: XsStats,
    /// Registered watches `(path, token)`, to register again after a resume.
    watches: Vec<(String, String)>,
}

impl<H: EventChannels + Sched + Clock> XenstoreClient<H> {
    /// Connects to xenstored through the shared page and its event channel.
    ///
    /// In the kernel: `page` is the mapped address of the frame `HVM_PARAM_STORE_PFN`
    /// names, `port` the value of `HVM_PARAM_STORE_EVTCHN`.
    ///
    /// # Safety
    /// `page` must point to the mapped, writable xenstore page, stay valid for the
    /// client's lifetime, and not be accessed by anything else in this domain.
    pub unsafe fn new(hv: H, page: NonNull<XenstoreDomainInterface>, port: Port) -> Self {
        XenstoreClient {
            hv,
            // SAFETY: forwarded from this function's contract.
            ring: unsafe { XsRing::new(page) },
            port,
            decoder: Decoder::new(),
            out: Vec::new(),
            out_pos: 0,
            next_req_id: 1,
            abandoned: VecDeque::new(),
            posted: VecDeque::new(),
            events: VecDeque::new(),
            timeout_ns: DEFAULT_TIMEOUT_NS,
            tx_attempts: DEFAULT_TX_ATTEMPTS,
            broken: None,
            stats: XsStats::default(),
            watches: Vec::new(),
        }
    }

    /// Reconnects after the domain resumed in a new domain (restore, migration): the
    /// page is the same frame but zeroed and the event channel is `port` (new). Whatever
    /// was in flight is gone — partial messages, unanswered requests, queued events — so
    /// it is dropped, and every watch is registered again (each fires once at once, which
    /// makes its owner re-read what it watches). Calling it twice is harmless.
    ///
    /// Returns the watches that could not be registered again, with the error.
    pub fn resume(&mut self, port: Port) -> Vec<(String, XsError)> {
        self.port = port;
        self.decoder = Decoder::new();
        self.out.clear();
        self.out_pos = 0;
        self.abandoned.clear();
        self.posted.clear();
        self.events.clear();
        self.broken = None;
        let watches = core::mem::take(&mut self.watches);
        let mut failed = Vec::new();
        for (path, token) in watches {
            match self.watch(&path, &token) {
                Ok(()) => {}
                // Still registered: the connection was not new after all (a second call).
                Err(e) if e.errno() == Some(Errno::EEXIST) => self.watches.push((path, token)),
                Err(e) => failed.push((path, e)),
            }
        }
        failed
    }

    /// The registered watches, `(path, token)`.
    pub fn watches(&self) -> &[(String, String)] {
        &self.watches
    }

    /// Sets how long requests wait for a reply.
    pub fn set_timeout_ns(&mut self, ns: u64) {
        self.timeout_ns = ns;
    }

    /// Sets how many attempts [`Self::transaction`] makes (at least 1).
    pub fn set_transaction_attempts(&mut self, n: u32) {
        self.tx_attempts = n.max(1);
    }

    /// The error that made the connection unusable, if any.
    pub fn broken(&self) -> Option<&XsError> {
        self.broken.as_ref()
    }

    pub fn stats(&self) -> XsStats {
        self.stats
    }

    /// The hypervisor interface (e.g. to poll other ports alongside).
    pub fn hv(&self) -> &H {
        &self.hv
    }

    pub fn port(&self) -> Port {
        self.port
    }

    // ----- transport -----

    fn fail(&mut self, e: XsError) -> XsError {
        if matches!(
            e,
            XsError::Oversized { .. } | XsError::RingCorrupt { .. } | XsError::ServerError(_)
        ) {
            self.broken = Some(e.clone());
        }
        e
    }

    /// Moves queued request bytes into the ring and one ring's worth of reply bytes into
    /// the decoder; notifies xenstored if either moved.
    fn pump(&mut self) -> Result<(), XsError> {
        if let Some(code) = self.ring.server_error() {
            return Err(self.fail(XsError::ServerError(code)));
        }
        let mut wake = false;
        if self.out_pos < self.out.len() {
            let n = self
                .ring
                .write_req(&self.out[self.out_pos..])
                .map_err(|e| self.fail(e))?;
            self.out_pos += n;
            wake |= n > 0;
            if self.out_pos == self.out.len() {
                self.out.clear();
                self.out_pos = 0;
            }
        }
        // Consumed replies need telling only if the ring was full (xenstored may be
        // waiting for room), as Linux's xenbus does: a notify per reply would wake
        // xenstored, and with it dom0, once more for every reply it sends.
        let was_full = self.ring.rsp_available().map_err(|e| self.fail(e))? == XENSTORE_RING_SIZE;
        let mut buf = [0u8; XENSTORE_RING_SIZE];
        let n = self.ring.read_rsp(&mut buf).map_err(|e| self.fail(e))?;
        self.decoder.push(&buf[..n]);
        wake |= n > 0 && was_full;
        if wake {
            // The notify hypercall also orders our index stores before xenstored runs.
            self.hv.notify(self.port).map_err(XsError::Hypercall)?;
        }
        Ok(())
    }

    /// Processes decoded messages: queues watch events, drops stale replies, returns the
    /// reply to `want` (if any) when it arrives.
    fn drain(&mut self, want: Option<u32>) -> Result<Option<Message>, XsError> {
        while let Some(r) = self.decoder.next_message() {
            let m = match r {
                Ok(m) => m,
                Err(codec::DecodeError::UnknownType { type_, req_id }) => {
                    if Some(req_id) == want {
                        return Err(XsError::UnknownType { type_ });
                    }
                    self.forget(req_id);
                    self.stats.unknown_messages += 1;
                    continue;
                }
                Err(e @ codec::DecodeError::Oversized { .. }) => {
                    return Err(self.fail(e.into()));
                }
            };
            if m.type_ == XsdSockmsgType::WatchEvent {
                match codec::parse_watch_event(&m.payload) {
                    Ok(ev) => {
                        if self.events.len() >= MAX_QUEUED_EVENTS {
                            self.events.pop_front();
                            self.stats.dropped_events += 1;
                        }
                        self.events.push_back(ev);
                    }
                    Err(_) => self.stats.malformed_events += 1,
                }
                continue;
            }
            if Some(m.req_id) == want {
                return Ok(Some(m));
            }
            if let Some(i) = self.posted.iter().position(|&(id, _)| id == m.req_id) {
                let (_, path) = self.posted.remove(i).expect("found above");
                if m.type_ == XsdSockmsgType::Error {
                    self.stats.posted_errors += 1;
                    log::warn!(
                        "xenstore: posted write of {path} failed: {:?}",
                        codec::parse_error(&m.payload)
                    );
                }
                continue;
            }
            // xenstored answers a connection's requests in order, so a reply older than
            // the one awaited is a late one, even when its id already fell off the
            // bounded abandoned list (a long pipeline that timed out).
            let older =
                want.is_some_and(|w| (1..=i32::MAX as u32).contains(&w.wrapping_sub(m.req_id)));
            if self.forget(m.req_id) || older {
                self.stats.stale_replies += 1;
                continue;
            }
            match want {
                Some(expected) => {
                    return Err(XsError::UnexpectedReqId {
                        expected,
                        got: m.req_id,
                    })
                }
                None => self.stats.unexpected_replies += 1,
            }
        }
        Ok(None)
    }

    /// Removes `id` from the abandoned list; true if it was there.
    fn forget(&mut self, id: u32) -> bool {
        match self.abandoned.iter().position(|&a| a == id) {
            Some(i) => {
                self.abandoned.remove(i);
                true
            }
            None => false,
        }
    }

    fn abandon(&mut self, id: u32) {
        if self.abandoned.len() >= MAX_ABANDONED {
            self.abandoned.pop_front();
        }
        self.abandoned.push_back(id);
    }

    /// The next request id (never 0: watch events carry req_id 0).
    fn next_id(&mut self) -> u32 {
        let id = self.next_req_id;
        self.next_req_id = self.next_req_id.wrapping_add(1).max(1);
        id
    }

    /// Runs the transport until `done` yields a value or the deadline passes.
    fn wait_until<T>(
        &mut self,
        deadline: u64,
        mut done: impl FnMut(&mut Self) -> Result<Option<T>, XsError>,
    ) -> Result<Option<T>, XsError> {
        loop {
            // Clear the pending bit before looking at the ring: an event raised after
            // this point stays pending and makes the poll below return at once.
            self.hv.take_pending(self.port);
            self.pump()?;
            if let Some(v) = done(self)? {
                return Ok(Some(v));
            }
            if self.ring.rsp_available().map_err(|e| self.fail(e))? > 0 {
                continue;
            }
            if self.hv.now_ns() >= deadline {
                return Ok(None);
            }
            self.hv
                .poll(&[self.port], deadline)
                .map_err(XsError::Hypercall)?;
        }
    }

    /// Sends one request and returns the reply payload (type checked, `XS_ERROR`
    /// turned into an error).
    fn request(
        &mut self,
        type_: XsdSockmsgType,
        tx: u32,
        payload: &[u8],
    ) -> Result<Vec<u8>, XsError> {
        self.pipeline(tx, &[(type_, payload)])
            .pop()
            .expect("one result per request")
    }

    /// Sends every request at once and then collects the replies, in order: one round
    /// trip to xenstored for all of them instead of one each (it answers a connection's
    /// requests in order). Each result is what [`Self::request`] would have returned; an
    /// `XS_ERROR` reply fails only its own request. A transport failure (timeout, ring)
    /// fails the request it happened on and every later one, whose replies are then
    /// recognised and dropped if they still come.
    fn pipeline(
        &mut self,
        tx: u32,
        reqs: &[(XsdSockmsgType, &[u8])],
    ) -> Vec<Result<Vec<u8>, XsError>> {
        if self.broken.is_some() {
            return reqs.iter().map(|_| Err(XsError::Disconnected)).collect();
        }
        let mut sent: Vec<Result<u32, XsError>> = Vec::with_capacity(reqs.len());
        for &(type_, payload) in reqs {
            let id = self.next_id();
            sent.push(codec::encode(type_, id, tx, payload).map(|bytes| {
                self.out.extend_from_slice(&bytes);
                id
            }));
        }
        let deadline = self.hv.now_ns().saturating_add(self.timeout_ns);
        let mut transport: Option<XsError> = None;
        let mut results = Vec::with_capacity(reqs.len());
        for (&(type_, _), id) in reqs.iter().zip(sent) {
            let id = match id {
                Ok(id) => id,
                Err(e) => {
                    results.push(Err(e));
                    continue;
                }
            };
            if let Some(e) = &transport {
                self.abandon(id);
                results.push(Err(e.clone()));
                continue;
            }
            let reply = match self.wait_until(deadline, |c| c.drain(Some(id))) {
                Ok(Some(m)) => m,
                Ok(None) => {
                    self.abandon(id);
                    transport = Some(XsError::Timeout);
                    results.push(Err(XsError::Timeout));
                    continue;
                }
                Err(e) => {
                    // The reply may still come; recognise and drop it then.
                    self.abandon(id);
                    transport = Some(e.clone());
                    results.push(Err(e));
                    continue;
                }
            };
            results.push(if reply.type_ == XsdSockmsgType::Error {
                Err(codec::parse_error(&reply.payload))
            } else if reply.type_ != type_ {
                Err(XsError::UnexpectedType {
                    expected: type_.as_u32(),
                    got: reply.type_.as_u32(),
                })
            } else {
                Ok(reply.payload)
            });
        }
        results
    }

    /// Sends a write and returns without waiting for its reply, for a status node on a
    /// hot path (the balloon's `state = working` as a step starts, which would otherwise
    /// cost the step a round trip to xenstored in dom0). xenstored answers in order, so
    /// the reply is collected by whichever later call reads the ring; a refusal is then
    /// logged and counted in [`XsStats::posted_errors`], not lost. `Err` only when the
    /// write could not be sent (bad path, broken connection, ring failure).
    pub fn post_write(&mut self, path: &str, value: &[u8]) -> Result<(), XsError> {
        if self.broken.is_some() {
            return Err(XsError::Disconnected);
        }
        codec::check_arg(path, "path")?;
        let id = self.next_id();
        let bytes = codec::encode(
            XsdSockmsgType::Write,
            id,
            0,
            &codec::write_payload(path, value),
        )?;
        self.out.extend_from_slice(&bytes);
        if self.posted.len() >= MAX_ABANDONED {
            // Replies this late are only recognised and dropped.
            let (old, _) = self.posted.pop_front().expect("not empty");
            self.abandon(old);
        }
        self.posted.push_back((id, path.into()));
        self.pump()
    }

    /// Posted writes whose reply has not been collected yet.
    pub fn posted_writes(&self) -> usize {
        self.posted.len()
    }

    // ----- watches -----

    /// Registers a watch on `path` (and everything below it). xenstored fires one event
    /// at once, then one per change. Use a token unique to this watch.
    pub fn watch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        self.batch(&[XsReq::Watch(path, token)])
            .pop()
            .expect("one result per request")
            .map(drop)
    }

    /// Reads, writes and watch registrations sent together, in one round trip, applied
    /// by xenstored in the order given (so a write listed after a watch happens after the
    /// watch is registered). One result each — a read's value, empty for the others; a
    /// failed one does not stop the rest.
    pub fn batch(&mut self, reqs: &[XsReq<'_>]) -> Vec<Result<Vec<u8>, XsError>> {
        let payloads = reqs
            .iter()
            .map(|r| match *r {
                XsReq::Read(path) => codec::check_arg(path, "path")
                    .map(|()| (XsdSockmsgType::Read, codec::strings_payload(&[path]))),
                XsReq::Write(path, value) => codec::check_arg(path, "path")
                    .map(|()| (XsdSockmsgType::Write, codec::write_payload(path, value))),
                XsReq::Watch(path, token) => codec::check_arg(path, "path")
                    .and_then(|()| codec::check_arg(token, "token"))
                    .map(|()| {
                        (
                            XsdSockmsgType::Watch,
                            codec::strings_payload(&[path, token]),
                        )
                    }),
            })
            .collect();
        let replies = run_checked(self, payloads);
        let mut out = Vec::with_capacity(reqs.len());
        for (req, reply) in reqs.iter().zip(replies) {
            let r = match req {
                XsReq::Read(_) => reply,
                _ => reply.and_then(|r| codec::parse_ok(&r)).map(|()| Vec::new()),
            };
            if let (Ok(_), XsReq::Watch(path, token)) = (&r, req) {
                if !self.watches.iter().any(|(p, t)| p == path && t == token) {
                    self.watches.push(((*path).into(), (*token).into()));
                }
            }
            out.push(r);
        }
        out
    }

    /// Removes a watch and drops its queued events (matched by token).
    pub fn unwatch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        codec::check_arg(path, "path")?;
        codec::check_arg(token, "token")?;
        let r = self.request(
            XsdSockmsgType::Unwatch,
            0,
            &codec::strings_payload(&[path, token]),
        )?;
        codec::parse_ok(&r)?;
        self.events.retain(|e| e.token != token);
        self.watches.retain(|(p, t)| !(p == path && t == token));
        Ok(())
    }

    /// A queued watch event, or one that has already arrived in the ring; never waits.
    pub fn take_watch_event(&mut self) -> Result<Option<WatchEvent>, XsError> {
        if self.events.is_empty() && self.broken.is_none() {
            self.pump()?;
            self.drain(None)?;
        }
        Ok(self.events.pop_front())
    }

    /// The next watch event, waiting up to `timeout_ns` for one (`Ok(None)` on timeout).
    pub fn wait_watch_event(&mut self, timeout_ns: u64) -> Result<Option<WatchEvent>, XsError> {
        if let Some(e) = self.events.pop_front() {
            return Ok(Some(e));
        }
        if self.broken.is_some() {
            return Err(XsError::Disconnected);
        }
        let deadline = self.hv.now_ns().saturating_add(timeout_ns);
        self.wait_until(deadline, |c| {
            c.drain(None)?;
            Ok(c.events.pop_front())
        })
    }

    /// Watch events waiting to be collected.
    pub fn pending_watch_events(&self) -> usize {
        self.events.len()
    }

    // ----- transactions -----

    pub fn transaction_start(&mut self) -> Result<TxId, XsError> {
        let r = self.request(XsdSockmsgType::TransactionStart, 0, b"\0")?;
        match codec::parse_u32(&r)? {
            0 => Err(XsError::Malformed("transaction id 0")),
            id => Ok(TxId(id)),
        }
    }

    /// Ends a transaction: `commit` applies it (EAGAIN: it conflicted, nothing applied),
    /// otherwise it is discarded.
    pub fn transaction_end(&mut self, tx: TxId, commit: bool) -> Result<(), XsError> {
        let arg: &[u8] = if commit { b"T\0" } else { b"F\0" };
        let r = self.request(XsdSockmsgType::TransactionEnd, tx.0, arg)?;
        codec::parse_ok(&r)
    }

    /// Operations inside an already started transaction.
    pub fn in_transaction(&mut self, tx: TxId) -> Transaction<'_, H> {
        Transaction { client: self, tx }
    }

    /// Runs `f` in a transaction and commits it, starting over (a bounded number of
    /// times, see [`Self::set_transaction_attempts`]) when xenstored answers EAGAIN.
    /// If `f` fails, the transaction is discarded and its error returned (EAGAIN from an
    /// operation inside also retries). `f` may run several times: keep side effects
    /// outside it.
    pub fn transaction<T>(
        &mut self,
        mut f: impl FnMut(&mut Transaction<'_, H>) -> Result<T, XsError>,
    ) -> Result<T, XsError> {
        for _ in 0..self.tx_attempts {
            let tx = self.transaction_start()?;
            let r = f(&mut self.in_transaction(tx));
            match r {
                Ok(v) => match self.transaction_end(tx, true) {
                    Ok(()) => return Ok(v),
                    Err(e) if e.is_eagain() => continue,
                    Err(e) => return Err(e),
                },
                Err(e) => {
                    // Discard; the closure's error is the one worth reporting.
                    let _ = self.transaction_end(tx, false);
                    if !e.is_eagain() {
                        return Err(e);
                    }
                }
            }
        }
        Err(XsError::TransactionConflict {
            attempts: self.tx_attempts,
        })
    }

    /// `XS_GET_DOMAIN_PATH`: where `domid`'s home is (`/local/domain/<domid>`).
    pub fn get_domain_path(&mut self, domid: DomId) -> Result<String, XsError> {
        let d = alloc::format!("{domid}");
        let r = self.request(
            XsdSockmsgType::GetDomainPath,
            0,
            &codec::strings_payload(&[&d]),
        )?;
        codec::parse_string(&r)
    }
}

/// Node operations; implemented by the client (outside any transaction) and by
/// [`Transaction`]. Relative paths are resolved by xenstored against
/// `/local/domain/<own domid>`.
pub trait XsOps {
    /// Sends a node request (in this context's transaction) and returns the reply payload.
    fn node_request(&mut self, type_: XsdSockmsgType, payload: &[u8]) -> Result<Vec<u8>, XsError>;

    /// Sends several node requests in one round trip (see `XenstoreClient::pipeline`);
    /// one result each, in order.
    fn node_requests(&mut self, reqs: &[(XsdSockmsgType, &[u8])]) -> Vec<Result<Vec<u8>, XsError>>;

    /// The values of several nodes, read in one round trip; one result each.
    fn read_many(&mut self, paths: &[&str]) -> Vec<Result<Vec<u8>, XsError>> {
        let payloads = paths
            .iter()
            .map(|p| {
                codec::check_arg(p, "path")
                    .map(|()| (XsdSockmsgType::Read, codec::strings_payload(&[p])))
            })
            .collect();
        run_checked(self, payloads)
    }

    /// Sets several nodes in one round trip (xenstored applies them in order); one result
    /// each. Outside a transaction a reader may see some of them set before the rest.
    fn write_many(&mut self, nodes: &[(&str, &[u8])]) -> Vec<Result<(), XsError>> {
        let payloads = nodes
            .iter()
            .map(|(path, value)| {
                codec::check_arg(path, "path")
                    .map(|()| (XsdSockmsgType::Write, codec::write_payload(path, value)))
            })
            .collect();
        run_checked(self, payloads)
            .into_iter()
            .map(|r| r.and_then(|reply| codec::parse_ok(&reply)))
            .collect()
    }

    /// The value of a node.
    fn read(&mut self, path: &str) -> Result<Vec<u8>, XsError> {
        codec::check_arg(path, "path")?;
        self.node_request(XsdSockmsgType::Read, &codec::strings_payload(&[path]))
    }

    /// The value of a node, as UTF-8 text.
    fn read_string(&mut self, path: &str) -> Result<String, XsError> {
        String::from_utf8(self.read(path)?).map_err(|_| XsError::NotUtf8)
    }

    /// Whether a node exists (and is readable by us).
    fn exists(&mut self, path: &str) -> Result<bool, XsError> {
        match self.read(path) {
            Ok(_) => Ok(true),
            Err(e) if e.is_enoent() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Sets a node's value, creating it and missing parents.
    fn write(&mut self, path: &str, value: &[u8]) -> Result<(), XsError> {
        codec::check_arg(path, "path")?;
        let p = codec::write_payload(path, value);
        codec::parse_ok(&self.node_request(XsdSockmsgType::Write, &p)?)
    }

    /// Creates a node (and parents) with an empty value; fine if it exists.
    fn mkdir(&mut self, path: &str) -> Result<(), XsError> {
        codec::check_arg(path, "path")?;
        let r = self.node_request(XsdSockmsgType::Mkdir, &codec::strings_payload(&[path]))?;
        codec::parse_ok(&r)
    }

    /// Removes a node and everything below it; fine if it is already gone.
    fn rm(&mut self, path: &str) -> Result<(), XsError> {
        codec::check_arg(path, "path")?;
        let r = self.node_request(XsdSockmsgType::Rm, &codec::strings_payload(&[path]))?;
        codec::parse_ok(&r)
    }

    /// The names of a node's children. A listing too big for one reply (E2BIG) is
    /// fetched in parts with `XS_DIRECTORY_PART`.
    fn directory(&mut self, path: &str) -> Result<Vec<String>, XsError> {
        codec::check_arg(path, "path")?;
        match self.node_request(XsdSockmsgType::Directory, &codec::strings_payload(&[path])) {
            Ok(r) => codec::parse_directory(&r),
            Err(XsError::Xs(Errno::E2BIG)) => directory_by_parts(self, path),
            Err(e) => Err(e),
        }
    }

    /// A node's permissions: owner entry first.
    fn get_perms(&mut self, path: &str) -> Result<Vec<XsPerm>, XsError> {
        codec::check_arg(path, "path")?;
        let r = self.node_request(XsdSockmsgType::GetPerms, &codec::strings_payload(&[path]))?;
        codec::parse_perms(&r)
    }

    /// Replaces a node's permissions (we must own it).
    fn set_perms(&mut self, path: &str, perms: &[XsPerm]) -> Result<(), XsError> {
        codec::check_arg(path, "path")?;
        let p = codec::set_perms_payload(path, perms)?;
        codec::parse_ok(&self.node_request(XsdSockmsgType::SetPerms, &p)?)
    }
}

/// Sends the requests whose arguments passed their checks in one round trip; the others
/// keep their check error. One result per request, in order.
fn run_checked<O: XsOps + ?Sized>(
    o: &mut O,
    payloads: Vec<Result<(XsdSockmsgType, Vec<u8>), XsError>>,
) -> Vec<Result<Vec<u8>, XsError>> {
    let reqs: Vec<(XsdSockmsgType, &[u8])> = payloads
        .iter()
        .filter_map(|p| p.as_ref().ok().map(|(t, p)| (*t, p.as_slice())))
        .collect();
    let mut replies = o.node_requests(&reqs).into_iter();
    payloads
        .iter()
        .map(|p| match p {
            Ok(_) => replies.next().expect("one reply per request sent"),
            Err(e) => Err(e.clone()),
        })
        .collect()
}

/// Times a part-wise listing starts over because the directory changed meanwhile.
pub const DIRECTORY_PART_RESTARTS: u32 = 8;
/// Largest listing accepted in parts (a hostile daemon could otherwise stream forever).
pub const DIRECTORY_MAX_BYTES: usize = 1 << 20;

fn directory_by_parts<O: XsOps + ?Sized>(o: &mut O, path: &str) -> Result<Vec<String>, XsError> {
    'restart: for _ in 0..DIRECTORY_PART_RESTARTS {
        let mut names = Vec::new();
        let mut generation: Option<Vec<u8>> = None;
        let mut offset = 0usize;
        loop {
            let off = alloc::format!("{offset}");
            let r = o.node_request(
                XsdSockmsgType::DirectoryPart,
                &codec::strings_payload(&[path, &off]),
            )?;
            let part = codec::parse_directory_part(&r)?;
            match &generation {
                None => generation = Some(part.generation.to_vec()),
                Some(g) if g.as_slice() != part.generation => continue 'restart,
                Some(_) => {}
            }
            if part.names.is_empty() && !part.last {
                return Err(XsError::Malformed("directory part makes no progress"));
            }
            offset += part.len;
            if offset > DIRECTORY_MAX_BYTES {
                return Err(XsError::Malformed("directory listing too large"));
            }
            for n in part.names {
                names.push(String::from_utf8(n.to_vec()).map_err(|_| XsError::NotUtf8)?);
            }
            if part.last {
                return Ok(names);
            }
        }
    }
    // The directory kept changing under us.
    Err(XsError::Xs(Errno::EAGAIN))
}

impl<H: EventChannels + Sched + Clock> XsOps for XenstoreClient<H> {
    fn node_request(&mut self, type_: XsdSockmsgType, payload: &[u8]) -> Result<Vec<u8>, XsError> {
        self.request(type_, 0, payload)
    }

    fn node_requests(&mut self, reqs: &[(XsdSockmsgType, &[u8])]) -> Vec<Result<Vec<u8>, XsError>> {
        self.pipeline(0, reqs)
    }
}

/// Node operations inside a transaction: they see the transaction's view and take effect
/// together at commit.
pub struct Transaction<'a, H> {
    client: &'a mut XenstoreClient<H>,
    tx: TxId,
}

impl<H> Transaction<'_, H> {
    pub fn id(&self) -> TxId {
        self.tx
    }
}

impl<H: EventChannels + Sched + Clock> XsOps for Transaction<'_, H> {
    fn node_request(&mut self, type_: XsdSockmsgType, payload: &[u8]) -> Result<Vec<u8>, XsError> {
        self.client.request(type_, self.tx.0, payload)
    }

    fn node_requests(&mut self, reqs: &[(XsdSockmsgType, &[u8])]) -> Vec<Result<Vec<u8>, XsError>> {
        self.client.pipeline(self.tx.0, reqs)
    }
}
