//! One image layer unpacked into the cache, keyed by its uncompressed digest (diff_id), which
//! is checked while unpacking. OCI whiteouts become overlayfs's: `.wh.NAME` a 0/0 character
//! device, `.wh..wh..opq` the opaque xattr on its directory.

use std::io::{Read, Seek};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{Error, hex_of};
use crate::sys::path_c;

struct Hashing<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// The unpacked directory of the layer blob at `path`.
pub fn unpack_cached(
    path: &Path,
    media_type: &str,
    diff_id: &str,
    cache: &Path,
) -> Result<PathBuf, Error> {
    let key = hex_of(diff_id)?;
    let dir = cache.join("layers");
    let dest = dir.join(key);
    if dest.is_dir() {
        return Ok(dest);
    }
    if media_type.contains("zstd") {
        return Err(Error::MediaType(media_type.to_string()));
    }
    let tmp = dir.join(format!("{key}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::Cache(tmp.clone(), e))?;
    let result = unpack(path, &tmp).and_then(|actual| {
        if actual == key {
            Ok(())
        } else {
            Err(Error::Digest {
                what: format!("layer {}", path.display()),
                expected: diff_id.to_string(),
                actual,
            })
        }
    });
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    match std::fs::rename(&tmp, &dest) {
        // Another run cached it meanwhile: theirs is as good.
        Err(_) if dest.is_dir() => {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        other => other.map_err(|e| Error::Cache(dest.clone(), e))?,
    }
    Ok(dest)
}

/// Unpacks a (possibly gzip-compressed) layer tar into `dest`; returns the sha256 of the tar.
fn unpack(path: &Path, dest: &Path) -> Result<String, Error> {
    let fail = |e| Error::Unpack(path.display().to_string(), e);
    let mut file = std::fs::File::open(path).map_err(fail)?;
    let mut magic = [0u8; 2];
    let gzip = file.read(&mut magic).map_err(fail)? == 2 && magic == [0x1f, 0x8b];
    file.rewind().map_err(fail)?;
    let reader: Box<dyn Read> = if gzip {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut hashing = Hashing {
        inner: reader,
        hash: Sha256::new(),
    };
    {
        let mut archive = tar::Archive::new(&mut hashing);
        archive.set_preserve_permissions(true);
        archive.set_preserve_ownerships(true);
        archive.set_overwrite(true);
        for entry in archive.entries().map_err(fail)? {
            let mut entry = entry.map_err(fail)?;
            let rel = entry.path().map_err(fail)?.into_owned();
            let name = rel
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if let Some(hidden) = name.strip_prefix(".wh.") {
                let parent = super::super::native::mounts::secure_join(
                    dest,
                    rel.parent().unwrap_or(Path::new("")),
                );
                std::fs::create_dir_all(&parent).map_err(fail)?;
                if hidden == ".wh..opq" {
                    opaque(&parent).map_err(fail)?;
                } else {
                    whiteout(&parent.join(hidden)).map_err(fail)?;
                }
                continue;
            }
            entry.unpack_in(dest).map_err(fail)?;
        }
    }
    // Whatever follows the archive's end still counts for the digest.
    std::io::copy(&mut hashing, &mut std::io::sink()).map_err(fail)?;
    Ok(hashing
        .hash
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn whiteout(path: &Path) -> std::io::Result<()> {
    let c = path_c(path)?;
    // SAFETY: mknod with a NUL-terminated path: a 0/0 character device, overlayfs's whiteout.
    if unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn opaque(dir: &Path) -> std::io::Result<()> {
    let c = path_c(dir)?;
    // SAFETY: setxattr with a NUL-terminated path and name and a 1-byte value.
    let rc = unsafe {
        libc::setxattr(
            c.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            b"y".as_ptr().cast(),
            1,
            0,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
