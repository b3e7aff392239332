//! A run's report as one self-contained HTML file: loss curves per task with the stages
//! marked, the learning rates, the held-out scores, and sample predictions beside their
//! images. Something a person would rather look at than read logs.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use base64::Engine;

use super::trainer::TrainEvent;
use super::{Result, TrainError};
use crate::eval::EvalReport;

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 260.0;
const MARGIN: f64 = 44.0;
/// The column right of the plot that holds the series' names, clear of the stage labels.
const LEGEND_WIDTH: f64 = 120.0;
/// Roughly the width of a character of the charts' 11 px labels, to keep labels apart.
const LABEL_CHAR_WIDTH: f64 = 6.5;
const COLOURS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
];

/// Writes `path` (temporary name, then rename).
pub fn write_report(
    path: &Path,
    title: &str,
    events: &[TrainEvent],
    eval: Option<&EvalReport>,
) -> Result<()> {
    let html = render(title, events, eval);
    let tmp = path.with_extension("html.tmp");
    std::fs::write(&tmp, html).map_err(|e| TrainError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))
}

/// The report's HTML.
pub fn render(title: &str, events: &[TrainEvent], eval: Option<&EvalReport>) -> String {
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title><style>{STYLE}</style></head><body><h1>{t}</h1>",
        t = escape(title)
    );
    html.push_str(&summary(events));
    if let Some(eval) = eval {
        html.push_str("<h2>Held-out evaluation</h2>");
        html.push_str(&scores_table(eval));
    }
    html.push_str("<h2>Loss</h2>");
    html.push_str(&loss_chart(events));
    html.push_str("<h2>Learning rates</h2>");
    html.push_str(&lr_chart(events));
    if let Some(eval) = eval.filter(|e| !e.samples.is_empty()) {
        html.push_str("<h2>Sample predictions</h2>");
        html.push_str(&samples(eval));
    }
    html.push_str("</body></html>\n");
    html
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}\
table{border-collapse:collapse;margin:8px 0}td,th{padding:4px 10px;border-bottom:1px solid #ddd;text-align:left}\
th{background:#f4f4f4}.num{text-align:right;font-variant-numeric:tabular-nums}\
.samples{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:14px}\
.sample{border:1px solid #ddd;border-radius:6px;padding:8px;font-size:13px}\
.sample img{width:112px;height:112px;image-rendering:pixelated;margin-right:4px}\
.ok{color:#1a7f37}.bad{color:#cf222e}code{font-size:12px;word-break:break-all}svg text{font-size:11px}";

fn summary(events: &[TrainEvent]) -> String {
    let Some(last) = events.last() else {
        return "<p>No steps yet.</p>".into();
    };
    let seconds: f64 = events.iter().map(|e| e.step_s).sum();
    let examples: usize = events.iter().map(|e| e.examples).sum();
    let wait: f64 = events.iter().map(|e| e.data_wait * e.step_s).sum();
    let mut stages: Vec<(usize, &str, u64)> = Vec::new();
    for e in events {
        match stages.last_mut() {
            Some((s, _, steps)) if *s == e.stage => *steps += 1,
            _ => stages.push((e.stage, &e.stage_name, 1)),
        }
    }
    let stages: Vec<String> = stages
        .iter()
        .map(|(_, name, steps)| format!("{} ({steps} steps)", escape(name)))
        .collect();
    format!(
        "<p>{} steps, {examples} examples in {:.0} s ({:.1} examples/s, {:.0} % waiting for data); \
         stages: {}; last loss {:.4}.</p>",
        last.step,
        seconds,
        examples as f64 / seconds.max(1e-9),
        100.0 * wait / seconds.max(1e-9),
        stages.join(" → "),
        last.loss
    )
}

fn scores_table(eval: &EvalReport) -> String {
    let mut out = String::from(
        "<table><tr><th>task</th><th>examples</th><th>metric</th><th>value</th><th>others</th></tr>",
    );
    for t in &eval.tasks {
        let (name, value) = t.headline().cloned().unwrap_or_default();
        let _ = write!(
            out,
            "<tr><td>{}</td><td class=num>{}</td><td>{}</td><td class=num><b>{value:.3}</b></td><td>{}</td></tr>",
            escape(&t.task),
            t.examples,
            escape(&name),
            escape(&t.others())
        );
    }
    out.push_str("</table>");
    out
}

/// A named series of (step, value) points.
type Series = (String, Vec<(f64, f64)>);

fn loss_chart(events: &[TrainEvent]) -> String {
    let mut series: Vec<Series> = vec![(
        "all tasks".into(),
        events
            .iter()
            .map(|e| (e.step as f64, e.loss as f64))
            .collect(),
    )];
    let mut per_task: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for e in events {
        for (task, loss) in &e.task_loss {
            per_task
                .entry(task)
                .or_default()
                .push((e.step as f64, *loss as f64));
        }
    }
    series.extend(per_task.into_iter().map(|(t, p)| (t.to_string(), p)));
    chart(&series, events, "loss per target token")
}

fn lr_chart(events: &[TrainEvent]) -> String {
    let pick = |name: &str, f: fn(&TrainEvent) -> f64| -> Series {
        (
            name.into(),
            events.iter().map(|e| (e.step as f64, f(e))).collect(),
        )
    };
    let mut series = vec![
        pick("LLM", |e| e.lr.llm),
        pick("projector", |e| e.lr.projector),
        pick("image encoder", |e| e.lr.vision),
    ];
    if events.iter().any(|e| e.lr.text > 0.0) {
        series.push(pick("text tower (siglip)", |e| e.lr.text));
    }
    chart(&series, events, "learning rate")
}

/// An SVG line chart with stage boundaries as dashed lines.
fn chart(series: &[Series], events: &[TrainEvent], y_label: &str) -> String {
    let points = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x_max, mut y_min, mut y_max) = (1.0f64, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in points.filter(|(_, y)| y.is_finite()) {
        x_max = x_max.max(x);
        y_min = y_min.min(y);
        y_max = y_max.max(y);
    }
    if !y_min.is_finite() {
        return "<p>No data.</p>".into();
    }
    let y_min = y_min.min(0.0);
    let y_span = (y_max - y_min).max(1e-12);
    let sx = |x: f64| MARGIN + (x / x_max) * (WIDTH - 2.0 * MARGIN);
    let sy = |y: f64| HEIGHT - MARGIN + -(y - y_min) / y_span * (HEIGHT - 2.0 * MARGIN);
    let svg_width = WIDTH + LEGEND_WIDTH;
    let mut svg = format!(
        "<svg width=\"{svg_width}\" height=\"{HEIGHT}\" viewBox=\"0 0 {svg_width} {HEIGHT}\" xmlns=\"http://www.w3.org/2000/svg\">"
    );
    let _ = write!(
        svg,
        "<line x1=\"{MARGIN}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#999\"/>\
         <line x1=\"{MARGIN}\" y1=\"{MARGIN}\" x2=\"{MARGIN}\" y2=\"{b}\" stroke=\"#999\"/>\
         <text x=\"{MARGIN}\" y=\"{t}\">{label}</text>\
         <text x=\"4\" y=\"{MARGIN}\">{y_max:.3}</text><text x=\"4\" y=\"{b}\">{y_min:.3}</text>\
         <text x=\"{r}\" y=\"{s}\" text-anchor=\"end\">step {x_max:.0}</text>",
        b = HEIGHT - MARGIN,
        r = WIDTH - MARGIN,
        t = MARGIN - 10.0,
        s = HEIGHT - MARGIN + 16.0,
        label = escape(y_label),
    );
    let mut previous = None;
    // Where the last stage label ends, and on which line it went.
    let (mut label_end, mut line) = (f64::NEG_INFINITY, 0);
    for e in events {
        if previous.is_some_and(|s| s != e.stage) {
            let x = sx(e.step as f64 - 0.5);
            // A label that would run into the previous one goes a line lower; one that would
            // leave the plot on the right ends at its boundary instead of starting there.
            let width = LABEL_CHAR_WIDTH * e.stage_name.chars().count() as f64;
            let (tx, anchor) = if x + 3.0 + width > WIDTH - MARGIN {
                (x - 3.0, "end")
            } else {
                (x + 3.0, "start")
            };
            let start = if anchor == "end" { tx - width } else { tx };
            line = if start < label_end { line + 1 } else { 0 };
            label_end = start + width;
            let _ = write!(
                svg,
                "<line x1=\"{x:.1}\" y1=\"{MARGIN}\" x2=\"{x:.1}\" y2=\"{b}\" stroke=\"#bbb\" stroke-dasharray=\"4 3\"/>\
                 <text x=\"{tx:.1}\" y=\"{ty}\" text-anchor=\"{anchor}\">{name}</text>",
                b = HEIGHT - MARGIN,
                ty = MARGIN + 10.0 + 12.0 * line as f64,
                name = escape(&e.stage_name)
            );
        }
        previous = Some(e.stage);
    }
    for (i, (name, points)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let path: Vec<String> = points
            .iter()
            .filter(|(_, y)| y.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"{w}\" points=\"{}\"/>\
             <text x=\"{lx}\" y=\"{ly}\" fill=\"{colour}\">{}</text>",
            path.join(" "),
            escape(name),
            w = if i == 0 { 1.0 } else { 1.8 },
            lx = WIDTH - MARGIN + 12.0,
            ly = MARGIN + 14.0 * (i as f64 + 1.0),
        );
    }
    svg.push_str("</svg>");
    svg
}

fn samples(eval: &EvalReport) -> String {
    let mut out = String::from("<div class=samples>");
    for s in &eval.samples {
        let images: String = s
            .images_png
            .iter()
            .map(|png| {
                format!(
                    "<img alt=\"input\" src=\"data:image/png;base64,{}\">",
                    base64::engine::general_purpose::STANDARD.encode(png)
                )
            })
            .collect();
        let class = if s.prediction.trim() == s.reference.trim() {
            "ok"
        } else {
            "bad"
        };
        let _ = write!(
            out,
            "<div class=sample><div>{images}</div><div><b>{}</b> <code>{}</code></div>\
             <div class={class}>→ <code>{}</code></div><div>expected <code>{}</code></div></div>",
            escape(&s.task),
            escape(s.prompt.trim()),
            escape(&s.prediction),
            escape(&s.reference)
        );
    }
    out.push_str("</div>");
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::{Sample, TaskScores};
    use crate::train::GroupLrs;

    fn event(step: u64, stage: usize, loss: f32) -> TrainEvent {
        TrainEvent {
            step,
            stage,
            stage_name: format!("stage-{stage}"),
            stage_step: step,
            stage_steps: 4,
            loss,
            task_loss: [("caption".to_string(), loss * 0.5)].into_iter().collect(),
            lr: GroupLrs {
                vision: 1e-4,
                projector: 1e-4,
                llm: 1e-4,
                text: 0.0,
            },
            grad_norm: 1.0,
            examples: 8,
            tokens: 100,
            examples_per_s: 4.0,
            tokens_per_s: 50.0,
            data_wait: 0.1,
            step_s: 2.0,
            eval: Default::default(),
        }
    }

    #[test]
    fn report_shows_curves_stages_scores_and_samples() {
        let events = vec![event(1, 0, 3.0), event(2, 0, 2.0), event(3, 1, 1.0)];
        let eval = EvalReport {
            tasks: vec![TaskScores {
                task: "caption".into(),
                evaluator: mixtures::Evaluator::ExactMatch,
                examples: 2,
                metrics: vec![("exact_match".into(), 0.5)],
            }],
            samples: vec![Sample {
                task: "caption".into(),
                prompt: "caption en <x>".into(),
                prediction: "a red circle".into(),
                reference: "a red circle".into(),
                images_png: vec![vec![1, 2, 3]],
            }],
        };
        let html = render("run <1>", &events, Some(&eval));
        assert!(html.contains("<title>run &lt;1&gt;</title>"));
        assert!(html.contains("3 steps, 24 examples"));
        assert!(html.contains("stage-0 (2 steps) → stage-1 (1 steps)"));
        // Two charts, each with the stage boundary, and the caption's own loss curve.
        assert_eq!(html.matches("stroke-dasharray").count(), 2);
        assert!(html.contains(">caption</text>"));
        assert!(html.contains("<td class=num><b>0.500</b></td>"));
        assert!(html.contains("data:image/png;base64,AQID"));
        assert!(html.contains("caption en &lt;x&gt;"));
        assert!(html.contains("class=ok"));
        assert!(render("empty", &[], None).contains("No steps yet."));
    }

    /// Attribute `name` of every `<text>` of a chart whose content starts with `content`.
    fn text_attrs<'a>(svg: &'a str, content: &str, name: &str) -> Vec<&'a str> {
        let marker = format!(">{content}");
        let prefix = format!(" {name}=\"");
        svg.split("<text")
            .filter(|t| t.contains(&marker))
            .map(|t| t.split(&prefix).nth(1).unwrap().split('"').next().unwrap())
            .collect()
    }

    #[test]
    fn close_stage_labels_take_separate_lines_and_stay_inside_the_chart() {
        // 100 steps; stages start at steps 50, 52 (a label's width apart is far more) and 100.
        let stage = |s: u64| match s {
            ..50 => 0,
            50..52 => 1,
            52..100 => 2,
            _ => 3,
        };
        let events: Vec<_> = (1..=100).map(|s| event(s, stage(s), 1.0)).collect();
        let series = [("loss".to_string(), vec![(1.0, 1.0), (100.0, 2.0)])];
        let svg = chart(&series, &events, "loss");
        assert_eq!(text_attrs(&svg, "stage-", "y"), ["54", "66", "54"], "{svg}");
        // The last boundary is at the right edge: its label ends there.
        let anchors = text_attrs(&svg, "stage-", "text-anchor");
        assert_eq!(anchors[2], "end");
        assert_eq!(anchors[0], "start");
    }

    #[test]
    fn series_names_sit_right_of_the_plot_where_no_stage_label_goes() {
        let events: Vec<_> = (1..=10).map(|s| event(s, (s > 9) as usize, 1.0)).collect();
        let series = [
            ("loss".to_string(), vec![(1.0, 1.0), (10.0, 2.0)]),
            ("caption".to_string(), vec![(1.0, 0.5), (10.0, 0.2)]),
        ];
        let svg = chart(&series, &events, "per token");
        let x_of = |content: &str| -> f64 { text_attrs(&svg, content, "x")[0].parse().unwrap() };
        let plot_right = WIDTH - MARGIN;
        assert!(x_of("loss<") > plot_right && x_of("caption<") > plot_right);
        // The stage label at the right edge ends inside the plot.
        assert!(x_of("stage-1<") <= plot_right, "{svg}");
    }
}
