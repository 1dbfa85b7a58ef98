//! `gureum-agent --listen PATH`: serve one run request on a Unix socket (native mode, tests).
//! As a guest's /init (PID 1) it mounts /proc, /sys and /dev, serves one run request on the
//! transport named by `gureum.agent=` on the kernel command line (`port:NAME`, the
//! virtio-console port the host named NAME; `vsock:PORT`, a vsock listener whose first
//! connection runs the container's process and later ones `exec` sessions), and restarts the
//! VM when the container's process is done (with `reboot=k`, the VMM exits).

mod pidns;
mod runner;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // SAFETY: getpid has no preconditions.
    let pid1 = unsafe { libc::getpid() } == 1;
    // A guest's /init is PID 1 without --listen (PID 1 of a namespace with --listen is not).
    // The kernel passes the command line's unknown words without '=' (`nomodule` on a kernel
    // without modules, say) to init as arguments: they are not ours to refuse.
    let guest_init = pid1 && !args.get(1).is_some_and(|a| a.starts_with("--listen"));
    let result = match args.get(1..).unwrap_or_default() {
        _ if guest_init => init(),
        [flag, path] if flag == "--listen" => listen(path),
        [flag, path, port] if flag == "--listen-hybrid" => listen_hybrid(path, port, None),
        [flag, path, port, ready] if flag == "--listen-hybrid" => {
            listen_hybrid(path, port, Some(ready))
        }
        _ => {
            eprintln!(
                "usage: gureum-agent --listen PATH | --listen-hybrid PATH PORT [READY_PORT] \
                 (or as a guest's /init)"
            );
            std::process::exit(2);
        }
    };
    if let Err(e) = &result {
        eprintln!("gureum-agent: {e}");
    }
    if guest_init {
        // SAFETY: the guest's init ends the VM; nothing else runs.
        unsafe {
            libc::sync();
            libc::reboot(libc::RB_AUTOBOOT);
        }
    }
    std::process::exit(i32::from(result.is_err()));
}

fn listen(path: &str) -> Result<(), String> {
    let listener = UnixListener::bind(path).map_err(|e| format!("cannot listen on {path}: {e}"))?;
    let (conn, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
    let writer = conn.try_clone().map_err(|e| format!("socket: {e}"))?;
    let _ = std::fs::remove_file(path);
    runner::serve(conn, writer, true).map_err(|e| e.to_string())
}

/// Whether this agent is a guest's init: only then is the whole machine its own (its clock, its
/// entropy pool, its block devices' caches), not the host's that a native agent runs on.
static GUEST: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn is_guest() -> bool {
    GUEST.load(std::sync::atomic::Ordering::Relaxed)
}

fn init() -> Result<(), String> {
    GUEST.store(true, std::sync::atomic::Ordering::Relaxed);
    runner::mount("proc", "/proc", "proc", 0, "")?;
    runner::mount("sysfs", "/sys", "sysfs", 0, "")?;
    runner::mount("devtmpfs", "/dev", "devtmpfs", 0, "")?;
    runner::mount("devpts", "/dev/pts", "devpts", 0, "ptmxmode=0666,mode=0620")?;
    runner::mount("tmpfs", "/run", "tmpfs", 0, "")?;
    let cmdline =
        std::fs::read_to_string("/proc/cmdline").map_err(|e| format!("/proc/cmdline: {e}"))?;
    let param = |key: &str| {
        cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
    };
    let transport = param("gureum.agent").ok_or("no gureum.agent= on the kernel command line")?;
    // gureum.ready=vsock:PORT: the host port to tell once the agent listens.
    let ready = param("gureum.ready")
        .and_then(|r| r.strip_prefix("vsock:"))
        .and_then(|p| p.parse().ok());
    println!("gureum-agent: ready on {transport}");
    match transport.split_once(':') {
        Some(("port", name)) => {
            let path = find_port(name)?;
            let port = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| format!("cannot open {path}: {e}"))?;
            let writer = port.try_clone().map_err(|e| format!("{path}: {e}"))?;
            runner::serve(port, writer, true).map_err(|e| e.to_string())
        }
        Some(("vsock", port)) => {
            let port = port
                .parse()
                .map_err(|_| format!("bad vsock port {port:?}"))?;
            serve_vsock(port, ready)
        }
        _ => Err(format!(
            "unknown transport {transport:?} (expected port:NAME or vsock:PORT)"
        )),
    }
}

/// The device node of the virtio-console port named `name`. Ports appear once the host has
/// announced them, shortly after boot: wait up to 10 s.
fn find_port(name: &str) -> Result<String, String> {
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_secs(10) {
        if let Ok(ports) = std::fs::read_dir("/sys/class/virtio-ports") {
            for port in ports.flatten() {
                let named = std::fs::read_to_string(port.path().join("name")).unwrap_or_default();
                let dev = format!("/dev/{}", port.file_name().to_string_lossy());
                if named.trim() == name && std::path::Path::new(&dev).exists() {
                    return Ok(dev);
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Err(format!("no virtio-console port named {name} appeared"))
}

/// Listens on vsock `port`: the first connection is the container's process, and the VM ends
/// with it; every later one (an exec session) is served on its own thread meanwhile. Once it
/// listens, it tells the host through a connection of its own to host port `ready`, so the host
/// need not poll a booting guest.
fn serve_vsock(port: u32, ready: Option<u32>) -> Result<(), String> {
    let vsock_err = |e: std::io::Error| format!("vsock port {port}: {e}");
    let (listener, addr) = vsock(libc::VMADDR_CID_ANY, port).map_err(vsock_err)?;
    // SAFETY: bind and listen on our socket with a valid address of its size.
    let rc = unsafe {
        if libc::bind(
            listener.as_raw_fd(),
            (&raw const addr).cast(),
            addr_len(&addr),
        ) != 0
        {
            -1
        } else {
            libc::listen(listener.as_raw_fd(), 16)
        }
    };
    if rc != 0 {
        return Err(vsock_err(std::io::Error::last_os_error()));
    }
    if let Some(Err(e)) = ready.map(announce_vsock) {
        eprintln!("gureum-agent: cannot tell the host it is ready: {e}");
    }
    serve_all(move || accept(&listener))
}

/// One connection to the host (CID 2) on vsock `port`, closed at once: "listening now".
fn announce_vsock(port: u32) -> std::io::Result<()> {
    let (socket, addr) = vsock(libc::VMADDR_CID_HOST, port)?;
    // SAFETY: connect our socket to a valid address of its size.
    if unsafe {
        libc::connect(
            socket.as_raw_fd(),
            (&raw const addr).cast(),
            addr_len(&addr),
        )
    } != 0
    {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A new vsock stream socket, and the address of `port` at `cid`.
fn vsock(cid: u32, port: u32) -> std::io::Result<(OwnedFd, libc::sockaddr_vm)> {
    // SAFETY: socket(2) with constant arguments; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero sockaddr_vm is valid; the fields are set below.
    let mut addr = unsafe { std::mem::zeroed::<libc::sockaddr_vm>() };
    addr.svm_family = libc::sa_family_t::try_from(libc::AF_VSOCK).unwrap_or_default();
    addr.svm_port = port;
    addr.svm_cid = cid;
    Ok((socket, addr))
}

fn addr_len(addr: &libc::sockaddr_vm) -> libc::socklen_t {
    libc::socklen_t::try_from(std::mem::size_of_val(addr)).unwrap_or_default()
}

/// The first connection is the container's process, and the agent's work ends with it; every
/// later one (an exec session) is served on its own thread meanwhile.
fn serve_all(
    mut accept: impl FnMut() -> Result<std::fs::File, String> + Send + 'static,
) -> Result<(), String> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static SESSIONS: AtomicUsize = AtomicUsize::new(0);
    let first = accept()?;
    std::thread::spawn(move || {
        while let Ok(conn) = accept() {
            SESSIONS.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let _ = serve_file(conn, false);
                SESSIONS.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    let result = serve_file(first, true);
    // The VM ends when this returns: give the other sessions (a `kill --all` whose answer is
    // still in the guest's vsock queue, say) up to 5 s to be answered and closed first.
    let start = std::time::Instant::now();
    while SESSIONS.load(Ordering::SeqCst) > 0 && start.elapsed() < std::time::Duration::from_secs(5)
    {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    result
}

/// Firecracker's hybrid vsock, host side included, on a Unix socket: each connection first
/// says `CONNECT PORT`, and is answered `OK 1`. With `ready`, tells the host it listens as
/// the guest agent would (a connection to `PATH_<ready>`). Lets gureum's sandbox monitor drive the agent
/// natively, through a stand-in for the VMM (tests/standin-vmm.sh), where no guest can run.
fn listen_hybrid(path: &str, port: &str, ready: Option<&str>) -> Result<(), String> {
    let listener = UnixListener::bind(path).map_err(|e| format!("cannot listen on {path}: {e}"))?;
    // As the VMM forwards a guest's connection to host port P: to PATH_P.
    if let Some(Err(e)) =
        ready.map(|r| std::os::unix::net::UnixStream::connect(format!("{path}_{r}")))
    {
        eprintln!("gureum-agent: cannot tell the host it is ready: {e}");
    }
    let want = format!("CONNECT {port}");
    serve_all(move || {
        loop {
            let (mut conn, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            while std::io::Read::read(&mut conn, &mut byte).map_err(|e| e.to_string())? == 1
                && byte[0] != b'\n'
            {
                line.push(byte[0]);
            }
            if line == want.as_bytes() && std::io::Write::write_all(&mut conn, b"OK 1\n").is_ok() {
                return Ok(std::fs::File::from(OwnedFd::from(conn)));
            }
        }
    })
}

fn accept(listener: &OwnedFd) -> Result<std::fs::File, String> {
    // SAFETY: accept4 on our listening socket; no peer address wanted.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(format!("vsock accept: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh fd nobody else owns.
    Ok(std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Serves one connection, then waits for the host to close it (5 s at most): the VM may end
/// right after the first one, and the Exit frame, still in the guest's vsock queue when the
/// VMM stops, would be lost with it.
fn serve_file(conn: std::fs::File, main: bool) -> Result<(), String> {
    let writer = conn.try_clone().map_err(|e| format!("vsock: {e}"))?;
    let linger = conn.try_clone().map_err(|e| format!("vsock: {e}"))?;
    let result = runner::serve(conn, writer, main).map_err(|e| e.to_string());
    wait_for_close(linger);
    result
}

fn wait_for_close(conn: std::fs::File) {
    let timeout = libc::timeval {
        tv_sec: 5,
        tv_usec: 0,
    };
    let len = libc::socklen_t::try_from(std::mem::size_of_val(&timeout)).unwrap_or_default();
    // SAFETY: shutdown and setsockopt on a socket we own, with a valid timeval of its size.
    unsafe {
        libc::shutdown(conn.as_raw_fd(), libc::SHUT_WR);
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            len,
        );
    }
    let mut buf = [0u8; 256];
    while let Ok(1..) = std::io::Read::read(&mut &conn, &mut buf) {}
}
