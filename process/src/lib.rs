//! A container's process as gureum runs it, shared by the two sides that start one: the guest
//! agent (in a microVM) and the host's native runtime (in namespaces). Its settings
//! ([`protocol::RunSpec`], from an OCI process with the `oci` feature), the framed protocol the
//! host speaks to the agent ([`protocol`], [`client`]), and what applies the settings between
//! fork and exec ([`security`], [`limits`], [`sysctl`], [`signals`], [`pty`]).

pub mod client;
pub mod limits;
#[cfg(feature = "oci")]
pub mod oci;
pub mod protocol;
pub mod pty;
pub mod security;
pub mod signals;
pub mod sysctl;
