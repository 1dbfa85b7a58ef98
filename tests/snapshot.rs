//! Snapshots through the API (PUT /snapshot/create, Firecracker's call) and `gureum restore`,
//! as a user would run them. Host half: a test guest counting on its console is paused,
//! snapshotted and killed; guest half: its count, which a restore in a new process must go on
//! with, one number after the other, as if nothing had happened.

mod common;

use std::path::Path;
use std::time::Duration;

use common::api::{Vm, json};
use common::{GUREUM, output_of, scratch};

/// Pauses `vm`, snapshots it into `dir` (state `s`, memory `m`), and kills it: the console it
/// printed.
fn snapshot_and_kill(mut vm: Vm, dir: &Path) -> String {
    let body = format!(
        r#"{{"snapshot_type": "Full", "snapshot_path": "{}", "mem_file_path": "{}"}}"#,
        dir.join("s").display(),
        dir.join("m").display()
    );
    // Running: refused.
    let (code, answer) = vm.curl("PUT", "/snapshot/create", Some(&body));
    assert_eq!(code, 400, "{answer}");
    assert!(
        json(&answer)["fault_message"]
            .as_str()
            .unwrap()
            .contains("must be paused")
    );
    assert_eq!(
        vm.curl("PATCH", "/vm", Some(r#"{"state": "Paused"}"#)).0,
        204
    );
    assert_eq!(
        vm.curl("PUT", "/snapshot/create", Some(&body)),
        (204, String::new())
    );
    let _ = vm.child.kill();
    let _ = vm.child.wait();
    vm.console()
}

/// The numbers of "count: N" lines in `text` (whole lines only).
fn counts(text: &str) -> Vec<u64> {
    let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    (whole.lines())
        .filter_map(|l| l.strip_prefix("count: ")?.parse().ok())
        .collect()
}

#[test]
fn a_restored_guest_counts_on_from_where_it_was_snapshotted_and_two_clones_both_do() {
    require_kvm!();
    let dir = scratch("snapshot");
    let vm = Vm::start(&dir, &[]);
    vm.wait_for_count(3);
    let before = snapshot_and_kill(vm, &dir);
    let last = *counts(&before).last().unwrap();
    let (state, mem) = (dir.join("s"), dir.join("m"));
    // Two clones of one snapshot at once: each goes on from the same place.
    let clones = [
        Vm::restore(&dir, "one", &state, &mem),
        Vm::restore(&dir, "two", &state, &mem),
    ];
    for clone in &clones {
        clone.wait_for_count(last + 3);
        // What the original printed up to the snapshot, then what the clone printed, is one
        // unbroken count: a line cut by the pause is finished by the clone.
        let whole = format!("{before}{}", clone.console());
        let all = counts(&whole);
        let expected: Vec<u64> = (1..=all.len() as u64).collect();
        assert_eq!(all, expected, "{whole}");
        let (code, body) = clone.curl("GET", "/machine-config", None);
        assert_eq!((code, json(&body)["vcpu_count"].as_u64()), (200, Some(1)));
    }
    // The memory file is only read: a restore never writes to it.
    let modified = std::fs::metadata(&mem).unwrap().modified().unwrap();
    drop(clones);
    assert_eq!(
        std::fs::metadata(&mem).unwrap().modified().unwrap(),
        modified
    );
}

fn restore_refusal(state: &Path, mem: &Path) -> String {
    let out = output_of(
        std::process::Command::new(GUREUM).args([
            "restore",
            "--snapshot",
            state.to_str().unwrap(),
            "--mem",
            mem.to_str().unwrap(),
        ]),
        None,
        Duration::from_secs(30),
    );
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.describe());
    out.stderr
}

#[test]
fn corrupt_truncated_foreign_and_mismatched_snapshots_are_refused_in_one_line() {
    require_kvm!();
    let dir = scratch("snapshot-bad");
    let vm = Vm::start(&dir, &[]);
    vm.wait_for_count(1);
    snapshot_and_kill(vm, &dir);
    let (state, mem) = (dir.join("s"), dir.join("m"));
    let good = std::fs::read(&state).unwrap();
    let bad = dir.join("bad");

    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x20;
    std::fs::write(&bad, &flipped).unwrap();
    assert!(restore_refusal(&bad, &mem).contains("is corrupt"));

    std::fs::write(&bad, &good[..good.len() - 100]).unwrap();
    assert!(restore_refusal(&bad, &mem).contains("is cut short"));

    assert!(restore_refusal(&mem, &mem).contains("is not a gureum snapshot"));

    let mut future = good.clone();
    future[16] = 2;
    std::fs::write(&bad, &future).unwrap();
    assert!(restore_refusal(&bad, &mem).contains("this gureum reads format 1"));

    let short = dir.join("short-mem");
    std::fs::write(&short, vec![0u8; 4096]).unwrap();
    assert!(restore_refusal(&state, &short).contains("not this snapshot's memory file"));

    let missing = dir.join("missing");
    assert!(restore_refusal(&missing, &mem).contains("cannot read the snapshot"));
}

#[test]
fn a_vm_with_virtio_devices_is_not_snapshotted_yet_and_says_why() {
    require_kvm!();
    let dir = scratch("snapshot-rng");
    let vm = Vm::start(&dir, &["--rng"]);
    vm.wait_for_count(1);
    assert_eq!(
        vm.curl("PATCH", "/vm", Some(r#"{"state": "Paused"}"#)).0,
        204
    );
    let body = format!(
        r#"{{"snapshot_path": "{}", "mem_file_path": "{}"}}"#,
        dir.join("s").display(),
        dir.join("m").display()
    );
    let (code, answer) = vm.curl("PUT", "/snapshot/create", Some(&body));
    assert_eq!(code, 400, "{answer}");
    let fault = json(&answer)["fault_message"].as_str().unwrap().to_string();
    assert!(
        fault.contains("an entropy device are not supported yet"),
        "{fault}"
    );
    assert!(!dir.join("s").exists() && !dir.join("m").exists());
    // The VM runs on once resumed.
    assert_eq!(
        vm.curl("PATCH", "/vm", Some(r#"{"state": "Resumed"}"#)).0,
        204
    );
    let n = *vm.counts().last().unwrap();
    vm.wait_for_count(n + 2);
}

/// Pauses `vm`, snapshots it into `dir` (`s`, `m`) and kills it.
fn pause_snapshot_kill(mut vm: Vm, dir: &Path) {
    assert_eq!(
        vm.curl("PATCH", "/vm", Some(r#"{"state": "Paused"}"#)).0,
        204
    );
    let body = format!(
        r#"{{"snapshot_path": "{}", "mem_file_path": "{}"}}"#,
        dir.join("s").display(),
        dir.join("m").display()
    );
    assert_eq!(
        vm.curl("PUT", "/snapshot/create", Some(&body)),
        (204, String::new())
    );
    let _ = vm.child.kill();
    let _ = vm.child.wait();
}

/// Our Linux guest with 2 vCPUs, at its shell: a file written before the snapshot is there
/// after a restore in a new process, and the shell answers there.
#[test]
#[ignore = "boots a Linux guest: hardware KVM or the KVM test machine (scripts/test.sh runs it there)"]
fn a_restored_linux_guest_keeps_its_files_and_its_shell_answers() {
    let dir = scratch("snapshot-linux");
    let f = common::default_guest_file;
    let (kernel, initrd) = (f("vmlinux"), f("initramfs.cpio"));
    let args = [
        "boot",
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--vcpus",
        "2",
    ];
    let mut vm = Vm::spawn_typed(&dir, "boot.txt", &args);
    vm.wait_for("gureum-init: shell on the console", Duration::from_secs(60));
    vm.type_line("echo kept-$((20+1)) > /tmp/f; cat /tmp/f");
    vm.wait_for("\nkept-21", Duration::from_secs(30));
    pause_snapshot_kill(vm, &dir);

    let (state, mem) = (dir.join("s"), dir.join("m"));
    let (state, mem) = (state.to_str().unwrap(), mem.to_str().unwrap());
    let args = ["restore", "--snapshot", state, "--mem", mem];
    let mut restored = Vm::spawn_typed(&dir, "restored.txt", &args);
    restored.type_line("cat /tmp/f; echo after-$((40+2)) cpus=$(grep -c ^processor /proc/cpuinfo)");
    restored.wait_for("\nkept-21", Duration::from_secs(30));
    restored.wait_for("\nafter-42 cpus=2", Duration::from_secs(30));
}

/// `gureum snapshot`, for those without an HTTP client: the VM is paused, snapshotted and
/// resumed (it counts on), and the snapshot restores; no VM on the socket is one line.
#[test]
fn gureum_snapshot_takes_one_through_the_api_and_leaves_the_vm_running() {
    require_kvm!();
    let dir = scratch("snapshot-cli");
    let vm = Vm::start(&dir, &[]);
    vm.wait_for_count(2);
    let (state, mem) = (dir.join("s"), dir.join("m"));
    let args = |sock: &Path| {
        let mut cmd = std::process::Command::new(GUREUM);
        cmd.arg("snapshot").arg("--api-sock").arg(sock);
        cmd.arg("--snapshot").arg(&state).arg("--mem").arg(&mem);
        cmd
    };
    let out = output_of(&mut args(&vm.sock), None, Duration::from_secs(60));
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let (code, body) = vm.curl("GET", "/", None);
    assert_eq!((code, json(&body)["state"].as_str()), (200, Some("Running")));
    let n = *vm.counts().last().unwrap();
    vm.wait_for_count(n + 2);
    drop(vm);
    let restored = Vm::restore(&dir, "restored", &state, &mem);
    restored.wait_for_count(3);

    let out = output_of(&mut args(&dir.join("nobody")), None, Duration::from_secs(30));
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert!(
        out.stderr.starts_with("gureum: cannot reach the API socket ")
            && out.stderr.lines().count() == 1,
        "{}",
        out.describe()
    );
}
