//! The balloon driver's logic: target parsing, policy, backoff.

pub mod backoff;
pub mod target;
