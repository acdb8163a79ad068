//! The x86_64 hypercall ABI and typed wrappers.
//!
//! A hypercall is a `call` into the hypercall page Xen fills in (slot `op * 32`), with the
//! arguments in **rdi, rsi, rdx, r10, r8** and the result in rax. Xen may clobber the
//! argument registers (debug builds poison them), so every one is an in-out operand here.
//! The asm block pushes a return address, so it must not be `nostack` (xen-sys 0.0.0-pre2
//! gets both this and the 5th register wrong).

use core::sync::atomic::{AtomicUsize, Ordering};

use crate::abi::hypercall_nr as nr;
use crate::Errno;

/// Physical (= virtual, identity-mapped) address of the hypercall page; 0 until set.
// Relaxed: written once at boot before any hypercall, on the same vCPU that reads it.
static HYPERCALL_PAGE: AtomicUsize = AtomicUsize::new(0);

/// Size of one hypercall stub in the page.
pub const HYPERCALL_STUB_SIZE: usize = 32;

/// Records where the hypercall page lives (after its MSR write).
pub fn set_hypercall_page(addr: usize) {
    HYPERCALL_PAGE.store(addr, Ordering::Relaxed);
}

/// The hypercall page address, if one was set.
pub fn hypercall_page() -> Option<usize> {
    match HYPERCALL_PAGE.load(Ordering::Relaxed) {
        0 => None,
        a => Some(a),
    }
}

/// Calls the code at `entry` with the Xen hypercall register convention.
///
/// # Safety
/// `entry` must be a hypercall stub (or code with the same contract) and the arguments
/// must be valid for the hypercall, including any pointers in them.
#[inline]
pub unsafe fn call_at(entry: usize, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> i64 {
    let ret: i64;
    // SAFETY: the caller guarantees `entry` and the arguments; the asm only transfers
    // control there with the documented registers and marks all of them clobbered.
    unsafe {
        core::arch::asm!(
            "call {entry}",
            entry = in(reg) entry,
            inlateout("rdi") a1 => _,
            inlateout("rsi") a2 => _,
            inlateout("rdx") a3 => _,
            inlateout("r10") a4 => _,
            inlateout("r8") a5 => _,
            lateout("rax") ret,
            lateout("rcx") _,
            lateout("r9") _,
            lateout("r11") _,
        );
    }
    ret
}

/// Issues hypercall `op` with up to five arguments; returns the raw rax.
///
/// # Safety
/// The hypercall page must have been set up, and the arguments must be valid for `op`.
#[inline]
pub unsafe fn hypercall(op: u32, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> i64 {
    let page = HYPERCALL_PAGE.load(Ordering::Relaxed);
    debug_assert!(page != 0, "hypercall before the hypercall page was set up");
    // SAFETY: forwarded from the caller; the stub offset is within the page for op < 128.
    unsafe { call_at(page + op as usize * HYPERCALL_STUB_SIZE, a1, a2, a3, a4, a5) }
}

/// `HYPERVISOR_memory_op(cmd, arg)`.
///
/// # Safety
/// `arg` must point to the structure `cmd` expects (or be the value it expects).
pub unsafe fn memory_op(cmd: u32, arg: *mut u8) -> Result<u64, Errno> {
    // SAFETY: forwarded from the caller.
    Errno::check(unsafe { hypercall(nr::MEMORY_OP, cmd as u64, arg as u64, 0, 0, 0) })
}

/// `HYPERVISOR_hvm_op(cmd, arg)`.
///
/// # Safety
/// `arg` must point to the structure `cmd` expects.
pub unsafe fn hvm_op(cmd: u32, arg: *mut u8) -> Result<u64, Errno> {
    // SAFETY: forwarded from the caller.
    Errno::check(unsafe { hypercall(nr::HVM_OP, cmd as u64, arg as u64, 0, 0, 0) })
}

/// `HYPERVISOR_event_channel_op(cmd, arg)`.
///
/// # Safety
/// `arg` must point to the structure `cmd` expects.
pub unsafe fn event_channel_op(cmd: u32, arg: *mut u8) -> Result<u64, Errno> {
    // SAFETY: forwarded from the caller.
    Errno::check(unsafe { hypercall(nr::EVENT_CHANNEL_OP, cmd as u64, arg as u64, 0, 0, 0) })
}

/// `HYPERVISOR_sched_op(cmd, arg)`; `arg` is a pointer for shutdown and poll.
///
/// # Safety
/// `arg` must point to the structure `cmd` expects.
pub unsafe fn sched_op(cmd: u32, arg: *mut u8) -> Result<u64, Errno> {
    // SAFETY: forwarded from the caller.
    Errno::check(unsafe { hypercall(nr::SCHED_OP, cmd as u64, arg as u64, 0, 0, 0) })
}

/// `HYPERVISOR_vcpu_op(cmd, vcpu, arg)`.
///
/// # Safety
/// `arg` must be null or point to the structure `cmd` expects.
pub unsafe fn vcpu_op(cmd: u32, vcpu: u32, arg: *mut u8) -> Result<u64, Errno> {
    // SAFETY: forwarded from the caller.
    Errno::check(unsafe { hypercall(nr::VCPU_OP, cmd as u64, vcpu as u64, arg as u64, 0, 0) })
}

/// `HYPERVISOR_grant_table_op(cmd, uop, count)`.
///
/// # Safety
/// `uop` must point to `count` structures of the type `cmd` expects.
pub unsafe fn grant_table_op(cmd: u32, uop: *mut u8, count: u32) -> Result<u64, Errno> {
    // SAFETY: forwarded from the caller.
    Errno::check(unsafe {
        hypercall(
            nr::GRANT_TABLE_OP,
            cmd as u64,
            uop as u64,
            count as u64,
            0,
            0,
        )
    })
}

/// `HYPERVISOR_xen_version(cmd, arg)`.
///
/// # Safety
/// `arg` must be null or point to the buffer `cmd` expects.
pub unsafe fn xen_version(cmd: u32, arg: *mut u8) -> Result<u64, Errno> {
    // SAFETY: forwarded from the caller.
    Errno::check(unsafe { hypercall(nr::XEN_VERSION, cmd as u64, arg as u64, 0, 0, 0) })
}

/// The CPUID view of Xen: where its leaves are and how to install the hypercall page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XenCpuid {
    /// First leaf (0x4000_0000 + n·0x100) whose signature is "XenVMMXenVMM".
    pub base: u32,
    /// Highest leaf Xen supports (eax of the base leaf).
    pub max_leaf: u32,
    pub major: u16,
    pub minor: u16,
    /// Number of hypercall pages (eax of base+2) and the MSR to write their address to.
    pub hypercall_pages: u32,
    pub hypercall_msr: u32,
}

/// Finds Xen's CPUID leaves with `cpuid(leaf) -> [eax, ebx, ecx, edx]`.
///
/// Xen may sit at 0x4000_0100 etc. when it also offers another hypervisor's leaves (e.g.
/// Viridian) at 0x4000_0000, so scan the range like Linux's `xen_cpuid_base()`.
pub fn detect_xen(mut cpuid: impl FnMut(u32) -> [u32; 4]) -> Option<XenCpuid> {
    (0x4000_0000u32..0x4001_0000)
        .step_by(0x100)
        .find_map(|base| {
            let [max_leaf, b, c, d] = cpuid(base);
            let sig = [b, c, d].map(u32::to_le_bytes);
            if sig != [*b"XenV", *b"MMXe", *b"nVMM"] || max_leaf < base + 2 {
                return None;
            }
            let [ver, ..] = cpuid(base + 1);
            let [pages, msr, ..] = cpuid(base + 2);
            Some(XenCpuid {
                base,
                max_leaf,
                major: (ver >> 16) as u16,
                minor: ver as u16,
                hypercall_pages: pages,
                hypercall_msr: msr,
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    // A fake hypercall page: 128 slots of 32 bytes, each `call record` + `ret`. `record`
    // stores every register a hypercall could be read from, plus the slot number it was
    // called from, and returns 0x1234 in rax. This proves the wrappers put argument N in
    // the register the Xen ABI names, and pick slot `op`.
    core::arch::global_asm!(
        ".pushsection .text.xb_fake_hypercall_page, \"ax\"",
        ".balign 4096",
        ".global xb_fake_hypercall_page",
        "xb_fake_hypercall_page:",
        ".rept 128",
        "call xb_record_hypercall",
        "ret",
        ".balign 32, 0xcc",
        ".endr",
        "xb_record_hypercall:",
        "lea rax, [rip + XB_RECORDED]",
        "mov [rax + 0], rdi",
        "mov [rax + 8], rsi",
        "mov [rax + 16], rdx",
        "mov [rax + 24], r10",
        "mov [rax + 32], r8",
        "mov [rax + 40], r9",
        "mov [rax + 48], rcx",
        // Slot = (return address - 5 - page) / 32; the return address is at [rsp].
        "mov rcx, [rsp]",
        "sub rcx, 5",
        "lea r11, [rip + xb_fake_hypercall_page]",
        "sub rcx, r11",
        "shr rcx, 5",
        "mov [rax + 56], rcx",
        // Poison the argument registers like a debug Xen does.
        "mov rdi, -1",
        "mov rsi, -1",
        "mov rdx, -1",
        "mov r10, -1",
        "mov r8, -1",
        "mov eax, 0x1234",
        "ret",
        ".popsection",
    );

    extern "C" {
        static xb_fake_hypercall_page: u8;
    }

    #[no_mangle]
    static mut XB_RECORDED: [u64; 8] = [0; 8];

    static LOCK: Mutex<()> = Mutex::new(());

    fn recorded() -> [u64; 8] {
        // SAFETY: written only by the fake page, under LOCK, and the call has returned.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!(XB_RECORDED)) }
    }

    #[test]
    fn arguments_land_in_rdi_rsi_rdx_r10_r8() {
        let _g = LOCK.lock().unwrap();
        let page = core::ptr::addr_of!(xb_fake_hypercall_page) as usize;
        set_hypercall_page(page);
        let (a1, a2, a3, a4, a5) = (0x1111, 0x2222, 0x3333, 0x4444, 0x5555);
        // SAFETY: the fake page accepts anything.
        let ret = unsafe { hypercall(29, a1, a2, a3, a4, a5) };
        assert_eq!(ret, 0x1234);
        let r = recorded();
        assert_eq!(&r[..5], &[a1, a2, a3, a4, a5], "rdi, rsi, rdx, r10, r8");
        assert_eq!(r[7], 29, "stub slot must be op * 32");
    }

    #[test]
    fn typed_wrappers_pick_their_op_and_pass_pointers() {
        let _g = LOCK.lock().unwrap();
        let page = core::ptr::addr_of!(xb_fake_hypercall_page) as usize;
        set_hypercall_page(page);
        let mut buf = [0u8; 8];
        let p = buf.as_mut_ptr();
        // SAFETY: the fake page never dereferences the pointer.
        unsafe {
            assert_eq!(memory_op(6, p), Ok(0x1234));
            assert_eq!(recorded()[7], nr::MEMORY_OP as u64);
            assert_eq!(recorded()[..2], [6, p as u64]);
            sched_op(3, p).unwrap();
            assert_eq!(recorded()[7], nr::SCHED_OP as u64);
            grant_table_op(0, p, 64).unwrap();
            assert_eq!(recorded()[7], nr::GRANT_TABLE_OP as u64);
            assert_eq!(recorded()[..3], [0, p as u64, 64]);
            event_channel_op(4, p).unwrap();
            assert_eq!(recorded()[7], nr::EVENT_CHANNEL_OP as u64);
            hvm_op(1, p).unwrap();
            assert_eq!(recorded()[7], nr::HVM_OP as u64);
        }
    }

    #[test]
    fn detect_xen_scans_for_the_signature() {
        let leaves = |base: u32| {
            move |leaf: u32| -> [u32; 4] {
                let sig = |s: &[u8; 4]| u32::from_le_bytes(*s);
                match leaf.checked_sub(base) {
                    Some(0) => [base + 5, sig(b"XenV"), sig(b"MMXe"), sig(b"nVMM")],
                    Some(1) => [(4 << 16) | 17, 0, 0, 0],
                    Some(2) => [1, 0x4000_0000, 0, 0],
                    _ => [0; 4],
                }
            }
        };
        let x = detect_xen(leaves(0x4000_0100)).expect("found at +0x100");
        assert_eq!((x.base, x.major, x.minor), (0x4000_0100, 4, 17));
        assert_eq!((x.hypercall_pages, x.hypercall_msr), (1, 0x4000_0000));
        assert_eq!(detect_xen(|_| [0x4000_0002, 1, 2, 3]), None);
    }
}
