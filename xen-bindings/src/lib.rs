//! Xen public ABI and hypercall interface for an x86_64 PVH guest.
//!
//! * [`abi`]: `#[repr(C)]` mirrors of the Xen public headers a PVH guest needs, each with
//!   compile-time size/offset asserts. Numbers and layouts that `xen-sys` gets right are
//!   re-exported from it; the rest is defined here.
//! * [`hypercall`]: the x86_64 hypercall ABI (rdi, rsi, rdx, r10, r8; result in rax) through
//!   the hypercall page, and typed wrappers.
//! * [`traits`]: the small interfaces the guest's logic is written against, so that the
//!   logic runs on the host against [`sim`] (feature `sim`) and in the kernel against Xen.
//!
//! The crate is `no_std` in every build, `sim` included (it needs only `alloc`): the kernel
//! binary shares its dependency graph with the host tests, so a `std` here would reach the
//! kernel through feature unification.
#![cfg_attr(not(test), no_std)]

#[cfg(feature = "sim")]
extern crate alloc;

pub mod abi;
pub mod error;
pub mod hypercall;
pub mod traits;

#[cfg(feature = "sim")]
pub mod sim;

pub use error::Errno;
