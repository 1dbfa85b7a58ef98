//! The API socket in the VMM's event loop: a listening Unix socket and its connections, each
//! read as it becomes readable; every whole request is answered at once, in order.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::Routes;
use super::http::{self, Parsed, Response};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on the API socket {0}")]
    Bind(std::path::PathBuf, #[source] std::io::Error),
}

/// Binds `path` (an API socket left by a VMM that is gone is replaced; a live one is not).
pub fn bind(path: &Path) -> Result<UnixListener, Error> {
    let fail = |e| Error::Bind(path.to_path_buf(), e);
    if UnixStream::connect(path).is_err() && path.exists() {
        let stale = std::fs::symlink_metadata(path)
            .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()));
        if stale {
            std::fs::remove_file(path).map_err(fail)?;
        }
    }
    let listener = UnixListener::bind(path).map_err(fail)?;
    listener.set_nonblocking(true).map_err(fail)?;
    Ok(listener)
}

struct Connection {
    stream: UnixStream,
    buf: Vec<u8>,
}

/// The socket and its open connections, as one server hands them to the next (the one that
/// configures a VM to the one that serves it running): a client's connection survives.
pub struct Sockets {
    listener: UnixListener,
    connections: HashMap<i32, Connection>,
}

impl From<UnixListener> for Sockets {
    fn from(listener: UnixListener) -> Self {
        Self {
            listener,
            connections: HashMap::new(),
        }
    }
}

pub struct ApiServer<R> {
    listener: UnixListener,
    connections: HashMap<i32, Connection>,
    pub routes: R,
}

impl<R: Routes> ApiServer<R> {
    pub fn new(sockets: Sockets, routes: R) -> Self {
        Self {
            listener: sockets.listener,
            connections: sockets.connections,
            routes,
        }
    }

    pub fn into_parts(self) -> (Sockets, R) {
        let sockets = Sockets {
            listener: self.listener,
            connections: self.connections,
        };
        (sockets, self.routes)
    }

    fn accept(&mut self, ops: &mut EventOps) {
        while let Ok((stream, _)) = self.listener.accept() {
            let fd = stream.as_raw_fd();
            if stream.set_nonblocking(true).is_err()
                || ops.add(Events::new_raw(fd, EventSet::IN)).is_err()
            {
                continue;
            }
            let buf = Vec::new();
            self.connections.insert(fd, Connection { stream, buf });
        }
    }

    /// Reads what `fd` has, answers each whole request; false when the connection is done.
    fn serve(&mut self, fd: i32) -> bool {
        let Some(conn) = self.connections.get_mut(&fd) else {
            return false;
        };
        let mut chunk = [0u8; 4096];
        match conn.stream.read(&mut chunk) {
            Ok(0) => return false,
            Ok(n) => conn.buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return true,
            Err(_) => return false,
        }
        loop {
            let (response, used, keep) = match http::parse(&conn.buf) {
                Parsed::Partial => return true,
                Parsed::Bad(why) => (Response::fault(400, why), conn.buf.len(), false),
                Parsed::Request(req, used) => (self.routes.route(&req), used, true),
            };
            conn.buf.drain(..used);
            // Responses are small: a client that does not read them loses its connection.
            if write_whole(&mut conn.stream, &response.to_bytes()).is_err() || !keep {
                return false;
            }
        }
    }

    fn close(&mut self, fd: i32, ops: &mut EventOps) {
        // Out of the event loop first, while the descriptor is still open.
        let _ = ops.remove(Events::empty_raw(fd));
        self.connections.remove(&fd);
    }
}

/// Writes all of `bytes` to a non-blocking stream, waiting up to a second for room.
fn write_whole(stream: &mut UnixStream, mut bytes: &[u8]) -> std::io::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    while !bytes.is_empty() {
        match stream.write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if std::time::Instant::now() > deadline {
                    return Err(e);
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl<R: Routes> MutEventSubscriber for ApiServer<R> {
    fn init(&mut self, ops: &mut EventOps) {
        // Without it the API is simply not served; the VM runs on.
        let _ = ops.add(Events::new_raw(self.listener.as_raw_fd(), EventSet::IN));
        // Connections a previous server accepted.
        for fd in self.connections.keys() {
            let _ = ops.add(Events::new_raw(*fd, EventSet::IN));
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.listener.as_raw_fd() {
            self.accept(ops);
        } else if events.event_set().contains(EventSet::IN) {
            if !self.serve(fd) {
                self.close(fd, ops);
            }
        } else {
            self.close(fd, ops);
        }
    }
}
