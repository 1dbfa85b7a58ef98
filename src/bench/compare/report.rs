//! The comparison's data (the stable JSON schema, documented in docs/bench-compare.md), its
//! terminal table, and the Markdown report whose claims are computed from the data.

use std::fmt::Write as _;

use serde::Serialize;

use super::claims::{exit_median, memory};
use super::measure::{Density, Sample};

pub const SCHEMA: &str = "gureum-bench-compare/1";

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Stats {
    pub n: usize,
    pub min: f64,
    pub median: f64,
    pub p95: f64,
}

impl Stats {
    /// None without samples: a missing value is never reported as zero.
    pub fn of(values: &[f64]) -> Option<Self> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some(Self {
            n: v.len(),
            min: v[0],
            median: crate::bench::percentile(&v, 50),
            p95: crate::bench::percentile(&v, 95),
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct KindReport {
    pub name: String,
    pub label: String,
    /// "measured" or "skipped".
    pub status: String,
    pub skip_reason: Option<String>,
    pub samples: Vec<Sample>,
    pub failed_runs: usize,
    pub start_ms: Option<Stats>,
    pub exit_ms: Option<Stats>,
    pub cpu_ms: Option<Stats>,
    /// gureum's phases, median ms since gureum started, where it reports them.
    pub phases_ms: Vec<(String, f64)>,
    pub density: Option<Density>,
}

impl KindReport {
    pub fn skipped(name: &str, label: &str, why: String) -> Self {
        Self {
            name: name.into(),
            label: label.into(),
            status: "skipped".into(),
            skip_reason: Some(why),
            samples: Vec::new(),
            failed_runs: 0,
            start_ms: None,
            exit_ms: None,
            cpu_ms: None,
            phases_ms: Vec::new(),
            density: None,
        }
    }

    pub fn measured(
        name: &str,
        label: &str,
        samples: Vec<Sample>,
        density: Option<Density>,
    ) -> Self {
        let ok: Vec<&Sample> = samples.iter().filter(|s| s.ok).collect();
        let stat = |f: &dyn Fn(&Sample) -> Option<f64>| {
            Stats::of(&ok.iter().filter_map(|s| f(s)).collect::<Vec<_>>())
        };
        let mut phase_names: Vec<String> = Vec::new();
        for s in &ok {
            for (k, _) in &s.phases {
                if !phase_names.contains(k) {
                    phase_names.push(k.clone());
                }
            }
        }
        let phases_ms = phase_names
            .into_iter()
            .filter_map(|k| {
                let v: Vec<f64> = ok
                    .iter()
                    .filter_map(|s| s.phases.iter().find(|(n, _)| *n == k).map(|p| p.1))
                    .collect();
                Stats::of(&v).map(|st| (k, st.median))
            })
            .collect();
        Self {
            name: name.into(),
            label: label.into(),
            status: "measured".into(),
            skip_reason: None,
            failed_runs: samples.len() - ok.len(),
            start_ms: stat(&|s| s.start_ms),
            exit_ms: stat(&|s| Some(s.exit_ms)),
            cpu_ms: stat(&|s| Some(s.cpu_ms)),
            phases_ms,
            samples,
            density,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Host {
    /// "hardware", "pvm" or "none".
    pub kvm: String,
    /// The host is itself emulated (QEMU TCG): figures are nested-under-emulation ones.
    pub emulated: bool,
    pub cpus: usize,
    pub note: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Claim {
    pub claim: String,
    /// The ratio numerator / denominator of the medians named in `metric`; None if either
    /// side was not measured.
    pub factor: Option<f64>,
    pub metric: String,
    pub numerator: String,
    pub denominator: String,
    pub target: Option<f64>,
    pub note: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema: String,
    pub host: Host,
    pub runs: usize,
    pub workload: Vec<String>,
    pub kinds: Vec<KindReport>,
    pub claims: Vec<Claim>,
}

pub(super) fn find<'a>(kinds: &'a [KindReport], name: &str) -> Option<&'a KindReport> {
    kinds
        .iter()
        .find(|k| k.name == name && k.status == "measured")
}

fn cell(s: Option<Stats>) -> String {
    s.map_or_else(
        || "—".to_string(),
        |s| format!("{:.1} / {:.1}", s.median, s.p95),
    )
}

/// The terminal table: medians and p95s, and each kind's ratio to the native container.
pub fn table(r: &Report) -> String {
    let mut out = format!(
        "host KVM: {} ({} CPUs); {} runs per kind, interleaved; workload: {}\n{}\n",
        r.host.kvm,
        r.host.cpus,
        r.runs,
        r.workload.join(" "),
        r.host.note
    );
    let _ = writeln!(
        out,
        "{:<26} {:>17} {:>17} {:>15} {:>9} {:>12}",
        "kind",
        "start ms (med/p95)",
        "exit ms (med/p95)",
        "cpu ms (med/p95)",
        "× native",
        "MiB/instance"
    );
    let native = find(&r.kinds, "native").and_then(exit_median);
    for k in &r.kinds {
        if k.status != "measured" {
            let _ = writeln!(
                out,
                "{:<26} skipped: {}",
                k.name,
                k.skip_reason.clone().unwrap_or_default()
            );
            continue;
        }
        let ratio = match (exit_median(k), native) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
            _ => "—".into(),
        };
        let mem = memory(k).map_or_else(|| "—".into(), |m| format!("{m:.2}"));
        let why = k.samples.iter().find_map(|s| s.error.as_deref());
        let failed = match (k.failed_runs, why) {
            (0, _) => String::new(),
            (n, Some(why)) => format!("  ({n} failed; the first: {why})"),
            (n, None) => format!("  ({n} failed)"),
        };
        let _ = writeln!(
            out,
            "{:<26} {:>17} {:>17} {:>15} {:>9} {:>12}{failed}",
            k.name,
            cell(k.start_ms),
            cell(k.exit_ms),
            cell(k.cpu_ms),
            ratio,
            mem
        );
    }
    out
}

/// The Markdown report: each claim with its measured factor, then the table and the phases.
pub fn markdown(r: &Report) -> String {
    let mut md = String::from("# gureum bench compare\n\n");
    let _ = writeln!(
        md,
        "Host KVM: **{}**, {} CPUs. {}\n",
        r.host.kvm, r.host.cpus, r.host.note
    );
    let _ = writeln!(
        md,
        "Workload `{}`, {} runs per kind, interleaved.\n\n## Claims\n",
        r.workload.join(" "),
        r.runs
    );
    md.push_str("| claim | factor | note |\n|---|---|---|\n");
    for c in &r.claims {
        // A ratio, or (no denominator) the value itself in the claim's unit.
        let unit = if c.denominator.is_empty() { "" } else { "×" };
        let f = c
            .factor
            .map_or_else(|| "—".into(), |f| format!("{f:.2}{unit}"));
        let _ = writeln!(md, "| {} | {} | {} |", c.claim, f, c.note);
    }
    md.push_str("\n## Measurements\n\n```\n");
    md.push_str(&table(r));
    md.push_str("```\n");
    for k in r.kinds.iter().filter(|k| !k.phases_ms.is_empty()) {
        let _ = writeln!(
            md,
            "\n### Phases of {} (median ms since gureum started)\n",
            k.name
        );
        for (name, v) in &k.phases_ms {
            let _ = writeln!(md, "- {name}: {v:.2}");
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::compare::claims::{Where, claims};

    const PVM: Where = Where {
        pvm: true,
        emulated: false,
    };

    fn sample(exit_ms: f64, ok: bool) -> Sample {
        Sample {
            start_ms: Some(exit_ms / 2.0),
            exit_ms,
            cpu_ms: 1.0,
            ok,
            phases: vec![("vm_built".into(), 1.5)],
            error: (!ok).then(|| "exit status 1: no such image".into()),
        }
    }

    fn density(mib: f64, rate: f64) -> Density {
        Density {
            instances: 4,
            launch_s: 4.0 / rate,
            launch_rate_per_s: rate,
            memory_mib_per_instance: mib,
            guest_dirty_mib_per_instance: None,
            failed: 0,
        }
    }

    #[test]
    fn stats_use_nearest_rank_and_nothing_is_none() {
        let s = Stats::of(&[5.0, 1.0, 3.0, 2.0, 4.0]).unwrap();
        assert_eq!((s.n, s.min, s.median, s.p95), (5, 1.0, 3.0, 5.0));
        assert_eq!(Stats::of(&[]), None);
        assert_eq!(Stats::of(&[f64::NAN]), None);
    }

    #[test]
    fn failed_runs_are_counted_not_averaged() {
        let k = KindReport::measured(
            "native",
            "n",
            vec![sample(10.0, true), sample(999.0, false), sample(20.0, true)],
            None,
        );
        assert_eq!(k.failed_runs, 1);
        assert_eq!(k.exit_ms.unwrap().p95, 20.0);
        assert_eq!(k.phases_ms, vec![("vm_built".to_string(), 1.5)]);
        // Why it failed is kept with the failed run, and the table names the first reason.
        let v = serde_json::to_value(&k).unwrap();
        assert!(v["samples"][0].get("error").is_none());
        assert_eq!(v["samples"][1]["error"], "exit status 1: no such image");
        let host = Host {
            kvm: "pvm".into(),
            emulated: false,
            cpus: 2,
            note: String::new(),
        };
        let (runs, workload, claims) = (3, vec!["true".into()], Vec::new());
        let r = Report {
            schema: SCHEMA.into(),
            host,
            runs,
            workload,
            claims,
            kinds: vec![k],
        };
        let t = table(&r);
        assert!(
            t.contains("(1 failed; the first: exit status 1: no such image)"),
            "{t}"
        );
    }

    #[test]
    fn claims_are_computed_from_the_data_and_a_missing_peer_is_not_zero() {
        let kinds = vec![
            KindReport::measured(
                "native",
                "n",
                vec![sample(10.0, true)],
                Some(density(4.0, 100.0)),
            ),
            KindReport::measured("runc", "r", vec![sample(8.0, true)], None),
            KindReport::measured(
                "sandbox",
                "s",
                vec![sample(14.0, true)],
                Some(Density {
                    guest_dirty_mib_per_instance: Some(18.0),
                    ..density(20.0, 25.0)
                }),
            ),
            KindReport::skipped("qemu-microvm", "q", "not installed".into()),
        ];
        let c = claims(&kinds, Where::default());
        let by = |num: &str, den: &str, metric: &str| {
            c.iter()
                .find(|c| c.numerator == num && c.denominator == den && c.metric == metric)
                .unwrap()
        };
        assert_eq!(by("sandbox", "native", "exit_ms median").factor, Some(1.4));
        let runc = by("sandbox", "runc", "exit_ms median");
        assert_eq!(runc.factor, Some(1.75));
        assert!(runc.note.starts_with("target missed"), "{}", runc.note);
        assert_eq!(
            by("sandbox", "native", "memory_mib_per_instance").factor,
            Some(5.0)
        );
        assert_eq!(
            by("native", "sandbox", "launch_rate_per_s").factor,
            Some(4.0)
        );
        // An absolute claim: the value itself against its target.
        let beyond = by(
            "sandbox",
            "",
            "memory_mib_per_instance - guest_dirty_mib_per_instance",
        );
        assert_eq!(beyond.factor, Some(2.0));
        assert!(beyond.note.starts_with("target met"), "{}", beyond.note);
        let restore = by("microvm-restore", "", "phases_ms first_entry");
        assert_eq!(restore.factor, None);
        assert_eq!(restore.note, "not measured: microvm-restore not run");
        let qemu = by("microvm", "qemu-microvm", "start_ms median");
        assert_eq!(qemu.factor, None);
        assert!(
            qemu.note.contains("qemu-microvm skipped (not installed)"),
            "{}",
            qemu.note
        );
        assert!(qemu.note.contains("microvm not run"), "{}", qemu.note);
        // A PVM host flags the ratios that involve a Linux VM.
        let pvm = claims(&kinds, PVM);
        assert!(
            pvm.iter()
                .any(|c| c.factor.is_some() && c.note.contains("PVM host"))
        );
    }

    #[test]
    fn the_json_schema_has_its_documented_fields() {
        let kinds = vec![
            KindReport::measured(
                "native",
                "n",
                vec![sample(10.0, true)],
                Some(density(4.0, 100.0)),
            ),
            KindReport::skipped("sandbox", "s", "PVM".into()),
        ];
        let report = Report {
            schema: SCHEMA.into(),
            host: Host {
                kvm: "pvm".into(),
                emulated: false,
                cpus: 2,
                note: String::new(),
            },
            runs: 1,
            workload: vec!["true".into()],
            claims: claims(&kinds, PVM),
            kinds,
        };
        let v = serde_json::to_value(&report).unwrap();
        assert_eq!(v["schema"], "gureum-bench-compare/1");
        for key in ["host", "runs", "workload", "kinds", "claims"] {
            assert!(v.get(key).is_some(), "{key}");
        }
        let native = &v["kinds"][0];
        for key in [
            "name",
            "label",
            "status",
            "skip_reason",
            "samples",
            "failed_runs",
            "start_ms",
            "exit_ms",
            "cpu_ms",
            "phases_ms",
            "density",
        ] {
            assert!(native.get(key).is_some(), "kinds[].{key}");
        }
        assert_eq!(native["exit_ms"]["median"], 10.0);
        assert_eq!(native["density"]["memory_mib_per_instance"], 4.0);
        let skipped = &v["kinds"][1];
        assert_eq!(skipped["status"], "skipped");
        assert!(skipped["exit_ms"].is_null() && skipped["density"].is_null());
        for key in [
            "claim",
            "factor",
            "metric",
            "numerator",
            "denominator",
            "target",
            "note",
        ] {
            assert!(v["claims"][0].get(key).is_some(), "claims[].{key}");
        }
        let md = markdown(&report);
        assert!(
            md.contains("| — | not measured: sandbox skipped (PVM)"),
            "{md}"
        );
    }
}
