//! OCI hooks: programs run at points of a container's life, each given the container's state
//! on stdin. Where they run (runtime-spec `config.md`, "POSIX-platform Hooks"):
//! - prestart, createRuntime: in gureum's namespaces, once the container's namespaces exist and
//!   before its root is pivoted (natively the init waits for them);
//! - createContainer: in the container's namespaces, before pivot_root (the host's paths);
//! - startContainer: in the container, after `start`, before its process runs;
//! - poststart: after the process started; poststop: after the container is deleted.
//!
//! A failing hook before the process runs is an error that tears the container down; a failing
//! poststart or poststop hook is a warning, as the spec asks.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::{Hook, Hooks};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{point} hook {path}: cannot run it")]
    Spawn {
        point: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{point} hook {path} failed ({status}){stderr}")]
    Failed {
        point: &'static str,
        path: PathBuf,
        status: String,
        stderr: String,
    },
}

/// The points of a container's life that have hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    Prestart,
    CreateRuntime,
    CreateContainer,
    StartContainer,
    Poststart,
    Poststop,
}

impl Point {
    /// Every point, in the order of a container's life.
    pub const ALL: [Point; 6] = [
        Point::Prestart,
        Point::CreateRuntime,
        Point::CreateContainer,
        Point::StartContainer,
        Point::Poststart,
        Point::Poststop,
    ];

    /// Its name in config.json.
    pub fn name(self) -> &'static str {
        match self {
            Point::Prestart => "prestart",
            Point::CreateRuntime => "createRuntime",
            Point::CreateContainer => "createContainer",
            Point::StartContainer => "startContainer",
            Point::Poststart => "poststart",
            Point::Poststop => "poststop",
        }
    }

    fn of(self, hooks: &Hooks) -> &[Hook] {
        #[allow(deprecated)] // prestart is deprecated in the spec, and still used.
        let list = match self {
            Point::Prestart => hooks.prestart(),
            Point::CreateRuntime => hooks.create_runtime(),
            Point::CreateContainer => hooks.create_container(),
            Point::StartContainer => hooks.start_container(),
            Point::Poststart => hooks.poststart(),
            Point::Poststop => hooks.poststop(),
        };
        list.as_deref().unwrap_or_default()
    }
}

/// Whether any hook runs before the container's root is pivoted or its process started, so
/// the native init must stop and wait for them.
pub fn any_before_start(hooks: Option<&Hooks>) -> bool {
    [
        Point::Prestart,
        Point::CreateRuntime,
        Point::CreateContainer,
        Point::StartContainer,
    ]
    .into_iter()
    .any(|p| has(p, hooks))
}

/// Whether `point` has any hook.
pub fn has(point: Point, hooks: Option<&Hooks>) -> bool {
    hooks.is_some_and(|h| !point.of(h).is_empty())
}

/// Runs the hooks of `point` in order, each with `state` on stdin; the first failure ends it.
pub fn run(point: Point, hooks: Option<&Hooks>, state: &[u8]) -> Result<(), Error> {
    let Some(hooks) = hooks else { return Ok(()) };
    point
        .of(hooks)
        .iter()
        .try_for_each(|h| run_one(point.name(), h, state))
}

/// Runs poststart or poststop hooks: a failure is a warning on stderr.
pub fn run_warning(point: Point, hooks: Option<&Hooks>, state: &[u8]) {
    if let Err(e) = run(point, hooks, state) {
        eprintln!("gureum: warning: {e}");
    }
}

fn run_one(point: &'static str, hook: &Hook, state: &[u8]) -> Result<(), Error> {
    let path = hook.path().clone();
    let spawn_error = |source| Error::Spawn {
        point,
        path: path.clone(),
        source,
    };
    // stderr goes to a memory file, read once the hook ends (a pipe could be held open by
    // something the hook leaves running).
    let capture = memfd().map_err(spawn_error)?;
    let mut cmd = Command::new(&path);
    if let Some((arg0, rest)) = hook.args().as_deref().and_then(|a| a.split_first()) {
        cmd.arg0(arg0).args(rest);
    }
    cmd.env_clear()
        .envs(
            hook.env()
                .iter()
                .flatten()
                .filter_map(|kv| kv.split_once('=')),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(capture.try_clone().map_err(spawn_error)?);
    let mut child = cmd.spawn().map_err(spawn_error)?;
    // A hook that does not read its stdin just does not get it.
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(state);
    }
    let deadline = hook
        .timeout()
        .and_then(|s| u64::try_from(s).ok())
        .map(|s| Instant::now() + Duration::from_secs(s));
    let failure = loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => break status.to_string(),
            Ok(None) if deadline.is_some_and(|d| Instant::now() >= d) => {
                let _ = child.kill();
                let _ = child.wait();
                break format!("timed out after {} s", hook.timeout().unwrap_or(0));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => break e.to_string(),
        }
    };
    Err(Error::Failed {
        point,
        path,
        status: failure,
        stderr: last_line(capture),
    })
}

/// The last non-empty line written to `file`, as ": LINE" (or nothing).
fn last_line(mut file: std::fs::File) -> String {
    let mut text = String::new();
    let _ = file.seek(SeekFrom::Start(0));
    let _ = file.take(64 * 1024).read_to_string(&mut text);
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| format!(": {}", l.trim()))
        .unwrap_or_default()
}

fn memfd() -> std::io::Result<std::fs::File> {
    // SAFETY: memfd_create with a NUL-terminated name; the fd is owned below.
    let fd = unsafe { libc::memfd_create(c"gureum-hook-stderr".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nobody else owns.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
}
