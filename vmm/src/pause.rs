//! Pausing and resuming a running VM: every vCPU thread parks outside KVM_RUN until resumed.
//!
//! A pause marks the request, then kicks each vCPU thread with [`KICK_SIGNAL`]. The signal's
//! handler, on that thread, sets its `kvm_run.immediate_exit`, so KVM_RUN returns EINTR at
//! once whether the thread was inside it (the signal interrupts it) or about to enter it (the
//! flag makes the next entry return). The thread then parks until the resume. KVM completes an
//! exit's pending port or MMIO read before it looks at the flag, so a parked vCPU has no
//! half-done instruction: its state is whole, as a snapshot needs it.

use std::cell::Cell;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use gureum_devices::bus::lock;
use kvm_bindings::kvm_run;

/// The real-time signal that kicks a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

thread_local! {
    /// This thread's vCPU `kvm_run` area, for the kick handler (null on other threads).
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("cannot install the vCPU kick signal's handler")]
    Handler,
    #[error("the guest has stopped")]
    Stopped,
    #[error("the vCPUs did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the VM is not paused")]
    NotPaused,
}

extern "C" fn on_kick(_: libc::c_int) {
    // Only async-signal-safe work: one store through this thread's own pointer.
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: the pointer is this thread's vCPU's mmap'd kvm_run, set by `enter` on this
        // thread and valid while the vCPU (which the thread owns) lives.
        unsafe { std::ptr::write_volatile(&raw mut (*run).immediate_exit, 1) };
    }
}

/// Installs the kick handler (once per process, before any vCPU thread starts). Not
/// SA_RESTART: KVM_RUN must return EINTR.
pub fn install_kick_handler() -> Result<(), Error> {
    // SAFETY: sigaction is plain data, zeroed then filled; the handler only stores to memory.
    let done = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_kick as *const () as usize;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(kick_signal(), &action, std::ptr::null_mut())
    };
    if done == 0 {
        Ok(())
    } else {
        Err(Error::Handler)
    }
}

/// Called on a vCPU thread before its first KVM_RUN: where the kick handler finds its flag.
pub fn enter(run: &mut kvm_run) {
    KVM_RUN.with(|p| p.set(run));
}

#[derive(Debug, Default)]
struct State {
    /// A pause is asked for (until the resume).
    requested: bool,
    /// vCPU threads parked, and those still running the guest.
    parked: usize,
    running: usize,
    /// Thread handles, to kick.
    threads: Vec<libc::pthread_t>,
    /// Work for the parked threads (a snapshot's state): asked for by bumping `work`; each
    /// parked thread does it once and counts itself in `done`.
    work: u64,
    done: usize,
}

/// Shared by the vCPU threads and whoever pauses them (the API).
#[derive(Debug, Default)]
pub struct PauseGate {
    state: Mutex<State>,
    changed: Condvar,
}

impl PauseGate {
    /// A vCPU thread starts: it can be kicked from now on.
    pub fn register(&self) {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        let mut s = lock(&self.state);
        s.threads.push(me);
        s.running += 1;
    }

    /// A vCPU thread ends (the guest stopped): it will not park, and must not be kicked.
    pub fn unregister(&self) {
        // SAFETY: as above.
        let me = unsafe { libc::pthread_self() };
        let mut s = lock(&self.state);
        s.threads.retain(|&t| t != me);
        s.running = s.running.saturating_sub(1);
        self.changed.notify_all();
    }

    /// On a vCPU thread after KVM_RUN returned EINTR: parks while a pause is asked for, and
    /// runs `work` each time [`Self::on_every_parked`] asks for it meanwhile.
    pub fn park_if_requested(&self, mut work: impl FnMut()) {
        let mut s = lock(&self.state);
        if !s.requested {
            return;
        }
        s.parked += 1;
        self.changed.notify_all();
        let mut seen = s.work;
        while s.requested {
            if s.work != seen {
                seen = s.work;
                drop(s);
                work();
                s = lock(&self.state);
                s.done += 1;
                self.changed.notify_all();
                continue;
            }
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.parked -= 1;
    }

    /// Has every parked vCPU thread run its `work` once; the VM must be paused.
    pub fn on_every_parked(&self, within: Duration) -> Result<(), Error> {
        let deadline = std::time::Instant::now() + within;
        let mut s = lock(&self.state);
        if !s.requested || s.parked != s.running {
            return Err(Error::NotPaused);
        }
        s.work += 1;
        s.done = 0;
        self.changed.notify_all();
        while s.done < s.parked {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout(within));
            }
            s = self
                .changed
                .wait_timeout(s, left)
                .map_or_else(|e| e.into_inner().0, |(s, _)| s);
        }
        Ok(())
    }

    /// Asks for a pause before any vCPU runs: each parks before its first entry.
    pub fn hold(&self) {
        lock(&self.state).requested = true;
    }

    pub fn is_paused(&self) -> bool {
        lock(&self.state).requested
    }

    /// Stops every vCPU; returns once all are parked. Pausing a paused VM does nothing.
    pub fn pause(&self, within: Duration) -> Result<(), Error> {
        let deadline = std::time::Instant::now() + within;
        let mut s = lock(&self.state);
        if s.running == 0 {
            return Err(Error::Stopped);
        }
        s.requested = true;
        loop {
            if s.parked == s.running {
                return Ok(());
            }
            // Kick again each round: a kick that landed between a thread's check and its
            // next KVM_RUN still set the flag, so one round suffices; the rest is a fallback.
            for &t in &s.threads {
                // SAFETY: `t` is a live vCPU thread: it unregisters (under this lock) before
                // it ends.
                unsafe { libc::pthread_kill(t, kick_signal()) };
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                s.requested = false;
                self.changed.notify_all();
                return Err(Error::Timeout(within));
            }
            let wait = left.min(Duration::from_millis(50));
            s = self
                .changed
                .wait_timeout(s, wait)
                .map_or_else(|e| e.into_inner().0, |(s, _)| s);
        }
    }

    /// Lets every parked vCPU run again. Resuming a running VM does nothing.
    pub fn resume(&self) -> Result<(), Error> {
        let mut s = lock(&self.state);
        if s.running == 0 {
            return Err(Error::Stopped);
        }
        s.requested = false;
        self.changed.notify_all();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Threads that count, and park when kicked, as vCPU threads do (a kick here interrupts
    /// the sleep; the count stands for guest progress).
    fn counters(n: usize) -> (Arc<PauseGate>, Arc<AtomicU64>, Arc<Mutex<bool>>) {
        install_kick_handler().unwrap();
        let gate = Arc::new(PauseGate::default());
        let count = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(Mutex::new(false));
        for _ in 0..n {
            let (gate, count, stop) = (gate.clone(), count.clone(), stop.clone());
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                gate.register();
                tx.send(()).unwrap();
                while !*lock(&stop) {
                    count.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(1));
                    gate.park_if_requested(|| {
                        count.fetch_add(1000, Ordering::SeqCst);
                    });
                }
                gate.unregister();
            });
            rx.recv().unwrap();
        }
        (gate, count, stop)
    }

    #[test]
    fn a_pause_stops_progress_and_a_resume_continues_it() {
        let (gate, count, stop) = counters(3);
        std::thread::sleep(Duration::from_millis(20));
        gate.pause(Duration::from_secs(5)).unwrap();
        assert!(gate.is_paused());
        let held = count.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(count.load(Ordering::SeqCst), held);
        gate.pause(Duration::from_secs(5)).unwrap();
        // Work while parked: each of the 3 threads does it once.
        gate.on_every_parked(Duration::from_secs(5)).unwrap();
        assert_eq!(count.load(Ordering::SeqCst), held + 3000);
        gate.resume().unwrap();
        assert_eq!(
            gate.on_every_parked(Duration::from_secs(1)),
            Err(Error::NotPaused)
        );
        std::thread::sleep(Duration::from_millis(50));
        assert!(count.load(Ordering::SeqCst) > held + 3000);
        *lock(&stop) = true;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while lock(&gate.state).running > 0 {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(gate.pause(Duration::from_secs(1)), Err(Error::Stopped));
        assert_eq!(gate.resume(), Err(Error::Stopped));
    }

    #[test]
    fn a_vcpu_that_never_parks_times_the_pause_out_and_it_is_called_off() {
        install_kick_handler().unwrap();
        let gate = PauseGate::default();
        gate.register();
        let err = gate.pause(Duration::from_millis(100));
        assert_eq!(err, Err(Error::Timeout(Duration::from_millis(100))));
        assert!(!gate.is_paused());
        gate.unregister();
    }
}
