//! `redflower explain`: the audit record behind one user's published limit on a version —
//! the row served, the policy's steps replayed from the run's decision record, the model's
//! reasons with their feature values, the certificates counted, and the lineage.

use anyhow::Result;
use clap::Args;
use std::fmt::Write;

use redflower::audit::{self, Explanation, Which};

use crate::args::RootArg;

#[derive(Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    root: RootArg,
    #[arg(long)]
    user: u64,
    /// a published version (default: the newest)
    #[arg(long, conflicts_with = "date")]
    version: Option<u64>,
    /// the newest version published for this date (YYYY-MM-DD)
    #[arg(long)]
    date: Option<chrono::NaiveDate>,
    /// print the record as JSON instead of text
    #[arg(long)]
    json: bool,
}

pub async fn run(args: ExplainArgs) -> Result<()> {
    let store = args.root.open()?;
    let which = match (args.version, args.date) {
        (Some(version), _) => Which::Version(version),
        (None, Some(date)) => Which::Date(date),
        (None, None) => Which::Latest,
    };
    let explained = audit::explain(&store, args.user, which).await?;
    match args.json {
        true => println!("{}", serde_json::to_string_pretty(&explained)?),
        false => print!("{}", text(&explained)),
    }
    Ok(())
}

fn text(e: &Explanation) -> String {
    let mut out = String::new();
    let p = &e.published;
    let _ = writeln!(
        out,
        "user {} on version {} (as of {}, published {}{})",
        e.user_id,
        e.version,
        e.as_of,
        e.published_at,
        e.rollback_of.map_or(String::new(), |v| format!(
            ", a rollback to version {v}'s table"
        ))
    );
    let _ = writeln!(
        out,
        "limit {} (policy limit {}, grade {}, PD {:.4}, APR {})",
        p.credit_limit,
        p.policy_limit,
        p.grade,
        p.pd,
        p.apr.map_or("-".into(), |a| format!("{a:.4}"))
    );
    let Some(record) = &e.record else {
        let _ = writeln!(
            out,
            "no decision record: this version was published before lineage was recorded (reasons: {})",
            p.reasons.join(", ")
        );
        return out;
    };
    let _ = writeln!(
        out,
        "\nhow the policy set the limit (replayed from the run's record):"
    );
    for step in &e.steps {
        let _ = writeln!(
            out,
            "  {:<18} {:>10}  {}",
            step.step, step.limit, step.detail
        );
    }
    let replay = match e.replay_matches {
        Some(true) => "the replay gives the published limit",
        _ => "THE REPLAY DIFFERS FROM THE PUBLISHED LIMIT: the record or the table was altered",
    };
    let _ = writeln!(out, "  -> {replay}");
    if !e.certificates_counted.is_empty() {
        let _ = writeln!(out, "\ncertificates counted:");
        for c in &e.certificates_counted {
            let _ = writeln!(
                out,
                "  {} ({}, tier {}, type {}, read with confidence {})",
                c.name, c.family, c.tier, c.cert_type_id, c.confidence
            );
        }
    }
    let _ = writeln!(
        out,
        "\nthe model's adverse reasons (logit {:.4} = wide {:.4} + deep {:.4}):",
        record.wide_logit + record.deep_logit,
        record.wide_logit,
        record.deep_logit
    );
    if record.model_reasons.is_empty() {
        let _ = writeln!(out, "  none: no feature raised the PD");
    }
    for reason in &record.model_reasons {
        let _ = writeln!(
            out,
            "  {:<40} value {:<10.4} adds {:+.4} to the logit",
            reason.feature, reason.value, reason.contribution
        );
    }
    if let Some(l) = &e.lineage {
        lineage_text(&mut out, l, e.user_id);
    }
    out
}

fn lineage_text(out: &mut String, l: &redflower::publish::Lineage, user_id: u64) {
    let mut rows = vec![
        (
            "code",
            format!("redflower {} (git {})", l.code_version, l.git_commit),
        ),
        (
            "run",
            format!("{} (lease holder {})", l.run_id, l.lease_holder),
        ),
        (
            "model",
            format!(
                "{} (weights sha256 {})",
                l.model_version, l.model_weights_sha256
            ),
        ),
        (
            "dictionary",
            format!(
                "version {} (sha256 {})",
                l.dictionary_version, l.dictionary_hash
            ),
        ),
    ];
    for f in &l.pipelines {
        rows.push((
            "config",
            format!("{} ({} bytes, sha256 {})", f.path, f.bytes, f.sha256),
        ));
    }
    rows.push((
        "inputs",
        format!(
            "{} objects, {} bytes (listing {}, sha256 {})",
            l.inputs.objects, l.inputs.bytes, l.inputs.listing, l.inputs.sha256
        ),
    ));
    // a run in many user parts keeps many files: name the user's own record file, count
    // the rest (`--json` lists every one)
    if let Some(f) = redflower::audit::records::file_of(&l.decisions, user_id) {
        rows.push(("record", format!("{} (sha256 {})", f.path, f.sha256)));
    }
    if l.decisions.len() > 1 {
        rows.push((
            "kept",
            format!(
                "{} decision record files, one per user part",
                l.decisions.len()
            ),
        ));
    }
    match l.outputs.len() {
        0..=6 => {
            for f in &l.outputs {
                rows.push(("kept", format!("{} (sha256 {})", f.path, f.sha256)));
            }
        }
        copies => rows.push((
            "kept",
            format!(
                "{copies} copies of the features and scores under {}/ (`--json` lists them with their sha256)",
                l.run_folder
            ),
        )),
    }
    let _ = writeln!(out, "\nlineage:");
    for (label, value) in rows {
        let _ = writeln!(out, "  {label:<12} {value}");
    }
}
