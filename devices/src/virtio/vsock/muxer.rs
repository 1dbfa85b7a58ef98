//! Connections between guest vsock streams and host Unix sockets, Firecracker's hybrid design:
//! a host process connects to the listener at PATH and writes `CONNECT <port>\n` to reach a
//! guest listener (gureum answers `OK <host port>\n` once the guest accepts); a guest connecting
//! to the host CID on port P reaches a listener at `PATH_P`. Credit-based flow control both ways
//! (virtio 1.2, 5.10.6.3). All sockets sit in the muxer's own epoll, which the event loop watches
//! as one descriptor.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::packet::*;

/// What each side may have in flight towards us, per connection.
pub const BUF_ALLOC: u32 = 256 * 1024;
/// Largest payload we put in one packet.
pub const MAX_PAYLOAD: usize = 64 * 1024;
const MAX_CONNECT_LINE: usize = 32;
const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// (host-side port, guest-side port)
type Key = (u32, u32);

#[derive(Debug, PartialEq, Eq)]
enum State {
    /// A host process asked for a guest port; REQUEST sent, waiting for RESPONSE.
    LocalInit,
    Established,
}

struct Conn {
    stream: UnixStream,
    state: State,
    /// The guest's receive buffer and how much of what we sent it has consumed.
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Bytes we sent the guest.
    tx_cnt: u32,
    /// Bytes from the guest written to the host socket, and the count last told to the guest.
    fwd_cnt: u32,
    fwd_cnt_told: u32,
    /// Bytes from the guest not yet written to the host socket (bounded by BUF_ALLOC).
    out: Vec<u8>,
    /// The host socket may have data (edge-triggered: cleared only on WouldBlock).
    readable: bool,
    /// The guest will send no more: shut the host socket's write side once `out` is flushed.
    shut_write: bool,
    /// Done, once: every shutdown(2) wakes the socket's own waiters, so a second one would be
    /// one more edge-triggered event, and a flush that answered each event with another
    /// shutdown would spin the event loop forever.
    write_shut: bool,
    /// The guest closed both ways with data still on its way to the host: the connection ends
    /// (RST) once `out` is written, so nothing the guest sent before its close is lost.
    reset_when_flushed: bool,
}

impl Conn {
    fn new(stream: UnixStream, state: State, peer: &Header) -> Self {
        Self {
            stream,
            state,
            peer_buf_alloc: peer.buf_alloc,
            peer_fwd_cnt: peer.fwd_cnt,
            tx_cnt: 0,
            fwd_cnt: 0,
            fwd_cnt_told: 0,
            out: Vec::new(),
            readable: true,
            shut_write: false,
            write_shut: false,
            reset_when_flushed: false,
        }
    }

    /// How much more the guest can take from us.
    fn peer_credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }

    /// Write what we can of `out`; Err means the host socket is gone.
    fn flush(&mut self) -> io::Result<()> {
        while !self.out.is_empty() {
            match self.stream.write(&self.out) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.out.drain(..n);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(u32::try_from(n).unwrap_or(0));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.shut_write && !self.write_shut {
            self.write_shut = true;
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        Ok(())
    }
}

/// A host connection that has not said which guest port it wants yet.
struct Pending {
    stream: UnixStream,
    line: Vec<u8>,
}

pub struct Muxer {
    guest_cid: u64,
    path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    conns: HashMap<Key, Conn>,
    by_fd: HashMap<RawFd, Key>,
    pending: HashMap<RawFd, Pending>,
    /// Header-only packets waiting for a guest receive buffer.
    control: VecDeque<Header>,
    next_port: u32,
    /// Whether dropping the muxer removes its socket: not once jailed, where the process may
    /// no longer unlink by path and whoever jailed it removes the socket.
    removes_socket: bool,
}

impl Muxer {
    /// From now on, reach host listeners (`PATH_<port>`) by the socket's file name from the
    /// root: for a VMM that has made the socket's directory its root (chroot). The socket is
    /// then the jailer's to remove.
    pub fn jail(&mut self) {
        if let Some(name) = self.path.file_name() {
            self.path = Path::new("/").join(name);
        }
        self.removes_socket = false;
    }

    /// Listen at `path` for host connections to guest `guest_cid`.
    pub fn new(guest_cid: u64, path: &Path) -> io::Result<Self> {
        let listener = UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        let epoll = Epoll::new()?;
        let fd = listener.as_raw_fd();
        epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, fd as u64),
        )?;
        Ok(Self {
            guest_cid,
            path: path.to_path_buf(),
            listener,
            epoll,
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            pending: HashMap::new(),
            control: VecDeque::new(),
            next_port: FIRST_LOCAL_PORT,
            removes_socket: true,
        })
    }

    /// The descriptor the event loop watches: readable when any socket here is.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// No connection, none being set up, no packet waiting for the guest.
    pub fn is_idle(&self) -> bool {
        self.conns.is_empty() && self.pending.is_empty() && self.control.is_empty()
    }

    fn watch(&self, fd: RawFd) {
        let events =
            EventSet::IN | EventSet::OUT | EventSet::EDGE_TRIGGERED | EventSet::READ_HANG_UP;
        // Fails only if the fd is already there or the kernel is out of memory; then the
        // connection is served when the guest's packets come, not when the host's data does.
        let _ = self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(events, fd as u64),
        );
    }

    fn header(&self, key: Key, op: u16) -> Header {
        let fwd_cnt = self.conns.get(&key).map_or(0, |c| c.fwd_cnt);
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: key.0,
            dst_port: key.1,
            type_: TYPE_STREAM,
            op,
            buf_alloc: BUF_ALLOC,
            fwd_cnt,
            ..Default::default()
        }
    }

    fn reset(&mut self, key: Key) {
        if let Some(conn) = self.conns.remove(&key) {
            self.by_fd.remove(&conn.stream.as_raw_fd());
        }
        let rst = self.header(key, OP_RST);
        self.control.push_back(rst);
    }

    fn close(&mut self, key: Key) {
        if let Some(conn) = self.conns.remove(&key) {
            self.by_fd.remove(&conn.stream.as_raw_fd());
        }
    }

    /// One packet the guest sent, with its payload.
    pub fn handle_guest_packet(&mut self, hdr: Header, payload: &mut impl Read) {
        let key = (hdr.dst_port, hdr.src_port);
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID || hdr.type_ != TYPE_STREAM {
            if hdr.op != OP_RST {
                let mut rst = self.header(key, OP_RST);
                rst.dst_cid = hdr.src_cid;
                self.control.push_back(rst);
            }
            return;
        }
        if let Some(conn) = self.conns.get_mut(&key) {
            conn.peer_buf_alloc = hdr.buf_alloc;
            conn.peer_fwd_cnt = hdr.fwd_cnt;
        }
        match hdr.op {
            OP_REQUEST => self.guest_connects(key, &hdr),
            OP_RESPONSE => self.guest_accepted(key),
            OP_RW => self.guest_data(key, hdr.len, payload),
            OP_CREDIT_REQUEST if self.conns.contains_key(&key) => {
                let h = self.header(key, OP_CREDIT_UPDATE);
                self.control.push_back(h);
            }
            OP_CREDIT_UPDATE if self.conns.contains_key(&key) => {}
            OP_SHUTDOWN if self.conns.contains_key(&key) => self.guest_shutdown(key, hdr.flags),
            OP_RST => self.close(key),
            _ => self.reset(key),
        }
    }

    fn guest_connects(&mut self, key: Key, hdr: &Header) {
        if self.conns.contains_key(&key) {
            return self.reset(key);
        }
        let target = format!("{}_{}", self.path.display(), key.0);
        match UnixStream::connect(&target).and_then(|s| s.set_nonblocking(true).map(|()| s)) {
            Ok(stream) => {
                let fd = stream.as_raw_fd();
                self.conns
                    .insert(key, Conn::new(stream, State::Established, hdr));
                self.by_fd.insert(fd, key);
                self.watch(fd);
                let h = self.header(key, OP_RESPONSE);
                self.control.push_back(h);
            }
            Err(_) => {
                let rst = self.header(key, OP_RST);
                self.control.push_back(rst);
            }
        }
    }

    fn guest_accepted(&mut self, key: Key) {
        let Some(conn) = self
            .conns
            .get_mut(&key)
            .filter(|c| c.state == State::LocalInit)
        else {
            return self.reset(key);
        };
        conn.state = State::Established;
        let ok = format!("OK {}\n", key.0);
        conn.out.extend_from_slice(ok.as_bytes());
        // The OK line is ours, not the guest's: it does not count as forwarded guest data.
        conn.fwd_cnt = conn
            .fwd_cnt
            .wrapping_sub(u32::try_from(ok.len()).unwrap_or(0));
        if conn.flush().is_err() {
            self.reset(key);
        }
    }

    fn guest_data(&mut self, key: Key, len: u32, payload: &mut impl Read) {
        let Some(conn) = self
            .conns
            .get_mut(&key)
            .filter(|c| c.state == State::Established && !c.reset_when_flushed)
        else {
            return self.reset(key);
        };
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        // A guest that ignores our credit gets its connection reset, not our memory.
        if conn.out.len().saturating_add(len) > BUF_ALLOC as usize {
            return self.reset(key);
        }
        let start = conn.out.len();
        conn.out.resize(start + len, 0);
        let got = read_up_to(payload, &mut conn.out[start..]);
        conn.out.truncate(start + got);
        self.flush(key);
    }

    /// Writes what `key` has for its host socket. Resets it when that socket is gone, or when
    /// the guest has closed and everything is written; else tells the guest of freed room.
    fn flush(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        match conn.flush() {
            Err(_) => self.reset(key),
            Ok(()) if conn.reset_when_flushed && conn.out.is_empty() => self.reset(key),
            Ok(()) => self.credit_if_due(key),
        }
    }

    /// Tells the guest of the room freed in our buffer once a quarter of it is free again. A
    /// guest out of credit waits for this: it never asks, and with nothing else flowing its way
    /// no packet would carry our count.
    fn credit_if_due(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.fwd_cnt.wrapping_sub(conn.fwd_cnt_told) >= BUF_ALLOC / 4 {
            conn.fwd_cnt_told = conn.fwd_cnt;
            let h = self.header(key, OP_CREDIT_UPDATE);
            self.control.push_back(h);
        }
    }

    /// The guest will send no more (SEND), or closed its socket (both): the host's socket gets
    /// its write side shut once what the guest sent is written, and after a close the
    /// connection ends there (Linux's guest waits for that RST before it lets the socket go).
    fn guest_shutdown(&mut self, key: Key, flags: u32) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if flags & SHUTDOWN_SEND != 0 {
            conn.shut_write = true;
        }
        if flags & (SHUTDOWN_RCV | SHUTDOWN_SEND) == (SHUTDOWN_RCV | SHUTDOWN_SEND) {
            conn.reset_when_flushed = true;
        }
        self.flush(key);
    }

    /// Serve what is ready among the host sockets: one round of at most 32 events. The event
    /// loop watches the muxer's epoll fd level-triggered and calls again while more are ready,
    /// so no socket's events, however many, can hold the loop here.
    pub fn process_events(&mut self) {
        let mut events = [EpollEvent::default(); 32];
        if let Ok(n) = self.epoll.wait(0, &mut events) {
            for ev in &events[..n] {
                let fd = ev.fd();
                if fd == self.listener.as_raw_fd() {
                    self.accept_all();
                } else if self.pending.contains_key(&fd) {
                    self.read_connect_line(fd);
                } else if let Some(&key) = self.by_fd.get(&fd) {
                    let set = ev.event_set();
                    let Some(conn) = self.conns.get_mut(&key) else {
                        continue;
                    };
                    if set.intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP) {
                        conn.readable = true;
                    }
                    if set.contains(EventSet::OUT) {
                        self.flush(key);
                    }
                }
            }
        }
    }

    fn accept_all(&mut self) {
        while let Ok((stream, _)) = self.listener.accept() {
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let fd = stream.as_raw_fd();
            self.watch(fd);
            self.pending.insert(
                fd,
                Pending {
                    stream,
                    line: Vec::new(),
                },
            );
            self.read_connect_line(fd);
        }
    }

    /// Read `CONNECT <port>\n` a byte at a time (so no data after it is consumed early).
    fn read_connect_line(&mut self, fd: RawFd) {
        let Some(p) = self.pending.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        let line = loop {
            match p.stream.read(&mut byte) {
                Ok(1) if byte[0] == b'\n' => break Some(std::mem::take(&mut p.line)),
                Ok(1) if p.line.len() < MAX_CONNECT_LINE => p.line.push(byte[0]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                _ => break None, // EOF, too long, or an error
            }
        };
        let Some(p) = self.pending.remove(&fd) else {
            return;
        };
        let port = line
            .as_deref()
            .and_then(|l| std::str::from_utf8(l).ok())
            .and_then(|l| l.strip_prefix("CONNECT "))
            .and_then(|p| p.trim().parse::<u32>().ok());
        let Some(port) = port else { return }; // dropping the stream closes it
        let local = self.next_port;
        self.next_port = self.next_port.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
        let key = (local, port);
        let peer = Header::default();
        let mut conn = Conn::new(p.stream, State::LocalInit, &peer);
        conn.readable = false;
        self.by_fd.insert(fd, key);
        self.conns.insert(key, conn);
        let h = self.header(key, OP_REQUEST);
        self.control.push_back(h);
    }

    /// The next packet for the guest, for a receive buffer with `room` bytes of payload space:
    /// its header, and how many payload bytes were put in `buf`. None when there is nothing.
    pub fn next_packet(&mut self, room: usize, buf: &mut [u8]) -> Option<(Header, usize)> {
        if let Some(h) = self.control.pop_front() {
            return Some((h, 0));
        }
        let keys: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.state == State::Established
                    && c.readable
                    && !c.reset_when_flushed
                    && c.peer_credit() > 0
            })
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            let max = room
                .min(MAX_PAYLOAD)
                .min(conn.peer_credit() as usize)
                .min(buf.len());
            if max == 0 {
                continue;
            }
            match conn.stream.read(&mut buf[..max]) {
                Ok(0) => {
                    conn.readable = false;
                    let mut h = self.header(key, OP_SHUTDOWN);
                    h.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
                    return Some((h, 0));
                }
                Ok(n) => {
                    conn.tx_cnt = conn.tx_cnt.wrapping_add(u32::try_from(n).unwrap_or(0));
                    let mut h = self.header(key, OP_RW);
                    h.len = u32::try_from(n).unwrap_or(0);
                    if let Some(c) = self.conns.get_mut(&key) {
                        c.fwd_cnt_told = c.fwd_cnt;
                    }
                    return Some((h, n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => conn.readable = false,
                Err(_) => {
                    self.reset(key);
                    return self.control.pop_front().map(|h| (h, 0));
                }
            }
        }
        None
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        if self.removes_socket {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> usize {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    got
}
