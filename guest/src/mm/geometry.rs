//! Geometry of the guest-physical address space: pages, subsections, sections.
//!
//! Numbers follow Linux x86_64 SPARSEMEM: a section is 128 MiB (2^15 pages) and is split
//! into 64 subsections of 2 MiB (2^9 pages). A subsection is also the largest extent a Xen
//! domU may populate or release in one go (order 9), which is why it is the unit of memmap
//! storage and of the `present`/`active` maps.

use core::fmt;

/// log2 of the page size.
pub const PAGE_SHIFT: u32 = 12;
/// Bytes per page.
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// log2 of pages per subsection (order of a whole subsection).
pub const SUBSECTION_SHIFT: u32 = 9;
/// Pages per subsection (2 MiB).
pub const PAGES_PER_SUBSECTION: u64 = 1 << SUBSECTION_SHIFT;
/// log2 of pages per section.
pub const SECTION_SHIFT: u32 = 15;
/// Pages per section (128 MiB).
pub const PAGES_PER_SECTION: u64 = 1 << SECTION_SHIFT;
/// Subsections per section; one bit each in a section's `u64` maps.
pub const SUBSECTIONS_PER_SECTION: usize = 1 << (SECTION_SHIFT - SUBSECTION_SHIFT);
/// Bits of guest-physical address the model covers: 46 bits = 64 TiB.
pub const MAX_PHYS_BITS: u32 = 46;
/// Exclusive upper bound of a pfn the model accepts (2^34).
pub const MAX_PFN: u64 = 1 << (MAX_PHYS_BITS - PAGE_SHIFT);
/// Number of section slots covering [`MAX_PFN`] (2^19).
pub const MAX_SECTIONS: usize = 1 << (MAX_PHYS_BITS - PAGE_SHIFT - SECTION_SHIFT);

const _: () = assert!(SUBSECTIONS_PER_SECTION == 64);
const _: () = assert!(MAX_SECTIONS == 1 << 19);

/// A page frame number: guest-physical address >> 12. Under PVH this is also the Xen gfn.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct Pfn(pub u64);

impl Pfn {
    /// The pfn containing physical address `addr`.
    pub const fn from_addr(addr: u64) -> Pfn {
        Pfn(addr >> PAGE_SHIFT)
    }
    /// First byte of the page.
    pub const fn addr(self) -> u64 {
        self.0 << PAGE_SHIFT
    }
    /// Whether the model can describe this pfn at all.
    pub const fn in_range(self) -> bool {
        self.0 < MAX_PFN
    }
    /// Section number of this pfn.
    pub const fn section(self) -> usize {
        (self.0 >> SECTION_SHIFT) as usize
    }
    /// Index of this pfn's subsection inside its section (0..64).
    pub const fn subsection_in_section(self) -> usize {
        ((self.0 >> SUBSECTION_SHIFT) as usize) & (SUBSECTIONS_PER_SECTION - 1)
    }
    /// Global subsection number (pfn >> 9).
    pub const fn subsection(self) -> u64 {
        self.0 >> SUBSECTION_SHIFT
    }
    /// Index of this pfn inside its subsection (0..512).
    pub const fn index_in_subsection(self) -> usize {
        (self.0 & (PAGES_PER_SUBSECTION - 1)) as usize
    }
    /// First pfn of this pfn's subsection.
    pub const fn subsection_start(self) -> Pfn {
        Pfn(self.0 & !(PAGES_PER_SUBSECTION - 1))
    }
    /// First pfn of this pfn's section.
    pub const fn section_start(self) -> Pfn {
        Pfn(self.0 & !(PAGES_PER_SECTION - 1))
    }
    /// `self + n`.
    pub const fn add(self, n: u64) -> Pfn {
        Pfn(self.0 + n)
    }
}

impl fmt::Debug for Pfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pfn {:#x}", self.0)
    }
}

impl fmt::Display for Pfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// First pfn of section `nr`.
pub const fn section_start_pfn(nr: usize) -> Pfn {
    Pfn((nr as u64) << SECTION_SHIFT)
}

/// First pfn of subsection `idx` of section `nr`.
pub const fn subsection_start_pfn(nr: usize, idx: usize) -> Pfn {
    Pfn(((nr as u64) << SECTION_SHIFT) + ((idx as u64) << SUBSECTION_SHIFT))
}

/// A half-open range of pfns `[start, end)`.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct PfnRange {
    /// First pfn.
    pub start: Pfn,
    /// One past the last pfn.
    pub end: Pfn,
}

impl PfnRange {
    /// `[start, end)`; an inverted range is empty.
    pub const fn new(start: Pfn, end: Pfn) -> PfnRange {
        if end.0 < start.0 {
            PfnRange { start, end: start }
        } else {
            PfnRange { start, end }
        }
    }
    /// `count` pages from `start`.
    pub const fn from_count(start: Pfn, count: u64) -> PfnRange {
        PfnRange::new(start, Pfn(start.0 + count))
    }
    /// Pages of a byte range, rounded outward (a page partly covered is included).
    pub const fn covering_bytes(addr: u64, size: u64) -> PfnRange {
        let end = addr.saturating_add(size);
        PfnRange::new(Pfn(addr >> PAGE_SHIFT), Pfn(end.div_ceil(PAGE_SIZE)))
    }
    /// Pages of a byte range, rounded inward (only pages wholly inside).
    pub const fn inside_bytes(addr: u64, size: u64) -> PfnRange {
        let end = addr.saturating_add(size);
        PfnRange::new(Pfn(addr.div_ceil(PAGE_SIZE)), Pfn(end >> PAGE_SHIFT))
    }
    /// Number of pages.
    pub const fn len(&self) -> u64 {
        self.end.0 - self.start.0
    }
    /// Whether the range holds no page.
    pub const fn is_empty(&self) -> bool {
        self.end.0 <= self.start.0
    }
    /// Whether `pfn` is inside.
    pub const fn contains(&self, pfn: Pfn) -> bool {
        self.start.0 <= pfn.0 && pfn.0 < self.end.0
    }
    /// The overlap of two ranges (possibly empty).
    pub fn intersect(&self, other: &PfnRange) -> PfnRange {
        PfnRange::new(self.start.max(other.start), self.end.min(other.end))
    }
    /// Whether both ends lie on subsection boundaries.
    pub const fn is_subsection_aligned(&self) -> bool {
        self.start.0.is_multiple_of(PAGES_PER_SUBSECTION)
            && self.end.0.is_multiple_of(PAGES_PER_SUBSECTION)
    }
    /// The pfns, in order.
    pub fn iter(&self) -> impl Iterator<Item = Pfn> {
        (self.start.0..self.end.0).map(Pfn)
    }
}

impl fmt::Debug for PfnRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pfn [{:#x}, {:#x})", self.start.0, self.end.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_and_subsection_numbers() {
        let pfn = Pfn::from_addr(0x1_2345_6000);
        assert_eq!(pfn, Pfn(0x123456));
        assert_eq!(pfn.section(), 0x123456 >> 15);
        assert_eq!(pfn.subsection(), 0x123456 >> 9);
        assert_eq!(pfn.subsection_in_section(), (0x123456 >> 9) & 63);
        assert_eq!(pfn.index_in_subsection(), 0x123456 & 511);
        assert_eq!(pfn.subsection_start(), Pfn(0x123400));
        assert_eq!(pfn.section_start(), Pfn(0x120000));
        assert_eq!(
            subsection_start_pfn(pfn.section(), pfn.subsection_in_section()),
            pfn.subsection_start()
        );
        assert_eq!(section_start_pfn(pfn.section()), pfn.section_start());
    }

    #[test]
    fn byte_sizes_match_linux() {
        assert_eq!(PAGES_PER_SECTION * PAGE_SIZE, 128 << 20);
        assert_eq!(PAGES_PER_SUBSECTION * PAGE_SIZE, 2 << 20);
        assert_eq!(MAX_PFN * PAGE_SIZE, 64 << 40);
        // The last pfn of 64 TiB is in the last section slot.
        assert_eq!(Pfn(MAX_PFN - 1).section(), MAX_SECTIONS - 1);
        assert!(!Pfn(MAX_PFN).in_range());
    }

    #[test]
    fn byte_ranges_round_the_right_way() {
        let r = PfnRange::covering_bytes(0x1800, 0x1000);
        assert_eq!((r.start, r.end), (Pfn(1), Pfn(3)));
        let r = PfnRange::inside_bytes(0x1800, 0x2000);
        assert_eq!((r.start, r.end), (Pfn(2), Pfn(3)));
        assert!(PfnRange::inside_bytes(0x1800, 0x800).is_empty());
        assert_eq!(PfnRange::new(Pfn(5), Pfn(2)).len(), 0);
        let a = PfnRange::new(Pfn(0), Pfn(10));
        let b = PfnRange::new(Pfn(5), Pfn(20));
        assert_eq!(a.intersect(&b), PfnRange::new(Pfn(5), Pfn(10)));
        assert!(PfnRange::new(Pfn(512), Pfn(1024)).is_subsection_aligned());
        assert!(!PfnRange::new(Pfn(512), Pfn(1000)).is_subsection_aligned());
    }
}
