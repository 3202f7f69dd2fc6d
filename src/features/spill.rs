//! A feature query's result, taken batch by batch as it streams out of the engine: its keys
//! interned and counted over all users (what support, top-k and distinct counts are decided
//! on), and its rows set aside by user part so that assembly holds one part at a time. One
//! part stays in memory; more are written to Arrow IPC files in a temporary folder of this
//! process (`SpillFolder`, under the system's temp dir, removed when dropped). Touches
//! nothing in the store.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::arrow::array::{Array, AsArray, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{cast, take_record_batch};
use datafusion::arrow::datatypes::{DataType, Float64Type, UInt32Type, UInt64Type};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::ipc::writer::FileWriter;
use datafusion::error::DataFusionError;

use crate::user_index::{UserIndex, UserShard};

/// A temporary folder for one feature build's spilled rows, removed with everything in it
/// when dropped (a failed build leaves nothing behind either).
#[derive(Debug)]
pub(super) struct SpillFolder {
    path: PathBuf,
}

impl SpillFolder {
    pub fn create() -> std::io::Result<SpillFolder> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "redflower-features-{}-{}",
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

/// How assembly reads a member column: keys with support and top-k, or (a distinct count
/// riding on its value's group) one count per user of the keys it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MemberKind {
    Keyed,
    CountsKeys,
}

/// What one group's result holds over all users, and where its rows went by part.
pub(super) struct GroupTally {
    /// the distinct keys; 0 is the null key (groups without a key)
    pub keys: Vec<Option<String>>,
    index: HashMap<String, u32>,
    /// `[member][key]`: rows with a value (keyed members; empty for counting ones)
    pub support: Vec<Vec<u64>>,
    /// `[member]`: users with a value in some row (counting members; 0 for keyed ones)
    pub users_counted: Vec<u64>,
    pub rows: usize,
    parts: Vec<PartRows>,
}

enum PartRows {
    Memory(Vec<RecordBatch>),
    File {
        path: PathBuf,
        writer: Option<FileWriter<BufWriter<File>>>,
    },
}

/// Users seen: a bit per population position, a set for ids outside it.
struct UsersSeen {
    bits: Vec<u64>,
    others: HashSet<u64>,
    count: u64,
}

impl UsersSeen {
    fn insert(&mut self, user: u64, slots: &UserIndex) {
        let new = match slots.position(user) {
            Some(p) => {
                let (word, bit) = (p / 64, 1u64 << (p % 64));
                let new = self.bits[word] & bit == 0;
                self.bits[word] |= bit;
                new
            }
            None => self.others.insert(user),
        };
        self.count += new as u64;
    }
}

/// Takes one group's result as it streams: `push` each batch, then `finish`.
pub(super) struct GroupSink {
    tally: GroupTally,
    kinds: Vec<MemberKind>,
    seen: Vec<Option<UsersSeen>>,
    slots: Arc<UserIndex>,
    part_count: u32,
}

fn spill_error(path: &Path, error: impl std::fmt::Display) -> DataFusionError {
    DataFusionError::Execution(format!(
        "spilling feature rows to {}: {error}",
        path.display()
    ))
}

impl GroupSink {
    /// A sink for group number `group` of a build whose population is `slots`
    /// (`population` users), its rows set aside in `part_count` parts (in `folder` when more
    /// than one).
    pub fn new(
        group: usize,
        kinds: Vec<MemberKind>,
        slots: Arc<UserIndex>,
        population: usize,
        part_count: u32,
        folder: Option<&SpillFolder>,
    ) -> GroupSink {
        let parts = match (part_count, folder) {
            (0 | 1, _) | (_, None) => vec![PartRows::Memory(Vec::new())],
            (count, Some(folder)) => (0..count)
                .map(|part| PartRows::File {
                    path: folder
                        .path
                        .join(format!("group-{group:03}-part-{part:05}.arrow")),
                    writer: None,
                })
                .collect(),
        };
        let seen = kinds
            .iter()
            .map(|kind| {
                (*kind == MemberKind::CountsKeys).then(|| UsersSeen {
                    bits: vec![0; population.div_ceil(64)],
                    others: HashSet::new(),
                    count: 0,
                })
            })
            .collect();
        GroupSink {
            tally: GroupTally {
                keys: vec![None],
                index: HashMap::new(),
                support: kinds.iter().map(|_| Vec::new()).collect(),
                users_counted: vec![0; kinds.len()],
                rows: 0,
                parts,
            },
            kinds,
            seen,
            slots,
            part_count: part_count.max(1),
        }
    }

    /// Counts `batch`'s keys and users and sets its rows aside by part.
    pub fn push(&mut self, batch: RecordBatch) -> Result<(), DataFusionError> {
        let tally = &mut self.tally;
        let (keys, index) = (&mut tally.keys, &mut tally.index);
        let row_keys = batch_keys(&batch, |key| {
            if let Some(&id) = index.get(key) {
                return id;
            }
            let id = keys.len() as u32;
            keys.push(Some(key.to_string()));
            index.insert(key.to_string(), id);
            id
        })?;
        let users = user_column(&batch)?;
        for (member, kind) in self.kinds.iter().enumerate() {
            let values = value_column(&batch, member)?;
            match kind {
                MemberKind::Keyed => {
                    let support = &mut tally.support[member];
                    support.resize(tally.keys.len(), 0);
                    for (row, key) in row_keys.iter().enumerate() {
                        support[*key as usize] += values.is_valid(row) as u64;
                    }
                }
                MemberKind::CountsKeys => {
                    let seen = self.seen[member].as_mut().expect("a counting member");
                    for row in (0..batch.num_rows()).filter(|&row| values.is_valid(row)) {
                        seen.insert(users.value(row), &self.slots);
                    }
                }
            }
        }
        tally.rows += batch.num_rows();
        self.set_aside(batch)
    }

    fn set_aside(&mut self, batch: RecordBatch) -> Result<(), DataFusionError> {
        if let [PartRows::Memory(batches)] = self.tally.parts.as_mut_slice() {
            batches.push(batch);
            return Ok(());
        }
        let users = user_column(&batch)?;
        let mut rows_of: Vec<Vec<u32>> = vec![Vec::new(); self.part_count as usize];
        for (row, user) in users.values().iter().enumerate() {
            rows_of[UserShard::of(*user, self.part_count) as usize].push(row as u32);
        }
        for (part, rows) in self.tally.parts.iter_mut().zip(rows_of) {
            let PartRows::File { path, writer } = part else {
                unreachable!("parts past the first are spilled")
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

    /// The tally over all users, every spill file closed.
    pub fn finish(mut self) -> Result<GroupTally, DataFusionError> {
        for part in &mut self.tally.parts {
            if let PartRows::File { path, writer } = part
                && let Some(mut open) = writer.take()
            {
                open.finish().map_err(|e| spill_error(path, e))?;
            }
        }
        let keys = self.tally.keys.len();
        for (member, kind) in self.kinds.iter().enumerate() {
            match kind {
                MemberKind::Keyed => self.tally.support[member].resize(keys, 0),
                MemberKind::CountsKeys => {
                    self.tally.users_counted[member] =
                        self.seen[member].as_ref().map_or(0, |seen| seen.count)
                }
            }
        }
        Ok(self.tally)
    }
}

impl GroupTally {
    /// The rows of user part `part`, each row's key as an index into `keys`.
    pub fn part(&self, part: u32) -> Result<(Vec<RecordBatch>, Vec<Vec<u32>>), DataFusionError> {
        let batches = match &self.parts[..] {
            [PartRows::Memory(batches)] => batches.clone(),
            parts => match &parts[part as usize] {
                PartRows::File { path, writer: None } if path.exists() => {
                    let file = File::open(path).map_err(|e| spill_error(path, e))?;
                    FileReader::try_new(BufReader::new(file), None)
                        .and_then(|reader| reader.collect::<Result<Vec<_>, ArrowError>>())
                        .map_err(|e| spill_error(path, e))?
                }
                _ => Vec::new(), // no row of this group fell in the part
            },
        };
        let row_keys = batches
            .iter()
            .map(|batch| {
                batch_keys(batch, |key| {
                    *self
                        .index
                        .get(key)
                        .expect("every key was interned when spilled")
                })
            })
            .collect::<Result<_, _>>()?;
        Ok((batches, row_keys))
    }
}

/// Each row's key (column 1) through `id_of`. Arrow packs each batch's keys into a
/// dictionary (hashing native values, not text); only its few distinct values are turned
/// into text and looked up.
fn batch_keys(
    batch: &RecordBatch,
    mut id_of: impl FnMut(&str) -> u32,
) -> Result<Vec<u32>, ArrowError> {
    let column = batch.column(1);
    let value_type = match column.data_type() {
        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 | DataType::Null => {
            DataType::Utf8
        }
        other => other.clone(),
    };
    let packed = cast(
        column,
        &DataType::Dictionary(Box::new(DataType::UInt32), Box::new(value_type)),
    )?;
    let packed = packed.as_dictionary::<UInt32Type>();
    let values = cast(packed.values(), &DataType::Utf8)?;
    let values = values.as_string::<i32>();
    let ids: Vec<u32> = (0..values.len())
        .map(|i| match values.is_null(i) {
            true => 0,
            false => id_of(values.value(i)),
        })
        .collect();
    Ok(packed
        .keys()
        .iter()
        .map(|key| key.map_or(0, |k| ids[k as usize]))
        .collect())
}

fn user_column(
    batch: &RecordBatch,
) -> Result<&datafusion::arrow::array::UInt64Array, DataFusionError> {
    batch
        .column(0)
        .as_primitive_opt::<UInt64Type>()
        .ok_or_else(|| DataFusionError::Execution("a feature query's user_id is not UInt64".into()))
}

fn value_column(
    batch: &RecordBatch,
    member: usize,
) -> Result<&datafusion::arrow::array::Float64Array, DataFusionError> {
    batch
        .column(member + 2)
        .as_primitive_opt::<Float64Type>()
        .ok_or_else(|| {
            DataFusionError::Execution(format!("a feature query's c{member} is not Float64"))
        })
}
