//! `memory/target` parsing: strict, unlike Linux's numeric-prefix parse.
//!
//! The toolstack writes the target in KiB as a plain decimal. Measured on Linux: `0x4000`
//! parses as 0 and `1.5e5` as 1 KiB, and with no floor the guest balloons itself into an
//! OOM panic. Here anything but a plain decimal number is rejected and the current state
//! is kept; a value below the floor is clamped (and reported), one above the maximum the
//! domain could ever reach is rejected.

use core::fmt;

/// Why a `memory/target` value was not taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetError {
    Empty,
    /// Not a plain decimal (sign, hex, exponent, spaces, NULs, ...).
    NotDecimal,
    /// More than fits in u64 KiB.
    Overflow,
    /// Above what the domain may ever have (`static-max` plus what hotplug may add).
    AboveMax {
        kib: u64,
        max_kib: u64,
    },
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "empty value"),
            Self::NotDecimal => write!(f, "not a plain decimal number of KiB"),
            Self::Overflow => write!(f, "number too large"),
            Self::AboveMax { kib, max_kib } => {
                write!(f, "{kib} KiB is above the domain's maximum {max_kib} KiB")
            }
        }
    }
}

/// A target the balloon will work towards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// What the toolstack asked for, in KiB.
    pub requested_kib: u64,
    /// What the balloon will aim at: `requested_kib`, or the floor if that is higher.
    pub effective_kib: u64,
}

impl Target {
    pub fn clamped(&self) -> bool {
        self.effective_kib != self.requested_kib
    }
}

/// Parses a plain decimal KiB count (`[0-9]+`, optionally one trailing `\n`, which some
/// tools append).
pub fn parse_kib(raw: &[u8]) -> Result<u64, TargetError> {
    let digits = raw.strip_suffix(b"\n").unwrap_or(raw);
    if digits.is_empty() {
        return Err(TargetError::Empty);
    }
    if !digits.iter().all(u8::is_ascii_digit) {
        return Err(TargetError::NotDecimal);
    }
    digits.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)
            .and_then(|v| v.checked_add((d - b'0') as u64))
            .ok_or(TargetError::Overflow)
    })
}

/// Parses and checks a target against the floor and the maximum.
pub fn parse_target(raw: &[u8], floor_kib: u64, max_kib: u64) -> Result<Target, TargetError> {
    let kib = parse_kib(raw)?;
    if kib > max_kib {
        return Err(TargetError::AboveMax { kib, max_kib });
    }
    Ok(Target {
        requested_kib: kib,
        effective_kib: kib.max(floor_kib),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_plain_decimals() {
        assert_eq!(parse_kib(b"262144"), Ok(262144));
        assert_eq!(parse_kib(b"0"), Ok(0));
        assert_eq!(parse_kib(b"1024\n"), Ok(1024));
        assert_eq!(parse_kib(b"18446744073709551615"), Ok(u64::MAX));
    }

    #[test]
    fn rejects_what_linux_misparses() {
        assert_eq!(parse_kib(b""), Err(TargetError::Empty));
        assert_eq!(parse_kib(b"abc"), Err(TargetError::NotDecimal));
        assert_eq!(parse_kib(b"-5"), Err(TargetError::NotDecimal));
        assert_eq!(parse_kib(b"0x4000"), Err(TargetError::NotDecimal));
        assert_eq!(parse_kib(b"1.5e5"), Err(TargetError::NotDecimal));
        assert_eq!(parse_kib(b" 1024"), Err(TargetError::NotDecimal));
        assert_eq!(parse_kib(b"1024\0"), Err(TargetError::NotDecimal));
        assert_eq!(parse_kib(b"+1024"), Err(TargetError::NotDecimal));
        assert_eq!(
            parse_kib(b"1234567890123456789012345"),
            Err(TargetError::Overflow)
        );
        assert_eq!(
            parse_kib(b"18446744073709551616"),
            Err(TargetError::Overflow)
        );
    }

    #[test]
    fn floor_clamps_and_max_rejects() {
        let t = parse_target(b"1024", 16384, 1 << 20).unwrap();
        assert_eq!(
            (t.requested_kib, t.effective_kib, t.clamped()),
            (1024, 16384, true)
        );
        let t = parse_target(b"65536", 16384, 1 << 20).unwrap();
        assert!(!t.clamped());
        assert_eq!(
            parse_target(b"2097152", 16384, 1 << 20),
            Err(TargetError::AboveMax {
                kib: 2097152,
                max_kib: 1 << 20
            })
        );
    }

    proptest! {
        #[test]
        fn roundtrips_every_u64(v in any::<u64>()) {
            prop_assert_eq!(parse_kib(v.to_string().as_bytes()), Ok(v));
        }

        #[test]
        fn garbage_never_panics_and_non_digits_are_rejected(raw in proptest::collection::vec(any::<u8>(), 0..40)) {
            let r = parse_kib(&raw);
            let body = raw.strip_suffix(b"\n").unwrap_or(&raw);
            if body.iter().any(|b| !b.is_ascii_digit()) {
                prop_assert_eq!(r, Err(TargetError::NotDecimal));
            }
        }
    }
}
