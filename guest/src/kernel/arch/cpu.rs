//! Thin wrappers over privileged x86 instructions.

use core::arch::asm;

/// `outb`.
pub fn outb(port: u16, val: u8) {
    // SAFETY: port I/O has no memory effects; the ports we use (0xE9 debug console,
    // 0xF4 isa-debug-exit) are harmless to write.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") val, options(nomem, nostack, preserves_flags))
    }
}

pub fn cpuid(leaf: u32) -> [u32; 4] {
    let r = core::arch::x86_64::__cpuid_count(leaf, 0);
    [r.eax, r.ebx, r.ecx, r.edx]
}

pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// # Safety
/// Writing an MSR can change anything about the machine; the caller knows this one.
pub unsafe fn wrmsr(msr: u32, val: u64) {
    // SAFETY: forwarded from the caller.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") val as u32, in("edx") (val >> 32) as u32,
            options(nostack, preserves_flags))
    }
}

/// # Safety
/// Reading some MSRs has side effects; the caller knows this one has none it minds.
pub unsafe fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: forwarded from the caller.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi,
            options(nomem, nostack, preserves_flags))
    };
    (hi as u64) << 32 | lo as u64
}

/// Enables interrupts and halts until one arrives, atomically: `sti` holds interrupts off
/// for one more instruction, so an interrupt that became pending before it wakes the
/// `hlt` instead of being taken in between. Interrupts are off again on return (the
/// handler ran on its IST stack). Never `cli; hlt`: Xen takes a vCPU that does that down.
pub fn wait_for_interrupt() {
    // SAFETY: the only interrupt handlers (upcall, spurious) run on IST stacks, touch only
    // atomics and return; interrupts are disabled again before any other code runs.
    unsafe { asm!("sti", "hlt", "cli", options(nomem, nostack)) };
}

/// Reads CR0.
pub fn read_cr0() -> u64 {
    let v: u64;
    // SAFETY: reading CR0 has no side effects.
    unsafe { asm!("mov {}, cr0", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Reads CR4.
pub fn read_cr4() -> u64 {
    let v: u64;
    // SAFETY: reading CR4 has no side effects.
    unsafe { asm!("mov {}, cr4", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

pub fn read_cr2() -> u64 {
    let v: u64;
    // SAFETY: reading CR2 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

pub fn read_cr3() -> u64 {
    let v: u64;
    // SAFETY: reading CR3 has no side effects.
    unsafe { asm!("mov {}, cr3", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Flushes the whole TLB (non-global entries) by reloading CR3.
pub fn flush_tlb() {
    // SAFETY: rewriting CR3 with its own value only drops cached translations.
    unsafe {
        asm!("mov rax, cr3", "mov cr3, rax", out("rax") _, options(nostack, preserves_flags))
    };
}

/// Stops this CPU for good. `cli; hlt` makes Xen take the vCPU down (on the last one the
/// domain is powered off), which is what a dead kernel wants.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: hlt with IF=0 just parks the CPU.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}
