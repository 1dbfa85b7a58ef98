//! Bad input: each case is one line on stderr naming the problem, a non-zero exit, and no
//! panic or backtrace.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{GUREUM, scratch, test_guest};

/// Run gureum and check it failed cleanly; returns its one error line.
fn fails(args: &[&str]) -> String {
    let out = Command::new(GUREUM)
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} succeeded: {stderr}");
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{args:?}: {stderr}"
    );
    assert_eq!(
        stderr.lines().count(),
        1,
        "{args:?}: one line expected:\n{stderr}"
    );
    assert!(stderr.starts_with("gureum: "), "{stderr}");
    stderr
}

fn boot_fails(kernel: &Path, extra: &[&str]) -> String {
    let mut args = vec!["boot", "--kernel", kernel.to_str().unwrap()];
    args.extend_from_slice(extra);
    fails(&args)
}

fn assert_says(line: &str, what: &[&str]) {
    for w in what {
        assert!(line.contains(w), "expected {w:?} in: {line}");
    }
}

#[test]
fn unusable_kernel_files() {
    let dir = scratch("kernels");
    assert_says(
        &boot_fails(&dir.join("missing"), &[]),
        &["cannot open kernel", "No such file"],
    );
    assert_says(&boot_fails(&dir, &[]), &["cannot open kernel", "directory"]);

    let empty = dir.join("empty");
    std::fs::write(&empty, b"").unwrap();
    assert_says(&boot_fails(&empty, &[]), &["is empty"]);

    let guest = std::fs::read(test_guest()).unwrap();
    let truncated = dir.join("truncated");
    std::fs::write(&truncated, &guest[..100]).unwrap();
    assert_says(
        &boot_fails(&truncated, &[]),
        &["cannot load ELF kernel", "program header"],
    );

    let random = dir.join("random");
    let bytes: Vec<u8> = (0..4096u32)
        .map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes()[1])
        .collect();
    std::fs::write(&random, bytes).unwrap();
    assert_says(
        &boot_fails(&random, &[]),
        &["neither an ELF vmlinux nor a bzImage"],
    );

    // A bzImage header announcing boot protocol 2.01: no 64-bit entry point.
    let mut old = vec![0u8; 0x1000];
    old[0x1f1] = 1;
    old[0x1fe..0x200].copy_from_slice(&[0x55, 0xaa]);
    old[0x202..0x206].copy_from_slice(b"HdrS");
    old[0x206..0x208].copy_from_slice(&0x0201u16.to_le_bytes());
    let old_path = dir.join("old-bzimage");
    std::fs::write(&old_path, old).unwrap();
    assert_says(&boot_fails(&old_path, &[]), &["boot protocol 2.01", "2.12"]);

    let mut elf32 = guest.clone();
    elf32[4] = 1; // ELFCLASS32
    let elf32_path = dir.join("elf32");
    std::fs::write(&elf32_path, elf32).unwrap();
    assert_says(&boot_fails(&elf32_path, &[]), &["not a 64-bit x86 ELF"]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn initrd_problems() {
    let dir = scratch("initrd");
    let big = dir.join("big.cpio");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(200 << 20)
        .unwrap();
    let line = boot_fails(
        test_guest(),
        &["--initrd", big.to_str().unwrap(), "--memory", "64"],
    );
    assert_says(&line, &["initrd", "does not fit in guest memory"]);
    let line = boot_fails(
        test_guest(),
        &["--initrd", dir.join("nope").to_str().unwrap()],
    );
    assert_says(&line, &["cannot read initrd", "No such file"]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn machine_limits() {
    let g = test_guest();
    assert_says(
        &boot_fails(g, &["--memory", "0"]),
        &["memory must be at least"],
    );
    assert_says(
        &boot_fails(g, &["--memory", "99999999999"]),
        &["more than any host can map"],
    );
    // 100 TiB passes validation but no host maps it.
    assert_says(
        &boot_fails(g, &["--memory", "104857600"]),
        &["cannot map 104857600 MiB"],
    );
    assert_says(
        &boot_fails(g, &["--vcpus", "0"]),
        &["vcpus must be between 1 and"],
    );
    // More than KVM (and the MP table) allows.
    assert_says(
        &boot_fails(g, &["--vcpus", "5000"]),
        &["vcpus must be between 1 and", "5000"],
    );
    let long = "a".repeat(3000);
    assert_says(
        &boot_fails(g, &["--cmdline", &long]),
        &["command line is 3000 bytes", "2047"],
    );
    assert_says(
        &boot_fails(g, &["--timeout", "0"]),
        &["--timeout must be a positive number"],
    );
}

#[test]
fn bad_config_files() {
    let dir = scratch("configs");
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let malformed = write(
        "malformed.json",
        r#"{"boot-source": {"kernel_image_path": "x""#,
    );
    assert_says(
        &fails(&["boot", "--config", &malformed]),
        &["malformed.json", "EOF while parsing"],
    );
    let unknown = write(
        "unknown.json",
        r#"{"boot-source": {"kernel_image_path": "x"}, "frobnicate": 1}"#,
    );
    assert_says(
        &fails(&["boot", "--config", &unknown]),
        &["unknown field `frobnicate`"],
    );
    let nested = write(
        "nested.json",
        r#"{"machine-config": {"vcpu_count": 1, "mem_size_mib": 64, "turbo": true}}"#,
    );
    assert_says(
        &fails(&["boot", "--config", &nested]),
        &["unknown field `turbo`"],
    );
    let drives = write("drives.json", r#"{"drives": [{"drive_id": "root"}]}"#);
    assert_says(
        &fails(&["boot", "--config", &drives]),
        &["drives", "missing field `path_on_host`"],
    );
    assert_says(
        &fails(&["boot", "--config", &dir.join("none.json").to_string_lossy()]),
        &["cannot read config file"],
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn no_access_to_dev_kvm() {
    // Hide /dev in a private mount namespace: gureum must say it cannot open /dev/kvm.
    let script = format!(
        "mount -t tmpfs tmpfs /dev && exec {GUREUM} boot --kernel {}",
        test_guest().display()
    );
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("unshare failed") || stderr.contains("Operation not permitted") {
        eprintln!("skipped: cannot make a private mount namespace here: {stderr}");
        return;
    }
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("gureum: cannot open /dev/kvm"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}
