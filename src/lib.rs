//! gureum: a KVM microVM monitor (boot, devices, vCPUs, event loop), OCI containers run natively
//! or in microVMs, and the benchmarks that compare them. The `gureum` and `gureum-vmm`
//! executables are thin: `main` is the only place that prints an error and picks the exit code.

pub mod arch;
pub mod bench;
pub mod boot;
pub mod cli;
pub mod config;
pub mod container;
pub mod event_loop;
pub mod host_check;
pub mod loader;
pub mod phases;
pub mod seccomp;
pub mod term;
pub mod vcpu;
pub mod virtio_devices;
pub mod vmm;

pub use boot::default_guest;
