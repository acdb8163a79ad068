//! io/console.h: the PV console ring.

use crate::assert_layout;

pub const XENCONS_IN_SIZE: usize = 1024;
pub const XENCONS_OUT_SIZE: usize = 2048;

/// `struct xencons_interface`. Indices are free-running; mask with the ring size.
#[repr(C)]
pub struct XenconsInterface {
    pub in_: [u8; XENCONS_IN_SIZE],
    pub out: [u8; XENCONS_OUT_SIZE],
    pub in_cons: u32,
    pub in_prod: u32,
    pub out_cons: u32,
    pub out_prod: u32,
}
assert_layout!(
    XenconsInterface,
    size = 3088,
    in_ = 0,
    out = 1024,
    in_cons = 3072,
    in_prod = 3076,
    out_cons = 3080,
    out_prod = 3084
);
