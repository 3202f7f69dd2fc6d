//! Query results set aside by user part, so a stage works one part at a time without holding
//! every user's rows: a `PartSpill` takes batches whose column 0 is the user id and hands back
//! one part's rows (`UserShard`, the rule of every other part). One part stays in memory; more
//! go to Arrow IPC files in a `SpillFolder` of this process under the system's temp dir,
//! removed with it. Touches nothing in the store.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::arrow::array::{AsArray, RecordBatch, UInt32Array, UInt64Array};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::datatypes::UInt64Type;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::ipc::writer::FileWriter;
use datafusion::error::DataFusionError;

use crate::user_index::UserShard;

/// A temporary folder for one stage's spilled rows, removed with everything in it when
/// dropped (a failed stage leaves nothing behind either).
#[derive(Debug)]
pub struct SpillFolder {
    path: PathBuf,
}

impl SpillFolder {
    pub fn create(stage: &str) -> std::io::Result<SpillFolder> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "redflower-{stage}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path)?;
        Ok(SpillFolder { path })
    }
}

impl Drop for SpillFolder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// One result's rows by user part.
pub struct PartSpill {
    parts: Vec<PartRows>,
}

enum PartRows {
    Memory(Vec<RecordBatch>),
    File {
        path: PathBuf,
        writer: Option<FileWriter<BufWriter<File>>>,
    },
}

fn spill_error(path: &Path, error: impl std::fmt::Display) -> DataFusionError {
    DataFusionError::Execution(format!("spilling rows to {}: {error}", path.display()))
}

impl PartSpill {
    /// Rows of `count` user parts, named `name` in `folder` (kept in memory for one part, or
    /// without a folder).
    pub fn new(name: &str, count: u32, folder: Option<&SpillFolder>) -> PartSpill {
        let parts = match (count, folder) {
            (0 | 1, _) | (_, None) => vec![PartRows::Memory(Vec::new())],
            (count, Some(folder)) => (0..count)
                .map(|part| PartRows::File {
                    path: folder.path.join(format!("{name}-part-{part:05}.arrow")),
                    writer: None,
                })
                .collect(),
        };
        PartSpill { parts }
    }

    /// Sets `batch`'s rows aside by the part of their user (column 0; any UInt64 key is split
    /// the same way: the feature stats set theirs aside by feature id).
    pub fn push(&mut self, batch: RecordBatch) -> Result<(), DataFusionError> {
        let count = self.parts.len() as u32;
        if let [PartRows::Memory(batches)] = self.parts.as_mut_slice() {
            batches.push(batch);
            return Ok(());
        }
        let users = user_column(&batch)?;
        let mut rows_of: Vec<Vec<u32>> = vec![Vec::new(); count as usize];
        for (row, user) in users.values().iter().enumerate() {
            rows_of[UserShard::of(*user, count) as usize].push(row as u32);
        }
        for (part, rows) in self.parts.iter_mut().zip(rows_of) {
            let PartRows::File { path, writer } = part else {
                unreachable!("more than one part are spilled")
            };
            if rows.is_empty() {
                continue;
            }
            let taken = take_record_batch(&batch, &UInt32Array::from(rows))?;
            if writer.is_none() {
                let file = File::create(&*path).map_err(|e| spill_error(path, e))?;
                *writer = Some(
                    FileWriter::try_new(BufWriter::new(file), &batch.schema())
                        .map_err(|e| spill_error(path, e))?,
                );
            }
            let writer = writer.as_mut().expect("opened above");
            writer.write(&taken).map_err(|e| spill_error(path, e))?;
        }
        Ok(())
    }

    /// Closes every file written; `part` reads them after this.
    pub fn finish(&mut self) -> Result<(), DataFusionError> {
        for part in &mut self.parts {
            if let PartRows::File { path, writer } = part
                && let Some(mut open) = writer.take()
            {
                open.finish().map_err(|e| spill_error(path, e))?;
            }
        }
        Ok(())
    }

    /// The rows of part `index`.
    pub fn part(&self, index: u32) -> Result<Vec<RecordBatch>, DataFusionError> {
        match &self.parts[..] {
            [PartRows::Memory(batches)] => Ok(batches.clone()),
            parts => match &parts[index as usize] {
                PartRows::File { path, writer: None } if path.exists() => {
                    let file = File::open(path).map_err(|e| spill_error(path, e))?;
                    FileReader::try_new(BufReader::new(file), None)
                        .and_then(|reader| reader.collect::<Result<Vec<_>, ArrowError>>())
                        .map_err(|e| spill_error(path, e))
                }
                _ => Ok(Vec::new()), // no row fell in the part
            },
        }
    }
}

/// Column 0 of a batch set aside by user.
pub fn user_column(batch: &RecordBatch) -> Result<&UInt64Array, DataFusionError> {
    batch
        .column(0)
        .as_primitive_opt::<UInt64Type>()
        .ok_or_else(|| {
            DataFusionError::Execution(
                "a result set aside by user has no UInt64 user_id first".into(),
            )
        })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Float64Array, UInt64Array};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn batch(users: std::ops::Range<u64>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::UInt64, false),
            Field::new("value", DataType::Float64, false),
        ]));
        let values: Vec<f64> = users.clone().map(|u| u as f64 / 2.0).collect();
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(UInt64Array::from_iter_values(users)),
                Arc::new(Float64Array::from(values)),
            ],
        )
        .unwrap()
    }

    fn users_of(batches: &[RecordBatch]) -> Vec<u64> {
        batches
            .iter()
            .flat_map(|b| user_column(b).unwrap().values().to_vec())
            .collect()
    }

    #[test]
    fn rows_come_back_in_their_user_s_part_in_order_and_the_folder_goes_with_its_owner() {
        let folder = SpillFolder::create("test").unwrap();
        let path = folder.path.clone();
        let mut spill = PartSpill::new("result", 4, Some(&folder));
        spill.push(batch(0..700)).unwrap();
        spill.push(batch(700..1000)).unwrap();
        spill.finish().unwrap();
        let mut all = Vec::new();
        for part in 0..4 {
            let users = users_of(&spill.part(part).unwrap());
            let expected: Vec<u64> = (0..1000).filter(|&u| UserShard::of(u, 4) == part).collect();
            assert!(!expected.is_empty());
            assert_eq!(users, expected, "part {part}");
            all.extend(users);
        }
        assert_eq!(all.len(), 1000);
        drop(spill);
        drop(folder);
        assert!(!path.exists(), "the spill folder outlived its owner");
    }

    #[test]
    fn one_part_stays_in_memory_and_a_lost_folder_is_an_error_naming_the_file() {
        let mut whole = PartSpill::new("result", 1, None);
        whole.push(batch(0..10)).unwrap();
        whole.finish().unwrap();
        assert_eq!(
            users_of(&whole.part(0).unwrap()),
            (0..10).collect::<Vec<_>>()
        );

        let folder = SpillFolder::create("test").unwrap();
        let mut spill = PartSpill::new("result", 2, Some(&folder));
        std::fs::remove_dir_all(&folder.path).unwrap();
        let error = spill.push(batch(0..10)).unwrap_err().to_string();
        assert!(
            error.contains("result-part-0000") && error.contains(folder.path.to_str().unwrap()),
            "{error}"
        );
    }
}
