//! Our Linux guest with a virtio-blk root disk: an ext4 image the test builds (mkfs.ext4 -d)
//! whose init writes a token, syncs and says so; the VMM is then SIGKILLed and the host reads
//! the file back from the image. Under gureum this needs hardware KVM; the guest half (kernel,
//! ext4 on virtio-blk, the init, sync) is also proven under QEMU's software emulation, which
//! runs on any host.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
token=$(/bin/busybox sed -n 's/.*gureum.token=\([^ ]*\).*/\1/p' /proc/cmdline)
echo "$token" > /written.txt
/bin/busybox sync
echo "gureum-test: synced $token"
exec /bin/busybox sleep 3600
"#;

fn vmlinux() -> PathBuf {
    let cache = std::env::var_os("GUREUM_CACHE").unwrap_or_else(|| "/var/cache/gureum".into());
    let path = PathBuf::from(cache).join("default/vmlinux");
    assert!(
        path.exists(),
        "run guest-kernels/build.sh first (scripts/test.sh does)"
    );
    path
}

/// A 32 MiB ext4 image holding busybox and the init above.
fn root_image(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    for d in ["bin", "proc", "dev"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    std::fs::write(root.join("init"), INIT).unwrap();
    let chmod = Command::new("chmod")
        .arg("755")
        .arg(root.join("init"))
        .status()
        .unwrap();
    assert!(chmod.success());
    let image = dir.join("root.ext4");
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&root)
        .arg(&image)
        .arg("32M")
        .output()
        .expect("mkfs.ext4 (e2fsprogs; scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    image
}

/// The file's contents, read from the image on the host.
fn read_back(image: &Path, file: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat {file}")])
        .arg(image)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn synced(token: &str) -> impl Fn(&str) -> bool + '_ {
    move |l: &str| l == format!("gureum-test: synced {token}")
}

#[test]
fn ext4_root_write_sync_survives_sigkill_under_gureum() {
    require_kvm!();
    let check = common::gureum(&["host-check", "--json"]);
    if check.stdout.contains("\"kind\": \"pvm\"") {
        eprintln!(
            "not run: this host's KVM is PVM, where a Linux guest's userspace cannot run; the guest half runs under TCG in ext4_root_under_tcg"
        );
        return;
    }
    let dir = common::scratch("linux-ext4");
    let image = root_image(&dir);
    let token = common::token();
    let kernel = vmlinux().display().to_string();
    let disk = format!("{},root", image.display());
    let cmdline = format!("console=ttyS0 reboot=k panic=1 pci=off init=/init gureum.token={token}");
    let args = [
        "boot",
        "--kernel",
        &kernel,
        "--disk",
        &disk,
        "--cmdline",
        &cmdline,
        "--timeout",
        "60",
    ];
    let (lines, met) = common::run_until(&args, synced(&token), Duration::from_secs(60));
    assert!(met, "{}", lines.join("\n"));
    assert_eq!(read_back(&image, "/written.txt"), token);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn ext4_root_under_tcg() {
    let dir = common::scratch("linux-ext4-tcg");
    let image = root_image(&dir);
    let token = common::token();
    let mut qemu = Command::new("qemu-system-x86_64");
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
    qemu.arg("-kernel").arg(vmlinux());
    qemu.args([
        "-append",
        &format!(
            "console=ttyS0 reboot=k panic=-1 root=/dev/vda rw init=/init gureum.token={token}"
        ),
    ]);
    qemu.args([
        "-no-reboot",
        "-nographic",
        "-nodefaults",
        "-serial",
        "stdio",
    ]);
    qemu.args(["-global", "virtio-mmio.force-legacy=false"]);
    qemu.args([
        "-drive",
        &format!("id=d0,file={},format=raw,if=none", image.display()),
    ]);
    qemu.args([
        "-device",
        "virtio-blk-device,drive=d0,bus=virtio-mmio-bus.0",
    ]);
    let (lines, met) = common::run_command_until(qemu, synced(&token), Duration::from_secs(120));
    assert!(met, "{}", lines.join("\n"));
    assert_eq!(read_back(&image, "/written.txt"), token);
    std::fs::remove_dir_all(dir).unwrap();
}
