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
//!
//! Options (after the three arguments):
//! - `--marker HEX`: also read the first 16 bytes of every mapped frame and count those
//!   holding the 64-bit marker twice (little-endian; the guest's `fill=` test switch
//!   writes it so), printed as ` marked=N`: what a frame holds, as Xen maps it to dom0.
//! - `--absent-out FILE`: write the absent gfns there, one decimal per line.
//! - `--only FILE`: probe only the gfns of the range listed there (as `--absent-out`
//!   wrote them).

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

/// Maps `gfns` of `domid` read-only; per gfn 0 (RAM, mapped) or Xen's negative error,
/// and whether the frame begins with `marker` twice (false without a marker).
fn probe(
    fd: i32,
    domid: u16,
    gfns: &[u64],
    marker: Option<u64>,
) -> Result<(Vec<i32>, Vec<bool>), String> {
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
    let want = marker.map(|m| {
        let mut w = [0u8; 16];
        w[..8].copy_from_slice(&m.to_le_bytes());
        w[8..].copy_from_slice(&m.to_le_bytes());
        w
    });
    let read16 = |i: usize| {
        let mut got = [0u8; 16];
        for (k, b) in got.iter_mut().enumerate() {
            // SAFETY: called only for a frame that Xen mapped (err[i] == 0) in our mapping
            // of `len` bytes; volatile: the guest may write it meanwhile.
            *b = unsafe { (p as *const u8).add(i * PAGE + k).read_volatile() };
        }
        got
    };
    let marked: Vec<bool> = (0..gfns.len())
        .map(|i| want.is_some_and(|w| err[i] == 0 && read16(i) == w))
        .collect();
    // SAFETY: our own mapping of `len` bytes.
    unsafe { libc::munmap(p, len) };
    // A failed batch still fills `err` per frame (ENOENT: some frames paged/absent).
    if r < 0 && err.iter().all(|&e| e == 0) {
        return Err(format!("IOCTL_PRIVCMD_MMAPBATCH_V2: {ioctl_err}"));
    }
    Ok((err, marked))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || {
        eprintln!(
            "usage: gfn-probe DOMID FIRST_GFN COUNT [--marker HEX] [--absent-out FILE] [--only FILE]"
        );
        ExitCode::from(1)
    };
    let parsed = match args.get(..3) {
        Some([d, f, n]) => (d.parse::<u16>().ok(), parse_num(f), parse_num(n)),
        _ => (None, None, None),
    };
    let (Some(domid), Some(first), Some(count)) = parsed else {
        return usage();
    };
    let (mut marker, mut absent_out, mut only) = (None, None, None);
    let mut rest = args[3..].iter();
    while let Some(flag) = rest.next() {
        let Some(v) = rest.next() else {
            return usage();
        };
        match flag.as_str() {
            "--marker" => match u64::from_str_radix(v.trim_start_matches("0x"), 16) {
                Ok(m) => marker = Some(m),
                Err(_) => return usage(),
            },
            "--absent-out" => absent_out = Some(v.clone()),
            "--only" => match std::fs::read_to_string(v) {
                Ok(text) => {
                    let set: Result<std::collections::BTreeSet<u64>, _> =
                        text.lines().map(|l| l.trim().parse::<u64>()).collect();
                    match set {
                        Ok(set) => only = Some(set),
                        Err(e) => {
                            eprintln!("gfn-probe: {v}: {e}");
                            return ExitCode::from(1);
                        }
                    }
                }
                Err(e) => {
                    eprintln!("gfn-probe: {v}: {e}");
                    return ExitCode::from(1);
                }
            },
            _ => return usage(),
        }
    }
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
    let (mut populated, mut absent, mut marked) = (0u64, 0u64, 0u64);
    let mut absent_gfns = Vec::new();
    let (mut lo, mut hi) = (None, None);
    let mut errors: BTreeMap<i32, u64> = BTreeMap::new();
    let mut g = first;
    while g < first + count {
        let n = CHUNK.min((first + count - g) as usize);
        let gfns: Vec<u64> = (g..g + n as u64)
            .filter(|x| only.as_ref().is_none_or(|o| o.contains(x)))
            .collect();
        if gfns.is_empty() {
            g += n as u64;
            continue;
        }
        match probe(fd, domid, &gfns, marker) {
            Ok((err, marks)) => {
                for ((&gfn, &e), &m) in gfns.iter().zip(&err).zip(&marks) {
                    marked += m as u64;
                    if e == 0 {
                        populated += 1;
                        lo.get_or_insert(gfn);
                        hi = Some(gfn);
                    } else {
                        absent += 1;
                        absent_gfns.push(gfn);
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
    if let Some(path) = absent_out {
        let text: String = absent_gfns.iter().map(|g| format!("{g}\n")).collect();
        if let Err(e) = std::fs::write(&path, text) {
            eprintln!("gfn-probe: {path}: {e}");
            return ExitCode::from(1);
        }
    }
    let hex = |v: Option<u64>| v.map_or("-".to_string(), |x| format!("{x:#x}"));
    let errs: Vec<String> = errors.iter().map(|(e, n)| format!("{e}:{n}")).collect();
    println!(
        "max_gpfn={max} populated={populated} absent={absent} first={} last={} errors={}{}",
        hex(lo),
        hex(hi),
        if errs.is_empty() {
            "-".to_string()
        } else {
            errs.join(",")
        },
        marker.map_or(String::new(), |_| format!(" marked={marked}"))
    );
    ExitCode::SUCCESS
}
