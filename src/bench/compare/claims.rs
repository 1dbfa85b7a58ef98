//! The claims `bench compare` states, each computed from the measurements: a ratio of two
//! kinds' medians, or one kind's value against an absolute target.

use super::measure::Density;
use super::report::{Claim, KindReport, find};

type Metric = fn(&KindReport) -> Option<f64>;
/// (claim, numerator kind, denominator kind, metric name, metric, target)
type ClaimSpec = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    Metric,
    Option<f64>,
);

pub(super) fn exit_median(k: &KindReport) -> Option<f64> {
    k.exit_ms.map(|s| s.median)
}
fn start_median(k: &KindReport) -> Option<f64> {
    k.start_ms.map(|s| s.median)
}
/// A density run only counts if every instance came up.
fn dense(k: &KindReport) -> Option<&Density> {
    k.density.as_ref().filter(|d| d.failed == 0)
}
pub(super) fn memory(k: &KindReport) -> Option<f64> {
    dense(k).map(|d| d.memory_mib_per_instance)
}
fn rate(k: &KindReport) -> Option<f64> {
    dense(k).map(|d| d.launch_rate_per_s)
}
/// Main → the first KVM_RUN of a restore (what Firecracker's load_snapshot latency spans).
fn first_entry(k: &KindReport) -> Option<f64> {
    k.phases_ms
        .iter()
        .find(|(name, _)| name == "first_entry")
        .map(|p| p.1)
}
fn beyond_dirty(k: &KindReport) -> Option<f64> {
    let d = dense(k)?;
    Some(d.memory_mib_per_instance - d.guest_dirty_mib_per_instance?)
}

/// The claims the report states: (claim, numerator kind, denominator kind, metric, its
/// reader, target). An empty denominator states the numerator's value itself (its unit in
/// the claim), against an absolute target.
const CLAIMS: [ClaimSpec; 16] = [
    (
        "containers start faster than VMs: VM sandbox start-to-exit / native container's",
        "sandbox",
        "native",
        "exit_ms median",
        exit_median,
        None,
    ),
    (
        "a warm sandbox starts as fast as runc: sandbox / runc start-to-exit (target ≤ 1.0 on hardware KVM)",
        "sandbox",
        "runc",
        "exit_ms median",
        exit_median,
        Some(1.0),
    ),
    (
        "a snapshot makes a sandbox start faster: warm sandbox / one booted cold, start-to-exit",
        "sandbox",
        "sandbox-cold",
        "exit_ms median",
        exit_median,
        None,
    ),
    (
        "gureum's native isolation vs runc: start-to-exit",
        "native",
        "runc",
        "exit_ms median",
        exit_median,
        None,
    ),
    (
        "gureum boots faster than QEMU microvm: boot-to-init (target ≤ 0.5)",
        "microvm",
        "qemu-microvm",
        "start_ms median",
        start_median,
        Some(0.5),
    ),
    (
        "the same on the test guest (no Linux): gureum / QEMU microvm boot-to-guest",
        "microvm-test-guest",
        "qemu-microvm-test-guest",
        "start_ms median",
        start_median,
        None,
    ),
    (
        "containers are lighter than VMs: host memory per idle instance, sandbox / native",
        "sandbox",
        "native",
        "memory_mib_per_instance",
        memory,
        None,
    ),
    (
        "containers pack denser: launch rate of K at once, native / sandbox",
        "native",
        "sandbox",
        "launch_rate_per_s",
        rate,
        None,
    ),
    (
        "gureum boots Linux faster than Firecracker: spawn to the init's line, gureum / Firecracker (target ≤ 0.8)",
        "microvm",
        "firecracker",
        "start_ms median",
        start_median,
        Some(0.8),
    ),
    (
        "a VM with no Linux to boot (the test guest) vs a native container: start-to-exit",
        "microvm-test-guest",
        "native",
        "exit_ms median",
        exit_median,
        None,
    ),
    (
        "the same, host memory per idle instance",
        "microvm-test-guest",
        "native",
        "memory_mib_per_instance",
        memory,
        None,
    ),
    (
        "a restore beats a cold boot: spawn → the restored Linux guest runs a command / spawn → a cold one's init line",
        "microvm-restore",
        "microvm",
        "start_ms median",
        start_median,
        None,
    ),
    (
        "the same on the test guest: spawn → the restored guest answers / spawn → a cold one's boot-timer line",
        "microvm-test-guest-restore",
        "microvm-test-guest",
        "start_ms median",
        start_median,
        None,
    ),
    (
        "restore → first guest instruction, Linux guest, ms (target ≤ 5; anchor: Firecracker's CI held load_snapshot under 35 ms, 2 vCPU / 256 MiB, aiming at 5)",
        "microvm-restore",
        "",
        "phases_ms first_entry",
        first_entry,
        Some(5.0),
    ),
    (
        "restore → first guest instruction, test guest, ms (target ≤ 5; the same anchor)",
        "microvm-test-guest-restore",
        "",
        "phases_ms first_entry",
        first_entry,
        Some(5.0),
    ),
    (
        "an idle warm sandbox's host memory beyond the guest pages it dirtied, MiB (PSS; target ≤ 3)",
        "sandbox",
        "",
        "memory_mib_per_instance - guest_dirty_mib_per_instance",
        beyond_dirty,
        Some(3.0),
    ),
];

/// The seed's claims and the targets, each as a factor computed from the data.
/// Where they were measured: on a PVM host, or on an emulated one (the KVM test machine), whose
/// absolute times say nothing about the targets.
#[derive(Clone, Copy, Default)]
pub struct Where {
    pub pvm: bool,
    pub emulated: bool,
}

pub fn claims(kinds: &[KindReport], at: Where) -> Vec<Claim> {
    CLAIMS
        .iter()
        .map(|(claim, num, den, metric, f, target)| {
            let a = find(kinds, num).and_then(f);
            let factor = if den.is_empty() {
                a
            } else {
                match (a, find(kinds, den).and_then(f)) {
                    (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                    _ => None,
                }
            };
            let mut note = match (factor, target) {
                (None, _) => format!("not measured: {}", missing(kinds, num, den)),
                (Some(x), Some(t)) if x <= *t => format!("target met ({x:.2} ≤ {t})"),
                (Some(x), Some(t)) => format!("target missed ({x:.2} > {t})"),
                (Some(_), None) => String::new(),
            };
            let vm_side = [num, den]
                .iter()
                .any(|n| {
                    ["sandbox", "sandbox-cold", "microvm", "qemu-microvm", "firecracker", "microvm-restore"]
                        .contains(n)
                });
            if at.pvm && vm_side && factor.is_some() {
                note.push_str(" — PVM host: VM start-up is bound by emulating the guest kernel; the ratios that matter are measured on hardware KVM");
            }
            if at.emulated && den.is_empty() && metric.starts_with("phases_ms") && factor.is_some() {
                note.push_str(" — emulated host: absolute times here are tens of times a hardware KVM host's; this target is judged there");
            }
            Claim {
                claim: claim.to_string(),
                factor,
                metric: metric.to_string(),
                numerator: num.to_string(),
                denominator: den.to_string(),
                target: *target,
                note,
            }
        })
        .collect()
}

fn missing(kinds: &[KindReport], a: &str, b: &str) -> String {
    [a, b]
        .iter()
        .filter(|n| !n.is_empty())
        .filter_map(|n| {
            let k = kinds.iter().find(|k| k.name == *n);
            match k {
                Some(k) if k.status == "measured" => None,
                Some(k) => Some(format!(
                    "{n} skipped ({})",
                    k.skip_reason.clone().unwrap_or_default()
                )),
                None => Some(format!("{n} not run")),
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}
