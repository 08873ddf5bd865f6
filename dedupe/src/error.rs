//! Errors of the dedupe engine; each names the blob or file and the cause.

use crate::id::BlobId;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DedupeError {
    #[error("blob {id}: {cause}")]
    Damaged { id: BlobId, cause: String },
    #[error("blob {id} is missing from the chunk store ({path})")]
    Missing { id: BlobId, path: PathBuf },
    #[error("blob {id} is encrypted but no key was given")]
    KeyNeeded { id: BlobId },
    #[error("blob {id} could not be decrypted: wrong encryption key or tampered data")]
    WrongKey { id: BlobId },
    #[error("the passphrase does not open this store's key (wrong passphrase or key file)")]
    WrongPassphrase,
    /// The cause is part of the message (not a `source`), so a printed chain names it once.
    #[error("{what}: {cause}")]
    Io { what: String, cause: std::io::Error },
    #[error("{0}")]
    Invalid(String),
}

impl DedupeError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        DedupeError::Io { what: what.into(), cause: source }
    }
}
