//! The container's rootfs as an ext4 disk image for its microVM, built with `mkfs.ext4 -d` and
//! cached by content: an unchanged rootfs is not rebuilt, nor, once seen, even read again. The image is attached read-only (many
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

/// Visits every entry under `root` (`root` itself first, as ""), in name order, with its path
/// relative to `root`, its full path and its metadata (not following symlinks).
fn walk(
    root: &Path,
    mut visit: impl FnMut(&Path, &Path, &std::fs::Metadata) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let path = root.join(&rel);
        let read = |e| Error::Read(path.clone(), e);
        let meta = std::fs::symlink_metadata(&path).map_err(read)?;
        visit(&rel, &path, &meta)?;
        if meta.is_dir() {
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
    Ok(())
}

/// What both keys hash of an entry: its name, type and mode, owners and device number.
fn hash_entry(hash: &mut Sha256, rel: &Path, meta: &std::fs::Metadata) {
    hash.update(rel.as_os_str().as_encoded_bytes());
    hash.update([0]);
    for n in [meta.mode(), meta.uid(), meta.gid()] {
        hash.update(n.to_le_bytes());
    }
    hash.update(meta.rdev().to_le_bytes());
}

fn hex(hash: Sha256) -> String {
    hash.finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Hashes the tree at `root` (names, types, modes, owners, contents, link targets) and totals
/// its size in bytes.
fn digest(root: &Path) -> Result<(String, u64), Error> {
    let mut hash = Sha256::new();
    let mut total = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    walk(root, |rel, path, meta| {
        let read = |e| Error::Read(path.to_path_buf(), e);
        hash_entry(&mut hash, rel, meta);
        total += meta.len() + 4096;
        if meta.is_symlink() {
            let target = std::fs::read_link(path).map_err(read)?;
            hash.update(target.as_os_str().as_encoded_bytes());
        } else if meta.is_file() {
            hash.update(meta.len().to_le_bytes());
            let mut f = std::fs::File::open(path).map_err(read)?;
            loop {
                let n = f.read(&mut buf).map_err(read)?;
                if n == 0 {
                    break;
                }
                hash.update(&buf[..n]);
            }
        }
        Ok(())
    })?;
    Ok((hex(hash), total))
}

/// Hashes what `stat` says of every entry under `root` (names, types, modes, owners, sizes,
/// inode numbers, modification and change times to the nanosecond), without reading contents.
/// Any write changes a file's ctime, which no one can set back, so an equal fingerprint means
/// an unchanged tree (git's index relies on the same).
fn fingerprint(root: &Path) -> Result<String, Error> {
    let mut hash = Sha256::new();
    hash.update(root.as_os_str().as_encoded_bytes());
    walk(root, |rel, _, meta| {
        hash_entry(&mut hash, rel, meta);
        for n in [meta.len(), meta.ino(), meta.dev()] {
            hash.update(n.to_le_bytes());
        }
        for n in [
            meta.mtime(),
            meta.mtime_nsec(),
            meta.ctime(),
            meta.ctime_nsec(),
        ] {
            hash.update(n.to_le_bytes());
        }
        Ok(())
    })?;
    Ok(hex(hash))
}

/// The cached image of `rootfs`, built if needed. A tree seen before unchanged (same
/// [`fingerprint`]) is not even read: its content key comes from the index.
pub fn rootfs_image(rootfs: &Path, cache: &Path) -> Result<PathBuf, Error> {
    let dir = cache.join("rootfs");
    let seen = fingerprint(rootfs)?;
    let index = dir.join("seen").join(&seen);
    if let Some(image) = known(&dir, &index) {
        return Ok(image);
    }
    // One builder per tree: sandboxes of one bundle started at once wait for the first, then
    // find its entry, instead of each hashing the tree and running mkfs.
    let locks = dir.join("lock");
    std::fs::create_dir_all(&locks).map_err(|e| Error::Cache(locks.clone(), e))?;
    let _builder = lock(&locks.join(&seen))?;
    if let Some(image) = known(&dir, &index) {
        return Ok(image);
    }
    let (key, bytes) = digest(rootfs)?;
    let image = dir.join(format!("{key}.ext4"));
    if !image.exists() {
        build(rootfs, &dir, &key, bytes)?;
    }
    // Best effort: without the index entry the next start just reads the tree again.
    if std::fs::create_dir_all(dir.join("seen")).is_ok() {
        let tmp = index.with_extension(format!("{}.tmp", std::process::id()));
        if std::fs::write(&tmp, &key).is_ok() {
            let _ = std::fs::rename(&tmp, &index);
        }
    }
    Ok(image)
}

/// The image the index entry `index` names, if it exists.
fn known(dir: &Path, index: &Path) -> Option<PathBuf> {
    let key = std::fs::read_to_string(index).ok()?;
    let image = dir.join(format!("{}.ext4", key.trim()));
    image.exists().then_some(image)
}

/// An exclusive lock on `path` (created if need be), held while the file stays open.
pub(super) fn lock(path: &Path) -> Result<std::fs::File, Error> {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| Error::Cache(path.to_path_buf(), e))?;
    // SAFETY: flock on a descriptor we own; it blocks until the lock is ours.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(Error::Cache(
            path.to_path_buf(),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(file)
}

/// Builds `dir/KEY.ext4` from `rootfs` (`bytes` of content).
fn build(rootfs: &Path, dir: &Path, key: &str, bytes: u64) -> Result<(), Error> {
    let image = dir.join(format!("{key}.ext4"));
    std::fs::create_dir_all(dir).map_err(|e| Error::Cache(dir.to_path_buf(), e))?;
    let tmp = dir.join(format!("{key}.{}.tmp", std::process::id()));
    mkfs(rootfs, &tmp, bytes)?;
    std::fs::rename(&tmp, &image).map_err(|e| Error::Cache(image.clone(), e))
}

/// An image of `tree` at `image`, not cached (a container's own files).
pub fn image_of(tree: &Path, image: &Path) -> Result<(), Error> {
    let mut bytes = 0;
    walk(tree, |_, _, meta| {
        bytes += meta.len() + 4096;
        Ok(())
    })?;
    mkfs(tree, image, bytes)
}

/// mkfs.ext4 of `tree` (`bytes` of content) at `image`.
fn mkfs(tree: &Path, image: &Path, bytes: u64) -> Result<(), Error> {
    // Room for metadata and a little slack; the image is sparse.
    let mib = bytes * 5 / 4 / (1 << 20) + 32;
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-O", "^has_journal", "-d"])
        .arg(tree)
        .arg(image)
        .arg(format!("{mib}M"))
        .output()
        .map_err(Error::NoMkfs)?;
    if !out.status.success() {
        let _ = std::fs::remove_file(image);
        let why = String::from_utf8_lossy(&out.stderr)
            .trim()
            .replace('\n', "; ");
        return Err(Error::Mkfs(tree.to_path_buf(), why));
    }
    Ok(())
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

    #[test]
    fn an_unchanged_tree_is_not_read_again_and_a_changed_one_is() {
        let base = std::env::temp_dir().join(format!("gureum-seen-{}", std::process::id()));
        let (root, cache) = (base.join("root"), base.join("cache"));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("f"), b"one").unwrap();
        let first = rootfs_image(&root, &cache).unwrap();
        let seen: Vec<_> = std::fs::read_dir(cache.join("rootfs/seen"))
            .unwrap()
            .collect();
        assert_eq!(seen.len(), 1);
        assert_eq!(fingerprint(&root).unwrap(), fingerprint(&root).unwrap());
        assert_eq!(rootfs_image(&root, &cache).unwrap(), first);
        // Same size, new bytes: the fingerprint changes (ctime), so the content is read again.
        std::fs::write(root.join("f"), b"two").unwrap();
        let second = rootfs_image(&root, &cache).unwrap();
        assert_ne!(second, first);
        std::fs::remove_dir_all(&base).unwrap();
    }
}
