//! `gntdev-bench DOMID "REF REF ..." ROUNDS` — Linux's grant mapping through
//! `/dev/xen/gntdev`, the baseline for our mapper's `bench` command (the `grant-bench`
//! scenario), run in dom0 and in the Linux peer (a PVH domU; `scripts/xen-ci` builds a
//! statically linked copy for its busybox initramfs). Maps the refs in one batch and one
//! page at a time, ROUNDS times each; prints the microseconds per map and per unmap call
//! of the median round, and the handshake checksum of the pages (so the granter can
//! verify what was read).
//!
//! What one "call" is here: map = `IOCTL_GNTDEV_MAP_GRANT_REF` + `mmap` (gntdev issues
//! `GNTTABOP_map_grant_ref` for the whole range inside `mmap`), unmap = `munmap` +
//! `IOCTL_GNTDEV_UNMAP_GRANT_REF`: the syscall path a Linux backend's user space pays.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::time::Instant;

use guest::xen::grant::handshake::{checksum, parse_refs};

const PAGE: usize = 4096;
/// `_IOC(_IOC_NONE, 'G', 0, sizeof(struct ioctl_gntdev_map_grant_ref))` (24 bytes).
const IOCTL_GNTDEV_MAP_GRANT_REF: libc::c_ulong = (24 << 16) | (b'G' as libc::c_ulong) << 8;
/// `_IOC(_IOC_NONE, 'G', 1, sizeof(struct ioctl_gntdev_unmap_grant_ref))` (16 bytes).
const IOCTL_GNTDEV_UNMAP_GRANT_REF: libc::c_ulong = (16 << 16) | (b'G' as libc::c_ulong) << 8 | 1;

/// The fixed part of `struct ioctl_gntdev_map_grant_ref`; `map` builds it as `u32`
/// words 0..4 of its buffer (count, pad, index low, index high), refs following.
#[repr(C)]
#[allow(dead_code)]
struct MapHeader {
    count: u32,
    pad: u32,
    index: u64,
}
const _: () = assert!(std::mem::size_of::<MapHeader>() == 16);

/// `struct ioctl_gntdev_unmap_grant_ref`.
#[repr(C)]
struct Unmap {
    index: u64,
    count: u32,
    pad: u32,
}
const _: () = assert!(std::mem::size_of::<Unmap>() == 16);

/// Maps `refs` of `domid` read-only; returns the mapping and gntdev's index.
fn map(fd: i32, domid: u32, refs: &[u32]) -> Result<(*mut libc::c_void, u64), String> {
    // Header, then `struct ioctl_gntdev_grant_ref { u32 domid; u32 ref; }` per ref.
    let mut buf = vec![0u32; 4 + 2 * refs.len()];
    buf[0] = refs.len() as u32;
    for (i, &r) in refs.iter().enumerate() {
        buf[4 + 2 * i] = domid;
        buf[5 + 2 * i] = r;
    }
    // SAFETY: `buf` holds a valid ioctl_gntdev_map_grant_ref with `count` refs; the
    // kernel writes `index` into it.
    if unsafe { libc::ioctl(fd, IOCTL_GNTDEV_MAP_GRANT_REF, buf.as_mut_ptr()) } != 0 {
        return Err(format!(
            "IOCTL_GNTDEV_MAP_GRANT_REF: {}",
            std::io::Error::last_os_error()
        ));
    }
    // `index` is the u64 at byte 8 of the header (x86_64: little-endian).
    let index = u64::from(buf[2]) | u64::from(buf[3]) << 32;
    let len = refs.len() * PAGE;
    // SAFETY: mapping gntdev's range `index` read-only and shared, as gntdev requires.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd,
            index as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        let e = std::io::Error::last_os_error();
        unmap(fd, std::ptr::null_mut(), index, refs.len());
        return Err(format!("mmap of {} grants of d{domid}: {e}", refs.len()));
    }
    Ok((p, index))
}

fn unmap(fd: i32, p: *mut libc::c_void, index: u64, count: usize) {
    if !p.is_null() {
        // SAFETY: `p` is a live mapping of `count` pages returned by `map`.
        unsafe { libc::munmap(p, count * PAGE) };
    }
    let mut u = Unmap {
        index,
        count: count as u32,
        pad: 0,
    };
    // SAFETY: `u` is a valid ioctl_gntdev_unmap_grant_ref.
    unsafe { libc::ioctl(fd, IOCTL_GNTDEV_UNMAP_GRANT_REF, &mut u as *mut Unmap) };
}

/// Microseconds per (map, unmap) call with `batch` refs per call, from the median round
/// (as our mapper's `bench`: a round that another domain preempted does not move it).
fn bench(
    fd: i32,
    domid: u32,
    refs: &[u32],
    batch: usize,
    rounds: u32,
) -> Result<(u64, u64), String> {
    let calls = refs.len().div_ceil(batch).max(1) as u128;
    let (mut map_ns, mut unmap_ns) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let (mut m, mut u) = (0u128, 0u128);
        for chunk in refs.chunks(batch) {
            let t0 = Instant::now();
            let (p, index) = map(fd, domid, chunk)?;
            let t1 = Instant::now();
            unmap(fd, p, index, chunk.len());
            m += (t1 - t0).as_nanos();
            u += t1.elapsed().as_nanos();
        }
        map_ns.push(m);
        unmap_ns.push(u);
    }
    let median = |mut v: Vec<u128>| {
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or(0)
    };
    Ok((
        (median(map_ns) / calls / 1000) as u64,
        (median(unmap_ns) / calls / 1000) as u64,
    ))
}

fn run(domid: u32, refs: &[u32], rounds: u32) -> Result<String, String> {
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/xen/gntdev")
        .map_err(|e| format!("/dev/xen/gntdev: {e}"))?;
    let fd = dev.as_raw_fd();
    // The contents once, for the checksum.
    let (p, index) = map(fd, domid, refs)?;
    // SAFETY: `p` maps `refs.len()` readable pages until the unmap below.
    let bytes = unsafe { std::slice::from_raw_parts(p as *const u8, refs.len() * PAGE) };
    let sum = checksum(bytes.chunks(PAGE));
    unmap(fd, p, index, refs.len());
    let (m64, u64_) = bench(fd, domid, refs, 64, rounds)?;
    let (m1, u1) = bench(fd, domid, refs, 1, rounds)?;
    Ok(format!(
        "pages={} rounds={rounds} batch64_map_us={m64} batch64_unmap_us={u64_} batch1_map_us={m1} batch1_unmap_us={u1} checksum={sum:016x}",
        refs.len()
    ))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = match &args[..] {
        [d, r, n] => d
            .parse::<u32>()
            .ok()
            .zip(parse_refs(r.as_bytes()).ok())
            .zip(n.parse::<u32>().ok().filter(|&n| n > 0)),
        _ => None,
    };
    let Some(((domid, refs), rounds)) = parsed else {
        eprintln!("usage: gntdev-bench DOMID \"REF REF ...\" ROUNDS");
        return ExitCode::from(2);
    };
    match run(domid, &refs, rounds) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gntdev-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
