//! The kernel's `log` backend: port 0xE9 from the first instruction (Xen prints it as
//! `(dN) ...`), and the PV console ring once it is up (`xl console`, xenconsoled's log).

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, Ordering};

use guest::xen::console::ConsoleRing;
use xen_bindings::abi::console::XenconsInterface;
use xen_bindings::traits::{Clock, EventChannels, Port, Sched};

use crate::hv::{self, CONSOLE_DROPPED, XEN};

struct Console {
    ring: ConsoleRing,
    port: Port,
}

static CONSOLE: spin::Mutex<Option<Console>> = spin::Mutex::new(None);

/// Until ready, console output goes into the ring without notifying xenconsoled (each
/// notification wakes it in dom0, which takes the one CPU from a booting guest): one
/// notification at ready, or whenever the ring is full. A panic releases it.
static HOLD_NOTIFY: AtomicBool = AtomicBool::new(true);

/// Notify xenconsoled from now on, and once now for what the ring holds.
pub fn release_console_notifications() {
    // Relaxed: only vCPU 0 writes the console before ready; a later writer on another
    // vCPU that still sees `true` only skips a notification that this one makes anyway.
    HOLD_NOTIFY.store(false, Ordering::Relaxed);
    if let (Some(c), Some(xen)) = (CONSOLE.lock().as_ref(), XEN.get()) {
        // A failed notify only delays output until the next one; nothing to recover.
        let _ = xen.notify(c.port);
    }
}

/// Whether Info and Debug lines still go to port 0xE9. Until the event loop starts
/// everything does (the boot, `ready` for the harness's Xen-side stamps); from then on only
/// warnings and errors, unless `debugcon=all`: Xen emulates each line's `rep outsb` and
/// prints it on its serial console synchronously, which this vCPU pays — 0.5-1.5 ms per
/// line under TCG, measured inside balloon and hot-add steps. The PV console ring
/// (xenconsoled, `xl console`) gets every line either way.
static DEBUGCON_ALL: AtomicBool = AtomicBool::new(true);

/// From now on Info/Debug lines go to the PV console only, unless `all` (see
/// [`DEBUGCON_ALL`]). Without a console ring nothing changes: port 0xE9 is then the only
/// sink.
pub fn debugcon_running(all: bool) {
    if !all && CONSOLE.lock().is_some() {
        log::info!(
            "log: info lines now go to the PV console only (warnings and errors also to port 0xE9; debugcon=all for every line)"
        );
        // Relaxed: a filter; a line on another vCPU that still sees `true` just goes
        // to both sinks.
        DEBUGCON_ALL.store(false, Ordering::Relaxed);
    }
}

/// Lines logged before the console ring is up, replayed into it when it attaches so that
/// `xl console` and xenconsoled's log show the whole boot. Older bytes beyond the buffer
/// are dropped (counted in [`CONSOLE_DROPPED`]).
struct EarlyLog {
    buf: [u8; 8192],
    len: usize,
}
static EARLY: spin::Mutex<EarlyLog> = spin::Mutex::new(EarlyLog {
    buf: [0; 8192],
    len: 0,
});

struct KernelLog;
static LOGGER: KernelLog = KernelLog;

pub fn init(level: log::LevelFilter) {
    // set_logger fails only if called twice; the second call just keeps the first.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

/// Switches on the PV console ring (HVM_PARAM_CONSOLE_PFN / _EVTCHN).
///
/// # Safety
/// `iface` must be the domain's console ring page, identity-mapped.
pub unsafe fn attach_console(iface: *mut XenconsInterface, port: Port) {
    // SAFETY: forwarded from the caller; we become the only producer.
    let ring = unsafe { ConsoleRing::new(iface) };
    let mut c = Console { ring, port };
    let early = EARLY.lock();
    console_write(&mut c, &early.buf[..early.len]);
    *CONSOLE.lock() = Some(c);
}

/// After resuming in a new domain: the console ring is the same page, zeroed (so its
/// indices start again at 0, which the ring reads from the page), with a new event
/// channel. Nothing is replayed: what was written before the save was already read.
pub fn console_resumed(port: Port) {
    if let Some(c) = CONSOLE.lock().as_mut() {
        c.port = port;
    }
}

/// All of `bytes` to port 0xE9 with one `rep outsb`: Xen emulates the string
/// instruction in one exit (its I/O intercept loops over the repetitions), where an
/// `out` per byte costs an exit per byte — measured under TCG: ~1.5 ms per 70-byte line,
/// a third of the boot before ready (scripts/bench, bench-boot).
fn debugcon_write(bytes: &[u8]) {
    // SAFETY: `rep outsb` reads `bytes.len()` bytes from `bytes.as_ptr()` (a live slice)
    // and writes them to port 0xE9, Xen's debug console: no memory is written. The
    // direction flag is clear, as the Rust ABI guarantees at function boundaries, so it
    // walks up through the slice.
    unsafe {
        core::arch::asm!(
            "rep outsb",
            in("dx") 0xe9u16,
            inout("rsi") bytes.as_ptr() => _,
            inout("rcx") bytes.len() => _,
            options(nostack, preserves_flags, readonly)
        )
    }
}

/// Writes raw bytes to every sink (used for the lines the harness parses).
pub fn write_raw(bytes: &[u8]) {
    write_to(bytes, true);
}

fn write_to(bytes: &[u8], debugcon: bool) {
    if debugcon {
        debugcon_write(bytes);
    }
    // try_lock: a panic inside a console write must still reach port 0xE9, not deadlock.
    if let Some(mut guard) = CONSOLE.try_lock() {
        match guard.as_mut() {
            Some(c) => console_write(c, bytes),
            None => {
                if let Some(mut e) = EARLY.try_lock() {
                    let n = bytes.len().min(e.buf.len() - e.len);
                    let at = e.len;
                    e.buf[at..at + n].copy_from_slice(&bytes[..n]);
                    e.len += n;
                    // Relaxed: a statistic.
                    CONSOLE_DROPPED.fetch_add((bytes.len() - n) as u32, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Puts all of `bytes` into the ring, waiting (bounded) for xenconsoled to make room.
fn console_write(c: &mut Console, mut bytes: &[u8]) {
    let Some(xen) = XEN.get() else { return };
    let deadline = xen.now_ns() + 200_000_000;
    while !bytes.is_empty() {
        let n = c.ring.write(bytes);
        bytes = &bytes[n..];
        // Relaxed: see `HOLD_NOTIFY`.
        if bytes.is_empty() && HOLD_NOTIFY.load(Ordering::Relaxed) {
            break;
        }
        // A failed notify only delays output until the next one; nothing to recover.
        let _ = xen.notify(c.port);
        if bytes.is_empty() {
            break;
        }
        let now = xen.now_ns();
        if now >= deadline {
            // Relaxed: a statistic.
            CONSOLE_DROPPED.fetch_add(bytes.len() as u32, Ordering::Relaxed);
            return;
        }
        // xenconsoled notifies the port when it has consumed output.
        let _ = xen.poll(&[c.port], now + 10_000_000);
        xen.take_pending(c.port);
    }
}

/// Formats into a fixed buffer (no allocation: logging must work before and without the
/// heap); overlong lines are cut.
struct LineBuf {
    buf: [u8; 512],
    len: usize,
}

impl Write for LineBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.buf.len() - 1 - self.len; // keep one byte for '\n'
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

impl log::Log for KernelLog {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let ns = hv::uptime_ns();
        let mut line = LineBuf {
            buf: [0; 512],
            len: 0,
        };
        let _ = write!(
            line,
            "[{:5}.{:06}] {:<5} {}",
            ns / 1_000_000_000,
            (ns / 1000) % 1_000_000,
            r.level(),
            r.args()
        );
        line.buf[line.len] = b'\n';
        // Relaxed: see `DEBUGCON_ALL`.
        let debugcon = r.level() <= log::Level::Warn || DEBUGCON_ALL.load(Ordering::Relaxed);
        write_to(&line.buf[..line.len + 1], debugcon);
    }

    fn flush(&self) {}
}

/// A panic's lines must reach the console at once: stop holding notifications back (the
/// panic's own writes notify; no lock is taken here).
pub fn release_notifications_on_panic() {
    // Relaxed: see `HOLD_NOTIFY`.
    HOLD_NOTIFY.store(false, Ordering::Relaxed);
    // Relaxed: see `DEBUGCON_ALL`. Whatever a panic logs reaches Xen's console too.
    DEBUGCON_ALL.store(true, Ordering::Relaxed);
}
