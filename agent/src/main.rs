//! `gureum-agent --listen PATH`: serve one run request on a Unix socket (native mode, tests).
//! As a guest's /init (PID 1) it mounts /proc, /sys and /dev, serves one run request on the
//! transport named by `gureum.agent=` on the kernel command line (`port:NAME`, the
//! virtio-console port the host named NAME), and restarts the VM when it is done (with
//! `reboot=k`, the VMM exits).

use std::os::unix::net::UnixListener;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // SAFETY: getpid has no preconditions.
    let pid1 = unsafe { libc::getpid() } == 1;
    // A guest's /init: PID 1 with no arguments (PID 1 of a namespace with --listen is not).
    let guest_init = pid1 && args.len() == 1;
    let result = match args.get(1..).unwrap_or_default() {
        [flag, path] if flag == "--listen" => listen(path),
        [] if guest_init => init(),
        _ => {
            eprintln!("usage: gureum-agent --listen PATH (or as a guest's /init)");
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
    gureum_agent::runner::serve(conn, writer).map_err(|e| e.to_string())
}

fn mount(source: &str, target: &str, fstype: &str) -> Result<(), String> {
    let _ = std::fs::create_dir_all(target);
    let c = |s: &str| std::ffi::CString::new(s).map_err(|_| format!("bad path {s:?}"));
    let (s, t, f) = (c(source)?, c(target)?, c(fstype)?);
    // SAFETY: mount(2) with NUL-terminated strings that outlive the call.
    let rc = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(format!("cannot mount {fstype} on {target}: {e}"));
        }
    }
    Ok(())
}

fn init() -> Result<(), String> {
    mount("proc", "/proc", "proc")?;
    mount("sysfs", "/sys", "sysfs")?;
    mount("devtmpfs", "/dev", "devtmpfs")?;
    mount("tmpfs", "/run", "tmpfs")?;
    let cmdline =
        std::fs::read_to_string("/proc/cmdline").map_err(|e| format!("/proc/cmdline: {e}"))?;
    let transport = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("gureum.agent="))
        .ok_or("no gureum.agent= on the kernel command line")?;
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
            gureum_agent::runner::serve(port, writer).map_err(|e| e.to_string())
        }
        _ => Err(format!(
            "unknown transport {transport:?} (expected port:NAME)"
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
