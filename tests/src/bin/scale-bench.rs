//! Scale benchmark: builds synthetic stores of 1x, 2x and 4x a base size (chunks and restore
//! points), then times ls (scan every manifest), verify (walk only, and full re-read), gc (dry run
//! and real) and prune (dry run), to show each grows linearly with the store.
//!
//!   cargo run --release -p holdfast-tests --bin scale-bench -- [BASE_CHUNKS] [DIR]
//!
//! Chunks are small (1 KiB average) so that a store with many chunk files is quick to build;
//! the operations measured cost per file and per reference, not per byte.

use std::path::PathBuf;
use std::time::Instant;
use vds_store::*;

fn main() {
    let mut args = std::env::args().skip(1);
    let base: usize = args.next().map(|s| s.parse().expect("BASE_CHUNKS is a number")).unwrap_or(50_000);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "/var/tmp/hfscale".into()));
    let chunks_per_point = 200usize;
    println!("| chunks | points | build s | ls s | verify walk s | verify full s | gc dry-run s | gc s | prune dry-run s | gc µs/chunk | verify µs/chunk |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for scale in [1usize, 2, 4] {
        let root = dir.join(format!("x{scale}"));
        let _ = std::fs::remove_dir_all(&root);
        let store = Store::init(
            &root,
            InitOptions {
                extent_size: 64 * 1024,
                chunker: dedupe::ChunkerParams { min: 256, avg: 1024, max: 4096 },
                zstd_level: 1,
                ..Default::default()
            },
        )
        .expect("init");
        let points = base * scale / chunks_per_point;
        let t = Instant::now();
        for p in 0..points {
            let data = holdfast_tests::noise(chunks_per_point * 1024, p as u64 + 1000 * scale as u64);
            store
                .ingest(
                    IngestRequest {
                        vm: VmDescription {
                            key: format!("vm{:03}", p % 50),
                            name: "synthetic".into(),
                            platform: "raw".into(),
                            ..Default::default()
                        },
                        backup_type: BackupType::Full,
                        parent: None,
                        disks: vec![IngestDisk {
                            key: "d".into(),
                            source: Box::new(MemorySource(data)),
                            changed: None,
                            change_id: None,
                            full_reason: None,
                        }],
                        labels: Labels::default(),
                        threads: 2,
                        consistency: None,
                    },
                    &mut |_| {},
                )
                .expect("ingest");
        }
        let build = t.elapsed().as_secs_f64();
        let chunks = count_blobs(&store);
        let time = |f: &mut dyn FnMut()| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        };
        let ls = time(&mut || {
            let (ok, bad) = store.scan(None).expect("scan");
            assert_eq!((ok.len(), bad.len()), (points, 0));
        });
        let walk = time(&mut || assert!(store.verify(0.0, 2, false, &|_| ()).expect("verify").is_clean()));
        let full = time(&mut || assert!(store.verify(1.0, 2, false, &|_| ()).expect("verify").is_clean()));
        let gc_dry = time(&mut || assert_eq!(store.gc(true).expect("gc").removed_blobs, 0));
        let gc = time(&mut || assert_eq!(store.gc(false).expect("gc").removed_blobs, 0));
        let policy = RetentionPolicy { keep_last: Some(3), ..Default::default() };
        let prune = time(&mut || assert_eq!(store.prune(&policy, None, true).expect("prune").len(), points));
        println!(
            "| {chunks} | {points} | {build:.1} | {ls:.2} | {walk:.2} | {full:.2} | {gc_dry:.2} | {gc:.2} | {prune:.2} | {:.1} | {:.1} |",
            gc * 1e6 / chunks as f64,
            full * 1e6 / chunks as f64
        );
        drop(store);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn count_blobs(store: &Store) -> u64 {
    let mut n = 0;
    store
        .chunks()
        .for_each(|_, _, _| {
            n += 1;
            Ok(())
        })
        .expect("walk");
    n
}
