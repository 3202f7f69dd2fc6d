//! The feature dictionary: every feature name ever produced, with a dense id that never
//! changes. New names append; names that stop appearing keep their id. Stored as versions,
//! `features/dictionary/<version>.parquet`, each the whole dictionary, committed create-only:
//! two writers that append at once both end in one dictionary, every id meaning one name
//! (`commit`). Only feature builds that write features commit it.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, RecordBatch, StringArray, UInt32Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use sha2::{Digest, Sha256};

use crate::schema;
use crate::store::{Store, StoreError};

use tracing::warn;

use crate::store::layout;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct FeatureDictionary {
    names: Vec<String>,
    families: Vec<String>,
    index: HashMap<String, u32>,
    /// the committed version this was loaded from or committed as (0: none yet)
    version: u64,
}

impl FeatureDictionary {
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// The committed version this was loaded from or committed as (0: none yet).
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn name(&self, id: u32) -> &str {
        &self.names[id as usize]
    }

    pub fn family(&self, id: u32) -> &str {
        &self.families[id as usize]
    }

    /// Each id's family, in id order.
    pub fn families(&self) -> impl Iterator<Item = &str> {
        self.families.iter().map(String::as_str)
    }

    /// Per id, whether its family is one of `families`.
    pub fn family_mask(&self, families: &[String]) -> Vec<bool> {
        (self.families.iter())
            .map(|family| families.iter().any(|f| f == family))
            .collect()
    }

    pub fn id(&self, name: &str) -> Option<u32> {
        self.index.get(name).copied()
    }

    /// The id of `name`, appending it if new.
    pub fn id_or_insert(&mut self, name: &str, family: &str) -> u32 {
        if let Some(id) = self.index.get(name) {
            return *id;
        }
        let id = self.names.len() as u32;
        self.names.push(name.to_string());
        self.families.push(family.to_string());
        self.index.insert(name.to_string(), id);
        id
    }

    /// A digest of the first `len` entries: a model trained on them can score any dictionary
    /// that starts with the same entries, because ids only append.
    pub fn prefix_hash(&self, len: usize) -> String {
        let mut hasher = Sha256::new();
        for name in self.names.iter().take(len) {
            hasher.update(name.as_bytes());
            hasher.update([0]);
        }
        format!("{:x}", hasher.finalize())
    }

    /// The newest committed dictionary (empty on a new root). A root from before versions
    /// holds one `features/dictionary.parquet`: it is version 0.
    pub async fn load(store: &Store) -> Result<FeatureDictionary, StoreError> {
        let Some(version) = newest_version(store).await? else {
            return match store.get(LEGACY_DICTIONARY_FILE).await? {
                None => Ok(FeatureDictionary::default()),
                Some(bytes) => decode(store, LEGACY_DICTIONARY_FILE, bytes, 0),
            };
        };
        let path = layout::dictionary_version(version);
        let bytes = store.get(&path).await?.ok_or_else(|| missing(&path))?;
        decode(store, &path, bytes, version)
    }

    /// Commits the names appended since this dictionary was loaded as the next version,
    /// create-only. Another writer may have committed first: then its dictionary is read
    /// again, this one's new names are appended to it, and the commit is tried once more.
    /// Returns each old id's id in what was committed (identity without a race): features
    /// assembled with the old ids must be remapped before they are written.
    pub async fn commit(&mut self, store: &Store) -> Result<Vec<u32>, StoreError> {
        let mut remap: Vec<u32> = (0..self.len() as u32).collect();
        let mut attempts = 0;
        loop {
            let next = self.version + 1;
            let path = layout::dictionary_version(next);
            match store.put_if_absent(&path, self.encode()?).await {
                Ok(()) => {
                    self.version = next;
                    prune(store, next).await?;
                    return Ok(remap);
                }
                Err(StoreError::AlreadyExists { .. }) if attempts < MAX_COMMIT_ATTEMPTS => {
                    attempts += 1;
                    let committed = FeatureDictionary::load(store).await?;
                    // a retried put whose first response was lost finds its own commit
                    if committed.names == self.names && committed.version >= next {
                        self.version = committed.version;
                        return Ok(remap);
                    }
                    let rebased = self.rebased_on(committed);
                    for id in remap.iter_mut() {
                        *id = rebased.0[*id as usize];
                    }
                    *self = rebased.1;
                    warn!(
                        version = next,
                        "another writer committed the feature dictionary first: appended to theirs"
                    );
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// `committed` with this dictionary's names it lacks appended, and each id of this
    /// dictionary's id in it. Ids only append, so names both hold keep their ids.
    fn rebased_on(&self, mut committed: FeatureDictionary) -> (Vec<u32>, FeatureDictionary) {
        let ids = self
            .names
            .iter()
            .zip(&self.families)
            .map(|(name, family)| committed.id_or_insert(name, family))
            .collect();
        (ids, committed)
    }

    fn encode(&self) -> Result<bytes::Bytes, StoreError> {
        let batch = RecordBatch::try_new(
            schema::FEATURE_DICTIONARY.arrow(),
            vec![
                Arc::new(UInt32Array::from_iter_values(0..self.names.len() as u32)),
                Arc::new(StringArray::from_iter_values(self.names.iter())),
                Arc::new(StringArray::from_iter_values(self.families.iter())),
            ],
        )
        .map_err(|e| parquet_error(e.into()))?;
        let mut bytes = Vec::new();
        let mut writer = parquet::arrow::ArrowWriter::try_new(&mut bytes, batch.schema(), None)
            .map_err(parquet_error)?;
        writer.write(&batch).map_err(parquet_error)?;
        writer.close().map_err(parquet_error)?;
        Ok(bytes.into())
    }
}

/// Commits lost in a row before a writer gives up (each loss means another writer committed).
const MAX_COMMIT_ATTEMPTS: usize = 16;

/// Versions kept behind the newest: enough for any reader that listed a moment ago.
const VERSIONS_KEPT: u64 = 8;

/// Where dictionaries were one overwritten file, before versions.
const LEGACY_DICTIONARY_FILE: &str = "features/dictionary.parquet";

async fn newest_version(store: &Store) -> Result<Option<u64>, StoreError> {
    Ok(store
        .list(layout::DICTIONARY_VERSIONS)
        .await?
        .iter()
        .filter_map(|(path, _)| layout::dictionary_version_of(path))
        .max())
}

/// Deletes versions more than `VERSIONS_KEPT` behind `newest`.
async fn prune(store: &Store, newest: u64) -> Result<(), StoreError> {
    for (path, _) in store.list(layout::DICTIONARY_VERSIONS).await? {
        if layout::dictionary_version_of(&path).is_some_and(|v| v + VERSIONS_KEPT < newest) {
            store.delete(&path).await?;
        }
    }
    Ok(())
}

fn missing(path: &str) -> StoreError {
    StoreError::Parquet {
        path: path.to_string(),
        source: parquet::errors::ParquetError::General("listed but gone: pruned while read".into()),
    }
}

fn decode(
    store: &Store,
    path: &str,
    bytes: bytes::Bytes,
    version: u64,
) -> Result<FeatureDictionary, StoreError> {
    let mut dictionary = FeatureDictionary {
        version,
        ..Default::default()
    };
    for batch in store.decode_parquet(path, bytes)? {
        let names = cast(batch.column(1), &DataType::Utf8).map_err(|e| parquet_error(e.into()))?;
        let families =
            cast(batch.column(2), &DataType::Utf8).map_err(|e| parquet_error(e.into()))?;
        let names = names
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("cast to Utf8");
        let families = families
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("cast to Utf8");
        for row in 0..batch.num_rows() {
            dictionary.id_or_insert(names.value(row), families.value(row));
        }
    }
    Ok(dictionary)
}

fn parquet_error(source: parquet::errors::ParquetError) -> StoreError {
    StoreError::Parquet {
        path: layout::DICTIONARY_VERSIONS.to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ids_survive_a_round_trip_and_only_append() {
        let store = Store::open("memory://dictionary-test").unwrap();
        let mut dictionary = FeatureDictionary::default();
        assert_eq!(dictionary.id_or_insert("a", "f"), 0);
        assert_eq!(dictionary.id_or_insert("b", "f"), 1);
        assert_eq!(dictionary.id_or_insert("a", "f"), 0);
        dictionary.commit(&store).await.unwrap();
        let mut loaded = FeatureDictionary::load(&store).await.unwrap();
        assert_eq!(loaded, dictionary);
        assert_eq!(loaded.id_or_insert("c", "g"), 2);
        assert_eq!(loaded.prefix_hash(2), dictionary.prefix_hash(2));
        assert_ne!(loaded.prefix_hash(3), dictionary.prefix_hash(2));
    }

    #[tokio::test]
    async fn two_writers_appending_at_once_end_in_one_dictionary_every_id_one_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap()).unwrap();
        let mut base = FeatureDictionary::default();
        base.id_or_insert("shared", "f");
        base.commit(&store).await.unwrap();
        let (mut a, mut b) = (
            FeatureDictionary::load(&store).await.unwrap(),
            FeatureDictionary::load(&store).await.unwrap(),
        );
        a.id_or_insert("a1", "f");
        a.id_or_insert("a2", "f");
        b.id_or_insert("b1", "g");
        let (a_before, b_before) = (a.clone(), b.clone());
        let (remap_a, remap_b) = tokio::join!(a.commit(&store), b.commit(&store));
        let (remap_a, remap_b) = (remap_a.unwrap(), remap_b.unwrap());
        let committed = FeatureDictionary::load(&store).await.unwrap();
        assert_eq!(committed.len(), 4);
        assert_eq!(committed.id("shared"), Some(0));
        for (before, remap) in [(&a_before, &remap_a), (&b_before, &remap_b)] {
            for (old, new) in remap.iter().enumerate() {
                assert_eq!(before.name(old as u32), committed.name(*new));
            }
        }
        // the loser's dictionary is the committed one, and the winner's is a prefix of it
        assert_eq!(a.len().max(b.len()), 4);
        assert_eq!(
            a.prefix_hash(a.len().min(b.len())),
            committed.prefix_hash(a.len().min(b.len()))
        );
    }

    #[tokio::test]
    async fn a_root_from_before_versions_is_version_0_and_commits_version_1() {
        let store = Store::open("memory://dictionary-legacy").unwrap();
        let mut old = FeatureDictionary::default();
        old.id_or_insert("x", "f");
        store
            .put(LEGACY_DICTIONARY_FILE, old.encode().unwrap())
            .await
            .unwrap();
        let mut loaded = FeatureDictionary::load(&store).await.unwrap();
        assert_eq!((loaded.len(), loaded.version), (1, 0));
        loaded.id_or_insert("y", "f");
        assert_eq!(loaded.commit(&store).await.unwrap(), [0, 1]);
        let again = FeatureDictionary::load(&store).await.unwrap();
        assert_eq!((again.id("y"), again.version), (Some(1), 1));
    }
}
