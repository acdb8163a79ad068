//! GDT with a TSS, IDT for the 32 CPU exceptions, every one on an IST stack.
//!
//! Why IST for every vector: the prebuilt libcore uses the red zone, and an exception taken
//! on the current stack would overwrite the interrupted function's red zone. IST stacks are
//! not re-entrant, so a handler must not fault; the handlers only log and panic (or, for
//! `int3` in the self-test, count and return).

use core::sync::atomic::{AtomicU32, Ordering};

const IST_STACK_SIZE: usize = 16 * 1024;
/// Selectors in [`GDT`].
const KERNEL_CS: u16 = 0x08;
const TSS_SEL: u16 = 0x18;

#[repr(C, align(16))]
struct Stack([u8; IST_STACK_SIZE]);

/// IST1: ordinary exceptions. IST2: #DF, NMI, #MC (may arrive while IST1 is in use).
static mut IST1: Stack = Stack([0; IST_STACK_SIZE]);
static mut IST2: Stack = Stack([0; IST_STACK_SIZE]);

/// The 64-bit TSS: only the IST pointers matter (no privilege changes in this kernel).
#[repr(C, packed(4))]
struct Tss {
    reserved0: u32,
    rsp: [u64; 3],
    reserved1: u64,
    ist: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    iomap_base: u16,
}
const _: () = assert!(core::mem::size_of::<Tss>() == 104);

static mut TSS: Tss = Tss {
    reserved0: 0,
    rsp: [0; 3],
    reserved1: 0,
    ist: [0; 7],
    reserved2: 0,
    reserved3: 0,
    iomap_base: 104,
};

/// null, 64-bit code, data, TSS (two slots).
static mut GDT: [u64; 5] = [0, 0x00af_9a00_0000_ffff, 0x00cf_9200_0000_ffff, 0, 0];

#[repr(C)]
#[derive(Clone, Copy)]
struct IdtEntry {
    offset_lo: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_hi: u32,
    zero: u32,
}
const _: () = assert!(core::mem::size_of::<IdtEntry>() == 16);

static mut IDT: [IdtEntry; 32] = [IdtEntry {
    offset_lo: 0,
    selector: 0,
    ist: 0,
    type_attr: 0,
    offset_mid: 0,
    offset_hi: 0,
    zero: 0,
}; 32];

#[repr(C, packed)]
struct DescPtr {
    limit: u16,
    base: u64,
}

// Stubs: push a dummy error code where the CPU pushes none, then the vector number, save
// every GPR and call `exception_entry(&mut TrapFrame)`. Vectors with a CPU error code:
// 8, 10-14, 17, 21, 29, 30 (mask 0x6022_7D00).
core::arch::global_asm!(
    ".pushsection .text.isr, \"ax\"",
    ".irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
    "isr_\\n:",
    ".if ((0x60227D00 >> \\n) & 1) == 0",
    "push $0",
    ".endif",
    "push $\\n",
    "jmp isr_common",
    ".endr",
    "isr_common:",
    "push %rax",
    "push %rbx",
    "push %rcx",
    "push %rdx",
    "push %rsi",
    "push %rdi",
    "push %rbp",
    "push %r8",
    "push %r9",
    "push %r10",
    "push %r11",
    "push %r12",
    "push %r13",
    "push %r14",
    "push %r15",
    "mov %rsp, %rdi",
    "cld",
    "call exception_entry",
    "pop %r15",
    "pop %r14",
    "pop %r13",
    "pop %r12",
    "pop %r11",
    "pop %r10",
    "pop %r9",
    "pop %r8",
    "pop %rbp",
    "pop %rdi",
    "pop %rsi",
    "pop %rdx",
    "pop %rcx",
    "pop %rbx",
    "pop %rax",
    "add $16, %rsp",
    "iretq",
    ".popsection",
    ".pushsection .rodata.isr, \"a\"",
    ".balign 8",
    ".global isr_table",
    "isr_table:",
    ".irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
    ".quad isr_\\n",
    ".endr",
    ".popsection",
    options(att_syntax)
);

extern "C" {
    static isr_table: [u64; 32];
}

/// What the stubs leave on the IST stack.
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}
const _: () = assert!(core::mem::size_of::<TrapFrame>() == 22 * 8);

const NAMES: [&str; 32] = [
    "#DE divide error",
    "#DB debug",
    "NMI",
    "#BP breakpoint",
    "#OF overflow",
    "#BR bound",
    "#UD invalid opcode",
    "#NM device not available",
    "#DF double fault",
    "coprocessor overrun",
    "#TS invalid TSS",
    "#NP segment not present",
    "#SS stack fault",
    "#GP general protection",
    "#PF page fault",
    "reserved 15",
    "#MF x87",
    "#AC alignment check",
    "#MC machine check",
    "#XM SIMD",
    "#VE virtualization",
    "#CP control protection",
    "reserved 22",
    "reserved 23",
    "reserved 24",
    "reserved 25",
    "reserved 26",
    "reserved 27",
    "#HV",
    "#VC",
    "#SX security",
    "reserved 31",
];

/// `int3`s taken and returned from (the self-test proves the IDT/IST path with it).
pub static BREAKPOINTS: AtomicU32 = AtomicU32::new(0);

#[no_mangle]
extern "C" fn exception_entry(f: &mut TrapFrame) {
    if f.vector == 3 {
        // Relaxed: a counter read by the same vCPU after the int3 returns.
        BREAKPOINTS.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let name = NAMES[(f.vector & 31) as usize];
    log::error!("exception {} ({}) error={:#x}", f.vector, name, f.error);
    log::error!(
        "rip={:#018x} cs={:#x} rflags={:#x} rsp={:#018x} ss={:#x}",
        f.rip,
        f.cs,
        f.rflags,
        f.rsp,
        f.ss
    );
    if f.vector == 14 {
        log::error!("cr2={:#018x} (faulting address)", super::cpu::read_cr2());
    }
    log::error!(
        "rax={:#018x} rbx={:#018x} rcx={:#018x} rdx={:#018x}",
        f.rax,
        f.rbx,
        f.rcx,
        f.rdx
    );
    log::error!(
        "rsi={:#018x} rdi={:#018x} rbp={:#018x} r8 ={:#018x}",
        f.rsi,
        f.rdi,
        f.rbp,
        f.r8
    );
    log::error!(
        "r9 ={:#018x} r10={:#018x} r11={:#018x} r12={:#018x}",
        f.r9,
        f.r10,
        f.r11,
        f.r12
    );
    log::error!(
        "r13={:#018x} r14={:#018x} r15={:#018x} cr3={:#018x}",
        f.r13,
        f.r14,
        f.r15,
        super::cpu::read_cr3()
    );
    panic!(
        "unhandled CPU exception {} ({}) at rip {:#x}",
        f.vector, name, f.rip
    );
}

/// Loads the GDT (with TSS), the TSS and the IDT.
pub fn init() {
    // SAFETY: runs once at boot on the only vCPU, before any exception can be handled;
    // the statics it writes are only read by the CPU through GDTR/IDTR/TR afterwards.
    unsafe {
        let tss = &raw mut TSS;
        (*tss).ist[0] = (&raw const IST1) as u64 + IST_STACK_SIZE as u64;
        (*tss).ist[1] = (&raw const IST2) as u64 + IST_STACK_SIZE as u64;
        let base = tss as u64;
        let limit = core::mem::size_of::<Tss>() as u64 - 1;
        let gdt = &raw mut GDT;
        // Available 64-bit TSS descriptor (type 9, present).
        (*gdt)[3] = limit | (base & 0xff_ffff) << 16 | 0x89 << 40 | ((base >> 24) & 0xff) << 56;
        (*gdt)[4] = base >> 32;
        let gdtr = DescPtr {
            limit: (core::mem::size_of::<[u64; 5]>() - 1) as u16,
            base: gdt as u64,
        };
        core::arch::asm!(
            "lgdt [{gdtr}]",
            // Reload CS through a far return so the new GDT is in use for code too.
            "push {cs}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "ltr {tss:x}",
            gdtr = in(reg) &gdtr,
            cs = in(reg) KERNEL_CS as u64,
            tmp = out(reg) _,
            tss = in(reg) TSS_SEL,
        );
        let idt = &raw mut IDT;
        for (v, e) in (*idt).iter_mut().enumerate() {
            let addr = isr_table[v];
            let ist = if matches!(v, 2 | 8 | 18) { 2 } else { 1 };
            *e = IdtEntry {
                offset_lo: addr as u16,
                selector: KERNEL_CS,
                ist,
                type_attr: 0x8e,
                offset_mid: (addr >> 16) as u16,
                offset_hi: (addr >> 32) as u32,
                zero: 0,
            };
        }
        let idtr = DescPtr {
            limit: (core::mem::size_of::<[IdtEntry; 32]>() - 1) as u16,
            base: idt as u64,
        };
        core::arch::asm!("lidt [{}]", in(reg) &idtr, options(nostack));
    }
}
