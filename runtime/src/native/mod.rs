//! Native isolation: the container's process in new namespaces (from config.json), under the
//! rootfs by pivot_root, in its own cgroups. Hand-written over libc rather than youki's
//! libcontainer: the part gureum needs is a few hundred lines, builds in seconds, and shares its
//! process settings with the guest agent; libcontainer brings its own CLI-shaped lifecycle,
//! seccomp and systemd layers and a much larger build.

mod init;
pub mod mounts;
mod nodes;
pub mod pty;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use oci_spec::runtime::LinuxNamespaceType;

use super::bundle::{Bundle, Process};
use super::cgroup::Cgroup;
use super::hooks::{self, Point};
use super::state::{self, Record, Status};
use crate::sys::{os_err, path_c, pipe, write_all};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The container's init could not set up or find its executable; `code` is its status.
    #[error("{msg}")]
    Init { code: i32, msg: String },
    #[error("the container's init exited during set-up")]
    InitDied,
    #[error("cannot {0}")]
    Sys(String, #[source] std::io::Error),
    #[error(transparent)]
    Cgroup(#[from] super::cgroup::Error),
    #[error(transparent)]
    Hook(#[from] super::hooks::Error),
}

impl Error {
    /// The exit status `run` ends with.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Init { code, .. } => *code,
            _ => 1,
        }
    }
}

fn sys(what: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::Sys(what.to_string(), e)
}

fn clone_flag(t: LinuxNamespaceType) -> libc::c_int {
    match t {
        LinuxNamespaceType::Mount => libc::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => libc::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => libc::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => libc::CLONE_NEWIPC,
        LinuxNamespaceType::User => libc::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => libc::CLONE_NEWPID,
        LinuxNamespaceType::Network => libc::CLONE_NEWNET,
        // A time namespace can only be entered by unshare; not offered.
        LinuxNamespaceType::Time => 0,
    }
}

fn open_dir(path: &Path) -> Result<OwnedFd, Error> {
    let c = path_c(path).map_err(sys(&format!("open {}", path.display())))?;
    // SAFETY: open with a NUL-terminated path; the fd is owned below.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(Error::Sys(format!("open {}", path.display()), os_err()));
    }
    // SAFETY: a fresh fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The CLONE_* flags of the namespaces to create, and those to join (by path).
fn namespaces(bundle: &Bundle) -> Result<(libc::c_int, Vec<(libc::c_int, OwnedFd)>), Error> {
    let mut flags = 0;
    let mut join = Vec::new();
    for (kind, path) in bundle.namespaces() {
        match path {
            None => flags |= clone_flag(kind),
            Some(p) => {
                let file = std::fs::File::open(&p)
                    .map_err(sys(&format!("open namespace {}", p.display())))?;
                join.push((clone_flag(kind), OwnedFd::from(file)));
            }
        }
    }
    Ok((flags, join))
}

/// Creates the container: its init is set up and waits on `state_dir/exec.fifo` for `start`.
/// Returns the init's pid. On an error nothing is left running.
pub fn create(
    bundle: &Bundle,
    record: &Record,
    state_dir: &Path,
    cgroup: &Cgroup,
    terminal: bool,
) -> Result<(i32, Option<OwnedFd>), Error> {
    let (flags, mut join) = namespaces(bundle)?;
    // A pid namespace given by path is the init's own only if the clone is made in it.
    let pid_ns = join.iter().position(|(t, _)| *t == libc::CLONE_NEWPID);
    let pid_ns = pid_ns.map(|i| join.remove(i).1);
    let uts_ns =
        flags & libc::CLONE_NEWUTS != 0 || join.iter().any(|(t, _)| *t == libc::CLONE_NEWUTS);
    let plan = init::Plan {
        bundle,
        join,
        new_mount_ns: flags & libc::CLONE_NEWNS != 0,
        uts_ns,
        new_user_ns: flags & libc::CLONE_NEWUSER != 0,
        state_dir: open_dir(state_dir)?,
        terminal,
    };
    let (go_r, go_w) = pipe().map_err(sys("make a pipe"))?;
    let (report_r, report_w) = pty::socketpair().map_err(sys("make a socket pair"))?;
    let ours = pid_ns.as_ref().map(enter_pid_ns).transpose()?;
    // The child runs only container_init, which never returns.
    let forked = cgroup.fork_into(flags);
    if let Ok((0, joined)) = forked {
        drop(go_w);
        drop(report_r);
        init::container_init(&plan, (!joined).then_some(cgroup), &go_r, report_w);
    }
    drop(go_r);
    drop(report_w);
    if let Some(ours) = ours {
        setns(
            &ours,
            libc::CLONE_NEWPID,
            "come back to gureum's pid namespace",
        )?;
    }
    let (pid, _) = forked.map_err(sys("clone the container's init"))?;
    let result = admit(bundle, record, pid, &go_w, &report_r);
    if result.is_err() {
        // SAFETY: kills and reaps our own child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
    }
    result.map(|master| (pid, master))
}

/// Makes this process's next children be born in the pid namespace `target`; returns the one
/// they were born in before, to come back to.
fn enter_pid_ns(target: &OwnedFd) -> Result<OwnedFd, Error> {
    let ours = std::fs::File::open("/proc/self/ns/pid_for_children")
        .map_err(sys("open this process's pid namespace"))?;
    setns(
        target,
        libc::CLONE_NEWPID,
        "join the pid namespace config.json names",
    )?;
    Ok(ours.into())
}

fn setns(fd: &OwnedFd, nstype: libc::c_int, what: &str) -> Result<(), Error> {
    // SAFETY: setns on a namespace fd we own; a pid namespace's moves only later children.
    match unsafe { libc::setns(fd.as_raw_fd(), nstype) } {
        0 => Ok(()),
        _ => Err(Error::Sys(what.into(), os_err())),
    }
}

/// Parent's half of set-up: id maps, go-ahead, then the init's report.
fn admit(
    bundle: &Bundle,
    record: &Record,
    pid: i32,
    go: &OwnedFd,
    report: &OwnedFd,
) -> Result<Option<OwnedFd>, Error> {
    write_id_maps(bundle, pid)?;
    write_all(go.as_raw_fd(), b"G").map_err(sys("start the container's init"))?;
    let mut first = Vec::new();
    if hooks::any_before_start(bundle.spec.hooks().as_ref()) {
        first = before_pivot_hooks(bundle, record, pid, go, report)?;
    }
    let (rest, master) = pty::receive(report).map_err(sys("read the container's init"))?;
    let answer = [first, rest].concat();
    match answer.first() {
        Some(b'R') => Ok(master),
        _ => Err(failure(&answer).unwrap_or(Error::InitDied)),
    }
}

/// The failure an init or exec'd process reported: 'E', its exit status (4 bytes, little
/// endian), one line.
fn failure(answer: &[u8]) -> Option<Error> {
    let (code, msg) = answer.strip_prefix(b"E")?.split_first_chunk::<4>()?;
    Some(Error::Init {
        code: i32::from_le_bytes(*code),
        msg: String::from_utf8_lossy(msg).into_owned(),
    })
}

/// The init stops before pivot_root and says 'H': prestart and createRuntime hooks run here,
/// then the init gets the container's state (length-prefixed) for its own hooks. Returns what
/// the init said instead of 'H' (a failure before the hooks point).
fn before_pivot_hooks(
    bundle: &Bundle,
    record: &Record,
    pid: i32,
    go: &OwnedFd,
    report: &OwnedFd,
) -> Result<Vec<u8>, Error> {
    let mut byte = [0u8; 1];
    // SAFETY: reads one byte into a live buffer.
    let n = unsafe { libc::read(report.as_raw_fd(), byte.as_mut_ptr().cast(), 1) };
    if n != 1 || byte[0] != b'H' {
        return Ok(byte[..n.clamp(0, 1).unsigned_abs()].to_vec());
    }
    let state = state::hook_state(record, Status::Creating, pid);
    let hooks = bundle.spec.hooks().as_ref();
    hooks::run(Point::Prestart, hooks, &state)?;
    hooks::run(Point::CreateRuntime, hooks, &state)?;
    let len = u32::try_from(state.len()).unwrap_or_default();
    let framed = [&len.to_le_bytes()[..], &state].concat();
    write_all(go.as_raw_fd(), &framed).map_err(sys("send the container's state to its init"))?;
    Ok(Vec::new())
}

/// Who owns exec.fifo: with a user namespace the init runs as its root, the host ids that
/// container ids 0 map to.
pub fn fifo_owner(bundle: &Bundle) -> Option<(u32, u32)> {
    let linux = bundle.spec.linux().as_ref()?;
    let host = |maps: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| {
        maps.iter()
            .flatten()
            .find(|m| m.container_id() == 0)
            .map(|m| m.host_id())
    };
    Some((
        host(linux.uid_mappings())?,
        host(linux.gid_mappings()).unwrap_or(0),
    ))
}

fn write_id_maps(bundle: &Bundle, pid: i32) -> Result<(), Error> {
    let Some(linux) = bundle.spec.linux() else {
        return Ok(());
    };
    let maps = [
        ("uid_map", linux.uid_mappings()),
        ("gid_map", linux.gid_mappings()),
    ];
    for (file, map) in maps {
        let Some(map) = map else { continue };
        let text: String = map
            .iter()
            .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
            .collect();
        std::fs::write(format!("/proc/{pid}/{file}"), text)
            .map_err(sys(&format!("write {file}")))?;
    }
    Ok(())
}

/// Runs `process` as a second process in the container whose init is `init_pid`: joins its
/// namespaces and cgroup, and returns the new process's pid (a child of this process).
pub fn exec(
    init_pid: i32,
    process: &Process,
    cgroup: &Cgroup,
    terminal: bool,
) -> Result<(i32, Option<OwnedFd>), Error> {
    let mut namespaces = Vec::new();
    for (name, flag) in [
        ("user", libc::CLONE_NEWUSER),
        ("ipc", libc::CLONE_NEWIPC),
        ("uts", libc::CLONE_NEWUTS),
        ("net", libc::CLONE_NEWNET),
        ("pid", libc::CLONE_NEWPID),
        ("cgroup", libc::CLONE_NEWCGROUP),
        ("mnt", libc::CLONE_NEWNS),
    ] {
        let theirs = format!("/proc/{init_pid}/ns/{name}");
        let same = std::fs::read_link(&theirs).ok()
            == std::fs::read_link(format!("/proc/self/ns/{name}")).ok();
        if same {
            continue;
        }
        let file = std::fs::File::open(&theirs).map_err(sys(&format!("open {theirs}")))?;
        namespaces.push((flag, OwnedFd::from(file)));
    }
    // The PID namespace applies to children: join it here, the rest in the child.
    for (flag, fd) in namespaces.iter().filter(|(f, _)| *f == libc::CLONE_NEWPID) {
        // SAFETY: setns on an fd we own.
        if unsafe { libc::setns(fd.as_raw_fd(), *flag) } != 0 {
            return Err(Error::Sys(
                "join the container's PID namespace".into(),
                os_err(),
            ));
        }
    }
    let (report_r, report_w) = pty::socketpair().map_err(sys("make a socket pair"))?;
    // The child execs or exits.
    let forked = cgroup.fork_into(0);
    if let Ok((0, joined)) = forked {
        drop(report_r);
        let cgroup = (!joined).then_some(cgroup);
        exec_child(&namespaces, process, cgroup, report_w, terminal);
    }
    drop(report_w);
    let (pid, _) = forked.map_err(sys("fork"))?;
    let (answer, master) = pty::receive(&report_r).map_err(sys("read the exec'd process"))?;
    if let Some(e) = failure(&answer) {
        // SAFETY: reaps our own child, which has exited after reporting.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        return Err(e);
    }
    Ok((pid, master))
}

fn exec_child(
    namespaces: &[(libc::c_int, OwnedFd)],
    p: &Process,
    cgroup: Option<&Cgroup>,
    report: OwnedFd,
    terminal: bool,
) -> ! {
    let fail = |f: init::Failure| -> ! { init::fail(&report, f) };
    if let Err(e) = cgroup.map_or(Ok(()), Cgroup::join_self) {
        fail((1, e.to_string()));
    }
    for (flag, fd) in namespaces.iter().filter(|(f, _)| *f != libc::CLONE_NEWPID) {
        // SAFETY: setns on an fd we own, in a single-threaded child.
        if unsafe { libc::setns(fd.as_raw_fd(), *flag) } != 0 {
            fail((
                1,
                format!("cannot join the container's namespaces: {}", os_err()),
            ));
        }
    }
    let exe = init::check_process(p).unwrap_or_else(|f| fail(f));
    if terminal {
        init::ready(&report, true);
    }
    drop(report);
    init::exec_process(&exe, p)
}
