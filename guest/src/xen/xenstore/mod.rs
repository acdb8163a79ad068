//! Xenstore client: wire codec, ring, requests, watches, transactions.
//!
//! ```text
//!   callers (balloon status, grants, control)      XsOps: read / write / rm / perms
//!        │                                              │
//!   client::XenstoreClient ── req_id, timeouts, watch-event queue, transactions
//!        │ bytes                                        ▲ messages
//!   codec (encode requests, reassemble replies) ────────┘
//!        │
//!   ring (xenstore_domain_interface page: req/rsp rings, free-running indices)
//!        │ notify / poll on the store event channel
//!   xenstored in dom0
//! ```
//!
//! Layers, each testable on its own:
//! * [`codec`]: encode requests, reassemble messages from arbitrary byte chunks, parse
//!   reply payloads. Pure.
//! * [`ring`]: the guest end of the shared `xenstore_domain_interface` page (free-running
//!   indices, wrap-around, partial writes, memory ordering, index sanity checks).
//! * [`client`]: [`XenstoreClient`], generic over the hypervisor traits (event channel
//!   notify/pending, `SCHEDOP_poll` with a deadline, clock): requests with timeouts, watch
//!   events queued while replies are awaited, transactions with bounded EAGAIN retry.
//!
//! Anything the peer sends is treated as untrusted input and turns into an [`XsError`].
//!
//! Connecting (the kernel; `hv` implements `EventChannels + Sched + Clock`):
//!
//! ```ignore
//! let pfn = hvm_param(HVM_PARAM_STORE_PFN)?;
//! let port = hvm_param(HVM_PARAM_STORE_EVTCHN)? as u32;
//! let page = NonNull::new((pfn << 12) as *mut XenstoreDomainInterface).unwrap();
//! // SAFETY: the store page is mapped at that address and only the client touches it.
//! let mut xs = unsafe { XenstoreClient::new(hv, page, port) };
//! let domid = xs.read_string("domid")?;          // relative to /local/domain/<domid>
//! xs.watch("control/shutdown", "shutdown")?;     // fires once at once, then on change
//! while let Some(ev) = xs.wait_watch_event(1_000_000_000)? { /* ... */ }
//! xs.transaction(|tx| tx.write("data/x", b"1"))?; // retried on EAGAIN, bounded
//! ```

pub mod client;
pub mod codec;
mod error;
pub mod ring;

pub use client::{
    Transaction, TxId, XenstoreClient, XsOps, XsReq, XsStats, DEFAULT_TIMEOUT_NS,
    DEFAULT_TX_ATTEMPTS, MAX_QUEUED_EVENTS,
};
pub use codec::WatchEvent;
pub use error::XsError;
pub use xen_bindings::abi::xs_wire::{XsPerm, XsPermKind};
