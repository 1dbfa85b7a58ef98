//! vsock configuration: `--vsock cid=N,uds=PATH`, or Firecracker's `vsock` section.

use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockConfig {
    /// The guest's context id: 3 or more (0-2 are reserved).
    pub cid: u32,
    /// The host side: a Unix socket gureum listens on; guest connections to port P go to
    /// `PATH_P`.
    pub uds: PathBuf,
}

impl FromStr for VsockConfig {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (mut cid, mut uds) = (None, None);
        for opt in s.split(',') {
            match opt.split_once('=') {
                Some(("cid", n)) => {
                    cid = Some(
                        n.parse::<u32>()
                            .map_err(|_| format!("bad vsock cid {n:?}"))?,
                    )
                }
                Some(("uds", p)) if !p.is_empty() => uds = Some(PathBuf::from(p)),
                _ => {
                    return Err(format!(
                        "unknown vsock option {opt:?} (expected cid=N or uds=PATH)"
                    ));
                }
            }
        }
        let cid = cid.ok_or("vsock needs cid=N")?;
        if cid < 3 {
            return Err(format!("vsock cid {cid} is reserved; use 3 or more"));
        }
        Ok(Self {
            cid,
            uds: uds.ok_or("vsock needs uds=PATH")?,
        })
    }
}

/// Firecracker's `vsock` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirecrackerVsock {
    pub guest_cid: u32,
    pub uds_path: PathBuf,
    /// Accepted for compatibility (deprecated in Firecracker); unused.
    #[serde(default, rename = "vsock_id")]
    pub _vsock_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_flag() {
        let v: VsockConfig = "cid=3,uds=/tmp/v.sock".parse().unwrap();
        assert_eq!(
            v,
            VsockConfig {
                cid: 3,
                uds: "/tmp/v.sock".into()
            }
        );
        assert!(
            "cid=2,uds=/x"
                .parse::<VsockConfig>()
                .unwrap_err()
                .contains("reserved")
        );
        assert!(
            "uds=/x"
                .parse::<VsockConfig>()
                .unwrap_err()
                .contains("cid=N")
        );
        assert!(
            "cid=3"
                .parse::<VsockConfig>()
                .unwrap_err()
                .contains("uds=PATH")
        );
        assert!(
            "cid=x,uds=/x"
                .parse::<VsockConfig>()
                .unwrap_err()
                .contains("bad vsock cid")
        );
    }
}
