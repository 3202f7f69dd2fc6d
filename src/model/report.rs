//! The model report: one self-contained HTML file with the card, the metrics and four charts
//! (ROC, KS, calibration, score distribution) drawn as inline SVG, so it opens in any browser
//! from the object store without a server or a plotting library.

use std::fmt::Write;

use super::ModelCard;
use super::evaluation::Evaluation;
use super::metrics::SegmentMetrics;

const WIDTH: f64 = 420.0;
const HEIGHT: f64 = 300.0;
const MARGIN: f64 = 45.0;

struct Series<'a> {
    label: &'a str,
    color: &'a str,
    points: Vec<(f64, f64)>,
    dashed: bool,
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A line chart over x in [x0, x1] and y in [y0, y1], with axes, ticks and a legend.
fn chart(title: &str, x_label: &str, y_label: &str, range: [f64; 4], series: &[Series]) -> String {
    let [x0, x1, y0, y1] = range;
    let sx = |x: f64| MARGIN + (x - x0) / (x1 - x0).max(1e-12) * (WIDTH - 2.0 * MARGIN);
    let sy = |y: f64| HEIGHT - MARGIN - (y - y0) / (y1 - y0).max(1e-12) * (HEIGHT - 2.0 * MARGIN);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{title}"><title>{title}</title><rect width="100%" height="100%" fill="white"/>"#,
        title = escape(title)
    );
    let (left, right, top, bottom) = (sx(x0), sx(x1), sy(y1), sy(y0));
    let _ = write!(
        svg,
        r##"<rect x="{left}" y="{top}" width="{}" height="{}" fill="none" stroke="#999"/>"##,
        right - left,
        bottom - top
    );
    for i in 0..=4 {
        let fx = x0 + (x1 - x0) * i as f64 / 4.0;
        let fy = y0 + (y1 - y0) * i as f64 / 4.0;
        let _ = write!(
            svg,
            r##"<text x="{}" y="{}" font-size="10" text-anchor="middle">{}</text><text x="{}" y="{}" font-size="10" text-anchor="end">{}</text><line x1="{left}" x2="{right}" y1="{}" y2="{}" stroke="#eee"/>"##,
            sx(fx),
            bottom + 14.0,
            tick(fx),
            left - 4.0,
            sy(fy) + 3.0,
            tick(fy),
            sy(fy),
            sy(fy)
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{}" y="16" font-size="13" text-anchor="middle" font-weight="bold">{}</text><text x="{}" y="{}" font-size="11" text-anchor="middle">{}</text><text x="12" y="{}" font-size="11" text-anchor="middle" transform="rotate(-90 12 {})">{}</text>"#,
        WIDTH / 2.0,
        escape(title),
        WIDTH / 2.0,
        HEIGHT - 8.0,
        escape(x_label),
        HEIGHT / 2.0,
        HEIGHT / 2.0,
        escape(y_label)
    );
    for (i, s) in series.iter().enumerate() {
        let path: Vec<String> = s
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y.clamp(y0, y1))))
            .collect();
        let dash = if s.dashed {
            r#" stroke-dasharray="4 3""#
        } else {
            ""
        };
        let _ = write!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="1.8"{dash}/><text x="{}" y="{}" font-size="11" fill="{}">{}</text>"#,
            path.join(" "),
            s.color,
            left + 8.0,
            top + 14.0 + 14.0 * i as f64,
            s.color,
            escape(s.label)
        );
    }
    svg.push_str("</svg>");
    svg
}

fn tick(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn charts(e: &Evaluation) -> Vec<String> {
    vec![
        roc_chart(e),
        ks_chart(e),
        calibration_chart(e),
        distribution_chart(e),
    ]
}

fn roc_chart(e: &Evaluation) -> String {
    let m = &e.metrics;
    chart(
        &format!("ROC (AUC {:.4})", m.auc),
        "false positive rate",
        "true positive rate",
        [0.0, 1.0, 0.0, 1.0],
        &[
            Series {
                label: "model",
                color: "#1f77b4",
                points: e.roc.clone(),
                dashed: false,
            },
            Series {
                label: "random",
                color: "#999",
                points: vec![(0.0, 0.0), (1.0, 1.0)],
                dashed: true,
            },
        ],
    )
}

fn ks_chart(e: &Evaluation) -> String {
    let m = &e.metrics;
    let (p, n) = (m.positives as f64, (m.rows - m.positives) as f64);
    let share = |(fpr, tpr): (f64, f64)| (tpr * p + fpr * n) / (p + n).max(1.0);
    chart(
        &format!("KS ({:.3})", m.ks),
        "share of users, riskiest first",
        "cumulative share",
        [0.0, 1.0, 0.0, 1.0],
        &[
            Series {
                label: "defaults",
                color: "#d62728",
                points: e.roc.iter().map(|&pt| (share(pt), pt.1)).collect(),
                dashed: false,
            },
            Series {
                label: "non-defaults",
                color: "#2ca02c",
                points: e.roc.iter().map(|&pt| (share(pt), pt.0)).collect(),
                dashed: false,
            },
        ],
    )
}

fn calibration_chart(e: &Evaluation) -> String {
    let m = &e.metrics;
    let top = e
        .calibration
        .iter()
        .map(|b| b.mean_pd.max(b.default_rate))
        .fold(0.01, f64::max)
        * 1.1;
    chart(
        &format!("Calibration (ECE {:.4})", m.ece),
        "mean predicted PD",
        "observed default rate",
        [0.0, top, 0.0, top],
        &[
            Series {
                label: "model, per decile of PD",
                color: "#1f77b4",
                points: e
                    .calibration
                    .iter()
                    .map(|b| (b.mean_pd, b.default_rate))
                    .collect(),
                dashed: false,
            },
            Series {
                label: "perfect",
                color: "#999",
                points: vec![(0.0, 0.0), (top, top)],
                dashed: true,
            },
        ],
    )
}

fn distribution_chart(e: &Evaluation) -> String {
    let goods: usize = e.score_histogram.iter().map(|b| b.goods).sum();
    let bads: usize = e.score_histogram.iter().map(|b| b.bads).sum();
    let middle = |b: &super::evaluation::ScoreBin| (b.from_points + b.to_points) / 2.0;
    let good_share: Vec<(f64, f64)> = e
        .score_histogram
        .iter()
        .map(|b| (middle(b), b.goods as f64 / goods.max(1) as f64))
        .collect();
    let bad_share: Vec<(f64, f64)> = e
        .score_histogram
        .iter()
        .map(|b| (middle(b), b.bads as f64 / bads.max(1) as f64))
        .collect();
    let y_top = good_share
        .iter()
        .chain(&bad_share)
        .map(|p| p.1)
        .fold(0.01, f64::max)
        * 1.1;
    let (x_low, x_high) = (
        e.score_histogram.first().map_or(0.0, |b| b.from_points),
        e.score_histogram.last().map_or(1.0, |b| b.to_points),
    );
    chart(
        "Score distribution",
        "scorecard points",
        "share of class",
        [x_low, x_high, 0.0, y_top],
        &[
            Series {
                label: "non-defaults",
                color: "#2ca02c",
                points: good_share,
                dashed: false,
            },
            Series {
                label: "defaults",
                color: "#d62728",
                points: bad_share,
                dashed: false,
            },
        ],
    )
}

fn metric_row(out: &mut String, name: &str, value: String) {
    let _ = write!(
        out,
        "<tr><th>{}</th><td>{}</td></tr>",
        escape(name),
        escape(&value)
    );
}

/// The whole report as one HTML page.
pub fn render(card: &ModelCard, e: &Evaluation) -> String {
    let mut html = String::new();
    let _ = write!(
        html,
        r#"<!doctype html><html><head><meta charset="utf-8"><title>redflower model {v}</title><style>
body{{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}}
table{{border-collapse:collapse;margin:0.5em 0 1.5em}}td,th{{border:1px solid #ddd;padding:3px 8px;text-align:right}}
th{{background:#f6f6f6;text-align:left}}.charts svg{{margin:4px;border:1px solid #eee}}
</style></head><body><h1>Model {v}</h1><p>{kind}, trained as of {asof} on {data}; evaluated on {rows}.</p>"#,
        v = escape(&card.version),
        kind = escape(&card.kind),
        asof = card.trained_as_of,
        data = escape(&card.data),
        rows = escape(&e.rows_evaluated),
    );
    html.push_str(r#"<div class="charts">"#);
    for svg in charts(e) {
        html.push_str(&svg);
    }
    html.push_str("</div><h2>Metrics</h2><table>");
    metrics_table(&mut html, e);
    breakdown_tables(&mut html, e);
    html.push_str("</table><h2>Model card</h2><table>");
    card_table(&mut html, card);
    html.push_str("</table><h2>Limitations</h2><ul>");
    for note in &card.limitations {
        let _ = write!(html, "<li>{}</li>", escape(note));
    }
    html.push_str("</ul></body></html>\n");
    html
}

fn metrics_table(html: &mut String, e: &Evaluation) {
    let m = &e.metrics;
    metric_row(
        html,
        "rows / defaults",
        format!("{} / {}", m.rows, m.positives),
    );
    metric_row(html, "AUC", format!("{:.4}", m.auc));
    if let Some(oracle) = e.oracle_auc {
        metric_row(
            html,
            "oracle AUC (true PD) / ratio / lift share (AUC-0.5)/(oracle-0.5)",
            format!(
                "{oracle:.4} / {:.3} / {:.3}",
                m.auc / oracle,
                super::metrics::lift_share(m.auc, oracle)
            ),
        );
    }
    if let Some(visible) = e.visible_oracle_auc {
        metric_row(
            html,
            "oracle AUC without hidden risk (visible PD) / ratio",
            format!("{visible:.4} / {:.3}", m.auc / visible),
        );
    }
    metric_row(html, "Gini", format!("{:.4}", m.gini));
    metric_row(html, "KS", format!("{:.4}", m.ks));
    metric_row(html, "log loss", format!("{:.5}", m.log_loss));
    metric_row(html, "Brier", format!("{:.5}", m.brier));
    metric_row(html, "ECE (calibrated)", format!("{:.5}", m.ece));
    if let Some(raw) = &e.uncalibrated {
        metric_row(html, "ECE before calibration", format!("{:.5}", raw.ece));
    }
    metric_row(
        html,
        "mean PD / default rate",
        format!("{:.4} / {:.4}", m.mean_pd, m.default_rate),
    );
    if let Some(c) = &e.champion {
        metric_row(
            html,
            &format!("champion {} AUC", c.version),
            format!("{:.4}", c.auc),
        );
        metric_row(html, "PSI of PD vs champion", format!("{:.4}", c.score_psi));
    }
}

/// Lift by decile, calibration bins and the fairness view.
fn breakdown_tables(html: &mut String, e: &Evaluation) {
    html.push_str("</table><h2>Lift by decile</h2><table><tr><th>decile</th><th>rows</th><th>defaults</th><th>default rate</th><th>lift</th><th>cumulative capture</th></tr>");
    for d in &e.deciles {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.4}</td><td>{:.2}</td><td>{:.3}</td></tr>",
            d.decile, d.rows, d.defaults, d.default_rate, d.lift, d.cumulative_capture
        );
    }
    html.push_str("</table><h2>Calibration</h2><table><tr><th>rows</th><th>PD from</th><th>PD to</th><th>mean PD</th><th>default rate</th></tr>");
    for b in &e.calibration {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td></tr>",
            b.rows, b.min_pd, b.max_pd, b.mean_pd, b.default_rate
        );
    }
    segment_table(html, &e.segments, &e.protected);
}

/// The fairness view: per segment, the model's and the policy's outcomes, each next to its
/// ratio to the best segment of the family; protected attributes marked. Shared with the
/// run report's view of tonight's decisions.
pub fn segment_table(html: &mut String, segments: &[SegmentMetrics], protected: &[String]) {
    html.push_str("</table><h2>By segment (fairness view)</h2><p>Ratios are to the best segment of the same family; an approval ratio under 0.8 is adverse impact by the four-fifths rule. Approval and mean limit are the policy's on the PD alone (no income band, certificates or caps).</p><table><tr><th>segment</th><th>value</th><th>rows</th><th>defaults</th><th>default rate</th><th>mean PD</th><th>AUC (ratio)</th><th>approval (ratio)</th><th>mean limit (ratio)</th></tr>");
    let with_ratio = |x: Option<f64>, r: Option<f64>, digits: usize| match x {
        Some(x) => format!("{x:.digits$} ({:.3})", r.unwrap_or(f64::NAN)),
        None => "-".to_string(),
    };
    for s in segments {
        let mark = match protected.contains(&s.segment) {
            true => " (protected)",
            false => "",
        };
        let _ = write!(
            html,
            "<tr><td>{}{mark}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.4}</td><td>{:.4}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&s.segment),
            escape(&s.value),
            s.rows,
            s.defaults,
            s.default_rate,
            s.mean_pd,
            with_ratio(s.auc, s.auc_ratio, 4),
            with_ratio(s.approval_rate, s.approval_ratio, 3),
            with_ratio(s.mean_limit, s.limit_ratio, 0),
        );
    }
}

fn card_table(html: &mut String, card: &ModelCard) {
    metric_row(html, "features known", card.n_features.to_string());
    metric_row(html, "dictionary prefix hash", card.dictionary_hash.clone());
    metric_row(
        html,
        "architecture",
        format!(
            "wide over {} ids; deep: embedding {} -> hidden {}",
            card.architecture.n_features, card.architecture.embedding_dim, card.architecture.hidden
        ),
    );
    metric_row(
        html,
        "calibration (Platt)",
        format!(
            "pd = sigmoid({:.4} * logit + {:.4})",
            card.calibration.slope, card.calibration.intercept
        ),
    );
    metric_row(html, "epochs", card.epochs_run.to_string());
    if let Some(cv) = &card.cross_validation {
        metric_row(
            html,
            "cross-validated AUC",
            format!(
                "{:.4} ± {:.4} over {} folds of the training rows (folds: {}); chose {}, embedding {}, l2 {}, {} epochs, {} refits averaged; {} candidates tried",
                cv.auc_mean,
                cv.auc_sd,
                cv.folds,
                cv.fold_auc
                    .iter()
                    .map(|a| format!("{a:.4}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                cv.chosen,
                cv.embedding_dim,
                cv.l2,
                cv.epochs,
                cv.refits,
                cv.candidates.len()
            ),
        );
    }
    metric_row(
        html,
        "training",
        serde_json::to_string(&card.training).unwrap_or_default(),
    );
}
