//! The operating-system calls the standard library does not wrap, as safe functions.
//! This is the one module allowed `unsafe` (the crate denies it everywhere else): each
//! call's safety argument is stated beside it, and nothing here keeps pointers.
#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Flushes the whole filesystem holding `dir` to disk.
pub fn syncfs(dir: &Path) -> std::io::Result<()> {
    let d = File::open(dir)?;
    // SAFETY: syncfs takes a descriptor that stays open for the call and touches no memory.
    let rc = unsafe { libc::syncfs(d.as_raw_fd()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Tells the kernel a file's cached pages will not be read soon (a hint: the file was
/// just synced, so they are written back already).
pub fn drop_cached_pages(f: &File) {
    // SAFETY: posix_fadvise reads no memory of ours; the descriptor is open for the call.
    unsafe {
        libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
    }
}

/// Asks the kernel to start writing back a range of `file` now, without waiting for it
/// (only a hint: the fsync that follows is what makes the data durable).
pub fn start_writeback(file: &File, offset: u64, len: u64) {
    // SAFETY: sync_file_range reads no memory of ours; the descriptor is open for the call.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// Total and free bytes of the filesystem holding `dir` ((0, 0) when it cannot tell).
pub fn disk_space(dir: &Path) -> (u64, u64) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return (0, 0);
    };
    // SAFETY: `c` is a valid NUL-terminated path and `st` is a plain C struct that
    // statvfs fills in; it is only read after a successful return.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc == 0 {
        (st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize)
    } else {
        (0, 0)
    }
}

/// The calling process's uid and gid.
pub fn current_ids() -> (u32, u32) {
    // SAFETY: getuid and getgid cannot fail and touch no memory.
    unsafe { (libc::getuid(), libc::getgid()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_calls_answer_on_a_real_directory() {
        let dir = tempfile::tempdir().unwrap();
        let (total, free) = disk_space(dir.path());
        assert!(total > 0 && free <= total);
        assert_eq!(disk_space(Path::new("/no/such/dir")), (0, 0));
        syncfs(dir.path()).unwrap();
        assert!(syncfs(Path::new("/no/such/dir")).is_err());
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 8192]).unwrap();
        let f = File::open(&path).unwrap();
        start_writeback(&f, 0, 8192);
        drop_cached_pages(&f);
        assert_eq!(std::fs::read(&path).unwrap(), vec![7u8; 8192]);
    }
}
