//! dom0's door to Xen for the harness's own tools (`gfn-probe`, `xen-dominfo`):
//! `/dev/xen/privcmd` and its `IOCTL_PRIVCMD_HYPERCALL`, as libxencall uses them.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;

/// `_IOC(_IOC_NONE, 'P', 0, sizeof(struct privcmd_hypercall))` (48 bytes).
const IOCTL_PRIVCMD_HYPERCALL: libc::c_ulong = (48 << 16) | (b'P' as libc::c_ulong) << 8;

/// `struct privcmd_hypercall`.
#[repr(C)]
struct Hypercall {
    op: u64,
    arg: [u64; 5],
}
const _: () = assert!(std::mem::size_of::<Hypercall>() == 48);

/// `/dev/xen/privcmd`, open for hypercalls and foreign mappings; `Err` names the device.
pub fn open() -> Result<File, String> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/xen/privcmd")
        .map_err(|e| format!("/dev/xen/privcmd: {e}"))
}

/// Hypercall `op` with `args` (pointers as addresses) through privcmd: Xen's return
/// value, or the errno it returned.
///
/// # Safety
/// Every pointer in `args` must be valid for what Xen reads and writes through it for
/// this `op`, and stay so for the call (in a PV dom0, memory of this process that is
/// mapped: stack or heap of the caller).
pub unsafe fn hypercall(f: &File, op: u64, args: [u64; 5]) -> std::io::Result<i64> {
    let mut h = Hypercall { op, arg: args };
    // SAFETY: a valid privcmd_hypercall; the arguments are the caller's contract.
    let r = unsafe {
        libc::ioctl(
            f.as_raw_fd(),
            IOCTL_PRIVCMD_HYPERCALL,
            &mut h as *mut Hypercall,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r as i64)
    }
}
