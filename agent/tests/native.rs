//! The agent's logic natively: the agent is PID 1 of fresh namespaces (pid, mount, uts, ipc)
//! and the test is its host, over a Unix socket. Exit codes, a missing executable, stdio
//! (binary, 10 MB, stderr apart), process settings and signals.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use gureum_process::client::{self, Ended};
use gureum_process::protocol::RunSpec;

struct Agent {
    child: Child,
    socket: PathBuf,
}

impl Agent {
    /// An agent as PID 1 of new namespaces, listening on a fresh socket.
    fn start() -> Self {
        Self::start_in(None)
    }

    /// As `start`, with the agent's mount base (where it mounts a container root) set.
    fn start_in(base: Option<&std::path::Path>) -> Self {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let socket =
            std::env::temp_dir().join(format!("gureum-agent-{}-{n}.sock", std::process::id()));
        let _ = std::fs::remove_file(&socket);
        let mut cmd = Command::new("unshare");
        if let Some(base) = base {
            cmd.env("GUREUM_AGENT_BASE", base);
        }
        let child = cmd
            .args([
                "--pid",
                "--fork",
                "--mount-proc",
                "--uts",
                "--ipc",
                "--propagation",
                "private",
                "--",
            ])
            .arg(env!("CARGO_BIN_EXE_gureum-agent"))
            .arg("--listen")
            .arg(&socket)
            .spawn()
            .expect("unshare (util-linux)");
        Self { child, socket }
    }

    fn connect(&self) -> UnixStream {
        let start = Instant::now();
        loop {
            match UnixStream::connect(&self.socket) {
                Ok(s) => return s,
                Err(_) if start.elapsed() < Duration::from_secs(10) => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("connect to the agent: {e}"),
            }
        }
    }

    /// Run `spec` with `stdin`; returns how it ended, stdout and stderr.
    fn run(self, spec: RunSpec, stdin: Vec<u8>) -> (Ended, Vec<u8>, Vec<u8>) {
        let conn = self.connect();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let ended = client::run(
            conn.try_clone().unwrap(),
            conn,
            &spec,
            std::io::Cursor::new(stdin),
            &mut out,
            &mut err,
        )
        .expect("run");
        self.finish();
        (ended, out, err)
    }

    fn finish(mut self) {
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the agent exited {status}");
    }
}

fn spec(args: &[&str]) -> RunSpec {
    RunSpec {
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec!["PATH=/usr/bin:/bin".into()],
        cwd: "/".into(),
        ..Default::default()
    }
}

#[test]
fn echo_and_exit_codes() {
    let (ended, out, _) = Agent::start().run(spec(&["echo", "hello"]), vec![]);
    assert_eq!((ended.status, out.as_slice()), (0, &b"hello\n"[..]));
    for code in [0, 1, 42] {
        let (ended, _, _) =
            Agent::start().run(spec(&["sh", "-c", &format!("exit {code}")]), vec![]);
        assert_eq!(
            ended,
            Ended {
                status: code,
                error: None
            }
        );
    }
}

#[test]
fn the_agent_is_pid_1_of_its_namespace() {
    // The process the agent starts is the second process of the new pid namespace.
    let (ended, out, _) = Agent::start().run(spec(&["sh", "-c", "echo $$"]), vec![]);
    assert_eq!(
        (ended.status, String::from_utf8_lossy(&out).trim()),
        (0, "2")
    );
}

#[test]
fn a_missing_executable_is_127_with_a_reason() {
    let (ended, _, _) = Agent::start().run(spec(&["/no/such/program"]), vec![]);
    assert_eq!(ended.status, 127);
    let error = ended.error.unwrap();
    assert!(
        error.contains("\"/no/such/program\": executable file not found"),
        "{error}"
    );
    let mut no_cwd = spec(&["true"]);
    no_cwd.cwd = "/no/such/dir".into();
    let (ended, _, _) = Agent::start().run(no_cwd, vec![]);
    assert_eq!(ended.status, 126);
    let (ended, _, _) = Agent::start().run(spec(&[]), vec![]);
    assert_eq!((ended.status, ended.error.is_some()), (126, true));
}

#[test]
fn ten_mb_of_binary_stdin_comes_back_through_cat_and_stderr_stays_apart() {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let data: Vec<u8> = (0..10 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect();
    let (ended, out, err) = Agent::start().run(spec(&["cat"]), data.clone());
    assert_eq!(ended.status, 0);
    assert_eq!(out.len(), data.len());
    assert!(out == data, "cat returned different bytes");
    assert!(err.is_empty());
    let (ended, out, err) = Agent::start().run(
        spec(&["sh", "-c", "echo to-out; echo to-err >&2; exit 3"]),
        vec![],
    );
    assert_eq!(
        (ended.status, out.as_slice(), err.as_slice()),
        (3, &b"to-out\n"[..], &b"to-err\n"[..])
    );
}

#[test]
fn env_cwd_and_uid_gid_are_applied() {
    let mut s = spec(&["sh", "-c", "echo $GREETING; pwd; id -u; id -g"]);
    s.env.push("GREETING=hi-there".into());
    s.cwd = "/tmp".into();
    s.uid = 1000;
    s.gid = 1001;
    let (ended, out, _) = Agent::start().run(s, vec![]);
    assert_eq!(ended.status, 0);
    assert_eq!(
        String::from_utf8_lossy(&out),
        "hi-there\n/tmp\n1000\n1001\n"
    );
}

#[test]
fn sigterm_ends_a_sleeping_process_with_143_within_a_second() {
    let agent = Agent::start();
    let conn = agent.connect();
    let writer = std::sync::Arc::new(std::sync::Mutex::new(conn.try_clone().unwrap()));
    let signaller = writer.clone();
    let start = Instant::now();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        client::signal(&signaller, libc::SIGTERM).unwrap();
    });
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let ended = client::run_shared(
        conn,
        &writer,
        &spec(&["sleep", "60"]),
        std::io::empty(),
        &mut out,
        &mut err,
    )
    .unwrap();
    killer.join().unwrap();
    // The agent's connection ends when the last handle on it goes.
    drop(writer);
    assert_eq!(ended.status, 128 + libc::SIGTERM);
    assert!(
        start.elapsed() < Duration::from_millis(1300),
        "{:?}",
        start.elapsed()
    );
    agent.finish();
}

#[test]
fn a_bad_first_frame_is_refused() {
    let agent = Agent::start();
    let mut conn = agent.connect();
    gureum_process::protocol::write_frame(&mut conn, gureum_process::protocol::Kind::Stdin, b"x")
        .unwrap();
    let mut rest = Vec::new();
    let _ = conn.read_to_end(&mut rest);
    let status = {
        let mut a = agent;
        a.child.wait().unwrap()
    };
    assert_eq!(status.code(), Some(1), "the agent says why and exits 1");
}

/// A loop device over `image` (read-only), detached on drop.
struct Loop(String);

impl Loop {
    fn attach(image: &std::path::Path) -> Self {
        let out = Command::new("losetup")
            .args(["-r", "-f", "--show"])
            .arg(image)
            .output()
            .expect("losetup (util-linux)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

#[test]
fn a_container_root_is_mounted_from_a_disk_writable_through_an_overlay() {
    let dir = std::env::temp_dir().join(format!("gureum-agent-root-{}", std::process::id()));
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", tree.join("bin/busybox")).expect("busybox-static");
    std::fs::write(tree.join("hello"), "from the disk\n").unwrap();
    let image = dir.join("root.ext4");
    let mkfs = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-O", "^has_journal", "-d"])
        .arg(&tree)
        .arg(&image)
        .arg("16M")
        .output()
        .expect("mkfs.ext4 (e2fsprogs)");
    assert!(mkfs.status.success());
    let before = std::fs::read(&image).unwrap();
    let script = "busybox cat /hello; echo new > /written && busybox cat /written";
    for readonly in [false, true] {
        let disk = Loop::attach(&image);
        let base = dir.join(format!("base-{readonly}"));
        let mut s = spec(&["/bin/busybox", "sh", "-c", script]);
        s.root = Some(disk.0.clone());
        s.readonly = readonly;
        let (ended, out, err) = Agent::start_in(Some(&base)).run(s, vec![]);
        let out = String::from_utf8_lossy(&out);
        if readonly {
            assert_ne!(
                ended.status, 0,
                "a write to a read-only root succeeded: {out}"
            );
            assert!(
                String::from_utf8_lossy(&err).contains("Read-only"),
                "{err:?}"
            );
        } else {
            assert_eq!(
                (ended.status, out.as_ref()),
                (0, "from the disk\nnew\n"),
                "{err:?}"
            );
        }
    }
    assert!(
        std::fs::read(&image).unwrap() == before,
        "the disk image changed"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn capabilities_and_seccomp_are_applied() {
    use gureum_process::security::{Caps, Seccomp};
    let kill = 1 << 5;
    let insn = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    // mkdir (83) and mkdirat (258) fail with EACCES; everything else is allowed.
    let program = [
        insn(0x20, 0, 0, 0),
        insn(0x15, 2, 0, 83),
        insn(0x15, 1, 0, 258),
        insn(0x06, 0, 0, 0x7fff_0000),
        insn(0x06, 0, 0, 0x0005_0000 | 13),
    ];
    let mut s = spec(&[
        "sh",
        "-c",
        "grep ^CapEff /proc/self/status; mkdir /tmp/x$$ 2>&1",
    ]);
    s.capabilities = Some(Caps {
        bounding: kill,
        effective: kill,
        permitted: kill,
        inheritable: kill,
        ambient: 0,
    });
    s.seccomp = Some(Seccomp {
        filters: vec![Seccomp::pack(&program)],
        flags: 0,
    });
    s.no_new_privileges = true;
    let (ended, out, _) = Agent::start().run(s, vec![]);
    let out = String::from_utf8_lossy(&out);
    assert_eq!(ended.status, 1, "{out}");
    assert!(out.starts_with("CapEff:\t0000000000000020\n"), "{out}");
    assert!(out.contains("Permission denied"), "{out}");
}

#[test]
fn a_terminal_is_a_pty_with_the_size_given_and_echoes_input() {
    let mut s = spec(&["sh", "-c", "tty; stty size; read line; echo got:$line"]);
    s.terminal = true;
    s.winsize = Some((30, 100));
    let (ended, out, err) = Agent::start().run(s, b"hello\n".to_vec());
    let out = String::from_utf8_lossy(&out);
    assert_eq!(ended.status, 0, "{out}");
    assert!(err.is_empty(), "a terminal's output is all Stdout");
    // The pty echoes what was typed (as soon as it arrives), and the process answers.
    let lines: Vec<&str> = out.split("\r\n").collect();
    assert!(lines.iter().any(|l| l.starts_with("/dev/pts/")), "{out:?}");
    assert!(lines.contains(&"30 100"), "{out:?}");
    assert!(lines.contains(&"hello"), "{out:?}");
    assert!(out.ends_with("got:hello\r\n"), "{out:?}");
}

#[test]
fn a_resize_reaches_the_terminal() {
    use gureum_process::protocol::{self, Kind};
    let mut s = spec(&["sh", "-c", "read a; stty size"]);
    s.terminal = true;
    s.winsize = Some((24, 80));
    let agent = Agent::start();
    let mut conn = agent.connect();
    protocol::write_frame(&mut conn, Kind::Run, &serde_json::to_vec(&s).unwrap()).unwrap();
    let size = gureum_process::pty::encode_size((50, 132));
    protocol::write_frame(&mut conn, Kind::Resize, &size).unwrap();
    protocol::write_frame(&mut conn, Kind::Stdin, b"go\n").unwrap();
    let mut out = Vec::new();
    let status = loop {
        match protocol::read_frame(&mut conn).unwrap() {
            Some((Kind::Stdout, bytes)) => out.extend(bytes),
            Some((Kind::Exit, code)) => break protocol::int(&code),
            Some(_) => {}
            None => panic!("no exit status"),
        }
    };
    drop(conn);
    agent.finish();
    assert_eq!(status, Some(0));
    assert!(
        String::from_utf8_lossy(&out).ends_with("50 132\r\n"),
        "{out:?}"
    );
}
