//! `xenguest-stat`: one guest's memory as it reports it under xenstore `data/` beside
//! Xen's own numbers. Everything here is pure (text in, text out); `main.rs` runs the
//! tools (`xl list`, `xl debug-keys q` + `xl dmesg`, `xenstore-ls -f`) and hands over
//! their output.

use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One row of `xl list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct XlRow {
    pub name: String,
    pub domid: u32,
    pub mem_mib: u64,
    pub vcpus: u32,
    pub state: String,
    pub cpu_secs: String,
}

/// Parses `xl list` (header, then `Name ID Mem VCPUs State Time(s)` rows). A name may
/// contain spaces in principle, so the five numeric columns are taken from the right.
pub fn parse_xl_list(text: &str) -> Result<Vec<XlRow>, String> {
    let mut rows = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.is_empty() || f[0] == "Name" {
            continue;
        }
        if f.len() < 6 {
            return Err(format!("unexpected xl list line: {line:?}"));
        }
        let n = f.len();
        let num = |s: &str, what: &str| {
            s.parse::<u64>()
                .map_err(|_| format!("xl list: bad {what} {s:?} in {line:?}"))
        };
        rows.push(XlRow {
            name: f[..n - 5].join(" "),
            domid: num(f[n - 5], "ID")? as u32,
            mem_mib: num(f[n - 4], "Mem")?,
            vcpus: num(f[n - 3], "VCPUs")? as u32,
            state: f[n - 2].to_string(),
            cpu_secs: f[n - 1].to_string(),
        });
    }
    Ok(rows)
}

/// Finds DOMAIN (a domid or a name) among the rows.
pub fn resolve<'a>(rows: &'a [XlRow], domain: &str) -> Option<&'a XlRow> {
    match domain.parse::<u32>() {
        Ok(id) => rows.iter().find(|r| r.domid == id),
        Err(_) => rows.iter().find(|r| r.name == domain),
    }
}

/// Xen's exact page counts for `domid` from the newest `xl debug-keys q` dump in
/// `xl dmesg` output: `(tot_pages, max_pages)`. Xen 4.17 prints them as
/// `nr_pages=N ... max_pages=M` under `General information for domain D:`.
pub fn parse_debug_q(dmesg: &str, domid: u32) -> Option<(u64, u64)> {
    let head = format!("General information for domain {domid}:");
    let mut found = None;
    let mut grab = false;
    for line in dmesg.lines() {
        if line.contains(&head) {
            grab = true;
            continue;
        }
        if grab && line.contains("General information for domain ") {
            grab = false;
        }
        if grab && line.contains("max_pages=") {
            let mut tot = None;
            let mut max = None;
            for w in line.split_whitespace() {
                if let Some(v) = w.strip_prefix("nr_pages=").or(w.strip_prefix("tot_pages=")) {
                    tot = v.parse().ok();
                } else if let Some(v) = w.strip_prefix("max_pages=") {
                    max = v.parse().ok();
                }
            }
            if let (Some(t), Some(m)) = (tot, max) {
                found = Some((t, m));
            }
            grab = false;
        }
    }
    found
}

/// Parses `xenstore-ls -f PREFIX` output (`/full/path = "value"`) into a map of paths
/// relative to `prefix/`. Directories appear with an empty value and are kept (harmless:
/// every lookup names a leaf).
pub fn parse_xenstore_ls(text: &str, prefix: &str) -> BTreeMap<String, String> {
    let base = format!("{}/", prefix.trim_end_matches('/'));
    let mut map = BTreeMap::new();
    for line in text.lines() {
        let Some((path, value)) = line.split_once(" = ") else {
            continue;
        };
        let Some(rel) = path.strip_prefix(&base) else {
            continue;
        };
        let v = value.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(v);
        map.insert(rel.to_string(), v.replace("\\\\", "\\"));
    }
    map
}

/// Everything known about one domain at one moment.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub xen: XlRow,
    /// Exact counts from `xl debug-keys q` (absent when that is not available).
    pub tot_pages: Option<u64>,
    pub max_pages: Option<u64>,
    /// `memory/target` in KiB, as the toolstack set it.
    pub target_kib: Option<u64>,
    /// True when the guest publishes `data/mm` (a xenguest-rs guest).
    pub ours: bool,
    /// Every key under the domain's `data/`, relative to it (`mm/pages/ram`, ...).
    pub data: BTreeMap<String, String>,
}

impl Report {
    /// Builds a report from the domain's `xenstore-ls -f /local/domain/N` map.
    pub fn new(
        xen: XlRow,
        pages: Option<(u64, u64)>,
        domain_keys: &BTreeMap<String, String>,
    ) -> Self {
        let data: BTreeMap<String, String> = domain_keys
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("data/")?.to_string(), v.clone())))
            .collect();
        Report {
            tot_pages: pages.map(|p| p.0),
            max_pages: pages.map(|p| p.1),
            target_kib: domain_keys
                .get("memory/target")
                .and_then(|v| v.parse().ok()),
            ours: data.keys().any(|k| k.starts_with("mm/")),
            data,
            xen,
        }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.data
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn num(&self, key: &str) -> Option<u64> {
        self.get(key)?.parse().ok()
    }

    /// The census check: Xen's tot_pages against the guest's `mm/expected-tot-pages`.
    pub fn census_vs_xen(&self) -> Option<(u64, u64)> {
        Some((self.num("mm/expected-tot-pages")?, self.tot_pages?))
    }
}

fn mib(pages: u64) -> String {
    format!("{:.2} MiB", pages as f64 / 256.0)
}

/// `key value` pairs for the keys present under `dir/` (in this order), then a count of
/// the keys not shown.
fn pairs(r: &Report, dir: &str, keys: &[&str]) -> Option<String> {
    let all = r
        .data
        .keys()
        .filter(|k| k.starts_with(&format!("{dir}/")))
        .count();
    if all == 0 {
        return None;
    }
    let mut out = Vec::new();
    for k in keys {
        if let Some(v) = r.get(&format!("{dir}/{k}")) {
            out.push(format!("{k} {v}"));
        }
    }
    if out.is_empty() {
        out.push(format!("{all} keys (none of the usual ones)"));
    }
    Some(out.join(", "))
}

/// The page states in the guest's order (`StateKind`), then the non-RAM holes.
const STATES: &[&str] = &[
    "free",
    "allocated",
    "reserved",
    "offline",
    "unpopulated",
    "foreign",
    "reserved-nonram",
];

/// Position of `name` in `known`; unknown names go last (stable sort keeps their order).
fn order(known: &[&str], name: &str) -> usize {
    known.iter().position(|k| *k == name).unwrap_or(known.len())
}

/// The `pages/<kind>/<state>` counts as a small table: one row per kind, one column per
/// state, in the order the guest published them.
fn pages_table(r: &Report) -> Vec<String> {
    let mut kinds: Vec<&str> = Vec::new();
    let mut states: Vec<&str> = Vec::new();
    let mut cells: BTreeMap<(&str, &str), &str> = BTreeMap::new();
    for (k, v) in &r.data {
        let Some(rest) = k.strip_prefix("mm/pages/") else {
            continue;
        };
        let Some((kind, state)) = rest.split_once('/') else {
            continue;
        };
        if state.contains('/') {
            continue;
        }
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
        if !states.contains(&state) {
            states.push(state);
        }
        cells.insert((kind, state), v);
    }
    if kinds.is_empty() {
        return Vec::new();
    }
    // Compact: leave out kinds and states with nothing in them.
    let empty = |v: Option<&&str>| v.is_none_or(|v| *v == "0");
    kinds.retain(|k| !states.iter().all(|s| empty(cells.get(&(*k, *s)))));
    states.retain(|s| !kinds.iter().all(|k| empty(cells.get(&(*k, *s)))));
    if kinds.is_empty() {
        return vec!["pages       all zero".to_string()];
    }
    // xenstore-ls lists keys sorted; put them back in the guest's own order.
    kinds.sort_by_key(|k| order(&["boot-ram", "hotplug-ram", "device"], k));
    states.sort_by_key(|s| order(STATES, s));
    let w = states.iter().map(|s| s.len().max(8)).collect::<Vec<_>>();
    let mut head = format!("{:<12}", "pages");
    for (s, w) in states.iter().zip(&w) {
        let _ = write!(head, " {s:>w$}");
    }
    let mut lines = vec![head];
    for kind in kinds {
        let mut line = format!("{kind:<12}");
        for (s, w) in states.iter().zip(&w) {
            let _ = write!(
                line,
                " {:>w$}",
                cells.get(&(kind, *s)).copied().unwrap_or("-")
            );
        }
        lines.push(line);
    }
    lines
}

/// The sections by kind: `boot-ram 2/2 (128 active, 262144 KiB)`.
fn sections_line(r: &Report) -> Option<String> {
    // Kinds with no section present (e.g. no hot-added memory yet) are left out.
    let mut kinds: Vec<&str> = r
        .data
        .keys()
        .filter_map(|k| k.strip_prefix("mm/sections/")?.strip_suffix("/present"))
        .filter(|k| r.num(&format!("mm/sections/{k}/present")) != Some(0))
        .collect();
    kinds.dedup();
    if kinds.is_empty() {
        return None;
    }
    let parts: Vec<String> = kinds
        .iter()
        .map(|k| {
            let g = |key: String| r.get(&key).unwrap_or("?").to_string();
            format!(
                "{k} {}/{} ({} active, {} KiB)",
                g(format!("mm/sections/{k}/present")),
                g(format!("mm/sections/{k}/online")),
                g(format!("mm/subsections/{k}/active")),
                g(format!("mm/kib/{k}")),
            )
        })
        .collect();
    Some(format!(
        "{}  [present/online (subsections active, KiB)]",
        parts.join("; ")
    ))
}

/// The human table for one domain.
pub fn format_report(r: &Report) -> String {
    let x = &r.xen;
    let mut out = String::new();
    let kind = if r.ours {
        "xenguest-rs guest"
    } else {
        "not ours"
    };
    let _ = writeln!(
        out,
        "{} (domid {}): {kind}, state {}, {} vcpus, {} s CPU",
        x.name, x.domid, x.state, x.vcpus, x.cpu_secs
    );
    let row = |out: &mut String, label: &str, text: &str| {
        let _ = writeln!(out, "  {label:<9} {text}");
    };
    let mut xen = match (r.tot_pages, r.max_pages) {
        (Some(t), Some(m)) => format!("tot_pages {t} ({}), max_pages {m}", mib(t)),
        _ => format!("{} MiB (xl list; exact tot_pages unavailable)", x.mem_mib),
    };
    if let Some(t) = r.target_kib {
        let _ = write!(xen, ", target {t} KiB ({} MiB)", t / 1024);
    }
    row(&mut out, "xen", &xen);
    if !r.ours {
        row(
            &mut out,
            "guest",
            "no data/mm: not a xenguest-rs guest (Xen's numbers only)",
        );
        return out;
    }
    let census = match (r.num("mm/pages/ram"), r.census_vs_xen()) {
        (Some(ram), Some((exp, tot))) => format!(
            "ram {ram} pages ({}), expects tot_pages {exp}: {}",
            mib(ram),
            if exp == tot {
                "matches Xen".to_string()
            } else {
                format!("Xen has {tot} ({:+})", tot as i64 - exp as i64)
            }
        ),
        (Some(ram), None) => format!(
            "ram {ram} pages ({}), expects tot_pages {}",
            mib(ram),
            r.get("mm/expected-tot-pages").unwrap_or("?")
        ),
        _ => "no mm/pages/ram".to_string(),
    };
    row(&mut out, "census", &census);
    if let Some(s) = sections_line(r) {
        row(&mut out, "sections", &s);
    }
    for line in pages_table(r) {
        let _ = writeln!(out, "  {line}");
    }
    let balloon = pairs(
        r,
        "balloon",
        &[
            "state",
            "target-kib",
            "effective-target-kib",
            "current-kib",
            "floor-kib",
            "hypercalls",
            "rejected-targets",
            "accounting/mismatches",
            "last-error",
        ],
    );
    let hotplug = pairs(
        r,
        "hotplug",
        &[
            "state",
            "adds",
            "sections-added",
            "sections-removed",
            "kib",
            "failures",
            "deferred",
            "last-error",
        ],
    );
    let grant = pairs(
        r,
        "grant",
        &[
            "refs",
            "outstanding",
            "free",
            "deferred",
            "table-frames",
            "max-table-frames",
            "foreign-mapped",
            "device-slots-free",
            "map-failures",
            "unmap-failures",
            "role",
            "pair-state",
        ],
    );
    for (label, text) in [("balloon", balloon), ("hotplug", hotplug), ("grant", grant)] {
        row(&mut out, label, text.as_deref().unwrap_or("-"));
    }
    // Only once the guest has been saved, restored or migrated.
    let suspend = pairs(
        r,
        "suspend",
        &[
            "suspends",
            "resumes",
            "cancelled",
            "refused",
            "last-resume-us",
        ],
    );
    let suspended = ["suspends", "resumes", "cancelled", "refused"]
        .iter()
        .any(|k| r.num(&format!("suspend/{k}")).is_some_and(|n| n > 0));
    if let (true, Some(text)) = (suspended, suspend) {
        row(&mut out, "suspend", &text);
    }
    out
}

/// The machine-readable form: every number above plus the whole `data/` map.
pub fn to_json(reports: &[Report]) -> String {
    serde_json::to_string_pretty(reports).expect("reports serialise")
}

#[cfg(test)]
mod tests {
    use super::*;

    const XL_LIST: &str = "\
Name                                        ID   Mem VCPUs\tState\tTime(s)
Domain-0                                     0  1024     1     r-----      12.3
xenci-demo-guest                             3   256     2     -b----       1.2
xenci-demo-linux                             4   255     1     -b----       7.9
";

    const DMESG: &str = "\
(XEN) [    9.59] General information for domain 3:
(XEN) [    9.59]     refcnt=3 dying=0 pause_count=0
(XEN) [    9.59]     nr_pages=60000 xenheap_pages=5 dirty_cpus={} max_pages=65792
(XEN) [    9.60] General information for domain 4:
(XEN) [    9.60]     nr_pages=65296 xenheap_pages=5 dirty_cpus={} max_pages=65792
(XEN) [   19.59] General information for domain 3:
(XEN) [   19.59]     nr_pages=65552 xenheap_pages=5 dirty_cpus={} max_pages=65792
";

    fn ours_ls() -> String {
        let mut s = String::from(
            "/local/domain/3/memory = \"\"\n/local/domain/3/memory/target = \"262144\"\n",
        );
        for (k, v) in [
            ("mm/expected-tot-pages", "65552"),
            ("mm/pages/ram", "65280"),
            ("mm/pages/boot-ram/free", "60000"),
            ("mm/pages/boot-ram/allocated", "5280"),
            ("mm/pages/boot-ram/reserved-nonram", "16"),
            ("mm/pages/device/free", "0"),
            ("mm/pages/device/foreign", "4"),
            ("mm/pages/boot-ram/offline", "0"),
            ("mm/pages/hotplug-ram/free", "0"),
            ("mm/sections/hotplug-ram/present", "0"),
            ("mm/sections/present", "3"),
            ("mm/sections/boot-ram/present", "2"),
            ("mm/sections/boot-ram/online", "2"),
            ("mm/subsections/boot-ram/active", "128"),
            ("mm/kib/boot-ram", "262144"),
            ("balloon/state", "done"),
            ("balloon/target-kib", "262144"),
            ("balloon/current-kib", "261120"),
            ("balloon/last-error", ""),
            ("hotplug/state", "idle"),
            ("hotplug/adds", "0"),
            ("grant/refs", "1024"),
            ("grant/free", "1016"),
        ] {
            let _ = writeln!(s, "/local/domain/3/data/{k} = \"{v}\"");
        }
        s
    }

    fn report_for(domid: u32, ls: &str) -> Report {
        let rows = parse_xl_list(XL_LIST).unwrap();
        let row = resolve(&rows, &domid.to_string()).unwrap().clone();
        let keys = parse_xenstore_ls(ls, &format!("/local/domain/{domid}"));
        Report::new(row, parse_debug_q(DMESG, domid), &keys)
    }

    #[test]
    fn xl_list_rows_and_lookup_by_name_or_id() {
        let rows = parse_xl_list(XL_LIST).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1].name, "xenci-demo-guest");
        assert_eq!(rows[1].mem_mib, 256);
        assert_eq!(rows[1].state, "-b----");
        assert_eq!(resolve(&rows, "4").unwrap().name, "xenci-demo-linux");
        assert_eq!(resolve(&rows, "xenci-demo-guest").unwrap().domid, 3);
        assert!(resolve(&rows, "7").is_none());
        assert!(resolve(&rows, "nosuch").is_none());
        assert!(parse_xl_list("Name ID\nfoo 1 2\n").is_err());
        assert!(parse_xl_list("x y 1 2 3 4\n").is_err());
    }

    #[test]
    fn debug_q_takes_the_newest_dump_of_the_right_domain() {
        assert_eq!(parse_debug_q(DMESG, 3), Some((65552, 65792)));
        assert_eq!(parse_debug_q(DMESG, 4), Some((65296, 65792)));
        assert_eq!(parse_debug_q(DMESG, 9), None);
        assert_eq!(parse_debug_q("", 3), None);
    }

    #[test]
    fn xenstore_ls_relative_keys_and_values() {
        let m = parse_xenstore_ls(&ours_ls(), "/local/domain/3/");
        assert_eq!(m["memory/target"], "262144");
        assert_eq!(m["data/mm/pages/ram"], "65280");
        assert_eq!(m["data/balloon/last-error"], "");
        assert!(!m.contains_key("/local/domain/3/memory"));
        let m = parse_xenstore_ls("/local/domain/3/data/x = \"a \\\\ b\"\n", "/local/domain/3");
        assert_eq!(m["data/x"], "a \\ b");
    }

    #[test]
    fn our_guest_gets_the_full_table() {
        let r = report_for(3, &ours_ls());
        assert!(r.ours);
        let t = format_report(&r);
        assert!(
            t.starts_with("xenci-demo-guest (domid 3): xenguest-rs guest, state -b----"),
            "{t}"
        );
        assert!(
            t.contains(
                "tot_pages 65552 (256.06 MiB), max_pages 65792, target 262144 KiB (256 MiB)"
            ),
            "{t}"
        );
        assert!(t.contains("expects tot_pages 65552: matches Xen"), "{t}");
        assert!(
            t.contains("boot-ram 2/2 (128 active, 262144 KiB)  ["),
            "{t}"
        );
        assert!(
            !t.contains("hotplug-ram"),
            "no hot-added section, no all-zero row: {t}"
        );
        // pages table: the states as columns in publication order, "-" where a kind lacks one.
        let head = t
            .lines()
            .find(|l| l.trim_start().starts_with("pages "))
            .unwrap();
        assert!(
            head.contains("free") && head.contains("allocated") && head.contains("foreign"),
            "{head}"
        );
        let cols = |l: &str| l.split_whitespace().map(String::from).collect::<Vec<_>>();
        assert_eq!(
            cols(head),
            ["pages", "free", "allocated", "foreign", "reserved-nonram"]
        );
        let row = |kind: &str| {
            cols(
                t.lines()
                    .find(|l| l.trim_start().starts_with(kind))
                    .unwrap(),
            )
        };
        assert_eq!(row("boot-ram "), ["boot-ram", "60000", "5280", "-", "16"]);
        assert_eq!(row("device "), ["device", "0", "-", "4", "-"]);
        assert!(
            t.contains("balloon   state done, target-kib 262144, current-kib 261120"),
            "{t}"
        );
        assert!(!t.contains("last-error"), "empty values are left out: {t}");
        assert!(t.contains("hotplug   state idle, adds 0"), "{t}");
        assert!(t.contains("grant     refs 1024, free 1016"), "{t}");
        assert!(
            !t.contains("suspend"),
            "no suspend line before any save: {t}"
        );
        let ls = ours_ls() + "/local/domain/3/data/suspend/suspends = \"0\"\n";
        assert!(!format_report(&report_for(3, &ls)).contains("suspend"));
        let ls = ours_ls() + "/local/domain/3/data/suspend/resumes = \"1\"\n";
        let t = format_report(&report_for(3, &ls));
        assert!(t.contains("suspend   resumes 1"), "{t}");
    }

    #[test]
    fn census_disagreement_is_shown_with_the_difference() {
        let ls = ours_ls().replace(
            "expected-tot-pages = \"65552\"",
            "expected-tot-pages = \"65550\"",
        );
        let t = format_report(&report_for(3, &ls));
        assert!(
            t.contains("expects tot_pages 65550: Xen has 65552 (+2)"),
            "{t}"
        );
    }

    #[test]
    fn linux_guest_gets_xen_numbers_only() {
        let ls = "/local/domain/4/memory/target = \"261120\"\n/local/domain/4/device/vif = \"\"\n";
        let r = report_for(4, ls);
        assert!(!r.ours);
        let t = format_report(&r);
        assert!(t.contains("no data/mm: not a xenguest-rs guest"), "{t}");
        assert!(t.contains("tot_pages 65296"), "{t}");
        assert!(!t.contains("balloon"), "{t}");
        assert_eq!(t.lines().count(), 3, "{t}");
    }

    #[test]
    fn without_debug_keys_the_xl_list_mib_is_shown() {
        let rows = parse_xl_list(XL_LIST).unwrap();
        let r = Report::new(rows[2].clone(), None, &BTreeMap::new());
        let t = format_report(&r);
        assert!(
            t.contains("255 MiB (xl list; exact tot_pages unavailable)"),
            "{t}"
        );
    }

    #[test]
    fn vanished_domain_is_not_resolved() {
        // The watch loop re-reads `xl list` each round; a domain gone from it is an error.
        let rows = parse_xl_list(XL_LIST).unwrap();
        assert!(resolve(&rows, "3").is_some());
        let after: String = XL_LIST
            .lines()
            .filter(|l| !l.contains("demo-guest"))
            .map(|l| format!("{l}\n"))
            .collect();
        let rows = parse_xl_list(&after).unwrap();
        assert!(resolve(&rows, "3").is_none());
        assert!(resolve(&rows, "xenci-demo-guest").is_none());
    }

    #[test]
    fn json_has_the_numbers_and_the_data() {
        let j: serde_json::Value =
            serde_json::from_str(&to_json(&[report_for(3, &ours_ls())])).unwrap();
        assert_eq!(j[0]["xen"]["domid"], 3);
        assert_eq!(j[0]["tot_pages"], 65552);
        assert_eq!(j[0]["target_kib"], 262144);
        assert_eq!(j[0]["ours"], true);
        assert_eq!(j[0]["data"]["mm/pages/ram"], "65280");
        let j: serde_json::Value = serde_json::from_str(&to_json(&[report_for(4, "")])).unwrap();
        assert_eq!(j[0]["ours"], false);
        assert_eq!(j[0]["target_kib"], serde_json::Value::Null);
    }
}
