//! `gureum bench boot`: boot a guest N times as separate processes and report each phase's
//! min / median / p95, the VMM's own memory, and how that compares with the targets.

use std::fmt::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::config::VmConfig;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot find gureum's own executable")]
    SelfExe(#[source] std::io::Error),
    #[error("cannot start a boot")]
    Spawn(#[source] std::io::Error),
    #[error("boot {run} failed (exit {code:?}): {stderr}")]
    Boot {
        run: usize,
        code: Option<i32>,
        stderr: String,
    },
    #[error("--runs must be at least 1")]
    NoRuns,
}

/// Nearest-rank percentile (`p` in percent) of sorted samples.
pub fn percentile(sorted: &[f64], p: usize) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p.min(100) * sorted.len()).div_ceil(100);
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `key=value` pairs of a `gureum-phases` line.
pub fn parse_phases(stderr: &str) -> Vec<(String, f64)> {
    let Some(line) = stderr.lines().find(|l| l.starts_with("gureum-phases ")) else {
        return Vec::new();
    };
    line.split_whitespace()
        .skip(1)
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect()
}

const PHASES: [(&str, &str, f64); 7] = [
    ("vm_built_us", "VM built", 1e-3),
    ("first_entry_us", "first vCPU entry", 1e-3),
    ("boot_timer_us", "boot-timer write", 1e-3),
    ("shutdown_us", "guest shutdown", 1e-3),
    ("exit_us", "process exit", 1e-3),
    ("wall_us", "wall (spawn to reap)", 1e-3),
    ("vmm_kib", "VMM memory (RSS - guest)", 1.0 / 1024.0),
];

pub fn boot(config: &VmConfig, runs: usize, _with_qemu: bool) -> Result<String, Error> {
    if runs == 0 {
        return Err(Error::NoRuns);
    }
    let exe = std::env::current_exe().map_err(Error::SelfExe)?;
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); PHASES.len()];
    for run in 0..runs {
        let mut cmd = Command::new(&exe);
        cmd.arg("boot").arg("--kernel").arg(&config.kernel);
        if let Some(initrd) = &config.initrd {
            cmd.arg("--initrd").arg(initrd);
        }
        cmd.args(["--cmdline", &config.cmdline]);
        cmd.args([
            "--vcpus",
            &config.vcpus.to_string(),
            "--memory",
            &config.memory_mib.to_string(),
        ]);
        cmd.args(["--phases", "--timeout", "60"]);
        let spawned = Instant::now();
        let out = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .output()
            .map_err(Error::Spawn)?;
        let wall = spawned.elapsed().as_secs_f64() * 1e6;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            return Err(Error::Boot {
                run,
                code: out.status.code(),
                stderr,
            });
        }
        let mut values = parse_phases(&stderr);
        values.push(("wall_us".into(), wall));
        for (i, (key, _, _)) in PHASES.iter().enumerate() {
            if let Some((_, v)) = values.iter().find(|(k, _)| k == key) {
                samples[i].push(*v);
            }
        }
    }
    let mut report = format!(
        "gureum bench boot: {} x {} ({} vCPU, {} MiB)\n{:<28} {:>10} {:>10} {:>10}\n",
        runs,
        config.kernel.display(),
        config.vcpus,
        config.memory_mib,
        "phase (ms since start)",
        "min",
        "median",
        "p95"
    );
    let mut medians = Vec::new();
    for (i, (_, label, scale)) in PHASES.iter().enumerate() {
        let s = &mut samples[i];
        s.sort_by(f64::total_cmp);
        let unit = if *scale < 1e-2 { "MiB" } else { "ms" };
        let label = if i == PHASES.len() - 1 {
            format!("{label} [{unit}]")
        } else {
            label.to_string()
        };
        if s.is_empty() {
            let _ = writeln!(report, "{label:<28} {:>10}", "n/a");
            medians.push(f64::NAN);
            continue;
        }
        let [min, med, p95] = [0, 50, 95].map(|p| percentile(s, p) * scale);
        let _ = writeln!(report, "{label:<28} {min:>10.2} {med:>10.2} {p95:>10.2}");
        medians.push(med);
    }
    let verdict = |ok: bool| if ok { "met" } else { "missed" };
    let _ = writeln!(
        report,
        "target: VMM start to first guest instruction <= 3 ms: median {:.2} ms, {}",
        medians[1],
        verdict(medians[1] <= 3.0)
    );
    let _ = write!(
        report,
        "target: VMM memory <= 3 MiB: median {:.2} MiB, {}",
        medians[6],
        verdict(medians[6] <= 3.0)
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let s: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&s, 0), 1.0);
        assert_eq!(percentile(&s, 50), 10.0);
        assert_eq!(percentile(&s, 95), 19.0);
        assert_eq!(percentile(&s, 100), 20.0);
        assert_eq!(percentile(&[7.0], 95), 7.0);
        assert!(percentile(&[], 50).is_nan());
    }

    #[test]
    fn parses_the_phases_line() {
        let err =
            "noise\ngureum-phases vm_built_us=812 first_entry_us=- exit_us=9000 vmm_kib=1500\n";
        let p = parse_phases(err);
        assert_eq!(
            p,
            vec![
                ("vm_built_us".into(), 812.0),
                ("exit_us".into(), 9000.0),
                ("vmm_kib".into(), 1500.0)
            ]
        );
        assert!(parse_phases("nothing here").is_empty());
    }
}
