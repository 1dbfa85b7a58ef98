//! Containers: OCI bundles run natively (namespaces + cgroups) or in their own microVM, behind a
//! runc-compatible lifecycle (create, start, state, kill, delete, list, exec, run).

pub mod bundle;
pub mod cgroup;
mod control;
pub mod features;
pub mod hooks;
pub mod image;
mod isolation;
pub mod native;
pub mod seccomp;
pub mod state;
pub mod sys;
pub mod vm;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use bundle::{Bundle, Isolation, Process};
use cgroup::Cgroup;
pub use control::{pause, pids, resume, update};
use state::{Record, Status, Store};
use sys::wait::{HeldSignals, wait};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Bundle(#[from] bundle::Error),
    #[error(transparent)]
    State(#[from] state::Error),
    #[error(transparent)]
    Native(#[from] native::Error),
    #[error(transparent)]
    Cgroup(#[from] cgroup::Error),
    #[error(transparent)]
    Fifo(#[from] sys::fifo::Error),
    #[error(transparent)]
    Vm(#[from] vm::Error),
    #[error(transparent)]
    Image(#[from] image::Error),
    #[error("container {id:?} is {status}, not {want}")]
    WrongStatus {
        id: String,
        status: &'static str,
        want: &'static str,
    },
    #[error("container {0:?} is running: stop it first, or delete --force")]
    Running(String),
    #[error("unknown signal {0:?}")]
    Signal(String),
    #[error("cannot signal container {0:?}")]
    Kill(String, #[source] std::io::Error),
    #[error("process.terminal is set: `create` needs --console-socket to hand the terminal to")]
    NoConsoleSocket,
    #[error("console socket {0}")]
    ConsoleSocket(PathBuf, #[source] std::io::Error),
    #[error("cannot write the pid file {0}")]
    PidFile(PathBuf, #[source] std::io::Error),
    #[error("{0}")]
    Io(String, #[source] std::io::Error),
    #[error("bad --user {0:?} (expected UID[:GID])")]
    User(String),
    #[error("bad --env {0:?} (expected NAME=VALUE)")]
    Env(String),
    #[error(transparent)]
    Hook(#[from] hooks::Error),
    #[error("exec -t in a microVM needs a terminal on stdin, or --console-socket")]
    NoTerminal,
    #[error(
        "a microVM sandbox's memory is its guest's size and its processes are the guest's: \
         update can change only its CPU quota"
    )]
    VmUpdate,
    #[error(
        "createContainer and startContainer hooks run in the container's namespaces, which a \
         microVM sandbox does not share with the host: use --isolation native"
    )]
    VmHooks,
    #[error(
        "linux.devices names this host's device nodes, which a microVM sandbox does not have: \
         use --isolation native"
    )]
    VmDevices,
    #[error(
        "linux.resources.{0}: a microVM sandbox's memory is its guest's size (memory.limit sets \
         it); use --isolation native"
    )]
    VmMemory(&'static str),
    #[error(
        "linux.namespaces: the pid namespace {0} is this host's, and a microVM sandbox's \
         processes run in its guest: use --isolation native"
    )]
    VmPidNamespace(PathBuf),
}

impl Error {
    /// The status `gureum` exits with: the process's own (127 for a missing executable, ...)
    /// when the container could not start it, else 1.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Native(e) => e.exit_code(),
            _ => 1,
        }
    }
}

/// Flags every container command shares.
pub struct Global {
    pub root: PathBuf,
    pub isolation: Option<Isolation>,
}

/// Options of `create` and `run`.
#[derive(Default)]
pub struct CreateOptions {
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub tty: bool,
    /// Print the run's phases at exit, in µs since this CLOCK_MONOTONIC time (gureum's main).
    pub phases_since: Option<u64>,
}

/// Removes what a failed create made (cgroup, state directory) unless disarmed.
struct Undo<'a> {
    store: &'a Store,
    id: &'a str,
    cgroup: Cgroup,
    armed: bool,
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.cgroup.remove();
            let _ = self.store.remove(self.id);
        }
    }
}

fn isolation(g: &Global, bundle: &Bundle) -> Result<Isolation, Error> {
    Ok(g.isolation.or(bundle.isolation()?).unwrap_or(Isolation::Vm))
}

fn write_pid_file(path: Option<&Path>, pid: i32) -> Result<(), Error> {
    let Some(path) = path else { return Ok(()) };
    std::fs::write(path, pid.to_string()).map_err(|e| Error::PidFile(path.to_path_buf(), e))
}

/// `create`: the container is set up and waits for `start`.
pub fn create(g: &Global, id: &str, bundle_dir: &Path, opts: &CreateOptions) -> Result<i32, Error> {
    let mut bundle = Bundle::load(bundle_dir)?;
    terminal(&mut bundle, opts);
    if bundle.process.terminal && opts.console_socket.is_none() {
        return Err(Error::NoConsoleSocket);
    }
    let (record, master) = create_with(g, id, &bundle, opts)?;
    if let (Some(master), Some(socket)) = (master, &opts.console_socket) {
        send_console(socket, &master)?;
    }
    Ok(record.pid)
}

/// `process.terminal` or `-t`: the process gets a pty (natively opened in the container; in a
/// microVM, the guest's, relayed through one on the host whose master gureum hands on).
fn terminal(bundle: &mut Bundle, opts: &CreateOptions) {
    bundle.process.terminal |= opts.tty;
}

/// Sets container `id` up: its record, as saved, and the pty master where it has a terminal.
fn create_with(
    g: &Global,
    id: &str,
    bundle: &Bundle,
    opts: &CreateOptions,
) -> Result<(Record, Option<OwnedFd>), Error> {
    let isolation = isolation(g, bundle)?;
    let isolator = isolation::of(isolation);
    isolator.check(bundle)?;
    let store = Store::new(&g.root);
    let dir = store.reserve(id)?;
    let cgroup = Cgroup::of(id, bundle.cgroups_path.as_deref());
    let mut undo = Undo {
        store: &store,
        id,
        cgroup: cgroup.clone(),
        armed: true,
    };
    let mut record = Record {
        id: id.to_string(),
        pid: 0,
        pid_start: 0,
        bundle: bundle.dir.clone(),
        isolation,
        created: state::now_rfc3339(),
        annotations: bundle.annotations.clone(),
        process: bundle.process.clone(),
        hooks: bundle.spec.hooks().clone(),
        cgroup: Some(cgroup.clone()),
    };
    store.save(&record)?;
    sys::fifo::make(&dir, native::fifo_owner(bundle))?;
    cgroup.create(&isolator.host_resources(bundle))?;
    let (pid, master) = isolator.create(bundle, &record, &dir, &cgroup)?;
    record.pid = pid;
    record.pid_start = state::start_time(pid).unwrap_or_default();
    store.save(&record)?;
    write_pid_file(opts.pid_file.as_deref(), pid)?;
    undo.armed = false;
    Ok((record, master))
}

/// prestart and createRuntime hooks of a sandbox, once its monitor runs (a native init asks
/// for them itself, before pivot_root). A failure kills the monitor.
fn runtime_hooks(record: &Record, pid: i32) -> Result<(), Error> {
    let state = state::hook_state(record, Status::Creating, pid);
    let hooks = record.hooks.as_ref();
    let result = hooks::run(hooks::Point::Prestart, hooks, &state)
        .and_then(|()| hooks::run(hooks::Point::CreateRuntime, hooks, &state));
    if result.is_err() {
        // SAFETY: kills and reaps our own child, the sandbox's monitor.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
    }
    Ok(result?)
}

/// A pty on the host: (master, slave).
fn host_pty() -> Result<(OwnedFd, OwnedFd), Error> {
    gureum_process::pty::open_pair(c"/dev/ptmx").map_err(|e| Error::Io("open a pty".into(), e))
}

/// This process's terminal (stdin), for a sandbox's `exec -t`.
fn own_terminal() -> Result<OwnedFd, Error> {
    // SAFETY: isatty only inspects the descriptor.
    if unsafe { libc::isatty(0) } != 1 {
        return Err(Error::NoTerminal);
    }
    std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| Error::Io("use this terminal".into(), e))
}

/// Runs the poststart hooks of a container whose process just started.
fn poststart(record: &Record) {
    let state = state::hook_state(record, Status::Running, record.pid);
    hooks::run_warning(hooks::Point::Poststart, record.hooks.as_ref(), &state);
}

/// Sends the pty master to the console socket (runc's protocol: one SCM_RIGHTS message).
fn send_console(socket: &Path, master: &OwnedFd) -> Result<(), Error> {
    let fail = |e| Error::ConsoleSocket(socket.to_path_buf(), e);
    let stream = std::os::unix::net::UnixStream::connect(socket).map_err(fail)?;
    native::pty::send(stream.as_raw_fd(), b"/dev/ptmx", Some(master.as_raw_fd())).map_err(fail)
}

/// `start`: a created container runs its process.
pub fn start(g: &Global, id: &str) -> Result<(), Error> {
    let store = Store::new(&g.root);
    let record = store.load(id)?;
    expect(&store, &record, Status::Created)?;
    // A native init and a sandbox's monitor both wait on exec.fifo.
    sys::fifo::release(&store.dir(id))?;
    poststart(&record);
    Ok(())
}

fn expect(store: &Store, record: &Record, want: Status) -> Result<(), Error> {
    let status = store.status(record);
    if status == want {
        return Ok(());
    }
    Err(Error::WrongStatus {
        id: record.id.clone(),
        status: status.as_str(),
        want: want.as_str(),
    })
}

/// `run`: create, start, wait, delete. Returns the process's exit status.
pub fn run(g: &Global, id: &str, bundle_dir: &Path, opts: &CreateOptions) -> Result<i32, Error> {
    let mut bundle = Bundle::load(bundle_dir)?;
    terminal(&mut bundle, opts);
    let signals = HeldSignals::hold().map_err(|e| Error::Io("hold signals".into(), e))?;
    let (record, master) = create_with(g, id, &bundle, opts)?;
    let mut phases = vec![("created", state::monotonic_us())];
    let store = Store::new(&g.root);
    let started = sys::fifo::release(&store.dir(id));
    phases.push(("started", state::monotonic_us()));
    let code = match started {
        Ok(()) => {
            poststart(&record);
            wait(record.pid, &signals, master.as_ref())
        }
        Err(e) => {
            // SAFETY: kills our own child, reaped by destroy below.
            unsafe { libc::kill(record.pid, libc::SIGKILL) };
            destroy(&store, &record);
            return Err(e.into());
        }
    };
    phases.push(("exited", state::monotonic_us()));
    let sandbox = isolation::of(record.isolation).phases(&store.dir(id));
    destroy(&store, &record);
    phases.push(("torn_down", state::monotonic_us()));
    if let Some(main_us) = opts.phases_since {
        phases.extend(sandbox);
        phases.sort_by_key(|p| p.1);
        let line: String = phases
            .iter()
            .map(|(name, at)| format!(" {name}_us={}", at.saturating_sub(main_us)))
            .collect();
        eprintln!("gureum-phases{line}");
    }
    Ok(code)
}

/// `run --image`: a bundle made from an OCI image layout or `docker save` tarball, run and
/// removed. `command` replaces the image's Cmd when given.
pub fn run_image(
    g: &Global,
    id: &str,
    path: &Path,
    command: &[String],
    opts: &CreateOptions,
) -> Result<i32, Error> {
    let store = Store::new(&g.root);
    if !state::valid_id(id) {
        return Err(state::Error::BadId(id.into()).into());
    }
    if store.dir(id).exists() {
        return Err(state::Error::Exists(id.into()).into());
    }
    let image = image::open(path, &vm::cache())?;
    let dir = store.image_dir(id);
    let made = image::bundle::make(&image, &dir, id, command);
    let result = made.map_err(Error::from).and_then(|b| run(g, id, &b, opts));
    image::bundle::remove(&dir);
    result
}

/// Kills whatever is left of a container and removes its cgroup and state.
fn destroy(store: &Store, record: &Record) {
    let cgroup = record.cgroup();
    // A frozen process takes a signal only once thawed.
    if cgroup.frozen() {
        let _ = cgroup.freeze(false);
    }
    cgroup.kill_all();
    // 5 s for the processes to die, stretched on an emulated host.
    let until = std::time::Instant::now()
        + std::time::Duration::from_secs(5) * gureum_vmm::host_check::slowdown();
    for attempt in 0.. {
        let mut pids = cgroup.pids();
        if record.pid > 0 && state::alive(record.pid, record.pid_start) {
            pids.push(record.pid);
        }
        if pids.is_empty() || std::time::Instant::now() > until {
            break;
        }
        for pid in pids {
            // SAFETY: kills a process of this container; our own children are reaped below.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG);
            }
        }
        if attempt > 0 {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    cgroup.remove();
    vm::sockets::remove(&store.dir(&record.id));
    image::bundle::remove(&store.image_dir(&record.id));
    let _ = store.remove(&record.id);
    let state = state::hook_state(record, Status::Stopped, record.pid);
    hooks::run_warning(hooks::Point::Poststop, record.hooks.as_ref(), &state);
}

/// `state`: the OCI state JSON.
pub fn state(g: &Global, id: &str) -> Result<String, Error> {
    let store = Store::new(&g.root);
    let record = store.load(id)?;
    Ok(serde_json::to_string_pretty(&store.oci_state(&record)).unwrap_or_default())
}

/// `kill`: a signal to the container's process (with `all`, to every process of it).
pub fn kill(g: &Global, id: &str, signal: &str, all: bool) -> Result<(), Error> {
    let sig = sys::parse_signal(signal).ok_or_else(|| Error::Signal(signal.into()))?;
    let store = Store::new(&g.root);
    let record = store.load(id)?;
    control::live(&store, &record)?;
    if all {
        return isolation::of(record.isolation).signal_all(&store, &record, sig);
    }
    signal_pids(&record, &[record.pid], sig)
}

/// Signals `pids` of the container; only a failure for its own process is an error (the others
/// may have exited meanwhile).
fn signal_pids(record: &Record, pids: &[i32], sig: libc::c_int) -> Result<(), Error> {
    for &pid in pids {
        // SAFETY: signals a process of this container.
        if unsafe { libc::kill(pid, sig) } != 0 && pid == record.pid {
            return Err(Error::Kill(
                record.id.clone(),
                std::io::Error::last_os_error(),
            ));
        }
    }
    Ok(())
}

/// `delete`: removes a stopped (or created) container; `force` kills a running one first.
pub fn delete(g: &Global, id: &str, force: bool) -> Result<(), Error> {
    let store = Store::new(&g.root);
    let record = match store.load(id) {
        Err(state::Error::Unknown(_)) if force => return Ok(()),
        other => other?,
    };
    if matches!(store.status(&record), Status::Running | Status::Paused) && !force {
        return Err(Error::Running(id.into()));
    }
    destroy(&store, &record);
    Ok(())
}

/// Every container's ID.
pub fn ids(g: &Global) -> Vec<String> {
    Store::new(&g.root)
        .list()
        .into_iter()
        .map(|r| r.id)
        .collect()
}

/// `list`: a table, or JSON like runc's `list --format json`.
pub fn list(g: &Global, json: bool) -> String {
    let store = Store::new(&g.root);
    let records = store.list();
    let states: Vec<_> = records.iter().map(|r| (r, store.oci_state(r))).collect();
    if json {
        let rows: Vec<serde_json::Value> = states
            .iter()
            .map(|(r, s)| {
                serde_json::json!({
                    "ociVersion": s.oci_version, "id": s.id, "pid": s.pid.unwrap_or(0),
                    "status": s.status, "bundle": s.bundle, "created": r.created,
                    "owner": "root", "isolation": r.isolation,
                })
            })
            .collect();
        return serde_json::to_string(&rows).unwrap_or_default();
    }
    let mut out = format!(
        "{:<20} {:<8} {:<8} {:<7} {:<21} BUNDLE",
        "ID", "PID", "STATUS", "KIND", "CREATED"
    );
    for (r, s) in &states {
        out.push_str(&format!(
            "\n{:<20} {:<8} {:<8} {:<7} {:<21} {}",
            r.id,
            s.pid.unwrap_or(0),
            s.status.as_str(),
            r.isolation.as_str(),
            r.created,
            r.bundle.display()
        ));
    }
    out
}

/// Options of `exec`.
#[derive(Default)]
pub struct ExecOptions {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: Option<String>,
    pub user: Option<String>,
    pub tty: bool,
    pub detach: bool,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    /// The process's capability sets (from --process); None keeps the container's.
    pub capabilities: Option<gureum_process::security::Caps>,
}

/// `exec`: a second process in a running container. Returns its exit status (0 if detached).
pub fn exec(g: &Global, id: &str, opts: &ExecOptions) -> Result<i32, Error> {
    let store = Store::new(&g.root);
    let record = store.load(id)?;
    expect(&store, &record, Status::Running)?;
    let process = exec_process(&record.process, opts)?;
    isolation::of(record.isolation).exec(&store.dir(id), &record, &process, opts)
}

fn exec_process(base: &Process, opts: &ExecOptions) -> Result<Process, Error> {
    let mut p = base.clone();
    p.args.clone_from(&opts.args);
    if p.args.first().is_none_or(String::is_empty) {
        return Err(bundle::Error::NoArgs.into());
    }
    for kv in &opts.env {
        let (name, _) = kv.split_once('=').ok_or_else(|| Error::Env(kv.clone()))?;
        p.env
            .retain(|e| e.split_once('=').map(|(n, _)| n) != Some(name));
        p.env.push(kv.clone());
    }
    if let Some(cwd) = &opts.cwd {
        p.cwd.clone_from(cwd);
    }
    if let Some(user) = &opts.user {
        let bad = || Error::User(user.clone());
        let (uid, gid) = match user.split_once(':') {
            Some((u, g)) => (u.parse().map_err(|_| bad())?, g.parse().map_err(|_| bad())?),
            None => (user.parse().map_err(|_| bad())?, p.gid),
        };
        (p.uid, p.gid) = (uid, gid);
    }
    p.terminal = opts.tty;
    if opts.capabilities.is_some() {
        p.capabilities = opts.capabilities;
    }
    Ok(p)
}
