//! Fast boot tests without Xen: the kernel ELF boots under plain QEMU through its PVH note,
//! parses start_info, finds no Xen, reports it on port 0xE9 and exits via isa-debug-exit.
//! Skips (with a message) where qemu-system-x86_64 is not installed.

use std::path::Path;
use std::process::Command;

const QEMU: &str = "qemu-system-x86_64";
/// isa-debug-exit status for the kernel's "no Xen" exit (value 0x10 → (0x10 << 1) | 1).
const EXIT_NO_XEN: i32 = 33;

fn qemu_available() -> bool {
    Command::new(QEMU).arg("--version").output().is_ok()
}

/// Boots the kernel with `mem_mib` of RAM and `cmdline`; returns (exit status, 0xE9 log).
fn boot(mem_mib: u32, cmdline: &str) -> (i32, String) {
    let kernel = env!("CARGO_BIN_EXE_guest");
    let dir = tempdir();
    let log = dir.join("e9.log");
    let out = Command::new("timeout")
        .args([
            "60", QEMU, "-accel", "tcg", "-machine", "pc", "-display", "none",
        ])
        .args([
            "-monitor",
            "none",
            "-serial",
            "none",
            "-no-reboot",
            "-net",
            "none",
        ])
        .args([
            "-m",
            &mem_mib.to_string(),
            "-kernel",
            kernel,
            "-append",
            cmdline,
        ])
        .arg("-debugcon")
        .arg(format!("file:{}", log.display()))
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .output()
        .expect("run qemu");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    (out.status.code().unwrap_or(-1), text)
}

fn tempdir() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "guest-qemu-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

macro_rules! require_qemu {
    () => {
        if !qemu_available() {
            eprintln!("SKIP: {QEMU} not installed; plain-QEMU boot test not run");
            return;
        }
    };
}

#[test]
fn boots_without_xen_and_reports_it() {
    require_qemu!();
    assert!(Path::new(env!("CARGO_BIN_EXE_guest")).exists());
    let (status, log) = boot(128, "loglevel=debug");
    assert_eq!(status, EXIT_NO_XEN, "log:\n{log}");
    assert!(log.contains("booting (PVH"), "log:\n{log}");
    assert!(log.contains("no Xen hypervisor found"), "log:\n{log}");
    // QEMU's PVH memmap for -m 128: 639 KiB low RAM + [1 MiB, 128 MiB - 128 KiB).
    assert!(log.contains("boot without Xen: 127 MiB RAM"), "log:\n{log}");
    // The memory model was built from the same memmap: 159 pages below 640 KiB plus
    // [1 MiB, 128 MiB - 128 KiB); one section, all 64 subsections present and active
    // (the last one only partly RAM).
    assert!(log.contains("mm: ram 32639 pages"), "log:\n{log}");
    assert!(
        log.contains("subsections 64 present 64 active"),
        "log:\n{log}"
    );
}

#[test]
fn maps_ram_above_4g_and_reports_bad_cmdline_words() {
    require_qemu!();
    let (status, log) = boot(5000, "loglevel=loud bogus");
    assert_eq!(status, EXIT_NO_XEN, "log:\n{log}");
    assert!(log.contains("mapped RAM [0x100000000-"), "log:\n{log}");
    // 5000 MiB: sections 0-0x17 below the 3 GiB PCI hole, 0x20-0x2f above 4 GiB.
    assert!(
        log.contains("mm: section 0x2f [0x178000000, 0x180000000) boot-ram online"),
        "log:\n{log}"
    );
    assert!(log.contains("sections 40 present 40 online"), "log:\n{log}");
    assert!(log.contains("ignoring \"loglevel=loud\""), "log:\n{log}");
    assert!(
        log.contains("ignoring \"bogus\": unknown option"),
        "log:\n{log}"
    );
}
