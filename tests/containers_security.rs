//! What confines a container beyond its namespaces: capabilities and seccomp (natively, and in
//! a microVM wherever the host can run our Linux guest). The container prints what it got;
//! the host half checks it.

mod common;

use std::path::PathBuf;

use common::Output;
use common::bundle::{Bundle, cgroup_layouts, id};

/// The capability masks a process in the container reports: (Inh, Prm, Eff, Bnd, Amb).
fn cap_masks(stdout: &str) -> Vec<(String, u64)> {
    stdout
        .lines()
        .filter_map(|l| {
            let (name, hex) = l.split_once(':')?;
            let name = name.strip_prefix("Cap")?;
            Some((name.to_string(), u64::from_str_radix(hex.trim(), 16).ok()?))
        })
        .collect()
}

fn masks(inh: u64, prm: u64, eff: u64, bnd: u64, amb: u64) -> Vec<(String, u64)> {
    [
        ("Inh", inh),
        ("Prm", prm),
        ("Eff", eff),
        ("Bnd", bnd),
        ("Amb", amb),
    ]
    .map(|(n, m)| (n.to_string(), m))
    .to_vec()
}

const CHOWN: u64 = 1;
const KILL: u64 = 1 << 5;
const NET_BIND_SERVICE: u64 = 1 << 10;

per_isolation!(capabilities_are_the_spec_s => capabilities);

fn capabilities(isolation: &'static str) {
    let script = "grep ^Cap /proc/self/status; chown 5 /tmp && echo chown-ok; \
                  hostname other 2>/dev/null || echo no-sys-admin";
    let three = ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"];
    let sets = serde_json::json!({"bounding": three, "effective": three, "permitted": three,
                                  "inheritable": three});
    let process = serde_json::json!({"args": ["sh", "-c", script], "capabilities": sets});
    let b = Bundle::with_isolation("caps", process, isolation);
    let out = b.run(&id("caps"));
    assert_eq!(out.code, Some(0), "{isolation}: {}", out.describe());
    let all = CHOWN | KILL | NET_BIND_SERVICE;
    // Root keeps what the bounding and inheritable sets allow across exec.
    assert_eq!(
        cap_masks(&out.stdout),
        masks(all, all, all, all, 0),
        "{isolation}"
    );
    assert!(
        out.stdout.contains("chown-ok\nno-sys-admin\n"),
        "{}",
        out.describe()
    );
    b.assert_gone(&id("caps"));

    // An unprivileged user holds a capability only through the ambient set.
    let two = ["CAP_KILL", "CAP_NET_BIND_SERVICE"];
    let sets = serde_json::json!({"bounding": two, "effective": two, "permitted": two,
                                  "inheritable": two, "ambient": ["CAP_NET_BIND_SERVICE"]});
    let process = serde_json::json!({"args": ["grep", "^Cap", "/proc/self/status"],
                                     "user": {"uid": 1000, "gid": 1000}, "capabilities": sets});
    let b = Bundle::with_isolation("ambient", process, isolation);
    let out = b.run(&id("ambient"));
    assert_eq!(out.code, Some(0), "{isolation}: {}", out.describe());
    let (two, amb) = (KILL | NET_BIND_SERVICE, NET_BIND_SERVICE);
    assert_eq!(
        cap_masks(&out.stdout),
        masks(two, amb, amb, two, amb),
        "{isolation}"
    );
    b.assert_gone(&id("ambient"));
}

#[test]
fn without_capabilities_in_the_spec_root_keeps_the_runtime_s() {
    let b = Bundle::new(
        "nocaps",
        serde_json::json!({"args": ["grep", "^CapEff", "/proc/self/status"]}),
    );
    let out = b.run(&id("nocaps"));
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let ours = std::fs::read_to_string("/proc/self/status").unwrap();
    let ours = ours.lines().find(|l| l.starts_with("CapEff")).unwrap();
    assert_eq!(out.stdout.trim(), ours, "{}", out.describe());
}

per_isolation!(seccomp_denies_what_the_profile_denies => seccomp);

fn seccomp(isolation: &'static str) {
    let script = "mkdir /tmp/d; [ -d /tmp/d ] || echo no-dir; \
                  kill -0 $$ 2>/dev/null || echo no-kill-0; kill -CONT $$ && echo cont-ok";
    // Default allow; mkdir fails with EACCES; kill(2) only when its signal is 0.
    let profile = serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
        {"names": ["kill"], "action": "SCMP_ACT_ERRNO",
         "args": [{"index": 1, "value": 0, "op": "SCMP_CMP_EQ"}]}]});
    let process = serde_json::json!({"args": ["sh", "-c", script], "noNewPrivileges": true});
    let b = Bundle::with_isolation("seccomp", process.clone(), isolation);
    b.config(process, |c| c["linux"]["seccomp"] = profile);
    let out = b.run(&id("seccomp"));
    assert_eq!(out.code, Some(0), "{isolation}: {}", out.describe());
    assert_eq!(
        out.stdout,
        "no-dir\nno-kill-0\ncont-ok\n",
        "{}",
        out.describe()
    );
    assert!(
        out.stderr.contains("Permission denied"),
        "{}",
        out.describe()
    );
    b.assert_gone(&id("seccomp"));
}

per_isolation!(a_default_deny_profile_allows_only_its_list => allow_list);

fn allow_list(isolation: &'static str) {
    // Every syscall but mkdir(at), as a long allow list (the base filter), denied by default;
    // installed before setuid since no_new_privs is off, so gureum's own steps must pass it.
    let allowed: Vec<String> = syscalls::Sysno::iter()
        .map(|s| s.name().to_string())
        .filter(|n| n != "mkdir" && n != "mkdirat")
        .collect();
    let profile = serde_json::json!({"defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [{"names": allowed, "action": "SCMP_ACT_ALLOW"}]});
    let script = "mkdir /tmp/e 2>&1; echo uid=$(id -u)";
    let process =
        serde_json::json!({"args": ["sh", "-c", script], "user": {"uid": 1000, "gid": 1000}});
    let b = Bundle::with_isolation("allowlist", process.clone(), isolation);
    b.config(process, |c| c["linux"]["seccomp"] = profile);
    let out = b.run(&id("allowlist"));
    assert_eq!(out.code, Some(0), "{isolation}: {}", out.describe());
    assert!(
        out.stdout.contains("Operation not permitted") && out.stdout.ends_with("uid=1000\n"),
        "{}",
        out.describe()
    );
    b.assert_gone(&id("allowlist"));
}

#[test]
fn unsupported_seccomp_is_one_clear_error() {
    let b = Bundle::new("notify", serde_json::json!({"args": ["true"]}));
    b.config(serde_json::json!({"args": ["true"]}), |c| {
        c["linux"]["seccomp"] = serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]});
    });
    let out = b.run(&id("notify"));
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.describe());
    assert!(out.stderr.contains("SCMP_ACT_NOTIFY"), "{}", out.describe());
    b.assert_gone(&id("notify"));
}

per_isolation!(sysctls_in_the_container_s_namespaces_are_set_and_others_refused => sysctls);

fn sysctls(isolation: &'static str) {
    let script = "cat /proc/sys/net/ipv4/ip_unprivileged_port_start /proc/sys/kernel/shmmni";
    let process = serde_json::json!({"args": ["sh", "-c", script]});
    let b = Bundle::with_isolation("sysctl", process.clone(), isolation);
    b.config(process.clone(), |c| {
        c["linux"]["sysctl"] = serde_json::json!({"net.ipv4.ip_unprivileged_port_start": "80",
                                                  "kernel.shmmni": "1234"});
    });
    let out = b.run(&id("sysctl"));
    assert_eq!(out.code, Some(0), "{isolation}: {}", out.describe());
    assert_eq!(out.stdout, "80\n1234\n", "{isolation}: {}", out.describe());
    b.assert_gone(&id("sysctl"));
    if isolation != "native" {
        return;
    }
    // Natively, what no namespace of the container's isolates would change the host.
    let host = std::fs::read_to_string("/proc/sys/kernel/pid_max").unwrap();
    for key in ["kernel.pid_max", "net./../../sysrq-trigger"] {
        b.config(process.clone(), |c| {
            c["linux"]["sysctl"] = serde_json::json!({key: "4096"});
        });
        let out = b.run(&id("sysctl"));
        assert_eq!(out.code, Some(1), "{key}: {}", out.describe());
        assert_eq!(out.stderr.lines().count(), 1, "{}", out.describe());
        assert!(out.stderr.contains(key), "{}", out.describe());
        b.assert_gone(&id("sysctl"));
    }
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/pid_max").unwrap(),
        host
    );
}

#[test]
fn the_devices_cgroup_allows_only_the_spec_s_devices_and_the_defaults() {
    // The host's default (v1 files here, an eBPF program on a v2 host), and a hybrid host's
    // unified hierarchy as v2 (the eBPF program here).
    cgroup_layouts().into_iter().for_each(devices);
}

fn devices(cgroup2: Option<PathBuf>) {
    // mknod is allowed (as runc allows it), opening the node is not: the host's first SCSI
    // disk here. /dev/null and /dev/zero stay usable.
    let script = "mknod /tmp/disk b 8 0 && echo made; head -c 1 /tmp/disk; \
                  head -c 3 /dev/zero | wc -c; echo x > /dev/null && echo null-ok";
    let process = serde_json::json!({"args": ["sh", "-c", script]});
    let layout = format!("cgroup2 at {cgroup2:?}");
    let b = Bundle::new("devices", process.clone()).in_cgroup2(cgroup2, process.clone());
    let deny_all = serde_json::json!({"allow": false, "access": "rwm"});
    b.config(process.clone(), |c| {
        c["linux"]["resources"]["devices"] = serde_json::json!([deny_all]);
    });
    let out = b.run(&id("devices"));
    assert_eq!(out.code, Some(0), "{layout}: {}", out.describe());
    assert_eq!(out.stdout, "made\n3\nnull-ok\n", "{}", out.describe());
    let denied = |out: &Output| out.stderr.contains("Operation not permitted");
    assert!(denied(&out), "{layout}: {}", out.describe());
    b.assert_gone(&id("devices"));
    // An allow after the deny opens that device again (the last rule that matches decides).
    b.config(process.clone(), |c| {
        let allow = serde_json::json!({"allow": true, "type": "b", "major": 8, "access": "r"});
        c["linux"]["resources"]["devices"] = serde_json::json!([deny_all, allow]);
    });
    let out = b.run(&id("devices"));
    assert!(!denied(&out), "{layout}: {}", out.describe());
    b.assert_gone(&id("devices"));
    // Without device rules the cgroup is the runtime's own: the node opens (and, as block 8:0
    // may not exist here, fails for that reason instead).
    b.config(process, |_| {});
    let out = b.run(&id("devices"));
    assert!(!denied(&out), "{layout}: {}", out.describe());
    b.assert_gone(&id("devices"));
}

fn hook(script: &str) -> serde_json::Value {
    serde_json::json!({"path": "/bin/sh", "args": ["sh", "-c", script], "env": ["WHO=hook"]})
}

#[test]
fn hooks_run_at_their_points_with_the_state_on_stdin() {
    let b = Bundle::new(
        "hooks",
        serde_json::json!({"args": ["cat", "/tmp/started"]}),
    );
    let out_dir = b.dir.join("hooks-out");
    std::fs::create_dir(&out_dir).unwrap();
    let d = out_dir.to_str().unwrap().to_string();
    let save =
        |name: &str| format!("cat > {d}/{name}.json; readlink /proc/self/ns/net > {d}/{name}.net");
    let hooks = serde_json::json!({
        "prestart": [hook(&save("prestart"))],
        "createRuntime": [hook(&save("createRuntime"))],
        "createContainer": [hook(&save("createContainer"))],
        // In the container, after pivot_root: /tmp is the container's.
        "startContainer": [hook("cat > /tmp/started; echo \" from $WHO\" >> /tmp/started")],
        "poststart": [hook(&save("poststart"))],
        "poststop": [hook(&save("poststop"))],
    });
    b.config(serde_json::json!({"args": ["cat", "/tmp/started"]}), |c| {
        c["hooks"] = hooks
    });
    let out = b.run(&id("hooks"));
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let state = |name: &str| -> serde_json::Value {
        let text = std::fs::read_to_string(out_dir.join(format!("{name}.json")));
        serde_json::from_str(&text.unwrap_or_else(|e| panic!("{name} did not run: {e}"))).unwrap()
    };
    let netns = |name: &str| std::fs::read_to_string(out_dir.join(format!("{name}.net"))).unwrap();
    let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
    let ours = format!("{}\n", ours.display());
    for (name, status, in_container) in [
        ("prestart", "creating", false),
        ("createRuntime", "creating", false),
        ("createContainer", "creating", true),
        ("poststart", "running", false),
        ("poststop", "stopped", false),
    ] {
        let s = state(name);
        assert_eq!(s["id"], id("hooks"), "{name}: {s}");
        assert_eq!(s["status"], status, "{name}: {s}");
        assert_eq!(
            netns(name) != ours,
            in_container,
            "{name} ran in the wrong namespace"
        );
    }
    assert!(state("createRuntime")["pid"].as_i64().unwrap() > 0);
    // The process saw what startContainer wrote: the state, then the hook's own env.
    let (json, from) = out.stdout.split_once(" from ").unwrap();
    let s: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(
        (s["id"].as_str(), from),
        (Some(id("hooks").as_str()), "hook\n")
    );
    b.assert_gone(&id("hooks"));
}

#[test]
fn a_failing_hook_before_start_is_one_error_and_leaves_nothing() {
    let b = Bundle::new("badhook", serde_json::json!({"args": ["true"]}));
    let cases = [
        (
            "createRuntime",
            hook("echo boom >&2; exit 3"),
            "exit status: 3): boom",
        ),
        ("createContainer", hook("exit 4"), "exit status: 4"),
        ("startContainer", hook("exit 5"), "exit status: 5"),
        (
            "createRuntime",
            serde_json::json!({"path": "/bin/sleep", "args": ["sleep", "30"], "timeout": 1}),
            "timed out after 1 s",
        ),
        (
            "prestart",
            serde_json::json!({"path": "/no/such/hook"}),
            "cannot run it",
        ),
    ];
    for (point, h, want) in cases {
        b.config(serde_json::json!({"args": ["true"]}), |c| {
            c["hooks"] = serde_json::json!({point: [h]})
        });
        let out = b.run(&id("badhook"));
        assert_ne!(out.code, Some(0), "{point}: {}", out.describe());
        assert_eq!(out.stderr.lines().count(), 1, "{point}: {}", out.describe());
        assert!(
            out.stderr.contains(point) && out.stderr.contains(want),
            "{point}: {}",
            out.describe()
        );
        assert!(out.elapsed.as_secs() < 5, "{point}: took {:?}", out.elapsed);
        b.assert_gone(&id("badhook"));
    }
}

#[test]
fn a_failing_poststart_hook_is_a_warning() {
    let b = Bundle::new("posthook", serde_json::json!({"args": ["echo", "ran"]}));
    b.config(
        serde_json::json!({"args": ["echo", "ran"]}),
        |c| {
            c["hooks"] =
                serde_json::json!({"poststart": [hook("exit 7")], "poststop": [hook("exit 8")]})
        },
    );
    let out = b.run(&id("posthook"));
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert_eq!(out.stdout, "ran\n");
    assert!(
        out.stderr.contains("warning: poststart hook")
            && out.stderr.contains("warning: poststop hook"),
        "{}",
        out.describe()
    );
    b.assert_gone(&id("posthook"));
}

per_isolation!(a_sandbox_runs_its_runtime_hooks_and_refuses_container_ones => sandbox_hooks; standin, vm);

fn sandbox_hooks(isolation: &'static str) {
    {
        let b = Bundle::with_isolation("vmhooks", serde_json::json!({"args": ["true"]}), isolation);
        let out_dir = b.dir.join("hooks-out");
        std::fs::create_dir(&out_dir).unwrap();
        let d = out_dir.to_str().unwrap().to_string();
        let points = ["prestart", "createRuntime", "poststart", "poststop"];
        let hooks: serde_json::Map<String, serde_json::Value> = points
            .iter()
            .map(|p| {
                (
                    p.to_string(),
                    serde_json::json!([hook(&format!("cat > {d}/{p}.json"))]),
                )
            })
            .collect();
        b.config(serde_json::json!({"args": ["true"]}), |c| {
            c["hooks"] = hooks.into()
        });
        let out = b.run(&id("vmhooks"));
        assert_eq!(out.code, Some(0), "{isolation}: {}", out.describe());
        for (p, status) in points
            .iter()
            .zip(["creating", "creating", "running", "stopped"])
        {
            let text = std::fs::read_to_string(out_dir.join(format!("{p}.json"))).unwrap();
            let s: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(s["status"], status, "{p}: {s}");
            assert_eq!(s["isolation"], "vm", "{p}: {s}");
        }
        b.assert_gone(&id("vmhooks"));
        b.config(serde_json::json!({"args": ["true"]}), |c| {
            c["hooks"] = serde_json::json!({"startContainer": [hook("true")]})
        });
        let out = b.run(&id("vmhooks"));
        assert_eq!(out.code, Some(1), "{}", out.describe());
        assert!(
            out.stderr.contains("--isolation native"),
            "{}",
            out.describe()
        );
        b.assert_gone(&id("vmhooks"));
    }
}
