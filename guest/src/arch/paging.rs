//! The kernel's page tables: the entry stub's identity map of the low 4 GiB, extended
//! (through [`guest::paging`]) for RAM above 4 GiB. Table pages come from a pool in .bss.

use guest::paging::{map_identity_2m, MapError, TableStore};

/// Table pages for mappings beyond the boot 4 GiB: each PD covers 1 GiB, so 64 pages map
/// up to ~62 GiB more. The memory model (issue 4) will hand out table pages instead.
const POOL_PAGES: usize = 64;

#[repr(C, align(4096))]
struct Pool([[u64; 512]; POOL_PAGES]);

static mut POOL: Pool = Pool([[0; 512]; POOL_PAGES]);
static mut POOL_USED: usize = 0;

struct KernelTables;

impl TableStore for KernelTables {
    fn table(&mut self, paddr: u64) -> &mut [u64; 512] {
        // SAFETY: every table reachable from CR3 is identity-mapped kernel memory (boot
        // tables in .bss, or pool pages); callers are serialised by `map`'s &mut.
        unsafe { &mut *(paddr as *mut [u64; 512]) }
    }
    fn alloc_table(&mut self) -> Option<u64> {
        // SAFETY: single vCPU, called only from `map` below.
        unsafe {
            let used = &raw mut POOL_USED;
            if *used == POOL_PAGES {
                return None;
            }
            let page = (&raw mut POOL.0[*used]) as u64;
            *used += 1;
            Some(page)
        }
    }
}

/// Identity-maps `[start, end)` and flushes the TLB.
pub fn map(start: u64, end: u64) -> Result<usize, MapError> {
    let (pml4, _) = super::entry::boot_tables();
    let added = map_identity_2m(&mut KernelTables, pml4, start, end)?;
    super::cpu::flush_tlb();
    Ok(added)
}

/// Table pages taken from the pool so far.
pub fn tables_used() -> usize {
    // SAFETY: plain read of a counter only this vCPU writes.
    unsafe { *(&raw const POOL_USED) }
}
