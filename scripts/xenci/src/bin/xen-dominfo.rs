//! `xen-dominfo DOMID` — Xen's exact page counts and state of a domain, from dom0 with one
//! `XEN_DOMCTL_getdomaininfo` through `/dev/xen/privcmd`:
//! `tot_pages=N max_pages=M flags=0x.. cpu_ns=T`.
//!
//! `xen-dominfo DOMID --wait-kib KIB [--within KIB] [--timeout SECS] [--every-ms MS]`
//! polls until `tot_pages` is within `--within` (default 1024) KiB of `KIB`, printing
//! thinned `sample t=<uptime cs> mib=.. tot_pages=..` lines and then
//! `reached t=<uptime cs> tot_pages=.. max_pages=..`.
//!
//! Exit status: 0 done (reached), 1 timed out, 2 usage or tool error (no privcmd, Xen
//! refused the call), 3 the domain crashed, is dying or is gone. The pure part (layout,
//! decisions) is `xenci::dominfo`, unit-tested on the host.

use std::fs::File;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use xenci::dominfo::{format_info, DomInfo, Domctl, Step, Wait, HYPERVISOR_DOMCTL};
use xenci::privcmd;

const USAGE: &str =
    "usage: xen-dominfo DOMID [--wait-kib KIB [--within KIB] [--timeout SECS] [--every-ms MS]]";

/// `Ok(None)`: Xen has no such domain (ESRCH, or 4.17's "next domain up" answer).
fn getdomaininfo(f: &File, domid: u16) -> Result<Option<DomInfo>, String> {
    let mut d = Domctl::getdomaininfo(domid);
    let args = [&mut d as *mut Domctl as u64, 0, 0, 0, 0];
    // SAFETY: the one pointer argument (`d`, a whole xen_domctl on this stack frame, so
    // mapped in a PV dom0) outlives the call.
    if let Err(e) = unsafe { privcmd::hypercall(f, HYPERVISOR_DOMCTL, args) } {
        return match e.raw_os_error() {
            Some(libc::ESRCH) => Ok(None),
            Some(libc::EACCES) => Err(format!(
                "XEN_DOMCTL_getdomaininfo: {e} (this tool speaks domctl interface {:#x}, Xen 4.16/4.17's)",
                d.interface_version
            )),
            _ => Err(format!("XEN_DOMCTL_getdomaininfo: {e}")),
        };
    }
    let i = DomInfo::from_union(&d.u);
    Ok((i.domid == domid).then_some(i))
}

/// dom0's uptime in centiseconds, the clock of the harness's `now_cs` (/proc/uptime is
/// CLOCK_BOOTTIME).
fn uptime_cs() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the one timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 100 + ts.tv_nsec as u64 / 10_000_000
}

struct Args {
    domid: u16,
    wait_kib: Option<u64>,
    within_kib: u64,
    timeout: f64,
    every_ms: u64,
}

fn parse_args() -> Result<Args, lexopt::Error> {
    use lexopt::prelude::*;
    let mut a = Args {
        domid: 0,
        wait_kib: None,
        within_kib: 1024,
        timeout: 30.0,
        every_ms: 10,
    };
    let mut domid = None;
    let mut p = lexopt::Parser::from_env();
    while let Some(arg) = p.next()? {
        match arg {
            Long("wait-kib") => a.wait_kib = Some(p.value()?.parse()?),
            Long("within") => a.within_kib = p.value()?.parse()?,
            Long("timeout") => a.timeout = p.value()?.parse()?,
            Long("every-ms") => a.every_ms = p.value()?.parse()?,
            Value(v) if domid.is_none() => domid = Some(v.parse::<u16>()?),
            _ => return Err(arg.unexpected()),
        }
    }
    a.domid = domid.ok_or("no DOMID")?;
    if !(a.timeout.is_finite() && a.timeout >= 0.0) || a.every_ms == 0 {
        return Err("--timeout must be >= 0 and --every-ms > 0".into());
    }
    Ok(a)
}

fn main() -> ExitCode {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("xen-dominfo: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let f = match privcmd::open() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("xen-dominfo: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(target) = a.wait_kib else {
        return match getdomaininfo(&f, a.domid) {
            Ok(Some(i)) => {
                println!("{}", format_info(&i));
                ExitCode::SUCCESS
            }
            Ok(None) => {
                eprintln!("xen-dominfo: no domain {}", a.domid);
                ExitCode::from(3)
            }
            Err(e) => {
                eprintln!("xen-dominfo: {e}");
                ExitCode::from(2)
            }
        };
    };
    let start = Instant::now();
    let deadline = uptime_cs() + (a.timeout * 100.0) as u64;
    // Samples at most every 5 cs: the pictures need the shape, not every poll.
    let mut w = Wait::new(target, a.within_kib, deadline, 5);
    let every = Duration::from_millis(a.every_ms);
    let mut next = start;
    loop {
        let info = match getdomaininfo(&f, a.domid) {
            Ok(i) => i,
            Err(e) => {
                eprintln!("xen-dominfo: {e}");
                return ExitCode::from(2);
            }
        };
        match w.step(uptime_cs(), info.as_ref()) {
            Step::Poll(s) => {
                if let Some(s) = s {
                    println!("{s}");
                }
            }
            Step::Reached(s) => {
                println!("{s}");
                return ExitCode::SUCCESS;
            }
            Step::TimedOut(s) => {
                println!("{s}");
                return ExitCode::from(1);
            }
            Step::Dead(s) => {
                println!("{s}");
                return ExitCode::from(3);
            }
        }
        // A fixed cadence, not "sleep after the poll": the poll's own time is not added.
        next += every;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}
