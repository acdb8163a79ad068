//! The kernel command line (xl `extra=` / `cmdline=`), parsed strictly.
//!
//! Words are separated by spaces. Known:
//!
//! | word | meaning |
//! |---|---|
//! | `loglevel=error\|warn\|info\|debug\|trace` | most verbose level logged (default `info`) |
//! | `selftest` | run the built-in self-tests, print `Test result: ...`, power off |
//! | `panic` | panic deliberately once ready (proves the crash path) |
//! | `hotplug-fail=N` | test switch: the memmap allocation of the first N hot-adds fails |
//! | `walk` | run the saveable-page walker after every balloon settle (hotplug-walk scenario) |
//! | `race` | every vCPU but 0 runs memmap walkers continuously against vCPU 0's hot-add/remove (race scenario) |
//! | `race-bug=early-active\|no-grace` | test switch: inject an ordering bug the race walkers must detect (active bit before the descriptors are initialised; memmap freed without a grace period) |
//! | `debugcon=all\|warn` | which log lines go to port 0xE9 (Xen's console, `xl dmesg`) besides the PV console: `all`, or only warnings, errors, panics, raw harness lines, the first line and `ready` (default `warn`: Xen emulates each 0xE9 line and prints it on its serial console, ~0.5-1.5 ms of this vCPU under TCG). Without Xen or a PV console, and after a panic, every line goes there, the held boot lines first |
//! | `suspend-handback=on\|off` | before a suspend (`xl save`, `xl migrate`), hand free memory beyond a small reserve back to Xen and take it again afterwards (default `on`) |
//! | `balloon-scrub=on\|off` | zero ballooned-out pages that held our data before Xen gets them (default `on`; Xen does not scrub what a live domain frees, and hands the frames to the next domain; Linux's `xen_scrub_pages`). `off` only on a host where no other domain may see them |
//! | `grant=give:N[:rw]` / `grant=map` | role in the two-guest grant handshake (`xen::grant::pair`): grant N pages (1..=256, read-only or `:rw`) to the peer, or map the peer's grants |
//! | `fill=HEX:MIB` | test switch (balloon-scrub scenario): at boot, allocate MIB MiB as 2 MiB blocks, write the 64-bit marker HEX twice at the start of every page, free them again, and publish `data/fill/pages`; dom0 then looks for the marker in frames Xen hands out later |
//! | `say=TEXT` | test switch (harness-forgery scenario): print TEXT as a raw line on port 0xE9 and the PV console at boot; `+` is a space, `%XX` an ASCII byte (e.g. `%0D`); repeatable |
//!
//! Unknown words and bad values are collected, not fatal: the kernel logs each one and
//! carries on with the defaults.

use alloc::string::String;
use alloc::vec::Vec;

/// How much the kernel logs; ordered from least to most verbose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "error" => Self::Error,
            "warn" => Self::Warn,
            "info" => Self::Info,
            "debug" => Self::Debug,
            "trace" => Self::Trace,
            _ => return None,
        })
    }

    pub fn to_filter(self) -> log::LevelFilter {
        match self {
            Self::Error => log::LevelFilter::Error,
            Self::Warn => log::LevelFilter::Warn,
            Self::Info => log::LevelFilter::Info,
            Self::Debug => log::LevelFilter::Debug,
            Self::Trace => log::LevelFilter::Trace,
        }
    }
}

/// What the kernel does after boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Serve xenstore (control, and the drivers) until shut down.
    Normal,
    /// Run self-tests and power off with the XTF result line.
    Selftest,
    /// Panic once ready.
    Panic,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cmdline {
    pub loglevel: LogLevel,
    pub mode: Mode,
    /// Hot-adds whose memmap allocation is made to fail (a test switch; 0 normally).
    pub hotplug_fail: u32,
    /// Run the saveable-page walker after every balloon settle.
    pub walk: bool,
    /// Race walkers on every vCPU but 0.
    pub race: bool,
    /// Test switch: an injected ordering bug.
    pub race_bug: crate::mm::RaceBug,
    /// The two-guest grant handshake role (`grant=give:N` or `grant=map`).
    pub grant: Option<crate::xen::grant::pair::Role>,
    /// Hand free memory back to Xen before a suspend (so a save image holds only what is
    /// used) and take it again after.
    pub suspend_handback: bool,
    /// `balloon-scrub=`: zero pages that held our data before the balloon gives them back.
    pub balloon_scrub: bool,
    /// `fill=HEX:MIB`: (marker, MiB) to write into free memory at boot and free again.
    pub fill: Option<(u64, u64)>,
    /// Every log line to port 0xE9, not only the first, `ready`, warnings and errors.
    pub debugcon_all: bool,
    /// Lines to print raw at boot (`say=`, decoded), in order: lets a test make the guest
    /// print anything, e.g. forged harness markers.
    pub say: Vec<String>,
    /// Words that were not understood, with why; logged by the kernel.
    pub rejected: Vec<(String, &'static str)>,
}

impl Default for Cmdline {
    fn default() -> Self {
        Self {
            loglevel: LogLevel::Info,
            mode: Mode::Normal,
            hotplug_fail: 0,
            walk: false,
            race: false,
            race_bug: crate::mm::RaceBug::None,
            grant: None,
            suspend_handback: true,
            balloon_scrub: true,
            fill: None,
            debugcon_all: false,
            say: Vec::new(),
            rejected: Vec::new(),
        }
    }
}

impl Cmdline {
    pub fn parse(s: &str) -> Self {
        let mut c = Self::default();
        for word in s.split_ascii_whitespace() {
            let (key, val) = match word.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (word, None),
            };
            let verdict = match (key, val) {
                ("loglevel", Some(v)) => match LogLevel::parse(v) {
                    Some(l) => {
                        c.loglevel = l;
                        Ok(())
                    }
                    None => Err("loglevel must be error, warn, info, debug or trace"),
                },
                ("hotplug-fail", Some(v)) => match v.parse() {
                    Ok(n) => {
                        c.hotplug_fail = n;
                        Ok(())
                    }
                    Err(_) => Err("hotplug-fail must be a count"),
                },
                ("grant", Some(v)) => crate::xen::grant::pair::Role::parse(v).map(|r| {
                    c.grant = Some(r);
                }),
                ("debugcon", Some("all")) => {
                    c.debugcon_all = true;
                    Ok(())
                }
                ("debugcon", Some("warn")) => {
                    c.debugcon_all = false;
                    Ok(())
                }
                ("debugcon", _) => Err("debugcon must be all or warn"),
                ("suspend-handback", v) => on_off(v)
                    .map(|b| c.suspend_handback = b)
                    .ok_or("suspend-handback must be on or off"),
                ("balloon-scrub", v) => on_off(v)
                    .map(|b| c.balloon_scrub = b)
                    .ok_or("balloon-scrub must be on or off"),
                ("fill", Some(v)) => parse_fill(v).map(|f| c.fill = Some(f)),
                ("fill", None) => Err("fill needs HEX:MIB"),
                ("say", Some(v)) => decode_say(v).map(|line| c.say.push(line)),
                ("walk", None) => {
                    c.walk = true;
                    Ok(())
                }
                ("race", None) => {
                    c.race = true;
                    Ok(())
                }
                ("race-bug", Some("early-active")) => {
                    c.race_bug = crate::mm::RaceBug::EarlyActive;
                    Ok(())
                }
                ("race-bug", Some("no-grace")) => {
                    c.race_bug = crate::mm::RaceBug::NoGrace;
                    Ok(())
                }
                ("race-bug", _) => Err("race-bug must be early-active or no-grace"),
                ("selftest", None) => c.set_mode(Mode::Selftest),
                ("panic", None) => c.set_mode(Mode::Panic),
                ("loglevel" | "hotplug-fail" | "grant" | "say", None)
                | ("selftest" | "panic" | "walk" | "race", Some(_)) => Err("malformed"),
                _ => Err("unknown option"),
            };
            if let Err(why) = verdict {
                c.rejected.push((String::from(word), why));
            }
        }
        c
    }

    fn set_mode(&mut self, m: Mode) -> Result<(), &'static str> {
        if self.mode != Mode::Normal && self.mode != m {
            return Err("conflicts with an earlier mode word; first one wins");
        }
        self.mode = m;
        Ok(())
    }
}

/// `on` / `off` of a switch.
fn on_off(v: Option<&str>) -> Option<bool> {
    match v {
        Some("on") => Some(true),
        Some("off") => Some(false),
        _ => None,
    }
}

/// `HEX:MIB` of `fill=`: a 64-bit hex marker and a non-zero size in MiB.
fn parse_fill(v: &str) -> Result<(u64, u64), &'static str> {
    let (hex, mib) = v.split_once(':').ok_or("fill must be HEX:MIB")?;
    let marker = u64::from_str_radix(hex, 16).map_err(|_| "fill: the marker must be hex")?;
    match mib.parse::<u64>() {
        Ok(m) if m > 0 => Ok((marker, m)),
        _ => Err("fill: MIB must be a positive number"),
    }
}

/// `say=` text: `+` is a space, `%XX` (two hex digits) an ASCII byte, anything else itself.
fn decode_say(v: &str) -> Result<String, &'static str> {
    let b = v.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(' '),
            b'%' => {
                let hex = b.get(i + 1..i + 3).ok_or("say: % needs two hex digits")?;
                let hex = core::str::from_utf8(hex).map_err(|_| "say: % needs two hex digits")?;
                let byte =
                    u8::from_str_radix(hex, 16).map_err(|_| "say: % needs two hex digits")?;
                if !byte.is_ascii() {
                    return Err("say: %XX must be ASCII (00-7F)");
                }
                out.push(char::from(byte));
                i += 2;
            }
            _ => {
                // Whole UTF-8 characters: the word is a &str, so this never splits one.
                let ch = v[i..].chars().next().ok_or("say: bad text")?;
                out.push(ch);
                i += ch.len_utf8();
                continue;
            }
        }
        i += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn defaults() {
        let c = Cmdline::parse("");
        assert_eq!((c.loglevel, c.mode), (LogLevel::Info, Mode::Normal));
        assert!(c.rejected.is_empty());
    }

    #[test]
    fn known_words() {
        let c = Cmdline::parse("  loglevel=debug   selftest ");
        assert_eq!((c.loglevel, c.mode), (LogLevel::Debug, Mode::Selftest));
        assert!(c.rejected.is_empty());
        assert_eq!(Cmdline::parse("panic").mode, Mode::Panic);
        assert_eq!(Cmdline::parse("hotplug-fail=2").hotplug_fail, 2);
        assert!(Cmdline::parse("walk").walk && !Cmdline::parse("").walk);
        assert!(Cmdline::parse("race").race && !Cmdline::parse("").race);
        assert_eq!(
            Cmdline::parse("race-bug=no-grace").race_bug,
            crate::mm::RaceBug::NoGrace
        );
        assert_eq!(
            Cmdline::parse("race-bug=early-active").race_bug,
            crate::mm::RaceBug::EarlyActive
        );
        let c = Cmdline::parse("race-bug=yes race=1");
        assert_eq!(c.race_bug, crate::mm::RaceBug::None);
        assert!(!c.race && c.rejected.len() == 2);
        assert!(!Cmdline::parse("").debugcon_all);
        assert!(Cmdline::parse("debugcon=all").debugcon_all);
        assert!(!Cmdline::parse("debugcon=all debugcon=warn").debugcon_all);
        assert_eq!(Cmdline::parse("debugcon=on").rejected.len(), 1);
        assert!(Cmdline::parse("").suspend_handback);
        assert!(!Cmdline::parse("suspend-handback=off").suspend_handback);
        assert!(Cmdline::parse("").balloon_scrub);
        assert_eq!(
            Cmdline::parse("fill=00c0ffee12345678:64").fill,
            Some((0x00c0_ffee_1234_5678, 64))
        );
        for bad in [
            "fill",
            "fill=",
            "fill=12",
            "fill=xyz:4",
            "fill=12:",
            "fill=12:0",
            "fill=1:x",
        ] {
            let c = Cmdline::parse(bad);
            assert_eq!((c.rejected.len(), c.fill), (1, None), "{bad}");
        }
        assert!(!Cmdline::parse("balloon-scrub=off").balloon_scrub);
        assert!(Cmdline::parse("balloon-scrub=off balloon-scrub=on").balloon_scrub);
        for bad in ["balloon-scrub", "balloon-scrub=1", "balloon-scrub=yes"] {
            let c = Cmdline::parse(bad);
            assert_eq!(c.rejected.len(), 1, "{bad}");
            assert!(c.balloon_scrub, "{bad}: the default stays");
        }
        for bad in [
            "suspend-handback",
            "suspend-handback=",
            "suspend-handback=0",
        ] {
            let c = Cmdline::parse(bad);
            assert!(c.suspend_handback, "{bad}: default kept");
            assert_eq!(c.rejected.len(), 1, "{bad}: rejected");
        }
        use crate::xen::grant::pair::Role;
        assert_eq!(Cmdline::parse("grant=map").grant, Some(Role::Mapper));
        assert_eq!(
            Cmdline::parse("grant=give:64").grant,
            Some(Role::Granter {
                pages: 64,
                writable: false
            })
        );
        let c = Cmdline::parse("grant=give:0 grant");
        assert_eq!((c.grant, c.rejected.len()), (None, 2));
    }

    #[test]
    fn say_words_decode_in_order() {
        let c = Cmdline::parse("say=XENCI+PASS+boot+1.00 loglevel=debug say=%0DXENCI%2bx say=é");
        assert_eq!(c.say, ["XENCI PASS boot 1.00", "\rXENCI+x", "é"]);
        assert!(c.rejected.is_empty());
        let c = Cmdline::parse("say say=%4 say=%zz say=%C3 say=");
        assert_eq!(c.say, [""]);
        let words: Vec<_> = c.rejected.iter().map(|(w, _)| w.as_str()).collect();
        assert_eq!(words, ["say", "say=%4", "say=%zz", "say=%C3"]);
    }

    #[test]
    fn bad_words_are_reported_and_ignored() {
        let c = Cmdline::parse(
            "loglevel=loud loglevel foo=1 selftest=yes selftest panic hotplug-fail=x",
        );
        assert_eq!((c.loglevel, c.mode), (LogLevel::Info, Mode::Selftest));
        let words: Vec<_> = c.rejected.iter().map(|(w, _)| w.as_str()).collect();
        assert_eq!(
            words,
            [
                "loglevel=loud",
                "loglevel",
                "foo=1",
                "selftest=yes",
                "panic",
                "hotplug-fail=x"
            ]
        );
        assert_eq!(c.hotplug_fail, 0);
    }

    proptest! {
        #[test]
        fn never_panics_and_accounts_for_every_word(s in "[a-z=_ \\t.0-9-]{0,80}") {
            let c = Cmdline::parse(&s);
            prop_assert!(c.rejected.len() <= s.split_ascii_whitespace().count());
        }
    }
}
