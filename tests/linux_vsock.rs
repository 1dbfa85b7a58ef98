//! vsock both ways through our Linux guest and its agent, under gureum: the agent (the guest's
//! /init) first connects to the host (guest → host: gureum forwards it to `PATH_1025`), then
//! the host connects to the agent (host → guest, Firecracker's `CONNECT`) and runs `cat` on a
//! busybox disk with 8 MiB through it and back. Needs hardware KVM or the KVM test machine.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use gureum_process::protocol::RunSpec;

/// Waits for a connection on `listener` up to `within` (scaled).
fn accept_within(listener: &UnixListener, within: Duration) -> Option<UnixStream> {
    listener.set_nonblocking(true).unwrap();
    let start = Instant::now();
    while start.elapsed() < common::scaled(within) {
        if let Ok((conn, _)) = listener.accept() {
            return Some(conn);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

#[test]
#[ignore = "boots a Linux guest: hardware KVM or the KVM test machine (scripts/test.sh runs it there)"]
fn vsock_both_ways_through_the_agent() {
    let dir = common::scratch("linux-vsock");
    let rootfs = dir.join("rootfs");
    common::busybox_rootfs(&rootfs);
    let image = dir.join("rootfs.ext4");
    common::ext4_image(&rootfs, &image, "16M");
    let uds = dir.join("v.sock");
    let ready = UnixListener::bind(dir.join("v.sock_1025")).unwrap();
    let kernel = common::default_guest_file("vmlinux");
    let initrd = common::default_guest_file("agent-initramfs.cpio");
    let vsock = format!("cid=3,uds={}", uds.display());
    let disk = format!("{},ro", image.display());
    let cmdline = "console=ttyS0 reboot=k panic=1 pci=off quiet \
                   gureum.agent=vsock:1024 gureum.ready=vsock:1025";
    let args = [
        "boot",
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--disk",
        &disk,
        "--vsock",
        &vsock,
        "--cmdline",
        cmdline,
        "--timeout",
        &common::timeout_secs(120),
    ];
    let vmm = common::spawn(&args, None);

    // Guest → host: the agent says it listens.
    let told = accept_within(&ready, Duration::from_secs(30));
    if told.is_none() {
        let out = common::finish(vmm, Duration::from_secs(1));
        panic!("the agent never connected to the host\n{}", out.describe());
    }

    // Host → guest: a session with the agent, 8 MiB through cat and back.
    let mut conn = UnixStream::connect(&uds).unwrap();
    conn.write_all(b"CONNECT 1024\n").unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while conn.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    assert!(
        line.starts_with(b"OK "),
        "{}",
        String::from_utf8_lossy(&line)
    );
    let spec = RunSpec {
        args: vec!["/bin/cat".into()],
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        root: Some("/dev/vda".into()),
        readonly: true,
        ..RunSpec::default()
    };
    let data = common::pseudo_random(11, 8 << 20);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let writer = conn.try_clone().unwrap();
    let ended = gureum_process::client::run(
        conn,
        writer,
        &spec,
        std::io::Cursor::new(data.clone()),
        &mut out,
        &mut err,
    )
    .unwrap();
    assert_eq!(ended.status, 0, "{}", String::from_utf8_lossy(&err));
    assert_eq!(out.len(), data.len());
    assert!(out == data, "what came back differs from what went");

    // The agent ends the VM with its first session.
    let out = common::finish(vmm, Duration::from_secs(30));
    assert_eq!(out.code, Some(0), "{}", out.describe());
    std::fs::remove_dir_all(&dir).unwrap();
}
