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
//! features/dt=<as of>/{part-00000,users,stats}.parquet, features/dictionary/<version>.parquet
//! scores/dt=<date>/{part-00000,shard-I-of-N}.parquet
//! models/<version>/..., models/_champion.json
//! runs/<date>/{run.json, report.json, lease/, checkpoints/<stage>.json}
//! runs/<date>/run=<id>/{inputs.txt, policy.json, pipelines/, decisions.parquet}  (audit)
//! published/limits/{data/<run>/, _manifests/<version>.json}
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

pub fn features_file(as_of: NaiveDate) -> String {
    format!("features/dt={as_of}/part-00000.parquet")
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

pub fn scores_file(date: NaiveDate) -> String {
    format!("scores/dt={date}/part-00000.parquet")
}

pub fn score_shard_file(date: NaiveDate, index: usize, count: usize) -> String {
    format!("scores/dt={date}/shard-{index:05}-of-{count:05}.parquet")
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

/// The checkpoint name of one scoring shard.
pub fn shard_stage(index: usize, count: usize) -> String {
    format!("score-shard-{index:05}-of-{count:05}")
}

/// The shard count named by a checkpoint path, if it is a shard's.
pub fn shard_count_of_checkpoint(path: &str) -> Option<usize> {
    let name = path.rsplit('/').next()?.strip_suffix(".json")?;
    name.strip_prefix("score-shard-")?
        .split_once("-of-")?
        .1
        .parse()
        .ok()
}

pub fn shard_lease(date: NaiveDate, index: usize, count: usize) -> String {
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
    match count {
        0 | 1 => published_file(run),
        _ => format!("{PUBLISHED_DATA}/{run}/part-{index:05}-of-{count:05}.parquet"),
    }
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
            shard_count_of_checkpoint(&checkpoint(day, &shard_stage(3, 8))),
            Some(8)
        );
        assert_eq!(shard_count_of_checkpoint(&checkpoint(day, "score")), None);
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
