//! The balloon driver's logic: target parsing, policy, backoff.
//!
//! ```text
//!   xl mem-set ─▶ memory/target (KiB) ─▶ target::Target::parse (strict; floor, static-max)
//!                                              │
//!                                              ▼
//!   driver::Balloon::step(mm, xen, now) ── below target: XENMEM_populate_physmap
//!        │   │                               (Offline → Free, order 9 then 0)
//!        │   └──────────────────────────── above target: XENMEM_decrease_reservation
//!        │                                   (Free → Offline, whole subsections first)
//!        ├─ refused / short ─▶ backoff::Backoff (1 s doubling to 32 s, never spins)
//!        ├─ needs more than the model has ─▶ NeedHotplug (crate::xen::hotplug)
//!        └─ status ─▶ data/balloon/* ; accounting checked against Xen's tot_pages
//! ```
//!
//! It owns the list of ballooned-out extents; it talks to the memory model (page states)
//! and to Xen through `MemoryReservation`. Boot order: `adopt_boot_offline` (release the
//! populate-on-demand excess) before anything touches RAM, then `set_target` / `step`.
//!
//! - [`target`]: strict `memory/target` parsing, floor and maximum.
//! - [`backoff`]: 1 s doubling to 32 s after Xen refuses.
//! - [`driver`]: [`Balloon`] — boot populate-on-demand excess, stepping toward the
//!   target with order-9 and order-0 extents, status for `data/balloon/`, accounting.

pub mod backoff;
pub mod driver;
pub mod target;

pub use driver::{
    AccountingError, Balloon, BalloonConfig, BalloonState, BalloonStatus, Counters, ForgetError,
    StepOutcome, StepTiming, DEFAULT_FLOOR_KIB,
};
pub use target::{Target, TargetError};
