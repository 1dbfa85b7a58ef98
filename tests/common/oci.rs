//! OCI image layouts for tests that import or run images.

use std::path::Path;

use sha2::{Digest, Sha256};

/// The hex SHA-256 of `bytes`.
pub fn sha(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An OCI image layout at `dir`: `layers` as (media type, blob), the image config, and an index
/// naming the image `name` (containerd's and OCI's annotations) when given.
pub fn layout(dir: &Path, layers: &[(&str, &[u8])], config: &[u8], name: Option<&str>) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let hex = sha(bytes);
        std::fs::write(blobs.join(&hex), bytes).unwrap();
        (format!("sha256:{hex}"), bytes.len())
    };
    let layers: Vec<serde_json::Value> = layers
        .iter()
        .map(|(media_type, blob)| {
            let (digest, size) = put(blob);
            serde_json::json!({"mediaType": media_type, "digest": digest, "size": size})
        })
        .collect();
    let (cfg, sc) = put(config);
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg, "size": sc},
        "layers": layers
    });
    let (m, sm) = put(manifest.to_string().as_bytes());
    let mut entry = serde_json::json!(
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": m, "size": sm});
    if let Some(name) = name {
        entry["annotations"] = serde_json::json!({"io.containerd.image.name": name,
            "org.opencontainers.image.ref.name": name.rsplit(':').next()});
    }
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [entry]});
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}
