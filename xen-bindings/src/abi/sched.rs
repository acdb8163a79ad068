//! sched.h: shutdown and poll. Types from `xen-sys`, layouts pinned here.
//!
//! Note: `SCHEDOP_shutdown` takes a *pointer* to [`SchedShutdown`] (xen-sys's x86_64
//! `sched_op` wrapper wrongly passes the reason by value).

use crate::assert_layout;

pub use xen_sys::{
    sched_poll as SchedPoll, sched_shutdown as SchedShutdown, SCHEDOP_poll, SCHEDOP_shutdown,
    SCHEDOP_yield, SHUTDOWN_crash, SHUTDOWN_poweroff, SHUTDOWN_reboot,
};

assert_layout!(SchedShutdown, size = 4, reason = 0);
assert_layout!(SchedPoll, size = 24, ports = 0, nr_ports = 8, timeout = 16);
