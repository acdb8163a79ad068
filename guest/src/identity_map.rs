//! Identity page tables (4-level, 2 MiB leaves), as pure logic over a table store.
//!
//! The kernel identity-maps guest-physical memory: virtual == physical. The entry stub maps
//! the first 4 GiB; [`map_identity_2m`] adds more (RAM above 4 GiB from the start_info
//! memmap, hot-added sections later). Tables are reached through [`TableStore`], so the
//! walk runs on the host against a fake store.

/// Present, writable.
pub const PTE_P_RW: u64 = 0b11;
/// Page-size bit in a PD entry: the entry maps 2 MiB directly.
pub const PTE_PS: u64 = 1 << 7;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
pub const SIZE_2M: u64 = 1 << 21;

/// Where page-table pages live and come from.
pub trait TableStore {
    /// The 512 entries of the table page at `paddr`.
    fn table(&mut self, paddr: u64) -> &mut [u64; 512];
    /// A zeroed page for a new table, or None if none is left.
    fn alloc_table(&mut self) -> Option<u64>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// No page left for a new table.
    OutOfTables,
    /// The address is beyond 4-level paging's 256 TiB identity range.
    TooHigh,
}

/// Identity-maps `[start, end)` (rounded out to 2 MiB) under the PML4 at `pml4`. Already
/// mapped 2 MiB ranges are left as they are. Returns how many 2 MiB entries were added.
pub fn map_identity_2m(
    store: &mut impl TableStore,
    pml4: u64,
    start: u64,
    end: u64,
) -> Result<usize, MapError> {
    let first = start & !(SIZE_2M - 1);
    let last = end.checked_add(SIZE_2M - 1).ok_or(MapError::TooHigh)? & !(SIZE_2M - 1);
    if last > 1 << 47 {
        return Err(MapError::TooHigh);
    }
    let mut added = 0;
    let mut addr = first;
    while addr < last {
        let pdpt = next_level(store, pml4, (addr >> 39) & 511)?;
        let pd = next_level(store, pdpt, (addr >> 30) & 511)?;
        let e = &mut store.table(pd)[((addr >> 21) & 511) as usize];
        if *e & 1 == 0 {
            *e = addr | PTE_PS | PTE_P_RW;
            added += 1;
        }
        addr += SIZE_2M;
    }
    Ok(added)
}

/// The table an entry points to, creating it if absent.
fn next_level(store: &mut impl TableStore, table: u64, index: u64) -> Result<u64, MapError> {
    let e = store.table(table)[index as usize];
    if e & 1 != 0 {
        return Ok(e & ADDR_MASK);
    }
    let new = store.alloc_table().ok_or(MapError::OutOfTables)?;
    store.table(table)[index as usize] = new | PTE_P_RW;
    Ok(new)
}

/// Looks up the physical address `vaddr` maps to (2 MiB leaves only), for checks.
pub fn translate(store: &mut impl TableStore, pml4: u64, vaddr: u64) -> Option<u64> {
    let mut table = pml4;
    for shift in [39u32, 30] {
        let e = store.table(table)[((vaddr >> shift) & 511) as usize];
        if e & 1 == 0 {
            return None;
        }
        table = e & ADDR_MASK;
    }
    let e = store.table(table)[((vaddr >> 21) & 511) as usize];
    (e & 1 != 0 && e & PTE_PS != 0)
        .then_some((e & ADDR_MASK & !(SIZE_2M - 1)) | (vaddr & (SIZE_2M - 1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Fake {
        pages: HashMap<u64, Box<[u64; 512]>>,
        next: u64,
        limit: usize,
    }
    impl TableStore for Fake {
        fn table(&mut self, paddr: u64) -> &mut [u64; 512] {
            self.pages
                .get_mut(&paddr)
                .expect("table page was allocated")
        }
        fn alloc_table(&mut self) -> Option<u64> {
            if self.pages.len() >= self.limit {
                return None;
            }
            let p = self.next;
            self.next += 4096;
            self.pages.insert(p, Box::new([0; 512]));
            Some(p)
        }
    }
    fn fake(limit: usize) -> (Fake, u64) {
        let mut f = Fake {
            pages: HashMap::new(),
            next: 0x1000,
            limit,
        };
        let root = f.alloc_table().unwrap();
        (f, root)
    }

    #[test]
    fn maps_above_4g_identity() {
        let (mut f, root) = fake(16);
        let (s, e) = (0x1_0000_0000u64 + 0x1234, 0x1_4000_0000u64);
        assert_eq!(map_identity_2m(&mut f, root, s, e), Ok(512));
        assert_eq!(translate(&mut f, root, 0x1_2345_6789), Some(0x1_2345_6789));
        assert_eq!(translate(&mut f, root, 0x1_4000_0000), None);
        assert_eq!(translate(&mut f, root, 0xffff_ffff), None);
        // Mapping again adds nothing and allocates nothing.
        let n = f.pages.len();
        assert_eq!(map_identity_2m(&mut f, root, s, e), Ok(0));
        assert_eq!(f.pages.len(), n);
    }

    #[test]
    fn rounds_out_to_2m_and_reports_exhaustion() {
        let (mut f, root) = fake(3);
        assert_eq!(map_identity_2m(&mut f, root, 0x20_0001, 0x20_0002), Ok(1));
        assert_eq!(translate(&mut f, root, 0x20_0000), Some(0x20_0000));
        // A range in another 1 GiB needs a new PD: the store is out of pages.
        assert_eq!(
            map_identity_2m(&mut f, root, 1 << 30, (1 << 30) + 1),
            Err(MapError::OutOfTables)
        );
        assert_eq!(
            map_identity_2m(&mut f, root, 1 << 47, (1 << 47) + 1),
            Err(MapError::TooHigh)
        );
    }
}
