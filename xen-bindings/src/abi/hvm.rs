//! hvm/hvm_op.h and hvm/params.h: HVM parameters.

use super::DomId;
use crate::assert_layout;

pub const HVMOP_SET_PARAM: u32 = 0;
pub const HVMOP_GET_PARAM: u32 = 1;
/// `HVMOP_set_evtchn_upcall_vector`: deliver a vCPU's event upcall as a LAPIC vector.
pub const HVMOP_SET_EVTCHN_UPCALL_VECTOR: u32 = 23;

/// `struct xen_hvm_evtchn_upcall_vector`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct XenHvmEvtchnUpcallVector {
    pub vcpu: u32,
    /// ≥ 0x10.
    pub vector: u8,
}
assert_layout!(XenHvmEvtchnUpcallVector, size = 8, vcpu = 0, vector = 4);

/// `struct xen_hvm_param`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct XenHvmParam {
    pub domid: DomId,
    pub index: u32,
    pub value: u64,
}
assert_layout!(XenHvmParam, size = 16, domid = 0, index = 4, value = 8);

/// `HVM_PARAM_*` indices.
pub mod param {
    pub const CALLBACK_IRQ: u32 = 0;
    pub const STORE_PFN: u32 = 1;
    pub const STORE_EVTCHN: u32 = 2;
    pub const CONSOLE_PFN: u32 = 17;
    pub const CONSOLE_EVTCHN: u32 = 18;
}
