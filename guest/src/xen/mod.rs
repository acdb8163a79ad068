//! Logic of the Xen drivers (host-testable; hypercalls come in through traits).
//!
//! ```text
//!               kernel event loop (guest/src/kernel/run.rs)
//!     watch events │ timers            │ steps            │ ticks
//!        ┌─────────┴──────┐   ┌────────┴────────┐   ┌─────┴──────────┐
//!        │ xenstore       │   │ balloon ──────▶ │   │ grant          │
//!        │ (client, ring, │   │  NeedHotplug ─▶ │   │ (table, mapper,│
//!        │  watches)      │   │ hotplug         │   │  pair)         │
//!        └────────────────┘   └────────┬────────┘   └──────┬─────────┘
//!   control: parse control/shutdown    │ crate::mm (sections, pages, allocator)
//!   console: the PV console ring       ▼                   ▼
//!   clock:   Xen system time      xen_bindings::traits (MemoryReservation, GrantOps,
//!                                  EventChannels, Sched, Clock) = real Xen or the sim
//! ```
//!
//! Order in a running guest: xenstore comes up first (everything else publishes through
//! it); a `memory/target` watch event sets the balloon's target; balloon steps populate or
//! release frames and ask hotplug for sections when the target exceeds what the model
//! has; grant roles tick on their own watches and a half-second timer.

pub mod balloon;
pub mod clock;
pub mod console;
pub mod control;
pub mod evtchn;
pub mod grant;
pub mod hotplug;
pub mod xenstore;
