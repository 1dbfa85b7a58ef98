//! Podman (Debian's, `--runtime`) driving gureum's native isolation, next to podman driving
//! runc, in the same test: every case runs under both and must come out the same. Podman keeps
//! its images and containers in a scratch store of this test binary's; the image is a busybox
//! root filesystem imported into it. scripts/setup.sh installs podman.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{GUREUM, Output, finish};

const IMAGE: &str = "localhost/gureum-test-busybox:latest";

#[derive(Clone, Copy, Debug)]
enum Runtime {
    Runc,
    Gureum,
}

const BOTH: [Runtime; 2] = [Runtime::Runc, Runtime::Gureum];

/// This test binary's podman store, with the image imported once.
fn store() -> &'static PathBuf {
    static STORE: OnceLock<PathBuf> = OnceLock::new();
    STORE.get_or_init(|| {
        let dir = common::scratch("podman");
        let rootfs = dir.join("rootfs");
        common::busybox_rootfs(&rootfs);
        let tar = dir.join("rootfs.tar");
        let packed = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status();
        assert!(packed.unwrap().success(), "tar the rootfs");
        let out = podman_in(&dir, &["import", "-q", tar.to_str().unwrap(), IMAGE], None);
        assert_eq!(out.code, Some(0), "podman import: {}", out.describe());
        dir
    })
}

/// `podman ARGS` with its store in `dir` and this host's settings (no systemd here).
fn podman_in(dir: &std::path::Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new("podman");
    cmd.arg("--root")
        .arg(dir.join("storage"))
        .arg("--runroot")
        .arg(dir.join("run"))
        .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"])
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("podman (scripts/setup.sh installs it)");
    if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(bytes).unwrap();
    }
    finish(child, Duration::from_secs(60))
}

impl Runtime {
    fn flags(self) -> Vec<String> {
        match self {
            Runtime::Runc => vec!["--runtime".into(), "/usr/sbin/runc".into()],
            Runtime::Gureum => vec![
                "--runtime".into(),
                GUREUM.into(),
                "--runtime-flag".into(),
                "isolation=native".into(),
            ],
        }
    }

    /// `podman --runtime RUNTIME ARGS`.
    fn podman(self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let flags = self.flags();
        let mut all: Vec<&str> = flags.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        podman_in(store(), &all, stdin)
    }
}

/// The `--ulimit` flags this host needs (podman asks for limits above its hard ones): found by
/// following gureum's error line, which names the limit and the way out, until a container
/// runs; runc must fail and succeed alike at each step.
fn ulimits() -> &'static Vec<String> {
    static FLAGS: OnceLock<Vec<String>> = OnceLock::new();
    FLAGS.get_or_init(|| {
        let mut flags: Vec<String> = Vec::new();
        for _ in 0..4 {
            let mut args: Vec<&str> = vec!["run", "--rm"];
            args.extend(flags.iter().map(String::as_str));
            args.extend([IMAGE, "echo", "hi"]);
            let [runc, gureum] = BOTH.map(|rt| rt.podman(&args, None));
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
                return flags;
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

/// `podman run --rm [ulimits] ARGS...` under `rt`.
fn run(rt: Runtime, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut all: Vec<&str> = vec!["run", "--rm"];
    all.extend(ulimits().iter().map(String::as_str));
    all.extend_from_slice(args);
    rt.podman(&all, stdin)
}

#[test]
fn podman_run_with_default_settings_works_wherever_runc_s_does() {
    // ulimits() asserts it: the same outcome under both at each step.
    let flags = ulimits();
    for rt in BOTH {
        let out = run(rt, &[IMAGE, "sh", "-c", "echo $$"], None);
        assert_eq!(out.code, Some(0), "{rt:?} {flags:?}: {}", out.describe());
        assert_eq!(out.stdout, "1\n", "{rt:?}: {}", out.describe());
    }
}

#[test]
fn podman_exit_codes_stdin_and_a_terminal() {
    for rt in BOTH {
        let out = run(rt, &[IMAGE, "sh", "-c", "exit 7"], None);
        assert_eq!(out.code, Some(7), "{rt:?}: {}", out.describe());
        let out = run(rt, &[IMAGE, "no-such-program"], None);
        assert_eq!(out.code, Some(127), "{rt:?}: {}", out.describe());
        let out = run(rt, &["-i", IMAGE, "cat"], Some(b"through stdin\n"));
        assert_eq!(out.code, Some(0), "{rt:?}: {}", out.describe());
        assert_eq!(out.stdout, "through stdin\n", "{rt:?}");
        let out = run(rt, &["-t", IMAGE, "sh", "-c", "tty; echo $$"], None);
        assert_eq!(out.code, Some(0), "{rt:?}: {}", out.describe());
        assert_eq!(
            out.stdout,
            "/dev/pts/0\r\n1\r\n",
            "{rt:?}: {}",
            out.describe()
        );
    }
}

/// `podman run -d [ulimits] IMAGE ARGS...`: the container's id.
fn detached(rt: Runtime, extra: &[&str], args: &[&str]) -> String {
    let mut all: Vec<&str> = vec!["run", "-d"];
    all.extend(ulimits().iter().map(String::as_str));
    all.extend_from_slice(extra);
    all.push(IMAGE);
    all.extend_from_slice(args);
    let out = rt.podman(&all, None);
    assert_eq!(out.code, Some(0), "{rt:?}: {}", out.describe());
    out.stdout.trim().to_string()
}

fn inspect(rt: Runtime, id: &str, format: &str) -> String {
    let out = rt.podman(&["inspect", "-f", format, id], None);
    assert_eq!(out.code, Some(0), "{rt:?}: {}", out.describe());
    out.stdout.trim().to_string()
}

/// `podman top`'s rows: (pid, ppid, command), the header dropped.
fn top(rt: Runtime, id: &str) -> Vec<(String, String, String)> {
    let out = rt.podman(&["top", id, "pid", "ppid", "args"], None);
    assert_eq!(out.code, Some(0), "{rt:?}: {}", out.describe());
    let rows = out.stdout.lines().skip(1).map(|l| {
        let mut words = l.split_whitespace();
        let (pid, ppid) = (
            words.next().unwrap_or_default(),
            words.next().unwrap_or_default(),
        );
        (
            pid.to_string(),
            ppid.to_string(),
            words.collect::<Vec<_>>().join(" "),
        )
    });
    rows.collect()
}

#[test]
fn podman_detached_exec_top_pause_stop_kill_and_rm() {
    for rt in BOTH {
        let id = detached(rt, &[], &["sleep", "300"]);
        let exec = rt.podman(&["exec", &id, "sh", "-c", "echo exec-ok"], None);
        assert_eq!(
            (exec.code, exec.stdout.as_str()),
            (Some(0), "exec-ok\n"),
            "{rt:?}"
        );
        let want = [("1".to_string(), "0".to_string(), "sleep 300".to_string())];
        assert_eq!(top(rt, &id), want, "{rt:?}");
        assert_eq!(rt.podman(&["pause", &id], None).code, Some(0), "{rt:?}");
        assert_eq!(inspect(rt, &id, "{{.State.Status}}"), "paused", "{rt:?}");
        assert_eq!(rt.podman(&["unpause", &id], None).code, Some(0), "{rt:?}");
        // The PID-1 sleep ignores SIGTERM: stop waits its 2 s, then SIGKILLs it.
        let asked = Instant::now();
        let stop = rt.podman(&["stop", "-t", "2", &id], None);
        assert_eq!(stop.code, Some(0), "{rt:?}: {}", stop.describe());
        assert!(
            asked.elapsed() >= Duration::from_secs(2),
            "{rt:?}: stopped by SIGTERM"
        );
        assert_eq!(inspect(rt, &id, "{{.State.ExitCode}}"), "137", "{rt:?}");
        assert_eq!(rt.podman(&["rm", &id], None).code, Some(0), "{rt:?}");

        let id = detached(rt, &[], &["sleep", "300"]);
        assert_eq!(rt.podman(&["kill", &id], None).code, Some(0), "{rt:?}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while inspect(rt, &id, "{{.State.Status}}") != "exited" {
            assert!(Instant::now() < deadline, "{rt:?}: kill did not end it");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(inspect(rt, &id, "{{.State.ExitCode}}"), "137", "{rt:?}");
        assert_eq!(rt.podman(&["rm", &id], None).code, Some(0), "{rt:?}");
    }
}

#[test]
fn podman_init_is_pid_1_and_passes_sigterm_on() {
    for rt in BOTH {
        let id = detached(rt, &["--init"], &["sleep", "300"]);
        let rows = top(rt, &id);
        assert_eq!(rows.len(), 2, "{rt:?}: {rows:?}");
        assert_eq!(
            (rows[0].0.as_str(), rows[0].1.as_str()),
            ("1", "0"),
            "{rt:?}"
        );
        assert!(rows[0].2.contains("podman-init"), "{rt:?}: {rows:?}");
        assert_eq!(
            (rows[1].1.as_str(), rows[1].2.as_str()),
            ("1", "sleep 300"),
            "{rt:?}"
        );
        let stop = rt.podman(&["stop", "-t", "20", &id], None);
        assert_eq!(stop.code, Some(0), "{rt:?}: {}", stop.describe());
        assert_eq!(inspect(rt, &id, "{{.State.ExitCode}}"), "143", "{rt:?}");
        assert_eq!(rt.podman(&["rm", &id], None).code, Some(0), "{rt:?}");
    }
}
