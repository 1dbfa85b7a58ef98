//! `gureum run --image`: OCI image layouts and `docker save` tarballs the test builds from
//! busybox (two layers: the second overrides a file, deletes one by a whiteout and makes a
//! directory opaque), run natively; and corrupt images refused in one line.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::oci::sha;

use common::{GUREUM, Output, busybox_rootfs, finish, scratch};

const SCRIPT: &str =
    "echo $GREETING $(cat /etc/greeting); ls /old-file 2>&1; ls /stuff; pwd; id -u";
const EXPECTED: &str = "hello two\nls: /old-file: No such file or directory\nkept\n/tmp\n1000\n";

/// A tar of the tree at `dir` (paths relative to it), with extra (path, bytes) entries.
fn tar_of(dir: Option<&Path>, extra: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    if let Some(dir) = dir {
        b.append_dir_all(".", dir).unwrap();
    }
    for (path, data) in extra {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// The two layers as uncompressed tars.
fn layers(work: &Path) -> (Vec<u8>, Vec<u8>) {
    let base = work.join("base");
    busybox_rootfs(&base);
    std::fs::write(base.join("etc/greeting"), "one\n").unwrap();
    std::fs::write(base.join("old-file"), "going\n").unwrap();
    std::fs::create_dir_all(base.join("stuff")).unwrap();
    std::fs::write(base.join("stuff/hidden"), "from layer 1\n").unwrap();
    let one = tar_of(Some(&base), &[]);
    let two = tar_of(
        None,
        &[
            ("etc/greeting", b"two\n"),
            (".wh.old-file", b""),
            ("stuff/.wh..wh..opq", b""),
            ("stuff/kept", b"kept\n"),
        ],
    );
    (one, two)
}

fn config(diff_ids: &[String]) -> Vec<u8> {
    serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/bin/sh", "-c"], "Cmd": [SCRIPT],
                   "Env": ["PATH=/bin", "GREETING=hello"], "WorkingDir": "/tmp", "User": "1000:1000"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    })
    .to_string()
    .into_bytes()
}

/// An OCI image layout at `dir` (layer 1 gzip-compressed, layer 2 plain).
fn oci_layout(dir: &Path) -> PathBuf {
    let (one, two) = layers(&dir.join("work"));
    let layout = dir.join("oci");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&one).unwrap();
    let gz = gz.finish().unwrap();
    let config = config(&[
        format!("sha256:{}", sha(&one)),
        format!("sha256:{}", sha(&two)),
    ]);
    let layers: [(&str, &[u8]); 2] = [
        ("application/vnd.oci.image.layer.v1.tar+gzip", &gz),
        ("application/vnd.oci.image.layer.v1.tar", &two),
    ];
    common::oci::layout(&layout, &layers, &config, None);
    layout
}

/// A `docker save`-style tarball at `dir/image.tar` (legacy layout: manifest.json).
fn docker_tar(dir: &Path) -> PathBuf {
    let (one, two) = layers(&dir.join("work"));
    let ids = [sha(&one), sha(&two)];
    let cfg = config(
        &ids.iter()
            .map(|h| format!("sha256:{h}"))
            .collect::<Vec<_>>(),
    );
    let cfg_name = format!("{}.json", sha(&cfg));
    let manifest = serde_json::json!([{"Config": cfg_name, "RepoTags": ["test:latest"],
        "Layers": [format!("{}/layer.tar", ids[0]), format!("{}/layer.tar", ids[1])]}]);
    let path = dir.join("image.tar");
    let l1 = format!("{}/layer.tar", ids[0]);
    let l2 = format!("{}/layer.tar", ids[1]);
    let manifest = manifest.to_string();
    let entries: Vec<(&str, &[u8])> = vec![
        ("manifest.json", manifest.as_bytes()),
        (&cfg_name, &cfg),
        (&l1, &one),
        (&l2, &two),
    ];
    std::fs::write(&path, tar_of(None, &entries)).unwrap();
    path
}

struct Env {
    dir: PathBuf,
}

impl Env {
    fn new(tag: &str) -> Self {
        Self { dir: scratch(tag) }
    }

    fn run(&self, image: &Path, id: &str, command: &[&str]) -> Output {
        self.run_in("native", image, id, command)
    }

    /// `run --image` natively, in a sandbox, or in one with the stand-in VMM.
    fn run_in(&self, isolation: &str, image: &Path, id: &str, command: &[&str]) -> Output {
        let mut cmd = Command::new(GUREUM);
        if isolation == "standin" {
            common::bundle::use_standin(&mut cmd);
        }
        // The cache is the test's own, but for the guest kernel and agent a sandbox boots.
        let cache = self.dir.join("cache");
        let default = cache.join("default");
        if isolation != "native" && !default.exists() {
            std::fs::create_dir_all(&cache).unwrap();
            let guest = common::default_guest_file("vmlinux");
            std::os::unix::fs::symlink(guest.parent().unwrap(), &default).unwrap();
        }
        let isolation = if isolation == "native" {
            "native"
        } else {
            "vm"
        };
        let child = cmd
            .env("GUREUM_CACHE", &cache)
            .arg("--root")
            .arg(self.dir.join("state"))
            .args(["--isolation", isolation, "run", "--image"])
            .arg(image)
            .arg(id)
            .args(if command.is_empty() {
                vec![]
            } else {
                [&["--"], command].concat()
            })
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = finish(child, Duration::from_secs(60));
        let state = self.dir.join("state");
        let left: Vec<_> = std::fs::read_dir(&state)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                !p.ends_with(".images")
                    || std::fs::read_dir(p).is_ok_and(|mut d| d.next().is_some())
            })
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.contains(self.dir.to_str().unwrap()),
            "a mount left behind"
        );
        out
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn id(tag: &str) -> String {
    format!("{tag}-{}", std::process::id())
}

per_isolation!(an_oci_layout_runs_in_a_sandbox => oci_layout_in; standin, vm);

fn oci_layout_in(isolation: &'static str) {
    let env = Env::new("ocivm");
    let layout = oci_layout(&env.dir);
    let out = env.run_in(isolation, &layout, &id("ocivm"), &[]);
    assert_eq!(out.code, Some(0), "{isolation}: {}", out.describe());
    assert_eq!(out.stdout, EXPECTED, "{isolation}: {}", out.describe());
}

#[test]
fn an_oci_layout_runs_with_its_entrypoint_cmd_env_workdir_and_user() {
    let env = Env::new("oci");
    let layout = oci_layout(&env.dir);
    let out = env.run(&layout, &id("oci"), &[]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert_eq!(out.stdout, EXPECTED, "{}", out.describe());
    // Cached layers are reused; the command replaces Cmd, the Entrypoint stays.
    let out = env.run(&layout, &id("oci2"), &["echo override $GREETING"]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "override hello\n"),
        "{}",
        out.describe()
    );
    let cached = std::fs::read_dir(env.dir.join("cache/layers"))
        .unwrap()
        .count();
    assert_eq!(cached, 2);
}

#[test]
fn a_docker_save_tarball_runs_the_same() {
    let env = Env::new("docker");
    let tarball = docker_tar(&env.dir);
    let out = env.run(&tarball, &id("docker"), &[]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert_eq!(out.stdout, EXPECTED, "{}", out.describe());
}

#[test]
fn corrupt_images_are_refused_in_one_line() {
    let env = Env::new("corrupt");
    let junk = env.dir.join("junk.tar");
    std::fs::write(&junk, common::pseudo_random(3, 10_000)).unwrap();
    let out = env.run(&junk, &id("junk"), &[]);
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert!(
        out.stderr
            .contains("not an OCI image layout or a docker save tarball"),
        "{}",
        out.describe()
    );
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.describe());

    // A layer blob whose bytes no longer match its digest.
    let layout = oci_layout(&env.dir);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let blobs = layout.join("blobs/sha256");
    let m = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blobs.join(m)).unwrap()).unwrap();
    let layer = manifest["layers"][1]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(blobs.join(layer))
        .unwrap();
    f.write_all(b"tampered").unwrap();
    let out = env.run(&layout, &id("tampered"), &[]);
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert!(
        out.stderr.contains("has digest sha256:"),
        "{}",
        out.describe()
    );
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.describe());

    // The same in a docker save tarball: a layer.tar that does not match its diff_id.
    let docker = env.dir.join("d");
    std::fs::create_dir_all(&docker).unwrap();
    let tarball = docker_tar(&docker);
    let unpacked = docker.join("x");
    std::fs::create_dir_all(&unpacked).unwrap();
    tar::Archive::new(std::fs::File::open(&tarball).unwrap())
        .unpack(&unpacked)
        .unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(unpacked.join("manifest.json")).unwrap()).unwrap();
    let l = manifest[0]["Layers"][1].as_str().unwrap();
    std::fs::write(unpacked.join(l), tar_of(None, &[("evil", b"x")])).unwrap();
    let out = env.run(&unpacked, &id("dtampered"), &[]);
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert!(
        out.stderr.contains("has digest sha256:"),
        "{}",
        out.describe()
    );
}
