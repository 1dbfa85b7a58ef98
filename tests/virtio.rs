//! Virtio devices through the test guest's own minimal driver (the guest half is in
//! guest-kernels/test-guest/src/scenarios.rs): the host prepares images, the guest drives the
//! device and prints what it saw, and the host checks both.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{boot_test_guest, scratch};

const SECTOR: usize = 512;

/// A 64-sector image: sector 0 begins with a marker, the rest is 0xab.
fn image(dir: &Path, name: &str) -> PathBuf {
    let mut data = vec![0xabu8; 64 * SECTOR];
    data[..16].copy_from_slice(b"gureum-disk-0123");
    let path = dir.join(name);
    std::fs::write(&path, data).unwrap();
    path
}

fn has(out: &common::Output, line: &str) -> bool {
    out.stdout.lines().any(|l| l == line)
}

#[test]
fn rng_bytes_arrive() {
    require_kvm!();
    let out = boot_test_guest(&["--rng", "--cmdline", "scenario=virtio-rng"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("rng: "))
        .unwrap_or_else(|| panic!("{}", out.describe()));
    let distinct: u32 = line.split_whitespace().nth(3).unwrap().parse().unwrap();
    assert!(line.starts_with("rng: 64 bytes, "), "{line}");
    // 64 random bytes take, with overwhelming probability, far more than 16 distinct values.
    assert!(distinct > 16, "{line}");
}

#[test]
fn block_read_write_flush_discard_id() {
    require_kvm!();
    let dir = scratch("blk");
    let img = image(&dir, "disk.img");
    let disk = format!("{},id=test-disk-7", img.display());
    let out = boot_test_guest(&["--disk", &disk, "--cmdline", "scenario=virtio-blk"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    for line in [
        "blk: capacity 64 sectors",
        "blk: read sector 0 status=0",
        "blk: sector 0 begins gureum-disk-0123",
        "blk: write sector 1 status=0",
        "blk: flush status=0",
        "blk: read back (same) status=0",
        "blk: discard sector 2 status=0",
        "blk: id test-disk-7",
        "blk: get id status=0",
        "blk: read past the end status=1",
    ] {
        assert!(has(&out, line), "missing {line:?}\n{}", out.describe());
    }
    let data = std::fs::read(&img).unwrap();
    assert_eq!(&data[SECTOR..SECTOR + 16], b"written-by-guest");
    assert!(data[SECTOR + 16..2 * SECTOR].iter().all(|b| *b == 0x5a));
    assert!(
        data[2 * SECTOR..3 * SECTOR].iter().all(|b| *b == 0),
        "discarded sector reads zero"
    );
    assert!(
        data[3 * SECTOR..].iter().all(|b| *b == 0xab),
        "nothing else changed"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn read_only_disk_refuses_writes_with_an_io_error() {
    require_kvm!();
    let dir = scratch("blk-ro");
    let img = image(&dir, "ro.img");
    let before = std::fs::read(&img).unwrap();
    let disk = format!("{},ro", img.display());
    let out = boot_test_guest(&["--disk", &disk, "--cmdline", "scenario=virtio-blk"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert!(
        has(&out, "blk: read sector 0 status=0"),
        "{}",
        out.describe()
    );
    assert!(
        has(&out, "blk: write sector 1 status=1"),
        "{}",
        out.describe()
    );
    assert!(
        has(&out, "blk: discard sector 2 status=1"),
        "{}",
        out.describe()
    );
    assert_eq!(std::fs::read(&img).unwrap(), before);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_flushed_write_survives_sigkill() {
    require_kvm!();
    let dir = scratch("blk-kill");
    let img = image(&dir, "disk.img");
    let kernel = common::test_guest().to_str().unwrap().to_string();
    let disk = img.to_str().unwrap().to_string();
    let args = [
        "boot",
        "--kernel",
        &kernel,
        "--disk",
        &disk,
        "--cmdline",
        "scenario=virtio-blk then=hang",
    ];
    let (lines, met) = common::run_until(
        &args,
        |l| l == "hang: spinning until stopped",
        Duration::from_secs(20),
    );
    assert!(met, "{}", lines.join("\n"));
    assert!(
        lines.iter().any(|l| l == "blk: flush status=0"),
        "{}",
        lines.join("\n")
    );
    // gureum was SIGKILLed with the guest still running; what was flushed is in the image.
    let data = std::fs::read(&img).unwrap();
    assert_eq!(&data[SECTOR..SECTOR + 16], b"written-by-guest");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_hostile_driver_gets_sane_answers_and_gureum_stays_up() {
    require_kvm!();
    let out = boot_test_guest(&["--rng", "--cmdline", "scenario=virtio-hostile"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    for line in [
        "hostile: notified before activation",
        "hostile: queue size 6 refused (needs reset)",
        "hostile: buffer outside memory -> 0",
        "hostile: read-only buffer -> 0",
        "hostile: zero length -> 0",
        "hostile: a good request after all that -> 32",
    ] {
        assert!(has(&out, line), "missing {line:?}\n{}", out.describe());
    }
    // A loop, or a chain longer than the queue, is cut at the queue size (8 x 16 bytes).
    for prefix in [
        "hostile: descriptor loop -> ",
        "hostile: chain longer than the queue -> ",
    ] {
        let line = out
            .stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("{}", out.describe()));
        let n: u32 = line[prefix.len()..]
            .parse()
            .unwrap_or_else(|_| panic!("{line}"));
        assert!(n <= 128, "{line}");
    }
    assert!(
        out.stdout.ends_with("gureum-test-guest: reset\n"),
        "{}",
        out.describe()
    );
}

#[test]
fn firecracker_drives_and_entropy_boot_like_the_flags() {
    require_kvm!();
    let dir = scratch("blk-config");
    let img = image(&dir, "root.img");
    let kernel = common::test_guest().display().to_string();
    let config = dir.join("vm.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{kernel}", "boot_args": "scenario=virtio-blk"}},
                "drives": [{{"drive_id": "rootfs", "path_on_host": "{}", "is_root_device": true, "is_read_only": true}}],
                "entropy": {{}}}}"#,
            img.display()
        ),
    )
    .unwrap();
    let from_file = boot_test_guest(&["--config", config.to_str().unwrap()]);
    let disk = format!("{},ro,root,id=rootfs", img.display());
    let from_flags =
        boot_test_guest(&["--disk", &disk, "--rng", "--cmdline", "scenario=virtio-blk"]);
    assert_eq!(from_file.code, Some(0), "{}", from_file.describe());
    assert!(
        from_file.stdout.contains(
            "root=/dev/vda ro virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"
        ),
        "{}",
        from_file.describe()
    );
    assert!(
        has(&from_file, "blk: id rootfs"),
        "{}",
        from_file.describe()
    );
    assert_eq!(from_file.stdout, from_flags.stdout);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_disk_configurations_are_one_line_errors() {
    let dir = scratch("blk-bad");
    let img = image(&dir, "a.img");
    let g = common::test_guest().to_str().unwrap().to_string();
    let a = img.to_str().unwrap();
    let cases: [(Vec<String>, &str); 4] = [
        (
            vec![format!("{}/missing.img", dir.display())],
            "cannot open disk",
        ),
        (
            vec![format!("{a},root"), format!("{a},root")],
            "2 disks are marked as root",
        ),
        (
            vec![format!("{a},id=x"), format!("{a},id=x")],
            "two disks have the id \"x\"",
        ),
        (
            vec![format!("{a},id=an-id-longer-than-twenty-bytes")],
            "longer than 20 bytes",
        ),
    ];
    for (disks, want) in cases {
        let mut args = vec!["boot".to_string(), "--kernel".into(), g.clone()];
        for d in disks {
            args.extend(["--disk".to_string(), d]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = common::gureum(&args);
        assert_eq!(out.code, Some(1), "{}", out.describe());
        assert!(
            out.stderr.starts_with("gureum: ") && out.stderr.contains(want),
            "{want}: {}",
            out.describe()
        );
        assert_eq!(out.stderr.lines().count(), 1, "{}", out.describe());
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bench_devices_reports_every_workload() {
    require_kvm!();
    let kernel = common::test_guest().to_str().unwrap();
    let out = common::finish(
        common::spawn(
            &[
                "bench",
                "devices",
                "--kernel",
                kernel,
                "--runs",
                "1",
                "--no-qemu",
            ],
            None,
        ),
        Duration::from_secs(120),
    );
    assert_eq!(out.code, Some(0), "{}", out.describe());
    for (row, unit) in [
        ("block read, 64 KiB", "MB/s"),
        ("block read, 4 KiB", "IOPS"),
        ("block write, 64 KiB", "MB/s"),
        ("vsock echo", "MB/s"),
        ("net tx, 1514-byte frames", "fps"),
        ("net tx, the same in MB/s", "MB/s"),
    ] {
        let line = out
            .stdout
            .lines()
            .find(|l| l.starts_with(row))
            .unwrap_or_else(|| panic!("{row}\n{}", out.stdout));
        let value: f64 = line
            .split_whitespace()
            .rev()
            .nth(3)
            .unwrap()
            .parse()
            .unwrap_or_else(|_| panic!("{line}"));
        assert!(
            value > 0.0 && line.contains(unit) && line.ends_with("n/a"),
            "{line}"
        );
    }
    assert!(
        out.stdout.contains("qemu microvm: skipped (--no-qemu)"),
        "{}",
        out.stdout
    );
}
