//! The container's rootfs as an ext4 disk image for its microVM, built with `mkfs.ext4 -d` and
//! cached by content: an unchanged rootfs is not rebuilt. The image is attached read-only (many
//! sandboxes share it); the agent adds a tmpfs overlay to make it writable.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the rootfs at {0}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("cannot write the image cache {0}")]
    Cache(PathBuf, #[source] std::io::Error),
    #[error("mkfs.ext4 failed for {0}: {1}")]
    Mkfs(PathBuf, String),
    #[error("cannot run mkfs.ext4 (e2fsprogs; scripts/setup.sh installs it)")]
    NoMkfs(#[source] std::io::Error),
}

/// Hashes the tree at `root` (names, types, modes, owners, contents, link targets) and totals
/// its size in bytes.
fn digest(root: &Path) -> Result<(String, u64), Error> {
    let mut hash = Sha256::new();
    let mut total = 0u64;
    let mut todo = vec![PathBuf::new()];
    let mut buf = vec![0u8; 256 * 1024];
    while let Some(rel) = todo.pop() {
        let path = root.join(&rel);
        let read = |e| Error::Read(path.clone(), e);
        let meta = std::fs::symlink_metadata(&path).map_err(read)?;
        hash.update(rel.as_os_str().as_encoded_bytes());
        hash.update([0]);
        for n in [meta.mode(), meta.uid(), meta.gid()] {
            hash.update(n.to_le_bytes());
        }
        hash.update(meta.rdev().to_le_bytes());
        total += meta.len() + 4096;
        if meta.is_symlink() {
            let target = std::fs::read_link(&path).map_err(read)?;
            hash.update(target.as_os_str().as_encoded_bytes());
        } else if meta.is_file() {
            hash.update(meta.len().to_le_bytes());
            let mut f = std::fs::File::open(&path).map_err(read)?;
            loop {
                let n = f.read(&mut buf).map_err(read)?;
                if n == 0 {
                    break;
                }
                hash.update(&buf[..n]);
            }
        } else if meta.is_dir() {
            let mut names: Vec<_> = std::fs::read_dir(&path)
                .map_err(read)?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<Result<_, _>>()
                .map_err(read)?;
            names.sort();
            // Popped in reverse: push so the walk is in name order.
            todo.extend(names.into_iter().rev().map(|n| rel.join(n)));
        }
    }
    let hex: String = hash
        .finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((hex, total))
}

/// The cached image of `rootfs`, built if needed.
pub fn rootfs_image(rootfs: &Path, cache: &Path) -> Result<PathBuf, Error> {
    let (key, bytes) = digest(rootfs)?;
    let dir = cache.join("rootfs");
    let image = dir.join(format!("{key}.ext4"));
    if image.exists() {
        return Ok(image);
    }
    std::fs::create_dir_all(&dir).map_err(|e| Error::Cache(dir.clone(), e))?;
    let tmp = dir.join(format!("{key}.{}.tmp", std::process::id()));
    // Room for metadata and a little slack; the image is sparse.
    let mib = bytes * 5 / 4 / (1 << 20) + 32;
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-O", "^has_journal", "-d"])
        .arg(rootfs)
        .arg(&tmp)
        .arg(format!("{mib}M"))
        .output()
        .map_err(Error::NoMkfs)?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        let why = String::from_utf8_lossy(&out.stderr)
            .trim()
            .replace('\n', "; ");
        return Err(Error::Mkfs(rootfs.to_path_buf(), why));
    }
    std::fs::rename(&tmp, &image).map_err(|e| Error::Cache(image.clone(), e))?;
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_follows_content_not_time() {
        let root = std::env::temp_dir().join(format!("gureum-digest-{}", std::process::id()));
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::write(root.join("d/f"), b"one").unwrap();
        let (a, _) = digest(&root).unwrap();
        std::fs::write(root.join("d/f"), b"one").unwrap();
        assert_eq!(
            digest(&root).unwrap().0,
            a,
            "rewriting the same bytes changed the key"
        );
        std::fs::write(root.join("d/f"), b"two").unwrap();
        assert_ne!(digest(&root).unwrap().0, a);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
