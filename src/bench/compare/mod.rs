//! `gureum bench compare`: the same workload as a native container, under runc and runsc, in a
//! gureum microVM sandbox, and as bare microVMs under gureum and QEMU, run interleaved
//! (A B C A B C ...) so drift on a shared machine hits all alike; then a density run of K idle
//! instances of each. Writes compare.json (schema in docs/bench-compare.md), report.md and two
//! SVG charts under --out.

pub mod charts;
pub mod claims;
pub mod kinds;
pub mod measure;
pub mod report;
pub mod restore;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use kinds::{ALL, Kind, Setup};
use report::{Host, KindReport, Report};

use gureum_vmm::host_check::KvmKind;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--runs must be at least 1")]
    NoRuns,
    #[error("--workload must name a command")]
    NoWorkload,
    #[error("unknown kind {0:?} in --only (known: {1})")]
    UnknownKind(String, String),
    #[error("cannot {0}")]
    Io(String, #[source] std::io::Error),
    #[error(transparent)]
    Chart(#[from] charts::Error),
}

pub struct Options {
    pub runs: usize,
    pub workload: Vec<String>,
    pub out: PathBuf,
    /// Idle instances per kind started at once; 0 skips the density run.
    pub density: usize,
    pub test_guest: Option<PathBuf>,
    /// A Firecracker binary: one more row, booting the same kernel and initramfs.
    pub firecracker: Option<PathBuf>,
    /// Only these kinds (by name); empty means all.
    pub only: Vec<String>,
}

fn io(what: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::Io(what.to_string(), e)
}

fn selected(only: &[String]) -> Result<Vec<Kind>, Error> {
    for name in only {
        if !ALL.iter().any(|k| k.name() == name) {
            let known: Vec<_> = ALL.iter().map(|k| k.name()).collect();
            return Err(Error::UnknownKind(name.clone(), known.join(", ")));
        }
    }
    Ok(ALL
        .into_iter()
        .filter(|k| only.is_empty() || only.iter().any(|n| n == k.name()))
        .collect())
}

fn setup(opts: &Options, work: &Path) -> Result<Setup, Error> {
    let (bundle, idle_bundle) = (work.join("bundle"), work.join("bundle-idle"));
    kinds::write_bundle(&bundle, &opts.workload, false)
        .map_err(io("write the benchmark bundle"))?;
    kinds::write_bundle(&idle_bundle, &opts.workload, true)
        .map_err(io("write the benchmark bundle"))?;
    let (kernel, _) = gureum_vmm::default_guest();
    let initramfs = kernel.with_file_name("initramfs.cpio");
    // Runtimes' state and the VMs' config files.
    let state = work.join("state");
    std::fs::create_dir_all(&state).map_err(io("make the state directory"))?;
    Ok(Setup {
        gureum: std::env::current_exe().map_err(io("find gureum's own executable"))?,
        vmm: gureum_vmm::boot::vmm_exe()
            .map_or_else(std::env::current_exe, Ok)
            .map_err(io("find gureum's own executable"))?,
        bundle,
        idle_bundle,
        state,
        kernel,
        initramfs,
        test_guest: opts.test_guest.clone(),
        firecracker: opts.firecracker.clone(),
        kvm: gureum_vmm::host_check::kvm_kind().0,
    })
}

struct Progress {
    done: usize,
    total: usize,
    show: bool,
}

impl Progress {
    fn step(&mut self, what: &str) {
        self.done += 1;
        if self.show {
            let width = 30;
            let filled = width * self.done / self.total.max(1);
            eprint!(
                "\r[{}{}] {}/{} {what:<28}",
                "=".repeat(filled),
                " ".repeat(width - filled),
                self.done,
                self.total
            );
            let _ = std::io::stderr().flush();
        }
    }

    fn finish(&self) {
        if self.show {
            eprintln!();
        }
    }
}

/// Runs the comparison and writes its files; returns the report.
pub fn run(opts: &Options) -> Result<Report, Error> {
    if opts.runs == 0 {
        return Err(Error::NoRuns);
    }
    if opts.workload.is_empty() {
        return Err(Error::NoWorkload);
    }
    let wanted = selected(&opts.only)?;
    std::fs::create_dir_all(&opts.out).map_err(io("make the output directory"))?;
    let work = Work::new()?;
    let setup = setup(opts, &work.0)?;
    // Why each kind is skipped, if it is; a restore kind's snapshot is made here, once.
    let skips: Vec<Option<String>> = wanted
        .iter()
        .map(|k| {
            setup
                .skip_reason(*k)
                .or_else(|| restore::prepare(&setup, *k).err())
        })
        .collect();
    let active: Vec<Kind> = wanted
        .iter()
        .zip(&skips)
        .filter(|(_, why)| why.is_none())
        .map(|(k, _)| *k)
        .collect();
    let density_steps = if opts.density > 0 {
        active.iter().filter(|k| k.has_density()).count()
    } else {
        0
    };
    let mut progress = Progress {
        done: 0,
        total: opts.runs * active.len() + density_steps,
        show: std::io::stderr().is_terminal(),
    };
    let (samples, densities) = measure_all(&setup, &active, opts, &mut progress)?;
    progress.finish();
    let mut kinds: Vec<KindReport> = Vec::new();
    for (kind, why) in wanted.iter().zip(skips) {
        if let Some(i) = active.iter().position(|k| k == kind) {
            kinds.push(KindReport::measured(
                kind.name(),
                kind.label(),
                samples[i].clone(),
                densities[i].clone(),
            ));
        } else {
            kinds.push(KindReport::skipped(
                kind.name(),
                kind.label(),
                why.unwrap_or_default(),
            ));
        }
    }
    let pvm = setup.kvm == KvmKind::Pvm;
    let host = host(setup.kvm);
    let report = Report {
        schema: report::SCHEMA.into(),
        runs: opts.runs,
        workload: opts.workload.clone(),
        claims: claims::claims(
            &kinds,
            claims::Where {
                pvm,
                emulated: host.emulated,
            },
        ),
        host,
        kinds,
    };
    drop(work);
    write_files(&report, &opts.out)?;
    Ok(report)
}

/// The containers' bundles and root filesystems, under $TMPDIR rather than --out (which may be
/// a share, 9p say, where overlays and device nodes cannot live); removed when dropped.
struct Work(PathBuf);

impl Work {
    fn new() -> Result<Self, Error> {
        let dir = std::env::temp_dir().join(format!("gureum-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(io("make a work directory under $TMPDIR"))?;
        Ok(Self(dir))
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

type Measured = (Vec<Vec<measure::Sample>>, Vec<Option<measure::Density>>);

/// Every run of every kind, interleaved (A B C A B C ...), then each kind's density run.
fn measure_all(
    setup: &Setup,
    active: &[Kind],
    opts: &Options,
    progress: &mut Progress,
) -> Result<Measured, Error> {
    let mut samples: Vec<Vec<measure::Sample>> = vec![Vec::new(); active.len()];
    let tag = std::process::id();
    for run in 0..opts.runs {
        for (i, kind) in active.iter().enumerate() {
            let id = format!("bench-{tag}-{}-{run}", kind.name());
            samples[i].push(measure::one(setup, *kind, &id).map_err(io("start an instance"))?);
            progress.step(kind.name());
        }
    }
    let mut densities = Vec::new();
    for kind in active {
        let d = if opts.density > 0 && kind.has_density() {
            let tag = format!("dense-{tag}-{}", kind.name());
            let d = measure::density(setup, *kind, opts.density, &tag)
                .map_err(io("start instances"))?;
            progress.step(&format!("{} ×{}", kind.name(), opts.density));
            Some(d)
        } else {
            None
        };
        densities.push(d);
    }
    Ok((samples, densities))
}

fn host(kvm: KvmKind) -> Host {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let emulated = gureum_vmm::host_check::slowdown() > 1;
    let (kvm, note) = match kvm {
        KvmKind::Hardware if emulated => (
            "hardware",
            "Hardware-assisted KVM nested under QEMU's software emulation (the KVM test machine): every figure here is emulated, tens of times slower than on hardware; only the ratios between kinds measured in this same run mean anything.",
        ),
        KvmKind::Pvm => (
            "pvm",
            "PVM host: guest kernels run emulated, so VM start-up here is bound by that emulation, not by the VMM; Linux-guest kinds cannot run and are skipped.",
        ),
        KvmKind::Hardware => ("hardware", "Hardware KVM."),
        _ => ("none", "No usable KVM: VM kinds fail or are skipped."),
    };
    Host {
        kvm: kvm.into(),
        emulated,
        cpus,
        note: note.into(),
    }
}

fn write_files(report: &Report, out: &Path) -> Result<(), Error> {
    let json = serde_json::to_string_pretty(report).unwrap_or_default();
    std::fs::write(out.join("compare.json"), json).map_err(io("write compare.json"))?;
    std::fs::write(out.join("report.md"), report::markdown(report))
        .map_err(io("write report.md"))?;
    charts::startup(report, &out.join("startup.svg"))?;
    charts::memory(report, &out.join("memory.svg"))?;
    Ok(())
}
