//! Cgroup limits for a container, on cgroup v2 (`/sys/fs/cgroup/cgroup.controllers` exists) or
//! on v1 / hybrid hosts (one hierarchy per controller, as on this Debian host). Each container
//! gets `gureum/<id>`: in the memory, cpu, pids, devices and freezer hierarchies on v1, once on
//! v2. `GUREUM_CGROUP2=PATH` uses the cgroup2 mount at PATH instead (a hybrid host's unified
//! hierarchy, whose controllers may be few: the tests use it to run the v2 path on v1 hosts).

mod devices;
pub mod tuning;

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::bundle::Resources;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cgroup {0}")]
    Io(PathBuf, #[source] std::io::Error),
    #[error(
        "cgroup v2 at {root}: no {controller} controller to limit with (cgroup.controllers: {available:?})"
    )]
    NoController {
        controller: &'static str,
        root: PathBuf,
        available: String,
    },
    #[error("{0} is not a cgroup2 mount (it has no cgroup.controllers); check GUREUM_CGROUP2")]
    NotCgroup2(PathBuf),
    #[error("linux.resources.devices: bad {0}")]
    DeviceRule(String),
    #[error("cgroup v2: {0}")]
    Bpf(&'static str, #[source] std::io::Error),
    #[error("cgroup v2: the kernel refused the devices program: {0}")]
    Verifier(String),
    #[error(transparent)]
    Refused(#[from] tuning::Refused),
    #[error("cgroup v1: no {controller} hierarchy is mounted under {root} to apply {file} with")]
    NoHierarchy {
        controller: &'static str,
        file: String,
        root: PathBuf,
    },
    #[error("cgroup: {0} does not exist: this kernel cannot apply it (is its accounting on?)")]
    NoFile(PathBuf),
}

const MOUNT: &str = "/sys/fs/cgroup";
/// The v1 hierarchies a container joins where they are mounted (as runc, every one: `systemd`
/// is the name=systemd hierarchy, `unified` a hybrid host's cgroup2 mount). cpuset comes before
/// the rest: a process may join none until its cpuset has CPUs and memory nodes.
const CONTROLLERS: [&str; 14] = [
    "cpuset",
    "memory",
    "cpu",
    "cpuacct",
    "pids",
    "devices",
    "freezer",
    "blkio",
    "hugetlb",
    "net_cls",
    "net_prio",
    "perf_event",
    "systemd",
    "unified",
];
/// The controllers a v2 container's limits use, enabled for it where the host has them.
const V2_CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];

/// The container's cgroup: one directory on v2, one per controller on v1. Kept in the
/// container's state, so every later command finds the cgroup `create` made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cgroup {
    /// v2: the cgroup2 mount; v1: the directory holding one hierarchy per controller.
    root: PathBuf,
    /// v1: the hierarchies mounted there (of CONTROLLERS).
    controllers: Vec<String>,
    /// The container's cgroup, relative to each hierarchy's root.
    rel: PathBuf,
    v2: bool,
    /// The parent is gureum's own (`gureum/`, no cgroupsPath): removed with its last child.
    #[serde(default)]
    own_parent: bool,
}

/// `struct clone_args` of clone3(2), up to `cgroup` (CLONE_ARGS_SIZE_VER2).
#[derive(Default)]
#[repr(C)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Whether `pid` is a kernel thread (PF_KTHREAD in /proc/PID/stat's flags).
fn is_kernel_thread(pid: i32) -> bool {
    const PF_KTHREAD: u64 = 0x0020_0000;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command (which may hold spaces): state is 3rd, flags 9th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    rest.split_whitespace()
        .nth(6)
        .and_then(|f| f.parse::<u64>().ok())
        .is_some_and(|flags| flags & PF_KTHREAD != 0)
}

fn open_path(dir: &Path) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)
        .map(Into::into)
}

fn write(path: &Path, value: &str) -> Result<(), Error> {
    std::fs::write(path, value).map_err(|e| Error::Io(path.to_path_buf(), e))
}

/// The cgroup2 mount to use, if any: `GUREUM_CGROUP2`, or /sys/fs/cgroup on a v2 host.
fn v2_root() -> Option<PathBuf> {
    if let Some(root) = std::env::var_os("GUREUM_CGROUP2").filter(|r| !r.is_empty()) {
        return Some(root.into());
    }
    Path::new(MOUNT)
        .join("cgroup.controllers")
        .exists()
        .then(|| MOUNT.into())
}

impl Cgroup {
    /// The cgroup of container `id`, whether or not it exists yet: `path` (config.json's
    /// cgroupsPath, relative to each hierarchy's root) or `gureum/<id>`.
    pub fn of(id: &str, path: Option<&Path>) -> Self {
        let rel = path.map_or_else(|| Path::new("gureum").join(id), Path::to_path_buf);
        if let Some(root) = v2_root() {
            let controllers = Vec::new();
            return Self {
                root,
                controllers,
                rel,
                v2: true,
                own_parent: path.is_none(),
            };
        }
        let controllers = CONTROLLERS
            .iter()
            .filter(|c| Path::new(MOUNT).join(c).is_dir())
            .map(|c| c.to_string())
            .collect();
        Self {
            root: MOUNT.into(),
            controllers,
            rel,
            v2: false,
            own_parent: path.is_none(),
        }
    }

    /// Its directories: one on v2, one per mounted controller on v1.
    fn dirs(&self) -> Vec<PathBuf> {
        match self.v2 {
            true => vec![self.root.join(&self.rel)],
            false => (self.controllers.iter())
                .map(|c| self.root.join(c).join(&self.rel))
                .collect(),
        }
    }

    /// Makes the directories and writes the limits. Tried again while a parent vanishes
    /// under it (the last other container's delete removing gureum's own parent).
    pub fn create(&self, r: &Resources) -> Result<(), Error> {
        let mut tries = 0;
        loop {
            match self.try_create(r) {
                Err(Error::Io(_, e)) if e.kind() == std::io::ErrorKind::NotFound && tries < 3 => {
                    tries += 1;
                }
                done => return done,
            }
        }
    }

    fn try_create(&self, r: &Resources) -> Result<(), Error> {
        let _parents = self.own_parent.then(parents_lock);
        if self.v2 {
            self.enable_controllers(&r.tuning.v2_controllers())?;
        }
        for dir in self.dirs() {
            std::fs::create_dir_all(&dir).map_err(|e| Error::Io(dir, e))?;
        }
        if !self.v2 {
            self.fill_cpuset()?;
        }
        drop(_parents);
        if let Err(e) = self.limit(r) {
            self.remove();
            return Err(e);
        }
        Ok(())
    }

    /// v1: a new cpuset cgroup has no CPUs or memory nodes, and no process may join it until
    /// it has: each level below the root without them gets its parent's.
    fn fill_cpuset(&self) -> Result<(), Error> {
        if !self.controllers.iter().any(|c| c == "cpuset") {
            return Ok(());
        }
        let root = self.root.join("cpuset");
        let mut dir = root.clone();
        for part in self.rel.components() {
            let parent = dir.clone();
            dir.push(part);
            for file in ["cpuset.cpus", "cpuset.mems"] {
                let read = |d: &Path| std::fs::read_to_string(d.join(file)).unwrap_or_default();
                if read(&dir).trim().is_empty() {
                    write(&dir.join(file), read(&parent).trim())?;
                }
            }
        }
        Ok(())
    }

    /// v2: the memory, cpu and pids controllers the host has, and those `more` names, enabled
    /// in the subtree_control of the root and of every cgroup above the container's (a cgroup
    /// sees only what its parent enables). One write each: a write naming one the parent
    /// lacks would fail whole.
    fn enable_controllers(&self, more: &[&str]) -> Result<(), Error> {
        if !self.root.join("cgroup.controllers").is_file() {
            return Err(Error::NotCgroup2(self.root.clone()));
        }
        let parent = self.root.join(self.rel.parent().unwrap_or(Path::new("")));
        std::fs::create_dir_all(&parent).map_err(|e| Error::Io(parent.clone(), e))?;
        let above = self.rel.ancestors().skip(1).collect::<Vec<_>>();
        for dir in above.iter().rev().map(|a| self.root.join(a)) {
            let available = std::fs::read_to_string(dir.join("cgroup.controllers"))
                .map_err(|e| Error::Io(dir.join("cgroup.controllers"), e))?;
            let enabled =
                std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
            let has = |text: &str, c: &str| text.split_whitespace().any(|w| w == c);
            for c in V2_CONTROLLERS
                .iter()
                .chain(more)
                .filter(|c| **c != "cgroup")
            {
                if has(&available, c) && !has(&enabled, c) {
                    write(&dir.join("cgroup.subtree_control"), &format!("+{c}"))?;
                }
            }
        }
        Ok(())
    }

    fn file(&self, controller: &str, name: &str) -> Option<PathBuf> {
        match self.v2 {
            true => Some(self.root.join(&self.rel).join(name)),
            false => (self.controllers.iter().any(|c| c == controller))
                .then(|| self.root.join(controller).join(&self.rel).join(name)),
        }
    }

    /// The limits of a new cgroup: what `r` sets (a zero or negative limit is none).
    fn limit(&self, r: &Resources) -> Result<(), Error> {
        let quota = r.cpu_quota_us.filter(|&q| q > 0);
        self.update(&Resources {
            memory_bytes: r.memory_bytes.filter(|&m| m > 0),
            cpu_quota_us: quota,
            cpu_period_us: quota.and(r.cpu_period_us.or(Some(100_000))),
            pids: r.pids.filter(|&p| p > 0),
            devices: Vec::new(),
            tuning: r.tuning.clone(),
        })?;
        self.devices(r)
    }

    /// Changes the limits `r` names (`update`); those it leaves out stay.
    pub fn update(&self, r: &Resources) -> Result<(), Error> {
        let (v2, period) = (self.v2, r.cpu_period_us.unwrap_or(100_000));
        if let Some(m) = r.memory_bytes {
            let m = if m > 0 { m.to_string() } else { "max".into() };
            match v2 {
                true => self.set("memory", "memory.max", &m)?,
                false => self.set("memory", "memory.limit_in_bytes", &m.replace("max", "-1"))?,
            }
        }
        if r.cpu_quota_us.is_some() || r.cpu_period_us.is_some() {
            let quota = r.cpu_quota_us.filter(|&q| q > 0);
            if v2 {
                let q = quota.map_or_else(|| "max".to_string(), |q| q.to_string());
                self.set("cpu", "cpu.max", &format!("{q} {period}"))?;
            } else {
                self.set("cpu", "cpu.cfs_period_us", &period.to_string())?;
                self.set("cpu", "cpu.cfs_quota_us", &quota.unwrap_or(-1).to_string())?;
            }
        }
        if let Some(p) = r.pids {
            let p = if p > 0 { p.to_string() } else { "max".into() };
            self.set("pids", "pids.max", &p)?;
        }
        for (controller, file, value) in r.tuning.files(v2)? {
            self.set_strictly(controller, &file, &value)?;
        }
        Ok(())
    }

    /// Writes a file the setting needs: a hierarchy or file the host lacks is an error.
    fn set_strictly(&self, controller: &'static str, file: &str, value: &str) -> Result<(), Error> {
        let Some(path) = self.file(controller, file) else {
            return Err(Error::NoHierarchy {
                controller,
                file: file.to_string(),
                root: self.root.clone(),
            });
        };
        if !path.exists() {
            return Err(Error::NoFile(path));
        }
        write(&path, value)
    }

    /// The spec's device rules in order, then the defaults; none leaves the cgroup's own
    /// (its parent's). v1 writes them to its files, v2 attaches them as an eBPF program.
    fn devices(&self, r: &Resources) -> Result<(), Error> {
        let rules = devices::rules(&r.devices);
        if rules.is_empty() {
            return Ok(());
        }
        if self.v2 {
            return devices::attach(&self.root.join(&self.rel), &rules);
        }
        rules.iter().try_for_each(|d| {
            let file = if d.allow {
                "devices.allow"
            } else {
                "devices.deny"
            };
            self.set("devices", file, &devices::v1_line(d))
        })
    }

    /// Writes a controller's file; on v1 a controller the host does not mount is skipped, on
    /// v2 one the cgroup lacks is an error (a limit would be lost).
    fn set(&self, controller: &'static str, name: &str, value: &str) -> Result<(), Error> {
        let Some(path) = self.file(controller, name) else {
            return Ok(());
        };
        if self.v2 && !path.exists() {
            let available = std::fs::read_to_string(self.root.join("cgroup.controllers"));
            return Err(Error::NoController {
                controller,
                root: self.root.clone(),
                available: available.unwrap_or_default().trim().to_string(),
            });
        }
        write(&path, value)
    }

    /// Freezes every process of the cgroup (or thaws them), and waits until it is done.
    pub fn freeze(&self, frozen: bool) -> Result<(), Error> {
        let (file, value) = match (self.v2, frozen) {
            (true, _) => ("cgroup.freeze", if frozen { "1" } else { "0" }),
            (false, true) => ("freezer.state", "FROZEN"),
            (false, false) => ("freezer.state", "THAWED"),
        };
        if frozen {
            self.release_kernel_threads();
        }
        self.set("freezer", file, value)?;
        // Every task must stop, a VMM's vCPU threads leaving KVM_RUN first: 2 s, stretched
        // where guests run slower (an emulated host).
        let within = std::time::Duration::from_secs(2) * gureum_vmm::host_check::slowdown();
        let start = std::time::Instant::now();
        while start.elapsed() < within {
            if !frozen || self.frozen() {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let path = self.file("freezer", file).unwrap_or_default();
        Err(Error::Io(path, std::io::ErrorKind::TimedOut.into()))
    }

    /// Whether the cgroup is frozen (`pause`d).
    pub fn frozen(&self) -> bool {
        let read = |name| {
            self.file("freezer", name)
                .and_then(|p| std::fs::read_to_string(p).ok())
                .unwrap_or_default()
        };
        if self.v2 {
            read("cgroup.events").lines().any(|l| l == "frozen 1")
        } else {
            read("freezer.state").trim() == "FROZEN"
        }
    }

    /// Forks (a clone with namespace `flags`, SIGCHLD at exit, no new stack) with the child
    /// born in this cgroup where the kernel can: cgroup v2's `clone3(CLONE_INTO_CGROUP)`. A
    /// `cgroup.procs` write instead waits for an RCU grace period (up to ~20 ms here). Returns
    /// the child's pid (0 in the child) and whether it is in the cgroup; if not, the child
    /// `join_self`s. Only for a single-threaded caller, as fork.
    pub fn fork_into(&self, flags: libc::c_int) -> std::io::Result<(i32, bool)> {
        let flags = u64::from((flags | libc::SIGCHLD).cast_unsigned());
        if self.v2 {
            let fd = open_path(&self.root.join(&self.rel))?;
            let args = CloneArgs {
                flags: (flags & !0xff) | CLONE_INTO_CGROUP,
                exit_signal: flags & 0xff,
                cgroup: u64::from(fd.as_raw_fd().cast_unsigned()),
                ..CloneArgs::default()
            };
            let size = std::mem::size_of::<CloneArgs>();
            // SAFETY: a fork-like clone3 (no stack given, no CLONE_VM) of a single-threaded
            // process, `args` live for the call; the child returns 0 and goes on as a fork's.
            let pid = unsafe { libc::syscall(libc::SYS_clone3, std::ptr::from_ref(&args), size) };
            match i32::try_from(pid) {
                Ok(pid) if pid >= 0 => return Ok((pid, true)),
                _ => {
                    let e = std::io::Error::last_os_error();
                    // Kernels before 5.7 know no CLONE_INTO_CGROUP: fork, then join.
                    if !matches!(
                        e.raw_os_error(),
                        Some(libc::ENOSYS | libc::E2BIG | libc::EINVAL)
                    ) {
                        return Err(e);
                    }
                }
            }
        }
        let pid = if flags == u64::from(libc::SIGCHLD.cast_unsigned()) {
            // SAFETY: fork of a single-threaded process: the child returns 0.
            i64::from(unsafe { libc::fork() })
        } else {
            // SAFETY: as above, through clone(2): the child returns 0.
            unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) }
        };
        match i32::try_from(pid) {
            Ok(pid) if pid >= 0 => Ok((pid, false)),
            _ => Err(std::io::Error::last_os_error()),
        }
    }

    /// Moves the calling thread into the cgroup (in every hierarchy): the whole process, as
    /// its only callers are single-threaded. On v1 through `tasks` with "0": for a thread that
    /// moves itself the kernel takes no global lock, so this does not wait for an RCU grace
    /// period as a `cgroup.procs` write does (7-18 ms here, against 0.05 ms). A v2 domain
    /// cgroup has only `cgroup.procs` (and `fork_into` makes its children born inside).
    pub fn join_self(&self) -> Result<(), Error> {
        self.dirs().iter().try_for_each(|d| {
            // A hybrid host's cgroup2 mount has no `tasks` either.
            let v2 = self.v2 || d.starts_with(self.root.join("unified"));
            write(&d.join(if v2 { "cgroup.procs" } else { "tasks" }), "0")
        })
    }

    /// The pids still in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .all_pids()
            .into_iter()
            .filter(|&p| !is_kernel_thread(p))
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    fn all_pids(&self) -> Vec<i32> {
        (self.dirs().iter())
            .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|s| s.lines().filter_map(|l| l.parse().ok()).collect::<Vec<_>>())
            .collect()
    }

    /// v2: moves the kernel threads in the cgroup to the root (the one cgroup v2 lets hold
    /// tasks beside child cgroups). KVM makes one per VM (kvm-nx-lpage-recovery) and puts it in
    /// its VMM's cgroups; no kernel thread ever enters v2's freezer, so while it is there the
    /// cgroup never reads frozen and a pause never ends. (v1's freezer passes them over.)
    pub fn release_kernel_threads(&self) {
        if self.v2 {
            self.move_kernel_threads();
        }
    }

    /// Moves the kernel threads in the cgroup to their hierarchy's root, on v1 and v2.
    fn move_kernel_threads(&self) {
        for dir in self.dirs() {
            let Some(root) = dir.ancestors().nth(self.rel.components().count()) else {
                continue;
            };
            let threads = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            let threads = threads.lines().filter_map(|l| l.parse().ok());
            for pid in threads.filter(|&p| is_kernel_thread(p)) {
                let _ = write(&root.join("cgroup.procs"), &pid.to_string());
            }
        }
    }

    /// Kills every process of the cgroup at once where the kernel can (v2's cgroup.kill);
    /// the caller still signals what is left one by one.
    pub fn kill_all(&self) {
        if self.v2 {
            let _ = self.set("freezer", "cgroup.kill", "1");
        }
    }

    /// Removes the directories. Kernel threads (KVM's for a VMM's VM) go to the root first;
    /// then it waits for exiting processes to leave: a killed VMM is still in its cgroup while
    /// the kernel frees its guest's memory, though cgroup.procs no longer lists it. The wait is
    /// 2 s in all, stretched on an emulated host.
    pub fn remove(&self) {
        self.move_kernel_threads();
        let until = std::time::Instant::now()
            + std::time::Duration::from_secs(2) * gureum_vmm::host_check::slowdown();
        for dir in self.dirs() {
            while let Err(e) = std::fs::remove_dir(&dir) {
                if e.raw_os_error() != Some(libc::EBUSY) || std::time::Instant::now() > until {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
                self.move_kernel_threads();
            }
        }
        if self.own_parent {
            self.remove_parents();
        }
    }

    /// gureum's own parent goes with its last container. Not trusting rmdir to refuse a
    /// cgroup that still has children (a 6.18 kernel's v1 hierarchies removed one that did),
    /// it looks first, under the lock that creation takes too.
    fn remove_parents(&self) {
        let _parents = parents_lock();
        for dir in self.dirs().iter().filter(|d| !d.exists()) {
            let Some(parent) = dir.parent() else { continue };
            let children = std::fs::read_dir(parent)
                .map(|d| d.flatten().any(|e| e.path().is_dir()))
                .unwrap_or(true);
            if !children {
                let _ = std::fs::remove_dir(parent);
            }
        }
    }
}

/// The lock held while gureum's own parent cgroups are made or removed (None if it cannot
/// be had: then nothing is removed, at worst an empty directory stays).
fn parents_lock() -> Option<std::fs::File> {
    std::fs::create_dir_all("/run/lock").ok()?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/run/lock/gureum-cgroups.lock")
        .ok()?;
    // SAFETY: flock on a descriptor we own; it blocks until the lock is ours.
    (unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0).then_some(file)
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
