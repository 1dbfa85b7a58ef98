//! `gureum bench devices`: device throughput with the guest's own work kept small. The test
//! guest keeps many large requests in flight and touches only headers and rings, so what is
//! timed (between its "bench: start" and "bench: done" console lines) is the VMM's device path.
//! With QEMU installed, the same guest and image run under `qemu-system-x86_64 -M microvm`
//! (userspace virtio on both), interleaved. Block, network transmit (into a TAP in a namespace
//! made for the run), and vsock (a host client through gureum's socket; gureum only).

use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;

use super::{Error, Samples, gureum_command, qemu_command, qemu_unavailable, time_run};
use gureum_vmm::config::{DiskConfig, VmConfig};
use gureum_vmm::host_check::kvm_kind;

const IMAGE_MIB: usize = 64;
const MARKS: [&str; 2] = ["bench: start", "bench: done"];

#[derive(Clone, Copy)]
enum Unit {
    MegabytesPerSecond,
    Iops,
    FramesPerSecond,
}

struct Workload {
    name: &'static str,
    args: &'static str,
    bytes: f64,
    requests: f64,
    unit: Unit,
}

const WORKLOADS: [Workload; 3] = [
    Workload {
        name: "block read, 64 KiB x 32 in flight",
        args: "op=read bs=65536 count=2048 depth=32",
        bytes: 2048.0 * 65536.0,
        requests: 2048.0,
        unit: Unit::MegabytesPerSecond,
    },
    Workload {
        name: "block read, 4 KiB x 32 in flight",
        args: "op=read bs=4096 count=8192 depth=32",
        bytes: 8192.0 * 4096.0,
        requests: 8192.0,
        unit: Unit::Iops,
    },
    Workload {
        name: "block write, 64 KiB x 32 in flight",
        args: "op=write bs=65536 count=2048 depth=32",
        bytes: 2048.0 * 65536.0,
        requests: 2048.0,
        unit: Unit::MegabytesPerSecond,
    },
];

/// A raw image of `IMAGE_MIB` MiB with real (non-hole) contents.
fn make_image(path: &Path) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    let chunk: Vec<u8> = (0..1 << 20)
        .map(|i: u32| i.to_le_bytes()[0] ^ 0x5a)
        .collect();
    for _ in 0..IMAGE_MIB {
        f.write_all(&chunk)?;
    }
    f.sync_all()
}

/// The rate a run achieved, from the time between its two console marks.
fn rate(w: &Workload, marks: &[Option<f64>]) -> Option<f64> {
    let (start, done) = (marks.first().copied()??, marks.get(1).copied()??);
    let seconds = (done - start) / 1e6;
    (seconds > 0.0).then(|| match w.unit {
        Unit::MegabytesPerSecond => w.bytes / seconds / 1e6,
        Unit::Iops | Unit::FramesPerSecond => w.requests / seconds,
    })
}

pub fn run(kernel: &Path, runs: usize, with_qemu: bool) -> Result<String, Error> {
    if runs == 0 {
        return Err(Error::NoRuns);
    }
    let exe = gureum_vmm::boot::vmm_exe()
        .map_or_else(std::env::current_exe, Ok)
        .map_err(Error::SelfExe)?;
    let dir = std::env::temp_dir().join(format!("gureum-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| Error::Spawn("an image for the benchmark", e))?;
    let image = dir.join("bench.img");
    let vm_file = dir.join("vm.json");
    make_image(&image).map_err(|e| Error::Spawn("an image for the benchmark", e))?;
    let mut config = VmConfig {
        kernel: kernel.to_path_buf(),
        initrd: None,
        cmdline: String::new(),
        vcpus: 1,
        memory_mib: 256,
        disks: vec![DiskConfig {
            path: image,
            read_only: false,
            root: false,
            id: None,
        }],
        nets: Vec::new(),
        vsock: None,
        rng: false,
    };
    let qemu_skip = if with_qemu {
        qemu_unavailable(&config)
    } else {
        Some("--no-qemu".into())
    };
    let (mut gureum, mut qemu) = (Samples::default(), Samples::default());
    let netns = Netns::new();
    let result = (|| {
        for w in &WORKLOADS {
            config.cmdline = format!("scenario=bench-blk {}", w.args);
            for run in 0..runs {
                let g = time_run(gureum_command(&exe, &config, &vm_file)?, "gureum", &MARKS)?;
                let fail = |vmm, r: &super::Run| r.error(vmm, run, w.name);
                gureum.push(w.name, rate(w, &g.marks).ok_or_else(|| fail("gureum", &g))?);
                if qemu_skip.is_none() {
                    let q = time_run(qemu_command(&config), "qemu-system-x86_64", &MARKS)?;
                    qemu.push(w.name, rate(w, &q.marks).ok_or_else(|| fail("qemu", &q))?);
                }
            }
        }
        for run in 0..runs {
            gureum.push(VSOCK_ROW, vsock_rate(&exe, kernel, &dir, run)?);
        }
        if let Ok(ns) = &netns {
            config.disks.clear();
            config.cmdline = format!("scenario=bench-net count={NET_FRAMES}");
            config.nets = vec![gureum_vmm::config::NetConfig {
                tap: NET_TAP.into(),
                mac: None,
            }];
            for run in 0..runs {
                let g = time_run(
                    ns.wrap(gureum_command(&exe, &config, &vm_file)?),
                    "gureum",
                    &MARKS,
                )?;
                net_push(&mut gureum, &g.marks)
                    .ok_or_else(|| g.error("gureum", run, NET_PPS_ROW))?;
                if qemu_skip.is_none() {
                    let q = time_run(ns.wrap(qemu_command(&config)), "qemu-system-x86_64", &MARKS)?;
                    net_push(&mut qemu, &q.marks)
                        .ok_or_else(|| q.error("qemu", run, NET_PPS_ROW))?;
                }
            }
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    let net_skip = netns.as_ref().err().cloned();
    drop(netns);
    result?;
    Ok(render(runs, &gureum, &qemu, qemu_skip, net_skip))
}

const NET_TAP: &str = "gbench0";
const NET_FRAMES: u32 = 20_000;
const NET_FRAME_BYTES: f64 = 1514.0;
const NET_PPS_ROW: &str = "net tx, 1514-byte frames, 32 in flight";
const NET_MBPS_ROW: &str = "net tx, the same in MB/s";

fn net_push(s: &mut Samples, marks: &[Option<f64>]) -> Option<()> {
    let (start, done) = (marks.first().copied()??, marks.get(1).copied()??);
    let secs = (done - start) / 1e6;
    let pps = f64::from(NET_FRAMES) / secs;
    s.push(NET_PPS_ROW, pps);
    s.push(NET_MBPS_ROW, pps * NET_FRAME_BYTES / 1e6);
    Some(())
}

/// A network namespace with an up TAP for the frames to go to (the host kernel drops them),
/// removed on drop. Err says why there is none (not root, no iproute2).
struct Netns(String);

impl Netns {
    fn new() -> Result<Self, String> {
        let name = format!("gureum-bench-{}", std::process::id());
        let ip = |args: &[&str]| {
            std::process::Command::new("ip")
                .args(args)
                .output()
                .map_err(|e| format!("cannot run ip: {e}"))
                .and_then(|o| {
                    o.status.success().then_some(()).ok_or_else(|| {
                        format!(
                            "ip {}: {}",
                            args.join(" "),
                            String::from_utf8_lossy(&o.stderr).trim()
                        )
                    })
                })
        };
        ip(&["netns", "add", &name])?;
        let ns = Self(name);
        ip(&["-n", &ns.0, "tuntap", "add", "dev", NET_TAP, "mode", "tap"])?;
        ip(&["-n", &ns.0, "link", "set", NET_TAP, "up"])?;
        Ok(ns)
    }

    /// `cmd`, run inside the namespace.
    fn wrap(&self, cmd: std::process::Command) -> std::process::Command {
        let mut wrapped = std::process::Command::new("ip");
        wrapped
            .args(["netns", "exec", &self.0])
            .arg(cmd.get_program())
            .args(cmd.get_args());
        wrapped
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .output();
    }
}

const VSOCK_ROW: &str = "vsock echo, 1 stream, 64 MB";
const VSOCK_BYTES: usize = 64_000_000;

/// MB/s through a guest echo listener: a host client writes 64 MB through gureum's Unix socket
/// while reading the echo back.
fn vsock_rate(exe: &Path, kernel: &Path, dir: &Path, run: usize) -> Result<f64, Error> {
    use std::io::{BufRead, BufReader, Read};
    use std::os::unix::net::UnixStream;
    let uds = dir.join("bench-vsock.sock");
    let spawn_err = |e| Error::Spawn("the vsock benchmark", e);
    let config = VmConfig {
        kernel: kernel.to_path_buf(),
        initrd: None,
        cmdline: "scenario=vsock-echo port=5000 conns=1".into(),
        vcpus: 1,
        memory_mib: gureum_vmm::config::DEFAULT_MEMORY_MIB,
        disks: Vec::new(),
        nets: Vec::new(),
        vsock: Some(gureum_vmm::config::VsockConfig {
            cid: 3,
            uds: uds.clone(),
        }),
        rng: false,
    };
    let mut child = gureum_command(exe, &config, &dir.join("vsock-vm.json"))?
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    let console = child.stdout.take().map(|out| {
        std::thread::spawn(move || {
            let lines = BufReader::new(out).lines().map_while(Result::ok);
            let all: Vec<String> = lines.collect();
            all[all.len().saturating_sub(4)..].join(" | ")
        })
    });
    let started = std::time::Instant::now();
    let stream = loop {
        match UnixStream::connect(&uds) {
            Ok(s) => break s,
            Err(e) if started.elapsed().as_secs() >= 10 => {
                let _ = child.kill();
                return Err(spawn_err(e));
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    };
    let transfer = || -> std::io::Result<f64> {
        let mut s = stream.try_clone()?;
        s.write_all(b"CONNECT 5000\n")?;
        let mut line = String::new();
        BufReader::new(stream.try_clone()?).read_line(&mut line)?;
        let t = std::time::Instant::now();
        let mut w = stream.try_clone()?;
        let writer = std::thread::spawn(move || {
            let chunk = vec![0x5au8; 1 << 20];
            let mut left = VSOCK_BYTES;
            while left > 0 {
                let n = left.min(chunk.len());
                w.write_all(&chunk[..n])?;
                left -= n;
            }
            Ok::<(), std::io::Error>(())
        });
        let mut got = 0;
        let mut buf = vec![0u8; 1 << 20];
        while got < VSOCK_BYTES {
            match s.read(&mut buf)? {
                0 => break,
                n => got += n,
            }
        }
        let secs = t.elapsed().as_secs_f64();
        writer
            .join()
            .map_err(|_| std::io::Error::other("writer"))??;
        s.shutdown(std::net::Shutdown::Both)?;
        Ok(got as f64 / secs / 1e6)
    };
    let rate = transfer();
    let out = child.wait_with_output().map_err(spawn_err)?;
    let console = console.and_then(|t| t.join().ok()).unwrap_or_default();
    match rate {
        Ok(r) if out.status.success() => Ok(r),
        rate => Err(Error::Run {
            vmm: "gureum",
            run,
            what: match rate {
                Ok(_) => format!(" ({VSOCK_ROW})"),
                Err(e) => format!(" ({VSOCK_ROW}: the host's side: {e})"),
            },
            code: out.status.code(),
            stderr: String::from_utf8_lossy(&out.stderr).trim_end().to_string(),
            console,
        }),
    }
}

fn render(
    runs: usize,
    g: &Samples,
    q: &Samples,
    skip: Option<String>,
    net_skip: Option<String>,
) -> String {
    let mut r = format!(
        "gureum bench devices: {runs} runs each, test guest, 1 vCPU, {IMAGE_MIB} MiB image (page cache), {:?} KVM\n",
        kvm_kind().0
    );
    let _ = writeln!(
        r,
        "{:<38} {:>14} {:>14} {:>12}",
        "workload (median)", "gureum", "qemu microvm", "gureum/qemu"
    );
    let rows = WORKLOADS.iter().map(|w| (w.name, w.unit)).chain([
        (VSOCK_ROW, Unit::MegabytesPerSecond),
        (NET_PPS_ROW, Unit::FramesPerSecond),
        (NET_MBPS_ROW, Unit::MegabytesPerSecond),
    ]);
    for (name, unit) in rows {
        let unit = match unit {
            Unit::MegabytesPerSecond => "MB/s",
            Unit::Iops => "IOPS",
            Unit::FramesPerSecond => "fps",
        };
        let med = |s: &Samples| s.stats(name).map(|v| v[1]);
        let cell = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.0} {unit}"));
        let ratio = match (med(g), med(q)) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
            _ => "n/a".into(),
        };
        let _ = writeln!(
            r,
            "{:<38} {:>14} {:>14} {:>12}",
            name,
            cell(med(g)),
            cell(med(q)),
            ratio
        );
    }
    let _ = writeln!(
        r,
        "vsock: QEMU has no userspace vsock device (only vhost-vsock), so there is no QEMU number"
    );
    if let Some(why) = net_skip {
        let _ = writeln!(r, "net: skipped ({why})");
    }
    let _ = match skip {
        Some(why) => write!(r, "qemu microvm: skipped ({why})"),
        None => write!(
            r,
            "target: gureum >= 1.0x QEMU on each block and net workload"
        ),
    };
    r
}
