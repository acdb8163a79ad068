//! The kernel heap: a small early arena in the image, then 2 MiB frames from the memory model.
//!
//! Each region is a first-fit `linked_list_allocator::Heap`. When none can serve a
//! request, the heap takes an order-9 block from the frame allocator (state Allocated, so
//! the census counts it as the kernel's RAM) and adds it as a new region. Regions are never
//! given back: the kernel's heap use is small and long-lived.

use core::alloc::{GlobalAlloc, Layout};
use core::mem::MaybeUninit;
use core::ptr::{null_mut, NonNull};
use core::sync::atomic::{AtomicU64, Ordering};

use linked_list_allocator::Heap;

use crate::kmem::MM;

/// Early heap, before the memory model exists (start_info capture, model construction).
const EARLY_SIZE: usize = 1 << 20;
#[repr(C, align(4096))]
struct Early([u8; EARLY_SIZE]);
/// Outside .bss, so the entry stub does not zero it (TCG runs `rep stos` one element at a
/// time: ~1 ms per MiB): a heap hands out uninitialised memory anyway.
#[link_section = ".noinit"]
static mut EARLY: MaybeUninit<Early> = MaybeUninit::uninit();

/// A 2 MiB frame per growth step: order 9, the largest block the allocator has.
const GROW_ORDER: u8 = 9;
const GROW_BYTES: usize = 4096 << GROW_ORDER;
const MAX_REGIONS: usize = 32;

pub struct KernelHeap {
    regions: spin::Mutex<Regions>,
}

struct Regions {
    heaps: [Option<Heap>; MAX_REGIONS],
}

/// Bytes the heap has taken from the frame allocator (for the census/status).
pub static GROWN_BYTES: AtomicU64 = AtomicU64::new(0);

impl KernelHeap {
    pub const fn new() -> Self {
        Self {
            regions: spin::Mutex::new(Regions {
                heaps: [const { None }; MAX_REGIONS],
            }),
        }
    }

    /// Installs the early arena. Call once, first thing at boot.
    pub fn init_early(&self) {
        // SAFETY: EARLY is used by nothing but this heap, and init_early runs once.
        let heap = unsafe { Heap::new((&raw mut EARLY).cast(), EARLY_SIZE) };
        self.regions.lock().heaps[0] = Some(heap);
    }
}

impl Regions {
    fn alloc(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        self.heaps
            .iter_mut()
            .flatten()
            .find_map(|h| h.allocate_first_fit(layout).ok())
    }

    /// Adds a 2 MiB region from the frame allocator.
    fn grow(&mut self) -> bool {
        let Some(slot) = self.heaps.iter_mut().find(|h| h.is_none()) else {
            return false;
        };
        let Some(mm) = MM.get() else { return false };
        // The model never allocates from this heap, so taking its lock here cannot cycle.
        let Ok(pfn) = mm.alloc_frames(GROW_ORDER) else {
            return false;
        };
        // SAFETY: the frames were Free and are now Allocated to us: backed, identity-mapped
        // and owned by nobody else.
        *slot = Some(unsafe { Heap::new(pfn.addr() as *mut u8, GROW_BYTES) });
        // Relaxed: a statistic.
        GROWN_BYTES.fetch_add(GROW_BYTES as u64, Ordering::Relaxed);
        true
    }
}

// SAFETY: every region is memory only this allocator hands out; the spin lock serialises
// all access to the region list.
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > GROW_BYTES / 2 {
            // Larger requests want frames, not heap; nothing in the kernel makes them.
            return null_mut();
        }
        let mut r = self.regions.lock();
        if let Some(p) = r.alloc(layout) {
            return p.as_ptr();
        }
        if r.grow() {
            if let Some(p) = r.alloc(layout) {
                return p.as_ptr();
            }
        }
        null_mut()
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let mut r = self.regions.lock();
        let addr = ptr as usize;
        for h in r.heaps.iter_mut().flatten() {
            if (h.bottom() as usize..h.top() as usize).contains(&addr) {
                // SAFETY: ptr came from this region's allocate_first_fit with `layout`.
                unsafe { h.deallocate(NonNull::new_unchecked(ptr), layout) };
                return;
            }
        }
        panic!("kernel heap: free of {ptr:p} that no region owns");
    }
}
