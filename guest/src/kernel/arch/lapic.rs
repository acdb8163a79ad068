//! The local APIC, only as far as Xen's upcall vector needs it: software-enable it and
//! acknowledge (EOI) each upcall. x2APIC (MSRs) when CPUID offers it, else xAPIC MMIO at
//! the base `IA32_APIC_BASE` names (identity-mapped in the low 4 GiB).

use core::sync::atomic::{AtomicU64, Ordering};

use super::cpu;

const IA32_APIC_BASE: u32 = 0x1b;
const APIC_BASE_ENABLE: u64 = 1 << 11;
const APIC_BASE_X2APIC: u64 = 1 << 10;
const X2APIC_SVR: u32 = 0x80f;
const X2APIC_EOI: u32 = 0x80b;
const XAPIC_SVR: u64 = 0xf0;
const XAPIC_EOI: u64 = 0xb0;
/// SVR bit 8: APIC software enable.
const SVR_ENABLE: u32 = 1 << 8;

/// 0: x2APIC; otherwise the xAPIC MMIO base. Written by vCPU 0 before any AP starts
/// (Relaxed: `VCPUOP_up` of an AP orders it), read by every vCPU.
static XAPIC_BASE: AtomicU64 = AtomicU64::new(0);

/// Enables this vCPU's LAPIC with the spurious vector `spurious`.
pub fn enable(spurious: u8) {
    let x2apic = cpu::cpuid(1)[2] & (1 << 21) != 0;
    // SAFETY: reading and setting IA32_APIC_BASE's enable bits and the SVR only changes
    // how this vCPU's LAPIC accepts interrupts; no interrupt is enabled by it (IF is 0).
    unsafe {
        let base = cpu::rdmsr(IA32_APIC_BASE);
        if x2apic {
            cpu::wrmsr(IA32_APIC_BASE, base | APIC_BASE_ENABLE | APIC_BASE_X2APIC);
            cpu::wrmsr(X2APIC_SVR, (SVR_ENABLE | spurious as u32) as u64);
        } else {
            cpu::wrmsr(IA32_APIC_BASE, base | APIC_BASE_ENABLE);
            let mmio = base & 0xf_ffff_f000;
            XAPIC_BASE.store(mmio, Ordering::Relaxed);
            ((mmio + XAPIC_SVR) as *mut u32).write_volatile(SVR_ENABLE | spurious as u32);
        }
    }
}

/// End of interrupt for the vector being handled.
pub fn eoi() {
    let mmio = XAPIC_BASE.load(Ordering::Relaxed);
    // SAFETY: writing 0 to the EOI register acknowledges the in-service interrupt; the
    // LAPIC was enabled by `enable` on this vCPU before interrupts were.
    unsafe {
        if mmio == 0 {
            cpu::wrmsr(X2APIC_EOI, 0);
        } else {
            ((mmio + XAPIC_EOI) as *mut u32).write_volatile(0);
        }
    }
}
