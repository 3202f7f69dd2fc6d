//! The feature dictionary: every feature name ever produced, with a dense id that never
//! changes. New names append; names that stop appearing keep their id. Stored as
//! `features/dictionary.parquet`; only the feature stage writes it.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, RecordBatch, StringArray, UInt32Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use sha2::{Digest, Sha256};

use crate::schema;
use crate::store::{Store, StoreError};

use crate::store::layout::DICTIONARY_FILE;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct FeatureDictionary {
    names: Vec<String>,
    families: Vec<String>,
    index: HashMap<String, u32>,
}

impl FeatureDictionary {
    pub fn len(&self) -> usize {
        self.names.len()
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

    pub async fn load(store: &Store) -> Result<FeatureDictionary, StoreError> {
        let mut dictionary = FeatureDictionary::default();
        if store.get(DICTIONARY_FILE).await?.is_none() {
            return Ok(dictionary);
        }
        for batch in store.read_parquet(DICTIONARY_FILE).await? {
            let names =
                cast(batch.column(1), &DataType::Utf8).map_err(|e| parquet_error(e.into()))?;
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

    pub async fn save(&self, store: &Store) -> Result<(), StoreError> {
        let batch = RecordBatch::try_new(
            schema::FEATURE_DICTIONARY.arrow(),
            vec![
                Arc::new(UInt32Array::from_iter_values(0..self.names.len() as u32)),
                Arc::new(StringArray::from_iter_values(self.names.iter())),
                Arc::new(StringArray::from_iter_values(self.families.iter())),
            ],
        )
        .map_err(|e| parquet_error(e.into()))?;
        store
            .write_parquet(DICTIONARY_FILE, batch.schema(), &[batch])
            .await?;
        Ok(())
    }
}

fn parquet_error(source: parquet::errors::ParquetError) -> StoreError {
    StoreError::Parquet {
        path: DICTIONARY_FILE.to_string(),
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
        dictionary.save(&store).await.unwrap();
        let mut loaded = FeatureDictionary::load(&store).await.unwrap();
        assert_eq!(loaded, dictionary);
        assert_eq!(loaded.id_or_insert("c", "g"), 2);
        assert_eq!(loaded.prefix_hash(2), dictionary.prefix_hash(2));
        assert_ne!(loaded.prefix_hash(3), dictionary.prefix_hash(2));
    }
}
