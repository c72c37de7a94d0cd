//! An SVG chart (no scripts, no network) of deliveries/s and p99 latency against subscriber
//! count, one line per server, from the generator's JSON reports labelled
//! `fanout-<server>-<subscribers>`.

use std::collections::BTreeMap;
use std::fmt::Write;

use clap::Args;

use crate::load::Report;

#[derive(Clone, Debug, Args)]
pub struct ChartArgs {
    /// JSON reports (others than `fanout-*` are ignored).
    pub reports: Vec<std::path::PathBuf>,
    /// Where to write the SVG.
    #[arg(long, default_value = "bench/results/fanout.svg")]
    pub out: std::path::PathBuf,
}

const COLORS: [(&str, &str); 3] = [
    ("floor", "#555555"),
    ("tidings", "#d9480f"),
    ("node", "#1971c2"),
];

/// Series: server -> [(subscribers, deliveries/s, p99 ms)].
type Series = BTreeMap<String, Vec<(f64, f64, f64)>>;

pub fn run(args: &ChartArgs) -> anyhow::Result<()> {
    let mut series: Series = BTreeMap::new();
    for path in &args.reports {
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        let Ok(r) = serde_json::from_str::<Report>(&text) else {
            continue;
        };
        let mut parts = r.label.splitn(3, '-');
        if parts.next() != Some("fanout") {
            continue;
        }
        let (Some(server), Some(_)) = (parts.next(), parts.next()) else {
            continue;
        };
        series.entry(server.to_owned()).or_default().push((
            r.subscribers as f64,
            r.deliveries_per_second,
            r.latency.p99_ms,
        ));
    }
    for points in series.values_mut() {
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let svg = render(&series);
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, svg)?;
    println!("wrote {}", args.out.display());
    Ok(())
}

fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut ticks = Vec::new();
    let mut t = 10f64.powf(lo.log10().floor());
    while t <= hi * 1.0001 {
        ticks.push(t);
        t *= 10.0;
    }
    ticks
}

fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{}k", v / 1e3)
    } else if v >= 1.0 {
        format!("{v}")
    } else {
        format!("{v:.1}")
    }
}

/// One panel: x linear in subscribers, y logarithmic.
fn panel(
    out: &mut String,
    series: &Series,
    x0: f64,
    title: &str,
    pick: fn(&(f64, f64, f64)) -> f64,
) {
    let (w, h, top, left) = (380.0, 260.0, 50.0, x0 + 70.0);
    let values: Vec<f64> = series
        .values()
        .flatten()
        .map(pick)
        .filter(|v| *v > 0.0)
        .collect();
    let ymin = values
        .iter()
        .cloned()
        .fold(f64::INFINITY, f64::min)
        .max(0.01);
    let ymax = values.iter().cloned().fold(0.0, f64::max).max(ymin * 10.0);
    let (lo, hi) = (
        10f64.powf(ymin.log10().floor()),
        10f64.powf(ymax.log10().ceil()),
    );
    let xmax = series.values().flatten().map(|p| p.0).fold(1.0, f64::max);
    let sx = |x: f64| left + x / xmax * w;
    let sy = |y: f64| top + h - (y.max(lo).log10() - lo.log10()) / (hi.log10() - lo.log10()) * h;
    let _ = writeln!(
        out,
        r#"<text x="{}" y="30" font-size="15" font-weight="bold">{title}</text>"#,
        left
    );
    let _ = writeln!(
        out,
        r##"<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#999"/>"##
    );
    for t in log_ticks(lo, hi) {
        let y = sy(t);
        let _ = writeln!(
            out,
            r##"<line x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#e5e5e5"/><text x="{}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
            left + w,
            left - 6.0,
            y + 4.0,
            human(t)
        );
    }
    let mut xs: Vec<f64> = series.values().flatten().map(|p| p.0).collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    for x in xs {
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{}" font-size="11" text-anchor="middle">{}</text>"#,
            sx(x),
            top + h + 16.0,
            human(x)
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" font-size="12" text-anchor="middle">subscribers in one room</text>"#,
        left + w / 2.0,
        top + h + 34.0
    );
    for (name, points) in series {
        let color = COLORS
            .iter()
            .find(|c| c.0 == name)
            .map(|c| c.1)
            .unwrap_or("#2b8a3e");
        let path: Vec<String> = points
            .iter()
            .map(|p| format!("{:.1},{:.1}", sx(p.0), sy(pick(p))))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
            path.join(" ")
        );
        for p in points {
            let _ = writeln!(
                out,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{color}"><title>{name} {}: {:.2}</title></circle>"#,
                sx(p.0),
                sy(pick(p)),
                p.0,
                pick(p)
            );
        }
    }
}

fn render(series: &Series) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="960" height="400" font-family="sans-serif">"#
    );
    let _ = writeln!(out, r#"<rect width="960" height="400" fill="white"/>"#);
    panel(&mut out, series, 0.0, "deliveries/s (log)", |p| p.1);
    panel(&mut out, series, 480.0, "p99 latency, ms (log)", |p| p.2);
    for (i, (name, _)) in series.iter().enumerate() {
        let color = COLORS
            .iter()
            .find(|c| c.0 == name)
            .map(|c| c.1)
            .unwrap_or("#2b8a3e");
        let x = 80.0 + i as f64 * 130.0;
        let _ = writeln!(
            out,
            r#"<rect x="{x}" y="372" width="14" height="4" fill="{color}"/><text x="{}" y="378" font-size="12">{name}</text>"#,
            x + 20.0
        );
    }
    out.push_str("</svg>\n");
    out
}
