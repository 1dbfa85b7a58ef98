//! Timing one instance from outside (spawn → start mark → exit, CPU time from wait4), and a
//! density run: K instances at once, launch time and host memory (PSS of each instance's
//! process tree; for VMs that includes the guest pages they touched).

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::kinds::{Kind, Setup};

const DEADLINE: Duration = Duration::from_secs(120);

/// One run of one kind.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Spawn → the start mark on stdout (workload started / guest init ready).
    pub start_ms: Option<f64>,
    /// Spawn → the process exited.
    pub exit_ms: f64,
    /// User + system CPU of the instance's processes.
    pub cpu_ms: f64,
    pub ok: bool,
    /// gureum's own phases (ms since its start), where it prints them.
    pub phases: Vec<(String, f64)>,
    /// Why a failed run failed: how it ended, and its last line on stderr.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Waits for `pid` up to `within`; its status and rusage, or None on timeout.
fn wait_with_rusage(pid: i32, within: Duration) -> Option<(i32, libc::rusage)> {
    // SAFETY: pidfd_open on our own child; the fd is closed below.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).unwrap_or(-1);
    if fd >= 0 {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(within.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: polls one valid pollfd, then closes the fd we opened.
        let ready = unsafe {
            let r = libc::poll(&mut pfd, 1, ms);
            libc::close(fd);
            r
        };
        if ready == 0 {
            return None;
        }
    }
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
    let mut usage = unsafe { std::mem::zeroed::<libc::rusage>() };
    // SAFETY: waits for our own child with valid out-pointers.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    (r == pid).then_some((status, usage))
}

fn ms(tv: libc::timeval) -> f64 {
    tv.tv_sec as f64 * 1e3 + tv.tv_usec as f64 / 1e3
}

/// Times one instance of `kind` run to completion.
pub fn one(setup: &Setup, kind: Kind, id: &str) -> std::io::Result<Sample> {
    let mut cmd = setup.command(kind, id, false)?;
    let input = super::restore::input(kind);
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn()?;
    if let (Some(bytes), Some(mut stdin)) = (input, child.stdin.take()) {
        // A line fits the pipe: this never blocks. The VMM keeps what it read after EOF.
        let _ = std::io::Write::write_all(&mut stdin, bytes);
    }
    let pid = i32::try_from(child.id()).unwrap_or(-1);
    let mark = kind.mark();
    let stdout = child.stdout.take();
    let marker = std::thread::spawn(move || {
        let mut seen = None;
        for line in stdout
            .map(BufReader::new)
            .into_iter()
            .flat_map(|r| r.lines())
        {
            let Ok(line) = line else { break };
            if seen.is_none() && line.contains(mark) {
                seen = Some(start.elapsed().as_secs_f64() * 1e3);
            }
        }
        seen
    });
    let mut stderr = child.stderr.take();
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = stderr.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    let waited = wait_with_rusage(pid, DEADLINE);
    let exit_ms = start.elapsed().as_secs_f64() * 1e3;
    if waited.is_none() {
        setup.stop(kind, id, &mut child);
    }
    let start_ms = marker.join().unwrap_or(None);
    let stderr = errors.join().unwrap_or_default();
    let (status, usage) = waited.unwrap_or((-1, zero_rusage()));
    // QEMU ends through isa-debug-exit with an odd status; a VM's run counts by its mark.
    let exited_ok = libc::WIFEXITED(status) && (libc::WEXITSTATUS(status) == 0 || kind.is_vm());
    let ok = waited.is_some() && exited_ok && start_ms.is_some();
    let error = (!ok).then(|| failure(waited.is_some(), status, start_ms.is_some(), &stderr));
    Ok(Sample {
        ok,
        error,
        start_ms,
        exit_ms,
        cpu_ms: ms(usage.ru_utime) + ms(usage.ru_stime),
        phases: crate::bench::parse_phases(&stderr)
            .into_iter()
            .filter_map(|(k, us)| Some((k.strip_suffix("_us")?.to_string(), us / 1e3)))
            .collect(),
    })
}

/// How a failed run ended, in one line: the reason, then its last words on stderr.
fn failure(ended: bool, status: i32, marked: bool, stderr: &str) -> String {
    let how = if !ended {
        format!("still running after {} s", DEADLINE.as_secs())
    } else if libc::WIFSIGNALED(status) {
        format!("killed by signal {}", libc::WTERMSIG(status))
    } else if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) != 0 {
        format!("exit status {}", libc::WEXITSTATUS(status))
    } else if !marked {
        "ended without its start mark".to_string()
    } else {
        "failed".to_string()
    };
    match stderr.lines().rev().map(str::trim).find(|l| !l.is_empty()) {
        Some(last) => format!("{how}: {}", last.chars().take(200).collect::<String>()),
        None => how,
    }
}

fn zero_rusage() -> libc::rusage {
    // SAFETY: an all-zero rusage is a valid value.
    unsafe { std::mem::zeroed() }
}

/// K idle instances started at once.
#[derive(Debug, Clone, Serialize)]
pub struct Density {
    pub instances: usize,
    /// Spawn of the first → the start mark of the last.
    pub launch_s: f64,
    pub launch_rate_per_s: f64,
    /// PSS of every process of every instance, divided by the instances.
    pub memory_mib_per_instance: f64,
    /// Of that, the guest pages the instance dirtied: private copies of a restored snapshot's
    /// memory file (None where no instance maps one: a cold VM's memory is all anonymous).
    pub guest_dirty_mib_per_instance: Option<f64>,
    /// Instances that never showed their start mark.
    pub failed: usize,
}

pub fn density(setup: &Setup, kind: Kind, k: usize, tag: &str) -> std::io::Result<Density> {
    // K at once share the host's CPUs; an emulated host (the KVM test machine) is slower still.
    let deadline = DEADLINE * gureum_vmm::host_check::slowdown().clamp(1, 5);
    let (tx, rx) = mpsc::channel();
    let start = Instant::now();
    let mut children: Vec<(String, Child)> = Vec::new();
    for i in 0..k {
        let id = format!("{tag}-{i}");
        let mut cmd = setup.command(kind, &id, true)?;
        // stdin held open: an idle Linux guest's shell waits on it.
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn()?;
        let out = child.stdout.take();
        let tx = tx.clone();
        let mark = kind.mark();
        std::thread::spawn(move || {
            for line in out.map(BufReader::new).into_iter().flat_map(|r| r.lines()) {
                let Ok(line) = line else { break };
                if line.contains(mark) {
                    let _ = tx.send(start.elapsed());
                }
            }
        });
        children.push((id, child));
    }
    drop(tx);
    let mut last = Duration::ZERO;
    let mut seen = 0;
    while seen < k {
        match rx.recv_timeout(deadline.saturating_sub(start.elapsed())) {
            Ok(t) => {
                last = last.max(t);
                seen += 1;
            }
            Err(_) => break,
        }
    }
    // Let the instances settle before reading their memory.
    std::thread::sleep(Duration::from_millis(300));
    let memory: Vec<Memory> = children
        .iter()
        .flat_map(|(_, c)| tree(i32::try_from(c.id()).unwrap_or(-1)))
        .map(memory_kib)
        .collect();
    let pss_kib: u64 = memory.iter().map(|m| m.pss).sum();
    let dirty: Vec<u64> = memory.iter().filter_map(|m| m.snapshot_dirty).collect();
    for (id, child) in &mut children {
        setup.stop(kind, id, child);
    }
    let launch_s = last.as_secs_f64();
    Ok(Density {
        instances: k,
        launch_s,
        launch_rate_per_s: if launch_s > 0.0 {
            seen as f64 / launch_s
        } else {
            0.0
        },
        memory_mib_per_instance: pss_kib as f64 / 1024.0 / k.max(1) as f64,
        guest_dirty_mib_per_instance: (!dirty.is_empty())
            .then(|| dirty.iter().sum::<u64>() as f64 / 1024.0 / k.max(1) as f64),
        failed: k - seen,
    })
}

/// `root` and every descendant.
fn tree(root: i32) -> Vec<i32> {
    let mut parents: Vec<(i32, i32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        // Field 4, the parent.
        let ppid = gureum_runtime::state::stat_fields(pid).and_then(|f| f.get(1)?.parse().ok());
        if let Some(ppid) = ppid {
            parents.push((pid, ppid));
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    tree
}

/// One process's memory, in KiB.
struct Memory {
    pss: u64,
    /// Private_Dirty of its private mappings of a snapshot's memory file (gureum names it
    /// `mem`, or `*.mem`); None if it maps none.
    snapshot_dirty: Option<u64>,
}

/// `pid`'s memory, from one read of its smaps (a process gone meanwhile counts as none).
fn memory_kib(pid: i32) -> Memory {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let kib = |v: &str| -> u64 { v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0) };
    let mut m = Memory {
        pss: 0,
        snapshot_dirty: None,
    };
    let mut in_snapshot = false;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        if let Some(v) = line.strip_prefix("Pss:") {
            m.pss += kib(v);
        } else if let Some(v) = line.strip_prefix("Private_Dirty:") {
            if in_snapshot {
                *m.snapshot_dirty.get_or_insert(0) += kib(v);
            }
        } else if fields.next().is_some_and(|range| range.contains('-')) {
            // A mapping's header: range, perms, offset, dev, inode, path.
            let perms = fields.next().unwrap_or("");
            let path = fields.nth(3).unwrap_or("");
            in_snapshot =
                perms.ends_with('p') && (path.ends_with("/mem") || path.ends_with(".mem"));
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dirtied_page_of_a_private_snapshot_mapping_counts_as_the_guest_s() {
        let me = i32::try_from(std::process::id()).unwrap();
        let before = memory_kib(me);
        assert!(before.pss > 0);
        assert_eq!(before.snapshot_dirty, None);
        let path = std::env::temp_dir().join(format!("gureum-measure-{me}.mem"));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        file.set_len(1 << 20).unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        // SAFETY: a fresh private mapping of our own 1 MiB file; two pages written, then
        // unmapped.
        unsafe {
            let at = libc::mmap(
                std::ptr::null_mut(),
                1 << 20,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
                fd,
                0,
            );
            assert_ne!(at, libc::MAP_FAILED);
            at.cast::<u8>().write(1);
            at.cast::<u8>().add(8192).write(1);
            let during = memory_kib(me);
            libc::munmap(at, 1 << 20);
            assert_eq!(during.snapshot_dirty, Some(8));
        }
        std::fs::remove_file(path).unwrap();
    }
}
