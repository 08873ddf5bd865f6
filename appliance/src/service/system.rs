//! The appliance's own load for the dashboard's live panel: CPU, memory, network and the store
//! disk's throughput, sampled from /proc every two seconds and sent to the event stream's
//! listeners. Linux only, as the appliance is; a counter that cannot be read reads as none.

use std::path::Path;
use std::time::{Duration, Instant};
use web::SystemSample;

/// The counters one sample is the difference of.
#[derive(Clone, Copy, Default)]
struct Counters {
    cpu_busy: u64,
    cpu_total: u64,
    net_rx: u64,
    net_tx: u64,
    disk_read: u64,
    disk_write: u64,
}

/// CPU jiffies (busy, total) from /proc/stat's first line.
fn cpu(stat: &str) -> (u64, u64) {
    // user nice system idle iowait irq softirq steal: the guest fields after them are already
    // counted in user and nice.
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = fields.iter().sum();
    // idle and iowait are the 4th and 5th fields.
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// Bytes received and sent by every interface but loopback, from /proc/net/dev.
fn network(dev: &str) -> (u64, u64) {
    dev.lines()
        .skip(2)
        .filter_map(|l| l.split_once(':'))
        .filter(|(name, _)| name.trim() != "lo")
        .map(|(_, v)| {
            let f: Vec<u64> = v.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            (f.first().copied().unwrap_or(0), f.get(8).copied().unwrap_or(0))
        })
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
}

/// Memory (used, total) in bytes from /proc/meminfo.
fn memory(meminfo: &str) -> (u64, u64) {
    let field = |name: &str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    let total = field("MemTotal:");
    (total.saturating_sub(field("MemAvailable:")), total)
}

/// The block device (its name in /proc/diskstats: a partition, or the whole disk) that holds
/// `path`; none for a filesystem without one (tmpfs, NFS), whose throughput then reads as 0.
fn store_device(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).ok()?.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let link = std::fs::read_link(format!("/sys/dev/block/{major}:{minor}")).ok()?;
    Some(link.file_name()?.to_string_lossy().into_owned())
}

/// Bytes read and written by `device`, from /proc/diskstats (sectors of 512 bytes).
fn disk(diskstats: &str, device: &str) -> (u64, u64) {
    diskstats
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(2) == Some(&device))
        .map(|f| {
            let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            (n(5) * 512, n(9) * 512)
        })
        .unwrap_or((0, 0))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn counters(device: Option<&str>) -> Counters {
    let (cpu_busy, cpu_total) = cpu(&read("/proc/stat"));
    let (net_rx, net_tx) = network(&read("/proc/net/dev"));
    let (disk_read, disk_write) = device.map(|d| disk(&read("/proc/diskstats"), d)).unwrap_or((0, 0));
    Counters { cpu_busy, cpu_total, net_rx, net_tx, disk_read, disk_write }
}

/// The sample between two readings `seconds` apart.
fn sample(a: Counters, b: Counters, seconds: f64, meminfo: &str) -> SystemSample {
    let per_second = |x: u64, y: u64| (y.saturating_sub(x) as f64 / seconds.max(0.001)) as u64;
    let total = b.cpu_total.saturating_sub(a.cpu_total);
    let (memory_used, memory_total) = memory(meminfo);
    SystemSample {
        time: chrono::Utc::now().to_rfc3339(),
        cpu_percent: if total == 0 { 0.0 } else { 100.0 * b.cpu_busy.saturating_sub(a.cpu_busy) as f64 / total as f64 },
        memory_used,
        memory_total,
        net_rx_per_second: per_second(a.net_rx, b.net_rx),
        net_tx_per_second: per_second(a.net_tx, b.net_tx),
        disk_read_per_second: per_second(a.disk_read, b.disk_read),
        disk_write_per_second: per_second(a.disk_write, b.disk_write),
    }
}

/// Samples every two seconds into `to` for as long as the service runs.
pub(super) fn start(store: &Path, to: tokio::sync::broadcast::Sender<SystemSample>) {
    let device = store_device(store);
    tokio::spawn(async move {
        let mut last = (counters(device.as_deref()), Instant::now());
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let now = (counters(device.as_deref()), Instant::now());
            let s = sample(last.0, now.0, now.1.duration_since(last.1).as_secs_f64(), &read("/proc/meminfo"));
            // No listener is no error: the next one gets the next sample.
            let _ = to.send(s);
            last = now;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counters_are_read_from_procs_formats() {
        // (The last two fields, guest time, are inside user and nice already.)
        assert_eq!(cpu("cpu  100 0 50 800 50 0 0 0 30 0\ncpu0 1 2 3"), (150, 1000));
        let dev = "Inter-|   Receive\n face |bytes packets\n    lo: 999 1 0 0 0 0 0 0 999 1 0 0 0 0 0 0\n  eth0: 1000 5 0 0 0 0 0 0 2000 7 0 0 0 0 0 0\n";
        assert_eq!(network(dev), (1000, 2000));
        assert_eq!(
            memory("MemTotal:       1000 kB\nMemFree: 10 kB\nMemAvailable:    400 kB\n"),
            (600 * 1024, 1000 * 1024)
        );
        let stats = "   8       0 sda 10 0 200 0 20 0 400 0 0 0 0\n   8       1 sda1 1 0 8 0 0 0 0 0 0 0 0";
        assert_eq!(disk(stats, "sda"), (200 * 512, 400 * 512));
        let s = sample(
            Counters { cpu_busy: 100, cpu_total: 1000, net_rx: 0, net_tx: 0, disk_read: 0, disk_write: 0 },
            Counters { cpu_busy: 150, cpu_total: 1100, net_rx: 4000, net_tx: 2000, disk_read: 8192, disk_write: 0 },
            2.0,
            "MemTotal: 2 kB\nMemAvailable: 1 kB\n",
        );
        assert_eq!((s.cpu_percent, s.net_rx_per_second, s.disk_read_per_second), (50.0, 2000, 4096));
    }

    #[test]
    fn the_store_disk_is_found_and_this_machine_is_sampled() {
        // Whatever holds /proc's siblings here is a block device or none (tmpfs, overlay);
        // either way reading the counters does not fail and CPU time moves.
        let _ = store_device(Path::new("/var/tmp"));
        let a = counters(None);
        let b = counters(None);
        assert!(b.cpu_total >= a.cpu_total && a.cpu_total > 0);
    }
}
