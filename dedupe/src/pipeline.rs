//! The ingest pipeline: one thread reads extents, a bounded pool of workers cuts, hashes,
//! compresses and stores them, and the caller receives each extent's outcome. Memory is bounded
//! by the number of extent buffers in flight (two per worker), whatever the disk size.

use crate::chunk_store::ChunkStore;
use crate::chunker::ChunkerParams;
use crate::codec::BlobKind;
use crate::error::DedupeError;
use crate::extent::{ChunkRef, ExtentRecord};
use crate::id::BlobId;
use crate::zero::is_zero;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex};

/// What the reader found at an extent.
pub enum ExtentData {
    /// Unallocated or known to be zero: nothing to read.
    Hole,
    /// The first `n` bytes of the buffer hold the extent (n < extent size only for the last one).
    Data(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtentOutcome {
    Hole,
    Record(BlobId),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PipelineStats {
    pub extents: u64,
    pub bytes_read: u64,
    pub zero_bytes: u64,
    pub chunks_new: u64,
    pub chunks_reused: u64,
    pub plain_bytes_new: u64,
    pub stored_bytes_new: u64,
}

impl PipelineStats {
    fn add(&mut self, o: &PipelineStats) {
        self.extents += o.extents;
        self.bytes_read += o.bytes_read;
        self.zero_bytes += o.zero_bytes;
        self.chunks_new += o.chunks_new;
        self.chunks_reused += o.chunks_reused;
        self.plain_bytes_new += o.plain_bytes_new;
        self.stored_bytes_new += o.stored_bytes_new;
    }
}

/// Blobs this pipeline already stored or touched: saves a syscall per repeated chunk. Bounded;
/// forgetting only costs a touch.
const SEEN_LIMIT: usize = 1 << 20;

pub struct Pipeline<'a> {
    pub store: &'a ChunkStore,
    pub chunker: ChunkerParams,
    pub extent_size: usize,
    pub threads: usize,
    seen: Mutex<HashSet<BlobId>>,
}

type Job = (u64, Vec<u8>, usize);
type Done = (u64, Result<(ExtentOutcome, PipelineStats), DedupeError>);

impl<'a> Pipeline<'a> {
    pub fn new(store: &'a ChunkStore, chunker: ChunkerParams, extent_size: usize, threads: usize) -> Pipeline<'a> {
        Pipeline { store, chunker, extent_size, threads: threads.max(1), seen: Mutex::new(HashSet::new()) }
    }

    /// Runs `extents` (indices, in order) through the pool. `read` fills a buffer for an extent;
    /// `done` receives each outcome (in completion order) and may stop the run by failing.
    pub fn run<R, D>(&self, extents: Vec<u64>, mut read: R, mut done: D) -> Result<PipelineStats, DedupeError>
    where
        R: FnMut(u64, &mut [u8]) -> Result<ExtentData, DedupeError> + Send,
        D: FnMut(u64, ExtentOutcome) -> Result<(), DedupeError>,
    {
        let total = extents.len();
        let abort = AtomicBool::new(false);
        let (job_tx, job_rx) = mpsc::sync_channel::<Job>(self.threads);
        let job_rx = Mutex::new(job_rx);
        let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
        for _ in 0..self.threads * 2 {
            free_tx.send(vec![0u8; self.extent_size]).expect("receiver alive");
        }
        let (res_tx, res_rx) = mpsc::channel::<Done>();
        let mut stats = PipelineStats::default();

        std::thread::scope(|scope| {
            for _ in 0..self.threads {
                let (job_rx, res_tx, free_tx, abort) = (&job_rx, res_tx.clone(), free_tx.clone(), &abort);
                scope.spawn(move || loop {
                    let job = job_rx.lock().expect("job queue lock").recv();
                    let Ok((index, buf, len)) = job else { return };
                    let outcome = if abort.load(Ordering::Relaxed) {
                        Err(DedupeError::Invalid("stopped".into()))
                    } else {
                        self.process(&buf[..len])
                    };
                    let _ = free_tx.send(buf);
                    // After a failure nobody reads results, but keep draining jobs until the
                    // producer stops: it may be blocked handing us one.
                    let _ = res_tx.send((index, outcome));
                });
            }
            let producer_res = res_tx.clone();
            let abort_ref = &abort;
            scope.spawn(move || {
                for index in extents {
                    if abort_ref.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(mut buf) = free_rx.recv() else { return };
                    match read(index, &mut buf) {
                        Ok(ExtentData::Hole) => {
                            let _ = free_tx.send(buf);
                            let hole = PipelineStats { extents: 1, ..Default::default() };
                            if producer_res.send((index, Ok((ExtentOutcome::Hole, hole)))).is_err() {
                                return;
                            }
                        }
                        Ok(ExtentData::Data(n)) => {
                            if job_tx.send((index, buf, n)).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            let _ = producer_res.send((index, Err(e)));
                            return;
                        }
                    }
                }
            });
            drop(res_tx);

            let mut received = 0;
            let result = (|| {
                while received < total {
                    let (index, outcome) = res_rx
                        .recv()
                        .map_err(|_| DedupeError::Invalid("ingest pipeline stopped unexpectedly".into()))?;
                    received += 1;
                    let (outcome, s) = outcome?;
                    stats.add(&s);
                    done(index, outcome)?;
                }
                Ok(())
            })();
            if result.is_err() {
                abort.store(true, Ordering::Relaxed);
            }
            drop(res_rx);
            result
        })?;
        Ok(stats)
    }

    /// Cuts one extent into chunks, stores the new ones and its record.
    pub fn process(&self, data: &[u8]) -> Result<(ExtentOutcome, PipelineStats), DedupeError> {
        let mut s = PipelineStats { extents: 1, bytes_read: data.len() as u64, ..Default::default() };
        if is_zero(data) {
            s.zero_bytes = data.len() as u64;
            return Ok((ExtentOutcome::Hole, s));
        }
        let codec = self.store.codec();
        let mut record = ExtentRecord::default();
        for range in self.chunker.cut(data) {
            let chunk = &data[range];
            let len = chunk.len() as u32;
            if is_zero(chunk) {
                s.zero_bytes += len as u64;
                record.chunks.push(ChunkRef { len, id: BlobId::HOLE });
                continue;
            }
            let id = codec.id(chunk);
            record.chunks.push(ChunkRef { len, id });
            if self.seen.lock().expect("seen lock").contains(&id) {
                s.chunks_reused += 1;
                continue;
            }
            let ins = self.store.insert_with_id(BlobKind::Chunk, &id, chunk)?;
            if ins.new {
                s.chunks_new += 1;
                s.plain_bytes_new += len as u64;
                s.stored_bytes_new += ins.stored_bytes;
            } else {
                s.chunks_reused += 1;
            }
            self.remember(id);
        }
        if record.chunks.iter().all(|c| c.id.is_hole()) {
            return Ok((ExtentOutcome::Hole, s));
        }
        let (rid, ins) = self.store.insert(BlobKind::ExtentRecord, &record.encode())?;
        s.stored_bytes_new += ins.stored_bytes;
        Ok((ExtentOutcome::Record(rid), s))
    }

    fn remember(&self, id: BlobId) {
        let mut seen = self.seen.lock().expect("seen lock");
        if seen.len() >= SEEN_LIMIT {
            seen.clear();
        }
        seen.insert(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{BlobCodec, Compression};

    /// A failure while the job queue is full (the reader is faster than the workers) must end
    /// the run, not leave the reader blocked on a queue nobody drains. The hang this guards
    /// against needed a narrow interleaving, so the scenario runs many times.
    #[test]
    fn a_failure_with_a_full_job_queue_ends_the_run_instead_of_hanging() {
        for round in 0..40 {
            let fail_in_store = round % 2 == 1;
            let d = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(d.path().join("tmp")).unwrap();
            if fail_in_store {
                // The blobs "directory" is a file: every blob write fails.
                std::fs::write(d.path().join("b"), b"not a directory").unwrap();
            }
            let store = ChunkStore::new(
                d.path().join("b"),
                d.path().join("tmp"),
                BlobCodec::plain(Compression::Zstd { level: 3 }),
            );
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let ext = 256 << 10;
                let p = Pipeline::new(&store, ChunkerParams { min: 16384, avg: 65536, max: 262144 }, ext, 2);
                let r = p.run(
                    (0..32).collect(),
                    |i, buf| {
                        for (j, b) in buf[..ext].iter_mut().enumerate() {
                            *b = (j as u64 * 2654435761 % 251) as u8 ^ i as u8;
                        }
                        Ok(ExtentData::Data(ext))
                    },
                    |_, _| Err(DedupeError::Invalid("the consumer gave up".into())),
                );
                let _ = tx.send(r.is_err());
            });
            let failed =
                rx.recv_timeout(std::time::Duration::from_secs(60)).expect("the pipeline hung after a failure");
            assert!(failed);
        }
    }

    #[test]
    fn parallel_run_matches_serial_processing_and_stops_on_error() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("tmp")).unwrap();
        let store =
            ChunkStore::new(d.path().join("b"), d.path().join("tmp"), BlobCodec::plain(Compression::Zstd { level: 1 }));
        let ext = 256 * 1024;
        let p = Pipeline::new(&store, ChunkerParams { min: 4096, avg: 16384, max: 65536 }, ext, 3);
        let disk: Vec<u8> = (0..ext * 8).map(|i| if i / ext == 3 { 0 } else { (i * 7 / 5 % 253) as u8 }).collect();
        let mut got = vec![None; 8];
        let stats = p
            .run(
                (0..8).collect(),
                |i, buf| {
                    let s = i as usize * ext;
                    buf[..ext].copy_from_slice(&disk[s..s + ext]);
                    Ok(ExtentData::Data(ext))
                },
                |i, o| {
                    got[i as usize] = Some(o);
                    Ok(())
                },
            )
            .unwrap();
        assert_eq!(stats.extents, 8);
        assert_eq!(got[3], Some(ExtentOutcome::Hole));
        for i in [0usize, 1, 2, 4] {
            let (o, _) = p.process(&disk[i * ext..(i + 1) * ext]).unwrap();
            assert_eq!(got[i], Some(o));
        }
        let err = p.run(
            (0..8).collect(),
            |i, _| {
                if i == 5 {
                    Err(DedupeError::Invalid("boom".into()))
                } else {
                    Ok(ExtentData::Hole)
                }
            },
            |_, _| Ok(()),
        );
        assert!(matches!(err, Err(DedupeError::Invalid(m)) if m == "boom"));
    }
}
