//! A VM rebuilt from a snapshot, ready to run where it was paused: guest memory mapped
//! privately from the memory file, the in-kernel irqchip, PIT and clock, the serial port and
//! each vCPU put back in the state the snapshot recorded.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gureum_devices::Bus;
use kvm_ioctls::Kvm;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use super::{Error, Snapshot, cpuid_digest, format};
use crate::arch::x86_64::state;
use crate::vcpu::{ExitSlot, Vcpu};
use crate::vmm::{self, Vmm};

/// What to restore, and which host paths to give it instead of the snapshot's.
#[derive(Debug, Clone, Default)]
pub struct RestoreFrom {
    pub snapshot: PathBuf,
    pub mem: PathBuf,
    /// The vsock device's socket (two clones of one snapshot cannot share one).
    pub vsock_uds: Option<PathBuf>,
    /// Other images for the snapshot's disks, by their place in its config (0: the first).
    /// The guest is told its disk changed (a config interrupt: it reads the new capacity);
    /// what it has cached of the old one is its to drop (a warm sandbox's agent does).
    pub disks: Vec<(usize, PathBuf)>,
    /// Other TAPs for the snapshot's network interfaces, by their place in its config (the
    /// guest keeps its MAC: clones on one network each need their own namespace).
    pub nets: Vec<(usize, String)>,
}

impl Vmm {
    /// The VM of a snapshot, its guest memory from the memory file.
    pub fn restore(from: &RestoreFrom) -> Result<Vmm, Error> {
        let mut s = format::read(&from.snapshot)?;
        let mem = from.mem.as_path();
        if let Some(uds) = &from.vsock_uds {
            let Some(vsock) = &mut s.config.vsock else {
                return Err(Error::NoVsock);
            };
            vsock.uds.clone_from(uds);
        }
        for (index, path) in &from.disks {
            let count = s.config.disks.len();
            let disk = (s.config.disks.get_mut(*index)).ok_or(Error::NoDisk(*index, count))?;
            disk.path.clone_from(path);
        }
        for (index, tap) in &from.nets {
            let count = s.config.nets.len();
            let net = (s.config.nets.get_mut(*index)).ok_or(Error::NoNet(*index, count))?;
            net.tap.clone_from(tap);
        }
        let kvm = Kvm::new().map_err(vmm::Error::OpenKvm)?;
        vmm::check_host(&kvm, s.config.vcpus)?;
        if cpuid_digest(&kvm, s.config.vcpus).map_err(|e| *e)? != s.cpuid_digest {
            return Err(Error::ForeignCpu);
        }
        let vm = kvm
            .create_vm()
            .map_err(|e| vmm::Error::Kvm("create a VM", e))?;
        let memory = map_memory(&s, mem)?;
        vmm::register_guest_memory(&vm, &memory)?;
        vmm::create_irqchip(&vm)?;
        state::restore_vm(&vm, &s.vm).map_err(Error::Vm)?;

        let mut mmio = Bus::new();
        let virtio = crate::virtio_devices::attach(&vm, &mut mmio, &memory, &s.config)
            .map_err(vmm::Error::from)?;
        let mut pio = Bus::new();
        let legacy = vmm::attach_legacy_devices(&vm, &mut pio, Some(&s.serial), s.i8042.as_ref())?;
        let (pio, mmio) = (Arc::new(pio), Arc::new(mmio));
        let exit = Arc::new(ExitSlot::new(vmm::eventfd()?));
        let cpuid = vmm::supported_cpuid(&kvm)?;
        let count = s.config.vcpus;
        let vcpus = (0..count)
            .zip(&s.vcpus)
            .map(|(id, saved)| {
                let (pio, mmio, exit) = (pio.clone(), mmio.clone(), exit.clone());
                let vcpu = Vcpu::create(&vm, &cpuid, id, count, pio, mmio, exit)?;
                vcpu.restore(saved)?;
                Ok(vcpu)
            })
            .collect::<Result<Vec<_>, crate::vcpu::Error>>()
            .map_err(vmm::Error::from)?;
        if s.devices.len() != virtio.transports.len() {
            return Err(Error::DeviceCount(s.devices.len(), virtio.transports.len()));
        }
        for (slot, (transport, saved)) in virtio.transports.iter().zip(&s.devices).enumerate() {
            let mut transport = gureum_devices::bus::lock(transport);
            transport
                .restore(slot, saved)
                .map_err(Error::RestoreDevice)?;
            // Disks come first in the config, so a disk's index is its device slot.
            if from.disks.iter().any(|(index, _)| *index == slot) {
                transport.config_changed();
            }
        }
        let base = vmm::Base {
            kvm,
            vm,
            config: s.config,
            memory,
        };
        Ok(Vmm::assemble(base, vcpus, legacy, exit, virtio))
    }
}

/// Each region of guest memory, mapped privately from its place in the memory file: read as
/// the guest touches it, never written back.
fn map_memory(s: &Snapshot, mem: &Path) -> Result<GuestMemoryMmap, Error> {
    let fail = |e| Error::ReadMemory(mem.to_path_buf(), e);
    let file = File::open(mem).map_err(fail)?;
    let have = file.metadata().map_err(fail)?.len();
    let want = s
        .memory
        .iter()
        .map(|r| r.file_offset + r.len)
        .max()
        .unwrap_or(0);
    let expected: u64 = s.config.memory_mib << 20;
    let total: u64 = s.memory.iter().map(|r| r.len).sum();
    if have != want || total != expected {
        return Err(Error::MemoryFile {
            path: mem.to_path_buf(),
            have,
            want,
        });
    }
    let file = Arc::new(file);
    let regions = (s.memory.iter())
        .map(|r| {
            let len =
                usize::try_from(r.len).map_err(|_| fail(std::io::ErrorKind::InvalidData.into()))?;
            let mapping = MmapRegionBuilder::new(len)
                .with_file_offset(FileOffset::from_arc(file.clone(), r.file_offset))
                .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                .with_mmap_flags(libc::MAP_NORESERVE | libc::MAP_PRIVATE)
                .build()
                .map_err(|e| fail(std::io::Error::other(e.to_string())))?;
            GuestRegionMmap::new(mapping, GuestAddress(r.guest_addr))
                .ok_or_else(|| fail(std::io::ErrorKind::InvalidData.into()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    GuestMemoryMmap::from_regions(regions).map_err(|e| fail(std::io::Error::other(e.to_string())))
}
