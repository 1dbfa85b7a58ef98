//! The VMM's event loop (event-manager): console input into the serial port, and everything
//! that ends a run — the guest stopping, the i8042 reset line, SIGINT/SIGTERM/SIGHUP, the timeout.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventOps, Events, MutEventSubscriber};
use gureum_devices::bus::lock;
use gureum_devices::legacy::Serial;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use crate::vcpu::{ExitSlot, GuestExit};

/// Why a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Guest(GuestExit),
    /// The guest wrote the i8042 reset command.
    I8042Reset,
    Timeout(Duration),
    Signal(i32),
}

impl Outcome {
    /// The process exit code for this outcome.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Guest(GuestExit::Stopped(_) | GuestExit::TripleFault(_)) | Self::I8042Reset => 0,
            Self::Guest(GuestExit::Crashed(_)) => 3,
            Self::Timeout(_) => 124,
            Self::Signal(n) => 128 + n,
        }
    }

    /// Whether the run's end deserves a line on stderr: any failure, and a triple fault,
    /// which ends a `reboot=t` guest cleanly but also one that crashed silently.
    pub fn worth_a_line(&self) -> bool {
        self.exit_code() != 0 || matches!(self, Self::Guest(GuestExit::TripleFault(_)))
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Guest(GuestExit::Stopped(how)) => write!(f, "guest stopped: {how}"),
            Self::Guest(GuestExit::TripleFault(at)) => {
                write!(f, "guest stopped: triple fault (reset), {at}")
            }
            Self::Guest(GuestExit::Crashed(why)) => write!(f, "guest crashed: {why}"),
            Self::I8042Reset => write!(f, "guest stopped: reset through the i8042"),
            Self::Timeout(d) => write!(
                f,
                "guest still running after --timeout {}s; stopped it",
                d.as_secs_f64()
            ),
            Self::Signal(n) => write!(f, "stopped by signal {n}"),
        }
    }
}

const STDIN: RawFd = 0;

/// Feeds stdin into the serial receive FIFO. While the FIFO is full it stops reading stdin and
/// waits for the device's "drained" eventfd, so no input byte is dropped.
pub struct ConsoleInput<W: Write + Send> {
    serial: Arc<Mutex<Serial<W>>>,
    ready: EventFd,
    stdin_open: bool,
    listening: bool,
}

impl<W: Write + Send> ConsoleInput<W> {
    pub fn new(serial: Arc<Mutex<Serial<W>>>, ready: EventFd) -> Self {
        Self {
            serial,
            ready,
            stdin_open: true,
            listening: false,
        }
    }

    fn listen(&mut self, ops: &mut EventOps, on: bool) {
        if on == self.listening || !self.stdin_open {
            return;
        }
        let ev = Events::empty_raw(STDIN);
        let done = if on {
            ops.add(Events::new_raw(STDIN, EventSet::IN))
        } else {
            ops.remove(ev)
        };
        match done {
            Ok(()) => self.listening = on,
            // stdin that epoll cannot watch (a regular file, /dev/null, closed): no input.
            Err(_) => self.stdin_open = false,
        }
    }

    fn read_stdin(&mut self, ops: &mut EventOps) {
        let mut serial = lock(&self.serial);
        let room = serial.input_capacity();
        if room == 0 {
            drop(serial);
            self.listen(ops, false);
            return;
        }
        let mut buf = [0u8; 64];
        let want = room.min(buf.len());
        // SAFETY: reads at most `want` bytes into `buf`, which is at least that long.
        let n = unsafe { libc::read(STDIN, buf.as_mut_ptr().cast(), want) };
        match usize::try_from(n) {
            Ok(0) => {}
            Ok(n) => {
                // `n` bytes fit: capacity was checked under the same lock.
                let _ = serial.enqueue_input(&buf[..n]);
                return;
            }
            Err(_) => {
                let err = std::io::Error::last_os_error().raw_os_error();
                if matches!(err, Some(libc::EINTR | libc::EAGAIN)) {
                    return;
                }
            }
        }
        drop(serial);
        // End of input or a read error: stop watching stdin for good.
        self.listen(ops, false);
        self.stdin_open = false;
    }
}

impl<W: Write + Send> MutEventSubscriber for ConsoleInput<W> {
    fn init(&mut self, ops: &mut EventOps) {
        // Without the wake-up eventfd input could stall; it is our own fd, so this cannot fail
        // short of running out of memory, and then input is simply off.
        if ops.add(Events::new(&self.ready, EventSet::IN)).is_err() {
            self.stdin_open = false;
        }
        self.listen(ops, true);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.ready.as_raw_fd() {
            let _ = self.ready.read();
            self.listen(ops, true);
        } else if events.fd() == STDIN {
            self.read_stdin(ops);
        }
    }
}

/// Watches everything that ends a run and records the first [`Outcome`].
pub struct ExitWatcher {
    guest: Arc<ExitSlot>,
    i8042_reset: EventFd,
    signals: OwnedFd,
    timer: Option<(TimerFd, Duration)>,
    pub outcome: Arc<Mutex<Option<Outcome>>>,
}

impl ExitWatcher {
    pub fn new(
        guest: Arc<ExitSlot>,
        i8042_reset: EventFd,
        signals: OwnedFd,
        timeout: Option<Duration>,
    ) -> std::io::Result<Self> {
        let timer = match timeout {
            Some(d) => {
                let mut t = TimerFd::new()?;
                t.reset(d, None)?;
                Some((t, d))
            }
            None => None,
        };
        Ok(Self {
            guest,
            i8042_reset,
            signals,
            timer,
            outcome: Arc::default(),
        })
    }

    fn finish(&self, outcome: Outcome) {
        lock(&self.outcome).get_or_insert(outcome);
    }
}

impl MutEventSubscriber for ExitWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        let mut fds = vec![
            self.guest.evt.as_raw_fd(),
            self.i8042_reset.as_raw_fd(),
            self.signals.as_raw_fd(),
        ];
        fds.extend(self.timer.as_ref().map(|(t, _)| t.as_raw_fd()));
        for fd in fds {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                self.finish(Outcome::Guest(GuestExit::Crashed(format!(
                    "event loop: {e:?}"
                ))));
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.guest.evt.as_raw_fd() {
            let reason = self.guest.reason().unwrap_or(GuestExit::Stopped("unknown"));
            self.finish(Outcome::Guest(reason));
        } else if fd == self.i8042_reset.as_raw_fd() {
            self.finish(Outcome::I8042Reset);
        } else if fd == self.signals.as_raw_fd() {
            let signo = read_signal(&self.signals).unwrap_or(libc::SIGTERM);
            self.finish(Outcome::Signal(signo));
        } else if let Some((_, d)) = self.timer.as_ref().filter(|(t, _)| t.as_raw_fd() == fd) {
            self.finish(Outcome::Timeout(*d));
        }
    }
}

/// Block SIGINT, SIGTERM and SIGHUP in this thread (and the threads it starts) and return a
/// signalfd that receives them, so the event loop handles them like any other event.
pub fn block_exit_signals() -> std::io::Result<OwnedFd> {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; the calls only modify it and this thread's mask.
    let fd = unsafe {
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK)
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: signalfd returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn read_signal(fd: &OwnedFd) -> Option<i32> {
    // SAFETY: signalfd_siginfo is plain data.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: reads at most `size` bytes into `info`.
    let n = unsafe { libc::read(fd.as_raw_fd(), (&raw mut info).cast(), size) };
    (usize::try_from(n).ok() == Some(size)).then(|| i32::try_from(info.ssi_signo).unwrap_or(0))
}

#[cfg(test)]
mod outcome_tests {
    use super::*;

    #[test]
    fn a_triple_fault_is_said_although_it_exits_0() {
        let triple = Outcome::Guest(GuestExit::TripleFault("vCPU 0 rip 0x1000".into()));
        assert_eq!(triple.exit_code(), 0);
        assert!(triple.worth_a_line());
        assert_eq!(
            triple.to_string(),
            "guest stopped: triple fault (reset), vCPU 0 rip 0x1000"
        );
        assert!(!Outcome::I8042Reset.worth_a_line());
        assert!(!Outcome::Guest(GuestExit::Stopped("power-off")).worth_a_line());
        assert!(Outcome::Timeout(Duration::from_secs(1)).worth_a_line());
    }
}
