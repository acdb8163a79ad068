//! PVH entry: ELF notes, the 32-bit entry point, boot page tables, switch to long mode.
//!
//! Xen (and QEMU's `-kernel` PVH loader) enter `pvh_start32` in 32-bit protected mode with
//! paging off and `%ebx` = physical address of `hvm_start_info`. We zero .bss, identity-map
//! the first 4 GiB with 2 MiB pages, enter long mode, turn on SSE (the prebuilt libcore
//! uses it) and call `kernel_main(start_info_paddr)`. Rust then builds the real tables.

core::arch::global_asm!(
    // --- ELF notes: name "Xen", 4-byte aligned (QEMU rejects an 8-aligned PT_NOTE). ---
    ".pushsection .note.Xen, \"a\", @note",
    ".balign 4",
    // XEN_ELFNOTE_PHYS32_ENTRY (18): 32-bit physical entry point.
    ".long 4, 4, 18",
    ".asciz \"Xen\"",
    ".long pvh_start32",
    // XEN_ELFNOTE_GUEST_OS (6).
    ".long 4, 92f - 91f, 6",
    ".asciz \"Xen\"",
    "91: .asciz \"xenguest-rs\"",
    "92: .balign 4",
    // XEN_ELFNOTE_GUEST_VERSION (7).
    ".long 4, 94f - 93f, 7",
    ".asciz \"Xen\"",
    "93: .asciz \"0.1\"",
    "94: .balign 4",
    // XEN_ELFNOTE_XEN_VERSION (5).
    ".long 4, 96f - 95f, 5",
    ".asciz \"Xen\"",
    "95: .asciz \"xen-3.0\"",
    "96: .balign 4",
    ".popsection",
    // --- The hypercall page: Xen fills it in when we write its address to the MSR. ---
    ".pushsection .text.hypercall_page, \"ax\"",
    ".balign 4096",
    ".global hypercall_page",
    "hypercall_page:",
    ".fill 4096, 1, 0xcc",
    ".popsection",
    // --- 32-bit entry ---
    ".pushsection .text.boot, \"ax\"",
    ".code32",
    ".global pvh_start32",
    "pvh_start32:",
    "cli",
    "cld",
    "mov %ebx, %ebp",
    // Zero .bss (it holds the boot page tables and stacks), 4 bytes a store: TCG runs a
    // `rep stos` one element per iteration, so `stosb` over the 1.6 MiB cost ~4 ms of
    // the boot. Both ends are page aligned (linker.ld).
    "mov $__bss_start, %edi",
    "mov $__bss_end, %ecx",
    "sub %edi, %ecx",
    "shr $2, %ecx",
    "xor %eax, %eax",
    "rep stosl",
    "mov %ebp, boot_start_info",
    // PML4[0] -> PDPT; PDPT[0..4] -> 4 PDs; PD[i] = i * 2 MiB | PS | RW | P.
    "mov $boot_pdpt, %eax",
    "or $3, %eax",
    "mov %eax, boot_pml4",
    "mov $boot_pd, %eax",
    "or $3, %eax",
    "xor %ecx, %ecx",
    "1:",
    "mov %eax, boot_pdpt(,%ecx,8)",
    "add $4096, %eax",
    "inc %ecx",
    "cmp $4, %ecx",
    "jb 1b",
    "xor %ecx, %ecx",
    "2:",
    "mov %ecx, %eax",
    "shl $21, %eax",
    "or $0x83, %eax",
    "mov %eax, boot_pd(,%ecx,8)",
    "mov %ecx, %edx",
    "shr $11, %edx",
    "mov %edx, boot_pd+4(,%ecx,8)",
    "inc %ecx",
    "cmp $2048, %ecx",
    "jb 2b",
    // CR4.PAE, CR3, EFER.LME|NXE, CR0.PG.
    "mov %cr4, %eax",
    "or $0x20, %eax",
    "mov %eax, %cr4",
    "mov $boot_pml4, %eax",
    "mov %eax, %cr3",
    "mov $0xC0000080, %ecx",
    "rdmsr",
    "or $0x900, %eax",
    "wrmsr",
    "mov %cr0, %eax",
    "or $0x80000001, %eax",
    "mov %eax, %cr0",
    "lgdt boot_gdt_desc",
    "ljmp $0x08, $3f",
    ".code64",
    "3:",
    "mov $0x10, %eax",
    "mov %eax, %ds",
    "mov %eax, %es",
    "mov %eax, %ss",
    "mov %eax, %fs",
    "mov %eax, %gs",
    "lea boot_stack_top(%rip), %rsp",
    // SSE: CR0.EM=0, CR0.TS=0, CR0.MP=1; CR4.OSFXSR|OSXMMEXCPT.
    "mov %cr0, %rax",
    "and $~0xc, %rax",
    "or $0x2, %rax",
    "mov %rax, %cr0",
    "mov %cr4, %rax",
    "or $0x600, %rax",
    "mov %rax, %cr4",
    "fninit",
    "ldmxcsr boot_mxcsr(%rip)",
    "mov boot_start_info(%rip), %edi",
    "xor %ebp, %ebp",
    "call kernel_main",
    "4: hlt",
    "jmp 4b",
    ".popsection",
    // --- boot data ---
    ".pushsection .rodata.boot, \"a\"",
    ".balign 16",
    "boot_gdt:",
    ".quad 0",
    ".quad 0x00af9a000000ffff", // 0x08: 64-bit code
    ".quad 0x00cf92000000ffff", // 0x10: data
    "boot_gdt_end:",
    "boot_gdt_desc:",
    ".word boot_gdt_end - boot_gdt - 1",
    ".long boot_gdt",
    "boot_mxcsr: .long 0x1f80",
    ".popsection",
    ".pushsection .bss.boot, \"aw\", @nobits",
    ".balign 4096",
    ".global boot_pml4",
    "boot_pml4: .skip 4096",
    ".global boot_pdpt",
    "boot_pdpt: .skip 4096",
    "boot_pd: .skip 4096 * 4",
    ".balign 16",
    // 512 KiB: building the memory model moves its 32 KiB section root by value a few times.
    "boot_stack: .skip 524288",
    "boot_stack_top:",
    ".balign 8",
    "boot_start_info: .skip 8",
    ".popsection",
    options(att_syntax)
);

extern "C" {
    static hypercall_page: u8;
    static boot_pml4: u8;
    static boot_pdpt: u8;
    static __kernel_start: u8;
    static __kernel_end: u8;
}

/// Physical address of the hypercall page (identity-mapped).
pub fn hypercall_page_paddr() -> u64 {
    core::ptr::addr_of!(hypercall_page) as u64
}

/// Physical addresses of the boot PML4 and PDPT (built by the entry stub).
pub fn boot_tables() -> (u64, u64) {
    (
        core::ptr::addr_of!(boot_pml4) as u64,
        core::ptr::addr_of!(boot_pdpt) as u64,
    )
}

/// The kernel image's physical extent, `[start, end)`, including .bss.
pub fn kernel_extent() -> (u64, u64) {
    (
        core::ptr::addr_of!(__kernel_start) as u64,
        core::ptr::addr_of!(__kernel_end) as u64,
    )
}
