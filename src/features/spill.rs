//! A feature query's result, taken batch by batch as it streams out of the engine: its keys
//! interned and counted over all users (what support, top-k and distinct counts are decided
//! on), and its rows set aside by user part (`crate::spill`) so that assembly holds one part
//! at a time. Touches nothing in the store.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, UInt32Type};
use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;

use crate::spill::{PartSpill, SpillFolder, user_column};
use crate::user_index::UserIndex;

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
    rows_by_part: PartSpill,
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
                rows_by_part: PartSpill::new(&format!("group-{group:03}"), part_count, folder),
            },
            kinds,
            seen,
            slots,
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
        tally.rows_by_part.push(batch)
    }

    /// The tally over all users, every spill file closed.
    pub fn finish(mut self) -> Result<GroupTally, DataFusionError> {
        self.tally.rows_by_part.finish()?;
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
        let batches = self.rows_by_part.part(part)?;
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
