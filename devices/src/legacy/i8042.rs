//! The i8042 keyboard controller, as far as a microVM needs one: the reset line (0xFE on the
//! command port, how `reboot=k` ends a guest) and a keyboard that sends one key combination,
//! Ctrl+Alt+Del (Firecracker's `SendCtrlAltDel` action), on IRQ 1, for a guest whose AT
//! keyboard driver turns it into a clean shutdown. Spans ports 0x60 (data) to 0x64
//! (status/command). The controller answers the commands Linux's i8042 driver probes with;
//! the keyboard acknowledges whatever it is sent and has no other keys.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::EventFdTrigger;
use crate::BusDevice;

const DATA: u64 = 0;
const COMMAND: u64 = 4;

/// Status: output buffer full (a byte to read at 0x60); the system flag (self-test passed);
/// the last write was a command; the keyboard is not inhibited.
const SB_OUT_FULL: u8 = 0x01;
const SB_SYSTEM: u8 = 0x04;
const SB_COMMAND: u8 = 0x08;
const SB_KBD_ENABLED: u8 = 0x10;

/// Control byte: keyboard interrupt on; system flag. No scancode translation: the keyboard
/// sends set 2, as Firecracker's does.
const CB_KBD_INT: u8 = 0x01;
const CB_SYSTEM: u8 = 0x04;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_SELF_TEST: u8 = 0xAA;
const CMD_KBD_TEST: u8 = 0xAB;
const CMD_READ_OUTPUT_PORT: u8 = 0xD0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xD1;
const CMD_RESET_CPU: u8 = 0xFE;

const SELF_TEST_OK: u8 = 0x55;
const KBD_ACK: u8 = 0xFA;
const KBD_RESET: u8 = 0xFF;
const KBD_RESET_OK: u8 = 0xAA;

/// Ctrl, Alt and Delete pressed, in scancode set 2 (Delete is an extended key).
pub const CTRL_ALT_DEL: [u8; 4] = [0x14, 0x11, 0xE0, 0x71];

/// More than any key sequence plus answers; a guest that never reads loses the rest.
const BUFFER: usize = 16;

/// The controller's state, for a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct I8042Snapshot {
    pub control: u8,
    pub pending: Option<u8>,
    pub last_was_command: bool,
    /// Bytes the guest has not read yet.
    pub out: Vec<u8>,
}

pub struct I8042 {
    reset: EventFdTrigger,
    /// IRQ 1, raised for each byte the keyboard puts in the output buffer.
    irq: EventFdTrigger,
    control: u8,
    /// A controller command waiting for its data byte (0x60, 0xD1).
    pending: Option<u8>,
    last_was_command: bool,
    out: VecDeque<u8>,
}

impl I8042 {
    pub fn new(reset: EventFdTrigger, irq: EventFdTrigger) -> Self {
        Self {
            reset,
            irq,
            control: CB_KBD_INT | CB_SYSTEM,
            pending: None,
            last_was_command: false,
            out: VecDeque::new(),
        }
    }

    pub fn snapshot(&self) -> I8042Snapshot {
        I8042Snapshot {
            control: self.control,
            pending: self.pending,
            last_was_command: self.last_was_command,
            out: self.out.iter().copied().collect(),
        }
    }

    /// Puts the controller in the state `s` recorded (an interrupt it had raised is in the
    /// saved irqchip, so none is raised here). A longer buffer than ours is cut short.
    pub fn restore(&mut self, s: &I8042Snapshot) {
        self.control = s.control;
        self.pending = s.pending;
        self.last_was_command = s.last_was_command;
        self.out = s.out.iter().copied().take(BUFFER).collect();
    }

    /// Presses Ctrl+Alt+Delete. Err: the interrupt could not be raised.
    pub fn ctrl_alt_del(&mut self) -> std::io::Result<()> {
        for b in CTRL_ALT_DEL {
            self.push(b);
        }
        self.interrupt()
    }

    fn push(&mut self, byte: u8) {
        if self.out.len() < BUFFER {
            self.out.push_back(byte);
        }
    }

    fn interrupt(&self) -> std::io::Result<()> {
        if self.control & CB_KBD_INT != 0 && !self.out.is_empty() {
            vm_superio::Trigger::trigger(&self.irq)?;
        }
        Ok(())
    }

    fn status(&self) -> u8 {
        let mut s = SB_SYSTEM | SB_KBD_ENABLED;
        if !self.out.is_empty() {
            s |= SB_OUT_FULL;
        }
        if self.last_was_command {
            s |= SB_COMMAND;
        }
        s
    }

    fn command(&mut self, cmd: u8) {
        match cmd {
            CMD_READ_CTR => self.push(self.control),
            CMD_WRITE_CTR | CMD_WRITE_OUTPUT_PORT => self.pending = Some(cmd),
            CMD_SELF_TEST => self.push(SELF_TEST_OK),
            CMD_KBD_TEST => self.push(0),
            // The output port: A20 on, no reset.
            CMD_READ_OUTPUT_PORT => self.push(0x03),
            // A failed reset signal leaves the guest spinning; the VMM's timeout still applies.
            CMD_RESET_CPU => drop(vm_superio::Trigger::trigger(&self.reset)),
            // Keyboard and aux enable/disable, and the rest: nothing to do.
            _ => {}
        }
    }

    fn data(&mut self, value: u8) {
        match self.pending.take() {
            Some(CMD_WRITE_CTR) => self.control = value,
            Some(_) => {} // the output port: A20 is always on
            // To the keyboard: it acknowledges everything; a reset also reports its self-test.
            None => {
                self.push(KBD_ACK);
                if value == KBD_RESET {
                    self.push(KBD_RESET_OK);
                }
                let _ = self.interrupt();
            }
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let value = match offset {
            DATA => {
                let byte = self.out.pop_front().unwrap_or(0);
                // The next byte gets its own interrupt, as a keyboard sends one at a time.
                let _ = self.interrupt();
                byte
            }
            COMMAND => self.status(),
            _ => 0,
        };
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            COMMAND => {
                self.last_was_command = true;
                self.command(value);
            }
            DATA => {
                self.last_was_command = false;
                self.data(value);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

    fn device() -> (I8042, EventFd, EventFd) {
        let reset = EventFd::new(EFD_NONBLOCK).unwrap();
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let d = I8042::new(
            EventFdTrigger(reset.try_clone().unwrap()),
            EventFdTrigger(irq.try_clone().unwrap()),
        );
        (d, reset, irq)
    }

    fn inb(d: &mut I8042, offset: u64) -> u8 {
        let mut b = [0xffu8];
        d.read(offset, &mut b);
        b[0]
    }

    #[test]
    fn ctrl_alt_del_arrives_byte_by_byte_with_an_interrupt_each() {
        let (mut d, _reset, irq) = device();
        assert_eq!(inb(&mut d, COMMAND) & SB_OUT_FULL, 0);
        d.ctrl_alt_del().unwrap();
        let mut got = Vec::new();
        while inb(&mut d, COMMAND) & SB_OUT_FULL != 0 {
            assert!(irq.read().is_ok(), "an interrupt for byte {}", got.len());
            got.push(inb(&mut d, DATA));
        }
        assert_eq!(got, CTRL_ALT_DEL);
        assert!(irq.read().is_err(), "no interrupt once the buffer is empty");
    }

    #[test]
    fn the_probe_s_commands_are_answered_and_0xfe_resets() {
        let (mut d, reset, irq) = device();
        d.write(COMMAND, &[CMD_SELF_TEST]);
        assert_eq!(inb(&mut d, COMMAND) & (SB_OUT_FULL | SB_COMMAND), 0x09);
        assert_eq!(inb(&mut d, DATA), SELF_TEST_OK);
        d.write(COMMAND, &[CMD_READ_CTR]);
        assert_eq!(inb(&mut d, DATA), CB_KBD_INT | CB_SYSTEM);
        // Interrupts off: a key press sets the status but raises nothing.
        d.write(COMMAND, &[CMD_WRITE_CTR]);
        d.write(DATA, &[CB_SYSTEM]);
        d.ctrl_alt_del().unwrap();
        assert!(irq.read().is_err());
        while inb(&mut d, COMMAND) & SB_OUT_FULL != 0 {
            inb(&mut d, DATA);
        }
        // The keyboard: reset is acknowledged and passes.
        d.write(DATA, &[KBD_RESET]);
        assert_eq!(
            (inb(&mut d, DATA), inb(&mut d, DATA)),
            (KBD_ACK, KBD_RESET_OK)
        );
        assert!(reset.read().is_err());
        d.write(COMMAND, &[CMD_RESET_CPU]);
        assert_eq!(reset.read().unwrap(), 1);
    }

    #[test]
    fn a_restored_controller_has_the_saved_keys_and_settings() {
        let (mut d, _reset, _irq) = device();
        d.write(COMMAND, &[CMD_WRITE_CTR]);
        d.write(DATA, &[CB_SYSTEM]);
        d.ctrl_alt_del().unwrap();
        inb(&mut d, DATA);
        let saved = d.snapshot();
        let (mut fresh, _reset, irq) = device();
        fresh.restore(&saved);
        assert!(irq.read().is_err(), "no interrupt of its own");
        let mut got = Vec::new();
        while inb(&mut fresh, COMMAND) & SB_OUT_FULL != 0 {
            got.push(inb(&mut fresh, DATA));
        }
        assert_eq!(got, CTRL_ALT_DEL[1..]);
        fresh.write(COMMAND, &[CMD_READ_CTR]);
        assert_eq!(inb(&mut fresh, DATA), CB_SYSTEM);
        let long = I8042Snapshot {
            out: vec![1; 100],
            ..saved
        };
        fresh.restore(&long);
        assert_eq!(fresh.out.len(), BUFFER);
    }

    #[test]
    fn a_guest_that_never_reads_cannot_grow_the_buffer() {
        let (mut d, _reset, _irq) = device();
        for _ in 0..100 {
            d.ctrl_alt_del().unwrap();
        }
        assert_eq!(d.out.len(), BUFFER);
    }
}
