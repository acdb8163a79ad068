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
/// notification at ready, or whenever the ring is full. A panic releases it. Balloon
/// steps hold it again ([`hold_console_notifications`]).
static HOLD_NOTIFY: AtomicBool = AtomicBool::new(true);

/// Hold notifications again until [`release_console_notifications`], as before ready:
/// for a balloon step, whose log lines would each wake xenconsoled in dom0, which then
/// takes the one CPU in the middle of the step. The lines are in the ring at once;
/// xenconsoled collects them at the release (or when the ring fills).
pub fn hold_console_notifications() {
    // Relaxed: a writer on another vCPU that still sees `false` notifies once more, one
    // that later sees a stale `true` skips a notification the release makes anyway.
    HOLD_NOTIFY.store(true, Ordering::Relaxed);
}

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

/// Whether every log line also goes to port 0xE9. Normally only warnings, errors, panics,
/// raw harness lines and lines logged with target [`DEBUGCON`] (the first line and
/// `ready`, which the harness stamps with Xen's clock) do: Xen emulates each line's
/// `rep outsb` and prints it on its serial console synchronously, in this vCPU's time —
/// 0.5-1.5 ms per line under TCG, measured in the boot and inside balloon and hot-add
/// steps. Every line goes to the PV console ring (xenconsoled, `xl console`), and those
/// logged before it is up are held for it. Switched on by [`debugcon_all`]: `debugcon=all`,
/// no Xen, no PV console, or a panic — and then the held lines are written to 0xE9 first,
/// so nothing is missing from `xl dmesg` when the guest dies before its console is up.
static DEBUGCON_ALL: AtomicBool = AtomicBool::new(false);

/// The `log` target of a line that goes to port 0xE9 whatever [`DEBUGCON_ALL`] says.
pub const DEBUGCON: &str = "debugcon";

/// Every line to port 0xE9 from now on, after the held early lines that have not been
/// there yet (see [`DEBUGCON_ALL`]).
pub fn debugcon_all() {
    // Relaxed: only the first caller replays the held lines; see `DEBUGCON_ALL`.
    if DEBUGCON_ALL.swap(true, Ordering::Relaxed) {
        return;
    }
    // try_lock: a panic inside a log write must not deadlock here.
    if let Some(early) = EARLY.try_lock() {
        for (on_debugcon, bytes) in early.records() {
            if !on_debugcon {
                debugcon_write(bytes);
            }
        }
    }
}

/// Lines logged before the console ring is up, replayed into it when it attaches so that
/// `xl console` and xenconsoled's log show the whole boot. Records: a flag byte (1: it
/// also went to port 0xE9), a little-endian u16 length, the bytes. What does not fit is
/// dropped (counted in [`CONSOLE_DROPPED`]).
struct EarlyLog {
    buf: [u8; 8192],
    len: usize,
}

impl EarlyLog {
    fn push(&mut self, bytes: &[u8], on_debugcon: bool) {
        let room = (self.buf.len() - self.len).saturating_sub(3);
        let n = bytes.len().min(room).min(u16::MAX as usize);
        if n != 0 {
            let at = self.len;
            self.buf[at] = on_debugcon as u8;
            self.buf[at + 1..at + 3].copy_from_slice(&(n as u16).to_le_bytes());
            self.buf[at + 3..at + 3 + n].copy_from_slice(&bytes[..n]);
            self.len += 3 + n;
        }
        // Relaxed: a statistic.
        CONSOLE_DROPPED.fetch_add((bytes.len() - n) as u32, Ordering::Relaxed);
    }

    /// The records in order: (went to port 0xE9, bytes).
    fn records(&self) -> impl Iterator<Item = (bool, &[u8])> {
        let mut at = 0;
        core::iter::from_fn(move || {
            if at + 3 > self.len {
                return None;
            }
            let n = u16::from_le_bytes([self.buf[at + 1], self.buf[at + 2]]) as usize;
            let r = (self.buf[at] != 0, &self.buf[at + 3..at + 3 + n]);
            at += 3 + n;
            Some(r)
        })
    }
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
    for (_, bytes) in early.records() {
        console_write(&mut c, bytes);
    }
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
                    e.push(bytes, debugcon);
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
        let debugcon = r.level() <= log::Level::Warn
            || r.target() == DEBUGCON
            || DEBUGCON_ALL.load(Ordering::Relaxed);
        write_to(&line.buf[..line.len + 1], debugcon);
    }

    fn flush(&self) {}
}

/// A panic's lines must reach the console at once: stop holding notifications back (the
/// panic's own writes notify; no lock is taken here).
pub fn release_notifications_on_panic() {
    // Relaxed: see `HOLD_NOTIFY`.
    HOLD_NOTIFY.store(false, Ordering::Relaxed);
    // Whatever a panic logs reaches Xen's console too, after the boot lines held so far.
    debugcon_all();
}
