//! A qcow2 (version 3) image written front to back in one pass, so a restore uploads a qcow2
//! volume through libvirt's stream API directly instead of uploading raw and having the host
//! convert it (a second full write). The layout is planned from which guest clusters hold data:
//! header, refcount table, refcount blocks, L1 table, L2 tables, then the data clusters in guest
//! order. Every cluster of such a file is used exactly once, so every refcount is 1 and the
//! refcount blocks need no bookkeeping. Memory: one bit per guest cluster (4 MiB for a 2 TiB
//! disk), a running count per 64 clusters, and one cluster of metadata at a time. It never reads
//! guest data: a caller streaming the image sends the data clusters after the metadata in the
//! order `data_clusters` gives; one writing a file places them with `file_offset`.
//! Format: QEMU's docs/interop/qcow2.txt (header fields, L1/L2 entries, refcount structures).

use std::ops::Range;

const MAGIC: &[u8; 4] = b"QFI\xfb";
const VERSION: u32 = 3;
const CLUSTER_BITS: u32 = 16;
/// The cluster size: QEMU's default, and a divisor of every store extent size (64 KiB to 64 MiB).
pub const CLUSTER: u64 = 1 << CLUSTER_BITS;
/// 16-bit refcounts (order 4), QEMU's default.
const REFCOUNT_ORDER: u32 = 4;
const REFCOUNTS_PER_BLOCK: u64 = CLUSTER * 8 / (1 << REFCOUNT_ORDER);
/// Length of the version 3 header without optional fields.
const HEADER_LEN: u32 = 104;
/// L1 and L2 entries: the cluster's refcount is exactly 1 (no snapshot shares it).
const COPIED: u64 = 1 << 63;
const L2_ENTRIES: u64 = CLUSTER / 8;

/// Which guest clusters hold data; everything else reads as zeros (no backing file).
pub struct Qcow2Plan {
    size: u64,
    used: Vec<u64>,
}

/// Where everything goes, in clusters from the start of the file.
pub struct Qcow2Layout {
    plan: Qcow2Plan,
    /// Data clusters before each word of the bitmap: a used cluster's rank in O(1).
    ranks: Vec<u64>,
    l1_entries: u64,
    /// Per L1 entry: the index of its L2 table among the tables present, if it has one.
    l2_index: Vec<Option<u64>>,
    refcount_table: u64,
    refcount_table_clusters: u64,
    refcount_blocks: u64,
    l1: u64,
    l1_clusters: u64,
    l2: u64,
    data: u64,
    total_clusters: u64,
}

fn clusters_for(bytes: u64) -> u64 {
    bytes.div_ceil(CLUSTER)
}

impl Qcow2Plan {
    /// A disk of `size` bytes with no data yet.
    pub fn new(size: u64) -> Qcow2Plan {
        Qcow2Plan { size, used: vec![0; clusters_for(size).div_ceil(64) as usize] }
    }

    /// Marks the clusters that `range` (guest bytes) touches as holding data.
    pub fn mark(&mut self, range: Range<u64>) {
        if range.start >= range.end {
            return;
        }
        let end = range.end.min(self.size);
        for c in range.start / CLUSTER..clusters_for(end) {
            self.used[(c / 64) as usize] |= 1 << (c % 64);
        }
    }

    fn is_used(&self, c: u64) -> bool {
        self.used[(c / 64) as usize] & (1 << (c % 64)) != 0
    }

    /// Fixes the layout: counts the tables, then sizes the refcount structures, which must
    /// also count themselves.
    pub fn layout(self) -> Qcow2Layout {
        let data_clusters: u64 = self.used.iter().map(|w| w.count_ones() as u64).sum();
        let l1_entries = clusters_for(self.size).div_ceil(L2_ENTRIES).max(1);
        let mut tables = 0;
        let l2_index: Vec<Option<u64>> = (0..l1_entries)
            .map(|i| {
                let first = i * L2_ENTRIES;
                let last = ((i + 1) * L2_ENTRIES).min(clusters_for(self.size));
                (first..last).any(|c| self.is_used(c)).then(|| {
                    tables += 1;
                    tables - 1
                })
            })
            .collect();
        let l1_clusters = clusters_for(l1_entries * 8);
        let fixed = 1 + l1_clusters + tables + data_clusters;
        let (mut table_clusters, mut blocks) = (1, 1);
        loop {
            let total = fixed + table_clusters + blocks;
            let b = total.div_ceil(REFCOUNTS_PER_BLOCK);
            let t = clusters_for(b * 8);
            if (t, b) == (table_clusters, blocks) {
                break;
            }
            (table_clusters, blocks) = (t, b);
        }
        let refcount_table = 1;
        let l1 = refcount_table + table_clusters + blocks;
        let l2 = l1 + l1_clusters;
        let data = l2 + tables;
        let ranks = self
            .used
            .iter()
            .scan(0u64, |before, w| {
                let r = *before;
                *before += w.count_ones() as u64;
                Some(r)
            })
            .collect();
        Qcow2Layout {
            plan: self,
            ranks,
            l1_entries,
            l2_index,
            refcount_table,
            refcount_table_clusters: table_clusters,
            refcount_blocks: blocks,
            l1,
            l1_clusters,
            l2,
            data,
            total_clusters: data + data_clusters,
        }
    }
}

impl Qcow2Layout {
    /// The size of the whole image file.
    pub fn file_size(&self) -> u64 {
        self.total_clusters * CLUSTER
    }

    /// Where guest cluster `g`'s data lies in the file; None when it holds no data.
    pub fn file_offset(&self, g: u64) -> Option<u64> {
        if g >= clusters_for(self.plan.size) || !self.plan.is_used(g) {
            return None;
        }
        let (w, bit) = ((g / 64) as usize, g % 64);
        let below = (self.plan.used[w] & ((1u64 << bit) - 1)).count_ones() as u64;
        Some((self.data + self.ranks[w] + below) * CLUSTER)
    }

    /// Guest clusters holding data, in the order their data follows the metadata.
    pub fn data_clusters(&self) -> impl Iterator<Item = u64> + '_ {
        (0..clusters_for(self.plan.size)).filter(|&c| self.plan.is_used(c))
    }

    /// Everything before the first data cluster, handed to `out` one cluster at a time.
    pub fn write_metadata<E>(&self, out: &mut dyn FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        let mut c = vec![0u8; CLUSTER as usize];
        self.header(&mut c);
        out(&c)?;
        // Refcount table: the blocks' offsets.
        for t in 0..self.refcount_table_clusters {
            c.fill(0);
            for (k, e) in c.chunks_exact_mut(8).enumerate() {
                let block = t * L2_ENTRIES + k as u64;
                if block < self.refcount_blocks {
                    let at = (self.refcount_table + self.refcount_table_clusters + block) * CLUSTER;
                    e.copy_from_slice(&at.to_be_bytes());
                }
            }
            out(&c)?;
        }
        // Refcount blocks: 1 for every cluster of the file, 0 past its end.
        for b in 0..self.refcount_blocks {
            c.fill(0);
            for (k, e) in c.chunks_exact_mut(2).enumerate() {
                if b * REFCOUNTS_PER_BLOCK + (k as u64) < self.total_clusters {
                    e.copy_from_slice(&1u16.to_be_bytes());
                }
            }
            out(&c)?;
        }
        // L1 table: each entry the offset of its L2 table, or 0 (all of it reads as zeros).
        for t in 0..self.l1_clusters {
            c.fill(0);
            for (k, e) in c.chunks_exact_mut(8).enumerate() {
                let i = t * L2_ENTRIES + k as u64;
                if let Some(Some(n)) = (i < self.l1_entries).then(|| self.l2_index[i as usize]) {
                    e.copy_from_slice(&(((self.l2 + n) * CLUSTER) | COPIED).to_be_bytes());
                }
            }
            out(&c)?;
        }
        // L2 tables, in L1 order: each used guest cluster points at its data cluster, which
        // follow in guest order from `data`.
        let mut rank = 0u64;
        let guest = clusters_for(self.plan.size);
        for (i, present) in self.l2_index.iter().enumerate() {
            let first = i as u64 * L2_ENTRIES;
            if present.is_none() {
                continue;
            }
            c.fill(0);
            for (k, e) in c.chunks_exact_mut(8).enumerate() {
                let g = first + k as u64;
                if g < guest && self.plan.is_used(g) {
                    e.copy_from_slice(&(((self.data + rank) * CLUSTER) | COPIED).to_be_bytes());
                    rank += 1;
                }
            }
            out(&c)?;
        }
        Ok(())
    }

    /// The metadata written at the start of `file`; returns its length, where the data begins.
    pub fn write_metadata_to(&self, file: &std::fs::File) -> std::io::Result<u64> {
        use std::os::unix::fs::FileExt;
        let mut at = 0u64;
        self.write_metadata(&mut |c: &[u8]| -> std::io::Result<()> {
            file.write_all_at(c, at)?;
            at += c.len() as u64;
            Ok(())
        })?;
        Ok(at)
    }

    fn header(&self, c: &mut [u8]) {
        c.fill(0);
        let mut w = Writer(c, 0);
        w.bytes(MAGIC);
        w.u32(VERSION);
        w.u64(0); // backing file offset
        w.u32(0); // backing file name length
        w.u32(CLUSTER_BITS);
        w.u64(self.plan.size);
        w.u32(0); // no encryption
        w.u32(self.l1_entries as u32);
        w.u64(self.l1 * CLUSTER);
        w.u64(self.refcount_table * CLUSTER);
        w.u32(self.refcount_table_clusters as u32);
        w.u32(0); // snapshots
        w.u64(0); // snapshots offset
        w.u64(0); // incompatible features: none (the image is clean)
        w.u64(0); // compatible features
        w.u64(0); // autoclear features
        w.u32(REFCOUNT_ORDER);
        w.u32(HEADER_LEN);
        debug_assert_eq!(w.1, HEADER_LEN as usize);
        // Header extensions: only the end marker (type 0, length 0).
        w.u32(0);
        w.u32(0);
    }
}

struct Writer<'a>(&'a mut [u8], usize);

impl Writer<'_> {
    fn bytes(&mut self, b: &[u8]) {
        self.0[self.1..self.1 + b.len()].copy_from_slice(b);
        self.1 += b.len();
    }
    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use std::process::Command;

    /// The disk's byte at `pos`: a pattern inside the ranges, zero elsewhere.
    fn byte(ranges: &[Range<u64>], pos: u64) -> u8 {
        match ranges.iter().position(|r| r.contains(&pos)) {
            Some(k) => (pos.wrapping_mul(31) as u8).wrapping_add(k as u8) | 1,
            None => 0,
        }
    }

    /// Writes the raw disk (sparse) and the image the way a restore streams it: metadata, then
    /// each used cluster's bytes (the last one padded to a whole cluster).
    fn write_both(dir: &std::path::Path, name: &str, size: u64, ranges: &[Range<u64>]) -> (String, String) {
        let raw = dir.join(format!("{name}.raw"));
        let f = std::fs::File::create(&raw).unwrap();
        f.set_len(size).unwrap();
        for r in ranges {
            let data: Vec<u8> = (r.start..r.end).map(|p| byte(ranges, p)).collect();
            f.write_all_at(&data, r.start).unwrap();
        }
        let mut plan = Qcow2Plan::new(size);
        for r in ranges {
            plan.mark(r.clone());
        }
        let layout = plan.layout();
        let qcow = dir.join(format!("{name}.qcow2"));
        let out = std::fs::File::create(&qcow).unwrap();
        let mut at = layout.write_metadata_to(&out).unwrap();
        for g in layout.data_clusters() {
            let c: Vec<u8> =
                (g * CLUSTER..(g + 1) * CLUSTER).map(|p| if p < size { byte(ranges, p) } else { 0 }).collect();
            out.write_all_at(&c, at).unwrap();
            at += CLUSTER;
        }
        assert_eq!(at, layout.file_size());
        (raw.to_str().unwrap().to_string(), qcow.to_str().unwrap().to_string())
    }

    fn qemu_img(args: &[&str]) -> (bool, String) {
        let out = Command::new("qemu-img").args(args).output().expect("qemu-img runs (package qemu-utils)");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    /// QEMU reads what this writes: `qemu-img check` finds no error or leak, and the image
    /// reads back byte for byte as the raw disk, across L2 table boundaries (one table maps
    /// 512 MiB), with an empty table between two full ones, a partial last cluster, data at the
    /// very end, and a disk with no data at all.
    #[test]
    fn qemu_reads_the_images_back_exactly() {
        let d = tempfile::tempdir().unwrap();
        let mib = 1u64 << 20;
        // Whole 512-byte sectors (QEMU counts a qcow2 in sectors), but not whole clusters.
        let size = 1280 * mib + 1536;
        let ranges = vec![
            0..3 * CLUSTER + 17,
            5 * mib..5 * mib + 1,
            100 * mib + 12345..100 * mib + 212_345,
            511 * mib..513 * mib,
            size - 10..size,
        ];
        for (name, ranges) in [("data", ranges), ("empty", Vec::new())] {
            let (raw, qcow) = write_both(d.path(), name, size, &ranges);
            let (ok, text) = qemu_img(&["check", &qcow]);
            assert!(ok && text.contains("No errors"), "{name}: {text}");
            let (ok, text) = qemu_img(&["info", "--output=json", &qcow]);
            assert!(ok && text.contains(&format!("\"virtual-size\": {size}")), "{text}");
            assert!(text.contains("\"compat\": \"1.1\""), "{text}");
            let (ok, text) = qemu_img(&["compare", "-f", "raw", "-F", "qcow2", &raw, &qcow]);
            assert!(ok, "{name}: the image differs from the disk: {text}");
        }
    }

    /// The refcount structures count themselves: an image past one refcount block's reach
    /// (32768 clusters) still gives every cluster a refcount, and the table every block.
    #[test]
    fn refcount_blocks_cover_every_cluster_of_a_large_image() {
        let mut plan = Qcow2Plan::new(5 << 40);
        plan.mark(0..40_000 * CLUSTER);
        let layout = plan.layout();
        assert!(layout.refcount_blocks >= 2);
        assert!(layout.refcount_blocks * REFCOUNTS_PER_BLOCK >= layout.total_clusters);
        assert!(layout.refcount_table_clusters * L2_ENTRIES >= layout.refcount_blocks);
        assert_eq!(layout.data_clusters().count(), 40_000);
        // A writer placing clusters itself puts each where the stream would.
        for (k, g) in layout.data_clusters().enumerate().step_by(997) {
            assert_eq!(layout.file_offset(g), Some((layout.data + k as u64) * CLUSTER));
        }
        assert_eq!(layout.file_offset(40_000), None);
        assert_eq!(layout.total_clusters, layout.data + 40_000);
    }
}
