//! The guest half without hardware KVM: our kernel + initramfs boot to the init under QEMU's
//! software emulation (TCG), which needs no KVM at all. This checks the kernel config, the
//! initramfs and its init (including the boot-timer write) on any host.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn our_kernel_and_initramfs_reach_the_init_under_tcg() {
    let (bzimage, initrd) = (
        common::default_guest_file("bzImage"),
        common::default_guest_file("initramfs.cpio"),
    );
    let token = common::token();
    let append = format!("console=ttyS0 reboot=k panic=-1 gureum.shell=0 gureum.token={token}");
    let child = Command::new("qemu-system-x86_64")
        .args(["-M", "pc", "-accel", "tcg", "-cpu", "max", "-m", "256"])
        .arg("-kernel")
        .arg(&bzimage)
        .arg("-initrd")
        .arg(&initrd)
        .args([
            "-append",
            &append,
            "-no-reboot",
            "-nographic",
            "-nodefaults",
            "-serial",
            "stdio",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-system-x86_64 (scripts/setup.sh installs it)");
    let out = common::finish(child, Duration::from_secs(120));
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let ready = format!("gureum-init: ready token={token} cpus=1");
    assert!(
        out.stdout.contains(&ready),
        "expected {ready:?}\n{}",
        out.describe()
    );
    assert!(
        !out.stdout.contains("boot-timer:"),
        "the boot-timer write failed:\n{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("reboot: Restarting system"),
        "{}",
        out.describe()
    );
    eprintln!(
        "TCG: kernel + initramfs to the init and power-off in {:?}",
        out.elapsed
    );
}
