//! Store errors: each names the store, VM, point or blob concerned and the cause. A cause is
//! part of its error's message, never also its `source`, so a printed chain says it once.

use dedupe::DedupeError;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path} is not a Holdfast store (no store.json): {cause}")]
    NotAStore { path: PathBuf, cause: String },
    #[error("{path} already holds a Holdfast store")]
    AlreadyAStore { path: PathBuf },
    #[error("{path} holds files ({example}, ...) but no Holdfast store: give an empty or missing directory")]
    NotEmpty { path: PathBuf, example: String },
    #[error(
        "restore point {point} records store {recorded}, but this store's store.json says {store}: \
         store.json was changed, or the point was copied in from another store"
    )]
    ForeignPoint { point: String, recorded: String, store: String },
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
    #[error("restore point {point}: {cause}")]
    PointBlob { point: String, cause: DedupeError },
    #[error(transparent)]
    Dedupe(#[from] DedupeError),
    #[error("{what}: {cause}")]
    Io { what: String, cause: std::io::Error },
    #[error("cannot export to {path}: {why}")]
    ExportTarget { path: PathBuf, why: String },
    #[error("export to {path} failed and {path} {left}: {cause}")]
    ExportFailed { path: PathBuf, left: &'static str, cause: Box<StoreError> },
    #[error("{path} is partly written and does not hold the disk: {cause}")]
    PartlyWritten { path: PathBuf, cause: Box<StoreError> },
    #[error("another garbage collection is running on this store")]
    GcRunning,
    #[error("{0}")]
    Invalid(String),
}

impl StoreError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        StoreError::Io { what: what.into(), cause: source }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What `holdfast: {e:#}` prints: the message, then each source's.
    fn chain(e: &dyn std::error::Error) -> String {
        let mut text = e.to_string();
        let mut next = e.source();
        while let Some(s) = next {
            text = format!("{text}: {s}");
            next = s.source();
        }
        text
    }

    #[test]
    fn a_printed_chain_names_each_cause_once() {
        let full = || std::io::Error::from_raw_os_error(libc::ENOSPC);
        let errors = [
            StoreError::io("writing x", full()),
            StoreError::Dedupe(DedupeError::io("writing blob b", full())),
            StoreError::PointBlob { point: "p".into(), cause: DedupeError::io("reading blob b", full()) },
            StoreError::ExportFailed {
                path: "out.raw".into(),
                left: "is unchanged",
                cause: Box::new(StoreError::io("writing bytes 0..4", full())),
            },
        ];
        for e in &errors {
            let text = chain(e);
            assert_eq!(text.matches("os error 28").count(), 1, "{text}");
        }
    }
}
