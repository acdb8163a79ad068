//! Backoff after Xen refuses memory: 1 s doubling to 32 s, never spinning.
//!
//! Linux gives up after four tries until the target changes, and has shipped versions that
//! spun at 100 % CPU in this state. Here the driver keeps retrying at the capped interval
//! (a raised `xl mem-max` is not announced to the guest, so it must look again), and a new
//! target resets the delay so it is acted on at once.

pub const INITIAL_NS: u64 = 1_000_000_000;
pub const MAX_NS: u64 = 32_000_000_000;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the next try after a failure; 0 when not backing off.
    delay_ns: u64,
    /// Xen system time before which the driver must not try again.
    not_before_ns: u64,
    /// Failed tries since the last progress.
    pub failures: u32,
}

impl Backoff {
    /// Records a try that made no progress at `now`; returns when to try next.
    pub fn failed(&mut self, now_ns: u64) -> u64 {
        self.delay_ns = match self.delay_ns {
            0 => INITIAL_NS,
            d => (d * 2).min(MAX_NS),
        };
        self.failures += 1;
        self.not_before_ns = now_ns.saturating_add(self.delay_ns);
        self.not_before_ns
    }

    /// Progress (even partial) or a new target: back to full speed.
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    pub fn backing_off(&self) -> bool {
        self.delay_ns != 0
    }

    /// May the driver try at `now`?
    pub fn ready(&self, now_ns: u64) -> bool {
        now_ns >= self.not_before_ns
    }

    /// When the driver wants to run next, if it is waiting.
    pub fn deadline(&self) -> Option<u64> {
        self.backing_off().then_some(self.not_before_ns)
    }

    pub fn delay_ns(&self) -> u64 {
        self.delay_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_resets() {
        let mut b = Backoff::default();
        assert!(b.ready(0) && !b.backing_off());
        let delays: Vec<u64> = (0..8)
            .map(|_| {
                b.failed(0);
                b.delay_ns() / 1_000_000_000
            })
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 32, 32]);
        assert_eq!(b.failures, 8);
        assert!(!b.ready(31_999_999_999) && b.ready(32_000_000_000));
        b.reset();
        assert!(b.ready(0) && !b.backing_off() && b.deadline().is_none());
    }
}
