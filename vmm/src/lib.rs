//! gureum's VMM core, on its own: a VM described as plain, validated data (`config`), built
//! from it (`vmm`: memory, kernel and initramfs, devices behind the PIO and MMIO buses), and
//! run by its vCPU threads and one event loop until the guest stops (`boot`). It knows nothing
//! of the CLI or of containers: the `gureum` and `gureum-vmm` executables hand it a
//! `boot::BootRequest`, and the container runtime launches it as a process (`boot::launch`).

pub mod api;
pub mod arch;
pub mod boot;
pub mod config;
pub mod event_loop;
pub mod host_check;
pub mod loader;
pub mod pause;
pub mod phases;
pub mod seccomp;
pub mod snapshot;
pub mod term;
pub mod vcpu;
pub mod virtio_devices;
pub mod vmm;

pub use boot::default_guest;
