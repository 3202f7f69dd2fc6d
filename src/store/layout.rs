//! Every object path under a root, in one place: what each stage reads and writes, named once.
//! Other modules ask here instead of formatting paths themselves, so a path changes in one
//! line and a reader finds the whole layout of a root on one page.
//!
//! ```text
//! raw/<source>/dt=YYYY-MM-DD/part-NNNNN.parquet   fragments (profiles: one snapshot a day)
//! raw/_world.json                                 what generated a synthetic world
//! reference/certificate_types/                    the certificate catalogue
//! truth/true_pd/                                  a synthetic world's true PD (never read by a run)
//! staging/session=<id>/                           a run's validated copies of the sources
//! quarantine/<source>/run=<date>/                 rows validation refused, with reasons
//! features/dt=<as of>/{part-00000|part-I-of-P,users,stats}.parquet   (P: [publish] parts)
//! features/dictionary/<version>.parquet
//! scores/dt=<date>/{part-00000|part-I-of-P}.parquet
//! models/<version>/..., models/_champion.json
//! runs/<date>/{run.json, report.json, lease/, checkpoints/<stage>.json}
//! runs/<date>/run=<id>/{inputs.txt, policy.json, pipelines/, decisions[-I-of-P].parquet}
//! published/limits/{data/<run>/part-*.parquet, _manifests/<version>.json}
//! erasures/user=<id>.json, erasures/applied/user=<id>.json   (create-only requests)
//! ```
//!
//! Pure string functions: no I/O.

use chrono::NaiveDate;

/// The certificate catalogue (a reference table, not a dated source).
pub const CERTIFICATE_TYPES: &str = "reference/certificate_types";
/// What generated a synthetic world, so a later command knows whether to reuse it.
pub const WORLD_FILE: &str = "raw/_world.json";
/// A synthetic world's true PD per user.
pub const TRUTH: &str = "truth/true_pd";
/// Where runs stage validated sources, one folder per DataFusion session.
pub const STAGING: &str = "staging";
pub const DICTIONARY_VERSIONS: &str = "features/dictionary";

/// Version `version` of the feature dictionary.
pub fn dictionary_version(version: u64) -> String {
    format!("{DICTIONARY_VERSIONS}/{version:020}.parquet")
}

/// The version a path under `DICTIONARY_VERSIONS` holds, if it is one.
pub fn dictionary_version_of(path: &str) -> Option<u64> {
    path.rsplit('/')
        .next()?
        .strip_suffix(".parquet")?
        .parse()
        .ok()
}
pub const CHAMPION_FILE: &str = "models/_champion.json";
pub const ERASURES: &str = "erasures";
pub const ERASURES_APPLIED: &str = "erasures/applied";

/// The erasure request of `user_id`.
pub fn erasure(user_id: u64) -> String {
    format!("{ERASURES}/user={user_id}.json")
}

/// The note that `user_id`'s derived data was rewritten without them.
pub fn erasure_applied(user_id: u64) -> String {
    format!("{ERASURES_APPLIED}/user={user_id}.json")
}

/// The user an `erasure` or `erasure_applied` path names.
pub fn erased_user_of(path: &str) -> Option<u64> {
    path.rsplit('/')
        .next()?
        .strip_prefix("user=")?
        .strip_suffix(".json")?
        .parse()
        .ok()
}
pub const MANIFESTS: &str = "published/limits/_manifests";
pub const PUBLISHED_DATA: &str = "published/limits/data";

pub fn raw(source: &str) -> String {
    format!("raw/{source}")
}

pub fn raw_part(source: &str, day: NaiveDate, chunk: u64) -> String {
    format!("raw/{source}/dt={day}/part-{chunk:05}.parquet")
}

pub fn truth_part(chunk: u64) -> String {
    format!("{TRUTH}/part-{chunk:05}.parquet")
}

pub fn certificate_types_file() -> String {
    format!("{CERTIFICATE_TYPES}/part-00000.parquet")
}

/// One session's staged sources; `session` is the folder name (`session=<id>`).
pub fn staging(session: &str) -> String {
    format!("{STAGING}/{session}")
}

pub fn quarantine(source: &str, run_date: NaiveDate) -> String {
    format!("quarantine/{source}/run={run_date}")
}

pub fn features(as_of: NaiveDate) -> String {
    format!("features/dt={as_of}")
}

/// Part `index` of `count` of the feature rows of `as_of` (`part-00000` when there is one).
pub fn features_part(as_of: NaiveDate, index: u32, count: u32) -> String {
    format!("features/dt={as_of}/{}", part_name("part", index, count))
}

/// Whether `path` is one of the feature (or score) row files, not users or stats.
pub fn is_rows_part(path: &str) -> bool {
    path.rsplit('/')
        .next()
        .is_some_and(|name| name.starts_with("part-") && name.ends_with(".parquet"))
}

/// `<stem>-00000.parquet` for one part, `<stem>-IIIII-of-PPPPP.parquet` for one of several.
fn part_name(stem: &str, index: u32, count: u32) -> String {
    match count {
        0 | 1 => format!("{stem}-00000.parquet"),
        _ => format!("{stem}-{index:05}-of-{count:05}.parquet"),
    }
}

pub fn feature_users_file(as_of: NaiveDate) -> String {
    format!("features/dt={as_of}/users.parquet")
}

pub fn feature_stats_file(as_of: NaiveDate) -> String {
    format!("features/dt={as_of}/stats.parquet")
}

/// The as-of date of a `features/dt=<date>/stats.parquet` path.
pub fn stats_date(path: &str) -> Option<NaiveDate> {
    path.strip_prefix("features/dt=")?
        .strip_suffix("/stats.parquet")?
        .parse()
        .ok()
}

pub fn scores(date: NaiveDate) -> String {
    format!("scores/dt={date}")
}

/// Part `index` of `count` of the scores of `date`.
pub fn scores_part(date: NaiveDate, index: u32, count: u32) -> String {
    format!("scores/dt={date}/{}", part_name("part", index, count))
}

/// The decision records of part `index` of `count` in a run's `folder` (`decisions.parquet`
/// when there is one part).
pub fn decisions_part(folder: &str, index: u32, count: u32) -> String {
    match count {
        0 | 1 => format!("{folder}/decisions.parquet"),
        _ => format!("{folder}/decisions-{index:05}-of-{count:05}.parquet"),
    }
}

pub fn model(version: &str) -> String {
    format!("models/{version}")
}

pub fn model_file(version: &str, file: &str) -> String {
    format!("models/{version}/{file}")
}

pub fn evaluation(version: &str, date: NaiveDate) -> String {
    format!("models/{version}/evaluations/{date}")
}

pub fn run_file(date: NaiveDate) -> String {
    format!("runs/{date}/run.json")
}

/// Written last by a run that published: its presence means the date is done.
pub fn run_report(date: NaiveDate) -> String {
    format!("runs/{date}/report.json")
}

/// One run's own folder: what its published version rests on, written before the publish
/// commits and never after (a rerun of the date gets a folder of its own).
pub fn run_folder(date: NaiveDate, run_id: &str) -> String {
    format!("runs/{date}/run={run_id}")
}

pub fn run_lease(date: NaiveDate) -> String {
    format!("runs/{date}/lease")
}

pub fn checkpoints(date: NaiveDate) -> String {
    format!("runs/{date}/checkpoints")
}

pub fn checkpoint(date: NaiveDate, stage: &str) -> String {
    format!("runs/{date}/checkpoints/{stage}.json")
}

/// The checkpoint name of one user part of the per-user stages (score, limits, suggest).
pub fn part_stage(index: u32, count: u32) -> String {
    format!("users-{index:05}-of-{count:05}")
}

/// The lease of the machine working shard `index` of `count` of a run's user parts.
pub fn shard_lease(date: NaiveDate, index: u32, count: u32) -> String {
    format!("runs/{date}/lease-shard-{index:05}-of-{count:05}")
}

pub fn manifest(version: u64) -> String {
    format!("{MANIFESTS}/{version:020}.json")
}

pub fn published_file(run: &str) -> String {
    format!("{PUBLISHED_DATA}/{run}/part-00000.parquet")
}

/// Part `index` of `count` of a table written by `run` (`published_file` when there is one).
pub fn published_part(run: &str, index: u32, count: u32) -> String {
    format!("{PUBLISHED_DATA}/{run}/{}", part_name("part", index, count))
}

/// The folder name of the table parts one process (`writer`: its start time and pid) of a
/// nightly run writes before the run knows the version it commits as: named for the version
/// it expects (the newest then, plus one), which is never above the one it gets, so
/// retention's reading of the name stays safe.
pub fn nightly_table_run(
    expected_version: u64,
    as_of: NaiveDate,
    run_id: &str,
    writer: &str,
) -> String {
    format!("v{expected_version:08}-{as_of}-run-{run_id}-{writer}")
}

/// The version a published data file was written for, read from its run folder's name
/// (`v00000002-<date>-<time>-<pid>`); `None` for a path that is not one.
pub fn published_file_version(path: &str) -> Option<u64> {
    path.strip_prefix(PUBLISHED_DATA)?
        .strip_prefix("/v")?
        .get(..8)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_back() {
        let day = NaiveDate::from_ymd_opt(2026, 11, 1).unwrap();
        assert_eq!(stats_date(&feature_stats_file(day)), Some(day));
        assert_eq!(
            features_part(day, 3, 8),
            "features/dt=2026-11-01/part-00003-of-00008.parquet"
        );
        assert_eq!(
            features_part(day, 0, 1),
            "features/dt=2026-11-01/part-00000.parquet"
        );
        assert!(is_rows_part(&scores_part(day, 3, 8)));
        assert!(!is_rows_part(&feature_users_file(day)));
        let table = published_part(&nightly_table_run(7, day, "abc", "t-1"), 1, 4);
        assert_eq!(published_file_version(&table), Some(7));
        assert_eq!(
            manifest(7),
            "published/limits/_manifests/00000000000000000007.json"
        );
        let file = published_file("v00000012-2026-11-01-20261204T165302.947708-31921");
        assert_eq!(published_file_version(&file), Some(12));
        assert_eq!(
            published_file_version("published/limits/data/x/part-00000.parquet"),
            None
        );
    }
}
