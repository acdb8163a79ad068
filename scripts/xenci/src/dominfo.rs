//! Xen's own page count of a domain, read from dom0 with one hypercall, and the wait on
//! it that the scenarios use (`target/release/xen-dominfo`).
//!
//! `xl list` answers in MiB and costs a whole process with libxl set-up, ~0.05–0.1 s of
//! the one emulated CPU under TCG; polling it every 0.1 s took about half of the CPU the
//! domain under test was being timed on. `XEN_DOMCTL_getdomaininfo` through privcmd gives
//! the exact `tot_pages`, `max_pages` and the domain's state flags for ~50 µs, so the wait
//! can poll every few milliseconds and still leave the guest its CPU. This module is the
//! pure half: the ABI layout and the wait's decisions. The binary does the ioctl.

/// `__HYPERVISOR_domctl`.
pub const HYPERVISOR_DOMCTL: u64 = 36;
/// `XEN_DOMCTL_getdomaininfo`.
pub const XEN_DOMCTL_GETDOMAININFO: u32 = 5;
/// `XEN_DOMCTL_INTERFACE_VERSION` of Xen 4.16/4.17 (the harness pins Debian 12's 4.17).
/// Xen refuses any other value with `EACCES`; the tool names both then.
pub const XEN_DOMCTL_INTERFACE_VERSION: u32 = 0x15;

/// `struct xen_domctl` as far as this tool uses it: the header and the union's 128 bytes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Domctl {
    pub cmd: u32,
    pub interface_version: u32,
    pub domain: u16,
    pub pad: [u16; 3],
    /// The union `u`; `struct xen_domctl_getdomaininfo` for this command.
    pub u: [u64; 16],
}
const _: () = assert!(std::mem::size_of::<Domctl>() == 144);
const _: () = assert!(std::mem::offset_of!(Domctl, domain) == 8);
const _: () = assert!(std::mem::offset_of!(Domctl, u) == 16);

impl Domctl {
    pub fn getdomaininfo(domid: u16) -> Self {
        Domctl {
            cmd: XEN_DOMCTL_GETDOMAININFO,
            interface_version: XEN_DOMCTL_INTERFACE_VERSION,
            domain: domid,
            pad: [0; 3],
            u: [0; 16],
        }
    }
}

// `struct xen_domctl_getdomaininfo` offsets (public/domctl.h): domain u16 @0, flags u32
// @4, tot_pages @8, max_pages @16, then outstanding, shr, paged, shared_info_frame and
// cpu_time (ns) @56.
const FLAGS_WORD: usize = 0;
const TOT_WORD: usize = 1;
const MAX_WORD: usize = 2;
const CPU_TIME_WORD: usize = 7;

/// `XEN_DOMINF_dying`.
pub const DOMINF_DYING: u32 = 1 << 0;
/// `XEN_DOMINF_shutdown`: the reason is in bits 16..24.
pub const DOMINF_SHUTDOWN: u32 = 1 << 2;
const DOMINF_SHUTDOWN_SHIFT: u32 = 16;
/// `SHUTDOWN_crash`.
pub const SHUTDOWN_CRASH: u32 = 3;

/// What getdomaininfo said about one domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DomInfo {
    pub domid: u16,
    pub flags: u32,
    pub tot_pages: u64,
    pub max_pages: u64,
    pub cpu_ns: u64,
}

impl DomInfo {
    /// Decodes the union of a completed getdomaininfo.
    pub fn from_union(u: &[u64; 16]) -> Self {
        DomInfo {
            domid: (u[FLAGS_WORD] & 0xffff) as u16,
            flags: (u[FLAGS_WORD] >> 32) as u32,
            tot_pages: u[TOT_WORD],
            max_pages: u[MAX_WORD],
            cpu_ns: u[CPU_TIME_WORD],
        }
    }

    /// The shutdown reason when the domain has shut down.
    pub fn shutdown_reason(&self) -> Option<u32> {
        (self.flags & DOMINF_SHUTDOWN != 0).then_some((self.flags >> DOMINF_SHUTDOWN_SHIFT) & 0xff)
    }

    /// Why a wait on this domain cannot succeed any more, if it cannot.
    pub fn dead(&self) -> Option<&'static str> {
        if self.flags & DOMINF_DYING != 0 {
            Some("dying")
        } else if self.shutdown_reason() == Some(SHUTDOWN_CRASH) {
            Some("crashed")
        } else {
            None
        }
    }
}

/// One line for `xen-dominfo DOMID`: `tot_pages max_pages flags cpu_ns`.
pub fn format_info(i: &DomInfo) -> String {
    format!(
        "tot_pages={} max_pages={} flags={:#x} cpu_ns={}",
        i.tot_pages, i.max_pages, i.flags, i.cpu_ns
    )
}

/// What the wait does after one poll.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Keep polling; print this sample line first, if any.
    Poll(Option<String>),
    /// `tot_pages` is within the tolerance of the target: print the line, exit 0.
    Reached(String),
    /// The domain crashed, is dying or is gone: print the line, exit 3.
    Dead(String),
    /// The deadline passed first: print the line, exit 1.
    TimedOut(String),
}

/// The wait for `tot_pages` within `within_kib` of `target_kib`, fed one poll at a time
/// (times in centiseconds of dom0's uptime, the harness's clock). Samples (for the
/// timeline pictures) are thinned to one per MiB change and at most one per
/// `sample_gap_cs`; the first and the last poll always give one.
#[derive(Clone, Debug)]
pub struct Wait {
    pub target_kib: u64,
    pub within_kib: u64,
    pub deadline_cs: u64,
    pub sample_gap_cs: u64,
    last_sample: Option<(u64, u64)>,
}

impl Wait {
    pub fn new(target_kib: u64, within_kib: u64, deadline_cs: u64, sample_gap_cs: u64) -> Self {
        Wait {
            target_kib,
            within_kib,
            deadline_cs,
            sample_gap_cs,
            last_sample: None,
        }
    }

    /// Is `tot_pages` within the tolerance? (The same measure `exact_near_target_mib`
    /// applies in dom0's lib.sh.)
    pub fn near(&self, tot_pages: u64) -> bool {
        (tot_pages * 4).abs_diff(self.target_kib) <= self.within_kib
    }

    /// A sample line if one is due: the first poll, then a new MiB at least
    /// `sample_gap_cs` after the last sample.
    fn sample(&mut self, now_cs: u64, tot_pages: u64) -> Option<String> {
        let mib = tot_pages / 256;
        let due = match self.last_sample {
            None => true,
            Some((t, m)) => m != mib && now_cs >= t + self.sample_gap_cs,
        };
        due.then(|| self.sample_now(now_cs, tot_pages))
    }

    fn sample_now(&mut self, now_cs: u64, tot_pages: u64) -> String {
        let mib = tot_pages / 256;
        self.last_sample = Some((now_cs, mib));
        format!("sample t={now_cs} mib={mib} tot_pages={tot_pages}")
    }

    /// The wait's last lines: a sample (the picture ends where the wait did), then `what`.
    fn last(&mut self, what: &str, now_cs: u64, i: &DomInfo) -> String {
        let s = self.sample_now(now_cs, i.tot_pages);
        format!(
            "{s}\n{what} t={now_cs} tot_pages={} max_pages={}",
            i.tot_pages, i.max_pages
        )
    }

    /// One poll's result: `Some(info)`, or `None` when Xen no longer has the domain.
    pub fn step(&mut self, now_cs: u64, info: Option<&DomInfo>) -> Step {
        let Some(i) = info else {
            return Step::Dead(format!("gone t={now_cs}"));
        };
        if let Some(why) = i.dead() {
            return Step::Dead(format!("{why} t={now_cs} tot_pages={}", i.tot_pages));
        }
        if self.near(i.tot_pages) {
            return Step::Reached(self.last("reached", now_cs, i));
        }
        if now_cs >= self.deadline_cs {
            return Step::TimedOut(self.last("timeout", now_cs, i));
        }
        Step::Poll(self.sample(now_cs, i.tot_pages))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(tot: u64, flags: u32) -> DomInfo {
        DomInfo {
            domid: 7,
            flags,
            tot_pages: tot,
            max_pages: 300_000,
            cpu_ns: 0,
        }
    }

    #[test]
    fn union_decodes_the_getdomaininfo_layout() {
        let mut u = [0u64; 16];
        u[0] = 7 | (0x0003_0004u64 << 32); // domid 7; shutdown, reason 3
        u[1] = 65_552;
        u[2] = 262_400;
        u[7] = 123_456_789;
        let i = DomInfo::from_union(&u);
        assert_eq!(i.domid, 7);
        assert_eq!(
            (i.tot_pages, i.max_pages, i.cpu_ns),
            (65_552, 262_400, 123_456_789)
        );
        assert_eq!(i.shutdown_reason(), Some(SHUTDOWN_CRASH));
        assert_eq!(i.dead(), Some("crashed"));
        assert_eq!(
            info(1, DOMINF_SHUTDOWN).dead(),
            None,
            "poweroff (reason 0) is not a crash"
        );
        assert_eq!(info(1, DOMINF_DYING).dead(), Some("dying"));
    }

    #[test]
    fn within_one_mib_either_side_is_reached() {
        let w = Wait::new(256 * 1024, 1024, 100, 5);
        assert!(w.near(65_536 + 256));
        assert!(w.near(65_536 - 256));
        assert!(!w.near(65_536 + 257));
        assert!(!w.near(65_536 - 257));
    }

    #[test]
    fn the_wait_samples_thinly_then_reaches() {
        let mut w = Wait::new(256 * 1024, 1024, 1_000, 5);
        // The first poll always samples.
        assert!(matches!(
            w.step(10, Some(&info(262_144, 0))),
            Step::Poll(Some(_))
        ));
        // Same MiB: no sample; a new MiB within the gap: none; after the gap: one.
        assert_eq!(w.step(11, Some(&info(262_100, 0))), Step::Poll(None));
        assert_eq!(w.step(12, Some(&info(200_000, 0))), Step::Poll(None));
        match w.step(16, Some(&info(150_000, 0))) {
            Step::Poll(Some(s)) => assert_eq!(s, "sample t=16 mib=585 tot_pages=150000"),
            s => panic!("{s:?}"),
        }
        match w.step(17, Some(&info(65_600, 0))) {
            Step::Reached(s) => {
                assert!(s.contains("sample t=17 mib=256"), "{s}");
                assert!(
                    s.ends_with("reached t=17 tot_pages=65600 max_pages=300000"),
                    "{s}"
                );
            }
            s => panic!("{s:?}"),
        }
    }

    #[test]
    fn a_crash_or_a_vanished_domain_ends_the_wait_before_the_deadline() {
        let mut w = Wait::new(1024, 1024, 1_000, 5);
        let crashed = info(5_000, DOMINF_SHUTDOWN | (SHUTDOWN_CRASH << 16));
        assert!(matches!(w.step(20, Some(&crashed)), Step::Dead(s) if s.starts_with("crashed")));
        assert!(matches!(w.step(20, None), Step::Dead(s) if s.starts_with("gone")));
        // Even a crashed domain that happens to sit at the target is not "reached".
        let at = info(256, DOMINF_SHUTDOWN | (SHUTDOWN_CRASH << 16));
        assert!(matches!(w.step(20, Some(&at)), Step::Dead(_)));
    }

    #[test]
    fn the_deadline_is_a_timeout_with_the_last_count() {
        let mut w = Wait::new(1024, 1024, 100, 5);
        assert!(matches!(w.step(99, Some(&info(5_000, 0))), Step::Poll(_)));
        match w.step(100, Some(&info(4_000, 0))) {
            Step::TimedOut(s) => assert!(
                s.ends_with("timeout t=100 tot_pages=4000 max_pages=300000"),
                "{s}"
            ),
            s => panic!("{s:?}"),
        }
    }
}
