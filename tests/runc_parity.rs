//! gureum's native isolation next to runc, on the same bundle in the same test: what a tool
//! that drives runc (podman, containerd's shim) sees of a container must be what it sees under
//! gureum. Each test runs the bundle under both and asserts the same of each. runc is Debian's
//! (scripts/setup.sh installs it).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Output;
use common::bundle::{Bundle, id};

#[derive(Clone, Copy, Debug)]
enum Runtime {
    Runc,
    Gureum,
}

const BOTH: [Runtime; 2] = [Runtime::Runc, Runtime::Gureum];

impl Runtime {
    /// The runtime's command line, with its own state root.
    fn command(self, b: &Bundle, args: &[&str]) -> Command {
        match self {
            Runtime::Gureum => b.command(args),
            Runtime::Runc => {
                let mut cmd = Command::new("runc");
                cmd.arg("--root").arg(b.dir.join("runc-state")).args(args);
                cmd
            }
        }
    }

    fn output(self, b: &Bundle, args: &[&str]) -> Output {
        common::output_of(&mut self.command(b, args), None, Duration::from_secs(30))
    }

    /// `run` of the bundle in the foreground as container `id`.
    fn run(self, b: &Bundle, id: &str) -> Output {
        self.output(b, &["run", "--bundle", b.dir.to_str().unwrap(), id])
    }

    /// `create` and `start` of the bundle as container `id`, detached with no stdio; the pid
    /// `state` gives.
    fn start(self, b: &Bundle, id: &str) -> i32 {
        let log = b.dir.join(format!("{self:?}-create.err"));
        let created = self
            .command(b, &["create", "--bundle", b.dir.to_str().unwrap(), id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .status()
            .unwrap();
        let why = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(created.success(), "{self:?} create {id}: {why}");
        let started = self.output(b, &["start", id]);
        assert_eq!(started.code, Some(0), "{self:?}: {}", started.describe());
        let pid = self.state(b, id)["pid"].as_i64().unwrap();
        i32::try_from(pid).unwrap()
    }

    fn state(self, b: &Bundle, id: &str) -> serde_json::Value {
        let out = self.output(b, &["state", id]);
        assert_eq!(out.code, Some(0), "{self:?}: {}", out.describe());
        serde_json::from_str(&out.stdout).unwrap()
    }

    /// Waits until container `id` has status `want`.
    fn wait_for(self, b: &Bundle, id: &str, want: &str) {
        let deadline = Instant::now() + common::scaled(Duration::from_secs(10));
        while self.state(b, id)["status"] != want {
            assert!(Instant::now() < deadline, "{self:?}: {id} never {want}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills and deletes container `id`.
    fn remove(self, b: &Bundle, id: &str) {
        self.output(b, &["kill", id, "KILL"]);
        self.wait_for(b, id, "stopped");
        let out = self.output(b, &["delete", id]);
        assert_eq!(out.code, Some(0), "{self:?}: {}", out.describe());
    }
}

/// The namespace `kind` of process `pid` (`self` for this one), as its link reads.
fn ns(pid: &str, kind: &str) -> String {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap();
    link.to_string_lossy().into_owned()
}

fn sleeper(tag: &str) -> Bundle {
    Bundle::new(tag, serde_json::json!({"args": ["sleep", "299"]}))
}

#[test]
fn the_process_is_pid_1_of_its_namespace() {
    let b = Bundle::new("pid1", serde_json::json!({"args": ["sh", "-c", "echo $$"]}));
    for rt in BOTH {
        let out = rt.run(&b, &id(&format!("pid1{rt:?}")));
        assert_eq!(out.code, Some(0), "{rt:?}: {}", out.describe());
        assert_eq!(out.stdout, "1\n", "{rt:?}: {}", out.describe());
    }
}

#[test]
fn state_s_pid_is_the_process_and_ps_lists_it_alone() {
    let b = sleeper("statepid");
    for rt in BOTH {
        let name = id(&format!("statepid{rt:?}"));
        let pid = rt.start(&b, &name);
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
        assert_eq!(
            comm, "sleep\n",
            "{rt:?}: state's pid {pid} is not the process"
        );
        let ps = rt.output(&b, &["ps", "--format", "json", &name]);
        assert_eq!(ps.code, Some(0), "{rt:?}: {}", ps.describe());
        let pids: Vec<i32> = serde_json::from_str(&ps.stdout).unwrap();
        assert_eq!(pids, [pid], "{rt:?}");
        rt.remove(&b, &name);
    }
}

#[test]
fn a_pid_1_sleep_ignores_sigterm_and_not_sigkill() {
    let b = sleeper("sigterm");
    for rt in BOTH {
        let name = id(&format!("sigterm{rt:?}"));
        rt.start(&b, &name);
        let term = rt.output(&b, &["kill", &name, "TERM"]);
        assert_eq!(term.code, Some(0), "{rt:?}: {}", term.describe());
        std::thread::sleep(common::scaled(Duration::from_millis(500)));
        assert_eq!(rt.state(&b, &name)["status"], "running", "{rt:?}");
        let kill = rt.output(&b, &["kill", &name, "KILL"]);
        assert_eq!(kill.code, Some(0), "{rt:?}: {}", kill.describe());
        rt.wait_for(&b, &name, "stopped");
        assert_eq!(rt.output(&b, &["delete", &name]).code, Some(0), "{rt:?}");
    }
}

/// Asserts that container process `pid` has a namespace of its own of each kind in `new`, and
/// shares this process's of every other kind.
fn assert_namespaces(pid: &str, new: &[&str], who: &str) {
    for kind in ["pid", "net", "ipc", "uts", "user", "cgroup", "mnt"] {
        let own = ns(pid, kind) != ns("self", kind);
        assert_eq!(own, new.contains(&kind), "{who}: {kind} namespace");
    }
}

#[test]
fn only_the_namespaces_the_config_lists_are_made() {
    let b = sleeper("nslist");
    b.config(serde_json::json!({"args": ["sleep", "299"]}), |c| {
        c["linux"]["namespaces"] = serde_json::json!([{"type": "mount"}]);
        // A hostname needs a uts namespace: a config with one and none is refused.
        c.as_object_mut().unwrap().remove("hostname");
    });
    for rt in BOTH {
        let name = id(&format!("nslist{rt:?}"));
        let pid = rt.start(&b, &name).to_string();
        assert_namespaces(&pid, &["mnt"], &format!("{rt:?}"));
        rt.remove(&b, &name);
    }
}

/// With no `linux.namespaces` at all, none is made. Only gureum here: runc, given the same
/// config, bind-mounts the rootfs in the host's mount namespace (left there) and then fails
/// for want of /proc; without a mount namespace gureum chroots, and refuses mounts, masked
/// and read-only paths (which runc would also make in the host's namespace, or refuses).
#[test]
fn no_namespaces_listed_makes_none() {
    let b = sleeper("nsnone");
    b.config(serde_json::json!({"args": ["sleep", "299"]}), |c| {
        let config = c.as_object_mut().unwrap();
        config.remove("hostname");
        config.remove("mounts");
        let linux = config["linux"].as_object_mut().unwrap();
        linux.remove("namespaces");
        linux.remove("maskedPaths");
        linux.remove("readonlyPaths");
    });
    let name = id("nsnone");
    let pid = Runtime::Gureum.start(&b, &name).to_string();
    assert_namespaces(&pid, &[], "gureum");
    Runtime::Gureum.remove(&b, &name);
    // With mounts left in, the config is refused in one line.
    b.config(serde_json::json!({"args": ["true"]}), |c| {
        c["linux"].as_object_mut().unwrap().remove("namespaces");
        c.as_object_mut().unwrap().remove("hostname");
    });
    let out = Runtime::Gureum.run(&b, &name);
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.describe());
    assert!(out.stderr.contains("mount namespace"), "{}", out.describe());
}

#[test]
fn a_hostname_without_a_uts_namespace_is_refused() {
    let b = Bundle::new("nouts", serde_json::json!({"args": ["true"]}));
    b.config(serde_json::json!({"args": ["true"]}), |c| {
        c["linux"]["namespaces"] = serde_json::json!([{"type": "mount"}, {"type": "pid"}]);
    });
    for rt in BOTH {
        let name = id(&format!("nouts{rt:?}"));
        let out = rt.run(&b, &name);
        assert_eq!(out.code, Some(1), "{rt:?}: {}", out.describe());
        assert!(
            out.stderr.contains("hostname"),
            "{rt:?}: {}",
            out.describe()
        );
        rt.output(&b, &["delete", "--force", &name]);
    }
}

#[test]
fn a_pid_namespace_named_by_path_is_joined() {
    let first = sleeper("pidjoin1");
    let second = sleeper("pidjoin2");
    for rt in BOTH {
        let (one, two) = (id(&format!("pidA{rt:?}")), id(&format!("pidB{rt:?}")));
        let pid = rt.start(&first, &one).to_string();
        second.config(serde_json::json!({"args": ["sleep", "298"]}), |c| {
            c["linux"]["namespaces"] = serde_json::json!([
                {"type": "mount"}, {"type": "uts"},
                {"type": "pid", "path": format!("/proc/{pid}/ns/pid")}
            ]);
        });
        let joined = rt.start(&second, &two).to_string();
        assert_eq!(ns(&joined, "pid"), ns(&pid, "pid"), "{rt:?}: not joined");
        let status = std::fs::read_to_string(format!("/proc/{joined}/status")).unwrap();
        let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
        assert_ne!(
            nspid.split_whitespace().last(),
            Some("1"),
            "{rt:?}: {nspid}"
        );
        rt.remove(&second, &two);
        rt.remove(&first, &one);
    }
}

/// A network namespace made with `ip netns add`, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Self {
        let name = format!("{tag}-{}", std::process::id());
        let ok = Command::new("ip").args(["netns", "add", &name]).status();
        assert!(ok.unwrap().success(), "ip netns add {name}");
        Self(name)
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn net_sysctls_are_set_in_a_network_namespace_named_by_path_and_not_in_the_host_s() {
    let netns = Netns::new("gureum-parity");
    let process = serde_json::json!({"args": ["cat", "/proc/sys/net/ipv4/ping_group_range"]});
    let b = Bundle::new("netsysctl", process.clone());
    for (path, host) in [
        (netns.path(), false),
        ("/proc/self/ns/net".to_string(), true),
    ] {
        b.config(process.clone(), |c| {
            c["linux"]["namespaces"] = serde_json::json!([
                {"type": "mount"}, {"type": "uts"}, {"type": "pid"},
                {"type": "network", "path": path}
            ]);
            c["linux"]["sysctl"] = serde_json::json!({"net.ipv4.ping_group_range": "0 0"});
        });
        for rt in BOTH {
            let name = id(&format!("netsysctl{rt:?}"));
            let out = rt.run(&b, &name);
            if host {
                assert_eq!(out.code, Some(1), "{rt:?}: {}", out.describe());
                assert!(out.stderr.contains("net.ipv4.ping_group_range"), "{rt:?}");
                rt.output(&b, &["delete", "--force", &name]);
            } else {
                assert_eq!(out.code, Some(0), "{rt:?}: {}", out.describe());
                assert_eq!(out.stdout, "0\t0\n", "{rt:?}: {}", out.describe());
            }
        }
    }
}

#[test]
fn state_keeps_the_bundle_s_annotations_as_they_are() {
    let b = sleeper("annot");
    b.config(serde_json::json!({"args": ["sleep", "299"]}), |c| {
        c["annotations"] = serde_json::json!({"org.example.team": "blue"});
    });
    for rt in BOTH {
        let name = id(&format!("annot{rt:?}"));
        rt.start(&b, &name);
        let state = rt.state(&b, &name);
        let want = serde_json::json!({"org.example.team": "blue"});
        assert_eq!(state["annotations"], want, "{rt:?}: {state}");
        rt.remove(&b, &name);
    }
}

/// The first whole disk's major:minor (for a block I/O throttle both runtimes must accept).
fn a_disk() -> Option<String> {
    let disks = std::fs::read_dir("/sys/block").ok()?.flatten();
    let mut names: Vec<_> = disks
        .map(|d| d.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let name = names
        .iter()
        .find(|n| !n.starts_with("loop") && !n.starts_with("ram"))?;
    let dev = std::fs::read_to_string(format!("/sys/block/{name}/dev")).ok()?;
    Some(dev.trim().to_string())
}

/// What a container's process shows of `linux.resources`, `process.oomScoreAdj` and
/// `linux.devices`: each cgroup file the settings write (v1 or v2), the hierarchies the process
/// is in, its oom_score_adj, and the device node made in its /dev.
fn observe(pid: &str, cgroup: &str, v2: bool, disk: Option<&str>) -> Vec<String> {
    let mut files: Vec<(&str, &str)> = if v2 {
        vec![
            ("", "memory.max"),
            ("", "memory.low"),
            ("", "memory.swap.max"),
            ("", "cpu.weight"),
        ]
    } else {
        vec![
            ("memory", "memory.limit_in_bytes"),
            ("memory", "memory.soft_limit_in_bytes"),
            ("memory", "memory.memsw.limit_in_bytes"),
            ("memory", "memory.swappiness"),
            ("cpu", "cpu.shares"),
            ("cpuset", "cpuset.cpus"),
            ("cpuset", "cpuset.mems"),
        ]
    };
    files.push((if v2 { "" } else { "pids" }, "pids.max"));
    if disk.is_some() {
        files.push(if v2 {
            ("", "io.max")
        } else {
            ("blkio", "blkio.throttle.read_bps_device")
        });
    }
    let mut seen: Vec<String> = files
        .iter()
        .map(|(controller, file)| {
            let path = format!("/sys/fs/cgroup/{controller}/{cgroup}/{file}");
            let value = std::fs::read_to_string(&path).unwrap_or_else(|e| format!("({e})"));
            format!("{file}: {}", value.trim())
        })
        .collect();
    let mut joined: Vec<String> = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap()
        .lines()
        .filter(|l| l.ends_with(cgroup))
        .map(|l| l.split(':').nth(1).unwrap_or_default().to_string())
        .collect();
    joined.sort();
    seen.push(format!("in the hierarchies of: {joined:?}"));
    let adj = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap();
    seen.push(format!("oom_score_adj: {}", adj.trim()));
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let node = std::fs::metadata(format!("/proc/{pid}/root/dev/net/tun")).unwrap();
    let (kind, mode) = (node.file_type().is_char_device(), node.mode() & 0o7777);
    seen.push(format!(
        "/dev/net/tun: char {kind}, rdev {:#x}, mode {mode:o}",
        node.rdev()
    ));
    seen
}

#[test]
fn resources_oom_score_and_device_nodes_come_out_the_same() {
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let disk = a_disk();
    let b = sleeper("resources");
    for rt in BOTH {
        let name = id(&format!("res{rt:?}"));
        let cgroup = format!("gureum-parity/{name}");
        b.config(
            serde_json::json!({"args": ["sleep", "299"], "oomScoreAdj": 500}),
            |c| {
                let mut memory = serde_json::json!(
                {"limit": 268435456, "reservation": 134217728, "swap": 536870912});
                if !v2 {
                    memory["swappiness"] = serde_json::json!(30);
                }
                let mut resources = serde_json::json!({
                    "memory": memory, "pids": {"limit": 100},
                    "cpu": {"shares": 512, "cpus": "0", "mems": "0"},
                });
                if let Some((major, minor)) = disk.as_deref().and_then(|d| d.split_once(':')) {
                    resources["blockIO"] = serde_json::json!({"throttleReadBpsDevice": [
                    {"major": major.parse::<i64>().unwrap(), "minor": minor.parse::<i64>().unwrap(),
                     "rate": 1048576}]});
                }
                c["linux"]["resources"] = resources;
                c["linux"]["cgroupsPath"] = serde_json::json!(format!("/{cgroup}"));
                c["linux"]["devices"] = serde_json::json!([{"path": "/dev/net/tun", "type": "c",
                "major": 10, "minor": 200, "fileMode": 438, "uid": 0, "gid": 0}]);
            },
        );
        let pid = rt.start(&b, &name).to_string();
        let seen = observe(&pid, &cgroup, v2, disk.as_deref());
        rt.remove(&b, &name);
        if let Runtime::Runc = rt {
            std::fs::write(b.dir.join("runc.seen"), seen.join("\n")).unwrap();
        } else {
            let runc = std::fs::read_to_string(b.dir.join("runc.seen")).unwrap();
            assert_eq!(seen.join("\n"), runc, "gureum (left) against runc (right)");
        }
    }
    // The parent both runtimes left (neither removes a cgroupsPath's parents).
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let _ = std::fs::remove_dir(hierarchy.path().join("gureum-parity"));
    }
}

/// gureum applies no AppArmor profile or SELinux label: it refuses them in one line, as runc
/// does where the host lacks the module (where it has it, runc applies them; then only gureum's
/// refusal is checked).
#[test]
fn security_labels_are_refused_as_runc_refuses_them_without_the_module() {
    let b = Bundle::new("labels", serde_json::json!({"args": ["true"]}));
    let cases = [
        ("process", "apparmorProfile", "AppArmor"),
        ("process", "selinuxLabel", "SELinux"),
        ("linux", "mountLabel", "SELinux"),
    ];
    for (section, field, module) in cases {
        let enabled = std::path::Path::new("/sys/kernel/security")
            .join(module.to_lowercase())
            .exists();
        b.config(serde_json::json!({"args": ["true"]}), |c| {
            c[section][field] = serde_json::json!("system_u:system_r:container_t:s0");
        });
        let runtimes: &[Runtime] = if enabled { &[Runtime::Gureum] } else { &BOTH };
        for &rt in runtimes {
            let name = id(&format!("label{rt:?}"));
            let out = rt.run(&b, &name);
            assert_ne!(out.code, Some(0), "{rt:?} {field}: {}", out.describe());
            if let Runtime::Gureum = rt {
                assert_eq!(out.stderr.lines().count(), 1, "{}", out.describe());
                assert!(out.stderr.contains(field), "{}", out.describe());
                assert!(out.stderr.contains(module), "{}", out.describe());
            }
            rt.output(&b, &["delete", "--force", &name]);
        }
    }
}
