//! Shared harness: build the test guest once, spawn the real gureum binary with a deadline,
//! capture its console, and kill it if it overstays.

#![allow(dead_code)]

pub mod api;
pub mod bundle;
pub mod engine;
pub mod oci;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const GUREUM: &str = env!("CARGO_BIN_EXE_gureum");

pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Output {
    pub fn describe(&self) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// The test guest's ELF, built once per test binary by its own build script.
pub fn test_guest() -> &'static Path {
    static GUEST: OnceLock<PathBuf> = OnceLock::new();
    GUEST.get_or_init(|| {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("guest-kernels/test-guest/build.sh");
        let out = Command::new("bash")
            .arg(script)
            .output()
            .expect("run the test guest's build.sh");
        assert!(
            out.status.success(),
            "test guest build failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = String::from_utf8(out.stdout).unwrap();
        PathBuf::from(
            path.lines()
                .last()
                .expect("build.sh prints the guest's path"),
        )
    })
}

/// How many times slower than a host with hardware KVM this one runs: 1, or 20 in a machine
/// that is itself emulated (the KVM test machine, whose CPUID hypervisor signature is QEMU
/// TCG's), where a sandbox boots in seconds rather than a tenth of one. Every deadline a test
/// sets is `scaled`, so it measures the same thing on both.
pub fn slowdown() -> u32 {
    static SLOWDOWN: OnceLock<u32> = OnceLock::new();
    *SLOWDOWN.get_or_init(|| {
        if std::arch::x86_64::__cpuid(1).ecx & (1 << 31) == 0 {
            return 1;
        }
        let leaf = std::arch::x86_64::__cpuid(0x4000_0000);
        let sig: Vec<u8> = [leaf.ebx, leaf.ecx, leaf.edx]
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .collect();
        if sig == b"TCGTCGTCGTCG" { 20 } else { 1 }
    })
}

/// A `--timeout` value of `secs` seconds, stretched by [`slowdown`].
pub fn timeout_secs(secs: u32) -> String {
    (secs * slowdown()).to_string()
}

/// `d` stretched by [`slowdown`].
pub fn scaled(d: Duration) -> Duration {
    d * slowdown()
}

/// Whether this host has KVM. Where it does, KVM tests always run.
pub fn kvm_available() -> bool {
    Path::new("/dev/kvm").exists()
}

/// Skip (with the reason printed) only where there is no /dev/kvm at all.
#[macro_export]
macro_rules! require_kvm {
    () => {
        if !common::kvm_available() {
            eprintln!("skipped: this host has no /dev/kvm");
            return;
        }
    };
}

/// One test per isolation for a case `fn(&'static str)`: `NAME::native`, `NAME::standin` (the
/// sandbox's host half and the agent through the stand-in VMM, on any host) and `NAME::vm` (a
/// real microVM). A case that boots our Linux guest needs hardware-assisted KVM, so a plain
/// `cargo test` ignores it (and counts it so); `scripts/test.sh` runs it with
/// `--include-ignored` on such a host and with `--ignored` inside the KVM test machine
/// (scripts/kvm-machine.sh) elsewhere: every such test runs, or is counted as skipped.
/// `per_isolation!(NAME => case; standin, vm)` names the isolations to run.
#[macro_export]
macro_rules! per_isolation {
    ($name:ident => $case:ident) => {
        $crate::per_isolation!($name => $case; native, standin, vm);
    };
    ($name:ident => $case:ident; $($iso:ident),+) => {
        mod $name {
            $( $crate::per_isolation!(@one $iso $case); )+
        }
    };
    (@one vm $case:ident) => {
        #[test]
        #[ignore = "boots a Linux guest: hardware KVM or the KVM test machine (scripts/test.sh runs it there)"]
        fn vm() {
            super::$case("vm")
        }
    };
    (@one $iso:ident $case:ident) => {
        #[test]
        fn $iso() {
            super::$case(stringify!($iso))
        }
    };
}

pub fn spawn(args: &[&str], stdin: Option<&[u8]>) -> Child {
    spawn_piped(Command::new(GUREUM).args(args), stdin)
}

/// Starts `cmd` with its stdout and stderr piped and `stdin` written to it, then closed
/// (None: /dev/null).
pub fn spawn_piped(cmd: &mut Command, stdin: Option<&[u8]>) -> Child {
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input).unwrap();
    }
    child
}

/// [`spawn_piped`], then [`finish`]: its output and status.
pub fn output_of(cmd: &mut Command, stdin: Option<&[u8]>, deadline: Duration) -> Output {
    finish(spawn_piped(cmd, stdin), deadline)
}

/// Wait for `child` up to `deadline` (scaled); kill it past that. Collects its output, read
/// as it comes (a chatty child never blocks on a full pipe). After a kill, the output is
/// awaited for 5 s at most: a sandbox's monitor or VMM may still hold the pipes.
pub fn finish(mut child: Child, deadline: Duration) -> Output {
    let stdout = child.stdout.take().map(drain);
    let stderr = child.stderr.take().map(drain);
    finish_drained(child, stdout, stderr, deadline)
}

/// [`finish`], for a child whose pipes are already being drained.
pub fn finish_drained(
    mut child: Child,
    stdout: Option<Drain>,
    stderr: Option<Drain>,
    deadline: Duration,
) -> Output {
    let deadline = scaled(deadline);
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = start.elapsed();
    let wait = status.map_or(Some(Duration::from_secs(5)), |_| None);
    let stdout = stdout.map(|d| d.collect(wait)).unwrap_or_default();
    let stderr = stderr.map(|d| d.collect(wait)).unwrap_or_default();
    assert!(
        status.is_some(),
        "gureum did not finish within {deadline:?}\n{stdout}\n{stderr}"
    );
    Output {
        code: status.and_then(|s| s.code()),
        stdout,
        stderr,
        elapsed,
    }
}

/// A pipe read to its end on a thread of its own.
pub struct Drain(
    std::sync::mpsc::Receiver<Vec<u8>>,
    std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
);

pub fn drain(mut r: impl std::io::Read + Send + 'static) -> Drain {
    let (tx, rx) = std::sync::mpsc::channel();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let so_far = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while let Ok(n @ 1..) = r.read(&mut buf) {
            so_far.lock().unwrap().extend_from_slice(&buf[..n]);
        }
        let _ = tx.send(std::mem::take(&mut *so_far.lock().unwrap()));
    });
    Drain(rx, seen)
}

impl Drain {
    /// Whether `needle` has come, waiting up to `deadline` (scaled) for it.
    pub fn saw(&self, needle: &str, deadline: Duration) -> bool {
        let deadline = scaled(deadline);
        let start = Instant::now();
        loop {
            if String::from_utf8_lossy(&self.1.lock().unwrap()).contains(needle) {
                return true;
            }
            if start.elapsed() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything, once the writers are gone; or, after `within`, what came so far.
    pub fn collect(self, within: Option<Duration>) -> String {
        String::from_utf8_lossy(&self.bytes(within)).into_owned()
    }

    /// As [`Drain::collect`], the bytes as they came.
    pub fn bytes(self, within: Option<Duration>) -> Vec<u8> {
        let all = match within {
            None => self.0.recv().ok(),
            Some(d) => self.0.recv_timeout(d).ok(),
        };
        all.unwrap_or_else(|| self.1.lock().unwrap().clone())
    }
}

/// Run gureum to completion (30 s at most).
pub fn gureum(args: &[&str]) -> Output {
    gureum_with_deadline(args, Duration::from_secs(30))
}

/// Run gureum to completion (`deadline` at most, scaled).
pub fn gureum_with_deadline(args: &[&str], deadline: Duration) -> Output {
    finish(spawn(args, None), deadline)
}

/// Boot the test guest with `extra` flags.
pub fn boot_test_guest(extra: &[&str]) -> Output {
    let kernel = test_guest().to_str().unwrap().to_string();
    let mut args = vec!["boot", "--kernel", &kernel];
    if !extra.contains(&"--timeout") {
        args.extend_from_slice(&["--timeout", "20"]);
    }
    args.extend_from_slice(extra);
    gureum(&args)
}

/// Run `gureum boot` with exactly these arguments and a 20 s timeout.
pub fn boot_test_guest_with(args: &[&str]) -> Output {
    let mut all = vec!["boot", "--timeout", "20"];
    all.extend_from_slice(args);
    gureum(&all)
}

/// A unique scratch directory under the system temp dir.
pub fn scratch(name: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("gureum-test-{}-{name}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A token no run could print by accident.
pub fn token() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!("tok{}x{}", t.as_nanos() % 1_000_000_007, std::process::id())
}

/// Wrap an ELF kernel linked at 1 MiB into a bzImage: a boot sector and one setup sector holding
/// the setup header (protocol 2.15), then the flat image from 1 MiB. Its 64-bit entry is
/// code32_start + 0x200, as the boot protocol says; `xloadflags` 0 takes that entry away.
pub fn make_bzimage(elf: &Path, out: &Path, xloadflags: u16) {
    let data = std::fs::read(elf).unwrap();
    let half = |o: usize| usize::from(u16::from_le_bytes([data[o], data[o + 1]]));
    let word =
        |o: usize| usize::try_from(u64::from_le_bytes(data[o..o + 8].try_into().unwrap())).unwrap();
    const BASE: usize = 0x10_0000;
    let (phoff, phnum) = (word(0x20), half(0x38));
    let mut payload = Vec::new();
    let mut mem_end = BASE;
    for i in 0..phnum {
        let ph = phoff + i * 56;
        if u32::from_le_bytes(data[ph..ph + 4].try_into().unwrap()) != 1 {
            continue; // not PT_LOAD
        }
        let (off, paddr, filesz, memsz) =
            (word(ph + 8), word(ph + 24), word(ph + 32), word(ph + 40));
        let at = paddr - BASE;
        if payload.len() < at + filesz {
            payload.resize(at + filesz, 0);
        }
        payload[at..at + filesz].copy_from_slice(&data[off..off + filesz]);
        mem_end = mem_end.max(paddr + memsz);
    }
    let le32 = |v: usize| u32::try_from(v).unwrap().to_le_bytes();
    let mut image = vec![0u8; 1024];
    image[0x1f1] = 1; // setup_sects
    image[0x1fe..0x200].copy_from_slice(&[0x55, 0xaa]);
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    image[0x211] = 1; // loadflags: LOADED_HIGH
    image[0x214..0x218].copy_from_slice(&le32(BASE)); // code32_start
    image[0x22c..0x230].copy_from_slice(&le32(0x7fff_ffff)); // initrd_addr_max
    image[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
    image[0x238..0x23c].copy_from_slice(&le32(2047)); // cmdline_size
    image[0x260..0x264].copy_from_slice(&le32(mem_end - BASE)); // init_size
    image.extend_from_slice(&payload);
    std::fs::write(out, image).unwrap();
}

/// Run gureum until a console line satisfies `done` (or `deadline` passes), then SIGKILL it.
/// Returns the lines seen, and whether `done` was met.
pub fn run_until(
    args: &[&str],
    done: impl Fn(&str) -> bool,
    deadline: Duration,
) -> (Vec<String>, bool) {
    let mut cmd = Command::new(GUREUM);
    cmd.args(args);
    run_command_until(cmd, done, deadline)
}

/// As `run_until`, for any command (QEMU, say).
pub fn run_command_until(
    mut cmd: Command,
    done: impl Fn(&str) -> bool,
    deadline: Duration,
) -> (Vec<String>, bool) {
    use std::io::{BufRead, BufReader};
    use std::sync::mpsc;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    // Its stderr says why a VMM ended early (a triple fault, say): shown when `done` never was.
    let stderr = child.stderr.take().map(drain);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = scaled(deadline);
    let start = Instant::now();
    let mut lines = Vec::new();
    let mut met = false;
    while !met && start.elapsed() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                met = done(&line);
                lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let stderr = stderr.map(|d| d.collect(Some(Duration::from_secs(5))));
    if let Some(text) = stderr.filter(|t| !met && !t.is_empty()) {
        lines.push("-- its stderr:".into());
        lines.extend(text.lines().map(str::to_string));
    }
    (lines, met)
}

/// A network namespace with an up TAP in it (and an address on the TAP if given), IPv6 off so
/// the host's own chatter stays off the link; removed on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str, tap: &str, addr: Option<&str>) -> Self {
        let name = format!("gureum-{tag}{}", std::process::id());
        let ip = |args: &[&str]| {
            let out = Command::new("ip")
                .args(args)
                .output()
                .expect("run ip (iproute2)");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ip(&["netns", "add", &name]);
        let ns = Self { name };
        ip(&["-n", &ns.name, "tuntap", "add", "dev", tap, "mode", "tap"]);
        if let Some(addr) = addr {
            ip(&["-n", &ns.name, "addr", "add", addr, "dev", tap]);
        }
        ip(&["-n", &ns.name, "link", "set", tap, "up"]);
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.name,
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
            ])
            .status();
        ns
    }

    /// Another TAP in the namespace, up.
    pub fn add_tap(&self, tap: &str) {
        for args in [
            &["-n", &self.name, "tuntap", "add", "dev", tap, "mode", "tap"][..],
            &["-n", &self.name, "link", "set", tap, "up"][..],
        ] {
            let out = Command::new("ip").args(args).output().expect("run ip");
            assert!(out.status.success(), "ip {args:?}");
        }
    }

    /// Run `f` on a thread inside the namespace.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = std::ffi::CString::new(format!("/run/netns/{}", self.name)).unwrap();
        std::thread::spawn(move || {
            // SAFETY: setns on a descriptor we open; it moves only this thread.
            unsafe {
                let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                assert!(
                    fd >= 0 && libc::setns(fd, libc::CLONE_NEWNET) == 0,
                    "enter the namespace"
                );
                libc::close(fd);
            }
            f()
        })
    }

    /// `gureum`'s (or any program's) command line, run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A file of the default guest built by guest-kernels/build.sh (vmlinux, bzImage,
/// initramfs.cpio); fails with the way to build it if it is missing.
pub fn default_guest_file(name: &str) -> PathBuf {
    let cache = std::env::var_os("GUREUM_CACHE").unwrap_or_else(|| "/var/cache/gureum".into());
    let path = PathBuf::from(cache).join("default").join(name);
    assert!(
        path.exists(),
        "{} is missing: run guest-kernels/build.sh (scripts/test.sh does)",
        path.display()
    );
    path
}

/// Whether this host's KVM is PVM, where a Linux guest's userspace cannot run.
pub fn host_is_pvm() -> bool {
    let out = gureum(&["host-check", "--json"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    out.stdout.contains("\"kind\": \"pvm\"")
}

/// QEMU microvm under software emulation (TCG) booting `kernel`, console on stdout, modern
/// virtio-mmio devices which QEMU announces on the command line itself (acpi=off).
pub fn qemu_tcg_microvm(kernel: &Path, append: &str) -> Command {
    let mut qemu = Command::new("qemu-system-x86_64");
    tcg_microvm_args(&mut qemu, kernel, append);
    qemu
}

/// The arguments of [`qemu_tcg_microvm`], for a QEMU started another way (in a namespace).
pub fn tcg_microvm_args(qemu: &mut Command, kernel: &Path, append: &str) {
    qemu.args([
        "-M",
        "microvm,pit=on,pic=on,rtc=on,acpi=off",
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-m",
        "256",
    ]);
    qemu.arg("-kernel").arg(kernel).args(["-append", append]);
    qemu.args([
        "-no-reboot",
        "-nographic",
        "-nodefaults",
        "-serial",
        "stdio",
    ]);
    qemu.args(["-global", "virtio-mmio.force-legacy=false"]);
}

/// An ext4 image of `size` (mkfs.ext4 syntax) holding the tree at `root`.
pub fn ext4_image(root: &Path, image: &Path, size: &str) {
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(root)
        .arg(image)
        .arg(size)
        .output()
        .expect("mkfs.ext4 (e2fsprogs; scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `len` deterministic pseudo-random bytes (xorshift) for `seed`.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

/// A busybox-static root filesystem at `rootfs`: /bin with every applet, /etc/passwd, and the
/// usual mount points.
pub fn busybox_rootfs(rootfs: &Path) {
    const BUSYBOX: &str = "/bin/busybox";
    for d in ["bin", "proc", "dev", "tmp", "etc", "sys", "home/u"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).expect("busybox-static (scripts/setup.sh)");
    let list = Command::new(BUSYBOX).arg("--list").output().unwrap();
    for name in String::from_utf8_lossy(&list.stdout).lines() {
        if name != "busybox" {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(name)).unwrap();
        }
    }
    std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0::/:/bin/sh\n").unwrap();
}
