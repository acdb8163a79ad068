//! GDT with a TSS per vCPU, one IDT for all: the 32 CPU exceptions, the event-channel
//! upcall vector and the LAPIC's spurious vector, every one on an IST stack.
//!
//! Why IST for every vector: the prebuilt libcore uses the red zone, and an exception or
//! interrupt taken on the current stack would overwrite the interrupted function's red
//! zone. IST stacks are not re-entrant, so a handler must not fault; the exception
//! handlers only log and panic (or, for `int3` in the self-test, count and return), and
//! the upcall runs with interrupts off on its own IST (3), so it never nests with itself
//! or with a fault (IST 1).

use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

const IST_STACK_SIZE: usize = 16 * 1024;
/// Selectors in every GDT.
const KERNEL_CS: u16 = 0x08;
const TSS_SEL: u16 = 0x18;
/// The vector Xen raises for event-channel upcalls (`HVMOP_set_evtchn_upcall_vector`).
pub const UPCALL_VECTOR: u8 = 0xf3;
/// The LAPIC's spurious-interrupt vector (no EOI).
pub const SPURIOUS_VECTOR: u8 = 0xff;

#[repr(C, align(16))]
struct Stack([u8; IST_STACK_SIZE]);

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

/// One vCPU's descriptor tables and IST stacks. IST1: ordinary exceptions. IST2: #DF,
/// NMI, #MC (may arrive while IST1 is in use). IST3: the upcall vector.
#[repr(C, align(16))]
pub struct CpuTables {
    ist: [Stack; 3],
    tss: Tss,
    /// null, 64-bit code, data, TSS (two slots).
    gdt: [u64; 5],
}

impl CpuTables {
    /// Zeroed tables; [`load`] fills them in.
    pub const fn new() -> CpuTables {
        CpuTables {
            ist: [const { Stack([0; IST_STACK_SIZE]) }; 3],
            tss: Tss {
                reserved0: 0,
                rsp: [0; 3],
                reserved1: 0,
                ist: [0; 7],
                reserved2: 0,
                reserved3: 0,
                iomap_base: 104,
            },
            gdt: [0; 5],
        }
    }
}

/// vCPU 0's tables (APs get theirs from the heap).
static mut BOOT_TABLES: CpuTables = CpuTables::new();

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

static mut IDT: [IdtEntry; 256] = [IdtEntry {
    offset_lo: 0,
    selector: 0,
    ist: 0,
    type_attr: 0,
    offset_mid: 0,
    offset_hi: 0,
    zero: 0,
}; 256];

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
    // The upcall and spurious vectors (no error code).
    "isr_upcall:",
    "push $0",
    "push $0xf3",
    "jmp isr_common",
    "isr_spurious:",
    "push $0",
    "push $0xff",
    "jmp isr_common",
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
    // The SSE state too: the kernel is compiled with SSE (struct copies, memmap fills
    // keep values in XMM registers across loops), and the handler is Rust that may use
    // the same registers. 512 bytes, 16-aligned, below the frame; %rbx (saved above)
    // keeps the frame's address.
    "mov %rsp, %rbx",
    "sub $512, %rsp",
    "and $-16, %rsp",
    "fxsave64 (%rsp)",
    "mov %rbx, %rdi",
    "cld",
    "call exception_entry",
    "fxrstor64 (%rsp)",
    "mov %rbx, %rsp",
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
    ".global isr_upcall_addr",
    "isr_upcall_addr: .quad isr_upcall",
    ".global isr_spurious_addr",
    "isr_spurious_addr: .quad isr_spurious",
    ".popsection",
    options(att_syntax)
);

extern "C" {
    static isr_table: [u64; 32];
    static isr_upcall_addr: u64;
    static isr_spurious_addr: u64;
}

/// What the upcall vector runs (set once by the event-channel code), 0 = nothing yet.
// Relaxed: stored before the first vCPU enables interrupts (its `sti` orders it) and
// never changed.
static UPCALL_HANDLER: AtomicUsize = AtomicUsize::new(0);

/// Installs the function the upcall vector calls, with interrupts off, on IST 3. It must
/// not fault, take a lock or log; [`super::lapic::eoi`] follows it.
pub fn set_upcall_handler(f: fn()) {
    UPCALL_HANDLER.store(f as usize, Ordering::Relaxed);
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
    if f.vector == UPCALL_VECTOR as u64 {
        let h = UPCALL_HANDLER.load(Ordering::Relaxed);
        if h != 0 {
            // SAFETY: only `set_upcall_handler` stores here, always a `fn()`.
            let h: fn() = unsafe { core::mem::transmute::<usize, fn()>(h) };
            h();
        }
        super::lapic::eoi();
        return;
    }
    if f.vector == SPURIOUS_VECTOR as u64 {
        return;
    }
    if f.vector == 3 {
        // Relaxed: a counter read by the same vCPU after the int3 returns.
        BREAKPOINTS.fetch_add(1, Ordering::Relaxed);
        // Every XMM register used, as any handler may: the self-test
        // `idt-keeps-sse-state` checks that the interrupted code gets its own back.
        // SAFETY: only registers change, all declared clobbered.
        unsafe {
            core::arch::asm!(
                "xorps xmm0, xmm0",
                "xorps xmm1, xmm1",
                "xorps xmm2, xmm2",
                "xorps xmm3, xmm3",
                "xorps xmm4, xmm4",
                "xorps xmm5, xmm5",
                "xorps xmm6, xmm6",
                "xorps xmm7, xmm7",
                "xorps xmm8, xmm8",
                "xorps xmm9, xmm9",
                "xorps xmm10, xmm10",
                "xorps xmm11, xmm11",
                "xorps xmm12, xmm12",
                "xorps xmm13, xmm13",
                "xorps xmm14, xmm14",
                "xorps xmm15, xmm15",
                clobber_abi("C"),
                options(nomem, nostack),
            )
        };
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

/// Fills the shared IDT and loads vCPU 0's tables (once, at boot).
pub fn init() {
    // SAFETY: runs once at boot on vCPU 0 before any other vCPU exists and before any
    // exception can be handled; the IDT is only read by CPUs through IDTR afterwards.
    unsafe {
        let idt = &raw mut IDT;
        let gate = |addr: u64, ist: u8| IdtEntry {
            offset_lo: addr as u16,
            selector: KERNEL_CS,
            ist,
            type_attr: 0x8e,
            offset_mid: (addr >> 16) as u16,
            offset_hi: (addr >> 32) as u32,
            zero: 0,
        };
        for (v, &addr) in isr_table.iter().enumerate() {
            let ist = if matches!(v, 2 | 8 | 18) { 2 } else { 1 };
            (*idt)[v] = gate(addr, ist);
        }
        (*idt)[UPCALL_VECTOR as usize] = gate(isr_upcall_addr, 3);
        (*idt)[SPURIOUS_VECTOR as usize] = gate(isr_spurious_addr, 3);
        load(&mut *core::ptr::addr_of_mut!(BOOT_TABLES));
    }
}

/// Loads `t` (GDT with its TSS, the TSS) and the shared IDT on the calling vCPU. Each
/// vCPU needs its own `CpuTables` (a loaded TSS is marked busy in its GDT).
pub fn load(t: &'static mut CpuTables) {
    for (i, stack) in t.ist.iter().enumerate() {
        t.tss.ist[i] = stack.0.as_ptr() as u64 + IST_STACK_SIZE as u64;
    }
    let base = (&raw const t.tss) as u64;
    let limit = core::mem::size_of::<Tss>() as u64 - 1;
    t.gdt = [
        0,
        0x00af_9a00_0000_ffff,
        0x00cf_9200_0000_ffff,
        // Available 64-bit TSS descriptor (type 9, present).
        limit | (base & 0xff_ffff) << 16 | 0x89 << 40 | ((base >> 24) & 0xff) << 56,
        base >> 32,
    ];
    let gdtr = DescPtr {
        limit: (core::mem::size_of::<[u64; 5]>() - 1) as u16,
        base: t.gdt.as_ptr() as u64,
    };
    let idtr = DescPtr {
        limit: (core::mem::size_of::<[IdtEntry; 256]>() - 1) as u16,
        base: (&raw const IDT) as u64,
    };
    // SAFETY: `t` lives forever and belongs to this vCPU; the GDT has the same code and
    // data selectors as the boot GDT, so reloading CS/DS/SS keeps running code valid.
    unsafe {
        core::arch::asm!(
            "lgdt [{gdtr}]",
            // Reload CS through a far return so the new GDT is in use for code too.
            "push {cs}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov {tmp:e}, 0x10",
            "mov ds, {tmp:e}",
            "mov es, {tmp:e}",
            "mov ss, {tmp:e}",
            "ltr {tss:x}",
            "lidt [{idtr}]",
            gdtr = in(reg) &gdtr,
            idtr = in(reg) &idtr,
            cs = in(reg) KERNEL_CS as u64,
            tmp = out(reg) _,
            tss = in(reg) TSS_SEL,
        );
    }
}
