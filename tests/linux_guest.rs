//! Our Linux kernel + initramfs (built by guest-kernels/build.sh), booted to the init's token
//! with 1 and 2 vCPUs, as vmlinux and as bzImage. That needs hardware-assisted KVM, so those
//! tests are ignored by a plain `cargo test`; scripts/test.sh runs them on such a host or in
//! the KVM test machine. On a PVM host gureum refuses a Linux guest at once, in one line.

mod common;

use std::path::PathBuf;

use common::gureum;

fn default_guest() -> (PathBuf, PathBuf, PathBuf) {
    let f = common::default_guest_file;
    (f("vmlinux"), f("bzImage"), f("initramfs.cpio"))
}

fn boot_linux(kernel: &str, initrd: &str, vcpus: u8) {
    let token = common::token();
    let cmdline = format!(
        "console=ttyS0 reboot=k panic=1 pci=off nomodule quiet gureum.shell=0 gureum.token={token}"
    );
    let v = vcpus.to_string();
    let args = [
        "boot",
        "--kernel",
        kernel,
        "--initrd",
        initrd,
        "--cmdline",
        &cmdline,
        "--vcpus",
        &v,
        "--timeout",
        &common::timeout_secs(60),
        "--phases",
    ];
    let out = gureum(&args);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let ready = format!("gureum-init: ready token={token} cpus={vcpus}");
    assert!(
        out.stdout.contains(&ready),
        "expected {ready:?}\n{}",
        out.describe()
    );
    let phases = out
        .stderr
        .lines()
        .find(|l| l.starts_with("gureum-phases "))
        .unwrap_or_else(|| panic!("{}", out.describe()));
    assert!(
        !phases.contains("boot_timer_us=-"),
        "the init writes the boot-timer port: {phases}"
    );
}

#[test]
#[ignore = "boots a Linux guest: hardware KVM or the KVM test machine (scripts/test.sh runs it there)"]
fn vmlinux_boots_to_init_with_1_and_2_vcpus() {
    require_kvm!();
    let (vmlinux, _, initrd) = default_guest();
    for vcpus in [1, 2] {
        boot_linux(vmlinux.to_str().unwrap(), initrd.to_str().unwrap(), vcpus);
    }
}

#[test]
#[ignore = "boots a Linux guest: hardware KVM or the KVM test machine (scripts/test.sh runs it there)"]
fn bzimage_boots_to_init_with_1_and_2_vcpus() {
    require_kvm!();
    let (_, bzimage, initrd) = default_guest();
    for vcpus in [1, 2] {
        boot_linux(bzimage.to_str().unwrap(), initrd.to_str().unwrap(), vcpus);
    }
}

/// On a PVM host, where a Linux guest's userspace cannot run under any VMM (a guest syscall
/// faults), gureum says so at once, in one line, rather than boot for minutes and crash.
#[test]
fn a_pvm_host_refuses_a_linux_guest_in_one_line() {
    require_kvm!();
    if !common::host_is_pvm() {
        eprintln!("not applicable: this host's KVM is not PVM");
        return;
    }
    let (vmlinux, _, initrd) = default_guest();
    let out = gureum(&[
        "boot",
        "--kernel",
        vmlinux.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
    ]);
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert!(
        out.stderr.contains("PVM") && out.stderr.contains("--allow-pvm-linux"),
        "{}",
        out.describe()
    );
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.describe());
}

/// Runs on every KVM host, PVM included: the real kernel, entered through gureum's 64-bit boot
/// path, reports what it read from gureum's boot structures early in its boot (before the point
/// where a PVM host's emulator gives up on it). The run is stopped once it has.
#[test]
fn linux_reads_the_command_line_e820_mp_table_and_initrd() {
    require_kvm!();
    let (vmlinux, _, initrd) = default_guest();
    let token = common::token();
    let cmdline = format!(
        "console=ttyS0 earlyprintk=serial,ttyS0,keep reboot=k panic=1 gureum.token={token}"
    );
    let args = [
        "boot",
        "--allow-pvm-linux",
        "--kernel",
        vmlinux.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--cmdline",
        &cmdline,
        "--vcpus",
        "2",
        "--memory",
        "128",
    ];
    let start = std::time::Instant::now();
    let deadline = std::time::Duration::from_secs(120);
    let (lines, _) = common::run_until(&args, |l| l.starts_with("Processors: "), deadline);
    let log = lines.join("\n");
    eprintln!("the kernel got this far in {:?}", start.elapsed());
    let has = |s: &str| lines.iter().any(|l| l.contains(s));
    assert!(has(&format!("Command line: {cmdline}")), "{log}");
    for range in [
        "[mem 0x0000000000000000-0x000000000009fbff] usable",
        "[mem 0x000000000009fc00-0x00000000000fffff] reserved",
        "[mem 0x0000000000100000-0x0000000007ffffff] usable",
    ] {
        assert!(has(&format!("BIOS-e820: {range}")), "{range}\n{log}");
    }
    assert!(
        has("found SMP MP-table at [mem 0x0009fc00-0x0009fc0f]"),
        "{log}"
    );
    assert!(has("MPTABLE: OEM ID: GUREUM"), "{log}");
    assert!(has("Processor #1") && has("Processors: 2"), "{log}");
    // The initrd sits page-aligned at the top of low memory.
    let size = std::fs::metadata(&initrd).unwrap().len();
    let start_addr = (0x800_0000 - size) & !0xfff;
    assert!(
        has(&format!("RAMDISK: [mem {start_addr:#010x}-0x07ffffff]")),
        "{log}"
    );
}

#[test]
fn the_hardware_suite_refuses_a_pvm_host_at_once() {
    require_kvm!();
    if !common::host_is_pvm() {
        eprintln!(
            "not run: on a hardware-KVM host the suite itself is what to run (scripts/hardware-suite.sh)"
        );
        return;
    }
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/hardware-suite.sh");
    let out = std::process::Command::new("bash")
        .arg(script)
        .env("GUREUM_BIN", common::GUREUM)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(
        stdout.contains("PVM") && stdout.contains("kvm_intel or kvm_amd"),
        "{stdout}"
    );
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
}
