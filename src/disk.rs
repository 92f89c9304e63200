//! Questions about the local disk: free space, and whether a directory
//! essops writes can be written.

use std::path::{Path, PathBuf};

/// Free bytes for unprivileged users on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `s` a writable statvfs.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    (rc == 0).then_some(s.f_bavail * s.f_frsize)
}

/// The folder where `path` can be created: `path` itself when it exists,
/// else the nearest folder above it that does.
pub fn nearest_existing(path: &Path) -> PathBuf {
    path.ancestors()
        .find(|p| p.exists())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Whether this user can create files where `path` is (or would be made).
pub fn writable(path: &Path) -> bool {
    let dir = nearest_existing(path);
    let probe = dir.join(format!(".essops-probe-{}", std::process::id()));
    let ok = std::fs::File::create(&probe).is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}
