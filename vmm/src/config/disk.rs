//! Disk configuration: `--disk PATH[,ro][,root][,id=ID]` on the command line, or a Firecracker
//! `drives` entry in the config file.

use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// virtio-blk's GET_ID answers with at most this many bytes.
pub const MAX_ID_LEN: usize = 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskConfig {
    pub path: PathBuf,
    pub read_only: bool,
    /// Boot from it: gureum adds `root=/dev/vda` (and `ro` or `rw`) to the command line.
    pub root: bool,
    /// What the guest reads with GET_ID; defaults to `disk<N>`.
    pub id: Option<String>,
}

impl FromStr for DiskConfig {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split(',');
        let path = parts
            .next()
            .filter(|p| !p.is_empty())
            .ok_or("a disk needs a path")?;
        let mut disk = DiskConfig {
            path: path.into(),
            read_only: false,
            root: false,
            id: None,
        };
        for opt in parts {
            match opt.split_once('=') {
                None if opt == "ro" => disk.read_only = true,
                None if opt == "root" => disk.root = true,
                Some(("id", id)) if !id.is_empty() => disk.id = Some(id.to_string()),
                _ => {
                    return Err(format!(
                        "unknown disk option {opt:?} (expected ro, root or id=ID)"
                    ));
                }
            }
        }
        Ok(disk)
    }
}

/// A Firecracker `drives` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    pub drive_id: String,
    pub path_on_host: PathBuf,
    pub is_root_device: bool,
    #[serde(default)]
    pub is_read_only: bool,
}

impl From<Drive> for DiskConfig {
    fn from(d: Drive) -> Self {
        Self {
            path: d.path_on_host,
            read_only: d.is_read_only,
            root: d.is_root_device,
            id: Some(d.drive_id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_flag() {
        let d: DiskConfig = "/img/root.ext4,ro,root,id=rootfs".parse().unwrap();
        assert_eq!(
            d,
            DiskConfig {
                path: "/img/root.ext4".into(),
                read_only: true,
                root: true,
                id: Some("rootfs".into())
            }
        );
        let d: DiskConfig = "data.img".parse().unwrap();
        assert_eq!((d.read_only, d.root, d.id), (false, false, None));
        assert!(
            "".parse::<DiskConfig>()
                .unwrap_err()
                .contains("needs a path")
        );
        assert!(
            "x.img,rw"
                .parse::<DiskConfig>()
                .unwrap_err()
                .contains("\"rw\"")
        );
        assert!("x.img,id=".parse::<DiskConfig>().is_err());
    }
}
