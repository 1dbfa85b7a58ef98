//! The test guest booted from the CLI as a user would: what gureum sets up (entry, command line,
//! vCPUs, memory map, console input, reset) is checked from what the guest itself reports.

mod common;

use std::time::Duration;

use common::{boot_test_guest, finish, spawn, test_guest};

fn lines_with<'a>(out: &'a str, prefix: &str) -> Vec<&'a str> {
    out.lines().filter(|l| l.starts_with(prefix)).collect()
}

#[test]
fn elf_entry_gets_its_cmdline_and_reset_exits_zero() {
    require_kvm!();
    let token = common::token();
    let out = boot_test_guest(&["--cmdline", &format!("quiet token={token}")]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert!(
        out.stdout.starts_with("gureum-test-guest: hello\n"),
        "{}",
        out.describe()
    );
    assert!(
        out.stdout
            .contains(&format!("cmdline: quiet token={token}\n")),
        "{}",
        out.describe()
    );
    assert!(
        out.stdout.contains(&format!("token: {token}\n")),
        "{}",
        out.describe()
    );
    assert!(
        out.stdout.ends_with("gureum-test-guest: reset\n"),
        "{}",
        out.describe()
    );
    assert!(
        out.stderr.is_empty(),
        "a clean run prints nothing on stderr: {}",
        out.describe()
    );
}

#[test]
fn every_vcpu_is_in_the_mp_table() {
    require_kvm!();
    for vcpus in [1u8, 2, 4] {
        let out = boot_test_guest(&["--vcpus", &vcpus.to_string()]);
        assert_eq!(out.code, Some(0), "{}", out.describe());
        let ids: Vec<String> = (0..vcpus).map(|i| i.to_string()).collect();
        let want = format!("cpus: {vcpus} apic-ids: {}", ids.join(" "));
        assert_eq!(
            lines_with(&out.stdout, "cpus:"),
            vec![want.as_str()],
            "{}",
            out.describe()
        );
    }
}

/// The e820 map the guest reads, computed here from the x86 layout: low RAM up to the EBDA,
/// the EBDA and BIOS area reserved, RAM from 1 MiB, split at 3 GiB around the MMIO gap.
fn expected_e820(mib: u64) -> (Vec<String>, u64) {
    let size = mib << 20;
    let mut ranges = vec![(0u64, 0x9fc00u64, "ram"), (0x9fc00, 0x10_0000, "reserved")];
    let gap = 3u64 << 30;
    ranges.push((0x10_0000, size.min(gap), "ram"));
    if size > gap {
        ranges.push((1 << 32, (1 << 32) + size - gap, "ram"));
    }
    let ram = ranges
        .iter()
        .filter(|r| r.2 == "ram")
        .map(|r| r.1 - r.0)
        .sum::<u64>();
    let lines = ranges
        .iter()
        .map(|(s, e, k)| format!("e820: {s:#x}-{e:#x} {k}"))
        .collect();
    (lines, ram)
}

#[test]
fn memory_sizes_give_the_right_e820_map() {
    require_kvm!();
    for mib in [64u64, 512, 2048, 4096] {
        let out = boot_test_guest(&["--memory", &mib.to_string()]);
        assert_eq!(out.code, Some(0), "{}", out.describe());
        let (want, ram) = expected_e820(mib);
        assert_eq!(
            lines_with(&out.stdout, "e820:"),
            want,
            "{mib} MiB: {}",
            out.describe()
        );
        assert!(
            out.stdout.contains(&format!("ram: {} KiB\n", ram >> 10)),
            "{}",
            out.describe()
        );
        assert!(
            !out.stdout.contains("does not hold a value"),
            "{}",
            out.describe()
        );
    }
}

#[test]
fn console_input_reaches_the_guest() {
    require_kvm!();
    let kernel = test_guest().to_str().unwrap();
    let line = format!("hello-from-the-host-{}", common::token());
    // More than the 64-byte receive FIFO, so input has to wait for the guest to drain it.
    let line = format!("{line}-{}", "x".repeat(60));
    assert!(
        line.len() > 64 && line.len() < 128,
        "above the FIFO, within the guest's buffer"
    );
    let args = [
        "boot",
        "--kernel",
        kernel,
        "--cmdline",
        "scenario=echo",
        "--timeout",
        "20",
    ];
    let out = finish(
        spawn(&args, Some(format!("{line}\n").as_bytes())),
        Duration::from_secs(30),
    );
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert!(
        out.stdout.contains(&format!("echo: {line}\n")),
        "{}",
        out.describe()
    );
}

#[test]
fn firecracker_config_file_boots_like_the_same_flags() {
    require_kvm!();
    let dir = common::scratch("config");
    let kernel = test_guest().to_str().unwrap();
    let config = dir.join("vm.json");
    std::fs::write(
        &config,
        format!(
            r#"{{
  "boot-source": {{ "kernel_image_path": "{kernel}", "boot_args": "token=from-config" }},
  "machine-config": {{ "vcpu_count": 2, "mem_size_mib": 256, "smt": false }},
  "drives": [],
  "network-interfaces": []
}}"#
        ),
    )
    .unwrap();
    let from_file = boot_test_guest(&["--config", config.to_str().unwrap()]);
    let from_flags = boot_test_guest(&[
        "--cmdline",
        "token=from-config",
        "--vcpus",
        "2",
        "--memory",
        "256",
    ]);
    assert_eq!(from_file.code, Some(0), "{}", from_file.describe());
    assert!(
        from_file.stdout.contains("cpus: 2 apic-ids: 0 1"),
        "{}",
        from_file.describe()
    );
    assert_eq!(from_file.stdout, from_flags.stdout);

    // Flags override the file.
    let overridden = boot_test_guest(&["--config", config.to_str().unwrap(), "--vcpus", "4"]);
    assert!(
        overridden.stdout.contains("cpus: 4 apic-ids: 0 1 2 3"),
        "{}",
        overridden.describe()
    );
    assert!(
        overridden.stdout.contains("token: from-config"),
        "{}",
        overridden.describe()
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn timeout_stops_a_hung_guest_with_its_own_exit_code() {
    require_kvm!();
    let out = boot_test_guest(&["--cmdline", "scenario=hang", "--timeout", "1"]);
    assert_eq!(out.code, Some(124), "{}", out.describe());
    assert!(out.stdout.contains("hang: spinning"), "{}", out.describe());
    assert!(out.stderr.contains("--timeout"), "{}", out.describe());
    assert!(
        out.elapsed < Duration::from_secs(10),
        "took {:?}",
        out.elapsed
    );
}

#[test]
fn a_triple_fault_is_said_with_where_the_vcpu_was() {
    require_kvm!();
    let out = boot_test_guest(&["--cmdline", "scenario=triple-fault"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert!(
        out.stdout.contains("triple-fault: an empty IDT"),
        "{}",
        out.describe()
    );
    let line = out
        .stderr
        .lines()
        .find(|l| l.contains("guest stopped: triple fault (reset), vCPU 0 rip 0x"))
        .unwrap_or_else(|| panic!("no triple-fault line: {}", out.describe()));
    // Long mode (EFER.LMA) and the page tables the guest runs on.
    assert!(
        line.contains(" efer 0x") && line.contains(" cr3 0x"),
        "{line}"
    );
}

/// gureum with `args` (a test guest in scenario=hang), once the guest runs: the child and the
/// console so far.
fn spawn_running(args: &[&str]) -> (std::process::Child, String) {
    let mut child = spawn(args, None);
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    while !seen.contains("hang: spinning") {
        let mut line = String::new();
        let n = std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
        assert!(n > 0, "gureum ended before the guest ran:\n{seen}");
        seen.push_str(&line);
    }
    (child, seen)
}

#[test]
fn sigterm_stops_the_vm() {
    require_kvm!();
    let kernel = test_guest().to_str().unwrap();
    // Signal only once the guest runs (gureum handles signals from then on), whatever the load.
    let (child, seen) = spawn_running(&["boot", "--kernel", kernel, "--cmdline", "scenario=hang"]);
    // SAFETY: sends a signal to our own child process.
    unsafe { libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGTERM) };
    let out = finish(child, Duration::from_secs(10));
    assert_eq!(
        out.code,
        Some(128 + libc::SIGTERM),
        "{seen}\n{}",
        out.describe()
    );
}

#[test]
fn phases_are_reported_in_order() {
    require_kvm!();
    let out = boot_test_guest(&["--phases"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let line = out
        .stderr
        .lines()
        .find(|l| l.starts_with("gureum-phases "))
        .unwrap_or_else(|| panic!("{}", out.describe()));
    let value = |key: &str| -> u64 {
        let kv = line
            .split_whitespace()
            .find(|kv| kv.starts_with(&format!("{key}=")))
            .unwrap();
        kv.split_once('=')
            .unwrap()
            .1
            .parse()
            .unwrap_or_else(|_| panic!("{key} in {line}"))
    };
    let order = [
        "vm_built_us",
        "first_entry_us",
        "boot_timer_us",
        "shutdown_us",
        "exit_us",
    ];
    let times: Vec<u64> = order.iter().map(|k| value(k)).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{line}");
    assert!(value("guest_touched_kib") > 0, "{line}");
    assert!(value("rss_kib") >= value("guest_touched_kib"), "{line}");
}

#[test]
fn bzimage_boots_like_the_elf() {
    require_kvm!();
    let dir = common::scratch("bzimage");
    let bz = dir.join("test-guest.bzImage");
    common::make_bzimage(test_guest(), &bz, 1);
    let args = ["--cmdline", "token=bz", "--vcpus", "2", "--memory", "256"];
    let elf = boot_test_guest(&args);
    let mut bz_args = vec!["boot", "--kernel", bz.to_str().unwrap(), "--timeout", "20"];
    bz_args.extend_from_slice(&args);
    let bzimage = common::gureum(&bz_args);
    assert_eq!(bzimage.code, Some(0), "{}", bzimage.describe());
    assert!(
        bzimage.stdout.contains("token: bz\n"),
        "{}",
        bzimage.describe()
    );
    assert_eq!(bzimage.stdout, elf.stdout);

    // Without XLF_KERNEL_64 there is no 64-bit entry point to use.
    let no64 = dir.join("no-entry64.bzImage");
    common::make_bzimage(test_guest(), &no64, 0);
    let out = common::gureum(&["boot", "--kernel", no64.to_str().unwrap()]);
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert!(
        out.stderr.contains("no 64-bit entry point"),
        "{}",
        out.describe()
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bench_boot_reports_every_phase() {
    require_kvm!();
    let kernel = test_guest().to_str().unwrap();
    let out = common::gureum(&[
        "bench",
        "boot",
        "--kernel",
        kernel,
        "--runs",
        "2",
        "--no-qemu",
    ]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    for row in [
        "VM built",
        "first vCPU entry",
        "boot-timer write",
        "spawn to exit",
        "VMM memory",
    ] {
        let line = out
            .stdout
            .lines()
            .find(|l| l.starts_with(row))
            .unwrap_or_else(|| panic!("{row}: {}", out.stdout));
        let numbers: Vec<f64> = line
            .split_whitespace()
            .rev()
            .take(3)
            .map(|v| v.parse().unwrap())
            .collect();
        assert!(numbers.iter().all(|v| *v > 0.0), "{line}");
        assert!(
            numbers[2] <= numbers[1] && numbers[1] <= numbers[0],
            "min <= median <= p95: {line}"
        );
    }
    assert!(
        out.stdout.contains("qemu microvm: skipped (--no-qemu)"),
        "{}",
        out.stdout
    );
}

/// `Seccomp:` of every thread of process `pid` (2: a filter).
fn seccomp_modes(pid: u32) -> Vec<String> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .map(|t| {
            let status = std::fs::read_to_string(t.unwrap().path().join("status")).unwrap();
            let line = status.lines().find(|l| l.starts_with("Seccomp:")).unwrap();
            line.split_whitespace().nth(1).unwrap().to_string()
        })
        .collect()
}

#[test]
fn every_thread_of_the_vmm_is_confined_unless_told_not_to_be() {
    require_kvm!();
    let kernel = test_guest().to_str().unwrap();
    let dir = common::scratch("confined");
    let vsock = format!("cid=3,uds={}", dir.join("v.sock").display());
    for (extra, want, root) in [
        (None, "2", dir.clone()),
        (Some("--no-seccomp"), "0", "/".into()),
    ] {
        let mut args = vec!["boot", "--kernel", kernel, "--cmdline", "scenario=hang"];
        args.extend(extra);
        args.extend(["--vcpus", "2", "--vsock", &vsock]);
        let (mut child, _) = spawn_running(&args);
        let modes = seccomp_modes(child.id());
        // The event loop and both vCPUs.
        assert!(modes.len() >= 3, "{modes:?}");
        assert!(modes.iter().all(|m| m == want), "{extra:?}: {modes:?}");
        // With vsock, the VMM's root is its socket's directory: a connection from it reaches
        // only the listeners there.
        let seen = std::fs::read_link(format!("/proc/{}/root", child.id())).unwrap();
        assert_eq!(seen, root, "{extra:?}");
        // And every thread is in a network namespace of its own, where no host daemon's
        // abstract socket can be reached.
        let own = std::fs::read_link("/proc/self/ns/net").unwrap();
        let tasks = std::fs::read_dir(format!("/proc/{}/task", child.id())).unwrap();
        for task in tasks {
            let ns = std::fs::read_link(task.unwrap().path().join("ns/net")).unwrap();
            assert_eq!(ns == own, extra.is_some(), "{extra:?}: {ns:?}");
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let _ = std::fs::remove_file(dir.join("v.sock"));
    }
    std::fs::remove_dir_all(dir).unwrap();
}
