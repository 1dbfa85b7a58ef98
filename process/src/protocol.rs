//! The agent protocol: frames over any byte stream (vsock in a VM, a Unix socket natively, a
//! console under emulation). A frame is one kind byte, a 4-byte little-endian length, and that
//! many payload bytes, so stdio passes through binary-safe.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// The largest payload a frame may carry.
pub const MAX_FRAME: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// host → agent: a JSON [`RunSpec`].
    Run = 1,
    /// host → agent: bytes for the process's stdin.
    Stdin = 2,
    /// host → agent: end of stdin.
    StdinEof = 3,
    /// host → agent: a signal number (4 bytes) for the process.
    Signal = 4,
    /// host → agent: the terminal's new size, rows and columns (2 bytes each, little-endian).
    Resize = 5,
    /// host → agent, instead of a run request: a signal number (4 bytes) for every process of
    /// the guest but the agent (`kill --all`); the agent answers with an Exit frame of 0.
    SignalAll = 6,
    /// agent → host: the process started; its pid (4 bytes).
    Started = 10,
    Stdout = 11,
    Stderr = 12,
    /// agent → host: the exit status as a shell reports it (4 bytes): the code, or 128+signal.
    Exit = 13,
    /// agent → host: why the process could not run (UTF-8), followed by an Exit frame.
    Error = 14,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Run,
            2 => Self::Stdin,
            3 => Self::StdinEof,
            4 => Self::Signal,
            5 => Self::Resize,
            6 => Self::SignalAll,
            10 => Self::Started,
            11 => Self::Stdout,
            12 => Self::Stderr,
            13 => Self::Exit,
            14 => Self::Error,
            _ => return None,
        })
    }
}

/// What to run, as the OCI runtime spec's `process` says it (the parts the agent applies).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSpec {
    pub args: Vec<String>,
    /// KEY=VALUE entries; the process sees only these.
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    /// A block device holding the container's root filesystem (ext4), mounted and chrooted
    /// into before the process starts; None runs in the agent's own root.
    #[serde(default)]
    pub root: Option<String>,
    #[serde(default)]
    pub readonly: bool,
    #[serde(default)]
    pub additional_gids: Vec<u32>,
    /// (resource as the OCI spec names it, e.g. RLIMIT_NOFILE; soft; hard)
    #[serde(default)]
    pub rlimits: Vec<(String, u64, u64)>,
    #[serde(default)]
    pub no_new_privileges: bool,
    /// The process gets a terminal: a pty is its stdin, stdout and stderr (all output comes
    /// as Stdout frames).
    #[serde(default)]
    pub terminal: bool,
    /// The terminal's size at the start: (rows, columns).
    #[serde(default)]
    pub winsize: Option<(u16, u16)>,
    /// The hostname to set (the whole guest is the container's, so the agent sets it).
    #[serde(default)]
    pub hostname: Option<String>,
    /// The capability sets; None leaves the runtime's own (as runc does without
    /// `process.capabilities`).
    #[serde(default)]
    pub capabilities: Option<crate::security::Caps>,
    /// Kernel parameters to set (`linux.sysctl`: key as sysctl names it, value), before the
    /// process starts.
    #[serde(default)]
    pub sysctl: Vec<(String, String)>,
    /// Seccomp filters compiled from `linux.seccomp`.
    #[serde(default)]
    pub seccomp: Option<crate::security::Seccomp>,
    /// `process.oomScoreAdj`: the process's /proc/self/oom_score_adj.
    #[serde(default)]
    pub oom_score_adj: Option<i32>,
    /// The process is PID 1 of a pid namespace of its own (config.json lists one): the first
    /// request that asks makes it, with a /proc of it; every later request (exec) joins it.
    #[serde(default)]
    pub pid_namespace: bool,
    /// The config's bind mounts, copied from the host onto a read-only disk of their own.
    #[serde(default)]
    pub binds: Option<Binds>,
    /// The host's time as it sent this (seconds and nanoseconds since the epoch): a guest
    /// restored from a snapshot sets its clock from it, since its own says when the snapshot
    /// was made. Only a guest's agent (PID 1 of the VM) applies it.
    #[serde(default)]
    pub clock: Option<(i64, u32)>,
    /// Random bytes from the host for the guest's entropy pool: two clones of one snapshot
    /// would otherwise draw the same random numbers. Only a guest's agent applies them.
    #[serde(default)]
    pub seed: Vec<u8>,
}

/// A sandbox's bind mounts: `device` (ext4) holds one entry per mount, named by its index,
/// which the agent binds read-only at `destinations[index]` in the container's root.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binds {
    pub device: String,
    pub destinations: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connection")]
    Io(#[from] io::Error),
    #[error("unknown frame kind {0}")]
    Kind(u8),
    #[error("frame of {0} bytes is larger than {MAX_FRAME}")]
    TooLarge(usize),
}

pub fn write_frame(w: &mut impl Write, kind: Kind, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len()).map_err(|_| io::Error::other("frame too large"))?;
    let mut head = [0u8; 5];
    head[0] = kind as u8;
    head[1..].copy_from_slice(&len.to_le_bytes());
    w.write_all(&head)?;
    w.write_all(payload)?;
    w.flush()
}

/// The next frame, or None at a clean end of stream.
pub fn read_frame(r: &mut impl Read) -> Result<Option<(Kind, Vec<u8>)>, Error> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let kind = Kind::from_byte(head[0]).ok_or(Error::Kind(head[0]))?;
    let len = usize::try_from(u32::from_le_bytes([head[1], head[2], head[3], head[4]]))
        .unwrap_or(usize::MAX);
    if len > MAX_FRAME {
        return Err(Error::TooLarge(len));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok(Some((kind, payload)))
}

/// A 4-byte little-endian integer payload.
pub fn int(payload: &[u8]) -> Option<i32> {
    Some(i32::from_le_bytes(payload.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bad_ones_are_refused() {
        let mut buf = Vec::new();
        write_frame(&mut buf, Kind::Stdout, b"\x00\xffbinary").unwrap();
        write_frame(&mut buf, Kind::Exit, &42i32.to_le_bytes()).unwrap();
        let mut r = &buf[..];
        assert_eq!(
            read_frame(&mut r).unwrap(),
            Some((Kind::Stdout, b"\x00\xffbinary".to_vec()))
        );
        let (kind, payload) = read_frame(&mut r).unwrap().unwrap();
        assert_eq!((kind, int(&payload)), (Kind::Exit, Some(42)));
        assert!(read_frame(&mut r).unwrap().is_none());
        assert!(matches!(
            read_frame(&mut &[99u8, 0, 0, 0, 0][..]),
            Err(Error::Kind(99))
        ));
        assert!(matches!(
            read_frame(&mut &[11u8, 0xff, 0xff, 0xff, 0x7f][..]),
            Err(Error::TooLarge(_))
        ));
        assert!(matches!(
            read_frame(&mut &[11u8, 4, 0, 0, 0, 1][..]),
            Err(Error::Io(_))
        ));
    }
}
