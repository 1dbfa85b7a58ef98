//! Reaching a sandbox's agent from its monitor: knocking on its vsock port until it answers
//! (or its VMM exits, or the deadline passes), waiting on descriptors and the VMM's pidfd, and
//! the guest console's last lines for an error that must say why a guest did not come up.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use super::{AGENT_PORT, threads};

/// `n` bytes from the host's RNG (getrandom); fewer if it fails.
pub(super) fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    // SAFETY: getrandom writes at most `n` bytes into a buffer of that size.
    let got = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), n, 0) };
    buf.truncate(usize::try_from(got).unwrap_or(0));
    buf
}

/// The last `n` lines of the guest console at `log`, indented, for an error that must say why
/// a guest did not come up (the state directory, and the log with it, goes away).
pub(super) fn console_tail(log: &Path, n: usize) -> String {
    let text = std::fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return "the guest console printed nothing".into();
    }
    let tail = lines
        .get(lines.len().saturating_sub(n)..)
        .unwrap_or_default();
    format!(
        "the guest console's last lines:\n    {}",
        tail.join("\n    ")
    )
}

/// Connects to the agent through the vsock device's Unix socket (Firecracker's CONNECT), once
/// the agent has said it listens (a connection to `ready`). Knocking on a booting guest costs
/// it a packet and an interrupt each time, so without that word it tries only every 250 ms.
pub(super) fn connect(
    uds: &Path,
    ready: &UnixListener,
    vmm: &mut Child,
    within: Duration,
    knock: Duration,
) -> Result<UnixStream, String> {
    let start = Instant::now();
    let mut next_try = start + knock;
    // Woken by the agent's word or the VMM's exit, not by a clock: every wakeup of a
    // monitor is a timer tick the host pays for, fifty at once on an emulated host.
    let exited = pidfd(vmm.id());
    loop {
        if let Ok(Some(status)) = vmm.try_wait() {
            return Err(format!(
                "the VMM exited ({status}) before the agent answered"
            ));
        }
        let told = ready.accept().is_ok();
        if told || Instant::now() >= next_try {
            if let Ok(conn) = try_connect(uds) {
                return Ok(conn);
            }
            next_try = Instant::now() + knock;
        }
        let Some(left) = within.checked_sub(start.elapsed()) else {
            let threads = threads::describe(vmm.id(), Duration::from_secs(1));
            return Err(format!(
                "the agent did not answer within {within:?}; {threads}"
            ));
        };
        let wait = next_try.saturating_duration_since(Instant::now()).min(left);
        wait_readable(&[ready.as_raw_fd()], exited.as_ref(), wait);
    }
}

/// A descriptor that becomes readable when process `pid` exits (pidfd_open), if the kernel
/// has them.
pub(super) fn pidfd(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open(2) on a pid, no flags; a valid result is a fresh fd we then own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).ok().filter(|&fd| fd >= 0)?;
    // SAFETY: a fresh fd nobody else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Blocks until one of `fds` (or `pidfd`) is readable, or `within` passes.
pub(super) fn wait_readable(fds: &[i32], pidfd: Option<&OwnedFd>, within: Duration) {
    let mut set: Vec<libc::pollfd> = (fds.iter().copied())
        .chain(pidfd.map(AsRawFd::as_raw_fd))
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = i32::try_from(within.as_millis()).unwrap_or(i32::MAX).max(1);
    let n = libc::nfds_t::try_from(set.len()).unwrap_or_default();
    // SAFETY: poll on live descriptors, for at most `ms`.
    unsafe { libc::poll(set.as_mut_ptr(), n, ms) };
}

pub(super) fn try_connect(uds: &Path) -> std::io::Result<UnixStream> {
    let mut conn = UnixStream::connect(uds)?;
    conn.write_all(format!("CONNECT {AGENT_PORT}\n").as_bytes())?;
    // Read the answer a byte at a time: what follows it is the agent's.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while conn.read(&mut byte)? == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    if line.starts_with(b"OK ") {
        Ok(conn)
    } else {
        Err(std::io::ErrorKind::ConnectionRefused.into())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_failed_start_names_the_console_s_last_lines() {
        let log = std::env::temp_dir().join(format!("gureum-console-{}", std::process::id()));
        std::fs::write(&log, "one\n\ntwo\nthree\nKernel panic - not syncing\n").unwrap();
        let tail = super::console_tail(&log, 2);
        assert_eq!(
            tail,
            "the guest console's last lines:\n    three\n    Kernel panic - not syncing"
        );
        std::fs::write(&log, "").unwrap();
        assert_eq!(
            super::console_tail(&log, 2),
            "the guest console printed nothing"
        );
        std::fs::remove_file(&log).unwrap();
    }
}
