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
    common::default_guest_file("vmlinux")
}

/// A 32 MiB ext4 image holding busybox and the init above.
fn root_image(dir: &Path, init: &str) -> PathBuf {
    let root = dir.join("root");
    for d in ["bin", "proc", "dev", "tmp", "sys"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    std::fs::write(root.join("init"), init).unwrap();
    let chmod = Command::new("chmod")
        .arg("755")
        .arg(root.join("init"))
        .status()
        .unwrap();
    assert!(chmod.success());
    let image = dir.join("root.ext4");
    common::ext4_image(&root, &image, "32M");
    image
}

/// The file's contents, read from the image on the host as the next mount would see them: the
/// guest's `sync` commits ext4's journal, but the file's inode and directory entry may sit only in
/// the journal when the VMM is killed, and debugfs does not replay it. e2fsck does (and checks
/// the rest): 0 is clean, 1 and 2 are repaired, 4 and up are errors left.
fn read_back(image: &Path, file: &str) -> String {
    let fsck = Command::new("e2fsck")
        .args(["-f", "-y"])
        .arg(image)
        .output()
        .unwrap();
    assert!(
        matches!(fsck.status.code(), Some(0..=2)),
        "e2fsck left errors in {}: {}{}",
        image.display(),
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
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
#[ignore = "boots a Linux guest: hardware KVM or the KVM test machine (scripts/test.sh runs it there)"]
fn ext4_root_write_sync_survives_sigkill_under_gureum() {
    require_kvm!();
    let dir = common::scratch("linux-ext4");
    let image = root_image(&dir, INIT);
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
        &common::timeout_secs(60),
    ];
    let (lines, met) = common::run_until(&args, synced(&token), Duration::from_secs(60));
    assert!(met, "{}", lines.join("\n"));
    assert_eq!(read_back(&image, "/written.txt"), token);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn ext4_root_under_tcg() {
    let dir = common::scratch("linux-ext4-tcg");
    let image = root_image(&dir, INIT);
    let token = common::token();
    let append =
        format!("console=ttyS0 reboot=k panic=-1 root=/dev/vda rw init=/init gureum.token={token}");
    let mut qemu = common::qemu_tcg_microvm(&vmlinux(), &append);
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

/// The guest half of the TCP test: receive `gureum.mb` MB on port 5001 and print its checksum,
/// then send as many zero bytes to the host's port 5002, then power off.
const TCP_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t devtmpfs dev /dev
mb=$(/bin/busybox sed -n 's/.*gureum.mb=\([0-9]*\).*/\1/p' /proc/cmdline)
echo "gureum-test: listening"
sum=$(/bin/busybox nc -l -p 5001 | /bin/busybox sha256sum)
echo "gureum-test: received ${sum%% *}"
/bin/busybox dd if=/dev/zero bs=1M count=$mb 2>/dev/null | /bin/busybox nc 10.0.2.1 5002
echo "gureum-test: sent"
/bin/busybox reboot -f
"#;

const GUEST_IP: &str = "10.0.2.15";
const IP_CMDLINE: &str = "ip=10.0.2.15::10.0.2.1:255.255.255.0::eth0:off";

/// The host half: send `mb` MB of pseudo-random data to the guest's port 5001 (once it
/// listens), and take `mb` MB back on port 5002. Returns (sha256 of what was sent, bytes back).
fn host_side(
    ns: &common::Netns,
    mb: usize,
    dir: &Path,
) -> std::thread::JoinHandle<(String, usize)> {
    use std::io::{Read, Write};
    let file = dir.join("payload");
    let data = common::pseudo_random(7, mb << 20);
    std::fs::write(&file, &data).unwrap();
    let out = Command::new("sha256sum").arg(&file).output().unwrap();
    let sum = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    ns.run(move || {
        // Every wait has an end, so a guest that never answers fails the test, never hangs it.
        let deadline = std::time::Instant::now() + common::scaled(Duration::from_secs(100));
        let stall = Some(common::scaled(Duration::from_secs(20)));
        let listener = std::net::TcpListener::bind("10.0.2.1:5002").unwrap();
        let mut s = loop {
            match std::net::TcpStream::connect((GUEST_IP, 5001)) {
                Ok(s) => break s,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(e) => panic!("connect to the guest: {e}"),
            }
        };
        s.set_write_timeout(stall).unwrap();
        s.write_all(&data).expect("send to the guest");
        drop(s);
        listener.set_nonblocking(true).unwrap();
        let mut back = loop {
            match listener.accept() {
                Ok((back, _)) => break back,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => panic!("the guest never connected back: {e}"),
            }
        };
        back.set_nonblocking(false).unwrap();
        back.set_read_timeout(stall).unwrap();
        let mut got = Vec::new();
        back.read_to_end(&mut got).expect("receive from the guest");
        assert!(got.iter().all(|b| *b == 0), "zeros back");
        (sum, got.len())
    })
}

#[test]
#[ignore = "boots a Linux guest: hardware KVM or the KVM test machine (scripts/test.sh runs it there)"]
fn tcp_over_a_tap_under_gureum_100_mb_each_way() {
    require_kvm!();
    let dir = common::scratch("linux-tcp");
    let image = root_image(&dir, TCP_INIT);
    let tap = "gtcp0";
    let ns = common::Netns::new("tcp", tap, Some("10.0.2.1/24"));
    let host = host_side(&ns, 100, &dir);
    let cmdline =
        format!("console=ttyS0 reboot=k panic=1 pci=off init=/init {IP_CMDLINE} gureum.mb=100");
    let out = common::finish(
        ns.command(common::GUREUM)
            .args(["boot", "--kernel"])
            .arg(vmlinux())
            .args([
                "--memory",
                "256",
                "--disk",
                &format!("{},root", image.display()),
            ])
            .args([
                "--net",
                &format!("tap={tap}"),
                "--cmdline",
                &cmdline,
                "--timeout",
                &common::timeout_secs(120),
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
        Duration::from_secs(150),
    );
    let host = host.join();
    eprintln!("gureum: {:?}", out.elapsed);
    let (sum, back) = host.unwrap_or_else(|_| panic!("the host side failed\n{}", out.describe()));
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert!(
        out.stdout.contains(&format!("gureum-test: received {sum}")),
        "{}",
        out.describe()
    );
    assert_eq!(back, 100 << 20);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn tcp_over_a_tap_under_tcg() {
    let dir = common::scratch("linux-tcp-tcg");
    let image = root_image(&dir, TCP_INIT);
    let tap = "gtcpq0";
    let ns = common::Netns::new("tcpq", tap, Some("10.0.2.1/24"));
    let mb = 4;
    let host = host_side(&ns, mb, &dir);
    let mut qemu = ns.command("qemu-system-x86_64");
    let append = format!(
        "console=ttyS0 reboot=k panic=-1 root=/dev/vda rw init=/init {IP_CMDLINE} gureum.mb={mb}"
    );
    common::tcg_microvm_args(&mut qemu, &vmlinux(), &append);
    qemu.args([
        "-drive",
        &format!("id=d0,file={},format=raw,if=none", image.display()),
    ]);
    qemu.args(["-device", "virtio-blk-device,drive=d0"]);
    qemu.args([
        "-netdev",
        &format!("tap,id=n0,ifname={tap},script=no,downscript=no,vhost=off"),
    ]);
    qemu.args(["-device", "virtio-net-device,netdev=n0"]);
    let (lines, met) =
        common::run_command_until(qemu, |l| l == "gureum-test: sent", Duration::from_secs(150));
    let (sum, back) = host.join().unwrap();
    assert!(met, "{}", lines.join("\n"));
    assert!(
        lines
            .iter()
            .any(|l| *l == format!("gureum-test: received {sum}")),
        "{}",
        lines.join("\n")
    );
    assert_eq!(back, mb << 20);
    std::fs::remove_dir_all(dir).unwrap();
}

const RNG_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mount -t sysfs sys /sys
echo "gureum-test: rng $(/bin/busybox cat /sys/class/misc/hw_random/rng_current)"
echo "gureum-test: bytes $(/bin/busybox head -c 32 /dev/hwrng | /bin/busybox od -An -tx1 | /bin/busybox tr -d ' \n')"
/bin/busybox reboot -f
"#;

/// `--rng`: the Linux guest's hw_random core picks virtio_rng and reads bytes from it.
#[test]
#[ignore = "boots a Linux guest: hardware KVM or the KVM test machine (scripts/test.sh runs it there)"]
fn rng_feeds_the_linux_guest_s_hwrng() {
    let dir = common::scratch("linux-rng");
    let image = root_image(&dir, RNG_INIT);
    let kernel = vmlinux().display().to_string();
    let disk = format!("{},root", image.display());
    let cmdline = "console=ttyS0 reboot=k panic=1 pci=off quiet init=/init";
    let out = common::gureum_with_deadline(
        &[
            "boot",
            "--kernel",
            &kernel,
            "--disk",
            &disk,
            "--rng",
            "--cmdline",
            cmdline,
            "--timeout",
            &common::timeout_secs(60),
        ],
        Duration::from_secs(60),
    );
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let line = |key: &str| {
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("gureum-test: {key} ")))
            .unwrap_or_else(|| panic!("no {key} line\n{}", out.describe()))
            .to_string()
    };
    assert!(line("rng").starts_with("virtio_rng"), "{}", out.describe());
    let bytes = line("bytes");
    assert_eq!(bytes.len(), 64, "32 bytes from /dev/hwrng: {bytes}");
    assert!(
        bytes
            .as_bytes()
            .chunks(2)
            .any(|b| b != &bytes.as_bytes()[..2]),
        "not one byte repeated: {bytes}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
