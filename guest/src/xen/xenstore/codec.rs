//! The xenstore wire codec: request encoding, an incremental decoder for the byte stream
//! coming back, and parsers for reply payloads. Pure functions, no I/O.

use alloc::string::String;
use alloc::vec::Vec;

use xen_bindings::abi::xs_wire::{
    errno_from_xs_error, XsPerm, XsdSockmsg, XsdSockmsgType, XENSTORE_ABS_PATH_MAX,
    XENSTORE_PAYLOAD_MAX, XSD_SOCKMSG_SIZE,
};

use super::XsError;

/// One complete message off the wire, header validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub type_: XsdSockmsgType,
    pub req_id: u32,
    pub tx_id: u32,
    pub payload: Vec<u8>,
}

/// A watch firing: the node that changed (relative if the watch was registered with a
/// relative path) and the watch's token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    pub path: String,
    pub token: String,
}

/// Encodes a message: header then `payload`.
pub fn encode(
    type_: XsdSockmsgType,
    req_id: u32,
    tx_id: u32,
    payload: &[u8],
) -> Result<Vec<u8>, XsError> {
    if payload.len() > XENSTORE_PAYLOAD_MAX {
        return Err(XsError::TooLong { len: payload.len() });
    }
    let h = XsdSockmsg {
        type_: type_.as_u32(),
        req_id,
        tx_id,
        len: payload.len() as u32,
    };
    let mut v = Vec::with_capacity(XSD_SOCKMSG_SIZE + payload.len());
    v.extend_from_slice(&h.to_bytes());
    v.extend_from_slice(payload);
    Ok(v)
}

/// Checks a path (or token) for the wire: non-empty, no NUL, within the absolute path
/// limit. Finer rules (characters, `//`) are xenstored's to enforce.
pub fn check_arg(s: &str, what: &'static str) -> Result<(), XsError> {
    if s.is_empty() || s.len() > XENSTORE_ABS_PATH_MAX || s.as_bytes().contains(&0) {
        return Err(XsError::InvalidArgument(what));
    }
    Ok(())
}

/// The payload of most requests: each argument followed by a NUL.
pub fn strings_payload(args: &[&str]) -> Vec<u8> {
    let mut v = Vec::with_capacity(args.iter().map(|a| a.len() + 1).sum());
    for a in args {
        v.extend_from_slice(a.as_bytes());
        v.push(0);
    }
    v
}

/// The payload of `XS_WRITE`: the path, a NUL, then the value (no NUL after it).
pub fn write_payload(path: &str, value: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(path.len() + 1 + value.len());
    p.extend_from_slice(path.as_bytes());
    p.push(0);
    p.extend_from_slice(value);
    p
}

/// Why the decoder refused a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Header length above `XENSTORE_PAYLOAD_MAX`: framing is lost; the decoder refuses
    /// everything from here on.
    Oversized { len: u32, req_id: u32 },
    /// A whole message of an unknown type was skipped (framing is intact).
    UnknownType { type_: u32, req_id: u32 },
}

impl From<DecodeError> for XsError {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::Oversized { len, .. } => XsError::Oversized { len },
            DecodeError::UnknownType { type_, .. } => XsError::UnknownType { type_ },
        }
    }
}

/// Reassembles messages from bytes arriving in arbitrary pieces.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    poisoned: Option<DecodeError>,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.poisoned.is_none() {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Bytes received but not yet returned as messages.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete message, `None` if more bytes are needed.
    pub fn next_message(&mut self) -> Option<Result<Message, DecodeError>> {
        if let Some(e) = self.poisoned {
            return Some(Err(e));
        }
        let hb: &[u8; XSD_SOCKMSG_SIZE] = self.buf.get(..XSD_SOCKMSG_SIZE)?.try_into().ok()?;
        let h = XsdSockmsg::from_bytes(hb);
        if h.len as usize > XENSTORE_PAYLOAD_MAX {
            let e = DecodeError::Oversized {
                len: h.len,
                req_id: h.req_id,
            };
            self.poisoned = Some(e);
            self.buf = Vec::new();
            return Some(Err(e));
        }
        let total = XSD_SOCKMSG_SIZE + h.len as usize;
        if self.buf.len() < total {
            return None;
        }
        let payload = self.buf[XSD_SOCKMSG_SIZE..total].to_vec();
        self.buf.drain(..total);
        Some(match XsdSockmsgType::from_u32(h.type_) {
            Some(type_) => Ok(Message {
                type_,
                req_id: h.req_id,
                tx_id: h.tx_id,
                payload,
            }),
            None => Err(DecodeError::UnknownType {
                type_: h.type_,
                req_id: h.req_id,
            }),
        })
    }
}

/// Decodes UTF-8.
fn utf8(b: &[u8]) -> Result<String, XsError> {
    core::str::from_utf8(b)
        .map(String::from)
        .map_err(|_| XsError::NotUtf8)
}

/// The error carried by an `XS_ERROR` payload (`"ENOENT\0"`).
pub fn parse_error(payload: &[u8]) -> XsError {
    let s = payload.strip_suffix(&[0]).unwrap_or(payload);
    match errno_from_xs_error(s) {
        Some(e) => XsError::Xs(e),
        None => XsError::UnknownXsError(String::from_utf8_lossy(s).into_owned()),
    }
}

/// The acknowledgement of a write-like request: `"OK\0"` (or `"OK"`).
pub fn parse_ok(payload: &[u8]) -> Result<(), XsError> {
    match payload {
        b"OK\0" | b"OK" => Ok(()),
        _ => Err(XsError::Malformed("expected OK")),
    }
}

/// A list of NUL-terminated strings (directory listings, permission lists). Empty
/// payload: empty list. Each entry must be non-empty and terminated.
pub fn parse_string_list(payload: &[u8]) -> Result<Vec<&[u8]>, XsError> {
    if payload.is_empty() {
        return Ok(Vec::new());
    }
    let body = payload
        .strip_suffix(&[0])
        .ok_or(XsError::Malformed("list not NUL-terminated"))?;
    let v: Vec<&[u8]> = body.split(|&b| b == 0).collect();
    if v.iter().any(|s| s.is_empty()) {
        return Err(XsError::Malformed("empty list entry"));
    }
    Ok(v)
}

/// An `XS_DIRECTORY` reply.
pub fn parse_directory(payload: &[u8]) -> Result<Vec<String>, XsError> {
    parse_string_list(payload)?.into_iter().map(utf8).collect()
}

/// One `XS_DIRECTORY_PART` reply: `"generation\0"`, names (each NUL-terminated) and, on
/// the last part, one more NUL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectoryPart<'a> {
    /// Opaque: changes when the directory's children change.
    pub generation: &'a [u8],
    pub names: Vec<&'a [u8]>,
    /// Bytes of the full listing this part covers (the next part's offset advance).
    pub len: usize,
    pub last: bool,
}

pub fn parse_directory_part(payload: &[u8]) -> Result<DirectoryPart<'_>, XsError> {
    let nul = payload
        .iter()
        .position(|&b| b == 0)
        .ok_or(XsError::Malformed("directory part without generation"))?;
    let (generation, mut rest) = (&payload[..nul], &payload[nul + 1..]);
    if generation.is_empty() {
        return Err(XsError::Malformed("empty directory generation"));
    }
    let (mut names, mut len, mut last) = (Vec::new(), 0, false);
    while let Some((&first, _)) = rest.split_first() {
        if first == 0 {
            if rest.len() != 1 {
                return Err(XsError::Malformed("data after directory end marker"));
            }
            last = true;
            break;
        }
        let n = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(XsError::Malformed("directory entry not NUL-terminated"))?;
        names.push(&rest[..n]);
        len += n + 1;
        rest = &rest[n + 1..];
    }
    Ok(DirectoryPart {
        generation,
        names,
        len,
        last,
    })
}

/// An `XS_GET_PERMS` reply: at least the owner entry.
pub fn parse_perms(payload: &[u8]) -> Result<Vec<XsPerm>, XsError> {
    let v = parse_string_list(payload)?;
    if v.is_empty() {
        return Err(XsError::Malformed("empty permission list"));
    }
    v.into_iter()
        .map(|s| XsPerm::parse(s).ok_or(XsError::Malformed("bad permission entry")))
        .collect()
}

/// The `XS_SET_PERMS` payload: path then each permission, all NUL-terminated.
pub fn set_perms_payload(path: &str, perms: &[XsPerm]) -> Result<Vec<u8>, XsError> {
    use core::fmt::Write;
    if perms.is_empty() {
        return Err(XsError::InvalidArgument("empty permission list"));
    }
    let mut s = String::new();
    s.push_str(path);
    s.push('\0');
    for p in perms {
        // Writing to a String cannot fail.
        let _ = write!(s, "{p}\0");
    }
    Ok(s.into_bytes())
}

/// A decimal `u32` followed by NUL (transaction ids).
pub fn parse_u32(payload: &[u8]) -> Result<u32, XsError> {
    let s = payload.strip_suffix(&[0]).unwrap_or(payload);
    if s.is_empty() || s.len() > 10 || !s.iter().all(u8::is_ascii_digit) {
        return Err(XsError::Malformed("expected a decimal number"));
    }
    let v = s.iter().try_fold(0u32, |acc, d| {
        acc.checked_mul(10)?.checked_add(u32::from(d - b'0'))
    });
    v.ok_or(XsError::Malformed("number out of range"))
}

/// A single NUL-terminated string (`XS_GET_DOMAIN_PATH`).
pub fn parse_string(payload: &[u8]) -> Result<String, XsError> {
    match parse_string_list(payload)?.as_slice() {
        [s] => utf8(s),
        _ => Err(XsError::Malformed("expected one string")),
    }
}

/// An `XS_WATCH_EVENT` payload: `"path\0token\0"`. Extra trailing fields are tolerated.
pub fn parse_watch_event(payload: &[u8]) -> Result<WatchEvent, XsError> {
    let v = parse_string_list(payload)?;
    match v.as_slice() {
        [path, token, ..] => Ok(WatchEvent {
            path: utf8(path)?,
            token: utf8(token)?,
        }),
        _ => Err(XsError::Malformed("watch event needs path and token")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use xen_bindings::abi::xs_wire::XsPermKind;
    use xen_bindings::Errno;

    #[test]
    fn encode_then_decode_in_one_piece() {
        let bytes = encode(XsdSockmsgType::Read, 7, 3, b"data/x\0").unwrap();
        assert_eq!(bytes.len(), 16 + 7);
        let mut d = Decoder::new();
        d.push(&bytes);
        let m = d.next_message().unwrap().unwrap();
        assert_eq!(
            m,
            Message {
                type_: XsdSockmsgType::Read,
                req_id: 7,
                tx_id: 3,
                payload: b"data/x\0".to_vec()
            }
        );
        assert!(d.next_message().is_none());
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn encode_refuses_oversized_payloads() {
        let big = vec![b'a'; XENSTORE_PAYLOAD_MAX + 1];
        assert_eq!(
            encode(XsdSockmsgType::Write, 1, 0, &big),
            Err(XsError::TooLong { len: 4097 })
        );
        assert!(encode(XsdSockmsgType::Write, 1, 0, &big[1..]).is_ok());
    }

    #[test]
    fn decoder_waits_for_partial_headers_and_payloads() {
        let bytes = encode(XsdSockmsgType::Write, 1, 0, b"a\0b").unwrap();
        let mut d = Decoder::new();
        for (i, b) in bytes.iter().enumerate() {
            assert!(d.next_message().is_none(), "complete after {i} bytes?");
            d.push(&[*b]);
        }
        assert_eq!(d.next_message().unwrap().unwrap().payload, b"a\0b");
    }

    #[test]
    fn decoder_poisons_on_oversized_and_skips_unknown_types() {
        let mut d = Decoder::new();
        let mut h = XsdSockmsg {
            type_: 99,
            req_id: 5,
            tx_id: 0,
            len: 2,
        };
        d.push(&h.to_bytes());
        d.push(b"xy");
        let ok = encode(XsdSockmsgType::Read, 6, 0, b"v").unwrap();
        d.push(&ok);
        assert_eq!(
            d.next_message(),
            Some(Err(DecodeError::UnknownType {
                type_: 99,
                req_id: 5
            }))
        );
        assert_eq!(d.next_message().unwrap().unwrap().req_id, 6);
        h.type_ = 2;
        h.len = 4097;
        d.push(&h.to_bytes());
        let e = DecodeError::Oversized {
            len: 4097,
            req_id: 5,
        };
        assert_eq!(d.next_message(), Some(Err(e)));
        d.push(&ok);
        assert_eq!(d.next_message(), Some(Err(e)), "stays poisoned");
    }

    #[test]
    fn error_payloads_map_to_errno_or_are_preserved() {
        assert_eq!(parse_error(b"ENOENT\0"), XsError::Xs(Errno::ENOENT));
        assert_eq!(parse_error(b"EAGAIN"), XsError::Xs(Errno::EAGAIN));
        assert_eq!(
            parse_error(b"EQUOTA\0"),
            XsError::UnknownXsError("EQUOTA".into())
        );
        assert_eq!(
            parse_error(b"\xff\0"),
            XsError::UnknownXsError("\u{fffd}".into())
        );
    }

    #[test]
    fn list_parsing_is_strict() {
        assert_eq!(parse_directory(b"").unwrap(), Vec::<String>::new());
        assert_eq!(parse_directory(b"a\0bc\0").unwrap(), vec!["a", "bc"]);
        assert!(matches!(
            parse_directory(b"a\0bc"),
            Err(XsError::Malformed(_))
        ));
        assert!(matches!(
            parse_directory(b"a\0\0b\0"),
            Err(XsError::Malformed(_))
        ));
        assert_eq!(parse_directory(b"\xc3\0"), Err(XsError::NotUtf8));
    }

    #[test]
    fn directory_parts() {
        let p = parse_directory_part(b"17\0a\0bc\0").unwrap();
        assert_eq!(
            p,
            DirectoryPart {
                generation: b"17",
                names: vec![&b"a"[..], b"bc"],
                len: 5,
                last: false
            }
        );
        let p = parse_directory_part(b"17\0d\0\0").unwrap();
        assert!(p.last);
        assert_eq!(p.names, vec![&b"d"[..]]);
        assert!(parse_directory_part(b"17\0\0").unwrap().last);
        for bad in [&b""[..], b"17", b"\0a\0", b"1\0a", b"1\0\0a\0"] {
            assert!(
                matches!(parse_directory_part(bad), Err(XsError::Malformed(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn perms_parse_and_encode() {
        assert_eq!(
            parse_perms(b"n0\0r5\0").unwrap(),
            vec![
                XsPerm::new(XsPermKind::None, 0),
                XsPerm::new(XsPermKind::Read, 5)
            ]
        );
        assert!(matches!(parse_perms(b""), Err(XsError::Malformed(_))));
        assert!(matches!(parse_perms(b"q0\0"), Err(XsError::Malformed(_))));
        assert_eq!(
            set_perms_payload("a", &[XsPerm::new(XsPermKind::Both, 3)]).unwrap(),
            b"a\0b3\0"
        );
        assert!(set_perms_payload("a", &[]).is_err());
    }

    #[test]
    fn numbers_strings_ok_and_events() {
        assert_eq!(parse_u32(b"42\0"), Ok(42));
        assert_eq!(parse_u32(b"4294967295\0"), Ok(u32::MAX));
        for bad in [
            &b""[..],
            b"\0",
            b"4294967296\0",
            b"-1\0",
            b"1a\0",
            b"99999999999\0",
        ] {
            assert!(parse_u32(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_string(b"/local/domain/3\0").unwrap(),
            "/local/domain/3"
        );
        assert!(parse_string(b"a\0b\0").is_err());
        assert!(parse_ok(b"OK\0").is_ok());
        assert!(parse_ok(b"NO\0").is_err());
        assert_eq!(
            parse_watch_event(b"data/x\0tok\0").unwrap(),
            WatchEvent {
                path: "data/x".into(),
                token: "tok".into()
            }
        );
        assert!(parse_watch_event(b"data/x\0").is_err());
    }

    #[test]
    fn args_are_checked_before_sending() {
        assert!(check_arg("data/x", "path").is_ok());
        assert_eq!(check_arg("", "path"), Err(XsError::InvalidArgument("path")));
        assert_eq!(
            check_arg("a\0b", "token"),
            Err(XsError::InvalidArgument("token"))
        );
        assert_eq!(strings_payload(&["a", "bc"]), b"a\0bc\0");
    }
}
