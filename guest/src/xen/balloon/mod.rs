//! The balloon driver's logic: target parsing, policy, backoff.
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
    StepOutcome, DEFAULT_FLOOR_KIB,
};
pub use target::{Target, TargetError};
