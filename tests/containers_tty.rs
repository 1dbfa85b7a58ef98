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

/// A gureum command whose stdin and stdout are a pty this test holds, and what it has printed.
struct Session {
    child: std::process::Child,
    master: std::fs::File,
    seen: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Session {
    fn start(mut cmd: std::process::Command) -> Self {
        let (mut master, mut slave) = (0, 0);
        // SAFETY: openpty writes two fds; NULL name, termios and winsize are allowed.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0);
        // SAFETY: fresh fds owned by nobody else.
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        let child = cmd
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(slave);
        let master = std::fs::File::from(master);
        let mut reader = master.try_clone().unwrap();
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
        Self {
            child,
            master,
            seen,
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap()).into_owned()
    }

    /// Waits up to 10 s for `s` to appear.
    fn until(&self, s: &str) -> bool {
        let start = Instant::now();
        while !self.text().contains(s) && start.elapsed() < common::scaled(Duration::from_secs(10))
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.text().contains(s)
    }

    fn type_line(&mut self, line: &str) {
        self.master.write_all(line.as_bytes()).unwrap();
    }

    fn finish(self) -> common::Output {
        finish(self.child, Duration::from_secs(10))
    }
}

per_isolation!(a_tty_session_echoes_typed_input => tty_session);

fn tty_session(isolation: &'static str) {
    let process = serde_json::json!({"args": ["sh"], "terminal": true});
    let b = Bundle::with_isolation("tty", process, isolation);
    let bundle = b.dir.to_str().unwrap().to_string();
    let mut s = Session::start(b.command(&["run", "--bundle", &bundle, &id("tty")]));
    s.type_line("echo $((6*7))-$(tty)\n");
    assert!(
        s.until("echo $((6*7))"),
        "typed input not echoed: {:?}",
        s.text()
    );
    assert!(s.until("42-/dev/pts/0"), "no answer: {:?}", s.text());
    s.type_line("exit 5\n");
    let out = s.finish();
    assert_eq!(out.code, Some(5), "{isolation}: {}", out.describe());
}

per_isolation!(exec_with_a_terminal_into_a_running_container => exec_tty);

fn exec_tty(isolation: &'static str) {
    let process = serde_json::json!({"args": ["sleep", "30"]});
    let b = Bundle::with_isolation("exectty", process, isolation);
    let name = id("exectty");
    b.create_and_start(&name, Stdio::null());
    let mut s = Session::start(b.command(&["exec", "-t", &name, "sh"]));
    s.type_line("echo $((6*7)) $(tty) $(hostname)\n");
    assert!(s.until("42 /dev/pts/"), "no answer: {:?}", s.text());
    assert!(s.text().contains("gureum-test"), "{:?}", s.text());
    s.type_line("exit 3\n");
    let out = s.finish();
    assert_eq!(out.code, Some(3), "{}", out.describe());
    assert_eq!(b.gureum(&["delete", "--force", &name]).code, Some(0));
    b.assert_gone(&name);
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

per_isolation!(create_hands_the_terminal_to_the_console_socket => console_socket);

fn console_socket(isolation: &'static str) {
    let process = serde_json::json!({"args": ["sh", "-c", "echo on $(tty); read x; echo got $x"],
                                     "terminal": true});
    let b = Bundle::with_isolation("console", process, isolation);
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
            start.elapsed() < common::scaled(Duration::from_secs(10)),
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
