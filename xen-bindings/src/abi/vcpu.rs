//! vcpu.h and hvm/hvm_vcpu.h: starting, stopping and timing vCPUs (`HYPERVISOR_vcpu_op`).
//! `xen-sys` 0.0.0-pre2 has none of these; layouts from Xen 4.17's headers, pinned here.

use crate::assert_layout;

/// `VCPUOP_initialise`: set a vCPU's first context (HVM: a [`VcpuHvmContext`]).
pub const VCPUOP_INITIALISE: u32 = 0;
/// `VCPUOP_up`: run an initialised vCPU (again, after `VCPUOP_down`).
pub const VCPUOP_UP: u32 = 1;
/// `VCPUOP_down`: stop a vCPU; on itself it returns only after a later `VCPUOP_up`.
pub const VCPUOP_DOWN: u32 = 2;
/// `VCPUOP_is_up`: 1 if running, 0 if down, `-ENOENT` past `max_vcpus`.
pub const VCPUOP_IS_UP: u32 = 3;
/// `VCPUOP_get_runstate_info`: a [`VcpuRunstateInfo`] of any vCPU of the domain.
pub const VCPUOP_GET_RUNSTATE_INFO: u32 = 4;
/// `VCPUOP_register_runstate_memory_area`: Xen copies the vCPU's [`VcpuRunstateInfo`]
/// to a guest *virtual* address at every context switch of that vCPU (and once at
/// registration). Not kept across save/restore or migration.
pub const VCPUOP_REGISTER_RUNSTATE_MEMORY_AREA: u32 = 5;
/// `VCPUOP_set_singleshot_timer` (calling vCPU only): `VIRQ_TIMER` at an absolute time.
pub const VCPUOP_SET_SINGLESHOT_TIMER: u32 = 8;
/// `VCPUOP_stop_singleshot_timer` (calling vCPU only).
pub const VCPUOP_STOP_SINGLESHOT_TIMER: u32 = 9;

/// `VCPUOP_register_vcpu_info`: move a vCPU's `vcpu_info` out of shared_info into a
/// guest frame (once per vCPU per domain; by the vCPU itself or while it is down).
pub const VCPUOP_REGISTER_VCPU_INFO: u32 = 10;

/// `VCPU_HVM_MODE_64B`: start in long mode with the registers of [`VcpuHvmX86_64`].
pub const VCPU_HVM_MODE_64B: u32 = 1;

/// `struct vcpu_hvm_x86_64`. Xen sets flat CS/DS/SS and TR itself; GDTR, IDTR, FS and GS
/// are left for the vCPU to load.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VcpuHvmX86_64 {
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rbx: u64,
    pub rsp: u64,
    pub rbp: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rip: u64,
    pub rflags: u64,
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
}
assert_layout!(
    VcpuHvmX86_64,
    size = 112,
    rsp = 32,
    rdi = 56,
    rip = 64,
    efer = 104
);

/// `struct vcpu_hvm_context`; the union with the 32-bit registers is 120 bytes, so the
/// 64-bit registers are followed by 8 bytes of padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VcpuHvmContext {
    pub mode: u32,
    pub pad: u32,
    pub x86_64: VcpuHvmX86_64,
    pub union_tail: u64,
}
assert_layout!(VcpuHvmContext, size = 128, mode = 0, x86_64 = 8);

/// `struct vcpu_set_singleshot_timer`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VcpuSetSingleshotTimer {
    /// Xen system time (ns) at which to raise `VIRQ_TIMER`; in the past: at once.
    pub timeout_abs_ns: u64,
    /// `VCPU_SSHOTTMR_future` (fail if in the past) or 0.
    pub flags: u32,
}
assert_layout!(
    VcpuSetSingleshotTimer,
    size = 16,
    timeout_abs_ns = 0,
    flags = 8
);

/// `struct vcpu_register_vcpu_info`: the `vcpu_info` at `offset` in guest frame `mfn`
/// (a gfn for HVM/PVH); it must not cross the frame's end.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VcpuRegisterVcpuInfo {
    pub mfn: u64,
    pub offset: u32,
    pub rsvd: u32,
}
assert_layout!(
    VcpuRegisterVcpuInfo,
    size = 16,
    mfn = 0,
    offset = 8,
    rsvd = 12
);

/// `RUNSTATE_running`: index into [`VcpuRunstateInfo::time`]: on a physical CPU.
pub const RUNSTATE_RUNNING: usize = 0;
/// `RUNSTATE_runnable`: wants a physical CPU, waiting for one (steal time).
pub const RUNSTATE_RUNNABLE: usize = 1;
/// `RUNSTATE_blocked`: waiting for an event (halted, or in `SCHEDOP_block`/`poll`).
pub const RUNSTATE_BLOCKED: usize = 2;
/// `RUNSTATE_offline`: down, or paused by the toolstack.
pub const RUNSTATE_OFFLINE: usize = 3;

/// `struct vcpu_runstate_info`: nanoseconds of Xen system time the vCPU has spent in
/// each runstate since it was created, and the current one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VcpuRunstateInfo {
    pub state: i32,
    pub state_entry_time: u64,
    pub time: [u64; 4],
}
assert_layout!(
    VcpuRunstateInfo,
    size = 48,
    state = 0,
    state_entry_time = 8,
    time = 16
);

/// `struct vcpu_register_runstate_memory_area`: a union of a guest handle and a pointer,
/// both the 64-bit virtual address of a [`VcpuRunstateInfo`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VcpuRegisterRunstateMemoryArea {
    pub addr: u64,
}
assert_layout!(VcpuRegisterRunstateMemoryArea, size = 8, addr = 0);

/// Bit 63 of `state_entry_time`: Xen is rewriting the area (only with
/// `VMASST_TYPE_runstate_update_flag`; readers retry while it is set).
pub const XEN_RUNSTATE_UPDATE: u64 = 1 << 63;
