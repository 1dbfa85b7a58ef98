//! The API socket (`gureum boot --api-sock`), driven by a real client, curl, as a user of
//! Firecracker's API would: the test guest counts on its console ("count: N"), a pause stops
//! the count and a resume goes on from the same number; requests that are wrong get 400 with
//! a fault message; the socket is gone when the VM is.

mod common;

use std::process::Command;
use std::time::Duration;

use common::api::{Vm, json};
use common::{GUREUM, scratch, test_guest};

#[test]
fn a_paused_guest_stops_counting_and_a_resumed_one_goes_on_from_the_same_number() {
    require_kvm!();
    let dir = scratch("api");
    let vm = Vm::start(&dir, &[]);
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
    let vm = Vm::start(&dir, &[]);
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
        ("PUT", "/actions", Some("{}"), "missing field `action_type`"),
        (
            "PUT",
            "/actions",
            Some(r#"{"action_type": "InstanceStart"}"#),
            "not supported after starting",
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
    let mut vm = Vm::start(&dir, &[]);
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
    let again = Vm::start(&dir, &[]);
    again.wait_for_count(1);
    assert_eq!(again.curl("GET", "/", None).0, 200);
}

/// `PUT /actions` SendCtrlAltDel presses the keys on the i8042 keyboard: the test guest,
/// polling it, prints them (scancode set 2: Ctrl, Alt, the extended Delete) and resets.
#[test]
fn send_ctrl_alt_del_reaches_the_guest_s_keyboard() {
    require_kvm!();
    let dir = scratch("api-cad");
    let kernel = test_guest().to_str().unwrap();
    let cmdline = "console=ttyS0 scenario=keyboard";
    let mut vm = Vm::spawn(
        &dir,
        "console.txt",
        &["boot", "--kernel", kernel, "--cmdline", cmdline],
    );
    vm.wait_for("keyboard: waiting", Duration::from_secs(10));
    assert_eq!(
        vm.curl(
            "PUT",
            "/actions",
            Some(r#"{"action_type": "SendCtrlAltDel"}"#)
        ),
        (204, String::new())
    );
    vm.wait_for("keyboard: 0x14 0x11 0xe0 0x71\n", Duration::from_secs(20));
    let status = vm.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", vm.console());
}

/// Waits until the API socket answers (a VM waiting to be configured prints nothing).
fn wait_for_api(vm: &Vm) {
    let deadline = std::time::Instant::now() + common::scaled(Duration::from_secs(10));
    while std::os::unix::net::UnixStream::connect(&vm.sock).is_err() {
        assert!(std::time::Instant::now() < deadline, "{}", vm.stderr());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `--api-sock` alone: the VM waits to be configured through the API, as Firecracker's does:
/// boot source and machine config, then InstanceStart. What cannot start says why in a 400,
/// and the configuration can be fixed and started again.
#[test]
fn a_vm_configured_through_the_api_starts_on_instance_start() {
    require_kvm!();
    let dir = scratch("api-setup");
    let vm = Vm::spawn_typed(&dir, "setup.txt", &["boot"]);
    wait_for_api(&vm);
    let (code, body) = vm.curl("GET", "/", None);
    assert_eq!(
        (code, json(&body)["state"].as_str()),
        (200, Some("Not started"))
    );
    for (method, path, body, says) in [
        ("PATCH", "/vm", r#"{"state": "Paused"}"#, "before starting"),
        (
            "PUT",
            "/drives/a",
            r#"{"drive_id": "b", "path_on_host": "/x", "is_root_device": false}"#,
            "differ",
        ),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 1}"#,
            "mem_size_mib",
        ),
        (
            "PUT",
            "/boot-source",
            r#"{"kernel_image_path": "/x", "bogus": 1}"#,
            "unknown field",
        ),
        (
            "PUT",
            "/actions",
            r#"{"action_type": "InstanceStart"}"#,
            "cannot start the microVM: no kernel",
        ),
    ] {
        let (code, answer) = vm.curl(method, path, Some(body));
        assert_eq!(code, 400, "{method} {path}: {answer}");
        let fault = json(&answer)["fault_message"].as_str().unwrap().to_string();
        assert!(fault.contains(says), "{method} {path}: {fault}");
    }
    let missing = r#"{"kernel_image_path": "/nonexistent/vmlinux"}"#;
    assert_eq!(vm.curl("PUT", "/boot-source", Some(missing)).0, 204);
    let (code, answer) = vm.curl(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    );
    assert_eq!(code, 400, "{answer}");
    assert!(answer.contains("/nonexistent/vmlinux"), "{answer}");

    let boot = serde_json::json!({"kernel_image_path": test_guest(),
        "boot_args": "console=ttyS0 scenario=count every=67108864"});
    assert_eq!(
        vm.curl("PUT", "/boot-source", Some(&boot.to_string())).0,
        204
    );
    let machine = r#"{"vcpu_count": 2, "mem_size_mib": 64}"#;
    assert_eq!(vm.curl("PUT", "/machine-config", Some(machine)).0, 204);
    assert_eq!(
        vm.curl("PATCH", "/machine-config", Some(r#"{"vcpu_count": 3}"#))
            .0,
        204
    );
    let (_, body) = vm.curl("GET", "/machine-config", None);
    let config = json(&body);
    assert_eq!(
        (
            config["vcpu_count"].as_u64(),
            config["mem_size_mib"].as_u64()
        ),
        (Some(3), Some(64))
    );
    let start = r#"{"action_type": "InstanceStart"}"#;
    assert_eq!(
        vm.curl("PUT", "/actions", Some(start)),
        (204, String::new())
    );
    vm.wait_for_count(2);
    assert!(vm.console().contains("cpus: 3"), "{}", vm.console());
    let (code, body) = vm.curl("GET", "/", None);
    assert_eq!(
        (code, json(&body)["state"].as_str()),
        (200, Some("Running"))
    );
    assert_eq!(
        vm.curl("PUT", "/boot-source", Some(&boot.to_string())).0,
        400
    );
}

/// `PUT /snapshot/load` into a VM waiting for the API: paused unless `resume_vm`, then on from
/// where the snapshot was. Flags meant for a VM the API configures are refused in one line.
#[test]
fn a_snapshot_loads_through_the_api_paused_and_resumes_where_it_was() {
    require_kvm!();
    let dir = scratch("api-load");
    let mut vm = Vm::start(&dir, &[]);
    vm.wait_for_count(2);
    let (state, mem) = (dir.join("s"), dir.join("m"));
    let out = common::output_of(
        Command::new(GUREUM)
            .args(["snapshot", "--leave-paused", "--api-sock"])
            .arg(&vm.sock)
            .arg("--snapshot")
            .arg(&state)
            .arg("--mem")
            .arg(&mem),
        None,
        Duration::from_secs(60),
    );
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let before = vm.console();
    let last = *vm.counts().last().unwrap();
    let _ = vm.child.kill();
    let _ = vm.child.wait();

    let loaded = Vm::spawn_typed(&dir, "loaded.txt", &["boot"]);
    wait_for_api(&loaded);
    let load = serde_json::json!({"snapshot_path": state,
        "mem_backend": {"backend_type": "File", "backend_path": mem}});
    assert_eq!(
        loaded.curl("PUT", "/snapshot/load", Some(&load.to_string())),
        (204, String::new())
    );
    let (_, body) = loaded.curl("GET", "/", None);
    assert_eq!(json(&body)["state"].as_str(), Some("Paused"));
    std::thread::sleep(Duration::from_millis(300));
    assert!(loaded.counts().is_empty(), "{}", loaded.console());
    assert_eq!(
        loaded
            .curl("PATCH", "/vm", Some(r#"{"state": "Resumed"}"#))
            .0,
        204
    );
    loaded.wait_for_count(last + 2);
    let whole = format!("{before}{}", loaded.console());
    let counts: Vec<u64> = whole
        .lines()
        .filter_map(|l| l.strip_prefix("count: ")?.parse().ok())
        .collect();
    assert_eq!(
        counts,
        (1..=counts.len() as u64).collect::<Vec<_>>(),
        "{whole}"
    );

    let out = common::output_of(
        Command::new(GUREUM)
            .args(["boot", "--vcpus", "2", "--api-sock"])
            .arg(dir.join("x.sock")),
        None,
        Duration::from_secs(30),
    );
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert!(
        out.stderr.contains("configured through the API"),
        "{}",
        out.describe()
    );
    assert!(!dir.join("x.sock").exists());
}
