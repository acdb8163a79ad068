//! The mapper's `bench` command: unmap and map every page again, [`BENCH_ROUNDS`] times,
//! with hypercalls of [`MAX_BATCH`] pages and of one page, and report the mean time per
//! hypercall (`bench/batch-<n>/{map,unmap}-us`). And `churn`: the same without end (one
//! round per tick, the emptied device subsections removed each time) until `still`, so
//! the device window's memmap changes under whoever walks it.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use xen_bindings::abi::grant_table::{GnttabMapGrantRef, GnttabUnmapGrantRef};
use xen_bindings::traits::{Clock, Gfn, GrantOps};
use xen_bindings::Errno;

use super::super::protocol::publish;
use super::super::{Env, Kit, PairState};
use super::Mapper;
use crate::xen::grant::{ForeignMapper, MAX_BATCH};

/// Rounds of the mapper's `bench` command.
pub const BENCH_ROUNDS: u32 = 20;

/// Where a churn round is (see [`Mapper::churn_step`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ChurnPhase {
    Unmap,
    Shrink,
    Map,
}

/// A churning mapper looks at xenstore (its peer, a command) every this many rounds.
pub(super) const CHURN_CHECK_ROUNDS: u64 = 16;

/// How often a churning mapper publishes `churn-rounds`.
const CHURN_PUBLISH_NS: u64 = 1_000_000_000;

pub(super) fn bench_key(batch: usize, what: &str) -> String {
    format!("bench/batch-{batch}/{what}")
}

/// The median of `v` (the upper one of an even count; 0 when empty).
fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// The grant hypercalls with a stopwatch: the bench splits each map/unmap into Xen's
/// time (inside `GNTTABOP_*`) and ours (the memory model, slots, the loop).
struct TimedGrants<'a, G, C> {
    inner: &'a mut G,
    clock: &'a C,
    /// Nanoseconds inside map / unmap hypercalls.
    map_ns: u64,
    unmap_ns: u64,
}

impl<G: GrantOps, C: Clock> GrantOps for TimedGrants<'_, G, C> {
    fn query_size(&mut self) -> Result<(u32, u32), Errno> {
        self.inner.query_size()
    }

    fn add_table_frame(&mut self, idx: u32, gfn: Gfn) -> Result<(), Errno> {
        self.inner.add_table_frame(idx, gfn)
    }

    fn map_grant_refs(&mut self, ops: &mut [GnttabMapGrantRef]) -> Result<(), Errno> {
        let t0 = self.clock.now_ns();
        let r = self.inner.map_grant_refs(ops);
        self.map_ns += self.clock.now_ns().saturating_sub(t0);
        r
    }

    fn unmap_grant_refs(&mut self, ops: &mut [GnttabUnmapGrantRef]) -> Result<(), Errno> {
        let t0 = self.clock.now_ns();
        let r = self.inner.unmap_grant_refs(ops);
        self.unmap_ns += self.clock.now_ns().saturating_sub(t0);
        r
    }
}

/// One batch size's result of the `bench` command: microseconds per hypercall in the
/// median round, all of it and the part inside Xen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct BenchRow {
    pub batch: usize,
    pub map_us: u64,
    pub unmap_us: u64,
    pub map_xen_us: u64,
    pub unmap_xen_us: u64,
}

impl Mapper {
    /// `bench`: unmap and map all pages again, `rounds` times with batches of
    /// [`MAX_BATCH`] and then one page per hypercall. Returns microseconds per
    /// hypercall, in all and inside Xen, from the median round (a round that dom0 or
    /// another guest preempted does not move it; `gntdev-bench` does the same for the
    /// Linux baseline); the pages are mapped again afterwards.
    pub(super) fn bench<K: Kit>(
        &mut self,
        mapper: &mut ForeignMapper,
        env: &mut Env<'_, K>,
        rounds: u32,
    ) -> Result<Vec<BenchRow>, String> {
        let mut out = Vec::new();
        for batch in [MAX_BATCH, 1] {
            let calls = self.refs.len().div_ceil(batch).max(1) as u64;
            // Per round: [map, unmap, map in Xen, unmap in Xen] nanoseconds.
            let mut per_round: [Vec<u64>; 4] = Default::default();
            let mut gnt = TimedGrants {
                inner: &mut *env.gnt,
                clock: env.ev,
                map_ns: 0,
                unmap_ns: 0,
            };
            for _ in 0..rounds {
                let (xm0, xu0) = (gnt.map_ns, gnt.unmap_ns);
                let t0 = env.ev.now_ns();
                let left = self.unmap_all(mapper, env.mm, &mut gnt, batch);
                let t1 = env.ev.now_ns();
                if left != 0 {
                    return Err(format!("bench: {left} pages stayed mapped"));
                }
                self.map_all(mapper, env.mm, &mut gnt, batch)?;
                let t2 = env.ev.now_ns();
                for (v, ns) in per_round.iter_mut().zip([
                    t2 - t1,
                    t1 - t0,
                    gnt.map_ns - xm0,
                    gnt.unmap_ns - xu0,
                ]) {
                    v.push(ns);
                }
            }
            let [map, unmap, map_xen, unmap_xen] = per_round.map(|v| median(v) / calls / 1000);
            out.push(BenchRow {
                batch,
                map_us: map,
                unmap_us: unmap,
                map_xen_us: map_xen,
                unmap_xen_us: unmap_xen,
            });
        }
        Ok(out)
    }

    /// One phase of a `churn` round, a tick each (the kernel lets the walkers run
    /// between ticks): unmap every page; remove the device subsections that emptied
    /// (inactive, grace period, memmap freed); map every page again into fresh ones.
    /// True when a round ended. A failure ends the churn with `churn/error`, and the
    /// pair `Failed` if pages are lost.
    pub(super) fn churn_step<K: Kit>(
        &mut self,
        mapper: &mut ForeignMapper,
        env: &mut Env<'_, K>,
    ) -> bool {
        let t0 = env.ev.now_ns();
        let phase = self.churn_phase;
        let r = match phase {
            ChurnPhase::Unmap => match self.unmap_all(mapper, env.mm, env.gnt, MAX_BATCH) {
                0 => Ok(ChurnPhase::Shrink),
                left => Err(format!("churn: {left} pages stayed mapped")),
            },
            ChurnPhase::Shrink => {
                mapper.shrink(env.mm);
                Ok(ChurnPhase::Map)
            }
            ChurnPhase::Map => self
                .map_all(mapper, env.mm, env.gnt, MAX_BATCH)
                .map(|()| ChurnPhase::Unmap),
        };
        let now = env.ev.now_ns();
        self.churn_ns += now.saturating_sub(t0);
        match r {
            Ok(next) => self.churn_phase = next,
            Err(e) => {
                log::error!("grant-test: {e}");
                self.churning = false;
                self.churn_phase = ChurnPhase::Unmap;
                let _ = publish(
                    env.xs,
                    &[
                        ("churn/error", e.clone()),
                        ("churning", "0".into()),
                        ("mapped", format!("{}", self.slots.len())),
                    ],
                );
                if self.slots.len() != self.refs.len() {
                    self.fail(env.xs, e);
                }
                return false;
            }
        }
        if phase != ChurnPhase::Map {
            return false;
        }
        self.churn_rounds += 1;
        if now.saturating_sub(self.churn_published_ns) >= CHURN_PUBLISH_NS {
            self.churn_published_ns = now;
            let _ = publish(
                env.xs,
                &[("churn-rounds", format!("{}", self.churn_rounds))],
            );
        }
        true
    }

    /// `still`: churn off; the pages are verified and the round count published.
    pub(super) fn still<K: Kit>(&mut self, env: &mut Env<'_, K>) {
        self.churning = false;
        let (wrong, _) = self.verify(env);
        log::info!(
            "grant-test: still after {} churn rounds ({} us each); {} pages mapped, {wrong} wrong",
            self.churn_rounds,
            self.churn_ns / self.churn_rounds.max(1) / 1000,
            self.slots.len()
        );
        debug_assert_eq!(self.state, PairState::Mapped);
        let _ = publish(
            env.xs,
            &[
                ("churn-rounds", format!("{}", self.churn_rounds)),
                (
                    "churn-us-per-round",
                    format!("{}", self.churn_ns / self.churn_rounds.max(1) / 1000),
                ),
                ("churning", "0".into()),
                ("pattern-errors", format!("{wrong}")),
                ("mapped", format!("{}", self.slots.len())),
                ("command", String::new()),
            ],
        );
    }
}
