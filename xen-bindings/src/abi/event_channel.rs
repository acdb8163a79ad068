//! event_channel.h: the operations a PVH guest uses. Types from `xen-sys`, layouts pinned.

use crate::assert_layout;

pub use xen_sys::{
    evtchn_alloc_unbound as EvtchnAllocUnbound, evtchn_bind_interdomain as EvtchnBindInterdomain,
    evtchn_bind_ipi as EvtchnBindIpi, evtchn_bind_virq as EvtchnBindVirq,
    evtchn_close as EvtchnClose, evtchn_send as EvtchnSend, evtchn_status as EvtchnStatus,
    evtchn_unmask as EvtchnUnmask, EVTCHNOP_alloc_unbound, EVTCHNOP_bind_interdomain,
    EVTCHNOP_bind_ipi, EVTCHNOP_bind_virq, EVTCHNOP_close, EVTCHNOP_send, EVTCHNOP_status,
    EVTCHNOP_unmask, VIRQ_TIMER,
};

assert_layout!(
    EvtchnAllocUnbound,
    size = 8,
    dom = 0,
    remote_dom = 2,
    port = 4
);
assert_layout!(
    EvtchnBindInterdomain,
    size = 12,
    remote_dom = 0,
    remote_port = 4,
    local_port = 8
);
assert_layout!(EvtchnBindVirq, size = 12, virq = 0, vcpu = 4, port = 8);
assert_layout!(EvtchnBindIpi, size = 8, vcpu = 0, port = 4);
assert_layout!(EvtchnSend, size = 4, port = 0);
assert_layout!(EvtchnClose, size = 4, port = 0);
assert_layout!(EvtchnUnmask, size = 4, port = 0);
assert_layout!(
    EvtchnStatus,
    size = 24,
    dom = 0,
    port = 4,
    status = 8,
    vcpu = 12,
    u = 16
);

/// `EVTCHNSTAT_*` in [`EvtchnStatus::status`].
pub mod status {
    pub const CLOSED: u32 = 0;
    pub const UNBOUND: u32 = 1;
    pub const INTERDOMAIN: u32 = 2;
    pub const PIRQ: u32 = 3;
    pub const VIRQ: u32 = 4;
    pub const IPI: u32 = 5;
}
