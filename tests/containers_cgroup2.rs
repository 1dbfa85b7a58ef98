//! The cgroup v2 path, through the real CLI and the kernel: on a v2 host in /sys/fs/cgroup (where
//! every other container test runs it too), on a hybrid host such as this one in its unified
//! hierarchy (`GUREUM_CGROUP2`), whose controllers are few. Device rules (an eBPF program),
//! freezing, killing and removal are the kernel's own on any cgroup2 mount; a limit whose
//! controller the mount lacks is refused in one line.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::bundle::{Bundle, id, isolations, wait_for_status};

/// The cgroup2 mount to test, and whether it must be named with GUREUM_CGROUP2.
fn cgroup2() -> Option<(PathBuf, bool)> {
    let v2 = Path::new("/sys/fs/cgroup");
    let unified = v2.join("unified");
    if v2.join("cgroup.controllers").exists() {
        Some((v2.into(), false))
    } else if unified.join("cgroup.controllers").exists() {
        Some((unified, true))
    } else {
        None
    }
}

fn bundle(tag: &str, process: serde_json::Value, isolation: &'static str) -> Option<Bundle> {
    let Some((root, named)) = cgroup2() else {
        eprintln!("skipped: this host mounts no cgroup2 hierarchy (a v1-only host)");
        return None;
    };
    let mut b = Bundle::with_isolation(tag, process.clone(), isolation);
    b.cgroup2 = named.then_some(root);
    configure(&b, process, |_| {});
    Some(b)
}

/// Writes the bundle's config without the default limits whose controllers the mount lacks
/// (a hybrid host's unified hierarchy has hardly any), then `edit`s it.
fn configure(b: &Bundle, process: serde_json::Value, edit: impl FnOnce(&mut serde_json::Value)) {
    let (root, _) = cgroup2().unwrap();
    let available = controllers(&root);
    b.config(process, |c| {
        let resources = c["linux"]["resources"].as_object_mut().unwrap();
        resources.retain(|name, _| available.split_whitespace().any(|c| c == name));
        edit(c);
    });
}

fn controllers(root: &Path) -> String {
    std::fs::read_to_string(root.join("cgroup.controllers")).unwrap()
}

#[test]
fn device_rules_are_an_ebpf_program_the_kernel_enforces() {
    // As the v1 test: mknod is allowed, opening a disk node is not, null and zero stay usable.
    let script = "mknod /tmp/disk b 8 0 && echo made; head -c 1 /tmp/disk; \
                  head -c 3 /dev/zero | wc -c; echo x > /dev/null && echo null-ok";
    let process = serde_json::json!({"args": ["sh", "-c", script]});
    let Some(b) = bundle("cg2-devices", process.clone(), "native") else {
        return;
    };
    configure(&b, process.clone(), |c| {
        c["linux"]["resources"]["devices"] = serde_json::json!([{"allow": false, "access": "rwm"}]);
    });
    let out = b.run(&id("cg2-devices"));
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert_eq!(out.stdout, "made\n3\nnull-ok\n", "{}", out.describe());
    assert!(
        out.stderr.contains("Operation not permitted"),
        "{}",
        out.describe()
    );
    b.assert_gone(&id("cg2-devices"));
    // An allow after the deny opens that device again (the last rule that matches decides).
    configure(&b, process, |c| {
        c["linux"]["resources"]["devices"] = serde_json::json!([
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "b", "major": 8, "access": "r"},
        ]);
    });
    let out = b.run(&id("cg2-devices"));
    assert!(
        !out.stderr.contains("Operation not permitted"),
        "{}",
        out.describe()
    );
    b.assert_gone(&id("cg2-devices"));
}

#[test]
fn pause_resume_and_delete_use_the_cgroup2_files() {
    isolations().into_iter().for_each(pause_resume_delete);
}

fn pause_resume_delete(isolation: &'static str) {
    let process = serde_json::json!({"args": ["sleep", "30"]});
    let Some(b) = bundle("cg2-freeze", process, isolation) else {
        return;
    };
    let (root, _) = cgroup2().unwrap();
    let name = id("cg2-freeze");
    b.create_and_start(&name, Stdio::null());
    let dir = root.join("gureum").join(&name);
    let events = || std::fs::read_to_string(dir.join("cgroup.events")).unwrap();
    let pids = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
    assert!(
        !pids.trim().is_empty(),
        "{isolation}: nothing in {}",
        dir.display()
    );
    if isolation == "native" {
        // An exec'd process is born in the container's cgroup too (clone3 CLONE_INTO_CGROUP).
        let out = b.gureum(&["exec", &name, "cat", "/proc/self/cgroup"]);
        assert_eq!(out.code, Some(0), "{}", out.describe());
        let line = format!("0::/gureum/{name}\n");
        assert!(out.stdout.contains(&line), "{}", out.describe());
    }
    assert_eq!(b.gureum(&["pause", &name]).code, Some(0));
    assert!(events().contains("frozen 1"), "{}", events());
    assert_eq!(wait_for_status(&b, &name, "paused")["status"], "paused");
    assert_eq!(b.gureum(&["resume", &name]).code, Some(0));
    assert!(events().contains("frozen 0"), "{}", events());
    assert_eq!(wait_for_status(&b, &name, "running")["status"], "running");
    // A paused container is killed by delete --force (cgroup.kill) and its cgroup removed.
    assert_eq!(b.gureum(&["pause", &name]).code, Some(0));
    let start = Instant::now();
    let out = b.gureum(&["delete", "--force", &name]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert!(start.elapsed() < Duration::from_secs(5));
    b.assert_gone(&name);
}

#[test]
fn a_limit_is_written_where_its_controller_is_and_refused_where_it_is_not() {
    let process = serde_json::json!({"args": ["cat", "/proc/self/cgroup"]});
    let Some(b) = bundle("cg2-limits", process.clone(), "native") else {
        return;
    };
    let (root, _) = cgroup2().unwrap();
    let has_pids = controllers(&root).split_whitespace().any(|c| c == "pids");
    configure(&b, process, |c| {
        c["linux"]["resources"]["pids"] = serde_json::json!({"limit": 64});
    });
    let name = id("cg2-limits");
    let out = b.run(&name);
    if has_pids {
        assert_eq!(out.code, Some(0), "{}", out.describe());
        // The container's cgroup v2 line names gureum's cgroup.
        let line = format!("0::/gureum/{name}");
        assert!(out.stdout.contains(&line), "{}", out.describe());
    } else {
        eprintln!(
            "{}: no pids controller: the limit must be refused",
            root.display()
        );
        assert_eq!(out.code, Some(1), "{}", out.describe());
        assert_eq!(out.stderr.lines().count(), 1, "{}", out.describe());
        assert!(
            out.stderr.contains("no pids controller"),
            "{}",
            out.describe()
        );
    }
    b.assert_gone(&name);
}
