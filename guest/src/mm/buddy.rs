//! The buddy frame allocator over Free pages of online sections.
//!
//! Free blocks of order 0..=9 sit on intrusive doubly-linked lists threaded through the
//! descriptors of their first page (the "head"); the other pages of a block are Free
//! "tails". A block of order k is aligned to 2^k pages, so blocks never cross a subsection
//! (order 9 = one whole subsection = one Xen order-9 extent) and a block's descriptors all
//! live in one memmap block.

use super::geometry::{Pfn, SUBSECTION_SHIFT};
use super::memmap::Memmap;
use super::page::{FreeHead, Link, Raw};

/// Largest order: a whole subsection.
pub const MAX_ORDER: u8 = SUBSECTION_SHIFT as u8;
const ORDERS: usize = MAX_ORDER as usize + 1;

/// Free-list heads and per-order block counts.
#[derive(Debug, Default)]
pub(crate) struct FreeLists {
    heads: [Link; ORDERS],
    blocks: [u64; ORDERS],
}

fn head_of(mm: &Memmap<'_>, pfn: Pfn) -> Option<FreeHead> {
    match mm.get(pfn)?.load() {
        Raw::Free(Some(h)) => Some(h),
        _ => None,
    }
}

impl FreeLists {
    pub(crate) const fn new() -> FreeLists {
        FreeLists {
            heads: [None; ORDERS],
            blocks: [0; ORDERS],
        }
    }

    /// Blocks on the list of `order`.
    pub(crate) fn blocks(&self, order: u8) -> u64 {
        self.blocks[order as usize]
    }

    fn set_head(mm: &Memmap<'_>, pfn: Pfn, h: FreeHead) {
        mm.desc(pfn).store(Raw::Free(Some(h)));
    }

    /// Put a block on the front of its list, without coalescing.
    fn push(&mut self, mm: &Memmap<'_>, pfn: Pfn, order: u8) {
        let k = order as usize;
        let next = self.heads[k];
        if let Some(n) = next {
            let mut h = head_of(mm, n).expect("free list holds a non-head");
            h.prev = Some(pfn);
            Self::set_head(mm, n, h);
        }
        Self::set_head(
            mm,
            pfn,
            FreeHead {
                order,
                next,
                prev: None,
            },
        );
        self.heads[k] = Some(pfn);
        self.blocks[k] += 1;
    }

    /// Take a block off its list; its head becomes a plain Free tail.
    fn unlink(&mut self, mm: &Memmap<'_>, pfn: Pfn, h: FreeHead) {
        let k = h.order as usize;
        match h.prev {
            Some(p) => {
                let mut ph = head_of(mm, p).expect("free list holds a non-head");
                ph.next = h.next;
                Self::set_head(mm, p, ph);
            }
            None => self.heads[k] = h.next,
        }
        if let Some(n) = h.next {
            let mut nh = head_of(mm, n).expect("free list holds a non-head");
            nh.prev = h.prev;
            Self::set_head(mm, n, nh);
        }
        mm.desc(pfn).store(Raw::Free(None));
        self.blocks[k] -= 1;
    }

    /// Add the block `[pfn, pfn + 2^order)`, whose pages the caller has already made Free,
    /// merging it with free buddies up to [`MAX_ORDER`].
    pub(crate) fn insert(&mut self, mm: &Memmap<'_>, mut pfn: Pfn, mut order: u8) {
        debug_assert!(order <= MAX_ORDER && pfn.0.is_multiple_of(1 << order));
        while order < MAX_ORDER {
            let buddy = Pfn(pfn.0 ^ (1 << order));
            match head_of(mm, buddy) {
                Some(h) if h.order == order => {
                    // Our block's first page is still a tail (never pushed), and unlinking
                    // turns the buddy's head into one: the merged block is all tails.
                    self.unlink(mm, buddy, h);
                    pfn = pfn.min(buddy);
                    order += 1;
                }
                _ => break,
            }
        }
        self.push(mm, pfn, order);
    }

    /// Take a block of exactly `order`, splitting a larger one if needed. Its pages stay
    /// Free (tails) until the caller gives them their new state.
    pub(crate) fn alloc(&mut self, mm: &Memmap<'_>, order: u8) -> Option<Pfn> {
        let from = (order..=MAX_ORDER).find(|&k| self.heads[k as usize].is_some())?;
        let pfn = self.heads[from as usize]?;
        let h = head_of(mm, pfn).expect("free list holds a non-head");
        self.unlink(mm, pfn, h);
        let mut k = from;
        while k > order {
            k -= 1;
            // Keep the lower half; the upper half goes back as a block of order k.
            self.push(mm, pfn.add(1 << k), k);
        }
        Some(pfn)
    }

    /// Isolate the single Free page `pfn` (on some list inside a block), splitting its
    /// block. Returns false if `pfn` is not inside any free block.
    pub(crate) fn take(&mut self, mm: &Memmap<'_>, pfn: Pfn) -> bool {
        self.take_block(mm, pfn, 0)
    }

    /// Isolate the block `[pfn, pfn + 2^order)` (aligned to its order) from the free block
    /// that contains it, splitting that block; the pieces around it go back on their
    /// lists. Its pages stay Free (tails) until the caller gives them their new state.
    /// Returns false if no free block of at least `order` contains `pfn`.
    pub(crate) fn take_block(&mut self, mm: &Memmap<'_>, pfn: Pfn, order: u8) -> bool {
        debug_assert!(order <= MAX_ORDER && pfn.0.is_multiple_of(1 << order));
        let found = (order..=MAX_ORDER).find_map(|k| {
            let head = Pfn(pfn.0 & !((1u64 << k) - 1));
            head_of(mm, head)
                .filter(|h| h.order >= k)
                .map(|h| (head, h))
        });
        let Some((mut head, h)) = found else {
            return false;
        };
        self.unlink(mm, head, h);
        let mut k = h.order;
        while k > order {
            k -= 1;
            let upper = head.add(1 << k);
            if pfn >= upper {
                self.push(mm, head, k);
                head = upper;
            } else {
                self.push(mm, upper, k);
            }
        }
        true
    }

    /// Check the lists: links consistent, heads aligned and of the list's order, counts
    /// right. Returns the number of free pages on the lists.
    pub(crate) fn verify(&self, mm: &Memmap<'_>) -> Result<u64, &'static str> {
        let mut pages = 0;
        for k in 0..ORDERS {
            let mut prev: Link = None;
            let mut cur = self.heads[k];
            let mut n = 0;
            while let Some(p) = cur {
                let h = head_of(mm, p).ok_or("list entry is not a free head")?;
                if h.order as usize != k {
                    return Err("head on the list of another order");
                }
                if p.0 % (1 << k) != 0 {
                    return Err("misaligned block");
                }
                if h.prev != prev {
                    return Err("broken prev link");
                }
                for i in 1..(1u64 << k) {
                    if mm.get(p.add(i)).map(|d| d.load()) != Some(Raw::Free(None)) {
                        return Err("block page is not a free tail");
                    }
                }
                n += 1;
                if n > self.blocks[k] {
                    return Err("list longer than its count (cycle?)");
                }
                prev = cur;
                cur = h.next;
            }
            if n != self.blocks[k] {
                return Err("block count mismatch");
            }
            pages += n << k;
        }
        Ok(pages)
    }
}
