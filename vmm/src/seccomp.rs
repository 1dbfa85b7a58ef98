//! The VMM's own confinement, as Firecracker's: once the VM is built, the event loop and every
//! vCPU thread may make only the system calls that serving a guest needs. A guest that took
//! over device code could then do no more than those: no opening of files, no exec, no
//! executable memory, KVM's ioctls and four others by number. Unix sockets only with vsock,
//! and then the VMM's root is the vsock socket's directory (chroot), so a connection can reach
//! only the listeners beside it; unlinking is allowed in that directory alone. A call outside
//! the list stops the VMM with one line naming it (exit status 1).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot build the VMM's seccomp filter")]
    Build(#[source] seccompiler::BackendError),
    #[error("cannot compile the VMM's seccomp filter")]
    Compile(#[source] seccompiler::BackendError),
    #[error("cannot install the VMM's seccomp filter")]
    Install(#[source] seccompiler::Error),
    #[error("cannot make {0} the VMM's root")]
    Chroot(std::path::PathBuf, #[source] std::io::Error),
    #[error("cannot give the VMM a network namespace of its own")]
    Netns(#[source] std::io::Error),
    #[error("cannot install the VMM's SIGSYS handler")]
    Handler(#[source] std::io::Error),
}

/// System calls allowed with any arguments.
const ALLOWED: [libc::c_long; 50] = [
    // Guest memory, device queues, disks, TAPs, eventfds, the console.
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_lseek,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fallocate,
    libc::SYS_close,
    libc::SYS_fcntl,
    // The event loop and its timer.
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_ppoll,
    libc::SYS_poll,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
    // Stream sockets (vsock's; socket, connect and accept only with vsock, below).
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
    // Entropy for virtio-rng.
    libc::SYS_getrandom,
    // Threads, locks, time, memory allocation, signals, exit.
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_clock_gettime,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_exit,
    libc::SYS_exit_group,
    // The vCPU threads, started under the filter.
    libc::SYS_clone3,
    libc::SYS_rseq,
    libc::SYS_set_robust_list,
    libc::SYS_sched_getaffinity,
    libc::SYS_gettid,
    // pthread_kill (a pause's kick) asks for the process id before its tgkill.
    libc::SYS_getpid,
    // std's stack-overflow guard of a new thread (a SIGSYS the filter raises cannot be
    // ignored: the kernel resets an ignored one and kills).
    libc::SYS_rt_sigaction,
];

/// KVM's ioctl type (bits 8..16 of the request): all of KVM's requests are allowed.
const KVMIO: u64 = 0xae;

/// The other ioctls serving a guest makes, each by its number: reading and restoring the
/// terminal's mode (TCGETS, TCSETS), non-blocking sockets (FIONBIO) and the TAP offloads the
/// guest negotiates (TUNSETOFFLOAD). Not TIOCSTI, which would type into the user's terminal.
const IOCTLS: [u64; 4] = [0x5401, 0x5402, 0x5421, 0x4004_54d0];

fn condition(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, Error> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).map_err(Error::Build)
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, Error> {
    SeccompRule::new(conditions).map_err(Error::Build)
}

/// The filter. `vsock_dir`, with vsock: the descriptor of its socket's directory, one that
/// `unlinkat` may name; Unix sockets may then be made and connected. `api_dir`, with an API
/// socket: its directory, the other one `unlinkat` may name. Connections are accepted on the
/// listeners made before the filter (vsock's, the API's); a vCPU thread is kicked (a pause)
/// with `pause::kick_signal`, and with no other signal.
pub fn filter(vsock_dir: Option<i32>, api_dir: Option<i32>) -> Result<BpfProgram, Error> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        ALLOWED.iter().map(|&s| (s, Vec::new())).collect();
    let kvm = rule(vec![condition(
        1,
        SeccompCmpOp::MaskedEq(0xff00),
        KVMIO << 8,
    )?]);
    let ioctl = std::iter::once(kvm)
        .chain(
            IOCTLS
                .iter()
                .map(|&r| rule(vec![condition(1, SeccompCmpOp::Eq, r)?])),
        )
        .collect::<Result<_, _>>()?;
    rules.insert(libc::SYS_ioctl, ioctl);
    // Memory may be mapped and protected, never made executable.
    let no_exec = u64::try_from(libc::PROT_EXEC).unwrap_or_default();
    for call in [libc::SYS_mmap, libc::SYS_mprotect] {
        let rule = rule(vec![condition(2, SeccompCmpOp::MaskedEq(no_exec), 0)?])?;
        rules.insert(call, vec![rule]);
    }
    // Threads name themselves.
    let set_name = u64::try_from(libc::PR_SET_NAME).unwrap_or_default();
    let prctl = rule(vec![condition(0, SeccompCmpOp::Eq, set_name)?])?;
    rules.insert(libc::SYS_prctl, vec![prctl]);
    rules.insert(libc::SYS_accept4, Vec::new());
    let kick = u64::from(crate::pause::kick_signal().cast_unsigned());
    rules.insert(
        libc::SYS_tgkill,
        vec![rule(vec![condition(2, SeccompCmpOp::Eq, kick)?])?],
    );
    if vsock_dir.is_some() {
        let unix = u64::from(libc::AF_UNIX.cast_unsigned());
        let socket = rule(vec![condition(0, SeccompCmpOp::Eq, unix)?])?;
        rules.insert(libc::SYS_socket, vec![socket]);
        rules.insert(libc::SYS_connect, Vec::new());
    }
    if api_dir.is_some() {
        // A snapshot's two files, made as File::create makes them (PUT /snapshot/create):
        // write-only, created or truncated, nothing else (no reading of host files).
        let create = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC;
        let create = u64::from(create.cast_unsigned());
        let open = rule(vec![condition(2, SeccompCmpOp::Eq, create)?])?;
        rules.insert(libc::SYS_openat, vec![open]);
        rules.insert(libc::SYS_ftruncate, Vec::new());
    }
    let unlink = (vsock_dir.into_iter().chain(api_dir))
        .map(|fd| {
            rule(vec![condition(
                0,
                SeccompCmpOp::Eq,
                u64::from(fd.cast_unsigned()),
            )?])
        })
        .collect::<Result<Vec<_>, _>>()?;
    if !unlink.is_empty() {
        rules.insert(libc::SYS_unlinkat, unlink);
    }
    let trap = SeccompAction::Trap;
    let filter = SeccompFilter::new(rules, trap, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(Error::Build)?;
    filter.try_into().map_err(Error::Compile)
}

/// What confines the VMM once its VM is built.
pub struct Confinement {
    pub filter: BpfProgram,
    /// With vsock: its socket's directory, made the VMM's root (chroot), so that the guest's
    /// connections to the host reach only the `PATH_<port>` listeners beside the socket.
    pub jail: Option<std::path::PathBuf>,
    /// With vsock: move into a new, empty network namespace, where no host daemon's abstract
    /// Unix socket (which a chroot does not hide) can be reached.
    pub new_netns: bool,
}

/// Moves the calling thread, and the threads it starts afterwards, into a new, empty network
/// namespace (~0.8 ms here).
pub fn unshare_netns() -> Result<(), Error> {
    // SAFETY: unshare with a constant flag.
    match unsafe { libc::unshare(libc::CLONE_NEWNET) } {
        0 => Ok(()),
        _ => Err(Error::Netns(std::io::Error::last_os_error())),
    }
}

/// Makes `dir` this process's root and working directory.
pub fn chroot(dir: &std::path::Path) -> Result<(), Error> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::Chroot(dir.to_path_buf(), std::io::ErrorKind::InvalidInput.into()))?;
    // SAFETY: chroot and chdir with NUL-terminated paths that outlive the calls.
    let failed = unsafe { libc::chroot(c.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 };
    match failed {
        true => Err(Error::Chroot(
            dir.to_path_buf(),
            std::io::Error::last_os_error(),
        )),
        false => Ok(()),
    }
}

/// Installs `program` on the calling thread (threads it starts afterwards inherit it).
pub fn apply(program: &BpfProgram) -> Result<(), Error> {
    seccompiler::apply_filter(program).map_err(Error::Install)
}

/// SIGSYS from the filter: one line naming the call, then exit 1. Only async-signal-safe work.
extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: for a SIGSYS the kernel fills siginfo's _sigsys member: _call_addr (a pointer)
    // at byte 16, then the int _syscall at 24.
    let nr = unsafe { info.cast::<u8>().add(24).cast::<i32>().read_unaligned() };
    let mut digits = [0u8; 12];
    let mut at = digits.len();
    let mut n = nr.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + u8::try_from(n % 10).unwrap_or(0);
        n /= 10;
        if n == 0 || at == 0 {
            break;
        }
    }
    let parts: [&[u8]; 3] = [
        b"gureum: the VMM's seccomp filter stopped it at system call ",
        &digits[at..],
        b" (--no-seccomp runs without it)\n",
    ];
    for part in parts {
        // SAFETY: write is async-signal-safe; the buffer is live.
        unsafe { libc::write(2, part.as_ptr().cast(), part.len()) };
    }
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(1) };
}

/// Installs the SIGSYS handler (process-wide), before any filter.
pub fn handle_sigsys() -> Result<(), Error> {
    // SAFETY: a zeroed sigaction is valid; the handler is an extern "C" fn of the SA_SIGINFO
    // shape and stays valid for the life of the process.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigsys as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        if libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) != 0 {
            return Err(Error::Handler(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` in a forked child under the filter; its exit status.
    fn in_child(unlink_dir: Option<i32>, f: impl FnOnce() -> i32) -> i32 {
        let program = filter(unlink_dir, None).unwrap();
        // SAFETY: the child only installs the filter, runs `f` and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let code = handle_sigsys()
                .and_then(|()| apply(&program))
                .map_or(2, |()| f());
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        libc::WEXITSTATUS(status)
    }

    #[test]
    fn what_a_vmm_needs_passes_and_the_rest_stops_it() {
        // Memory, an eventfd-like pipe write, time: allowed (exit 0).
        assert_eq!(
            in_child(None, || {
                let v = vec![1u8; 1 << 20];
                i32::from(v[4096] != 1)
            }),
            0
        );
        // Opening a file: stopped by the SIGSYS handler (exit 1).
        assert_eq!(
            in_child(None, || {
                // SAFETY: a plain open of a constant path.
                unsafe { libc::open(c"/etc/hostname".as_ptr(), libc::O_RDONLY) };
                0
            }),
            1
        );
        // An inet socket: stopped; a Unix one: allowed.
        let socket = |family| {
            // SAFETY: socket(2) with constant arguments.
            i32::from(unsafe { libc::socket(family, libc::SOCK_STREAM, 0) } < 0)
        };
        assert_eq!(in_child(None, || socket(libc::AF_INET)), 1);
        assert_eq!(
            in_child(None, || socket(libc::AF_UNIX)),
            1,
            "no vsock, no sockets"
        );
        let stdin = Some(0);
        assert_eq!(in_child(stdin, || socket(libc::AF_INET)), 1);
        assert_eq!(in_child(stdin, || socket(libc::AF_UNIX)), 0, "vsock's");
        // A KVM ioctl type passes the filter (and fails on stdin: ENOTTY); another stops it.
        let ioctl = |request: libc::c_ulong| {
            // SAFETY: an ioctl on stdin with a null argument; the kernel rejects what it
            // does not know.
            unsafe { libc::ioctl(0, request, 0) };
            0
        };
        assert_eq!(in_child(None, || ioctl(0xae80)), 0);
        assert_eq!(in_child(None, || ioctl(0x5401)), 0, "TCGETS");
        assert_eq!(in_child(None, || ioctl(0x8912)), 1);
        assert_eq!(in_child(None, || ioctl(0x5412)), 1, "TIOCSTI");
        // Memory, but not executable memory.
        let map = |prot| {
            // SAFETY: an anonymous private mapping of one page, never used.
            let p = unsafe { libc::mmap(std::ptr::null_mut(), 4096, prot, MAP, -1, 0) };
            i32::from(p == libc::MAP_FAILED)
        };
        const MAP: libc::c_int = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        assert_eq!(
            in_child(None, || map(libc::PROT_READ | libc::PROT_WRITE)),
            0
        );
        assert_eq!(in_child(None, || map(libc::PROT_READ | libc::PROT_EXEC)), 1);
        // A thread starts and ends under the filter, as the vCPUs do.
        assert_eq!(
            in_child(None, || i32::from(
                std::thread::spawn(|| 7).join().unwrap() != 7
            )),
            0
        );
    }

    #[test]
    fn a_thread_may_be_kicked_with_the_kick_signal_and_no_other() {
        crate::pause::install_kick_handler().unwrap();
        let kick = |sig: libc::c_int| {
            // SAFETY: signals this very thread; the kick's handler only stores to memory.
            i32::from(unsafe { libc::pthread_kill(libc::pthread_self(), sig) } != 0)
        };
        assert_eq!(in_child(None, || kick(crate::pause::kick_signal())), 0);
        assert_eq!(in_child(None, || kick(libc::SIGUSR1)), 1);
    }

    #[test]
    fn unlinking_is_allowed_in_the_one_directory_only() {
        let dir = std::env::temp_dir().join(format!("gureum-seccomp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("sock"), "").unwrap();
        let file = std::fs::File::open(&dir).unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        let unlink = |at: i32| {
            // SAFETY: unlinkat with a live directory fd (or AT_FDCWD) and a constant name.
            i32::from(unsafe { libc::unlinkat(at, c"sock".as_ptr(), 0) } != 0)
        };
        assert_eq!(in_child(Some(fd), || unlink(libc::AT_FDCWD)), 1);
        assert!(dir.join("sock").exists());
        assert_eq!(in_child(Some(fd), || unlink(fd)), 0);
        assert!(!dir.join("sock").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
