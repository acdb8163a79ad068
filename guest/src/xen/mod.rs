//! Logic of the Xen drivers (host-testable; hypercalls come in through traits).

pub mod balloon;
pub mod clock;
pub mod console;
pub mod control;
pub mod grant;
pub mod hotplug;
pub mod xenstore;
