//! SVG charts of a comparison (plotters): the start-up distribution per kind, every run a dot on
//! a log scale, and host memory per idle instance.

use std::path::Path;

use plotters::prelude::*;

use super::report::Report;

#[derive(Debug, thiserror::Error)]
#[error("cannot draw {0}: {1}")]
pub struct Error(String, String);

fn fail(path: &Path) -> impl Fn(String) -> Error + '_ {
    move |e| Error(path.display().to_string(), e)
}

fn label(names: &[String], x: f64) -> String {
    let i = x.round();
    if (x - i).abs() > 0.01 || i < 0.0 {
        return String::new();
    }
    names
        .iter()
        .enumerate()
        .find(|(n, _)| (*n as f64 - i).abs() < 0.01)
        .map(|(_, name)| name.clone())
        .unwrap_or_default()
}

/// Start-to-exit of every run, per kind.
pub fn startup(r: &Report, path: &Path) -> Result<(), Error> {
    let kinds: Vec<_> = r.kinds.iter().filter(|k| k.exit_ms.is_some()).collect();
    let names: Vec<String> = kinds.iter().map(|k| k.name.clone()).collect();
    let values: Vec<(f64, f64)> = kinds
        .iter()
        .enumerate()
        .flat_map(|(i, k)| {
            k.samples
                .iter()
                .filter(|s| s.ok && s.exit_ms > 0.0)
                .map(move |s| (i as f64, s.exit_ms.log10()))
        })
        .collect();
    // log10(ms) on a linear axis, labelled in ms: readable whatever the spread.
    let (lo, hi) = values
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), &(_, v)| {
            (lo.min(v), hi.max(v))
        });
    let (lo, hi) = if values.is_empty() {
        (0.0, 1.0)
    } else {
        (lo - 0.1, hi + 0.1)
    };
    let root = SVGBackend::new(path, (960, 480)).into_drawing_area();
    let e = fail(path);
    root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
    let n = names.len().max(1) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption("start → exit per run (ms, log scale)", ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5f64..n - 0.5, lo..hi)
        .map_err(|x| e(x.to_string()))?;
    chart
        .configure_mesh()
        .x_labels(names.len().max(1))
        .x_label_formatter(&|x| label(&names, *x))
        .y_labels(8)
        .y_label_formatter(&|y| format!("{:.1}", 10f64.powf(*y)))
        .y_desc("ms")
        .draw()
        .map_err(|x| e(x.to_string()))?;
    chart
        .draw_series(
            values
                .iter()
                .map(|&(x, y)| Circle::new((x, y), 3, BLUE.mix(0.6).filled())),
        )
        .map_err(|x| e(x.to_string()))?;
    root.present().map_err(|x| e(x.to_string()))
}

/// Host memory per idle instance (density run), per kind.
pub fn memory(r: &Report, path: &Path) -> Result<(), Error> {
    let bars: Vec<(String, f64)> = r
        .kinds
        .iter()
        .filter_map(|k| {
            let d = k.density.as_ref().filter(|d| d.failed == 0)?;
            Some((k.name.clone(), d.memory_mib_per_instance))
        })
        .collect();
    let names: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    let hi = bars.iter().map(|b| b.1).fold(1.0f64, f64::max) * 1.2;
    let root = SVGBackend::new(path, (960, 480)).into_drawing_area();
    let e = fail(path);
    root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
    let n = names.len().max(1) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "host memory per idle instance (MiB, PSS)",
            ("sans-serif", 20),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5f64..n - 0.5, 0f64..hi)
        .map_err(|x| e(x.to_string()))?;
    chart
        .configure_mesh()
        .x_labels(names.len().max(1))
        .x_label_formatter(&|x| label(&names, *x))
        .y_desc("MiB")
        .draw()
        .map_err(|x| e(x.to_string()))?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, (_, v))| {
            let x = i as f64;
            Rectangle::new([(x - 0.3, 0.0), (x + 0.3, *v)], GREEN.mix(0.7).filled())
        }))
        .map_err(|x| e(x.to_string()))?;
    root.present().map_err(|x| e(x.to_string()))
}
