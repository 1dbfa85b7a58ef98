//! Pseudo-terminals: a master/slave pair from a ptmx device, and window sizes.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Opens a pty from `ptmx` (e.g. /dev/ptmx); returns (master, slave), both close-on-exec.
pub fn open_pair(ptmx: &CStr) -> io::Result<(OwnedFd, OwnedFd)> {
    // SAFETY: open with a NUL-terminated path; the fd is owned below.
    let master = unsafe {
        libc::open(
            ptmx.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if master < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nobody else owns.
    let master = unsafe { OwnedFd::from_raw_fd(master) };
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: grantpt, unlockpt and ptsname_r on our master, into a buffer of the given length;
    // the slave is opened from the NUL-terminated name ptsname_r wrote.
    let slave = unsafe {
        if libc::grantpt(master.as_raw_fd()) != 0
            || libc::unlockpt(master.as_raw_fd()) != 0
            || libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()) != 0
        {
            return Err(io::Error::last_os_error());
        }
        libc::open(
            name.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if slave < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nobody else owns.
    Ok((master, unsafe { OwnedFd::from_raw_fd(slave) }))
}

/// The size of the terminal on `fd`: (rows, columns).
pub fn winsize(fd: &impl AsRawFd) -> Option<(u16, u16)> {
    // SAFETY: an all-zero winsize is valid; TIOCGWINSZ fills it.
    let mut ws = unsafe { std::mem::zeroed::<libc::winsize>() };
    // SAFETY: TIOCGWINSZ writes into the live struct.
    let ok = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) } == 0;
    ok.then_some((ws.ws_row, ws.ws_col))
}

/// Sets the size of the terminal on `fd`.
pub fn set_winsize(fd: &impl AsRawFd, (rows, cols): (u16, u16)) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads the live struct.
    unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
}

/// The Resize payload for a size, and back.
pub fn encode_size((rows, cols): (u16, u16)) -> [u8; 4] {
    let (r, c) = (rows.to_le_bytes(), cols.to_le_bytes());
    [r[0], r[1], c[0], c[1]]
}

pub fn decode_size(payload: &[u8]) -> Option<(u16, u16)> {
    match payload {
        [r0, r1, c0, c1] => Some((
            u16::from_le_bytes([*r0, *r1]),
            u16::from_le_bytes([*c0, *c1]),
        )),
        _ => None,
    }
}
