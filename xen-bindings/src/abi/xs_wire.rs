//! io/xs_wire.h: the xenstore wire protocol and ring interface.
//!
//! Checked against Xen 4.17's `xen/include/public/io/xs_wire.h`.
//!
//! A message is a [`XsdSockmsg`] header (four native-endian `u32`, i.e. little-endian on
//! x86) followed by `len` payload bytes, usually NUL-terminated strings. Both directions
//! travel through the byte rings of [`XenstoreDomainInterface`], whose indices are
//! free-running `u32` counters masked with [`MASK_XENSTORE_IDX`].

use core::fmt;
use core::mem::{offset_of, size_of};

use crate::Errno;

/// `enum xsd_sockmsg_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum XsdSockmsgType {
    /// `XS_CONTROL`, also known as `XS_DEBUG`.
    Control = 0,
    Directory = 1,
    Read = 2,
    GetPerms = 3,
    Watch = 4,
    Unwatch = 5,
    TransactionStart = 6,
    TransactionEnd = 7,
    Introduce = 8,
    Release = 9,
    GetDomainPath = 10,
    Write = 11,
    Mkdir = 12,
    Rm = 13,
    SetPerms = 14,
    WatchEvent = 15,
    Error = 16,
    IsDomainIntroduced = 17,
    Resume = 18,
    SetTarget = 19,
    // 20 was XS_RESTRICT, removed upstream.
    ResetWatches = 21,
    DirectoryPart = 22,
}

/// `XS_DEBUG` is an alias of `XS_CONTROL`.
pub const XS_DEBUG: XsdSockmsgType = XsdSockmsgType::Control;
/// `XS_TYPE_COUNT`: one past the last valid type.
pub const XS_TYPE_COUNT: u32 = 23;
/// `XS_INVALID`: guaranteed to remain an invalid type.
pub const XS_INVALID: u32 = 0xffff;

impl XsdSockmsgType {
    /// The type for a raw wire value; `None` for 20 (removed `XS_RESTRICT`) and anything
    /// at or above [`XS_TYPE_COUNT`].
    pub const fn from_u32(v: u32) -> Option<Self> {
        use XsdSockmsgType::*;
        Some(match v {
            0 => Control,
            1 => Directory,
            2 => Read,
            3 => GetPerms,
            4 => Watch,
            5 => Unwatch,
            6 => TransactionStart,
            7 => TransactionEnd,
            8 => Introduce,
            9 => Release,
            10 => GetDomainPath,
            11 => Write,
            12 => Mkdir,
            13 => Rm,
            14 => SetPerms,
            15 => WatchEvent,
            16 => Error,
            17 => IsDomainIntroduced,
            18 => Resume,
            19 => SetTarget,
            21 => ResetWatches,
            22 => DirectoryPart,
            _ => return None,
        })
    }

    /// The raw wire value.
    pub const fn as_u32(self) -> u32 {
        self as u32
    }
}

/// `XS_WRITE_NONE` etc.: historical write flags, not sent by modern clients.
pub const XS_WRITE_NONE: &str = "NONE";
pub const XS_WRITE_CREATE: &str = "CREATE";
pub const XS_WRITE_CREATE_EXCL: &str = "CREATE|EXCL";

/// `EISDIR` in Xen's errno.h (not among [`Errno`]'s named constants).
pub const EISDIR: Errno = Errno(21);

/// `xsd_errors[]`: the errors xenstored sends as strings in an `XS_ERROR` reply, in the
/// header's order (new ones are appended upstream, so the order is part of the ABI).
pub const XSD_ERRORS: [(Errno, &str); 16] = [
    (Errno::EINVAL, "EINVAL"),
    (Errno::EACCES, "EACCES"),
    (Errno::EEXIST, "EEXIST"),
    (EISDIR, "EISDIR"),
    (Errno::ENOENT, "ENOENT"),
    (Errno::ENOMEM, "ENOMEM"),
    (Errno::ENOSPC, "ENOSPC"),
    (Errno::EIO, "EIO"),
    (Errno::ENOTEMPTY, "ENOTEMPTY"),
    (Errno::ENOSYS, "ENOSYS"),
    (Errno::EROFS, "EROFS"),
    (Errno::EBUSY, "EBUSY"),
    (Errno::EAGAIN, "EAGAIN"),
    (Errno::EISCONN, "EISCONN"),
    (Errno::E2BIG, "E2BIG"),
    (Errno::EPERM, "EPERM"),
];

/// The errno for an `XS_ERROR` string (without its NUL), if it is in [`XSD_ERRORS`].
pub fn errno_from_xs_error(s: &[u8]) -> Option<Errno> {
    XSD_ERRORS
        .iter()
        .find(|(_, name)| name.as_bytes() == s)
        .map(|&(e, _)| e)
}

/// The `XS_ERROR` string for an errno, if xenstored can send it.
pub fn xs_error_from_errno(e: Errno) -> Option<&'static str> {
    XSD_ERRORS.iter().find(|(x, _)| *x == e).map(|&(_, s)| s)
}

/// `struct xsd_sockmsg`: the header in front of every message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(C)]
pub struct XsdSockmsg {
    /// An [`XsdSockmsgType`] value.
    pub type_: u32,
    /// Request identifier, echoed in the daemon's response.
    pub req_id: u32,
    /// Transaction id (0 if not in a transaction).
    pub tx_id: u32,
    /// Length of the payload that follows.
    pub len: u32,
}

/// Size of [`XsdSockmsg`] on the wire.
pub const XSD_SOCKMSG_SIZE: usize = 16;

const _: () = assert!(size_of::<XsdSockmsg>() == XSD_SOCKMSG_SIZE);
const _: () = assert!(offset_of!(XsdSockmsg, type_) == 0);
const _: () = assert!(offset_of!(XsdSockmsg, req_id) == 4);
const _: () = assert!(offset_of!(XsdSockmsg, tx_id) == 8);
const _: () = assert!(offset_of!(XsdSockmsg, len) == 12);

impl XsdSockmsg {
    /// The header's wire bytes (x86: little-endian).
    pub fn to_bytes(&self) -> [u8; XSD_SOCKMSG_SIZE] {
        let mut b = [0u8; XSD_SOCKMSG_SIZE];
        b[0..4].copy_from_slice(&self.type_.to_le_bytes());
        b[4..8].copy_from_slice(&self.req_id.to_le_bytes());
        b[8..12].copy_from_slice(&self.tx_id.to_le_bytes());
        b[12..16].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// Parses a header from its wire bytes. Validation (type, length) is the caller's.
    pub fn from_bytes(b: &[u8; XSD_SOCKMSG_SIZE]) -> Self {
        let w = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        XsdSockmsg {
            type_: w(0),
            req_id: w(4),
            tx_id: w(8),
            len: w(12),
        }
    }
}

/// `enum xs_watch_type`: field indices in an `XS_WATCH_EVENT` payload.
pub const XS_WATCH_PATH: usize = 0;
pub const XS_WATCH_TOKEN: usize = 1;

/// `XENSTORE_RING_SIZE`: bytes in each ring; a power of two.
pub const XENSTORE_RING_SIZE: usize = 1024;
/// `XENSTORE_RING_IDX`.
pub type XenstoreRingIdx = u32;

/// `MASK_XENSTORE_IDX`: the ring offset of a free-running index.
#[inline]
pub const fn mask_xenstore_idx(idx: XenstoreRingIdx) -> usize {
    (idx as usize) & (XENSTORE_RING_SIZE - 1)
}

/// `struct xenstore_domain_interface`: the shared xenstore page
/// (`HVM_PARAM_STORE_PFN`). The guest produces into `req` and consumes `rsp`.
///
/// Both sides run concurrently: access the indices through atomics
/// (`AtomicU32::from_ptr`) and the rings through raw pointers, never through a `&` or
/// `&mut` to the whole struct while the peer is live.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct XenstoreDomainInterface {
    /// Requests to the xenstore daemon.
    pub req: [u8; XENSTORE_RING_SIZE],
    /// Replies and asynchronous watch events.
    pub rsp: [u8; XENSTORE_RING_SIZE],
    pub req_cons: XenstoreRingIdx,
    pub req_prod: XenstoreRingIdx,
    pub rsp_cons: XenstoreRingIdx,
    pub rsp_prod: XenstoreRingIdx,
    /// Bitmap of `XENSTORE_SERVER_FEATURE_*`.
    pub server_features: u32,
    /// `XENSTORE_CONNECTED` / `XENSTORE_RECONNECT`.
    pub connection: u32,
    /// `XENSTORE_ERROR_*` (valid if the server has `XENSTORE_SERVER_FEATURE_ERROR`).
    pub error: u32,
}

const _: () = assert!(size_of::<XenstoreDomainInterface>() == 2076);
const _: () = assert!(offset_of!(XenstoreDomainInterface, req) == 0);
const _: () = assert!(offset_of!(XenstoreDomainInterface, rsp) == 1024);
const _: () = assert!(offset_of!(XenstoreDomainInterface, req_cons) == 2048);
const _: () = assert!(offset_of!(XenstoreDomainInterface, req_prod) == 2052);
const _: () = assert!(offset_of!(XenstoreDomainInterface, rsp_cons) == 2056);
const _: () = assert!(offset_of!(XenstoreDomainInterface, rsp_prod) == 2060);
const _: () = assert!(offset_of!(XenstoreDomainInterface, server_features) == 2064);
const _: () = assert!(offset_of!(XenstoreDomainInterface, connection) == 2068);
const _: () = assert!(offset_of!(XenstoreDomainInterface, error) == 2072);
const _: () = assert!(XENSTORE_RING_SIZE.is_power_of_two());

impl XenstoreDomainInterface {
    /// An all-zero page: empty rings, connected, no error.
    pub const fn zeroed() -> Self {
        XenstoreDomainInterface {
            req: [0; XENSTORE_RING_SIZE],
            rsp: [0; XENSTORE_RING_SIZE],
            req_cons: 0,
            req_prod: 0,
            rsp_cons: 0,
            rsp_prod: 0,
            server_features: 0,
            connection: XENSTORE_CONNECTED,
            error: XENSTORE_ERROR_NONE,
        }
    }
}

/// `XENSTORE_PAYLOAD_MAX`: the largest payload either side may send ("violating this is
/// very bad").
pub const XENSTORE_PAYLOAD_MAX: usize = 4096;
/// `XENSTORE_ABS_PATH_MAX` / `XENSTORE_REL_PATH_MAX`: longer paths get an error back.
pub const XENSTORE_ABS_PATH_MAX: usize = 3072;
pub const XENSTORE_REL_PATH_MAX: usize = 2048;

/// `XENSTORE_SERVER_FEATURE_*`.
pub const XENSTORE_SERVER_FEATURE_RECONNECTION: u32 = 1;
pub const XENSTORE_SERVER_FEATURE_ERROR: u32 = 2;

/// Values of `connection`.
pub const XENSTORE_CONNECTED: u32 = 0;
pub const XENSTORE_RECONNECT: u32 = 1;

/// Values of `error`.
pub const XENSTORE_ERROR_NONE: u32 = 0;
pub const XENSTORE_ERROR_COMM: u32 = 1;
pub const XENSTORE_ERROR_RINGIDX: u32 = 2;
pub const XENSTORE_ERROR_PROTO: u32 = 3;

/// What a domain may do with a node (the letter of a permission string).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum XsPermKind {
    /// `n`
    None,
    /// `r`
    Read,
    /// `w`
    Write,
    /// `b`
    Both,
}

impl XsPermKind {
    pub const fn letter(self) -> u8 {
        match self {
            XsPermKind::None => b'n',
            XsPermKind::Read => b'r',
            XsPermKind::Write => b'w',
            XsPermKind::Both => b'b',
        }
    }

    pub const fn from_letter(c: u8) -> Option<Self> {
        Some(match c {
            b'n' => XsPermKind::None,
            b'r' => XsPermKind::Read,
            b'w' => XsPermKind::Write,
            b'b' => XsPermKind::Both,
            _ => return None,
        })
    }

    pub const fn can_read(self) -> bool {
        matches!(self, XsPermKind::Read | XsPermKind::Both)
    }

    pub const fn can_write(self) -> bool {
        matches!(self, XsPermKind::Write | XsPermKind::Both)
    }
}

/// One entry of a node's permission list, as in `XS_GET_PERMS` / `XS_SET_PERMS`
/// (`"r5"`: domain 5 may read). The first entry names the owner (who may do anything)
/// and, through its kind, what every domain not listed later may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct XsPerm {
    pub kind: XsPermKind,
    pub domid: u16,
}

impl XsPerm {
    pub const fn new(kind: XsPermKind, domid: u16) -> Self {
        XsPerm { kind, domid }
    }

    /// Parses one entry (without its NUL): a letter then a decimal domid with no sign,
    /// no leading `+`, no overflow.
    pub fn parse(s: &[u8]) -> Option<Self> {
        let (&c, digits) = s.split_first()?;
        let kind = XsPermKind::from_letter(c)?;
        if digits.is_empty() || digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let v = digits
            .iter()
            .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
        Some(XsPerm {
            kind,
            domid: u16::try_from(v).ok()?,
        })
    }
}

impl fmt::Display for XsPerm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.kind.letter() as char, self.domid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_round_trip_and_gaps_are_rejected() {
        for v in 0..XS_TYPE_COUNT {
            match XsdSockmsgType::from_u32(v) {
                Some(t) => assert_eq!(t.as_u32(), v),
                None => assert_eq!(v, 20, "only the removed XS_RESTRICT is a gap"),
            }
        }
        assert_eq!(XsdSockmsgType::from_u32(XS_TYPE_COUNT), None);
        assert_eq!(XsdSockmsgType::from_u32(XS_INVALID), None);
        assert_eq!(XsdSockmsgType::WatchEvent.as_u32(), 15);
        assert_eq!(XsdSockmsgType::ResetWatches.as_u32(), 21);
        assert_eq!(XS_DEBUG.as_u32(), 0);
    }

    #[test]
    fn header_bytes_are_little_endian_in_field_order() {
        let h = XsdSockmsg {
            type_: 2,
            req_id: 0x0102_0304,
            tx_id: 7,
            len: 4096,
        };
        let b = h.to_bytes();
        assert_eq!(&b[0..4], &[2, 0, 0, 0]);
        assert_eq!(&b[4..8], &[4, 3, 2, 1]);
        assert_eq!(&b[12..16], &[0, 0x10, 0, 0]);
        assert_eq!(XsdSockmsg::from_bytes(&b), h);
    }

    #[test]
    fn error_table_maps_both_ways() {
        assert_eq!(errno_from_xs_error(b"ENOENT"), Some(Errno::ENOENT));
        assert_eq!(errno_from_xs_error(b"EISDIR"), Some(EISDIR));
        assert_eq!(errno_from_xs_error(b"ENOENT\0"), None);
        assert_eq!(errno_from_xs_error(b"EWHATEVER"), None);
        for (e, s) in XSD_ERRORS {
            assert_eq!(xs_error_from_errno(e), Some(s));
            assert_eq!(errno_from_xs_error(s.as_bytes()), Some(e));
        }
        assert_eq!(xs_error_from_errno(Errno::ETIMEDOUT), None);
    }

    #[test]
    fn ring_mask_wraps() {
        assert_eq!(mask_xenstore_idx(0), 0);
        assert_eq!(mask_xenstore_idx(1023), 1023);
        assert_eq!(mask_xenstore_idx(1024), 0);
        assert_eq!(mask_xenstore_idx(u32::MAX), 1023);
    }

    #[test]
    fn perms_parse_and_format() {
        assert_eq!(XsPerm::parse(b"r5"), Some(XsPerm::new(XsPermKind::Read, 5)));
        assert_eq!(
            XsPerm::parse(b"b65535"),
            Some(XsPerm::new(XsPermKind::Both, 65535))
        );
        for bad in [
            &b""[..],
            b"r",
            b"x1",
            b"r65536",
            b"r-1",
            b"r+1",
            b"r1a",
            b"r0000000",
        ] {
            assert_eq!(XsPerm::parse(bad), None, "{bad:?}");
        }
        assert_eq!(XsPerm::new(XsPermKind::None, 0).to_string(), "n0");
        assert_eq!(XsPerm::new(XsPermKind::Write, 12).to_string(), "w12");
    }
}
