//! Verdicts for the Xen CI harness.
//!
//! `scripts/xen-ci` boots QEMU → Xen → a Linux dom0 whose scenario runner
//! (`scripts/dom0/run-scenarios`) prints `XENCI ...` markers on the serial console. This
//! crate reads that serial log and decides, for every requested scenario, PASS / FAIL /
//! SKIP with a reason — including the cases where the runner could not say anything
//! because Xen panicked, dom0 died, or QEMU hit its time limit. It also writes JUnit XML.
//!
//! Pure functions over text: everything here is unit-tested without Xen.

pub mod bench;
pub mod dominfo;
pub mod nothing;
pub mod privcmd;
pub mod timeline;

use std::fmt::Write as _;

/// Outcome of one scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Pass,
    Fail,
    Skip,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
        }
    }
}

/// The verdict for one scenario (or the pseudo-scenario [`RUN`] for whole-run problems).
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub name: String,
    pub status: Status,
    /// Wall seconds as measured in dom0; `None` when the scenario never finished.
    pub secs: Option<f64>,
    /// Why it failed or was skipped (empty for PASS).
    pub reason: String,
    /// Measurements the scenario reported (`XENCI INFO`).
    pub info: Vec<String>,
    /// The last relevant log lines (guest console on a scenario failure, the serial log
    /// around the end when the run itself broke).
    pub context: Vec<String>,
}

/// Name of the pseudo-verdict for problems outside any scenario (e.g. a Xen panic after
/// every scenario had already passed).
pub const RUN: &str = "(run)";

/// What the host knows about the QEMU run besides the serial log.
#[derive(Clone, Debug, Default)]
pub struct RunFacts {
    /// Exit status of `timeout ... qemu-system-x86_64` (124 = time limit hit).
    pub qemu_status: Option<i32>,
    /// The time limit given to `timeout`, in seconds.
    pub limit_secs: Option<u64>,
    /// This run's secret: the host made it and handed it to dom0's runner only (inside the
    /// dom0 initramfs). A marker counts only when it carries it; without one, none does.
    pub nonce: Option<String>,
}

/// The shortest nonce the verdict tool accepts (hex digits: 64 bits).
pub const MIN_NONCE_LEN: usize = 16;

/// How many lines of context to keep under a failure.
const CONTEXT_LINES: usize = 12;

#[derive(Debug, Default)]
struct ScenarioLog {
    /// Line indices of its BEGIN markers (exactly one is right).
    begins: Vec<usize>,
    /// Every verdict marker, in order: (status, secs, reason, line index). Exactly one,
    /// after the BEGIN, is right.
    ends: Vec<(Status, Option<f64>, String, usize)>,
    void: Option<String>,
    info: Vec<String>,
    log: Vec<String>,
}

impl ScenarioLog {
    fn begin_line(&self) -> usize {
        self.begins.first().copied().unwrap_or(0)
    }
}

/// Everything found in a serial log.
#[derive(Debug, Default)]
struct Parsed {
    scenarios: Vec<(String, ScenarioLog)>,
    started: usize,
    /// The DONE markers' counts: (pass, fail, skip), `None` where unreadable.
    done: Vec<Option<(usize, usize, usize)>>,
    abort: Option<String>,
    xen_panic: Option<(usize, String)>,
    dom0_panic: Option<(usize, String)>,
    /// Guest crashes seen by Xen or printed by a guest on port 0xE9: (line index, text).
    guest_crashes: Vec<(usize, String)>,
    /// Harness markers after the (first) DONE: nothing may follow it.
    after_done: usize,
    /// Lines that look like markers but are not the harness's (no or wrong nonce, not at
    /// the start of the line, e.g. a guest's `(d3) XENCI PASS boot`): (line index, text).
    ignored: Vec<(usize, String)>,
    lines: Vec<String>,
}

impl Parsed {
    fn scenario(&mut self, name: &str) -> &mut ScenarioLog {
        if let Some(i) = self.scenarios.iter().position(|(n, _)| n == name) {
            return &mut self.scenarios[i].1;
        }
        self.scenarios
            .push((name.to_string(), ScenarioLog::default()));
        &mut self.scenarios.last_mut().expect("just pushed").1
    }

    fn get(&self, name: &str) -> Option<&ScenarioLog> {
        self.scenarios
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s)
    }
}

/// Strip Xen's `(XEN) ` prefix and its `[   12.345678] ` boot timestamp.
fn strip_xen_prefix(line: &str) -> &str {
    let mut s = line.trim_start();
    if let Some(rest) = s.strip_prefix("(XEN)") {
        s = rest.trim_start();
    }
    if s.starts_with('[') {
        if let Some(end) = s.find(']') {
            s = s[end + 1..].trim_start();
        }
    }
    s
}

/// Parse `<secs> [t=<uptime>] [reason...]` after `XENCI PASS|FAIL|SKIP <name>`.
fn parse_end(rest: &str) -> (Option<f64>, String) {
    let mut words = rest.split_whitespace().peekable();
    let secs = words.next().and_then(|w| w.parse::<f64>().ok());
    if words.peek().is_some_and(|w| w.starts_with("t=")) {
        words.next();
    }
    (secs, words.collect::<Vec<_>>().join(" "))
}

/// `pass=N fail=N skip=N ...` of a DONE marker.
fn parse_done(rest: &str) -> Option<(usize, usize, usize)> {
    let get = |key: &str| {
        rest.split_whitespace().find_map(|w| {
            w.strip_prefix(key)?
                .strip_prefix('=')?
                .parse::<usize>()
                .ok()
        })
    };
    Some((get("pass")?, get("fail")?, get("skip")?))
}

/// Is this a guest's crash as seen in the serial log?
fn guest_crash_text(line: &str) -> Option<String> {
    // Our guest prints its panic on port 0xE9, which Xen shows as "(dN) PANIC ...".
    if let Some(rest) = line.strip_prefix("(d") {
        if let Some(close) = rest.find(") ") {
            let mut msg = rest[close + 2..].trim_start();
            // Xen's console timestamp and our kernel's "[    1.234567] " may precede it.
            while msg.starts_with('[') {
                match msg.find("] ") {
                    Some(i) => msg = msg[i + 2..].trim_start(),
                    None => break,
                }
            }
            if msg.starts_with("PANIC") {
                return Some(format!("d{} {}", &rest[..close], msg));
            }
        }
        return None;
    }
    // Xen's own view (only Xen's lines: a guest cannot print "(XEN)" at a line start): a
    // domain crashed (triple fault, unhandled exception, ...).
    if !line.starts_with("(XEN)") {
        return None;
    }
    let body = strip_xen_prefix(line);
    if body.contains("Triple fault")
        || body.contains("domain_crash called from")
        || (body.starts_with("Domain ") && body.contains(") crashed"))
    {
        return Some(body.to_string());
    }
    None
}

/// dom0's kernel panic: the kernel's own line, `Kernel panic - ...` at the start or after
/// its `[  12.345678] ` timestamp — never text quoted inside another line.
fn dom0_panic_text(line: &str) -> Option<String> {
    let mut s = line;
    if s.starts_with('[') {
        let end = s.find("] ")?;
        let stamp = s[1..end].trim();
        if stamp.is_empty() || !stamp.chars().all(|c| c.is_ascii_digit() || c == '.') {
            return None;
        }
        s = &s[end + 2..];
    }
    s.starts_with("Kernel panic - not syncing")
        .then(|| s.to_string())
}

/// The harness marker in `line`, if it is one: `XENCI <nonce> KIND ...` at the very start
/// of the line with this run's nonce. Returns the text after the nonce.
fn harness_marker<'a>(line: &'a str, nonce: Option<&str>) -> Option<&'a str> {
    let nonce = nonce.filter(|n| n.len() >= MIN_NONCE_LEN)?;
    let rest = line.strip_prefix("XENCI ")?;
    let (word, rest) = rest.split_once(' ')?;
    (word == nonce).then_some(rest)
}

fn parse(serial: &str, nonce: Option<&str>) -> Parsed {
    let mut p = Parsed {
        lines: serial
            .lines()
            .map(|l| l.trim_end_matches('\r').to_string())
            .collect(),
        ..Parsed::default()
    };
    for idx in 0..p.lines.len() {
        let line = p.lines[idx].clone();
        // Xen panics print "(XEN) Panic on CPU n:" and the message on the next line.
        if p.xen_panic.is_none()
            && line.starts_with("(XEN)")
            && strip_xen_prefix(&line).starts_with("Panic on CPU")
        {
            let msg = p
                .lines
                .get(idx + 1)
                .filter(|l| l.starts_with("(XEN)"))
                .map(|l| strip_xen_prefix(l).to_string())
                .filter(|m| !m.is_empty() && !m.starts_with("****"))
                .unwrap_or_else(|| strip_xen_prefix(&line).to_string());
            p.xen_panic = Some((idx, msg));
        }
        if p.dom0_panic.is_none() {
            if let Some(text) = dom0_panic_text(&line) {
                p.dom0_panic = Some((idx, text));
            }
        }
        if let Some(text) = guest_crash_text(&line) {
            p.guest_crashes.push((idx, text));
        }
        // Only dom0's runner knows the nonce; guest text always arrives prefixed ("(dN) ",
        // "XENCI <nonce> LOG ...", "xenci[...] ..."), so a marker must start the line.
        let Some(marker) = harness_marker(&line, nonce) else {
            // Timeline samples (`XENCI SAMPLE`, unsigned chart data, never a verdict) are
            // not counted as forgeries.
            if line.contains("XENCI") && !line.starts_with("XENCI SAMPLE ") {
                p.ignored.push((idx, line.clone()));
            }
            continue;
        };
        if !p.done.is_empty() {
            p.after_done += 1;
        }
        let (kind, rest) = marker.split_once(' ').unwrap_or((marker, ""));
        let (name, rest) = rest.split_once(' ').unwrap_or((rest, ""));
        match kind {
            "START" => p.started += 1,
            "DONE" => p.done.push(parse_done(&format!("{name} {rest}"))),
            "ABORT" => {
                p.abort
                    .get_or_insert_with(|| format!("{name} {rest}").trim().to_string());
            }
            "BEGIN" => p.scenario(name).begins.push(idx),
            "PASS" | "FAIL" | "SKIP" => {
                let status = match kind {
                    "PASS" => Status::Pass,
                    "FAIL" => Status::Fail,
                    _ => Status::Skip,
                };
                let (secs, reason) = parse_end(rest);
                p.scenario(name).ends.push((status, secs, reason, idx));
            }
            "VOID" => {
                p.scenario(name).void = Some(rest.to_string());
            }
            "INFO" => p.scenario(name).info.push(rest.to_string()),
            "LOG" => {
                let text = rest.strip_prefix("| ").unwrap_or(rest);
                p.scenario(name).log.push(text.to_string());
            }
            _ => {}
        }
    }
    p
}

/// Whole-run protocol errors: the runner prints one START, one BEGIN and one verdict per
/// scenario, then one DONE whose counts are the verdicts it printed, and nothing after.
fn protocol_errors(p: &Parsed) -> Vec<String> {
    let mut errs = Vec::new();
    if p.started > 1 {
        errs.push(format!("{} START markers (one run prints one)", p.started));
    }
    if p.done.len() > 1 {
        errs.push(format!(
            "{} DONE markers (one run prints one)",
            p.done.len()
        ));
    }
    if p.after_done > 0 {
        errs.push(format!("{} marker(s) after DONE", p.after_done));
    }
    if let Some(done) = p.done.first() {
        let mut seen = (0, 0, 0);
        for (_, s) in &p.scenarios {
            for (st, ..) in &s.ends {
                match st {
                    Status::Pass => seen.0 += 1,
                    Status::Fail => seen.1 += 1,
                    Status::Skip => seen.2 += 1,
                }
            }
            // The runner counts a voided scenario as one more failure.
            if s.void.is_some() {
                seen.1 += 1;
            }
        }
        match done {
            None => errs.push("DONE marker without pass=/fail=/skip= counts".to_string()),
            Some(d) if *d != seen => errs.push(format!(
                "DONE says pass={} fail={} skip={} but the log has {} PASS, {} FAIL (+VOID), {} SKIP",
                d.0, d.1, d.2, seen.0, seen.1, seen.2
            )),
            Some(_) => {}
        }
    }
    errs
}

/// Lines of a serial log that look like harness markers but are not: no nonce or the
/// wrong one, or not at the start of the line (a guest's `(d3) XENCI PASS boot`).
pub fn ignored_markers(serial: &str, nonce: Option<&str>) -> Vec<String> {
    parse(serial, nonce)
        .ignored
        .into_iter()
        .map(|(_, l)| l)
        .collect()
}

/// Why the run stopped early, in order of what explains the most: a Xen panic, a dom0
/// kernel panic, the runner's own abort, the time limit, or QEMU simply exiting.
fn run_stop_cause(p: &Parsed, facts: &RunFacts) -> Option<String> {
    if let Some((_, msg)) = &p.xen_panic {
        return Some(format!("Xen panic: {msg}"));
    }
    if let Some((_, msg)) = &p.dom0_panic {
        return Some(format!("dom0 {msg}"));
    }
    if let Some(msg) = &p.abort {
        return Some(format!("dom0 aborted: {msg}"));
    }
    let done = !p.done.is_empty();
    match facts.qemu_status {
        Some(124) | Some(137) => Some(match facts.limit_secs {
            Some(l) => format!("timeout: the run hit its {l}s limit (hung guest, dom0 or Xen)"),
            None => "timeout: the run hit its time limit (hung guest, dom0 or Xen)".to_string(),
        }),
        Some(0) if !done => Some("QEMU exited without the DONE marker".to_string()),
        Some(rc) if rc != 0 => Some(format!("QEMU exited with status {rc}")),
        _ if !done => Some("the serial log ends without the DONE marker".to_string()),
        _ => None,
    }
}

/// The last lines of the serial log from `from` on, for context under a run failure; the
/// Xen panic block when there is one.
fn serial_context(p: &Parsed, from: usize) -> Vec<String> {
    let end = match p.xen_panic {
        Some((i, _)) => (i + 4).min(p.lines.len()),
        None => p.lines.len(),
    };
    // Timeline samples (10 a second while a step is stuck) would crowd out the lines
    // that say what went wrong: leave them out before counting the last lines.
    let lines: Vec<&String> = p.lines[from.min(end)..end]
        .iter()
        .filter(|l| !l.contains("XENCI SAMPLE "))
        .collect();
    lines[lines.len().saturating_sub(CONTEXT_LINES)..]
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.to_string())
        .collect()
}

/// Judge the requested scenarios from the serial log.
///
/// `prefailed` are scenarios the host already failed (e.g. the guest did not build); they
/// were not run. A scenario passes only with exactly one PASS marker of its own, carrying
/// this run's nonce (`facts.nonce`) at the start of a line, after its BEGIN, from a run
/// that was not voided and whose DONE counts match; anything else is a FAIL with the
/// best available reason.
pub fn judge(
    serial: &str,
    requested: &[String],
    prefailed: &[(String, String)],
    facts: &RunFacts,
) -> Vec<Verdict> {
    let nonce = facts.nonce.as_deref().filter(|n| n.len() >= MIN_NONCE_LEN);
    let p = parse(serial, nonce);
    let stop = if nonce.is_none() {
        Some(format!(
            "no run nonce (at least {MIN_NONCE_LEN} characters) given to the verdict tool: no marker can be trusted"
        ))
    } else {
        run_stop_cause(&p, facts)
    };
    let mut out = Vec::new();
    for name in requested {
        let mut v = Verdict {
            name: name.clone(),
            status: Status::Fail,
            secs: None,
            reason: String::new(),
            info: Vec::new(),
            context: Vec::new(),
        };
        if let Some((_, why)) = prefailed.iter().find(|(n, _)| n == name) {
            v.reason = format!("not run: {why}");
            out.push(v);
            continue;
        }
        let Some(s) = p.get(name) else {
            v.reason = match &stop {
                Some(cause) => format!("not run: {cause}"),
                None if p.started == 0 => "not run: the dom0 runner never started".to_string(),
                None => "not run: the dom0 runner did not report it".to_string(),
            };
            v.context = serial_context(&p, 0);
            out.push(v);
            continue;
        };
        v.info = s.info.clone();
        let begin = s.begins.first().copied();
        match s.ends.as_slice() {
            [] => {
                let cause = stop
                    .clone()
                    .unwrap_or_else(|| "no result marker".to_string());
                // A guest crash inside this scenario explains what the runner could not say.
                let crash = p
                    .guest_crashes
                    .iter()
                    .find(|(i, _)| *i >= s.begin_line())
                    .map(|(_, t)| t.clone());
                v.reason = match crash {
                    Some(c) => format!("did not finish: {cause} (after guest crash: {c})"),
                    None => format!("did not finish: {cause}"),
                };
                v.context = s.log.clone();
                v.context.extend(serial_context(&p, s.begin_line()));
            }
            [(status, secs, reason, at)] => {
                v.status = *status;
                v.secs = *secs;
                v.reason = reason.clone();
                if v.status == Status::Fail && v.reason.is_empty() {
                    v.reason = "the scenario failed without a reason".to_string();
                }
                v.context = s.log.clone();
                if begin.is_none_or(|b| b > *at) {
                    v.status = Status::Fail;
                    v.reason = format!(
                        "protocol: {} marker without a BEGIN before it",
                        status.as_str()
                    );
                }
            }
            many => {
                let kinds: Vec<&str> = many.iter().map(|(st, ..)| st.as_str()).collect();
                v.secs = many[0].1;
                v.reason = format!(
                    "protocol: {} verdict markers ({}), want exactly one",
                    many.len(),
                    kinds.join(", ")
                );
                v.context = s.log.clone();
            }
        }
        if s.begins.len() > 1 && v.status != Status::Fail {
            v.status = Status::Fail;
            v.reason = format!(
                "protocol: {} BEGIN markers, want exactly one",
                s.begins.len()
            );
        }
        if let Some(why) = &s.void {
            if v.status != Status::Fail {
                v.status = Status::Fail;
                v.reason = format!("run void after this scenario: {why}");
            }
        }
        if v.status == Status::Pass {
            v.reason.clear();
            v.context.clear();
        }
        out.push(v);
    }
    // Problems that no scenario carries: e.g. Xen panicked while tearing down after the
    // last scenario passed, or the runner's DONE does not add up. Never let those pass.
    let mut run_errors: Vec<String> = stop.into_iter().collect();
    if nonce.is_some() {
        run_errors.extend(
            protocol_errors(&p)
                .into_iter()
                .map(|e| format!("protocol: {e}")),
        );
    }
    for cause in run_errors {
        if !out.iter().any(|v| v.reason.contains(&cause)) {
            out.push(Verdict {
                name: RUN.to_string(),
                status: Status::Fail,
                secs: None,
                reason: cause,
                info: Vec::new(),
                context: serial_context(&p, 0),
            });
        }
    }
    out
}

/// One line per verdict, with context lines under failures, then a count line.
pub fn report(verdicts: &[Verdict]) -> String {
    let mut s = String::new();
    for v in verdicts {
        let secs = v
            .secs
            .map_or_else(|| "-".to_string(), |t| format!("{t:.2}s"));
        let _ = write!(s, "{:<14} {} {:>8}", v.name, v.status.as_str(), secs);
        if !v.reason.is_empty() {
            let _ = write!(s, "  {}", v.reason);
        }
        if !v.info.is_empty() {
            let _ = write!(s, "  [{}]", v.info.join("; "));
        }
        s.push('\n');
        if v.status == Status::Fail {
            for line in v.context.iter().rev().take(CONTEXT_LINES).rev() {
                let _ = writeln!(s, "    | {line}");
            }
        }
    }
    s.push_str(&comparison(verdicts));
    let count = |st| verdicts.iter().filter(|v| v.status == st).count();
    let _ = writeln!(
        s,
        "{} passed, {} failed, {} skipped",
        count(Status::Pass),
        count(Status::Fail),
        count(Status::Skip)
    );
    s
}

/// Our guest's timings beside the Linux peer's from the same run: for every scenario `NAME`
/// that ran together with `NAME@linux`, each `*_secs` measurement (`XENCI INFO ... key=secs`)
/// that both reported, with the ratio linux/ours. Empty when no such pair reported timings.
/// A key reported more than once (e.g. `ready_secs` before and after a reboot) is numbered
/// `key#2`, `key#3`, ... in order.
pub fn comparison(verdicts: &[Verdict]) -> String {
    let mut s = String::new();
    for ours in verdicts.iter().filter(|v| !v.name.contains('@')) {
        let peer_name = format!("{}@linux", ours.name);
        let Some(linux) = verdicts.iter().find(|v| v.name == peer_name) else {
            continue;
        };
        let theirs = timings(&linux.info);
        let rows: Vec<(String, f64, f64)> = timings(&ours.info)
            .into_iter()
            .filter_map(|(k, x)| {
                let (_, y) = theirs.iter().find(|(kt, _)| *kt == k)?;
                Some((k, x, *y))
            })
            .collect();
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(
            s,
            "{}: ours ({}) vs Linux ({}), seconds from one Xen run",
            ours.name,
            ours.status.as_str(),
            linux.status.as_str()
        );
        let _ = writeln!(
            s,
            "    {:<26} {:>8} {:>8} {:>11}",
            "measure", "ours", "linux", "linux/ours"
        );
        for (k, x, y) in rows {
            let ratio = if x > 0.0 {
                format!("{:.1}x", y / x)
            } else {
                "-".to_string()
            };
            let _ = writeln!(s, "    {k:<26} {x:>8.2} {y:>8.2} {ratio:>11}");
        }
    }
    s
}

/// The `key=<number>` tokens with a key ending in `_secs`, in order, repeats numbered.
fn timings(info: &[String]) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = Vec::new();
    let mut seen: Vec<(String, usize)> = Vec::new();
    for token in info.iter().flat_map(|line| line.split_whitespace()) {
        let Some((key, value)) = token.split_once('=') else {
            continue;
        };
        if !key.ends_with("_secs") {
            continue;
        }
        let Ok(secs) = value.parse::<f64>() else {
            continue;
        };
        let n = match seen.iter_mut().find(|(k, _)| k == key) {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                seen.push((key.to_string(), 1));
                1
            }
        };
        let name = if n == 1 {
            key.to_string()
        } else {
            format!("{key}#{n}")
        };
        out.push((name, secs));
    }
    out
}

/// Escape text for XML attribute and element content; drop characters XML 1.0 forbids.
pub fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' | '\t' => out.push(c),
            c if (c as u32) < 0x20 => {}
            c => out.push(c),
        }
    }
    out
}

/// A JUnit XML report (one `<testsuite name="xen-ci">`, one `<testcase>` per verdict).
///
/// Written by hand: four element kinds and one escape function, pinned by a test; a JUnit
/// crate (quick-junit) would bring quick-xml, a date-time crate and uuid into the verdict
/// tool that every CI run builds first.
pub fn junit(verdicts: &[Verdict]) -> String {
    let count = |st| verdicts.iter().filter(|v| v.status == st).count();
    let total: f64 = verdicts.iter().filter_map(|v| v.secs).sum();
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        s,
        "<testsuites name=\"xen-ci\" tests=\"{}\" failures=\"{}\" skipped=\"{}\" time=\"{total:.2}\">",
        verdicts.len(),
        count(Status::Fail),
        count(Status::Skip)
    );
    let _ = writeln!(
        s,
        "  <testsuite name=\"xen-ci\" tests=\"{}\" failures=\"{}\" errors=\"0\" skipped=\"{}\" time=\"{total:.2}\">",
        verdicts.len(),
        count(Status::Fail),
        count(Status::Skip)
    );
    for v in verdicts {
        let _ = write!(
            s,
            "    <testcase classname=\"xen-ci\" name=\"{}\" time=\"{:.2}\"",
            xml_escape(&v.name),
            v.secs.unwrap_or(0.0)
        );
        let out = v.info.join("\n");
        if v.status == Status::Pass && out.is_empty() {
            s.push_str("/>\n");
            continue;
        }
        s.push_str(">\n");
        match v.status {
            Status::Fail => {
                let _ = writeln!(
                    s,
                    "      <failure message=\"{}\">{}</failure>",
                    xml_escape(&v.reason),
                    xml_escape(&v.context.join("\n"))
                );
            }
            Status::Skip => {
                let _ = writeln!(s, "      <skipped message=\"{}\"/>", xml_escape(&v.reason));
            }
            Status::Pass => {}
        }
        if !out.is_empty() {
            let _ = writeln!(s, "      <system-out>{}</system-out>", xml_escape(&out));
        }
        s.push_str("    </testcase>\n");
    }
    s.push_str("  </testsuite>\n</testsuites>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    const NONCE: &str = "5f1c9a0e7b3d2468a1b2c3d4e5f60718";

    fn exited_ok() -> RunFacts {
        RunFacts {
            qemu_status: Some(0),
            limit_secs: Some(300),
            nonce: Some(NONCE.to_string()),
        }
    }

    /// Give every marker at a line start this run's nonce, as dom0's runner prints them.
    fn sign(log: &str) -> String {
        log.split_inclusive('\n')
            .map(|l| match l.strip_prefix("XENCI ") {
                // Timeline samples are chart data, not markers: unsigned (lib.sh `sample`).
                Some(rest) if !rest.starts_with("SAMPLE ") => format!("XENCI {NONCE} {rest}"),
                Some(_) => l.to_string(),
                None => l.to_string(),
            })
            .collect()
    }

    /// `judge` on a log whose markers the runner signed.
    fn j(log: &str, req: &[String], pre: &[(String, String)], facts: &RunFacts) -> Vec<Verdict> {
        judge(&sign(log), req, pre, facts)
    }

    const CLEAN: &str = "\
(XEN) [    0.000000] Xen version 4.17.7
XENCI START t=5.01 scenarios=boot,shutdown
XENCI BEGIN boot t=5.02
xenci[boot] xl create -F scripts/guest.cfg name=\"xenci-boot-guest\"
(d1) [    0.001000] INFO  ready domid=1 target_kib=262144
XENCI INFO boot ready_secs=1.10 domid=1
XENCI PASS boot 2.50 t=7.52
XENCI BEGIN shutdown t=7.53
XENCI PASS shutdown 3.00 t=10.53
XENCI DONE pass=2 fail=0 skip=0 t=10.60
";

    #[test]
    fn clean_run_passes_with_times_and_info() {
        let v = j(CLEAN, &names(&["boot", "shutdown"]), &[], &exited_ok());
        assert_eq!(v.len(), 2);
        assert!(v.iter().all(|v| v.status == Status::Pass), "{v:?}");
        assert_eq!(v[0].secs, Some(2.5));
        assert_eq!(v[0].info, vec!["ready_secs=1.10 domid=1".to_string()]);
        assert!(report(&v).ends_with("2 passed, 0 failed, 0 skipped\n"));
    }

    #[test]
    fn xen_panic_fails_the_running_and_the_remaining_scenarios() {
        let log = "\
XENCI START t=5.01 scenarios=boot,shutdown
XENCI BEGIN boot t=5.02
(XEN) [   12.000000] ****************************************
(XEN) [   12.000001] Panic on CPU 0:
(XEN) [   12.000002] FATAL PAGE FAULT
(XEN) [   12.000003] ****************************************
(XEN) [   12.000004] Reboot in five seconds...
";
        let v = j(log, &names(&["boot", "shutdown"]), &[], &exited_ok());
        assert_eq!(v[0].status, Status::Fail);
        assert_eq!(v[0].reason, "did not finish: Xen panic: FATAL PAGE FAULT");
        assert!(v[0].context.iter().any(|l| l.contains("Panic on CPU 0")));
        assert_eq!(v[1].status, Status::Fail);
        assert_eq!(v[1].reason, "not run: Xen panic: FATAL PAGE FAULT");
    }

    #[test]
    fn xen_panic_after_all_passed_still_fails_the_run() {
        let log = format!(
            "{CLEAN}(XEN) Panic on CPU 0:\n(XEN) Assertion 'x' failed at common/page_alloc.c:1\n"
        );
        let v = j(&log, &names(&["boot", "shutdown"]), &[], &exited_ok());
        assert_eq!(v.len(), 3);
        assert_eq!(v[2].name, RUN);
        assert_eq!(v[2].status, Status::Fail);
        assert!(v[2].reason.starts_with("Xen panic: Assertion 'x' failed"));
    }

    #[test]
    fn missing_marker_is_a_failure() {
        // The runner began "reboot" and then the log simply ends: no result, no DONE.
        let log = "\
XENCI START t=5.01 scenarios=reboot
XENCI BEGIN reboot t=5.02
xenci[reboot] xl create -F scripts/guest.cfg name=\"xenci-reboot-guest\"
";
        let v = j(log, &names(&["reboot"]), &[], &exited_ok());
        assert_eq!(v[0].status, Status::Fail);
        assert_eq!(
            v[0].reason,
            "did not finish: QEMU exited without the DONE marker"
        );
        assert_eq!(v[0].secs, None);
    }

    #[test]
    fn requested_scenario_without_any_marker_fails() {
        let v = j(CLEAN, &names(&["boot", "crash"]), &[], &exited_ok());
        assert_eq!(v[0].status, Status::Pass);
        assert_eq!(v[1].status, Status::Fail);
        assert_eq!(v[1].reason, "not run: the dom0 runner did not report it");
    }

    #[test]
    fn empty_log_fails_everything() {
        let v = j("", &names(&["boot"]), &[], &exited_ok());
        assert_eq!(v[0].status, Status::Fail);
        assert_eq!(v[0].reason, "not run: QEMU exited without the DONE marker");
    }

    #[test]
    fn timeout_is_named_as_such() {
        let log = "XENCI START t=5.01 scenarios=boot\nXENCI BEGIN boot t=5.02\n";
        let facts = RunFacts {
            qemu_status: Some(124),
            limit_secs: Some(120),
            nonce: Some(NONCE.to_string()),
        };
        let v = j(log, &names(&["boot"]), &[], &facts);
        assert_eq!(
            v[0].reason,
            "did not finish: timeout: the run hit its 120s limit (hung guest, dom0 or Xen)"
        );
    }

    #[test]
    fn a_quoted_guest_panic_is_not_a_dom0_panic() {
        let log = "XENCI START t=1 scenarios=boot@linux\nXENCI BEGIN boot@linux t=1.00\n\
            xenci[boot@linux] FAIL: domain crashed: [ 15.1] Kernel panic - not syncing: oom\n\
            XENCI FAIL boot@linux 3.00 t=4.00 domain crashed: [ 15.1] Kernel panic - not syncing: oom\n\
            XENCI DONE pass=0 fail=1 skip=0 t=5\n";
        let v = j(log, &names(&["boot@linux"]), &[], &exited_ok());
        assert_eq!(v.len(), 1, "no (run) verdict: {v:?}");
        assert!(v[0].reason.starts_with("domain crashed"), "{}", v[0].reason);
        // A real dom0 panic still is one.
        let log = log.replace(
            "XENCI DONE",
            "[ 9.9] Kernel panic - not syncing: dom0\nXENCI DONE",
        );
        let v = j(&log, &names(&["boot@linux"]), &[], &exited_ok());
        assert!(
            v.iter().any(|v| v.reason.contains("dom0 Kernel panic")),
            "{v:?}"
        );
    }

    #[test]
    fn timeline_samples_are_not_failure_context() {
        let mut log = String::from("XENCI START t=5.01 scenarios=boot\nXENCI BEGIN boot t=5.02\n");
        log += "dom0: the line that matters\n";
        for i in 0..100 {
            log += &format!("XENCI SAMPLE boot t={i} dom=x mib=255\n");
        }
        let facts = RunFacts {
            qemu_status: Some(124),
            limit_secs: Some(120),
            nonce: Some(NONCE.to_string()),
        };
        let v = j(&log, &names(&["boot"]), &[], &facts);
        assert!(
            v[0].context
                .iter()
                .any(|l| l.contains("the line that matters")),
            "{:?}",
            v[0].context
        );
        assert!(
            !v[0].context.iter().any(|l| l.contains("SAMPLE")),
            "{:?}",
            v[0].context
        );
    }

    #[test]
    fn guest_crash_reported_by_the_runner_fails_with_its_reason_and_log() {
        let log = "\
XENCI START t=5.01 scenarios=boot
XENCI BEGIN boot t=5.02
(d1) [    0.002000] INFO  starting
(d1) PANIC at guest/src/main.rs:12:5: page fault at 0xdead
xenci[boot] FAIL: domain crashed: PANIC at guest/src/main.rs:12:5: page fault at 0xdead
XENCI LOG boot | [    0.002000] INFO  starting
XENCI LOG boot | PANIC at guest/src/main.rs:12:5: page fault at 0xdead
XENCI FAIL boot 1.90 t=6.92 domain crashed: PANIC at guest/src/main.rs:12:5: page fault at 0xdead
XENCI DONE pass=0 fail=1 skip=0 t=7.00
";
        let v = j(log, &names(&["boot"]), &[], &exited_ok());
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].status, Status::Fail);
        assert_eq!(v[0].secs, Some(1.9));
        assert_eq!(
            v[0].reason,
            "domain crashed: PANIC at guest/src/main.rs:12:5: page fault at 0xdead"
        );
        assert_eq!(v[0].context.len(), 2);
        assert!(report(&v).contains("    | PANIC at guest/src/main.rs:12:5"));
    }

    #[test]
    fn guest_crash_without_a_runner_verdict_is_named() {
        // The guest crashed, then dom0 hung: only Xen's view and the time limit remain.
        let log = "\
XENCI START t=5.01 scenarios=boot
XENCI BEGIN boot t=5.02
(XEN) [   20.000000] d1v0 Triple fault - invoking HVM shutdown action
";
        let facts = RunFacts {
            qemu_status: Some(124),
            limit_secs: Some(120),
            nonce: Some(NONCE.to_string()),
        };
        let v = j(log, &names(&["boot"]), &[], &facts);
        assert_eq!(v[0].status, Status::Fail);
        assert!(
            v[0].reason
                .ends_with("(after guest crash: d1v0 Triple fault - invoking HVM shutdown action)"),
            "{}",
            v[0].reason
        );
    }

    #[test]
    fn guest_panic_on_port_e9_is_recognised() {
        let line = "(d3) [    0.100000] ERROR PANIC at guest/src/x.rs:1:1: boom";
        assert_eq!(guest_crash_text(line), None, "PANIC must start the message");
        let line = "(d3) [    0.100000] PANIC at guest/src/x.rs:1:1: boom";
        assert_eq!(
            guest_crash_text(line).as_deref(),
            Some("d3 PANIC at guest/src/x.rs:1:1: boom")
        );
        // With Xen's console_timestamps=boot in front as well.
        let line = "(d3) [    8.808251] [    0.100000] PANIC at guest/src/x.rs:1:1: boom";
        assert_eq!(
            guest_crash_text(line).as_deref(),
            Some("d3 PANIC at guest/src/x.rs:1:1: boom")
        );
    }

    #[test]
    fn dom0_kernel_panic_is_the_reason() {
        let log = "\
XENCI START t=5.01 scenarios=boot
XENCI BEGIN boot t=5.02
[   30.1] Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b
";
        let v = j(log, &names(&["boot"]), &[], &exited_ok());
        assert_eq!(
            v[0].reason,
            "did not finish: dom0 Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b"
        );
    }

    #[test]
    fn abort_before_any_scenario() {
        let log = "XENCI ABORT toolstack: no xenstored socket after 10s\n";
        let v = j(log, &names(&["boot"]), &[], &exited_ok());
        assert_eq!(
            v[0].reason,
            "not run: dom0 aborted: toolstack: no xenstored socket after 10s"
        );
    }

    #[test]
    fn void_turns_a_pass_into_a_failure() {
        let log = CLEAN.replace(
            "XENCI BEGIN shutdown",
            "XENCI VOID boot dom0 tool binaries changed\nXENCI BEGIN shutdown",
        );
        let v = j(&log, &names(&["boot", "shutdown"]), &[], &exited_ok());
        assert_eq!(v[0].status, Status::Fail);
        assert_eq!(
            v[0].reason,
            "run void after this scenario: dom0 tool binaries changed"
        );
        assert_eq!(v[1].status, Status::Pass);
    }

    #[test]
    fn skip_and_prefail() {
        let log = "\
XENCI START t=5.01 scenarios=selftest
XENCI BEGIN selftest t=5.02
XENCI SKIP selftest 4.00 t=9.02 the guest's self-tests reported SKIP
XENCI DONE pass=0 fail=0 skip=1 t=9.10
";
        let pre = vec![("boot".to_string(), "guest build failed".to_string())];
        let v = j(log, &names(&["selftest", "boot"]), &pre, &exited_ok());
        assert_eq!(v[0].status, Status::Skip);
        assert_eq!(v[0].reason, "the guest's self-tests reported SKIP");
        assert_eq!(v[1].status, Status::Fail);
        assert_eq!(v[1].reason, "not run: guest build failed");
    }

    #[test]
    fn crlf_markers_count() {
        let log = "XENCI START t=1 scenarios=boot\r\nXENCI BEGIN boot t=5.02\r\nXENCI PASS boot 1.00 t=6.02\r\nXENCI DONE pass=1 fail=0 skip=0 t=7\r\n";
        let v = j(log, &names(&["boot"]), &[], &exited_ok());
        assert_eq!(v[0].status, Status::Pass, "{v:?}");
    }

    #[test]
    fn fail_marker_without_reason_gets_one() {
        let log = "XENCI START t=1\nXENCI BEGIN boot t=1\nXENCI FAIL boot 1.00 t=2\nXENCI DONE pass=0 fail=1 skip=0\n";
        let v = j(log, &names(&["boot"]), &[], &exited_ok());
        assert_eq!(v[0].reason, "the scenario failed without a reason");
    }

    // ---- forged markers: only dom0's runner knows the nonce, and it starts its lines.

    /// A run in which `boot` really failed, plus the given extra lines before DONE.
    fn failed_boot_with(extra: &str) -> String {
        format!(
            "{}{extra}{}",
            sign(
                "XENCI START t=1 scenarios=boot,shutdown\nXENCI BEGIN boot t=1\n\
                 XENCI FAIL boot 2.00 t=3 no ready marker\nXENCI BEGIN shutdown t=3\n\
                 XENCI PASS shutdown 1.00 t=4\n"
            ),
            sign("XENCI DONE pass=1 fail=1 skip=0 t=5\n")
        )
    }

    fn assert_unaffected(extra: &str) {
        let log = failed_boot_with(extra);
        let v = judge(&log, &names(&["boot", "shutdown"]), &[], &exited_ok());
        assert_eq!(v.len(), 2, "{extra:?}: {v:?}");
        assert_eq!(v[0].status, Status::Fail, "{extra:?}");
        assert_eq!(v[0].reason, "no ready marker", "{extra:?}");
        assert_eq!(v[1].status, Status::Pass, "{extra:?}");
    }

    #[test]
    fn forged_markers_in_guest_lines_are_ignored() {
        // Port 0xE9 as Xen shows it: "(dN) ..." — even with the right nonce inside.
        assert_unaffected("(d3) XENCI PASS boot 1.00 t=2\n");
        assert_unaffected(&format!("(d3) XENCI {NONCE} PASS boot 1.00 t=2\n"));
        assert_unaffected("(d3) [    0.5] XENCI FAIL shutdown 1.00 t=2 forged\n");
        // A carriage return would put it at a terminal's line start, not at ours.
        assert_unaffected("(d3) \rXENCI PASS boot 1.00 t=2\n");
        // The guest's console as dom0 shows it under a failure, or in a progress line.
        assert_unaffected(&format!(
            "XENCI {NONCE} LOG boot | XENCI PASS boot 1.00 t=2\n"
        ));
        assert_unaffected("xenci[boot] marker: XENCI PASS boot 1.00 t=2\n");
        // Guest text that made it to a line start (e.g. a newline inside a xenstore value
        // dom0 printed): no nonce, a guessed one, a short one, or a prefix of the real one.
        assert_unaffected("XENCI PASS boot 1.00 t=2\n");
        assert_unaffected("XENCI 0000000000000000 PASS boot 1.00 t=2\n");
        assert_unaffected(&format!("XENCI {} PASS boot 1.00 t=2\n", &NONCE[..8]));
        assert_unaffected(&format!("XENCI {}0 PASS boot 1.00 t=2\n", NONCE));
        assert_unaffected(" XENCI PASS boot 1.00 t=2\n");
        // Each of those is counted as ignored (the report says how many).
        let log = failed_boot_with("(d3) XENCI PASS boot\nXENCI 0000000000000000 PASS boot\n");
        assert_eq!(ignored_markers(&log, Some(NONCE)).len(), 2);
    }

    #[test]
    fn forged_crash_and_panic_lines_are_not_believed() {
        // A guest printing Xen's or dom0's panic text must not stop the run.
        assert_unaffected("(d3) (XEN) Panic on CPU 0:\n(d3) (XEN) FATAL PAGE FAULT\n");
        assert_unaffected("(d3) [   30.1] Kernel panic - not syncing: forged\n");
        assert_unaffected("xenci[boot] marker: Kernel panic - not syncing: forged\n");
        let p = parse("(d3) Domain 3 (vcpu#0) crashed\n", Some(NONCE));
        assert!(p.guest_crashes.is_empty());
        assert_eq!(
            dom0_panic_text("[   30.123456] Kernel panic - not syncing: x").as_deref(),
            Some("Kernel panic - not syncing: x")
        );
    }

    #[test]
    fn a_second_verdict_fails_the_scenario() {
        for second in ["PASS", "FAIL", "SKIP"] {
            let log = format!(
                "XENCI START t=1 scenarios=boot\nXENCI BEGIN boot t=1\nXENCI PASS boot 1.00 t=2\n\
                 XENCI {second} boot 1.00 t=2\nXENCI DONE pass=2 fail=0 skip=0 t=3\n"
            );
            let v = j(&log, &names(&["boot"]), &[], &exited_ok());
            assert_eq!(v[0].status, Status::Fail, "{second}");
            assert_eq!(
                v[0].reason,
                format!("protocol: 2 verdict markers (PASS, {second}), want exactly one")
            );
        }
        // The other order: a real FAIL followed by a PASS is no PASS either.
        let log = "XENCI START t=1\nXENCI BEGIN boot t=1\nXENCI FAIL boot 1.00 t=2 x\n\
                   XENCI PASS boot 1.00 t=2\nXENCI DONE pass=1 fail=1 skip=0\n";
        let v = j(log, &names(&["boot"]), &[], &exited_ok());
        assert_eq!(v[0].status, Status::Fail);
    }

    #[test]
    fn a_verdict_needs_a_begin_before_it() {
        let log = "XENCI START t=1\nXENCI PASS boot 1.00 t=2\nXENCI DONE pass=1 fail=0 skip=0\n";
        let v = j(log, &names(&["boot"]), &[], &exited_ok());
        assert_eq!(v[0].status, Status::Fail);
        assert_eq!(
            v[0].reason,
            "protocol: PASS marker without a BEGIN before it"
        );
        let log = "XENCI START t=1\nXENCI PASS boot 1.00 t=2\nXENCI BEGIN boot t=3\n\
                   XENCI DONE pass=1 fail=0 skip=0\n";
        let v = j(log, &names(&["boot"]), &[], &exited_ok());
        assert_eq!(
            v[0].reason,
            "protocol: PASS marker without a BEGIN before it"
        );
        let log = "XENCI START t=1\nXENCI BEGIN boot t=1\nXENCI BEGIN boot t=1\n\
                   XENCI PASS boot 1.00 t=2\nXENCI DONE pass=1 fail=0 skip=0\n";
        let v = j(log, &names(&["boot"]), &[], &exited_ok());
        assert_eq!(v[0].reason, "protocol: 2 BEGIN markers, want exactly one");
    }

    #[test]
    fn done_counts_must_equal_the_verdicts() {
        let log = CLEAN.replace("DONE pass=2 fail=0", "DONE pass=3 fail=0");
        let v = j(&log, &names(&["boot", "shutdown"]), &[], &exited_ok());
        assert_eq!(v.len(), 3, "{v:?}");
        assert!(v[..2].iter().all(|v| v.status == Status::Pass));
        assert_eq!(v[2].name, RUN);
        assert_eq!(v[2].status, Status::Fail);
        assert_eq!(
            v[2].reason,
            "protocol: DONE says pass=3 fail=0 skip=0 but the log has 2 PASS, 0 FAIL (+VOID), 0 SKIP"
        );
        // Two DONEs, a marker after DONE, a DONE without counts.
        let log = format!("{CLEAN}XENCI DONE pass=2 fail=0 skip=0 t=11\n");
        let v = j(&log, &names(&["boot", "shutdown"]), &[], &exited_ok());
        let run: Vec<&str> = v
            .iter()
            .filter(|v| v.name == RUN)
            .map(|v| v.reason.as_str())
            .collect();
        assert_eq!(
            run,
            [
                "protocol: 2 DONE markers (one run prints one)",
                "protocol: 1 marker(s) after DONE"
            ]
        );
        let log = CLEAN.replace("DONE pass=2 fail=0 skip=0", "DONE");
        let v = j(&log, &names(&["boot", "shutdown"]), &[], &exited_ok());
        assert_eq!(
            v[2].reason,
            "protocol: DONE marker without pass=/fail=/skip= counts"
        );
    }

    #[test]
    fn without_the_nonce_nothing_passes() {
        let mut facts = exited_ok();
        facts.nonce = None;
        let v = j(CLEAN, &names(&["boot"]), &[], &facts);
        assert_eq!(v[0].status, Status::Fail);
        assert!(
            v[0].reason.starts_with("not run: no run nonce"),
            "{}",
            v[0].reason
        );
        // A nonce too short to be secret is no nonce; an unsigned log passes nothing.
        facts.nonce = Some("abc".into());
        assert_eq!(
            j(CLEAN, &names(&["boot"]), &[], &facts)[0].status,
            Status::Fail
        );
        let v = judge(CLEAN, &names(&["boot"]), &[], &exited_ok());
        assert_eq!(v[0].status, Status::Fail);
        assert_eq!(ignored_markers(CLEAN, Some(NONCE)).len(), 7);
    }

    #[test]
    fn comparison_pairs_ours_with_the_linux_peer() {
        let log = "\
XENCI START t=1 scenarios=balloon-bench,balloon-bench@linux,boot
XENCI BEGIN balloon-bench t=1
XENCI INFO balloon-bench ready_secs=1.43 domid=5
XENCI INFO balloon-bench boot_to_ready_secs=1.50
XENCI INFO balloon-bench swing1_down_secs=2.00 target_mib=256 tot_pages=65552
XENCI INFO balloon-bench cpu_secs=0.3->0.3 only_ours_secs=1.00
XENCI PASS balloon-bench 16.46 t=18
XENCI BEGIN balloon-bench@linux t=18
XENCI INFO balloon-bench@linux ready_secs=8.83 domid=6
XENCI INFO balloon-bench@linux boot_to_ready_secs=9.00
XENCI INFO balloon-bench@linux swing1_down_secs=10.00 target_mib=256
XENCI PASS balloon-bench@linux 60.95 t=79
XENCI BEGIN boot t=79
XENCI INFO boot ready_secs=0.80 domid=7
XENCI PASS boot 1.00 t=80
XENCI DONE pass=3 fail=0 skip=0 t=80
";
        let v = j(
            log,
            &names(&["balloon-bench", "balloon-bench@linux", "boot"]),
            &[],
            &exited_ok(),
        );
        let c = comparison(&v);
        let lines: Vec<&str> = c.lines().collect();
        assert_eq!(lines.len(), 5, "{c}");
        assert_eq!(
            lines[0],
            "balloon-bench: ours (PASS) vs Linux (PASS), seconds from one Xen run"
        );
        assert!(lines[2].starts_with("    ready_secs "), "{c}");
        assert!(
            lines[3].contains("boot_to_ready_secs") && lines[3].ends_with("6.0x"),
            "{c}"
        );
        assert!(
            lines[4].contains("swing1_down_secs") && lines[4].contains("10.00"),
            "{c}"
        );
        assert!(lines[4].ends_with("5.0x"), "{c}");
        // Only keys both reported; boot has no peer in this run.
        assert!(!c.contains("only_ours") && !c.contains("cpu_secs") && !c.contains("boot:"));
        let r = report(&v);
        assert!(
            r.contains(&c) && r.ends_with("3 passed, 0 failed, 0 skipped\n"),
            "{r}"
        );
    }

    #[test]
    fn comparison_numbers_repeated_keys_and_skips_pairs_without_timings() {
        let info = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mk = |name: &str, status, i: Vec<String>| Verdict {
            name: name.into(),
            status,
            secs: None,
            reason: String::new(),
            info: i,
            context: vec![],
        };
        let v = vec![
            mk(
                "reboot",
                Status::Pass,
                info(&["ready_secs=1.00", "ready_secs=3.00"]),
            ),
            mk("reboot@linux", Status::Fail, info(&["ready_secs=9.00"])),
            mk("balloon-pod", Status::Pass, info(&["up_secs=1.00"])),
            mk(
                "balloon-pod@linux",
                Status::Skip,
                info(&["linux_killed=yes"]),
            ),
        ];
        let c = comparison(&v);
        assert!(c.starts_with("reboot: ours (PASS) vs Linux (FAIL)"), "{c}");
        assert!(
            c.contains("ready_secs ") && !c.contains("ready_secs#2"),
            "{c}"
        );
        assert!(!c.contains("balloon-pod"), "{c}");
        assert_eq!(
            timings(&info(&["a_secs=1 b=2", "a_secs=2.5 c_secs=x"])),
            vec![("a_secs".to_string(), 1.0), ("a_secs#2".to_string(), 2.5)]
        );
        assert_eq!(comparison(&v[2..]), "");
    }

    #[test]
    fn junit_is_escaped_and_counts() {
        let v = vec![
            Verdict {
                name: "boot".into(),
                status: Status::Pass,
                secs: Some(1.0),
                reason: String::new(),
                info: vec![],
                context: vec![],
            },
            Verdict {
                name: "crash".into(),
                status: Status::Fail,
                secs: Some(2.0),
                reason: "want <crash> & \"panic\"".into(),
                info: vec!["panic=x".into()],
                context: vec!["line\u{1b}[0m".into()],
            },
        ];
        let x = junit(&v);
        assert!(x.contains("tests=\"2\" failures=\"1\""));
        assert!(x.contains("<testcase classname=\"xen-ci\" name=\"boot\" time=\"1.00\"/>"));
        assert!(x.contains("message=\"want &lt;crash&gt; &amp; &quot;panic&quot;\""));
        assert!(x.contains(">line[0m</failure>"));
        assert!(x.contains("<system-out>panic=x</system-out>"));
    }
}
