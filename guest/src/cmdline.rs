//! The kernel command line (xl `extra=` / `cmdline=`), parsed strictly.
//!
//! Words are separated by spaces. Known:
//!
//! | word | meaning |
//! |---|---|
//! | `loglevel=error\|warn\|info\|debug\|trace` | most verbose level logged (default `info`) |
//! | `selftest` | run the built-in self-tests, print `Test result: ...`, power off |
//! | `panic` | panic deliberately once ready (proves the crash path) |
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
    /// Words that were not understood, with why; logged by the kernel.
    pub rejected: Vec<(String, &'static str)>,
}

impl Default for Cmdline {
    fn default() -> Self {
        Self {
            loglevel: LogLevel::Info,
            mode: Mode::Normal,
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
                ("selftest", None) => c.set_mode(Mode::Selftest),
                ("panic", None) => c.set_mode(Mode::Panic),
                ("loglevel", None) | ("selftest" | "panic", Some(_)) => Err("malformed"),
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
    }

    #[test]
    fn bad_words_are_reported_and_ignored() {
        let c = Cmdline::parse("loglevel=loud loglevel foo=1 selftest=yes selftest panic");
        assert_eq!((c.loglevel, c.mode), (LogLevel::Info, Mode::Selftest));
        let words: Vec<_> = c.rejected.iter().map(|(w, _)| w.as_str()).collect();
        assert_eq!(
            words,
            [
                "loglevel=loud",
                "loglevel",
                "foo=1",
                "selftest=yes",
                "panic"
            ]
        );
    }

    proptest! {
        #[test]
        fn never_panics_and_accounts_for_every_word(s in "[a-z=_ \\t.0-9-]{0,80}") {
            let c = Cmdline::parse(&s);
            prop_assert!(c.rejected.len() <= s.split_ascii_whitespace().count());
        }
    }
}
