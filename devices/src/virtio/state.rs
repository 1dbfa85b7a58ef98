//! A virtio device's transport and queues as plain serde data, for a snapshot: what the
//! driver negotiated and set up, and where each queue's device side has got to.

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState};

/// virtio-queue's `QueueState`, as serde data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    pub max_size: u16,
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx_enabled: bool,
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
}

impl From<&Queue> for QueueSnapshot {
    fn from(q: &Queue) -> Self {
        let s = q.state();
        Self {
            max_size: s.max_size,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx_enabled: s.event_idx_enabled,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
        }
    }
}

impl QueueSnapshot {
    /// The queue, validated as virtio-queue validates a driver's settings.
    pub fn queue(&self) -> Result<Queue, virtio_queue::Error> {
        Queue::try_from(QueueState {
            max_size: self.max_size,
            next_avail: self.next_avail,
            next_used: self.next_used,
            event_idx_enabled: self.event_idx_enabled,
            size: self.size,
            ready: self.ready,
            desc_table: self.desc_table,
            avail_ring: self.avail_ring,
            used_ring: self.used_ring,
        })
    }
}

/// An MMIO transport's registers, its interrupt status, and its queues (the device's own,
/// once the driver started it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportSnapshot {
    pub device_type: u32,
    pub status: u32,
    pub driver_features: u64,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub queue_sel: u32,
    pub config_generation: u32,
    pub interrupt_status: u32,
    pub refused: Vec<bool>,
    pub queues: Vec<QueueSnapshot>,
    /// The device had state the snapshot cannot keep (vsock: open connections); its restore
    /// tells the driver (a transport reset). Absent in older files: nothing was lost.
    #[serde(default)]
    pub lost: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RestoreError {
    #[error("the snapshot's device {slot} is of type {found}, this VM's is {want}")]
    DeviceType { slot: usize, found: u32, want: u32 },
    #[error("the snapshot's device {slot} has {found} queues, this VM's has {want}")]
    QueueCount {
        slot: usize,
        found: usize,
        want: usize,
    },
    #[error("the snapshot's device {slot} has a queue that is not valid")]
    BadQueue { slot: usize },
}
