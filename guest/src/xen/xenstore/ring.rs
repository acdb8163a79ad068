//! The guest end of the shared xenstore page: produce into `req`, consume from `rsp`.
//!
//! Indices are free-running `u32` counters: `prod - cons` (wrapping) is the number of
//! bytes in flight and `idx & (XENSTORE_RING_SIZE - 1)` the slot. The peer owns the other
//! two indices and may be hostile, so every value read from it is checked before use.

use core::mem::offset_of;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, Ordering};

use xen_bindings::abi::xs_wire::{
    mask_xenstore_idx, XenstoreDomainInterface, XENSTORE_ERROR_NONE, XENSTORE_RING_SIZE,
    XENSTORE_SERVER_FEATURE_ERROR,
};

use super::XsError;

/// The guest side of a `xenstore_domain_interface`.
pub struct XsRing {
    page: NonNull<XenstoreDomainInterface>,
}

// SAFETY: the ring only holds the address of the shared page; all access goes through
// atomics and raw copies, and `XsRing::new`'s contract makes this the only guest-side
// user, so moving it to another CPU/thread is sound.
unsafe impl Send for XsRing {}

impl XsRing {
    /// # Safety
    /// `page` must point to a mapped `xenstore_domain_interface` that stays valid for
    /// the lifetime of the ring, and nothing else in this domain may access it.
    pub unsafe fn new(page: NonNull<XenstoreDomainInterface>) -> Self {
        XsRing { page }
    }

    fn field(&self, off: usize) -> &AtomicU32 {
        // SAFETY: `off` is the offset of an aligned u32 field of the page (callers pass
        // `offset_of!` values); the page is valid for `self`'s lifetime (new's contract),
        // and both sides access these fields only atomically.
        unsafe { AtomicU32::from_ptr(self.page.as_ptr().cast::<u8>().add(off).cast::<u32>()) }
    }

    fn req_cons(&self) -> &AtomicU32 {
        self.field(offset_of!(XenstoreDomainInterface, req_cons))
    }
    fn req_prod(&self) -> &AtomicU32 {
        self.field(offset_of!(XenstoreDomainInterface, req_prod))
    }
    fn rsp_cons(&self) -> &AtomicU32 {
        self.field(offset_of!(XenstoreDomainInterface, rsp_cons))
    }
    fn rsp_prod(&self) -> &AtomicU32 {
        self.field(offset_of!(XenstoreDomainInterface, rsp_prod))
    }

    fn ring_base(&self, off: usize) -> *mut u8 {
        // SAFETY: `off` is 0 (`req`) or XENSTORE_RING_SIZE (`rsp`), inside the page.
        unsafe { self.page.as_ptr().cast::<u8>().add(off) }
    }

    /// Checks that `prod - cons` is at most a ring's worth.
    fn in_flight(cons: u32, prod: u32) -> Result<usize, XsError> {
        let n = prod.wrapping_sub(cons) as usize;
        if n > XENSTORE_RING_SIZE {
            return Err(XsError::RingCorrupt { cons, prod });
        }
        Ok(n)
    }

    /// Copies as much of `data` as fits into `req` and publishes it. Returns the number of
    /// bytes written (0 if the ring is full).
    pub fn write_req(&mut self, data: &[u8]) -> Result<usize, XsError> {
        // Acquire pairs with xenstored's Release store of req_cons: it has finished
        // reading the slots it hands back before we overwrite them.
        let cons = self.req_cons().load(Ordering::Acquire);
        // Relaxed: only we write req_prod.
        let prod = self.req_prod().load(Ordering::Relaxed);
        let used = Self::in_flight(cons, prod)?;
        let n = data.len().min(XENSTORE_RING_SIZE - used);
        if n == 0 {
            return Ok(0);
        }
        let start = mask_xenstore_idx(prod);
        let first = n.min(XENSTORE_RING_SIZE - start);
        let base = self.ring_base(0);
        // SAFETY: both ranges lie in `req` (start + first <= RING_SIZE, and the wrapped
        // part starts at 0 with n - first < RING_SIZE bytes); these slots are free (between
        // prod and cons + RING_SIZE), so the peer does not read them until we publish.
        unsafe {
            core::ptr::copy_nonoverlapping(data.as_ptr(), base.add(start), first);
            core::ptr::copy_nonoverlapping(data.as_ptr().add(first), base, n - first);
        }
        // Release pairs with xenstored's Acquire load of req_prod: the bytes copied above
        // are visible to it before the index that covers them.
        self.req_prod()
            .store(prod.wrapping_add(n as u32), Ordering::Release);
        Ok(n)
    }

    /// Moves up to `out.len()` published bytes from `rsp` into `out` and frees their
    /// slots. Returns the number of bytes read.
    pub fn read_rsp(&mut self, out: &mut [u8]) -> Result<usize, XsError> {
        // Acquire pairs with xenstored's Release store of rsp_prod: the bytes it wrote
        // before publishing are visible to the copy below.
        let prod = self.rsp_prod().load(Ordering::Acquire);
        // Relaxed: only we write rsp_cons.
        let cons = self.rsp_cons().load(Ordering::Relaxed);
        let avail = Self::in_flight(cons, prod)?;
        let n = avail.min(out.len());
        if n == 0 {
            return Ok(0);
        }
        let start = mask_xenstore_idx(cons);
        let first = n.min(XENSTORE_RING_SIZE - start);
        let base = self.ring_base(XENSTORE_RING_SIZE);
        // SAFETY: both ranges lie in `rsp` (as in write_req) and `out` holds n bytes; the
        // slots between cons and prod are published and the peer will not touch them
        // until we advance rsp_cons.
        unsafe {
            core::ptr::copy_nonoverlapping(base.add(start), out.as_mut_ptr(), first);
            core::ptr::copy_nonoverlapping(base, out.as_mut_ptr().add(first), n - first);
        }
        // Release pairs with xenstored's Acquire load of rsp_cons: our reads of the slots
        // complete before it may overwrite them.
        self.rsp_cons()
            .store(cons.wrapping_add(n as u32), Ordering::Release);
        Ok(n)
    }

    /// Published response bytes not read yet.
    pub fn rsp_available(&self) -> Result<usize, XsError> {
        // Acquire: as in read_rsp (a later read_rsp re-loads anyway).
        let prod = self.rsp_prod().load(Ordering::Acquire);
        // Relaxed: our own index.
        Self::in_flight(self.rsp_cons().load(Ordering::Relaxed), prod)
    }

    /// Free space in `req`.
    pub fn req_space(&self) -> Result<usize, XsError> {
        // Acquire: as in write_req.
        let cons = self.req_cons().load(Ordering::Acquire);
        // Relaxed: our own index.
        let used = Self::in_flight(cons, self.req_prod().load(Ordering::Relaxed))?;
        Ok(XENSTORE_RING_SIZE - used)
    }

    /// The page's `error` field, if the server advertises it and it is set.
    pub fn server_error(&self) -> Option<u32> {
        // Relaxed: status words; no data is published through them.
        let features = self
            .field(offset_of!(XenstoreDomainInterface, server_features))
            .load(Ordering::Relaxed);
        if features & XENSTORE_SERVER_FEATURE_ERROR == 0 {
            return None;
        }
        let e = self
            .field(offset_of!(XenstoreDomainInterface, error))
            .load(Ordering::Relaxed);
        (e != XENSTORE_ERROR_NONE).then_some(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::boxed::Box;
    use alloc::vec::Vec;

    /// A private page with indices at `start`, and the ring over it. The test plays the
    /// peer through the raw pointer (never through a long-lived reference).
    fn ring(start: u32) -> (*mut XenstoreDomainInterface, XsRing) {
        let mut p = XenstoreDomainInterface::zeroed();
        p.req_cons = start;
        p.req_prod = start;
        p.rsp_cons = start;
        p.rsp_prod = start;
        let raw = Box::into_raw(Box::new(p));
        // SAFETY: freshly allocated and leaked, so valid for the whole test.
        (raw, unsafe { XsRing::new(NonNull::new(raw).unwrap()) })
    }

    #[test]
    fn write_wraps_and_stops_when_full() {
        let start = u32::MAX - 10;
        let (raw, mut r) = ring(start);
        let data: Vec<u8> = (0..1500u32).map(|i| i as u8).collect();
        assert_eq!(r.write_req(&data).unwrap(), 1024);
        assert_eq!(r.write_req(&data[1024..]).unwrap(), 0);
        assert_eq!(r.req_space().unwrap(), 0);
        // SAFETY: single-threaded test; `raw` is valid and no reference into the page
        // outlives the statement.
        let (prod, first, last, wrapped) = unsafe {
            (
                (*raw).req_prod,
                (*raw).req[mask_xenstore_idx(start)],
                (*raw).req[mask_xenstore_idx(u32::MAX)],
                (*raw).req[0],
            )
        };
        assert_eq!(prod, start.wrapping_add(1024));
        assert_eq!(
            (first, last, wrapped),
            (0, 10, 11),
            "byte i lands in slot (start+i)&1023"
        );
        // SAFETY: single-threaded test; `raw` is valid; no reference outlives the statement.
        unsafe { (*raw).req_cons = start.wrapping_add(100) };
        assert_eq!(r.write_req(&data[1024..]).unwrap(), 100);
    }

    #[test]
    fn read_wraps_and_rejects_corrupt_indices() {
        let start = 0xffff_fff0u32;
        let (raw, mut r) = ring(start);
        // SAFETY: single-threaded test; `raw` is valid and no reference into the page
        // outlives the statement.
        unsafe {
            for i in 0..32u32 {
                (*raw).rsp[mask_xenstore_idx(start.wrapping_add(i))] = i as u8;
            }
            (*raw).rsp_prod = start.wrapping_add(32);
        }
        let mut out = [0u8; 20];
        assert_eq!(r.read_rsp(&mut out).unwrap(), 20);
        assert_eq!(out[19], 19);
        assert_eq!(r.rsp_available().unwrap(), 12);
        assert_eq!(r.read_rsp(&mut out).unwrap(), 12);
        assert_eq!(out[..12], (20..32).map(|i| i as u8).collect::<Vec<_>>()[..]);
        // SAFETY: single-threaded test; `raw` is valid; no reference outlives the statement.
        unsafe { (*raw).rsp_prod = start.wrapping_add(32 + 1025) };
        assert!(matches!(
            r.read_rsp(&mut out),
            Err(XsError::RingCorrupt { .. })
        ));
        // SAFETY: single-threaded test; `raw` is valid; no reference outlives the statement.
        unsafe { (*raw).req_cons = start.wrapping_add(1) };
        assert!(matches!(
            r.write_req(b"x"),
            Err(XsError::RingCorrupt { .. })
        ));
    }

    #[test]
    fn server_error_needs_the_feature_bit() {
        let (raw, r) = ring(0);
        // SAFETY: single-threaded test; `raw` is valid; no reference outlives the statement.
        unsafe { (*raw).error = 3 };
        assert_eq!(r.server_error(), None);
        // SAFETY: single-threaded test; `raw` is valid; no reference outlives the statement.
        unsafe { (*raw).server_features = XENSTORE_SERVER_FEATURE_ERROR };
        assert_eq!(r.server_error(), Some(3));
    }
}
