//! A busybox OCI bundle for container tests, and the `gureum` commands that run it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{GUREUM, Output, busybox_rootfs, scratch};

/// A bundle with a static busybox as its rootfs and `process` merged into a default config.
pub struct Bundle {
    pub dir: PathBuf,
    pub root: PathBuf,
    /// `--isolation`: native or vm.
    pub isolation: &'static str,
    /// A sandbox whose VMM is the stand-in (tests/fixtures/standin-vmm.sh).
    pub standin: bool,
    /// `GUREUM_CGROUP2`: the cgroup2 mount gureum is to use instead of the host's default.
    pub cgroup2: Option<PathBuf>,
}

/// gureum-agent built for this host, for the stand-in VMM: built (or found up to date) once
/// per test binary, as `cargo test` of this package alone does not build it.
fn agent_bin() -> &'static Path {
    static AGENT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    AGENT.get_or_init(|| {
        let dir = Path::new(GUREUM).parent().unwrap();
        let mut cargo = Command::new(env!("CARGO"));
        cargo.args([
            "build",
            "--quiet",
            "-p",
            "gureum-agent",
            "--bin",
            "gureum-agent",
        ]);
        if dir.ends_with("release") {
            cargo.arg("--release");
        }
        assert!(
            cargo.status().unwrap().success(),
            "cargo build -p gureum-agent"
        );
        dir.join("gureum-agent")
    })
}

/// Makes `cmd`'s sandboxes use the stand-in VMM.
pub fn use_standin(cmd: &mut Command) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/standin-vmm.sh");
    cmd.env("GUREUM_SANDBOX_VMM", fixture)
        .env("GUREUM_AGENT_BIN", agent_bin());
}

/// The controllers a cgroup2 mount offers.
pub fn cgroup_controllers(root: &Path) -> String {
    std::fs::read_to_string(root.join("cgroup.controllers")).unwrap()
}

/// The cgroup2 mount to run the v2 path on, and whether gureum must be told of it
/// (`GUREUM_CGROUP2`): a v2 host's /sys/fs/cgroup, which is its default, or a hybrid host's
/// unified hierarchy. None on a host with v1 alone.
pub fn cgroup2() -> Option<(PathBuf, bool)> {
    let v2 = Path::new("/sys/fs/cgroup");
    let unified = v2.join("unified");
    if v2.join("cgroup.controllers").exists() {
        Some((v2.into(), false))
    } else if unified.join("cgroup.controllers").exists() {
        Some((unified, true))
    } else {
        None
    }
}

/// The cgroup layouts for a case to run in: the host's default (None), and a hybrid host's
/// unified hierarchy as cgroup v2, where the default is v1.
pub fn cgroup_layouts() -> Vec<Option<PathBuf>> {
    let named = cgroup2().filter(|(_, named)| *named).map(|(root, _)| root);
    std::iter::once(None).chain(named.map(Some)).collect()
}

impl Bundle {
    /// This bundle, run by gureum with `GUREUM_CGROUP2=root` (its config rewritten for it).
    pub fn in_cgroup2(mut self, root: Option<PathBuf>, process: serde_json::Value) -> Self {
        self.cgroup2 = root;
        self.config(process, |_| {});
        self
    }

    pub fn new(tag: &str, process: serde_json::Value) -> Self {
        Self::with_isolation(tag, process, "native")
    }

    pub fn with_isolation(tag: &str, process: serde_json::Value, isolation: &'static str) -> Self {
        let dir = scratch(tag);
        busybox_rootfs(&dir.join("rootfs"));
        let standin = isolation == "standin";
        let bundle = Self {
            root: dir.join("state"),
            dir,
            isolation: if standin { "vm" } else { isolation },
            standin,
            cgroup2: None,
        };
        bundle.config(process, |_| {});
        bundle
    }

    /// Writes config.json: runc's default spec shape with `process` merged in.
    pub fn config(&self, process: serde_json::Value, edit: impl FnOnce(&mut serde_json::Value)) {
        let mut p = serde_json::json!({
            "terminal": false, "user": {"uid": 0, "gid": 0}, "cwd": "/",
            "env": ["PATH=/bin", "TERM=xterm"], "args": ["true"],
        });
        for (k, v) in process.as_object().unwrap() {
            p[k] = v.clone();
        }
        let mut config = serde_json::json!({
            "ociVersion": "1.0.2", "process": p,
            "root": {"path": "rootfs", "readonly": false}, "hostname": "gureum-test",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
                 "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs",
                 "options": ["nosuid", "noexec", "nodev", "ro"]},
                {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                 "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
            ],
            "linux": {
                "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                               {"type": "uts"}, {"type": "mount"}],
                "resources": {"memory": {"limit": 268435456}, "pids": {"limit": 100}},
                "maskedPaths": ["/proc/kcore", "/proc/keys"],
                "readonlyPaths": ["/proc/sys"]
            }
        });
        if let Some(root) = &self.cgroup2 {
            // The default limits the cgroup2 mount has no controller for (a hybrid host's
            // unified hierarchy has hardly any) would be refused.
            let available = cgroup_controllers(root);
            let resources = config["linux"]["resources"].as_object_mut().unwrap();
            resources.retain(|name, _| available.split_whitespace().any(|c| c == name));
        }
        edit(&mut config);
        std::fs::write(self.dir.join("config.json"), config.to_string()).unwrap();
    }

    /// `gureum --root STATE --isolation ISOLATION ARGS...` (bundle flags are the caller's).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(GUREUM);
        cmd.arg("--root")
            .arg(&self.root)
            .args(["--isolation", self.isolation])
            .args(args);
        if self.standin {
            use_standin(&mut cmd);
        }
        if let Some(root) = &self.cgroup2 {
            cmd.env("GUREUM_CGROUP2", root);
        }
        cmd
    }

    pub fn gureum(&self, args: &[&str]) -> Output {
        super::output_of(&mut self.command(args), None, Duration::from_secs(30))
    }

    /// `create` then `start` of this bundle as container `id`, with `stdout` as the container's
    /// (it keeps create's stdio, as runc's does: nothing else, so nobody waits on its pipes).
    pub fn create_and_start(&self, id: &str, stdout: Stdio) {
        let bundle = self.dir.to_str().unwrap();
        let created = self
            .command(&["create", "--bundle", bundle, id])
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(created.success(), "create {id}");
        let started = self.gureum(&["start", id]);
        assert_eq!(started.code, Some(0), "{}", started.describe());
    }

    /// `gureum run` of this bundle as container `id`.
    pub fn run(&self, id: &str) -> Output {
        let bundle = self.dir.to_str().unwrap().to_string();
        self.gureum(&["run", "--bundle", &bundle, id])
    }

    /// Nothing of container `id` is left: state, cgroups, processes, mounts.
    pub fn assert_gone(&self, id: &str) {
        // A sandbox's VMM names a file of the container's state directory on its command line
        // (its VM's config; the stand-in's agent, the vsock socket); a killed one may take a
        // moment to go.
        let socket = format!("{}/", self.root.join(id).display());
        let socket = socket.as_str();
        let start = Instant::now();
        let alive = || {
            std::fs::read_dir("/proc").unwrap().flatten().any(|p| {
                std::fs::read(p.path().join("cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(socket))
            })
        };
        while alive() {
            assert!(
                start.elapsed() < super::scaled(Duration::from_secs(3)),
                "a VMM of {id} left running"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!self.root.join(id).exists(), "state of {id} left behind");
        // v1's hierarchies, a hybrid host's unified one, a v2 host's.
        for c in ["memory", "pids", "cpu", "devices", "freezer", "unified", ""] {
            let cg = Path::new("/sys/fs/cgroup").join(c).join("gureum").join(id);
            assert!(!cg.exists(), "{} left behind", cg.display());
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let rootfs = self.dir.join("rootfs");
        assert!(
            !mounts.contains(rootfs.to_str().unwrap()),
            "a mount of {id} left behind"
        );
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        // A failed test shows what its sandboxes' guests said: the end of each console log.
        if std::thread::panicking() {
            let logs = std::fs::read_dir(&self.root)
                .into_iter()
                .flatten()
                .flatten();
            for log in logs.map(|e| e.path().join("console.log")) {
                let Ok(text) = std::fs::read_to_string(&log) else {
                    continue;
                };
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(40)..].join("\n");
                eprintln!("--- the end of {}:\n{tail}", log.display());
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A container id for this test. The isolations of one case run at once in one process, and
/// an id names host-wide things (cgroups): the isolation, from the test's name, sets them apart.
pub fn id(tag: &str) -> String {
    let test = std::thread::current()
        .name()
        .unwrap_or_default()
        .to_string();
    let isolation = test
        .rsplit("::")
        .next()
        .filter(|s| ["native", "standin", "vm"].contains(s))
        .unwrap_or("t")
        .to_string();
    format!("{tag}-{}-{isolation}", std::process::id())
}

pub fn wait_for_status(b: &Bundle, id: &str, want: &str) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let out = b.gureum(&["state", id]);
        if let Ok(state) = serde_json::from_str::<serde_json::Value>(&out.stdout)
            && state["status"] == want
        {
            return state;
        }
        assert!(
            start.elapsed() < super::scaled(Duration::from_secs(10)),
            "{id} never {want}: {}",
            out.describe()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
