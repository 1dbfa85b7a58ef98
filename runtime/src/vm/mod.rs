//! MicroVM isolation: a fresh VM per container. `create` forks a monitor process that runs
//! `gureum-vmm boot --config vm.json` (the VmConfig in the state directory: our kernel, the
//! agent's initramfs, the rootfs as a read-only virtio-blk disk and a vsock device); once the agent answers on vsock it reports ready and waits on
//! exec.fifo like a native init. On `start` it sends the process settings, relays the stdio it
//! inherited from `create`, turns signals it receives into Signal frames, and exits with the
//! process's status. `exec` is one more agent connection. The VMM dies with its monitor.

mod agent;
mod binds;
mod image;
pub mod network;
pub mod sockets;
mod threads;
mod warm;

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gureum_process::client;

use super::bundle::{Bundle, Process};
use super::cgroup::Cgroup;
use super::state::monotonic_us;
use crate::sys::{pipe, read_to_end, write_all};
use gureum_vmm::host_check::KvmKind;

/// The guest port the agent listens on.
const AGENT_PORT: u32 = 1024;
/// The host port the agent connects to once it listens (`gureum.ready=`): the VMM forwards it
/// to the Unix socket `vsock.sock_1025`, where the monitor waits.
const READY_PORT: u32 = 1025;
/// How long a booting sandbox's agent may take to answer (a guest that crashes is seen at
/// once: its VMM exits). Stretched on an emulated host (`host_check::slowdown`): 400 s in the
/// KVM test machine, where a sandbox answers in 6 s alone and 30 s four at a time.
const AGENT_DEADLINE: Duration = Duration::from_secs(20);
/// A sandbox's guest gets at least this much memory (the kernel, the agent and the container's
/// process), and at most this many vCPUs, whatever its limits ask for.
const SANDBOX_MIN_MEMORY_MIB: u64 = 64;
const SANDBOX_MAX_VCPUS: u64 = 8;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "this host's KVM is PVM: a Linux guest's userspace cannot run here, so neither can a \
         microVM container; use --isolation native (or a host with hardware KVM)"
    )]
    PvmHost,
    #[error("{0} is missing: run scripts/setup.sh (it builds the guest kernel and agent)")]
    Missing(PathBuf),
    #[error(transparent)]
    Image(#[from] image::Error),
    #[error(transparent)]
    Binds(#[from] binds::Error),
    #[error(transparent)]
    Network(#[from] network::Error),
    #[error("cannot start the sandbox")]
    Sys(#[source] std::io::Error),
    #[error("the sandbox did not come up: {0}")]
    Boot(String),
    #[error("the sandbox's agent")]
    Agent(#[from] client::Error),
    #[error("the sandbox's agent: {0}; {1}")]
    AgentSaid(#[source] client::Error, String),
    #[error("the sandbox's VM")]
    Config(#[from] gureum_vmm::config::Error),
}

/// gureum's cache: guest kernels, rootfs images, image layers (GUREUM_CACHE overrides).
pub fn cache() -> PathBuf {
    std::env::var_os("GUREUM_CACHE")
        .map_or_else(|| PathBuf::from("/var/cache/gureum"), PathBuf::from)
}

/// The guest kernel and the agent's initramfs (guest-kernels/agent-initramfs.sh).
fn guest() -> Result<(PathBuf, PathBuf), Error> {
    let (kernel, _) = gureum_vmm::default_guest();
    let initrd = cache().join("default/agent-initramfs.cpio");
    for p in [&kernel, &initrd] {
        if !p.exists() {
            return Err(Error::Missing(p.clone()));
        }
    }
    Ok((kernel, initrd))
}

/// `GUREUM_SANDBOX_VMM`: a program started in place of gureum-vmm, with the same arguments.
/// For tests of the sandbox's host half where no guest can run (tests/standin-vmm.sh serves
/// the agent natively behind the vsock socket); the host check then lets it through.
fn standin_vmm() -> Option<PathBuf> {
    std::env::var_os("GUREUM_SANDBOX_VMM").map(PathBuf::from)
}

/// Refuses hosts where the guest cannot run, before anything is made.
pub fn check_host() -> Result<(), Error> {
    if gureum_vmm::host_check::kvm_kind().0 == KvmKind::Pvm && standin_vmm().is_none() {
        return Err(Error::PvmHost);
    }
    guest().map(|_| ())
}

/// Guest memory (MiB) and vCPUs: annotations, else `linux.resources`, else 128 MiB and 1.
fn size(bundle: &Bundle) -> (u64, u64) {
    let note = |k: &str| {
        bundle
            .annotations
            .get(k)
            .and_then(|v| v.parse::<u64>().ok())
    };
    let r = &bundle.resources;
    let memory = note("gureum.vm.memory_mib")
        .or_else(|| r.memory_bytes.and_then(|b| u64::try_from(b >> 20).ok()))
        .unwrap_or(gureum_vmm::config::DEFAULT_MEMORY_MIB)
        .max(SANDBOX_MIN_MEMORY_MIB);
    let from_quota = r.cpu_quota_us.filter(|&q| q > 0).and_then(|q| {
        let period = r.cpu_period_us.unwrap_or(100_000).max(1);
        u64::try_from(q).ok().map(|q| q.div_ceil(period))
    });
    let vcpus = note("gureum.vm.vcpus")
        .or(from_quota)
        .unwrap_or(gureum_vmm::config::DEFAULT_VCPUS.into())
        .clamp(1, SANDBOX_MAX_VCPUS);
    (memory, vcpus)
}

/// Boots the sandbox and returns its monitor's pid once the agent answers.
/// With `process.terminal`, the process's terminal is a pty on the host whose slave the
/// monitor relays and whose master is returned, as a native container's would be.
/// The monitor, and so the VMM, runs in `cgroup`.
pub fn create(
    bundle: &Bundle,
    dir: &Path,
    cgroup: &Cgroup,
) -> Result<(i32, Option<OwnedFd>), Error> {
    let (kernel, initrd) = guest()?;
    let image = image::rootfs_image(&bundle.rootfs, &cache())?;
    let mut disks = vec![gureum_vmm::config::DiskConfig {
        path: image,
        read_only: true,
        root: false,
        id: None,
    }];
    let binds = binds::stage(bundle, dir)?.map(|(image, destinations)| {
        disks.push(gureum_vmm::config::DiskConfig {
            path: image,
            read_only: true,
            root: false,
            id: None,
        });
        binds::for_agent(destinations)
    });
    let (memory, vcpus) = size(bundle);
    let exe = standin_vmm()
        .or_else(gureum_vmm::boot::vmm_exe)
        .unwrap_or_else(|| PathBuf::from("/proc/self/exe"));
    let cmdline = format!(
        "{} gureum.agent=vsock:{AGENT_PORT} gureum.ready=vsock:{READY_PORT}",
        gureum_vmm::config::DEFAULT_CMDLINE
    );
    let uds = sockets::vsock(dir);
    let guest = warm::Guest {
        exe: &exe,
        kernel: &kernel,
        initrd: &initrd,
        cmdline: &cmdline,
        memory_mib: memory,
        vcpus,
    };
    let (vmm, warm) = match warm_template(bundle, &guest) {
        Ok(template) => {
            let binds = disks.get(1).map(|d| d.path.as_path());
            let _ = std::fs::write(dir.join("boot"), "warm\n");
            (template.restore(&exe, &disks[0].path, binds, &uds), true)
        }
        Err(why) => {
            let _ = std::fs::write(dir.join("boot"), format!("cold: {why}\n"));
            let config = gureum_vmm::config::VmOverrides {
                kernel: Some(kernel),
                initrd: Some(initrd),
                cmdline: Some(cmdline),
                vcpus: Some(vcpus),
                memory_mib: Some(memory),
                disks: Some(disks),
                vsock: Some(gureum_vmm::config::VsockConfig { cid: 3, uds }),
                ..Default::default()
            }
            .into_config()?;
            let file = dir.join("vm.json");
            let vmm = gureum_vmm::boot::launch(&exe, &config, &file).map_err(Error::Sys)?;
            (vmm, false)
        }
    };
    let (master, tty) = match bundle.process.terminal {
        true => gureum_process::pty::open_pair(c"/dev/ptmx")
            .map(|(m, s)| (Some(m), Some(s)))
            .map_err(Error::Sys)?,
        false => (None, None),
    };
    let (report_r, report_w) = pipe().map_err(Error::Sys)?;
    // The child runs the monitor and exits.
    let forked = cgroup.fork_into(0);
    if let Ok((0, joined)) = forked {
        drop(report_r);
        drop(master);
        let joined = if joined { Ok(()) } else { cgroup.join_self() };
        if let Err(e) = joined {
            let cause = std::error::Error::source(&e).map(ToString::to_string);
            let why = format!("E{e}: {}", cause.unwrap_or_default());
            let _ = write_all(report_w.as_raw_fd(), why.as_bytes());
            // SAFETY: ends the monitor before it started anything.
            unsafe { libc::_exit(1) };
        }
        let mut spec = bundle.process.clone();
        spec.root = Some("/dev/vda".into());
        spec.binds = binds;
        monitor(vmm, &spec, dir, cgroup, report_w, tty, warm);
    }
    drop(report_w);
    drop(tty);
    let (pid, _) = forked.map_err(Error::Sys)?;
    let answer = read_to_end(&report_r).map_err(Error::Sys)?;
    if answer.first() == Some(&b'R') {
        return Ok((pid, master));
    }
    // SAFETY: reaps the monitor, which exits after reporting a failure.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    let why = String::from_utf8_lossy(answer.get(1..).unwrap_or_default()).into_owned();
    Err(Error::Boot(if why.is_empty() {
        "the monitor exited".into()
    } else {
        why
    }))
}

/// A warm start's template, unless this sandbox boots cold: the config's annotation
/// `gureum.vm.boot=cold`, `GUREUM_SANDBOX_BOOT=cold`, the stand-in VMM (tests, no snapshots),
/// or a template that cannot be made (why).
fn warm_template(bundle: &Bundle, guest: &warm::Guest<'_>) -> Result<warm::Template, String> {
    let asked = bundle.annotations.get("gureum.vm.boot").cloned();
    let asked = asked.or_else(|| std::env::var("GUREUM_SANDBOX_BOOT").ok());
    if asked.as_deref() == Some("cold") {
        return Err("asked for".into());
    }
    if standin_vmm().is_some() {
        return Err("the stand-in VMM takes no snapshots".into());
    }
    warm::template(&cache(), guest).map_err(|e| gureum_vmm::boot::chain(&e))
}

/// The monitor process. Never returns. `warm`: the VMM restores a snapshot whose agent already
/// listens, and says nothing when it is up.
fn monitor(
    mut vmm: Command,
    spec: &Process,
    dir: &Path,
    cgroup: &Cgroup,
    report: OwnedFd,
    tty: Option<OwnedFd>,
    warm: bool,
) -> ! {
    let fail = |why: String| -> ! {
        let _ = write_all(report.as_raw_fd(), format!("E{why}").as_bytes());
        // SAFETY: ends the monitor.
        unsafe { libc::_exit(1) }
    };
    // With a terminal, the caller's stdio is not the process's: let go of it (a caller waiting
    // for EOF on create's output must not wait for the container).
    if let Some(t) = &tty {
        for target in 0..3 {
            // SAFETY: dup2 of a live fd onto this process's standard descriptors.
            unsafe { libc::dup2(t.as_raw_fd(), target) };
        }
    }
    let log = dir.join("console.log");
    let out =
        std::fs::File::create(&log).unwrap_or_else(|e| fail(format!("{}: {e}", log.display())));
    let err = out.try_clone().unwrap_or_else(|e| fail(e.to_string()));
    vmm.stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: prctl and sigprocmask in the VMM's child before exec: the VMM dies with its
    // monitor, and starts with no signal blocked (the monitor holds those it forwards).
    unsafe {
        vmm.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            let mut none = std::mem::zeroed::<libc::sigset_t>();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            Ok(())
        });
    }
    let uds = sockets::vsock(dir);
    let ready_path = PathBuf::from(format!("{}_{READY_PORT}", uds.display()));
    if let Some(parent) = uds.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let ready = UnixListener::bind(&ready_path)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .unwrap_or_else(|e| fail(format!("{}: {e}", ready_path.display())));
    let mut child = vmm
        .spawn()
        .unwrap_or_else(|e| fail(format!("cannot run the VMM: {e}")));
    let spawned = monotonic_us();
    let within = AGENT_DEADLINE * gureum_vmm::host_check::slowdown();
    // A restored agent already listens: knock at once and often. A booting one says when.
    let knock = match warm {
        true => Duration::from_millis(2),
        false => Duration::from_millis(250),
    };
    let answered = agent::connect(&uds, &ready, &mut child, within, knock);
    drop(ready);
    let _ = std::fs::remove_file(&ready_path);
    let conn = match answered {
        Ok(conn) => conn,
        Err(why) => {
            let _ = child.kill();
            let _ = child.wait();
            fail(format!("{why}; {}", agent::console_tail(&log, 12)))
        }
    };
    // KVM's own kernel thread for the VM joined the VMM's cgroup: not the container's, and
    // it would keep a cgroup v2 pause from ever completing.
    cgroup.release_kernel_threads();
    let phases = format!("vmm_spawned={spawned} agent_ready={}\n", monotonic_us());
    let _ = std::fs::write(dir.join("phases"), phases);
    let _ = write_all(report.as_raw_fd(), b"R");
    drop(report);
    // Wait for `start`.
    let started = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("exec.fifo"))
        .and_then(|mut f| f.write_all(b"0"));
    let status = match started {
        Ok(()) => {
            if let Some(t) = &tty {
                controlling_terminal(t);
            }
            relay(conn, spec, tty.as_ref(), &log)
        }
        Err(_) => 255,
    };
    // The agent restarts the guest when the process ends; give the VMM a moment to exit.
    let within = Duration::from_secs(2) * gureum_vmm::host_check::slowdown();
    match agent::pidfd(child.id()) {
        Some(exited) => agent::wait_readable(&[], Some(&exited), within),
        None => {
            let deadline = Instant::now() + within;
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    std::process::exit(status)
}

/// Makes `tty` (a pty's slave) this process's controlling terminal, so that its window size
/// changes arrive as SIGWINCH, and raw: the guest's own pty echoes and edits.
fn controlling_terminal(tty: &OwnedFd) {
    // SAFETY: setsid in the monitor (a forked child, so not a group leader); TIOCSCTTY,
    // tcgetattr, cfmakeraw and tcsetattr on the live tty fd with a termios it filled.
    unsafe {
        libc::setsid();
        libc::ioctl(tty.as_raw_fd(), libc::TIOCSCTTY, 0);
        let mut t = std::mem::zeroed::<libc::termios>();
        if libc::tcgetattr(tty.as_raw_fd(), &mut t) == 0 {
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(tty.as_raw_fd(), libc::TCSANOW, &t);
        }
    }
}

/// Runs `spec` over `conn` with this process's stdio, or with `tty` as the process's terminal
/// (its size sent along, and again on every SIGWINCH); other signals received meanwhile become
/// Signal frames. Returns the exit status; where none comes, says why with the end of the
/// guest's `console` log (the guest may have died: a panic, a triple fault).
fn relay(conn: UnixStream, spec: &Process, tty: Option<&OwnedFd>, console: &Path) -> i32 {
    let writer = match conn.try_clone() {
        Ok(w) => std::sync::Arc::new(std::sync::Mutex::new(w)),
        Err(_) => return 255,
    };
    let tty = tty
        .and_then(|t| t.try_clone().ok())
        .map(std::fs::File::from);
    let mut spec = spec.clone();
    spec.terminal = tty.is_some();
    spec.winsize = tty.as_ref().and_then(gureum_process::pty::winsize);
    // A warm sandbox's guest is a clone of a snapshot: it takes the time and fresh entropy
    // from here (a cold one sets the same time and gains the bytes).
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    spec.clock = now
        .ok()
        .and_then(|d| Some((i64::try_from(d.as_secs()).ok()?, d.subsec_nanos())));
    spec.seed = agent::random_bytes(32);
    if let Ok(signals) = crate::sys::wait::HeldSignals::hold() {
        let w = writer.clone();
        let tty = tty.as_ref().and_then(|t| t.try_clone().ok());
        std::thread::spawn(move || {
            while let Some(sig) = signals.next_forwarded() {
                let sent = match (sig, &tty) {
                    (libc::SIGWINCH, Some(t)) => gureum_process::pty::winsize(t)
                        .map_or(Ok(()), |size| client::resize(&w, size)),
                    (libc::SIGWINCH, None) => Ok(()),
                    _ => client::signal(&w, sig),
                };
                if sent.is_err() {
                    return;
                }
            }
        });
    }
    let streams = tty.and_then(|t| Some((t.try_clone().ok()?, t.try_clone().ok()?, t)));
    let result = match streams {
        Some((input, mut out, mut err)) => {
            client::run_shared(conn, &writer, &spec, input, &mut out, &mut err)
        }
        None => {
            let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
            client::run_shared(conn, &writer, &spec, std::io::stdin(), &mut out, &mut err)
        }
    };
    // Done: closing the connection lets the agent finish (and, for the container's process,
    // end the VM) now rather than when this process exits.
    let _ = writer.lock().map(|w| w.shutdown(std::net::Shutdown::Both));
    let mut err = std::io::stderr();
    match result {
        Ok(ended) => {
            if let Some(why) = ended.error {
                let _ = writeln!(err, "gureum: {why}");
            }
            ended.status
        }
        Err(e) => {
            let tail = agent::console_tail(console, 12);
            let _ = writeln!(
                err,
                "gureum: the sandbox ended without an exit status: {e}; {tail}"
            );
            255
        }
    }
}

/// `exec` in a sandbox: one more agent connection, with this process's stdio, or `tty` (a
/// terminal: ours, or a pty's slave whose master went to a console socket) as its terminal.
pub fn exec(dir: &Path, process: &Process, tty: Option<OwnedFd>) -> Result<i32, Error> {
    let (conn, spec) = session(dir, process)?;
    Ok(relay(conn, &spec, tty.as_ref(), &dir.join("console.log")))
}

/// A new agent connection for `process`, which runs on the container's root disk.
fn session(dir: &Path, process: &Process) -> Result<(UnixStream, Process), Error> {
    let conn = agent::try_connect(&sockets::vsock(dir)).map_err(Error::Sys)?;
    let mut spec = process.clone();
    spec.root = Some("/dev/vda".into());
    Ok((conn, spec))
}

/// `kill --all` in a sandbox: the agent signals every process of the guest.
pub fn signal_all(dir: &Path, sig: i32) -> Result<(), Error> {
    let conn = agent::try_connect(&sockets::vsock(dir)).map_err(Error::Sys)?;
    client::signal_all(conn, sig)
        .map_err(|e| Error::AgentSaid(e, agent::console_tail(&dir.join("console.log"), 8)))
}

/// `exec -d` in a sandbox: a process of ours relays the session (stdio, signals, terminal) and
/// exits with its status; returns its pid, which stands for the process on this host (a
/// signal to it reaches the process; killing it ends the process). Its parent (a shim that
/// is a subreaper, for containerd) reaps the status.
pub fn exec_detached(dir: &Path, process: &Process, tty: Option<OwnedFd>) -> Result<i32, Error> {
    let (conn, spec) = session(dir, process)?;
    // SAFETY: fork from a single-threaded process; the child relays and exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        std::process::exit(relay(conn, &spec, tty.as_ref(), &dir.join("console.log")));
    }
    if pid < 0 {
        return Err(Error::Sys(std::io::Error::last_os_error()));
    }
    Ok(pid)
}

/// The monitor's phases (CLOCK_MONOTONIC µs): VMM spawned, agent answering.
pub fn phases(dir: &Path) -> Vec<(&'static str, u64)> {
    let text = std::fs::read_to_string(dir.join("phases")).unwrap_or_default();
    let get = |key: &str| {
        text.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
    };
    [
        ("vmm_spawned", get("vmm_spawned")),
        ("agent_ready", get("agent_ready")),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some((k, v?)))
    .collect()
}
