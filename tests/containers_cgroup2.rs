//! The cgroup v2 path, through the real CLI and the kernel: on a v2 host in /sys/fs/cgroup (where
//! every other container test runs it too), on a hybrid host such as this one in its unified
//! hierarchy (`GUREUM_CGROUP2`), whose controllers are few. Freezing, killing and removal are
//! the kernel's own on any cgroup2 mount; a limit whose controller the mount lacks is refused in
//! one line. Device rules (v2's eBPF program) are in containers_security.rs.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::bundle::{Bundle, cgroup_controllers, cgroup2, id, wait_for_status};

fn bundle(tag: &str, process: serde_json::Value, isolation: &'static str) -> Option<Bundle> {
    let Some((root, named)) = cgroup2() else {
        eprintln!("skipped: this host mounts no cgroup2 hierarchy (a v1-only host)");
        return None;
    };
    let b = Bundle::with_isolation(tag, process.clone(), isolation);
    Some(b.in_cgroup2(named.then_some(root), process))
}

per_isolation!(pause_resume_and_delete_use_the_cgroup2_files => pause_resume_delete);

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
    assert!(start.elapsed() < common::scaled(Duration::from_secs(5)));
    b.assert_gone(&name);
}

#[test]
fn a_limit_is_written_where_its_controller_is_and_refused_where_it_is_not() {
    let process = serde_json::json!({"args": ["cat", "/proc/self/cgroup"]});
    let Some(b) = bundle("cg2-limits", process.clone(), "native") else {
        return;
    };
    let (root, _) = cgroup2().unwrap();
    let has_pids = cgroup_controllers(&root)
        .split_whitespace()
        .any(|c| c == "pids");
    b.config(process, |c| {
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
