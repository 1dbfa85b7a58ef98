//! A paused x86_64 VM's KVM state, as plain serde data for a snapshot, and its restore: each
//! vCPU's registers, special registers, MSRs, local APIC, XSAVE area (which holds the FPU and
//! SSE state), XCRs, debug registers, pending events and MP state; the VM's in-kernel PICs and
//! IOAPIC, PIT and KVM clock. kvm-bindings' `serde` feature serializes the structures.

use kvm_bindings::{
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, Msrs, kvm_clock_data,
    kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_pit_state2,
    kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("KVM: cannot {0}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    #[error("KVM took {set} of the snapshot's {total} MSRs (not {first_refused:#x})")]
    MsrsRefused {
        set: usize,
        total: usize,
        first_refused: u32,
    },
}

fn kvm(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> Error {
    move |e| Error::Kvm(what, e)
}

#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub msrs: Vec<kvm_msr_entry>,
    pub lapic: kvm_lapic_state,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debugregs: kvm_debugregs,
    pub events: kvm_vcpu_events,
    pub mp_state: kvm_mp_state,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmState {
    /// PIC master, PIC slave, IOAPIC.
    pub irqchips: Vec<kvm_irqchip>,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
}

/// The MSRs a snapshot saves: every one KVM lists as saved and restored for a guest.
pub fn msr_indices(kvm: &Kvm) -> Result<Vec<u32>, Error> {
    let list = kvm
        .get_msr_index_list()
        .map_err(kvm_err("list the guest's MSRs"))?;
    Ok(list.as_slice().to_vec())
}

fn kvm_err(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> Error {
    kvm(what)
}

/// Reads `indices` from `vcpu`; one that KVM will not read is left out (KVM lists some that a
/// given CPU lacks).
fn read_msrs(vcpu: &VcpuFd, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, Error> {
    let mut read = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let entries: Vec<kvm_msr_entry> = (rest.iter())
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| Error::MsrsRefused {
            set: 0,
            total: entries.len(),
            first_refused: rest[0],
        })?;
        let n = vcpu.get_msrs(&mut msrs).map_err(kvm("read the MSRs"))?;
        read.extend_from_slice(&msrs.as_slice()[..n.min(rest.len())]);
        // KVM stops at the first it cannot read: skip that one.
        rest = rest.get(n + 1..).unwrap_or_default();
    }
    Ok(read)
}

/// The state of a vCPU that is not running (parked outside KVM_RUN).
pub fn save_vcpu(vcpu: &VcpuFd, msr_indices: &[u32]) -> Result<VcpuState, Error> {
    Ok(VcpuState {
        // Pending events and MP state first: reading the rest does not change them.
        events: vcpu
            .get_vcpu_events()
            .map_err(kvm("read the vCPU events"))?,
        mp_state: vcpu.get_mp_state().map_err(kvm("read the MP state"))?,
        regs: vcpu.get_regs().map_err(kvm("read the registers"))?,
        sregs: vcpu
            .get_sregs()
            .map_err(kvm("read the special registers"))?,
        msrs: read_msrs(vcpu, msr_indices)?,
        lapic: vcpu.get_lapic().map_err(kvm("read the local APIC"))?,
        // The 4 KiB legacy area; a guest whose XSAVE state is larger (AMX) would need
        // KVM_GET_XSAVE2.
        xsave: vcpu.get_xsave().map_err(kvm("read the XSAVE area"))?,
        xcrs: vcpu.get_xcrs().map_err(kvm("read the XCRs"))?,
        debugregs: vcpu
            .get_debug_regs()
            .map_err(kvm("read the debug registers"))?,
    })
}

/// Puts `state` into a fresh vCPU (its CPUID already set), in the order KVM needs: MP state
/// and registers, then the XSAVE area and XCRs, the local APIC before the MSRs (the TSC
/// deadline lives in both), and pending events last.
pub fn restore_vcpu(vcpu: &VcpuFd, state: &VcpuState) -> Result<(), Error> {
    vcpu.set_mp_state(state.mp_state)
        .map_err(kvm("set the MP state"))?;
    vcpu.set_regs(&state.regs)
        .map_err(kvm("set the registers"))?;
    vcpu.set_sregs(&state.sregs)
        .map_err(kvm("set the special registers"))?;
    // SAFETY: the area is a whole kvm_xsave as KVM_GET_XSAVE gave it, and it is all of the
    // guest's XSAVE state: gureum never asks for ARCH_REQ_XCOMP_GUEST_PERM, so no guest has
    // the dynamically enabled features (AMX) that need KVM_SET_XSAVE2's larger area.
    unsafe { vcpu.set_xsave(&state.xsave) }.map_err(kvm("set the XSAVE area"))?;
    vcpu.set_xcrs(&state.xcrs).map_err(kvm("set the XCRs"))?;
    vcpu.set_debug_regs(&state.debugregs)
        .map_err(kvm("set the debug registers"))?;
    vcpu.set_lapic(&state.lapic)
        .map_err(kvm("set the local APIC"))?;
    let msrs = Msrs::from_entries(&state.msrs).map_err(|_| Error::MsrsRefused {
        set: 0,
        total: state.msrs.len(),
        first_refused: state.msrs.first().map_or(0, |m| m.index),
    })?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm("set the MSRs"))?;
    if set < state.msrs.len() {
        return Err(Error::MsrsRefused {
            set,
            total: state.msrs.len(),
            first_refused: state.msrs[set].index,
        });
    }
    vcpu.set_vcpu_events(&state.events)
        .map_err(kvm("set the vCPU events"))
}

const CHIPS: [u32; 3] = [
    KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
    KVM_IRQCHIP_IOAPIC,
];

pub fn save_vm(vm: &VmFd) -> Result<VmState, Error> {
    let irqchips = CHIPS
        .iter()
        .map(|&chip_id| {
            let mut chip = kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            vm.get_irqchip(&mut chip)
                .map(|()| chip)
                .map_err(kvm("read the interrupt controllers"))
        })
        .collect::<Result<_, _>>()?;
    Ok(VmState {
        irqchips,
        pit: vm.get_pit2().map_err(kvm("read the PIT"))?,
        clock: vm.get_clock().map_err(kvm("read the KVM clock"))?,
    })
}

/// Into a fresh VM whose irqchip and PIT exist, before its vCPUs run.
pub fn restore_vm(vm: &VmFd, state: &VmState) -> Result<(), Error> {
    for chip in &state.irqchips {
        vm.set_irqchip(chip)
            .map_err(kvm("set the interrupt controllers"))?;
    }
    vm.set_pit2(&state.pit).map_err(kvm("set the PIT"))?;
    // The clock goes on from the snapshot's time; its flags say what KVM_GET_CLOCK read, and
    // KVM_SET_CLOCK takes none of them.
    let clock = kvm_clock_data {
        flags: 0,
        ..state.clock
    };
    vm.set_clock(&clock).map_err(kvm("set the KVM clock"))
}
