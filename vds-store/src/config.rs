//! `store.json`: the store's identity and the algorithms and sizes its data was written with.
//! Everything a reader needs to interpret the blobs is here; nothing here changes after init
//! except the compression level for new blobs.

use crate::error::{Result, StoreError};
use chrono::{DateTime, Utc};
use dedupe::{ChunkerParams, KdfParams, WrappedKey};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const STORE_FORMAT: &str = "holdfast-vds-store";
pub const STORE_VERSION: u32 = 1;
pub const CONFIG_FILE: &str = "store.json";
pub const DEFAULT_EXTENT_SIZE: u32 = 4 * 1024 * 1024;
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoreConfig {
    pub format: String,
    pub version: u32,
    pub store_id: String,
    pub created: DateTime<Utc>,
    pub extent_size: u32,
    pub chunker: ChunkerConfig,
    /// "blake3" or "blake3-keyed" (encrypted stores).
    pub hash: String,
    pub compression: CompressionConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionConfig>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChunkerConfig {
    pub algorithm: String,
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CompressionConfig {
    pub algorithm: String,
    pub level: i32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EncryptionConfig {
    pub cipher: String,
    pub kdf: String,
    pub m_cost_kib: u32,
    pub t_cost: u32,
    pub p_cost: u32,
    pub salt: String,
    pub key_nonce: String,
    pub wrapped_key: String,
}

impl StoreConfig {
    pub fn chunker_params(&self) -> ChunkerParams {
        ChunkerParams { min: self.chunker.min, avg: self.chunker.avg, max: self.chunker.max }
    }

    pub fn load(root: &Path) -> Result<StoreConfig> {
        let path = root.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| StoreError::NotAStore { path: root.to_path_buf(), cause: e.to_string() })?;
        let damaged = |cause: String| StoreError::ConfigDamaged { path: path.clone(), cause };
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| damaged(e.to_string()))?;
        if v.get("format").and_then(|f| f.as_str()) != Some(STORE_FORMAT) {
            return Err(damaged(format!("format is not {STORE_FORMAT:?}")));
        }
        let version = v.get("version").and_then(|f| f.as_u64()).unwrap_or(0) as u32;
        if version != STORE_VERSION {
            return Err(StoreError::UnsupportedVersion {
                what: format!("store {}", root.display()),
                found: version,
                supported: STORE_VERSION,
            });
        }
        let cfg: StoreConfig = serde_json::from_value(v).map_err(|e| damaged(e.to_string()))?;
        cfg.check().map_err(damaged)?;
        Ok(cfg)
    }

    pub(crate) fn check(&self) -> std::result::Result<(), String> {
        if self.chunker.algorithm != "fastcdc-2020" {
            return Err(format!("unknown chunker {:?}", self.chunker.algorithm));
        }
        self.chunker_params().validate().map_err(|e| e.to_string())?;
        if !(64 * 1024..=64 * 1024 * 1024).contains(&self.extent_size) || !self.extent_size.is_power_of_two() {
            return Err(format!("extent size {} is not a power of two between 64 KiB and 64 MiB", self.extent_size));
        }
        if self.chunker.max > self.extent_size {
            return Err("chunker max is larger than the extent size".into());
        }
        match (self.hash.as_str(), &self.encryption) {
            ("blake3", None) | ("blake3-keyed", Some(_)) => {}
            (h, _) => return Err(format!("hash {h:?} does not fit the encryption setting")),
        }
        if !(-7..=22).contains(&self.compression.level) {
            return Err(format!("zstd level {} is outside -7..=22", self.compression.level));
        }
        if !matches!(self.compression.algorithm.as_str(), "zstd" | "none") {
            return Err(format!("unknown compression {:?}", self.compression.algorithm));
        }
        if let Some(e) = &self.encryption {
            if e.cipher != "xchacha20-poly1305" || e.kdf != "argon2id" {
                return Err(format!("unknown cipher {:?} or key derivation {:?}", e.cipher, e.kdf));
            }
        }
        Ok(())
    }
}

impl EncryptionConfig {
    pub fn from_wrapped(w: &WrappedKey) -> EncryptionConfig {
        EncryptionConfig {
            cipher: "xchacha20-poly1305".into(),
            kdf: "argon2id".into(),
            m_cost_kib: w.kdf.m_cost_kib,
            t_cost: w.kdf.t_cost,
            p_cost: w.kdf.p_cost,
            salt: hex::encode(w.kdf.salt),
            key_nonce: hex::encode(w.nonce),
            wrapped_key: hex::encode(&w.ciphertext),
        }
    }

    pub fn wrapped(&self) -> std::result::Result<WrappedKey, String> {
        let mut salt = [0u8; 16];
        let mut nonce = [0u8; 24];
        hex::decode_to_slice(&self.salt, &mut salt).map_err(|e| format!("salt: {e}"))?;
        hex::decode_to_slice(&self.key_nonce, &mut nonce).map_err(|e| format!("key nonce: {e}"))?;
        let ciphertext = hex::decode(&self.wrapped_key).map_err(|e| format!("wrapped key: {e}"))?;
        Ok(WrappedKey {
            kdf: KdfParams { m_cost_kib: self.m_cost_kib, t_cost: self.t_cost, p_cost: self.p_cost, salt },
            nonce,
            ciphertext,
        })
    }
}
