//! vCPU threads. Each runs KVM_RUN in a loop and dispatches port I/O and MMIO exits through the
//! buses; how the guest ended is reported once, through [`GuestExit`].

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use gureum_devices::{Bus, bus::lock};
use kvm_bindings::{
    CpuId, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::state::{self, VcpuState};
use crate::arch::x86_64::{cpuid, regs};
use crate::pause::{self, PauseGate};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create vCPU {0}")]
    Create(u8, #[source] kvm_ioctls::Error),
    #[error("cannot set the CPUID of vCPU {0}")]
    Cpuid(u8, #[source] kvm_ioctls::Error),
    #[error("cannot set up vCPU {0}")]
    Setup(u8, #[source] regs::Error),
    #[error("cannot start the thread of vCPU {0}")]
    Spawn(u8, #[source] std::io::Error),
    #[error("cannot restore vCPU {0}")]
    Restore(u8, #[source] state::Error),
}

/// How the guest ended, as seen by a vCPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestExit {
    /// The guest asked for a reset or power-off (KVM system event, or HLT with no in-kernel
    /// interrupt controller to wake it).
    Stopped(&'static str),
    /// A triple fault (KVM_EXIT_SHUTDOWN): how a `reboot=t` guest resets, but also how a guest
    /// that crashed before it could print anything ends; it carries where that vCPU was.
    TripleFault(String),
    /// The guest or KVM failed in a way the guest cannot recover from.
    Crashed(String),
}

/// The first [`GuestExit`] reported wins; reporting wakes the event loop.
pub struct ExitSlot {
    reason: Mutex<Option<GuestExit>>,
    pub evt: EventFd,
}

impl ExitSlot {
    pub fn new(evt: EventFd) -> Self {
        Self {
            reason: Mutex::new(None),
            evt,
        }
    }

    pub fn report(&self, exit: GuestExit) {
        lock(&self.reason).get_or_insert(exit);
        // The reason is recorded; a failed wake-up leaves the VM's timeout to end the run.
        let _ = self.evt.write(1);
    }

    pub fn reason(&self) -> Option<GuestExit> {
        lock(&self.reason).clone()
    }
}

/// What the VMM asks of its running vCPU threads: pause (the gate), and, while paused, each
/// thread's KVM state for a snapshot (only the thread that owns a vCPU's fd reads it).
pub struct VcpuControl {
    pub gate: PauseGate,
    msr_indices: Vec<u32>,
    saved: Mutex<Vec<Option<Result<VcpuState, String>>>>,
}

impl VcpuControl {
    pub fn new(vcpus: usize, msr_indices: Vec<u32>) -> Self {
        Self {
            gate: PauseGate::default(),
            msr_indices,
            saved: Mutex::new((0..vcpus).map(|_| None).collect()),
        }
    }

    /// The state of every vCPU, in order; the VM must be paused.
    pub fn save_all(&self, within: Duration) -> Result<Vec<VcpuState>, SaveError> {
        lock(&self.saved).iter_mut().for_each(|s| *s = None);
        self.gate.on_every_parked(within)?;
        let saved = std::mem::take(&mut *lock(&self.saved));
        *lock(&self.saved) = saved.iter().map(|_| None).collect();
        (saved.into_iter().enumerate())
            .map(|(id, s)| match s {
                Some(Ok(state)) => Ok(state),
                Some(Err(why)) => Err(SaveError::Vcpu(id, why)),
                None => Err(SaveError::Vcpu(id, "its thread has ended".into())),
            })
            .collect()
    }

    fn save(&self, id: u8, fd: &VcpuFd) {
        let state = state::save_vcpu(fd, &self.msr_indices).map_err(|e| crate::boot::chain(&e));
        if let Some(slot) = lock(&self.saved).get_mut(usize::from(id)) {
            *slot = Some(state);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error(transparent)]
    Pause(#[from] pause::Error),
    #[error("vCPU {0}: {1}")]
    Vcpu(usize, String),
}

pub struct Vcpu {
    id: u8,
    fd: VcpuFd,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    exit: Arc<ExitSlot>,
}

impl Vcpu {
    /// Create vCPU `id` of `count` with its boot state: CPUID, MSRs, long mode at `entry`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        vm: &VmFd,
        supported_cpuid: &CpuId,
        id: u8,
        count: u8,
        entry: GuestAddress,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
        exit: Arc<ExitSlot>,
    ) -> Result<Self, Error> {
        let vcpu = Self::create(vm, supported_cpuid, id, count, pio, mmio, exit)?;
        let setup = |e| Error::Setup(id, e);
        regs::setup_msrs(&vcpu.fd).map_err(setup)?;
        regs::setup_regs(&vcpu.fd, entry).map_err(setup)?;
        regs::setup_fpu(&vcpu.fd).map_err(setup)?;
        regs::setup_sregs(&vcpu.fd).map_err(setup)?;
        regs::setup_lint(&vcpu.fd).map_err(setup)?;
        Ok(vcpu)
    }

    /// Create vCPU `id` of `count` with its CPUID and nothing else: a restore sets the rest.
    pub fn create(
        vm: &VmFd,
        supported_cpuid: &CpuId,
        id: u8,
        count: u8,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
        exit: Arc<ExitSlot>,
    ) -> Result<Self, Error> {
        let fd = vm
            .create_vcpu(id.into())
            .map_err(|e| Error::Create(id, e))?;
        fd.set_cpuid2(&cpuid::for_vcpu(supported_cpuid, id, count))
            .map_err(|e| Error::Cpuid(id, e))?;
        Ok(Self {
            id,
            fd,
            pio,
            mmio,
            exit,
        })
    }

    /// Puts a snapshot's state into this (just created) vCPU.
    pub fn restore(&self, state: &VcpuState) -> Result<(), Error> {
        state::restore_vcpu(&self.fd, state).map_err(|e| Error::Restore(self.id, e))
    }

    /// Run on a thread of its own until the guest stops or crashes, parking whenever `gate`
    /// asks for a pause.
    pub fn start(
        mut self,
        first_entry: Arc<OnceLock<Instant>>,
        control: Arc<VcpuControl>,
    ) -> Result<(), Error> {
        let id = self.id;
        std::thread::Builder::new()
            .name(format!("vcpu{}", self.id))
            .spawn(move || {
                pause::enter(self.fd.get_kvm_run());
                control.gate.register();
                // Held from the start (a snapshot loaded paused): park before the first entry.
                control
                    .gate
                    .park_if_requested(|| control.save(self.id, &self.fd));
                if self.id == 0 {
                    first_entry.get_or_init(Instant::now);
                }
                let exit = self.run(&control);
                control.gate.unregister();
                self.exit.report(exit);
            })
            .map(drop)
            .map_err(|e| Error::Spawn(id, e))
    }

    fn run(&mut self, control: &VcpuControl) -> GuestExit {
        loop {
            let exit = match self.fd.run() {
                Ok(VcpuExit::IoIn(port, data)) => {
                    if !self.pio.read(port.into(), data) {
                        data.fill(0xff);
                    }
                    continue;
                }
                Ok(VcpuExit::IoOut(port, data)) => {
                    self.pio.write(port.into(), data);
                    continue;
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    if !self.mmio.read(addr, data) {
                        data.fill(0xff);
                    }
                    continue;
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    self.mmio.write(addr, data);
                    continue;
                }
                Ok(VcpuExit::Hlt) => GuestExit::Stopped("halted"),
                Ok(VcpuExit::Shutdown) => GuestExit::TripleFault(self.whereabouts()),
                Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => GuestExit::Stopped("power-off"),
                    KVM_SYSTEM_EVENT_RESET => GuestExit::Stopped("reset"),
                    KVM_SYSTEM_EVENT_CRASH => {
                        GuestExit::Crashed("the guest reported a crash".into())
                    }
                    other => GuestExit::Crashed(format!("unknown system event {other}")),
                },
                Ok(VcpuExit::FailEntry(reason, cpu)) => GuestExit::Crashed(format!(
                    "KVM could not enter vCPU {} (hardware reason {reason:#x}, cpu {cpu})",
                    self.id
                )),
                Ok(VcpuExit::InternalError) => GuestExit::Crashed(self.internal_error()),
                Ok(VcpuExit::Intr | VcpuExit::IrqWindowOpen) => continue,
                Ok(other) => GuestExit::Crashed(format!("unexpected VM exit {other:?}")),
                Err(e) if matches!(e.errno(), libc::EINTR | libc::EAGAIN) => {
                    // A kick (pause::on_kick) set immediate_exit: clear it, and park if a
                    // pause is what it was for.
                    self.fd.set_kvm_immediate_exit(0);
                    control
                        .gate
                        .park_if_requested(|| control.save(self.id, &self.fd));
                    continue;
                }
                Err(e) => GuestExit::Crashed(format!("KVM_RUN failed on vCPU {}: {e}", self.id)),
            };
            return exit;
        }
    }

    /// Where this vCPU was when it stopped: which vCPU, its mode and the registers that say
    /// what it was doing (CR2: the last page-fault address; CR3: its page tables).
    fn whereabouts(&self) -> String {
        let (Ok(r), Ok(sr)) = (self.fd.get_regs(), self.fd.get_sregs()) else {
            return format!("vCPU {} (its registers could not be read)", self.id);
        };
        // On AMD, KVM puts a vCPU through INIT after a shutdown: the fault's registers are gone.
        if r.rip == 0xfff0 && sr.cs.selector == 0xf000 {
            return format!(
                "vCPU {} (KVM had already reset it, as it does on AMD: where it faulted is lost)",
                self.id
            );
        }
        format!(
            "vCPU {} rip {:#x} rsp {:#x} rflags {:#x} cs {:#x} cr0 {:#x} cr2 {:#x} cr3 {:#x} \
             cr4 {:#x} efer {:#x}",
            self.id,
            r.rip,
            r.rsp,
            r.rflags,
            sr.cs.selector,
            sr.cr0,
            sr.cr2,
            sr.cr3,
            sr.cr4,
            sr.efer
        )
    }

    /// Describe a KVM internal error, with where the guest was.
    fn internal_error(&mut self) -> String {
        // SAFETY: KVM_RUN returned KVM_EXIT_INTERNAL_ERROR, so `internal` is the active member
        // of the exit union.
        let suberror = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
        let what = match suberror {
            1 => "emulation failure",
            2 => "simultaneous exceptions",
            3 => "delivery event",
            _ => "internal error",
        };
        let rip = self.fd.get_regs().map(|r| r.rip).unwrap_or_default();
        format!(
            "KVM internal error on vCPU {}: {what} at rip {rip:#x}",
            self.id
        )
    }
}
