//! libvirt domain XML to the neutral VM description, and the backup and checkpoint XML that
//! libvirt's backup API takes (formatbackup.html, formatcheckpoint.html).

use vds_store::{NativeConfig, VmDescription, VmDisk, VmNic};

/// The format name of the domain XML a point keeps as its VM's native configuration.
pub const NATIVE_FORMAT: &str = "libvirt-domain-xml";

/// A disk of the domain as libvirt describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainDisk {
    pub target: String,
    pub bus: Option<String>,
    pub source: Option<String>,
    pub format: Option<String>,
}

fn child<'a, 'i>(n: roxmltree::Node<'a, 'i>, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
    n.children().find(|c| c.has_tag_name(name))
}

fn text(n: Option<roxmltree::Node<'_, '_>>) -> Option<String> {
    n.and_then(|n| n.text()).map(|t| t.trim().to_string())
}

/// The libosinfo id virt-install and virt-manager record in a domain's metadata
/// (`<libosinfo:os id="http://debian.org/debian/12"/>`), if any.
fn guest_os(root: roxmltree::Node<'_, '_>) -> Option<String> {
    let metadata = child(root, "metadata")?;
    let libosinfo = metadata.children().find(|c| c.tag_name().name() == "libosinfo")?;
    libosinfo.children().find(|c| c.tag_name().name() == "os")?.attribute("id").map(str::to_string)
}

pub fn parse(xml: &str) -> Result<(VmDescription, Vec<DomainDisk>), String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("domain XML does not parse: {e}"))?;
    let root = doc.root_element();
    let name = text(child(root, "name")).ok_or("domain XML has no <name>")?;
    let uuid = text(child(root, "uuid")).ok_or("domain XML has no <uuid>")?;
    let cpus = text(child(root, "vcpu")).and_then(|v| v.parse().ok()).unwrap_or(1);
    let memory_mib = child(root, "memory")
        .and_then(|m| {
            let v: u64 = m.text()?.trim().parse().ok()?;
            let kib = match m.attribute("unit").unwrap_or("KiB") {
                "b" | "bytes" => v / 1024,
                "KiB" | "k" => v,
                "MiB" | "M" => v * 1024,
                "GiB" | "G" => v * 1024 * 1024,
                "TiB" | "T" => v * 1024 * 1024 * 1024,
                _ => return None,
            };
            Some(kib / 1024)
        })
        .unwrap_or(0);
    let os = child(root, "os");
    let efi = os.is_some_and(|o| o.attribute("firmware") == Some("efi") || child(o, "loader").is_some());
    let mut disks = Vec::new();
    let mut nics = Vec::new();
    if let Some(devices) = child(root, "devices") {
        for d in
            devices.children().filter(|c| c.has_tag_name("disk") && c.attribute("device").unwrap_or("disk") == "disk")
        {
            let Some(target) = child(d, "target").and_then(|t| t.attribute("dev")) else { continue };
            let source = child(d, "source")
                .and_then(|s| s.attribute("file").or(s.attribute("dev")).or(s.attribute("name")))
                .map(str::to_string);
            disks.push(DomainDisk {
                target: target.to_string(),
                bus: child(d, "target").and_then(|t| t.attribute("bus")).map(str::to_string),
                source,
                format: child(d, "driver").and_then(|t| t.attribute("type")).map(str::to_string),
            });
        }
        for i in devices.children().filter(|c| c.has_tag_name("interface")) {
            let src = child(i, "source");
            nics.push(VmNic {
                model: child(i, "model").and_then(|m| m.attribute("type")).map(str::to_string),
                mac: child(i, "mac").and_then(|m| m.attribute("address")).map(str::to_string),
                network: src.and_then(|s| s.attribute("network").or(s.attribute("bridge"))).map(str::to_string),
            });
        }
    }
    let description = VmDescription {
        key: uuid.clone(),
        name,
        platform: "kvm".into(),
        uuid: Some(uuid),
        cpus,
        memory_mib,
        firmware: Some(if efi { "efi" } else { "bios" }.into()),
        guest_os: guest_os(root),
        disks: disks.iter().map(|d| VmDisk { key: d.target.clone(), size: 0, bus: d.bus.clone() }).collect(),
        nics,
        native: Some(NativeConfig { format: NATIVE_FORMAT.into(), text: xml.to_string() }),
    };
    Ok((description, disks))
}

/// The uid and gid QEMU runs as, from a running domain's DAC security label (`+64055:+64055`):
/// files QEMU must create (the backup's NBD socket) go in a directory it owns.
pub fn dac_owner(xml: &str) -> Option<(u32, u32)> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    let label = doc
        .descendants()
        .filter(|n| n.has_tag_name("seclabel") && n.attribute("model") == Some("dac"))
        .find_map(|n| child(n, "label"))?
        .text()?;
    let (u, g) = label.trim().split_once(':')?;
    Some((u.trim_start_matches('+').parse().ok()?, g.trim_start_matches('+').parse().ok()?))
}

pub(super) fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('\'', "&apos;").replace('"', "&quot;")
}

/// How one disk takes part in a pull-mode backup.
pub struct BackupDisk<'a> {
    pub target: &'a str,
    /// Where QEMU keeps the blocks the guest overwrites during the backup; None lets libvirt
    /// choose (on a remote host, where our paths mean nothing).
    pub scratch: Option<String>,
    /// Read it whole even though the backup is incremental (a disk the base did not have).
    pub full: bool,
}

/// Where the hypervisor's NBD server for a pull-mode backup listens.
pub enum NbdServer<'a> {
    Unix(&'a str),
    /// Host name (as the hypervisor resolves it), port, and whether TLS is required (with the
    /// certificates in qemu.conf's backup_tls_x509_cert_dir).
    Tcp(&'a str, u16, bool),
}

/// A pull-mode backup serving every disk over NBD, exports named after the disk and, for
/// incrementals, the dirty bitmap exported as `hf-<disk>`.
pub fn backup_xml(
    server: &NbdServer<'_>,
    incremental_from: Option<&str>,
    disks: &[BackupDisk<'_>],
    all_targets: &[String],
) -> String {
    let mut x = String::from("<domainbackup mode='pull'>\n");
    if let Some(cp) = incremental_from {
        x += &format!("  <incremental>{}</incremental>\n", escape(cp));
    }
    x += &match server {
        NbdServer::Unix(socket) => format!("  <server transport='unix' socket='{}'/>\n", escape(socket)),
        NbdServer::Tcp(host, port, tls) => format!(
            "  <server transport='tcp' name='{}' port='{port}'{}/>\n",
            escape(host),
            if *tls { " tls='yes'" } else { "" }
        ),
    };
    x += "  <disks>\n";
    for t in all_targets {
        match disks.iter().find(|d| d.target == t) {
            Some(d) => {
                let mode = if incremental_from.is_some() && !d.full {
                    format!(
                        " backupmode='incremental' incremental='{}' exportbitmap='hf-{}'",
                        escape(incremental_from.unwrap_or_default()),
                        escape(t)
                    )
                } else {
                    " backupmode='full'".to_string()
                };
                let scratch = d.scratch.as_ref().map(|f| format!("\n      <scratch file='{}'/>", escape(f)));
                x += &format!(
                    "    <disk name='{}' backup='yes' type='file' exportname='{}'{mode}>{}\n    </disk>\n",
                    escape(t),
                    escape(t),
                    scratch.unwrap_or_default()
                );
            }
            None => x += &format!("    <disk name='{}' backup='no'/>\n", escape(t)),
        }
    }
    x + "  </disks>\n</domainbackup>\n"
}

/// Where a new domain's disk is.
#[derive(Clone, Debug)]
pub enum DiskSource {
    /// A file or volume path on the host.
    File(String),
    /// A file on an NFS server (the appliance's instant-recovery export), opened by QEMU's
    /// nfs:// driver, which finds the server's ports through its portmapper.
    Nfs { host: String, path: String },
}

/// A disk of a new domain: its target (vda…), where it is, its image format.
#[derive(Clone, Debug)]
pub struct NewDisk {
    pub key: String,
    pub source: DiskSource,
    pub format: String,
}

impl NewDisk {
    pub fn file(key: &str, path: &str, format: &str) -> NewDisk {
        NewDisk { key: key.into(), source: DiskSource::File(path.into()), format: format.into() }
    }

    /// The disk element up to its target: type, driver and source.
    fn head(&self) -> String {
        let driver = format!("<driver name='qemu' type='{}'/>", escape(&self.format));
        match &self.source {
            DiskSource::File(path) => {
                format!("<disk type='file' device='disk'>{driver}<source file='{}'/>", escape(path))
            }
            DiskSource::Nfs { host, path } => format!(
                "<disk type='network' device='disk'>{driver}<source protocol='nfs' name='{}'><host name='{}'/></source>",
                escape(path),
                escape(host)
            ),
        }
    }
}

/// A new domain from a neutral description: `name`, no UUID and no MAC addresses (libvirt
/// makes new ones), each disk where `disks` puts it, each NIC on `network` (or its own).
pub fn new_domain_xml(
    d: &VmDescription,
    name: &str,
    cpus: u32,
    memory_mib: u64,
    disks: &[NewDisk],
    network: Option<&str>,
    keep_macs: bool,
) -> String {
    // UEFI without secure boot: a VM from elsewhere brings no keys the new firmware would trust.
    let (firmware, secure) = if d.firmware.as_deref() == Some("efi") {
        (" firmware='efi'", "<firmware><feature enabled='no' name='secure-boot'/></firmware>")
    } else {
        ("", "")
    };
    let mut x = format!(
        "<domain type='kvm'>\n  <name>{}</name>\n  <memory unit='MiB'>{memory_mib}</memory>\n  <vcpu>{cpus}</vcpu>\n  \
         <os{firmware}>{secure}<type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>\n  \
         <features><acpi/><apic/></features>\n  <devices>\n",
        escape(name)
    );
    // SCSI disks sit on virtio-scsi (libvirt's default SCSI controller is an emulated LSI card).
    if d.disks.iter().any(|v| v.bus.as_deref() == Some("scsi")) {
        x += "    <controller type='scsi' model='virtio-scsi'/>\n";
    }
    for disk in disks {
        let bus = d.disks.iter().find(|v| v.key == disk.key).and_then(|v| v.bus.as_deref()).unwrap_or("virtio");
        x += &format!("    {}<target dev='{}' bus='{}'/></disk>\n", disk.head(), escape(&disk.key), escape(bus));
    }
    for nic in &d.nics {
        let model = nic.model.as_deref().unwrap_or("virtio");
        let mac = match (&nic.mac, keep_macs) {
            (Some(m), true) => format!("<mac address='{}'/>", escape(m)),
            _ => String::new(),
        };
        match network.or(nic.network.as_deref()) {
            Some(net) => {
                x += &format!(
                    "    <interface type='network'>{mac}<source network='{}'/><model type='{}'/></interface>\n",
                    escape(net),
                    escape(model)
                )
            }
            None => x += &format!("    <interface type='user'>{mac}<model type='{}'/></interface>\n", escape(model)),
        }
    }
    // What an admin reaches a VM by: a serial console (virsh console), a display on the host's
    // loopback (virt-manager and remote viewers tunnel to it), VGA, which every guest has a driver
    // for, and a tablet so the pointer follows the viewer's.
    x += "    <serial type='pty'><target port='0'/></serial>\n    <console type='pty'><target type='serial' port='0'/></console>\n    \
          <input type='tablet' bus='usb'/>\n    <graphics type='vnc' autoport='yes' listen='127.0.0.1'/>\n    \
          <video><model type='vga'/></video>\n";
    x + "  </devices>\n</domain>\n"
}

/// The new VM's settings a restore on the same platform changes in the saved domain.
pub struct Restored<'a> {
    pub name: &'a str,
    /// None keeps the domain's.
    pub cpus: Option<u32>,
    pub memory_mib: Option<u64>,
    /// Each restored disk.
    pub disks: &'a [NewDisk],
    /// Every NIC onto this network; None keeps each NIC's source.
    pub network: Option<&'a str>,
    /// Keep the NICs' MAC addresses (else libvirt makes new ones).
    pub keep_macs: bool,
}

/// The source text of `n` with the children `drop` names left out.
fn without(src: &str, n: roxmltree::Node<'_, '_>, drop: impl Fn(roxmltree::Node<'_, '_>) -> bool) -> String {
    let r = n.range();
    let (Some(first), Some(last)) = (n.first_child(), n.last_child()) else { return src[r].to_string() };
    let (open, close) = (&src[r.start..first.range().start], &src[last.range().end..r.end]);
    format!("{open}{}{close}", children_text(src, n, drop))
}

/// The inner text of `n`'s children other than those `drop` names (verbatim).
fn children_text(src: &str, n: roxmltree::Node<'_, '_>, drop: impl Fn(roxmltree::Node<'_, '_>) -> bool) -> String {
    n.children().filter(|k| !drop(*k)).map(|k| &src[k.range()]).collect()
}

/// A restore as a new VM onto the platform the point came from: the saved domain XML with only
/// its identity (name; UUID, MAC addresses and the UEFI variable store left for libvirt to make
/// new), the user's edits (CPUs, memory, network) and the disk sources changed. Domain type,
/// machine, firmware, boot order, CPU model, consoles, direct kernel boot and every other device
/// stay as they were. Disks the point does not hold are left out (they would be the original
/// VM's), and so are runtime-only parts of a live domain's XML (security labels, tap devices).
pub fn restored_domain_xml(native: &str, new: &Restored<'_>) -> Result<String, String> {
    let doc = roxmltree::Document::parse(native).map_err(|e| format!("the saved domain XML does not parse: {e}"))?;
    let root = doc.root_element();
    if !root.has_tag_name("domain") {
        return Err("the saved configuration is not a libvirt domain".into());
    }
    let tag = |n: roxmltree::Node<'_, '_>, t: &str| n.is_element() && n.has_tag_name(t);
    let mut edits: Vec<(std::ops::Range<usize>, String)> = Vec::new();
    for n in root.children().filter(|n| n.is_element()) {
        let r = n.range();
        match (n.tag_name().name(), new.memory_mib, new.cpus) {
            ("name", ..) => edits.push((r, format!("<name>{}</name>", escape(new.name)))),
            ("uuid" | "seclabel", ..) => edits.push((r, String::new())),
            (t @ ("memory" | "currentMemory"), Some(m), _) => edits.push((r, format!("<{t} unit='MiB'>{m}</{t}>"))),
            ("vcpu", _, Some(c)) => edits.push((r, format!("<vcpu placement='static'>{c}</vcpu>"))),
            // A changed CPU count no longer matches a fixed topology: libvirt derives one.
            ("cpu", _, Some(_)) => edits.push((r, without(native, n, |k| tag(k, "topology")))),
            ("os", ..) => edits.push((r, without(native, n, |k| tag(k, "nvram")))),
            ("devices", ..) => {
                let mut inner = String::new();
                for d in n.children() {
                    let is_disk = tag(d, "disk") && d.attribute("device").unwrap_or("disk") == "disk";
                    if is_disk {
                        if let Some(x) = rewritten_disk(native, d, new.disks) {
                            inner += &x;
                        }
                    } else if tag(d, "interface") {
                        let drop = |k: roxmltree::Node<'_, '_>| {
                            (tag(k, "mac") && !new.keep_macs)
                                || tag(k, "target")
                                || tag(k, "alias")
                                || (new.network.is_some() && tag(k, "source"))
                        };
                        match new.network {
                            Some(net) => {
                                inner += &format!(
                                    "<interface type='network'><source network='{}'/>{}</interface>",
                                    escape(net),
                                    children_text(native, d, |k| !k.is_element() || drop(k))
                                )
                            }
                            None => inner += &without(native, d, drop),
                        }
                    } else {
                        inner += &native[d.range()];
                    }
                }
                let open = &native[r.start..n.first_child().map_or(r.end, |k| k.range().start)];
                edits.push((r, format!("{open}{inner}</devices>")));
            }
            _ => {}
        }
    }
    let mut out = native.to_string();
    edits.sort_by_key(|(r, _)| std::cmp::Reverse(r.start));
    for (r, text) in edits {
        out.replace_range(r, &text);
    }
    roxmltree::Document::parse(&out).map_err(|e| format!("the restored domain XML does not parse: {e}"))?;
    Ok(out)
}

/// A disk element of `native` with its source and driver from `disks` (the one of its target),
/// everything else it says kept (boot order, address, serial, cache…); None when `disks` has
/// none for its target.
fn rewritten_disk(native: &str, d: roxmltree::Node<'_, '_>, disks: &[NewDisk]) -> Option<String> {
    let target = child(d, "target")?;
    let dev = target.attribute("dev").unwrap_or_default();
    let disk = disks.iter().find(|k| k.key == dev)?;
    let kept = children_text(native, d, |k| {
        !k.is_element() || ["source", "driver", "backingStore", "target", "alias"].contains(&k.tag_name().name())
    });
    Some(format!("{}{}{kept}</disk>", disk.head(), &native[target.range()]))
}

/// A domain definition with the sources of the disks `disks` names changed (a VM moved off the
/// instant-recovery export onto its own volumes); nothing else changes.
pub fn with_disk_sources(native: &str, disks: &[NewDisk]) -> Result<String, String> {
    let doc = roxmltree::Document::parse(native).map_err(|e| format!("the domain XML does not parse: {e}"))?;
    let mut edits: Vec<(std::ops::Range<usize>, String)> = Vec::new();
    for d in doc.descendants().filter(|n| n.has_tag_name("disk") && n.attribute("device").unwrap_or("disk") == "disk") {
        if let Some(x) = rewritten_disk(native, d, disks) {
            edits.push((d.range(), x));
        }
    }
    let mut out = native.to_string();
    edits.sort_by_key(|(r, _)| std::cmp::Reverse(r.start));
    for (r, text) in edits {
        out.replace_range(r, &text);
    }
    Ok(out)
}

/// A raw volume of `size` bytes.
pub fn volume_xml(name: &str, size: u64, format: &str) -> String {
    format!(
        "<volume><name>{}</name><capacity unit='bytes'>{size}</capacity><allocation unit='bytes'>0</allocation>\
         <target><format type='{}'/>{}</target></volume>",
        escape(name),
        escape(format),
        // libvirt makes qcow2 v2 by default, which cannot keep dirty bitmaps.
        if format == "qcow2" { "<compat>1.1</compat>" } else { "" }
    )
}

/// A checkpoint tracking every backed-up disk with a persistent bitmap.
pub fn checkpoint_xml(name: &str, targets: &[&str], all_targets: &[String]) -> String {
    let mut x = format!("<domaincheckpoint>\n  <name>{}</name>\n  <disks>\n", escape(name));
    for t in all_targets {
        let how = if targets.contains(&t.as_str()) { "bitmap" } else { "no" };
        x += &format!("    <disk name='{}' checkpoint='{how}'/>\n", escape(t));
    }
    x + "  </disks>\n</domaincheckpoint>\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = r#"<domain type='kvm'>
  <name>web01</name><uuid>4a6c2d3e-1111-2222-3333-444455556666</uuid>
  <memory unit='KiB'>2097152</memory><vcpu placement='static'>2</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/v/a.qcow2'/><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='cdrom'><target dev='sda' bus='sata'/></disk>
    <disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='/dev/vg/b'/><target dev='vdb' bus='virtio'/></disk>
    <interface type='network'><mac address='52:54:00:aa:bb:cc'/><source network='default'/><model type='virtio'/></interface>
  </devices>
</domain>"#;

    #[test]
    fn parses_the_neutral_description() {
        let (d, disks) = parse(XML).unwrap();
        assert_eq!((d.name.as_str(), d.cpus, d.memory_mib), ("web01", 2, 2048));
        assert_eq!(d.key, "4a6c2d3e-1111-2222-3333-444455556666");
        assert_eq!(disks.iter().map(|d| d.target.as_str()).collect::<Vec<_>>(), ["vda", "vdb"]);
        assert_eq!(disks[1].source.as_deref(), Some("/dev/vg/b"));
        assert_eq!(d.nics[0].mac.as_deref(), Some("52:54:00:aa:bb:cc"));
        assert_eq!(d.nics[0].network.as_deref(), Some("default"));
        assert_eq!(d.native.unwrap().text, XML);
        assert!(parse("<domain>").is_err());
        let live = XML.replace(
            "</devices>",
            "</devices><seclabel type='dynamic' model='dac' relabel='yes'><label>+64055:+108</label></seclabel>",
        );
        assert_eq!(dac_owner(&live), Some((64055, 108)));
        assert_eq!(dac_owner(XML), None);
        assert!(parse("<domain><uuid>x</uuid></domain>").unwrap_err().contains("<name>"));
    }

    #[test]
    fn disks_move_from_the_export_to_volumes_keeping_everything_else() {
        let on_nfs = NewDisk {
            key: "vda".into(),
            source: DiskSource::Nfs { host: "10.0.0.5".into(), path: "/holdfast/s/vda.raw".into() },
            format: "raw".into(),
        };
        let x = restored_domain_xml(
            RICH,
            &Restored {
                name: "app-ir",
                cpus: None,
                memory_mib: None,
                disks: &[on_nfs],
                network: None,
                keep_macs: false,
            },
        )
        .unwrap();
        assert!(
            x.contains("<source protocol='nfs' name='/holdfast/s/vda.raw'><host name='10.0.0.5'/></source>"),
            "{x}"
        );
        let moved = with_disk_sources(&x, &[NewDisk::file("vda", "/pool/app-ir-vda.qcow2", "qcow2")]).unwrap();
        assert!(
            !moved.contains("protocol='nfs'") && moved.contains("<source file='/pool/app-ir-vda.qcow2'/>"),
            "{moved}"
        );
        assert!(moved.contains("type='qcow2'") && moved.contains("<name>app-ir</name>"));
        // Only the disk elements changed.
        let strip = |t: &str| {
            roxmltree::Document::parse(t)
                .unwrap()
                .descendants()
                .filter(|n| n.is_element() && !n.ancestors().any(|a| a.has_tag_name("disk")))
                .count()
        };
        assert_eq!(strip(&x), strip(&moved));
    }

    #[test]
    fn new_domain_has_a_new_identity_and_the_chosen_settings() {
        let (d, _) = parse(XML).unwrap();
        let x = new_domain_xml(
            &d,
            "web01-restored",
            4,
            1024,
            &[NewDisk::file("vda", "/p/a.raw", "raw")],
            Some("lan2"),
            false,
        );
        let doc = roxmltree::Document::parse(&x).unwrap();
        assert!(doc.descendants().all(|n| !n.has_tag_name("uuid") && !n.has_tag_name("mac")));
        assert!(
            x.contains("<name>web01-restored</name>") && x.contains("<vcpu>4</vcpu>") && x.contains(">1024</memory>")
        );
        assert!(x.contains("<source file='/p/a.raw'/><target dev='vda' bus='virtio'/>"));
        assert!(x.contains("<source network='lan2'/>"));
        // A console and a display to reach it by, the display on the host's loopback only.
        assert!(x.contains("<console type='pty'><target type='serial' port='0'/></console>"), "{x}");
        assert!(x.contains("<graphics type='vnc' autoport='yes' listen='127.0.0.1'/>"), "{x}");
        assert!(x.contains("<video><model type='vga'/></video>") && x.contains("<input type='tablet' bus='usb'/>"));
        assert!(new_domain_xml(&d, "n", 1, 64, &[], None, false).contains("<source network='default'/>"));
        assert!(roxmltree::Document::parse(&volume_xml("a&b", 5, "qcow2")).is_ok());
    }

    /// A domain with what a fresh definition would lose: QEMU (TCG) type, a q35 machine, UEFI
    /// with its variable store, boot from floppy first, a host CPU model with a topology, direct
    /// kernel boot, a serial console, a watchdog and an RNG device; and what a copy must not
    /// keep: UUID, MACs, the NVRAM path, a disk the point lacks, a live security label.
    const RICH: &str = r#"<domain type='qemu' id='7'>
  <name>app</name>
  <uuid>11111111-2222-3333-4444-555555555555</uuid>
  <memory unit='KiB'>524288</memory>
  <currentMemory unit='KiB'>524288</currentMemory>
  <vcpu placement='static'>2</vcpu>
  <os firmware='efi'>
    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
    <loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>
    <nvram>/var/lib/libvirt/qemu/nvram/app_VARS.fd</nvram>
    <kernel>/boot/vmlinuz</kernel>
    <cmdline>console=ttyS0 root=/dev/vda</cmdline>
    <boot dev='fd'/>
    <boot dev='hd'/>
  </os>
  <cpu mode='custom' match='exact'><model fallback='allow'>Skylake-Client</model><topology sockets='1' cores='2' threads='1'/></cpu>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/v/app.qcow2'/><backingStore/><target dev='vda' bus='virtio'/><alias name='virtio-disk0'/><address type='pci' domain='0x0000' bus='0x04' slot='0x00' function='0x0'/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/v/scratch.raw'/><target dev='vdb' bus='virtio'/></disk>
    <interface type='network'><mac address='52:54:00:aa:bb:cc'/><source network='default'/><target dev='vnet3'/><model type='e1000e'/></interface>
    <serial type='pty'><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <watchdog model='i6300esb' action='reset'/>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
  </devices>
  <seclabel type='dynamic' model='dac' relabel='yes'><label>+64055:+64055</label></seclabel>
</domain>"#;

    #[test]
    fn a_restore_on_its_platform_keeps_the_domain_and_changes_only_identity_edits_and_disks() {
        let disks = [NewDisk::file("vda", "/pool/app-copy-vda.qcow2", "qcow2")];
        let new =
            Restored { name: "app-copy", cpus: None, memory_mib: None, disks: &disks, network: None, keep_macs: false };
        let x = restored_domain_xml(RICH, &new).unwrap();
        let doc = roxmltree::Document::parse(&x).unwrap();
        let root = doc.root_element();
        assert_eq!(root.attribute("type"), Some("qemu"));
        assert_eq!(text(child(root, "name")).as_deref(), Some("app-copy"));
        for gone in ["uuid", "mac", "nvram", "seclabel", "backingStore"] {
            assert!(doc.descendants().all(|n| !n.has_tag_name(gone)), "{gone} kept: {x}");
        }
        for kept in [
            "machine='pc-q35-7.2'",
            "firmware='efi'",
            "OVMF_CODE_4M.fd",
            "<boot dev='fd'/>\n    <boot dev='hd'/>",
            "<kernel>/boot/vmlinuz</kernel>",
            "console=ttyS0",
            "<model fallback='allow'>Skylake-Client</model>",
            "<topology sockets='1' cores='2' threads='1'/>",
            "<console type='pty'>",
            "<watchdog model='i6300esb'",
            "<rng model='virtio'>",
            "<model type='e1000e'/>",
            "<source network='default'/>",
            "<memory unit='KiB'>524288</memory>",
            "slot='0x00'",
        ] {
            assert!(x.contains(kept), "{kept} lost: {x}");
        }
        assert!(x.contains("<source file='/pool/app-copy-vda.qcow2'/><target dev='vda' bus='virtio'/>"), "{x}");
        // Asked to, the NICs keep their addresses (a VM that replaces one that is gone).
        let kept = restored_domain_xml(RICH, &Restored { keep_macs: true, ..new }).unwrap();
        assert!(kept.contains("<mac address='52:54:00:aa:bb:cc'/>"), "{kept}");
        let (d, _) = parse(XML).unwrap();
        let fresh = new_domain_xml(&d, "n", 1, 64, &[], None, true);
        let mac = d.nics[0].mac.as_deref().unwrap();
        assert!(fresh.contains(&format!("<mac address='{mac}'/>")), "{fresh}");
        assert!(!x.contains("/v/app.qcow2") && !x.contains("scratch.raw") && !x.contains("vnet3"), "{x}");

        // The user's edits: CPUs (the fixed topology goes with the old count), memory, network.
        let new = Restored {
            name: "n",
            cpus: Some(4),
            memory_mib: Some(2048),
            disks: &disks,
            network: Some("lab"),
            keep_macs: false,
        };
        let x = restored_domain_xml(RICH, &new).unwrap();
        assert!(x.contains("<vcpu placement='static'>4</vcpu>") && !x.contains("<topology"), "{x}");
        assert!(
            x.contains("<memory unit='MiB'>2048</memory>")
                && x.contains("<currentMemory unit='MiB'>2048</currentMemory>")
        );
        assert!(
            x.contains("<interface type='network'><source network='lab'/><model type='e1000e'/></interface>"),
            "{x}"
        );
        assert!(restored_domain_xml("<vm/>", &new).is_err());
    }

    #[test]
    fn backup_xml_names_exports_and_bitmaps() {
        let targets = vec!["vda".to_string(), "vdb".to_string(), "vdc".to_string()];
        let disks = [
            BackupDisk { target: "vda", scratch: Some("/s/vda.qcow2".into()), full: false },
            BackupDisk { target: "vdb", scratch: None, full: true },
        ];
        let x = backup_xml(&NbdServer::Unix("/s/nbd.sock"), Some("hf-1"), &disks, &targets);
        assert!(x.contains("<server transport='unix' socket='/s/nbd.sock'/>"));
        assert!(x.contains("<scratch file='/s/vda.qcow2'/>") && x.matches("<scratch").count() == 1);
        let tcp = backup_xml(&NbdServer::Tcp("kvm1.example", 10810, false), None, &disks, &targets);
        assert!(tcp.contains("<server transport='tcp' name='kvm1.example' port='10810'/>"));
        let tls = backup_xml(&NbdServer::Tcp("kvm1.example", 10810, true), None, &disks, &targets);
        assert!(tls.contains("<server transport='tcp' name='kvm1.example' port='10810' tls='yes'/>"));
        assert!(roxmltree::Document::parse(&tcp).is_ok());
        assert!(x.contains("<incremental>hf-1</incremental>"));
        assert!(x.contains("name='vda' backup='yes' type='file' exportname='vda' backupmode='incremental' incremental='hf-1' exportbitmap='hf-vda'"));
        assert!(x.contains("name='vdb' backup='yes' type='file' exportname='vdb' backupmode='full'"));
        assert!(x.contains("<disk name='vdc' backup='no'/>"));
        let c = checkpoint_xml("hf-2", &["vda", "vdb"], &targets);
        assert!(
            c.contains("<disk name='vda' checkpoint='bitmap'/>") && c.contains("<disk name='vdc' checkpoint='no'/>")
        );
        assert!(roxmltree::Document::parse(&x).is_ok() && roxmltree::Document::parse(&c).is_ok());
    }
}
