//! Xen error numbers (xen/include/public/errno.h), as returned negated by hypercalls.

use core::fmt;

/// A Xen errno (positive). Hypercalls return `-errno`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

impl Errno {
    pub const EPERM: Errno = Errno(1);
    pub const ENOENT: Errno = Errno(2);
    pub const ESRCH: Errno = Errno(3);
    pub const EIO: Errno = Errno(5);
    pub const E2BIG: Errno = Errno(7);
    pub const EBADF: Errno = Errno(9);
    pub const EAGAIN: Errno = Errno(11);
    pub const ENOMEM: Errno = Errno(12);
    pub const EACCES: Errno = Errno(13);
    pub const EFAULT: Errno = Errno(14);
    pub const EBUSY: Errno = Errno(16);
    pub const EEXIST: Errno = Errno(17);
    pub const EINVAL: Errno = Errno(22);
    pub const ENOSPC: Errno = Errno(28);
    pub const EROFS: Errno = Errno(30);
    pub const ENOSYS: Errno = Errno(38);
    pub const ENOTEMPTY: Errno = Errno(39);
    pub const ETIMEDOUT: Errno = Errno(110);
    pub const EISCONN: Errno = Errno(106);
    pub const EOPNOTSUPP: Errno = Errno(95);

    /// Splits a raw hypercall return value: negative values in `-4095..0` are errors.
    pub fn check(ret: i64) -> Result<u64, Errno> {
        if (-4095..0).contains(&ret) {
            Err(Errno(-ret as i32))
        } else {
            Ok(ret as u64)
        }
    }

    /// The symbolic name, as in errno.h (also what xenstored sends in XS_ERROR replies).
    pub fn name(self) -> &'static str {
        match self.0 {
            1 => "EPERM",
            2 => "ENOENT",
            3 => "ESRCH",
            5 => "EIO",
            7 => "E2BIG",
            9 => "EBADF",
            11 => "EAGAIN",
            12 => "ENOMEM",
            13 => "EACCES",
            14 => "EFAULT",
            16 => "EBUSY",
            17 => "EEXIST",
            22 => "EINVAL",
            28 => "ENOSPC",
            30 => "EROFS",
            38 => "ENOSYS",
            39 => "ENOTEMPTY",
            95 => "EOPNOTSUPP",
            106 => "EISCONN",
            110 => "ETIMEDOUT",
            _ => "E?",
        }
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name(), self.0)
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_splits_errors_from_values() {
        assert_eq!(Errno::check(0), Ok(0));
        assert_eq!(Errno::check(512), Ok(512));
        assert_eq!(Errno::check(-22), Err(Errno::EINVAL));
        assert_eq!(Errno::check(-1), Err(Errno::EPERM));
        // A large negative (e.g. an address) is not an errno.
        assert_eq!(Errno::check(-5000), Ok(-5000i64 as u64));
    }
}
