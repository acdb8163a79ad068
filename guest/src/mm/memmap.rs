//! Memmap storage of subsections and the locked view through which writers reach it.

use core::alloc::Layout;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use super::geometry::{Pfn, PAGES_PER_SUBSECTION};
use super::page::{PageDesc, Raw};
use super::section::SectionRoot;

/// Descriptors of one subsection.
pub(crate) type SubsectionMemmap = [PageDesc; PAGES_PER_SUBSECTION as usize];

/// Layout of one subsection's memmap block: 512 × 16 B = 8 KiB.
pub(crate) const MEMMAP_LAYOUT: Layout = Layout::new::<SubsectionMemmap>();
const _: () = assert!(MEMMAP_LAYOUT.size() == 8192);

/// Bytes of memmap per present subsection.
pub const MEMMAP_BYTES_PER_SUBSECTION: usize = MEMMAP_LAYOUT.size();

/// The right to dereference memmap of present subsections. It lives inside the model's
/// mutex; freeing memmap takes it by `&mut`, so the borrow checker rules out a descriptor
/// reference (borrowed from `&MemmapToken`) surviving a free.
#[derive(Debug)]
pub(crate) struct MemmapToken(());

impl MemmapToken {
    pub(crate) const fn new() -> MemmapToken {
        MemmapToken(())
    }
}

/// Writers' view of the memmap: valid while the mutation lock is held.
#[derive(Clone, Copy)]
pub(crate) struct Memmap<'t> {
    pub(crate) root: &'t SectionRoot,
    _token: &'t MemmapToken,
}

impl<'t> Memmap<'t> {
    pub(crate) fn new(root: &'t SectionRoot, token: &'t MemmapToken) -> Memmap<'t> {
        Memmap {
            root,
            _token: token,
        }
    }

    /// The descriptor of `pfn` if its subsection is present.
    pub(crate) fn get(&self, pfn: Pfn) -> Option<&'t PageDesc> {
        let section = self.root.section_of(pfn)?;
        let idx = pfn.subsection_in_section();
        if section.present() & (1 << idx) == 0 {
            return None;
        }
        let base = section.memmap_ptr(idx)?;
        // SAFETY: the subsection is present, so `base` points to its initialised memmap
        // block of 512 descriptors (written before the present bit). Memmap is freed only
        // with `&mut MemmapToken`, which cannot exist while this view borrows the token for
        // 't, so the block outlives the reference.
        Some(unsafe { base.add(pfn.index_in_subsection()).as_ref() })
    }

    /// The descriptors of the `len` pages from `pfn` if they lie in one present
    /// subsection (an aligned block of order <= 9 always does): one lookup for the block
    /// instead of one per page.
    pub(crate) fn run(&self, pfn: Pfn, len: usize) -> Option<&'t [PageDesc]> {
        let at = pfn.index_in_subsection();
        if len == 0 || at + len > PAGES_PER_SUBSECTION as usize {
            return None;
        }
        let first = self.get(pfn)?;
        // SAFETY: `first` is descriptor `at` of a present subsection's block of 512
        // initialised descriptors, and `at + len <= 512`, so the `len` descriptors from it
        // are in that block; it outlives 't as in `get`.
        Some(unsafe { core::slice::from_raw_parts(first, len) })
    }

    /// The descriptor of a pfn the caller has already validated as present.
    pub(crate) fn desc(&self, pfn: Pfn) -> &'t PageDesc {
        self.get(pfn)
            .expect("memmap lookup of a pfn validated as present")
    }
}

/// Fill fresh storage with 512 descriptors: `init(pfn)` gives each page's initial state.
pub(crate) fn init_block(
    mem: NonNull<u8>,
    first: Pfn,
    mut init: impl FnMut(Pfn) -> Raw,
) -> NonNull<PageDesc> {
    let base = mem.cast::<PageDesc>();
    for i in 0..PAGES_PER_SUBSECTION {
        // SAFETY: `mem` is fresh, exclusively owned storage of MEMMAP_LAYOUT (512
        // descriptors, aligned for PageDesc); `i < 512` stays inside it. Nothing reads the
        // block before its subsection is marked present/active, after this loop.
        unsafe {
            base.add(i as usize)
                .write(PageDesc::new(init(first.add(i))))
        };
    }
    base
}

/// Fills a memmap block with [`PageDesc::POISON`]: freed blocks before they go back to
/// storage, and fresh blocks before their initialisation when the early-active bug is
/// injected, so that a reader that reaches one (a missing grace period, an active bit set
/// too early) finds no valid state.
pub(crate) fn poison_block(mem: NonNull<u8>) {
    let base = mem.cast::<[AtomicU64; 2]>();
    for i in 0..PAGES_PER_SUBSECTION as usize {
        // SAFETY: `mem` is a block of MEMMAP_LAYOUT owned by the caller (fresh, or
        // unpublished and past its grace period); atomics, since with a deliberately
        // injected race bug a reader may still look at it.
        let d = unsafe { &*base.add(i).as_ptr() };
        // Relaxed: the poison is published like the descriptors it replaces (by the
        // active bit, or not at all).
        d[0].store(PageDesc::POISON[0], Ordering::Relaxed);
        d[1].store(PageDesc::POISON[1], Ordering::Relaxed);
    }
}

/// Fill fresh storage with 512 copies of one state (the common case at boot and hotplug:
/// encoded once, then a plain store loop at memset speed).
pub(crate) fn fill_block(mem: NonNull<u8>, raw: Raw) -> NonNull<PageDesc> {
    let words = PageDesc::new(raw).into_words();
    fill_words(mem.cast(), words);
    mem.cast()
}

/// A fresh block made 512 copies of `raw` by copying `src`, a block filled with `raw`
/// whose descriptors 1..512 are unchanged since (the next subsection of a run in one
/// state: the first is filled, the rest copied from it). Descriptor 0 is written from
/// `raw` afterwards: in a Free block the free lists have made it a list head. On x86_64
/// a `rep movsq`: hardware runs it as a fast string, writing whole lines without reading
/// them first (a store loop cannot: ~90 % of memset against ~99 % for the copy, host
/// benchmark), and TCG runs it in a tight loop.
pub(crate) fn copy_block(dst: NonNull<u8>, src: NonNull<PageDesc>, raw: Raw) -> NonNull<PageDesc> {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `src` is an initialised block of MEMMAP_LAYOUT (8 KiB) and `dst` fresh,
    // exclusively owned storage of the same layout: 1024 u64 each, disjoint.
    unsafe {
        core::arch::asm!(
            "rep movsq",
            inout("rdi") dst.as_ptr() => _,
            inout("rsi") src.as_ptr() => _,
            inout("rcx") MEMMAP_LAYOUT.size() / 8 => _,
            options(nostack, preserves_flags)
        )
    };
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: as above.
    unsafe {
        core::ptr::copy_nonoverlapping(
            src.cast::<u8>().as_ptr(),
            dst.as_ptr(),
            MEMMAP_LAYOUT.size(),
        )
    };
    // SAFETY: `dst` holds 512 descriptors (just written), exclusively ours.
    unsafe {
        dst.cast::<[u64; 2]>()
            .write(PageDesc::new(raw).into_words())
    };
    dst.cast()
}

/// One 16-byte store per descriptor where the target has them (the kernel too: it is
/// built with SSE, and its interrupt entry saves the XMM registers). Two 8-byte stores
/// per descriptor halve the speed of a store-bound loop, and LLVM splits a `u128` store
/// of a constant into two `movq`, so the vector store is explicit.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
fn fill_words(base: NonNull<[u64; 2]>, [w0, w1]: [u64; 2]) {
    use core::arch::x86_64::{__m128i, _mm_set_epi64x, _mm_storeu_si128};
    // Word 0 at the lower address: the low lane. `as i64` keeps the bits.
    // SAFETY: SSE2 is enabled for this build (the cfg above).
    let v = unsafe { _mm_set_epi64x(w1 as i64, w0 as i64) };
    let p = base.cast::<__m128i>();
    for i in 0..PAGES_PER_SUBSECTION as usize {
        // SAFETY: as in `init_block`; a PageDesc is two u64 words (repr(C), size 16,
        // asserted), so one 16-byte store initialises it. Unaligned store: the block is
        // only promised PageDesc's 8-byte alignment.
        unsafe { _mm_storeu_si128(p.add(i).as_ptr(), v) };
    }
}

/// Without SSE2 (another architecture): two 8-byte stores.
#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
fn fill_words(base: NonNull<[u64; 2]>, words: [u64; 2]) {
    for i in 0..PAGES_PER_SUBSECTION as usize {
        // SAFETY: as in `init_block`; a PageDesc is two u64 words (repr(C), size 16,
        // asserted), so writing its words initialises it.
        unsafe { base.add(i).write(words) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::page::PageState;

    fn block() -> std::vec::Vec<[u64; 2]> {
        std::vec![[0xdead, 0xbeef]; PAGES_PER_SUBSECTION as usize]
    }

    #[test]
    fn a_copied_block_holds_raw_everywhere_even_if_the_template_head_changed() {
        let raw = Raw::State(PageState::Offline);
        let want = PageDesc::new(raw).into_words();
        let mut src = block();
        let t = fill_block(NonNull::new(src.as_mut_ptr().cast()).unwrap(), raw);
        assert!(src.iter().all(|w| *w == want), "the fill");
        // The free lists rewrite a template's first descriptor; the copy must not keep it.
        src[0] = PageDesc::new(Raw::State(PageState::Unpopulated)).into_words();
        let mut dst = block();
        copy_block(NonNull::new(dst.as_mut_ptr().cast()).unwrap(), t, raw);
        assert!(dst.iter().all(|w| *w == want), "the copy");
    }
}
