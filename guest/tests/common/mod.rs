//! Fixtures shared by the host tests: memmaps as Xen gives a PVH guest, memory models
//! booted from them, a quarantine that poisons freed memmap, and a xenstore client on
//! the simulator. Each test binary includes this with `mod common;` and uses only part
//! of it, hence the `dead_code` allowance.

#![allow(dead_code)]

use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use guest::mm::boot::{self, BootConfig, MemmapEntry, E820_ACPI, E820_RAM, E820_RESERVED};
use guest::mm::hotplug::HotplugWindow;
use guest::mm::{HeapStorage, MemModel, MemmapStorage, PfnRange};
use guest::xen::xenstore::XenstoreClient;
use xen_bindings::sim::{SimConfig, SimXen};

pub const MIB: u64 = 1 << 20;

// ---- memmaps and booted models -------------------------------------------------------

/// Xen's ACPI tables in a PVH guest's memmap: first pfn and page count.
pub const ACPI: (u64, u64) = (0xfc000, 11);
/// Xen's special pages (xenstore, console, ...) below 4 GiB: first pfn and page count.
pub const SPECIAL: (u64, u64) = (0xfeff8, 8);

/// `ram_mib` MiB of RAM from address 0.
pub fn ram_entry(ram_mib: u64) -> MemmapEntry {
    MemmapEntry {
        addr: 0,
        size: ram_mib * MIB,
        kind: E820_RAM,
    }
}

/// The pages `(first pfn, count)` as an entry of e820 type `kind`.
pub fn pages_entry((pfn, count): (u64, u64), kind: u32) -> MemmapEntry {
    MemmapEntry {
        addr: pfn << 12,
        size: count << 12,
        kind,
    }
}

/// The ACPI tables' entry.
pub fn acpi_entry() -> MemmapEntry {
    pages_entry(ACPI, E820_ACPI)
}

/// RAM only, as a memmap.
pub fn ram_memmap(ram_mib: u64) -> [MemmapEntry; 1] {
    [ram_entry(ram_mib)]
}

/// The memmap Xen gives a PVH guest of `ram_mib` MiB: RAM from 0, the ACPI tables and
/// the (reserved) special pages.
pub fn pvh_memmap(ram_mib: u64) -> [MemmapEntry; 3] {
    [
        ram_entry(ram_mib),
        acpi_entry(),
        pages_entry(SPECIAL, E820_RESERVED),
    ]
}

/// A boot configuration with every RAM page touchable.
pub fn boot_config<'a>(memmap: &'a [MemmapEntry], reserved: &'a [PfnRange]) -> BootConfig<'a> {
    BootConfig {
        memmap,
        reserved,
        touchable_ram_pages: None,
    }
}

/// The model booted from `memmap` with the `reserved` pages in use, boot ended.
pub fn booted<S: MemmapStorage>(
    memmap: &[MemmapEntry],
    reserved: &[PfnRange],
    storage: S,
) -> MemModel<S> {
    let mm = boot::build(&boot_config(memmap, reserved), storage).unwrap();
    mm.end_boot();
    mm
}

/// A booted model of `ram_mib` MiB of RAM only, with a kernel image of `image_mib` MiB
/// reserved at 1 MiB, and its hotplug window of the default sizes.
pub fn ram_model(ram_mib: u64, image_mib: u64) -> (MemModel<HeapStorage>, HotplugWindow) {
    let map = ram_memmap(ram_mib);
    let mm = booted(
        &map,
        &[PfnRange::covering_bytes(MIB, image_mib * MIB)],
        HeapStorage,
    );
    (mm, HotplugWindow::from_memmap(&map).unwrap())
}

// ---- poisoned memmap storage ---------------------------------------------------------

/// Writes every 16-byte slot of the block as a page descriptor with an invalid tag (0xf)
/// and an even sequence, so that a reader of it panics instead of spinning or reading
/// something plausible.
///
/// # Safety
/// The block is `layout.size()` bytes, 8-byte aligned (memmap and chunk layouts are),
/// and exclusively the caller's (fresh, or given back by the model).
pub unsafe fn poison(ptr: NonNull<u8>, layout: Layout) {
    for i in 0..layout.size() / 16 {
        // SAFETY: inside the block, aligned, and nobody else uses it (the caller's
        // contract).
        unsafe {
            let slot = ptr.as_ptr().add(i * 16).cast::<u64>();
            slot.write(0xf);
            slot.add(1).write(0);
        }
    }
}

/// Blocks a storage got back from the model, poisoned and kept (never reused) until the
/// last clone goes, so that a reader of freed memmap sees poison, not reused memory.
#[derive(Clone, Default)]
pub struct Quarantine(Arc<Mutex<Vec<(usize, Layout)>>>);

impl Quarantine {
    /// Poisons the block and keeps it.
    ///
    /// # Safety
    /// `ptr` came from `HeapStorage.alloc(layout)`, the model gave it back, and nothing
    /// uses it any more.
    pub unsafe fn keep(&self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: the block is exclusively ours now (the caller's contract).
        unsafe { poison(ptr, layout) };
        self.0.lock().unwrap().push((ptr.as_ptr() as usize, layout));
    }
}

impl Drop for Quarantine {
    fn drop(&mut self) {
        if Arc::strong_count(&self.0) == 1 {
            for (p, l) in self.0.lock().unwrap().drain(..) {
                // SAFETY: the block came from `HeapStorage.alloc(l)` and nothing uses it.
                unsafe { HeapStorage.free(NonNull::new(p as *mut u8).unwrap(), l) };
            }
        }
    }
}

// ---- xenstore ------------------------------------------------------------------------

/// A xenstore client on the simulator's ring page and event channel.
pub fn xs_client(sim: &SimXen) -> XenstoreClient<SimXen> {
    let page = NonNull::new(sim.xs_page()).unwrap();
    // SAFETY: the page lives as long as any clone of `sim`, and the client holds one; it is
    // the only guest-side user.
    unsafe { XenstoreClient::new(sim.clone(), page, sim.xs_port()) }
}

/// A simulated Xen with `config` and a xenstore client of ours on it.
pub fn xs_world(config: SimConfig) -> (SimXen, XenstoreClient<SimXen>) {
    let sim = SimXen::new(config);
    let c = xs_client(&sim);
    (sim, c)
}

/// A simulated Xen in which we are `domid`, and our xenstore client.
pub fn xs_domain(domid: u16) -> (SimXen, XenstoreClient<SimXen>) {
    xs_world(SimConfig {
        domid,
        ..SimConfig::default()
    })
}
