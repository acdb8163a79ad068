//! Xen system time from `vcpu_time_info` (the pvclock protocol).
//!
//! `now = system_time + ((tsc - tsc_timestamp) << shift) * mul >> 32`, where a negative
//! shift is a right shift. Xen updates the record under a version seqlock: odd while it
//! writes; readers retry until they see the same even version before and after.

/// One consistent snapshot of a `vcpu_time_info`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimeInfo {
    pub tsc_timestamp: u64,
    pub system_time: u64,
    pub tsc_to_system_mul: u32,
    pub tsc_shift: i8,
}

impl TimeInfo {
    /// Xen system time (ns) at `tsc`.
    pub fn ns_at(&self, tsc: u64) -> u64 {
        let delta = tsc.wrapping_sub(self.tsc_timestamp);
        // A TSC read before the snapshot (another pCPU's TSC lagging): clamp, stay monotonic.
        if delta as i64 <= 0 {
            return self.system_time;
        }
        self.system_time.wrapping_add(self.delta_ns(delta))
    }

    /// Nanoseconds for `delta` TSC ticks at this record's rate (boot phase timing, where
    /// the ticks were read before the clock was set up).
    pub fn delta_ns(&self, mut delta: u64) -> u64 {
        if self.tsc_shift >= 0 {
            delta <<= self.tsc_shift as u32;
        } else {
            delta >>= (-(self.tsc_shift as i32)) as u32;
        }
        ((delta as u128 * self.tsc_to_system_mul as u128) >> 32) as u64
    }
}

/// Reads a snapshot with the seqlock protocol. `read_version` and `read_fields` read the
/// shared record; the caller supplies them so this logic is host-testable.
pub fn read_consistent(
    mut read_version: impl FnMut() -> u32,
    mut read_fields: impl FnMut() -> TimeInfo,
) -> TimeInfo {
    loop {
        let v1 = read_version();
        if v1 & 1 == 1 {
            core::hint::spin_loop();
            continue;
        }
        // Acquire: the field reads below must not move above the first version read.
        core::sync::atomic::fence(core::sync::atomic::Ordering::Acquire);
        let t = read_fields();
        // Acquire: the second version read must not move above the field reads.
        core::sync::atomic::fence(core::sync::atomic::Ordering::Acquire);
        if read_version() == v1 {
            return t;
        }
    }
}

/// One snapshot of a vCPU's registered runstate area, as [`running_ns`] reads it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunstateSnapshot {
    /// `state` (`RUNSTATE_*`).
    pub state: i32,
    /// `time[RUNSTATE_running]`: running time up to `state_entry_time`.
    pub running_ns: u64,
}

/// The calling vCPU's running time now, from its own registered runstate area, without a
/// hypercall. Xen rewrites the area only when it switches this vCPU in or out (4.17
/// `context_switch`), each time with a new `state_entry_time`, so a read between two
/// equal `state_entry_time`s without the update bit saw no switch, and `now` read inside
/// them is time this vCPU has been running since that entry: `running_ns + now - entry`,
/// what `VCPUOP_get_runstate_info` computes for the current vCPU. The closures read the
/// shared area and Xen system time; the caller supplies them so this is host-testable.
pub fn running_ns(
    mut read_entry: impl FnMut() -> u64,
    mut read_fields: impl FnMut() -> RunstateSnapshot,
    mut read_now: impl FnMut() -> u64,
) -> u64 {
    use xen_bindings::abi::vcpu::{RUNSTATE_RUNNING, XEN_RUNSTATE_UPDATE};
    loop {
        let e1 = read_entry();
        if e1 & XEN_RUNSTATE_UPDATE != 0 {
            core::hint::spin_loop();
            continue;
        }
        // Acquire: the field and clock reads must not move above the first entry read.
        core::sync::atomic::fence(core::sync::atomic::Ordering::Acquire);
        let f = read_fields();
        let now = read_now();
        // Acquire: the second entry read must not move above the field and clock reads.
        core::sync::atomic::fence(core::sync::atomic::Ordering::Acquire);
        if read_entry() != e1 {
            continue;
        }
        let since = if f.state == RUNSTATE_RUNNING as i32 {
            now.saturating_sub(e1)
        } else {
            0
        };
        return f.running_ns + since;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::cell::Cell;

    #[test]
    fn scales_tsc_deltas() {
        // 2 GHz TSC: mul = 2^31 with shift 0 gives 0.5 ns per tick.
        let t = TimeInfo {
            tsc_timestamp: 1000,
            system_time: 5_000,
            tsc_to_system_mul: 1 << 31,
            tsc_shift: 0,
        };
        assert_eq!(t.ns_at(1000), 5_000);
        assert_eq!(t.ns_at(3000), 6_000);
        // Negative shift halves the delta first.
        let t2 = TimeInfo { tsc_shift: -1, ..t };
        assert_eq!(t2.ns_at(3000), 5_500);
        let t3 = TimeInfo { tsc_shift: 1, ..t };
        assert_eq!(t3.ns_at(3000), 7_000);
        // A TSC behind the snapshot never goes back in time.
        assert_eq!(t.ns_at(10), 5_000);
    }

    #[test]
    fn delta_ns_is_the_difference_of_two_readings() {
        let t = TimeInfo {
            tsc_timestamp: 7,
            system_time: 123,
            tsc_to_system_mul: 0x9000_0000,
            tsc_shift: -2,
        };
        for (a, b) in [(100u64, 9_000u64), (7, 1 << 40)] {
            let d = t.ns_at(b) - t.ns_at(a);
            // A shifted-out tick and a truncation on each side: within 2 ns.
            assert!(t.delta_ns(b - a).abs_diff(d) <= 2, "{a} {b}");
        }
        assert_eq!(t.delta_ns(0), 0);
    }

    #[test]
    fn large_deltas_do_not_overflow() {
        let t = TimeInfo {
            tsc_timestamp: 0,
            system_time: 0,
            tsc_to_system_mul: u32::MAX,
            tsc_shift: 4,
        };
        let one_hour_at_3ghz = 3_000_000_000u64 * 3600;
        assert!(t.ns_at(one_hour_at_3ghz) > 0);
    }

    #[test]
    fn seqlock_retries_on_odd_or_changed_version() {
        let versions = [1u32, 2, 4, 4, 4];
        let i = Cell::new(0);
        let reads = Cell::new(0);
        let t = read_consistent(
            || {
                let v = versions[i.get()];
                i.set(i.get() + 1);
                v
            },
            || {
                reads.set(reads.get() + 1);
                TimeInfo {
                    system_time: reads.get(),
                    ..Default::default()
                }
            },
        );
        // 1 (odd, retry) -> 2..4 (changed, retry) -> 4..4 (consistent, 2nd field read).
        assert_eq!(t.system_time, 2);
    }

    #[test]
    fn running_time_extends_the_area_to_now_while_running() {
        let f = RunstateSnapshot {
            state: 0,
            running_ns: 7_000,
        };
        assert_eq!(running_ns(|| 1_000, || f, || 1_500), 7_500);
        // Not running (the area a switch-out left): no extrapolation.
        let blocked = RunstateSnapshot { state: 2, ..f };
        assert_eq!(running_ns(|| 1_000, || blocked, || 9_999), 7_000);
        // A clock a hair behind Xen's entry stamp never subtracts.
        assert_eq!(running_ns(|| 1_000, || f, || 999), 7_000);
    }

    #[test]
    fn a_switch_during_the_read_retries_with_the_new_area() {
        use xen_bindings::abi::vcpu::XEN_RUNSTATE_UPDATE;
        // Entry stamps seen: update bit set (retry), then 100 .. 400 (switched out and in
        // between: retry), then 400 .. 400.
        let entries = [100 | XEN_RUNSTATE_UPDATE, 100, 400, 400, 400];
        let i = Cell::new(0);
        let areas = [
            RunstateSnapshot {
                state: 0,
                running_ns: 50,
            },
            RunstateSnapshot {
                state: 0,
                running_ns: 80,
            },
        ];
        let j = Cell::new(0);
        let r = running_ns(
            || {
                let e = entries[i.get()];
                i.set(i.get() + 1);
                e
            },
            || {
                let a = areas[j.get()];
                j.set(j.get() + 1);
                a
            },
            || 450,
        );
        // The stale pair (50 ns up to entry 100, now 450) would claim 400 ns of running
        // that was the time switched out; the retried read gives 80 + 50.
        assert_eq!(r, 130);
        assert_eq!((i.get(), j.get()), (5, 2));
    }
}
