//! The pieces of the split-driver style test handshake that are pure functions: the
//! xenstore layout, the value formats (parsed strictly), the page pattern and the
//! checksum the mapper writes back.
//!
//! Layout (under the granter's own `data/`, readable by the mapper through the
//! permissions the granter sets: owner granter, read for the mapper's domid):
//!
//! ```text
//! /local/domain/<granter>/data/grant-test/peer       mapper's domid (decimal)
//! /local/domain/<granter>/data/grant-test/refs       "8-71 80 82-90" (decimal words, one
//!                                                    space; a run of consecutive refs as
//!                                                    "first-last")
//! /local/domain/<granter>/data/grant-test/evtchn     unbound port for the mapper
//! /local/domain/<mapper>/data/grant-test/checksum    written back by the mapper (hex)
//! /local/domain/<granter>/data/grant-nonce           optional, from the toolstack: 16 hex
//!                                                    digits mixed into the pattern; not
//!                                                    under grant-test/, so the mapper
//!                                                    cannot read it (only the frames)
//! ```

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use xen_bindings::abi::grant_table::GrantRef;

/// Directory under `data/` for the handshake.
pub const DIR: &str = "data/grant-test";
/// Most refs one handshake publishes: 16,384 pages (64 MiB, 32 device subsections of
/// the mapper). Runs keep the value far below xenstore's 4 KiB for a fresh table's
/// consecutive refs.
pub const MAX_REFS: usize = 16_384;

/// Why a published value was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Empty value.
    Empty,
    /// Not a canonical decimal list (leading zeros, signs, double spaces, ...).
    Malformed,
    /// A ref below the reserved ones or above `u32::MAX`.
    BadRef,
    /// More than [`MAX_REFS`].
    TooMany,
}

/// `refs` as published: decimal words separated by single spaces, a run of two or more
/// consecutive refs written `first-last`.
pub fn encode_refs(refs: &[GrantRef]) -> String {
    let mut s = String::new();
    let mut i = 0;
    while i < refs.len() {
        let mut j = i;
        while j + 1 < refs.len() && refs[j].checked_add(1) == Some(refs[j + 1]) {
            j += 1;
        }
        if i > 0 {
            s.push(' ');
        }
        if j > i {
            let _ = write!(s, "{}-{}", refs[i], refs[j]);
        } else {
            let _ = write!(s, "{}", refs[i]);
        }
        i = j + 1;
    }
    s
}

/// One canonical decimal ref (no sign, no leading zero, not reserved).
fn parse_ref(word: &[u8]) -> Result<GrantRef, ParseError> {
    if word.is_empty()
        || !word.iter().all(u8::is_ascii_digit)
        || (word.len() > 1 && word[0] == b'0')
    {
        return Err(ParseError::Malformed);
    }
    if word.len() > 10 {
        return Err(ParseError::BadRef);
    }
    let v = word
        .iter()
        .fold(0u64, |acc, &d| acc * 10 + u64::from(d - b'0'));
    let r = GrantRef::try_from(v).map_err(|_| ParseError::BadRef)?;
    if r < super::NR_RESERVED_ENTRIES {
        return Err(ParseError::BadRef);
    }
    Ok(r)
}

/// Parse a `refs` value strictly: canonical decimals (no sign, no leading zero), single
/// spaces, runs `first-last` with `first < last`, no reserved refs, at most
/// [`MAX_REFS`] in all.
pub fn parse_refs(raw: &[u8]) -> Result<Vec<GrantRef>, ParseError> {
    if raw.is_empty() {
        return Err(ParseError::Empty);
    }
    let mut out = Vec::new();
    for word in raw.split(|&b| b == b' ') {
        let mut parts = word.splitn(2, |&b| b == b'-');
        let first = parse_ref(parts.next().unwrap_or_default())?;
        let last = match parts.next() {
            Some(w) => parse_ref(w)?,
            None => first,
        };
        if last < first || (last == first && word.contains(&b'-')) {
            return Err(ParseError::Malformed);
        }
        if out.len() + (last - first) as usize + 1 > MAX_REFS {
            return Err(ParseError::TooMany);
        }
        out.extend(first..=last);
    }
    Ok(out)
}

/// Byte `i` of page `idx` of the known pattern (distinct per page and per offset).
pub fn pattern_byte(idx: u32, i: usize) -> u8 {
    let x = (idx as u64)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(i as u64 / 8);
    (x >> ((i % 8) * 8)) as u8
}

/// Whether `page` holds page `idx` of the pattern.
pub fn pattern_ok(idx: u32, page: &[u8]) -> bool {
    pattern_ok_with(0, idx, page)
}

/// Where the granter finds the toolstack's nonce (relative to its home; outside [`DIR`],
/// which the mapper may read).
pub const NONCE_KEY: &str = "data/grant-nonce";

/// Byte `i` of page `idx` of the pattern salted with `nonce` (XOR of its little-endian
/// bytes, repeating every 8). Nonce 0 is [`pattern_byte`]. The first 8 bytes of page 0
/// are the nonce itself ([`pattern_byte`] is 0 there), which is how a mapper learns it:
/// only by reading the granter's frame.
pub fn pattern_byte_with(nonce: u64, idx: u32, i: usize) -> u8 {
    pattern_byte(idx, i) ^ (nonce >> ((i % 8) * 8)) as u8
}

/// Whether `page` holds page `idx` of the pattern salted with `nonce`.
pub fn pattern_ok_with(nonce: u64, idx: u32, page: &[u8]) -> bool {
    page.iter()
        .enumerate()
        .all(|(i, &b)| b == pattern_byte_with(nonce, idx, i))
}

/// The nonce a pattern page 0 carries (its first 8 bytes, little-endian).
pub fn pattern_nonce(page0: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&page0[..8]);
    u64::from_le_bytes(b)
}

/// FNV-1a over the pages in order: what the mapper writes back and the granter checks.
pub fn checksum<'a>(pages: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    let mut c = Checksum::new();
    for page in pages {
        c.update(page);
    }
    c.value()
}

/// [`checksum`] fed one page at a time, so no caller has to hold all pages at once.
///
/// Hand-written, not the `fnv` crate: its no_std mode is switched back to `std` by
/// proptest (through rusty-fork) whenever tests are built, and a `std` in the kernel
/// binary's graph breaks `cargo clippy --all-targets` (duplicate `panic_impl`).
#[derive(Clone, Copy, Debug)]
pub struct Checksum(u64);

impl Checksum {
    /// The checksum of nothing yet.
    pub fn new() -> Checksum {
        Checksum(0xcbf2_9ce4_8422_2325)
    }

    /// Adds the next page.
    pub fn update(&mut self, page: &[u8]) {
        for &b in page {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// The checksum of everything added.
    pub fn value(&self) -> u64 {
        self.0
    }
}

impl Default for Checksum {
    fn default() -> Self {
        Checksum::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn refs_round_trip_and_garbage_is_refused() {
        let refs: Vec<GrantRef> = (8..72).collect();
        assert_eq!(encode_refs(&refs), "8-71");
        assert_eq!(parse_refs(encode_refs(&refs).as_bytes()), Ok(refs));
        let gaps = vec![8, 10, 11, 12, 20, 21, 30];
        assert_eq!(encode_refs(&gaps), "8 10-12 20-21 30");
        assert_eq!(parse_refs(encode_refs(&gaps).as_bytes()), Ok(gaps));
        let all: Vec<GrantRef> = (8..8 + MAX_REFS as u32).collect();
        assert!(encode_refs(&all).len() < 20);
        assert_eq!(parse_refs(encode_refs(&all).as_bytes()), Ok(all));
        assert_eq!(parse_refs(b"4294967295"), Ok(vec![u32::MAX]));
        for (bad, e) in [
            (&b""[..], ParseError::Empty),
            (b"8  9", ParseError::Malformed),
            (b"8 ", ParseError::Malformed),
            (b"08", ParseError::Malformed),
            (b"+8", ParseError::Malformed),
            (b"0x10", ParseError::Malformed),
            (b"8,9", ParseError::Malformed),
            (b"9-8", ParseError::Malformed),
            (b"8-8", ParseError::Malformed),
            (b"8-", ParseError::Malformed),
            (b"-8", ParseError::Malformed),
            (b"8-9-10", ParseError::Malformed),
            (b"1-9", ParseError::BadRef),
            (b"1", ParseError::BadRef),
            (b"4294967296", ParseError::BadRef),
            (b"99999999999", ParseError::BadRef),
        ] {
            assert_eq!(parse_refs(bad), Err(e), "{:?}", core::str::from_utf8(bad));
        }
        let many: Vec<GrantRef> = (8..8 + MAX_REFS as u32 + 1).collect();
        assert_eq!(
            parse_refs(encode_refs(&many).as_bytes()),
            Err(ParseError::TooMany)
        );
    }

    #[test]
    fn checksum_is_64_bit_fnv_1a() {
        // Published FNV-1a test vectors: the format both ends (and gntdev-bench) agree on.
        assert_eq!(checksum([]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(checksum([b"a".as_slice()]), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(
            checksum([b"fo".as_slice(), b"obar".as_slice()]),
            0x8594_4171_f739_67e8
        );
    }

    #[test]
    fn the_nonce_salts_the_pattern_and_page_0_carries_it() {
        let n = 0x0123_4567_89ab_cdef;
        let p0: Vec<u8> = (0..4096).map(|i| pattern_byte_with(n, 0, i)).collect();
        let p1: Vec<u8> = (0..4096).map(|i| pattern_byte_with(n, 1, i)).collect();
        assert_eq!(pattern_nonce(&p0), n);
        assert!(pattern_ok_with(n, 0, &p0) && pattern_ok_with(n, 1, &p1));
        // Another nonce (or none) does not match, and changes the checksum.
        assert!(!pattern_ok_with(n ^ 1, 1, &p1) && !pattern_ok(1, &p1));
        let plain: Vec<u8> = (0..4096).map(|i| pattern_byte(1, i)).collect();
        assert_ne!(checksum([&p1[..]]), checksum([&plain[..]]));
        // Nonce 0 is the unsalted pattern.
        assert!((0..4096).all(|i| pattern_byte_with(0, 3, i) == pattern_byte(3, i)));
        let z: Vec<u8> = (0..4096).map(|i| pattern_byte(0, i)).collect();
        assert_eq!(pattern_nonce(&z), 0);
    }

    #[test]
    fn pattern_and_checksum_tell_pages_apart() {
        let a: Vec<u8> = (0..4096).map(|i| pattern_byte(0, i)).collect();
        let b: Vec<u8> = (0..4096).map(|i| pattern_byte(1, i)).collect();
        assert!(pattern_ok(0, &a) && pattern_ok(1, &b));
        assert!(!pattern_ok(1, &a));
        assert_ne!(a, b);
        let ab = checksum([a.as_slice(), b.as_slice()]);
        assert_ne!(ab, checksum([b.as_slice(), a.as_slice()]));
        let mut c = a.clone();
        c[4095] ^= 1;
        assert!(!pattern_ok(0, &c));
        assert_ne!(checksum([c.as_slice(), b.as_slice()]), ab);
    }
}
