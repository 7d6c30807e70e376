//! What the running kernel says about itself.

/// `uname -r`.
pub fn kernel_release() -> String {
    // SAFETY: uname fills the zeroed struct; the release field is NUL-terminated.
    unsafe {
        let mut uts: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut uts) != 0 {
            return "unknown".into();
        }
        std::ffi::CStr::from_ptr(uts.release.as_ptr()).to_string_lossy().into_owned()
    }
}
