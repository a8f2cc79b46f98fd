//! The one map from client errors to errno values.

use crate::client::ClientError;
use fuser::Errno;

/// The errno a failed client operation reports to the kernel.
///
/// Anything about reaching the ring (no replica answered, RPC failures, a ring that
/// cannot be found) is `EIO`: the caller sees an I/O error, never a hang or a silent
/// success. A compare-and-set that kept losing is `EAGAIN`, so the caller may retry.
pub fn errno(e: &ClientError) -> Errno {
    match e {
        ClientError::NotFound(_) => Errno::ENOENT,
        ClientError::NoAttribute(_) => Errno::ENODATA,
        ClientError::Exists(_) => Errno::EEXIST,
        ClientError::NotDir(_) => Errno::ENOTDIR,
        ClientError::IsDir(_) => Errno::EISDIR,
        ClientError::NotEmpty(_) => Errno::ENOTEMPTY,
        ClientError::InvalidPath(_) | ClientError::Invalid(_) => Errno::EINVAL,
        ClientError::NameTooLong(_) => Errno::ENAMETOOLONG,
        ClientError::Contended(_) => Errno::EAGAIN,
        ClientError::Unavailable { .. }
        | ClientError::NoRing { .. }
        | ClientError::Rpc(_)
        | ClientError::Io(_) => Errno::EIO,
    }
}

/// Logs an error that becomes `EIO` (the caller learns nothing more), then maps it.
pub fn log_errno(op: &str, e: &ClientError) -> Errno {
    let n = errno(e);
    if n == Errno::EIO || n == Errno::EAGAIN {
        tracing::warn!("{op}: {e}");
    } else {
        tracing::debug!("{op}: {e}");
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_failures_are_eio() {
        let e = ClientError::Unavailable {
            what: "chunk".into(),
            last: "down".into(),
        };
        assert_eq!(errno(&e), Errno::EIO);
        assert_eq!(errno(&ClientError::NotEmpty("d".into())), Errno::ENOTEMPTY);
        assert_eq!(
            errno(&ClientError::NoAttribute("user.x".into())),
            Errno::ENODATA
        );
        assert_eq!(
            errno(&ClientError::NameTooLong("x".into())),
            Errno::ENAMETOOLONG
        );
    }
}
