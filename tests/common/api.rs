//! A VM with an API socket, and curl as the client: what the API and snapshot tests drive.
//! Mostly the test guest counting on its console ("count: N"); a Linux guest's shell, typed
//! into, for the snapshot test in the KVM test machine.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{GUREUM, scaled, test_guest};

/// gureum, killed if the test fails before it ends.
pub struct Vm {
    pub child: Child,
    pub console: PathBuf,
    pub sock: PathBuf,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Vm {
    /// The test guest, counting, with `extra` flags.
    pub fn start(dir: &Path, extra: &[&str]) -> Self {
        let kernel = test_guest().to_str().unwrap();
        let args = ["boot", "--kernel", kernel, "--cmdline"];
        let mut all: Vec<&str> = args.to_vec();
        all.push("console=ttyS0 scenario=count every=67108864");
        all.extend_from_slice(extra);
        Self::spawn(dir, "console.txt", &all)
    }

    /// `gureum restore` of the snapshot `state` with memory `mem`, its console in `name`.
    pub fn restore(dir: &Path, name: &str, state: &Path, mem: &Path) -> Self {
        let (state, mem) = (state.to_str().unwrap(), mem.to_str().unwrap());
        let args = ["restore", "--snapshot", state, "--mem", mem];
        Self::spawn(dir, name, &args)
    }

    /// gureum with `args` (boot or restore), its console in `name`, input from a pipe that
    /// [`Self::type_line`] writes to.
    pub fn spawn_typed(dir: &Path, name: &str, args: &[&str]) -> Self {
        Self::spawn_with(dir, name, args, Stdio::piped())
    }

    /// Types `line` and Enter on the guest's console (a VM from [`Self::spawn_typed`]).
    pub fn type_line(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().expect("a VM with typed input");
        std::io::Write::write_all(stdin, format!("{line}\n").as_bytes()).unwrap();
    }

    /// Waits until the console shows `text`.
    pub fn wait_for(&self, text: &str, within: Duration) {
        let deadline = Instant::now() + scaled(within);
        while !self.console().contains(text) {
            assert!(
                Instant::now() < deadline,
                "no {text:?} on the console:\n{}\n{}",
                self.console(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// gureum with `args` (boot or restore) and an API socket, its console in `name`.
    pub fn spawn(dir: &Path, name: &str, args: &[&str]) -> Self {
        Self::spawn_with(dir, name, args, Stdio::null())
    }

    fn spawn_with(dir: &Path, name: &str, args: &[&str], stdin: Stdio) -> Self {
        let sock = dir.join(format!("{name}.sock"));
        let console = dir.join(name);
        let timeout = super::timeout_secs(300);
        let child = Command::new(GUREUM)
            .args(args)
            .args(["--timeout", &timeout, "--api-sock", sock.to_str().unwrap()])
            .stdin(stdin)
            .stdout(std::fs::File::create(&console).unwrap())
            .stderr(std::fs::File::create(dir.join(format!("{name}.err"))).unwrap())
            .spawn()
            .unwrap();
        Self {
            child,
            console,
            sock,
        }
    }

    pub fn stderr(&self) -> String {
        let err = self.console.with_file_name(format!(
            "{}.err",
            self.console.file_name().unwrap().to_str().unwrap()
        ));
        std::fs::read_to_string(err).unwrap_or_default()
    }

    pub fn console(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// The numbers the guest has printed, in order.
    pub fn counts(&self) -> Vec<u64> {
        let text = self.console();
        // Only whole lines: the last may be half written.
        let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        (whole.lines())
            .filter_map(|l| l.strip_prefix("count: ")?.parse().ok())
            .collect()
    }

    pub fn wait_for_count(&self, at_least: u64) -> Vec<u64> {
        let deadline = Instant::now() + scaled(Duration::from_secs(20));
        loop {
            let counts = self.counts();
            if counts.last().is_some_and(|&n| n >= at_least) {
                return counts;
            }
            assert!(
                Instant::now() < deadline,
                "the guest did not count to {at_least}:\n{}\n{}",
                self.console(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// curl's answer: the status code and the body.
    pub fn curl(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-S", "--max-time", "60", "-w", "\n%{http_code}"])
            .arg("--unix-socket")
            .arg(&self.sock)
            .args(["-X", method, &format!("http://localhost{path}")]);
        if let Some(body) = body {
            cmd.args(["-H", "Content-Type: application/json", "-d", body]);
        }
        let out = cmd.output().expect("curl (scripts/setup.sh installs it)");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        let code = code.trim().parse().unwrap_or_else(|_| {
            panic!(
                "curl {method} {path}: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (code, body.to_string())
    }
}

pub fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{body}: {e}"))
}
