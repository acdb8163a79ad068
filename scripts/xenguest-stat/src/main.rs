//! `xenguest-stat` — a guest's memory from dom0: what the guest reports under xenstore
//! `data/` (mm, balloon, hotplug, grant) beside Xen's own numbers.
//!
//! It runs the stock CLI tools (`xl list`, `xl debug-keys q` + `xl dmesg`,
//! `xenstore-ls -f`) rather than linking libxenstore/libxl: no C library to build
//! against, the same binary works on any dom0 that has the Xen tools, including the
//! harness's initramfs, and what it reads is exactly what an operator would type.

use std::process::{Command, ExitCode};
use std::time::Duration;
use xenguest_stat::{
    format_report, parse_debug_q, parse_xenstore_ls, parse_xl_list, resolve, to_json, Report,
};

const USAGE: &str = "\
usage: xenguest-stat [--json] [--watch] [--interval SECS] [--no-exact] [DOMAIN...]
  DOMAIN      a domid or a name (default: every domain but dom0)
  --json      one JSON array per refresh instead of the table
  --watch     refresh in place every --interval seconds (default 2) until interrupted;
              a domain that goes away ends the watch with an error
  --no-exact  skip `xl debug-keys q` (exact tot_pages); use xl list's MiB only
exit status: 0 ok, 1 a domain is unknown or gone, 2 usage error or a tool failed";

struct Args {
    json: bool,
    watch: bool,
    interval: f64,
    exact: bool,
    domains: Vec<String>,
}

fn parse_args() -> Result<Args, lexopt::Error> {
    use lexopt::prelude::*;
    let mut a = Args {
        json: false,
        watch: false,
        interval: 2.0,
        exact: true,
        domains: Vec::new(),
    };
    let mut p = lexopt::Parser::from_env();
    while let Some(arg) = p.next()? {
        match arg {
            Long("json") => a.json = true,
            Long("watch") => a.watch = true,
            Long("interval") => {
                a.interval = p.value()?.parse()?;
                if !a.interval.is_finite() || a.interval <= 0.0 {
                    return Err("--interval must be a positive number of seconds".into());
                }
            }
            Long("no-exact") => a.exact = false,
            Short('h') | Long("help") => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            Value(v) => a.domains.push(v.string()?),
            _ => return Err(arg.unexpected()),
        }
    }
    Ok(a)
}

enum Failure {
    /// A domain is unknown or vanished (exit 1).
    Domain(String),
    /// A tool could not run or failed in an unexpected way (exit 2).
    Tool(String),
}

fn run(cmd: &str, args: &[&str]) -> Result<String, Failure> {
    let out = Command::new(cmd).args(args).output().map_err(|e| {
        Failure::Tool(format!(
            "cannot run {cmd}: {e} (are the Xen tools on PATH?)"
        ))
    })?;
    if !out.status.success() {
        return Err(Failure::Tool(format!(
            "{cmd} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One round: look every domain up again (it may have gone), read its keys and Xen's.
fn snapshot(a: &Args) -> Result<Vec<Report>, Failure> {
    let rows = parse_xl_list(&run("xl", &["list"])?).map_err(Failure::Tool)?;
    let chosen: Vec<_> = if a.domains.is_empty() {
        rows.iter().filter(|r| r.domid != 0).cloned().collect()
    } else {
        let mut v = Vec::new();
        for d in &a.domains {
            match resolve(&rows, d) {
                Some(r) => v.push(r.clone()),
                None => return Err(Failure::Domain(format!("no domain {d:?} (not in xl list)"))),
            }
        }
        v
    };
    let dmesg = if a.exact {
        // Asks Xen to print every domain's page counts into its console ring.
        run("xl", &["debug-keys", "q"])?;
        run("xl", &["dmesg"])?
    } else {
        String::new()
    };
    let mut reports = Vec::new();
    for row in chosen {
        let base = format!("/local/domain/{}", row.domid);
        let ls = run("xenstore-ls", &["-f", &base]).map_err(|e| match e {
            Failure::Tool(t) => Failure::Domain(format!(
                "domain {} ({}) vanished while being read: {t}",
                row.domid, row.name
            )),
            d => d,
        })?;
        let keys = parse_xenstore_ls(&ls, &base);
        reports.push(Report::new(
            row.clone(),
            parse_debug_q(&dmesg, row.domid),
            &keys,
        ));
    }
    Ok(reports)
}

fn render(a: &Args, reports: &[Report]) -> String {
    if a.json {
        return to_json(reports) + "\n";
    }
    if reports.is_empty() {
        return "no domains but dom0\n".into();
    }
    reports
        .iter()
        .map(format_report)
        .collect::<Vec<_>>()
        .join("\n")
}

fn main() -> ExitCode {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("xenguest-stat: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    loop {
        match snapshot(&a) {
            Ok(reports) => {
                let text = render(&a, &reports);
                if a.watch && !a.json {
                    // Home, draw, clear what an earlier, longer frame left below.
                    print!("\x1b[H{text}\x1b[J");
                } else {
                    print!("{text}");
                }
            }
            Err(Failure::Domain(e)) => {
                eprintln!("xenguest-stat: {e}");
                return ExitCode::from(1);
            }
            Err(Failure::Tool(e)) => {
                eprintln!("xenguest-stat: {e}");
                return ExitCode::from(2);
            }
        }
        if !a.watch {
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(Duration::from_secs_f64(a.interval));
    }
}
