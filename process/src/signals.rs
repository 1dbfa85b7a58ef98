//! Signal state a new process starts with.

/// No signal blocked and every disposition the default, so a process starts clean whatever
/// its starter blocked or ignored (both survive exec). Only async-signal-safe calls: it runs
/// between fork and exec (the agent's and gureum's native init's).
pub fn reset() {
    // SAFETY: sigemptyset/sigprocmask on a local set, and signal(2) with SIG_DFL on valid
    // numbers, in the forked child.
    unsafe {
        let mut none = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        for sig in 1..32 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
    }
}
