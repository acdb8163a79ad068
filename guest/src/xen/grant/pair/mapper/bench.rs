//! The mapper's `bench` command: unmap and map every page again, [`BENCH_ROUNDS`] times,
//! with hypercalls of [`MAX_BATCH`] pages and of one page, and report the mean time per
//! hypercall (`bench/batch-<n>/{map,unmap}-us`).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use xen_bindings::traits::Clock;

use super::super::{Env, Kit};
use super::Mapper;
use crate::xen::grant::{ForeignMapper, MAX_BATCH};

/// Rounds of the mapper's `bench` command.
pub const BENCH_ROUNDS: u32 = 20;

pub(super) fn bench_key(batch: usize, what: &str) -> String {
    format!("bench/batch-{batch}/{what}")
}

impl Mapper {
    /// `bench`: unmap and map all pages again, `rounds` times with batches of
    /// [`MAX_BATCH`] and then one page per hypercall. Returns the mean microseconds per
    /// hypercall as `[(batch, map_us, unmap_us)]`; the pages are mapped again afterwards.
    pub(super) fn bench<K: Kit>(
        &mut self,
        mapper: &mut ForeignMapper,
        env: &mut Env<'_, K>,
        rounds: u32,
    ) -> Result<Vec<(usize, u64, u64)>, String> {
        let mut out = Vec::new();
        for batch in [MAX_BATCH, 1] {
            let calls = (self.refs.len().div_ceil(batch) as u64 * u64::from(rounds)).max(1);
            let (mut map_ns, mut unmap_ns) = (0, 0);
            for _ in 0..rounds {
                let t0 = env.ev.now_ns();
                let left = self.unmap_all(mapper, env, batch);
                let t1 = env.ev.now_ns();
                if left != 0 {
                    return Err(format!("bench: {left} pages stayed mapped"));
                }
                self.map_all(mapper, env, batch)?;
                map_ns += env.ev.now_ns() - t1;
                unmap_ns += t1 - t0;
            }
            out.push((batch, map_ns / calls / 1000, unmap_ns / calls / 1000));
        }
        Ok(out)
    }
}
