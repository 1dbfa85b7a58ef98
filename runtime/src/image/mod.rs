//! OCI images: an image layout directory (oci-layout, index.json, blobs/) or a `docker save`
//! tarball (manifest.json, or an OCI layout inside). Every blob is checked against its digest,
//! layers are unpacked once into a cache keyed by digest (whiteouts turned into overlayfs
//! whiteouts), and a container's rootfs is an overlay of them with its own upper directory.

pub mod bundle;
mod layer;

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} is not an OCI image layout or a docker save tarball")]
    NotAnImage(PathBuf),
    #[error("corrupt image: cannot read {0}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("corrupt image: {0} is not valid JSON")]
    Json(PathBuf, #[source] serde_json::Error),
    #[error("corrupt image: {what} has digest sha256:{actual}, the image says {expected}")]
    Digest {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("corrupt image: {0}")]
    Layout(String),
    #[error("unsupported layer media type {0}")]
    MediaType(String),
    #[error("cannot unpack layer {0}")]
    Unpack(String, #[source] std::io::Error),
    #[error("cannot write the layer cache {0}")]
    Cache(PathBuf, #[source] std::io::Error),
}

/// What the image's config says to run.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
}

#[derive(Deserialize)]
struct ImageConfig {
    #[serde(default)]
    config: RunConfig,
    rootfs: RootFs,
}

#[derive(Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Manifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    layers: Vec<String>,
}

/// An opened image: its run config and its unpacked layers, bottom first.
#[derive(Debug)]
pub struct Image {
    pub config: RunConfig,
    pub layers: Vec<PathBuf>,
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| Error::Read(path.to_path_buf(), e))
}

fn json<T: for<'de> Deserialize<'de>>(path: &Path, bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|e| Error::Json(path.to_path_buf(), e))
}

/// sha256 of a file, streamed.
fn sha256_file(path: &Path) -> Result<String, Error> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::Read(path.to_path_buf(), e))?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| Error::Read(path.to_path_buf(), e))?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    Ok(hash.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// `sha256:HEX` → HEX, refusing anything that could be a path.
fn hex_of(digest: &str) -> Result<&str, Error> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| Error::Layout(format!("unsupported digest {digest:?}")))
}

fn verify(path: &Path, expected: &str, what: &str) -> Result<(), Error> {
    let actual = sha256_file(path)?;
    if hex_of(expected)? != actual {
        return Err(Error::Digest {
            what: what.to_string(),
            expected: expected.to_string(),
            actual,
        });
    }
    Ok(())
}

/// A blob of an OCI layout, checked against its digest.
fn blob(root: &Path, digest: &str) -> Result<PathBuf, Error> {
    let path = root.join("blobs/sha256").join(hex_of(digest)?);
    verify(&path, digest, &format!("blob {digest}"))?;
    Ok(path)
}

/// Opens the image at `path`, unpacking its layers into `cache/layers` as needed.
pub fn open(path: &Path, cache: &Path) -> Result<Image, Error> {
    if path.is_dir() {
        return open_dir(path, cache);
    }
    if !path.is_file() {
        return Err(Error::NotAnImage(path.to_path_buf()));
    }
    // A tarball: unpack it beside the cache, read it as a directory, remove it.
    let tmp = cache.join(format!("tmp/image-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::Cache(tmp.clone(), e))?;
    let result = std::fs::File::open(path)
        .and_then(|f| tar::Archive::new(f).unpack(&tmp))
        .map_err(|_| Error::NotAnImage(path.to_path_buf()))
        .and_then(|()| open_dir(&tmp, cache));
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

fn open_dir(root: &Path, cache: &Path) -> Result<Image, Error> {
    let docker = root.join("manifest.json");
    let index = root.join("index.json");
    let (config_path, layers) = if docker.is_file() {
        docker_layout(root, &docker)?
    } else if index.is_file() {
        oci_layout(root, &index)?
    } else {
        return Err(Error::NotAnImage(root.to_path_buf()));
    };
    let config: ImageConfig = json(&config_path, &read(&config_path)?)?;
    if config.rootfs.diff_ids.len() != layers.len() {
        return Err(Error::Layout(format!(
            "{} layers but {} diff_ids",
            layers.len(),
            config.rootfs.diff_ids.len()
        )));
    }
    let mut unpacked = Vec::new();
    for ((media_type, path), diff_id) in layers.iter().zip(&config.rootfs.diff_ids) {
        unpacked.push(layer::unpack_cached(path, media_type, diff_id, cache)?);
    }
    Ok(Image {
        config: config.config,
        layers: unpacked,
    })
}

/// The config and layer blobs (media type, path) an image names.
type Parts = (PathBuf, Vec<(String, PathBuf)>);

/// `docker save`'s layout: manifest.json names the config and the layer tars by path.
fn docker_layout(root: &Path, docker: &Path) -> Result<Parts, Error> {
    let entries: Vec<DockerEntry> = json(docker, &read(docker)?)?;
    let entry = entries
        .into_iter()
        .next()
        .ok_or_else(|| Error::Layout("manifest.json lists no image".into()))?;
    let config = root.join(safe_rel(&entry.config)?);
    let layers: Vec<(String, PathBuf)> = entry
        .layers
        .iter()
        .map(|l| Ok((String::new(), root.join(safe_rel(l)?))))
        .collect::<Result<_, Error>>()?;
    // docker save's layers are plain tars named by path: check each against its diff_id
    // even when the cache already holds it.
    let doc: ImageConfig = json(&config, &read(&config)?)?;
    for ((_, path), diff_id) in layers.iter().zip(&doc.rootfs.diff_ids) {
        verify(path, diff_id, &format!("layer {}", path.display()))?;
    }
    Ok((config, layers))
}

/// An OCI image layout: index.json → manifest → config and layers, all by digest.
fn oci_layout(root: &Path, index: &Path) -> Result<Parts, Error> {
    let index_doc: Index = json(index, &read(index)?)?;
    let first = index_doc
        .manifests
        .first()
        .ok_or_else(|| Error::Layout("index.json lists no manifest".into()))?;
    let mut manifest_path = blob(root, &first.digest)?;
    let mut manifest_bytes = read(&manifest_path)?;
    // A nested index (multi-platform): take its first manifest.
    if let Ok(nested) = serde_json::from_slice::<Index>(&manifest_bytes) {
        let m = nested
            .manifests
            .first()
            .ok_or_else(|| Error::Layout("empty nested index".into()))?;
        manifest_path = blob(root, &m.digest)?;
        manifest_bytes = read(&manifest_path)?;
    }
    let manifest: Manifest = json(&manifest_path, &manifest_bytes)?;
    let config = blob(root, &manifest.config.digest)?;
    let layers = manifest
        .layers
        .iter()
        .map(|l| Ok((l.media_type.clone(), blob(root, &l.digest)?)))
        .collect::<Result<_, Error>>()?;
    Ok((config, layers))
}

/// A relative path inside the image that cannot climb out of it.
fn safe_rel(p: &str) -> Result<&Path, Error> {
    let path = Path::new(p);
    let ok = path
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    if ok {
        Ok(path)
    } else {
        Err(Error::Layout(format!("bad path {p:?} in manifest.json")))
    }
}
