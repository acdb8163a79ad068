//! `#[repr(C)]` mirrors of the Xen public headers a PVH guest uses.
//!
//! Every struct carries compile-time size and offset asserts against the C layout of
//! Xen 4.17's headers (x86_64). Where `xen-sys` already has a type with the right layout it
//! is re-exported and the asserts pin that layout, so a wrong `xen-sys` fails the build.

pub mod console;
pub mod event_channel;
pub mod grant_table;
pub mod hvm;
pub mod memory;
pub mod sched;
pub mod shared_info;
pub mod start_info;
pub mod vcpu;
pub mod xs_wire;

/// Hypercall numbers (xen.h), from `xen-sys`.
pub mod hypercall_nr {
    pub use xen_sys::{
        __HYPERVISOR_event_channel_op as EVENT_CHANNEL_OP,
        __HYPERVISOR_grant_table_op as GRANT_TABLE_OP, __HYPERVISOR_hvm_op as HVM_OP,
        __HYPERVISOR_memory_op as MEMORY_OP, __HYPERVISOR_sched_op as SCHED_OP,
        __HYPERVISOR_vcpu_op as VCPU_OP, __HYPERVISOR_xen_version as XEN_VERSION,
    };
}

/// `domid_t`.
pub type DomId = u16;
/// `DOMID_SELF`: the calling domain.
pub const DOMID_SELF: DomId = 0x7ff0;

/// Asserts a `#[repr(C)]` type's size and field offsets at compile time.
#[macro_export]
macro_rules! assert_layout {
    ($t:ty, size = $size:expr $(, $field:ident = $off:expr)* $(,)?) => {
        const _: () = assert!(core::mem::size_of::<$t>() == $size);
        $(const _: () = assert!(core::mem::offset_of!($t, $field) == $off);)*
    };
}
