//! Cgroup limits for a native container, on cgroup v2 (`/sys/fs/cgroup/cgroup.controllers`
//! exists) or on v1 / hybrid hosts (one hierarchy per controller, as on this Debian host).
//! Each container gets `gureum/<id>` in the memory, cpu, pids, devices and freezer hierarchies.

use std::path::{Path, PathBuf};

use super::bundle::Resources;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cgroup {0}")]
    Io(PathBuf, #[source] std::io::Error),
}

const MOUNT: &str = "/sys/fs/cgroup";
const CONTROLLERS: [&str; 5] = ["memory", "cpu", "pids", "devices", "freezer"];

/// Devices every container may use, after the spec's own rules (runc's list): mknod of any,
/// null, zero, full, tty, random, urandom, the ptys and the tun device.
const DEFAULT_DEVICES: [&str; 10] = [
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 5:0 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 136:* rwm",
    "c 5:2 rwm",
];

/// The container's cgroup directories (one on v2, one per controller on v1).
#[derive(Debug, Clone)]
pub struct Cgroup {
    dirs: Vec<PathBuf>,
    v2: bool,
}

fn write(path: &Path, value: &str) -> Result<(), Error> {
    std::fs::write(path, value).map_err(|e| Error::Io(path.to_path_buf(), e))
}

fn is_v2() -> bool {
    Path::new(MOUNT).join("cgroup.controllers").exists()
}

impl Cgroup {
    /// The cgroup of container `id`, whether or not it exists yet.
    pub fn of(id: &str) -> Self {
        let v2 = is_v2();
        let dirs = if v2 {
            vec![Path::new(MOUNT).join("gureum").join(id)]
        } else {
            CONTROLLERS
                .iter()
                .map(|c| Path::new(MOUNT).join(c))
                .filter(|c| c.is_dir())
                .map(|c| c.join("gureum").join(id))
                .collect()
        };
        Self { dirs, v2 }
    }

    /// Makes the directories and writes the limits.
    pub fn create(id: &str, r: &Resources) -> Result<Self, Error> {
        let cg = Self::of(id);
        if cg.v2 {
            // Controllers must be enabled in every ancestor's subtree_control.
            for parent in [PathBuf::from(MOUNT), Path::new(MOUNT).join("gureum")] {
                std::fs::create_dir_all(&parent).map_err(|e| Error::Io(parent.clone(), e))?;
                let _ = std::fs::write(parent.join("cgroup.subtree_control"), "+memory +cpu +pids");
            }
        }
        for dir in &cg.dirs {
            std::fs::create_dir_all(dir).map_err(|e| Error::Io(dir.clone(), e))?;
        }
        if let Err(e) = cg.limit(r) {
            cg.remove();
            return Err(e);
        }
        Ok(cg)
    }

    fn file(&self, controller: &str, name: &str) -> Option<PathBuf> {
        let dir = if self.v2 {
            self.dirs.first()
        } else {
            self.dirs.iter().find(|d| {
                d.parent().and_then(Path::parent).and_then(Path::file_name)
                    == Some(controller.as_ref())
            })
        }?;
        Some(dir.join(name))
    }

    fn limit(&self, r: &Resources) -> Result<(), Error> {
        let pids = r
            .pids
            .filter(|&p| p > 0)
            .map_or_else(|| "max".to_string(), |p| p.to_string());
        let period = r.cpu_period_us.unwrap_or(100_000);
        let quota = r.cpu_quota_us.filter(|&q| q > 0);
        if self.v2 {
            if let Some(m) = r.memory_bytes.filter(|&m| m > 0) {
                self.set("memory", "memory.max", &m.to_string())?;
            }
            if let Some(q) = quota {
                self.set("cpu", "cpu.max", &format!("{q} {period}"))?;
            }
            return self.set("pids", "pids.max", &pids);
        }
        if let Some(m) = r.memory_bytes.filter(|&m| m > 0) {
            self.set("memory", "memory.limit_in_bytes", &m.to_string())?;
        }
        self.devices(r)?;
        if let Some(q) = quota {
            self.set("cpu", "cpu.cfs_period_us", &period.to_string())?;
            self.set("cpu", "cpu.cfs_quota_us", &q.to_string())?;
        }
        self.set("pids", "pids.max", &pids)
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
        Ok(())
    }

    /// The spec's device rules in order, then the defaults; none leaves the cgroup's own
    /// (allow all). Cgroup v2 would need an eBPF device program: not enforced there yet.
    fn devices(&self, r: &Resources) -> Result<(), Error> {
        if r.devices.is_empty() {
            return Ok(());
        }
        for d in &r.devices {
            let file = if d.allow {
                "devices.allow"
            } else {
                "devices.deny"
            };
            self.set("devices", file, &d.rule)?;
        }
        DEFAULT_DEVICES
            .iter()
            .try_for_each(|rule| self.set("devices", "devices.allow", rule))
    }

    fn set(&self, controller: &str, name: &str, value: &str) -> Result<(), Error> {
        match self.file(controller, name) {
            Some(path) => write(&path, value),
            None => Ok(()),
        }
    }

    /// Freezes every process of the cgroup (or thaws them), and waits until it is done.
    pub fn freeze(&self, frozen: bool) -> Result<(), Error> {
        let (file, value) = match (self.v2, frozen) {
            (true, _) => ("cgroup.freeze", if frozen { "1" } else { "0" }),
            (false, true) => ("freezer.state", "FROZEN"),
            (false, false) => ("freezer.state", "THAWED"),
        };
        self.set("freezer", file, value)?;
        for _ in 0..1000 {
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

    /// Moves `pid` into the cgroup (in every hierarchy).
    pub fn add(&self, pid: i32) -> Result<(), Error> {
        self.dirs
            .iter()
            .try_for_each(|d| write(&d.join("cgroup.procs"), &pid.to_string()))
    }

    /// The pids still in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .dirs
            .iter()
            .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|s| s.lines().filter_map(|l| l.parse().ok()).collect::<Vec<_>>())
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Removes the directories, waiting up to a second for exiting processes to leave them.
    pub fn remove(&self) {
        for dir in &self.dirs {
            for _ in 0..100 {
                match std::fs::remove_dir(dir) {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    _ => break,
                }
            }
        }
    }
}
