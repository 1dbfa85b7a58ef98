//! A sandbox's network: its guest has loopback only (no network device is passed in yet). A
//! network namespace the config joins by path (podman's and Docker's default networks) whose
//! interfaces the container would expect to use is refused in one line, not dropped silently.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "linux.namespaces: the network namespace {path} has {interfaces}, which a microVM \
         sandbox cannot pass to its guest yet (the guest has loopback only): run it without a \
         network (podman or docker --network none) or use --isolation native"
    )]
    Interfaces { path: PathBuf, interfaces: String },
    #[error("linux.namespaces: cannot look into the network namespace {0}")]
    Look(PathBuf, #[source] std::io::Error),
}

/// Refuses the network namespace at `path` if it has an interface besides loopback.
pub fn check(path: &Path) -> Result<(), Error> {
    let interfaces = interfaces(path).map_err(|e| Error::Look(path.to_path_buf(), e))?;
    if interfaces.is_empty() {
        return Ok(());
    }
    Err(Error::Interfaces {
        path: path.to_path_buf(),
        interfaces: interfaces.join(", "),
    })
}

/// The interfaces of the network namespace at `path`, but `lo`: read by a thread of ours that
/// joins it (a namespace is per thread; the thread ends with it).
fn interfaces(path: &Path) -> std::io::Result<Vec<String>> {
    let ns = std::fs::File::open(path)?;
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        // SAFETY: setns of this short-lived thread only, on a descriptor we own.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let dev = std::fs::read_to_string("/proc/thread-self/net/dev")?;
        let mut names: Vec<String> = (dev.lines().skip(2))
            .filter_map(|l| l.split(':').next())
            .map(|n| n.trim().to_string())
            .filter(|n| n != "lo")
            .collect();
        names.sort();
        Ok(names)
    })
    .join()
    .unwrap_or_else(|_| Err(std::io::Error::other("the namespace reader panicked")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_host_s_namespace_has_interfaces_and_a_new_one_has_none() {
        let own = std::path::Path::new("/proc/self/ns/net");
        let ours = super::interfaces(own).unwrap();
        let dev = std::fs::read_to_string("/proc/self/net/dev").unwrap();
        assert_eq!(ours.len(), dev.lines().count() - 3, "{ours:?}\n{dev}");
        let new = std::process::Command::new("unshare")
            .args(["--net", "sleep", "5"])
            .spawn()
            .unwrap();
        let path = format!("/proc/{}/ns/net", new.id());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        // Until unshare has made its namespace and exec'd sleep.
        while std::fs::read_link(&path).ok() == std::fs::read_link(own).ok() {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let result = super::check(std::path::Path::new(&path));
        let mut new = new;
        let _ = new.kill();
        let _ = new.wait();
        assert!(result.is_ok(), "{result:?}");
    }
}
