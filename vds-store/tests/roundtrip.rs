//! Property test: random disks and random sequences of writes, ingested as full, incremental and
//! differential points; every point reads and exports byte-identical to the state it captured.

#![allow(clippy::single_range_in_vec_init)] // one changed range per disk is the common case here

mod common;
use common::*;
use proptest::prelude::*;
use std::ops::Range;
use vds_store::*;

#[derive(Clone, Debug)]
enum Fill {
    Zero,
    Noise(u64),
    Byte(u8),
}

#[derive(Clone, Debug)]
struct Write {
    offset: u64,
    len: u64,
    fill: Fill,
}

fn fill_strategy() -> impl Strategy<Value = Fill> {
    prop_oneof![Just(Fill::Zero), any::<u64>().prop_map(Fill::Noise), any::<u8>().prop_map(Fill::Byte)]
}

/// One step: a backup kind (0 full, 1 incremental, 2 differential) after writes given as
/// (relative position, length, fill).
type Step = (u8, Vec<(f64, u64, Fill)>);

fn steps_strategy() -> impl Strategy<Value = (u64, Vec<Step>)> {
    let size = (1u64..6, 0u64..3000).prop_map(|(e, tail)| e * EXTENT as u64 + tail);
    let write = (0.0f64..1.0, 1u64..200_000, fill_strategy());
    let step = (0u8..3, prop::collection::vec(write, 0..6));
    (size, prop::collection::vec(step, 1..7))
}

fn apply(disk: &mut [u8], w: &Write) {
    let range = w.offset as usize..(w.offset + w.len) as usize;
    match &w.fill {
        Fill::Zero => disk[range].fill(0),
        Fill::Byte(b) => disk[range].fill(*b),
        Fill::Noise(seed) => disk[range.clone()].copy_from_slice(&noise(range.len(), *seed)),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn every_point_reads_back_exactly((size, steps) in steps_strategy()) {
        let dir = tempfile::tempdir().unwrap();
        let store = small_store(dir.path(), None);
        let mut disk = noise(size as usize, size);
        disk[..(size as usize / 3)].fill(0);
        let mut expected: Vec<(String, Vec<u8>)> = Vec::new();
        let mut since_last: Vec<Range<u64>> = Vec::new();
        let mut since_full: Vec<Range<u64>> = Vec::new();
        let mut last: Option<String> = None;
        let mut last_full: Option<String> = None;
        for (i, (kind, writes)) in steps.iter().enumerate() {
            if i > 0 {
                for (pos, len, fill) in writes {
                    let offset = ((*pos * size as f64) as u64).min(size - 1);
                    let w = Write { offset, len: (*len).min(size - offset), fill: fill.clone() };
                    apply(&mut disk, &w);
                    since_last.push(w.offset..w.offset + w.len);
                    since_full.push(w.offset..w.offset + w.len);
                }
            }
            let (kind, parent, changed) = match kind {
                0 => (BackupType::Full, None, None),
                1 => (BackupType::Incremental, last.clone(), Some(since_last.clone())),
                _ => (BackupType::Differential, last_full.clone(), Some(since_full.clone())),
            };
            let p = ingest(&store, "vm1", kind, parent.as_deref(), vec![("d0", disk.clone(), changed)]).unwrap();
            if p.backup_type == BackupType::Full {
                last_full = Some(p.point_id.clone());
                since_full.clear();
            }
            prop_assert_eq!(p.backup_type == BackupType::Full, kind == BackupType::Full || parent.is_none());
            since_last.clear();
            last = Some(p.point_id.clone());
            expected.push((p.point_id, disk.clone()));
        }
        for (point, want) in &expected {
            prop_assert!(read_disk(&store, point, "d0") == *want, "point {} differs", point);
            let out = dir.path().join("export.raw");
            let f = std::fs::File::create(&out).unwrap();
            store.open_disk(point, "d0").unwrap().export(&f, 2, &|_, _| {}).unwrap();
            prop_assert!(std::fs::read(&out).unwrap() == *want, "export of {} differs", point);
        }
        // Random-access reads at odd offsets agree too.
        let (point, want) = expected.last().unwrap();
        let r = store.open_disk(point, "d0").unwrap();
        for k in 0..20u64 {
            let off = (k * 7919 * 13) % size;
            let len = ((k * 104_729) % 90_000).min(size - off) as usize;
            let mut buf = vec![0xee; len];
            r.read_at(&mut buf, off).unwrap();
            prop_assert!(buf[..] == want[off as usize..off as usize + len]);
        }
        let report = store.verify(1.0, 2, false, &|_| ()).unwrap();
        prop_assert!(report.is_clean());
    }
}

#[test]
fn reopened_store_finds_every_point_from_its_files_alone() {
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<String> = {
        let store = small_store(dir.path(), None);
        (0..3)
            .map(|i| {
                ingest(&store, &format!("vm{i}"), BackupType::Full, None, vec![("d", noise(100_000, i), None)])
                    .unwrap()
                    .point_id
            })
            .collect()
    };
    let store = Store::open(dir.path(), None).unwrap();
    let (points, damaged) = store.scan(None).unwrap();
    assert!(damaged.is_empty());
    let mut found: Vec<String> = points.iter().map(|p| p.point_id.clone()).collect();
    found.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(found, want);
    assert_eq!(read_disk(&store, &ids[1], "d"), noise(100_000, 1));
}

#[test]
fn incremental_stores_only_what_changed_and_new_disks_get_a_full() {
    let dir = tempfile::tempdir().unwrap();
    let store = small_store(dir.path(), None);
    let a = noise(40 * EXTENT as usize, 1);
    let full = ingest(&store, "vm", BackupType::Full, None, vec![("a", a.clone(), None)]).unwrap();
    let mut a2 = a.clone();
    a2[130_000..138_192].fill(0x77);
    let inc = ingest(
        &store,
        "vm",
        BackupType::Incremental,
        Some(&full.point_id),
        vec![("a", a2.clone(), Some(vec![130_000..138_192])), ("b", noise(3 * EXTENT as usize, 2), None)],
    )
    .unwrap();
    assert_eq!(inc.backup_type, BackupType::Incremental);
    assert_eq!(inc.disks[0].backup_type, BackupType::Incremental);
    assert_eq!(inc.disks[0].read_bytes, 2 * EXTENT as u64, "only the two touched extents are read");
    assert_eq!(inc.disks[1].backup_type, BackupType::Full);
    assert!(inc.disks[1].full_reason.as_deref().unwrap().contains("new disk"));
    // A second incremental without the parent: falls back to full, and says why.
    std::fs::remove_file(store.manifest_path("vm", &inc.point_id)).unwrap();
    let again =
        ingest(&store, "vm", BackupType::Incremental, Some(&inc.point_id), vec![("a", a2.clone(), Some(vec![]))])
            .unwrap();
    assert_eq!(again.backup_type, BackupType::Full);
    assert!(again.disks[0].full_reason.as_deref().unwrap().contains("no longer exists"));
    assert_eq!(read_disk(&store, &again.point_id, "a"), a2);
    // A resized disk is read whole.
    let mut grown = a2.clone();
    grown.extend_from_slice(&noise(5000, 3));
    let r =
        ingest(&store, "vm", BackupType::Incremental, Some(&again.point_id), vec![("a", grown.clone(), Some(vec![]))])
            .unwrap();
    assert!(r.disks[0].full_reason.as_deref().unwrap().contains("resized"));
    assert_eq!(read_disk(&store, &r.point_id, "a"), grown);
}

#[test]
fn progress_covers_the_whole_backup_across_disks() {
    let dir = tempfile::tempdir().unwrap();
    let store = small_store(dir.path(), None);
    let (a, b) = (noise(3 * EXTENT as usize, 21), noise(2 * EXTENT as usize + 100, 22));
    let want = (a.len() + b.len()) as u64;
    let mut seen: Vec<IngestProgress> = Vec::new();
    let request = request("vm", BackupType::Full, None, vec![("a", a, None), ("b", b, None)]);
    store.ingest(request, &mut |p| seen.push(p.clone())).unwrap();
    assert!(seen.iter().all(|p| p.all_total_bytes == want), "the total is known from the start");
    assert!(seen.windows(2).all(|w| w[0].all_done_bytes <= w[1].all_done_bytes), "it never goes back");
    assert_eq!(seen.last().map(|p| p.all_done_bytes), Some(want));
    assert_eq!(seen.iter().filter(|p| p.disk == "b").map(|p| p.total_bytes).max(), Some(2 * EXTENT as u64 + 100));
}

/// `data_ranges` names exactly the bytes that are not zero, up to chunk granularity: every byte
/// outside the ranges reads as zero, a hole extent has none, and long zero runs inside an
/// extent (cut into all-zero chunks) are left out, without any chunk being read.
#[test]
fn data_ranges_cover_every_nonzero_byte_and_leave_out_zero_runs() {
    let d = tempfile::tempdir().unwrap();
    let store = small_store(d.path(), None);
    let ext = EXTENT as usize;
    let mut disk = vec![0u8; ext * 6];
    disk[100..5000].copy_from_slice(&noise(4900, 1)); // extent 0: data, then a long zero run
    disk[3 * ext + 40_000..3 * ext + 40_010].copy_from_slice(&noise(10, 2)); // extent 3: 10 bytes
    disk[6 * ext - 1] = 9; // the very last byte
    let p = ingest(&store, "vm1", BackupType::Full, None, vec![("vda", disk.clone(), None)]).unwrap();
    let reader = store.open_disk(&p.point_id, "vda").unwrap();
    let ranges: Vec<Vec<std::ops::Range<u64>>> = (0..6).map(|i| reader.data_ranges(i).unwrap()).collect();
    for (i, r) in ranges.iter().enumerate() {
        let covered = |pos: usize| r.iter().any(|x| x.contains(&(pos as u64)));
        for (pos, b) in disk.iter().enumerate().skip(i * ext).take(ext) {
            assert!(*b == 0 || covered(pos), "extent {i}: byte {pos} is data but not in {r:?}");
        }
        assert!(r.iter().all(|x| x.start >= (i * ext) as u64 && x.end <= ((i + 1) * ext) as u64), "{r:?}");
    }
    for i in [1, 2, 4] {
        assert!(ranges[i].is_empty(), "extent {i} is a hole: {:?}", ranges[i]);
    }
    let in_extent_0: u64 = ranges[0].iter().map(|r| r.end - r.start).sum();
    assert!(in_extent_0 <= ext as u64 / 2, "the zero run after the data is left out: {:?}", ranges[0]);
    assert!(reader.data_ranges(6).is_err(), "past the last extent");
}
