//! The guest kernel's host-testable library: the memory model and the logic of the Xen
//! drivers. Nothing here executes a privileged instruction or a hypercall: those reach it
//! through the traits of `xen_bindings::traits`.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod cmdline;
pub mod identity_map;
pub mod mm;
pub mod xen;
