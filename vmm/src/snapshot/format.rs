//! The snapshot file: a fixed header, then the VM's state as JSON.
//!
//! ```text
//! offset  size  what
//!      0    16  magic "GUREUM-SNAPSHOT\n"
//!     16     4  format version, little-endian (FORMAT_VERSION)
//!     20     8  length of the state, little-endian
//!     28     4  CRC-32 (IEEE) of the state
//!     32     …  the state: a `Snapshot`, as JSON
//! ```
//!
//! Guest memory is a file of its own (`mem_file_path`), each region at the offset the state
//! names, so a restore maps it privately and lazily. A file that is not a snapshot, of another
//! format version, cut short or changed is refused before anything is built.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::arch::x86_64::state::{VcpuState, VmState};
use crate::config::VmConfig;
use gureum_devices::legacy::{I8042Snapshot, SerialSnapshot};
use gureum_devices::virtio::state::TransportSnapshot;

pub const MAGIC: &[u8; 16] = b"GUREUM-SNAPSHOT\n";
/// Bumped whenever `Snapshot` changes in a way an older gureum cannot read.
pub const FORMAT_VERSION: u32 = 1;
const HEADER: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the snapshot {0}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("cannot write the snapshot {0}")]
    Write(PathBuf, #[source] std::io::Error),
    #[error("{0} is not a gureum snapshot")]
    NotASnapshot(PathBuf),
    #[error("{path} is a snapshot of format {found}; this gureum reads format {FORMAT_VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("{path} is cut short: its state is {have} of {want} bytes")]
    Truncated { path: PathBuf, have: u64, want: u64 },
    #[error("{0} is corrupt: its state does not match its checksum")]
    Corrupt(PathBuf),
    #[error("{0}: the state cannot be read")]
    Parse(PathBuf, #[source] serde_json::Error),
}

/// Where one region of guest memory is in the memory file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryRegion {
    pub guest_addr: u64,
    pub len: u64,
    pub file_offset: u64,
}

/// Everything a restore needs but guest memory.
#[derive(Debug, Serialize, Deserialize)]
pub struct Snapshot {
    /// The gureum that made it (for people; the format version decides).
    pub gureum_version: String,
    /// A digest of the CPUID the vCPUs were given: a restore on a host that would give
    /// another is refused, since the guest has already read it.
    pub cpuid_digest: String,
    pub config: VmConfig,
    pub memory: Vec<MemoryRegion>,
    pub vm: VmState,
    pub vcpus: Vec<VcpuState>,
    pub serial: SerialSnapshot,
    /// The i8042 (absent in files made before it had state: a restore then starts it fresh).
    #[serde(default)]
    pub i8042: Option<I8042Snapshot>,
    /// Each virtio device's transport and queues, in the order of the config's devices.
    pub devices: Vec<TransportSnapshot>,
}

pub fn write(path: &Path, snapshot: &Snapshot) -> Result<(), Error> {
    let fail = |e| Error::Write(path.to_path_buf(), e);
    let state = serde_json::to_vec(snapshot).map_err(|e| fail(e.into()))?;
    let mut out = Vec::with_capacity(HEADER + state.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(state.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&state).to_le_bytes());
    out.extend_from_slice(&state);
    let mut file = std::fs::File::create(path).map_err(fail)?;
    file.write_all(&out).map_err(fail)
}

pub fn read(path: &Path) -> Result<Snapshot, Error> {
    let bytes = std::fs::read(path).map_err(|e| Error::Read(path.to_path_buf(), e))?;
    decode(path, &bytes)
}

fn decode(path: &Path, bytes: &[u8]) -> Result<Snapshot, Error> {
    let owned = || path.to_path_buf();
    let field = |at: usize, len: usize| bytes.get(at..at + len);
    if field(0, MAGIC.len()) != Some(MAGIC) {
        return Err(Error::NotASnapshot(owned()));
    }
    let le4 = |at| field(at, 4).and_then(|b| <[u8; 4]>::try_from(b).ok());
    let le8 = field(20, 8).and_then(|b| <[u8; 8]>::try_from(b).ok());
    let (Some(version), Some(len), Some(crc)) = (le4(16), le8, le4(28)) else {
        return Err(Error::Truncated {
            path: owned(),
            have: 0,
            want: HEADER as u64,
        });
    };
    let found = u32::from_le_bytes(version);
    if found != FORMAT_VERSION {
        return Err(Error::Version {
            path: owned(),
            found,
        });
    }
    let want = u64::from_le_bytes(len);
    let state = &bytes[HEADER..];
    if (state.len() as u64) < want {
        return Err(Error::Truncated {
            path: owned(),
            have: state.len() as u64,
            want,
        });
    }
    let state = &state[..usize::try_from(want).unwrap_or(usize::MAX)];
    if crc32fast::hash(state) != u32::from_le_bytes(crc) {
        return Err(Error::Corrupt(owned()));
    }
    serde_json::from_slice(state).map_err(|e| Error::Parse(owned(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(state: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(state.len() as u64).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(state).to_le_bytes());
        out.extend_from_slice(state);
        out
    }

    fn refusal(bytes: &[u8]) -> String {
        match decode(Path::new("s"), bytes) {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn foreign_truncated_corrupt_and_future_files_are_refused_in_one_line() {
        let good = encoded(b"{\"not\": \"a snapshot\"}");
        assert_eq!(refusal(b"ELF\x7f and so on"), "s is not a gureum snapshot");
        assert_eq!(refusal(b""), "s is not a gureum snapshot");
        assert!(refusal(&good[..20]).starts_with("s is cut short"));
        assert_eq!(
            refusal(&good[..good.len() - 3]),
            "s is cut short: its state is 18 of 21 bytes"
        );
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(
            refusal(&flipped),
            "s is corrupt: its state does not match its checksum"
        );
        let mut future = good.clone();
        future[16] = 9;
        assert_eq!(
            refusal(&future),
            "s is a snapshot of format 9; this gureum reads format 1"
        );
        // Whole and intact, but not a VM's state.
        assert!(refusal(&good).starts_with("s: the state cannot be read"));
    }
}
