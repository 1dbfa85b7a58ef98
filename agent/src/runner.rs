//! The agent side: take one [`RunSpec`], run it, and stream everything back.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use gureum_process::protocol::{self, Binds, Kind, RunSpec};
use gureum_process::security::Seccomp;
use gureum_process::{limits, pty, security, signals, sysctl};

use crate::pidns;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Protocol(#[from] protocol::Error),
    #[error("the host sent {0:?} before a run request")]
    NoRun(Kind),
    #[error("bad run request")]
    BadSpec(#[source] serde_json::Error),
    #[error("connection")]
    Io(#[from] io::Error),
}

type Shared<W> = Arc<Mutex<W>>;

fn send<W: Write>(w: &Shared<W>, kind: Kind, payload: &[u8]) -> io::Result<()> {
    let mut w = w.lock().unwrap_or_else(|p| p.into_inner());
    protocol::write_frame(&mut *w, kind, payload)
}

/// Why a spec cannot run, and the exit status a shell would give (127 not found, 126 otherwise).
fn refuse<W: Write>(w: &Shared<W>, why: &str, status: i32) -> io::Result<()> {
    send(w, Kind::Error, why.as_bytes())?;
    send(w, Kind::Exit, &status.to_le_bytes())
}

/// Runs `spec`; `main`: the main connection's request, the container's first process.
fn spawn(spec: &RunSpec, main: bool) -> Result<(Child, Option<OwnedFd>), (String, i32)> {
    let program = spec
        .args
        .first()
        .ok_or(("the process has no args".to_string(), 126))?;
    if spec.root.is_none() && !spec.cwd.is_empty() && !Path::new(&spec.cwd).is_dir() {
        return Err((format!("cwd {} is not a directory", spec.cwd), 126));
    }
    if main && crate::is_guest() {
        fresh_start(spec).map_err(|why| (why, 126))?;
    }
    let root = match &spec.root {
        Some(device) => Some(mount_root(device, spec).map_err(|why| (why, 126))?),
        None => None,
    };
    if let Some(name) = &spec.hostname {
        // SAFETY: sethostname reads name.len() bytes from a live string.
        if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } != 0 {
            let e = io::Error::last_os_error();
            return Err((format!("cannot set hostname {name:?}: {e}"), 126));
        }
    }
    sysctl::set(&spec.sysctl).map_err(|why| (why, 126))?;
    let ns = pidns::enter(spec.pid_namespace, main).map_err(|e| {
        let why = format!("cannot enter the container's pid namespace: {e}");
        (why, 126)
    })?;
    let fresh = ns.fresh;
    let mut cmd = Command::new(program);
    if let Some(root) = root {
        enter_root(&mut cmd, &root, &spec.cwd, fresh)?;
    }
    let master = attach_stdio(&mut cmd, spec)?;
    confine(&mut cmd, spec);
    cmd.args(&spec.args[1..])
        .env_clear()
        .envs(spec.env.iter().filter_map(|kv| kv.split_once('=')));
    if spec.root.is_none() && !spec.cwd.is_empty() {
        cmd.current_dir(&spec.cwd);
    }
    let child = cmd.spawn().map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => (
            format!("exec: {program:?}: executable file not found in $PATH"),
            127,
        ),
        _ => (format!("cannot run {program}: {e}"), 126),
    })?;
    if let Some(Err(e)) = fresh.then(|| ns.adopt(child.id())) {
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
        return Err((
            format!("cannot keep the container's pid namespace: {e}"),
            126,
        ));
    }
    Ok((child, master))
}

/// Between fork and exec: chroot into the container's `root` and chdir to `cwd`; the first
/// process of a new pid namespace (`fresh`) first mounts a /proc of that namespace over the
/// guest's at `root`/proc, which exec sessions see too.
fn enter_root(cmd: &mut Command, root: &str, cwd: &str, fresh: bool) -> Result<(), (String, i32)> {
    let cstr =
        |s: String| std::ffi::CString::new(s).map_err(|_| ("bad root path".to_string(), 126));
    let proc = format!("{root}/proc");
    let proc = (fresh && Path::new(&proc).is_dir())
        .then(|| cstr(proc))
        .transpose()?;
    let root = cstr(root.to_string())?;
    let cwd = cstr(if cwd.is_empty() { "/" } else { cwd }.to_string())?;
    // SAFETY: mount, chroot and chdir between fork and exec, with strings prepared before the
    // fork.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(proc) = &proc {
                let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
                let fs = c"proc".as_ptr();
                if libc::mount(fs, proc.as_ptr(), fs, flags, std::ptr::null()) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if libc::chroot(root.as_ptr()) != 0 || libc::chdir(cwd.as_ptr()) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// The process's stdio: pipes, or with a terminal the slave of a new pty, which becomes its
/// controlling terminal in a session of its own. Returns the pty's master.
fn attach_stdio(cmd: &mut Command, spec: &RunSpec) -> Result<Option<OwnedFd>, (String, i32)> {
    if !spec.terminal {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        return Ok(None);
    }
    let fail = |e: io::Error| (format!("cannot open a terminal: {e}"), 126);
    let (master, slave) = pty::open_pair(c"/dev/ptmx").map_err(fail)?;
    if let Some(size) = spec.winsize {
        pty::set_winsize(&master, size);
    }
    let io = |fd: &OwnedFd| fd.try_clone().map(Stdio::from).map_err(fail);
    cmd.stdin(io(&slave)?)
        .stdout(io(&slave)?)
        .stderr(io(&slave)?);
    // SAFETY: setsid and TIOCSCTTY between fork and exec, on the child's own stdin.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(Some(master))
}

/// Limits, credentials, capabilities and seccomp, applied between fork and exec.
fn confine(cmd: &mut Command, spec: &RunSpec) {
    let (rlimits, nnp, oom) = (
        spec.rlimits.clone(),
        spec.no_new_privileges,
        spec.oom_score_adj,
    );
    let (uid, gid, groups) = (spec.uid, spec.gid, spec.additional_gids.clone());
    let (caps, filters) = (
        spec.capabilities,
        spec.seccomp.as_ref().map(Seccomp::unpack),
    );
    // SAFETY: limits, credentials, capabilities and seccomp between fork and exec, on data
    // prepared before the fork, in runc's order (raising limits, setting groups and dropping
    // from the bounding set need the agent's privileges; seccomp without no_new_privs too).
    unsafe {
        cmd.pre_exec(move || {
            signals::reset();
            limits::set_oom_score_adj(oom).map_err(io::Error::other)?;
            limits::apply(&rlimits).map_err(io::Error::other)?;
            let identity = security::Identity {
                uid,
                gid,
                groups: &groups,
                caps: caps.as_ref(),
                seccomp: filters.as_ref(),
                no_new_privs: nnp,
            };
            identity.apply(|| Ok(()))
        });
    }
}

/// A guest that may be a clone of a snapshot: its clock set from the host's, the host's random
/// bytes mixed into its entropy pool (and counted, so the pool is ready at once).
fn fresh_start(spec: &RunSpec) -> Result<(), String> {
    if let Some((secs, nanos)) = spec.clock {
        let now = libc::timespec {
            tv_sec: secs,
            tv_nsec: i64::from(nanos),
        };
        // SAFETY: clock_settime reads a live timespec.
        if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &now) } != 0 {
            let e = io::Error::last_os_error();
            return Err(format!("cannot set the guest's clock: {e}"));
        }
    }
    if !spec.seed.is_empty() {
        add_entropy(&spec.seed).map_err(|e| format!("cannot seed the guest's RNG: {e}"))?;
    }
    Ok(())
}

/// RNDADDENTROPY: `bytes` into the kernel's pool, credited with their bits; then a reseed.
fn add_entropy(bytes: &[u8]) -> io::Result<()> {
    const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
    let random = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let count = i32::try_from(bytes.len() * 8).unwrap_or(i32::MAX);
    let size = i32::try_from(bytes.len()).unwrap_or(i32::MAX);
    let mut info = Vec::with_capacity(8 + bytes.len());
    info.extend_from_slice(&count.to_ne_bytes());
    info.extend_from_slice(&size.to_ne_bytes());
    info.extend_from_slice(bytes);
    // SAFETY: the ioctl reads a rand_pool_info of 8 + buf_size bytes from a live buffer.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // Crediting alone does not rekey a pool that is already ready (Linux reseeds on its own
    // clock): RNDRESEEDCRNG makes the next random bytes depend on what was just added.
    const RNDRESEEDCRNG: libc::c_ulong = 0x5207;
    // SAFETY: RNDRESEEDCRNG takes no argument.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Drops what the guest cached of block device `device` (BLKFLSBUF): a warm sandbox's disks
/// were empty placeholders when its guest booted, and are the container's images now.
fn forget_cached(device: &str) -> Result<(), String> {
    const BLKFLSBUF: libc::c_ulong = 0x1261;
    let dev = std::fs::File::open(device).map_err(|e| format!("cannot open {device}: {e}"))?;
    // SAFETY: BLKFLSBUF takes no argument.
    if unsafe { libc::ioctl(dev.as_raw_fd(), BLKFLSBUF, 0) } != 0 {
        let e = io::Error::last_os_error();
        return Err(format!("cannot drop the cache of {device}: {e}"));
    }
    Ok(())
}

/// Mounts the container's root filesystem from `device` at /run/gureum/rootfs, once: later
/// requests (exec sessions) share it. Writable through an overlay on a tmpfs unless
/// `readonly`, so the disk itself (a cached image, attached read-only) never changes.
fn mount_root(device: &str, spec: &RunSpec) -> Result<String, String> {
    static ROOT: std::sync::OnceLock<Result<String, String>> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        let target = mount_root_once(device, spec.readonly)?;
        if let Some(binds) = &spec.binds {
            mount_binds(binds, &target)?;
        }
        Ok(target)
    })
    .clone()
}

/// The config's bind mounts, read-only: entry N of `binds.device` at its Nth destination
/// under `target`, the mount point made as a file or directory like its source.
fn mount_binds(binds: &Binds, target: &str) -> Result<(), String> {
    let disk = format!("{}/binds", base());
    if crate::is_guest() {
        forget_cached(&binds.device)?;
    }
    mount(&binds.device, &disk, "ext4", libc::MS_RDONLY, "")?;
    for (i, destination) in binds.destinations.iter().enumerate() {
        let source = format!("{disk}/{i}");
        let point = format!("{target}/{}", destination.trim_start_matches('/'));
        let made = match Path::new(&source).is_dir() {
            true => std::fs::create_dir_all(&point),
            false => (Path::new(&point)
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all))
            .and_then(|()| match Path::new(&point).exists() {
                true => Ok(()),
                false => std::fs::write(&point, b""),
            }),
        };
        made.map_err(|e| format!("cannot make the mount point {destination}: {e}"))?;
        mount_on(&source, &point, "", libc::MS_BIND | libc::MS_REC, "")?;
        let flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY;
        mount_on("", &point, "", flags, "")?;
    }
    Ok(())
}

fn mount_root_once(device: &str, readonly: bool) -> Result<String, String> {
    let base = base();
    let target = format!("{base}/rootfs");
    let lower = if readonly {
        target.clone()
    } else {
        format!("{base}/lower")
    };
    if crate::is_guest() {
        forget_cached(device)?;
    }
    mount(device, &lower, "ext4", libc::MS_RDONLY, "")?;
    if !readonly {
        let rw = format!("{base}/rw");
        mount("tmpfs", &rw, "tmpfs", 0, "mode=0755")?;
        for d in ["upper", "work"] {
            let d = format!("{rw}/{d}");
            std::fs::create_dir_all(&d).map_err(|e| format!("cannot make {d}: {e}"))?;
        }
        let data = format!("lowerdir={lower},upperdir={rw}/upper,workdir={rw}/work");
        mount("overlay", &target, "overlay", 0, &data)?;
    }
    // What a container expects to find. A writable root gets the directories made (in the
    // overlay); a read-only one without them goes without.
    let cannot = |dir: &str| readonly && !Path::new(&format!("{target}/{dir}")).is_dir();
    for (source, dir, fstype) in [
        ("proc", "proc", "proc"),
        ("devtmpfs", "dev", "devtmpfs"),
        ("sysfs", "sys", "sysfs"),
    ] {
        if !cannot(dir) {
            mount(source, &format!("{target}/{dir}"), fstype, 0, "")?;
        }
    }
    // Shared memory: the guest's own, as the config's /dev/shm (a tmpfs natively).
    if !cannot("dev") {
        mount("shm", &format!("{target}/dev/shm"), "tmpfs", 0, "mode=1777")?;
    }
    // The guest's ptys, so that a terminal's slave has its name in the container too.
    if Path::new("/dev/pts/ptmx").exists() && !cannot("dev") {
        mount(
            "/dev/pts",
            &format!("{target}/dev/pts"),
            "",
            libc::MS_BIND,
            "",
        )?;
    }
    Ok(target)
}

/// Where the agent mounts the container's disks: the guest's /run is a tmpfs; natively (tests)
/// GUREUM_AGENT_BASE names a scratch directory.
fn base() -> String {
    std::env::var("GUREUM_AGENT_BASE").unwrap_or_else(|_| "/run/gureum".into())
}

/// mount(2), making `target` first; `data` empty passes none. Something already mounted there
/// (EBUSY, e.g. the devtmpfs the kernel mounts on /dev itself) counts as done.
pub fn mount(
    source: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> Result<(), String> {
    std::fs::create_dir_all(target).map_err(|e| format!("cannot make {target}: {e}"))?;
    mount_on(source, target, fstype, flags, data)
}

/// mount(2) on an existing `target` (a directory or a file).
fn mount_on(
    source: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> Result<(), String> {
    let c = |s: &str| std::ffi::CString::new(s).map_err(|_| format!("bad mount argument {s:?}"));
    let (src, tgt, fs, dat) = (c(source)?, c(target)?, c(fstype)?, c(data)?);
    let data_ptr = if data.is_empty() {
        std::ptr::null()
    } else {
        dat.as_ptr().cast()
    };
    // SAFETY: mount(2) with NUL-terminated strings that outlive the call.
    let rc = unsafe { libc::mount(src.as_ptr(), tgt.as_ptr(), fs.as_ptr(), flags, data_ptr) };
    let e = io::Error::last_os_error();
    if rc != 0 && e.raw_os_error() != Some(libc::EBUSY) {
        return Err(format!("cannot mount {source} on {target}: {e}"));
    }
    Ok(())
}

/// Copy `from` into frames of `kind` until it ends.
fn pump<W: Write>(mut from: impl Read, kind: Kind, w: Shared<W>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if send(&w, kind, &buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

/// Copy a pty's master into Stdout frames until it ends, or until the process has exited and
/// nothing more came for a moment (something it left behind may hold the terminal open).
fn pump_pty<W: Write>(master: std::fs::File, w: Shared<W>, exited: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut pfd = libc::pollfd {
            fd: master.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polls one live pollfd for up to 20 ms.
        if unsafe { libc::poll(&mut pfd, 1, 20) } == 0 {
            if exited.load(Ordering::Acquire) {
                return;
            }
            continue;
        }
        match (&master).read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if send(&w, Kind::Stdout, &buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

/// The first frame must be a run request (or a signal for every process); signals and resizes
/// sent before it (a race on the host's side) are dropped.
fn read_spec<W: Write>(reader: &mut impl Read, w: &Shared<W>) -> Result<Option<RunSpec>, Error> {
    loop {
        match protocol::read_frame(reader)? {
            Some((Kind::Run, payload)) => {
                return serde_json::from_slice(&payload)
                    .map(Some)
                    .map_err(Error::BadSpec);
            }
            Some((Kind::SignalAll, payload)) => {
                signal_all(protocol::int(&payload));
                send(w, Kind::Exit, &0i32.to_le_bytes())?;
                return Ok(None);
            }
            Some((Kind::Signal | Kind::Resize, _)) => {}
            Some((kind, _)) => return Err(Error::NoRun(kind)),
            None => return Ok(None),
        }
    }
}

/// `kill --all`: the signal to every process but this one — only as PID 1 (of the guest, or
/// of a pid namespace natively), where kill(-1) cannot reach beyond the container.
fn signal_all(sig: Option<i32>) {
    // SAFETY: getpid has no preconditions; kill(-1) as PID 1 signals every other process of
    // its pid namespace.
    unsafe {
        if let Some(sig) = sig
            && libc::getpid() == 1
        {
            libc::kill(-1, sig);
        }
    }
}

/// Serve one connection: a run request, then stdin, signals and resizes until the host goes.
/// `main`: the connection that runs the container's first process (not an exec session).
pub fn serve<R: Read, W: Write + Send + 'static>(
    mut reader: R,
    writer: W,
    main: bool,
) -> Result<(), Error> {
    let w: Shared<W> = Arc::new(Mutex::new(writer));
    let Some(spec) = read_spec(&mut reader, &w)? else {
        return Ok(());
    };
    let (mut child, master) = match spawn(&spec, main) {
        Ok(spawned) => spawned,
        Err((why, status)) => return Ok(refuse(&w, &why, status)?),
    };
    let pid = child.id();
    send(&w, Kind::Started, &pid.to_le_bytes())?;
    let exited = Arc::new(AtomicBool::new(false));
    let mut stdin: Option<Box<dyn Write + Send>>;
    let mut pumps = Vec::new();
    if let Some(m) = &master {
        let (out, input) = (m.try_clone()?, m.try_clone()?);
        let (w, exited) = (w.clone(), exited.clone());
        pumps.push(std::thread::spawn(move || pump_pty(out.into(), w, exited)));
        stdin = Some(Box::new(std::fs::File::from(input)));
    } else {
        let streams: [(Option<Box<dyn Read + Send>>, Kind); 2] = [
            (child.stdout.take().map(|o| Box::new(o) as _), Kind::Stdout),
            (child.stderr.take().map(|e| Box::new(e) as _), Kind::Stderr),
        ];
        for (r, kind) in streams {
            if let Some(r) = r {
                let w = w.clone();
                pumps.push(std::thread::spawn(move || pump(r, kind, w)));
            }
        }
        stdin = child.stdin.take().map(|s| Box::new(s) as _);
    }
    // SAFETY: pidfd_open on our own child, not yet reaped; the fd is owned below.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: a fresh fd nobody else owns (when the call succeeded).
    let pidfd = libc::c_int::try_from(raw)
        .ok()
        .filter(|&fd| fd >= 0)
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
    let waiter = {
        let w = w.clone();
        std::thread::spawn(move || {
            let status = child.wait();
            exited.store(true, Ordering::Release);
            for p in pumps {
                let _ = p.join();
            }
            let code = match status {
                Ok(s) => s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)),
                Err(_) => 255,
            };
            let _ = send(&w, Kind::Exit, &code.to_le_bytes());
        })
    };
    // Until the host goes away: stdin, signals and resizes for the process.
    while let Some((kind, payload)) = protocol::read_frame(&mut reader)? {
        match kind {
            Kind::Stdin => {
                // A process that closed its stdin just does not get the rest.
                let failed = stdin
                    .as_mut()
                    .is_some_and(|s| s.write_all(&payload).is_err());
                if failed {
                    stdin = None;
                }
            }
            // A terminal stays open: the end of the host's input is not a hangup.
            Kind::StdinEof if master.is_none() => stdin = None,
            Kind::Signal => {
                if let (Some(sig), Ok(pid)) = (protocol::int(&payload), libc::pid_t::try_from(pid))
                {
                    // SAFETY: signals our own child, which waiter has not reaped while it runs.
                    unsafe { libc::kill(pid, sig) };
                }
            }
            Kind::Resize => {
                if let (Some(m), Some(size)) = (&master, pty::decode_size(&payload)) {
                    pty::set_winsize(m, size);
                }
            }
            _ => {}
        }
    }
    drop(stdin);
    // The host is gone (an exec session's gureum was killed): nobody can see or signal the
    // process any more, so it ends too. Through a pidfd: the pid may be reaped meanwhile.
    if let Some(fd) = pidfd {
        // SAFETY: pidfd_send_signal on a pidfd we own, with no siginfo.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd.as_raw_fd(),
                libc::SIGKILL,
                0,
                0,
            )
        };
    }
    let _ = waiter.join();
    Ok(())
}
