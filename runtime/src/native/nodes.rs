//! `linux.devices`: the device nodes config.json asks for, made in the container's /dev (or
//! wherever their path says) once its mounts are in place, as runc makes them.

use std::path::Path;

use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Spec};

use super::mounts::secure_join;
use crate::sys::{mount, path_c};

/// Makes each node under `rootfs`. Where mknod is not allowed (a user namespace), the host's
/// node at the same path is bound there instead, as runc does.
pub fn make(spec: &Spec, rootfs: &Path) -> Result<(), String> {
    let devices = spec.linux().as_ref().and_then(|l| l.devices().as_ref());
    for d in devices.into_iter().flatten() {
        let target = secure_join(rootfs, d.path());
        let fail = |what: &str, e: std::io::Error| {
            format!("linux.devices {}: cannot {what}: {e}", d.path().display())
        };
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir).map_err(|e| fail("make its directory", e))?;
        }
        let _ = std::fs::remove_file(&target);
        match mknod(d, &target) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                std::fs::File::create(&target).map_err(|e| fail("make its mount point", e))?;
                mount(Some(d.path()), &target, None, libc::MS_BIND, None)
                    .map_err(|e| fail("bind the host's node", e))?;
            }
            done => done.map_err(|e| fail("make it", e))?,
        }
    }
    Ok(())
}

fn mknod(d: &LinuxDevice, target: &Path) -> std::io::Result<()> {
    let kind = match d.typ() {
        LinuxDeviceType::B => libc::S_IFBLK,
        LinuxDeviceType::C | LinuxDeviceType::U => libc::S_IFCHR,
        LinuxDeviceType::P => libc::S_IFIFO,
        LinuxDeviceType::A => return Err(std::io::ErrorKind::InvalidInput.into()),
    };
    let mode = d.file_mode().unwrap_or(0o666) & 0o7777;
    let (major, minor) = (d.major().max(0), d.minor().max(0));
    let dev = libc::makedev(
        u32::try_from(major).unwrap_or(u32::MAX),
        u32::try_from(minor).unwrap_or(u32::MAX),
    );
    let c = path_c(target)?;
    // SAFETY: mknod and chown with a NUL-terminated path.
    unsafe {
        if libc::mknod(c.as_ptr(), kind | mode, dev) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let (uid, gid) = (d.uid().unwrap_or(0), d.gid().unwrap_or(0));
        if libc::chown(c.as_ptr(), uid, gid) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // mknod's mode passes through the umask; the spec's is exact.
        if libc::chmod(c.as_ptr(), mode) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
