//! Where memmap storage comes from.
//!
//! The model never allocates on its own: section chunks and per-subsection memmap blocks
//! come from a [`MemmapStorage`] the caller injects. At boot the kernel has no heap yet, so
//! it hands the model a [`BumpStorage`] carved from touchable RAM (the region is reported
//! through [`MemmapStorage::claimed`] and becomes Reserved); host tests use [`HeapStorage`];
//! [`Budgeted`] caps what any provider may hand out (and injects failures in tests).
//!
//! **Storage that scales with what is added** ([`FrameReserve`]): the boot region covers
//! the boot memmap plus a small headroom; everything added later (hot-plug sections,
//! device subsections) draws on 2 MiB frames taken from the model's own frame allocator.
//! The provider is called under the model's mutation lock, so it never allocates frames
//! itself (that would re-enter the lock): the caller tops it up *between* model
//! operations ([`crate::mm::MemModel::refill_storage`]: order-9 blocks, lowest address
//! first, become Allocated RAM of ours — the census still closes against Xen) and takes
//! emptied frames back ([`crate::mm::MemModel::trim_storage`]). A frame holds 256 slots
//! of 8 KiB (one subsection's memmap each): the memmap of 4 sections.
//!
//! ```text
//! refill (no lock held):  alloc_frames_lowest(9) -> Allocated -> with_storage(add_frame)
//! add (lock held):        alloc(layout): boot region first, then a slot run of a frame
//! remove (lock held):     free(ptr): back to its frame (or the boot region's free list)
//! trim (no lock held):    with_storage(take_empty_frame) -> free_frames(pfn, 9)
//! ```

use core::alloc::Layout;
use core::ptr::NonNull;

use super::geometry::{Pfn, PfnRange, PAGES_PER_SUBSECTION, PAGE_SIZE};

/// A provider of memmap storage.
pub trait MemmapStorage {
    /// Allocate memory for `layout` (size never zero). `None` when exhausted.
    fn alloc(&mut self, layout: Layout) -> Option<NonNull<u8>>;

    /// Give back a block.
    ///
    /// # Safety
    /// `ptr` came from `alloc` of this provider with the same `layout` and is not used
    /// after this call.
    unsafe fn free(&mut self, ptr: NonNull<u8>, layout: Layout);

    /// Guest RAM this provider allocates from, if any. The boot builder marks it Reserved
    /// (the whole region, so later allocations from it are covered too) and checks it lies
    /// in touchable RAM.
    fn claimed(&self) -> Option<PfnRange> {
        None
    }

    /// Bytes the provider can still hand out without new frames (an upper bound: a
    /// request also needs them contiguous and of its size class). `None`: unbounded.
    fn free_bytes(&self) -> Option<usize> {
        None
    }

    /// Take the 2 MiB frame at `pfn` (an order-9 block of the model's allocator, Allocated,
    /// backed and mapped) to carve storage from. `false`: this provider takes no frames
    /// (or has no room to track one); the caller frees it again.
    fn add_frame(&mut self, pfn: Pfn) -> bool {
        let _ = pfn;
        false
    }

    /// A frame from [`MemmapStorage::add_frame`] of which no block is in use any more: it
    /// leaves the provider and goes back to the caller (to the allocator).
    fn take_empty_frame(&mut self) -> Option<Pfn> {
        None
    }

    /// Frames currently held (see [`MemmapStorage::add_frame`]).
    fn frames(&self) -> usize {
        0
    }
}

/// Storage from the global allocator (host tests; the kernel once its heap is up).
#[derive(Debug, Default)]
pub struct HeapStorage;

impl MemmapStorage for HeapStorage {
    fn alloc(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        // SAFETY: the model never asks for a zero-sized layout.
        NonNull::new(unsafe { alloc::alloc::alloc(layout) })
    }

    unsafe fn free(&mut self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: the caller guarantees `ptr` came from `alloc` above with `layout`.
        unsafe { alloc::alloc::dealloc(ptr.as_ptr(), layout) }
    }
}

/// A bump allocator over one region of guest RAM, reachable at `base`.
///
/// Freed blocks go on an intrusive list and are reused for requests of the same layout
/// (memmap blocks are all the same size, so hot-remove followed by hot-add reuses them).
#[derive(Debug)]
pub struct BumpStorage {
    base: NonNull<u8>,
    pages: PfnRange,
    next: usize,
    /// Freed blocks: (layout, head of an intrusive list threaded through the blocks).
    freed: Option<(Layout, NonNull<u8>)>,
    freed_count: usize,
}

// SAFETY: the region is owned exclusively by this provider (constructor contract); moving
// the provider to another CPU moves that ownership with it.
unsafe impl Send for BumpStorage {}

impl BumpStorage {
    /// A provider over the guest pages `pages`, mapped at `base`.
    ///
    /// # Safety
    /// `base` points to `pages.len() * 4096` writable bytes that nothing else uses for the
    /// life of the provider and of every block it hands out.
    pub unsafe fn new(base: NonNull<u8>, pages: PfnRange) -> BumpStorage {
        BumpStorage {
            base,
            pages,
            next: 0,
            freed: None,
            freed_count: 0,
        }
    }

    /// Bytes handed out so far (including freed blocks kept for reuse).
    pub fn used_bytes(&self) -> usize {
        self.next
    }

    /// Bytes of the region.
    pub fn capacity(&self) -> usize {
        (self.pages.len() * PAGE_SIZE) as usize
    }
}

impl MemmapStorage for BumpStorage {
    fn alloc(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        if let Some((l, head)) = self.freed {
            if l == layout {
                // SAFETY: `head` is a freed block of this layout; its first word holds the
                // next freed block (written in `free`), and blocks are at least pointer
                // sized and aligned (checked there).
                let next = unsafe { head.cast::<Option<NonNull<u8>>>().as_ptr().read() };
                self.freed_count -= 1;
                self.freed = next.map(|n| (l, n));
                return Some(head);
            }
        }
        let start = self.next.next_multiple_of(layout.align());
        let end = start.checked_add(layout.size())?;
        if end > self.capacity() {
            return None;
        }
        self.next = end;
        // SAFETY: `start < capacity`, so the offset stays inside the region from `new`.
        Some(unsafe { self.base.add(start) })
    }

    unsafe fn free(&mut self, ptr: NonNull<u8>, layout: Layout) {
        let fits = layout.size() >= size_of::<usize>() && layout.align() >= align_of::<usize>();
        match self.freed {
            Some((l, _)) if l != layout => return, // another size class: keep it reserved
            _ if !fits => return,
            _ => {}
        }
        let next = self.freed.map(|(_, p)| p);
        // SAFETY: the caller gives the block back (no other user), it is big and aligned
        // enough for one pointer (checked above), and it lies inside our region.
        unsafe { ptr.cast::<Option<NonNull<u8>>>().as_ptr().write(next) };
        self.freed = Some((layout, ptr));
        self.freed_count += 1;
    }

    fn claimed(&self) -> Option<PfnRange> {
        Some(self.pages)
    }

    fn free_bytes(&self) -> Option<usize> {
        let reusable = self.freed.map_or(0, |(l, _)| l.size() * self.freed_count);
        Some(self.capacity() - self.next + reusable)
    }
}

/// Wraps a provider and refuses to hand out more than a byte budget.
#[derive(Debug)]
pub struct Budgeted<S> {
    inner: S,
    budget: usize,
    used: usize,
}

impl<S: MemmapStorage> Budgeted<S> {
    /// At most `budget` bytes outstanding from `inner`.
    pub fn new(inner: S, budget: usize) -> Budgeted<S> {
        Budgeted {
            inner,
            budget,
            used: 0,
        }
    }

    /// Bytes currently handed out.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Change the budget (e.g. a test that lets the next allocation succeed).
    pub fn set_budget(&mut self, budget: usize) {
        self.budget = budget;
    }
}

impl<S: MemmapStorage> MemmapStorage for Budgeted<S> {
    fn alloc(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        if self.used + layout.size() > self.budget {
            return None;
        }
        let p = self.inner.alloc(layout)?;
        self.used += layout.size();
        Some(p)
    }

    unsafe fn free(&mut self, ptr: NonNull<u8>, layout: Layout) {
        self.used -= layout.size();
        // SAFETY: forwarded contract; the block came from `inner.alloc`.
        unsafe { self.inner.free(ptr, layout) }
    }

    fn claimed(&self) -> Option<PfnRange> {
        self.inner.claimed()
    }

    fn free_bytes(&self) -> Option<usize> {
        let left = self.budget.saturating_sub(self.used);
        Some(self.inner.free_bytes().map_or(left, |f| f.min(left)))
    }

    fn add_frame(&mut self, pfn: Pfn) -> bool {
        self.inner.add_frame(pfn)
    }

    fn take_empty_frame(&mut self) -> Option<Pfn> {
        self.inner.take_empty_frame()
    }

    fn frames(&self) -> usize {
        self.inner.frames()
    }
}

/// Pages of a reserve frame: one order-9 block, 2 MiB.
pub const FRAME_PAGES: u64 = PAGES_PER_SUBSECTION;
/// Bytes of a reserve frame.
pub const FRAME_BYTES: usize = (FRAME_PAGES * PAGE_SIZE) as usize;
/// Bytes of a slot: one subsection's memmap (512 descriptors of 16 bytes).
pub const SLOT_BYTES: usize = 8192;
const SLOTS: usize = FRAME_BYTES / SLOT_BYTES;
const SLOT_WORDS: usize = SLOTS / 64;
/// Most frames a [`FrameReserve`] tracks: 192 × 2 MiB = 384 MiB of storage, the memmap
/// of 96 GiB — the 64 GiB hot-plug window and the 4 GiB device window with room to spare.
pub const RESERVE_FRAMES: usize = 192;

/// How the frames given to a [`FrameReserve`] are reached.
pub trait FrameMap {
    /// The address of the 2 MiB frame at `pfn`, or `None` if it cannot be reached.
    fn map(&mut self, pfn: Pfn) -> Option<NonNull<u8>>;

    /// The frame stops being storage.
    ///
    /// # Safety
    /// `ptr` is what `map(pfn)` returned, and nothing uses it after this call.
    unsafe fn unmap(&mut self, pfn: Pfn, ptr: NonNull<u8>);
}

/// The kernel's frames: guest RAM is identity-mapped (the pfn's address is its pointer).
#[derive(Debug)]
pub struct IdentityFrames(());

impl IdentityFrames {
    /// # Safety
    /// Every pfn later given to [`FrameMap::map`] is RAM the caller owns, mapped writable
    /// at its own guest-physical address for as long as the frame is in use.
    pub const unsafe fn new() -> IdentityFrames {
        IdentityFrames(())
    }
}

impl FrameMap for IdentityFrames {
    fn map(&mut self, pfn: Pfn) -> Option<NonNull<u8>> {
        NonNull::new(pfn.addr() as *mut u8)
    }

    unsafe fn unmap(&mut self, _: Pfn, _: NonNull<u8>) {}
}

/// Host tests: the model's pfns are not memory here, so each frame gets 2 MiB of heap.
#[derive(Debug, Default)]
pub struct HeapFrames;

const FRAME_LAYOUT: Layout = match Layout::from_size_align(FRAME_BYTES, SLOT_BYTES) {
    Ok(l) => l,
    Err(_) => panic!("frame layout"),
};

impl FrameMap for HeapFrames {
    fn map(&mut self, _: Pfn) -> Option<NonNull<u8>> {
        // SAFETY: FRAME_LAYOUT has a non-zero size.
        NonNull::new(unsafe { alloc::alloc::alloc(FRAME_LAYOUT) })
    }

    unsafe fn unmap(&mut self, _: Pfn, ptr: NonNull<u8>) {
        // SAFETY: the caller guarantees `ptr` came from `map`, which allocated it with
        // FRAME_LAYOUT.
        unsafe { alloc::alloc::dealloc(ptr.as_ptr(), FRAME_LAYOUT) }
    }
}

#[derive(Clone, Copy, Debug)]
struct Frame {
    pfn: Pfn,
    base: NonNull<u8>,
    /// Slots in use (bit i: bytes [i * 8 KiB, (i + 1) * 8 KiB)).
    used: [u64; SLOT_WORDS],
}

impl Frame {
    fn is_used(&self, i: usize) -> bool {
        self.used[i / 64] & (1 << (i % 64)) != 0
    }
    fn set(&mut self, from: usize, n: usize, on: bool) {
        for i in from..from + n {
            if on {
                self.used[i / 64] |= 1 << (i % 64);
            } else {
                self.used[i / 64] &= !(1 << (i % 64));
            }
        }
    }
    fn used_slots(&self) -> usize {
        self.used.iter().map(|w| w.count_ones() as usize).sum()
    }
    /// First run of `n` free slots.
    fn find(&self, n: usize) -> Option<usize> {
        let mut run = 0;
        for i in 0..SLOTS {
            if self.is_used(i) {
                run = 0;
            } else {
                run += 1;
                if run == n {
                    return Some(i + 1 - n);
                }
            }
        }
        None
    }
    fn holds(&self, p: NonNull<u8>) -> bool {
        let (b, a) = (self.base.as_ptr() as usize, p.as_ptr() as usize);
        a >= b && a < b + FRAME_BYTES
    }
}

/// Storage in two tiers: an inner provider (the boot region) first, then 8 KiB slots of
/// 2 MiB frames the caller hands in from the model's allocator (see the module docs).
/// Frame bookkeeping is a fixed table allocated once, when the provider is made (before
/// the model exists): the provider runs under the model's lock and must not allocate
/// then, since the kernel heap itself grows from the model. On the heap rather than
/// inline, so the model (moved by value while it is built) stays small on the boot stack.
pub struct FrameReserve<S, M: FrameMap> {
    inner: S,
    map: M,
    frames: alloc::boxed::Box<[Option<Frame>]>,
    /// Bytes of the inner provider kept for section-table chunks.
    keep: usize,
}

// SAFETY: the frames are owned exclusively by the provider (they are Allocated pages
// handed to it, or heap blocks it allocated); moving the provider moves that ownership.
unsafe impl<S: Send, M: FrameMap + Send> Send for FrameReserve<S, M> {}

impl<S: MemmapStorage, M: FrameMap> FrameReserve<S, M> {
    /// No frames yet; everything comes from `inner` until frames are added.
    pub fn new(inner: S, map: M) -> FrameReserve<S, M> {
        FrameReserve {
            inner,
            map,
            frames: alloc::vec![None; RESERVE_FRAMES].into_boxed_slice(),
            keep: 0,
        }
    }

    /// Keep `bytes` of the inner provider for section-table chunks: memmap blocks take
    /// them only when no frame has room (see `alloc`).
    pub fn keeping(mut self, bytes: usize) -> FrameReserve<S, M> {
        self.keep = bytes;
        self
    }

    /// Bytes of the inner provider beyond the kept part.
    fn inner_spare(&self) -> usize {
        self.inner
            .free_bytes()
            .unwrap_or(usize::MAX)
            .saturating_sub(self.keep)
    }

    /// The inner provider.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The inner provider, to change (e.g. a [`Budgeted`] budget).
    pub fn inner_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// A run of `n` free slots, from the fullest frame that has one (so that emptier
    /// frames can drain and go back).
    fn alloc_slots(&mut self, n: usize) -> Option<NonNull<u8>> {
        let mut best: Option<(usize, usize, usize)> = None;
        for (k, f) in self.frames.iter().enumerate() {
            let Some(f) = f else { continue };
            if let Some(i) = f.find(n) {
                let used = f.used_slots();
                if best.is_none_or(|(_, _, u)| used > u) {
                    best = Some((k, i, used));
                }
            }
        }
        let (k, i, _) = best?;
        let f = self.frames[k].as_mut()?;
        f.set(i, n, true);
        // SAFETY: `i + n <= SLOTS`, so the offset stays inside the 2 MiB frame at `base`.
        Some(unsafe { f.base.add(i * SLOT_BYTES) })
    }

    /// Bytes of frame slots in use.
    pub fn frame_bytes_used(&self) -> usize {
        self.frames
            .iter()
            .flatten()
            .map(Frame::used_slots)
            .sum::<usize>()
            * SLOT_BYTES
    }
}

impl<S: MemmapStorage, M: FrameMap> MemmapStorage for FrameReserve<S, M> {
    fn alloc(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        // Blocks bigger than a slot are section-table chunks, which live as long as the
        // model: from the boot region, so they pin no frame. Memmap blocks (one slot)
        // come from frames while they have room, else from the boot region while it
        // keeps `keep` bytes for the chunks still to come, and only as the last resort
        // (no frame could be had) from that kept part.
        let small = layout.size() <= SLOT_BYTES;
        let spare = self.inner_spare();
        let frames_full = self
            .frames
            .iter()
            .flatten()
            .all(|f| f.used_slots() == SLOTS);
        if !small || (frames_full && spare >= layout.size()) {
            if let Some(p) = self.inner.alloc(layout) {
                return Some(p);
            }
        }
        if layout.align() > SLOT_BYTES || layout.size() > FRAME_BYTES {
            return None;
        }
        let n = layout.size().div_ceil(SLOT_BYTES);
        if let Some(p) = self.alloc_slots(n) {
            return Some(p);
        }
        if small {
            return self.inner.alloc(layout);
        }
        None
    }

    unsafe fn free(&mut self, ptr: NonNull<u8>, layout: Layout) {
        for f in self.frames.iter_mut().flatten() {
            if f.holds(ptr) {
                let i = (ptr.as_ptr() as usize - f.base.as_ptr() as usize) / SLOT_BYTES;
                f.set(i, layout.size().div_ceil(SLOT_BYTES), false);
                return;
            }
        }
        // SAFETY: not in any frame, so it came from `inner.alloc` (forwarded contract).
        unsafe { self.inner.free(ptr, layout) }
    }

    fn claimed(&self) -> Option<PfnRange> {
        self.inner.claimed()
    }

    fn free_bytes(&self) -> Option<usize> {
        let slots: usize = self
            .frames
            .iter()
            .flatten()
            .map(|f| SLOTS - f.used_slots())
            .sum();
        // The boot region counts only beyond the part kept for chunks, so a refill tops
        // up frames before memmap would eat into it.
        Some(slots * SLOT_BYTES + self.inner_spare().min(usize::MAX / 2))
    }

    fn add_frame(&mut self, pfn: Pfn) -> bool {
        let Some(slot) = self.frames.iter_mut().find(|f| f.is_none()) else {
            return false;
        };
        let Some(base) = self.map.map(pfn) else {
            return false;
        };
        *slot = Some(Frame {
            pfn,
            base,
            used: [0; SLOT_WORDS],
        });
        true
    }

    fn take_empty_frame(&mut self) -> Option<Pfn> {
        let slot = self
            .frames
            .iter_mut()
            .find(|f| f.is_some_and(|f| f.used_slots() == 0))?;
        let f = slot.take()?;
        // SAFETY: `f.base` came from `map(f.pfn)`; no slot of it is in use, and the frame
        // has just left the table, so nothing hands it out again.
        unsafe { self.map.unmap(f.pfn, f.base) };
        Some(f.pfn)
    }

    fn frames(&self) -> usize {
        self.frames.iter().flatten().count()
    }
}

impl<S, M: FrameMap> Drop for FrameReserve<S, M> {
    fn drop(&mut self) {
        for f in self.frames.iter_mut().filter_map(Option::take) {
            // SAFETY: the provider is going away; whoever still held a block of it (the
            // model) has been dropped first (the model owns the provider).
            unsafe { self.map.unmap(f.pfn, f.base) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::geometry::Pfn;
    use super::*;

    #[test]
    fn bump_hands_out_aligned_blocks_and_reuses_freed_ones() {
        let mut buf = std::vec![0u64; 4 * 512];
        let base = NonNull::new(buf.as_mut_ptr().cast::<u8>()).unwrap();
        // SAFETY: `buf` is 4 pages, owned by this test and outlives the provider.
        let mut s = unsafe { BumpStorage::new(base, PfnRange::from_count(Pfn(100), 4)) };
        let l = Layout::from_size_align(4096, 16).unwrap();
        let a = s.alloc(l).unwrap();
        let b = s.alloc(l).unwrap();
        assert_eq!(b.as_ptr() as usize - a.as_ptr() as usize, 4096);
        // SAFETY: `a` came from `alloc(l)` and is not used again.
        unsafe { s.free(a, l) };
        assert_eq!(s.alloc(l), Some(a));
        assert!(s.alloc(l).is_some());
        assert!(s.alloc(l).is_some());
        assert_eq!(s.alloc(l), None, "region exhausted");
        assert_eq!(s.claimed(), Some(PfnRange::from_count(Pfn(100), 4)));
        assert_eq!(s.used_bytes(), s.capacity());
    }

    #[test]
    fn reserve_uses_the_inner_provider_first_then_frames_and_gives_empty_frames_back() {
        let l = Layout::from_size_align(SLOT_BYTES, 16).unwrap();
        let mut s = FrameReserve::new(Budgeted::new(HeapStorage, SLOT_BYTES), HeapFrames);
        assert_eq!(s.free_bytes(), Some(SLOT_BYTES));
        // Kept for chunks, the inner block does not count (a refill would add a frame).
        let k = FrameReserve::new(Budgeted::new(HeapStorage, SLOT_BYTES), HeapFrames)
            .keeping(SLOT_BYTES);
        assert_eq!(k.free_bytes(), Some(0));
        let a = s.alloc(l).unwrap(); // inner
        assert!(s.alloc(l).is_none(), "inner exhausted, no frames");
        assert!(s.add_frame(Pfn(512)));
        assert_eq!(s.frames(), 1);
        assert_eq!(s.free_bytes(), Some(FRAME_BYTES));
        let blocks: std::vec::Vec<_> = (0..SLOTS).map(|_| s.alloc(l).unwrap()).collect();
        assert!(s.alloc(l).is_none(), "frame full");
        assert_eq!(s.frame_bytes_used(), FRAME_BYTES);
        assert_eq!(s.take_empty_frame(), None, "frame in use");
        // A multi-slot block needs a contiguous run.
        // SAFETY: each block came from `s.alloc(l)` and is not used again.
        unsafe { s.free(blocks[3], l) };
        let big = Layout::from_size_align(2 * SLOT_BYTES, 8).unwrap();
        assert!(s.alloc(big).is_none(), "one free slot is not a run of two");
        // SAFETY: as above.
        unsafe { s.free(blocks[4], l) };
        let b = s.alloc(big).unwrap();
        assert_eq!(b, blocks[3]);
        // SAFETY: as above.
        unsafe { s.free(b, big) };
        for &p in blocks
            .iter()
            .enumerate()
            .filter(|(i, _)| ![3, 4].contains(i))
            .map(|(_, p)| p)
        {
            // SAFETY: as above.
            unsafe { s.free(p, l) };
        }
        // Chunk-sized blocks go to the inner provider first (they never leave).
        let mut s2 = FrameReserve::new(HeapStorage, HeapFrames);
        assert!(s2.add_frame(Pfn(1024)));
        let chunk = Layout::from_size_align(3 * SLOT_BYTES, 8).unwrap();
        let c = s2.alloc(chunk).unwrap();
        assert_eq!(s2.frame_bytes_used(), 0);
        // SAFETY: `c` came from `s2.alloc(chunk)`.
        unsafe { s2.free(c, chunk) };
        assert_eq!(s.take_empty_frame(), Some(Pfn(512)));
        assert_eq!((s.frames(), s.take_empty_frame()), (0, None));
        // SAFETY: `a` came from the inner provider through `s.alloc(l)`.
        unsafe { s.free(a, l) };
        assert_eq!(
            s.inner().used(),
            0,
            "the inner block went back to the inner provider"
        );
    }

    #[test]
    fn budget_refuses_and_recovers() {
        let mut s = Budgeted::new(HeapStorage, 100);
        let l = Layout::from_size_align(64, 8).unwrap();
        let a = s.alloc(l).unwrap();
        assert!(s.alloc(l).is_none());
        // SAFETY: `a` came from `s.alloc(l)`.
        unsafe { s.free(a, l) };
        assert_eq!(s.used(), 0);
        let b = s.alloc(l).unwrap();
        // SAFETY: as above.
        unsafe { s.free(b, l) };
    }
}
