//! A sandbox's bind mounts (config.json `mounts` of type bind, as podman's /etc/hosts,
//! /etc/resolv.conf or `--init`'s binary): its guest cannot see this host's files, so at create
//! each source is copied onto a small disk of the container's own, which the agent mounts and
//! binds at each destination, read-only (a write fails there; none is lost). A read-write bind
//! of a directory (a volume, meant to be written) is refused; one at /dev/shm (podman's shared
//! memory) is left to the guest's own /dev/shm.

use std::path::{Path, PathBuf};
use std::process::Command;

use gureum_process::protocol::Binds;

use super::image;
use crate::bundle::Bundle;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "mounts: {0} is a read-write bind of a directory; a microVM sandbox can only copy it \
         in, and what the container wrote there would be lost: mount it read-only (ro) or use \
         --isolation native"
    )]
    WritableDir(PathBuf),
    #[error("mounts: cannot copy {0} into the sandbox: {1}")]
    Copy(PathBuf, String),
    #[error("mounts: {0}")]
    Stage(PathBuf, #[source] std::io::Error),
    #[error(transparent)]
    Image(#[from] image::Error),
}

/// The bind mounts of `bundle`: (source on this host, destination, read-only).
fn binds(bundle: &Bundle) -> Vec<(PathBuf, String, bool)> {
    let mounts = bundle.spec.mounts().iter().flatten();
    mounts
        .filter_map(|m| {
            let options = m.options().clone().unwrap_or_default();
            let bind = m.typ().as_deref() == Some("bind")
                || options.iter().any(|o| o == "bind" || o == "rbind");
            let source = m.source().as_ref().filter(|_| bind)?;
            // Shared memory cannot cross into a VM: the guest's own tmpfs is there instead.
            if m.destination() == Path::new("/dev/shm") {
                return None;
            }
            let readonly = options.iter().any(|o| o == "ro");
            let destination = m.destination().to_string_lossy().into_owned();
            Some((bundle.dir.join(source), destination, readonly))
        })
        .collect()
}

/// Copies the bind mounts' sources into `dir/binds.ext4`; None when there are none.
pub fn stage(bundle: &Bundle, dir: &Path) -> Result<Option<(PathBuf, Vec<String>)>, Error> {
    let binds = binds(bundle);
    if binds.is_empty() {
        return Ok(None);
    }
    let tree = dir.join("binds");
    std::fs::create_dir_all(&tree).map_err(|e| Error::Stage(tree.clone(), e))?;
    let mut destinations = Vec::new();
    for (i, (source, destination, readonly)) in binds.into_iter().enumerate() {
        if !readonly && source.is_dir() {
            return Err(Error::WritableDir(source));
        }
        // -H: a symlink named as the source is followed, as a bind mount does.
        let out = Command::new("cp")
            .args(["-a", "-H", "--"])
            .arg(&source)
            .arg(tree.join(i.to_string()))
            .output()
            .map_err(|e| Error::Stage(source.clone(), e))?;
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr)
                .trim()
                .replace('\n', "; ");
            return Err(Error::Copy(source, why));
        }
        destinations.push(destination);
    }
    let image = dir.join("binds.ext4");
    let built = image::image_of(&tree, &image);
    let _ = std::fs::remove_dir_all(&tree);
    built?;
    Ok(Some((image, destinations)))
}

/// What the agent is told: the disk is the guest's second (after the root's /dev/vda).
pub fn for_agent(destinations: Vec<String>) -> Binds {
    Binds {
        device: "/dev/vdb".into(),
        destinations,
    }
}
