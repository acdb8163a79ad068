//! The xenstored end of the shared xenstore page: consumes `req`, produces `rsp`.
//!
//! Written independently of the guest's ring code on purpose: the tests pit one against
//! the other, so a shared bug would hide.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, Ordering};

use crate::abi::xs_wire::{mask_xenstore_idx, XenstoreDomainInterface, XENSTORE_RING_SIZE};

/// The peer's indices say more than a ring's worth of bytes is outstanding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingCorrupt {
    pub cons: u32,
    pub prod: u32,
}

/// A heap-allocated shared page with a stable address, freed on drop.
pub struct SharedPage {
    ptr: NonNull<XenstoreDomainInterface>,
}

// SAFETY: the page is plain memory; every access goes through raw pointers and atomics
// (like memory shared with another domain), so moving the owner between threads is fine.
unsafe impl Send for SharedPage {}

impl SharedPage {
    /// A zeroed page whose four ring indices all start at `start` (use a value near
    /// `u32::MAX` to exercise index wrap-around).
    pub fn new(start: u32) -> Self {
        let mut page = XenstoreDomainInterface::zeroed();
        page.req_cons = start;
        page.req_prod = start;
        page.rsp_cons = start;
        page.rsp_prod = start;
        // Box::into_raw: the raw pointer is the only handle, so handing copies of it to
        // the guest side creates no aliasing `Box`/`&mut`.
        let ptr = NonNull::new(Box::into_raw(Box::new(page))).expect("Box is non-null");
        SharedPage { ptr }
    }

    pub fn as_ptr(&self) -> *mut XenstoreDomainInterface {
        self.ptr.as_ptr()
    }

    /// Atomic view of one `u32` field of the page.
    pub fn field(&self, f: PageField) -> &AtomicU32 {
        use core::mem::offset_of;
        let off = match f {
            PageField::ReqCons => offset_of!(XenstoreDomainInterface, req_cons),
            PageField::ReqProd => offset_of!(XenstoreDomainInterface, req_prod),
            PageField::RspCons => offset_of!(XenstoreDomainInterface, rsp_cons),
            PageField::RspProd => offset_of!(XenstoreDomainInterface, rsp_prod),
            PageField::ServerFeatures => offset_of!(XenstoreDomainInterface, server_features),
            PageField::Connection => offset_of!(XenstoreDomainInterface, connection),
            PageField::Error => offset_of!(XenstoreDomainInterface, error),
        };
        // SAFETY: `off` is the offset of a 4-byte-aligned u32 field inside the live page,
        // which outlives `&self`; every access to these fields is atomic.
        unsafe { AtomicU32::from_ptr((self.ptr.as_ptr() as *mut u8).add(off) as *mut u32) }
    }
}

/// The `u32` fields of the page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageField {
    ReqCons,
    ReqProd,
    RspCons,
    RspProd,
    ServerFeatures,
    Connection,
    Error,
}

impl Drop for SharedPage {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `Box::into_raw` in `new` and is freed only here. Whoever
        // holds a copy of the raw pointer (the client under test) must not outlive the sim;
        // the sim's docs say so.
        drop(unsafe { Box::from_raw(self.ptr.as_ptr()) });
    }
}

/// Server-side view of the rings in a [`SharedPage`].
pub struct ServerRing<'a> {
    page: &'a SharedPage,
}

impl<'a> ServerRing<'a> {
    pub fn new(page: &'a SharedPage) -> Self {
        ServerRing { page }
    }

    fn req_cons(&self) -> &AtomicU32 {
        self.page.field(PageField::ReqCons)
    }
    fn req_prod(&self) -> &AtomicU32 {
        self.page.field(PageField::ReqProd)
    }
    fn rsp_cons(&self) -> &AtomicU32 {
        self.page.field(PageField::RspCons)
    }
    fn rsp_prod(&self) -> &AtomicU32 {
        self.page.field(PageField::RspProd)
    }

    /// Appends up to `max` pending request bytes to `out`; returns how many.
    pub fn read_req(&self, out: &mut Vec<u8>, max: usize) -> Result<usize, RingCorrupt> {
        // Acquire pairs with the guest's Release store of req_prod: the bytes it wrote
        // before publishing are visible to the copy below.
        let prod = self.req_prod().load(Ordering::Acquire);
        // Relaxed: only this side writes req_cons.
        let cons = self.req_cons().load(Ordering::Relaxed);
        let avail = prod.wrapping_sub(cons) as usize;
        if avail > XENSTORE_RING_SIZE {
            return Err(RingCorrupt { cons, prod });
        }
        let n = avail.min(max);
        let base = self.page.as_ptr() as *const u8; // req is at offset 0
        for i in 0..n {
            let off = mask_xenstore_idx(cons.wrapping_add(i as u32));
            // SAFETY: off < XENSTORE_RING_SIZE, inside `req` of the live page; volatile
            // because the guest may scribble on bytes outside its published window.
            out.push(unsafe { base.add(off).read_volatile() });
        }
        // Release pairs with the guest's Acquire load of req_cons: our reads of the slots
        // happen before the guest may reuse them.
        self.req_cons()
            .store(cons.wrapping_add(n as u32), Ordering::Release);
        Ok(n)
    }

    /// Copies as much of `data` as fits (at most `max` bytes) into `rsp`; returns how many.
    pub fn write_rsp(&self, data: &[u8], max: usize) -> Result<usize, RingCorrupt> {
        // Acquire pairs with the guest's Release store of rsp_cons: it has finished
        // reading the slots it gives back before we overwrite them.
        let cons = self.rsp_cons().load(Ordering::Acquire);
        // Relaxed: only this side writes rsp_prod.
        let prod = self.rsp_prod().load(Ordering::Relaxed);
        let used = prod.wrapping_sub(cons) as usize;
        if used > XENSTORE_RING_SIZE {
            return Err(RingCorrupt { cons, prod });
        }
        let n = data.len().min(XENSTORE_RING_SIZE - used).min(max);
        // SAFETY: `rsp` starts XENSTORE_RING_SIZE bytes into the page.
        let base = unsafe { (self.page.as_ptr() as *mut u8).add(XENSTORE_RING_SIZE) };
        for (i, &b) in data[..n].iter().enumerate() {
            let off = mask_xenstore_idx(prod.wrapping_add(i as u32));
            // SAFETY: off < XENSTORE_RING_SIZE, inside `rsp`; these slots are ours until
            // we publish them.
            unsafe { base.add(off).write_volatile(b) };
        }
        // Release pairs with the guest's Acquire load of rsp_prod: the bytes above are
        // visible before the new index is.
        self.rsp_prod()
            .store(prod.wrapping_add(n as u32), Ordering::Release);
        Ok(n)
    }

    /// Bytes the guest has published in `req` and we have not consumed.
    pub fn req_pending(&self) -> u32 {
        // Acquire: as in read_req.
        self.req_prod()
            .load(Ordering::Acquire)
            .wrapping_sub(self.req_cons().load(Ordering::Relaxed))
    }

    /// Bytes in `rsp` the guest has not consumed yet.
    pub fn rsp_unread(&self) -> u32 {
        // Relaxed on our own rsp_prod; Acquire on rsp_cons as in write_rsp.
        self.rsp_prod()
            .load(Ordering::Relaxed)
            .wrapping_sub(self.rsp_cons().load(Ordering::Acquire))
    }
}
