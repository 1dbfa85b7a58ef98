//! Builds a VM from a [`VmConfig`] and runs it: guest memory, the kernel and its boot
//! structures, legacy devices behind the port I/O bus, vCPU threads, and the event loop.

use std::fs::File;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use gureum_devices::bus::lock;
use gureum_devices::legacy::{BootTimer, EventFdTrigger, I8042, Serial, SerialInput};
use gureum_devices::{Bus, BusError};
use kvm_bindings::{
    KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY, kvm_pit_config, kvm_userspace_memory_region,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::arch::x86_64::{layout::*, mptable, regs, zero_page};
use crate::config::VmConfig;
use crate::event_loop::{ConsoleInput, ExitWatcher, Outcome, block_exit_signals};
use crate::loader;
use crate::phases::Phases;
use crate::vcpu::{self, ExitSlot, Vcpu, VcpuControl};
use crate::virtio_devices;
use gureum_devices::virtio::VirtioHandler;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open /dev/kvm (is KVM enabled, and may this user open it?)")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("this host's KVM lacks a capability gureum needs: {0}")]
    MissingCapability(&'static str),
    #[error("this host's KVM allows at most {max} vCPUs; {asked} were asked for")]
    TooManyVcpus { asked: u8, max: usize },
    #[error("KVM: cannot {0}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    #[error("cannot map {0} MiB of guest memory on this host")]
    Memory(u64, #[source] vm_memory::mmap::FromRangesError),
    #[error(transparent)]
    Loader(#[from] loader::Error),
    #[error("cannot write the zero page")]
    ZeroPage(#[from] zero_page::Error),
    #[error("cannot write the boot tables")]
    BootTables(#[from] regs::Error),
    #[error("cannot write the MP table")]
    MpTable(#[from] mptable::Error),
    #[error("cannot place a device on the bus")]
    Bus(#[from] BusError),
    #[error("cannot set up the console")]
    Console(#[source] std::io::Error),
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    #[error(transparent)]
    Vcpu(#[from] vcpu::Error),
    #[error(transparent)]
    Virtio(#[from] virtio_devices::Error),
    #[error("event loop")]
    EventLoop(#[source] event_manager::Error),
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::Error),
    #[error(transparent)]
    Pause(#[from] crate::pause::Error),
    #[error(transparent)]
    State(#[from] crate::arch::x86_64::state::Error),
    #[error(transparent)]
    Snapshot(#[from] Box<crate::snapshot::Error>),
}

type ConsoleOut = File;

/// A built VM, ready to run.
pub struct Vmm {
    pub(crate) kvm: Kvm,
    pub(crate) vm: Arc<VmFd>,
    pub(crate) config: VmConfig,
    pub(crate) memory: GuestMemoryMmap,
    pub(crate) vcpus: Vec<Vcpu>,
    pub(crate) serial: Arc<Mutex<Serial<ConsoleOut>>>,
    pub(crate) serial_ready: EventFd,
    pub(crate) i8042_reset: EventFd,
    pub(crate) keyboard: Arc<Mutex<I8042>>,
    pub(crate) exit: Arc<ExitSlot>,
    pub(crate) boot_timer: BootTimer,
    pub(crate) virtio: Vec<VirtioHandler>,
    pub(crate) vsock: Option<Arc<Mutex<gureum_devices::virtio::vsock::Vsock>>>,
    pub(crate) transports: Vec<Arc<Mutex<gureum_devices::virtio::MmioTransport>>>,
}

pub(crate) struct LegacyDevices {
    pub serial: Arc<Mutex<Serial<ConsoleOut>>>,
    pub serial_ready: EventFd,
    pub i8042_reset: EventFd,
    pub keyboard: Arc<Mutex<I8042>>,
    pub boot_timer: BootTimer,
}

impl TryFrom<&VmConfig> for Vmm {
    type Error = Error;

    fn try_from(cfg: &VmConfig) -> Result<Self, Error> {
        let kvm = Kvm::new().map_err(Error::OpenKvm)?;
        check_host(&kvm, cfg.vcpus)?;
        let vm = kvm.create_vm().map_err(|e| Error::Kvm("create a VM", e))?;
        let memory = create_guest_memory(cfg.memory_mib)?;
        register_guest_memory(&vm, &memory)?;
        create_irqchip(&vm)?;
        let mut mmio = Bus::new();
        let virtio = virtio_devices::attach(&vm, &mut mmio, &memory, cfg)?;

        let kernel = loader::load_kernel(&memory, &cfg.kernel)?;
        let initrd = match &cfg.initrd {
            Some(path) => Some(loader::load_initrd(&memory, path, &kernel)?),
            None => None,
        };
        let cmdline = format!("{}{}", cfg.cmdline, virtio.cmdline);
        let cmdline_len = loader::load_cmdline(&memory, &cmdline, &kernel)?;
        zero_page::write(
            &memory,
            kernel.setup_header,
            cmdline_len,
            initrd,
            cfg.memory_mib << 20,
        )?;
        regs::write_boot_tables(&memory)?;
        mptable::setup(&memory, cfg.vcpus)?;

        let mut pio = Bus::new();
        let legacy = attach_legacy_devices(&vm, &mut pio, None, None)?;
        let (pio, mmio) = (Arc::new(pio), Arc::new(mmio));
        let exit = Arc::new(ExitSlot::new(eventfd()?));
        let cpuid = supported_cpuid(&kvm)?;
        let vcpus = (0..cfg.vcpus)
            .map(|id| {
                let (pio, mmio, exit) = (pio.clone(), mmio.clone(), exit.clone());
                Vcpu::new(&vm, &cpuid, id, cfg.vcpus, kernel.entry, pio, mmio, exit)
            })
            .collect::<Result<Vec<_>, _>>()?;

        let base = Base {
            kvm,
            vm,
            config: cfg.clone(),
            memory,
        };
        Ok(Vmm::assemble(base, vcpus, legacy, exit, virtio))
    }
}

/// What a VM is built on: KVM, the VM, its config and its memory.
pub(crate) struct Base {
    pub kvm: Kvm,
    pub vm: VmFd,
    pub config: VmConfig,
    pub memory: GuestMemoryMmap,
}

impl Vmm {
    /// A VM from its parts, booted or restored alike.
    pub(crate) fn assemble(
        base: Base,
        vcpus: Vec<Vcpu>,
        legacy: LegacyDevices,
        exit: Arc<ExitSlot>,
        virtio: virtio_devices::Attached,
    ) -> Self {
        Vmm {
            kvm: base.kvm,
            vm: Arc::new(base.vm),
            config: base.config,
            memory: base.memory,
            vcpus,
            serial: legacy.serial,
            serial_ready: legacy.serial_ready,
            i8042_reset: legacy.i8042_reset,
            keyboard: legacy.keyboard,
            exit,
            boot_timer: legacy.boot_timer,
            virtio: virtio.handlers,
            vsock: virtio.vsock,
            transports: virtio.transports,
        }
    }
}

pub(crate) fn supported_cpuid(kvm: &Kvm) -> Result<kvm_bindings::CpuId, Error> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| Error::Kvm("read the supported CPUID", e))
}

pub(crate) fn check_host(kvm: &Kvm, vcpus: u8) -> Result<(), Error> {
    let caps = [
        (Cap::Irqchip, "in-kernel irqchip"),
        (Cap::Pit2, "in-kernel PIT"),
        (Cap::Irqfd, "irqfd"),
        (Cap::UserMemory, "user memory regions"),
        (Cap::SetTssAddr, "TSS address"),
    ];
    if let Some((_, name)) = caps.iter().find(|(cap, _)| !kvm.check_extension(*cap)) {
        return Err(Error::MissingCapability(name));
    }
    let max = kvm.get_max_vcpus();
    if usize::from(vcpus) > max {
        return Err(Error::TooManyVcpus { asked: vcpus, max });
    }
    Ok(())
}

pub(crate) fn eventfd() -> Result<EventFd, Error> {
    EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)
}

fn create_guest_memory(mib: u64) -> Result<GuestMemoryMmap, Error> {
    let ranges: Vec<(GuestAddress, usize)> = ram_ranges(mib << 20)
        .into_iter()
        .map(|(start, len)| {
            (
                GuestAddress(start),
                usize::try_from(len).unwrap_or(usize::MAX),
            )
        })
        .collect();
    let memory = GuestMemoryMmap::from_ranges(&ranges).map_err(|e| Error::Memory(mib, e))?;
    for region in memory.iter() {
        if let Ok(host) = region.get_host_address(vm_memory::MemoryRegionAddress(0)) {
            let len = usize::try_from(region.len()).unwrap_or(0);
            // SAFETY: advises the kernel about a mapping `memory` owns; it changes no contents.
            // Guest RAM is never inherited by child processes, and its distinct flags keep its
            // mappings apart from the heap's in /proc/self/smaps.
            unsafe { libc::madvise(host.cast(), len, libc::MADV_DONTFORK) };
        }
    }
    Ok(memory)
}

pub(crate) fn register_guest_memory(vm: &VmFd, memory: &GuestMemoryMmap) -> Result<(), Error> {
    for (slot, region) in (0u32..).zip(memory.iter()) {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|_| Error::Kvm("find guest memory", kvm_ioctls::Error::new(libc::EFAULT)))?;
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region maps memory owned by `memory`, which lives as long as the VM
        // (both are fields of the Vmm, and the process exits when the VM ends).
        unsafe { vm.set_user_memory_region(region) }
            .map_err(|e| Error::Kvm("register guest memory", e))?;
    }
    Ok(())
}

pub(crate) fn create_irqchip(vm: &VmFd) -> Result<(), Error> {
    vm.set_tss_address(KVM_TSS_ADDRESS)
        .map_err(|e| Error::Kvm("set the TSS address", e))?;
    vm.create_irq_chip()
        .map_err(|e| Error::Kvm("create the in-kernel irqchip", e))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit)
        .map_err(|e| Error::Kvm("create the in-kernel PIT", e))
}

/// 8250 serial on IRQ 4 (console), the i8042 (reset, and Ctrl+Alt+Del on IRQ 1) and the
/// boot-timer port; the serial and the i8042 in the states recorded, where given (a restore).
pub(crate) fn attach_legacy_devices(
    vm: &VmFd,
    pio: &mut Bus,
    serial: Option<&gureum_devices::legacy::SerialSnapshot>,
    keyboard_state: Option<&gureum_devices::legacy::I8042Snapshot>,
) -> Result<LegacyDevices, Error> {
    let serial_irq = eventfd()?;
    vm.register_irqfd(&serial_irq, SERIAL_IRQ)
        .map_err(|e| Error::Kvm("register the serial IRQ", e))?;
    let serial_ready = eventfd()?;
    let ready_for_device = serial_ready.try_clone().map_err(Error::EventFd)?;
    let stdout = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map_err(Error::Console)?;
    let (irq, input, out) = (
        EventFdTrigger(serial_irq),
        SerialInput::new(ready_for_device),
        File::from(stdout),
    );
    let serial = match serial {
        Some(state) => Serial::restored(state, irq, input, out).map_err(Error::Console)?,
        None => Serial::new(irq, input, out),
    };
    let serial = Arc::new(Mutex::new(serial));
    pio.insert(SERIAL_PORT, SERIAL_PORT_LEN, serial.clone())?;

    let i8042_reset = eventfd()?;
    let reset_trigger = EventFdTrigger(i8042_reset.try_clone().map_err(Error::EventFd)?);
    let keyboard_irq = eventfd()?;
    vm.register_irqfd(&keyboard_irq, KEYBOARD_IRQ)
        .map_err(|e| Error::Kvm("register the keyboard IRQ", e))?;
    let mut i8042 = I8042::new(reset_trigger, EventFdTrigger(keyboard_irq));
    if let Some(state) = keyboard_state {
        i8042.restore(state);
    }
    let keyboard = Arc::new(Mutex::new(i8042));
    pio.insert(I8042_PORT, I8042_PORT_LEN, keyboard.clone())?;

    let boot_timer = BootTimer::new();
    pio.insert(BOOT_TIMER_PORT, 1, Arc::new(Mutex::new(boot_timer.clone())))?;
    Ok(LegacyDevices {
        serial,
        serial_ready,
        i8042_reset,
        keyboard,
        boot_timer,
    })
}

impl Vmm {
    /// Start the vCPUs and serve events until the guest stops, crashes, times out or a signal
    /// arrives. With a `confinement`, every thread is confined before the guest runs.
    pub fn run(
        self,
        timeout: Option<Duration>,
        phases: &mut Phases,
        confinement: Option<crate::seccomp::Confinement>,
        api: Option<crate::api::server::Sockets>,
        paused: bool,
    ) -> Result<Outcome, Error> {
        crate::pause::install_kick_handler()?;
        // The MSR list is for snapshots, which only the API takes: no ioctl for it otherwise.
        let msrs = match api {
            Some(_) => crate::arch::x86_64::state::msr_indices(&self.kvm)?,
            None => Vec::new(),
        };
        let control = Arc::new(VcpuControl::new(self.vcpus.len(), msrs));
        if paused {
            // A snapshot loaded without resume_vm: the vCPUs park before their first entry.
            control.gate.hold();
        }
        let signals = block_exit_signals().map_err(Error::EventFd)?;
        let mut events = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new()
            .map_err(Error::EventLoop)?;
        let watcher = ExitWatcher::new(self.exit.clone(), self.i8042_reset, signals, timeout)
            .map_err(Error::EventFd)?;
        let outcome = watcher.outcome.clone();
        events.add_subscriber(Arc::new(Mutex::new(watcher)));
        let console = ConsoleInput::new(self.serial.clone(), self.serial_ready);
        events.add_subscriber(Arc::new(Mutex::new(console)));
        for handler in self.virtio {
            events.add_subscriber(Arc::new(Mutex::new(handler)));
        }
        if let Some(sockets) = api {
            let within = Duration::from_secs(5) * crate::host_check::slowdown();
            let vm = crate::api::Vm {
                id: "anonymous-instance".into(),
                vcpus: self.config.vcpus,
                memory_mib: self.config.memory_mib,
                control: control.clone(),
                pause_within: within,
                snapshots: Some(crate::snapshot::Snapshotter {
                    control: control.clone(),
                    vm: self.vm.clone(),
                    memory: self.memory.clone(),
                    serial: self.serial.clone(),
                    keyboard: self.keyboard.clone(),
                    transports: self.transports.clone(),
                    config: self.config.clone(),
                    cpuid_digest: crate::snapshot::cpuid_digest(&self.kvm, self.config.vcpus)?,
                    within,
                    jail: confinement.as_ref().and_then(|c| c.jail.clone()),
                }),
                keyboard: Some(self.keyboard.clone()),
            };
            let server = crate::api::server::ApiServer::new(sockets, vm);
            events.add_subscriber(Arc::new(Mutex::new(server)));
        }

        phases.vm_built = Some(Instant::now());
        let first_entry = Arc::new(OnceLock::new());
        // Installed once, here: the vCPU threads inherit it (one compile by the kernel, where
        // one per thread cost ~0.3 ms each, serialized, before the first guest entry).
        if let Some(c) = &confinement {
            if c.new_netns {
                crate::seccomp::unshare_netns()?;
            }
            if let Some(dir) = &c.jail {
                crate::seccomp::chroot(dir)?;
                if let Some(vsock) = &self.vsock {
                    lock(vsock).jail();
                }
            }
            crate::seccomp::apply(&c.filter)?;
        }
        for vcpu in self.vcpus {
            vcpu.start(first_entry.clone(), control.clone())?;
        }
        let outcome = loop {
            match events.run() {
                Ok(_) => {}
                Err(event_manager::Error::Epoll(e)) if e.errno() == libc::EINTR => {}
                Err(e) => return Err(Error::EventLoop(e)),
            }
            if let Some(outcome) = lock(&outcome).clone() {
                break outcome;
            }
        };
        phases.shutdown = Some(Instant::now());
        phases.first_entry = first_entry.get().copied();
        phases.boot_timer = self.boot_timer.events().first().map(|e| e.at);
        if let Some((total, guest)) = phases.smaps().map(|s| resident_bytes(&self.memory, s)) {
            phases.rss = Some(total);
            phases.guest_touched = Some(guest);
        }
        Ok(outcome)
    }
}

/// The process's resident bytes, and those of guest memory the guest has written (the resident
/// set of guest memory's own mappings), from one read of /proc/self/smaps. (Pages the guest only
/// read map the shared zero page and cost nothing; mincore would count them.) smaps walks the
/// page tables, so it is exact where /proc/self/status's VmRSS lags: Linux 6.1 counts a thread's
/// faults in a per-thread cache, and a VM's pages, faulted by its vCPU threads, went uncounted.
fn resident_bytes(memory: &GuestMemoryMmap, smaps: &File) -> (u64, u64) {
    let regions: Vec<(u64, u64)> = memory
        .iter()
        .filter_map(|r| {
            let host = r.get_host_address(vm_memory::MemoryRegionAddress(0)).ok()? as u64;
            Some((host, host + r.len()))
        })
        .collect();
    let smaps = crate::phases::reread(smaps).unwrap_or_default();
    let (total, guest) = rss_kib(&smaps, &regions);
    (total * 1024, guest * 1024)
}

/// Sum the `Rss:` of all smaps entries, and of those that overlap one of `regions` (host
/// address ranges).
fn rss_kib(smaps: &str, regions: &[(u64, u64)]) -> (u64, u64) {
    let mut inside = false;
    let (mut total, mut guest) = (0, 0);
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ').filter(|(r, _)| r.contains('-')) {
            let bounds = range.split_once('-').and_then(|(a, b)| {
                Some((
                    u64::from_str_radix(a, 16).ok()?,
                    u64::from_str_radix(b, 16).ok()?,
                ))
            });
            inside = bounds.is_some_and(|(a, b)| regions.iter().any(|&(s, e)| a < e && b > s));
        } else if let Some(rss) = line.strip_prefix("Rss:") {
            let kib = rss
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .unwrap_or(0);
            total += kib;
            if inside {
                guest += kib;
            }
        }
    }
    (total, guest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_rss_counts_only_guest_mappings() {
        let smaps = "\
7f0000000000-7f0008000000 rw-p 00000000 00:00 0
Size:             131072 kB
Rss:                 512 kB
Pss:                 512 kB
7f0008000000-7f0008001000 rw-p 00000000 00:00 0
Rss:                   4 kB
55d000000000-55d000100000 r-xp 00000000 fd:00 42 /usr/bin/gureum
Rss:                 900 kB
";
        let guest = [(0x7f00_0000_0000, 0x7f00_0800_0000)];
        assert_eq!(rss_kib(smaps, &guest), (1416, 512));
        assert_eq!(rss_kib(smaps, &[]), (1416, 0));
    }

    #[test]
    fn guest_rss_of_this_process_sees_written_pages_only() {
        let mem = create_guest_memory(16).unwrap();
        // One descriptor, read anew each time, as the confined VMM reads it.
        let smaps = File::open("/proc/self/smaps").unwrap();
        let touched_bytes = |mem| resident_bytes(mem, &smaps).1;
        let before = touched_bytes(&mem);
        let mut buf = [0u8; 1];
        for page in 0..64u64 {
            // Reads map the zero page; they must not count.
            vm_memory::Bytes::read_slice(&mem, &mut buf, GuestAddress(page * 4096)).unwrap();
        }
        assert_eq!(touched_bytes(&mem), before);
        for page in 0..64u64 {
            vm_memory::Bytes::write_slice(&mem, &[1], GuestAddress(page * 4096)).unwrap();
        }
        assert_eq!(touched_bytes(&mem) - before, 64 * 4096);
    }
}
