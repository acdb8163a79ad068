//! The memory picture of a run: `XENCI SAMPLE` lines from the serial log (written by
//! `sample` in scripts/dom0/lib.sh) turned into one PNG per scenario, our guest and the
//! Linux peer on one chart where both ran.
//!
//! ```text
//! XENCI SAMPLE <scenario> t=<uptime cs> dom=<name> mib=<N>          Xen's tot_pages (xl list)
//! XENCI SAMPLE <scenario> t=<uptime cs> dom=<name> target_mib=<N>   the target from then on
//! ```

use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One domain's timeline within one scenario run; times in seconds since its first sample.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Series {
    /// The scenario as run (`balloon-down-up`, `balloon-down-up@linux`).
    pub run: String,
    pub dom: String,
    /// (seconds, MiB) of Xen's tot_pages.
    pub mem: Vec<(f64, f64)>,
    /// (seconds, MiB) at which a target was set.
    pub target: Vec<(f64, f64)>,
}

impl Series {
    pub fn is_linux(&self) -> bool {
        self.run.ends_with("@linux")
    }

    /// The scenario without `@linux`: the chart this series belongs on.
    pub fn chart(&self) -> &str {
        self.run.split('@').next().unwrap_or(&self.run)
    }

    fn end(&self) -> f64 {
        let last = |v: &[(f64, f64)]| v.last().map_or(0.0, |p| p.0);
        last(&self.mem).max(last(&self.target))
    }

    /// The target as a step line: each value holds until the next one, the last until
    /// the end of the series.
    pub fn target_steps(&self) -> Vec<(f64, f64)> {
        let mut out = Vec::new();
        for (i, &(t, v)) in self.target.iter().enumerate() {
            if let Some(&(_, prev)) = i.checked_sub(1).and_then(|j| self.target.get(j)) {
                out.push((t, prev));
            }
            out.push((t, v));
        }
        if let Some(&(_, v)) = self.target.last() {
            out.push((self.end(), v));
        }
        out
    }
}

/// Every (scenario run, domain) series in the serial log, in order of first appearance.
pub fn parse_samples(serial: &str) -> Vec<Series> {
    let mut order: Vec<(String, String)> = Vec::new();
    let mut raw: BTreeMap<(String, String), (u64, Series)> = BTreeMap::new();
    for line in serial.lines() {
        let Some(at) = line.find("XENCI SAMPLE ") else {
            continue;
        };
        let mut f = line[at + "XENCI SAMPLE ".len()..].split_whitespace();
        let (Some(run), Some(t), Some(dom), Some(kv)) = (f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let (Some(cs), Some(dom)) = (
            t.strip_prefix("t=").and_then(|v| v.parse::<u64>().ok()),
            dom.strip_prefix("dom="),
        ) else {
            continue;
        };
        let Some((key, val)) = kv.split_once('=') else {
            continue;
        };
        let Ok(val) = val.parse::<f64>() else {
            continue;
        };
        let id = (run.to_string(), dom.to_string());
        let (t0, s) = raw.entry(id.clone()).or_insert_with(|| {
            order.push(id.clone());
            let s = Series {
                run: id.0.clone(),
                dom: id.1.clone(),
                ..Series::default()
            };
            (cs, s)
        });
        let secs = cs.saturating_sub(*t0) as f64 / 100.0;
        match key {
            "mib" => s.mem.push((secs, val)),
            "target_mib" => s.target.push((secs, val)),
            _ => {}
        }
    }
    order
        .into_iter()
        .filter_map(|id| raw.remove(&id).map(|(_, s)| s))
        .collect()
}

/// The series worth a chart, grouped by chart name: those whose target changed after boot
/// (balloon, hotplug, bench runs), not the many runs that only booted.
pub fn charts(series: Vec<Series>) -> BTreeMap<String, Vec<Series>> {
    let mut out: BTreeMap<String, Vec<Series>> = BTreeMap::new();
    for s in series {
        if s.target.len() >= 2 && !s.mem.is_empty() {
            out.entry(s.chart().to_string()).or_default().push(s);
        }
    }
    out
}

/// The corner of the plot with the fewest points near it, for the legend (a box of
/// about 40% x 35% of the plot).
fn legend_corner(series: &[Series], x_max: f64, y_max: f64) -> SeriesLabelPosition {
    use SeriesLabelPosition::{LowerLeft, LowerRight, UpperLeft, UpperRight};
    // Every line, sampled along its segments (a long flat step has only two corners).
    let mut pts = Vec::new();
    for line in series
        .iter()
        .flat_map(|s| [s.mem.clone(), s.target_steps()])
    {
        for w in line.windows(2) {
            let ((x0, y0), (x1, y1)) = (w[0], w[1]);
            pts.extend((0..=16).map(|i| {
                let f = f64::from(i) / 16.0;
                (x0 + (x1 - x0) * f, y0 + (y1 - y0) * f)
            }));
        }
    }
    let under = |right: bool, top: bool| {
        pts.iter()
            .filter(|&&(x, y)| {
                let in_x = if right {
                    x > 0.6 * x_max
                } else {
                    x < 0.4 * x_max
                };
                let in_y = if top {
                    y > 0.65 * y_max
                } else {
                    y < 0.35 * y_max
                };
                in_x && in_y
            })
            .count()
    };
    // The first with the fewest wins: lower right unless something is there.
    [
        (LowerRight, true, false),
        (UpperRight, true, true),
        (LowerLeft, false, false),
        (UpperLeft, false, true),
    ]
    .into_iter()
    .min_by_key(|&(_, right, top)| under(right, top))
    .map_or(LowerRight, |(pos, _, _)| pos)
}

/// Draws one chart (PNG, 1000x500).
pub fn draw(path: &Path, title: &str, series: &[Series]) -> Result<(), String> {
    use std::sync::Once;
    static FONT: Once = Once::new();
    // The bitmap backend has no system fonts here (no fontconfig): embed DejaVu Sans.
    FONT.call_once(|| {
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let x_max = series.iter().map(Series::end).fold(1.0, f64::max) * 1.02;
    let y_max = series
        .iter()
        .flat_map(|s| s.mem.iter().chain(&s.target).map(|p| p.1))
        .fold(1.0, f64::max)
        * 1.1;
    let root = BitMapBackend::new(path, (1000, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("seconds since the domain was ready")
        .y_desc("MiB")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| err(&e))?;
    // Ours in blues, the Linux peer in reds; the target thin, Xen's count thick.
    let (mut blue, mut red) = (0, 0);
    for s in series {
        let color = if s.is_linux() {
            red += 1;
            [RGBColor(200, 30, 30), RGBColor(230, 120, 40)][(red - 1) % 2]
        } else {
            blue += 1;
            [RGBColor(20, 70, 200), RGBColor(20, 150, 150)][(blue - 1) % 2]
        };
        let who = if s.is_linux() { "Linux" } else { "ours" };
        chart
            .draw_series(LineSeries::new(
                s.target_steps(),
                color.mix(0.45).stroke_width(2),
            ))
            .map_err(|e| err(&e))?
            .label(format!("{who} {}: target", s.dom))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.mix(0.45).stroke_width(2))
            });
        // Straight between samples, a dot on each: where there is no dot nothing polled.
        chart
            .draw_series(
                LineSeries::new(s.mem.iter().copied(), color.stroke_width(3)).point_size(3),
            )
            .map_err(|e| err(&e))?
            .label(format!("{who} {}: Xen tot_pages", s.dom))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
    }
    chart
        .configure_series_labels()
        .position(legend_corner(series, x_max, y_max))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// Draws every chart of a serial log into `dir` as `timeline-<scenario>.png`.
pub fn draw_all(serial: &str, dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for (name, series) in charts(parse_samples(serial)) {
        let path = dir.join(format!("timeline-{name}.png"));
        let title = format!("{name}: Xen's tot_pages and the target");
        draw(&path, &title, &series)?;
        out.push(path);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
XENCI BEGIN hotplug-add t=10.00
XENCI SAMPLE hotplug-add t=1000 dom=xenci-hpa-guest target_mib=256
XENCI SAMPLE hotplug-add t=1001 dom=xenci-hpa-guest mib=255\r
(XEN) noise XENCI SAMPLE hotplug-add t=1200 dom=xenci-hpa-guest target_mib=768
XENCI SAMPLE hotplug-add t=1250 dom=xenci-hpa-guest mib=512
XENCI SAMPLE hotplug-add t=1300 dom=xenci-hpa-guest mib=768
XENCI SAMPLE hotplug-add t=bad dom=xenci-hpa-guest mib=1
XENCI SAMPLE boot t=2000 dom=xenci-boot-guest target_mib=256
XENCI SAMPLE boot t=2001 dom=xenci-boot-guest mib=256
XENCI SAMPLE hotplug-add@linux t=5000 dom=xenci-hpa-linux target_mib=256
XENCI SAMPLE hotplug-add@linux t=5010 dom=xenci-hpa-linux mib=256
XENCI SAMPLE hotplug-add@linux t=5100 dom=xenci-hpa-linux target_mib=768
XENCI SAMPLE hotplug-add@linux t=5400 dom=xenci-hpa-linux mib=768
";

    #[test]
    fn samples_group_by_run_and_domain_with_relative_seconds() {
        let s = parse_samples(LOG);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].run, "hotplug-add");
        assert_eq!(s[0].mem, [(0.01, 255.0), (2.5, 512.0), (3.0, 768.0)]);
        assert_eq!(s[0].target, [(0.0, 256.0), (2.0, 768.0)]);
        assert!(s[2].is_linux());
        assert_eq!(s[2].chart(), "hotplug-add");
        assert_eq!(s[2].mem, [(0.1, 256.0), (4.0, 768.0)]);
    }

    #[test]
    fn target_is_drawn_as_steps_to_the_end() {
        let s = &parse_samples(LOG)[0];
        assert_eq!(
            s.target_steps(),
            [(0.0, 256.0), (2.0, 256.0), (2.0, 768.0), (3.0, 768.0)]
        );
    }

    #[test]
    fn only_runs_with_a_target_change_get_a_chart_with_both_subjects() {
        let c = charts(parse_samples(LOG));
        assert_eq!(c.keys().collect::<Vec<_>>(), ["hotplug-add"]);
        assert_eq!(c["hotplug-add"].len(), 2);
    }

    #[test]
    fn draws_a_png() {
        let dir = std::env::temp_dir().join(format!("xenci-timeline-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let paths = draw_all(LOG, &dir).unwrap();
        assert_eq!(paths.len(), 1);
        let png = std::fs::read(&paths[0]).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert!(
            png.len() > 5000,
            "a chart with text and lines, not a blank: {}",
            png.len()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
