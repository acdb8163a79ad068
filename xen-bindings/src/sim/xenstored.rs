//! A simulated xenstored serving one guest over the shared ring, plus a "toolstack" (dom0)
//! side for tests.
//!
//! Follows C xenstored (4.17, `tools/xenstore/xenstored_core.c`, `xenstored_watch.c`)
//! where the guest can tell the difference: relative paths resolve against
//! `/local/domain/<domid>`, writes create missing parents, new nodes inherit the parent's
//! permissions (owned by the creating domain), `XS_WATCH` fires an initial event after its
//! reply, watch events caused by a request are queued before its reply, `XS_RM` of a
//! missing node whose parent exists succeeds, a transaction conflicts (EAGAIN on commit)
//! when anything it read or wrote changed meanwhile.
//!
//! Errors leak nothing the caller may not see (`get_node` / `errno_from_parents`): a node
//! the caller lacks the permission for is EACCES, and a missing node is ENOENT only if the
//! caller has the permission on the nearest existing ancestor, EACCES otherwise. So a
//! domain reading below another domain's removed home gets EACCES (`/local/domain` is
//! dom0's, unreadable to others), not ENOENT.
//!
//! Watch events are filtered like `watch_permitted`: the watcher sees an event for a node
//! it could read, or whose parent it could read, or (a permission change) that it could
//! read before. Removing a subtree fires, children before parents, one event per removed
//! node while its permissions are still there (`delnode_sub`): for the root of the removal
//! watches on it and its ancestors, for a node below only watches on exactly that node.
//!
//! Fault injection ([`XsFaults`]) covers what a broken or hostile daemon can do to a
//! client: forced EAGAIN on commit, corrupted or oversized replies, arbitrary error strings,
//! replies trickling in one byte at a time, a silent daemon.

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::format;
use alloc::string::String;
use alloc::string::ToString;
use alloc::vec;
use alloc::vec::Vec;

use super::xs_ring::{PageField, ServerRing, SharedPage};
use crate::abi::xs_wire::{
    xs_error_from_errno, XsPerm, XsPermKind, XsdSockmsg, XsdSockmsgType, XENSTORE_ABS_PATH_MAX,
    XENSTORE_ERROR_PROTO, XENSTORE_ERROR_RINGIDX, XENSTORE_PAYLOAD_MAX, XENSTORE_REL_PATH_MAX,
    XENSTORE_SERVER_FEATURE_ERROR, XSD_SOCKMSG_SIZE,
};
use crate::traits::DomId;
use crate::Errno;

/// Open transactions a domain may hold (xenstored's default `quota_max_transaction`).
pub const MAX_TRANSACTIONS: usize = 10;
/// Watches a domain may hold (xenstored's default `quota_nb_watch_per_domain`).
pub const MAX_WATCHES: usize = 128;

/// A node of the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub value: Vec<u8>,
    pub perms: Vec<XsPerm>,
    /// Bumped (from a store-wide counter) on every change; transactions compare it.
    generation: u64,
}

type Tree = BTreeMap<String, Node>;

/// How the next reply to the guest is damaged (one entry per reply, in order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplyFault {
    /// The reply becomes `XS_ERROR` carrying this string (NUL appended).
    Error(String),
    /// The reply carries this `req_id`.
    ReqId(u32),
    /// The reply carries this raw type.
    Type(u32),
    /// The reply's payload is replaced by these bytes.
    Payload(Vec<u8>),
    /// Only a header claiming this payload length is sent (e.g. > XENSTORE_PAYLOAD_MAX).
    HeaderOnlyWithLen(u32),
    /// The request is processed but no reply is sent.
    Drop,
}

/// Fault injection knobs; tests set them through [`super::SimXen::xs_faults`].
#[derive(Clone, Debug, Default)]
pub struct XsFaults {
    /// The next N commits (`XS_TRANSACTION_END` with "T") fail with EAGAIN.
    pub commit_eagain: u32,
    /// Write at most one byte into `rsp` per service step (each guest notify or poll).
    pub byte_at_a_time: bool,
    /// The daemon neither reads requests nor writes replies.
    pub stalled: bool,
    /// The daemon works only when the guest notifies it (or the toolstack changes the
    /// store), not whenever the guest polls: as C xenstored, which sleeps until an event.
    /// A client that empties a full reply ring without notifying then waits forever.
    pub only_on_notify: bool,
    /// Applied to the next replies (not to watch events), one each.
    pub reply_faults: VecDeque<ReplyFault>,
}

/// One request the daemon processed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    pub type_: u32,
    pub req_id: u32,
    pub tx_id: u32,
    pub payload: Vec<u8>,
}

#[derive(Clone, Debug)]
struct Watch {
    /// As the guest gave it (relative, absolute or `@special`).
    path: String,
    /// Resolved.
    abs: String,
    token: String,
}

#[derive(Clone, Debug)]
struct Transaction {
    /// The store as it was at start.
    base: Tree,
    /// The transaction's own view.
    tree: Tree,
    /// Nodes read (or whose absence was observed) inside the transaction.
    read: BTreeSet<String>,
    /// Watch events to fire at commit (xenstored's `queue_watches`): the node and whether
    /// only watches on exactly it fire. A node is queued once; a non-exact event replaces
    /// an exact one.
    fire: Vec<(String, bool)>,
}

impl Transaction {
    fn queue_watch(&mut self, abs: &str, exact: bool) {
        match self.fire.iter_mut().find(|(p, _)| p == abs) {
            Some(q) => q.1 &= exact,
            None => self.fire.push((abs.to_string(), exact)),
        }
    }
}

/// What a node operation changed, for the watch events it causes.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Change {
    /// Nothing (a read, or `XS_MKDIR` of an existing node).
    None,
    /// The node was written or created.
    Written,
    /// The node's permissions were replaced; these are the old ones.
    Perms(Vec<XsPerm>),
    /// The subtree went: every removed node with its permissions, children before their
    /// parent, the root of the removal last.
    Removed(Vec<(String, Vec<XsPerm>)>),
}

/// What an operation needs on its node: the `perm` argument of xenstored's `get_node`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Need {
    /// `XS_PERM_READ`: read, directory, get-perms.
    Read,
    /// `XS_PERM_WRITE`: write, mkdir, rm.
    Write,
    /// `XS_PERM_WRITE | XS_PERM_OWNER`: set-perms.
    Own,
}

impl Need {
    /// Whether `dom` has all of it on a node carrying `perms` (`get_node`: `(perm_for_conn
    /// & perm) == perm`; only the owner and dom0 get `XS_PERM_OWNER`).
    fn granted(self, perms: &[XsPerm], dom: DomId) -> bool {
        match self {
            Need::Read => access(perms, dom).can_read(),
            Need::Write => access(perms, dom).can_write(),
            Need::Own => dom == 0 || perms.first().is_some_and(|p| p.domid == dom),
        }
    }

    /// Whether `dom` has any of it on an ancestor carrying `perms` (`errno_from_parents`:
    /// `parent_perm & perm`).
    fn granted_any(self, perms: &[XsPerm], dom: DomId) -> bool {
        match self {
            Need::Read => access(perms, dom).can_read(),
            Need::Write | Need::Own => access(perms, dom).can_write(),
        }
    }
}

/// The simulated daemon.
pub struct Xenstored {
    domid: DomId,
    tree: Tree,
    generation: u64,
    watches: Vec<Watch>,
    transactions: BTreeMap<u32, Transaction>,
    next_tx: u32,
    page: SharedPage,
    inbuf: Vec<u8>,
    outq: VecDeque<u8>,
    /// Set when the guest broke the protocol; the daemon then stops serving it.
    broken: Option<&'static str>,
    pub faults: XsFaults,
    requests: Vec<RequestRecord>,
}

fn perm(kind: XsPermKind, domid: DomId) -> XsPerm {
    XsPerm::new(kind, domid)
}

/// What `dom` may do with a node carrying `perms`.
fn access(perms: &[XsPerm], dom: DomId) -> XsPermKind {
    let Some(first) = perms.first() else {
        return XsPermKind::None;
    };
    if dom == 0 || first.domid == dom {
        return XsPermKind::Both;
    }
    perms[1..]
        .iter()
        .find(|p| p.domid == dom)
        .map_or(first.kind, |p| p.kind)
}

fn parent_of(abs: &str) -> Option<&str> {
    if abs == "/" {
        return None;
    }
    match abs.rfind('/') {
        Some(0) => Some("/"),
        Some(i) => Some(&abs[..i]),
        None => None,
    }
}

fn is_under(path: &str, dir: &str) -> bool {
    path == dir
        || dir == "/"
        || (path.len() > dir.len() && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/')
}

/// xenstored's `watch_permitted` for watcher `dom`: an event for `abs` is sent if `dom`
/// could read it under `old` (its permissions before a change), or could read the node
/// (`perms_of(abs)`; a node that is gone counts as unreadable) or its parent. `perms_of`
/// gives a node's permissions as the store is when the event fires.
fn watch_permitted<'a>(
    dom: DomId,
    abs: &str,
    old: Option<&[XsPerm]>,
    perms_of: impl Fn(&str) -> Option<&'a [XsPerm]>,
) -> bool {
    let readable = |p: &[XsPerm]| access(p, dom).can_read();
    if old.is_some_and(readable) {
        return true;
    }
    let Some(node) = perms_of(abs) else {
        return false;
    };
    readable(node) || perms_of(parent_of(abs).unwrap_or("/")).is_some_and(readable)
}

fn ok_reply() -> Vec<u8> {
    b"OK\0".to_vec()
}

impl Xenstored {
    /// A daemon for guest `domid` whose ring indices start at `ring_start`, with the
    /// nodes libxl creates for a PVH domU.
    pub fn new(domid: DomId, ring_start: u32) -> Self {
        let page = SharedPage::new(ring_start);
        // Relaxed: set before the guest is given the page.
        page.field(PageField::ServerFeatures).store(
            XENSTORE_SERVER_FEATURE_ERROR,
            core::sync::atomic::Ordering::Relaxed,
        );
        let mut x = Xenstored {
            domid,
            tree: Tree::new(),
            generation: 0,
            watches: Vec::new(),
            transactions: BTreeMap::new(),
            next_tx: 1,
            page,
            inbuf: Vec::new(),
            outq: VecDeque::new(),
            broken: None,
            faults: XsFaults::default(),
            requests: Vec::new(),
        };
        x.tree.insert(
            "/".into(),
            Node {
                value: Vec::new(),
                perms: vec![perm(XsPermKind::None, 0)],
                generation: 0,
            },
        );
        let home = x.home();
        let ro = vec![perm(XsPermKind::None, 0), perm(XsPermKind::Read, domid)];
        let rw = vec![perm(XsPermKind::None, domid)];
        for (path, value, perms) in [
            // Created by dom0, so inheriting the root's "n0" (xenstored's `manual_node`):
            // no other domain can read them.
            ("/local", "", vec![perm(XsPermKind::None, 0)]),
            ("/local/domain", "", vec![perm(XsPermKind::None, 0)]),
            (home.as_str(), "", ro.clone()),
        ] {
            x.toolstack_write_perms(path, value.as_bytes(), perms);
        }
        let domid_s = domid.to_string();
        for (rel, value, perms) in [
            ("name", "guest", &ro),
            ("domid", domid_s.as_str(), &ro),
            ("memory", "", &ro),
            ("memory/static-max", "262144", &ro),
            ("memory/target", "262144", &ro),
            ("control", "", &ro),
            ("control/shutdown", "", &rw),
            ("control/feature-poweroff", "", &rw),
            ("control/feature-reboot", "", &rw),
            ("data", "", &rw),
            ("device", "", &ro),
        ] {
            let p = format!("{home}/{rel}");
            x.toolstack_write_perms(&p, value.as_bytes(), perms.clone());
        }
        x
    }

    /// The guest resumed in a new domain (restore, migration): the store page is the
    /// same frame but zeroed (`xc_clear_domain_page`, so all four indices are 0), the
    /// connection is new — the guest's watches, open transactions and half-read or
    /// unanswered messages are gone. The tree stays (the toolstack rewrote it).
    pub fn reconnect(&mut self) {
        use core::sync::atomic::Ordering;
        for f in [
            PageField::ReqCons,
            PageField::ReqProd,
            PageField::RspCons,
            PageField::RspProd,
        ] {
            // Relaxed: the guest is suspended; it sees the page only after resuming.
            self.page.field(f).store(0, Ordering::Relaxed);
        }
        self.watches.clear();
        self.transactions.clear();
        self.inbuf.clear();
        self.outq.clear();
        self.broken = None;
    }

    /// `/local/domain/<domid>`.
    pub fn home(&self) -> String {
        format!("/local/domain/{}", self.domid)
    }

    pub fn page(&self) -> &SharedPage {
        &self.page
    }

    /// Requests served so far, oldest first.
    pub fn requests(&self) -> &[RequestRecord] {
        &self.requests
    }

    /// Why the daemon stopped serving the guest, if it did.
    pub fn broken(&self) -> Option<&'static str> {
        self.broken
    }

    /// Watches the guest holds, as (path as given, token).
    pub fn watches(&self) -> Vec<(String, String)> {
        self.watches
            .iter()
            .map(|w| (w.path.clone(), w.token.clone()))
            .collect()
    }

    /// Open transaction ids.
    pub fn open_transactions(&self) -> Vec<u32> {
        self.transactions.keys().copied().collect()
    }

    /// Bytes queued for the guest that are not in the ring yet.
    pub fn queued_out(&self) -> usize {
        self.outq.len()
    }

    // ----- paths -----

    /// Resolves a node path for `dom` (relative to `/local/domain/<dom>`), validating it
    /// like xenstored (characters, no `//`, no trailing `/`, length).
    fn resolve(&self, p: &[u8]) -> Result<String, Errno> {
        let s = core::str::from_utf8(p).map_err(|_| Errno::EINVAL)?;
        if s.is_empty()
            || !s
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"-/_@".contains(&c))
        {
            return Err(Errno::EINVAL);
        }
        let abs = if s.starts_with('/') {
            if s.len() > XENSTORE_ABS_PATH_MAX {
                return Err(Errno::EINVAL);
            }
            s.to_string()
        } else {
            if s.len() > XENSTORE_REL_PATH_MAX {
                return Err(Errno::EINVAL);
            }
            format!("{}/{}", self.home(), s)
        };
        if abs.contains("//") || (abs.len() > 1 && abs.ends_with('/')) {
            return Err(Errno::EINVAL);
        }
        Ok(abs)
    }

    /// How a changed node appears in an event for `w`: relative if the watch was.
    fn event_path(&self, w: &Watch, abs: &str) -> String {
        if w.path.starts_with('/') || w.path.starts_with('@') {
            return abs.to_string();
        }
        let home = self.home();
        abs.strip_prefix(home.as_str())
            .and_then(|r| r.strip_prefix('/'))
            .map_or_else(|| abs.to_string(), str::to_string)
    }

    // ----- tree operations (on the store or a transaction's view) -----

    fn bump(&mut self) -> u64 {
        self.generation += 1;
        self.generation
    }

    /// xenstored's `get_node`: the node if `dom` has `need` on it, else the error that
    /// tells `dom` no more than it may know: EACCES for a node it lacks the permission
    /// for; for a missing node, ENOENT if it has the permission on the nearest existing
    /// ancestor and EACCES if not (`errno_from_parents`, `ask_parents`).
    fn get_node<'a>(tree: &'a Tree, dom: DomId, abs: &str, need: Need) -> Result<&'a Node, Errno> {
        let err = match tree.get(abs) {
            Some(n) if need.granted(&n.perms, dom) => return Ok(n),
            Some(_) => Errno::EACCES,
            None => Errno::ENOENT,
        };
        // `ask_parents` starts at the parent (of "/": "/" itself) and walks up to the
        // first node that exists; with none at all it assumes no permission.
        let mut cur = abs;
        let ancestor = loop {
            let p = parent_of(cur).unwrap_or("/");
            if let Some(n) = tree.get(p) {
                break Some(n);
            }
            if p == "/" {
                break None;
            }
            cur = p;
        };
        match ancestor {
            Some(a) if need.granted_any(&a.perms, dom) => Err(err),
            _ => Err(Errno::EACCES),
        }
    }

    fn op_read(tree: &Tree, dom: DomId, abs: &str) -> Result<Vec<u8>, Errno> {
        Ok(Self::get_node(tree, dom, abs, Need::Read)?.value.clone())
    }

    fn op_directory(tree: &Tree, dom: DomId, abs: &str) -> Result<Vec<String>, Errno> {
        Self::get_node(tree, dom, abs, Need::Read)?;
        let prefix = if abs == "/" {
            "/".to_string()
        } else {
            format!("{abs}/")
        };
        Ok(tree
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter_map(|(k, _)| {
                let rest = &k[prefix.len()..];
                (!rest.is_empty() && !rest.contains('/')).then(|| rest.to_string())
            })
            .collect())
    }

    /// `XS_DIRECTORY_PART` ("path\0offset\0"): the listing's generation, then the names
    /// (NUL-terminated) from byte `offset` of the full listing that fit in one reply; the
    /// last part carries an extra NUL.
    fn op_directory_part(
        tree: &Tree,
        dom: DomId,
        abs: &str,
        rest: &[u8],
    ) -> Result<Vec<u8>, Errno> {
        let a = strings(rest, 1)?;
        let offset: usize = core::str::from_utf8(a[0])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(Errno::EINVAL)?;
        let names = Self::op_directory(tree, dom, abs)?;
        // Changes whenever a child is added (new, higher generation) or removed (count).
        let prefix = format!("{abs}/");
        let max_gen = names
            .iter()
            .filter_map(|n| tree.get(&format!("{prefix}{n}")).map(|c| c.generation))
            .chain(tree.get(abs).map(|n| n.generation))
            .max()
            .unwrap_or(0);
        let mut r = format!("{}\0", (max_gen << 20) | names.len() as u64).into_bytes();
        let mut pos = 0;
        let mut last = true;
        for n in &names {
            let len = n.len() + 1;
            if pos >= offset {
                // Room for this name plus the final end marker?
                if r.len() + len + 1 > XENSTORE_PAYLOAD_MAX {
                    last = false;
                    break;
                }
                r.extend_from_slice(n.as_bytes());
                r.push(0);
            }
            pos += len;
        }
        if offset > pos && last {
            return Err(Errno::EINVAL);
        }
        if last {
            r.push(0);
        }
        Ok(r)
    }

    /// Writes (or with `value == None`, makes sure it exists), creating parents.
    /// Returns whether anything changed.
    fn op_write(
        tree: &mut Tree,
        generation: u64,
        dom: DomId,
        abs: &str,
        value: Option<&[u8]>,
    ) -> Result<bool, Errno> {
        match Self::get_node(tree, dom, abs, Need::Write) {
            Ok(_) => {
                let Some(n) = tree.get_mut(abs) else {
                    return Err(Errno::EIO);
                };
                return Ok(match value {
                    Some(v) => {
                        n.value = v.to_vec();
                        n.generation = generation;
                        true
                    }
                    None => false,
                });
            }
            // Missing, and `dom` may write the nearest existing ancestor: create it.
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(e),
        }
        // The nearest existing ancestor lends its permissions.
        let mut missing = vec![abs.to_string()];
        let mut cur = abs;
        let ancestor = loop {
            let p = parent_of(cur).ok_or(Errno::ENOENT)?;
            if let Some(n) = tree.get(p) {
                break n;
            }
            missing.push(p.to_string());
            cur = p;
        };
        let mut perms = ancestor.perms.clone();
        if dom != 0 {
            perms[0].domid = dom;
        }
        for (i, p) in missing.iter().rev().enumerate() {
            let last = i == missing.len() - 1;
            tree.insert(
                p.clone(),
                Node {
                    value: if last {
                        value.unwrap_or_default().to_vec()
                    } else {
                        Vec::new()
                    },
                    perms: perms.clone(),
                    generation,
                },
            );
        }
        Ok(true)
    }

    /// Removes a subtree (`do_rm`); returns the removed nodes with their permissions,
    /// children before their parent and `abs` last (empty if there was nothing).
    fn op_rm(tree: &mut Tree, dom: DomId, abs: &str) -> Result<Vec<(String, Vec<XsPerm>)>, Errno> {
        match Self::get_node(tree, dom, abs, Need::Write) {
            Ok(_) => {}
            // Gone already (and `dom` may write the nearest ancestor): fine if the parent
            // exists.
            Err(Errno::ENOENT) => {
                return match parent_of(abs).and_then(|p| tree.get(p)) {
                    Some(_) => Ok(Vec::new()),
                    None => Err(Errno::ENOENT),
                };
            }
            Err(e) => return Err(e),
        }
        if abs == "/" {
            return Err(Errno::EINVAL);
        }
        let prefix = format!("{abs}/");
        // Every descendant sorts after its ancestors, so reversed: children first.
        let mut gone: Vec<String> = tree
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        gone.reverse();
        gone.push(abs.to_string());
        Ok(gone
            .into_iter()
            .filter_map(|k| tree.remove(&k).map(|n| (k, n.perms)))
            .collect())
    }

    fn op_get_perms(tree: &Tree, dom: DomId, abs: &str) -> Result<Vec<XsPerm>, Errno> {
        Ok(Self::get_node(tree, dom, abs, Need::Read)?.perms.clone())
    }

    fn op_set_perms(
        tree: &mut Tree,
        generation: u64,
        dom: DomId,
        abs: &str,
        perms: Vec<XsPerm>,
    ) -> Result<Vec<XsPerm>, Errno> {
        if perms.is_empty() {
            return Err(Errno::EINVAL);
        }
        // Only the owner (or dom0) may change permissions.
        Self::get_node(tree, dom, abs, Need::Own)?;
        let n = tree.get_mut(abs).ok_or(Errno::EIO)?;
        n.generation = generation;
        Ok(core::mem::replace(&mut n.perms, perms))
    }

    // ----- watches -----

    /// Queues the guest's events for `abs` (`fire_watches` once permitted): with `exact`
    /// (a node removed below the root of a removal) watches on exactly `abs`, otherwise
    /// watches on `abs` or an ancestor.
    fn fire(&mut self, abs: &str, exact: bool) {
        let events: Vec<_> = self
            .watches
            .iter()
            .filter(|w| {
                if exact {
                    w.abs == abs
                } else {
                    is_under(abs, &w.abs)
                }
            })
            .map(|w| (self.event_path(w, abs), w.token.clone()))
            .collect();
        for (path, token) in events {
            self.queue_event(&path, &token);
        }
    }

    /// Fires what `change` of `abs` causes, with the store already changed.
    fn fire_change(&mut self, abs: &str, change: Change) {
        let dom = self.domid;
        match change {
            Change::None => {}
            Change::Written => {
                if watch_permitted(dom, abs, None, |p| Some(&self.tree.get(p)?.perms)) {
                    self.fire(abs, false);
                }
            }
            Change::Perms(old) => {
                if watch_permitted(dom, abs, Some(&old), |p| Some(&self.tree.get(p)?.perms)) {
                    self.fire(abs, false);
                }
            }
            Change::Removed(gone) => {
                // `delnode_sub` fires while the node and its parent are still there.
                let before: BTreeMap<&str, &[XsPerm]> = gone
                    .iter()
                    .map(|(p, perms)| (p.as_str(), &perms[..]))
                    .collect();
                let fire: Vec<(&str, bool)> = gone
                    .iter()
                    .filter(|(p, _)| {
                        watch_permitted(dom, p, None, |q| {
                            before
                                .get(q)
                                .copied()
                                .or_else(|| Some(&self.tree.get(q)?.perms[..]))
                        })
                    })
                    .map(|(p, _)| (p.as_str(), p != abs))
                    .collect();
                for (p, exact) in fire {
                    self.fire(p, exact);
                }
            }
        }
    }

    fn queue_event(&mut self, path: &str, token: &str) {
        let mut payload = Vec::with_capacity(path.len() + token.len() + 2);
        payload.extend_from_slice(path.as_bytes());
        payload.push(0);
        payload.extend_from_slice(token.as_bytes());
        payload.push(0);
        self.queue_msg(XsdSockmsgType::WatchEvent.as_u32(), 0, 0, &payload);
    }

    fn queue_msg(&mut self, type_: u32, req_id: u32, tx_id: u32, payload: &[u8]) {
        let h = XsdSockmsg {
            type_,
            req_id,
            tx_id,
            len: payload.len() as u32,
        };
        self.outq.extend(h.to_bytes());
        self.outq.extend(payload);
    }

    /// Fires a special watch path such as `@releaseDomain`, as the toolstack would.
    pub fn fire_special(&mut self, special: &str) {
        let events: Vec<_> = self
            .watches
            .iter()
            .filter(|w| w.abs == special)
            .map(|w| (w.path.clone(), w.token.clone()))
            .collect();
        for (p, t) in events {
            self.queue_event(&p, &t);
        }
    }

    // ----- toolstack (dom0) side -----

    /// `xenstore-write` from dom0: creates parents, fires watches. `path` is absolute or
    /// relative to the guest's home.
    pub fn toolstack_write(&mut self, path: &str, value: &[u8]) -> Result<(), Errno> {
        let abs = self.resolve(path.as_bytes())?;
        let g = self.bump();
        Self::op_write(&mut self.tree, g, 0, &abs, Some(value))?;
        self.fire_change(&abs, Change::Written);
        Ok(())
    }

    fn toolstack_write_perms(&mut self, path: &str, value: &[u8], perms: Vec<XsPerm>) {
        self.toolstack_write(path, value)
            .and_then(|()| self.toolstack_set_perms(path, perms))
            .expect("initial tree is valid");
    }

    /// `xenstore-read` from dom0.
    pub fn toolstack_read(&self, path: &str) -> Result<Vec<u8>, Errno> {
        let abs = self.resolve(path.as_bytes())?;
        Self::op_read(&self.tree, 0, &abs)
    }

    /// `xenstore-mkdir` from dom0.
    pub fn toolstack_mkdir(&mut self, path: &str) -> Result<(), Errno> {
        let abs = self.resolve(path.as_bytes())?;
        let g = self.bump();
        if Self::op_write(&mut self.tree, g, 0, &abs, None)? {
            self.fire_change(&abs, Change::Written);
        }
        Ok(())
    }

    /// `xenstore-rm` from dom0: fires the guest's watches on the removed nodes it may
    /// see, and on their ancestors.
    pub fn toolstack_rm(&mut self, path: &str) -> Result<(), Errno> {
        let abs = self.resolve(path.as_bytes())?;
        let gone = Self::op_rm(&mut self.tree, 0, &abs)?;
        if !gone.is_empty() {
            self.bump();
            self.fire_change(&abs, Change::Removed(gone));
        }
        Ok(())
    }

    /// `xenstore-ls` (one level) from dom0.
    pub fn toolstack_directory(&self, path: &str) -> Result<Vec<String>, Errno> {
        let abs = self.resolve(path.as_bytes())?;
        Self::op_directory(&self.tree, 0, &abs)
    }

    /// `xenstore-chmod` from dom0.
    pub fn toolstack_set_perms(&mut self, path: &str, perms: Vec<XsPerm>) -> Result<(), Errno> {
        let abs = self.resolve(path.as_bytes())?;
        let g = self.bump();
        let old = Self::op_set_perms(&mut self.tree, g, 0, &abs, perms)?;
        self.fire_change(&abs, Change::Perms(old));
        Ok(())
    }

    /// The permissions of a node, read as dom0.
    pub fn toolstack_get_perms(&self, path: &str) -> Result<Vec<XsPerm>, Errno> {
        let abs = self.resolve(path.as_bytes())?;
        Self::op_get_perms(&self.tree, 0, &abs)
    }

    // ----- the ring -----

    /// One service step: take the guest's request bytes, answer complete requests, move
    /// queued output into `rsp`. Returns whether the guest should get an event.
    pub fn service(&mut self) -> bool {
        if self.faults.stalled || self.broken.is_some() {
            return false;
        }
        let mut notify = false;
        let ring = ServerRing::new(&self.page);
        match ring.read_req(&mut self.inbuf, usize::MAX) {
            Ok(n) => notify |= n > 0,
            Err(_) => {
                self.fail(XENSTORE_ERROR_RINGIDX, "guest req indices are corrupt");
                return true;
            }
        }
        while self.inbuf.len() >= XSD_SOCKMSG_SIZE {
            let mut hb = [0u8; XSD_SOCKMSG_SIZE];
            hb.copy_from_slice(&self.inbuf[..XSD_SOCKMSG_SIZE]);
            let h = XsdSockmsg::from_bytes(&hb);
            if h.len as usize > XENSTORE_PAYLOAD_MAX {
                self.fail(XENSTORE_ERROR_PROTO, "guest sent an oversized request");
                return true;
            }
            let total = XSD_SOCKMSG_SIZE + h.len as usize;
            if self.inbuf.len() < total {
                break;
            }
            let payload: Vec<u8> = self.inbuf[XSD_SOCKMSG_SIZE..total].to_vec();
            self.inbuf.drain(..total);
            self.requests.push(RequestRecord {
                type_: h.type_,
                req_id: h.req_id,
                tx_id: h.tx_id,
                payload: payload.clone(),
            });
            self.handle(h, &payload);
        }
        notify |= self.flush();
        notify
    }

    /// Moves queued output into `rsp` as space (and the trickle fault) allows.
    fn flush(&mut self) -> bool {
        if self.outq.is_empty() {
            return false;
        }
        let max = if self.faults.byte_at_a_time {
            1
        } else {
            usize::MAX
        };
        let (a, b) = self.outq.as_slices();
        let ring = ServerRing::new(&self.page);
        let mut done = 0;
        let mut corrupt = false;
        for part in [a, b] {
            match ring.write_rsp(part, max - done) {
                Ok(n) => {
                    done += n;
                    if n < part.len() {
                        break;
                    }
                }
                Err(_) => {
                    corrupt = true;
                    break;
                }
            }
            if done == max {
                break;
            }
        }
        if corrupt {
            self.fail(XENSTORE_ERROR_RINGIDX, "guest rsp indices are corrupt");
            return true;
        }
        self.outq.drain(..done);
        done > 0
    }

    fn fail(&mut self, code: u32, why: &'static str) {
        self.broken = Some(why);
        // Relaxed: a status word the guest polls; nothing else is published with it.
        self.page
            .field(PageField::Error)
            .store(code, core::sync::atomic::Ordering::Relaxed);
    }

    fn reply(&mut self, h: XsdSockmsg, result: Result<Vec<u8>, Errno>) {
        let (mut type_, mut payload) = match result {
            Ok(p) => (h.type_, p),
            Err(e) => {
                let mut s = xs_error_from_errno(e)
                    .unwrap_or("EINVAL")
                    .as_bytes()
                    .to_vec();
                s.push(0);
                (XsdSockmsgType::Error.as_u32(), s)
            }
        };
        let mut req_id = h.req_id;
        match self.faults.reply_faults.pop_front() {
            None => {}
            Some(ReplyFault::Error(s)) => {
                type_ = XsdSockmsgType::Error.as_u32();
                payload = s.into_bytes();
                payload.push(0);
            }
            Some(ReplyFault::ReqId(r)) => req_id = r,
            Some(ReplyFault::Type(t)) => type_ = t,
            Some(ReplyFault::Payload(p)) => payload = p,
            Some(ReplyFault::HeaderOnlyWithLen(len)) => {
                let bad = XsdSockmsg {
                    type_,
                    req_id,
                    tx_id: h.tx_id,
                    len,
                };
                self.outq.extend(bad.to_bytes());
                return;
            }
            Some(ReplyFault::Drop) => return,
        }
        self.queue_msg(type_, req_id, h.tx_id, &payload);
    }

    fn handle(&mut self, h: XsdSockmsg, payload: &[u8]) {
        use XsdSockmsgType as T;
        let Some(t) = T::from_u32(h.type_) else {
            self.reply(h, Err(Errno::EINVAL));
            return;
        };
        let result = match t {
            T::Read
            | T::Directory
            | T::DirectoryPart
            | T::GetPerms
            | T::Write
            | T::Mkdir
            | T::Rm
            | T::SetPerms => self.node_op(t, h.tx_id, payload),
            T::Watch => self.do_watch(payload),
            T::Unwatch => self.do_unwatch(payload),
            T::TransactionStart => self.do_tx_start(h.tx_id, payload),
            T::TransactionEnd => self.do_tx_end(h.tx_id, payload),
            T::GetDomainPath => strings(payload, 1).and_then(|a| {
                let d: DomId = core::str::from_utf8(a[0])
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or(Errno::EINVAL)?;
                let mut r = format!("/local/domain/{d}").into_bytes();
                r.push(0);
                Ok(r)
            }),
            T::ResetWatches => {
                self.watches.clear();
                Ok(ok_reply())
            }
            T::Introduce | T::Release | T::Resume | T::SetTarget | T::Control => Err(Errno::EACCES),
            T::IsDomainIntroduced => Err(Errno::ENOSYS),
            T::WatchEvent | T::Error => Err(Errno::EINVAL),
        };
        let watch = (t == T::Watch && result.is_ok()).then(|| strings(payload, 2));
        self.reply(h, result);
        // Like xenstored, the initial event of a new watch follows its reply.
        if let Some(Ok(a)) = watch {
            let (p, tok) = (lossy(a[0]), lossy(a[1]));
            self.queue_event(&p, &tok);
        }
    }

    fn node_op(&mut self, t: XsdSockmsgType, tx_id: u32, payload: &[u8]) -> Result<Vec<u8>, Errno> {
        use XsdSockmsgType as T;
        let dom = self.domid;
        // "path\0" then: the value (WRITE, not NUL-terminated), permission strings
        // (SET_PERMS), or nothing.
        let i = payload.iter().position(|&b| b == 0).ok_or(Errno::EINVAL)?;
        let (path, rest) = (&payload[..i], &payload[i + 1..]);
        if !matches!(t, T::Write | T::SetPerms | T::DirectoryPart) && !rest.is_empty() {
            return Err(Errno::EINVAL);
        }
        let abs = self.resolve(path)?;
        let g = self.bump();
        // Inside a transaction, operate on its view; changes fire watches at commit.
        if tx_id != 0 {
            let tx = self.transactions.get_mut(&tx_id).ok_or(Errno::ENOENT)?;
            let r = Self::apply(t, &mut tx.tree, g, dom, &abs, rest);
            tx.read.insert(abs.clone());
            if let Some(p) = parent_of(&abs) {
                tx.read.insert(p.to_string());
            }
            let (reply, change) = r?;
            match change {
                Change::None => {}
                Change::Written | Change::Perms(_) => tx.queue_watch(&abs, false),
                Change::Removed(gone) => {
                    for (p, _) in &gone {
                        tx.queue_watch(p, *p != abs);
                    }
                }
            }
            return Ok(reply);
        }
        let (reply, change) = Self::apply(t, &mut self.tree, g, dom, &abs, rest)?;
        self.fire_change(&abs, change);
        Ok(reply)
    }

    /// Runs one node operation on `tree`; returns the reply payload and what changed.
    fn apply(
        t: XsdSockmsgType,
        tree: &mut Tree,
        g: u64,
        dom: DomId,
        abs: &str,
        rest: &[u8],
    ) -> Result<(Vec<u8>, Change), Errno> {
        use XsdSockmsgType as T;
        let written = |changed| {
            if changed {
                Change::Written
            } else {
                Change::None
            }
        };
        Ok(match t {
            T::Read => (Self::op_read(tree, dom, abs)?, Change::None),
            T::Directory => {
                let mut r = Vec::new();
                for name in Self::op_directory(tree, dom, abs)? {
                    r.extend_from_slice(name.as_bytes());
                    r.push(0);
                }
                if r.len() > XENSTORE_PAYLOAD_MAX {
                    return Err(Errno::E2BIG);
                }
                (r, Change::None)
            }
            T::DirectoryPart => (Self::op_directory_part(tree, dom, abs, rest)?, Change::None),
            T::GetPerms => {
                let mut r = Vec::new();
                for p in Self::op_get_perms(tree, dom, abs)? {
                    r.extend_from_slice(p.to_string().as_bytes());
                    r.push(0);
                }
                (r, Change::None)
            }
            T::Write => (
                ok_reply(),
                written(Self::op_write(tree, g, dom, abs, Some(rest))?),
            ),
            T::Mkdir => (
                ok_reply(),
                written(Self::op_write(tree, g, dom, abs, None)?),
            ),
            T::Rm => {
                let gone = Self::op_rm(tree, dom, abs)?;
                let change = if gone.is_empty() {
                    Change::None
                } else {
                    Change::Removed(gone)
                };
                (ok_reply(), change)
            }
            T::SetPerms => {
                let mut perms = Vec::new();
                for s in strings_at_least(rest, 0)? {
                    perms.push(XsPerm::parse(s).ok_or(Errno::EINVAL)?);
                }
                let old = Self::op_set_perms(tree, g, dom, abs, perms)?;
                (ok_reply(), Change::Perms(old))
            }
            _ => return Err(Errno::EINVAL),
        })
    }

    fn do_watch(&mut self, payload: &[u8]) -> Result<Vec<u8>, Errno> {
        let a = strings(payload, 2)?;
        let path = core::str::from_utf8(a[0]).map_err(|_| Errno::EINVAL)?;
        let token = core::str::from_utf8(a[1]).map_err(|_| Errno::EINVAL)?;
        let abs = if path.starts_with('@') {
            path.to_string()
        } else {
            self.resolve(a[0])?
        };
        if self
            .watches
            .iter()
            .any(|w| w.abs == abs && w.token == token)
        {
            return Err(Errno::EEXIST);
        }
        if self.watches.len() >= MAX_WATCHES {
            return Err(Errno::E2BIG);
        }
        self.watches.push(Watch {
            path: path.to_string(),
            abs,
            token: token.to_string(),
        });
        Ok(ok_reply())
    }

    fn do_unwatch(&mut self, payload: &[u8]) -> Result<Vec<u8>, Errno> {
        let a = strings(payload, 2)?;
        let path = core::str::from_utf8(a[0]).map_err(|_| Errno::EINVAL)?;
        let abs = if path.starts_with('@') {
            path.to_string()
        } else {
            self.resolve(a[0])?
        };
        let before = self.watches.len();
        self.watches
            .retain(|w| !(w.abs == abs && w.token.as_bytes() == a[1]));
        if self.watches.len() == before {
            return Err(Errno::ENOENT);
        }
        Ok(ok_reply())
    }

    fn do_tx_start(&mut self, tx_id: u32, payload: &[u8]) -> Result<Vec<u8>, Errno> {
        if tx_id != 0 {
            return Err(Errno::EBUSY);
        }
        strings(payload, 1)?;
        if self.transactions.len() >= MAX_TRANSACTIONS {
            return Err(Errno::ENOSPC);
        }
        let id = self.next_tx;
        self.next_tx = self.next_tx.wrapping_add(1).max(1);
        self.transactions.insert(
            id,
            Transaction {
                base: self.tree.clone(),
                tree: self.tree.clone(),
                read: BTreeSet::new(),
                fire: Vec::new(),
            },
        );
        let mut r = id.to_string().into_bytes();
        r.push(0);
        Ok(r)
    }

    fn do_tx_end(&mut self, tx_id: u32, payload: &[u8]) -> Result<Vec<u8>, Errno> {
        let a = strings(payload, 1)?;
        let commit = match a[0] {
            b"T" => true,
            b"F" => false,
            _ => return Err(Errno::EINVAL),
        };
        let tx = self.transactions.remove(&tx_id).ok_or(Errno::ENOENT)?;
        if !commit {
            return Ok(ok_reply());
        }
        if self.faults.commit_eagain > 0 {
            self.faults.commit_eagain -= 1;
            return Err(Errno::EAGAIN);
        }
        // Keys the transaction changed.
        let keys: BTreeSet<&String> = tx.base.keys().chain(tx.tree.keys()).collect();
        let written: Vec<String> = keys
            .into_iter()
            .filter(|k| tx.base.get(*k) != tx.tree.get(*k))
            .cloned()
            .collect();
        // Conflict: anything it read or wrote differs now from when it started.
        let conflict = tx
            .read
            .iter()
            .chain(written.iter())
            .any(|k| self.tree.get(k) != tx.base.get(k));
        if conflict {
            return Err(Errno::EAGAIN);
        }
        for k in &written {
            match tx.tree.get(k) {
                Some(n) => {
                    self.tree.insert(k.clone(), n.clone());
                }
                None => {
                    self.tree.remove(k);
                }
            }
            self.bump();
        }
        // Queued events fire now (`finalize_transaction`), judged by the committed store
        // and by each node's permissions when the transaction first saw it.
        let dom = self.domid;
        for (k, exact) in &tx.fire {
            let old = tx.base.get(k).map(|n| &n.perms[..]);
            if watch_permitted(dom, k, old, |p| Some(&self.tree.get(p)?.perms)) {
                self.fire(k, *exact);
            }
        }
        Ok(ok_reply())
    }
}

/// Exactly `n` NUL-terminated strings.
fn strings(payload: &[u8], n: usize) -> Result<Vec<&[u8]>, Errno> {
    let v = strings_at_least(payload, n)?;
    if v.len() != n {
        return Err(Errno::EINVAL);
    }
    Ok(v)
}

/// At least `n` NUL-terminated strings (the payload must end in NUL unless empty).
fn strings_at_least(payload: &[u8], n: usize) -> Result<Vec<&[u8]>, Errno> {
    if payload.is_empty() {
        return if n == 0 {
            Ok(Vec::new())
        } else {
            Err(Errno::EINVAL)
        };
    }
    let body = payload.strip_suffix(&[0]).ok_or(Errno::EINVAL)?;
    let v: Vec<&[u8]> = body.split(|&b| b == 0).collect();
    if v.len() < n {
        return Err(Errno::EINVAL);
    }
    Ok(v)
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::xs_wire::XENSTORE_RING_SIZE;

    fn x() -> Xenstored {
        Xenstored::new(3, 0)
    }

    #[test]
    fn initial_tree_has_the_guest_home_with_libxl_perms() {
        let x = x();
        assert_eq!(x.toolstack_read("/local/domain/3/domid").unwrap(), b"3");
        assert_eq!(
            x.toolstack_get_perms("/local/domain/3").unwrap(),
            vec![perm(XsPermKind::None, 0), perm(XsPermKind::Read, 3)]
        );
        assert_eq!(
            x.toolstack_get_perms("data").unwrap(),
            vec![perm(XsPermKind::None, 3)]
        );
    }

    #[test]
    fn access_rules_follow_owner_then_list_then_default() {
        let p = [perm(XsPermKind::Read, 5), perm(XsPermKind::Write, 7)];
        assert_eq!(access(&p, 5), XsPermKind::Both);
        assert_eq!(access(&p, 0), XsPermKind::Both);
        assert_eq!(access(&p, 7), XsPermKind::Write);
        assert_eq!(access(&p, 9), XsPermKind::Read);
        assert_eq!(access(&[], 9), XsPermKind::None);
    }

    #[test]
    fn paths_resolve_and_bad_ones_are_rejected() {
        let x = x();
        assert_eq!(x.resolve(b"data/a").unwrap(), "/local/domain/3/data/a");
        assert_eq!(x.resolve(b"/").unwrap(), "/");
        for bad in [&b""[..], b"/a/", b"a//b", b"a b", b"\xff", b"a\0b"] {
            assert_eq!(x.resolve(bad), Err(Errno::EINVAL), "{bad:?}");
        }
        let long = vec![b'a'; XENSTORE_REL_PATH_MAX + 1];
        assert_eq!(x.resolve(&long), Err(Errno::EINVAL));
    }

    #[test]
    fn write_creates_parents_with_inherited_perms_and_rm_removes_subtrees() {
        let mut t = x().tree;
        assert_eq!(
            Xenstored::op_write(&mut t, 9, 3, "/local/domain/3/data/a/b", Some(b"v")),
            Ok(true)
        );
        assert_eq!(
            t["/local/domain/3/data/a"].perms,
            vec![perm(XsPermKind::None, 3)]
        );
        assert_eq!(
            Xenstored::op_write(&mut t, 9, 3, "/local/domain/3/x", Some(b"v")),
            Err(Errno::EACCES),
            "home is read-only for the guest"
        );
        assert_eq!(
            Xenstored::op_rm(&mut t, 3, "/local/domain/3/data/a")
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            Xenstored::op_rm(&mut t, 3, "/local/domain/3/data/a"),
            Ok(vec![])
        );
        assert_eq!(
            Xenstored::op_rm(&mut t, 3, "/local/domain/3/data/a/b"),
            Err(Errno::ENOENT)
        );
        assert_eq!(Xenstored::op_rm(&mut t, 0, "/"), Err(Errno::EINVAL));
    }

    #[test]
    fn missing_nodes_are_enoent_only_if_the_nearest_ancestor_grants_the_access() {
        let mut t = x().tree;
        let get = |t: &Tree, dom, abs, need| Xenstored::get_node(t, dom, abs, need).map(|_| ());
        // Our data is ours: below it ENOENT, however deep.
        assert_eq!(
            get(&t, 3, "/local/domain/3/data/x/y", Need::Read),
            Err(Errno::ENOENT)
        );
        // /local/domain is dom0's ("n0"): EACCES for us, ENOENT for dom0.
        assert_eq!(
            get(&t, 3, "/local/domain/7/data/x", Need::Read),
            Err(Errno::EACCES)
        );
        assert_eq!(
            get(&t, 0, "/local/domain/7/data/x", Need::Read),
            Err(Errno::ENOENT)
        );
        assert_eq!(get(&t, 3, "/", Need::Read), Err(Errno::EACCES));
        // A write-only ancestor: reads below it EACCES, writes and set-perms ENOENT.
        let wo = vec![perm(XsPermKind::None, 0), perm(XsPermKind::Write, 3)];
        Xenstored::op_write(&mut t, 9, 0, "/local/domain/3/wo", Some(b"")).unwrap();
        Xenstored::op_set_perms(&mut t, 9, 0, "/local/domain/3/wo", wo).unwrap();
        let below = "/local/domain/3/wo/x";
        assert_eq!(get(&t, 3, below, Need::Read), Err(Errno::EACCES));
        assert_eq!(get(&t, 3, below, Need::Write), Err(Errno::ENOENT));
        assert_eq!(get(&t, 3, below, Need::Own), Err(Errno::ENOENT));
        // An existing node: EACCES without the access; owning needs the owner.
        assert_eq!(get(&t, 3, "/local/domain/3/wo", Need::Write), Ok(()));
        assert_eq!(
            get(&t, 3, "/local/domain/3/wo", Need::Read),
            Err(Errno::EACCES)
        );
        assert_eq!(
            get(&t, 3, "/local/domain/3/wo", Need::Own),
            Err(Errno::EACCES)
        );
        assert_eq!(get(&t, 0, "/local/domain/3/wo", Need::Own), Ok(()));
    }

    #[test]
    fn rm_returns_children_before_parents_and_the_root_last() {
        let mut t = x().tree;
        for k in ["a/b/c", "a/b-c", "a/d"] {
            let abs = format!("/local/domain/3/data/{k}");
            Xenstored::op_write(&mut t, 9, 3, &abs, Some(b"")).unwrap();
        }
        let gone: Vec<String> = Xenstored::op_rm(&mut t, 3, "/local/domain/3/data/a")
            .unwrap()
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        assert_eq!(gone.len(), 5);
        assert_eq!(gone.last().unwrap(), "/local/domain/3/data/a");
        for (i, p) in gone.iter().enumerate() {
            assert!(
                gone[i + 1..].iter().all(|q| !is_under(q, p) || q == p),
                "{p} before its descendants in {gone:?}"
            );
        }
    }

    #[test]
    fn watch_permission_is_the_old_perms_the_node_or_its_parent() {
        let none = vec![perm(XsPermKind::None, 7)];
        let read = vec![perm(XsPermKind::None, 7), perm(XsPermKind::Read, 3)];
        let parent_readable: BTreeMap<&str, Vec<XsPerm>> =
            [("/d", read.clone()), ("/d/n", none.clone())].into();
        let neither: BTreeMap<&str, Vec<XsPerm>> =
            [("/d", none.clone()), ("/d/n", none.clone())].into();
        let permitted = |m: &BTreeMap<&str, Vec<XsPerm>>, dom, abs, old: Option<&[XsPerm]>| {
            watch_permitted(dom, abs, old, |p| m.get(p).map(Vec::as_slice))
        };
        assert!(permitted(&parent_readable, 3, "/d/n", None));
        assert!(!permitted(&neither, 3, "/d/n", None));
        // A permission change: readable before is enough.
        assert!(permitted(&neither, 3, "/d/n", Some(&read)));
        assert!(!permitted(&neither, 3, "/d/n", Some(&none)));
        // A node that is gone is not readable, even below a readable parent.
        assert!(!permitted(&parent_readable, 3, "/d/gone", None));
        assert!(permitted(&neither, 0, "/d/n", None), "dom0 reads all");
    }

    #[test]
    fn payload_string_splitting() {
        assert_eq!(strings(b"a\0b\0", 2).unwrap(), vec![&b"a"[..], b"b"]);
        assert_eq!(strings(b"a\0b", 2), Err(Errno::EINVAL));
        assert_eq!(strings(b"a\0", 2), Err(Errno::EINVAL));
        assert_eq!(strings_at_least(b"", 0).unwrap().len(), 0);
    }

    /// Plays the guest: appends `bytes` to `req` (must fit) and publishes them.
    fn guest_send(x: &Xenstored, bytes: &[u8]) {
        use core::sync::atomic::Ordering;
        let prod = x.page.field(PageField::ReqProd).load(Ordering::Relaxed);
        let p = x.page.as_ptr() as *mut u8;
        for (i, &b) in bytes.iter().enumerate() {
            let off = crate::abi::xs_wire::mask_xenstore_idx(prod.wrapping_add(i as u32));
            // SAFETY: off < XENSTORE_RING_SIZE: a slot of `req` in the live page.
            unsafe { p.add(off).write_volatile(b) };
        }
        x.page
            .field(PageField::ReqProd)
            .store(prod.wrapping_add(bytes.len() as u32), Ordering::Release);
    }

    /// Plays the guest: takes everything in `rsp`.
    fn guest_recv(x: &Xenstored) -> Vec<u8> {
        use core::sync::atomic::Ordering;
        let prod = x.page.field(PageField::RspProd).load(Ordering::Acquire);
        let cons = x.page.field(PageField::RspCons).load(Ordering::Relaxed);
        let p = x.page.as_ptr() as *const u8;
        let v = (0..prod.wrapping_sub(cons))
            .map(|i| {
                let off = crate::abi::xs_wire::mask_xenstore_idx(cons.wrapping_add(i));
                // SAFETY: a slot of `rsp` (offset 1024..2048) in the live page.
                unsafe { p.add(XENSTORE_RING_SIZE + off).read_volatile() }
            })
            .collect();
        x.page
            .field(PageField::RspCons)
            .store(prod, Ordering::Release);
        v
    }

    fn msg(t: XsdSockmsgType, req_id: u32, tx_id: u32, payload: &[u8]) -> Vec<u8> {
        let h = XsdSockmsg {
            type_: t.as_u32(),
            req_id,
            tx_id,
            len: payload.len() as u32,
        };
        let mut v = h.to_bytes().to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn requests_split_across_service_steps_and_wrapping_indices_are_answered() {
        let mut x = Xenstored::new(3, u32::MAX - 5);
        let req = msg(XsdSockmsgType::Read, 9, 0, b"domid\0");
        guest_send(&x, &req[..7]);
        assert!(x.service(), "consumed bytes: the guest may want to know");
        assert!(guest_recv(&x).is_empty());
        guest_send(&x, &req[7..]);
        x.service();
        assert_eq!(guest_recv(&x), msg(XsdSockmsgType::Read, 9, 0, b"3"));
        guest_send(&x, &msg(XsdSockmsgType::Read, 10, 0, b"nope\0"));
        x.service();
        assert_eq!(
            guest_recv(&x),
            msg(XsdSockmsgType::Error, 10, 0, b"ENOENT\0")
        );
        assert_eq!(x.requests().len(), 2);
    }

    #[test]
    fn an_oversized_request_sets_the_error_field_and_stops_service() {
        use core::sync::atomic::Ordering;
        let mut x = Xenstored::new(3, 0);
        let h = XsdSockmsg {
            type_: 2,
            req_id: 1,
            tx_id: 0,
            len: 5000,
        };
        guest_send(&x, &h.to_bytes());
        x.service();
        assert!(x.broken().is_some());
        assert_eq!(
            x.page.field(PageField::Error).load(Ordering::Relaxed),
            XENSTORE_ERROR_PROTO
        );
        guest_send(&x, &msg(XsdSockmsgType::Read, 2, 0, b"domid\0"));
        assert!(!x.service());
        assert!(guest_recv(&x).is_empty());
    }

    #[test]
    fn the_trickle_fault_writes_one_byte_per_step() {
        let mut x = Xenstored::new(3, 0);
        x.faults.byte_at_a_time = true;
        guest_send(&x, &msg(XsdSockmsgType::Read, 1, 0, b"domid\0"));
        let mut got = Vec::new();
        for _ in 0..17 {
            x.service();
            let b = guest_recv(&x);
            assert_eq!(b.len(), 1);
            got.extend(b);
        }
        x.service();
        assert!(guest_recv(&x).is_empty());
        assert_eq!(got, msg(XsdSockmsgType::Read, 1, 0, b"3"));
    }

    proptest::proptest! {
        /// Whatever the guest writes, the daemon answers or stops; it never panics, and
        /// it never writes a message above the payload limit.
        #[test]
        fn garbage_requests_never_panic_the_daemon(
            garbage in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1024),
            start: u32,
        ) {
            let mut x = Xenstored::new(3, start);
            guest_send(&x, &garbage);
            x.service();
            let out = guest_recv(&x);
            let mut rest = &out[..];
            while rest.len() >= XSD_SOCKMSG_SIZE {
                let h = XsdSockmsg::from_bytes(rest[..XSD_SOCKMSG_SIZE].try_into().unwrap());
                proptest::prop_assert!(h.len as usize <= XENSTORE_PAYLOAD_MAX);
                rest = &rest[(XSD_SOCKMSG_SIZE + h.len as usize).min(rest.len())..];
            }
        }
    }
}
