//! Snapshots of a paused VM, and restoring one into a new process.
//!
//! A snapshot is two files: the state (`format.rs`: vCPUs, in-kernel irqchip, PIT and clock,
//! the serial port, the VM's config) and guest memory, written as it is, with the pages that
//! hold only zeroes left as holes. A restore maps the memory file privately: pages are read
//! from it as the guest touches them, and restored VMs of one snapshot share the unchanged
//! ones through the page cache. VMs with virtio devices are refused for now: their queues'
//! state is not saved yet.

pub mod format;
mod restore;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gureum_devices::bus::lock;
use gureum_devices::legacy::Serial;
use gureum_devices::virtio::MmioTransport;
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

use crate::arch::x86_64::{cpuid, state};
use crate::config::VmConfig;
use crate::vcpu::{SaveError, VcpuControl};
pub use format::{MemoryRegion, Snapshot};
pub use restore::RestoreFrom;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Format(#[from] format::Error),
    #[error("cannot write guest memory to {0}")]
    WriteMemory(PathBuf, #[source] std::io::Error),
    #[error("cannot read guest memory from {0}")]
    ReadMemory(PathBuf, #[source] std::io::Error),
    #[error(
        "{path} is {have} bytes, but the snapshot's guest memory needs {want}: not this snapshot's memory file"
    )]
    MemoryFile { path: PathBuf, have: u64, want: u64 },
    #[error("a device cannot be saved now: {0}")]
    Device(String),
    #[error(
        "{0} is outside the VMM's root {1} (with vsock the VMM is jailed in its socket's \
         directory): write the snapshot there"
    )]
    OutsideJail(PathBuf, PathBuf),
    #[error("the snapshot has no disk {0} to replace (it has {1})")]
    NoDisk(usize, usize),
    #[error("the snapshot has no network interface {0} to give another TAP (it has {1})")]
    NoNet(usize, usize),
    #[error("the snapshot has no vsock device to give --vsock-uds to")]
    NoVsock,
    #[error("the snapshot has {0} virtio devices, its config {1}")]
    DeviceCount(usize, usize),
    #[error("cannot restore the devices")]
    RestoreDevice(#[source] gureum_devices::virtio::state::RestoreError),
    #[error("cannot save the vCPUs' state")]
    Vcpus(#[source] SaveError),
    #[error("cannot save the VM's state")]
    Vm(#[source] state::Error),
    #[error(
        "the snapshot was made on a host whose CPU gives its guest another CPUID: it cannot be \
         restored here"
    )]
    ForeignCpu,
    #[error("cannot read this host's CPUID")]
    Cpuid(#[source] kvm_ioctls::Error),
    #[error(transparent)]
    Build(#[from] crate::vmm::Error),
}

/// What a snapshot is taken of: the running VM's parts.
pub struct Snapshotter {
    pub control: Arc<VcpuControl>,
    pub vm: Arc<VmFd>,
    pub memory: GuestMemoryMmap,
    pub serial: Arc<Mutex<Serial<File>>>,
    pub keyboard: Arc<Mutex<gureum_devices::legacy::I8042>>,
    pub transports: Vec<Arc<Mutex<MmioTransport>>>,
    pub config: VmConfig,
    pub cpuid_digest: String,
    pub within: Duration,
    /// The VMM's root when it is jailed (with vsock: the socket's directory): where the
    /// snapshot's files must go, as Firecracker's must go in its jail.
    pub jail: Option<PathBuf>,
}

impl Snapshotter {
    /// `path` as the VMM sees it: under a jail, the same file from the jail's root.
    fn in_jail(&self, path: &Path) -> Result<PathBuf, Error> {
        let Some(jail) = &self.jail else {
            return Ok(path.to_path_buf());
        };
        match path.strip_prefix(jail) {
            Ok(inside) => Ok(Path::new("/").join(inside)),
            Err(_) => Err(Error::OutsideJail(path.to_path_buf(), jail.clone())),
        }
    }

    /// Writes the paused VM's state to `snapshot` and its memory to `mem`.
    pub fn create(&self, snapshot: &Path, mem: &Path) -> Result<(), Error> {
        let (snapshot, mem) = (&self.in_jail(snapshot)?, &self.in_jail(mem)?);
        // The devices first: one that cannot be saved now refuses before anything is written.
        let devices = (self.transports.iter())
            .map(|t| lock(t).snapshot().map_err(Error::Device))
            .collect::<Result<Vec<_>, _>>()?;
        let vcpus = self.control.save_all(self.within).map_err(Error::Vcpus)?;
        let vm = state::save_vm(&self.vm).map_err(Error::Vm)?;
        let memory = write_memory(&self.memory, mem)?;
        let state = Snapshot {
            gureum_version: env!("CARGO_PKG_VERSION").into(),
            cpuid_digest: self.cpuid_digest.clone(),
            config: self.config.clone(),
            memory,
            vm,
            vcpus,
            serial: lock(&self.serial).snapshot(),
            i8042: Some(lock(&self.keyboard).snapshot()),
            devices,
        };
        format::write(snapshot, &state)?;
        Ok(())
    }
}

/// Whether the snapshot at `path` lost device state a restore must tell the guest about
/// (vsock connections): a template that should restore clean takes another.
pub fn lost_state(path: &Path) -> Result<bool, Error> {
    Ok(format::read(path)?.devices.iter().any(|d| d.lost))
}

/// A digest of the CPUID this host gives vCPU 0 of a `vcpus`-vCPU guest.
pub fn cpuid_digest(kvm: &Kvm, vcpus: u8) -> Result<String, Box<Error>> {
    let supported = crate::vmm::supported_cpuid(kvm).map_err(|e| Box::new(Error::Build(e)))?;
    let entries = cpuid::for_vcpu(&supported, 0, vcpus);
    let mut hasher = crc32fast::Hasher::new();
    for e in entries.as_slice() {
        for word in [e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx] {
            hasher.update(&word.to_le_bytes());
        }
    }
    Ok(format!("crc32:{:08x}", hasher.finalize()))
}

const PAGE: usize = 4096;

/// Writes every region of `memory` to `path`, one after another, leaving pages of zeroes as
/// holes; where each region is.
fn write_memory(memory: &GuestMemoryMmap, path: &Path) -> Result<Vec<MemoryRegion>, Error> {
    let fail = |e| Error::WriteMemory(path.to_path_buf(), e);
    let file = File::create(path).map_err(fail)?;
    let mut regions = Vec::new();
    let mut offset = 0u64;
    let mut chunk = vec![0u8; 1 << 20];
    for region in memory.iter() {
        let (start, len) = (region.start_addr().raw_value(), region.len());
        let mut at = 0u64;
        while at < len {
            let n = usize::try_from((len - at).min(chunk.len() as u64)).unwrap_or(0);
            let buf = &mut chunk[..n];
            memory
                .read_slice(buf, GuestAddress(start + at))
                .map_err(|e| fail(std::io::Error::other(e.to_string())))?;
            for (i, page) in buf.chunks(PAGE).enumerate() {
                if page.iter().any(|&b| b != 0) {
                    let to = offset + at + (i * PAGE) as u64;
                    file.write_all_at(page, to).map_err(fail)?;
                }
            }
            at += n as u64;
        }
        regions.push(MemoryRegion {
            guest_addr: start,
            len,
            file_offset: offset,
        });
        offset += len;
    }
    file.set_len(offset).map_err(fail)?;
    Ok(regions)
}
