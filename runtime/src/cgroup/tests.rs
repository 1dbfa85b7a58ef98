//! The limits' files and values, written into stand-in cgroup trees (plain directories): what
//! a real v1 or v2 host gets. The kernel's side of v2 is in tests/containers_cgroup2.rs.

use super::*;

struct Tree(PathBuf);

impl Tree {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("gureum-cg-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// A v2 container cgroup whose files exist for `controllers` only.
    fn v2(&self, controllers: &[&str]) -> Cgroup {
        let dir = self.0.join("gureum/c1");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(self.0.join("cgroup.controllers"), controllers.join(" ")).unwrap();
        for (c, file) in [
            ("memory", "memory.max"),
            ("cpu", "cpu.max"),
            ("pids", "pids.max"),
        ] {
            if controllers.contains(&c) {
                std::fs::write(dir.join(file), "max").unwrap();
            }
        }
        Cgroup {
            root: self.0.clone(),
            controllers: Vec::new(),
            rel: "gureum/c1".into(),
            v2: true,
            own_parent: true,
        }
    }

    fn v1(&self) -> Cgroup {
        let dirs = CONTROLLERS.map(|c| self.0.join(c).join("gureum/c1"));
        dirs.iter()
            .for_each(|d| std::fs::create_dir_all(d).unwrap());
        Cgroup {
            root: self.0.clone(),
            controllers: CONTROLLERS.map(String::from).to_vec(),
            rel: "gureum/c1".into(),
            v2: false,
            own_parent: true,
        }
    }

    fn read(&self, path: &str) -> String {
        std::fs::read_to_string(self.0.join(path)).unwrap()
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn limits() -> Resources {
    Resources {
        memory_bytes: Some(64 << 20),
        cpu_quota_us: Some(20_000),
        cpu_period_us: None,
        pids: Some(50),
        ..Resources::default()
    }
}

#[test]
fn v2_limits_go_to_the_unified_files() {
    let t = Tree::new("v2");
    let cg = t.v2(&["memory", "cpu", "pids"]);
    cg.limit(&limits()).unwrap();
    assert_eq!(t.read("gureum/c1/memory.max"), "67108864");
    assert_eq!(t.read("gureum/c1/cpu.max"), "20000 100000");
    assert_eq!(t.read("gureum/c1/pids.max"), "50");
    // update: what it names changes; zero lifts a limit.
    let lift = Resources {
        memory_bytes: Some(0),
        cpu_period_us: Some(50_000),
        ..Resources::default()
    };
    cg.update(&lift).unwrap();
    assert_eq!(t.read("gureum/c1/memory.max"), "max");
    assert_eq!(t.read("gureum/c1/cpu.max"), "max 50000");
    assert_eq!(t.read("gureum/c1/pids.max"), "50");
}

#[test]
fn a_v2_limit_without_its_controller_is_an_error_and_no_limit_needs_none() {
    let t = Tree::new("v2-missing");
    let cg = t.v2(&["cpu"]);
    let err = cg.limit(&limits()).unwrap_err().to_string();
    assert!(err.contains("no memory controller"), "{err}");
    assert!(err.contains("\"cpu\""), "{err}");
    cg.limit(&Resources::default()).unwrap();
}

#[test]
fn v1_limits_go_to_each_controller_s_hierarchy() {
    let t = Tree::new("v1");
    let cg = t.v1();
    cg.limit(&limits()).unwrap();
    assert_eq!(t.read("memory/gureum/c1/memory.limit_in_bytes"), "67108864");
    assert_eq!(t.read("cpu/gureum/c1/cpu.cfs_quota_us"), "20000");
    assert_eq!(t.read("cpu/gureum/c1/cpu.cfs_period_us"), "100000");
    assert_eq!(t.read("pids/gureum/c1/pids.max"), "50");
    cg.update(&Resources {
        memory_bytes: Some(-1),
        cpu_quota_us: Some(0),
        ..Resources::default()
    })
    .unwrap();
    assert_eq!(t.read("memory/gureum/c1/memory.limit_in_bytes"), "-1");
    assert_eq!(t.read("cpu/gureum/c1/cpu.cfs_quota_us"), "-1");
}

#[test]
fn v1_device_rules_are_written_in_order_before_the_defaults() {
    let t = Tree::new("v1-devices");
    let cg = t.v1();
    let deny = crate::bundle::DeviceRule {
        allow: false,
        kind: 'a',
        major: None,
        minor: None,
        access: "rwm".into(),
    };
    cg.devices(&Resources {
        devices: vec![deny],
        ..Resources::default()
    })
    .unwrap();
    // Plain files keep the last write: the deny, then the last default allow.
    assert_eq!(t.read("devices/gureum/c1/devices.deny"), "a *:* rwm");
    assert_eq!(t.read("devices/gureum/c1/devices.allow"), "c 5:2 rwm");
}

#[test]
fn v2_enables_the_controllers_the_host_has_one_at_a_time() {
    let t = Tree::new("v2-enable");
    let cg = t.v2(&["cpu", "pids", "io"]);
    std::fs::write(t.0.join("gureum/cgroup.controllers"), "cpu pids").unwrap();
    std::fs::write(t.0.join("gureum/cgroup.subtree_control"), "pids").unwrap();
    cg.enable_controllers(&[]).unwrap();
    // Plain files keep the last write: the root got +cpu then +pids; gureum/ only +cpu.
    assert_eq!(t.read("cgroup.subtree_control"), "+pids");
    assert_eq!(t.read("gureum/cgroup.subtree_control"), "+cpu");
}

#[test]
fn v2_enables_the_controllers_all_the_way_down_a_cgroups_path() {
    let t = Tree::new("v2-path");
    let mut cg = t.v2(&["cpu", "pids"]);
    cg.rel = "kubepods/pod1/c1".into();
    for dir in ["kubepods", "kubepods/pod1"] {
        std::fs::create_dir_all(t.0.join(dir)).unwrap();
        std::fs::write(t.0.join(dir).join("cgroup.controllers"), "cpu pids").unwrap();
    }
    cg.enable_controllers(&[]).unwrap();
    for dir in [".", "kubepods", "kubepods/pod1"] {
        let control = format!("{dir}/cgroup.subtree_control");
        assert_eq!(t.read(&control), "+pids", "{dir}");
    }
    assert!(!t.0.join("kubepods/pod1/c1/cgroup.subtree_control").exists());
    assert_eq!(cg.dirs(), vec![t.0.join("kubepods/pod1/c1")]);
}

#[test]
fn a_v2_root_that_is_no_cgroup2_mount_is_refused_before_anything_is_made() {
    let t = Tree::new("not-cg2");
    let cg = Cgroup {
        root: t.0.join("plain"),
        controllers: Vec::new(),
        rel: "gureum/c1".into(),
        v2: true,
        own_parent: true,
    };
    std::fs::create_dir_all(&cg.root).unwrap();
    let err = cg.create(&Resources::default()).unwrap_err().to_string();
    assert!(err.contains("not a cgroup2 mount"), "{err}");
    assert!(!cg.root.join("gureum").exists());
}

#[test]
fn gureum_s_own_parent_goes_with_its_last_container_and_a_given_path_s_stays() {
    let tree = Tree::new("parent");
    let c1 = tree.v1();
    let c2 = Cgroup {
        rel: "gureum/c2".into(),
        ..c1.clone()
    };
    c2.dirs()
        .iter()
        .for_each(|d| std::fs::create_dir_all(d).unwrap());
    c1.remove();
    assert!(tree.0.join("memory/gureum/c2").is_dir());
    c2.remove();
    for c in CONTROLLERS {
        assert!(!tree.0.join(c).join("gureum").exists(), "{c}");
    }
    let given = Cgroup {
        rel: "k8s/pod1".into(),
        own_parent: false,
        ..c1.clone()
    };
    given
        .dirs()
        .iter()
        .for_each(|d| std::fs::create_dir_all(d).unwrap());
    given.remove();
    assert!(!tree.0.join("memory/k8s/pod1").exists());
    assert!(
        tree.0.join("memory/k8s").is_dir(),
        "a given path's parent is not ours"
    );
}
