//! `holdfast store …`: every store operation from the command line, with progress bars on
//! long operations and `--json` output for scripts. A thin layer: all logic is in vds-store.

use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, NaiveDate, Utc};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::ops::Range;
use std::path::{Path, PathBuf};
use vds_store::*;

#[derive(Args)]
pub struct StoreArgs {
    /// The store directory [env: HOLDFAST_STORE]
    #[arg(long, global = true)]
    store: Option<PathBuf>,
    /// File holding the passphrase of an encrypted store [env: HOLDFAST_PASSPHRASE holds it directly]
    #[arg(long, global = true)]
    passphrase_file: Option<PathBuf>,
    /// Machine-readable output
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: StoreCommand,
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Create a new store in an empty or missing directory.
    Init {
        /// Encrypt the store with the passphrase (XChaCha20-Poly1305, Argon2id-wrapped key)
        #[arg(long)]
        encrypt: bool,
        #[arg(long, default_value_t = 3)]
        zstd_level: i32,
        /// Extent size in KiB (power of two, 64 KiB to 64 MiB); fixed for the store's life
        #[arg(long, default_value_t = 4096)]
        extent_size_kib: u32,
        /// Average chunk size in KiB (min is a quarter, max four times); fixed for the store's life
        #[arg(long, default_value_t = 64)]
        chunk_avg_kib: u32,
    },
    /// Back up a raw image file or block device as a restore point of a VM.
    Ingest {
        /// VM key in the store (A-Z a-z 0-9 . _ -)
        #[arg(long)]
        vm: String,
        /// Name shown to people (default: the key)
        #[arg(long)]
        name: Option<String>,
        /// DISK=PATH, once per disk
        #[arg(long = "disk", required = true)]
        disks: Vec<String>,
        /// full, incremental or differential
        #[arg(long = "type", default_value = "full")]
        backup_type: String,
        /// Base point: an id, "latest", or "latest-full"
        #[arg(long)]
        parent: Option<String>,
        /// DISK=FILE listing changed byte ranges ("OFFSET LENGTH" per line) since the base point
        #[arg(long = "changed")]
        changed: Vec<String>,
        #[arg(long)]
        star: bool,
        /// Lock the new point (immutable) for this many days (1 to 36500)
        #[arg(long)]
        lock_days: Option<u32>,
        /// Accept a disk of 0 bytes (refused otherwise: an empty image is usually a mistake)
        #[arg(long)]
        allow_empty: bool,
        #[arg(long)]
        threads: Option<usize>,
        #[arg(long)]
        zstd_level: Option<i32>,
    },
    /// List restore points.
    Ls {
        #[arg(long)]
        vm: Option<String>,
    },
    /// Show one restore point in full.
    Show {
        point: String,
    },
    /// Write a disk of a point to a sparse raw file (replaced only when the export succeeded), or
    /// in place onto a block device at least as large as the disk.
    Export {
        point: String,
        #[arg(long)]
        disk: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        threads: Option<usize>,
        /// Skip the final fsync (faster; after a power loss the file may be incomplete)
        #[arg(long)]
        no_sync: bool,
    },
    /// Re-read blobs and check every point; exits 2 when anything is damaged or missing.
    Verify {
        /// Percentage of blobs to re-read (the walk for missing blobs is always complete)
        #[arg(long, default_value_t = 100.0)]
        sample: f64,
        /// Move damaged blobs aside so the next backups store them again
        #[arg(long)]
        quarantine: bool,
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Remove blobs no restore point references (safe while backups run).
    Gc {
        #[arg(long)]
        dry_run: bool,
    },
    /// Apply a retention policy; starred and locked points are always kept.
    Prune {
        #[arg(long)]
        vm: Option<String>,
        #[arg(long)]
        keep_last: Option<u32>,
        /// Keep today's points and those of the previous N days (0-64)
        #[arg(long)]
        keep_days: Option<u32>,
        /// Keep this week's points (weeks start Monday) and those of the previous N weeks (0-64)
        #[arg(long)]
        keep_weeks: Option<u32>,
        #[arg(long)]
        keep_daily: Option<u32>,
        #[arg(long)]
        keep_weekly: Option<u32>,
        #[arg(long)]
        keep_monthly: Option<u32>,
        #[arg(long)]
        keep_yearly: Option<u32>,
        #[arg(long)]
        dry_run: bool,
    },
    /// Keep a point forever (retention never removes it).
    Star {
        point: String,
    },
    Unstar {
        point: String,
    },
    /// Make a point immutable until a date (YYYY-MM-DD or RFC 3339) or for N days.
    Lock {
        point: String,
        #[arg(long, conflicts_with = "days")]
        until: Option<String>,
        /// 1 to 36500
        #[arg(long)]
        days: Option<u32>,
    },
    /// Delete one point (its blobs go at the next gc).
    Delete {
        point: String,
    },
}

fn threads(n: Option<usize>) -> usize {
    n.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2))
}

fn passphrase(args: &StoreArgs) -> Result<Option<Vec<u8>>> {
    if let Some(f) = &args.passphrase_file {
        let text = std::fs::read(f).with_context(|| format!("reading passphrase file {}", f.display()))?;
        let trimmed = text.strip_suffix(b"\n").unwrap_or(&text).to_vec();
        if trimmed.is_empty() {
            bail!("passphrase file {} is empty", f.display());
        }
        return Ok(Some(trimmed));
    }
    Ok(std::env::var_os("HOLDFAST_PASSPHRASE").map(|p| p.into_encoded_bytes()))
}

fn store_path(args: &StoreArgs) -> Result<PathBuf> {
    args.store
        .clone()
        .or_else(|| std::env::var_os("HOLDFAST_STORE").map(PathBuf::from))
        .ok_or_else(|| anyhow!("no store given: use --store DIR or set HOLDFAST_STORE"))
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

fn print_json<T: Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub fn run(args: StoreArgs) -> Result<i32> {
    let root = store_path(&args)?;
    let pass = passphrase(&args)?;
    let json = args.json;
    if let StoreCommand::Init { encrypt, zstd_level, extent_size_kib, chunk_avg_kib } = &args.command {
        if *encrypt && pass.is_none() {
            bail!("--encrypt needs a passphrase: --passphrase-file FILE or HOLDFAST_PASSPHRASE");
        }
        let avg = chunk_avg_kib.saturating_mul(1024);
        let opts = InitOptions {
            zstd_level: *zstd_level,
            passphrase: if *encrypt { pass } else { None },
            extent_size: extent_size_kib.saturating_mul(1024),
            chunker: dedupe::ChunkerParams { min: avg / 4, avg, max: avg.saturating_mul(4) },
            ..Default::default()
        };
        let store = Store::init(&root, opts).with_context(|| format!("creating store {}", root.display()))?;
        if json {
            print_json(store.config())?;
        } else {
            println!("created store {} ({})", root.display(), store.config().store_id);
        }
        return Ok(0);
    }
    let mut store = Store::open(&root, pass.as_deref())?;
    match args.command {
        StoreCommand::Init { .. } => unreachable!("handled above"),
        StoreCommand::Ingest {
            vm,
            name,
            disks,
            backup_type,
            parent,
            changed,
            star,
            lock_days,
            allow_empty,
            threads: t,
            zstd_level,
        } => {
            // Checked before any disk is read.
            let retain_until = lock_days.map(|d| lock_until_days(Utc::now(), d)).transpose()?;
            if let Some(level) = zstd_level {
                store.set_zstd_level(level)?;
            }
            let kind = BackupType::parse(&backup_type)
                .ok_or_else(|| anyhow!("--type {backup_type:?}: use full, incremental or differential"))?;
            let parent = match parent.as_deref() {
                None => None,
                Some("latest") => latest(&store, &vm, false)?,
                Some("latest-full") => latest(&store, &vm, true)?,
                Some(id) => Some(id.to_string()),
            };
            let mut changed_by_disk = std::collections::HashMap::new();
            for c in &changed {
                let (disk, file) = c.split_once('=').ok_or_else(|| anyhow!("--changed {c:?}: expected DISK=FILE"))?;
                changed_by_disk.insert(disk.to_string(), read_ranges(Path::new(file))?);
            }
            let mut ingest_disks = Vec::new();
            let mut vm_disks = Vec::new();
            for d in &disks {
                let (key, path) = d.split_once('=').ok_or_else(|| anyhow!("--disk {d:?}: expected DISK=PATH"))?;
                let source = FileSource::open(Path::new(path))?;
                if source.size() == 0 && !allow_empty {
                    bail!("--disk {key}={path}: the disk is empty (0 bytes); give --allow-empty to back it up anyway");
                }
                vm_disks.push(VmDisk { key: key.into(), size: source.size(), bus: None });
                ingest_disks.push(IngestDisk {
                    key: key.into(),
                    source: Box::new(source),
                    changed: changed_by_disk.remove(key),
                    change_id: None,
                    full_reason: None,
                });
            }
            if let Some(k) = changed_by_disk.keys().next() {
                bail!("--changed names disk {k:?}, which is not among the --disk arguments");
            }
            let labels = Labels { star, retain_until };
            let description = VmDescription {
                key: vm.clone(),
                name: name.unwrap_or_else(|| vm.clone()),
                platform: "raw".into(),
                disks: vm_disks,
                ..Default::default()
            };
            let pb = bar(0, "ingest");
            let point = store.ingest(
                IngestRequest {
                    vm: description,
                    backup_type: kind,
                    parent,
                    disks: ingest_disks,
                    labels,
                    threads: threads(t),
                    consistency: None,
                },
                &mut |p| {
                    pb.set_length(p.all_total_bytes);
                    pb.set_position(p.all_done_bytes);
                    pb.set_message(format!("ingest {}", p.disk));
                },
            )?;
            pb.finish_and_clear();
            if json {
                print_json(&point)?;
            } else {
                println!(
                    "{} {} point {}: read {}, stored {} new",
                    point.vm.key,
                    point.backup_type.as_str(),
                    point.point_id,
                    human(point.stats.read_bytes),
                    human(point.stats.new_stored_bytes)
                );
                for d in point.disks.iter().filter(|d| d.full_reason.is_some()) {
                    println!("  disk {} read in full: {}", d.key, d.full_reason.as_deref().unwrap_or_default());
                }
            }
        }
        StoreCommand::Ls { vm } => {
            let (points, damaged) = store.scan(vm.as_deref())?;
            if json {
                let rows: Vec<_> = points.iter().map(Summary::of).collect();
                print_json(
                    &serde_json::json!({"points": rows, "damaged": damaged.iter().map(|(v, p, e)| serde_json::json!({"vm": v, "point_id": p, "error": e.to_string()})).collect::<Vec<_>>()}),
                )?;
            } else {
                println!("{:<20} {:<28} {:<12} {:>10} {:>10}  flags", "VM", "POINT", "TYPE", "SIZE", "NEW");
                for p in &points {
                    let s = Summary::of(p);
                    println!(
                        "{:<20} {:<28} {:<12} {:>10} {:>10}  {}",
                        s.vm,
                        s.point_id,
                        s.backup_type,
                        human(s.size),
                        human(s.new_stored_bytes),
                        s.flags()
                    );
                }
                for (v, p, e) in &damaged {
                    println!("{v:<20} {p:<28} DAMAGED: {e}");
                }
            }
        }
        StoreCommand::Show { point } => {
            let e = store.find(&point)?;
            if json {
                print_json(&serde_json::json!({"point": e.manifest, "labels": e.labels}))?;
            } else {
                let m = &e.manifest;
                println!(
                    "point      {}\nvm         {} ({})\ntype       {}",
                    m.point_id,
                    m.vm.key,
                    m.vm.name,
                    m.backup_type.as_str()
                );
                if let Some(p) = &m.parent {
                    println!("parent     {p}");
                }
                println!("started    {}\nfinished   {}", m.started.to_rfc3339(), m.finished.to_rfc3339());
                println!("star       {}", e.labels.star);
                if let Some(u) = e.labels.retain_until {
                    println!("locked     until {}", u.to_rfc3339());
                }
                for d in &m.disks {
                    println!(
                        "disk {:<8} {} bytes, {} allocated, read {} ({}), map {}",
                        d.key,
                        d.size,
                        human(d.allocated_bytes),
                        human(d.read_bytes),
                        d.backup_type.as_str(),
                        &d.map[..16]
                    );
                    if let Some(r) = &d.full_reason {
                        println!("           read in full: {r}");
                    }
                }
                println!(
                    "new data   {} stored ({} before compression)",
                    human(m.stats.new_stored_bytes),
                    human(m.stats.new_plain_bytes)
                );
            }
        }
        StoreCommand::Export { point, disk, out, threads: t, no_sync } => {
            let reader = store.open_disk(&point, &disk)?;
            let pb = bar(reader.size(), "export");
            let cancel = stop_on_signals();
            let opts = ExportOptions { threads: threads(t), sync: !no_sync, cancel: Some(cancel) };
            let report = reader.export_to(&out, &opts, &|done, _| pb.set_position(done));
            pb.finish_and_clear();
            let report = report?;
            let stats = report.stats;
            if json {
                print_json(&serde_json::json!({
                    "size": stats.size, "data_bytes": stats.data_bytes, "out": out, "target": report.target,
                }))?;
            } else {
                let onto = match report.target {
                    ExportTarget::NewFile => String::new(),
                    ExportTarget::ReplacedFile => ", replacing the file that was there".into(),
                    ExportTarget::Device { size } if size > stats.size => format!(
                        ", written in place onto the device; its last {} past the disk were left as they were",
                        human(size - stats.size)
                    ),
                    ExportTarget::Device { .. } => ", written in place onto the device".into(),
                };
                println!(
                    "exported {point} disk {disk} to {} ({} of data, {} in all{onto})",
                    out.display(),
                    human(stats.data_bytes),
                    human(stats.size)
                );
            }
        }
        StoreCommand::Verify { sample, quarantine, threads: t } => {
            if !(0.0..=100.0).contains(&sample) {
                bail!("--sample {sample}: give a percentage between 0 and 100");
            }
            let pb = ProgressBar::new_spinner();
            pb.set_message("verify");
            let report = store.verify(sample / 100.0, threads(t), quarantine, &|n| {
                if n % 256 == 0 {
                    pb.set_message(format!("verify: {n} blobs re-read"));
                }
            })?;
            pb.finish_and_clear();
            if json {
                print_json(&report)?;
            } else {
                println!(
                    "verified {} blobs ({}) of {} points{}",
                    report.blobs_checked,
                    human(report.bytes_checked),
                    report.points_checked,
                    if report.keyless { " (no key: payload checksums only)" } else { "" }
                );
                for (id, cause) in &report.damaged {
                    println!("damaged blob {id}: {cause}");
                }
                for p in &report.affected {
                    println!("affected: VM {} point {}", p.vm, p.point_id);
                    for pr in &p.problems {
                        println!("    {pr}");
                    }
                }
                if report.quarantined > 0 {
                    println!("moved {} damaged blobs aside", report.quarantined);
                }
            }
            if !report.is_clean() {
                return Ok(2);
            }
        }
        StoreCommand::Gc { dry_run } => {
            let report = store.gc(dry_run)?;
            if json {
                print_json(&report)?;
            } else {
                println!(
                    "{} {} blobs ({}); {} blobs ({}) in use by {} points",
                    if dry_run { "would remove" } else { "removed" },
                    report.removed_blobs,
                    human(report.removed_bytes),
                    report.kept_blobs,
                    human(report.kept_bytes),
                    report.points
                );
                for (p, b) in &report.missing {
                    println!("point {p} references missing blob {b} (run verify)");
                }
            }
        }
        StoreCommand::Prune {
            vm,
            keep_last,
            keep_days,
            keep_weeks,
            keep_daily,
            keep_weekly,
            keep_monthly,
            keep_yearly,
            dry_run,
        } => {
            let policy = RetentionPolicy {
                keep_last,
                keep_days,
                keep_weeks,
                keep_daily,
                keep_weekly,
                keep_monthly,
                keep_yearly,
            };
            let decisions = store.prune(&policy, vm.as_deref(), dry_run)?;
            if json {
                print_json(&decisions)?;
            } else {
                for d in &decisions {
                    let verb = match (d.keep, dry_run) {
                        (true, _) => "keep",
                        (false, true) => "would remove",
                        (false, false) => "removed",
                    };
                    println!("{:<12} {:<20} {:<28} {}", verb, d.vm, d.point_id, d.reasons.join(", "));
                }
            }
        }
        StoreCommand::Star { point } => {
            store.set_star(&point, true)?;
            println!("starred {point}");
        }
        StoreCommand::Unstar { point } => {
            store.set_star(&point, false)?;
            println!("unstarred {point}");
        }
        StoreCommand::Lock { point, until, days } => {
            let until = match (until, days) {
                (Some(u), _) => parse_time(&u)?,
                (None, Some(d)) => lock_until_days(Utc::now(), d)?,
                (None, None) => bail!("lock needs --until DATE or --days N"),
            };
            store.lock(&point, until)?;
            println!("locked {point} until {}", until.to_rfc3339());
        }
        StoreCommand::Delete { point } => {
            let e = store.find(&point)?;
            store.delete_point(&e.vm, &point)?;
            println!("deleted {point} (run gc to free its data)");
        }
    }
    Ok(0)
}

fn latest(store: &Store, vm: &str, full_only: bool) -> Result<Option<String>> {
    let (points, _) = store.scan(Some(vm))?;
    Ok(points
        .into_iter()
        .filter(|p| !full_only || p.manifest.backup_type == BackupType::Full)
        .max_by(|a, b| a.manifest.started.cmp(&b.manifest.started).then(a.point_id.cmp(&b.point_id)))
        .map(|p| p.point_id))
}

fn parse_time(s: &str) -> Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let d = NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map_err(|_| anyhow!("{s:?} is not a date (YYYY-MM-DD) or RFC 3339 time"))?;
    Ok(d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc())
}

/// Reads "OFFSET LENGTH" lines (decimal or 0x hex; # starts a comment).
fn read_ranges(path: &Path) -> Result<Vec<Range<u64>>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading changed ranges {}", path.display()))?;
    let num = |s: &str| -> Option<u64> {
        match s.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16).ok(),
            None => s.parse().ok(),
        }
    };
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (Some(o), Some(l), None) = (parts.next().and_then(num), parts.next().and_then(num), parts.next()) else {
            bail!("{} line {}: expected \"OFFSET LENGTH\", found {line:?}", path.display(), i + 1);
        };
        let end = o.checked_add(l).ok_or_else(|| anyhow!("{} line {}: range overflows", path.display(), i + 1))?;
        out.push(o..end);
    }
    Ok(out)
}

#[derive(Serialize)]
struct Summary {
    vm: String,
    point_id: String,
    backup_type: &'static str,
    started: DateTime<Utc>,
    size: u64,
    new_stored_bytes: u64,
    star: bool,
    retain_until: Option<DateTime<Utc>>,
    parent: Option<String>,
}

impl Summary {
    fn of(p: &PointEntry) -> Summary {
        Summary {
            vm: p.vm.clone(),
            point_id: p.point_id.clone(),
            backup_type: p.manifest.backup_type.as_str(),
            started: p.manifest.started,
            size: p.manifest.disks.iter().map(|d| d.size).sum(),
            new_stored_bytes: p.manifest.stats.new_stored_bytes,
            star: p.labels.star,
            retain_until: p.labels.retain_until,
            parent: p.manifest.parent.clone(),
        }
    }

    fn flags(&self) -> String {
        let mut f = Vec::new();
        if self.star {
            f.push("starred".to_string());
        }
        if let Some(u) = self.retain_until.filter(|u| *u > Utc::now()) {
            f.push(format!("locked until {}", u.format("%Y-%m-%d")));
        }
        f.join(", ")
    }
}

fn human(n: u64) -> String {
    vds_store::human_bytes(n)
}

/// A flag that SIGINT and SIGTERM set (instead of ending the process), so a long write stops at
/// its next block and removes what it had made.
fn stop_on_signals() -> &'static std::sync::atomic::AtomicBool {
    static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    extern "C" fn on_signal(_: libc::c_int) {
        STOP.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    &STOP
}
