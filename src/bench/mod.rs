//! Benchmarks: `gureum bench boot` here, `gureum bench devices` in [`devices`].
//!
//! `gureum bench boot`: boot a guest N times as separate processes and report each phase's
//! min / median / p95 and the VMM's own memory; with QEMU installed, boot the same guest under
//! `qemu-system-x86_64 -M microvm` in between (interleaved, so drift hits both alike) and compare
//! the time each takes, measured from outside, to the guest's "boot timer written" line.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gureum_vmm::config::VmConfig;
use gureum_vmm::host_check::{KvmKind, kvm_kind};

pub mod compare;
pub mod devices;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot find gureum's own executable")]
    SelfExe(#[source] std::io::Error),
    #[error("cannot start {0}")]
    Spawn(&'static str, #[source] std::io::Error),
    #[error("{vmm} run {run}{what} failed (exit {code:?}): {stderr}; its console ended: {console}")]
    Run {
        vmm: &'static str,
        run: usize,
        /// The workload, where a benchmark runs several (", block read, ...").
        what: String,
        code: Option<i32>,
        stderr: String,
        /// The last lines the guest printed, joined with " | ".
        console: String,
    },
    #[error("--runs must be at least 1")]
    NoRuns,
    #[error("cannot write the VM's config file {0}")]
    ConfigFile(std::path::PathBuf, #[source] std::io::Error),
}

/// The guest's console line right after it writes the boot-timer port (test guest, our init).
const MARKERS: [&str; 2] = ["boot-timer: written", "gureum-init: ready"];
const RUN_DEADLINE: Duration = Duration::from_secs(120);

/// Nearest-rank percentile (`p` in percent) of sorted samples.
pub fn percentile(sorted: &[f64], p: usize) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p.min(100) * sorted.len()).div_ceil(100);
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `key=value` pairs of a `gureum-phases` line.
pub fn parse_phases(stderr: &str) -> Vec<(String, f64)> {
    let Some(line) = stderr.lines().find(|l| l.starts_with("gureum-phases ")) else {
        return Vec::new();
    };
    line.split_whitespace()
        .skip(1)
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect()
}

/// One run measured from outside: spawn to each marker line, spawn to exit (microseconds).
pub(crate) struct Run {
    /// When the first line containing each marker appeared.
    marks: Vec<Option<f64>>,
    exit_us: f64,
    stderr: String,
    /// The guest's last console lines.
    console: std::collections::VecDeque<String>,
    success: bool,
    code: Option<i32>,
}

impl Run {
    /// The error for this run of `vmm`, naming `what` ran when not empty.
    pub(crate) fn error(&self, vmm: &'static str, run: usize, what: &str) -> Error {
        Error::Run {
            vmm,
            run,
            what: if what.is_empty() {
                String::new()
            } else {
                format!(" ({what})")
            },
            code: self.code,
            stderr: self.stderr.trim_end().to_string(),
            console: Vec::from(self.console.clone()).join(" | "),
        }
    }
}

/// How many of the guest's last console lines a failed run's error shows.
const CONSOLE_TAIL: usize = 4;

pub(crate) fn time_run(
    mut cmd: Command,
    name: &'static str,
    markers: &[&str],
) -> Result<Run, Error> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|e| Error::Spawn(name, e))?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut e) = stderr {
            let _ = std::io::Read::read_to_string(&mut e, &mut s);
        }
        s
    });
    let mut marks = vec![None; markers.len()];
    let mut console = std::collections::VecDeque::with_capacity(CONSOLE_TAIL + 1);
    if let Some(out) = stdout {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            let now = start.elapsed().as_secs_f64() * 1e6;
            for (mark, m) in marks.iter_mut().zip(markers) {
                if mark.is_none() && line.contains(m) {
                    *mark = Some(now);
                }
            }
            console.push_back(line);
            if console.len() > CONSOLE_TAIL {
                console.pop_front();
            }
            if start.elapsed() > RUN_DEADLINE {
                let _ = child.kill();
                break;
            }
        }
    }
    let status = child.wait().map_err(|e| Error::Spawn(name, e))?;
    let exit_us = start.elapsed().as_secs_f64() * 1e6;
    let stderr = err_reader.join().unwrap_or_default();
    Ok(Run {
        marks,
        exit_us,
        stderr,
        console,
        success: status.success(),
        code: status.code(),
    })
}

/// gureum booting `config` (written to `file`, `gureum boot --config`), reporting its phases.
pub(crate) fn gureum_command(exe: &Path, config: &VmConfig, file: &Path) -> Result<Command, Error> {
    let mut cmd = gureum_vmm::boot::launch(exe, config, file)
        .map_err(|e| Error::ConfigFile(file.to_path_buf(), e))?;
    cmd.args(["--phases", "--timeout", "60"]);
    Ok(cmd)
}

/// QEMU microvm booting the same kernel through its PVH entry; its isa-debug-exit device ends
/// the run where the guest has no i8042 to reset through.
pub(crate) fn qemu_command(config: &VmConfig) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    let cpu = if kvm_kind().0 == KvmKind::Pvm {
        "host,-arch-capabilities"
    } else {
        "host"
    };
    cmd.args([
        "-M",
        "microvm,x-option-roms=off,rtc=off",
        "-enable-kvm",
        "-cpu",
        cpu,
    ]);
    cmd.args([
        "-m",
        &config.memory_mib.to_string(),
        "-smp",
        &config.vcpus.to_string(),
    ]);
    cmd.arg("-kernel").arg(&config.kernel);
    if let Some(initrd) = &config.initrd {
        cmd.arg("-initrd").arg(initrd);
    }
    cmd.args([
        "-append",
        &qemu_append(&config.cmdline),
        "-nographic",
        "-nodefaults",
        "-serial",
        "stdio",
    ]);
    cmd.args(["-no-reboot", "-device", "isa-debug-exit,iobase=0xf4"]);
    // Modern virtio-mmio devices, as gureum's; the default page cache and I/O threads.
    cmd.args(["-global", "virtio-mmio.force-legacy=false"]);
    for (i, disk) in config.disks.iter().enumerate() {
        let ro = if disk.read_only { ",readonly=on" } else { "" };
        let drive = format!(
            "id=d{i},file={},format=raw,if=none,cache=writeback,aio=threads{ro}",
            disk.path.display()
        );
        cmd.args([
            "-drive",
            &drive,
            "-device",
            &format!("virtio-blk-device,drive=d{i}"),
        ]);
    }
    for (i, net) in config.nets.iter().enumerate() {
        let netdev = format!(
            "tap,id=n{i},ifname={},script=no,downscript=no,vhost=off",
            net.tap
        );
        cmd.args([
            "-netdev",
            &netdev,
            "-device",
            &format!("virtio-net-device,netdev=n{i}"),
        ]);
    }
    cmd
}

/// Why QEMU is not compared, if it is not.
/// The guest command line for QEMU microvm: it has no i8042, so a Linux guest's `reboot=k`
/// would hang after "Restarting system" and QEMU never exit; a triple fault (`reboot=t`) ends
/// it, since QEMU runs with -no-reboot.
pub(crate) fn qemu_append(cmdline: &str) -> String {
    cmdline
        .split_whitespace()
        .map(|w| if w == "reboot=k" { "reboot=t" } else { w })
        .collect::<Vec<_>>()
        .join(" ")
}

pub(crate) fn qemu_unavailable(config: &VmConfig) -> Option<String> {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("qemu-system-x86_64").exists()));
    if !found {
        return Some("qemu-system-x86_64 is not installed".into());
    }
    match gureum_vmm::loader::has_pvh_note(&config.kernel) {
        true => None,
        false => Some(format!(
            "{} has no PVH entry note for QEMU microvm",
            config.kernel.display()
        )),
    }
}

#[derive(Default)]
pub(crate) struct Samples(Vec<(String, Vec<f64>)>);

impl Samples {
    fn push(&mut self, key: &str, v: f64) {
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some((_, s)) => s.push(v),
            None => self.0.push((key.to_string(), vec![v])),
        }
    }

    fn stats(&self, key: &str) -> Option<[f64; 3]> {
        let (_, s) = self.0.iter().find(|(k, _)| k == key)?;
        let mut s = s.clone();
        s.sort_by(f64::total_cmp);
        Some([0, 50, 95].map(|p| percentile(&s, p)))
    }
}

/// Where `gureum bench boot` writes the VM's config for its runs; removed when dropped.
struct ConfigFile(std::path::PathBuf);

impl ConfigFile {
    fn new() -> Self {
        let name = format!("gureum-bench-vm-{}.json", std::process::id());
        Self(std::env::temp_dir().join(name))
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub fn boot(config: &VmConfig, runs: usize, with_qemu: bool) -> Result<String, Error> {
    if runs == 0 {
        return Err(Error::NoRuns);
    }
    let exe = gureum_vmm::boot::vmm_exe()
        .map_or_else(std::env::current_exe, Ok)
        .map_err(Error::SelfExe)?;
    let qemu_skip = if with_qemu {
        qemu_unavailable(config)
    } else {
        Some("--no-qemu".into())
    };
    let (mut gureum, mut qemu) = (Samples::default(), Samples::default());
    let file = ConfigFile::new();
    for run in 0..runs {
        let g = time_run(gureum_command(&exe, config, &file.0)?, "gureum", &MARKERS)?;
        if !g.success {
            return Err(g.error("gureum", run, ""));
        }
        for (k, v) in parse_phases(&g.stderr) {
            gureum.push(&k, v);
        }
        if let Some(v) = g.marks.iter().flatten().copied().reduce(f64::min) {
            gureum.push("marker", v);
        }
        gureum.push("wall", g.exit_us);
        if qemu_skip.is_none() {
            let q = time_run(qemu_command(config), "qemu-system-x86_64", &MARKERS)?;
            let Some(marker) = q.marks.iter().flatten().copied().reduce(f64::min) else {
                return Err(q.error("qemu", run, ""));
            };
            qemu.push("marker", marker);
            qemu.push("wall", q.exit_us);
        }
    }
    Ok(render(config, runs, &gureum, &qemu, qemu_skip))
}

fn render(cfg: &VmConfig, runs: usize, g: &Samples, q: &Samples, skip: Option<String>) -> String {
    let mut r = String::new();
    let _ = writeln!(
        r,
        "gureum bench boot: {runs} runs of {} ({} vCPU, {} MiB) on {:?} KVM",
        cfg.kernel.display(),
        cfg.vcpus,
        cfg.memory_mib,
        kvm_kind().0
    );
    let _ = writeln!(
        r,
        "{:<44} {:>9} {:>9} {:>9}",
        "gureum (ms)", "min", "median", "p95"
    );
    let rows = [
        ("vm_built_us", "VM built (since main)"),
        ("first_entry_us", "first vCPU entry (since main)"),
        ("boot_timer_us", "boot-timer write (since main)"),
        ("shutdown_us", "guest shutdown (since main)"),
        ("exit_us", "process exit (since main)"),
        ("marker", "spawn to boot-timer line on the console"),
        ("wall", "spawn to exit"),
    ];
    let line = |r: &mut String, label: &str, s: Option<[f64; 3]>, scale: f64| match s {
        Some(v) => {
            let [a, b, c] = v.map(|x| x * scale);
            let _ = writeln!(r, "{label:<44} {a:>9.2} {b:>9.2} {c:>9.2}");
        }
        None => {
            let _ = writeln!(r, "{label:<44} {:>9}", "n/a");
        }
    };
    for (key, label) in rows {
        line(&mut r, label, g.stats(key), 1e-3);
    }
    line(
        &mut r,
        "VMM memory, RSS - guest pages touched (MiB)",
        g.stats("vmm_kib"),
        1.0 / 1024.0,
    );
    let med = |s: &Samples, k: &str, scale: f64| s.stats(k).map_or(f64::NAN, |v| v[1] * scale);
    // A target with no measurement says so; it is neither met nor missed.
    let target = |r: &mut String, what: &str, value: f64, unit: &str, limit: f64| {
        let _ = if value.is_nan() {
            writeln!(r, "target: {what} <= {limit}{unit}: no data")
        } else {
            let verdict = if value <= limit { "met" } else { "MISSED" };
            writeln!(
                r,
                "target: {what} <= {limit}{unit}: {value:.2}{unit}, {verdict}"
            )
        };
    };
    target(
        &mut r,
        "main to first guest instruction",
        med(g, "first_entry_us", 1e-3),
        " ms",
        3.0,
    );
    target(
        &mut r,
        "VMM memory",
        med(g, "vmm_kib", 1.0 / 1024.0),
        " MiB",
        3.0,
    );
    match skip {
        Some(why) => {
            let _ = write!(r, "qemu microvm: skipped ({why})");
        }
        None => {
            let _ = writeln!(
                r,
                "{:<44} {:>9} {:>9} {:>9}",
                "qemu-system-x86_64 -M microvm (ms)", "min", "median", "p95"
            );
            line(
                &mut r,
                "spawn to boot-timer line on the console",
                q.stats("marker"),
                1e-3,
            );
            line(&mut r, "spawn to exit", q.stats("wall"), 1e-3);
            let ratio = med(g, "marker", 1.0) / med(q, "marker", 1.0);
            target(
                &mut r,
                "gureum / QEMU, spawn to the boot-timer line,",
                ratio,
                "x",
                0.5,
            );
            r.pop();
        }
    }
    r
}

#[cfg(test)]
mod tests {
    #[test]
    fn qemu_gets_a_reboot_it_can_end_on() {
        assert_eq!(
            super::qemu_append("console=ttyS0 reboot=k panic=1"),
            "console=ttyS0 reboot=t panic=1"
        );
    }

    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let s: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&s, 0), 1.0);
        assert_eq!(percentile(&s, 50), 10.0);
        assert_eq!(percentile(&s, 95), 19.0);
        assert_eq!(percentile(&s, 100), 20.0);
        assert_eq!(percentile(&[7.0], 95), 7.0);
        assert!(percentile(&[], 50).is_nan());
    }

    #[test]
    fn parses_the_phases_line() {
        let err =
            "noise\ngureum-phases vm_built_us=812 first_entry_us=- exit_us=9000 vmm_kib=1500\n";
        let p = parse_phases(err);
        assert_eq!(
            p,
            vec![
                ("vm_built_us".into(), 812.0),
                ("exit_us".into(), 9000.0),
                ("vmm_kib".into(), 1500.0)
            ]
        );
        assert!(parse_phases("nothing here").is_empty());
    }

    #[test]
    fn missing_data_is_reported_as_such_never_as_zero() {
        let cfg = VmConfig {
            kernel: "/k".into(),
            initrd: None,
            cmdline: String::new(),
            vcpus: 1,
            memory_mib: 128,
            disks: Vec::new(),
            nets: Vec::new(),
            vsock: None,
            rng: false,
        };
        let mut g = Samples::default();
        g.push("first_entry_us", 900.0);
        g.push("first_entry_us", 1100.0);
        let out = render(
            &cfg,
            2,
            &g,
            &Samples::default(),
            Some("qemu-system-x86_64 is not installed".into()),
        );
        assert!(out.contains("first vCPU entry (since main)"), "{out}");
        assert!(out.contains("0.90      0.90      1.10"), "{out}");
        assert!(
            out.contains("target: VMM memory <= 3 MiB: no data"),
            "{out}"
        );
        assert!(
            out.contains("target: main to first guest instruction <= 3 ms: 0.90 ms, met"),
            "{out}"
        );
        assert!(
            out.lines()
                .any(|l| l.starts_with("spawn to exit") && l.ends_with("n/a")),
            "{out}"
        );
        assert!(
            out.contains("qemu microvm: skipped (qemu-system-x86_64 is not installed)"),
            "{out}"
        );
    }
}
