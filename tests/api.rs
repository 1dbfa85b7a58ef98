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
