//! The guest half of the sandbox, proven without hardware KVM: our kernel boots under QEMU's
//! software emulation with gureum-agent as PID 1, mounts a container root filesystem from a
//! virtio-blk disk built from a busybox bundle, runs the container's process there, and streams
//! its output and exit status to the host over a virtio-console port (under gureum the same
//! agent will use vsock).

mod common;

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use gureum_process::client;
use gureum_process::protocol::RunSpec;

fn agent_initramfs() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest-kernels/agent-initramfs.sh");
        let out = Command::new("bash").arg(script).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
}

/// A bundle's root filesystem (busybox) as an ext4 image.
fn rootfs_image(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    let image = dir.join("rootfs.ext4");
    common::ext4_image(&root, &image, "16M");
    image
}

/// Boot the agent under TCG, run `spec` in the container; returns (status, stdout, stderr,
/// time from QEMU's start to the exit status).
fn run_in_tcg(spec: &RunSpec) -> (i32, Vec<u8>, Vec<u8>, Duration) {
    let dir = common::scratch("agent-tcg");
    let image = rootfs_image(&dir);
    let sock = dir.join("agent.sock");
    let vmlinux = common::default_guest_file("vmlinux");
    let initramfs = agent_initramfs();
    let start = Instant::now();
    let append = "console=ttyS0 reboot=k panic=-1 quiet gureum.agent=port:gureum.agent";
    let mut qemu = common::qemu_tcg_microvm(&vmlinux, append)
        .arg("-initrd")
        .arg(initramfs)
        .args([
            "-drive",
            &format!("id=d0,file={},format=raw,if=none", image.display()),
        ])
        .args([
            "-device",
            "virtio-blk-device,drive=d0",
            "-device",
            "virtio-serial-device",
        ])
        .args([
            "-chardev",
            &format!("socket,id=c0,path={},server=on,wait=off", sock.display()),
        ])
        .args(["-device", "virtserialport,chardev=c0,name=gureum.agent"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-system-x86_64");
    let conn = loop {
        match UnixStream::connect(&sock) {
            Ok(c) => break c,
            Err(_) if start.elapsed() < Duration::from_secs(60) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => {
                let _ = qemu.kill();
                panic!("QEMU's agent socket: {e}");
            }
        }
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    // The run request waits in QEMU's socket until the agent, once booted, reads it.
    let ended = client::run(
        conn.try_clone().unwrap(),
        conn,
        spec,
        std::io::empty(),
        &mut out,
        &mut err,
    );
    let total = start.elapsed();
    let console = common::finish(qemu, Duration::from_secs(60));
    let ended = ended.unwrap_or_else(|e| panic!("{e}\n{}", console.describe()));
    assert!(
        console
            .stdout
            .contains("gureum-agent: ready on port:gureum.agent"),
        "{}",
        console.describe()
    );
    std::fs::remove_dir_all(dir).unwrap();
    (ended.status, out, err, total)
}

/// The process settings of a bundle's config.json, as gureum reads them (oci-spec), with the
/// bundle's root on the guest's first disk.
fn container(args: &[&str]) -> RunSpec {
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"args": args, "env": ["PATH=/bin", "GREETING=from-the-bundle"], "cwd": "/",
                    "user": {"uid": 0, "gid": 0},
                    "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 77, "hard": 77}]},
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "tcg-box"
    });
    let spec: oci_spec::runtime::Spec = serde_json::from_value(config).unwrap();
    let mut run = gureum_process::oci::process_settings(spec.process().as_ref().unwrap()).unwrap();
    run.root = Some("/dev/vda".into());
    run.readonly = spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false);
    run.hostname.clone_from(spec.hostname());
    run
}

#[test]
fn a_container_process_runs_in_our_guest_under_tcg() {
    let spec = container(&[
        "/bin/busybox",
        "sh",
        "-c",
        "echo hello $GREETING; /bin/busybox ls /; /bin/busybox hostname; ulimit -n; \
         echo oops >&2; exit 42",
    ]);
    let (status, out, err, total) = run_in_tcg(&spec);
    let out = String::from_utf8_lossy(&out);
    assert_eq!(status, 42, "{out}");
    assert!(out.starts_with("hello from-the-bundle\n"), "{out}");
    // The process saw the bundle's root filesystem, not the initramfs.
    assert!(out.contains("bin") && out.contains("lost+found"), "{out}");
    // The bundle's hostname and rlimits were applied.
    assert!(out.contains("\ntcg-box\n77\n"), "{out}");
    assert_eq!(err, b"oops\n");
    eprintln!("TCG: QEMU start to the container's exit status: {total:?}");
}

#[test]
fn capabilities_seccomp_sysctl_and_a_terminal_in_our_guest_under_tcg() {
    // What the guest kernel must offer the agent beyond running a process: capsets, seccomp
    // filters (CONFIG_SECCOMP_FILTER), sysctls and a devpts for the terminal.
    let mut spec = container(&[
        "/bin/busybox",
        "sh",
        "-c",
        "/bin/busybox grep ^CapEff /proc/self/status; /bin/busybox mkdir /d; \
         /bin/busybox cat /proc/sys/kernel/shmmni; /bin/busybox tty",
    ]);
    spec.readonly = false;
    let kill = gureum_process::security::cap_mask(["CAP_KILL"]).unwrap();
    spec.capabilities = Some(gureum_process::security::Caps {
        bounding: kill,
        effective: kill,
        permitted: kill,
        inheritable: kill,
        ambient: 0,
    });
    let profile: oci_spec::runtime::LinuxSeccomp = serde_json::from_value(serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]
    }))
    .unwrap();
    spec.seccomp = Some(gureum_runtime::seccomp::compile(&profile).unwrap());
    spec.no_new_privileges = true;
    spec.sysctl = vec![("kernel.shmmni".into(), "1234".into())];
    spec.terminal = true;
    spec.winsize = Some((24, 80));
    let (status, out, _, _) = run_in_tcg(&spec);
    let out = String::from_utf8_lossy(&out);
    assert_eq!(status, 0, "{out}");
    let lines: Vec<&str> = out.split("\r\n").collect();
    assert_eq!(lines[0], "CapEff:\t0000000000000020", "{out:?}");
    assert!(lines[1].contains("Permission denied"), "{out:?}");
    assert_eq!(lines[2], "1234", "{out:?}");
    assert!(lines[3].starts_with("/dev/pts/"), "{out:?}");
}
