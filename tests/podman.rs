//! Podman (Debian's, `--runtime`) driving gureum's native isolation, next to podman driving
//! runc, in the same test: every case runs under both and must come out the same. Podman keeps
//! its images and containers in a scratch store of this test binary's; the image is a busybox
//! root filesystem imported into it. scripts/setup.sh installs podman.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use common::GUREUM;
use common::engine::{self, BOTH, Engine, Runtime};

const IMAGE: &str = "localhost/gureum-test-busybox:latest";

fn runtime_flags(rt: Runtime) -> Vec<String> {
    let flags: &[&str] = match rt {
        Runtime::Runc => &["--runtime", "/usr/sbin/runc"],
        Runtime::Gureum => &["--runtime", GUREUM, "--runtime-flag", "isolation=native"],
    };
    flags.iter().map(|s| s.to_string()).collect()
}

/// The same with gureum's microVM isolation (runc as ever).
fn vm_runtime_flags(rt: Runtime) -> Vec<String> {
    match rt {
        Runtime::Runc => runtime_flags(rt),
        Runtime::Gureum => ["--runtime", GUREUM, "--runtime-flag", "isolation=vm"]
            .map(String::from)
            .to_vec(),
    }
}

/// podman with this test binary's store (no systemd here: cgroupfs, events in a file).
fn podman(run_flags: Vec<String>) -> Engine {
    let mut e = podman_in(store());
    e.run_flags = run_flags;
    e
}

fn podman_in(dir: &std::path::Path) -> Engine {
    let global = [
        "--root".to_string(),
        dir.join("storage").display().to_string(),
        "--runroot".to_string(),
        dir.join("run").display().to_string(),
        "--cgroup-manager".into(),
        "cgroupfs".into(),
        "--events-backend".into(),
        "file".into(),
    ];
    Engine {
        program: "podman",
        global: global.to_vec(),
        runtime_global: runtime_flags,
        runtime_run: |_| Vec::new(),
        image: IMAGE.into(),
        run_flags: Vec::new(),
    }
}

/// This test binary's podman store, with the image imported once.
fn store() -> &'static PathBuf {
    static STORE: OnceLock<PathBuf> = OnceLock::new();
    STORE.get_or_init(|| {
        let dir = common::scratch("podman");
        let rootfs = dir.join("rootfs");
        common::busybox_rootfs(&rootfs);
        let tar = dir.join("rootfs.tar");
        let mut packed = Command::new("tar");
        packed.arg("-C").arg(&rootfs).arg("-cf").arg(&tar).arg(".");
        assert!(packed.status().unwrap().success(), "tar the rootfs");
        let import = ["import", "-q", tar.to_str().unwrap(), IMAGE];
        let out = podman_in(&dir).cmd(Runtime::Runc, &import, None);
        assert_eq!(out.code, Some(0), "podman import: {}", out.describe());
        dir
    })
}

/// podman as this host needs it: podman asks for RLIMIT_NOFILE and NPROC above some hosts'
/// hard limits; the `--ulimit` flags are found by following gureum's error line, which names
/// the limit and the way out, until a container runs. runc must fail and succeed alike at
/// each step.
fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut flags: Vec<String> = Vec::new();
        for _ in 0..4 {
            let e = podman(flags.clone());
            let [runc, gureum] = BOTH.map(|rt| e.run(rt, &[], &["echo", "hi"], None));
            assert_eq!(
                runc.code,
                gureum.code,
                "{}\n{}",
                runc.describe(),
                gureum.describe()
            );
            if gureum.code == Some(0) {
                assert_eq!(
                    (runc.stdout.as_str(), gureum.stdout.as_str()),
                    ("hi\n", "hi\n")
                );
                return e;
            }
            let line = &gureum.stderr;
            let way_out = line
                .split("--ulimit ")
                .nth(1)
                .and_then(|s| s.split(')').next());
            let Some(way_out) = way_out else {
                panic!("no way out named: {}", gureum.describe());
            };
            assert!(line.contains("hard limit here is"), "{}", gureum.describe());
            flags.extend(["--ulimit".to_string(), way_out.to_string()]);
        }
        panic!("still failing with {flags:?}");
    })
}

#[test]
fn podman_run_with_default_settings_works_wherever_runc_s_does() {
    // engine() asserts it: the same outcome under both at each step.
    let e = engine();
    for rt in BOTH {
        let out = e.run(rt, &[], &["sh", "-c", "echo $$"], None);
        assert_eq!(
            out.stdout,
            "1\n",
            "{rt:?} {:?}: {}",
            e.run_flags,
            out.describe()
        );
    }
}

#[test]
fn podman_exit_codes_stdin_and_a_terminal() {
    engine::exit_codes_stdin_and_a_terminal(engine());
}

#[test]
fn podman_detached_exec_pause_stop_kill_and_rm() {
    engine::detached_exec_pause_stop_kill_and_rm(engine());
}

#[test]
fn podman_top_shows_the_process_as_pid_1() {
    let e = engine();
    for rt in BOTH {
        let id = e.detached(rt, &[], &["sleep", "300"]);
        let out = e.cmd(rt, &["top", &id, "pid", "ppid", "args"], None);
        let rows: Vec<String> = (out.stdout.lines().skip(1))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(rows, ["1 0 sleep 300"], "{rt:?}: {}", out.describe());
        let out = e.cmd(rt, &["rm", "-f", &id], None);
        assert_eq!(out.code, Some(0), "{rt:?}: {}", out.describe());
    }
}

#[test]
fn podman_init_passes_sigterm_on() {
    engine::init_passes_sigterm_on(engine());
}

/// podman driving sandboxes next to runc. Both run with `--network none`: podman's default
/// network (netavark) cannot be set up inside the KVM test machine ("netavark: invalid version
/// number"); and with this process's hard NOFILE and NPROC limits, which runc can set (a
/// sandbox sets them in its guest, where podman's higher defaults would pass).
fn vm_engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut e = podman(vec!["--network".into(), "none".into()]);
        e.runtime_global = vm_runtime_flags;
        for (name, resource) in [
            ("nofile", libc::RLIMIT_NOFILE),
            ("nproc", libc::RLIMIT_NPROC),
        ] {
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit fills the struct we pass.
            assert_eq!(unsafe { libc::getrlimit(resource, &mut limit) }, 0);
            let hard = limit.rlim_max;
            e.run_flags
                .extend(["--ulimit".into(), format!("{name}={hard}:{hard}")]);
        }
        e
    })
}

#[test]
#[ignore = "boots a Linux guest: hardware KVM or the KVM test machine (scripts/test.sh runs it there)"]
fn podman_microvm_exit_codes_stdin_and_a_terminal() {
    engine::exit_codes_stdin_and_a_terminal(vm_engine());
}

#[test]
#[ignore = "boots a Linux guest: hardware KVM or the KVM test machine (scripts/test.sh runs it there)"]
fn podman_microvm_detached_exec_pause_stop_kill_and_rm() {
    engine::detached_exec_pause_stop_kill_and_rm(vm_engine());
}

#[test]
#[ignore = "boots a Linux guest: hardware KVM or the KVM test machine (scripts/test.sh runs it there)"]
fn podman_microvm_init_passes_sigterm_on() {
    engine::init_passes_sigterm_on(vm_engine());
}
