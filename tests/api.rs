//! The API socket (`gureum boot --api-sock`), driven by a real client, curl, as a user of
//! Firecracker's API would: the test guest counts on its console ("count: N"), a pause stops
//! the count and a resume goes on from the same number; requests that are wrong get 400 with
//! a fault message; the socket is gone when the VM is.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{GUREUM, scaled, scratch, test_guest};

/// gureum, killed if the test fails before it ends.
struct Vm {
    child: Child,
    console: PathBuf,
    sock: PathBuf,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Vm {
    fn start(dir: &Path) -> Self {
        let sock = dir.join("api.sock");
        let console = dir.join("console.txt");
        let child = Command::new(GUREUM)
            .args(["boot", "--kernel", test_guest().to_str().unwrap()])
            .args(["--cmdline", "console=ttyS0 scenario=count every=67108864"])
            .args(["--timeout", "300", "--api-sock", sock.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&console).unwrap())
            .stderr(std::fs::File::create(dir.join("stderr.txt")).unwrap())
            .spawn()
            .unwrap();
        Self {
            child,
            console,
            sock,
        }
    }

    fn console(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// The numbers the guest has printed, in order.
    fn counts(&self) -> Vec<u64> {
        let text = self.console();
        // Only whole lines: the last may be half written.
        let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        (whole.lines())
            .filter_map(|l| l.strip_prefix("count: ")?.parse().ok())
            .collect()
    }

    fn wait_for_count(&self, at_least: u64) -> Vec<u64> {
        let deadline = Instant::now() + scaled(Duration::from_secs(20));
        loop {
            let counts = self.counts();
            if counts.last().is_some_and(|&n| n >= at_least) {
                return counts;
            }
            assert!(
                Instant::now() < deadline,
                "the guest did not count to {at_least}:\n{}",
                self.console()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// curl's answer: the status code and the body.
    fn curl(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
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

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{body}: {e}"))
}

#[test]
fn a_paused_guest_stops_counting_and_a_resumed_one_goes_on_from_the_same_number() {
    require_kvm!();
    let dir = scratch("api");
    let vm = Vm::start(&dir);
    vm.wait_for_count(3);
    let (code, body) = vm.curl("GET", "/", None);
    assert_eq!(
        (code, json(&body)["state"].as_str()),
        (200, Some("Running"))
    );

    assert_eq!(
        vm.curl("PATCH", "/vm", Some(r#"{"state": "Paused"}"#)),
        (204, String::new())
    );
    let held = vm.console();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(vm.console(), held, "the guest ran on while paused");
    let (code, body) = vm.curl("GET", "/", None);
    assert_eq!((code, json(&body)["state"].as_str()), (200, Some("Paused")));
    // Paused twice is paused.
    assert_eq!(
        vm.curl("PATCH", "/vm", Some(r#"{"state": "Paused"}"#)).0,
        204
    );
    let last = *vm.counts().last().unwrap();

    assert_eq!(
        vm.curl("PATCH", "/vm", Some(r#"{"state": "Resumed"}"#)),
        (204, String::new())
    );
    let counts = vm.wait_for_count(last + 3);
    let expected: Vec<u64> = (1..=counts.len() as u64).collect();
    assert_eq!(counts, expected, "the count skipped or repeated");
    let (code, body) = vm.curl("GET", "/machine-config", None);
    let config = json(&body);
    assert_eq!(
        (
            code,
            config["vcpu_count"].as_u64(),
            config["mem_size_mib"].as_u64()
        ),
        (200, Some(1), Some(128))
    );
}

#[test]
fn wrong_requests_get_400_and_a_fault_message_and_the_vm_runs_on() {
    require_kvm!();
    let dir = scratch("api-bad");
    let vm = Vm::start(&dir);
    vm.wait_for_count(1);
    for (method, path, body, says) in [
        (
            "GET",
            "/nowhere",
            None,
            "Invalid request method and/or path",
        ),
        (
            "PATCH",
            "/vm",
            Some("{\"state\":"),
            "deserializing the json body",
        ),
        (
            "PATCH",
            "/vm",
            Some(r#"{"state": "Asleep"}"#),
            "unknown state",
        ),
        (
            "PUT",
            "/boot-source",
            Some("{}"),
            "not supported after starting",
        ),
        (
            "PUT",
            "/actions",
            Some("{}"),
            "Invalid request method and/or path",
        ),
    ] {
        let (code, answer) = vm.curl(method, path, body);
        assert_eq!(code, 400, "{method} {path}: {answer}");
        let fault = json(&answer)["fault_message"].as_str().unwrap().to_string();
        assert!(fault.contains(says), "{method} {path}: {fault}");
    }
    // Not HTTP at all: a 400, the connection closed, the API still served.
    let mut raw = std::os::unix::net::UnixStream::connect(&vm.sock).unwrap();
    std::io::Write::write_all(&mut raw, b"\x01\x02 hello\r\n\r\n").unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut raw, &mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    let before = vm.counts().len();
    vm.wait_for_count(u64::try_from(before).unwrap() + 2);
    assert_eq!(vm.curl("GET", "/", None).0, 200);
}

#[test]
fn the_socket_is_one_vm_s_and_goes_with_it() {
    require_kvm!();
    let dir = scratch("api-sock");
    let mut vm = Vm::start(&dir);
    vm.wait_for_count(1);
    // A second VM on the same socket is refused in one line, before it boots.
    let out = common::output_of(
        Command::new(GUREUM)
            .args(["boot", "--kernel", test_guest().to_str().unwrap()])
            .args(["--api-sock", vm.sock.to_str().unwrap()]),
        None,
        Duration::from_secs(30),
    );
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert!(
        out.stderr
            .starts_with("gureum: cannot listen on the API socket ")
            && out.stderr.lines().count() == 1,
        "{}",
        out.describe()
    );
    assert_eq!(vm.curl("GET", "/", None).0, 200);
    // SAFETY: signals our own child.
    unsafe { libc::kill(i32::try_from(vm.child.id()).unwrap(), libc::SIGTERM) };
    let status = vm.child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM));
    assert!(!vm.sock.exists(), "the API socket outlived its VM");
    // A socket file left by a VMM that is gone (SIGKILL) is taken over.
    let listener = std::os::unix::net::UnixListener::bind(&vm.sock).unwrap();
    drop(listener);
    let again = Vm::start(&dir);
    again.wait_for_count(1);
    assert_eq!(again.curl("GET", "/", None).0, 200);
}
