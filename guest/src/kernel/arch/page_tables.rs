//! The kernel's page tables: the entry stub's identity map of the low 4 GiB, extended
//! (through [`guest::identity_map`]) for RAM above 4 GiB. New table pages are frames from
//! the memory model's allocator (state Allocated, so they count as the kernel's RAM),
//! reached through the source [`crate::kmem`] registers with [`set_table_source`]: arch
//! code does not name the memory model.

use core::sync::atomic::{AtomicUsize, Ordering};

use guest::identity_map::{map_identity_2m, MapError, TableStore};

/// Table pages taken from the allocator (a statistic).
static TABLES: AtomicUsize = AtomicUsize::new(0);

/// Gives one free, backed, identity-mapped frame (its physical address) for a new table.
pub type TableSource = fn() -> Option<u64>;

/// Where new table pages come from; set once at boot, before the first [`map`].
static SOURCE: spin::Once<TableSource> = spin::Once::new();

/// Registers where new table pages come from (once, at boot).
pub fn set_table_source(source: TableSource) {
    SOURCE.call_once(|| source);
}

struct KernelTables;

impl TableStore for KernelTables {
    fn table(&mut self, paddr: u64) -> &mut [u64; 512] {
        // SAFETY: every table reachable from CR3 is identity-mapped kernel memory (boot
        // tables in .bss, or allocator frames below what is mapped); callers are
        // serialised by `map`'s caller (single vCPU, boot and driver context only).
        unsafe { &mut *(paddr as *mut [u64; 512]) }
    }

    fn alloc_table(&mut self) -> Option<u64> {
        let page = (*SOURCE.get()?)()? as *mut u8;
        // SAFETY: the source hands out a frame just allocated to us (backed by Xen,
        // identity-mapped) and nobody else's.
        unsafe { core::ptr::write_bytes(page, 0, 4096) };
        // Relaxed: a statistic.
        TABLES.fetch_add(1, Ordering::Relaxed);
        Some(page as u64)
    }
}

/// Identity-maps `[start, end)` and flushes the TLB.
pub fn map(start: u64, end: u64) -> Result<usize, MapError> {
    let (pml4, _) = super::entry::boot_tables();
    let added = map_identity_2m(&mut KernelTables, pml4, start, end)?;
    super::cpu::flush_tlb();
    Ok(added)
}

/// Table pages allocated so far.
pub fn tables_allocated() -> usize {
    // Relaxed: a statistic.
    TABLES.load(Ordering::Relaxed)
}
