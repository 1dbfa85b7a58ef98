//! Container state on disk, under `--root` (default /run/gureum): one directory per container
//! holding `state.json` and, until `start`, the `exec.fifo` the container waits on. The status
//! is derived, as runc does: no live process → stopped; fifo still there → created; else running.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::bundle::{Isolation, Process};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("container {0:?} already exists")]
    Exists(String),
    #[error("container {0:?} does not exist")]
    Unknown(String),
    #[error(
        "container ID {0:?} is invalid (use letters, digits, '_', '-', '.'; not starting with '.')"
    )]
    BadId(String),
    #[error("state of container {0:?}")]
    Io(String, #[source] std::io::Error),
    #[error("corrupt state file {0}")]
    Corrupt(PathBuf, #[source] serde_json::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
}

/// What gureum remembers of a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    /// The container's init on the host (native) or its monitor process (vm); 0 while creating.
    pub pid: i32,
    /// The pid's start time (field 22 of /proc/PID/stat), so a reused pid is not mistaken for it.
    pub pid_start: u64,
    pub bundle: PathBuf,
    pub isolation: Isolation,
    /// RFC 3339 UTC.
    pub created: String,
    pub annotations: std::collections::HashMap<String, String>,
    /// The process settings, the base of `exec`.
    pub process: Process,
    /// The bundle's hooks, for `start` and `delete` to run theirs.
    #[serde(default)]
    pub hooks: Option<oci_spec::runtime::Hooks>,
    /// Where its cgroup is (absent in records of older versions: found as they made it).
    #[serde(default)]
    pub cgroup: Option<super::cgroup::Cgroup>,
}

impl Record {
    /// The container's cgroup, as `create` made it.
    pub fn cgroup(&self) -> super::cgroup::Cgroup {
        self.cgroup
            .clone()
            .unwrap_or_else(|| super::cgroup::Cgroup::of(&self.id, None))
    }
}

/// The OCI runtime-spec state, as `gureum state` prints it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OciState {
    pub oci_version: String,
    pub id: String,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    pub bundle: PathBuf,
    /// The bundle's own annotations, untouched.
    pub annotations: std::collections::HashMap<String, String>,
    /// gureum's own field, beside the spec's (as runc adds rootfs, created and owner): how the
    /// container is isolated.
    pub isolation: Isolation,
}

impl OciState {
    pub fn of(record: &Record, status: Status) -> Self {
        OciState {
            oci_version: "1.2.0".into(),
            id: record.id.clone(),
            status,
            pid: (status != Status::Stopped && record.pid > 0).then_some(record.pid),
            bundle: record.bundle.clone(),
            annotations: record.annotations.clone(),
            isolation: record.isolation,
        }
    }
}

/// The state a hook reads on stdin: `record` with `status`, its process `pid`.
pub fn hook_state(record: &Record, status: Status, pid: i32) -> Vec<u8> {
    let record = Record {
        pid,
        ..record.clone()
    };
    serde_json::to_vec(&OciState::of(&record, status)).unwrap_or_default()
}

/// The state directory of all containers.
pub struct Store {
    root: PathBuf,
}

pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 1024
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.+".contains(c))
}

impl Store {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Where a bundle made from an image for container `id` lives (IDs cannot start with '.').
    pub fn image_dir(&self, id: &str) -> PathBuf {
        self.root.join(".images").join(id)
    }

    /// Claims `id`: its directory exists only for the one caller that made it.
    pub fn reserve(&self, id: &str) -> Result<PathBuf, Error> {
        if !valid_id(id) {
            return Err(Error::BadId(id.to_string()));
        }
        let io = |e| Error::Io(id.to_string(), e);
        std::fs::create_dir_all(&self.root).map_err(io)?;
        let dir = self.dir(id);
        match std::fs::create_dir(&dir) {
            Ok(()) => Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(Error::Exists(id.to_string()))
            }
            Err(e) => Err(io(e)),
        }
    }

    /// Writes the record atomically (write a temporary file, rename it over).
    pub fn save(&self, record: &Record) -> Result<(), Error> {
        let io = |e| Error::Io(record.id.clone(), e);
        let dir = self.dir(&record.id);
        let tmp = dir.join("state.json.tmp");
        let json = serde_json::to_vec_pretty(record).map_err(std::io::Error::other);
        std::fs::write(&tmp, json.map_err(io)?).map_err(io)?;
        std::fs::rename(&tmp, dir.join("state.json")).map_err(io)
    }

    pub fn load(&self, id: &str) -> Result<Record, Error> {
        if !valid_id(id) {
            return Err(Error::Unknown(id.to_string()));
        }
        let path = self.dir(id).join("state.json");
        let bytes = std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::Unknown(id.to_string()),
            _ => Error::Io(id.to_string(), e),
        })?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt(path, e))
    }

    pub fn status(&self, record: &Record) -> Status {
        if record.pid <= 0 {
            return Status::Creating;
        }
        if !alive(record.pid, record.pid_start) {
            return Status::Stopped;
        }
        if self.dir(&record.id).join("exec.fifo").exists() {
            Status::Created
        } else if record.cgroup().frozen() {
            Status::Paused
        } else {
            Status::Running
        }
    }

    pub fn oci_state(&self, record: &Record) -> OciState {
        OciState::of(record, self.status(record))
    }

    /// Every container with a readable record, sorted by ID.
    pub fn list(&self) -> Vec<Record> {
        let mut ids: Vec<String> = std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        ids.sort();
        ids.iter().filter_map(|id| self.load(id).ok()).collect()
    }

    pub fn remove(&self, id: &str) -> Result<(), Error> {
        match std::fs::remove_dir_all(self.dir(id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::Io(id.into(), e)),
            _ => Ok(()),
        }
    }
}

/// The fields of /proc/PID/stat from the third (state) on. The command name (field 2) may hold
/// spaces and parentheses, so the split starts after its last ')'.
pub fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    Some(rest.split(' ').map(str::to_string).collect())
}

/// Start time of `pid` in clock ticks since boot (field 22 of /proc/PID/stat); a zombie counts
/// as gone.
pub fn start_time(pid: i32) -> Option<u64> {
    let fields = stat_fields(pid)?;
    if fields.first().map(String::as_str) == Some("Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

pub fn alive(pid: i32, started: u64) -> bool {
    start_time(pid) == Some(started)
}

/// CLOCK_MONOTONIC in microseconds: comparable across gureum's processes (monitor, run).
pub fn monotonic_us() -> u64 {
    // SAFETY: an all-zero timespec is valid; clock_gettime fills it.
    let mut t = unsafe { std::mem::zeroed::<libc::timespec>() };
    // SAFETY: clock_gettime with a valid clock and out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000 + u64::try_from(t.tv_nsec).unwrap_or(0) / 1000
}

/// Now as RFC 3339 UTC, without a date crate: civil-from-days (Howard Hinnant's algorithm).
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = days.cast_signed() + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(valid_id("abc-1_2.3"));
        for bad in ["", ".hidden", "a/b", "..", "a b"] {
            assert!(!valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn own_process_is_alive_and_a_wrong_start_time_is_not() {
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        let t = start_time(pid).unwrap();
        assert!(alive(pid, t));
        assert!(!alive(pid, t + 1));
    }

    #[test]
    fn timestamp_shape() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'), "{t}");
    }
}
