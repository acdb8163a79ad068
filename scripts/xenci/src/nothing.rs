//! The do-nothing PVH kernel: the floor of `xl create` → first output in `scripts/bench`.
//!
//! A complete ELF64 image, written byte by byte (no assembler, no linker): one PT_LOAD at
//! 1 MiB holding 23 bytes of 32-bit code and a message, and one PT_NOTE with the Xen notes a
//! PVH image needs (`XEN_ELFNOTE_PHYS32_ENTRY`, plus the guest OS and Xen version notes our
//! guest also carries). Xen starts it in 32-bit protected mode, paging off, at the
//! PHYS32 entry; it writes its message to port 0xE9 (Xen prints `(dN) <line>`) and then idles
//! without spinning:
//!
//! ```text
//!         cld
//!         mov  edx, 0xE9
//!         mov  esi, message
//! next:   lodsb
//!         test al, al
//!         jz   idle
//!         out  dx, al
//!         jmp  next
//! idle:   sti              ; interrupts on: nothing is set up to send one (no event
//!         hlt              ; channel upcall, the local APIC software-disabled), so the
//!         jmp  idle        ; vCPU blocks in Xen for good. `cli; hlt` would make Xen take
//!                          ; the vCPU down instead.
//! ```
//!
//! `xenci nothing-kernel FILE` writes it (scripts/xen-ci puts it in the dom0 image as
//! `target/release/nothing`).

/// Where the image is loaded (guest-physical), like our guest.
pub const LOAD_ADDR: u64 = 0x10_0000;
/// The line it prints on port 0xE9.
pub const MESSAGE: &str = "nothing: up\n";

const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const CODE_OFF: usize = EHDR_SIZE + 2 * PHDR_SIZE;

/// Xen ELF notes (xen/include/public/elfnote.h).
const XEN_ELFNOTE_XEN_VERSION: u32 = 5;
const XEN_ELFNOTE_GUEST_OS: u32 = 6;
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

fn code(message_addr: u32) -> Vec<u8> {
    // cld: lodsb walks up (the PVH ABI leaves flags other than IF and VM unspecified).
    let mut c = vec![0xFC, 0xBA]; // cld; mov edx, imm32
    c.extend_from_slice(&0xE9u32.to_le_bytes());
    c.push(0xBE); // mov esi, imm32
    c.extend_from_slice(&message_addr.to_le_bytes());
    c.extend_from_slice(&[
        0xAC, // next: lodsb
        0x84, 0xC0, // test al, al
        0x74, 0x03, // jz idle (+3)
        0xEE, // out dx, al
        0xEB, 0xF8, // jmp next (-8)
        0xFB, // idle: sti
        0xF4, // hlt
        0xEB, 0xFC, // jmp idle (-4)
    ]);
    c
}

fn note(out: &mut Vec<u8>, kind: u32, desc: &[u8]) {
    out.extend_from_slice(&4u32.to_le_bytes()); // namesz ("Xen\0")
    out.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(b"Xen\0");
    out.extend_from_slice(desc);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn phdr(out: &mut Vec<u8>, kind: u32, flags: u32, off: usize, size: usize, align: u64) {
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&(off as u64).to_le_bytes());
    out.extend_from_slice(&(LOAD_ADDR + off as u64).to_le_bytes()); // vaddr
    out.extend_from_slice(&(LOAD_ADDR + off as u64).to_le_bytes()); // paddr
    out.extend_from_slice(&(size as u64).to_le_bytes()); // filesz
    out.extend_from_slice(&(size as u64).to_le_bytes()); // memsz
    out.extend_from_slice(&align.to_le_bytes());
}

/// The whole image.
pub fn image() -> Vec<u8> {
    let entry = LOAD_ADDR + CODE_OFF as u64;
    let code_len = code(0).len();
    let msg_off = CODE_OFF + code_len;
    let body_code = code((LOAD_ADDR + msg_off as u64) as u32);
    let mut body = body_code;
    body.extend_from_slice(MESSAGE.as_bytes());
    body.push(0);
    while !(CODE_OFF + body.len()).is_multiple_of(4) {
        body.push(0);
    }
    let note_off = CODE_OFF + body.len();
    let mut notes = Vec::new();
    note(
        &mut notes,
        XEN_ELFNOTE_PHYS32_ENTRY,
        &(entry as u32).to_le_bytes(),
    );
    note(&mut notes, XEN_ELFNOTE_GUEST_OS, b"nothing\0");
    note(&mut notes, XEN_ELFNOTE_XEN_VERSION, b"xen-3.0\0");
    let total = note_off + notes.len();

    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&[0x7F, b'E', b'L', b'F', 2, 1, 1, 0]); // ELF64, LE, v1, SysV
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    out.extend_from_slice(&0x3Eu16.to_le_bytes()); // EM_X86_64
    out.extend_from_slice(&1u32.to_le_bytes()); // EV_CURRENT
    out.extend_from_slice(&entry.to_le_bytes());
    out.extend_from_slice(&(EHDR_SIZE as u64).to_le_bytes()); // e_phoff
    out.extend_from_slice(&0u64.to_le_bytes()); // e_shoff: no sections
    out.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    out.extend_from_slice(&(EHDR_SIZE as u16).to_le_bytes());
    out.extend_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes()); // e_phnum
    out.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    out.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    out.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
                                                // PT_LOAD (R W X) of the whole file at LOAD_ADDR; PT_NOTE over the notes.
    phdr(&mut out, 1, 7, 0, total, 0x1000);
    phdr(&mut out, 4, 4, note_off, notes.len(), 4);
    debug_assert_eq!(out.len(), CODE_OFF);
    out.extend_from_slice(&body);
    out.extend_from_slice(&notes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], o: usize) -> u16 {
        u16::from_le_bytes(b[o..o + 2].try_into().unwrap())
    }
    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }

    #[test]
    fn an_elf64_with_a_pvh_entry_note_pointing_at_its_code() {
        let img = image();
        assert_eq!(&img[..4], b"\x7fELF");
        assert_eq!(img[4], 2, "ELFCLASS64");
        assert_eq!(u16_at(&img, 18), 0x3E, "x86-64");
        let phnum = u16_at(&img, 56) as usize;
        assert_eq!(phnum, 2);
        let ph = |i: usize| EHDR_SIZE + i * PHDR_SIZE;
        // PT_LOAD covers the file at 1 MiB.
        assert_eq!(u32_at(&img, ph(0)), 1);
        assert_eq!(u64_at(&img, ph(0) + 8), 0);
        assert_eq!(u64_at(&img, ph(0) + 24), LOAD_ADDR);
        assert_eq!(u64_at(&img, ph(0) + 32) as usize, img.len());
        // PT_NOTE: the first note is PHYS32_ENTRY = e_entry, inside the loaded code.
        assert_eq!(u32_at(&img, ph(1)), 4);
        let off = u64_at(&img, ph(1) + 8) as usize;
        assert_eq!(off % 4, 0);
        assert_eq!(u32_at(&img, off), 4);
        assert_eq!(u32_at(&img, off + 4), 4);
        assert_eq!(u32_at(&img, off + 8), XEN_ELFNOTE_PHYS32_ENTRY);
        assert_eq!(&img[off + 12..off + 16], b"Xen\0");
        let entry = u32_at(&img, off + 16) as u64;
        assert_eq!(entry, u64_at(&img, 24));
        let code_at = (entry - LOAD_ADDR) as usize;
        assert_eq!(&img[code_at..code_at + 2], &[0xFC, 0xBA], "cld; mov edx");
        // The message pointer (mov esi, imm32) points at the NUL-terminated message.
        assert_eq!(img[code_at + 6], 0xBE);
        let msg = (u32_at(&img, code_at + 7) as u64 - LOAD_ADDR) as usize;
        assert_eq!(&img[msg..msg + MESSAGE.len()], MESSAGE.as_bytes());
        assert_eq!(img[msg + MESSAGE.len()], 0);
    }

    #[test]
    fn the_loop_idles_with_interrupts_on_and_never_spins_on_a_port() {
        let img = image();
        let c = code(0);
        // jz +3 lands on `sti`; both backward jumps land on lodsb / sti.
        let jz = c.iter().position(|&b| b == 0x74).unwrap();
        assert_eq!(c[jz + 2 + c[jz + 1] as usize], 0xFB);
        let sti = jz + 5;
        assert_eq!(&c[sti..sti + 2], &[0xFB, 0xF4], "sti; hlt");
        assert_eq!(&c[sti + 2..], &[0xEB, 0xFC], "jmp back to sti");
        let jmp_next = jz + 3;
        assert_eq!(c[jmp_next], 0xEB);
        let target = (jmp_next as i64 + 2 + (c[jmp_next + 1] as i8) as i64) as usize;
        assert_eq!(c[target], 0xAC, "back to lodsb");
        assert!(img.len() < 512);
    }
}
