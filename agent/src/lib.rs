//! gureum's guest agent: runs a container's process for the host, streams its stdio and
//! signals, and reports how it ended, over the framed [`protocol`]. The same code serves a
//! microVM (PID 1 of the guest, over vsock) and native tests (over a Unix socket).

pub mod client;
pub mod limits;
#[cfg(feature = "oci")]
pub mod oci;
pub mod protocol;
pub mod pty;
pub mod runner;
pub mod security;
