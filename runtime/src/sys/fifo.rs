//! exec.fifo: `create` leaves a container's first host process (a native init, a sandbox's
//! monitor) blocked opening it for writing; `start` opens it for reading, which lets it go on.
//! Over rustix, so none of it needs an unsafe block.

use std::path::Path;

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::fs::{self, FileType, Gid, Mode, OFlags, Uid};

const NAME: &str = "exec.fifo";

/// How long `release` waits for the process to have written its byte.
const RELEASE_TIMEOUT: Timespec = Timespec {
    tv_sec: 10,
    tv_nsec: 0,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {0} exec.fifo")]
    Sys(&'static str, #[source] std::io::Error),
    #[error("the container's init exited during set-up")]
    InitDied,
}

fn sys(what: &'static str) -> impl FnOnce(rustix::io::Errno) -> Error {
    move |e| Error::Sys(what, e.into())
}

/// The fifo's path in a container's state directory.
pub fn path(state_dir: &Path) -> std::path::PathBuf {
    state_dir.join(NAME)
}

/// Makes exec.fifo in `state_dir` (mode 0600), owned by `owner` where given: with a user
/// namespace a native init runs as the namespace's root, whose fifo it must be (runc's rule).
pub fn make(state_dir: &Path, owner: Option<(u32, u32)>) -> Result<(), Error> {
    let fifo = path(state_dir);
    let mode = Mode::RUSR | Mode::WUSR;
    fs::mknodat(fs::CWD, &fifo, FileType::Fifo, mode, 0).map_err(sys("make"))?;
    if let Some((uid, gid)) = owner {
        let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
        fs::chown(&fifo, Some(uid), Some(gid)).map_err(sys("chown"))?;
    }
    Ok(())
}

/// Releases a created container: reads the byte its process writes once it opens the fifo,
/// then removes the fifo. A process that died before (nobody ever writes) fails in 10 s at
/// most, rather than hanging `start`.
pub fn release(state_dir: &Path) -> Result<(), Error> {
    let fifo = path(state_dir);
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = fs::open(&fifo, flags, Mode::empty()).map_err(sys("open"))?;
    let ready = poll(
        &mut [PollFd::new(&fd, PollFlags::IN)],
        Some(&RELEASE_TIMEOUT),
    );
    let mut byte = [0u8; 1];
    let read = rustix::io::read(&fd, &mut byte);
    let _ = std::fs::remove_file(&fifo);
    match (ready, read) {
        (Ok(n), Ok(1)) if n > 0 => Ok(()),
        _ => Err(Error::InitDied),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_byte_releases_and_the_fifo_is_gone() {
        let dir = std::env::temp_dir().join(format!("gureum-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        make(&dir, None).unwrap();
        let fifo = path(&dir);
        let writer = std::thread::spawn(move || std::fs::write(fifo, b"0"));
        release(&dir).unwrap();
        writer.join().unwrap().unwrap();
        assert!(!path(&dir).exists());
        std::fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn a_process_gone_without_its_byte_is_said() {
        let dir = std::env::temp_dir().join(format!("gureum-fifo-gone-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        make(&dir, None).unwrap();
        let fifo = path(&dir);
        // Opens the fifo for writing and closes it without a byte, as a process that died.
        let writer = std::thread::spawn(move || {
            std::fs::OpenOptions::new().write(true).open(fifo).map(drop)
        });
        let released = release(&dir);
        writer.join().unwrap().unwrap();
        assert!(matches!(released, Err(Error::InitDied)), "{released:?}");
        assert!(matches!(
            make(&dir.join("missing"), None),
            Err(Error::Sys("make", _))
        ));
        std::fs::remove_dir(&dir).unwrap();
    }
}
