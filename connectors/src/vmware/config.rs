//! A VM's configuration as vSphere gives it (VirtualMachineConfigInfo), read into what backup
//! and restore need: controllers, disks with their files and change ids, NICs with their
//! networks, and the neutral description the store keeps beside the verbatim original.

use super::xml::{El, MoRef};
use vds_store::{NativeConfig, VmDescription, VmDisk, VmNic};

/// The native configuration's format name in restore points.
pub const NATIVE_FORMAT: &str = "vmware-vim25-VirtualMachineConfigInfo";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Controller {
    pub key: i64,
    /// "scsi", "sata", "nvme", "ide".
    pub bus: &'static str,
    pub bus_number: i64,
    /// The vSphere type ("ParaVirtualSCSIController").
    pub xsi_type: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    /// "scsi0-1": the controller's bus and number, and the unit (vSphere's "SCSI (0:1)"):
    /// stable for the VM's life, and a valid disk key in the store (which takes no ':').
    pub key: String,
    pub device_key: i64,
    pub controller_key: i64,
    pub unit: i64,
    pub bus: &'static str,
    pub size: u64,
    /// "[datastore] dir/name.vmdk"
    pub file: String,
    pub datastore: Option<MoRef>,
    /// The backing's vSphere type ("VirtualDiskFlatVer2BackingInfo").
    pub backing: String,
    pub thin: bool,
    pub change_id: Option<String>,
}

impl Disk {
    /// The datastore's name and the path inside it of the disk's descriptor.
    pub fn datastore_path(&self) -> Option<(&str, &str)> {
        let rest = self.file.strip_prefix('[')?;
        let (ds, path) = rest.split_once(']')?;
        Some((ds, path.trim_start()))
    }

    /// Why the HTTPS datastore transport cannot read this disk's data as a flat file, if it
    /// cannot: a raw device mapping, a sparse or delta disk (another snapshot's).
    pub fn not_flat(&self) -> Option<String> {
        if self.backing != "VirtualDiskFlatVer2BackingInfo" {
            return Some(format!("its backing is a {}, not a flat VMDK", self.backing));
        }
        let (_, path) = self.datastore_path()?;
        let stem = path.strip_suffix(".vmdk").unwrap_or(path);
        let delta = stem.rsplit_once('-').is_some_and(|(_, n)| n.len() == 6 && n.bytes().all(|b| b.is_ascii_digit()));
        delta.then(|| format!("{path} is a snapshot's delta disk (the VM has other snapshots)"))
    }

    /// The flat extent's path inside the datastore ("dir/name-flat.vmdk").
    pub fn flat_path(&self) -> Option<String> {
        let (_, path) = self.datastore_path()?;
        Some(format!("{}-flat.vmdk", path.strip_suffix(".vmdk").unwrap_or(path)))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nic {
    pub device_key: i64,
    /// "vmxnet3", "e1000e", "e1000", …
    pub model: String,
    pub xsi_type: String,
    pub mac: Option<String>,
    /// The port group's name (a standard network), or its key (a distributed one).
    pub network_name: Option<String>,
    pub network: Option<MoRef>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmConfig {
    pub name: String,
    pub uuid: String,
    pub instance_uuid: String,
    pub guest_id: String,
    pub guest_name: String,
    pub firmware: String,
    pub cpus: u32,
    pub cores_per_socket: u32,
    pub memory_mib: u64,
    pub change_tracking: bool,
    pub annotation: String,
    pub controllers: Vec<Controller>,
    pub disks: Vec<Disk>,
    pub nics: Vec<Nic>,
}

pub fn controller_bus(xsi_type: &str) -> Option<&'static str> {
    Some(match xsi_type {
        "ParaVirtualSCSIController"
        | "VirtualLsiLogicController"
        | "VirtualLsiLogicSASController"
        | "VirtualBusLogicController" => "scsi",
        "VirtualAHCIController" => "sata",
        "VirtualNVMEController" => "nvme",
        "VirtualIDEController" => "ide",
        _ => return None,
    })
}

/// The NIC model's short name for a vSphere NIC type.
pub fn nic_model(xsi_type: &str) -> String {
    match xsi_type {
        "VirtualVmxnet3" => "vmxnet3".into(),
        "VirtualVmxnet3Vrdma" => "vmxnet3vrdma".into(),
        "VirtualVmxnet2" => "vmxnet2".into(),
        "VirtualVmxnet" => "vmxnet".into(),
        "VirtualE1000e" => "e1000e".into(),
        "VirtualE1000" => "e1000".into(),
        "VirtualPCNet32" => "pcnet32".into(),
        "VirtualSriovEthernetCard" => "sriov".into(),
        other => other.trim_start_matches("Virtual").to_ascii_lowercase(),
    }
}

/// The vSphere NIC type for a model name, if vSphere has it.
pub fn nic_type(model: &str) -> Option<&'static str> {
    Some(match model {
        "vmxnet3" => "VirtualVmxnet3",
        "vmxnet2" => "VirtualVmxnet2",
        "e1000e" => "VirtualE1000e",
        "e1000" => "VirtualE1000",
        "pcnet32" => "VirtualPCNet32",
        _ => return None,
    })
}

/// Reads a configuration kept as a point's native text: the `config` value's source, whose
/// `xsi` prefix vCenter declares on the SOAP envelope rather than on the value itself (the
/// simulator declares it on each element): wrapped in an element that declares the prefixes.
pub fn parse_native(text: &str) -> Result<VmConfig, String> {
    let wrapped = format!(
        "<native xmlns=\"urn:vim25\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" \
         xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\">{text}</native>"
    );
    let el = super::xml::parse(&wrapped, &[])?;
    parse(el.children.first().ok_or("it is empty")?)
}

/// Reads a VirtualMachineConfigInfo (the `config` property's value).
pub fn parse(config: &El) -> Result<VmConfig, String> {
    let hw = config.child("hardware").ok_or("the configuration has no hardware")?;
    let mut c = VmConfig {
        name: config.text_of("name").unwrap_or_default().into(),
        uuid: config.text_of("uuid").unwrap_or_default().into(),
        instance_uuid: config.text_of("instanceUuid").unwrap_or_default().into(),
        guest_id: config.text_of("guestId").unwrap_or_default().into(),
        guest_name: config.text_of("guestFullName").unwrap_or_default().into(),
        firmware: config.text_of("firmware").unwrap_or("bios").into(),
        cpus: hw.u64_of("numCPU").unwrap_or(1) as u32,
        cores_per_socket: hw.u64_of("numCoresPerSocket").unwrap_or(1).max(1) as u32,
        memory_mib: hw.u64_of("memoryMB").unwrap_or(0),
        change_tracking: config.bool_of("changeTrackingEnabled").unwrap_or(false),
        annotation: config.text_of("annotation").unwrap_or_default().into(),
        ..VmConfig::default()
    };
    let devices: Vec<&El> = hw.children("device").collect();
    for d in &devices {
        let t = d.xsi_type.as_deref().unwrap_or_default();
        if let Some(bus) = controller_bus(t) {
            c.controllers.push(Controller {
                key: d.i64_of("key").ok_or("a controller has no key")?,
                bus,
                bus_number: d.i64_of("busNumber").unwrap_or(0),
                xsi_type: t.into(),
            });
        }
    }
    for d in &devices {
        let t = d.xsi_type.as_deref().unwrap_or_default();
        let key = d.i64_of("key").unwrap_or(0);
        if t == "VirtualDisk" {
            let controller_key = d.i64_of("controllerKey").unwrap_or(0);
            let unit = d.i64_of("unitNumber").unwrap_or(0);
            let ctl = c.controllers.iter().find(|k| k.key == controller_key);
            let (bus, bus_number) = ctl.map_or(("disk", 0), |k| (k.bus, k.bus_number));
            let size = match d.u64_of("capacityInBytes") {
                Some(b) if b > 0 => b,
                _ => d.u64_of("capacityInKB").unwrap_or(0) * 1024,
            };
            let backing = d.child("backing");
            c.disks.push(Disk {
                key: format!("{bus}{bus_number}-{unit}"),
                device_key: key,
                controller_key,
                unit,
                bus,
                size,
                file: backing.and_then(|b| b.text_of("fileName")).unwrap_or_default().into(),
                datastore: backing.and_then(|b| b.moref_of("datastore")),
                backing: backing.and_then(|b| b.xsi_type.clone()).unwrap_or_default(),
                thin: backing.and_then(|b| b.bool_of("thinProvisioned")).unwrap_or(false),
                change_id: backing.and_then(|b| b.text_of("changeId")).filter(|s| !s.is_empty()).map(str::to_string),
            });
        } else if d.child("macAddress").is_some() || d.child("addressType").is_some() {
            let backing = d.child("backing");
            let network_name = backing
                .and_then(|b| b.text_of("deviceName").map(str::to_string))
                .or_else(|| backing.and_then(|b| b.path("port.portgroupKey")).map(|k| k.text.clone()));
            c.nics.push(Nic {
                device_key: key,
                model: nic_model(t),
                xsi_type: t.into(),
                mac: d.text_of("macAddress").filter(|m| !m.is_empty()).map(str::to_string),
                network_name,
                network: backing.and_then(|b| b.moref_of("network")),
            });
        }
    }
    c.disks.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(c)
}

impl VmConfig {
    /// The neutral description, with `raw` (the configuration's source text) kept verbatim.
    /// `network_names` turns a NIC's network reference into the name people know.
    pub fn describe(&self, raw: Option<String>, network_name: &dyn Fn(&Nic) -> Option<String>) -> VmDescription {
        VmDescription {
            key: if self.instance_uuid.is_empty() { self.uuid.clone() } else { self.instance_uuid.clone() },
            name: self.name.clone(),
            platform: super::PLATFORM.into(),
            uuid: Some(self.uuid.clone()).filter(|u| !u.is_empty()),
            cpus: self.cpus,
            memory_mib: self.memory_mib,
            firmware: Some(self.firmware.clone()),
            guest_os: Some(if self.guest_name.is_empty() { self.guest_id.clone() } else { self.guest_name.clone() })
                .filter(|g| !g.is_empty()),
            disks: self
                .disks
                .iter()
                .map(|d| VmDisk { key: d.key.clone(), size: d.size, bus: Some(d.bus.into()) })
                .collect(),
            nics: self
                .nics
                .iter()
                .map(|n| VmNic { model: Some(n.model.clone()), mac: n.mac.clone(), network: network_name(n) })
                .collect(),
            native: raw.map(|text| NativeConfig { format: NATIVE_FORMAT.into(), text }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"<val xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="VirtualMachineConfigInfo">
      <changeVersion>1</changeVersion><name>web &amp; db</name><guestFullName>Debian GNU/Linux 12 (64-bit)</guestFullName>
      <uuid>4201-aa</uuid><instanceUuid>5001-bb</instanceUuid><guestId>debian12_64Guest</guestId>
      <changeTrackingEnabled>true</changeTrackingEnabled><firmware>efi</firmware>
      <hardware><numCPU>4</numCPU><numCoresPerSocket>2</numCoresPerSocket><memoryMB>8192</memoryMB>
        <device xsi:type="VirtualIDEController"><key>200</key><busNumber>0</busNumber></device>
        <device xsi:type="ParaVirtualSCSIController"><key>1000</key><busNumber>0</busNumber><device>2000</device></device>
        <device xsi:type="ParaVirtualSCSIController"><key>1001</key><busNumber>1</busNumber></device>
        <device xsi:type="VirtualDisk"><key>2001</key>
          <backing xsi:type="VirtualDiskFlatVer2BackingInfo"><fileName>[ds 1] web/web_1.vmdk</fileName>
            <datastore type="Datastore">datastore-12</datastore><thinProvisioned>true</thinProvisioned>
            <changeId>52 de/7</changeId></backing>
          <controllerKey>1001</controllerKey><unitNumber>3</unitNumber><capacityInKB>2048</capacityInKB></device>
        <device xsi:type="VirtualDisk"><key>2000</key>
          <backing xsi:type="VirtualDiskFlatVer2BackingInfo"><fileName>[ds 1] web/web-000002.vmdk</fileName></backing>
          <controllerKey>1000</controllerKey><unitNumber>0</unitNumber><capacityInKB>1</capacityInKB>
          <capacityInBytes>10737418240</capacityInBytes></device>
        <device xsi:type="VirtualVmxnet3"><key>4000</key>
          <backing xsi:type="VirtualEthernetCardNetworkBackingInfo"><deviceName>VM Network</deviceName>
            <network type="Network">network-7</network></backing><addressType>assigned</addressType>
          <macAddress>00:50:56:aa:bb:cc</macAddress></device>
        <device xsi:type="VirtualE1000e"><key>4001</key>
          <backing xsi:type="VirtualEthernetCardDistributedVirtualPortBackingInfo"><port><switchUuid>50 1</switchUuid>
          <portgroupKey>dvportgroup-9</portgroupKey></port></backing><addressType>generated</addressType></device>
      </hardware></val>"#;

    #[test]
    fn a_configuration_becomes_disks_nics_and_a_description() {
        let el = super::super::xml::parse(CONFIG, &["val"]).unwrap();
        let c = parse(&el).unwrap();
        assert_eq!((c.name.as_str(), c.cpus, c.cores_per_socket, c.memory_mib), ("web & db", 4, 2, 8192));
        assert!(c.change_tracking && c.firmware == "efi");
        let keys: Vec<&str> = c.disks.iter().map(|d| d.key.as_str()).collect();
        assert_eq!(keys, ["scsi0-0", "scsi1-3"]);
        assert_eq!(c.disks[0].size, 10 << 30, "capacityInBytes wins");
        assert_eq!(c.disks[1].size, 2 << 20, "else capacityInKB");
        assert_eq!(c.disks[1].datastore_path(), Some(("ds 1", "web/web_1.vmdk")));
        assert_eq!(c.disks[1].flat_path().as_deref(), Some("web/web_1-flat.vmdk"));
        assert_eq!(c.disks[1].change_id.as_deref(), Some("52 de/7"));
        assert!(c.disks[1].not_flat().is_none());
        assert!(c.disks[0].not_flat().unwrap().contains("delta"), "a -00000N disk is a snapshot's delta");
        assert_eq!(c.nics.len(), 2);
        assert_eq!((c.nics[0].model.as_str(), c.nics[0].mac.as_deref()), ("vmxnet3", Some("00:50:56:aa:bb:cc")));
        assert_eq!(c.nics[1].network_name.as_deref(), Some("dvportgroup-9"));
        let d = c.describe(el.raw.clone(), &|n| n.network_name.clone());
        assert_eq!((d.key.as_str(), d.platform.as_str()), ("5001-bb", "vmware"));
        assert_eq!(d.disks[1].bus.as_deref(), Some("scsi"));
        assert!(d.native.unwrap().text.contains("debian12_64Guest"));
    }

    #[test]
    fn a_native_configuration_parses_without_the_envelope_that_declared_its_prefixes() {
        // As vCenter sends it: xsi declared on the SOAP envelope, not on the value.
        let bare = CONFIG.replacen(" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\"", "", 1);
        assert!(!bare.contains("xmlns:xsi"));
        let c = parse_native(&bare).unwrap();
        assert_eq!((c.disks.len(), c.controllers.len(), c.nics.len()), (2, 3, 2));
        assert_eq!(c.controllers[1].xsi_type, "ParaVirtualSCSIController");
        assert!(parse_native("<val><hardware/></val>").is_ok());
        assert!(parse_native("<val").is_err());
    }

    #[test]
    fn odd_configurations_do_not_panic() {
        for text in
            ["<val/>", "<val><hardware/></val>", "<val><hardware><device><key>x</key></device></hardware></val>"]
        {
            let el = super::super::xml::parse(text, &[]).unwrap();
            let _ = parse(&el);
        }
    }
}
