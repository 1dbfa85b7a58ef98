//! An address-range bus shared by the vCPU threads: port I/O and MMIO exits are dispatched
//! through it, so no port number or address appears in the vCPU loop.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device reachable through a [`Bus`]. Offsets are relative to the device's base address.
pub trait BusDevice: Send {
    /// Fill `data` with what the guest reads at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Take what the guest writes at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("device range {base:#x}+{len:#x} is empty or wraps around")]
    InvalidRange { base: u64, len: u64 },
    #[error("device range {base:#x}+{len:#x} overlaps another device")]
    Overlap { base: u64, len: u64 },
}

struct Entry {
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// Devices keyed by base address; ranges never overlap.
#[derive(Default)]
pub struct Bus {
    devices: BTreeMap<u64, Entry>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Attach `device` at `[base, base + len)`.
    pub fn insert(
        &mut self,
        base: u64,
        len: u64,
        device: Arc<Mutex<dyn BusDevice>>,
    ) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidRange { base, len })?;
        let before = self.devices.range(..end).next_back();
        if before.is_some_and(|(b, e)| b + e.len > base) {
            return Err(BusError::Overlap { base, len });
        }
        self.devices.insert(base, Entry { len, device });
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(u64, &Entry)> {
        let (base, entry) = self.devices.range(..=addr).next_back()?;
        let offset = addr - base;
        (offset.checked_add(size as u64)? <= entry.len).then_some((offset, entry))
    }

    /// Dispatch a read; returns false when no device covers the access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, entry)) => {
                lock(&entry.device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatch a write; returns false when no device covers the access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, entry)) => {
                lock(&entry.device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Lock a device, recovering it if a previous holder panicked: device state is plain data and
/// one failed access must not take the whole VM down.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Reg(Vec<u8>);
    impl BusDevice for Reg {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.0[usize::try_from(offset).unwrap()]);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0[usize::try_from(offset).unwrap()] = data[0];
        }
    }

    fn reg(len: usize) -> Arc<Mutex<dyn BusDevice>> {
        Arc::new(Mutex::new(Reg(vec![0; len])))
    }

    #[test]
    fn dispatches_by_range_and_offset() {
        let mut bus = Bus::new();
        bus.insert(0x3f8, 8, reg(8)).unwrap();
        bus.insert(0x60, 5, reg(5)).unwrap();
        assert!(bus.write(0x3fb, &[7]));
        let mut b = [0u8];
        assert!(bus.read(0x3fb, &mut b));
        assert_eq!(b, [7]);
        assert!(!bus.read(0x3f7, &mut b));
        assert!(!bus.read(0x400, &mut b));
        // An access that starts inside but runs past the end is not the device's.
        assert!(!bus.read(0x3ff, &mut [0u8; 2]));
    }

    #[test]
    fn rejects_overlaps_and_bad_ranges() {
        let mut bus = Bus::new();
        bus.insert(0x100, 0x10, reg(16)).unwrap();
        assert_eq!(
            bus.insert(0x10f, 1, reg(1)),
            Err(BusError::Overlap {
                base: 0x10f,
                len: 1
            })
        );
        assert_eq!(
            bus.insert(0xf8, 0x10, reg(16)),
            Err(BusError::Overlap {
                base: 0xf8,
                len: 0x10
            })
        );
        assert!(bus.insert(0x110, 1, reg(1)).is_ok());
        assert!(bus.insert(0xf0, 0x10, reg(16)).is_ok());
        assert!(matches!(
            bus.insert(5, 0, reg(1)),
            Err(BusError::InvalidRange { .. })
        ));
        assert!(matches!(
            bus.insert(u64::MAX, 2, reg(1)),
            Err(BusError::InvalidRange { .. })
        ));
    }
}
