use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::BusDevice;

/// One write to the boot-timer port: the byte the guest wrote and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootTimerEvent {
    pub value: u8,
    pub at: Instant,
}

/// A one-byte port the guest writes at the boot milestones it chooses (the default init writes
/// 1 when userspace is up). The VMM reads the recorded events to report boot phases.
#[derive(Clone, Default)]
pub struct BootTimer {
    events: Arc<Mutex<Vec<BootTimerEvent>>>,
}

/// At most this many events are kept, so a guest writing in a loop cannot grow host memory.
const MAX_EVENTS: usize = 64;

impl BootTimer {
    pub fn new() -> Self {
        Self::default()
    }

    /// The events recorded so far, oldest first.
    pub fn events(&self) -> Vec<BootTimerEvent> {
        crate::bus::lock(&self.events).clone()
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        let at = Instant::now();
        let mut events = crate::bus::lock(&self.events);
        if let (Some(&value), true) = (data.first(), events.len() < MAX_EVENTS) {
            events.push(BootTimerEvent { value, at });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_writes_up_to_a_bound() {
        let timer = BootTimer::new();
        let mut dev = timer.clone();
        dev.write(0, &[1]);
        dev.write(0, &[2, 9]);
        let ev = timer.events();
        assert_eq!(ev.iter().map(|e| e.value).collect::<Vec<_>>(), [1, 2]);
        assert!(ev[0].at <= ev[1].at);
        for _ in 0..1000 {
            dev.write(0, &[3]);
        }
        assert_eq!(timer.events().len(), MAX_EVENTS);
    }
}
