//! `control/shutdown`: what the toolstack asks (`xl shutdown`, `xl reboot`, ...).

use xen_bindings::traits::ShutdownReason;

/// What a `control/shutdown` value asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownRequest {
    /// Empty: no request (or our own acknowledgement).
    None,
    Shutdown(ShutdownReason),
    /// `suspend` (`xl save`, `xl migrate`): acknowledge, quiesce, `SHUTDOWN_suspend`.
    Suspend,
    /// A value we do not implement or garbage: log and ignore.
    Unknown,
}

/// Parses the value of `control/shutdown` the way libxl writes it.
pub fn parse_shutdown(value: &[u8]) -> ShutdownRequest {
    match value {
        b"" => ShutdownRequest::None,
        b"poweroff" => ShutdownRequest::Shutdown(ShutdownReason::Poweroff),
        // `halt` is what older toolstacks write for poweroff.
        b"halt" => ShutdownRequest::Shutdown(ShutdownReason::Poweroff),
        b"reboot" => ShutdownRequest::Shutdown(ShutdownReason::Reboot),
        b"suspend" => ShutdownRequest::Suspend,
        _ => ShutdownRequest::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values() {
        use ShutdownReason::*;
        assert_eq!(parse_shutdown(b""), ShutdownRequest::None);
        assert_eq!(
            parse_shutdown(b"poweroff"),
            ShutdownRequest::Shutdown(Poweroff)
        );
        assert_eq!(parse_shutdown(b"halt"), ShutdownRequest::Shutdown(Poweroff));
        assert_eq!(parse_shutdown(b"reboot"), ShutdownRequest::Shutdown(Reboot));
        assert_eq!(parse_shutdown(b"suspend"), ShutdownRequest::Suspend);
        assert_eq!(parse_shutdown(b"suspend\n"), ShutdownRequest::Unknown);
        assert_eq!(parse_shutdown(b"poweroff\0"), ShutdownRequest::Unknown);
    }
}
