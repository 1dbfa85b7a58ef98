//! The container's terminal: a pty opened inside the container (from its own devpts, so
//! `tty` and ttyname() name it), whose master goes back to gureum over a socket (SCM_RIGHTS)
//! together with the init's report.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::sys::os_err;

/// A close-on-exec Unix stream socket pair: (gureum's end, the child's end).
pub fn socketpair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two fds into the array we pass.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(os_err());
    }
    // SAFETY: both fds are fresh and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Opens a pty from the container's /dev/ptmx and makes its slave this process's stdio;
/// returns the master.
pub fn open_in_container() -> Result<OwnedFd, String> {
    let fail = |what: &str, e: std::io::Error| {
        format!("process.terminal: cannot {what} (is /dev/pts mounted?): {e}")
    };
    let (master, slave) =
        gureum_process::pty::open_pair(c"/dev/ptmx").map_err(|e| fail("open a pty", e))?;
    for target in 0..3 {
        // SAFETY: dup2 onto this (child) process's standard descriptors.
        if unsafe { libc::dup2(slave.as_raw_fd(), target) } < 0 {
            return Err(fail("attach the pty", os_err()));
        }
    }
    Ok(master)
}

/// Sends `bytes`, with `fd` attached if given.
pub fn send(sock: RawFd, bytes: &[u8], fd: Option<RawFd>) -> std::io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr().cast_mut().cast(),
        iov_len: bytes.len(),
    };
    // SAFETY: CMSG_SPACE computes a size; no memory is touched.
    let space = unsafe { libc::CMSG_SPACE(4) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: an all-zero msghdr is valid; its pointers are set to live buffers below.
    let mut msg = unsafe { std::mem::zeroed::<libc::msghdr>() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: the control buffer holds one cmsg with room for one fd, as sized above.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(4) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), fd);
        }
    }
    // SAFETY: sendmsg with a msghdr whose pointers are all live.
    if unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) } < 0 {
        return Err(os_err());
    }
    Ok(())
}

/// Reads everything until EOF, and the fd that came with it, if any.
pub fn receive(sock: &OwnedFd) -> std::io::Result<(Vec<u8>, Option<OwnedFd>)> {
    let mut data = Vec::new();
    let mut fd = None;
    loop {
        let mut buf = [0u8; 4096];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: CMSG_SPACE computes a size; no memory is touched.
        let space = unsafe { libc::CMSG_SPACE(4) } as usize;
        let mut control = vec![0u8; space];
        // SAFETY: an all-zero msghdr is valid; its pointers are set to live buffers below.
        let mut msg = unsafe { std::mem::zeroed::<libc::msghdr>() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: recvmsg into live buffers; received fds are close-on-exec.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            let e = os_err();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Ok((data, fd));
        }
        data.extend_from_slice(&buf[..n.unsigned_abs()]);
        // SAFETY: walks the control buffer recvmsg filled; takes ownership of a passed fd.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            if !cmsg.is_null()
                && (*cmsg).cmsg_level == libc::SOL_SOCKET
                && (*cmsg).cmsg_type == libc::SCM_RIGHTS
            {
                let raw = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
                fd = Some(OwnedFd::from_raw_fd(raw));
            }
        }
    }
}
