//! Data keys for Parquet modular encryption (AES-GCM): every Parquet file a run writes under
//! the prefixes that hold personal data is encrypted, its footer too, with the keyring's
//! write key, whose id goes into the file's key metadata (and the manifest); a reader finds
//! each file's key by that id, so old files stay readable after a rotation.
//!
//! Keys come from where `[encryption] keys` in nightly.toml says: `env:NAME` (the variable
//! holds the keys, or `@PATH` naming a key file) or `file:PATH`. A keyring is one `id=hex`
//! entry per line (or `;`-separated in a variable); the hex is 16, 24 or 32 bytes (AES-128,
//! -192, -256); the last entry is the write key. Keys are never logged or shown: a keyring's
//! `Debug` lists ids only.

use std::sync::Arc;

use parquet::encryption::decrypt::{FileDecryptionProperties, KeyRetriever};
use parquet::encryption::encrypt::FileEncryptionProperties;
use serde::{Deserialize, Serialize};

/// The prefixes whose Parquet files hold personal data (raw sources are the source systems'
/// files, read as they come; staging is a run's transient copy, dropped when it ends).
pub const ENCRYPTED_PREFIXES: [&str; 5] =
    ["features/", "scores/", "published/", "quarantine/", "runs/"];

/// `[encryption]` of nightly.toml.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// `env:NAME`, `file:PATH`, or "" for none
    pub keys: String,
    /// refuse to run without keys (instead of writing plaintext with a warning)
    pub required: bool,
}

impl EncryptionConfig {
    pub fn check(&self) -> Result<(), String> {
        match self.keys.split_once(':') {
            _ if self.keys.is_empty() => Ok(()),
            Some(("env" | "file", rest)) if !rest.is_empty() => Ok(()),
            _ => Err(format!(
                "keys = '{}': write env:NAME or file:PATH (or \"\" for none)",
                self.keys
            )),
        }
    }

    /// The keyring this names; None when it names none that is there (no variable set, or
    /// `keys = ""`), which `required` refuses.
    pub fn keyring(&self) -> Result<Option<Arc<Keyring>>, KeyError> {
        let text = match self.keys.split_once(':') {
            Some(("env", name)) => match std::env::var(name) {
                Ok(value) => match value.strip_prefix('@') {
                    Some(path) => Some(read_file(path)?),
                    None => Some(value),
                },
                Err(_) => None,
            },
            Some(("file", path)) => Some(read_file(path)?),
            _ => None,
        };
        let keyring = text
            .map(|t| Keyring::parse(&t, &self.keys))
            .transpose()?
            .map(Arc::new);
        if keyring.is_none() && self.required {
            return Err(KeyError(format!(
                "[encryption] required = true, but {} holds no keys",
                self.keys
            )));
        }
        Ok(keyring)
    }
}

fn read_file(path: &str) -> Result<String, KeyError> {
    std::fs::read_to_string(path).map_err(|e| KeyError(format!("key file {path}: {e}")))
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(pub String);

impl crate::cause::Classify for KeyError {
    /// keys are something a person configures
    fn cause(&self) -> crate::cause::Cause {
        crate::cause::Cause::Configuration
    }
}

/// Named AES keys; the last is the one new files are written with.
#[derive(Clone)]
pub struct Keyring {
    keys: Vec<(String, Vec<u8>)>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        write!(f, "Keyring {ids:?}")
    }
}

fn hex(text: &str) -> Option<Vec<u8>> {
    text.len()
        .is_multiple_of(2)
        .then(|| {
            (0..text.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
                .collect()
        })
        .flatten()
}

impl Keyring {
    /// `id=hex` entries, one per line or `;`-separated; `source` names where they came from
    /// in errors (never the keys).
    pub fn parse(text: &str, source: &str) -> Result<Keyring, KeyError> {
        let mut keys = Vec::new();
        for (n, entry) in text.split(['\n', ';']).map(str::trim).enumerate() {
            if entry.is_empty() || entry.starts_with('#') {
                continue;
            }
            let bad = |why: &str| KeyError(format!("{source}: entry {}: {why}", n + 1));
            let (id, key) = entry
                .split_once('=')
                .ok_or_else(|| bad("write id=hexkey"))?;
            let key = hex(key.trim()).ok_or_else(|| bad("the key is not hex"))?;
            if ![16, 24, 32].contains(&key.len()) {
                return Err(bad("a key is 16, 24 or 32 bytes (32, 48 or 64 hex digits)"));
            }
            keys.push((id.trim().to_string(), key));
        }
        if keys.is_empty() {
            return Err(KeyError(format!("{source}: no keys")));
        }
        Ok(Keyring { keys })
    }

    /// A new keyring with one random 256-bit key named `id` (the system's random bytes).
    pub fn generate(id: &str) -> Result<Keyring, KeyError> {
        use std::io::Read;
        let mut key = vec![0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut key))
            .map_err(|e| KeyError(format!("no random bytes for a key: {e}")))?;
        Ok(Keyring {
            keys: vec![(id.to_string(), key)],
        })
    }

    /// The keyring as a key file's text (the secret itself: write it where only its owner
    /// reads).
    pub fn to_file_text(&self) -> String {
        self.keys
            .iter()
            .map(|(id, key)| {
                let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
                format!("{id}={hex}\n")
            })
            .collect()
    }

    pub fn write_key_id(&self) -> &str {
        &self.keys.last().expect("a keyring has a key").0
    }

    pub fn ids(&self) -> Vec<&str> {
        self.keys.iter().map(|(id, _)| id.as_str()).collect()
    }

    pub(super) fn encryption(&self) -> parquet::errors::Result<Arc<FileEncryptionProperties>> {
        let (id, key) = self.keys.last().expect("a keyring has a key");
        FileEncryptionProperties::builder(key.clone())
            .with_footer_key_metadata(id.as_bytes().to_vec())
            .build()
    }

    pub(super) fn decryption(
        self: &Arc<Self>,
    ) -> parquet::errors::Result<Arc<FileDecryptionProperties>> {
        let retriever: Arc<dyn KeyRetriever> = self.clone();
        FileDecryptionProperties::with_key_retriever(retriever).build()
    }
}

impl KeyRetriever for Keyring {
    fn retrieve_key(&self, key_metadata: &[u8]) -> parquet::errors::Result<Vec<u8>> {
        let id = String::from_utf8_lossy(key_metadata);
        self.keys
            .iter()
            .find(|(known, _)| *known == id)
            .map(|(_, key)| key.clone())
            .ok_or_else(|| {
                parquet::errors::ParquetError::General(format!(
                    "encrypted with key '{id}', which is not in the keyring (keys: {})",
                    self.ids().join(", ")
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keyring_parses_ids_and_keys_and_never_shows_a_key() {
        let text = "# old key, still read\nk1=000102030405060708090a0b0c0d0e0f\nk2=00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n";
        let ring = Keyring::parse(text, "file:keys").unwrap();
        assert_eq!(ring.ids(), ["k1", "k2"]);
        assert_eq!(ring.write_key_id(), "k2");
        assert!(!format!("{ring:?}").contains("0011"));
        assert_eq!(
            Keyring::parse(&ring.to_file_text(), "x").unwrap().ids(),
            ["k1", "k2"]
        );
        for bad in ["k1", "k1=zz", "k1=0011", ""] {
            let err = Keyring::parse(bad, "env:KEYS").unwrap_err().to_string();
            assert!(err.starts_with("env:KEYS"), "{err}");
        }
        assert_eq!(
            Keyring::generate("demo").unwrap().to_file_text().len(),
            "demo=".len() + 64 + 1
        );
    }
}
