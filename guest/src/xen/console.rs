//! The PV console ring (io/console.h): output side.
//!
//! We are the producer of `out` and xenconsoled the consumer. Indices are free-running
//! u32s; `out_prod - out_cons` is the fill level even across wrap-around.

use core::sync::atomic::{fence, AtomicU32, Ordering};

use xen_bindings::abi::console::{XenconsInterface, XENCONS_OUT_SIZE};

/// The output half of a console ring in shared memory.
pub struct ConsoleRing {
    iface: *mut XenconsInterface,
}

// SAFETY: the ring is only touched through &mut self, and the shared page outlives us.
unsafe impl Send for ConsoleRing {}

impl ConsoleRing {
    /// # Safety
    /// `iface` must point to a console ring page that stays mapped for the ring's life, and
    /// nobody else in this domain may produce into its `out` ring.
    pub unsafe fn new(iface: *mut XenconsInterface) -> Self {
        Self { iface }
    }

    fn index(&self, field: *mut u32) -> &AtomicU32 {
        // SAFETY: `field` points into the live page (constructor contract); u32 fields are
        // 4-aligned and accessed by the peer atomically too.
        unsafe { AtomicU32::from_ptr(field) }
    }

    /// Copies as much of `data` as fits; returns how many bytes were queued.
    pub fn write(&mut self, data: &[u8]) -> usize {
        // SAFETY: raw field projections of the live page (constructor contract).
        let (cons_p, prod_p, out) = unsafe {
            let i = self.iface;
            (
                core::ptr::addr_of_mut!((*i).out_cons),
                core::ptr::addr_of_mut!((*i).out_prod),
                core::ptr::addr_of_mut!((*i).out) as *mut u8,
            )
        };
        // Acquire pairs with the consumer's release of out_cons after it read the bytes:
        // once we see the slot free, its old bytes have been consumed.
        let cons = self.index(cons_p).load(Ordering::Acquire);
        // Relaxed: we are the only producer, this is our own last store.
        let prod = self.index(prod_p).load(Ordering::Relaxed);
        let used = prod.wrapping_sub(cons) as usize;
        if used > XENCONS_OUT_SIZE {
            // A corrupt index from the peer: write nothing rather than scribble.
            return 0;
        }
        let n = data.len().min(XENCONS_OUT_SIZE - used);
        for (k, &b) in data[..n].iter().enumerate() {
            let slot = (prod.wrapping_add(k as u32) as usize) % XENCONS_OUT_SIZE;
            // SAFETY: slot < XENCONS_OUT_SIZE, inside `out`, which the consumer does not
            // read until we publish out_prod below.
            unsafe { out.add(slot).write_volatile(b) };
        }
        // Release pairs with the consumer's acquire of out_prod: the bytes are visible
        // before the new index is.
        fence(Ordering::Release);
        self.index(prod_p)
            .store(prod.wrapping_add(n as u32), Ordering::Release);
        n
    }

    /// Bytes queued but not yet taken by the consumer.
    pub fn pending(&self) -> usize {
        // SAFETY: raw field projections of the live page.
        let (c, p) = unsafe {
            (
                core::ptr::addr_of_mut!((*self.iface).out_cons),
                core::ptr::addr_of_mut!((*self.iface).out_prod),
            )
        };
        // Relaxed: out_prod is our own store. Acquire: pairs with the consumer's release
        // of out_cons, as in `write`.
        self.index(p)
            .load(Ordering::Relaxed)
            .wrapping_sub(self.index(c).load(Ordering::Acquire)) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::boxed::Box;
    use proptest::prelude::*;

    fn page(start: u32) -> Box<XenconsInterface> {
        // SAFETY: all-zero is a valid XenconsInterface (plain integers and bytes).
        let mut p: Box<XenconsInterface> = unsafe { Box::new_zeroed().assume_init() };
        p.out_cons = start;
        p.out_prod = start;
        p
    }

    /// The consumer's side: drain everything, as xenconsoled would.
    fn drain(p: &mut XenconsInterface) -> alloc::vec::Vec<u8> {
        let mut v = alloc::vec::Vec::new();
        while p.out_cons != p.out_prod {
            v.push(p.out[(p.out_cons as usize) % XENCONS_OUT_SIZE]);
            p.out_cons = p.out_cons.wrapping_add(1);
        }
        v
    }

    #[test]
    fn fills_up_then_refuses() {
        let mut p = page(0);
        // SAFETY: p lives across the ring's use.
        let mut r = unsafe { ConsoleRing::new(&mut *p) };
        assert_eq!(r.write(&[7u8; 3000]), XENCONS_OUT_SIZE);
        assert_eq!(r.write(b"x"), 0);
        assert_eq!(r.pending(), XENCONS_OUT_SIZE);
    }

    #[test]
    fn corrupt_indices_write_nothing() {
        let mut p = page(0);
        p.out_prod = 5000;
        // SAFETY: p lives across the ring's use.
        let mut r = unsafe { ConsoleRing::new(&mut *p) };
        assert_eq!(r.write(b"hello"), 0);
    }

    proptest! {
        #[test]
        fn bytes_arrive_in_order_across_wraparound(
            start in prop_oneof![Just(u32::MAX - 100), any::<u32>()],
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..700), 1..20),
        ) {
            let mut p = page(start);
            let pp: *mut XenconsInterface = &mut *p;
            // SAFETY: p lives across the ring's use.
            let mut r = unsafe { ConsoleRing::new(pp) };
            let mut sent = alloc::vec::Vec::new();
            let mut got = alloc::vec::Vec::new();
            for c in &chunks {
                let mut rest = &c[..];
                while !rest.is_empty() {
                    let n = r.write(rest);
                    sent.extend_from_slice(&rest[..n]);
                    rest = &rest[n..];
                    // SAFETY: single-threaded test; the "consumer" runs between writes.
                    got.extend(drain(unsafe { &mut *pp }));
                }
            }
            prop_assert_eq!(got, sent);
        }
    }
}
