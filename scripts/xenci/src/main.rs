//! `xenci` — the verdict step of `scripts/xen-ci`.
//!
//! ```text
//! xenci verdict --nonce-file FILE [--serial FILE] [--qemu-status N] [--limit SECS]
//!               [--junit FILE] [--prefail NAME=REASON]... -- SCENARIO...
//! ```
//! The nonce file holds this run's secret, which only the host and dom0's runner know:
//! only markers carrying it, at the start of a line, count (without it nothing passes).
//! Prints one line per scenario (name, PASS/FAIL/SKIP, seconds, reason, measurements;
//! the last relevant log lines under a failure) and a count line; writes JUnit XML.
//! Exit status: 0 iff every scenario passed (SKIP counts as not failed), 1 otherwise,
//! 2 on a usage error.
//!
//! ```text
//! xenci plot SERIAL DIR
//! ```
//! Draws DIR/timeline-<scenario>.png for every scenario in the serial log that changed a
//! domain's target (`XENCI SAMPLE` lines) and prints their paths.

use std::process::ExitCode;
use xenci::{ignored_markers, judge, junit, report, RunFacts, Status};

const USAGE: &str = "usage: xenci verdict --nonce-file FILE [--serial FILE] [--qemu-status N] \
[--limit SECS] [--junit FILE] [--prefail NAME=REASON]... -- SCENARIO...";

struct Args {
    serial: Option<String>,
    junit: Option<String>,
    facts: RunFacts,
    prefailed: Vec<(String, String)>,
    scenarios: Vec<String>,
}

fn parse_args(args: Vec<String>) -> Result<Args, lexopt::Error> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_args(args);
    match p.next()? {
        Some(Value(v)) if v == "verdict" => {}
        _ => return Err("the first argument must be verdict or plot".into()),
    }
    let mut a = Args {
        serial: None,
        junit: None,
        facts: RunFacts::default(),
        prefailed: Vec::new(),
        scenarios: Vec::new(),
    };
    while let Some(arg) = p.next()? {
        match arg {
            Long("serial") => a.serial = Some(p.value()?.string()?),
            Long("junit") => a.junit = Some(p.value()?.string()?),
            Long("nonce-file") => {
                let f = p.value()?.string()?;
                let n = std::fs::read_to_string(&f).map_err(|e| format!("cannot read {f}: {e}"))?;
                a.facts.nonce = Some(n.trim().to_string());
            }
            Long("qemu-status") => a.facts.qemu_status = Some(p.value()?.parse()?),
            Long("limit") => a.facts.limit_secs = Some(p.value()?.parse()?),
            Long("prefail") => {
                let v = p.value()?.string()?;
                let (n, r) = v.split_once('=').ok_or(format!("bad --prefail {v}"))?;
                a.prefailed.push((n.to_string(), r.to_string()));
            }
            // Everything after `--` comes back as a Value too.
            Value(v) => a.scenarios.push(v.string()?),
            _ => return Err(arg.unexpected()),
        }
    }
    if a.scenarios.is_empty() {
        return Err("no scenarios given".into());
    }
    Ok(a)
}

fn plot(serial: &str, dir: &str) -> ExitCode {
    let text = match std::fs::read(serial) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => {
            eprintln!("xenci: cannot read {serial}: {e}");
            return ExitCode::from(2);
        }
    };
    match xenci::timeline::draw_all(&text, std::path::Path::new(dir)) {
        Ok(paths) => {
            for p in paths {
                println!("{}", p.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xenci: plot: {e}");
            ExitCode::from(2)
        }
    }
}

/// `xenci bench --nonce-file F --serial S --json OUT [--markdown OUT] [--meta K=V]...
/// [-- SCENARIO...]`: the bench table of a run (scripts/bench).
fn bench_cmd(args: &[String]) -> ExitCode {
    use serde_json::{Map, Value};
    let mut facts = RunFacts::default();
    let (mut serial, mut json_out, mut md_out) = (None, None, None);
    let mut meta = Map::new();
    let mut scenarios: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned();
        match a.as_str() {
            "--nonce-file" => match val().map(std::fs::read_to_string) {
                Some(Ok(n)) => facts.nonce = Some(n.trim().to_string()),
                _ => {
                    eprintln!("xenci: bench: --nonce-file needs a readable file");
                    return ExitCode::from(2);
                }
            },
            "--serial" => serial = val(),
            "--json" => json_out = val(),
            "--markdown" => md_out = val(),
            "--meta" => {
                if let Some((k, v)) = val().as_deref().and_then(|kv| kv.split_once('=')) {
                    meta.insert(k.to_string(), Value::String(v.to_string()));
                }
            }
            "--" => scenarios.extend(it.by_ref().cloned()),
            other => {
                eprintln!("xenci: bench: unknown argument {other}");
                return ExitCode::from(2);
            }
        }
    }
    if scenarios.is_empty() {
        scenarios = xenci::bench::SCENARIOS
            .iter()
            .map(|s| s.to_string())
            .collect();
    }
    let Some(serial) = serial else {
        eprintln!("xenci: usage: xenci bench --nonce-file F --serial S --json OUT [--markdown OUT] [--meta K=V]... [-- SCENARIO...]");
        return ExitCode::from(2);
    };
    let text = std::fs::read(&serial)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let verdicts = judge(&text, &scenarios, &[], &facts);
    let b = xenci::bench::build(&verdicts);
    print!("{}", xenci::bench::text(&b));
    let j = xenci::bench::to_json(&b, Value::Object(meta));
    if let Some(out) = json_out {
        let body = serde_json::to_string_pretty(&j).expect("json") + "\n";
        if let Err(e) = std::fs::write(&out, body) {
            eprintln!("xenci: cannot write {out}: {e}");
            return ExitCode::from(2);
        }
    }
    if let Some(out) = md_out {
        if let Err(e) = std::fs::write(&out, xenci::bench::markdown(&j, None)) {
            eprintln!("xenci: cannot write {out}: {e}");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}

fn read_json(path: &str) -> Result<serde_json::Value, String> {
    std::fs::read_to_string(path)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
        .map_err(|e| format!("{path}: {e}"))
}

/// `xenci bench-readme JSON README [PREV-JSON]`: the README's bench block from the JSON
/// (with another run's numbers beside it).
fn bench_readme(args: &[String]) -> ExitCode {
    let (json, readme, prev) = match args {
        [j, r] => (j, r, None),
        [j, r, p] => (j, r, Some(p)),
        _ => {
            eprintln!("xenci: usage: xenci bench-readme JSON README [PREV-JSON]");
            return ExitCode::from(2);
        }
    };
    let (j, prev) = match (read_json(json), prev.map(|p| read_json(p)).transpose()) {
        (Ok(j), Ok(p)) => (j, p),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("xenci: {e}");
            return ExitCode::from(2);
        }
    };
    let old = match std::fs::read_to_string(readme) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("xenci: {readme}: {e}");
            return ExitCode::from(2);
        }
    };
    match xenci::bench::replace_block(&old, &xenci::bench::markdown(&j, prev.as_ref())) {
        Ok(new) => {
            if new != old {
                if let Err(e) = std::fs::write(readme, new) {
                    eprintln!("xenci: cannot write {readme}: {e}");
                    return ExitCode::from(2);
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xenci: {readme}: {e}");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    match argv.first().map(String::as_str) {
        Some("nothing-kernel") => {
            return match &argv[1..] {
                [out] => match std::fs::write(out, xenci::nothing::image()) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("xenci: cannot write {out}: {e}");
                        ExitCode::from(2)
                    }
                },
                _ => {
                    eprintln!("xenci: usage: xenci nothing-kernel FILE");
                    ExitCode::from(2)
                }
            };
        }
        Some("bench") => return bench_cmd(&argv[1..]),
        Some("bench-readme") => return bench_readme(&argv[1..]),
        _ => {}
    }
    if argv.first().map(String::as_str) == Some("plot") {
        return match &argv[1..] {
            [serial, dir] => plot(serial, dir),
            _ => {
                eprintln!("xenci: usage: xenci plot SERIAL DIR");
                ExitCode::from(2)
            }
        };
    }
    let args = match parse_args(argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("xenci: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let serial = match &args.serial {
        // A missing serial log is itself evidence: every scenario fails "not run".
        Some(path) => std::fs::read(path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default(),
        None => String::new(),
    };
    let verdicts = judge(&serial, &args.scenarios, &args.prefailed, &args.facts);
    print!("{}", report(&verdicts));
    let ignored = ignored_markers(&serial, args.facts.nonce.as_deref());
    if !ignored.is_empty() {
        println!(
            "ignored {} marker-like line(s) that are not the harness's (no or wrong nonce, or not at a line start)",
            ignored.len()
        );
    }
    if let Some(path) = &args.junit {
        if let Err(e) = std::fs::write(path, junit(&verdicts)) {
            eprintln!("xenci: cannot write {path}: {e}");
            return ExitCode::from(2);
        }
    }
    if verdicts.iter().any(|v| v.status == Status::Fail) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
