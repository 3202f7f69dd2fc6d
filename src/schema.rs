//! The Arrow schema of every input and output, read from the JSON files in `schemas/` (compiled
//! into the binary, so the checked-in files are the single source of truth).
//!
//! Owns the type vocabulary and the file-level schema check; it reads and writes no data.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::Deserialize;

/// The column every raw source carries: when the bank learned the row (its second timeline;
/// the source's `time_column` is when the fact happened).
pub const KNOWN_AT: &str = "known_at";

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(
        "{file}: no '{KNOWN_AT}' column: schemas/{table}.json needs the time each row became known. \
         A synthetic root made by an older redflower: run `redflower synth` again (it rewrites an \
         older world); an upstream export: add its ingestion time as {KNOWN_AT} (see README, Inputs)"
    )]
    NoKnownAt { file: String, table: String },
    #[error("{file}: column '{column}' is missing (expected {expected} by schemas/{table}.json)")]
    MissingColumn {
        file: String,
        table: String,
        column: String,
        expected: String,
    },
    #[error(
        "{file}: column '{column}' has type {found}, but schemas/{table}.json expects {expected}"
    )]
    WrongType {
        file: String,
        table: String,
        column: String,
        expected: String,
        found: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSchema {
    pub name: String,
    pub description: String,
    /// The column that says when a row became known; point-in-time filters use it.
    #[serde(default)]
    pub time_column: Option<String>,
    pub fields: Vec<FieldSpec>,
    #[serde(skip)]
    arrow: Option<SchemaRef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: TypeName,
    pub nullable: bool,
    pub doc: String,
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub enum TypeName {
    UInt32,
    UInt64,
    Int32,
    Int64,
    Float32,
    Float64,
    Utf8,
    Boolean,
    Date32,
    TimestampMicrosecond,
}

impl TypeName {
    pub fn arrow(self) -> DataType {
        match self {
            TypeName::UInt32 => DataType::UInt32,
            TypeName::UInt64 => DataType::UInt64,
            TypeName::Int32 => DataType::Int32,
            TypeName::Int64 => DataType::Int64,
            TypeName::Float32 => DataType::Float32,
            TypeName::Float64 => DataType::Float64,
            TypeName::Utf8 => DataType::Utf8,
            TypeName::Boolean => DataType::Boolean,
            TypeName::Date32 => DataType::Date32,
            TypeName::TimestampMicrosecond => {
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
            }
        }
    }
}

impl TableSchema {
    /// A SQL literal for the start of `date`, typed like the time column, so a filter compares
    /// the raw column (Parquet statistics can prune on it) instead of casting every row.
    pub fn time_literal(&self, date: chrono::NaiveDate) -> Option<String> {
        let column = self.time_column.as_ref()?;
        let field = self.fields.iter().find(|f| &f.name == column)?;
        Some(match field.data_type {
            TypeName::TimestampMicrosecond => format!("TIMESTAMP '{date} 00:00:00'"),
            _ => format!("DATE '{date}'"),
        })
    }

    fn parse(json: &str) -> TableSchema {
        // The files are compiled in; a broken one fails every test, never a user's run.
        let mut table: TableSchema = serde_json::from_str(json).expect("schemas/*.json is valid");
        let fields: Vec<Field> = table
            .fields
            .iter()
            .map(|f| Field::new(&f.name, f.data_type.arrow(), f.nullable))
            .collect();
        table.arrow = Some(Arc::new(Schema::new(fields)));
        table
    }

    pub fn arrow(&self) -> SchemaRef {
        self.arrow.clone().expect("set by parse")
    }

    /// The schema of raw files: every column nullable, since upstreams send nulls and
    /// validation, not the reader, refuses them.
    pub fn raw_arrow(&self) -> SchemaRef {
        let fields: Vec<Field> = self
            .arrow()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect();
        Arc::new(Schema::new(fields))
    }

    /// Checks that a file carries every column with the declared type. Extra columns are
    /// allowed (upstreams add columns before we use them); nullability is checked per row by
    /// validation, not here.
    pub fn check(&self, file: &str, found: &Schema) -> Result<(), SchemaError> {
        for spec in &self.fields {
            let expected = spec.data_type.arrow();
            match found.field_with_name(&spec.name) {
                Err(_) if spec.name == KNOWN_AT => {
                    return Err(SchemaError::NoKnownAt {
                        file: file.to_string(),
                        table: self.name.clone(),
                    });
                }
                Err(_) => {
                    return Err(SchemaError::MissingColumn {
                        file: file.to_string(),
                        table: self.name.clone(),
                        column: spec.name.clone(),
                        expected: expected.to_string(),
                    });
                }
                Ok(field) if !same_type(field.data_type(), &expected) => {
                    return Err(SchemaError::WrongType {
                        file: file.to_string(),
                        table: self.name.clone(),
                        column: spec.name.clone(),
                        expected: expected.to_string(),
                        found: field.data_type().to_string(),
                    });
                }
                Ok(_) => {}
            }
        }
        Ok(())
    }
}

/// Timestamps match on unit and on being zoned; writers spell UTC as "UTC" or "+00:00".
fn same_type(found: &DataType, expected: &DataType) -> bool {
    match (found, expected) {
        (DataType::Timestamp(u1, z1), DataType::Timestamp(u2, z2)) => {
            u1 == u2 && z1.is_some() == z2.is_some()
        }
        _ => found == expected,
    }
}

macro_rules! schema {
    ($name:ident, $file:literal) => {
        pub static $name: LazyLock<TableSchema> =
            LazyLock::new(|| TableSchema::parse(include_str!(concat!("../schemas/", $file))));
    };
}

schema!(PROFILES, "profiles.json");
schema!(EVENTS, "events.json");
schema!(CERTIFICATES, "certificates.json");
schema!(REPAYMENTS, "repayments.json");
schema!(LIMIT_REQUESTS, "limit_requests.json");
schema!(CERTIFICATE_TYPES, "certificate_types.json");
schema!(FEATURES, "features.json");
schema!(FEATURE_DICTIONARY, "feature_dictionary.json");
schema!(LIMITS, "limits.json");
schema!(TRUTH, "truth.json");
schema!(SCORES, "scores.json");
schema!(DECISIONS, "decisions.json");

/// Every table, for tools that list or document them.
pub fn all() -> [&'static TableSchema; 12] {
    [
        &PROFILES,
        &EVENTS,
        &CERTIFICATES,
        &REPAYMENTS,
        &LIMIT_REQUESTS,
        &CERTIFICATE_TYPES,
        &FEATURES,
        &FEATURE_DICTIONARY,
        &LIMITS,
        &TRUTH,
        &SCORES,
        &DECISIONS,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_file_parses_and_names_itself() {
        for table in all() {
            assert!(!table.fields.is_empty(), "{} has no fields", table.name);
            assert_eq!(table.arrow().fields().len(), table.fields.len());
            if let Some(time) = &table.time_column {
                assert!(
                    table.fields.iter().any(|f| &f.name == time),
                    "{}",
                    table.name
                );
            }
        }
    }

    #[test]
    fn wrong_type_names_file_and_column() {
        let found = Schema::new(vec![
            Field::new("user_id", DataType::Utf8, false),
            Field::new("true_pd", DataType::Float64, false),
        ]);
        let err = TRUTH
            .check("truth/x.parquet", &found)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("truth/x.parquet") && err.contains("'user_id'"),
            "{err}"
        );
        assert!(err.contains("UInt64") && err.contains("Utf8"), "{err}");
    }

    #[test]
    fn a_file_without_known_at_says_how_to_regenerate() {
        // a generator-2 events file: every column but the second timeline
        let fields: Vec<Field> = EVENTS
            .arrow()
            .fields()
            .iter()
            .filter(|f| f.name() != KNOWN_AT)
            .map(|f| f.as_ref().clone())
            .collect();
        let err = EVENTS
            .check("raw/events/dt=2026-01-01/a.parquet", &Schema::new(fields))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("dt=2026-01-01/a.parquet") && err.contains("known_at"),
            "{err}"
        );
        assert!(err.contains("redflower synth"), "{err}");
        for table in [
            &PROFILES,
            &EVENTS,
            &CERTIFICATES,
            &REPAYMENTS,
            &LIMIT_REQUESTS,
        ] {
            assert!(
                table.fields.iter().any(|f| f.name == KNOWN_AT),
                "{}",
                table.name
            );
        }
    }
}
