//! Which vCPU am I: a per-vCPU block whose address is in `IA32_GS_BASE`. Nothing else in
//! the kernel uses GS, so `gs:[0]` is always this block's first word.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicUsize};

use xen_bindings::abi::shared_info::VcpuInfo;
use xen_bindings::abi::vcpu::VcpuRunstateInfo;

use super::cpu;

const IA32_GS_BASE: u32 = 0xc000_0101;

/// The per-vCPU block. Fields are atomics: other vCPUs read them (e.g. to send an IPI).
#[repr(C)]
pub struct PerCpu {
    /// The vCPU id (Xen's numbering, APIC id / 2). First field: read as `gs:[0]`.
    pub id: u32,
    /// The block's own address, read as `gs:[8]` (no MSR read on the fast path).
    this: u64,
    /// This vCPU's `VIRQ_TIMER` port (0 = none).
    pub timer_port: AtomicU32,
    /// This vCPU's IPI port (0 = none).
    pub ipi_port: AtomicU32,
    /// Events the upcall saw for this vCPU's own ports (bit 0: timer, bit 1: IPI); the
    /// waiting code takes them.
    pub woken: AtomicUsize,
    /// This vCPU's registered `vcpu_info` (`VCPUOP_register_vcpu_info`: `vcpu_info_area`),
    /// or null while it still uses its slot in shared_info (before registration, after a
    /// resume in a new domain until registered again). Only this vCPU reads and writes it.
    pub vcpu_info: AtomicPtr<VcpuInfo>,
    /// Where Xen keeps this vCPU's `vcpu_info` once registered: 64-byte aligned, so it
    /// never crosses a frame's end; virtual == guest-physical (identity map).
    pub vcpu_info_area: VcpuInfoArea,
    /// This vCPU's registered runstate area (`runstate_area`), or null while none is
    /// registered in this domain (CPU time then comes from a hypercall). Only this vCPU
    /// reads and writes it.
    pub runstate: AtomicPtr<VcpuRunstateInfo>,
    /// Where Xen copies this vCPU's runstate at each of its context switches: 64-byte
    /// aligned (48 bytes), so it never crosses a page; virtual == guest-physical.
    pub runstate_area: RunstateArea,
}
const _: () = assert!(core::mem::offset_of!(PerCpu, id) == 0);
const _: () = assert!(core::mem::offset_of!(PerCpu, vcpu_info_area) % 64 == 0);
const _: () = assert!(core::mem::offset_of!(PerCpu, runstate_area) % 64 == 0);

/// A `vcpu_runstate_info` Xen writes (`VCPUOP_register_runstate_memory_area`).
#[repr(C, align(64))]
pub struct RunstateArea(pub UnsafeCell<VcpuRunstateInfo>);
const _: () = assert!(core::mem::size_of::<RunstateArea>() == 64);

// SAFETY: Xen writes the area while this vCPU is switched out; this vCPU only reads it,
// with volatile reads under the entry-time check of `guest::xen::clock::running_ns`.
unsafe impl Sync for RunstateArea {}

/// A `vcpu_info` Xen writes (registered with `VCPUOP_register_vcpu_info`).
#[repr(C, align(64))]
pub struct VcpuInfoArea(pub UnsafeCell<VcpuInfo>);
const _: () = assert!(core::mem::size_of::<VcpuInfoArea>() == 64);

// SAFETY: Xen and this vCPU access the area with atomic or volatile operations only.
unsafe impl Sync for VcpuInfoArea {}
const _: () = assert!(core::mem::offset_of!(PerCpu, this) == 8);

impl PerCpu {
    pub const fn new(id: u32) -> PerCpu {
        PerCpu {
            id,
            this: 0,
            timer_port: AtomicU32::new(0),
            ipi_port: AtomicU32::new(0),
            woken: AtomicUsize::new(0),
            vcpu_info: AtomicPtr::new(core::ptr::null_mut()),
            // SAFETY: vcpu_info is plain integers; all-zero is its state before Xen
            // copies the shared_info slot in at registration.
            vcpu_info_area: VcpuInfoArea(UnsafeCell::new(unsafe { core::mem::zeroed() })),
            runstate: AtomicPtr::new(core::ptr::null_mut()),
            runstate_area: RunstateArea(UnsafeCell::new(VcpuRunstateInfo {
                state: 0,
                state_entry_time: 0,
                time: [0; 4],
            })),
        }
    }
}

/// Points GS at `block` on the calling vCPU (once per vCPU start).
pub fn install(block: &'static mut PerCpu) {
    block.this = block as *const PerCpu as u64;
    // SAFETY: GS is not used for anything else; the block lives forever.
    unsafe { cpu::wrmsr(IA32_GS_BASE, block.this) };
}

/// The calling vCPU's block. Before `install` on vCPU 0 this would read address 0:
/// `install` is the first thing each vCPU does.
pub fn this() -> &'static PerCpu {
    let p: u64;
    // SAFETY: gs:[8] is `PerCpu::this` of this vCPU's block (see `install`).
    unsafe {
        core::arch::asm!("mov {}, gs:[8]", out(reg) p, options(nostack, readonly, preserves_flags))
    };
    // SAFETY: `this` points at the installed block, which lives forever.
    unsafe { &*(p as *const PerCpu) }
}

/// The calling vCPU's id.
pub fn id() -> u32 {
    let id: u32;
    // SAFETY: gs:[0] is `PerCpu::id` of this vCPU's block (see `install`).
    unsafe {
        core::arch::asm!("mov {:e}, gs:[0]", out(reg) id, options(nostack, readonly, preserves_flags))
    };
    id
}

/// vCPU 0's block.
static mut BOOT_CPU: PerCpu = PerCpu::new(0);

/// Installs vCPU 0's block; the first thing `kernel_main` does (the clock and the upcall
/// read the vCPU id).
pub fn install_boot() {
    // SAFETY: runs once, on vCPU 0, before anything reads the block.
    install(unsafe { &mut *core::ptr::addr_of_mut!(BOOT_CPU) });
}
