//! An OCI runtime bundle: config.json (parsed with oci-spec) and its rootfs, validated, and
//! turned into the plain settings the native runtime and the guest agent apply.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxDeviceType, LinuxNamespaceType, Spec};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no config.json in bundle {0}")]
    NoConfig(PathBuf),
    #[error("invalid {0}")]
    BadConfig(PathBuf, #[source] oci_spec::OciSpecError),
    #[error("unsupported ociVersion {0:?} (gureum runs runtime-spec 1.x)")]
    Version(String),
    #[error("config.json has no process to run (process.args is empty)")]
    NoArgs,
    #[error(transparent)]
    Process(gureum_process::oci::Error),
    #[error("the rootfs {0} does not exist or is not a directory")]
    NoRootfs(PathBuf),
    #[error(
        "linux.cgroupsPath {0:?} is a systemd slice path; gureum manages cgroupfs paths (e.g. \
         /mygroup/ID) and has no --systemd-cgroup"
    )]
    SystemdCgroupsPath(PathBuf),
    #[error("linux.cgroupsPath {0:?} must not contain '..'")]
    BadCgroupsPath(PathBuf),
    #[error("annotation gureum.isolation must be vm or native, not {0:?}")]
    BadIsolation(String),
    #[error("sysctl {0:?} {1}")]
    Sysctl(String, &'static str),
    #[error(
        "hostname {0:?} needs a uts namespace of the container's (linux.namespaces lists none)"
    )]
    HostnameWithoutUts(String),
    #[error(
        "{0} need a mount namespace of the container's (linux.namespaces lists none): they \
         would change the host's mounts"
    )]
    MountsWithoutMountNs(&'static str),
    #[error("cannot tell whether the network namespace {0} is this host's")]
    NetnsPath(PathBuf, #[source] std::io::Error),
    #[error("linux.seccomp")]
    Seccomp(#[from] super::seccomp::Error),
}

/// The ipc namespace's sysctls besides fs.mqueue.* (runc's list).
const IPC_SYSCTLS: [&str; 8] = [
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
];

/// Whether the network namespace at `path` is this process's (a net.* sysctl there would
/// change the host's network).
fn is_host_netns(path: &Path) -> Result<bool, Error> {
    use std::os::unix::fs::MetadataExt;
    let fail = |e| Error::NetnsPath(path.to_path_buf(), e);
    let theirs = std::fs::metadata(path).map_err(fail)?;
    let ours = std::fs::metadata("/proc/self/ns/net").map_err(fail)?;
    Ok((theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()))
}

/// Where a container runs: in its own microVM or in namespaces on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    Vm,
    Native,
}

impl Isolation {
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Vm => "vm",
            Isolation::Native => "native",
        }
    }
}

/// The process settings gureum applies, natively or through the guest agent.
pub use gureum_process::protocol::RunSpec as Process;

/// Cgroup limits from `linux.resources`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    pub memory_bytes: Option<i64>,
    pub cpu_quota_us: Option<i64>,
    pub cpu_period_us: Option<u64>,
    pub pids: Option<i64>,
    /// `linux.resources.devices`, in order, as cgroup v1 writes them.
    pub devices: Vec<DeviceRule>,
    /// The rest of `linux.resources`.
    #[serde(default)]
    pub tuning: super::cgroup::tuning::Tuning,
}

impl Resources {
    /// What a sandbox's VMM and monitor are held to on the host: the CPU quota (which also
    /// sized its vCPUs) and the rest of `linux.resources` but memory's, which a sandbox refuses
    /// (CPU shares and set, block I/O: the VMM does the guest's). The memory limit is the
    /// guest's size instead, and the pids limit would count the VMM's threads, not the guest's.
    pub fn for_vmm(&self) -> Self {
        Self {
            cpu_quota_us: self.cpu_quota_us,
            cpu_period_us: self.cpu_period_us,
            tuning: self.tuning.clone(),
            ..Self::default()
        }
    }
}

/// One device cgroup rule: allow or deny `access` (of r, w, m) to devices of a kind and number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRule {
    pub allow: bool,
    /// 'a' (any), 'b' (block) or 'c' (character).
    pub kind: char,
    /// None: any.
    pub major: Option<i64>,
    pub minor: Option<i64>,
    pub access: String,
}

/// A bundle ready to run.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub rootfs: PathBuf,
    pub process: Process,
    pub resources: Resources,
    pub annotations: HashMap<String, String>,
    /// `linux.cgroupsPath`, relative to each hierarchy's root (runc's cgroupfs driver); None
    /// for gureum's default, `gureum/ID`.
    pub cgroups_path: Option<PathBuf>,
    pub spec: Spec,
}

/// `linux.cgroupsPath` checked: cgroupfs style, without `..`; "" or "/" is none.
fn cgroups_path(spec: &Spec) -> Result<Option<PathBuf>, Error> {
    let Some(path) = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone()) else {
        return Ok(None);
    };
    if path.to_string_lossy().contains(':') {
        return Err(Error::SystemdCgroupsPath(path));
    }
    let mut rel = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::Normal(part) => rel.push(part),
            std::path::Component::ParentDir => return Err(Error::BadCgroupsPath(path)),
            _ => {}
        }
    }
    Ok((!rel.as_os_str().is_empty()).then_some(rel))
}

impl Bundle {
    /// Reads and validates `DIR/config.json`; `dir` is made absolute.
    pub fn load(dir: &Path) -> Result<Self, Error> {
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        let path = dir.join("config.json");
        if !path.is_file() {
            return Err(Error::NoConfig(dir));
        }
        let spec = Spec::load(&path).map_err(|e| Error::BadConfig(path, e))?;
        Self::from_spec(dir, spec)
    }

    pub fn from_spec(dir: PathBuf, spec: Spec) -> Result<Self, Error> {
        let version = spec.version();
        if !version.starts_with("1.") {
            return Err(Error::Version(version.clone()));
        }
        let mut process = spec
            .process()
            .as_ref()
            .map(process_settings)
            .transpose()?
            .ok_or(Error::NoArgs)?;
        process.hostname.clone_from(spec.hostname());
        let root = spec.root().as_ref();
        let rootfs = root.map_or_else(|| PathBuf::from("rootfs"), |r| r.path().clone());
        let rootfs = dir.join(rootfs);
        if !rootfs.is_dir() {
            return Err(Error::NoRootfs(rootfs));
        }
        process.readonly = root.and_then(|r| r.readonly()).unwrap_or(false);
        let linux = spec.linux().as_ref();
        let label = linux
            .and_then(|l| l.mount_label().as_deref())
            .filter(|l| !l.is_empty());
        if let Some(label) = label {
            let refused = gureum_process::oci::refuse_label("linux.mountLabel", label, "selinux");
            return Err(Error::Process(refused));
        }
        process.sysctl = linux
            .and_then(|l| l.sysctl().clone())
            .unwrap_or_default()
            .into_iter()
            .collect();
        process.sysctl.sort();
        process.seccomp = linux
            .and_then(|l| l.seccomp().as_ref())
            .map(super::seccomp::compile)
            .transpose()?;
        let mut bundle = Self {
            resources: resources(&spec),
            annotations: spec.annotations().clone().unwrap_or_default(),
            cgroups_path: cgroups_path(&spec)?,
            process,
            rootfs,
            dir,
            spec,
        };
        bundle.process.pid_namespace =
            (bundle.namespaces().iter()).any(|(kind, _)| *kind == LinuxNamespaceType::Pid);
        Ok(bundle)
    }

    /// The annotation `gureum.isolation`, if present.
    pub fn isolation(&self) -> Result<Option<Isolation>, Error> {
        match self.annotations.get("gureum.isolation").map(String::as_str) {
            None => Ok(None),
            Some("vm") => Ok(Some(Isolation::Vm)),
            Some("native") => Ok(Some(Isolation::Native)),
            Some(other) => Err(Error::BadIsolation(other.to_string())),
        }
    }

    /// Refuses a sysctl that would change the host, natively: only those a namespace the
    /// container gets of its own isolates (runc's rule). In a microVM the guest is the
    /// container's, so any goes.
    /// A hostname is set in the container's uts namespace, which must be listed (runc's rule):
    /// otherwise it would be the host's.
    pub fn check_hostname(&self) -> Result<(), Error> {
        let uts = self
            .namespaces()
            .iter()
            .any(|(k, _)| *k == LinuxNamespaceType::Uts);
        match &self.process.hostname {
            Some(name) if !uts => Err(Error::HostnameWithoutUts(name.clone())),
            _ => Ok(()),
        }
    }

    /// Mounts, masked and read-only paths are made in the container's mount namespace, which
    /// must be listed: otherwise they would be the host's (runc refuses masked and read-only
    /// paths there, and makes mounts in the host's namespace, which gureum refuses too).
    pub fn check_mounts(&self) -> Result<(), Error> {
        if self
            .namespaces()
            .iter()
            .any(|(k, _)| *k == LinuxNamespaceType::Mount)
        {
            return Ok(());
        }
        let linux = self.spec.linux().as_ref();
        if self.spec.mounts().as_ref().is_some_and(|m| !m.is_empty()) {
            return Err(Error::MountsWithoutMountNs("mounts"));
        }
        let paths = |p: Option<&Vec<String>>| p.is_some_and(|p| !p.is_empty());
        if paths(linux.and_then(|l| l.masked_paths().as_ref()))
            || paths(linux.and_then(|l| l.readonly_paths().as_ref()))
        {
            return Err(Error::MountsWithoutMountNs("masked and read-only paths"));
        }
        Ok(())
    }

    pub fn check_sysctls(&self) -> Result<(), Error> {
        let ns = self.namespaces();
        let listed = |t: LinuxNamespaceType| ns.iter().find(|(k, _)| *k == t).map(|(_, p)| p);
        for (key, _) in &self.process.sysctl {
            let refuse = |why| Err(Error::Sysctl(key.clone(), why));
            if !gureum_process::sysctl::valid_name(key) {
                return refuse("is not a sysctl's name");
            }
            if IPC_SYSCTLS.contains(&key.as_str()) || key.starts_with("fs.mqueue.") {
                if listed(LinuxNamespaceType::Ipc).is_none() {
                    return refuse("is not allowed in the host's ipc namespace");
                }
                continue;
            }
            if key.starts_with("net.") {
                let host = match listed(LinuxNamespaceType::Network) {
                    None => true,
                    Some(None) => false,
                    Some(Some(path)) => is_host_netns(path)?,
                };
                if host {
                    return refuse("is not allowed in the host's network namespace");
                }
                continue;
            }
            if listed(LinuxNamespaceType::Uts).is_some() {
                match key.as_str() {
                    "kernel.domainname" => continue,
                    "kernel.hostname" => {
                        return refuse("conflicts with the config's hostname: set that instead");
                    }
                    _ => {}
                }
            }
            return refuse("is not in a namespace of the container's");
        }
        Ok(())
    }

    /// The namespaces config.json lists, and no other (runc's rule: a config with none shares
    /// every namespace with the host): (kind, path to join or None to create).
    pub fn namespaces(&self) -> Vec<(LinuxNamespaceType, Option<PathBuf>)> {
        let listed = self
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref());
        listed
            .into_iter()
            .flatten()
            .map(|n| (n.typ(), n.path().clone()))
            .collect()
    }
}

pub fn process_settings(p: &oci_spec::runtime::Process) -> Result<Process, Error> {
    gureum_process::oci::process_settings(p).map_err(Error::Process)
}

/// `linux.resources`, and access to the nodes `linux.devices` makes (runc allows them too).
fn resources(spec: &Spec) -> Resources {
    let linux = spec.linux().as_ref();
    let mut r = (linux.and_then(|l| l.resources().as_ref()))
        .map(limits)
        .unwrap_or_default();
    let nodes = linux
        .and_then(|l| l.devices().as_ref())
        .into_iter()
        .flatten();
    r.devices.extend(nodes.filter_map(|d| {
        let kind = match d.typ() {
            LinuxDeviceType::B => 'b',
            LinuxDeviceType::C | LinuxDeviceType::U => 'c',
            LinuxDeviceType::P | LinuxDeviceType::A => return None,
        };
        Some(DeviceRule {
            allow: true,
            kind,
            major: Some(d.major()),
            minor: Some(d.minor()),
            access: "rwm".into(),
        })
    }));
    r
}

/// The limits of an OCI `linux.resources` (also what `update --resources` reads).
pub fn limits(r: &oci_spec::runtime::LinuxResources) -> Resources {
    let cpu = r.cpu().as_ref();
    Resources {
        memory_bytes: r.memory().as_ref().and_then(|m| m.limit()),
        cpu_quota_us: cpu.and_then(|c| c.quota()),
        cpu_period_us: cpu.and_then(|c| c.period()),
        pids: r.pids().as_ref().map(|p| p.limit()),
        tuning: super::cgroup::tuning::Tuning::from_oci(r),
        devices: r
            .devices()
            .iter()
            .flatten()
            .filter_map(|d| {
                // The cgroup knows a, b and c; an unbuffered character device (u) is a c, and
                // a FIFO (p) is no device it controls.
                let kind = match d.typ() {
                    Some(LinuxDeviceType::B) => 'b',
                    Some(LinuxDeviceType::C | LinuxDeviceType::U) => 'c',
                    Some(LinuxDeviceType::P) => return None,
                    Some(LinuxDeviceType::A) | None => 'a',
                };
                Some(DeviceRule {
                    allow: d.allow(),
                    kind,
                    major: d.major(),
                    minor: d.minor(),
                    access: d.access().clone().unwrap_or_else(|| "rwm".into()),
                })
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(config: &str) -> (tempdir::Dir, Result<Bundle, Error>) {
        let dir = tempdir::Dir::new();
        std::fs::create_dir(dir.0.join("rootfs")).unwrap();
        std::fs::write(dir.0.join("config.json"), config).unwrap();
        let b = Bundle::load(&dir.0);
        (dir, b)
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let p = std::env::temp_dir()
                    .join(format!("gureum-bundle-test-{}-{n}", std::process::id()));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    const GOOD: &str = r#"{"ociVersion":"1.0.2","process":{"args":["sh","-c","true"],
        "env":["A=1"],"cwd":"/tmp","user":{"uid":5,"gid":6},
        "rlimits":[{"type":"RLIMIT_NOFILE","soft":100,"hard":200}]},
        "root":{"path":"rootfs","readonly":true},"hostname":"box",
        "linux":{"resources":{"memory":{"limit":1048576},"pids":{"limit":7}},
                 "namespaces":[{"type":"pid"},{"type":"mount"}]},
        "annotations":{"gureum.isolation":"native"}}"#;

    #[test]
    fn reads_the_settings() {
        let (_d, b) = bundle(GOOD);
        let b = b.unwrap();
        assert_eq!(b.process.args, ["sh", "-c", "true"]);
        assert_eq!((b.process.uid, b.process.gid), (5, 6));
        assert_eq!(b.process.cwd, "/tmp");
        assert_eq!(b.process.rlimits, [("RLIMIT_NOFILE".into(), 100, 200)]);
        assert!(b.process.readonly);
        assert_eq!(b.process.hostname.as_deref(), Some("box"));
        assert_eq!(b.resources.memory_bytes, Some(1 << 20));
        assert_eq!(b.resources.pids, Some(7));
        assert_eq!(b.isolation().unwrap(), Some(Isolation::Native));
        assert_eq!(b.namespaces().len(), 2);
    }

    #[test]
    fn refuses_bad_bundles() {
        let cases = [
            ("{", "invalid"),
            (
                r#"{"ociVersion":"2.0.0","process":{"args":["x"],"cwd":"/","user":{"uid":0,"gid":0}}}"#,
                "ociVersion",
            ),
            (
                r#"{"ociVersion":"1.0.0","process":{"args":[],"cwd":"/","user":{"uid":0,"gid":0}}}"#,
                "args is empty",
            ),
            (r#"{"ociVersion":"1.0.0"}"#, "args is empty"),
            (
                r#"{"ociVersion":"1.0.0","process":{"args":["x"],"cwd":"/","user":{"uid":0,"gid":0}},"root":{"path":"nope"}}"#,
                "does not exist",
            ),
        ];
        for (config, want) in cases {
            let (_d, b) = bundle(config);
            let e = b.unwrap_err().to_string();
            assert!(e.contains(want), "{config}: {e}");
        }
        let dir = tempdir::Dir::new();
        assert!(matches!(Bundle::load(&dir.0), Err(Error::NoConfig(_))));
    }

    #[test]
    fn cgroups_path_is_cgroupfs_style_without_dot_dot() {
        let config = |path: &str| {
            GOOD.replacen(
                r#""linux":{"#,
                &format!(r#""linux":{{"cgroupsPath":"{path}","#),
                1,
            )
        };
        let (_d, b) = bundle(&config("/k8s/pod1/c1"));
        assert_eq!(b.unwrap().cgroups_path, Some(PathBuf::from("k8s/pod1/c1")));
        let (_d, b) = bundle(&config("/"));
        assert_eq!(b.unwrap().cgroups_path, None);
        let (_d, b) = bundle(&config("system.slice:cri:c1"));
        assert!(b.unwrap_err().to_string().contains("systemd"));
        let (_d, b) = bundle(&config("/a/../../etc"));
        assert!(b.unwrap_err().to_string().contains(".."));
    }
}
