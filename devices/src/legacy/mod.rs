//! Legacy PC devices: 8250 serial, i8042 (reset and Ctrl+Alt+Del) and gureum's boot-timer port.

mod boot_timer;
mod i8042;
mod serial;

pub use boot_timer::{BootTimer, BootTimerEvent};
pub use i8042::{CTRL_ALT_DEL, I8042, I8042Snapshot};
pub use serial::{Serial, SerialInput, SerialSnapshot};

use vmm_sys_util::eventfd::EventFd;

/// An eventfd that vm-superio devices signal (an interrupt line, a reset request).
pub struct EventFdTrigger(pub EventFd);

impl vm_superio::Trigger for EventFdTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}
