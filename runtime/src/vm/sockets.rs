//! Where a sandbox's vsock device has its Unix socket (and the `_PORT` listeners beside it).

use std::path::{Path, PathBuf};

/// The vsock device's Unix socket: `vsock.sock` in the container's state directory, or, where
/// that path (with the `_PORT` suffix of a listener's) would not fit a socket address (a
/// client's long state root, as Docker's), a short one named by the directory's hash.
pub fn vsock(dir: &Path) -> PathBuf {
    let path = dir.join("vsock.sock");
    // sun_path's 108 bytes, with a NUL and "_65535" to spare.
    if path.as_os_str().len() < 108 - 7 {
        return path;
    }
    use sha2::Digest;
    let hash = sha2::Sha256::digest(dir.as_os_str().as_encoded_bytes());
    let name: String = hash.iter().take(8).map(|b| format!("{b:02x}")).collect();
    Path::new(SHORT_SOCKETS).join(format!("{name}.sock"))
}

/// Where the vsock sockets of long state directories are.
const SHORT_SOCKETS: &str = "/run/gureum-vsock";

/// Removes the sockets [`vsock`] put outside the state directory `dir`, if any.
pub fn remove(dir: &Path) {
    let path = vsock(dir);
    if !path.starts_with(dir) {
        let prefix = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let entries = std::fs::read_dir(SHORT_SOCKETS)
            .into_iter()
            .flatten()
            .flatten();
        for entry in entries {
            if prefix
                .as_deref()
                .is_some_and(|p| entry.file_name().to_string_lossy().starts_with(p))
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_long_state_directory_gets_a_short_vsock_socket() {
        let short = std::path::Path::new("/run/gureum/c1");
        assert_eq!(super::vsock(short), short.join("vsock.sock"));
        // Docker's: its exec root, the runtime's name, its namespace, a 64-character id.
        let long = std::path::PathBuf::from("/tmp/d/exec/runtime-runc/moby").join("a".repeat(64));
        let socket = super::vsock(&long);
        assert!(
            socket.starts_with(super::SHORT_SOCKETS),
            "{}",
            socket.display()
        );
        assert!(format!("{}_65535", socket.display()).len() < 108);
        assert_ne!(super::vsock(&long.with_file_name("b".repeat(64))), socket);
    }
}
