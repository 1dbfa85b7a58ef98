//! A runtime bundle made from an image: the rootfs an overlay of the cached layers with an upper
//! directory of its own, config.json a default spec with the image's Entrypoint, Cmd, Env,
//! WorkingDir and User.

use std::path::{Path, PathBuf};

use super::{Error, Image};
use crate::sys::mount;

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn io(what: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::Cache(what.to_path_buf(), e)
}

/// Makes the bundle in `dir` (rootfs mounted); `command` replaces the image's Cmd if given.
pub fn make(
    image: &Image,
    dir: &Path,
    hostname: &str,
    command: &[String],
) -> Result<PathBuf, Error> {
    let rootfs = dir.join("rootfs");
    for d in ["rootfs", "upper", "work"] {
        std::fs::create_dir_all(dir.join(d)).map_err(io(dir))?;
    }
    let lower: Vec<String> = image
        .layers
        .iter()
        .rev()
        .map(|l| l.display().to_string())
        .collect();
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        dir.join("upper").display(),
        dir.join("work").display()
    );
    mount(
        Some(Path::new("overlay")),
        &rootfs,
        Some("overlay"),
        0,
        Some(&data),
    )
    .map_err(io(&rootfs))?;
    let c = &image.config;
    let mut args = c.entrypoint.clone().unwrap_or_default();
    if command.is_empty() {
        args.extend(c.cmd.clone().unwrap_or_default());
    } else {
        args.extend(command.iter().cloned());
    }
    let mut env = c.env.clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(DEFAULT_PATH.into());
    }
    let (uid, gid) = user(&rootfs, c.user.as_deref().unwrap_or(""))?;
    let cwd = c
        .working_dir
        .clone()
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into());
    let config = default_config(hostname, &args, &env, &cwd, (uid, gid));
    let path = dir.join("config.json");
    std::fs::write(&path, config.to_string()).map_err(io(&path))?;
    Ok(dir.to_path_buf())
}

/// runc's default spec with the image's process.
fn default_config(
    hostname: &str,
    args: &[String],
    env: &[String],
    cwd: &str,
    (uid, gid): (u32, u32),
) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"terminal": false, "user": {"uid": uid, "gid": gid}, "args": args,
                    "env": env, "cwd": cwd, "noNewPrivileges": true},
        "root": {"path": "rootfs", "readonly": false},
        "hostname": hostname,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                           {"type": "uts"}, {"type": "mount"}],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

/// Unmounts and removes a bundle made by [`make`].
pub fn remove(dir: &Path) {
    if let Ok(c) = crate::sys::path_c(&dir.join("rootfs")) {
        // SAFETY: umount2 with a NUL-terminated path.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// The image's User (`uid`, `uid:gid`, `name`, `name:group`) as numbers, names looked up in
/// the rootfs's /etc/passwd and /etc/group.
fn user(rootfs: &Path, spec: &str) -> Result<(u32, u32), Error> {
    if spec.is_empty() {
        return Ok((0, 0));
    }
    let (u, g) = spec
        .split_once(':')
        .map_or((spec, None), |(u, g)| (u, Some(g)));
    let lookup = |file: &str, name: &str| -> Option<(u32, u32)> {
        let text = std::fs::read_to_string(rootfs.join(file)).ok()?;
        text.lines().find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.first() == Some(&name)).then(|| {
                let id = f.get(2).and_then(|v| v.parse().ok()).unwrap_or(0);
                let gid = f.get(3).and_then(|v| v.parse().ok()).unwrap_or(id);
                (id, gid)
            })
        })
    };
    let unknown = |what: &str| Error::Layout(format!("image user {spec:?}: no {what}"));
    let (uid, primary) = match u.parse::<u32>() {
        Ok(n) => (n, lookup("etc/passwd", u).map_or(n, |(_, g)| g)),
        Err(_) => lookup("etc/passwd", u).ok_or_else(|| unknown("such user in /etc/passwd"))?,
    };
    let gid = match g {
        None => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => lookup("etc/group", g)
                .map(|(id, _)| id)
                .ok_or_else(|| unknown("such group"))?,
        },
    };
    Ok((uid, gid))
}
