//! Virtio devices over MMIO (virtio 1.x "modern" devices only, virtio-mmio version 2).
//!
//! Each device is split in two: the pure queue logic (parse a descriptor chain, do the work,
//! put it on the used ring), testable on virtio-queue's mock queues, and [`handler`], the thin
//! event-loop subscriber that runs it when the guest notifies a queue. The [`mmio`] transport
//! is the register file the guest driver talks to.

pub mod block;
pub mod handler;
pub mod mmio;
pub mod net;
pub mod rng;

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use handler::VirtioHandler;
pub use mmio::MmioTransport;

/// Device types (virtio 1.2, 5).
pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_RNG: u32 = 4;
pub const TYPE_VSOCK: u32 = 19;

/// Offered by every gureum device: modern (virtio 1.x) only.
pub const F_VERSION_1: u64 = 1 << 32;

/// Interrupt status bits.
pub const INT_USED_RING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

/// A device's interrupt: the status register the driver reads and acknowledges, and the irqfd
/// that raises its line.
pub struct Interrupt {
    status: AtomicU32,
    irqfd: EventFd,
}

impl Interrupt {
    pub fn new(irqfd: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            irqfd,
        }
    }

    /// Raise the line for `bits` (INT_USED_RING, INT_CONFIG).
    pub fn signal(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::SeqCst);
        // A full eventfd counter still means "raised"; there is nothing else to do on error.
        let _ = self.irqfd.write(1);
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ActivateError {
    #[error("the driver set up {got} queues; the device needs {want}")]
    QueueCount { want: usize, got: usize },
    #[error("queue {0} is not valid (size, alignment or addresses)")]
    BadQueue(usize),
}

/// What a virtio device model implements; the transport does the rest.
pub trait VirtioDevice: Send {
    fn device_type(&self) -> u32;
    /// The largest size of each queue; their number is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits offered, F_VERSION_1 included.
    fn features(&self) -> u64;
    /// Read device-specific configuration space at `offset`; out of range reads give zeros.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Write configuration space; read-only devices ignore it.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Start serving `queues` with the negotiated `features`.
    fn activate(&mut self, mem: GuestMemoryMmap, queues: Vec<Queue>, features: u64);
    /// Stop serving and forget the queues (the driver reset the device).
    fn reset(&mut self);
    /// Serve queue `index` after a notification; returns whether the used ring changed. A
    /// device that is not active ignores notifications.
    fn process_queue(&mut self, index: usize) -> bool;
    /// Other descriptors the device waits on (a TAP), watched edge-triggered: the device must
    /// drain what it can each time one is ready.
    fn extra_fds(&self) -> Vec<RawFd> {
        Vec::new()
    }
    /// One of `extra_fds` is ready; returns whether a used ring changed.
    fn process_fd(&mut self, _fd: RawFd) -> bool {
        false
    }
}
