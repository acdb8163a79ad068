//! xen.h / arch-x86/xen.h: shared_info, vcpu_info, vcpu_time_info (from `xen-sys`).
//!
//! xen-sys 0.0.0-pre2 predates `vcpu_time_info.flags` (byte 29, inside its `pad1`); the
//! layout is the same, and [`VCPU_TIME_FLAGS_OFFSET`] names the byte.

use crate::assert_layout;

pub use xen_sys::{
    shared_info as SharedInfo, vcpu_info as VcpuInfo, vcpu_time_info as VcpuTimeInfo,
};

/// Offset of `vcpu_time_info.flags` (`XEN_PVCLOCK_TSC_STABLE_BIT` etc.).
pub const VCPU_TIME_FLAGS_OFFSET: usize = 29;
/// vCPUs with a `vcpu_info` slot in shared_info (`XEN_LEGACY_MAX_VCPUS`).
pub const LEGACY_MAX_VCPUS: usize = 32;
/// Event channel ports of the 2-level ABI on x86_64 (64 words × 64 bits).
pub const NR_EVENT_CHANNELS_2L: u32 = 64 * 64;

assert_layout!(
    VcpuTimeInfo,
    size = 32,
    version = 0,
    tsc_timestamp = 8,
    system_time = 16,
    tsc_to_system_mul = 24,
    tsc_shift = 28
);
assert_layout!(
    VcpuInfo,
    size = 64,
    evtchn_upcall_pending = 0,
    evtchn_upcall_mask = 1,
    evtchn_pending_sel = 8,
    arch = 16,
    time = 32
);
assert_layout!(
    SharedInfo,
    size = 3136,
    vcpu_info = 0,
    evtchn_pending = 2048,
    evtchn_mask = 2560,
    wc_version = 3072,
    wc_sec = 3076,
    wc_nsec = 3080,
    wc_sec_hi = 3084,
    arch = 3088
);
