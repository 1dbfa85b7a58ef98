//! Attaches the configured virtio devices: an MMIO window and an IRQ each, an ioeventfd per
//! queue bound to QueueNotify, an irqfd for the interrupt, and the `virtio_mmio.device=` entries
//! that tell the guest where they are.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use gureum_devices::Bus;
use gureum_devices::virtio::block::{Block, Disk};
use gureum_devices::virtio::mmio::{MMIO_SIZE, QUEUE_NOTIFY};
use gureum_devices::virtio::net::{Net, Tap, TapError};
use gureum_devices::virtio::rng::Rng;
use gureum_devices::virtio::vsock::Vsock;
use gureum_devices::virtio::{Interrupt, MmioTransport, VirtioDevice, VirtioHandler};
use kvm_ioctls::{IoEventAddress, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::arch::x86_64::layout::{VIRTIO_IRQ_BASE, VIRTIO_MMIO_START};
use crate::config::VmConfig;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open disk {}", .0.display())]
    OpenDisk(PathBuf, #[source] std::io::Error),
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error("cannot listen on the vsock socket {}", .0.display())]
    Vsock(PathBuf, #[source] std::io::Error),
    #[error("cannot open /dev/urandom for virtio-rng")]
    OpenRng(#[source] std::io::Error),
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("KVM: cannot {0}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    #[error("cannot place a virtio device on the MMIO bus")]
    Bus(#[from] gureum_devices::BusError),
}

/// What attaching produced: the event handlers to run, and the command-line additions.
pub struct Attached {
    pub handlers: Vec<VirtioHandler>,
    pub cmdline: String,
    /// The vsock device, to confine its host connections with the VMM.
    pub vsock: Option<Arc<Mutex<Vsock>>>,
    /// Each device's transport, in the order of the config: what a snapshot saves.
    pub transports: Vec<Arc<Mutex<MmioTransport>>>,
}

pub fn attach(
    vm: &VmFd,
    mmio: &mut Bus,
    mem: &GuestMemoryMmap,
    cfg: &VmConfig,
) -> Result<Attached, Error> {
    let mut devices: Vec<Arc<Mutex<dyn VirtioDevice>>> = Vec::new();
    let mut cmdline = String::new();
    for disk in &cfg.disks {
        let id = disk.id.as_deref().unwrap_or_default();
        let image = Disk::open(&disk.path, disk.read_only, id)
            .map_err(|e| Error::OpenDisk(disk.path.clone(), e))?;
        devices.push(Arc::new(Mutex::new(Block::new(image))));
        if disk.root {
            cmdline.push_str(if disk.read_only {
                " root=/dev/vda ro"
            } else {
                " root=/dev/vda rw"
            });
        }
    }
    for (n, net) in (0u8..).zip(&cfg.nets) {
        let tap = Tap::open(&net.tap)?;
        let mac = net.mac.unwrap_or_else(|| made_up_mac(n));
        devices.push(Arc::new(Mutex::new(Net::new(tap, mac))));
    }
    let mut vsock = None;
    if let Some(v) = &cfg.vsock {
        let device =
            Vsock::new(v.cid.into(), &v.uds).map_err(|e| Error::Vsock(v.uds.clone(), e))?;
        let device = Arc::new(Mutex::new(device));
        vsock = Some(device.clone());
        devices.push(device);
    }
    if cfg.rng {
        devices.push(Arc::new(Mutex::new(Rng::new().map_err(Error::OpenRng)?)));
    }
    let mut handlers = Vec::with_capacity(devices.len());
    let mut transports = Vec::with_capacity(devices.len());
    for (n, device) in (0u32..).zip(devices) {
        let base = VIRTIO_MMIO_START + u64::from(n) * MMIO_SIZE;
        let irq = VIRTIO_IRQ_BASE + n;
        let irqfd = EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?;
        vm.register_irqfd(&irqfd, irq)
            .map_err(|e| Error::Kvm("register a virtio irqfd", e))?;
        let interrupt = Arc::new(Interrupt::new(irqfd));
        let queues = gureum_devices::bus::lock(&device).queue_max_sizes().len();
        let mut queue_evts = Vec::with_capacity(queues);
        for q in (0u32..).take(queues) {
            let evt = EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?;
            vm.register_ioevent(&evt, &IoEventAddress::Mmio(base + QUEUE_NOTIFY), q)
                .map_err(|e| Error::Kvm("register a queue ioeventfd", e))?;
            queue_evts.push(evt);
        }
        let transport = MmioTransport::new(device.clone(), interrupt.clone(), mem.clone());
        let transport = Arc::new(Mutex::new(transport));
        mmio.insert(base, MMIO_SIZE, transport.clone())?;
        transports.push(transport);
        handlers.push(VirtioHandler::new(device, interrupt, queue_evts));
        cmdline.push_str(&format!(" virtio_mmio.device=4K@{base:#x}:{irq}"));
    }
    Ok(Attached {
        handlers,
        cmdline,
        vsock,
        transports,
    })
}

/// A locally administered, unicast MAC: 02:47:52 ("GR"), then the process id and the interface.
fn made_up_mac(n: u8) -> [u8; 6] {
    let pid = std::process::id().to_le_bytes();
    [0x02, 0x47, 0x52, pid[1], pid[0], n]
}
