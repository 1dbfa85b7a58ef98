//! containerd (Debian's 1.6) and its runc shim (io.containerd.runc.v2) driving gureum's native
//! isolation, next to the same driving runc, in one test: `ctr run --runc-binary`, which hands
//! the shim the `BinaryName` option a CRI runtime's config sets (CRI itself needs a CRI client,
//! crictl, which Debian 12 does not package). containerd runs privately (its own root, state and socket) for the test's
//! length; the image is a busybox root filesystem packed as an OCI archive. gureum is reached
//! through a wrapper that logs each call, so the test knows gureum ran, not runc.
//! scripts/setup.sh installs containerd.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{GUREUM, Output, finish};

const IMAGE: &str = "localhost/gureum-test-busybox:latest";
const NS: &str = "gureum-test";

/// A private containerd, stopped on drop.
struct Containerd {
    dir: PathBuf,
    daemon: Child,
}

impl Containerd {
    fn start() -> Self {
        let dir = common::scratch("containerd");
        let config = format!(
            "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n\
             [grpc]\n  address = \"{0}/containerd.sock\"\n",
            dir.display()
        );
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("containerd.log")).unwrap())
            .spawn()
            .expect("containerd (scripts/setup.sh installs it)");
        let me = Self { dir, daemon };
        let deadline = Instant::now() + common::scaled(Duration::from_secs(20));
        while me.ctr(&["version"]).code != Some(0) {
            assert!(Instant::now() < deadline, "containerd never answered");
            std::thread::sleep(Duration::from_millis(100));
        }
        me
    }

    fn ctr(&self, args: &[&str]) -> Output {
        let child = Command::new("ctr")
            .arg("--address")
            .arg(self.dir.join("containerd.sock"))
            .args(["-n", NS])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        finish(child, Duration::from_secs(60))
    }

    /// Imports a busybox image, packed as an OCI archive.
    fn import_image(&self) {
        let rootfs = self.dir.join("rootfs");
        common::busybox_rootfs(&rootfs);
        let archive = oci_archive(&rootfs, &self.dir.join("image"));
        let out = self.ctr(&["images", "import", archive.to_str().unwrap()]);
        assert_eq!(out.code, Some(0), "ctr images import: {}", out.describe());
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

/// An OCI image archive (one layer, `rootfs`) named IMAGE, at `dir`.tar.
fn oci_archive(rootfs: &Path, dir: &Path) -> PathBuf {
    let mut layer = tar::Builder::new(Vec::new());
    layer.follow_symlinks(false);
    layer.append_dir_all(".", rootfs).unwrap();
    let layer = layer.into_inner().unwrap();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", common::oci::sha(&layer))]},
    });
    let layers: [(&str, &[u8]); 1] = [("application/vnd.oci.image.layer.v1.tar", &layer)];
    common::oci::layout(dir, &layers, config.to_string().as_bytes(), Some(IMAGE));
    let archive = dir.with_extension("tar");
    let mut tar = tar::Builder::new(std::fs::File::create(&archive).unwrap());
    tar.append_dir_all(".", dir).unwrap();
    tar.finish().unwrap();
    archive
}

/// gureum in `isolation` (native, vm), behind a script that logs each call (ctr and the shim
/// take a binary, not flags).
fn gureum_wrapper(dir: &Path, isolation: &str) -> (PathBuf, PathBuf) {
    let script = dir.join(format!("gureum-{isolation}"));
    let log = dir.join(format!("calls-{isolation}.log"));
    let text = format!(
        "#!/bin/sh\necho \"$*\" >> '{}'\nexec '{GUREUM}' --isolation {isolation} \"$@\"\n",
        log.display()
    );
    std::fs::write(&script, text).unwrap();
    let mut perms = std::fs::metadata(&script).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&script, perms).unwrap();
    (script, log)
}

/// What one runtime binary shows through ctr: foreground output and exit codes, then a
/// detached task's ps, exec, pause and resume, SIGTERM (ignored by a PID-1 sleep), SIGKILL.
fn through_ctr(c: &Containerd, how: &[&str], tag: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let run = |id: &str, args: &[&str]| {
        let mut all = vec!["run", "--rm"];
        all.extend_from_slice(how);
        all.extend_from_slice(&[IMAGE, id]);
        all.extend_from_slice(args);
        c.ctr(&all)
    };
    let out = run(&format!("{tag}-echo"), &["sh", "-c", "echo hi $$"]);
    seen.push(format!("echo: {:?} {:?}", out.code, out.stdout));
    let out = run(&format!("{tag}-exit"), &["sh", "-c", "exit 5"]);
    seen.push(format!("exit: {:?}", out.code));

    let id = format!("{tag}-d");
    let mut all = vec!["run", "-d"];
    all.extend_from_slice(how);
    all.extend_from_slice(&[IMAGE, &id, "sleep", "300"]);
    let out = c.ctr(&all);
    assert_eq!(out.code, Some(0), "{tag}: {}", out.describe());
    let ps = c.ctr(&["task", "ps", &id]);
    seen.push(format!("ps rows: {}", ps.stdout.lines().skip(1).count()));
    let exec = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        &id,
        "sh",
        "-c",
        "echo exec-ok",
    ]);
    seen.push(format!("exec: {:?} {:?}", exec.code, exec.stdout));
    let status = || {
        let ls = c.ctr(&["task", "ls"]);
        let row = ls
            .stdout
            .lines()
            .find(|l| l.starts_with(&id))
            .map(str::to_string);
        row.and_then(|r| r.split_whitespace().nth(2).map(str::to_string))
    };
    c.ctr(&["task", "pause", &id]);
    seen.push(format!("paused: {:?}", status()));
    c.ctr(&["task", "resume", &id]);
    let term = c.ctr(&["task", "kill", &id]);
    std::thread::sleep(common::scaled(Duration::from_millis(500)));
    seen.push(format!("after SIGTERM: {:?} {:?}", term.code, status()));
    let kill = c.ctr(&["task", "kill", "-s", "SIGKILL", &id]);
    let deadline = Instant::now() + common::scaled(Duration::from_secs(10));
    while status().as_deref() != Some("STOPPED") {
        assert!(Instant::now() < deadline, "{tag}: SIGKILL did not stop it");
        std::thread::sleep(Duration::from_millis(100));
    }
    seen.push(format!("after SIGKILL: {:?} {:?}", kill.code, status()));
    seen.push(format!(
        "delete: {:?}",
        c.ctr(&["task", "delete", &id]).code
    ));
    c.ctr(&["container", "delete", &id]);
    seen
}

/// runc's run through ctr, then gureum's in `isolation`, which must come out the same.
fn compare(isolation: &str) {
    let c = Containerd::start();
    c.import_image();
    let (wrapper, log) = gureum_wrapper(&c.dir, isolation);
    let wrapper = wrapper.to_str().unwrap();
    let runc = through_ctr(&c, &["--runc-binary", "/usr/sbin/runc"], "runc");
    let want = [
        "echo: Some(0) \"hi 1\\n\"",
        "exit: Some(5)",
        "ps rows: 1",
        "exec: Some(0) \"exec-ok\\n\"",
        "paused: Some(\"PAUSED\")",
        "after SIGTERM: Some(0) Some(\"RUNNING\")",
        "after SIGKILL: Some(0) Some(\"STOPPED\")",
        "delete: Some(0)",
    ];
    assert_eq!(runc, want, "runc through ctr");
    let mut gureum = through_ctr(&c, &["--runc-binary", wrapper], "gureum");
    if isolation == "vm" {
        // ps lists a container's processes on this host: a sandbox's are its monitor (the
        // pid that stands for the process) and its VMM.
        let ps = gureum.iter_mut().find(|s| s.starts_with("ps rows"));
        let was = ps.map(|s| std::mem::replace(s, "ps rows: 1".into()));
        assert_eq!(was.as_deref(), Some("ps rows: 2"));
    }
    assert_eq!(
        gureum, runc,
        "gureum ({isolation}) through ctr --runc-binary"
    );
    let calls = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        calls.lines().any(|l| l.contains(" create ")),
        "gureum never ran: {calls}"
    );
}

#[test]
fn ctr_and_the_runc_shim_drive_gureum_as_they_drive_runc() {
    compare("native");
}

#[test]
#[ignore = "boots a Linux guest: hardware KVM or the KVM test machine (scripts/test.sh runs it there)"]
fn ctr_and_the_runc_shim_drive_gureum_sandboxes_as_they_drive_runc() {
    compare("vm");
}
