//! A simulated Xen for host tests (feature `sim`).
//!
//! [`SimXen`] is a cheap, clonable handle to one simulated domain and the hypervisor and
//! dom0 services around it: hand one clone to the code under test (it implements
//! [`Clock`], [`EventChannels`] and [`Sched`]) and keep another in the test to play the
//! toolstack, inject faults and inspect state.
//!
//! Time only moves when the guest waits: `Sched::poll` first lets every simulated backend
//! run (synchronously), returns at once if a polled port is pending, otherwise runs the
//! timers ([`SimXen::at`]) due before the deadline and, if none raises an event, jumps the
//! clock to the deadline. A poll with no deadline that nothing can ever wake panics: in a
//! real domain it would hang forever.
//!
//! Extending it: state lives in [`SimState`]; add fields for new subsystems (memory
//! reservation / p2m / PoD, grant tables, ...), bind backends to ports through
//! [`evtchn::Service`] and run them from [`SimState::run_backends`].

pub mod evtchn;
pub mod evtchn_2l;
pub mod grant;
pub mod memory;
pub mod xenstored;
pub mod xs_ring;

use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use spin::{Mutex, MutexGuard};

use crate::abi::xs_wire::XenstoreDomainInterface;
use crate::traits::{Clock, DomId, EventChannels, Port, Sched, ShutdownReason, SuspendOutcome};
use crate::Errno;
use evtchn::{Binding, EventChannelTable, Service};
pub use xenstored::{ReplyFault, RequestRecord, Xenstored, XsFaults};

/// How to build a [`SimXen`].
#[derive(Clone, Copy, Debug)]
pub struct SimConfig {
    /// The guest's domain id.
    pub domid: DomId,
    /// Initial value of all four xenstore ring indices (near `u32::MAX` to test wrap).
    pub xs_ring_start: u32,
    /// Initial system time.
    pub start_ns: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            domid: 1,
            xs_ring_start: 0,
            start_ns: 1_000_000_000,
        }
    }
}

type TimerFn = Box<dyn FnOnce(&mut SimState) + Send>;

struct Timer {
    at_ns: u64,
    seq: u64,
    f: TimerFn,
}

/// Counters tests can assert on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    pub polls: u64,
    pub poll_timeouts: u64,
    pub notifies: u64,
}

/// Everything the simulated Xen knows. Reach it with [`SimXen::lock`].
pub struct SimState {
    pub domid: DomId,
    pub now_ns: u64,
    pub evtchn: EventChannelTable,
    pub xenstored: Xenstored,
    /// The guest's xenstore port (`HVM_PARAM_STORE_EVTCHN`).
    pub xs_port: Port,
    /// Set by `SCHEDOP_shutdown`.
    pub shutdown: Option<ShutdownReason>,
    /// What the next `SCHEDOP_shutdown(SHUTDOWN_suspend)` returns (tests set it).
    pub suspend_outcome: SuspendOutcome,
    /// Suspends the guest made.
    pub suspends: u64,
    pub stats: SimStats,
    timers: Vec<Timer>,
    timer_seq: u64,
}

impl SimState {
    /// Lets every backend with work do one step, raising events on the guest's ports.
    pub fn run_backends(&mut self) {
        if !self.xenstored.faults.only_on_notify {
            self.kick(Service::Xenstore);
        }
    }

    /// Runs one step of `service` (as if the guest had notified it).
    pub fn kick(&mut self, service: Service) {
        match service {
            Service::Xenstore => {
                if self.xenstored.service() {
                    self.evtchn.set_pending(self.xs_port);
                }
            }
        }
    }

    /// Runs the earliest timer due at or before `limit` (0: any). Returns whether one ran.
    fn run_next_timer(&mut self, limit: u64) -> bool {
        let Some(i) = (0..self.timers.len())
            .filter(|&i| limit == 0 || self.timers[i].at_ns <= limit)
            .min_by_key(|&i| (self.timers[i].at_ns, self.timers[i].seq))
        else {
            return false;
        };
        let t = self.timers.swap_remove(i);
        self.now_ns = self.now_ns.max(t.at_ns);
        (t.f)(self);
        true
    }

    /// Advances the clock by `ns`, running the timers that fall due.
    pub fn advance(&mut self, ns: u64) {
        let end = self.now_ns.saturating_add(ns);
        while self.run_next_timer(end) {}
        self.now_ns = end;
    }

    /// What a restore or migration does to the guest's connections: every event channel
    /// is gone and the store has a new port and a zeroed ring (see
    /// [`Xenstored::reconnect`]). Time goes on.
    pub fn resume_in_new_domain(&mut self) {
        self.evtchn = EventChannelTable::default();
        // A fresh table would hand out port 1 again; burn the old store port's number
        // first so the guest must re-read it, as after a real restore.
        let old = self.xs_port;
        let mut port = self.evtchn.alloc(Binding::Service(Service::Xenstore));
        if port == old {
            let next = self.evtchn.alloc(Binding::Service(Service::Xenstore));
            let _ = self.evtchn.close(port);
            port = next;
        }
        self.xs_port = port;
        self.xenstored.reconnect();
    }

    /// Toolstack write (dom0) to the store, firing watches.
    pub fn xs_write(&mut self, path: &str, value: &[u8]) -> Result<(), Errno> {
        let r = self.xenstored.toolstack_write(path, value);
        self.kick(Service::Xenstore);
        r
    }

    /// Toolstack rm (dom0), firing watches.
    pub fn xs_rm(&mut self, path: &str) -> Result<(), Errno> {
        let r = self.xenstored.toolstack_rm(path);
        self.kick(Service::Xenstore);
        r
    }
}

/// Handle to a simulated Xen with one guest domain. Clones share the same state.
#[derive(Clone)]
pub struct SimXen {
    inner: Arc<Mutex<SimState>>,
}

impl Default for SimXen {
    fn default() -> Self {
        Self::new(SimConfig::default())
    }
}

impl SimXen {
    pub fn new(cfg: SimConfig) -> Self {
        let mut evtchn = EventChannelTable::default();
        let xs_port = evtchn.alloc(Binding::Service(Service::Xenstore));
        let st = SimState {
            domid: cfg.domid,
            now_ns: cfg.start_ns,
            evtchn,
            xenstored: Xenstored::new(cfg.domid, cfg.xs_ring_start),
            xs_port,
            shutdown: None,
            suspend_outcome: SuspendOutcome::Resumed,
            suspends: 0,
            stats: SimStats::default(),
            timers: Vec::new(),
            timer_seq: 0,
        };
        SimXen {
            inner: Arc::new(Mutex::new(st)),
        }
    }

    /// The whole state, locked. Do not hold it across calls into the code under test.
    pub fn lock(&self) -> MutexGuard<'_, SimState> {
        // A panic while locked already failed the test; keep reporting the state.
        self.inner.lock()
    }

    /// The shared xenstore page (what `HVM_PARAM_STORE_PFN` points at). Valid as long as
    /// any clone of this handle lives.
    pub fn xs_page(&self) -> *mut XenstoreDomainInterface {
        self.lock().xenstored.page().as_ptr()
    }

    /// The guest's xenstore event channel (`HVM_PARAM_STORE_EVTCHN`).
    pub fn xs_port(&self) -> Port {
        self.lock().xs_port
    }

    pub fn domid(&self) -> DomId {
        self.lock().domid
    }

    /// `xenstore-write` from dom0 (fires watches).
    pub fn xs_write(&self, path: &str, value: impl AsRef<[u8]>) -> Result<(), Errno> {
        self.lock().xs_write(path, value.as_ref())
    }

    /// `xenstore-read` from dom0.
    pub fn xs_read(&self, path: &str) -> Result<Vec<u8>, Errno> {
        self.lock().xenstored.toolstack_read(path)
    }

    /// `xenstore-mkdir` from dom0 (fires watches).
    pub fn xs_mkdir(&self, path: &str) -> Result<(), Errno> {
        let mut st = self.lock();
        let r = st.xenstored.toolstack_mkdir(path);
        st.kick(Service::Xenstore);
        r
    }

    /// `xenstore-rm` from dom0 (fires watches).
    pub fn xs_rm(&self, path: &str) -> Result<(), Errno> {
        self.lock().xs_rm(path)
    }

    /// `xenstore-list` from dom0.
    pub fn xs_directory(&self, path: &str) -> Result<Vec<String>, Errno> {
        self.lock().xenstored.toolstack_directory(path)
    }

    /// `xenstore-chmod` from dom0 (fires watches).
    pub fn xs_set_perms(
        &self,
        path: &str,
        perms: Vec<crate::abi::xs_wire::XsPerm>,
    ) -> Result<(), Errno> {
        let mut st = self.lock();
        let r = st.xenstored.toolstack_set_perms(path, perms);
        st.kick(Service::Xenstore);
        r
    }

    /// Node permissions, read as dom0.
    pub fn xs_get_perms(&self, path: &str) -> Result<Vec<crate::abi::xs_wire::XsPerm>, Errno> {
        self.lock().xenstored.toolstack_get_perms(path)
    }

    /// Changes xenstored's fault injection.
    pub fn xs_faults(&self, f: impl FnOnce(&mut XsFaults)) {
        let mut st = self.lock();
        f(&mut st.xenstored.faults);
        // Un-stalling or trickling may have work to do at once.
        st.kick(Service::Xenstore);
    }

    /// Requests xenstored has served, oldest first.
    pub fn xs_requests(&self) -> Vec<RequestRecord> {
        self.lock().xenstored.requests().to_vec()
    }

    /// Runs `f` on the state at system time `at_ns` (during some later poll or advance).
    pub fn at(&self, at_ns: u64, f: impl FnOnce(&mut SimState) + Send + 'static) {
        let mut st = self.lock();
        st.timer_seq += 1;
        let seq = st.timer_seq;
        st.timers.push(Timer {
            at_ns,
            seq,
            f: Box::new(f),
        });
    }

    /// Advances the clock, running due timers.
    pub fn advance(&self, ns: u64) {
        self.lock().advance(ns);
    }

    pub fn shutdown_reason(&self) -> Option<ShutdownReason> {
        self.lock().shutdown
    }

    pub fn stats(&self) -> SimStats {
        self.lock().stats
    }
}

impl Clock for SimXen {
    fn now_ns(&self) -> u64 {
        self.lock().now_ns
    }
}

impl EventChannels for SimXen {
    fn notify(&self, port: Port) -> Result<(), Errno> {
        let mut st = self.lock();
        st.stats.notifies += 1;
        let ps = st.evtchn.get_mut(port)?;
        ps.sends += 1;
        if let Binding::Service(s) = ps.binding {
            st.kick(s);
        }
        Ok(())
    }

    fn take_pending(&self, port: Port) -> bool {
        self.lock().evtchn.take_pending(port)
    }

    fn alloc_unbound(&self, remote: DomId) -> Result<Port, Errno> {
        Ok(self.lock().evtchn.alloc(Binding::Unbound { remote }))
    }

    fn bind_interdomain(&self, remote: DomId, remote_port: Port) -> Result<Port, Errno> {
        Ok(self.lock().evtchn.alloc(Binding::Interdomain {
            remote,
            remote_port,
        }))
    }

    fn close(&self, port: Port) -> Result<(), Errno> {
        self.lock().evtchn.close(port)
    }

    fn unmask(&self, port: Port) -> Result<(), Errno> {
        self.lock().evtchn.get_mut(port)?.masked = false;
        Ok(())
    }
}

impl Sched for SimXen {
    fn poll(&self, ports: &[Port], deadline_ns: u64) -> Result<(), Errno> {
        let mut st = self.lock();
        st.stats.polls += 1;
        if ports.iter().any(|&p| st.evtchn.get(p).is_none()) {
            return Err(Errno::EINVAL);
        }
        loop {
            st.run_backends();
            if ports.iter().any(|&p| st.evtchn.is_pending(p)) {
                return Ok(());
            }
            if deadline_ns != 0 && deadline_ns <= st.now_ns {
                st.stats.poll_timeouts += 1;
                return Ok(());
            }
            if st.run_next_timer(deadline_ns) {
                continue;
            }
            if deadline_ns == 0 {
                panic!("sim: SCHEDOP_poll on {ports:?} without a deadline would block forever");
            }
            st.now_ns = deadline_ns;
            st.stats.poll_timeouts += 1;
            return Ok(());
        }
    }

    fn shutdown(&self, reason: ShutdownReason) -> Result<(), Errno> {
        self.lock().shutdown = Some(reason);
        Ok(())
    }

    fn suspend(&self) -> Result<SuspendOutcome, Errno> {
        let mut st = self.lock();
        st.suspends += 1;
        let outcome = st.suspend_outcome;
        if outcome == SuspendOutcome::Resumed {
            st.resume_in_new_domain();
        }
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_times_out_by_moving_the_clock_to_the_deadline() {
        let sim = SimXen::default();
        let port = sim.xs_port();
        let t0 = sim.now_ns();
        sim.poll(&[port], t0 + 5_000).unwrap();
        assert_eq!(sim.now_ns(), t0 + 5_000);
        assert_eq!(sim.stats().poll_timeouts, 1);
    }

    #[test]
    fn timers_wake_a_poll_at_their_time() {
        let sim = SimXen::default();
        let port = sim.xs_port();
        let t0 = sim.now_ns();
        sim.at(t0 + 100, move |st| st.evtchn.set_pending(port));
        sim.poll(&[port], t0 + 1_000).unwrap();
        assert_eq!(sim.now_ns(), t0 + 100);
        assert!(sim.take_pending(port));
        assert!(!sim.take_pending(port));
    }

    #[test]
    fn poll_rejects_unknown_ports_and_ports_can_be_allocated_and_closed() {
        let sim = SimXen::default();
        assert_eq!(sim.poll(&[99], 1), Err(Errno::EINVAL));
        let p = sim.alloc_unbound(0).unwrap();
        assert_ne!(p, sim.xs_port());
        sim.notify(p).unwrap();
        sim.close(p).unwrap();
        assert_eq!(sim.notify(p), Err(Errno::EINVAL));
        assert_eq!(sim.close(p), Err(Errno::EINVAL));
    }

    #[test]
    fn shutdown_is_recorded() {
        let sim = SimXen::default();
        assert_eq!(sim.shutdown_reason(), None);
        sim.shutdown(ShutdownReason::Reboot).unwrap();
        assert_eq!(sim.shutdown_reason(), Some(ShutdownReason::Reboot));
    }

    #[test]
    #[should_panic(expected = "block forever")]
    fn poll_without_deadline_or_waker_panics() {
        let sim = SimXen::default();
        let _ = sim.poll(&[sim.xs_port()], 0);
    }

    #[test]
    fn toolstack_writes_are_visible_and_ring_starts_where_configured() {
        let sim = SimXen::new(SimConfig {
            domid: 7,
            xs_ring_start: u32::MAX - 3,
            ..SimConfig::default()
        });
        sim.xs_write("data/x", "1").unwrap();
        assert_eq!(sim.xs_read("/local/domain/7/data/x").unwrap(), b"1");
        // SAFETY: the page lives as long as `sim`; nobody else touches it here.
        let prod = unsafe { (*sim.xs_page()).rsp_prod };
        assert_eq!(prod, u32::MAX - 3);
    }
}
