//! The container's filesystem view, made inside its new mount namespace: config.json's mounts
//! under the rootfs, default device nodes, pivot_root, read-only root, masked and read-only
//! paths. Runs in the container's init before it runs anything from the rootfs.

use std::ffi::CString;
use std::io;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{Mount, Spec};

use crate::bundle::Process;

use crate::sys::{cstr, mount, os_err};

/// `unsafe_path` inside `root`, with every symlink resolved as if `root` were `/`, so a
/// rootfs's symlinks cannot point a mount outside it.
pub fn secure_join(root: &Path, unsafe_path: &Path) -> PathBuf {
    let mut todo: Vec<PathBuf> = unsafe_path
        .components()
        .rev()
        .map(|c| PathBuf::from(c.as_os_str()))
        .collect();
    let mut rel = PathBuf::new();
    let mut links = 0;
    while let Some(part) = todo.pop() {
        match part.components().next() {
            Some(Component::RootDir | Component::CurDir) | None => continue,
            Some(Component::ParentDir) => {
                rel.pop();
                continue;
            }
            _ => {}
        }
        let candidate = root.join(&rel).join(&part);
        match std::fs::read_link(&candidate) {
            Ok(target) if links < 40 => {
                links += 1;
                if target.is_absolute() {
                    rel = PathBuf::new();
                }
                todo.extend(
                    target
                        .components()
                        .rev()
                        .map(|c| PathBuf::from(c.as_os_str())),
                );
            }
            _ => rel.push(part),
        }
    }
    root.join(rel)
}

/// The mount flags config.json's options name: (option, flags it sets, flags it clears).
pub const FLAG_OPTIONS: [(&str, libc::c_ulong, libc::c_ulong); 16] = [
    ("ro", libc::MS_RDONLY, 0),
    ("rw", 0, libc::MS_RDONLY),
    ("nosuid", libc::MS_NOSUID, 0),
    ("suid", 0, libc::MS_NOSUID),
    ("nodev", libc::MS_NODEV, 0),
    ("dev", 0, libc::MS_NODEV),
    ("noexec", libc::MS_NOEXEC, 0),
    ("exec", 0, libc::MS_NOEXEC),
    ("sync", libc::MS_SYNCHRONOUS, 0),
    ("dirsync", libc::MS_DIRSYNC, 0),
    ("noatime", libc::MS_NOATIME, 0),
    ("nodiratime", libc::MS_NODIRATIME, 0),
    ("relatime", libc::MS_RELATIME, 0),
    ("strictatime", libc::MS_STRICTATIME, 0),
    ("bind", libc::MS_BIND, 0),
    ("rbind", libc::MS_BIND | libc::MS_REC, 0),
];

/// Propagation options (each also with an `r` prefix: recursive).
pub const PROPAGATION_OPTIONS: [(&str, libc::c_ulong); 4] = [
    ("private", libc::MS_PRIVATE),
    ("shared", libc::MS_SHARED),
    ("slave", libc::MS_SLAVE),
    ("unbindable", libc::MS_UNBINDABLE),
];

/// (flags, propagation, data): options that are neither flags nor propagation go to the
/// filesystem as data ("mode=755").
fn parse_options(options: &[String]) -> (libc::c_ulong, libc::c_ulong, String) {
    let (mut flags, mut propagation, mut data) = (0, 0, Vec::new());
    for o in options {
        if let Some(&(_, set, clear)) = FLAG_OPTIONS.iter().find(|(name, ..)| name == o) {
            flags = (flags | set) & !clear;
        } else if let Some(&(_, p)) = PROPAGATION_OPTIONS
            .iter()
            .find(|(name, _)| name == o || o.strip_prefix('r') == Some(name))
        {
            propagation |= p | if o.starts_with('r') { libc::MS_REC } else { 0 };
        } else if o != "defaults" {
            data.push(o.as_str());
        }
    }
    (flags, propagation, data.join(","))
}

fn mount_one(rootfs: &Path, m: &Mount) -> Result<(), String> {
    let options = m.options().clone().unwrap_or_default();
    let (flags, propagation, data) = parse_options(&options);
    let typ = m.typ().clone().unwrap_or_else(|| {
        if flags & libc::MS_BIND != 0 {
            "bind".into()
        } else {
            "none".into()
        }
    });
    if typ == "cgroup" || typ == "cgroup2" {
        // No cgroup namespace: the host's hierarchy is not shown to the container.
        return Ok(());
    }
    let dest = secure_join(rootfs, m.destination());
    let source = m.source().clone().unwrap_or_else(|| PathBuf::from(&typ));
    let is_bind = flags & libc::MS_BIND != 0;
    if is_bind && !source.is_dir() {
        if let Some(parent) = dest.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        if !dest.exists() {
            let _ = std::fs::File::create(&dest);
        }
    } else {
        let _ = std::fs::create_dir_all(&dest);
    }
    let fail = |e: io::Error| format!("cannot mount {} on {}: {e}", typ, m.destination().display());
    let first = if is_bind {
        flags & (libc::MS_BIND | libc::MS_REC)
    } else {
        flags
    };
    let rc = mount(Some(&source), &dest, Some(&typ), first, Some(&data));
    if rc.is_err() && typ == "sysfs" {
        // sysfs cannot be mounted where the network namespace is shared: show the host's.
        mount(
            Some(Path::new("/sys")),
            &dest,
            None,
            libc::MS_BIND | libc::MS_REC,
            None,
        )
        .map_err(fail)?;
    } else {
        rc.map_err(fail)?;
    }
    if is_bind && flags & !(libc::MS_BIND | libc::MS_REC) != 0 {
        mount(
            None,
            &dest,
            None,
            flags | libc::MS_REMOUNT | libc::MS_BIND,
            None,
        )
        .map_err(fail)?;
    }
    if propagation != 0 {
        mount(None, &dest, None, propagation, None).map_err(fail)?;
    }
    Ok(())
}

/// Device nodes every container gets when /dev is a fresh tmpfs: bind mounts of the host's.
fn default_devices(rootfs: &Path) -> Result<(), String> {
    let dev = rootfs.join("dev");
    for name in ["null", "zero", "full", "random", "urandom", "tty"] {
        let target = dev.join(name);
        if !target.exists() {
            std::fs::File::create(&target).map_err(|e| format!("/dev/{name}: {e}"))?;
        }
        let host = Path::new("/dev").join(name);
        mount(Some(&host), &target, None, libc::MS_BIND, None)
            .map_err(|e| format!("cannot bind /dev/{name}: {e}"))?;
    }
    for (link, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        let _ = std::os::unix::fs::symlink(to, dev.join(link));
    }
    Ok(())
}

/// Everything between "new mount namespace" and "root is the rootfs".
pub fn setup_rootfs(
    spec: &Spec,
    rootfs: &Path,
    p: &Process,
    before_pivot: &mut dyn FnMut() -> Result<(), String>,
) -> Result<(), String> {
    let none = None::<&Path>;
    mount(
        none,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )
    .map_err(|e| format!("cannot make / private: {e}"))?;
    mount(
        Some(rootfs),
        rootfs,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )
    .map_err(|e| format!("cannot bind the rootfs {}: {e}", rootfs.display()))?;
    let mounts = spec.mounts().clone().unwrap_or_default();
    for m in &mounts {
        mount_one(rootfs, m)?;
    }
    let dev_is_tmpfs = mounts
        .iter()
        .any(|m| m.destination() == Path::new("/dev") && m.typ().as_deref() == Some("tmpfs"));
    if dev_is_tmpfs {
        default_devices(rootfs)?;
    }
    super::nodes::make(spec, rootfs)?;
    before_pivot()?;
    pivot_root(rootfs)?;
    // linux.sysctl, through the container's /proc/sys, before it is made read-only.
    gureum_process::sysctl::set(&p.sysctl)?;
    if p.readonly {
        mount(
            none,
            Path::new("/"),
            None,
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
            None,
        )
        .map_err(|e| format!("cannot make the root read-only: {e}"))?;
    }
    if let Some(linux) = spec.linux() {
        for p in linux.masked_paths().iter().flatten() {
            mask(Path::new(p));
        }
        for p in linux.readonly_paths().iter().flatten() {
            let p = Path::new(p);
            if p.exists() {
                let _ = mount(Some(p), p, None, libc::MS_BIND | libc::MS_REC, None);
                let _ = mount(
                    none,
                    p,
                    None,
                    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                    None,
                );
            }
        }
    }
    Ok(())
}

/// Hides a path: /dev/null over a file, an empty read-only tmpfs over a directory.
fn mask(p: &Path) {
    if p.is_dir() {
        let _ = mount(
            Some(Path::new("tmpfs")),
            p,
            Some("tmpfs"),
            libc::MS_RDONLY,
            None,
        );
    } else if p.exists() {
        let _ = mount(Some(Path::new("/dev/null")), p, None, libc::MS_BIND, None);
    }
}

fn pivot_root(rootfs: &Path) -> Result<(), String> {
    let root = cstr(rootfs.as_os_str().as_encoded_bytes())?;
    let dot = CString::from(c".");
    // SAFETY: chdir, pivot_root and umount2 with NUL-terminated paths that outlive the calls.
    unsafe {
        if libc::chdir(root.as_ptr()) != 0
            || libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) != 0
            || libc::umount2(dot.as_ptr(), libc::MNT_DETACH) != 0
            || libc::chdir(c"/".as_ptr()) != 0
        {
            return Err(format!(
                "pivot_root into {}: {}",
                rootfs.display(),
                os_err()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secure_join_stays_inside() {
        let root = std::env::temp_dir().join(format!("gureum-sj-{}", std::process::id()));
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("evil")).unwrap();
        std::os::unix::fs::symlink("../../..", root.join("a/up")).unwrap();
        assert_eq!(secure_join(&root, Path::new("/evil/x")), root.join("etc/x"));
        assert_eq!(secure_join(&root, Path::new("/a/up/y")), root.join("y"));
        assert_eq!(secure_join(&root, Path::new("../../z")), root.join("z"));
        assert_eq!(secure_join(&root, Path::new("/a/b")), root.join("a/b"));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn options() {
        let o = |s: &[&str]| parse_options(&s.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let (f, p, d) = o(&["nosuid", "strictatime", "mode=755", "size=65536k"]);
        assert_eq!(f, libc::MS_NOSUID | libc::MS_STRICTATIME);
        assert_eq!(p, 0);
        assert_eq!(d, "mode=755,size=65536k");
        let (f, p, _) = o(&["rbind", "ro", "rprivate"]);
        assert_eq!(f, libc::MS_BIND | libc::MS_REC | libc::MS_RDONLY);
        assert_eq!(p, libc::MS_PRIVATE | libc::MS_REC);
    }
}
