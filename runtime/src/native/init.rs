//! What runs inside a native container. Its first process (PID 1 of a new pid namespace) sets
//! up the filesystem, reports ready, waits for `start`, then becomes the container's process
//! (execve), as runc's init does: `state`'s pid is the process's, and a PID-1 process that does
//! not handle SIGTERM ignores it, as under runc (the kernel drops default-action signals to a
//! namespace's init).

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use super::mounts;
use crate::bundle::{Bundle, Process};
use crate::cgroup::Cgroup;
use crate::hooks::{self, Point};
use crate::sys::{cstr, os_err, write_all};

/// What the container's init needs, prepared by the parent before the clone.
pub struct Plan<'a> {
    pub bundle: &'a Bundle,
    /// Namespaces config.json names by path, to join: (CLONE_* type, open fd).
    pub join: Vec<(libc::c_int, OwnedFd)>,
    pub new_mount_ns: bool,
    /// A uts namespace of the container's, new or joined: the hostname is set in it.
    pub uts_ns: bool,
    /// A new user namespace: become its root once gureum has written the id maps.
    pub new_user_ns: bool,
    /// The container's state directory, whose exec.fifo the init opens to wait for `start`.
    pub state_dir: OwnedFd,
    /// Open a pty in the container and make it the process's stdio (process.terminal).
    pub terminal: bool,
}

/// A failure to report: the exit status a shell would give, and one line.
pub type Failure = (i32, String);

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The container's init, in the cloned child. Never returns.
/// The init joins `cgroup` itself (unless born in it), first, while it is still the host's
/// root in a new user namespace.
pub fn container_init(plan: &Plan, cgroup: Option<&Cgroup>, go: &OwnedFd, report: OwnedFd) -> ! {
    let mut byte = [0u8; 1];
    // SAFETY: reads one byte into a live buffer: the parent's go-ahead (or EOF if it died).
    let n = unsafe { libc::read(go.as_raw_fd(), byte.as_mut_ptr().cast(), 1) };
    if n != 1 {
        exit(1);
    }
    if let Err(e) = cgroup.map_or(Ok(()), Cgroup::join_self) {
        fail(&report, (1, e.to_string()));
    }
    // SAFETY: setresgid/setresuid with constant ids, in our own (single-threaded) process.
    if plan.new_user_ns && unsafe { libc::setresgid(0, 0, 0) != 0 || libc::setresuid(0, 0, 0) != 0 }
    {
        fail(
            &report,
            (
                1,
                format!("cannot become root of the user namespace: {}", os_err()),
            ),
        );
    }
    let (exe, state) = prepare(plan, go, &report).unwrap_or_else(|f| fail(&report, f));
    ready(&report, plan.terminal);
    drop(report);
    // Block until `start` opens the fifo for reading.
    // SAFETY: openat on a directory fd we own with a NUL-terminated name.
    let fifo = unsafe {
        libc::openat(
            plan.state_dir.as_raw_fd(),
            c"exec.fifo".as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        )
    };
    if fifo < 0 || write_all(fifo, b"0").is_err() {
        exit(1);
    }
    // SAFETY: closes the fifo fd we opened above.
    unsafe { libc::close(fifo) };
    let hooks = plan.bundle.spec.hooks().as_ref();
    if let Err(e) = hooks::run(Point::StartContainer, hooks, &state) {
        let _ = write_all(2, format!("gureum: {e}\n").as_bytes());
        exit(1);
    }
    // The init becomes the container's process (runc's model): its pid is the container's,
    // PID 1 of a new pid namespace, and what it does with signals and orphans is its own
    // affair (or that of an init the user asks for, as `podman --init` does).
    exec_process(&exe, &plan.bundle.process)
}

/// Reports a failure to gureum and ends this process.
pub fn fail(report: &OwnedFd, (code, msg): Failure) -> ! {
    let mut frame = vec![b'E'];
    frame.extend_from_slice(&code.to_le_bytes());
    frame.extend_from_slice(msg.as_bytes());
    let _ = write_all(report.as_raw_fd(), &frame);
    exit(1)
}

/// Reports ready; with `terminal`, first opens the container's pty and sends its master along.
pub fn ready(report: &OwnedFd, terminal: bool) {
    if !terminal {
        let _ = write_all(report.as_raw_fd(), b"R");
        return;
    }
    match super::pty::open_in_container() {
        Ok(master) => {
            let _ = super::pty::send(report.as_raw_fd(), b"R", Some(master.as_raw_fd()));
        }
        Err(msg) => fail(report, (1, msg)),
    }
}

fn exit(code: i32) -> ! {
    // SAFETY: _exit ends this process at once, without running the parent's atexit handlers.
    unsafe { libc::_exit(code) }
}

/// Namespaces, filesystem (and the hooks before pivot_root), hostname; then the executable's
/// path in the container and its state for startContainer hooks (empty without hooks).
fn prepare(plan: &Plan, go: &OwnedFd, report: &OwnedFd) -> Result<(CString, Vec<u8>), Failure> {
    for (nstype, fd) in &plan.join {
        // SAFETY: setns on a namespace fd we own.
        if unsafe { libc::setns(fd.as_raw_fd(), *nstype) } != 0 {
            return Err((1, format!("cannot join a namespace: {}", os_err())));
        }
    }
    let bundle = plan.bundle;
    let mut state = Vec::new();
    let mut before_pivot = || -> Result<(), String> {
        if hooks::any_before_start(bundle.spec.hooks().as_ref()) {
            state = hooks_before_pivot(bundle, go, report)?;
        }
        Ok(())
    };
    if plan.new_mount_ns {
        mounts::setup_rootfs(
            &bundle.spec,
            &bundle.rootfs,
            &bundle.process,
            &mut before_pivot,
        )
        .map_err(|e| (1, e))?;
    } else {
        before_pivot().map_err(|e| (1, e))?;
        chroot(&bundle.rootfs).map_err(|e| (1, e))?;
        gureum_process::sysctl::set(&bundle.process.sysctl).map_err(|e| (1, e))?;
    }
    if let (true, Some(name)) = (plan.uts_ns, &bundle.process.hostname) {
        // SAFETY: sethostname reads name.len() bytes from a live string.
        if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } != 0 {
            return Err((1, format!("cannot set hostname {name:?}: {}", os_err())));
        }
    }
    Ok((check_process(&bundle.process)?, state))
}

/// Asks gureum to run prestart and createRuntime hooks and waits for the container's state,
/// then runs createContainer hooks here: in the container's namespaces, before pivot_root.
fn hooks_before_pivot(bundle: &Bundle, go: &OwnedFd, report: &OwnedFd) -> Result<Vec<u8>, String> {
    write_all(report.as_raw_fd(), b"H").map_err(|e| format!("report to gureum: {e}"))?;
    let mut len = [0u8; 4];
    read_exact(go, &mut len)?;
    let mut state = vec![0u8; u32::from_le_bytes(len) as usize];
    read_exact(go, &mut state)?;
    hooks::run(Point::CreateContainer, bundle.spec.hooks().as_ref(), &state)
        .map_err(|e| e.to_string())?;
    Ok(state)
}

/// Fills `buf` from `fd`; EOF (gureum gave up, e.g. its own hook failed) ends this process.
fn read_exact(fd: &OwnedFd, buf: &mut [u8]) -> Result<(), String> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: reads into the live remainder of `buf`.
        let n = unsafe { libc::read(fd.as_raw_fd(), rest.as_mut_ptr().cast(), rest.len()) };
        match n {
            0 => exit(1),
            n if n < 0 && os_err().kind() == std::io::ErrorKind::Interrupted => {}
            n if n < 0 => return Err(format!("read from gureum: {}", os_err())),
            n => done += n.unsigned_abs(),
        }
    }
    Ok(())
}

fn chroot(root: &Path) -> Result<(), String> {
    let c = cstr(root.as_os_str().as_encoded_bytes())?;
    // SAFETY: chroot/chdir with NUL-terminated paths.
    if unsafe { libc::chroot(c.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 } {
        return Err(format!(
            "cannot chroot into {}: {}",
            root.display(),
            os_err()
        ));
    }
    Ok(())
}

/// The cwd exists and the executable is found, from inside the container's root.
pub fn check_process(p: &Process) -> Result<CString, Failure> {
    if !Path::new(&p.cwd).is_dir() {
        return Err((
            1,
            format!("cwd {} is not a directory in the container", p.cwd),
        ));
    }
    let program = &p.args[0];
    let path_var = p
        .env
        .iter()
        .find_map(|kv| kv.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    let candidates: Vec<String> = if program.contains('/') {
        vec![program.clone()]
    } else {
        path_var
            .split(':')
            .map(|dir| format!("{}/{program}", if dir.is_empty() { "." } else { dir }))
            .collect()
    };
    let mut found_not_executable = false;
    for candidate in candidates {
        let meta = std::fs::metadata(&candidate);
        if meta.as_ref().is_ok_and(std::fs::Metadata::is_file) {
            let c = cstr(candidate.as_bytes()).map_err(|e| (126, e))?;
            // SAFETY: access with a NUL-terminated path.
            if unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0 {
                return Ok(c);
            }
            found_not_executable = true;
        }
    }
    if found_not_executable {
        Err((126, format!("{program}: permission denied")))
    } else {
        // runc's words, which podman and docker read to exit 127.
        Err((
            127,
            format!("exec: {program:?}: executable file not found in $PATH"),
        ))
    }
}

/// Credentials, capabilities and seccomp in runc's order (`Identity::apply`), with the chdir
/// to cwd as the user; the exit status and one line for the step that failed.
fn credentials_and_cwd(p: &Process) -> Result<(), (i32, String)> {
    let cwd = cstr(p.cwd.as_bytes()).unwrap_or_else(|_| CString::from(c"/"));
    let filters = p
        .seccomp
        .as_ref()
        .map(gureum_process::security::Seccomp::unpack);
    let identity = gureum_process::security::Identity {
        uid: p.uid,
        gid: p.gid,
        groups: &p.additional_gids,
        caps: p.capabilities.as_ref(),
        seccomp: filters.as_ref(),
        no_new_privs: p.no_new_privileges,
    };
    let chdir = || {
        // SAFETY: chdir with a NUL-terminated path.
        match unsafe { libc::chdir(cwd.as_ptr()) } {
            0 => Ok(()),
            _ => Err(std::io::Error::other(format!(
                "chdir {}: {}",
                p.cwd,
                os_err()
            ))),
        }
    };
    identity.apply(chdir).map_err(|e| (126, e.to_string()))
}

/// In the forked child: the process's own settings, then exec. Never returns.
pub fn exec_process(exe: &CString, p: &Process) -> ! {
    let fail = |code: i32, what: &str| -> ! {
        let msg = format!("gureum: {what}: {}\n", os_err());
        let _ = write_all(2, msg.as_bytes());
        exit(code);
    };
    // gureum and the init block the signals they forward; Rust's runtime ignores SIGPIPE.
    gureum_process::signals::reset();
    if let Err(why) = gureum_process::limits::set_oom_score_adj(p.oom_score_adj) {
        let _ = write_all(2, format!("gureum: {why}\n").as_bytes());
        exit(1);
    }
    if let Err(why) = gureum_process::limits::apply(&p.rlimits) {
        let _ = write_all(2, format!("gureum: {why}\n").as_bytes());
        exit(126);
    }
    if p.terminal {
        // SAFETY: a new session whose controlling terminal is the pty on stdin.
        unsafe {
            libc::setsid();
            libc::ioctl(0, libc::TIOCSCTTY, 0);
        }
    }
    if let Err((code, why)) = credentials_and_cwd(p) {
        let _ = write_all(2, format!("gureum: {why}\n").as_bytes());
        exit(code);
    }
    let to_c = |v: &[String]| -> Vec<CString> {
        v.iter()
            .filter_map(|s| CString::new(s.as_bytes()).ok())
            .collect()
    };
    let (args, env) = (to_c(&p.args), to_c(&p.env));
    let ptrs = |v: &[CString]| -> Vec<*const libc::c_char> {
        v.iter()
            .map(|c| c.as_ptr())
            .chain([std::ptr::null()])
            .collect()
    };
    let (argv, envp) = (ptrs(&args), ptrs(&env));
    // SAFETY: execve with NUL-terminated arrays of NUL-terminated strings that outlive the call.
    unsafe { libc::execve(exe.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    let code = if os_err().raw_os_error() == Some(libc::ENOENT) {
        127
    } else {
        126
    };
    fail(code, &format!("cannot run {}", p.args[0]))
}
