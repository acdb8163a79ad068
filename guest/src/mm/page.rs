//! Page states, the legal transitions between them, and the 16-byte page descriptor.

use core::fmt;
use core::sync::atomic::{fence, AtomicU64, Ordering};

use super::geometry::Pfn;

/// The state of one page, without payload. Exactly one per pfn of an active subsection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum StateKind {
    /// Owned by the kernel since boot (image, page tables, start_info, memmap storage,
    /// non-RAM pages inside a present subsection).
    Reserved = 1,
    /// In the frame allocator, backed by Xen.
    Free = 2,
    /// Handed out by the frame allocator.
    Allocated = 3,
    /// No backing frame in Xen (ballooned out, or hot-added and not yet populated).
    Offline = 4,
    /// Device-range slot without backing, ready for a foreign mapping.
    Unpopulated = 5,
    /// A grant mapping of another domain's page.
    Foreign = 6,
}

/// Every state, in census order.
pub const STATE_KINDS: [StateKind; 6] = [
    StateKind::Reserved,
    StateKind::Free,
    StateKind::Allocated,
    StateKind::Offline,
    StateKind::Unpopulated,
    StateKind::Foreign,
];

impl StateKind {
    /// Index into census arrays (0..6).
    pub const fn index(self) -> usize {
        self as usize - 1
    }
    /// Lower-case name, used in logs and xenstore keys.
    pub const fn name(self) -> &'static str {
        match self {
            StateKind::Reserved => "reserved",
            StateKind::Free => "free",
            StateKind::Allocated => "allocated",
            StateKind::Offline => "offline",
            StateKind::Unpopulated => "unpopulated",
            StateKind::Foreign => "foreign",
        }
    }
    const fn from_tag(tag: u64) -> Option<StateKind> {
        Some(match tag {
            1 => StateKind::Reserved,
            2 => StateKind::Free,
            3 => StateKind::Allocated,
            4 => StateKind::Offline,
            5 => StateKind::Unpopulated,
            6 => StateKind::Foreign,
            _ => return None,
        })
    }
}

impl fmt::Display for StateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What identifies a foreign mapping: the granting domain, its grant reference, and the
/// handle Xen returned from `GNTTABOP_map_grant_ref` (needed to unmap).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ForeignMap {
    /// Granting domain.
    pub domid: u16,
    /// Grant reference in the granting domain's table.
    pub gref: u32,
    /// Map handle from Xen.
    pub handle: u32,
}

/// A page's state with payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PageState {
    /// See [`StateKind::Reserved`].
    Reserved,
    /// See [`StateKind::Free`].
    Free,
    /// See [`StateKind::Allocated`].
    Allocated,
    /// See [`StateKind::Offline`].
    Offline,
    /// See [`StateKind::Unpopulated`].
    Unpopulated,
    /// See [`StateKind::Foreign`].
    Foreign(ForeignMap),
}

impl PageState {
    /// The state without payload.
    pub const fn kind(&self) -> StateKind {
        match self {
            PageState::Reserved => StateKind::Reserved,
            PageState::Free => StateKind::Free,
            PageState::Allocated => StateKind::Allocated,
            PageState::Offline => StateKind::Offline,
            PageState::Unpopulated => StateKind::Unpopulated,
            PageState::Foreign(_) => StateKind::Foreign,
        }
    }
}

/// Whether the kernel is still booting. Only during boot may pages become Reserved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Before [`super::MemModel::end_boot`].
    Boot,
    /// After it.
    Running,
}

/// A transition the state machine forbids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IllegalTransition {
    /// State the page is in.
    pub from: StateKind,
    /// State that was asked for.
    pub to: StateKind,
    /// Phase at the time.
    pub phase: Phase,
}

impl fmt::Display for IllegalTransition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "illegal page transition {} -> {} ({:?})",
            self.from, self.to, self.phase
        )
    }
}

/// The page state machine. Legal:
///
/// - `Free <-> Allocated` (frame allocator),
/// - `Free -> Offline` (balloon out), `Offline -> Free` (populate),
/// - `Unpopulated <-> Foreign` (grant map / unmap),
/// - `Reserved -> Free` (boot memory released to the allocator),
/// - during boot only: `Free -> Reserved`, `Allocated -> Reserved`.
///
/// Everything else — `Foreign -> Free`, `Offline -> Allocated`, a same-state "transition"
/// (double free), `Offline -> Reserved`, any `-> Reserved` after boot — is refused.
pub const fn check_transition(
    from: StateKind,
    to: StateKind,
    phase: Phase,
) -> Result<(), IllegalTransition> {
    use StateKind::*;
    let legal = match (from, to) {
        (Free, Allocated) | (Allocated, Free) => true,
        (Free, Offline) | (Offline, Free) => true,
        // A block the balloon held while it zeroed it (it had held our data) goes to Xen.
        (Allocated, Offline) => true,
        (Unpopulated, Foreign) | (Foreign, Unpopulated) => true,
        (Reserved, Free) => true,
        (Free, Reserved) | (Allocated, Reserved) => matches!(phase, Phase::Boot),
        _ => false,
    };
    if legal {
        Ok(())
    } else {
        Err(IllegalTransition { from, to, phase })
    }
}

// ---- descriptor encoding -------------------------------------------------------------

const TAG_BITS: u32 = 4;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;
const ORDER_SHIFT: u32 = 4;
const ORDER_MASK: u64 = 0xf;
const HEAD_BIT: u64 = 1 << 8;
const HOLE_BIT: u64 = 1 << 4;
const NEXT_SHIFT: u32 = 9;
/// Links are stored as `pfn + 1` (0 = none) in 35 bits: pfns go up to 2^34.
const LINK_BITS: u32 = 35;
const LINK_MASK: u64 = (1 << LINK_BITS) - 1;
const DOMID_SHIFT: u32 = 16;
const GREF_SHIFT: u32 = 32;
const SEQ_SHIFT: u32 = LINK_BITS;
const PAYLOAD1_MASK: u64 = (1 << SEQ_SHIFT) - 1;
const SEQ_MASK: u64 = (1 << (64 - SEQ_SHIFT)) - 1;

const _: () = assert!(1u64 << (LINK_BITS - 1) >= super::geometry::MAX_PFN);
const _: () = assert!(NEXT_SHIFT + LINK_BITS <= 64);

/// A free-list link: the pfn of the neighbouring block head, or none.
pub(crate) type Link = Option<Pfn>;

const fn encode_link(link: Link) -> u64 {
    match link {
        Some(p) => p.0 + 1,
        None => 0,
    }
}

const fn decode_link(bits: u64) -> Link {
    if bits == 0 {
        None
    } else {
        Some(Pfn(bits - 1))
    }
}

/// The page descriptor: one per pfn of a present subsection, 16 bytes (Linux: 64).
///
/// Byte layout (two little-endian `u64` words; which fields exist depends on the tag, the
/// way Free and Foreign share bits since a page is never both):
///
/// ```text
/// word0  bits 0..4    tag: 1 Reserved, 2 Free, 3 Allocated, 4 Offline, 5 Unpopulated,
///                     6 Foreign (0 = never initialised, never seen in an active subsection)
///        Reserved: bit  4      hole: not RAM (never released to the allocator)
///        Free:     bits 4..8   buddy order of the block (valid when head)
///                  bit  8      head: first page of a free block on a free list
///                  bits 9..44  next: pfn+1 of the next block head on the list (0 = none)
///        Foreign:  bits 16..32 domid, bits 32..64 gref
/// word1  bits 0..35   Free: prev link (pfn+1, 0 = none); Foreign: bits 0..32 map handle
///        bits 35..64  sequence counter (odd while a writer is updating the descriptor)
/// ```
///
/// Writers are serialised by the model's mutation lock; lock-free readers (walkers holding a
/// read guard) take a consistent snapshot through the sequence counter, so a Foreign
/// payload is never read half-written.
#[repr(C, align(16))]
pub struct PageDesc {
    w0: AtomicU64,
    w1: AtomicU64,
}

const _: () = assert!(core::mem::size_of::<PageDesc>() == 16);

/// What a descriptor holds, decoded (the allocator's view, including links).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Raw {
    /// A page that is not Free.
    State(PageState),
    /// A Reserved page that is not RAM (a hole or firmware range inside a present
    /// subsection): it can never be released to the allocator.
    Hole,
    /// A Free page; `head` carries the block's order and links.
    Free(Option<FreeHead>),
}

/// Buddy bookkeeping of the first page of a free block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FreeHead {
    pub order: u8,
    pub next: Link,
    pub prev: Link,
}

impl Raw {
    pub(crate) fn kind(&self) -> StateKind {
        match self {
            Raw::State(s) => s.kind(),
            Raw::Free(_) => StateKind::Free,
            Raw::Hole => StateKind::Reserved,
        }
    }

    /// The words to store (word1 without its sequence bits).
    const fn encode(self) -> (u64, u64) {
        match self {
            Raw::Free(None) => (StateKind::Free as u64, 0),
            Raw::Hole => (StateKind::Reserved as u64 | HOLE_BIT, 0),
            Raw::Free(Some(h)) => (
                StateKind::Free as u64
                    | ((h.order as u64) & ORDER_MASK) << ORDER_SHIFT
                    | HEAD_BIT
                    | encode_link(h.next) << NEXT_SHIFT,
                encode_link(h.prev),
            ),
            Raw::State(PageState::Foreign(m)) => (
                StateKind::Foreign as u64
                    | (m.domid as u64) << DOMID_SHIFT
                    | (m.gref as u64) << GREF_SHIFT,
                m.handle as u64,
            ),
            Raw::State(s) => (s.kind() as u64, 0),
        }
    }

    const fn decode(w0: u64, p1: u64) -> Option<Raw> {
        let Some(kind) = StateKind::from_tag(w0 & TAG_MASK) else {
            return None;
        };
        Some(match kind {
            StateKind::Free if w0 & HEAD_BIT != 0 => Raw::Free(Some(FreeHead {
                order: ((w0 >> ORDER_SHIFT) & ORDER_MASK) as u8,
                next: decode_link((w0 >> NEXT_SHIFT) & LINK_MASK),
                prev: decode_link(p1 & LINK_MASK),
            })),
            StateKind::Free => Raw::Free(None),
            StateKind::Foreign => Raw::State(PageState::Foreign(ForeignMap {
                domid: (w0 >> DOMID_SHIFT) as u16,
                gref: (w0 >> GREF_SHIFT) as u32,
                handle: p1 as u32,
            })),
            StateKind::Reserved if w0 & HOLE_BIT != 0 => Raw::Hole,
            StateKind::Reserved => Raw::State(PageState::Reserved),
            StateKind::Allocated => Raw::State(PageState::Allocated),
            StateKind::Offline => Raw::State(PageState::Offline),
            StateKind::Unpopulated => Raw::State(PageState::Unpopulated),
        })
    }
}

impl PageDesc {
    /// A descriptor holding `raw`, for initialising fresh memmap storage.
    pub(crate) const fn new(raw: Raw) -> PageDesc {
        let (w0, p1) = raw.encode();
        PageDesc {
            w0: AtomicU64::new(w0),
            w1: AtomicU64::new(p1),
        }
    }

    /// The two words, for bulk initialisation of fresh memmap.
    pub(crate) fn into_words(self) -> [u64; 2] {
        [self.w0.into_inner(), self.w1.into_inner()]
    }

    /// Consistent snapshot of the descriptor; safe against a concurrent writer.
    pub(crate) fn load(&self) -> Raw {
        // A descriptor of an active subsection is always initialised; an invalid tag would
        // mean memmap corruption, which the model turns into a panic.
        self.try_load()
            .expect("page descriptor with invalid tag: memmap corrupted")
    }

    /// [`Self::load`] that reports a descriptor holding no valid state (poison, never
    /// initialised, or a sequence that never settles) as `None` instead of panicking:
    /// what a walker checking the model's safety uses.
    pub(crate) fn try_load(&self) -> Option<Raw> {
        // A writer holds the sequence odd for a few stores; even one preempted mid-store
        // under a hypervisor finishes within a time slice. 2^24 retries is far beyond that.
        let mut budget: u32 = 1 << 24;
        loop {
            budget = budget.checked_sub(1)?;
            // Acquire pairs with the Release store that ends `store`: a stable (even)
            // sequence seen here means that writer's word0 is visible below.
            let before = self.w1.load(Ordering::Acquire);
            if (before >> SEQ_SHIFT) & 1 == 1 {
                core::hint::spin_loop();
                continue;
            }
            // Relaxed: validated by the sequence re-check below.
            let w0 = self.w0.load(Ordering::Relaxed);
            // Acquire fence pairs with the Release fence in `store`: if the word0 load above
            // saw a newer writer's value, the re-load below sees that writer's odd sequence.
            fence(Ordering::Acquire);
            // Relaxed: ordered after the word0 load by the fence above.
            let after = self.w1.load(Ordering::Relaxed);
            if before == after {
                return Raw::decode(w0, before & PAYLOAD1_MASK);
            }
            core::hint::spin_loop();
        }
    }

    /// Replace the descriptor's contents. Callers hold the model's mutation lock, so there
    /// is exactly one writer at a time.
    pub(crate) fn store(&self, raw: Raw) {
        let (w0, p1) = raw.encode();
        // Relaxed: only the (single, lock-holding) writer stores word1.
        let old = self.w1.load(Ordering::Relaxed);
        let seq = (old >> SEQ_SHIFT) & SEQ_MASK;
        let busy = ((seq + 1) & SEQ_MASK) << SEQ_SHIFT | (old & PAYLOAD1_MASK);
        // Relaxed: published by the Release fence right after.
        self.w1.store(busy, Ordering::Relaxed);
        // Release fence pairs with the Acquire fence in `load`: a reader that sees the new
        // word0 also sees the odd sequence and retries.
        fence(Ordering::Release);
        // Relaxed: bracketed by the fence above and the Release store below.
        self.w0.store(w0, Ordering::Relaxed);
        // Release pairs with the first Acquire load in `load`.
        self.w1
            .store(((seq + 2) & SEQ_MASK) << SEQ_SHIFT | p1, Ordering::Release);
    }

    /// Word 0 of a descriptor holding `raw` when `raw` keeps nothing in word 1: a plain
    /// state (Reserved non-hole, Allocated, Offline, Unpopulated) or a Free page that is
    /// not a block head. None for a free block's head and for Foreign, which keep links
    /// or a map handle in word 1.
    pub(crate) const fn plain_word0(raw: Raw) -> Option<u64> {
        match raw {
            Raw::Free(Some(_)) | Raw::State(PageState::Foreign(_)) => None,
            _ => {
                let (w0, p1) = raw.encode();
                if p1 == 0 {
                    Some(w0)
                } else {
                    None
                }
            }
        }
    }

    /// [`Self::plain_word0`] of a Free page that is not a block head: every page of a
    /// free block once it is off the lists, and what a populated block becomes.
    pub(crate) const FREE_TAIL_WORD0: u64 = match Self::plain_word0(Raw::Free(None)) {
        Some(w0) => w0,
        None => panic!("a free tail keeps nothing in word 1"),
    };

    /// [`Self::plain_word0`] of an Offline page (no frame: ballooned out or never
    /// populated).
    pub(crate) const OFFLINE_WORD0: u64 = match Self::plain_word0(Raw::State(PageState::Offline)) {
        Some(w0) => w0,
        None => panic!("Offline keeps nothing in word 1"),
    };

    /// [`Self::plain_word0`] of an Allocated page.
    pub(crate) const ALLOCATED_WORD0: u64 =
        match Self::plain_word0(Raw::State(PageState::Allocated)) {
            Some(w0) => w0,
            None => panic!("Allocated keeps nothing in word 1"),
        };

    /// Whether the descriptor holds exactly the plain state whose word 0 is `w0` (see
    /// [`Self::plain_word0`]). For the writer holding the mutation lock only: no other
    /// writer can change word 0 under it, so one load is a consistent read.
    pub(crate) fn holds_plain(&self, w0: u64) -> bool {
        // Relaxed: the lock-holding writer reads its own (or an earlier lock holder's,
        // ordered by the lock) store.
        self.w0.load(Ordering::Relaxed) == w0
    }

    /// Move a descriptor between two plain states with one store of word 0 (the bulk
    /// balloon and hot-add paths: a 768 MiB populate rewrites 196,608 descriptors). Word 1
    /// is all zero payload before and after (a plain state keeps nothing there; callers
    /// check the old state with [`Self::holds_plain`]), so its sequence needs no odd
    /// phase: a reader's snapshot sees the old word 0 or the new, each complete with the
    /// unchanged word 1. Callers hold the model's mutation lock.
    pub(crate) fn store_plain(&self, w0: u64) {
        // Release pairs with the Acquire fence in `try_load` (after its word-0 load): as
        // for `store`, nothing else is published through a descriptor.
        self.w0.store(w0, Ordering::Release);
    }

    /// Move every descriptor of `descs` from the plain state whose word 0 is `from` to
    /// the one whose word 0 is `to` ([`Self::plain_word0`] of both), checking and storing
    /// in one pass: a load and a store per descriptor, where a check of the whole run
    /// first and the stores after it read the run twice. If a descriptor does not hold
    /// `from`, those already moved are put back and its index is returned: nothing
    /// changed. Meanwhile a reader may see `to` on them; callers use it only where a
    /// page in either state has its frame (populated Offline -> Free, Allocated -> Free),
    /// and nothing but the lock holder acts on a state. Callers hold the mutation lock.
    pub(crate) fn move_plain_run(descs: &[PageDesc], from: u64, to: u64) -> Result<(), usize> {
        for (i, d) in descs.iter().enumerate() {
            if !d.holds_plain(from) {
                descs[..i].iter().for_each(|d| d.store_plain(from));
                return Err(i);
            }
            d.store_plain(to);
        }
        Ok(())
    }

    /// The page's state (what walkers see).
    pub fn state(&self) -> PageState {
        match self.load() {
            Raw::State(s) => s,
            Raw::Free(_) => PageState::Free,
            Raw::Hole => PageState::Reserved,
        }
    }

    /// Whether the page is RAM (false only for non-RAM pages inside a present subsection).
    pub fn is_ram(&self) -> bool {
        self.load() != Raw::Hole
    }

    /// The state and RAM-ness, or `None` for a descriptor holding no valid state.
    pub fn checked(&self) -> Option<(PageState, bool)> {
        self.try_load().map(|raw| match raw {
            Raw::State(s) => (s, true),
            Raw::Free(_) => (PageState::Free, true),
            Raw::Hole => (PageState::Reserved, false),
        })
    }

    /// The two words freed or not yet initialised memmap is filled with: tag 0 (no state)
    /// and an even sequence, so a late reader neither spins nor mistakes it for a page.
    pub(crate) const POISON: [u64; 2] = [0xdead_beef_dead_bee0, 0xdead_0000_0000_0000];
}

impl fmt::Debug for PageDesc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.load())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_kind() -> impl Strategy<Value = StateKind> {
        prop::sample::select(STATE_KINDS.to_vec())
    }

    fn any_raw() -> impl Strategy<Value = Raw> {
        let link = prop::option::of((0u64..super::super::geometry::MAX_PFN).prop_map(Pfn));
        prop_oneof![
            Just(Raw::State(PageState::Reserved)),
            Just(Raw::State(PageState::Allocated)),
            Just(Raw::State(PageState::Offline)),
            Just(Raw::State(PageState::Unpopulated)),
            Just(Raw::Free(None)),
            Just(Raw::Hole),
            (0u8..16, link.clone(), link)
                .prop_map(|(order, next, prev)| Raw::Free(Some(FreeHead { order, next, prev }))),
            (any::<u16>(), any::<u32>(), any::<u32>()).prop_map(|(domid, gref, handle)| {
                Raw::State(PageState::Foreign(ForeignMap {
                    domid,
                    gref,
                    handle,
                }))
            }),
        ]
    }

    proptest! {
        #[test]
        fn descriptor_round_trips_every_state(raw in any_raw(), prev in any_raw()) {
            let d = PageDesc::new(prev);
            prop_assert_eq!(d.load(), prev);
            d.store(raw);
            prop_assert_eq!(d.load(), raw);
            prop_assert_eq!(d.state().kind(), raw.kind());
        }

        #[test]
        fn nothing_becomes_reserved_after_boot(from in any_kind()) {
            let err = check_transition(from, StateKind::Reserved, Phase::Running).unwrap_err();
            prop_assert_eq!(err.to, StateKind::Reserved);
        }

        #[test]
        fn same_state_is_never_a_transition(k in any_kind(), boot in any::<bool>()) {
            let phase = if boot { Phase::Boot } else { Phase::Running };
            prop_assert!(check_transition(k, k, phase).is_err());
        }

        #[test]
        fn foreign_and_ram_states_never_mix(
            from in any_kind(), to in any_kind(), boot in any::<bool>()
        ) {
            // Device-side states (Unpopulated, Foreign) and RAM-side states never convert
            // into each other: foreign pages never reach the allocator or Reserved.
            let phase = if boot { Phase::Boot } else { Phase::Running };
            let device = |k| matches!(k, StateKind::Unpopulated | StateKind::Foreign);
            if device(from) != device(to) {
                prop_assert!(check_transition(from, to, phase).is_err());
            }
        }

        #[test]
        fn running_transitions_are_reversible_or_release(
            from in any_kind(), to in any_kind()
        ) {
            // After boot every legal step can be undone, except releasing Reserved memory
            // and giving a zeroed block to Xen (it comes back through Free).
            if check_transition(from, to, Phase::Running).is_ok()
                && from != StateKind::Reserved
                && (from, to) != (StateKind::Allocated, StateKind::Offline)
            {
                prop_assert!(check_transition(to, from, Phase::Running).is_ok());
            }
        }
    }

    #[test]
    fn the_legal_table_is_exactly_this() {
        use StateKind::*;
        let mut legal = std::vec::Vec::new();
        for from in STATE_KINDS {
            for to in STATE_KINDS {
                for phase in [Phase::Boot, Phase::Running] {
                    if check_transition(from, to, phase).is_ok() {
                        legal.push((from, to, phase));
                    }
                }
            }
        }
        let b = Phase::Boot;
        let r = Phase::Running;
        let mut want = std::vec![
            (Reserved, Free, b),
            (Reserved, Free, r),
            (Free, Reserved, b),
            (Free, Allocated, b),
            (Free, Allocated, r),
            (Free, Offline, b),
            (Free, Offline, r),
            (Allocated, Reserved, b),
            (Allocated, Free, b),
            (Allocated, Free, r),
            (Allocated, Offline, b),
            (Allocated, Offline, r),
            (Offline, Free, b),
            (Offline, Free, r),
            (Unpopulated, Foreign, b),
            (Unpopulated, Foreign, r),
            (Foreign, Unpopulated, b),
            (Foreign, Unpopulated, r),
        ];
        want.sort_by_key(|&(f, t, p)| (f, t, p == r));
        legal.sort_by_key(|&(f, t, p)| (f, t, p == r));
        assert_eq!(legal, want);
        assert!(check_transition(Foreign, Free, r).is_err());
        assert!(check_transition(Offline, Allocated, r).is_err());
    }

    #[test]
    fn concurrent_reader_never_sees_a_torn_foreign_payload() {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        let d = Arc::new(PageDesc::new(Raw::State(PageState::Unpopulated)));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (d, stop) = (d.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut seen = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if let PageState::Foreign(m) = d.state() {
                        // The writer always stores gref == handle == domid-derived values.
                        assert_eq!(m.gref, m.handle);
                        assert_eq!(m.gref as u16, m.domid);
                        seen += 1;
                    }
                }
                seen
            })
        };
        for i in 0..200_000u32 {
            d.store(Raw::State(PageState::Foreign(ForeignMap {
                domid: i as u16,
                gref: i,
                handle: i,
            })));
            if i % 3 == 0 {
                d.store(Raw::State(PageState::Unpopulated));
            }
        }
        stop.store(true, Ordering::Relaxed);
        reader.join().unwrap();
    }

    proptest! {
        /// A run moves whole or not at all: the first descriptor not in `from` is named,
        /// and every descriptor holds what it held before, sequence included.
        #[test]
        fn a_plain_run_moves_whole_or_not_at_all(len in 1usize..64, bad in prop::option::of(0usize..64)) {
            let off = PageDesc::OFFLINE_WORD0;
            let bad = bad.filter(|&b| b < len);
            let descs: Vec<PageDesc> = (0..len)
                .map(|i| {
                    let raw = if Some(i) == bad { Raw::State(PageState::Allocated) } else { Raw::State(PageState::Offline) };
                    // Stored over another state, so word 1 holds a sequence to keep.
                    let d = PageDesc::new(Raw::State(PageState::Reserved));
                    d.store(raw);
                    d
                })
                .collect();
            let before: Vec<(u64, u64)> = descs.iter().map(|d| (d.w0.load(Ordering::Relaxed), d.w1.load(Ordering::Relaxed))).collect();
            let r = PageDesc::move_plain_run(&descs, off, PageDesc::FREE_TAIL_WORD0);
            let after: Vec<(u64, u64)> = descs.iter().map(|d| (d.w0.load(Ordering::Relaxed), d.w1.load(Ordering::Relaxed))).collect();
            match bad {
                Some(b) => {
                    prop_assert_eq!(r, Err(b));
                    prop_assert_eq!(after, before);
                }
                None => {
                    prop_assert_eq!(r, Ok(()));
                    prop_assert!(descs.iter().all(|d| d.load() == Raw::Free(None)));
                    // Word 1 (sequence and payload) is untouched.
                    prop_assert!(after.iter().zip(&before).all(|(a, b)| a.1 == b.1));
                }
            }
        }
    }
}
