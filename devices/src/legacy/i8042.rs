use vm_superio::I8042Device;

use super::EventFdTrigger;
use crate::BusDevice;

/// The i8042 keyboard controller, kept for one job: a guest writing 0xFE to its command port
/// (0x64) asks for a CPU reset, which signals the reset eventfd. Spans ports 0x60..0x65.
pub struct I8042(I8042Device<EventFdTrigger>);

impl I8042 {
    pub fn new(reset: EventFdTrigger) -> Self {
        Self(I8042Device::new(reset))
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // Offsets are 0..5 by construction of the bus range.
        let value = self.0.read(u8::try_from(offset).unwrap_or(u8::MAX));
        data.fill(0);
        data[0] = value;
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), Some(&value)) = (u8::try_from(offset), data.first()) {
            // A failed reset signal leaves the guest spinning; the VMM's timeout still applies.
            let _ = self.0.write(offset, value);
        }
    }
}
