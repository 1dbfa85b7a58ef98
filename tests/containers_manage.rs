//! Managing running containers through the real binary, in both isolations (sandboxes
//! through the stand-in VMM on PVM hosts): `exec -d` with a pid file that stands for the
//! process, `pause`/`resume`, and `update` of the limits.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::bundle::{Bundle, id, wait_for_status};

per_isolation!(exec_detached_writes_a_pid_that_stands_for_the_process => exec_detached);

/// How many processes in the container run `sleep 27` (through a second exec).
fn sleepers(b: &Bundle, name: &str) -> String {
    let out = b.gureum(&["exec", name, "sh", "-c", "ps | grep -c '[s]leep 27'"]);
    match out.code {
        Some(0 | 1) => out.stdout.trim().to_string(),
        _ => out.describe(),
    }
}

fn exec_detached(isolation: &'static str) {
    let b = Bundle::with_isolation(
        "execd",
        serde_json::json!({"args": ["sleep", "300"]}),
        isolation,
    );
    let name = id("execd");
    b.create_and_start(&name, Stdio::null());
    let pid_file = b.dir.join("exec.pid");
    // The exec'd process keeps exec's stdio (as runc's): give it none to hold open.
    let exec_d = || {
        let pid_file = pid_file.to_str().unwrap();
        b.command(&["exec", "-d", "--pid-file", pid_file, &name, "sleep", "27"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
    };
    let started = Instant::now();
    let exec = exec_d();
    assert!(exec.success(), "{isolation}");
    assert!(
        started.elapsed() < common::scaled(Duration::from_secs(5)),
        "exec -d waited"
    );
    // SIGTERM is passed on; SIGKILL (of gureum's relay, in a sandbox) ends the process too.
    for sig in [libc::SIGTERM, libc::SIGKILL] {
        if sig == libc::SIGKILL {
            assert!(exec_d().success());
        }
        let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().parse().unwrap();
        let deadline = Instant::now() + common::scaled(Duration::from_secs(5));
        while sleepers(&b, &name) != "1" {
            assert!(
                Instant::now() < deadline,
                "{isolation}: the process is not running"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: signals the process the pid file names (ours, or gureum's relay for it).
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
        let deadline = Instant::now() + common::scaled(Duration::from_secs(5));
        loop {
            let count = sleepers(&b, &name);
            if count == "0" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{isolation}: signal {sig} left it running: {count}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    assert_eq!(b.gureum(&["delete", "--force", &name]).code, Some(0));
    b.assert_gone(&name);
}

per_isolation!(pause_freezes_the_container_and_resume_thaws_it => pause_resume);

fn pause_resume(isolation: &'static str) {
    let script = "while true; do echo tick; sleep 0.02; done";
    let process = serde_json::json!({"args": ["sh", "-c", script]});
    let b = Bundle::with_isolation("pause", process, isolation);
    let name = id("pause");
    // The container's stdout is a file: how far it got, while frozen and after.
    let log = b.dir.join("ticks");
    b.create_and_start(&name, std::fs::File::create(&log).unwrap().into());
    let ticks = || std::fs::metadata(&log).map_or(0, |m| m.len());
    let grows = |within: Duration| {
        let (from, start) = (ticks(), Instant::now());
        while start.elapsed() < within {
            if ticks() > from {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    };
    assert!(
        grows(common::scaled(Duration::from_secs(5))),
        "{isolation}: not running"
    );
    let paused = b.gureum(&["pause", &name]);
    assert_eq!(paused.code, Some(0), "{}", paused.describe());
    assert_eq!(wait_for_status(&b, &name, "paused")["status"], "paused");
    assert!(
        !grows(common::scaled(Duration::from_millis(300))),
        "{isolation}: ran while paused"
    );
    // Paused is not running: a second pause is refused; delete needs --force.
    assert_eq!(b.gureum(&["pause", &name]).code, Some(1));
    assert_eq!(b.gureum(&["delete", &name]).code, Some(1));
    assert_eq!(b.gureum(&["resume", &name]).code, Some(0));
    assert_eq!(wait_for_status(&b, &name, "running")["status"], "running");
    assert!(
        grows(common::scaled(Duration::from_secs(5))),
        "{isolation}: still frozen"
    );
    // A paused container can be deleted by force: it is thawed, then killed.
    assert_eq!(b.gureum(&["pause", &name]).code, Some(0));
    assert_eq!(b.gureum(&["delete", "--force", &name]).code, Some(0));
    b.assert_gone(&name);
}

per_isolation!(update_changes_the_limits_it_names => update);

fn update(isolation: &'static str) {
    let b = Bundle::with_isolation(
        "update",
        serde_json::json!({"args": ["sleep", "30"]}),
        isolation,
    );
    let name = id("update");
    b.create_and_start(&name, Stdio::null());
    // A v1 host's file in the controller's hierarchy, or a v2 host's.
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let cg = |controller: &str, v1_file: &str, v2_file: &str| {
        let path = match v2 {
            true => format!("/sys/fs/cgroup/gureum/{name}/{v2_file}"),
            false => format!("/sys/fs/cgroup/{controller}/gureum/{name}/{v1_file}"),
        };
        std::fs::read_to_string(path).unwrap().trim().to_string()
    };
    let quota = if v2 { "20000 100000" } else { "20000" };
    let out = b.gureum(&[
        "update",
        "--cpu-quota",
        "20000",
        "--cpu-period",
        "100000",
        &name,
    ]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert_eq!(cg("cpu", "cpu.cfs_quota_us", "cpu.max"), quota);
    if isolation == "native" {
        let out = b.gureum(&["update", "--memory", "64m", "--pids-limit", "50", &name]);
        assert_eq!(out.code, Some(0), "{}", out.describe());
        assert_eq!(
            cg("memory", "memory.limit_in_bytes", "memory.max"),
            "67108864"
        );
        assert_eq!(cg("pids", "pids.max", "pids.max"), "50");
        // From stdin, as containerd sends it: only the memory changes.
        let mut child = b
            .command(&["update", "-r", "-", &name])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let json = br#"{"memory": {"limit": 33554432}}"#;
        child.stdin.take().unwrap().write_all(json).unwrap();
        assert!(child.wait().unwrap().success());
        assert_eq!(
            cg("memory", "memory.limit_in_bytes", "memory.max"),
            "33554432"
        );
        assert_eq!(cg("pids", "pids.max", "pids.max"), "50");
    } else {
        let out = b.gureum(&["update", "--memory", "1g", &name]);
        assert_eq!(out.code, Some(1), "{}", out.describe());
        assert!(out.stderr.contains("CPU quota"), "{}", out.describe());
    }
    let bad = b.gureum(&["update", "--memory", "lots", &name]);
    assert_eq!(
        (bad.code, bad.stderr.lines().count()),
        (Some(1), 1),
        "{}",
        bad.describe()
    );
    assert_eq!(b.gureum(&["delete", "--force", &name]).code, Some(0));
    b.assert_gone(&name);
}

per_isolation!(ps_lists_the_container_s_processes_on_this_host => ps);

fn ps(isolation: &'static str) {
    // Long enough to outlast a slow emulated machine; `delete --force` ends them.
    let process = serde_json::json!({"args": ["sh", "-c", "sleep 299 & sleep 300"]});
    let b = Bundle::with_isolation("ps", process, isolation);
    let name = id("ps");
    b.create_and_start(&name, Stdio::null());
    let state = wait_for_status(&b, &name, "running");
    let pid = state["pid"].as_i64().unwrap();
    let wants: &[&str] = match isolation {
        "native" => &["sleep 299"],
        // The stand-in's agent, behind the vsock socket.
        "standin" => &["vsock"],
        // The sandbox's VMM: restoring the warm template, or booting its VM's config file.
        _ => &[" restore --snapshot ", " boot --config "],
    };
    let deadline = Instant::now() + common::scaled(Duration::from_secs(5));
    loop {
        let json = b.gureum(&["ps", "--format", "json", &name]);
        let pids: Vec<i64> = serde_json::from_str(&json.stdout)
            .unwrap_or_else(|e| panic!("{isolation}: ps --format json: {e}\n{}", json.describe()));
        let table = b.gureum(&["ps", &name]).stdout;
        // The container's pid (its init, or its sandbox's monitor) and its processes.
        if pids.contains(&pid) && wants.iter().any(|w| table.contains(w)) {
            break;
        }
        assert!(Instant::now() < deadline, "{isolation}: {pids:?}\n{table}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(b.gureum(&["delete", "--force", &name]).code, Some(0));
    assert_eq!(b.gureum(&["ps", &name]).code, Some(1));
    b.assert_gone(&name);
}

per_isolation!(every_process_of_a_container_is_in_its_cgroups => in_cgroups);

/// `/proc/PID/cgroup` puts the process in `gureum/<name>` in each hierarchy gureum uses.
fn assert_in_cgroups(text: &str, name: &str, who: &str) {
    let want = format!("/gureum/{name}");
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let ours = ["memory", "cpu", "pids", "devices", "freezer"];
    let mut checked = 0;
    for line in text.lines() {
        let mut fields = line.splitn(3, ':').skip(1);
        let (controllers, path) = (fields.next().unwrap(), fields.next().unwrap());
        let used = match v2 {
            true => controllers.is_empty(),
            false => controllers.split(',').any(|c| ours.contains(&c)),
        };
        if used {
            assert_eq!(path, want, "{who}: {line}\n{text}");
            checked += 1;
        }
    }
    assert!(checked > 0, "{who}: no cgroup of gureum's in\n{text}");
}

fn in_cgroups(isolation: &'static str) {
    let process = serde_json::json!({"args": ["sleep", "30"]});
    let b = Bundle::with_isolation("in-cgroups", process, isolation);
    let name = id("in-cgroups");
    b.create_and_start(&name, Stdio::null());
    let state = wait_for_status(&b, &name, "running");
    let pid = state["pid"].as_i64().unwrap();
    let cgroup = |pid: i64| std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    // The init (natively) or the sandbox's monitor.
    assert_in_cgroups(&cgroup(pid), &name, &format!("{isolation}: pid {pid}"));
    if isolation == "native" {
        let out = b.gureum(&["exec", &name, "cat", "/proc/self/cgroup"]);
        assert_eq!(out.code, Some(0), "{}", out.describe());
        assert_in_cgroups(&out.stdout, &name, "an exec'd process");
    } else {
        // The sandbox's VMM (or stand-in), a child of the monitor.
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"));
        let vmm: i64 = children
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_in_cgroups(&cgroup(vmm), &name, &format!("the VMM, pid {vmm}"));
    }
    assert_eq!(b.gureum(&["delete", "--force", &name]).code, Some(0));
    b.assert_gone(&name);
}

#[test]
fn features_prints_the_runtime_spec_document() {
    let out = common::gureum(&["features"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let f: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    // What containerd's runc shim looks for, and what gureum refuses is not claimed.
    assert_eq!(f["ociVersionMin"], "1.0.0");
    assert!(
        f["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .contains(&"user".into())
    );
    let actions = f["linux"]["seccomp"]["actions"].as_array().unwrap();
    assert!(!actions.contains(&"SCMP_ACT_NOTIFY".into()));
    assert_eq!(f["linux"]["apparmor"]["enabled"], false);
}

#[test]
fn linux_cgroups_path_places_the_container_there() {
    // As containerd's shim sets it: /<namespace>/<id>, relative to each hierarchy's root.
    for cgroup2 in common::bundle::cgroup_layouts() {
        let process = serde_json::json!({"args": ["cat", "/proc/self/cgroup"]});
        let b = Bundle::new("cgroups-path", process.clone()).in_cgroup2(cgroup2, process.clone());
        let name = id("cgroups-path");
        let parent = format!("gureum-test-ns-{}", std::process::id());
        b.config(process.clone(), |c| {
            c["linux"]["cgroupsPath"] = format!("/{parent}/{name}").into();
        });
        let out = b.run(&name);
        assert_eq!(out.code, Some(0), "{}", out.describe());
        let want = format!("/{parent}/{name}");
        let ours = out
            .stdout
            .lines()
            .filter(|l| l.ends_with(&format!(":{want}")));
        assert!(ours.count() > 0, "{}", out.describe());
        b.assert_gone(&name);
        // Only the container's own cgroup is removed; the namespace's stays, as with runc.
        let roots = ["memory", "pids", "cpu", "devices", "freezer", "unified", ""];
        for r in roots.map(|r| Path::new("/sys/fs/cgroup").join(r)) {
            assert!(!r.join(&parent).join(&name).exists());
            let _ = std::fs::remove_dir(r.join(&parent));
        }
        // A systemd slice path is refused in one line, leaving nothing.
        b.config(process, |c| {
            c["linux"]["cgroupsPath"] = "system.slice:gureum:x".into();
        });
        let out = b.run(&name);
        assert_eq!(out.code, Some(1), "{}", out.describe());
        assert_eq!(out.stderr.lines().count(), 1, "{}", out.describe());
        assert!(out.stderr.contains("systemd"), "{}", out.describe());
        b.assert_gone(&name);
    }
}
