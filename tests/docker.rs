//! Docker (Debian's docker.io 20.10, `--add-runtime`) driving gureum's native isolation (and,
//! in the KVM test machine, its sandboxes), next to docker driving runc, in the same test: every case runs under both and must come out the
//! same. The test starts a private dockerd (its own data and exec roots and socket; no bridge
//! and no iptables rules, so it leaves the host's network alone: containers get network none)
//! and stops it at the end; the image is a busybox root filesystem imported into it. gureum is
//! reached through a wrapper, as a runtime name maps to a binary, not flags.
//! scripts/setup.sh installs docker.io.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::GUREUM;
use common::engine::{self, Engine, Runtime};

const IMAGE: &str = "gureum-test-busybox:latest";

/// A private dockerd, stopped on drop.
struct Dockerd {
    dir: PathBuf,
    daemon: Child,
}

impl Dockerd {
    fn start() -> Self {
        let dir = common::scratch("docker");
        let mut runtimes = Vec::new();
        for isolation in ["native", "vm"] {
            let wrapper = dir.join(format!("gureum-{isolation}"));
            let script = format!("#!/bin/sh\nexec '{GUREUM}' --isolation {isolation} \"$@\"\n");
            std::fs::write(&wrapper, script).unwrap();
            let mut perms = std::fs::metadata(&wrapper).unwrap().permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
            std::fs::set_permissions(&wrapper, perms).unwrap();
            runtimes.extend([
                "--add-runtime".to_string(),
                format!("gureum-{isolation}={}", wrapper.display()),
            ]);
        }
        let path = |name: &str| dir.join(name).display().to_string();
        let daemon = Command::new("dockerd")
            .args(["--data-root", &path("data"), "--exec-root", &path("exec")])
            .args([
                "--pidfile",
                &path("docker.pid"),
                "-H",
                &format!("unix://{}", path("sock")),
            ])
            .args(["--bridge", "none", "--iptables=false", "--ip6tables=false"])
            .args(&runtimes)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("dockerd.log")).unwrap())
            .spawn()
            .expect("dockerd (scripts/setup.sh installs docker.io)");
        let me = Self { dir, daemon };
        let deadline = Instant::now() + common::scaled(Duration::from_secs(30));
        while me.engine(false).cmd(Runtime::Runc, &["version"], None).code != Some(0) {
            assert!(
                Instant::now() < deadline,
                "dockerd never answered: {}",
                me.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        me
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    /// Docker with runc, or gureum in native isolation (`vm`: in microVM isolation).
    fn engine(&self, vm: bool) -> Engine {
        let runtime_run: fn(Runtime) -> Vec<String> = match vm {
            false => |rt| run_flags(rt, "gureum-native"),
            true => |rt| run_flags(rt, "gureum-vm"),
        };
        Engine {
            program: "docker",
            global: vec![
                "-H".into(),
                format!("unix://{}", self.dir.join("sock").display()),
            ],
            runtime_global: |_| Vec::new(),
            runtime_run,
            image: IMAGE.into(),
            run_flags: Vec::new(),
        }
    }

    fn import_image(&self) {
        let rootfs = self.dir.join("rootfs");
        common::busybox_rootfs(&rootfs);
        let tar = self.dir.join("rootfs.tar");
        tar_of(&rootfs, &tar);
        let import = ["import", tar.to_str().unwrap(), IMAGE];
        let out = self.engine(false).cmd(Runtime::Runc, &import, None);
        assert_eq!(out.code, Some(0), "docker import: {}", out.describe());
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // SAFETY: signals our own child, dockerd, which then stops its containerd too.
        unsafe { libc::kill(i32::try_from(self.daemon.id()).unwrap_or(-1), libc::SIGTERM) };
        let _ = self.daemon.wait();
    }
}

fn run_flags(rt: Runtime, gureum: &str) -> Vec<String> {
    let name = if rt == Runtime::Gureum {
        gureum
    } else {
        "runc"
    };
    vec!["--runtime".into(), name.into()]
}

fn tar_of(dir: &Path, tar: &Path) {
    let mut cmd = Command::new("tar");
    cmd.arg("-C").arg(dir).arg("-cf").arg(tar).arg(".");
    assert!(cmd.status().unwrap().success(), "tar {}", dir.display());
}

/// One daemon for all the cases (each starts in seconds; they run one after another).
#[test]
fn docker_drives_gureum_as_it_drives_runc() {
    let d = Dockerd::start();
    d.import_image();
    let e = d.engine(false);
    engine::exit_codes_stdin_and_a_terminal(&e);
    engine::detached_exec_pause_stop_kill_and_rm(&e);
    engine::init_passes_sigterm_on(&e);
}

/// The same cases with gureum's microVM isolation.
#[test]
#[ignore = "boots a Linux guest: hardware KVM or the KVM test machine (scripts/test.sh runs it there)"]
fn docker_drives_gureum_sandboxes_as_it_drives_runc() {
    let d = Dockerd::start();
    d.import_image();
    let e = d.engine(true);
    engine::exit_codes_stdin_and_a_terminal(&e);
    engine::detached_exec_pause_stop_kill_and_rm(&e);
    engine::init_passes_sigterm_on(&e);
}
