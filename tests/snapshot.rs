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

/// The `rng N: HEX` lines of `text` (whole lines only): N and the bytes.
fn rng_lines(text: &str) -> Vec<(u64, String)> {
    let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    (whole.lines())
        .filter_map(|l| {
            let (n, hex) = l.strip_prefix("rng ")?.split_once(": ")?;
            Some((n.parse().ok()?, hex.to_string()))
        })
        .collect()
}

/// A guest that uses its virtio-rng device all along: the device's queue goes on where it was
/// in each of two clones, and the clones draw different bytes from this host.
#[test]
fn a_busy_virtio_device_goes_on_after_a_restore_and_clones_draw_different_entropy() {
    require_kvm!();
    let dir = scratch("snapshot-rng");
    let kernel = common::test_guest().to_str().unwrap().to_string();
    let cmdline = "console=ttyS0 scenario=rng-count every=67108864";
    let args = ["boot", "--kernel", &kernel, "--rng", "--cmdline", cmdline];
    let vm = Vm::spawn_typed(&dir, "boot.txt", &args);
    vm.wait_for("rng 3: ", Duration::from_secs(20));
    pause_snapshot_kill(vm, &dir);
    let before = std::fs::read_to_string(dir.join("boot.txt")).unwrap();
    let last = rng_lines(&before).last().unwrap().0;
    let (state, mem) = (dir.join("s"), dir.join("m"));
    let clones = [
        Vm::restore(&dir, "one", &state, &mem),
        Vm::restore(&dir, "two", &state, &mem),
    ];
    let mut drawn = Vec::new();
    for clone in &clones {
        clone.wait_for(&format!("rng {}: ", last + 3), Duration::from_secs(20));
        let text = format!("{before}{}", clone.console());
        assert!(!text.contains("out of step"), "{text}");
        let lines = rng_lines(&text);
        let numbers: Vec<u64> = lines.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            numbers,
            (1..=lines.len() as u64).collect::<Vec<_>>(),
            "{text}"
        );
        for (n, hex) in &lines {
            assert!(
                hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
                "rng {n}: {hex}"
            );
        }
        // The first draw after the snapshot may have been served before it (the device runs
        // while the vCPUs are parked): it is in the snapshot's memory, the same in both clones.
        drawn.push(lines[usize::try_from(last + 1).unwrap()..].to_vec());
    }
    assert_ne!(
        drawn[0][0].1, drawn[1][0].1,
        "two clones drew the same bytes"
    );
}

/// A host connection to a guest vsock port: CONNECT, and the "OK <port>" line read. A socket
/// just made may exist a moment before it listens: connecting is retried for a while.
fn vsock_connect(uds: &Path, port: u32) -> std::os::unix::net::UnixStream {
    let deadline = std::time::Instant::now() + common::scaled(Duration::from_secs(10));
    let mut conn = loop {
        match std::os::unix::net::UnixStream::connect(uds) {
            Ok(conn) => break conn,
            Err(e) => assert!(
                std::time::Instant::now() < deadline,
                "{}: {e}",
                uds.display()
            ),
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    conn.set_read_timeout(Some(common::scaled(Duration::from_secs(10))))
        .unwrap();
    std::io::Write::write_all(&mut conn, format!("CONNECT {port}\n").as_bytes()).unwrap();
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\n") {
        std::io::Read::read_exact(&mut conn, &mut byte).unwrap();
        answer.push(byte[0]);
    }
    assert!(answer.starts_with(b"OK "), "{answer:?}");
    conn
}

fn echoes(conn: &mut std::os::unix::net::UnixStream, word: &[u8; 4]) {
    std::io::Write::write_all(conn, word).unwrap();
    let mut echo = [0u8; 4];
    std::io::Read::read_exact(conn, &mut echo).unwrap();
    assert_eq!(&echo, word);
}

fn snapshot_body(dir: &Path, name: &str) -> String {
    format!(
        r#"{{"snapshot_path": "{}", "mem_file_path": "{}"}}"#,
        dir.join(format!("{name}.s")).display(),
        dir.join(format!("{name}.m")).display()
    )
}

/// vsock: a guest listening, snapshotted idle, restored as a clone on a socket of its own,
/// echoes there. Snapshotted again with a connection open (the VM runs on, its connection
/// too), a clone of that is told its transport was reset, drops the connection the snapshot
/// could not keep, and echoes on a new one.
#[test]
fn a_vsock_guest_restores_on_another_socket_and_an_open_connection_is_reset_in_the_clone() {
    require_kvm!();
    let dir = scratch("snapshot-vsock");
    let kernel = common::test_guest().to_str().unwrap().to_string();
    let uds = dir.join("v.sock");
    let vsock = format!("cid=3,uds={}", uds.display());
    let cmdline = "console=ttyS0 scenario=vsock-echo port=5000 conns=1";
    let args = [
        "boot",
        "--kernel",
        &kernel,
        "--vsock",
        &vsock,
        "--cmdline",
        cmdline,
    ];
    let vm = Vm::spawn_typed(&dir, "boot.txt", &args);
    vm.wait_for("vsock: listening", Duration::from_secs(20));
    let state = |on: &str| Some(format!(r#"{{"state": "{on}"}}"#));
    assert_eq!(vm.curl("PATCH", "/vm", state("Paused").as_deref()).0, 204);
    let idle = snapshot_body(&dir, "idle");
    assert_eq!(vm.curl("PUT", "/snapshot/create", Some(&idle)).0, 204);
    assert_eq!(vm.curl("PATCH", "/vm", state("Resumed").as_deref()).0, 204);

    let mut conn = vsock_connect(&uds, 5000);
    echoes(&mut conn, b"ping");
    assert_eq!(vm.curl("PATCH", "/vm", state("Paused").as_deref()).0, 204);
    let busy = snapshot_body(&dir, "busy");
    assert_eq!(vm.curl("PUT", "/snapshot/create", Some(&busy)).0, 204);
    assert_eq!(vm.curl("PATCH", "/vm", state("Resumed").as_deref()).0, 204);
    echoes(&mut conn, b"pong");

    let clone_uds = dir.join("clone.sock");
    let clone = vsock_clone(&dir, "idle", &clone_uds);
    echoes(&mut vsock_connect(&clone_uds, 5000), b"pong");
    assert!(
        !clone.console().contains("transport reset"),
        "an idle snapshot restores without a reset: {}",
        clone.console()
    );

    let busy_uds = dir.join("busy-clone.sock");
    let busy_clone = vsock_clone(&dir, "busy", &busy_uds);
    echoes(&mut vsock_connect(&busy_uds, 5000), b"pang");
    busy_clone.wait_for(
        "vsock: transport reset, 1 connections dropped",
        Duration::from_secs(10),
    );
}

/// `gureum restore` of the snapshot `name` in `dir` (from [`snapshot_body`]), with a vsock
/// socket of its own at `uds`.
fn vsock_clone(dir: &Path, name: &str, uds: &Path) -> Vm {
    let (s, m) = (dir.join(format!("{name}.s")), dir.join(format!("{name}.m")));
    let args = [
        "restore",
        "--snapshot",
        s.to_str().unwrap(),
        "--mem",
        m.to_str().unwrap(),
        "--vsock-uds",
        uds.to_str().unwrap(),
    ];
    Vm::spawn_typed(dir, &format!("{name}-clone.txt"), &args)
}

/// Keys pressed on a paused VM (SendCtrlAltDel) and not yet read are in its snapshot: the
/// restored guest, polling its i8042, reads them.
#[test]
fn keys_pressed_before_a_snapshot_reach_the_restored_guest() {
    require_kvm!();
    let dir = scratch("snapshot-keys");
    let kernel = common::test_guest().to_str().unwrap().to_string();
    let args = [
        "boot",
        "--kernel",
        &kernel,
        "--cmdline",
        "console=ttyS0 scenario=keyboard",
    ];
    let mut vm = Vm::spawn(&dir, "boot.txt", &args);
    vm.wait_for("keyboard: waiting", Duration::from_secs(10));
    let state = |on: &str| Some(format!(r#"{{"state": "{on}"}}"#));
    assert_eq!(vm.curl("PATCH", "/vm", state("Paused").as_deref()).0, 204);
    let cad = Some(r#"{"action_type": "SendCtrlAltDel"}"#);
    assert_eq!(vm.curl("PUT", "/actions", cad).0, 204);
    let body = snapshot_body(&dir, "keys");
    assert_eq!(vm.curl("PUT", "/snapshot/create", Some(&body)).0, 204);
    let _ = vm.child.kill();
    let _ = vm.child.wait();
    assert!(!vm.console().contains("0x14"), "{}", vm.console());
    let (s, m) = (dir.join("keys.s"), dir.join("keys.m"));
    let restored = Vm::restore(&dir, "restored.txt", &s, &m);
    restored.wait_for(" 0x14 0x11 0xe0 0x71\n", Duration::from_secs(20));
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

/// Our Linux guest with 2 vCPUs, a disk and virtio-rng, at its shell: a file written before
/// the snapshot is there after a restore in a new process, the disk reads a file it had not
/// read before, the hardware RNG gives bytes, and the shell answers.
#[test]
#[ignore = "boots a Linux guest: hardware KVM or the KVM test machine (scripts/test.sh runs it there)"]
fn a_restored_linux_guest_keeps_its_files_and_its_shell_answers() {
    let dir = scratch("snapshot-linux");
    let f = common::default_guest_file;
    let (kernel, initrd) = (f("vmlinux"), f("initramfs.cpio"));
    let files = dir.join("files");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("first"), "read-before\n").unwrap();
    std::fs::write(files.join("second"), "read-after\n").unwrap();
    let image = dir.join("disk.ext4");
    let made = std::process::Command::new("mkfs.ext4")
        .args([
            "-q",
            "-d",
            files.to_str().unwrap(),
            image.to_str().unwrap(),
            "8M",
        ])
        .status()
        .unwrap();
    assert!(made.success(), "mkfs.ext4");
    let disk = format!("{},ro", image.display());
    let args = [
        "boot",
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--vcpus",
        "2",
        "--disk",
        &disk,
        "--rng",
    ];
    let mut vm = Vm::spawn_typed(&dir, "boot.txt", &args);
    vm.wait_for("gureum-init: shell on the console", Duration::from_secs(60));
    vm.type_line(
        "echo kept-$((20+1)) > /tmp/f; mkdir -p /mnt; mount -o ro /dev/vda /mnt && cat /mnt/first",
    );
    vm.wait_for("\nread-before", Duration::from_secs(30));
    pause_snapshot_kill(vm, &dir);

    let (state, mem) = (dir.join("s"), dir.join("m"));
    let (state, mem) = (state.to_str().unwrap(), mem.to_str().unwrap());
    let args = ["restore", "--snapshot", state, "--mem", mem];
    let mut restored = Vm::spawn_typed(&dir, "restored.txt", &args);
    restored.type_line("cat /tmp/f /mnt/second; head -c 8 /dev/hwrng | od -An -tx1 | tr -d ' '");
    restored.type_line("echo after-$((40+2)) cpus=$(grep -c ^processor /proc/cpuinfo)");
    restored.wait_for("\nafter-42 cpus=2", Duration::from_secs(30));
    let console = restored.console();
    for want in ["\nkept-21", "\nread-after"] {
        assert!(console.contains(want), "{want:?}:\n{console}");
    }
    let hex = console
        .lines()
        .map(str::trim)
        .find(|l| l.len() == 16 && l.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(hex.is_some(), "no 8 bytes from /dev/hwrng:\n{console}");
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
    assert_eq!(
        (code, json(&body)["state"].as_str()),
        (200, Some("Running"))
    );
    let n = *vm.counts().last().unwrap();
    vm.wait_for_count(n + 2);
    drop(vm);
    let restored = Vm::restore(&dir, "restored", &state, &mem);
    restored.wait_for_count(3);

    let out = output_of(
        &mut args(&dir.join("nobody")),
        None,
        Duration::from_secs(30),
    );
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert!(
        out.stderr
            .starts_with("gureum: cannot reach the API socket ")
            && out.stderr.lines().count() == 1,
        "{}",
        out.describe()
    );
}
