//! Cross-platform restore: a restore point's neutral VM description turned into the VM another
//! kind of platform makes (a VMware point onto KVM, a KVM point onto vSphere). The disks keep
//! their order and get the target's names and a bus the guest can boot from; NICs get a model
//! the guest has a driver for; firmware, CPUs and memory carry over. What the user may override
//! (the disk bus, the NIC model) defaults to what the guest OS is known to boot with, and every
//! decision is said in one line for the restore job's log. The target platform then restores
//! the converted description as if the point were its own.

use crate::registry::FieldError;
use vds_store::{VmDescription, VmDisk, VmNic};

/// What the user chose for the converted VM (None: the default for the guest).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Choices {
    /// The target's bus for every disk (KVM: virtio, virtio-scsi, sata; vSphere: pvscsi,
    /// lsilogic, sata, nvme).
    pub disk_bus: Option<String>,
    /// The target's NIC model for every NIC (KVM: virtio, e1000e, e1000; vSphere: vmxnet3,
    /// e1000e, e1000).
    pub nic_model: Option<String>,
}

/// The description a target restores, and how it came about.
#[derive(Clone, Debug)]
pub struct Converted {
    /// The VM as the target makes it: its own disk names and buses, NIC models, no native
    /// configuration of the source's.
    pub description: VmDescription,
    /// (the point's disk key, the target's disk key), in the point's order.
    pub disk_keys: Vec<(String, String)>,
    /// One line per decision, for the restore job's log.
    pub decisions: Vec<String>,
}

/// The guest OS family as far as the description tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Linux,
    Windows,
    Unknown,
}

/// What a guest OS name or id says about its family (vSphere's guestFullName or guestId,
/// libosinfo ids).
pub fn family(guest_os: Option<&str>) -> Family {
    let Some(os) = guest_os.map(str::to_ascii_lowercase) else { return Family::Unknown };
    if os.contains("windows") || os.contains("microsoft.com/win") {
        return Family::Windows;
    }
    const LINUX: &[&str] = &[
        "linux", "debian", "ubuntu", "centos", "rhel", "red hat", "fedora", "suse", "sles", "alma", "rocky", "oracle",
        "alpine", "arch", "gentoo", "photon", "coreos",
    ];
    if LINUX.iter().any(|l| os.contains(l)) {
        Family::Linux
    } else {
        Family::Unknown
    }
}

/// A target kind's choices and their defaults by guest family.
struct Target {
    kind: &'static str,
    buses: &'static [(&'static str, &'static str)],
    nics: &'static [(&'static str, &'static str)],
    /// (Linux default, default for Windows and unknown guests)
    bus_default: (&'static str, &'static str),
    nic_default: (&'static str, &'static str),
}

const KVM: Target = Target {
    kind: "kvm",
    buses: &[
        ("virtio", "virtio-blk: the fastest; Linux has the driver, Windows needs virtio-win"),
        ("virtio-scsi", "virtio-scsi: a SCSI controller with virtio's speed (virtio-win for Windows)"),
        ("sata", "SATA (AHCI): every OS boots from it, slower"),
    ],
    nics: &[
        ("virtio", "virtio-net: the fastest (virtio-win for Windows)"),
        ("e1000e", "Intel 82574 (e1000e): drivers in most OSes"),
        ("e1000", "Intel 82540 (e1000): drivers in every OS"),
    ],
    bus_default: ("virtio", "sata"),
    nic_default: ("virtio", "e1000"),
};

const VMWARE: Target = Target {
    kind: "vmware",
    buses: &[
        ("pvscsi", "VMware Paravirtual SCSI: the fastest (Linux has the driver, Windows with VMware Tools)"),
        ("lsilogic", "LSI Logic SCSI: drivers in most OSes"),
        ("sata", "SATA (AHCI): every OS boots from it"),
        ("nvme", "NVMe: fast, drivers in current OSes"),
    ],
    nics: &[
        ("vmxnet3", "VMXNET3: the fastest (Linux has the driver, Windows with VMware Tools)"),
        ("e1000e", "Intel 82574 (e1000e): drivers in most OSes"),
        ("e1000", "Intel 82545 (e1000): drivers in every OS"),
    ],
    bus_default: ("pvscsi", "sata"),
    nic_default: ("vmxnet3", "e1000e"),
};

fn target(kind: &str) -> Option<&'static Target> {
    [&KVM, &VMWARE].into_iter().find(|t| t.kind == kind)
}

/// One choice a target offers: its name and what it means.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Offer {
    pub name: &'static str,
    pub description: &'static str,
}

/// The choices a cross-platform restore onto `kind` offers, and their defaults for `source`'s
/// guest: (buses, NIC models, default bus, default NIC model). None when Holdfast cannot convert
/// onto that kind of platform.
pub fn offers(kind: &str, source: &VmDescription) -> Option<(Vec<Offer>, Vec<Offer>, &'static str, &'static str)> {
    let t = target(kind)?;
    let linux = family(source.guest_os.as_deref()) == Family::Linux;
    let pick = |d: (&'static str, &'static str)| if linux { d.0 } else { d.1 };
    let list = |l: &[(&'static str, &'static str)]| l.iter().map(|(n, d)| Offer { name: n, description: d }).collect();
    Some((list(t.buses), list(t.nics), pick(t.bus_default), pick(t.nic_default)))
}

/// Whether a restore of `source` onto a platform of kind `kind` needs converting.
pub fn needed(source: &VmDescription, kind: &str) -> bool {
    source.platform != kind
}

/// The target's name for disk `i` (from 0) on `bus`: vda/sda on KVM, scsi0-N/sata0-N/nvme0-N on
/// vSphere (SCSI skips unit 7, the controller's own).
fn disk_key(kind: &str, bus: &str, i: usize) -> String {
    let letters = |i: usize| {
        let mut name = String::new();
        let mut n = i + 1;
        while n > 0 {
            n -= 1;
            name.insert(0, (b'a' + (n % 26) as u8) as char);
            n /= 26;
        }
        name
    };
    match (kind, bus) {
        ("kvm", "virtio") => format!("vd{}", letters(i)),
        ("kvm", _) => format!("sd{}", letters(i)),
        (_, "pvscsi" | "lsilogic") => format!("scsi0-{}", if i < 7 { i } else { i + 1 }),
        (_, b) => format!("{b}0-{i}"),
    }
}

/// The neutral bus word a target's connector reads for its choice (KVM's domain XML bus).
fn bus_word(kind: &str, bus: &str) -> String {
    match (kind, bus) {
        ("kvm", "virtio-scsi") => "scsi".into(),
        _ => bus.into(),
    }
}

/// Converts `source` (a point of another platform) into the VM a `kind` platform makes.
/// A choice the target does not offer is refused naming the field and what it offers.
pub fn convert(source: &VmDescription, kind: &str, choices: &Choices) -> Result<Converted, FieldError> {
    let t = target(kind).ok_or_else(|| {
        FieldError::new("platform", format!("Holdfast cannot convert a {} VM for a {kind} platform", source.platform))
    })?;
    let (_, _, bus_default, nic_default) = offers(kind, source).expect("a known target");
    fn choose(
        kind: &str,
        field: &str,
        given: &Option<String>,
        list: &'static [(&'static str, &'static str)],
        default: &'static str,
    ) -> Result<(&'static str, bool), FieldError> {
        match given.as_deref() {
            None => Ok((default, false)),
            // The default asked for by name is still the default.
            Some(g) => list.iter().find(|(n, _)| *n == g).map(|(n, _)| (*n, *n != default)).ok_or_else(|| {
                let names: Vec<&str> = list.iter().map(|(n, _)| *n).collect();
                FieldError::new(
                    field,
                    format!("{g:?} is not offered by {kind} platforms (they take {})", names.join(", ")),
                )
            }),
        }
    }
    let (bus, bus_chosen) = choose(kind, "disk_bus", &choices.disk_bus, t.buses, bus_default)?;
    let (nic, nic_chosen) = choose(kind, "nic_model", &choices.nic_model, t.nics, nic_default)?;
    let fam = family(source.guest_os.as_deref());
    let guest = source.guest_os.clone().unwrap_or_else(|| "not recorded".into());
    let mut decisions = vec![format!(
        "converting a {} VM for {kind}: guest OS {guest} ({})",
        source.platform,
        match fam {
            Family::Linux => "Linux: its initramfs has the paravirtual drivers",
            Family::Windows => "Windows: no paravirtual drivers assumed",
            Family::Unknown => "unknown: devices every OS has drivers for",
        }
    )];
    let firmware = source.firmware.clone().unwrap_or_else(|| "bios".into());
    decisions.push(format!(
        "firmware: {firmware}{}",
        if firmware == "efi" { " (secure boot off: the source's keys do not travel)" } else { "" }
    ));
    decisions.push(format!("CPUs: {}, memory: {} MiB, as the source", source.cpus, source.memory_mib));
    let why = |chosen: bool| if chosen { "as chosen" } else { "the default for this guest" };
    let mut disks = Vec::new();
    let mut disk_keys = Vec::new();
    for (i, d) in source.disks.iter().enumerate() {
        let key = disk_key(kind, bus, i);
        decisions.push(format!(
            "disk {} ({} bytes, {} on {}) becomes {key} on {bus} ({})",
            d.key,
            d.size,
            d.bus.as_deref().unwrap_or("its bus"),
            source.platform,
            why(bus_chosen)
        ));
        disk_keys.push((d.key.clone(), key.clone()));
        disks.push(VmDisk { key, size: d.size, bus: Some(bus_word(kind, bus)) });
    }
    // The paravirtual drivers a guest needs on the target, by their names in Linux and Windows.
    let (storage_driver, nic_driver) = match kind {
        "kvm" => {
            ("virtio_blk / virtio_scsi (Windows: viostor / vioscsi from virtio-win)", "virtio_net (Windows: netkvm)")
        }
        _ => ("vmw_pvscsi (Windows: pvscsi from VMware Tools)", "vmxnet3 (Windows: from VMware Tools)"),
    };
    if fam != Family::Linux && !bus_chosen && bus == "sata" {
        decisions.push(format!(
            "warning: the disks are on SATA because the guest may lack {storage_driver}; once that driver is in \
             the guest, a restore can choose the faster bus"
        ));
    }
    if fam == Family::Linux && !["sata", "lsilogic"].contains(&bus) {
        decisions.push(format!(
            "note: the guest boots only if its initramfs holds {storage_driver} (Debian's, Ubuntu's and RHEL's do); \
             if it does not come up, restore again with sata"
        ));
    }
    if nic == "virtio" || nic == "vmxnet3" {
        decisions.push(format!("note: the NICs need {nic_driver} in the guest"));
    }
    let mut nics = Vec::new();
    for (i, n) in source.nics.iter().enumerate() {
        decisions.push(format!(
            "NIC {} ({} on {}) becomes {nic} ({}), on the network chosen for the restore",
            i + 1,
            n.model.as_deref().unwrap_or("a NIC"),
            source.platform,
            why(nic_chosen),
        ));
        nics.push(VmNic { model: Some(nic.into()), mac: n.mac.clone(), network: n.network.clone() });
    }
    let description = VmDescription {
        key: source.key.clone(),
        name: source.name.clone(),
        platform: source.platform.clone(),
        uuid: source.uuid.clone(),
        cpus: source.cpus,
        memory_mib: source.memory_mib,
        firmware: Some(firmware),
        guest_os: source.guest_os.clone(),
        disks,
        nics,
        native: None,
    };
    Ok(Converted { description, disk_keys, decisions })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vmware_vm(guest: Option<&str>) -> VmDescription {
        VmDescription {
            key: "5001".into(),
            name: "web".into(),
            platform: "vmware".into(),
            cpus: 2,
            memory_mib: 2048,
            firmware: Some("efi".into()),
            guest_os: guest.map(str::to_string),
            disks: (0..9)
                .map(|i| VmDisk {
                    key: format!("scsi0-{}", if i < 7 { i } else { i + 1 }),
                    size: 1 << 30,
                    bus: Some("scsi".into()),
                })
                .collect(),
            nics: vec![VmNic {
                model: Some("vmxnet3".into()),
                mac: Some("00:50:56:01:02:03".into()),
                network: Some("VM Network".into()),
            }],
            ..VmDescription::default()
        }
    }

    #[test]
    fn a_linux_vmware_vm_becomes_a_virtio_kvm_vm() {
        let c = convert(&vmware_vm(Some("Debian GNU/Linux 12 (64-bit)")), "kvm", &Choices::default()).unwrap();
        let keys: Vec<&str> = c.description.disks.iter().map(|d| d.key.as_str()).collect();
        assert_eq!(keys, ["vda", "vdb", "vdc", "vdd", "vde", "vdf", "vdg", "vdh", "vdi"]);
        assert!(c.description.disks.iter().all(|d| d.bus.as_deref() == Some("virtio")));
        assert_eq!(c.disk_keys[7], ("scsi0-8".to_string(), "vdh".to_string()));
        assert_eq!(c.description.nics[0].model.as_deref(), Some("virtio"));
        assert!(c.description.native.is_none());
        assert_eq!(c.description.firmware.as_deref(), Some("efi"));
        assert_eq!(c.decisions.len(), 3 + 9 + 2 + 1, "{:#?}", c.decisions);
        assert!(c.decisions.iter().any(|d| d.contains("initramfs holds virtio_blk")), "{:#?}", c.decisions);
        assert!(c.decisions.iter().any(|d| d.contains("secure boot off")));
    }

    #[test]
    fn windows_and_unknown_guests_get_devices_every_os_has_and_a_warning() {
        for guest in [Some("Microsoft Windows Server 2022 (64-bit)"), None] {
            let c = convert(&vmware_vm(guest), "kvm", &Choices::default()).unwrap();
            assert_eq!(c.description.disks[0].key, "sda");
            assert_eq!(c.description.disks[0].bus.as_deref(), Some("sata"));
            assert_eq!(c.description.nics[0].model.as_deref(), Some("e1000"));
            assert!(
                c.decisions.iter().any(|d| d.starts_with("warning: the disks are on SATA") && d.contains("viostor")),
                "{:#?}",
                c.decisions
            );
        }
    }

    #[test]
    fn a_kvm_vm_becomes_a_vsphere_vm_and_choices_are_checked() {
        let kvm = VmDescription {
            platform: "kvm".into(),
            guest_os: Some("http://debian.org/debian/12".into()),
            disks: vec![VmDisk { key: "vda".into(), size: 8 << 20, bus: Some("virtio".into()) }],
            nics: vec![VmNic { model: Some("virtio".into()), ..VmNic::default() }],
            ..VmDescription::default()
        };
        let c = convert(&kvm, "vmware", &Choices::default()).unwrap();
        assert_eq!(
            (c.description.disks[0].key.as_str(), c.description.disks[0].bus.as_deref()),
            ("scsi0-0", Some("pvscsi"))
        );
        assert_eq!(c.description.nics[0].model.as_deref(), Some("vmxnet3"));
        let chosen = Choices { disk_bus: Some("nvme".into()), nic_model: Some("e1000e".into()) };
        let c = convert(&kvm, "vmware", &chosen).unwrap();
        assert_eq!(c.description.disks[0].key, "nvme0-0");
        assert!(c.decisions.iter().any(|d| d.contains("on nvme (as chosen)")));
        let e =
            convert(&kvm, "vmware", &Choices { disk_bus: Some("virtio".into()), ..Choices::default() }).unwrap_err();
        assert_eq!(e.field, "disk_bus");
        assert!(e.message.contains("pvscsi, lsilogic, sata, nvme"), "{e}");
        let e =
            convert(&kvm, "vmware", &Choices { nic_model: Some("rtl8139".into()), ..Choices::default() }).unwrap_err();
        assert_eq!(e.field, "nic_model");
        let e = convert(&kvm, "hyperv", &Choices::default()).unwrap_err();
        assert_eq!(e.field, "platform");
        let c = convert(&kvm, "kvm", &Choices { disk_bus: Some("virtio-scsi".into()), ..Choices::default() }).unwrap();
        assert_eq!((c.description.disks[0].key.as_str(), c.description.disks[0].bus.as_deref()), ("sda", Some("scsi")));
    }

    #[test]
    fn guest_families() {
        assert_eq!(family(Some("debian12_64Guest")), Family::Linux);
        assert_eq!(family(Some("windows2019srv_64Guest")), Family::Windows);
        assert_eq!(family(Some("http://microsoft.com/win/10")), Family::Windows);
        assert_eq!(family(Some("otherGuest64")), Family::Unknown);
        assert_eq!(disk_key("kvm", "virtio", 26), "vdaa");
    }
}
