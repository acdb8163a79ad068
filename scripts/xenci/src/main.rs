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

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
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
