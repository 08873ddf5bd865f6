//! The dedupe engine: turns disk extents into content-defined chunks, names them by hash, drops
//! all-zero ranges, compresses (and optionally encrypts) them and keeps each one once in a chunk
//! store. It knows nothing of VMs, restore points or platforms; `vds-store` builds those on top.

pub mod chunk_store;
pub mod chunker;
pub mod codec;
pub mod crypto;
pub mod error;
pub mod extent;
pub mod id;
pub mod pipeline;
pub mod zero;

pub use chunk_store::{ChunkStore, Inserted, Presence, SweepStats};
pub use chunker::ChunkerParams;
pub use codec::{BlobCodec, BlobHeader, BlobKind, Compression};
pub use crypto::{KdfParams, MasterKey, WrappedKey};
pub use error::DedupeError;
pub use extent::{ChunkRef, ExtentRecord};
pub use id::BlobId;
pub use pipeline::{ExtentData, ExtentOutcome, Pipeline, PipelineStats};
