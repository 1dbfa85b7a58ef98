//! The host side: send a [`RunSpec`], feed stdin, and copy the process's output until it exits.

use std::io::{Read, Write};

use crate::protocol::{self, Kind, RunSpec};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Protocol(#[from] protocol::Error),
    #[error("connection")]
    Io(#[from] std::io::Error),
    #[error("the agent ended the connection without an exit status")]
    NoExit,
}

/// How a run ended: its exit status (the code, or 128+signal) and the agent's reason if the
/// process could not run at all.
#[derive(Debug, PartialEq, Eq)]
pub struct Ended {
    pub status: i32,
    pub error: Option<String>,
}

/// Run `spec` over a connection (`reader` and `writer` are its two halves). `stdin` is fed from
/// a thread; output goes to `stdout` and `stderr` as it comes.
pub fn run<R: Read, W: Write + Send + 'static>(
    reader: R,
    writer: W,
    spec: &RunSpec,
    stdin: impl Read + Send + 'static,
    stdout: &mut impl Write,
    stderr: &mut impl Write,
) -> Result<Ended, Error> {
    let writer = std::sync::Arc::new(std::sync::Mutex::new(writer));
    run_shared(reader, &writer, spec, stdin, stdout, stderr)
}

/// A connection's writing half, shared so that [`signal`] frames can go in between.
pub type Shared<W> = std::sync::Arc<std::sync::Mutex<W>>;

/// As [`run`], with the writer shared with whoever sends signals meanwhile.
pub fn run_shared<R: Read, W: Write + Send + 'static>(
    mut reader: R,
    writer: &Shared<W>,
    spec: &RunSpec,
    stdin: impl Read + Send + 'static,
    stdout: &mut impl Write,
    stderr: &mut impl Write,
) -> Result<Ended, Error> {
    {
        let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
        protocol::write_frame(
            &mut *w,
            Kind::Run,
            &serde_json::to_vec(spec).unwrap_or_default(),
        )?;
    }
    let feeder = writer.clone();
    std::thread::spawn(move || {
        let mut stdin = stdin;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match stdin.read(&mut buf) {
                Ok(0) | Err(_) => 0,
                Ok(n) => n,
            };
            let mut w = feeder.lock().unwrap_or_else(|p| p.into_inner());
            let kind = if n == 0 { Kind::StdinEof } else { Kind::Stdin };
            if protocol::write_frame(&mut *w, kind, &buf[..n]).is_err() || n == 0 {
                return;
            }
        }
    });
    let mut error = None;
    while let Some((kind, payload)) = protocol::read_frame(&mut reader)? {
        match kind {
            Kind::Stdout => stdout.write_all(&payload)?,
            Kind::Stderr => stderr.write_all(&payload)?,
            Kind::Error => error = Some(String::from_utf8_lossy(&payload).into_owned()),
            Kind::Exit => {
                stdout.flush()?;
                let status = protocol::int(&payload).unwrap_or(255);
                return Ok(Ended { status, error });
            }
            _ => {}
        }
    }
    Err(Error::NoExit)
}

/// Send signal `sig` to the running process.
pub fn signal<W: Write>(writer: &Shared<W>, sig: i32) -> std::io::Result<()> {
    let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
    protocol::write_frame(&mut *w, Kind::Signal, &sig.to_le_bytes())
}

/// Tell the agent the terminal's new size (rows, columns).
pub fn resize<W: Write>(writer: &Shared<W>, size: (u16, u16)) -> std::io::Result<()> {
    let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
    protocol::write_frame(&mut *w, Kind::Resize, &crate::pty::encode_size(size))
}

/// `kill --all`: ask the agent to send `sig` to every process of the guest; waits for its answer.
pub fn signal_all(mut conn: impl Read + Write, sig: i32) -> Result<(), Error> {
    protocol::write_frame(&mut conn, Kind::SignalAll, &sig.to_le_bytes())?;
    match protocol::read_frame(&mut conn)? {
        Some((Kind::Exit, _)) => Ok(()),
        _ => Err(Error::NoExit),
    }
}
