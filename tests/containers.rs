//! Containers through the real `gureum` binary: a busybox bundle the tests build, run natively
//! (namespaces + cgroups), in a sandbox through the stand-in VMM, and in a real microVM (the
//! `vm` cases, which need a host that runs our Linux guest: see `per_isolation!`).

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::bundle::{Bundle, id, wait_for_status};
use common::{GUREUM, finish};

per_isolation!(echo_and_exit_codes_and_a_missing_executable => codes);

fn codes(isolation: &'static str) {
    let b = Bundle::with_isolation(
        "codes",
        serde_json::json!({"args": ["echo", "hello from a container"]}),
        isolation,
    );
    let out = b.run(&id("echo"));
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert_eq!(out.stdout, "hello from a container\n");
    for code in [0, 1, 42] {
        b.config(
            serde_json::json!({"args": ["sh", "-c", format!("exit {code}")]}),
            |_| {},
        );
        let out = b.run(&id("code"));
        assert_eq!(out.code, Some(code), "{}", out.describe());
        b.assert_gone(&id("code"));
    }
    // config.json lists a pid namespace: the process is its PID 1 (runc's model), in a guest
    // too, where an exec'd process joins it and /proc shows it alone.
    b.config(
        serde_json::json!({"args": ["sh", "-c", "echo pid=$$; head -c 2 /proc/1/cmdline"]}),
        |_| {},
    );
    let out = b.run(&id("pid"));
    assert_eq!(out.stdout, "pid=1\nsh", "{}", out.describe());
    b.config(serde_json::json!({"args": ["no-such-program"]}), |_| {});
    let out = b.run(&id("missing"));
    assert_eq!(out.code, Some(127), "{}", out.describe());
    assert!(out.stderr.contains("no-such-program"), "{}", out.describe());
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.describe());
    b.assert_gone(&id("missing"));
}

per_isolation!(ten_megabytes_through_cat_with_stderr_apart => cat);

fn cat(isolation: &'static str) {
    let b = Bundle::with_isolation(
        "cat",
        serde_json::json!({"args": ["sh", "-c", "cat; echo done >&2"]}),
        isolation,
    );
    let data = common::pseudo_random(7, 10 << 20);
    let bundle = b.dir.to_str().unwrap().to_string();
    let mut child = b
        .command(&["run", "--bundle", &bundle, &id("cat")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feed = data.clone();
    let writer = std::thread::spawn(move || stdin.write_all(&feed));
    let stdout = child.stdout.take().map(common::drain).unwrap();
    let stderr = child.stderr.take().map(common::drain);
    // A minute at most (scaled), then killed: a stalled stream fails, it does not hang.
    let run = common::finish_drained(child, None, stderr, Duration::from_secs(60));
    let out = stdout.bytes(Some(common::scaled(Duration::from_secs(5))));
    let fed = writer.join().unwrap();
    let err = run.stderr;
    assert!(
        fed.is_ok(),
        "stdin: {fed:?}; exit {:?}; stderr: {err}",
        run.code
    );
    assert_eq!(run.code, Some(0), "{err}");
    assert_eq!(out.len(), data.len());
    assert!(out == data, "stdout differs from stdin");
    assert_eq!(err, "done\n");
}

per_isolation!(sigterm_to_gureum_and_gureum_kill_end_the_process => signals);

fn signals(isolation: &'static str) {
    // The process handles TERM itself: natively it is PID 1 of its namespace, which the kernel
    // spares signals it does not handle (a bare `sleep` ignores TERM there, as under runc). It
    // says so once its trap is set; the sleep holds none of its output open.
    let script = "trap 'exit 143' TERM; sleep 60 >/dev/null 2>&1 & echo ready; wait";
    let b = Bundle::with_isolation(
        "signals",
        serde_json::json!({"args": ["sh", "-c", script]}),
        isolation,
    );
    let bundle = b.dir.to_str().unwrap().to_string();
    let spawn = |name: &str| {
        b.command(&["run", "--bundle", &bundle, &id(name)])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut child = spawn("term");
    let stdout = child.stdout.take().map(common::drain);
    let stderr = child.stderr.take().map(common::drain);
    let ready = (stdout.as_ref())
        .is_some_and(|s| s.saw("ready\n", common::scaled(Duration::from_secs(20))));
    let sent = Instant::now();
    // SAFETY: signals the gureum child this test spawned.
    unsafe { libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGTERM) };
    let out = common::finish_drained(child, stdout, stderr, Duration::from_secs(10));
    assert!(ready, "{isolation}: never ready: {}", out.describe());
    assert_eq!(out.code, Some(143), "{}", out.describe());
    assert!(
        sent.elapsed() < common::scaled(Duration::from_secs(1)),
        "{:?}",
        sent.elapsed()
    );
    b.assert_gone(&id("term"));

    let child = spawn("kill");
    wait_for_status(&b, &id("kill"), "running");
    let sent = Instant::now();
    let k = b.gureum(&["kill", &id("kill"), "KILL"]);
    assert_eq!(k.code, Some(0), "{}", k.describe());
    let out = finish(child, Duration::from_secs(10));
    assert_eq!(out.code, Some(137), "{}", out.describe());
    assert!(
        sent.elapsed() < common::scaled(Duration::from_secs(1)),
        "{:?}",
        sent.elapsed()
    );
    b.assert_gone(&id("kill"));
}

#[test]
fn process_settings_are_applied() {
    let script = "echo env=$GREETING; echo cwd=$(pwd); echo id=$(id -u):$(id -g); \
                  echo host=$(hostname); echo pid=$$; touch /probe 2>/dev/null && echo rw || echo ro; \
                  echo nofile=$(ulimit -n)";
    let b = Bundle::new(
        "settings",
        serde_json::json!({"args": ["sh", "-c", script], "env": ["PATH=/bin", "GREETING=hi there"],
            "cwd": "/home/u", "user": {"uid": 1234, "gid": 5678},
            "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 321, "hard": 321}]}),
    );
    b.config(
        serde_json::json!({"args": ["sh", "-c", script], "env": ["PATH=/bin", "GREETING=hi there"],
            "cwd": "/home/u", "user": {"uid": 1234, "gid": 5678},
            "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 321, "hard": 321}]}),
        |c| {
            c["root"]["readonly"] = serde_json::json!(true);
            c["hostname"] = serde_json::json!("box-42");
        },
    );
    let out = b.run(&id("settings"));
    assert_eq!(out.code, Some(0), "{}", out.describe());
    // The shell is PID 1 of the container, as under runc.
    assert_eq!(
        out.stdout,
        "env=hi there\ncwd=/home/u\nid=1234:5678\nhost=box-42\npid=1\nro\nnofile=321\n",
        "{}",
        out.describe()
    );
}

per_isolation!(lifecycle_create_start_state_exec_delete => lifecycle);

fn lifecycle(isolation: &'static str) {
    let b = Bundle::with_isolation(
        "life",
        serde_json::json!({"args": ["sh", "-c", "read line; echo got $line"]}),
        isolation,
    );
    let bundle = b.dir.to_str().unwrap().to_string();
    let name = id("life");
    let pid_file = b.dir.join("pid");
    let pid_arg = pid_file.to_str().unwrap().to_string();
    // The container's stdin is a pipe the test holds; its stdout a file.
    let log = b.dir.join("out");
    let mut create = b
        .command(&["create", "--bundle", &bundle, "--pid-file", &pid_arg, &name])
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = create.stdin.take().unwrap();
    let status = create.wait().unwrap();
    assert!(status.success(), "create failed");
    let state = wait_for_status(&b, &name, "created");
    let pid: i64 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(state["pid"], pid);
    assert_eq!(state["isolation"], b.isolation);
    assert_eq!(state["bundle"], bundle);
    // A second create with the same ID is refused and changes nothing.
    let dup = b.gureum(&["create", "--bundle", &bundle, &name]);
    assert_eq!(dup.code, Some(1));
    assert!(dup.stderr.contains("already exists"), "{}", dup.describe());

    assert_eq!(b.gureum(&["start", &name]).code, Some(0));
    wait_for_status(&b, &name, "running");
    let list = b.gureum(&["list"]);
    assert!(
        list.stdout.contains(&name) && list.stdout.contains("running"),
        "{}",
        list.describe()
    );
    let exec = b.gureum(&[
        "exec",
        &name,
        "--",
        "sh",
        "-c",
        "echo exec in $(hostname); exit 7",
    ]);
    assert_eq!(exec.code, Some(7), "{}", exec.describe());
    assert_eq!(exec.stdout, "exec in gureum-test\n");
    let early = b.gureum(&["delete", &name]);
    assert_eq!(early.code, Some(1), "{}", early.describe());

    stdin.write_all(b"line-1\n").unwrap();
    drop(stdin);
    wait_for_status(&b, &name, "stopped");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "got line-1\n");
    assert_eq!(b.gureum(&["delete", &name]).code, Some(0));
    b.assert_gone(&name);
    let gone = b.gureum(&["state", &name]);
    assert_eq!(gone.code, Some(1));
    assert!(
        gone.stderr.contains("does not exist"),
        "{}",
        gone.describe()
    );
}

per_isolation!(many_containers_at_once_leave_nothing_behind => many);

/// 20 containers started at once (50 real microVMs), each printing its line; then nothing of
/// theirs is left: no process, open file, mount, cgroup, network device or state. In an
/// emulated machine (the KVM test machine) 4 microVMs: there 50 Linux guests booting at once
/// on two emulated CPUs thrash (5 of 50 had finished after 10 minutes, measured 2026-11-30),
/// and the machine's own kernel fails more often the more nested guests run at once; 8 at
/// once lose one or two guests a round under QEMU's microvm as under gureum (docs/host-kvm.md). `GUREUM_TEST_MANY_VMS=N` sets the number of microVMs.
fn many(isolation: &'static str) {
    let vms = std::env::var("GUREUM_TEST_MANY_VMS").ok();
    let count = match isolation {
        "vm" if let Some(n) = vms.and_then(|n| n.parse().ok()) => n,
        "vm" if common::slowdown() > 1 => 4,
        "vm" => 50,
        _ => 20,
    };
    let b = Bundle::with_isolation(
        "many",
        serde_json::json!({"args": ["sh", "-c", "echo $(hostname) ok"]}),
        isolation,
    );
    let links_before = net_devices();
    let bundle = b.dir.to_str().unwrap().to_string();
    let children: Vec<_> = (0..count)
        .map(|i| {
            let name = id(&format!("many{i}"));
            let child = b
                .command(&["run", "--bundle", &bundle, &name])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (name, child)
        })
        .collect();
    for (name, child) in children {
        let out = finish(child, Duration::from_secs(30));
        assert_eq!(out.code, Some(0), "{isolation} {name}: {}", out.describe());
        assert_eq!(out.stdout, "gureum-test ok\n");
        b.assert_gone(&name);
    }
    let left = std::fs::read_dir(&b.root).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "state directories left behind");
    let held = open_files_under(&[&b.root, &b.dir]);
    assert!(held.is_empty(), "files still open: {held:?}");
    assert_eq!(net_devices(), links_before, "network devices left behind");
}

/// This network namespace's devices.
fn net_devices() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Open descriptors of any process on this host that point under one of `dirs`.
fn open_files_under(dirs: &[&std::path::Path]) -> Vec<String> {
    let procs = std::fs::read_dir("/proc").unwrap().flatten();
    procs
        .filter_map(|p| std::fs::read_dir(p.path().join("fd")).ok())
        .flat_map(|fds| {
            fds.flatten()
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        })
        .filter(|target| dirs.iter().any(|d| target.starts_with(d)))
        .map(|t| t.display().to_string())
        .collect()
}

#[test]
fn bad_input_is_one_clear_error_and_leaves_nothing() {
    let b = Bundle::new("bad", serde_json::json!({"args": ["true"]}));
    let bundle = b.dir.to_str().unwrap().to_string();
    let config = b.dir.join("config.json");
    let good = std::fs::read_to_string(&config).unwrap();
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
        f(&mut v);
        std::fs::write(&config, v.to_string()).unwrap();
    };
    type Case<'a> = (&'a str, Box<dyn Fn() + 'a>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "invalid JSON",
            Box::new(|| std::fs::write(&config, "{\"ociVersion\": ").unwrap()),
            "invalid",
        ),
        (
            "ociVersion",
            Box::new(|| edit(&|v| v["ociVersion"] = "2.0.0".into())),
            "unsupported ociVersion",
        ),
        (
            "empty args",
            Box::new(|| edit(&|v| v["process"]["args"] = serde_json::json!([]))),
            "args is empty",
        ),
        (
            "no rootfs",
            Box::new(|| edit(&|v| v["root"]["path"] = "missing".into())),
            "does not exist",
        ),
        (
            "no config",
            Box::new(|| std::fs::remove_file(&config).unwrap()),
            "no config.json",
        ),
    ];
    for (what, setup, want) in cases {
        setup();
        let out = b.gureum(&["run", "--bundle", &bundle, &id("bad")]);
        assert_eq!(out.code, Some(1), "{what}: {}", out.describe());
        assert!(out.stderr.contains(want), "{what}: {}", out.describe());
        assert_eq!(out.stderr.lines().count(), 1, "{what}: {}", out.describe());
        b.assert_gone(&id("bad"));
    }
    for args in [
        vec!["kill", "nope", "KILL"],
        vec!["delete", "nope"],
        vec!["state", "nope"],
        vec!["start", "nope"],
        vec!["exec", "nope", "--", "true"],
    ] {
        let out = b.gureum(&args);
        assert_eq!(out.code, Some(1), "{args:?}: {}", out.describe());
        assert_eq!(
            out.stderr.trim(),
            "gureum: container \"nope\" does not exist",
            "{args:?}"
        );
    }
    let out = b.gureum(&["kill", "x", "NOSUCHSIG"]);
    assert!(out.stderr.contains("unknown signal"), "{}", out.describe());
}

/// Runs `echo` in a microVM (without the stand-in): its output and exit status.
fn run_in_a_microvm(tag: &str) -> (Bundle, common::Output) {
    let b = Bundle::new(
        tag,
        serde_json::json!({"args": ["echo", "hello from a microVM"]}),
    );
    let bundle = b.dir.to_str().unwrap().to_string();
    let mut cmd = Command::new(GUREUM);
    cmd.arg("--root")
        .arg(&b.root)
        .args(["run", "--bundle", &bundle, &id(tag)]);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = finish(child, Duration::from_secs(60));
    (b, out)
}

#[test]
#[ignore = "boots a Linux guest: hardware KVM or the KVM test machine (scripts/test.sh runs it there)"]
fn microvm_isolation_is_the_default() {
    let (b, out) = run_in_a_microvm("vm");
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert_eq!(out.stdout, "hello from a microVM\n");
    b.assert_gone(&id("vm"));
}

/// On a PVM host, where our Linux guest's userspace cannot run, a microVM container is refused
/// at once in one line that names the way out.
#[test]
fn a_pvm_host_refuses_microvm_isolation_in_one_line() {
    if !common::host_is_pvm() {
        eprintln!("not applicable: this host's KVM is not PVM");
        return;
    }
    let (b, out) = run_in_a_microvm("pvm");
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert!(
        out.stderr.contains("PVM") && out.stderr.contains("--isolation native"),
        "{}",
        out.describe()
    );
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.describe());
    b.assert_gone(&id("pvm"));
}

#[test]
fn a_user_namespace_maps_the_container_root_to_an_unprivileged_host_user() {
    let script = "id -u; cat /proc/self/uid_map; touch /tmp/x && stat -c %u /tmp/x";
    let b = Bundle::new("userns", serde_json::json!({"args": ["sh", "-c", script]}));
    b.config(serde_json::json!({"args": ["sh", "-c", script]}), |c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"type": "user"}));
        let map = serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        c["linux"]["uidMappings"] = map.clone();
        c["linux"]["gidMappings"] = map;
    });
    // The rootfs's /tmp must be writable by the mapped root.
    std::os::unix::fs::chown(b.dir.join("rootfs/tmp"), Some(100000), Some(100000)).unwrap();
    let out = b.run(&id("userns"));
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let words: Vec<&str> = out.stdout.split_whitespace().collect();
    assert_eq!(
        words,
        ["0", "0", "100000", "65536", "0"],
        "{}",
        out.describe()
    );
    // On the host, the file belongs to the mapped user.
    let meta = std::fs::metadata(b.dir.join("rootfs/tmp/x")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 100000);
    b.assert_gone(&id("userns"));
}

per_isolation!(kill_all_signals_every_process_of_the_container => kill_all);

fn kill_all(isolation: &'static str) {
    // Two sleeps, seen running (exec'd) before the shell says so; the shell traps TERM.
    let script = "trap 'echo trapped' TERM; sleep 60 & a=$!; sleep 60 & b=$!; \
        for p in $a $b; do until [ \"$(cat /proc/$p/comm)\" = sleep ]; do :; done; done; \
        echo ready; wait $a; wait $b; echo done";
    let b = Bundle::with_isolation(
        "killall",
        serde_json::json!({"args": ["sh", "-c", script]}),
        isolation,
    );
    let bundle = b.dir.to_str().unwrap().to_string();
    let name = id("killall");
    let mut child = b
        .command(&["run", "--bundle", &bundle, &name])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().map(common::drain);
    let stderr = child.stderr.take().map(common::drain);
    let ready = stdout
        .as_ref()
        .is_some_and(|s| s.saw("ready\n", Duration::from_secs(10)));
    // The shell survives TERM (it traps it): only --all reaches the sleeps, and with them gone
    // the shell finishes normally.
    let k = b.gureum(&["kill", "--all", &name, "TERM"]);
    let out = common::finish_drained(child, stdout, stderr, Duration::from_secs(10));
    assert!(ready, "{isolation}: never ready: {}", out.describe());
    assert_eq!(k.code, Some(0), "{isolation}: {}", k.describe());
    assert_eq!(out.code, Some(0), "{isolation}: {}", out.describe());
    assert!(
        out.stdout.ends_with("trapped\ndone\n"),
        "{isolation}: {}",
        out.describe()
    );
    b.assert_gone(&name);
}

/// What a microVM cannot apply is refused before anything starts: the host's device nodes,
/// and memory settings beyond the guest's size.
#[test]
fn a_sandbox_refuses_host_devices_and_memory_settings_in_one_line() {
    let process = serde_json::json!({"args": ["true"]});
    let b = Bundle::with_isolation("vmrefuse", process.clone(), "standin");
    type Edit = fn(&mut serde_json::Value);
    let cases: [(&str, Edit); 2] = [
        ("linux.devices", |c| {
            c["linux"]["devices"] = serde_json::json!([{"path": "/dev/net/tun", "type": "c",
                "major": 10, "minor": 200}]);
        }),
        ("memory.reservation", |c| {
            c["linux"]["resources"]["memory"]["reservation"] = serde_json::json!(1 << 20);
        }),
    ];
    for (want, edit) in cases {
        b.config(process.clone(), edit);
        let out = b.run(&id("vmrefuse"));
        assert_eq!(out.code, Some(1), "{want}: {}", out.describe());
        assert_eq!(out.stderr.lines().count(), 1, "{}", out.describe());
        assert!(out.stderr.contains(want), "{}", out.describe());
        b.assert_gone(&id("vmrefuse"));
    }
}
