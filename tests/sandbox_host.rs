//! What a sandbox's guest gets of this host, through the real binary (the stand-in VMM on PVM
//! hosts, a real microVM in the KVM test machine): copies of its bind mounts, and no network
//! namespace it cannot pass in.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::bundle::{Bundle, id};

per_isolation!(bind_mounts_are_copied_into_a_sandbox_read_only => binds; standin, vm);

/// A sandbox's guest cannot see this host's files: a bind-mounted file or read-only directory
/// is there as a copy, read-only; a read-write bind of a directory is refused in one line.
fn binds(isolation: &'static str) {
    let script = "cat /etc/greeting /opt/data/inner/f; echo more >> /etc/greeting || echo refused";
    let b = Bundle::with_isolation(
        "binds",
        serde_json::json!({"args": ["sh", "-c", script]}),
        isolation,
    );
    let host = b.dir.join("host");
    std::fs::create_dir_all(host.join("data/inner")).unwrap();
    std::fs::write(host.join("greeting"), "hello from the host\n").unwrap();
    std::fs::write(host.join("data/inner/f"), "in a directory\n").unwrap();
    let mount = |source: &str, destination: &str, options: &[&str]| {
        serde_json::json!({"destination": destination, "type": "bind",
            "source": host.join(source), "options": options})
    };
    let edit = |extra: serde_json::Value| {
        move |c: &mut serde_json::Value| c["mounts"].as_array_mut().unwrap().extend([extra])
    };
    b.config(serde_json::json!({"args": ["sh", "-c", script]}), |c| {
        edit(mount("greeting", "/etc/greeting", &["rbind", "rw"]))(c);
        edit(mount("data", "/opt/data", &["rbind", "ro"]))(c);
    });
    let out = b.run(&id("binds"));
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert_eq!(
        out.stdout,
        "hello from the host\nin a directory\nrefused\n",
        "{}",
        out.describe()
    );
    assert!(
        out.stderr.contains("Read-only file system"),
        "{}",
        out.describe()
    );
    b.assert_gone(&id("binds"));
    assert_eq!(
        std::fs::read_to_string(host.join("greeting")).unwrap(),
        "hello from the host\n"
    );

    b.config(
        serde_json::json!({"args": ["true"]}),
        edit(mount("data", "/opt/data", &["rbind"])),
    );
    let out = b.run(&id("rwdir"));
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert!(
        out.stderr.contains("read-write bind of a directory"),
        "{}",
        out.describe()
    );
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.describe());
    b.assert_gone(&id("rwdir"));
}

per_isolation!(a_sandbox_refuses_a_network_namespace_it_cannot_pass_in => network; standin, vm);

/// A sandbox's guest has loopback only: joining a network namespace (by path, as podman's and
/// Docker's networks do) with an interface is refused in one line; an empty one is fine.
fn network(isolation: &'static str) {
    let b = Bundle::with_isolation("net", serde_json::json!({"args": ["true"]}), isolation);
    // Two namespaces held by sleeps: one with a veth pair, one with loopback only.
    let hold = |script: &str| {
        Command::new("unshare")
            .args(["--net", "sh", "-c", script])
            .spawn()
            .unwrap()
    };
    let mut wired = hold("ip link add v0 type veth peer name v1 && exec sleep 600");
    let mut bare = hold("exec sleep 600");
    let own = std::fs::read_link("/proc/self/ns/net").unwrap();
    let ns_of = |child: &std::process::Child, want_links: usize| {
        let path = format!("/proc/{}/ns/net", child.id());
        let deadline = Instant::now() + common::scaled(Duration::from_secs(5));
        loop {
            let links = std::fs::read_to_string(format!("/proc/{}/net/dev", child.id()))
                .map_or(0, |d| d.lines().count() - 2);
            if std::fs::read_link(&path).is_ok_and(|l| l != own) && links == want_links {
                return path;
            }
            assert!(Instant::now() < deadline, "{path}: {links} links");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let (wired_ns, bare_ns) = (ns_of(&wired, 3), ns_of(&bare, 1));
    let join = |path: String| {
        move |c: &mut serde_json::Value| {
            c["linux"]["namespaces"] = serde_json::json!([{"type": "pid"},
                {"type": "network", "path": path}, {"type": "ipc"}, {"type": "uts"},
                {"type": "mount"}]);
        }
    };
    b.config(serde_json::json!({"args": ["true"]}), join(wired_ns));
    let refused = b.run(&id("wired"));
    b.config(serde_json::json!({"args": ["true"]}), join(bare_ns));
    let ran = b.run(&id("bare"));
    for child in [&mut wired, &mut bare] {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert_eq!(refused.code, Some(1), "{}", refused.describe());
    assert!(
        refused.stderr.contains("has v0, v1"),
        "{}",
        refused.describe()
    );
    assert_eq!(refused.stderr.lines().count(), 1, "{}", refused.describe());
    b.assert_gone(&id("wired"));
    assert_eq!(ran.code, Some(0), "{}", ran.describe());
    b.assert_gone(&id("bare"));
}

/// A VMM whose guest never answers (a frozen boot): `run` fails after the agent's deadline in
/// one error that says where the VMM's threads were and what the console printed, and leaves
/// nothing behind. The "VMM" is `sleep` under gureum-vmm's arguments.
#[test]
fn a_sandbox_whose_agent_never_answers_fails_with_the_vmm_s_threads() {
    let b = Bundle::with_isolation("frozen", serde_json::json!({"args": ["true"]}), "standin");
    let frozen = b.dir.join("frozen-vmm");
    std::fs::write(
        &frozen,
        "#!/bin/bash\nexec -a \"frozen-vmm $*\" sleep 1000\n",
    )
    .unwrap();
    let mut perms = std::fs::metadata(&frozen).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&frozen, perms).unwrap();
    let bundle = b.dir.to_str().unwrap().to_string();
    let id = id("frozen");
    let mut cmd = b.command(&["run", "--bundle", &bundle, &id]);
    cmd.env("GUREUM_SANDBOX_VMM", &frozen);
    let start = Instant::now();
    let out = common::output_of(&mut cmd, None, Duration::from_secs(60));
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert!(
        start.elapsed() >= Duration::from_secs(20),
        "{}",
        out.describe()
    );
    for said in [
        "the agent did not answer within 20s; the VMM's threads:\n    sleep (tid ",
        "): S, in ",
        " s of CPU in 1.0 s; the guest console printed nothing",
    ] {
        assert!(out.stderr.contains(said), "{said:?}: {}", out.describe());
    }
    b.assert_gone(&id);
}

/// A sandbox of `b` as `id`, created and started with its output in a file: how it booted
/// (its state's `boot`: "warm", or "cold: why") and, once it has stopped, what it printed.
fn boot_kind_and_output(b: &Bundle, id: &str) -> (String, String) {
    let out = b.dir.join(format!("{id}.out"));
    b.create_and_start(id, std::fs::File::create(&out).unwrap().into());
    let kind = std::fs::read_to_string(b.root.join(id).join("boot")).unwrap_or_default();
    common::bundle::wait_for_status(b, id, "stopped");
    let deleted = b.gureum(&["delete", id]);
    assert_eq!(deleted.code, Some(0), "{}", deleted.describe());
    b.assert_gone(id);
    (
        kind.trim().to_string(),
        std::fs::read_to_string(out).unwrap(),
    )
}

/// Sandboxes start warm by default: from a template snapshot of a booted guest (made on first
/// use), with the container's disk in place of the template's, this host's time and entropy
/// of their own (two warm sandboxes draw different bytes). A cold one (`gureum.vm.boot=cold`)
/// runs the same process the same way.
#[test]
#[ignore = "boots a Linux guest: hardware KVM or the KVM test machine (scripts/test.sh runs it there)"]
fn warm_sandboxes_restore_a_template_and_take_this_host_s_time_and_their_own_entropy() {
    let script = "date +%s; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; \
                  ls /bin/busybox";
    let process = serde_json::json!({"args": ["sh", "-c", script]});
    let b = Bundle::with_isolation("warm", process.clone(), "vm");
    let host_now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let mut drawn = Vec::new();
    for n in 0..2 {
        let before = host_now();
        let (kind, out) = boot_kind_and_output(&b, &id(&format!("warm{n}")));
        assert_eq!(kind, "warm", "{out}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        let guest_now: u64 = lines[0].parse().unwrap();
        assert!(
            guest_now >= before && guest_now <= host_now() + 1,
            "the guest's clock says {guest_now}, this host's {before}..{}",
            host_now()
        );
        assert_eq!(lines[1].len(), 32, "{out}");
        assert_eq!(lines[2], "/bin/busybox");
        drawn.push(lines[1].to_string());
    }
    assert_ne!(drawn[0], drawn[1], "two warm sandboxes drew the same bytes");

    b.config(process, |c| {
        c["annotations"] = serde_json::json!({"gureum.vm.boot": "cold"});
    });
    let (kind, out) = boot_kind_and_output(&b, &id("cold"));
    assert_eq!(kind, "cold: asked for", "{out}");
    assert_eq!(out.lines().count(), 3, "{out}");
}
