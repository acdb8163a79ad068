//! Where memmap storage comes from.
//!
//! The model never allocates on its own: section chunks and per-subsection memmap blocks
//! come from a [`MemmapStorage`] the caller injects. At boot the kernel has no heap yet, so
//! it hands the model a [`BumpStorage`] carved from touchable RAM (the region is reported
//! through [`MemmapStorage::claimed`] and becomes Reserved); host tests use [`HeapStorage`];
//! [`Budgeted`] caps what any provider may hand out (and injects failures in tests).

use core::alloc::Layout;
use core::ptr::NonNull;

use super::geometry::{PfnRange, PAGE_SIZE};

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
