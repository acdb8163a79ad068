//! The mem functions the prebuilt sysroot expects. Written with `rep movsb/stosb` or
//! volatile accesses: LLVM's loop-idiom pass would turn a plain byte loop into a call to
//! the very function being defined.

use core::arch::asm;

#[no_mangle]
unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // Eight bytes a step, then the tail: TCG runs a `rep movs` one element per iteration
    // (a byte-wise copy of a 1 KiB buffer was 1024 of them); hardware copies either at
    // full speed. Forward, element by element, so also right for memmove with dst < src.
    // SAFETY: the caller (compiler-generated code) guarantees valid ranges of n bytes,
    // non-overlapping or with dst below src.
    unsafe {
        asm!("rep movsq", "mov {tail}, %rcx", "rep movsb",
            tail = in(reg) n & 7,
            inout("rdi") dst => _, inout("rsi") src => _, inout("rcx") n >> 3 => _,
            options(att_syntax, nostack, preserves_flags))
    };
    dst
}

#[no_mangle]
unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize) <= (src as usize) || (dst as usize) >= (src as usize).wrapping_add(n) {
        // SAFETY: forward copy is correct when dst is below src or the ranges are disjoint.
        return unsafe { memcpy(dst, src, n) };
    }
    // SAFETY: overlapping with dst above src: copy backwards (std + rep movsb from the ends).
    unsafe {
        asm!("std", "rep movsb", "cld",
            inout("rdi") dst.add(n - 1) => _, inout("rsi") src.add(n - 1) => _,
            inout("rcx") n => _, options(nostack))
    };
    dst
}

#[no_mangle]
unsafe extern "C" fn memset(dst: *mut u8, val: i32, n: usize) -> *mut u8 {
    // The byte in all eight lanes, eight bytes a step, then the tail (as in memcpy).
    let fill = (val as u8 as u64) * 0x0101_0101_0101_0101;
    // SAFETY: the caller guarantees dst..dst+n is writable.
    unsafe {
        asm!("rep stosq", "mov {tail}, %rcx", "rep stosb",
            tail = in(reg) n & 7,
            inout("rdi") dst => _, inout("rcx") n >> 3 => _, in("rax") fill,
            options(att_syntax, nostack, preserves_flags))
    };
    dst
}

#[no_mangle]
unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: the caller guarantees both ranges are readable for n bytes.
        let (x, y) = unsafe { (a.add(i).read_volatile(), b.add(i).read_volatile()) };
        if x != y {
            return x as i32 - y as i32;
        }
    }
    0
}

#[no_mangle]
unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}

#[no_mangle]
unsafe extern "C" fn strlen(s: *const u8) -> usize {
    let mut n = 0;
    // SAFETY: the caller guarantees a NUL-terminated string.
    while unsafe { s.add(n).read_volatile() } != 0 {
        n += 1;
    }
    n
}

/// Referenced by the prebuilt libcore's unwinding tables; never reached with panic=abort.
#[no_mangle]
extern "C" fn rust_eh_personality() {}

#[no_mangle]
extern "C" fn _Unwind_Resume() -> ! {
    super::cpu::halt_forever()
}
