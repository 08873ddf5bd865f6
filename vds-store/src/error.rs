//! Store errors: each names the store, VM, point or blob concerned and the cause.

use dedupe::DedupeError;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path} is not a Holdfast store (no store.json): {cause}")]
    NotAStore { path: PathBuf, cause: String },
    #[error("{path} already holds a Holdfast store")]
    AlreadyAStore { path: PathBuf },
    #[error("{what} has format version {found}; this Holdfast reads version {supported}")]
    UnsupportedVersion { what: String, found: u32, supported: u32 },
    #[error("store configuration {path} is damaged: {cause}")]
    ConfigDamaged { path: PathBuf, cause: String },
    #[error("store {path} is encrypted: give its passphrase (--passphrase-file or HOLDFAST_PASSPHRASE)")]
    KeyNeeded { path: PathBuf },
    #[error("no restore point {point} in this store")]
    PointNotFound { point: String },
    #[error("restore point {point}: manifest {path} is damaged: {cause}")]
    ManifestDamaged { point: String, path: PathBuf, cause: String },
    #[error("restore point {point} is locked (immutable) until {until}; it cannot be deleted or changed")]
    Locked { point: String, until: String },
    #[error(
        "restore point {point} is in use (the base of a running backup, or being restored); try again when that ends"
    )]
    InUse { point: String },
    #[error("invalid {what} {value:?}: {why}")]
    InvalidName { what: &'static str, value: String, why: &'static str },
    #[error("restore point {point}: {source}")]
    PointBlob {
        point: String,
        #[source]
        source: DedupeError,
    },
    #[error(transparent)]
    Dedupe(#[from] DedupeError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("another garbage collection is running on this store")]
    GcRunning,
    #[error("{0}")]
    Invalid(String),
}

impl StoreError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        StoreError::Io { what: what.into(), source }
    }

    /// A manifest that cannot be opened: no such point, or an I/O error naming the file.
    pub fn manifest_io(point: &str, path: &std::path::Path, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::NotFound {
            StoreError::PointNotFound { point: point.into() }
        } else {
            StoreError::io(format!("reading {}", path.display()), source)
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
