//! `holdfast platform …`: drive a platform's connector from the command line, without the
//! service: test a connection, list VMs and the inventory, back VMs up into a store, restore a
//! point. Any kind the build has (`--kind`, default the first), with that kind's settings given
//! as `--set NAME=VALUE`; logic lives in `connectors`.

use anyhow::{anyhow, Context, Result};
use clap::{Args, Subcommand};
use connectors::registry::{self, Settings};
use connectors::{backup_vms, BackupOptions, BackupOutcome, Credentials, JobControl, NewVmSpec, Quiesce, SnapshotMode};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use vds_store::{BackupType, Store};

#[derive(Args)]
pub struct PlatformArgs {
    /// The kind of platform (GET /api/platform-kinds on a running appliance lists them)
    /// [default: the first this build has]
    #[arg(long, global = true)]
    kind: Option<String>,
    /// One of the kind's settings, as NAME=VALUE (KVM: uri=qemu+ssh://root@host/system,
    /// nbd_host=…, nbd_tls_dir=…); repeat for more
    #[arg(long = "set", value_name = "NAME=VALUE", global = true)]
    settings: Vec<String>,
    /// User name for the platform's authentication; the password comes from --password-file or
    /// the HOLDFAST_PLATFORM_PASSWORD environment variable
    #[arg(long, global = true)]
    username: Option<String>,
    /// File holding the password for --username (first line)
    #[arg(long, global = true)]
    password_file: Option<PathBuf>,
    /// Where backup jobs keep their state (the connector's work files; for KVM on this host
    /// also the NBD sockets and scratch files, which QEMU must be able to write)
    #[arg(long, default_value = "/var/tmp/holdfast", global = true)]
    work_dir: PathBuf,
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: PlatformCommand,
}

#[derive(Subcommand)]
enum PlatformCommand {
    /// Check the connection and show what it reached.
    Test,
    /// List the VMs.
    Vms,
    /// Hosts, VMs, networks and storage (what rules and restores choose from).
    Inventory,
    /// Back up VMs into a store
    Backup {
        /// VM name or UUID; repeat for a multi-VM job (each VM gets its own result)
        #[arg(long, required = true)]
        vm: Vec<String>,
        /// For several VMs: serial (each snapshot while its VM is read) or parallel (every
        /// snapshot first, so the points capture nearly one instant)
        #[arg(long, default_value = "serial")]
        snapshots: String,
        /// The store directory [env: HOLDFAST_STORE]
        #[arg(long)]
        store: Option<PathBuf>,
        /// full, incremental or differential (no usable base: a full, and the point says why)
        #[arg(long = "type", default_value = "incremental")]
        backup_type: String,
        /// Disks to include (default: all)
        #[arg(long = "disk")]
        disks: Vec<String>,
        /// Freeze the guest's filesystems through its agent: off, auto (crash-consistent when the
        /// agent does not answer, and said so), required (fail instead)
        #[arg(long, default_value = "auto")]
        quiesce: String,
        /// Dirty bitmaps: auto (where the disk can keep them), on (required: fail otherwise),
        /// off (read whole disks, make no checkpoint)
        #[arg(long, default_value = "auto")]
        change_tracking: String,
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Restore a point as a new VM (new name, UUID and MAC addresses) into the platform's storage, or
    /// with --in-place onto the VM it was taken from (which must be shut off).
    Restore {
        /// The restore point id
        #[arg(long)]
        point: String,
        #[command(flatten)]
        to: crate::restore_args::RestoreTo,
        /// The store directory [env: HOLDFAST_STORE]
        #[arg(long)]
        store: Option<PathBuf>,
    },
}

fn open_store(store: Option<PathBuf>) -> Result<Store> {
    let root = store
        .or_else(|| std::env::var_os("HOLDFAST_STORE").map(PathBuf::from))
        .ok_or_else(|| anyhow!("no store given: use --store DIR or set HOLDFAST_STORE"))?;
    let pass = std::env::var_os("HOLDFAST_PASSPHRASE").map(|p| p.into_encoded_bytes());
    Store::open(&root, pass.as_deref()).with_context(|| format!("opening store {}", root.display()))
}

fn credentials(args: &PlatformArgs) -> Result<Option<Credentials>> {
    let Some(username) = args.username.clone() else {
        if args.password_file.is_some() {
            return Err(anyhow!("--password-file needs --username"));
        }
        return Ok(None);
    };
    let password = match &args.password_file {
        Some(f) => std::fs::read_to_string(f)
            .with_context(|| format!("reading the password file {}", f.display()))?
            .lines()
            .next()
            .unwrap_or("")
            .to_string(),
        None => std::env::var("HOLDFAST_PLATFORM_PASSWORD").map_err(|_| {
            anyhow!("--username {username} needs a password: --password-file or HOLDFAST_PLATFORM_PASSWORD")
        })?,
    };
    Ok(Some(Credentials { username, password }))
}

/// `--set NAME=VALUE` options as the kind's settings (each value a string).
fn settings_of(given: &[String]) -> Result<Settings> {
    let mut settings = Settings::new();
    for s in given {
        let (name, value) = s.split_once('=').ok_or_else(|| anyhow!("--set {s:?}: use NAME=VALUE"))?;
        settings.insert(name.to_string(), serde_json::Value::String(value.to_string()));
    }
    Ok(settings)
}

pub fn run(args: PlatformArgs) -> Result<i32> {
    let kind = match &args.kind {
        Some(k) => registry::kind(k).map_err(|e| anyhow!("--kind: {}", e.message))?,
        None => *registry::kinds().first().ok_or_else(|| anyhow!("this build has no platform kind"))?,
    };
    let settings = settings_of(&args.settings)?;
    kind.check(&settings).map_err(|e| anyhow!("--set {}: {}", e.field, e.message))?;
    let target = kind.summary(&settings);
    let conn = kind.open(&settings, credentials(&args)?.as_ref(), &args.work_dir)?;
    match args.command {
        PlatformCommand::Test => {
            let hello = conn.test_connection()?;
            if args.json {
                println!("{}", serde_json::json!({ "kind": kind.name(), "target": target, "reached": hello }));
            } else {
                println!("{target}: {hello}");
            }
        }
        PlatformCommand::Vms => {
            let vms = conn.list_vms()?;
            if args.json {
                let rows: Vec<_> = vms
                    .iter()
                    .map(|v| serde_json::json!({ "name": v.name, "uuid": v.uuid, "running": v.running }))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                for v in vms {
                    println!("{:<32} {} {}", v.name, v.uuid, if v.running { "running" } else { "shut off" });
                }
            }
        }
        PlatformCommand::Inventory => {
            let inv = conn.inventory()?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&inv)?);
            } else {
                let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
                for h in &inv.hosts {
                    println!("host    {:<24} {} CPUs, {} MiB, {}", h.name, h.cpus, h.memory_mib, h.software);
                }
                for v in &inv.vms {
                    println!("vm      {:<24} {}", v.name, if v.running { "running" } else { "shut off" });
                }
                for n in &inv.networks {
                    println!("network {:<24} {}", n.name, if n.active { "active" } else { "inactive" });
                }
                for p in &inv.storage {
                    let state = if p.active { "active" } else { "inactive" };
                    println!(
                        "storage {:<24} {state}, {:.1} of {:.1} GiB free",
                        p.name,
                        gib(p.available),
                        gib(p.capacity)
                    );
                }
            }
        }
        PlatformCommand::Backup { vm, snapshots, store, backup_type, disks, quiesce, change_tracking, threads } => {
            let change_tracking = connectors::ChangeTracking::parse(&change_tracking)
                .ok_or_else(|| anyhow!("--change-tracking {change_tracking:?}: use auto, on or off"))?;
            let store = open_store(store)?;
            let quiesce = match quiesce.as_str() {
                "off" => Quiesce::Off,
                "auto" => Quiesce::IfPossible,
                "required" => Quiesce::Required,
                q => return Err(anyhow!("--quiesce {q:?}: use off, auto or required")),
            };
            let mode = match snapshots.as_str() {
                "serial" => SnapshotMode::Serial,
                "parallel" => SnapshotMode::Parallel,
                m => return Err(anyhow!("--snapshots {m:?}: use serial or parallel")),
            };
            let requested = BackupType::parse(&backup_type)
                .ok_or_else(|| anyhow!("--type {backup_type:?}: use full, incremental or differential"))?;
            let pb = ProgressBar::new(0);
            pb.set_style(
                ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            let defaults = BackupOptions::new(requested);
            let threads = threads.unwrap_or(defaults.threads);
            let opts = BackupOptions { include: disks, threads, quiesce, change_tracking, ..defaults };
            let mut results = backup_vms(&*conn, &store, &vm, &opts, mode, &mut |vm, p| {
                pb.set_length(p.all_total_bytes);
                pb.set_position(p.all_done_bytes);
                pb.set_message(format!("backup {vm} {}", p.disk));
            });
            pb.finish_and_clear();
            if results.len() == 1 {
                let outcome = results.pop().expect("one result").1?;
                print_outcome(&outcome, args.json)?;
                return Ok(0);
            }
            let mut failed = 0;
            let mut rows = Vec::new();
            for (vm, r) in &results {
                match r {
                    Ok(outcome) if args.json => rows.push(outcome_json(outcome)),
                    Ok(outcome) => print_outcome(outcome, false)?,
                    Err(e) => {
                        failed += 1;
                        if args.json {
                            rows.push(serde_json::json!({ "vm": vm, "error": e.to_string() }));
                        } else {
                            println!("{vm}: FAILED: {e}");
                        }
                    }
                }
            }
            if args.json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            }
            if failed > 0 {
                eprintln!("holdfast: {failed} of {} VMs failed", results.len());
                return Ok(1);
            }
        }
        PlatformCommand::Restore { point, to, store } => {
            let store = open_store(store)?;
            let entry = store.find(&point)?;
            let readers = store.open_disks(&point)?;
            let disks = connectors::restore_disks(&entry.manifest, &readers);
            if to.in_place {
                let vm = &entry.manifest.vm;
                conn.restore_in_place(&vm.key, &disks, &JobControl::default())?;
                if args.json {
                    println!("{}", serde_json::json!({ "vm": vm.name, "point": point, "in_place": true }));
                } else {
                    println!("restored point {point} onto VM {} ({})", vm.name, vm.key);
                }
                return Ok(0);
            }
            let crate::restore_args::RestoreTo {
                name,
                storage,
                cpus,
                memory_mib,
                network,
                host,
                start,
                keep_macs,
                disk_format,
                disk_size,
                ..
            } = to;
            let name = name.expect("clap requires --name without --in-place");
            let caps = kind.capabilities();
            let storage = storage
                .or_else(|| caps.default_storage.map(String::from))
                .ok_or_else(|| anyhow!("--storage: name the {} for the new disks", caps.storage_word))?;
            let disk_format = disk_format.or_else(|| caps.disk_formats.first().map(|f| f.name.to_string()));
            let disk_sizes = disk_size.into_iter().collect();
            let spec =
                NewVmSpec { name, cpus, memory_mib, storage, network, host, disk_format, disk_sizes, start, keep_macs };
            // What the platform can say before anything is made (a name taken, a host or
            // network it lacks), as the service asks it.
            conn.check_restore(connectors::RestoreCheck::NewVm(&spec)).map_err(|e| anyhow!("{e}"))?;
            let vm = conn.restore_as_new_vm(&entry.manifest.vm, &disks, &spec, &JobControl::default())?;
            if args.json {
                println!("{}", serde_json::json!({ "vm": vm, "point": point, "started": start }));
            } else {
                println!("restored point {point} as VM {vm}{}", if start { " (started)" } else { "" });
            }
        }
    }
    Ok(0)
}

fn outcome_json(o: &BackupOutcome) -> serde_json::Value {
    serde_json::json!({ "point": o.point, "transport": o.transport, "consistency": o.consistency, "warnings": o.warnings })
}

fn print_outcome(outcome: &BackupOutcome, json: bool) -> Result<()> {
    let p = &outcome.point;
    if json {
        println!("{}", serde_json::to_string_pretty(&outcome_json(outcome))?);
        return Ok(());
    }
    println!(
        "{} ({}) {} point {} over {}: read {} bytes",
        p.vm.name,
        p.vm.key,
        p.backup_type.as_str(),
        p.point_id,
        outcome.transport,
        p.stats.read_bytes
    );
    println!("  {}", outcome.consistency);
    for d in p.disks.iter().filter(|d| d.full_reason.is_some()) {
        println!("  disk {} read in full: {}", d.key, d.full_reason.as_deref().unwrap_or_default());
    }
    for w in &outcome.warnings {
        println!("  warning: {w}");
    }
    Ok(())
}
