//! What can go wrong talking to xenstored. Everything the peer sends that is not a valid
//! answer ends up here as a value; nothing it sends can make the client panic.

use alloc::string::String;
use core::fmt;

use xen_bindings::Errno;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XsError {
    /// xenstored answered `XS_ERROR` with a string from `xsd_errors` (e.g. `ENOENT`).
    Xs(Errno),
    /// xenstored answered `XS_ERROR` with a string that is not in `xsd_errors`
    /// (kept, lossily decoded, without its NUL).
    UnknownXsError(String),
    /// A message header announced more than `XENSTORE_PAYLOAD_MAX` bytes. The byte
    /// stream can no longer be framed: the connection is unusable afterwards.
    Oversized { len: u32 },
    /// A message of a type that is not in `xsd_sockmsg_type`.
    UnknownType { type_: u32 },
    /// The reply's type is neither the request's nor `XS_ERROR`.
    UnexpectedType { expected: u32, got: u32 },
    /// A reply arrived for a request id we are not waiting for.
    UnexpectedReqId { expected: u32, got: u32 },
    /// A reply's payload does not have the shape its request calls for.
    Malformed(&'static str),
    /// A string field (value read as text, directory entry, event path) is not UTF-8.
    NotUtf8,
    /// No reply before the deadline. A late reply is recognised and dropped.
    Timeout,
    /// Ring indices claim more than a ring's worth of outstanding bytes.
    RingCorrupt { cons: u32, prod: u32 },
    /// xenstored set the page's `error` field (`XENSTORE_ERROR_*`).
    ServerError(u32),
    /// A path, token or value we were asked to send cannot be encoded (empty, contains
    /// NUL, too long).
    InvalidArgument(&'static str),
    /// The request would exceed `XENSTORE_PAYLOAD_MAX`.
    TooLong { len: usize },
    /// A transaction still conflicted (EAGAIN) after this many attempts.
    TransactionConflict { attempts: u32 },
    /// Notifying or polling the event channel failed.
    Hypercall(Errno),
    /// An earlier error broke the connection (see [`super::XenstoreClient::broken`]).
    Disconnected,
}

impl XsError {
    /// The errno of an `XS_ERROR` reply, if this is one.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            XsError::Xs(e) => Some(*e),
            _ => None,
        }
    }

    /// xenstored said EAGAIN (transaction conflict or busy).
    pub fn is_eagain(&self) -> bool {
        self.errno() == Some(Errno::EAGAIN)
    }

    /// xenstored said ENOENT (no such node / watch / transaction).
    pub fn is_enoent(&self) -> bool {
        self.errno() == Some(Errno::ENOENT)
    }
}

impl fmt::Display for XsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            XsError::Xs(e) => write!(f, "xenstored: {e}"),
            XsError::UnknownXsError(s) => write!(f, "xenstored: unknown error {s:?}"),
            XsError::Oversized { len } => write!(f, "message of {len} bytes exceeds the maximum"),
            XsError::UnknownType { type_ } => write!(f, "unknown message type {type_}"),
            XsError::UnexpectedType { expected, got } => {
                write!(f, "reply type {got}, expected {expected}")
            }
            XsError::UnexpectedReqId { expected, got } => {
                write!(f, "reply for request {got}, expected {expected}")
            }
            XsError::Malformed(what) => write!(f, "malformed reply: {what}"),
            XsError::NotUtf8 => f.write_str("string is not UTF-8"),
            XsError::Timeout => f.write_str("timed out waiting for xenstored"),
            XsError::RingCorrupt { cons, prod } => {
                write!(f, "ring indices corrupt (cons {cons:#x}, prod {prod:#x})")
            }
            XsError::ServerError(c) => write!(f, "xenstored reports ring error {c}"),
            XsError::InvalidArgument(what) => write!(f, "invalid argument: {what}"),
            XsError::TooLong { len } => write!(f, "request payload of {len} bytes is too long"),
            XsError::TransactionConflict { attempts } => {
                write!(f, "transaction still conflicting after {attempts} attempts")
            }
            XsError::Hypercall(e) => write!(f, "event channel hypercall failed: {e}"),
            XsError::Disconnected => f.write_str("xenstore connection broken earlier"),
        }
    }
}
