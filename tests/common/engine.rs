//! A container engine (podman, docker) driving runc or gureum (native, or sandboxes) on the same
//! image, and the cases both engines' tests run under each runtime and compare.

use std::process::Command;
use std::time::{Duration, Instant};

use super::Output;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    Runc,
    Gureum,
}

pub const BOTH: [Runtime; 2] = [Runtime::Runc, Runtime::Gureum];

pub struct Engine {
    pub program: &'static str,
    /// Flags before the command: a private store, or a private daemon's socket.
    pub global: Vec<String>,
    /// Flags before the command that pick each runtime (podman's way).
    pub runtime_global: fn(Runtime) -> Vec<String>,
    /// Flags of `run` that pick each runtime (docker's way).
    pub runtime_run: fn(Runtime) -> Vec<String>,
    pub image: String,
    /// Flags every `run` needs on this host.
    pub run_flags: Vec<String>,
}

impl Engine {
    /// `ENGINE ARGS` for `rt`, `stdin` written to it.
    pub fn cmd(&self, rt: Runtime, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut cmd = Command::new(self.program);
        cmd.args(&self.global)
            .args((self.runtime_global)(rt))
            .args(args);
        // 5 min in the KVM test machine: a command that hangs fails with its output, in time
        // for the others to run.
        let start = Instant::now();
        let out = super::output_of(&mut cmd, stdin, Duration::from_secs(15));
        // Shown with a failing test's output (or live with --nocapture).
        eprintln!(
            "{} {args:?} ({rt:?}): {:?} in {:.1?}",
            self.program,
            out.code,
            start.elapsed()
        );
        out
    }

    /// `run MODE [flags] EXTRA IMAGE ARGS` (MODE: --rm or -d).
    fn run_args(&self, rt: Runtime, mode: &str, extra: &[&str], args: &[&str]) -> Vec<String> {
        let mut all = vec!["run".to_string(), mode.to_string()];
        all.extend((self.runtime_run)(rt));
        all.extend(self.run_flags.iter().cloned());
        all.extend(extra.iter().map(|s| s.to_string()));
        all.push(self.image.clone());
        all.extend(args.iter().map(|s| s.to_string()));
        all
    }

    /// `run --rm`, in the foreground.
    pub fn run(&self, rt: Runtime, extra: &[&str], args: &[&str], stdin: Option<&[u8]>) -> Output {
        let all = self.run_args(rt, "--rm", extra, args);
        self.cmd(
            rt,
            &all.iter().map(String::as_str).collect::<Vec<_>>(),
            stdin,
        )
    }

    /// `run -d`: the container's id.
    pub fn detached(&self, rt: Runtime, extra: &[&str], args: &[&str]) -> String {
        let all = self.run_args(rt, "-d", extra, args);
        let out = self.cmd(
            rt,
            &all.iter().map(String::as_str).collect::<Vec<_>>(),
            None,
        );
        assert_eq!(out.code, Some(0), "{rt:?}: {}", out.describe());
        out.stdout.trim().to_string()
    }

    pub fn inspect(&self, rt: Runtime, id: &str, format: &str) -> String {
        let out = self.cmd(rt, &["inspect", "-f", format, id], None);
        assert_eq!(out.code, Some(0), "{rt:?}: {}", out.describe());
        out.stdout.trim().to_string()
    }

    fn ok(&self, rt: Runtime, args: &[&str]) {
        let out = self.cmd(rt, args, None);
        assert_eq!(out.code, Some(0), "{rt:?} {args:?}: {}", out.describe());
    }

    /// Waits until container `id` has exited; its exit code.
    fn exit_code(&self, rt: Runtime, id: &str) -> String {
        let deadline = Instant::now() + super::scaled(Duration::from_secs(10));
        while self.inspect(rt, id, "{{.State.Status}}") != "exited" {
            assert!(Instant::now() < deadline, "{rt:?}: {id} never exited");
            std::thread::sleep(Duration::from_millis(100));
        }
        self.inspect(rt, id, "{{.State.ExitCode}}")
    }
}

/// The process is PID 1; exit codes (its own, 127 for no executable); stdin with `-i`; a
/// terminal with `-t`.
pub fn exit_codes_stdin_and_a_terminal(e: &Engine) {
    for rt in BOTH {
        let out = e.run(rt, &[], &["sh", "-c", "echo $$"], None);
        assert_eq!(
            (out.code, out.stdout.as_str()),
            (Some(0), "1\n"),
            "{rt:?}: {}",
            out.describe()
        );
        let out = e.run(rt, &[], &["sh", "-c", "exit 7"], None);
        assert_eq!(out.code, Some(7), "{rt:?}: {}", out.describe());
        let out = e.run(rt, &[], &["no-such-program"], None);
        assert_eq!(out.code, Some(127), "{rt:?}: {}", out.describe());
        let out = e.run(rt, &["-i"], &["cat"], Some(b"through stdin\n"));
        assert_eq!(out.stdout, "through stdin\n", "{rt:?}: {}", out.describe());
        let out = e.run(rt, &["-t"], &["sh", "-c", "tty; echo $$"], None);
        assert_eq!(out.code, Some(0), "{rt:?}: {}", out.describe());
        assert_eq!(
            out.stdout,
            "/dev/pts/0\r\n1\r\n",
            "{rt:?}: {}",
            out.describe()
        );
    }
}

/// A detached container: exec, pause and unpause, stop (the PID-1 sleep ignores SIGTERM, so
/// stop waits its 2 s and SIGKILLs: 137), kill (137), rm.
pub fn detached_exec_pause_stop_kill_and_rm(e: &Engine) {
    for rt in BOTH {
        let id = e.detached(rt, &[], &["sleep", "300"]);
        let exec = e.cmd(rt, &["exec", &id, "sh", "-c", "echo exec-ok"], None);
        assert_eq!(
            (exec.code, exec.stdout.as_str()),
            (Some(0), "exec-ok\n"),
            "{rt:?}"
        );
        e.ok(rt, &["pause", &id]);
        assert_eq!(e.inspect(rt, &id, "{{.State.Status}}"), "paused", "{rt:?}");
        e.ok(rt, &["unpause", &id]);
        let asked = Instant::now();
        e.ok(rt, &["stop", "-t", "2", &id]);
        assert!(
            asked.elapsed() >= Duration::from_secs(2),
            "{rt:?}: stopped by SIGTERM"
        );
        assert_eq!(e.exit_code(rt, &id), "137", "{rt:?}");
        e.ok(rt, &["rm", &id]);

        let id = e.detached(rt, &[], &["sleep", "300"]);
        e.ok(rt, &["kill", &id]);
        assert_eq!(e.exit_code(rt, &id), "137", "{rt:?}");
        e.ok(rt, &["rm", &id]);
    }
}

/// With `--init` the engine's init is PID 1 in front of the process and passes SIGTERM on: stop
/// ends the sleep well before its 60 s timeout (143).
pub fn init_passes_sigterm_on(e: &Engine) {
    for rt in BOTH {
        let id = e.detached(rt, &["--init"], &["sleep", "300"]);
        let asked = Instant::now();
        e.ok(rt, &["stop", "-t", "60", &id]);
        assert!(
            asked.elapsed() < Duration::from_secs(30),
            "{rt:?}: SIGTERM not passed on"
        );
        assert_eq!(e.exit_code(rt, &id), "143", "{rt:?}");
        e.ok(rt, &["rm", &id]);
    }
}
