//! The caller's side of a foreground container process (`run`, `exec`): signals sent to gureum
//! go to the process, a terminal is relayed through its pty, and its exit status comes back.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::{exit_code, os_err, set_sigmask, sigset_of, write_all};

/// Signals gureum passes on to the container's process.
const FORWARDED: [libc::c_int; 9] = [
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTERM,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGALRM,
    libc::SIGCONT,
    libc::SIGWINCH,
];

/// Signals held for a signalfd from before the child exists, so none is lost in between.
pub struct HeldSignals {
    fd: OwnedFd,
    old: libc::sigset_t,
}

impl HeldSignals {
    pub fn hold() -> std::io::Result<Self> {
        let mut list = FORWARDED.to_vec();
        list.push(libc::SIGCHLD);
        let set = sigset_of(&list);
        let old = set_sigmask(libc::SIG_BLOCK, &set);
        // SAFETY: signalfd on a valid set; the fd is owned below.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC) };
        if fd < 0 {
            set_sigmask(libc::SIG_SETMASK, &old);
            return Err(os_err());
        }
        // SAFETY: a fresh fd nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd, old })
    }

    fn next(&self) -> Option<libc::c_int> {
        // SAFETY: an all-zero signalfd_siginfo is valid; read fills it.
        let mut info = unsafe { std::mem::zeroed::<libc::signalfd_siginfo>() };
        let size = std::mem::size_of_val(&info);
        // SAFETY: reads one record into a live struct of that size.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), (&raw mut info).cast(), size) };
        (n.unsigned_abs() == size).then(|| libc::c_int::try_from(info.ssi_signo).unwrap_or(0))
    }
}

impl HeldSignals {
    /// The next signal to pass on (blocking; SIGWINCH included), skipping SIGCHLD.
    pub fn next_forwarded(&self) -> Option<libc::c_int> {
        loop {
            match self.next()? {
                libc::SIGCHLD => {}
                sig => return Some(sig),
            }
        }
    }
}

impl Drop for HeldSignals {
    fn drop(&mut self) {
        set_sigmask(libc::SIG_SETMASK, &self.old);
    }
}

/// Waits for child `pid`, forwarding signals (and relaying `pty` to this terminal when given).
/// Returns its exit status, 128+N for signal N.
pub fn wait(pid: i32, signals: &HeldSignals, pty: Option<&OwnedFd>) -> i32 {
    let _raw = pty.and_then(|_| gureum_vmm::term::RawTerminal::enable(0));
    if let Some(m) = pty {
        copy_winsize(m.as_raw_fd());
    }
    let mut stdin_open = pty.is_some();
    loop {
        let mut fds = vec![libc::pollfd {
            fd: signals.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        if let Some(m) = pty {
            fds.push(libc::pollfd {
                fd: m.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
            if stdin_open {
                fds.push(libc::pollfd {
                    fd: 0,
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
        }
        let n = libc::nfds_t::try_from(fds.len()).unwrap_or(1);
        // SAFETY: polls a live array of pollfds.
        if unsafe { libc::poll(fds.as_mut_ptr(), n, -1) } < 0 {
            continue;
        }
        if let (Some(m), Some(p)) = (pty, fds.get(1)) {
            if p.revents != 0 {
                relay(m.as_raw_fd(), 1);
            }
            if fds.get(2).is_some_and(|p| p.revents != 0) && !relay(0, m.as_raw_fd()) {
                stdin_open = false;
            }
        }
        if fds[0].revents == 0 {
            continue;
        }
        match signals.next() {
            Some(libc::SIGCHLD) => {
                let mut status = 0;
                // SAFETY: reaps our own child without blocking.
                if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
                    if let Some(m) = pty {
                        while relay(m.as_raw_fd(), 1) {}
                    }
                    return exit_code(status);
                }
            }
            Some(libc::SIGWINCH) if pty.is_some() => {
                copy_winsize(pty.map_or(-1, AsRawFd::as_raw_fd))
            }
            // SAFETY: forwards a signal to our own child.
            Some(sig) if sig > 0 => unsafe {
                libc::kill(pid, sig);
            },
            _ => {}
        }
    }
}

/// Copies what is readable now from `from` to `to`; false at EOF or error.
fn relay(from: RawFd, to: RawFd) -> bool {
    let mut buf = [0u8; 16 * 1024];
    // SAFETY: non-blocking by poll's word; reads into a live buffer.
    let n = unsafe { libc::read(from, buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        return false;
    }
    write_all(to, &buf[..n.unsigned_abs()]).is_ok()
}

fn copy_winsize(master: RawFd) {
    // SAFETY: an all-zero winsize is valid; TIOCGWINSZ fills it, TIOCSWINSZ reads it.
    unsafe {
        let mut ws = std::mem::zeroed::<libc::winsize>();
        if libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) == 0 {
            libc::ioctl(master, libc::TIOCSWINSZ, &ws);
        }
    }
}
