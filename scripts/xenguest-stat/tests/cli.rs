//! The binary against stand-in `xl` and `xenstore-ls` scripts on PATH: what an operator
//! sees, and the exit status, for our guest, a Linux guest, an unknown domain and a
//! domain that goes away during `--watch`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A directory with fake tools. `xl list` shows domain 3 (ours) and 4 (Linux) until the
/// file `gone` exists; after `rounds` calls of `xl list` it creates `gone` itself.
fn fake_tools(name: &str, rounds: u32) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xenguest-stat-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.display();
    let xl = format!(
        r#"#!/bin/sh
case $1 in
list)
    n=$(cat {d}/calls 2>/dev/null || echo 0); n=$((n + 1)); echo $n >{d}/calls
    [ $n -gt {rounds} ] && touch {d}/gone
    echo 'Name                                        ID   Mem VCPUs	State	Time(s)'
    echo 'Domain-0                                     0  1024     1     r-----      12.3'
    [ -e {d}/gone ] || echo 'xenci-guest                                  3   256     2     -b----       1.2'
    echo 'xenci-linux                                  4   256     1     -b----       7.9' ;;
debug-keys) ;;
dmesg)
    echo '(XEN) [ 9.5] General information for domain 3:'
    echo '(XEN) [ 9.5]     nr_pages=65552 xenheap_pages=5 dirty_cpus={{}} max_pages=65792'
    echo '(XEN) [ 9.6] General information for domain 4:'
    echo '(XEN) [ 9.6]     nr_pages=65552 xenheap_pages=5 dirty_cpus={{}} max_pages=65792' ;;
*) exit 1 ;;
esac
"#
    );
    let ls = r#"#!/bin/sh
case $2 in
/local/domain/3)
    echo '/local/domain/3/memory/target = "262144"'
    echo '/local/domain/3/data/mm/pages/ram = "65536"'
    echo '/local/domain/3/data/mm/expected-tot-pages = "65552"'
    echo '/local/domain/3/data/balloon/state = "done"' ;;
/local/domain/4)
    echo '/local/domain/4/memory/target = "262144"' ;;
*) echo "xenstore-ls: could not access path $2" >&2; exit 1 ;;
esac
"#;
    for (file, text) in [("xl", xl.as_str()), ("xenstore-ls", ls)] {
        let p = dir.join(file);
        std::fs::write(&p, text).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir
}

fn run(tools: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xenguest-stat"))
        .args(args)
        .env("PATH", format!("{}:/usr/bin:/bin", tools.display()))
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn ours_and_linux_by_name_and_by_id() {
    let t = fake_tools("both", 100);
    let o = run(&t, &["xenci-guest", "4"]);
    let out = text(&o.stdout);
    assert!(o.status.success(), "{out}{}", text(&o.stderr));
    assert!(
        out.contains("xenci-guest (domid 3): xenguest-rs guest"),
        "{out}"
    );
    assert!(
        out.contains("expects tot_pages 65552: matches Xen"),
        "{out}"
    );
    assert!(out.contains("xenci-linux (domid 4): not ours"), "{out}");
    assert!(out.contains("no data/mm: not a xenguest-rs guest"), "{out}");
    // No names: every domain but dom0.
    let all = text(&run(&t, &[]).stdout);
    assert!(all.contains("domid 3") && all.contains("domid 4") && !all.contains("Domain-0"));
    let j: serde_json::Value = serde_json::from_slice(&run(&t, &["--json", "3"]).stdout).unwrap();
    assert_eq!(j[0]["tot_pages"], 65552);
    std::fs::remove_dir_all(t).unwrap();
}

#[test]
fn unknown_domain_and_bad_usage() {
    let t = fake_tools("unknown", 100);
    let o = run(&t, &["nosuch"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("no domain \"nosuch\""),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(run(&t, &["--interval", "0", "3"]).status.code(), Some(2));
    assert_eq!(run(&t, &["--bogus"]).status.code(), Some(2));
    let o = run(Path::new("/nonexistent"), &["3"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("cannot run xl"),
        "{}",
        text(&o.stderr)
    );
    std::fs::remove_dir_all(t).unwrap();
}

#[test]
fn watch_ends_with_an_error_when_the_domain_goes_away() {
    let t = fake_tools("watch", 2);
    let o = run(&t, &["--watch", "--interval", "0.05", "xenci-guest"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    // Two frames drawn in place, then the error.
    assert_eq!(text(&o.stdout).matches("\x1b[H").count(), 2);
    assert!(
        text(&o.stderr).contains("no domain \"xenci-guest\""),
        "{}",
        text(&o.stderr)
    );
    std::fs::remove_dir_all(t).unwrap();
}
