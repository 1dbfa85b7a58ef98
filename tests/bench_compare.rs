//! A short `gureum bench compare` (2 runs per kind, 2 instances for density) through the real
//! binary: it measures what this host can run, reports the rest as skipped with a reason (never
//! as zero), and writes all its files.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

/// `gureum bench compare ARGS --out OUT`, run to its end (2 minutes at most); `envs` as given.
fn compare(args: &[&str], envs: &[(&str, &str)], out: &std::path::Path) -> common::Output {
    let child = Command::new(common::GUREUM)
        .envs(envs.iter().copied())
        .args(["bench", "compare"])
        .args(args)
        .arg("--out")
        .arg(out)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    common::finish(child, Duration::from_secs(120))
}

#[test]
fn a_short_comparison_writes_json_markdown_and_charts() {
    let out = common::scratch("compare");
    // Its bundles and root filesystems go under $TMPDIR, not --out (which may be a share).
    let tmp = common::scratch("compare-tmp");
    let guest = common::test_guest().to_str().unwrap().to_string();
    let run = compare(
        &[
            "--runs",
            "2",
            "--density",
            "2",
            "--test-guest",
            &guest,
            "--only",
            "native,runc,sandbox,microvm-test-guest,microvm-test-guest-restore",
        ],
        &[("TMPDIR", tmp.to_str().unwrap())],
        &out,
    );
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert!(run.stdout.contains("× native"), "{}", run.describe());
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("compare.json")).unwrap()).unwrap();
    assert_eq!(json["schema"], "gureum-bench-compare/1");
    let kind = |name: &str| {
        json["kinds"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["name"] == name)
            .unwrap()
            .clone()
    };
    let native = kind("native");
    assert_eq!(native["status"], "measured");
    assert_eq!(native["failed_runs"], 0, "{native}");
    assert!(native["exit_ms"]["median"].as_f64().unwrap() > 0.0);
    assert!(
        native["density"]["memory_mib_per_instance"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    let vm = kind("microvm-test-guest");
    assert_eq!(vm["status"], "measured");
    assert!(vm["start_ms"]["median"].as_f64().unwrap() > 0.0);
    // The restore kind: a snapshot made once, restored by each run, which answers its line.
    let restored = kind("microvm-test-guest-restore");
    assert_eq!(restored["status"], "measured", "{restored}");
    assert_eq!(restored["failed_runs"], 0, "{restored}");
    assert!(restored["start_ms"]["median"].as_f64().unwrap() > 0.0);
    assert!(
        restored["phases_ms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p[0] == "first_entry" && p[1].as_f64().unwrap() > 0.0),
        "{restored}"
    );
    assert!(
        restored["density"].is_null(),
        "no density run for a restore"
    );
    let sandbox = kind("sandbox");
    if common::host_is_pvm() {
        assert_eq!(sandbox["status"], "skipped");
        assert!(sandbox["skip_reason"].as_str().unwrap().contains("PVM"));
        assert!(
            sandbox["exit_ms"].is_null(),
            "a skipped kind has no numbers, not zeros"
        );
    } else {
        assert_eq!(sandbox["status"], "measured", "{sandbox}");
    }
    assert_eq!(
        json["host"]["kvm"],
        if common::host_is_pvm() {
            "pvm"
        } else {
            "hardware"
        }
    );
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    for claim in json["claims"].as_array().unwrap() {
        assert!(md.contains(claim["claim"].as_str().unwrap()), "{md}");
    }
    for svg in ["startup.svg", "memory.svg"] {
        let text = std::fs::read_to_string(out.join(svg)).unwrap();
        assert!(text.starts_with("<svg") && text.contains("native"), "{svg}");
    }
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().collect();
    assert!(
        left.is_empty(),
        "the work directory is left behind: {left:?}"
    );
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        4,
        "only compare.json, report.md and two charts under --out"
    );
    std::fs::remove_dir_all(&out).unwrap();
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// Where Linux guests run (hardware KVM, or the KVM test machine), every VM kind is measured:
/// the sandbox, our Linux guest under gureum and under QEMU, and a Firecracker row, here
/// through a stand-in that boots the very config file the benchmark wrote for Firecracker.
#[test]
#[ignore = "boots a Linux guest: hardware KVM or the KVM test machine (scripts/test.sh runs it there)"]
fn every_vm_kind_is_measured_where_linux_guests_run() {
    let out = common::scratch("compare-all");
    let guest = common::test_guest().to_str().unwrap().to_string();
    let standin = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/firecracker-standin.sh");
    let kinds = "native,runc,sandbox,sandbox-cold,microvm,qemu-microvm,microvm-test-guest,firecracker,microvm-restore";
    let standin = standin.to_str().unwrap();
    let run = compare(
        &[
            "--runs",
            "1",
            "--density",
            "0",
            "--test-guest",
            &guest,
            "--only",
            kinds,
            "--firecracker",
            standin,
        ],
        &[("GUREUM_VMM", common::GUREUM)],
        &out,
    );
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("compare.json")).unwrap()).unwrap();
    for kind in json["kinds"].as_array().unwrap() {
        assert_eq!(kind["status"], "measured", "{kind}");
        assert_eq!(kind["failed_runs"], 0, "{kind}");
    }
    assert_eq!(json["host"]["emulated"], common::slowdown() > 1);
    std::fs::remove_dir_all(&out).unwrap();
}
