//! Containers with a terminal: `run -t` relaying this side's pty, and `create --console-socket`
//! handing the container's pty master over, as runc does. The pty is the container's own
//! (`tty` names /dev/pts/0 of its devpts).

mod common;

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::bundle::{Bundle, id, wait_for_status};
use common::finish;

#[test]
fn a_tty_session_echoes_typed_input() {
    let b = Bundle::new("tty", serde_json::json!({"args": ["sh"], "terminal": true}));
    let (mut master, slave) = (0, 0);
    let mut slave_fd = slave;
    // SAFETY: openpty writes two fds; NULL name, termios and winsize are allowed.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave_fd,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0);
    // SAFETY: fresh fds owned by nobody else.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave_fd)) };
    let bundle = b.dir.to_str().unwrap().to_string();
    let child = b
        .command(&["run", "--bundle", &bundle, &id("tty")])
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(slave);
    let mut m = std::fs::File::from(master);
    let mut reader = m.try_clone().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let has = |s: &str| String::from_utf8_lossy(&seen.lock().unwrap()).contains(s);
    let until = |s: &str| {
        let start = Instant::now();
        while !has(s) && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        has(s)
    };
    m.write_all(b"echo $((6*7))-$(tty)\n").unwrap();
    assert!(
        until("echo $((6*7))"),
        "typed input not echoed: {:?}",
        String::from_utf8_lossy(&seen.lock().unwrap())
    );
    assert!(
        until("42-/dev/pts/0"),
        "no answer: {:?}",
        String::from_utf8_lossy(&seen.lock().unwrap())
    );
    m.write_all(b"exit 5\n").unwrap();
    let out = finish(child, Duration::from_secs(10));
    assert_eq!(out.code, Some(5), "{}", out.describe());
}

/// Receives one fd sent with SCM_RIGHTS on `conn` (runc's console-socket protocol).
fn receive_fd(conn: &std::os::unix::net::UnixStream) -> OwnedFd {
    use std::os::fd::AsRawFd;
    let mut buf = [0u8; 256];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u8; 64];
    // SAFETY: an all-zero msghdr is valid; its pointers are set to live buffers below.
    let mut msg = unsafe { std::mem::zeroed::<libc::msghdr>() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len();
    // SAFETY: recvmsg into live buffers.
    let n = unsafe { libc::recvmsg(conn.as_raw_fd(), &mut msg, 0) };
    assert!(n > 0, "nothing on the console socket");
    // SAFETY: reads the fd out of the control message recvmsg filled.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        assert!(!cmsg.is_null(), "no fd on the console socket");
        OwnedFd::from_raw_fd(std::ptr::read_unaligned(
            libc::CMSG_DATA(cmsg).cast::<libc::c_int>(),
        ))
    }
}

#[test]
fn create_hands_the_terminal_to_the_console_socket() {
    let b = Bundle::new(
        "console",
        serde_json::json!({"args": ["sh", "-c", "echo on $(tty); read x; echo got $x"],
                           "terminal": true}),
    );
    let bundle = b.dir.to_str().unwrap().to_string();
    let socket = b.dir.join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let receiver = std::thread::spawn(move || receive_fd(&listener.accept().unwrap().0));
    let name = id("console");
    let sock = socket.to_str().unwrap().to_string();
    let created = b.gureum(&[
        "create",
        "--bundle",
        &bundle,
        "--console-socket",
        &sock,
        &name,
    ]);
    assert_eq!(created.code, Some(0), "{}", created.describe());
    let mut master = std::fs::File::from(receiver.join().unwrap());
    assert_eq!(b.gureum(&["start", &name]).code, Some(0));
    master.write_all(b"hello\n").unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    let start = Instant::now();
    while !String::from_utf8_lossy(&seen).contains("got hello") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{:?}",
            String::from_utf8_lossy(&seen)
        );
        match master.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&seen);
    assert!(
        text.contains("on /dev/pts/0") && text.contains("got hello"),
        "{text:?}"
    );
    wait_for_status(&b, &name, "stopped");
    assert_eq!(b.gureum(&["delete", &name]).code, Some(0));
    b.assert_gone(&name);
}
