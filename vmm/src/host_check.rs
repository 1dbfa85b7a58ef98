//! `gureum host-check`: what this host's KVM is, what gureum will use, and how fast guest code
//! runs here — measured with a few bytes of real-mode guest code, not guessed.

use std::path::Path;
use std::time::{Duration, Instant};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Cap, Kvm, VcpuExit};
use serde::Serialize;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open /dev/kvm (is KVM enabled, and may this user open it?)")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("KVM: cannot {0}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    #[error("probe guest: {0}")]
    Probe(String),
}

/// What kind of KVM serves /dev/kvm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KvmKind {
    /// Intel VT-x or AMD-V: guest kernels run natively.
    Hardware,
    /// PVM (kvm_pvm): shadow paging, guest CPL0 code emulated; no Linux guest userspace.
    Pvm,
    Unknown,
}

/// The loaded KVM module, from sysfs.
pub fn kvm_kind() -> (KvmKind, &'static str) {
    let loaded = |m: &str| Path::new("/sys/module").join(m).exists();
    if loaded("kvm_pvm") {
        (KvmKind::Pvm, "kvm_pvm")
    } else if loaded("kvm_intel") {
        (KvmKind::Hardware, "kvm_intel")
    } else if loaded("kvm_amd") {
        (KvmKind::Hardware, "kvm_amd")
    } else {
        (KvmKind::Unknown, "unknown")
    }
}

/// The hypervisor this host itself runs under, from CPUID leaf 0x4000_0000 (None on bare
/// metal): "TCGTCGTCGTCG" is QEMU's software emulation, where even hardware-assisted KVM runs
/// guests at emulated speed.
pub fn host_hypervisor() -> Option<String> {
    // Leaf 1 ECX bit 31 says whether the hypervisor leaves exist.
    if std::arch::x86_64::__cpuid(1).ecx & (1 << 31) == 0 {
        return None;
    }
    let leaf = std::arch::x86_64::__cpuid(0x4000_0000);
    let bytes: Vec<u8> = [leaf.ebx, leaf.ecx, leaf.edx]
        .iter()
        .flat_map(|r| r.to_le_bytes())
        .collect();
    let name = String::from_utf8_lossy(&bytes)
        .trim_end_matches('\0')
        .to_string();
    Some(name)
}

/// Whether `hypervisor` (a CPUID signature) is a software emulator.
pub fn is_emulator(hypervisor: Option<&str>) -> bool {
    hypervisor == Some("TCGTCGTCGTCG")
}

/// How many times slower than on hardware guests run on this host: 20 where the host is itself
/// emulated (a Linux guest boots in ~2 s there instead of ~0.1 s), else 1. Deadlines that wait
/// on a guest stretch by this much.
pub fn slowdown() -> u32 {
    static SLOWDOWN: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *SLOWDOWN.get_or_init(|| match is_emulator(host_hypervisor().as_deref()) {
        true => 20,
        false => 1,
    })
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub kind: KvmKind,
    pub module: &'static str,
    /// The hypervisor under this host (CPUID signature), if any.
    pub host_hypervisor: Option<String>,
    /// This host is itself emulated (QEMU TCG): every guest runs at emulated speed, so
    /// timings mean something only as ratios against peers run in the same machine.
    pub emulated: bool,
    pub api_version: i32,
    pub max_vcpus: usize,
    /// (capability, present, used by gureum today)
    pub capabilities: Vec<(&'static str, bool, bool)>,
    /// Nanoseconds per iteration of a `dec; jnz` loop in guest kernel mode.
    pub guest_loop_ns: f64,
    /// Microseconds for one port-I/O exit to gureum and back.
    pub exit_round_trip_us: f64,
    pub linux_userspace: bool,
}

pub fn check() -> Result<Report, Error> {
    let kvm = Kvm::new().map_err(Error::OpenKvm)?;
    let (kind, module) = kvm_kind();
    // (name, capability, whether gureum uses it today)
    let caps = [
        ("in-kernel irqchip", Cap::Irqchip, true),
        ("in-kernel PIT", Cap::Pit2, true),
        ("irqfd", Cap::Irqfd, true),
        ("user memory regions", Cap::UserMemory, true),
        ("ioeventfd", Cap::Ioeventfd, false),
        ("immediate exit", Cap::ImmediateExit, false),
        ("TSC deadline timer", Cap::TscDeadlineTimer, false),
    ];
    let capabilities = caps
        .iter()
        .map(|(n, c, used)| (*n, kvm.check_extension(*c), *used))
        .collect();
    let (short, _) = probe(&kvm, 1, 0)?;
    // Enough iterations that the loop, not the entry, dominates: 20 000 take ~50 ms on PVM;
    // natively or in an emulator the count grows tenfold until they take 5 ms or more.
    let mut iterations: u32 = 20_000;
    let (long, iterations) = loop {
        let (long, _) = probe(&kvm, iterations, 0)?;
        let enough = long >= Duration::from_millis(5) && long >= short * 4;
        match iterations.checked_mul(10) {
            Some(more) if !enough => iterations = more,
            _ => break (long, iterations),
        }
    };
    let guest_loop_ns = long.saturating_sub(short).as_nanos() as f64 / f64::from(iterations);
    let exits = 200;
    let (with_exits, _) = probe(&kvm, 1, exits)?;
    let exit_round_trip_us =
        with_exits.saturating_sub(short).as_nanos() as f64 / 1e3 / f64::from(exits);
    let host_hypervisor = host_hypervisor();
    Ok(Report {
        kind,
        module,
        emulated: is_emulator(host_hypervisor.as_deref()),
        host_hypervisor,
        api_version: kvm.get_api_version(),
        max_vcpus: kvm.get_max_vcpus(),
        capabilities,
        guest_loop_ns,
        exit_round_trip_us,
        linux_userspace: kind != KvmKind::Pvm,
    })
}

/// Run a real-mode guest that spins `loops` times, then exits to us `exits` times through port
/// 0x80, then halts. Returns the time from first entry to the halt.
fn probe(kvm: &Kvm, loops: u32, exits: u16) -> Result<(Duration, u32), Error> {
    let vm = kvm
        .create_vm()
        .map_err(|e| Error::Kvm("create a probe VM", e))?;
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)])
        .map_err(|e| Error::Probe(e.to_string()))?;
    let mut code = vec![0x66, 0xb9];
    code.extend_from_slice(&loops.to_le_bytes()); //    mov ecx, loops
    code.extend_from_slice(&[0x66, 0x49, 0x75, 0xfc]); // l: dec ecx; jnz l
    code.push(0xb9); //                                   mov cx, exits
    code.extend_from_slice(&exits.max(1).to_le_bytes());
    code.extend_from_slice(&[0xe6, 0x80, 0x49, 0x75, 0xfb]); // m: out 0x80, al; dec cx; jnz m
    code.push(0xf4); //                                   hlt
    mem.write_slice(&code, GuestAddress(0x1000))
        .map_err(|e| Error::Probe(e.to_string()))?;
    let region = mem
        .iter()
        .next()
        .ok_or_else(|| Error::Probe("no memory".into()))?;
    let host = region
        .get_host_address(vm_memory::MemoryRegionAddress(0))
        .map_err(|e| Error::Probe(e.to_string()))?;
    let slot = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: 0x10000,
        userspace_addr: host as u64,
    };
    // SAFETY: `mem` outlives `vm`: both are dropped at the end of this function, vm first.
    unsafe { vm.set_user_memory_region(slot) }.map_err(|e| Error::Kvm("map probe memory", e))?;
    let mut vcpu = vm
        .create_vcpu(0)
        .map_err(|e| Error::Kvm("create a probe vCPU", e))?;
    let mut sregs = vcpu
        .get_sregs()
        .map_err(|e| Error::Kvm("read probe sregs", e))?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs)
        .map_err(|e| Error::Kvm("set probe sregs", e))?;
    let regs = kvm_bindings::kvm_regs {
        rip: 0x1000,
        rflags: 2,
        ..Default::default()
    };
    vcpu.set_regs(&regs)
        .map_err(|e| Error::Kvm("set probe regs", e))?;
    let start = Instant::now();
    let mut seen = 0;
    loop {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(..)) => seen += 1,
            Ok(VcpuExit::Hlt) => return Ok((start.elapsed(), seen)),
            Ok(other) => return Err(Error::Probe(format!("unexpected exit {other:?}"))),
            Err(e) if e.errno() == libc::EINTR => {}
            Err(e) => return Err(Error::Kvm("run the probe", e)),
        }
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            KvmKind::Hardware => "hardware-assisted (VT-x / AMD-V)",
            KvmKind::Pvm => {
                "PVM (software virtualization: shadow paging, guest kernel code emulated)"
            }
            KvmKind::Unknown => "unknown (no kvm_intel, kvm_amd or kvm_pvm module seen)",
        };
        writeln!(
            f,
            "KVM:           {kind}, module {}, API {}",
            self.module, self.api_version
        )?;
        match (&self.host_hypervisor, self.emulated) {
            (_, true) => writeln!(
                f,
                "this host:     itself emulated by QEMU (TCG): KVM here is real, but every \
                 instruction runs at emulated speed"
            )?,
            (Some(h), false) => writeln!(f, "this host:     a VM itself (hypervisor {h:?})")?,
            (None, false) => writeln!(f, "this host:     bare metal")?,
        }
        writeln!(f, "max vCPUs:     {}", self.max_vcpus)?;
        for (name, present, used) in &self.capabilities {
            let state = match (present, used) {
                (true, true) => "yes, used",
                (true, false) => "yes",
                (false, true) => "MISSING (gureum needs it)",
                (false, false) => "no",
            };
            writeln!(f, "  {name:<20} {state}")?;
        }
        writeln!(
            f,
            "guest speed:   {:.1} ns per kernel-mode loop iteration (about {:.0} M instructions/s)",
            self.guest_loop_ns,
            2e3 / self.guest_loop_ns.max(1e-3)
        )?;
        writeln!(
            f,
            "exit cost:     {:.1} us per port-I/O exit to gureum and back",
            self.exit_round_trip_us
        )?;
        match self.kind {
            KvmKind::Hardware if self.emulated => write!(
                f,
                "expect:        Linux guests boot and run, slowed by the emulation (our default \
                 guest reached its init in about 2 s in such a machine); compare timings only \
                 as ratios against peers run in the same machine"
            ),
            KvmKind::Pvm => write!(
                f,
                "expect:        the test guest boots in milliseconds; a Linux guest's kernel is \
                 emulated for minutes and its userspace cannot run (a guest syscall faults), so \
                 `gureum boot` refuses Linux kernels here unless --allow-pvm-linux"
            ),
            _ => write!(
                f,
                "expect:        Linux guests boot to init in about 100 ms"
            ),
        }
    }
}
