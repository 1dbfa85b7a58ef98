//! A TAP device opened with the virtio-net header (IFF_VNET_HDR), so frames carry their offload
//! metadata (checksum, segmentation) to and from the host kernel unchanged.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// The virtio-net header with VERSION_1: 12 bytes (num_buffers included).
pub const VNET_HDR_LEN: usize = 12;

const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;

pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("TAP name {0:?} is empty or longer than 15 bytes")]
    Name(String),
    #[error("cannot open /dev/net/tun")]
    Open(#[source] std::io::Error),
    #[error("cannot attach to TAP {0:?} (does it exist, and is it a TAP?)")]
    Attach(String, #[source] std::io::Error),
    #[error("cannot configure TAP {0:?}")]
    Configure(String, #[source] std::io::Error),
}

pub struct Tap {
    file: File,
    name: String,
}

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl Tap {
    /// Attach to the TAP called `name` (creating it if it does not exist and we may).
    pub fn open(name: &str) -> Result<Self, Error> {
        if name.is_empty() || name.len() > 15 || name.contains('\0') {
            return Err(Error::Name(name.into()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(Error::Open)?;
        let mut req = IfReq {
            name: [0; 16],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes an ifreq, which `req` is laid out as.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
            return Err(Error::Attach(name.into(), std::io::Error::last_os_error()));
        }
        let tap = Self {
            file,
            name: name.into(),
        };
        let size = libc::c_int::try_from(VNET_HDR_LEN).unwrap_or(12);
        // SAFETY: TUNSETVNETHDRSZ reads one int.
        tap.check(unsafe { libc::ioctl(tap.file.as_raw_fd(), TUNSETVNETHDRSZ, &size) })?;
        Ok(tap)
    }

    /// Which offloads the host kernel may leave to the guest (TUN_F_*).
    pub fn set_offload(&self, flags: u32) -> Result<(), Error> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        self.check(unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        })
    }

    fn check(&self, rc: libc::c_int) -> Result<(), Error> {
        if rc < 0 {
            return Err(Error::Configure(
                self.name.clone(),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl Read for Tap {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(buf)
    }
}

impl Write for Tap {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
