//! After Xen is found: console, xenstore, ready, and the mode the command line asked for.

use guest::cmdline::Cmdline;
use xen_bindings::abi::hvm::param;
use xen_bindings::traits::{Sched, ShutdownReason};

use crate::boot::BootInfo;
use crate::hv::Xen;
use crate::klog;

pub fn run(xen: Xen, _info: &BootInfo, _cmdline: &Cmdline) -> ! {
    match (xen.hvm_param(param::CONSOLE_PFN), xen.hvm_param(param::CONSOLE_EVTCHN)) {
        (Ok(pfn), Ok(port)) if pfn != 0 => {
            // SAFETY: HVM_PARAM_CONSOLE_PFN names our console ring page, below 4 GiB and
            // thus identity-mapped by the boot tables.
            unsafe { klog::attach_console((pfn << 12) as *mut _, port as u32) };
            log::info!("console ring at pfn {pfn:#x}, event channel {port}");
        }
        (a, b) => log::warn!("no PV console ({a:?}, {b:?}): logging to port 0xE9 only"),
    }
    let _ = xen.shutdown(ShutdownReason::Poweroff);
    crate::arch::cpu::halt_forever()
}
