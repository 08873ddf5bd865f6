//! Restore point manifests (`points/<vm>/<point>.point`) and their labels (`<point>.labels`).
//!
//! A manifest is written once: a first line `holdfast-point <version> blake3=<hex>` whose hash
//! covers every byte after that line, then the point as JSON. A point exists if and only if its
//! manifest exists. Labels (star, retain-until) change over a point's life and live beside it.

use crate::error::{Result, StoreError};
use crate::vm::VmDescription;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const POINT_FORMAT: &str = "holdfast-point";
pub const POINT_VERSION: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupType {
    Full,
    Incremental,
    Differential,
}

impl BackupType {
    pub fn parse(s: &str) -> Option<BackupType> {
        match s {
            "full" => Some(BackupType::Full),
            "incremental" | "inc" => Some(BackupType::Incremental),
            "differential" | "diff" => Some(BackupType::Differential),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BackupType::Full => "full",
            BackupType::Incremental => "incremental",
            BackupType::Differential => "differential",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestorePoint {
    pub point_id: String,
    pub store_id: String,
    pub vm: VmDescription,
    /// What the backup achieved: a requested incremental that had to read everything is "full".
    pub backup_type: BackupType,
    /// The point this one was taken against (incremental and differential).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    pub disks: Vec<PointDisk>,
    pub stats: PointStats,
    /// How consistent the captured state is, as the connector reported it (e.g. crash-consistent,
    /// or application-consistent after a guest filesystem freeze).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointDisk {
    pub key: String,
    pub size: u64,
    pub extent_size: u32,
    /// Blob id (hex) of the disk map; also the disk's content checksum.
    pub map: String,
    pub backup_type: BackupType,
    /// Why this disk was read in full when an incremental or differential was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_reason: Option<String>,
    /// The platform's change tracking id after this backup (CBT changeId, RCT id, checkpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_id: Option<String>,
    /// Bytes of the disk that hold data (not holes) in this point.
    pub allocated_bytes: u64,
    /// Bytes this backup read from the source for this disk.
    pub read_bytes: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointStats {
    pub read_bytes: u64,
    pub zero_bytes: u64,
    pub new_chunks: u64,
    pub reused_chunks: u64,
    pub new_plain_bytes: u64,
    pub new_stored_bytes: u64,
}

/// The parts of a point that change after it is written.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Labels {
    #[serde(default)]
    pub star: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain_until: Option<DateTime<Utc>>,
}

impl Labels {
    pub fn locked_at(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.retain_until.filter(|u| *u > now)
    }
}

impl RestorePoint {
    pub fn encode(&self) -> Vec<u8> {
        let body = serde_json::to_vec_pretty(self).expect("a point serialises");
        let mut out = format!("{POINT_FORMAT} {POINT_VERSION} blake3={}\n", blake3::hash(&body).to_hex()).into_bytes();
        out.extend_from_slice(&body);
        out
    }

    pub fn decode(point: &str, path: &Path, bytes: &[u8]) -> Result<RestorePoint> {
        let damaged =
            |cause: String| StoreError::ManifestDamaged { point: point.to_string(), path: path.to_path_buf(), cause };
        let nl = bytes.iter().position(|&b| b == b'\n').ok_or_else(|| damaged("no header line".into()))?;
        let header = std::str::from_utf8(&bytes[..nl]).map_err(|_| damaged("header is not text".into()))?;
        let mut parts = header.split(' ');
        if parts.next() != Some(POINT_FORMAT) {
            return Err(damaged(format!("header does not start with {POINT_FORMAT:?}")));
        }
        let version: u32 =
            parts.next().and_then(|v| v.parse().ok()).ok_or_else(|| damaged("no version in header".into()))?;
        if version != POINT_VERSION {
            return Err(StoreError::UnsupportedVersion {
                what: format!("restore point {point}"),
                found: version,
                supported: POINT_VERSION,
            });
        }
        let want = parts
            .next()
            .and_then(|h| h.strip_prefix("blake3="))
            .ok_or_else(|| damaged("no checksum in header".into()))?;
        let body = &bytes[nl + 1..];
        if blake3::hash(body).to_hex().as_str() != want {
            return Err(damaged("checksum mismatch (truncated or altered)".into()));
        }
        serde_json::from_slice(body).map_err(|e| damaged(format!("JSON: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point() -> RestorePoint {
        RestorePoint {
            point_id: "20261122T040000Z-00000001".into(),
            store_id: "s".into(),
            vm: VmDescription { key: "vm1".into(), name: "vm1".into(), platform: "raw".into(), ..Default::default() },
            backup_type: BackupType::Full,
            parent: None,
            started: Utc::now(),
            finished: Utc::now(),
            disks: vec![],
            stats: PointStats::default(),
            consistency: None,
        }
    }

    #[test]
    fn round_trip_and_every_kind_of_damage() {
        let p = point();
        let bytes = p.encode();
        let path = Path::new("x.point");
        assert_eq!(RestorePoint::decode("x", path, &bytes).unwrap(), p);
        assert!(matches!(
            RestorePoint::decode("x", path, &bytes[..bytes.len() - 3]),
            Err(StoreError::ManifestDamaged { .. })
        ));
        assert!(matches!(RestorePoint::decode("x", path, b"garbage"), Err(StoreError::ManifestDamaged { .. })));
        let newer = String::from_utf8(bytes.clone()).unwrap().replacen("holdfast-point 1", "holdfast-point 9", 1);
        assert!(matches!(
            RestorePoint::decode("x", path, newer.as_bytes()),
            Err(StoreError::UnsupportedVersion { found: 9, .. })
        ));
    }
}
