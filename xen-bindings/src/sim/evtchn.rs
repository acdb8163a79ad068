//! Simulated event channels of the guest domain (2-level ABI semantics: a pending bit and
//! a mask bit per port; port 0 is never allocated).

use alloc::collections::BTreeMap;

use crate::traits::{DomId, Port};
use crate::Errno;

/// A simulated backend a port can be bound to. Notifying such a port runs the backend.
/// Later issues add more (console, block, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Xenstore,
}

/// What the other end of a port is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binding {
    /// `EVTCHNOP_alloc_unbound`: waiting for `remote` to bind.
    Unbound { remote: DomId },
    /// `EVTCHNOP_bind_interdomain` to a domain the sim does not model further.
    Interdomain { remote: DomId, remote_port: Port },
    /// Connected to a simulated backend.
    Service(Service),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortState {
    pub binding: Binding,
    pub pending: bool,
    pub masked: bool,
    /// How many times the guest notified this port.
    pub sends: u64,
}

/// The guest's ports.
#[derive(Clone, Debug)]
pub struct EventChannelTable {
    ports: BTreeMap<Port, PortState>,
    next: Port,
}

impl Default for EventChannelTable {
    fn default() -> Self {
        EventChannelTable {
            ports: BTreeMap::new(),
            next: 1,
        }
    }
}

impl EventChannelTable {
    /// Allocates a port with `binding` (the lowest free one above 0).
    pub fn alloc(&mut self, binding: Binding) -> Port {
        while self.ports.contains_key(&self.next) {
            self.next += 1;
        }
        let p = self.next;
        self.ports.insert(
            p,
            PortState {
                binding,
                pending: false,
                masked: false,
                sends: 0,
            },
        );
        p
    }

    pub fn get(&self, port: Port) -> Option<&PortState> {
        self.ports.get(&port)
    }

    pub fn get_mut(&mut self, port: Port) -> Result<&mut PortState, Errno> {
        self.ports.get_mut(&port).ok_or(Errno::EINVAL)
    }

    /// The other end raised an event on `port` (no-op for an unknown port).
    pub fn set_pending(&mut self, port: Port) {
        if let Some(p) = self.ports.get_mut(&port) {
            p.pending = true;
        }
    }

    pub fn is_pending(&self, port: Port) -> bool {
        self.ports.get(&port).is_some_and(|p| p.pending)
    }

    pub fn take_pending(&mut self, port: Port) -> bool {
        self.ports
            .get_mut(&port)
            .is_some_and(|p| core::mem::take(&mut p.pending))
    }

    pub fn close(&mut self, port: Port) -> Result<(), Errno> {
        self.ports.remove(&port).map(|_| ()).ok_or(Errno::EINVAL)?;
        self.next = self.next.min(port);
        Ok(())
    }
}
