//! What the PVH start_info tells us, copied out of low memory before anything reuses it.

use core::fmt;
use core::fmt::Write;

use xen_bindings::abi::start_info::{memmap_type, HvmMemmapEntry, HvmStartInfo, HVM_START_MAGIC};

const MAX_CMDLINE: usize = 2048;
const MAX_MEMMAP: usize = 128;

pub struct BootInfo {
    pub start_info_paddr: u64,
    /// Byte ranges (paddr, len) Xen's loader put in RAM for us: start_info, command line,
    /// memmap table, module list. They become Reserved in the memmap.
    pub loader_ranges: [(u64, u64); 4],
    pub version: u32,
    cmdline: [u8; MAX_CMDLINE],
    cmdline_len: usize,
    memmap: [HvmMemmapEntry; MAX_MEMMAP],
    memmap_len: usize,
}

#[derive(Debug)]
pub enum BootInfoError {
    BadMagic(u32),
}

impl fmt::Display for BootInfoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadMagic(m) => write!(
                f,
                "magic {m:#x}, expected {HVM_START_MAGIC:#x}: not a PVH boot"
            ),
        }
    }
}

impl BootInfo {
    /// # Safety
    /// `paddr` must be the hvm_start_info Xen passed, identity-mapped, with the cmdline and
    /// memmap it points to still intact.
    pub unsafe fn capture(paddr: u64) -> Result<Self, BootInfoError> {
        // SAFETY: the caller guarantees a readable hvm_start_info at paddr.
        let si = unsafe { (paddr as *const HvmStartInfo).read_unaligned() };
        if si.magic != HVM_START_MAGIC {
            return Err(BootInfoError::BadMagic(si.magic));
        }
        let mut b = BootInfo {
            start_info_paddr: paddr,
            loader_ranges: [
                (paddr, core::mem::size_of::<HvmStartInfo>() as u64),
                (0, 0),
                (0, 0),
                (si.modlist_paddr, si.nr_modules as u64 * 32),
            ],
            version: si.version,
            cmdline: [0; MAX_CMDLINE],
            cmdline_len: 0,
            memmap: [HvmMemmapEntry {
                addr: 0,
                size: 0,
                type_: 0,
                reserved: 0,
            }; MAX_MEMMAP],
            memmap_len: 0,
        };
        if si.cmdline_paddr != 0 {
            let p = si.cmdline_paddr as *const u8;
            // A NUL-terminated string; anything beyond MAX_CMDLINE - 1 bytes is cut.
            // SAFETY: Xen's cmdline pointer is readable up to its NUL; we stop there.
            while b.cmdline_len < MAX_CMDLINE - 1 {
                let c = unsafe { p.add(b.cmdline_len).read_volatile() };
                if c == 0 {
                    break;
                }
                b.cmdline[b.cmdline_len] = c;
                b.cmdline_len += 1;
            }
            b.loader_ranges[1] = (si.cmdline_paddr, b.cmdline_len as u64 + 1);
        }
        if si.version >= 1 && si.memmap_paddr != 0 {
            let n = (si.memmap_entries as usize).min(MAX_MEMMAP);
            if n < si.memmap_entries as usize {
                log::warn!(
                    "start_info: memmap has {} entries, keeping {}",
                    si.memmap_entries,
                    n
                );
            }
            for i in 0..n {
                // SAFETY: version >= 1 start_info points at memmap_entries entries.
                b.memmap[i] = unsafe {
                    (si.memmap_paddr as *const HvmMemmapEntry)
                        .add(i)
                        .read_unaligned()
                };
            }
            b.memmap_len = n;
            b.loader_ranges[2] = (si.memmap_paddr, si.memmap_entries as u64 * 24);
        } else {
            log::warn!("start_info version {} carries no memmap", si.version);
        }
        Ok(b)
    }

    pub fn cmdline(&self) -> &str {
        // Non-UTF-8 bytes make the whole line unusable; say so via an empty line.
        core::str::from_utf8(&self.cmdline[..self.cmdline_len]).unwrap_or("")
    }

    pub fn memmap(&self) -> &[HvmMemmapEntry] {
        &self.memmap[..self.memmap_len]
    }

    pub fn ram_bytes(&self) -> u64 {
        self.memmap()
            .iter()
            .filter(|e| e.type_ == memmap_type::RAM)
            .map(|e| e.size)
            .sum()
    }

    pub fn log_memmap(&self) {
        // One line (each costs an exit and a line of Xen's serial console at boot).
        let mut line = alloc::string::String::from("memmap:");
        for (i, e) in self.memmap().iter().enumerate() {
            let kind = match e.type_ {
                memmap_type::RAM => "RAM",
                memmap_type::RESERVED => "reserved",
                memmap_type::ACPI => "ACPI",
                memmap_type::NVS => "ACPI NVS",
                memmap_type::UNUSABLE => "unusable",
                memmap_type::DISABLED => "disabled",
                memmap_type::PMEM => "pmem",
                _ => "unknown",
            };
            let sep = if i == 0 { " " } else { ", " };
            let _ = write!(line, "{sep}[{:#x}-{:#x}) {kind}", e.addr, e.addr + e.size);
        }
        let (ks, ke) = crate::arch::entry::kernel_extent();
        log::info!(
            "{line}; kernel image [{ks:#x}-{ke:#x}), {} KiB RAM",
            self.ram_bytes() >> 10
        );
        log::debug!(
            "hvm_start_info v{} at {:#x}",
            self.version,
            self.start_info_paddr
        );
    }
}
