//! The restore options the command lines share.

use clap::Args;

/// Where a point is restored: as a new VM with these settings, or in place. Shared by the
/// platform CLI's restore and `holdfast client restore`; the defaults are the service's.
#[derive(Args, serde::Serialize)]
pub struct RestoreTo {
    /// The new VM's name
    #[arg(long, required_unless_present = "in_place", conflicts_with = "in_place")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Overwrite the original VM's disks instead (the VM must be shut off)
    #[arg(long)]
    #[serde(skip)]
    pub in_place: bool,
    /// Where the new disks go: a storage pool, a datastore [default: the platform's]
    #[arg(long, alias = "pool")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    /// Network for every NIC (default: each NIC's original network)
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// The host the VM runs on, as the platform's inventory names it (default: the platform's
    /// choice: on vSphere the first host that mounts the datastore)
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Start the VM once it is defined
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub start: bool,
    /// Give the new VM's NICs the point's MAC addresses (default: new ones, so it can run beside
    /// the original); for a VM that replaces one that is gone
    #[arg(long, conflicts_with = "in_place")]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub keep_macs: bool,
    /// Disk image format of the new VM, one the platform offers (KVM: qcow2, which keeps change
    /// tracking, or raw) [default: the platform's first]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_format: Option<String>,
    /// A larger size for one disk of the new VM, as KEY=SIZE (vdb=200G; K, M, G, T are powers
    /// of 1024, no suffix is bytes); repeat for more disks. The added space is empty.
    #[arg(long = "disk-size", value_name = "KEY=SIZE", value_parser = parse_disk_size, conflicts_with = "in_place")]
    #[serde(rename = "disk_sizes", serialize_with = "sizes_map", skip_serializing_if = "Vec::is_empty")]
    pub disk_size: Vec<(String, u64)>,
}

/// `vdb=200G` as ("vdb", 200 GiB).
fn parse_disk_size(s: &str) -> std::result::Result<(String, u64), String> {
    let (key, size) = s.split_once('=').ok_or_else(|| format!("{s:?}: use KEY=SIZE, e.g. vdb=200G"))?;
    let size = size.trim();
    let (digits, unit) = size.split_at(size.find(|c: char| !c.is_ascii_digit()).unwrap_or(size.len()));
    let shift = match unit.to_ascii_uppercase().trim_end_matches(['B', 'I']) {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("{size:?}: the unit must be K, M, G or T")),
    };
    let n: u64 = digits.parse().map_err(|_| format!("{size:?}: not a size"))?;
    let bytes = n.checked_mul(1 << shift).ok_or_else(|| format!("{size:?}: too large"))?;
    if key.is_empty() || bytes == 0 {
        return Err(format!("{s:?}: use KEY=SIZE with a disk key and a size above zero"));
    }
    Ok((key.to_string(), bytes))
}

#[cfg(test)]
#[test]
fn disk_sizes_parse_with_binary_units_and_bad_ones_say_why() {
    assert_eq!(parse_disk_size("vdb=200G"), Ok(("vdb".into(), 200 << 30)));
    assert_eq!(parse_disk_size("sda=4096"), Ok(("sda".into(), 4096)));
    assert_eq!(parse_disk_size("vdc=3TiB"), Ok(("vdc".into(), 3 << 40)));
    assert_eq!(parse_disk_size("vdd=512m"), Ok(("vdd".into(), 512 << 20)));
    assert!(parse_disk_size("vdb").unwrap_err().contains("KEY=SIZE"));
    assert!(parse_disk_size("vdb=12X").unwrap_err().contains("K, M, G or T"));
    assert!(parse_disk_size("vdb=G").unwrap_err().contains("not a size"));
    assert!(parse_disk_size("=1G").unwrap_err().contains("disk key"));
    assert!(parse_disk_size("vdb=99999999999T").unwrap_err().contains("too large"));
}

fn sizes_map<S: serde::Serializer>(sizes: &[(String, u64)], s: S) -> std::result::Result<S::Ok, S::Error> {
    s.collect_map(sizes.iter().map(|(k, v)| (k, v)))
}

#[test]
fn the_clients_body_is_the_apis_words() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        to: RestoreTo,
    }
    let cli = Cli::parse_from(["x", "--name", "web-copy", "--keep-macs", "--disk-size", "vdb=1G", "--start"]);
    let body = serde_json::to_value(&cli.to).unwrap();
    assert_eq!(
        body,
        serde_json::json!({ "name": "web-copy", "keep_macs": true, "start": true, "disk_sizes": { "vdb": 1u64 << 30 } })
    );
    assert!(Cli::try_parse_from(["x", "--in-place", "--keep-macs"]).is_err(), "--keep-macs is for a new VM only");
}
