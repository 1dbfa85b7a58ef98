//! The container's pid namespace in the guest, where config.json lists one: its first process
//! (the main connection's) is PID 1 there, as under runc (the kernel spares it signals it does
//! not handle, and its end ends every other process of the namespace), and every exec session
//! joins it, waiting if need be until it exists (`start` may return before the agent has
//! spawned the first process). Namespaces for children are per thread: a thread points its
//! next child at the namespace and back at the agent's own once the child is forked.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Condvar, Mutex};

enum State {
    /// The first process is not spawned yet.
    Waiting,
    /// It was (or failed to be): its namespace, if it has one.
    Settled(Option<OwnedFd>),
}

static STATE: Mutex<State> = Mutex::new(State::Waiting);
static SETTLED: Condvar = Condvar::new();

/// While held, this thread's children start in the container's pid namespace (if it has one).
pub struct Entered {
    /// The agent's own namespace, to return to; None: the thread's was left as it is.
    own: Option<OwnedFd>,
    /// The main connection's: settles the state when dropped, if [`Entered::adopt`] did not.
    main: bool,
    /// The namespace is new: the child is its PID 1 (see [`Entered::adopt`]).
    pub fresh: bool,
}

/// Points this thread's next child at the container's namespace when it `wants` one: the
/// `main` connection's first process makes it; an exec session joins it.
pub fn enter(wanted: bool, main: bool) -> io::Result<Entered> {
    let mut entered = Entered {
        own: None,
        main,
        fresh: false,
    };
    if !wanted {
        return Ok(entered);
    }
    if main {
        entered.own = Some(open_ns("/proc/thread-self/ns/pid")?);
        // SAFETY: unshare of the pid namespace for this thread's children only.
        check(unsafe { libc::unshare(libc::CLONE_NEWPID) })?;
        entered.fresh = true;
        return Ok(entered);
    }
    let mut state = lock();
    while matches!(*state, State::Waiting) {
        state = SETTLED.wait(state).unwrap_or_else(|p| p.into_inner());
    }
    if let State::Settled(Some(ns)) = &*state {
        entered.own = Some(open_ns("/proc/thread-self/ns/pid")?);
        // SAFETY: setns on a namespace fd we own; it changes this thread's children only.
        check(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWPID) })?;
    }
    Ok(entered)
}

impl Entered {
    /// Keeps the namespace that `pid`, the first process, is PID 1 of.
    pub fn adopt(&self, pid: u32) -> io::Result<()> {
        let ns = open_ns(&format!("/proc/{pid}/ns/pid"))?;
        settle(Some(ns));
        Ok(())
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        if let Some(own) = &self.own {
            // SAFETY: setns back to this thread's own active namespace, through a fd we own.
            unsafe { libc::setns(own.as_raw_fd(), libc::CLONE_NEWPID) };
        }
        if self.main {
            settle(None);
        }
    }
}

/// The first process is spawned (or not): exec sessions may go on. Only the first call counts.
fn settle(ns: Option<OwnedFd>) {
    let mut state = lock();
    if matches!(*state, State::Waiting) {
        *state = State::Settled(ns);
        SETTLED.notify_all();
    }
}

fn lock() -> std::sync::MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|p| p.into_inner())
}

fn check(rc: libc::c_int) -> io::Result<()> {
    match rc {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

fn open_ns(path: &str) -> io::Result<OwnedFd> {
    Ok(std::fs::File::open(path)?.into())
}
