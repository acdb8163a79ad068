//! What both roles share: the toolstack's introduction (`peer`), reading and publishing
//! `data/grant-test/` keys, sharing our directory with the peer, and the strict formats of
//! domids, checksums and the mapper's write stamp.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use xen_bindings::abi::xs_wire::{XsPerm, XsPermKind};
use xen_bindings::traits::DomId;

use super::super::handshake::DIR;
use super::PairState;
use crate::xen::xenstore::{XsError, XsOps};

/// First reserved domid (`DOMID_FIRST_RESERVED`): no real peer has it or above.
const DOMID_FIRST_RESERVED: u64 = 0x7ff0;

/// Parses a peer domid strictly: canonical decimal, below the reserved ids, not `me`.
/// Dom0 is a valid peer (backends usually live there; `grant-bench` maps from it).
pub fn parse_domid(raw: &[u8], me: DomId) -> Result<DomId, &'static str> {
    let s = core::str::from_utf8(raw).map_err(|_| "not UTF-8")?;
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return Err("not a canonical decimal domid");
    }
    match s.parse::<u64>() {
        Ok(d) if d < DOMID_FIRST_RESERVED && d != u64::from(me) => Ok(d as DomId),
        Ok(d) if d == u64::from(me) => Err("the peer is ourselves"),
        _ => Err("domid out of range"),
    }
}

/// Reads `path`: `Ok(None)` when it does not exist.
pub(super) fn read_opt<X: XsOps>(xs: &mut X, path: &str) -> Result<Option<Vec<u8>>, XsError> {
    match xs.read(path) {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_enoent() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes `data/grant-test/<key>` pairs in order. Callers put `state` last: the peer
/// and the harness act on `state`, so the values it announces are there before it.
pub(super) fn publish<X: XsOps>(xs: &mut X, fields: &[(&str, String)]) -> Result<(), XsError> {
    for (k, v) in fields {
        xs.write(&format!("{DIR}/{k}"), v.as_bytes())?;
    }
    Ok(())
}

/// Makes our `data/grant-test` readable by `peer` (owner us, others nothing).
pub(super) fn share_dir<X: XsOps>(xs: &mut X, me: DomId, peer: DomId) -> Result<(), XsError> {
    xs.mkdir(DIR)?;
    xs.set_perms(
        DIR,
        &[
            XsPerm::new(XsPermKind::None, me),
            XsPerm::new(XsPermKind::Read, peer),
        ],
    )
}

/// Reads the peer's `data/grant-test/<key>`: `Ok(None)` when we cannot see it. xenstored
/// answers EACCES, not ENOENT, for a node that is gone when its nearest existing parent
/// is unreadable (`/local/domain` is dom0's): so once a dead peer's tree is removed, its
/// nodes read as EACCES — as they did before it shared them with us.
pub(super) fn read_peer<X: XsOps>(
    xs: &mut X,
    peer: DomId,
    key: &str,
) -> Result<Option<Vec<u8>>, XsError> {
    match xs.read(&peer_path(peer, key)) {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_enoent() || e.errno() == Some(xen_bindings::Errno::EACCES) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Logs and publishes why `role` gives up (`error`, then `state=failed`); returns `what`
/// for the role to keep.
pub(super) fn fail<X: XsOps>(xs: &mut X, role: &str, what: String) -> String {
    log::error!("grant-test: {role}: {what}");
    let _ = publish(
        xs,
        &[
            ("error", what.clone()),
            ("state", PairState::Failed.as_str().into()),
        ],
    );
    what
}

/// The peer's `data/grant-test/<key>`.
pub(super) fn peer_path(peer: DomId, key: &str) -> String {
    format!("/local/domain/{peer}/{DIR}/{key}")
}

/// The checksum as published: 16 lower-case hex digits.
pub fn encode_checksum(c: u64) -> String {
    format!("{c:016x}")
}

/// Parses a published checksum strictly (exactly 16 lower-case hex digits).
pub fn parse_checksum(raw: &[u8]) -> Option<u64> {
    if raw.len() != 16 || !raw.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u64::from_str_radix(core::str::from_utf8(raw).ok()?, 16).ok()
}

/// What the mapper's `write` command stores in the first 8 bytes of page `i` of a
/// read-write grant ("gnt" and the page index), for the granter to find in its frames.
pub fn stamp(i: u32) -> u64 {
    0x676e_7400_0000_0000 | u64::from(i)
}

/// Reads our `data/grant-test/peer`. A bad value is refused with one log line and
/// `peer-error` / `rejected-peers` in xenstore; the role keeps waiting for a good one.
#[derive(Default)]
pub(super) struct Introduction {
    rejected: u64,
    last_bad: Option<Vec<u8>>,
}

impl Introduction {
    pub(super) fn poll<X: XsOps>(&mut self, xs: &mut X, me: DomId) -> Option<DomId> {
        let raw = match read_opt(xs, &format!("{DIR}/peer")) {
            Ok(Some(raw)) => raw,
            Ok(None) => return None,
            Err(e) => {
                log::warn!("grant-test: cannot read {DIR}/peer: {e:?}");
                return None;
            }
        };
        match parse_domid(&raw, me) {
            Ok(p) => Some(p),
            Err(why) => {
                // Polled every half second: say it once per bad value.
                if self.last_bad.as_deref() != Some(&raw[..]) {
                    self.rejected += 1;
                    let what = format!("bad {DIR}/peer {:?}: {why}", String::from_utf8_lossy(&raw));
                    log::warn!("grant-test: {what}; still waiting for a peer");
                    let _ = publish(
                        xs,
                        &[
                            ("peer-error", what),
                            ("rejected-peers", format!("{}", self.rejected)),
                        ],
                    );
                    self.last_bad = Some(raw);
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domids_and_checksums_parse_strictly() {
        assert_eq!(parse_domid(b"7", 3), Ok(7));
        assert_eq!(parse_domid(b"0", 3), Ok(0));
        for bad in [
            &b""[..],
            b"3",
            b"07",
            b"+7",
            b"32752",
            b"99999999999999999999",
            b"7 ",
        ] {
            assert!(
                parse_domid(bad, 3).is_err(),
                "{:?}",
                core::str::from_utf8(bad)
            );
        }
        assert_eq!(
            parse_checksum(encode_checksum(0xdead_beef).as_bytes()),
            Some(0xdead_beef)
        );
        for bad in [
            &b"deadbeef"[..],
            b"00000000DEADBEEF",
            b"0000000000000000 ",
            b"g000000000000000",
        ] {
            assert_eq!(parse_checksum(bad), None);
        }
    }
}
