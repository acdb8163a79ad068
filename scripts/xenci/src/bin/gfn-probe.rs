//! `gfn-probe DOMID FIRST_GFN COUNT` — Xen's own answer, asked from dom0, to "which guest
//! frames of domain DOMID are RAM right now": every gfn in `[FIRST_GFN, FIRST_GFN+COUNT)`
//! is foreign-mapped through `/dev/xen/privcmd` (`IOCTL_PRIVCMD_MMAPBATCH_V2`, as a
//! device model maps guest memory), 1024 at a time, and unmapped again. Xen maps a gfn
//! only if its p2m holds a RAM page there; anything else (never populated, ballooned out,
//! a hole) comes back as a per-frame error. Also asks Xen for the domain's highest gfn
//! (`XENMEM_maximum_gpfn`).
//!
//! Prints one line: `max_gpfn=0x... populated=N absent=M first=0x... last=0x... errors=E:N,...`
//! (first/last populated gfn, or `-`; the per-frame error codes seen for absent ones).
//! GFNs are decimal or 0x-hex. Exit 0 when the probe ran (whatever it found), 1 on a
//! tool error (no privcmd, bad arguments).

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use xenci::privcmd;

const PAGE: usize = 4096;
const CHUNK: usize = 1024;
/// `_IOC(_IOC_NONE, 'P', 4, sizeof(struct privcmd_mmapbatch_v2))` (32 bytes).
const IOCTL_PRIVCMD_MMAPBATCH_V2: libc::c_ulong = (32 << 16) | (b'P' as libc::c_ulong) << 8 | 4;
const HYPERVISOR_MEMORY_OP: u64 = 12;
const XENMEM_MAXIMUM_GPFN: u64 = 14;

/// `struct privcmd_mmapbatch_v2`.
#[repr(C)]
struct MmapBatchV2 {
    num: u32,
    dom: u16,
    addr: u64,
    arr: *const u64,
    err: *mut i32,
}
const _: () = assert!(std::mem::size_of::<MmapBatchV2>() == 32);

fn parse_num(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// `XENMEM_maximum_gpfn` for `domid` (the argument is a pointer to the domid).
fn max_gpfn(f: &File, domid: u16) -> Result<u64, String> {
    let mut dom = domid;
    let args = [XENMEM_MAXIMUM_GPFN, &mut dom as *mut u16 as u64, 0, 0, 0];
    // SAFETY: the one pointer argument (`dom`, on this stack frame) outlives the call.
    unsafe { privcmd::hypercall(f, HYPERVISOR_MEMORY_OP, args) }
        .map(|r| r as u64)
        .map_err(|e| format!("XENMEM_maximum_gpfn: {e}"))
}

/// Maps `gfns` of `domid` read-only; per gfn 0 (RAM, mapped) or Xen's negative error.
fn probe(fd: i32, domid: u16, gfns: &[u64]) -> Result<Vec<i32>, String> {
    let len = gfns.len() * PAGE;
    // SAFETY: a fresh shared mapping of privcmd, which MMAPBATCH then fills.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(format!(
            "mmap of privcmd: {}",
            std::io::Error::last_os_error()
        ));
    }
    let mut err = vec![0i32; gfns.len()];
    let mut b = MmapBatchV2 {
        num: gfns.len() as u32,
        dom: domid,
        addr: p as u64,
        arr: gfns.as_ptr(),
        err: err.as_mut_ptr(),
    };
    // SAFETY: `b` describes `gfns`/`err` (same length) and the mapping made above.
    let r = unsafe { libc::ioctl(fd, IOCTL_PRIVCMD_MMAPBATCH_V2, &mut b as *mut MmapBatchV2) };
    let ioctl_err = std::io::Error::last_os_error();
    // SAFETY: our own mapping of `len` bytes.
    unsafe { libc::munmap(p, len) };
    // A failed batch still fills `err` per frame (ENOENT: some frames paged/absent).
    if r < 0 && err.iter().all(|&e| e == 0) {
        return Err(format!("IOCTL_PRIVCMD_MMAPBATCH_V2: {ioctl_err}"));
    }
    Ok(err)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = match args.as_slice() {
        [d, f, n] => (d.parse::<u16>().ok(), parse_num(f), parse_num(n)),
        _ => (None, None, None),
    };
    let (Some(domid), Some(first), Some(count)) = parsed else {
        eprintln!("usage: gfn-probe DOMID FIRST_GFN COUNT");
        return ExitCode::from(1);
    };
    let f = match privcmd::open() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("gfn-probe: {e}");
            return ExitCode::from(1);
        }
    };
    let fd = f.as_raw_fd();
    let max = match max_gpfn(&f, domid) {
        Ok(m) => format!("{m:#x}"),
        Err(e) => format!("error({e})"),
    };
    let (mut populated, mut absent) = (0u64, 0u64);
    let (mut lo, mut hi) = (None, None);
    let mut errors: BTreeMap<i32, u64> = BTreeMap::new();
    let mut g = first;
    while g < first + count {
        let n = CHUNK.min((first + count - g) as usize);
        let gfns: Vec<u64> = (g..g + n as u64).collect();
        match probe(fd, domid, &gfns) {
            Ok(err) => {
                for (&gfn, &e) in gfns.iter().zip(&err) {
                    if e == 0 {
                        populated += 1;
                        lo.get_or_insert(gfn);
                        hi = Some(gfn);
                    } else {
                        absent += 1;
                        *errors.entry(e).or_default() += 1;
                    }
                }
            }
            Err(e) => {
                eprintln!("gfn-probe: gfns {g:#x}+{n}: {e}");
                return ExitCode::from(1);
            }
        }
        g += n as u64;
    }
    let hex = |v: Option<u64>| v.map_or("-".to_string(), |x| format!("{x:#x}"));
    let errs: Vec<String> = errors.iter().map(|(e, n)| format!("{e}:{n}")).collect();
    println!(
        "max_gpfn={max} populated={populated} absent={absent} first={} last={} errors={}",
        hex(lo),
        hex(hi),
        if errs.is_empty() {
            "-".to_string()
        } else {
            errs.join(",")
        }
    );
    ExitCode::SUCCESS
}
