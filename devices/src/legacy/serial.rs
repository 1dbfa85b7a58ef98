use std::io::Write;

use vm_superio::serial::SerialEvents;
use vmm_sys_util::eventfd::EventFd;

use super::EventFdTrigger;
use crate::BusDevice;

/// Signals `ready` whenever the guest has drained the receive FIFO, so whoever feeds console
/// input can stop reading its source while the FIFO is full and resume here: no byte is lost.
pub struct SerialInput {
    ready: EventFd,
}

impl SerialInput {
    pub fn new(ready: EventFd) -> Self {
        Self { ready }
    }
}

impl SerialEvents for SerialInput {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        // If this write fails the reader is already signalled (counter overflow is impossible
        // at one increment per drained FIFO).
        let _ = self.ready.write(1);
    }
}

/// A 16550A UART (vm-superio) behind the bus; 8 ports, IRQ through `interrupt`.
pub struct Serial<W: Write + Send>(vm_superio::Serial<EventFdTrigger, SerialInput, W>);

/// The UART's registers and receive FIFO, for a snapshot (vm-superio's `SerialState`, as
/// serde data).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SerialSnapshot {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

impl<W: Write + Send> Serial<W> {
    pub fn new(interrupt: EventFdTrigger, input: SerialInput, out: W) -> Self {
        Self(vm_superio::Serial::with_events(interrupt, input, out))
    }

    /// A UART in the state `snapshot` recorded (its pending interrupts raised again); an
    /// error if the snapshot's FIFO is larger than a UART's.
    pub fn restored(
        snapshot: &SerialSnapshot,
        interrupt: EventFdTrigger,
        input: SerialInput,
        out: W,
    ) -> std::io::Result<Self> {
        let s = snapshot.clone();
        let state = vm_superio::serial::SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        };
        vm_superio::Serial::from_state(&state, interrupt, input, out)
            .map(Self)
            .map_err(|e| match e {
                vm_superio::serial::Error::Trigger(e) | vm_superio::serial::Error::IOError(e) => e,
                vm_superio::serial::Error::FullFifo => std::io::ErrorKind::InvalidData.into(),
            })
    }

    pub fn snapshot(&self) -> SerialSnapshot {
        let s = self.0.state();
        SerialSnapshot {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    /// Room left in the receive FIFO.
    pub fn input_capacity(&self) -> usize {
        self.0.fifo_capacity()
    }

    /// Queue bytes for the guest to read; returns how many fit.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.enqueue_raw_bytes(bytes).map_err(|e| match e {
            vm_superio::serial::Error::Trigger(e) | vm_superio::serial::Error::IOError(e) => e,
            vm_superio::serial::Error::FullFifo => std::io::ErrorKind::WouldBlock.into(),
        })
    }
}

impl<W: Write + Send> BusDevice for Serial<W> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        data[0] = self.0.read(u8::try_from(offset).unwrap_or(u8::MAX));
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), Some(&value)) = (u8::try_from(offset), data.first()) {
            // Output errors (a closed stdout) must not stop the guest.
            let _ = self.0.write(offset, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const THR: u64 = 0;
    const RBR: u64 = 0;

    #[test]
    fn output_and_input_round_trip() {
        let irq = EventFd::new(libc_nonblock()).unwrap();
        let ready = EventFd::new(libc_nonblock()).unwrap();
        let ready_peer = ready.try_clone().unwrap();
        let mut s = Serial::new(
            EventFdTrigger(irq),
            SerialInput::new(ready),
            Vec::<u8>::new(),
        );
        s.write(THR, b"h");
        s.write(THR, b"i");
        assert_eq!(s.0.writer(), b"hi");

        let cap = s.input_capacity();
        assert_eq!(s.enqueue_input(b"ab").unwrap(), 2);
        assert_eq!(s.input_capacity(), cap - 2);
        let mut b = [0u8];
        s.read(RBR, &mut b);
        assert_eq!(b, *b"a");
        s.read(RBR, &mut b);
        assert_eq!(b, *b"b");
        // Draining the FIFO tells the input side to resume.
        assert_eq!(ready_peer.read().unwrap(), 1);
    }

    fn libc_nonblock() -> i32 {
        vmm_sys_util::eventfd::EFD_NONBLOCK
    }
}
