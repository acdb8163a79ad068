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

//! The files: `protocol.rs` (introduction, xenstore helpers, value formats shared by both
//! roles), `granter.rs` and `mapper.rs` (one role each; `mapper/bench.rs` holds the mapper's
//! `bench` command). The roles are written against [`Kit`], so the kernel and the host tests
//! (`guest/tests/grant_pair.rs`, against the simulated Xen) run the same code.

mod granter;
mod mapper;
mod protocol;

pub use granter::{Granter, RETRY_NS};
pub use mapper::{Mapper, BENCH_ROUNDS};
pub use protocol::{encode_checksum, parse_checksum, parse_domid, stamp};

use xen_bindings::traits::{Clock, DomId, EventChannels, GrantOps};

use super::handshake;
use crate::mm::{MemModel, MemmapStorage, Pfn};
use crate::xen::xenstore::{XsError, XsOps};

/// Bytes in a page.
pub const PAGE_BYTES: usize = 4096;

/// Most pages one granter grants (what fits one `refs` value).
pub const MAX_PAGES: u32 = handshake::MAX_REFS as u32;

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
            return Err("grant=give:N needs N in 1..=16384");
        }
        match n.parse::<u32>() {
            Ok(pages) if (1..=MAX_PAGES).contains(&pages) => Ok(Role::Granter { pages, writable }),
            _ => Err("grant=give:N needs N in 1..=16384"),
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

    /// Whether it wants to tick again at once (a churning mapper).
    pub fn busy(&self) -> bool {
        matches!(self, Pair::Mapper(m) if m.busy())
    }

    /// After resuming in a new domain (see `Granter::resumed` / `Mapper::resumed`):
    /// frames freed by a granter, as a count.
    pub fn resumed<S: MemmapStorage>(&mut self, mm: &MemModel<S>) -> usize {
        match self {
            Pair::Granter(g) => g.resumed(mm),
            Pair::Mapper(m) => {
                m.resumed();
                0
            }
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
    fn roles_parse_strictly() {
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
            "give:16385",
            "give:-1",
            "give:1x",
            "give:1:ro",
            "give::rw",
            "give:rw",
            "maps",
        ] {
            assert!(Role::parse(bad).is_err(), "{bad:?}");
        }
    }
}
