//! The guest kernel's host-testable library: the memory model and the logic of the Xen
//! drivers. Nothing here executes a privileged instruction or a hypercall: those reach it
//! through the traits of `xen_bindings::traits`.
//!
//! ```text
//! guest/src/
//!   lib.rs, cmdline.rs, identity_map.rs, mm/, xen/   this library: pure logic, `cargo test`
//!   kernel/                                          the kernel binary (kernel/main.rs):
//!                                                    asm, hypercalls, the event loop
//! ```
//!
//! - [`mm`]: the sparse memmap, page states, frame allocator, hot-add/remove, walkers.
//! - [`xen`]: the drivers' logic — xenstore client, balloon, hotplug, grants, console.
//! - [`cmdline`]: the kernel command line; [`identity_map`]: the 2 MiB identity page-table
//!   walk, over a table store the kernel (or a test) provides.
//!
//! Nothing in this library names anything in `kernel/`; the kernel implements the traits
//! (`kernel/hv.rs` is the real Xen) and calls in.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod cmdline;
pub mod identity_map;
pub mod mm;
pub mod xen;
