//! `scripts/bench`: one table — ours, the Linux peer, the floor — from one Xen run.
//!
//! ```text
//! xenci bench --nonce-file FILE --serial FILE --json OUT [--markdown OUT]
//! xenci bench-readme JSON README [PREV-JSON]
//! ```
//! The first judges the bench scenarios of the run (the same verdict rules as `xenci
//! verdict`: only markers carrying the run's nonce count), takes their measurements
//! (`XENCI INFO` key=value), and prints the table, writing it as JSON (and Markdown). The
//! second replaces the block between `<!-- bench:begin -->` and `<!-- bench:end -->` in
//! README with the Markdown table made from the JSON: the README's numbers are generated,
//! never typed.
//!
//! Nothing here judges performance: the goals of issue 13 are shown beside the measured
//! values, met or not, and nothing fails because of a number.

use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::Verdict;

/// The scenarios `scripts/bench` runs, in order (one Xen boot).
pub const SCENARIOS: &[&str] = &[
    "bench-boot",
    "bench-boot@linux",
    "balloon-bench",
    "balloon-bench@linux",
    "balloon-sizes",
    "hotplug-bench",
    "hotplug-bench@linux",
    "grant-bench",
    "save-bench",
    "save-bench@linux",
];

/// The steps of balloon-sizes (scripts/dom0/scenarios/balloon-sizes.sh): MiB, extents.
const SIZE_SWEEP_MIB: [(u64, &str); 7] = [
    (1, "256 order-0"),
    (2, "1 order-9"),
    (8, "4 order-9"),
    (64, "32 order-9"),
    (128, "64 order-9"),
    (256, "128 order-9"),
    (512, "256 order-9"),
];

/// How the rows of the size sweep's steps begin.
const SIZE_STEP_ROW: &str = "step of ";

/// Every value reported as `key=<number>` by `scenario` (repeats in order).
pub fn values(verdicts: &[Verdict], scenario: &str, key: &str) -> Vec<f64> {
    let Some(v) = verdicts.iter().find(|v| v.name == scenario) else {
        return Vec::new();
    };
    v.info
        .iter()
        .flat_map(|line| line.split_whitespace())
        .filter_map(|t| t.split_once('='))
        .filter(|(k, _)| *k == key)
        .filter_map(|(_, x)| x.parse::<f64>().ok())
        .collect()
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

fn max(v: &[f64]) -> Option<f64> {
    v.iter().copied().reduce(f64::max)
}

/// One line of the table.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub section: &'static str,
    pub measure: String,
    pub unit: &'static str,
    pub ours: Option<f64>,
    pub linux: Option<f64>,
    /// The physical limit as measured in the same run (what Xen/`xl` cost on their own).
    pub floor: Option<f64>,
    /// How the numbers were taken.
    pub how: &'static str,
}

impl Row {
    pub fn linux_over_ours(&self) -> Option<f64> {
        ratio(self.linux, self.ours)
    }
    pub fn ours_over_floor(&self) -> Option<f64> {
        ratio(self.ours, self.floor)
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// A goal of issue 13 beside what was measured.
#[derive(Clone, Debug, PartialEq)]
pub struct Goal {
    pub goal: &'static str,
    pub target: String,
    pub measured: Option<f64>,
    pub unit: &'static str,
    /// Whether the measured value meets the target (`None`: not measured).
    pub met: Option<bool>,
}

/// Everything `scripts/bench` reports.
#[derive(Clone, Debug, PartialEq)]
pub struct Bench {
    pub rows: Vec<Row>,
    pub goals: Vec<Goal>,
    /// (scenario, PASS/FAIL/SKIP, reason)
    pub scenarios: Vec<(String, String, String)>,
}

#[allow(clippy::too_many_arguments)]
fn row(
    section: &'static str,
    measure: &str,
    unit: &'static str,
    ours: Option<f64>,
    linux: Option<f64>,
    floor: Option<f64>,
    how: &'static str,
) -> Row {
    Row {
        section,
        measure: measure.to_string(),
        unit,
        ours,
        linux,
        floor,
        how,
    }
}

/// Builds the table from the run's verdicts.
pub fn build(verdicts: &[Verdict]) -> Bench {
    let v = |s: &str, k: &str| values(verdicts, s, k);
    let mut rows = Vec::new();

    // Boot. Xen-stamped times: from the Xen console stamp of an `xl debug-keys` line
    // written just before `xl create` to the stamp of the kernel's first / ready line on
    // port 0xE9 (`(dN) ...`). Polled: dom0's clock, console log read every 0.05 s.
    let nothing_first = median(&v("bench-boot", "nothing_first_output_secs"));
    rows.push(row(
        "boot",
        "xl create -> first output (0xE9)",
        "s",
        median(&v("bench-boot", "first_output_secs")),
        None,
        nothing_first,
        "Xen's console stamps; floor: the do-nothing PVH kernel; median of the runs",
    ));
    rows.push(row(
        "boot",
        "xl create -> ready (0xE9)",
        "s",
        median(&v("bench-boot", "ready_xen_secs")),
        None,
        nothing_first,
        "Xen's console stamps; floor: the do-nothing kernel's first output",
    ));
    rows.push(row(
        "boot",
        "first output -> ready (0xE9)",
        "s",
        median(&v("bench-boot", "first_to_ready_secs")),
        None,
        None,
        "Xen's console stamps of the kernel's first and ready lines",
    ));
    rows.push(row(
        "boot",
        "guest's own clock: first instruction -> ready",
        "ms",
        median(&v("bench-boot", "guest_tsc_boot_ms")),
        None,
        None,
        "its TSC from kernel_main's first instruction to ready (kernel/boottime.rs); median of the runs",
    ));
    rows.push(row(
        "boot",
        "  of which vCPU 0 on a CPU / waiting for it",
        "ms",
        median(&v("bench-boot", "guest_running_ms")),
        None,
        median(&v("bench-boot", "guest_runnable_ms")),
        "Xen's runstate account of vCPU 0 at ready (VCPUOP_get_runstate_info); floor column: time it waited for the one CPU (dom0's xl and daemons)",
    ));
    rows.push(row(
        "boot",
        "guest's own clock, created paused and unpaused once xl is idle",
        "ms",
        median(&v("bench-boot", "paused_guest_tsc_boot_ms")),
        None,
        None,
        "the same boot without the toolstack's post-create work competing for the one CPU (xl create -p, xl unpause 1 s after xl waits for the domain's death); median of the runs",
    ));
    rows.push(row(
        "boot",
        "  of which vCPU 0 on a CPU / waiting for it (paused start)",
        "ms",
        median(&v("bench-boot", "paused_guest_running_ms")),
        None,
        median(&v("bench-boot", "paused_guest_runnable_ms")),
        "as above, for the boots created paused",
    ));
    rows.push(row(
        "boot",
        "xl create -> first console byte",
        "s",
        median(&v("bench-boot", "console_first_secs")),
        median(&v("bench-boot@linux", "console_first_secs")),
        None,
        "dom0 polls the PV console log every 0.05 s",
    ));
    rows.push(row(
        "boot",
        "xl create -> ready (ours: 0xE9 stamp; Linux: console log)",
        "s",
        median(&v("bench-boot", "ready_xen_secs")),
        median(&v("bench-boot@linux", "ready_secs")),
        None,
        "ours: Xen's stamp of its ready line (dom0 stays idle while it boots, so nothing polls); Linux: dom0 polls the console log for its init's ready line (userspace)",
    ));

    // Balloon. Floor of a step: `xl mem-set` to the current target, measured in the run
    // (the wait is already polling when `xl mem-set` starts, so it adds at most one poll
    // interval, 10 ms).
    let memset = mean(&v("balloon-bench", "memset_floor_secs"));
    let step_floor = memset;
    let swing_floor = step_floor.map(|f| 2.0 * f);
    let b = "balloon-bench";
    let bl = "balloon-bench@linux";
    rows.push(row(
        "balloon",
        "1024 -> 256 MiB (mean of swings)",
        "s",
        mean(&v(b, "mean_down_secs")),
        mean(&v(bl, "mean_down_secs")),
        step_floor,
        "xl mem-set -> Xen's tot_pages within 1 MiB (xen-dominfo: getdomaininfo every 10 ms); floor: xl mem-set to the current target",
    ));
    rows.push(row(
        "balloon",
        "256 -> 1024 MiB (mean of swings)",
        "s",
        mean(&v(b, "mean_up_secs")),
        mean(&v(bl, "mean_up_secs")),
        step_floor,
        "as above",
    ));
    rows.push(row(
        "balloon",
        "swing 1024 -> 256 -> 1024 MiB",
        "s",
        mean(&v(b, "mean_swing_secs")),
        mean(&v(bl, "mean_swing_secs")),
        swing_floor,
        "down + up",
    ));
    rows.push(row(
        "balloon",
        "xl mem-set alone (to the current target)",
        "s",
        memset,
        None,
        None,
        "dom0's clock around the command",
    ));
    rows.push(row(
        "balloon",
        "1024 -> 256 MiB, the 768 MiB written and freed first (ours zeroes it)",
        "s",
        mean(&v(b, "dirty_down_secs")),
        mean(&v(bl, "mean_down_secs")),
        step_floor,
        "one step of a guest booted with fill=MARKER:768; Linux zeroes every ballooned page anyway (xen_scrub_pages): its mean step down",
    ));
    rows.push(row(
        "balloon",
        "  of which zeroing, on the guest's clock",
        "ms",
        mean(&v(b, "dirty_down_guest_scrub_ms")),
        None,
        None,
        "data/balloon/step/scrub-us",
    ));
    for dir in ["down", "up"] {
        let total = mean(&v(b, &format!("{dir}_guest_total_ms")));
        let hyper = mean(&v(b, &format!("{dir}_guest_hypercall_ms")));
        let outside = mean(&v(b, &format!("{dir}_guest_outside_ms")));
        let outside_cpu = mean(&v(b, &format!("{dir}_guest_outside_cpu_ms")));
        rows.push(row(
            "balloon",
            &format!("guest step {dir}: total / in hypercalls"),
            "ms",
            total,
            None,
            hyper,
            "the guest's clock (data/balloon/step/); floor column: time inside populate_physmap / decrease_reservation (Xen's work)",
        ));
        rows.push(row(
            "balloon",
            &format!("guest step {dir}: outside hypercalls"),
            "ms",
            outside,
            None,
            None,
            "ours: memmap updates, batch building, the event loop; wall time, so also while dom0 had the CPU",
        ));
        rows.push(row(
            "balloon",
            &format!("guest step {dir}: outside hypercalls, on the CPU"),
            "ms",
            outside_cpu,
            None,
            None,
            "the same on Xen's runstate account of the vCPU: its own work, waiting for the CPU excluded",
        ));
    }
    let calls = v(b, "hypercalls").first().copied();
    let swings = v(b, "swings").first().copied();
    let per_gib = calls.zip(swings).map(|(c, s)| c / (1.5 * s));
    rows.push(row(
        "balloon",
        "reservation hypercalls per GiB moved",
        "calls",
        per_gib,
        None,
        None,
        "data/balloon/hypercalls over the swings (1.5 GiB each); Linux: order-0 extents, >= 512 per GiB (not visible from dom0)",
    ));
    let mut per_step = v(b, "down_guest_hypercalls");
    per_step.extend(v(b, "up_guest_hypercalls"));
    rows.push(row(
        "balloon",
        "reservation hypercalls per 768 MiB step (most)",
        "calls",
        max(&per_step),
        None,
        Some(1.0),
        "data/balloon/step/hypercalls; floor: one call (a step moves less than 1 GiB)",
    ));
    // Step sizes (balloon-sizes): how the guest's share of a step grows as the step
    // shrinks — Xen's work is per page, part of ours per step. The boot's first step of a
    // kind apart: under TCG it pays for translating code not run before.
    for (key, what) in [
        (
            "cold1023",
            "first 1 MiB step down of the boot (256 order-0; cold code)",
        ),
        (
            "coldu1023",
            "first 1 MiB step up of the boot (256 order-0; cold code)",
        ),
    ] {
        let ms = v("balloon-sizes", &format!("{key}_guest_outside_cpu_ms"));
        let total = v("balloon-sizes", &format!("{key}_guest_total_ms"));
        rows.push(row(
            "balloon",
            &format!("{what}: outside hypercalls, on the CPU"),
            "ms",
            ms.first().copied(),
            None,
            None,
            "balloon-sizes: the same step repeated later costs what the sweep's 1 MiB rows show; the difference is QEMU translating code this boot had not run",
        ));
        rows.push(row(
            "balloon",
            &format!("{what}: whole step"),
            "ms",
            total.first().copied(),
            None,
            None,
            "the guest's clock",
        ));
    }
    for (mib, pages) in SIZE_SWEEP_MIB {
        for (dir, key) in [("down", 'd'), ("up", 'u')] {
            let k = |what: &str| format!("{key}{}_guest_{what}", 1024 - mib);
            let pm = v("balloon-sizes", &k("outside_cpu_permille"));
            rows.push(row(
                "balloon",
                &format!("{SIZE_STEP_ROW}{mib} MiB {dir} ({pages}): outside hypercalls, on the CPU"),
                "%",
                median(&pm).map(|p| p / 10.0),
                None,
                None,
                "balloon-sizes: 1024 MiB -> 1024 - size -> 1024, median of three rounds; the guest's own split (data/balloon/step/), share of the step's wall time",
            ));
        }
    }

    // Hotplug: boot 256, mem-max 1024.
    for (key, what) in [
        ("add_secs", "256 -> 768 MiB (hot-add)"),
        ("down_secs", "768 -> 192 MiB"),
        ("readd_secs", "192 -> 768 MiB"),
    ] {
        rows.push(row(
            "hotplug",
            what,
            "s",
            mean(&v("hotplug-bench", key)),
            mean(&v("hotplug-bench@linux", key)),
            step_floor,
            "xl mem-set -> Xen's tot_pages within 1 MiB; floor as for the balloon",
        ));
    }
    let h = "hotplug-bench";
    for step in ["add", "readd"] {
        rows.push(row(
            "hotplug",
            &format!("guest step {step}: total / in hypercalls"),
            "ms",
            mean(&v(h, &format!("{step}_guest_total_ms"))),
            None,
            mean(&v(h, &format!("{step}_guest_hypercall_ms"))),
            "the guest's clock; floor column: time inside populate_physmap (Xen's work)",
        ));
        rows.push(row(
            "hotplug",
            &format!("guest step {step}: outside hypercalls, on the CPU"),
            "ms",
            mean(&v(h, &format!("{step}_guest_outside_cpu_ms"))),
            None,
            None,
            "Xen's runstate account of the vCPU; of which the hot-add's phases below",
        ));
        for (phase, what) in [
            ("refill", "memmap storage taken"),
            ("build", "sections built (memmap filled, active, online)"),
            ("map", "page tables"),
            ("adopt", "adopted by the balloon (Offline check)"),
        ] {
            rows.push(row(
                "hotplug",
                &format!("  {step} hot-add: {what}"),
                "ms",
                mean(&v(h, &format!("{step}_hotadd_{phase}_ms"))),
                None,
                None,
                "data/hotplug/last-add/ (CPU time); none if the step needed no hot-add",
            ));
        }
    }

    // Grants: per call, the median of 20 rounds; ours = a PVH guest of ours mapping a peer's grants;
    // Linux = the Linux peer, a PVH domU like ours, through its /dev/xen/gntdev (the fair
    // baseline); the same rows again with dom0 (PV) through gntdev as the Linux column.
    let g = "grant-bench";
    // Floor: ours' own time inside GNTTABOP_{map,unmap}_grant_ref, i.e. Xen's work.
    let per_page = |k: &str| mean(&v(g, k)).map(|x| x / 64.0);
    for (linux, suffix, how) in [
        (
            "linux_domu_",
            "",
            "Linux column: the Linux peer (PVH domU) through /dev/xen/gntdev; floor: ours' time inside the hypercall (Xen's work)",
        ),
        (
            "linux_",
            " (Linux: dom0)",
            "Linux column: dom0 (PV) through /dev/xen/gntdev; floor: ours' time inside the hypercall",
        ),
    ] {
        rows.push(row(
            "grants",
            &format!("map 64 pages in one call, per page{suffix}"),
            "us",
            per_page("batch64_map_us"),
            per_page(&format!("{linux}batch64_map_us")),
            per_page("batch64_map_xen_us"),
            how,
        ));
        rows.push(row(
            "grants",
            &format!("unmap 64 pages in one call, per page{suffix}"),
            "us",
            per_page("batch64_unmap_us"),
            per_page(&format!("{linux}batch64_unmap_us")),
            per_page("batch64_unmap_xen_us"),
            how,
        ));
        rows.push(row(
            "grants",
            &format!("map 1 page{suffix}"),
            "us",
            mean(&v(g, "batch1_map_us")),
            mean(&v(g, &format!("{linux}batch1_map_us"))),
            mean(&v(g, "batch1_map_xen_us")),
            how,
        ));
        rows.push(row(
            "grants",
            &format!("unmap 1 page{suffix}"),
            "us",
            mean(&v(g, "batch1_unmap_us")),
            mean(&v(g, &format!("{linux}batch1_unmap_us"))),
            mean(&v(g, "batch1_unmap_xen_us")),
            how,
        ));
    }

    // Save / restore of an idle 256 MiB domain.
    let s = "save-bench";
    let sl = "save-bench@linux";
    for (key, what, unit) in [
        (
            "hb_on_save_secs",
            "xl save (ours: free memory handed back)",
            "s",
        ),
        ("hb_on_image_bytes", "save image (ours: handed back)", "MiB"),
        ("hb_on_restore_secs", "xl restore", "s"),
        ("hb_off_save_secs", "xl save, ours without hand-back", "s"),
        (
            "hb_off_image_bytes",
            "save image, ours without hand-back",
            "MiB",
        ),
    ] {
        let scale = |x: f64| if unit == "MiB" { x / 1048576.0 } else { x };
        let linux = if key.starts_with("hb_on") {
            mean(&v(sl, key)).map(scale)
        } else {
            None
        };
        // Floor: the same for the smallest domain that can be saved (ours, 32 MiB, handing
        // all but a few MiB back): the toolstack's own cost.
        let floor = key
            .strip_prefix("hb_on_")
            .and_then(|k| mean(&v(s, &format!("small_{k}"))))
            .map(scale);
        rows.push(row(
            "save",
            what,
            unit,
            mean(&v(s, key)).map(scale),
            linux,
            floor,
            "idle memory=maxmem=256 domain; dom0's clock around xl; floor: ours at memory=maxmem=32",
        ));
    }

    let goals = goals(&rows, verdicts);
    let scenarios = verdicts
        .iter()
        .map(|v| {
            (
                v.name.clone(),
                v.status.as_str().to_string(),
                v.reason.clone(),
            )
        })
        .collect();
    Bench {
        rows,
        goals,
        scenarios,
    }
}

fn find<'a>(rows: &'a [Row], measure: &str) -> Option<&'a Row> {
    rows.iter().find(|r| r.measure == measure)
}

fn goals(rows: &[Row], verdicts: &[Verdict]) -> Vec<Goal> {
    let mut g = Vec::new();
    // A step of 768 MiB needs one call at best: calls per started GiB of the step.
    let per_step =
        find(rows, "reservation hypercalls per 768 MiB step (most)").and_then(|r| r.ours);
    g.push(Goal {
        goal: "balloon: reservation hypercalls per started GiB of a step (worst step)",
        target: "<= 1".into(),
        measured: per_step,
        unit: "calls",
        met: per_step.map(|x| x <= 1.0),
    });
    // Worst step: the largest outside share of any timed step, per thousand of the step's
    // wall time. On the CPU (Xen's runstate account): the guest's own work. On the wall
    // clock: also the time it waited while dom0 (xl, xenstored, the bench's polls) ran.
    let worst = |scenario: &str, steps: &[&str], key: &str| {
        let mut all: Vec<f64> = Vec::new();
        for step in steps {
            let k = format!("{step}_guest_{key}");
            all.extend(values(verdicts, scenario, &k).iter().map(|p| p / 10.0));
        }
        max(&all)
    };
    let balloon_steps = ["down", "up"];
    let hotplug_steps = ["add", "down", "readd"];
    for (goal, scenario, steps, key) in [
        (
            "balloon: guest CPU time outside hypercalls, worst balloon step",
            "balloon-bench",
            &balloon_steps[..],
            "outside_cpu_permille",
        ),
        (
            "balloon: the same on the wall clock (with waiting for the CPU)",
            "balloon-bench",
            &balloon_steps[..],
            "outside_permille",
        ),
        (
            "hotplug: guest CPU time outside hypercalls, worst step (hot-add included)",
            "hotplug-bench",
            &hotplug_steps[..],
            "outside_cpu_permille",
        ),
    ] {
        let w = worst(scenario, steps, key);
        g.push(Goal {
            goal,
            target: "<= 5 %".into(),
            measured: w,
            unit: "%",
            met: w.map(|x| x <= 5.0),
        });
    }
    // The size sweep: the worst of its rows (each a step's median over the rounds).
    let sweep: Vec<f64> = rows
        .iter()
        .filter(|r| r.measure.starts_with(SIZE_STEP_ROW))
        .filter_map(|r| r.ours)
        .collect();
    let w = max(&sweep);
    g.push(Goal {
        goal: "balloon: the same, worst step of the size sweep (1 to 512 MiB, medians)",
        target: "<= 5 %".into(),
        measured: w,
        unit: "%",
        met: w.map(|x| x <= 5.0),
    });
    let swing = find(rows, "swing 1024 -> 256 -> 1024 MiB").and_then(|r| r.linux_over_ours());
    g.push(Goal {
        goal: "balloon: swing, Linux / ours",
        target: ">= 6x".into(),
        measured: swing,
        unit: "x",
        met: swing.map(|x| x >= 6.0),
    });
    // The first 0xE9 line comes from the first Rust code after the entry stub: Xen's
    // stamps of it and of the ready line are the guest's own boot time.
    let boot = find(rows, "guest's own clock: first instruction -> ready").and_then(|r| r.ours);
    g.push(Goal {
        goal: "boot: first instruction -> ready, guest's own clock",
        target: "<= 50 ms".into(),
        measured: boot,
        unit: "ms",
        met: boot.map(|x| x <= 50.0),
    });
    let quiet = find(
        rows,
        "guest's own clock, created paused and unpaused once xl is idle",
    )
    .and_then(|r| r.ours);
    g.push(Goal {
        goal: "boot: the same, created paused (no xl work competing)",
        target: "<= 50 ms".into(),
        measured: quiet,
        unit: "ms",
        met: quiet.map(|x| x <= 50.0),
    });
    let xen_boot = find(rows, "first output -> ready (0xE9)").and_then(|r| r.ours);
    g.push(Goal {
        goal: "boot: the same on Xen's stamps (first output -> ready)",
        target: "<= 0.050 s".into(),
        measured: xen_boot,
        unit: "s",
        met: xen_boot.map(|x| x <= 0.050),
    });
    let ready = find(rows, "xl create -> ready (0xE9)").and_then(|r| r.ours_over_floor());
    g.push(Goal {
        goal: "boot: xl create -> ready / do-nothing's first output",
        target: "<= 1.3x".into(),
        measured: ready,
        unit: "x",
        met: ready.map(|x| x <= 1.3),
    });
    let m64 = find(rows, "map 64 pages in one call, per page");
    let m64r = m64.and_then(|r| ratio(r.ours, r.linux));
    g.push(Goal {
        goal: "grants: 64-page map per page, ours / Linux (PVH domU gntdev)",
        target: "<= 1x".into(),
        measured: m64r,
        unit: "x",
        met: m64r.map(|x| x <= 1.0),
    });
    let m1 = find(rows, "map 1 page").and_then(|r| ratio(r.ours, r.linux));
    g.push(Goal {
        goal: "grants: 1-page map, ours / Linux (PVH domU gntdev)",
        target: "<= 0.5x".into(),
        measured: m1,
        unit: "x",
        met: m1.map(|x| x <= 0.5),
    });
    // Issue 15's goals for the idle 256 MiB domain, and what the toolstack leaves
    // possible: Linux's save + restore over the smallest domain's (the floor).
    let save = find(rows, "xl save (ours: free memory handed back)");
    let restore = find(rows, "xl restore");
    let sum = |f: fn(&Row) -> Option<f64>| {
        save.and_then(f)
            .zip(restore.and_then(f))
            .map(|(a, b)| a + b)
    };
    let ours = sum(|r| r.ours);
    let linux = sum(|r| r.linux);
    let floor = sum(|r| r.floor);
    let sr = ratio(linux, ours);
    g.push(Goal {
        goal: "save: xl save + xl restore, Linux / ours",
        target: ">= 5x".into(),
        measured: sr,
        unit: "x",
        met: sr.map(|x| x >= 5.0),
    });
    let best = ratio(linux, floor);
    g.push(Goal {
        goal: "save: the same for the smallest domain (the toolstack's floor)",
        target: ">= 5x".into(),
        measured: best,
        unit: "x",
        met: best.map(|x| x >= 5.0),
    });
    let img = find(rows, "save image (ours: handed back)").and_then(|r| ratio(r.ours, r.linux));
    let img = img.map(|x| x * 100.0);
    g.push(Goal {
        goal: "save: image, ours / Linux",
        target: "<= 10 %".into(),
        measured: img,
        unit: "%",
        met: img.map(|x| x <= 10.0),
    });
    g
}

fn num(x: Option<f64>, unit: &str) -> String {
    match x {
        None => "-".into(),
        Some(x) if unit == "calls" || unit == "%" => format!("{x:.2}"),
        Some(x) if x >= 100.0 => format!("{x:.0}"),
        Some(x) if x >= 10.0 => format!("{x:.1}"),
        Some(x) if unit == "s" => format!("{x:.3}"),
        Some(x) => format!("{x:.2}"),
    }
}

fn times(x: Option<f64>) -> String {
    x.map_or("-".into(), |x| format!("{x:.2}x"))
}

/// The table as plain text (what `scripts/bench` prints).
pub fn text(b: &Bench) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<8} {:<50} {:>5} {:>9} {:>9} {:>9} {:>10} {:>11}",
        "", "measure", "unit", "ours", "linux", "floor", "linux/ours", "ours/floor"
    );
    for r in &b.rows {
        let _ = writeln!(
            s,
            "{:<8} {:<50} {:>5} {:>9} {:>9} {:>9} {:>10} {:>11}",
            r.section,
            r.measure,
            r.unit,
            num(r.ours, r.unit),
            num(r.linux, r.unit),
            num(r.floor, r.unit),
            times(r.linux_over_ours()),
            times(r.ours_over_floor())
        );
    }
    let _ = writeln!(s, "\ngoals (issues 13 and 15):");
    for g in &b.goals {
        let met = match g.met {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "not measured",
        };
        let _ = writeln!(
            s,
            "  {:<70} {:>9} {:<4} target {:<11} {}",
            g.goal,
            num(g.measured, g.unit),
            g.unit,
            g.target,
            met
        );
    }
    let bad: Vec<_> = b
        .scenarios
        .iter()
        .filter(|(_, st, _)| st != "PASS")
        .collect();
    if !bad.is_empty() {
        let _ = writeln!(
            s,
            "\nscenarios not passed (their numbers are missing or partial):"
        );
        for (n, st, why) in bad {
            let _ = writeln!(s, "  {n} {st} {why}");
        }
    }
    s
}

/// The table as JSON (the source of the README's table).
pub fn to_json(b: &Bench, meta: Value) -> Value {
    let rows: Vec<Value> = b
        .rows
        .iter()
        .map(|r| {
            json!({
                "section": r.section,
                "measure": r.measure,
                "unit": r.unit,
                "ours": r.ours,
                "linux": r.linux,
                "floor": r.floor,
                "linux_over_ours": r.linux_over_ours(),
                "ours_over_floor": r.ours_over_floor(),
                "how": r.how,
            })
        })
        .collect();
    let goals: Vec<Value> = b
        .goals
        .iter()
        .map(|g| {
            json!({
                "goal": g.goal,
                "target": g.target,
                "measured": g.measured,
                "unit": g.unit,
                "met": g.met,
            })
        })
        .collect();
    let scenarios: Vec<Value> = b
        .scenarios
        .iter()
        .map(|(n, s, r)| json!({"name": n, "status": s, "reason": r}))
        .collect();
    json!({ "meta": meta, "rows": rows, "goals": goals, "scenarios": scenarios })
}

fn jnum(v: &Value, unit: &str) -> String {
    num(v.as_f64(), unit)
}

fn jtimes(v: &Value) -> String {
    times(v.as_f64())
}

/// The Markdown table made from the JSON (README block); with `prev`, another run's ours
/// and Linux values beside them (the spread), matched by section and measure.
pub fn markdown(j: &Value, prev: Option<&Value>) -> String {
    let mut s = String::new();
    let meta = &j["meta"];
    let _ = writeln!(
        s,
        "Generated by `scripts/bench --readme` from `build/bench/bench.json` (one Xen boot{}{}); not typed by hand.\n",
        meta["commit"]
            .as_str()
            .map_or(String::new(), |c| format!(", guest at `{c}`")),
        meta["date"]
            .as_str()
            .map_or(String::new(), |d| format!(", {d}"))
    );
    let prev_row = |r: &Value| -> Option<Value> {
        prev?["rows"]
            .as_array()?
            .iter()
            .find(|p| p["section"] == r["section"] && p["measure"] == r["measure"])
            .cloned()
    };
    if let Some(p) = prev {
        let _ = writeln!(
            s,
            "Columns \"2nd run\": the same measures from another run{}{}, to show the spread.\n",
            p["meta"]["commit"]
                .as_str()
                .map_or(String::new(), |c| format!(" (guest at `{c}`")),
            p["meta"]["commit"].as_str().map_or("", |_| ")")
        );
        let _ = writeln!(
            s,
            "| | measure | unit | ours | Linux 6.1 | floor | Linux/ours | ours/floor | ours, 2nd run | Linux, 2nd run |"
        );
        let _ = writeln!(s, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|");
    } else {
        let _ = writeln!(
            s,
            "| | measure | unit | ours | Linux 6.1 | floor | Linux/ours | ours/floor |"
        );
        let _ = writeln!(s, "|---|---|---|---:|---:|---:|---:|---:|");
    }
    for r in j["rows"].as_array().into_iter().flatten() {
        let unit = r["unit"].as_str().unwrap_or("");
        let _ = write!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r["section"].as_str().unwrap_or(""),
            r["measure"].as_str().unwrap_or(""),
            unit,
            jnum(&r["ours"], unit),
            jnum(&r["linux"], unit),
            jnum(&r["floor"], unit),
            jtimes(&r["linux_over_ours"]),
            jtimes(&r["ours_over_floor"]),
        );
        if prev.is_some() {
            let p = prev_row(r).unwrap_or(Value::Null);
            let _ = write!(
                s,
                " {} | {} |",
                jnum(&p["ours"], unit),
                jnum(&p["linux"], unit)
            );
        }
        s.push('\n');
    }
    let _ = writeln!(s, "\n| goal (issues 13 and 15) | target | measured | |");
    let _ = writeln!(s, "|---|---|---:|---|");
    for g in j["goals"].as_array().into_iter().flatten() {
        let unit = g["unit"].as_str().unwrap_or("");
        let met = match g["met"].as_bool() {
            Some(true) => "met",
            Some(false) => "not met",
            None => "not measured",
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} {} | {} |",
            g["goal"].as_str().unwrap_or(""),
            g["target"].as_str().unwrap_or(""),
            jnum(&g["measured"], unit),
            unit,
            met
        );
    }
    s
}

pub const BEGIN: &str = "<!-- bench:begin -->";
pub const END: &str = "<!-- bench:end -->";

/// README with the text between the bench markers replaced by `table`; an error when
/// the markers are missing or out of order.
pub fn replace_block(readme: &str, table: &str) -> Result<String, String> {
    let b = readme
        .find(BEGIN)
        .ok_or(format!("no {BEGIN} line in the README"))?;
    let e = readme
        .find(END)
        .ok_or(format!("no {END} line in the README"))?;
    if e < b {
        return Err(format!("{END} comes before {BEGIN}"));
    }
    Ok(format!(
        "{}{BEGIN}\n{}{}",
        &readme[..b],
        table,
        &readme[e..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Status;

    fn verdict(name: &str, info: &[&str]) -> Verdict {
        Verdict {
            name: name.into(),
            status: Status::Pass,
            secs: Some(1.0),
            reason: String::new(),
            info: info.iter().map(|s| s.to_string()).collect(),
            context: Vec::new(),
        }
    }

    fn sample() -> Vec<Verdict> {
        vec![
            verdict(
                "bench-boot",
                &[
                    "nothing_first_output_secs=0.40 first_output_secs=0.50 ready_xen_secs=0.60",
                    "nothing_first_output_secs=0.44 first_output_secs=0.52 ready_xen_secs=0.70",
                    "nothing_first_output_secs=0.42 first_output_secs=0.51 ready_xen_secs=0.65",
                    "first_to_ready_secs=0.030 ready_secs=0.80 console_first_secs=0.6 guest_tsc_boot_ms=61.0",
                    "guest_tsc_boot_ms=40.0 guest_running_ms=30 guest_runnable_ms=5",
                    "guest_tsc_boot_ms=45.0 guest_running_ms=32 guest_runnable_ms=9",
                    "paused_guest_tsc_boot_ms=30.0 paused_guest_running_ms=25",
                    "paused_guest_tsc_boot_ms=52.0 paused_guest_running_ms=27",
                    "paused_guest_tsc_boot_ms=33.0 paused_guest_running_ms=26",
                ],
            ),
            verdict("bench-boot@linux", &["ready_secs=8.0 console_first_secs=5.0"]),
            verdict(
                "balloon-bench",
                &[
                    "memset_floor_secs=0.30",
                    "memset_floor_secs=0.32",
                    "down_guest_total_ms=1000 down_guest_hypercall_ms=960 down_guest_outside_ms=40 down_guest_outside_permille=40 down_guest_outside_cpu_ms=10 down_guest_outside_cpu_permille=10",
                    "up_guest_total_ms=200 up_guest_hypercall_ms=180 up_guest_outside_ms=20 up_guest_outside_permille=100 up_guest_outside_cpu_ms=12 up_guest_outside_cpu_permille=60",
                    "mean_down_secs=1.50 mean_up_secs=0.50 mean_swing_secs=2.00 swings=3",
                    "hypercalls_per_gib=1 hypercalls=6 extents=x down_guest_hypercalls=1 up_guest_hypercalls=2",
                ],
            ),
            verdict(
                "balloon-bench@linux",
                &["mean_down_secs=9.0 mean_up_secs=3.0 mean_swing_secs=12.0 swings=3"],
            ),
            verdict(
                "grant-bench",
                &[
                    "batch64_map_us=640 batch1_map_us=20",
                    "batch64_map_xen_us=576 batch1_map_xen_us=18",
                    "linux_batch64_map_us=1280 linux_batch1_map_us=30",
                    "linux_domu_batch64_map_us=1920 linux_domu_batch1_map_us=36",
                ],
            ),
        ]
    }

    #[test]
    fn rows_ratios_and_goals_come_from_the_reported_values() {
        let b = build(&sample());
        let r = find(&b.rows, "xl create -> ready (0xE9)").unwrap();
        assert_eq!(r.ours, Some(0.65));
        assert_eq!(r.floor, Some(0.42));
        let sw = find(&b.rows, "swing 1024 -> 256 -> 1024 MiB").unwrap();
        assert_eq!(sw.linux_over_ours(), Some(6.0));
        let f = sw.floor.unwrap();
        assert!((f - 2.0 * 0.31).abs() < 1e-9, "{f}");
        let calls = find(&b.rows, "reservation hypercalls per GiB moved").unwrap();
        assert!((calls.ours.unwrap() - 6.0 / 4.5).abs() < 1e-9);
        let m = find(&b.rows, "map 64 pages in one call, per page").unwrap();
        assert_eq!((m.ours, m.linux), (Some(10.0), Some(30.0)));
        // The floor of a grant row is ours' own time inside the hypercall.
        assert_eq!(m.floor, Some(9.0));
        let m = find(&b.rows, "map 64 pages in one call, per page (Linux: dom0)").unwrap();
        assert_eq!((m.ours, m.linux), (Some(10.0), Some(20.0)));
        let m = find(&b.rows, "map 1 page").unwrap();
        assert_eq!((m.ours, m.linux), (Some(20.0), Some(36.0)));
        let goal = |name: &str| b.goals.iter().find(|g| g.goal.starts_with(name)).unwrap();
        assert_eq!(goal("balloon: reservation").measured, Some(2.0));
        assert_eq!(goal("balloon: reservation").met, Some(false));
        assert_eq!(goal("balloon: guest CPU time outside").measured, Some(6.0));
        assert_eq!(goal("balloon: guest CPU time outside").met, Some(false));
        assert_eq!(goal("balloon: the same on the wall").measured, Some(10.0));
        assert_eq!(
            goal("hotplug: guest CPU time").measured,
            None,
            "no hotplug run"
        );
        assert_eq!(goal("balloon: swing").met, Some(true));
        assert_eq!(
            goal("boot: first instruction").measured,
            Some(45.0),
            "the median"
        );
        assert_eq!(goal("boot: the same, created paused").measured, Some(33.0));
        assert_eq!(goal("boot: the same, created paused").met, Some(true));
        assert_eq!(goal("boot: first instruction").met, Some(true));
        assert_eq!(goal("boot: the same on Xen's stamps").met, Some(true));
        assert_eq!(goal("grants: 1-page").met, Some(false));
        assert_eq!(goal("grants: 64-page").measured, Some(1.0 / 3.0));
        // A scenario that did not run leaves its rows empty, never invented.
        let h = find(&b.rows, "256 -> 768 MiB (hot-add)").unwrap();
        assert_eq!((h.ours, h.linux), (None, None));
    }

    #[test]
    fn json_round_trips_into_the_readme_block() {
        let b = build(&sample());
        let j = to_json(&b, json!({"commit": "abc1234", "date": "2026-12-04"}));
        let text = serde_json::to_string(&j).unwrap();
        let back: Value = serde_json::from_str(&text).unwrap();
        let md = markdown(&back, None);
        assert!(md.contains("guest at `abc1234`"));
        assert!(md.contains("| balloon | swing 1024 -> 256 -> 1024 MiB | s | 2.000 | 12.0 |"));
        let readme = format!("intro\n{BEGIN}\nold table\n{END}\nafter\n");
        let new = replace_block(&readme, &md).unwrap();
        assert!(new.starts_with("intro\n<!-- bench:begin -->\nGenerated"));
        assert!(new.ends_with(&format!("{END}\nafter\n")));
        assert!(!new.contains("old table"));
        // Idempotent.
        assert_eq!(replace_block(&new, &md).unwrap(), new);
        // With another run beside it.
        let two = markdown(&back, Some(&back));
        assert!(two.contains("| balloon | swing 1024 -> 256 -> 1024 MiB | s | 2.000 | 12.0 | 0.620 | 6.00x | 3.23x | 2.000 | 12.0 |"), "{two}");
        assert!(replace_block("no markers", &md).is_err());
    }
}
