//! VMware vSphere (vCenter or a standalone ESXi host) through its Web Services API: inventory
//! from the PropertyCollector, the neutral description with the VM's configuration kept
//! verbatim, backups from a snapshot with changed areas from CBT (QueryChangedDiskAreas), and
//! restores as new VMs. Disk data moves over the HTTPS datastore transport (the host's /folder
//! service: byte-range reads of the snapshot's flat disks, uploads for restores), which needs no
//! proprietary library.

mod backup;
pub mod config;
mod kind;
mod restore;
pub mod soap;
pub mod vddk;
pub mod xml;

pub use kind::KIND;

use crate::connector::*;
use crate::control::JobControl;
use config::VmConfig;
use soap::{ObjectContent, Soap, SoapError, TlsTrust};
use std::sync::Arc;
use vds_store::VmDescription;
use xml::{El, MoRef};

pub const PLATFORM: &str = "vmware";

/// A VM as the inventory lists it.
#[derive(Clone, Debug)]
pub(crate) struct VmRef {
    pub obj: MoRef,
    pub name: String,
    /// instanceUuid where vCenter gives one, else the BIOS uuid.
    pub uuid: String,
    pub powered_on: bool,
}

/// A datacenter: its inventory path (what /folder URLs call dcPath) and what it holds.
#[derive(Clone, Debug)]
pub(crate) struct Datacenter {
    pub path: String,
    pub vm_folder: Option<MoRef>,
    pub datastores: Vec<MoRef>,
}

#[derive(Clone, Debug)]
pub(crate) struct Datastore {
    pub obj: MoRef,
    pub name: String,
    pub capacity: u64,
    pub free: u64,
    pub accessible: bool,
    /// Hosts that mount it.
    pub hosts: Vec<MoRef>,
}

#[derive(Clone, Debug)]
pub(crate) struct Network {
    pub obj: MoRef,
    pub name: String,
    pub accessible: bool,
    /// A distributed port group's key and its switch's uuid.
    pub distributed: Option<(String, String)>,
}

/// Where VDDK is and which of its transport modes to try.
#[derive(Clone, Debug)]
pub struct VddkSettings {
    pub dir: std::path::PathBuf,
    /// "nbdssl:nbd", "hotadd:nbdssl", …
    pub modes: String,
}

/// A connection to vCenter or an ESXi host, logged in.
pub struct VmwareConnector {
    soap: Arc<Soap>,
    host: String,
    credentials: Credentials,
    /// VDDK for the data path; None: the HTTPS datastore transport.
    pub vddk: Option<VddkSettings>,
}

fn array(v: Option<&El>) -> Vec<MoRef> {
    v.map(|v| {
        v.children
            .iter()
            .map(|c| MoRef { kind: c.mo_type.clone().unwrap_or_default(), value: c.text.clone() })
            .collect()
    })
    .unwrap_or_default()
}

impl VmwareConnector {
    /// Connects to `host` and logs in; every failure says which: unreachable, the certificate,
    /// the credentials.
    pub fn open(host: &str, trust: &TlsTrust, credentials: &Credentials) -> Result<VmwareConnector, ConnectorError> {
        let soap = Soap::connect(host, trust, credentials).map_err(|e| Self::unreachable(host, e))?;
        Ok(VmwareConnector { soap: Arc::new(soap), host: host.into(), credentials: credentials.clone(), vddk: None })
    }

    /// Connects VDDK to `vm` (its snapshot's disks when `snapshot` is given) in the configured
    /// modes, SAN first when asked for a LAN-free backup and the modes allow it.
    pub(crate) fn vddk_connect(
        &self,
        vm: &MoRef,
        snapshot: Option<&MoRef>,
        read_only: bool,
        lan_free: bool,
    ) -> Result<vddk::Connection, String> {
        let v = self.vddk.as_ref().ok_or("VDDK is not configured")?;
        let lib = vddk::library(&v.dir)?;
        let (server, port) = split_host(&self.host);
        let thumbprint = self.soap.seen_thumbprints().map(|t| t.sha1).unwrap_or_default();
        let mut modes: Vec<&str> = v.modes.split(':').collect();
        if lan_free {
            modes.sort_by_key(|m| *m != "san");
        }
        if !read_only {
            modes.retain(|m| *m != "san");
            if modes.is_empty() {
                modes = vec!["nbdssl", "nbd"];
            }
        }
        let target = vddk::Target {
            server,
            port,
            thumbprint,
            user: self.credentials.username.clone(),
            password: self.credentials.password.clone(),
            vm: vm.value.clone(),
        };
        lib.connect(&target, read_only, snapshot.map(|s| s.value.as_str()), &modes.join(":"))
    }

    fn unreachable(host: &str, e: SoapError) -> ConnectorError {
        let cause = match &e {
            SoapError::Fault { kind, .. } if kind == "InvalidLogin" => {
                format!("the host refused the user name or password ({e})")
            }
            _ => e.to_string(),
        };
        ConnectorError::Unreachable { platform: PLATFORM, target: host.into(), cause }
    }

    fn failed(vm: &str, action: &str, cause: impl std::fmt::Display) -> ConnectorError {
        ConnectorError::Failed { platform: PLATFORM, vm: vm.into(), action: action.into(), cause: cause.to_string() }
    }

    /// An inventory read failed: the host's words.
    pub(super) fn inv(&self, what: &str) -> impl Fn(SoapError) -> ConnectorError + '_ {
        let what = what.to_string();
        move |e| ConnectorError::Unreachable {
            platform: PLATFORM,
            target: self.host.clone(),
            cause: format!("reading {what}: {e}"),
        }
    }

    pub(crate) fn vms(&self) -> Result<Vec<VmRef>, ConnectorError> {
        let objs = self
            .soap
            .retrieve_all(
                "VirtualMachine",
                &["name", "config.instanceUuid", "config.uuid", "config.template", "runtime.powerState"],
            )
            .map_err(self.inv("the VMs"))?;
        let mut vms: Vec<VmRef> = objs
            .into_iter()
            .filter(|o| o.text("config.template") != Some("true"))
            .map(|o| VmRef {
                name: o.text("name").unwrap_or_default().into(),
                uuid: o
                    .text("config.instanceUuid")
                    .filter(|u| !u.is_empty())
                    .or(o.text("config.uuid"))
                    .unwrap_or_default()
                    .into(),
                powered_on: o.text("runtime.powerState") == Some("poweredOn"),
                obj: o.obj,
            })
            .collect();
        vms.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(vms)
    }

    /// The VM with this name, instance uuid or managed object id.
    pub(crate) fn vm(&self, vm: &str) -> Result<VmRef, ConnectorError> {
        let all = self.vms()?;
        let mut named = all.iter().filter(|v| v.name == vm || v.uuid == vm || v.obj.value == vm);
        match (named.next(), named.next()) {
            (Some(v), None) => Ok(v.clone()),
            (None, _) => Err(ConnectorError::NoSuchVm { platform: PLATFORM, vm: vm.into() }),
            (Some(_), Some(_)) => Err(Self::failed(
                vm,
                "finding the VM",
                "several VMs have this name: give its instance UUID (the inventory lists it)",
            )),
        }
    }

    /// The VM's configuration, read and with its source text.
    pub(crate) fn config(&self, vm: &VmRef) -> Result<(VmConfig, El), ConnectorError> {
        let o = self.soap.retrieve_one(&vm.obj, &["config"], &["val"]).map_err(|e| match e.fault_kind() {
            Some("ManagedObjectNotFound") => ConnectorError::NoSuchVm { platform: PLATFORM, vm: vm.name.clone() },
            _ => Self::failed(&vm.name, "reading its configuration", e),
        })?;
        let el = o.props.get("config").cloned().ok_or_else(|| {
            Self::failed(&vm.name, "reading its configuration", "vSphere gave none (is the VM inaccessible?)")
        })?;
        let c = config::parse(&el).map_err(|e| Self::failed(&vm.name, "reading its configuration", e))?;
        Ok((c, el))
    }

    pub(crate) fn datacenters(&self) -> Result<Vec<Datacenter>, ConnectorError> {
        let folders = self.soap.retrieve_all("Folder", &["name", "parent"]).map_err(self.inv("the folders"))?;
        let dcs = self
            .soap
            .retrieve_all("Datacenter", &["name", "parent", "vmFolder", "datastore"])
            .map_err(self.inv("the datacenters"))?;
        let root = &self.soap.content.root_folder;
        let path_of = |o: &ObjectContent| {
            let mut parts = vec![o.text("name").unwrap_or_default().to_string()];
            let mut parent = o.props.get("parent").map(|p| MoRef::new("Folder", &p.text));
            // A datacenter sits in folders under the root; the chain is short and finite, but
            // a cycle in a broken reply must not loop forever.
            for _ in 0..64 {
                match parent {
                    Some(p) if p.value != root.value => {
                        let Some(f) = folders.iter().find(|f| f.obj.value == p.value) else { break };
                        parts.push(f.text("name").unwrap_or_default().to_string());
                        parent = f.props.get("parent").map(|p| MoRef::new("Folder", &p.text));
                    }
                    _ => break,
                }
            }
            parts.reverse();
            parts.join("/")
        };
        Ok(dcs
            .iter()
            .map(|o| Datacenter {
                path: path_of(o),
                vm_folder: o.props.get("vmFolder").map(|v| MoRef::new("Folder", &v.text)),
                datastores: array(o.props.get("datastore")),
            })
            .collect())
    }

    pub(crate) fn datastores(&self) -> Result<Vec<Datastore>, ConnectorError> {
        let objs = self
            .soap
            .retrieve_all("Datastore", &["name", "summary.capacity", "summary.freeSpace", "summary.accessible", "host"])
            .map_err(self.inv("the datastores"))?;
        Ok(objs
            .into_iter()
            .map(|o| Datastore {
                name: o.text("name").unwrap_or_default().into(),
                capacity: o.text("summary.capacity").and_then(|t| t.parse().ok()).unwrap_or(0),
                free: o.text("summary.freeSpace").and_then(|t| t.parse().ok()).unwrap_or(0),
                accessible: o.text("summary.accessible") != Some("false"),
                hosts: o
                    .props
                    .get("host")
                    .map(|h| h.children.iter().filter_map(|m| m.moref_of("key")).collect())
                    .unwrap_or_default(),
                obj: o.obj,
            })
            .collect())
    }

    pub(crate) fn networks(&self) -> Result<Vec<Network>, ConnectorError> {
        let objs =
            self.soap.retrieve_all("Network", &["name", "summary.accessible"]).map_err(self.inv("the networks"))?;
        let pgs: Vec<&MoRef> =
            objs.iter().map(|o| &o.obj).filter(|o| o.kind == "DistributedVirtualPortgroup").collect();
        let mut switch_of = std::collections::BTreeMap::new();
        if !pgs.is_empty() {
            let info = self
                .soap
                .retrieve_objects("DistributedVirtualPortgroup", &pgs, &["key", "config.distributedVirtualSwitch"], &[])
                .map_err(self.inv("the distributed port groups"))?;
            let switches: Vec<MoRef> = info
                .iter()
                .filter_map(|o| o.props.get("config.distributedVirtualSwitch"))
                .map(|v| MoRef::new(v.mo_type.as_deref().unwrap_or("VmwareDistributedVirtualSwitch"), &v.text))
                .collect();
            let refs: Vec<&MoRef> = switches.iter().collect();
            let uuids = if refs.is_empty() {
                Vec::new()
            } else {
                self.soap
                    .retrieve_objects("DistributedVirtualSwitch", &refs, &["uuid"], &[])
                    .map_err(self.inv("the distributed switches"))?
            };
            for o in &info {
                let sw = o.props.get("config.distributedVirtualSwitch").map(|v| v.text.clone()).unwrap_or_default();
                let uuid = uuids.iter().find(|u| u.obj.value == sw).and_then(|u| u.text("uuid")).unwrap_or_default();
                switch_of.insert(o.obj.value.clone(), (o.text("key").unwrap_or(&o.obj.value).to_string(), uuid.into()));
            }
        }
        Ok(objs
            .into_iter()
            .map(|o| Network {
                name: o.text("name").unwrap_or_default().into(),
                accessible: o.text("summary.accessible") != Some("false"),
                distributed: switch_of.get(&o.obj.value).cloned(),
                obj: o.obj,
            })
            .collect())
    }

    /// A NIC's network as people name it.
    fn network_namer(networks: &[Network]) -> impl Fn(&config::Nic) -> Option<String> + '_ {
        move |n: &config::Nic| {
            let by_ref = n.network.as_ref().and_then(|r| networks.iter().find(|x| x.obj.value == r.value));
            let by_key = n
                .network_name
                .as_ref()
                .and_then(|k| networks.iter().find(|x| x.distributed.as_ref().is_some_and(|(key, _)| key == k)));
            by_ref.or(by_key).map(|x| x.name.clone()).or_else(|| n.network_name.clone())
        }
    }

    /// The datacenter path and datastore name of a disk's file, for its /folder URL.
    pub(crate) fn disk_location(
        dcs: &[Datacenter],
        stores: &[Datastore],
        disk: &config::Disk,
    ) -> Result<(String, String, String), String> {
        let (ds_name, _) = disk.datastore_path().ok_or_else(|| format!("{:?} is not a datastore path", disk.file))?;
        let store = match &disk.datastore {
            Some(r) => stores.iter().find(|s| s.obj.value == r.value),
            None => stores.iter().find(|s| s.name == ds_name),
        }
        .ok_or_else(|| format!("its datastore {ds_name:?} is not in the inventory"))?;
        let dc = dcs
            .iter()
            .find(|d| d.datastores.iter().any(|s| s.value == store.obj.value))
            .ok_or_else(|| format!("no datacenter holds datastore {ds_name:?}"))?;
        let flat = disk.flat_path().ok_or_else(|| format!("{:?} is not a datastore path", disk.file))?;
        Ok((dc.path.clone(), store.name.clone(), flat))
    }
}

/// "host:port" (or "[v6]:port", or just a host) as VDDK takes them: name and port (443).
fn split_host(host: &str) -> (String, u16) {
    if let Some(rest) = host.strip_prefix('[') {
        if let Some((h, p)) = rest.split_once(']') {
            return (h.to_string(), p.trim_start_matches(':').parse().unwrap_or(443));
        }
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h.to_string(), p.parse().unwrap_or(443)),
        _ => (host.to_string(), 443),
    }
}

impl Connector for VmwareConnector {
    fn platform(&self) -> &'static str {
        PLATFORM
    }

    fn test_connection(&self) -> Result<String, ConnectorError> {
        let c = &self.soap.content;
        let vms = self.vms()?;
        let print = self
            .soap
            .seen_thumbprints()
            .map(|t| format!("; certificate SHA-256 thumbprint {} (SHA-1 {})", t.sha256, t.sha1))
            .unwrap_or_default();
        let what = if c.api_type == "HostAgent" { "ESXi host" } else { "vCenter" };
        let data = match &self.vddk {
            None => "; data over HTTPS (datastore /folder)".to_string(),
            Some(v) => {
                let lib = vddk::library(&v.dir).map_err(|cause| ConnectorError::Unreachable {
                    platform: PLATFORM,
                    target: format!("VDDK in {}", v.dir.display()),
                    cause,
                })?;
                let offered = lib.modes().map(|m| format!(", the library offers {m}")).unwrap_or_default();
                format!("; data through VDDK {} (modes {}{offered})", lib.path.display(), v.modes)
            }
        };
        Ok(format!("{} ({what}, API {}) at {}: {} VMs{print}{data}", c.full_name, c.api_version, self.host, vms.len()))
    }

    fn list_vms(&self) -> Result<Vec<VmSummary>, ConnectorError> {
        Ok(self.vms()?.into_iter().map(|v| VmSummary { name: v.name, uuid: v.uuid, running: v.powered_on }).collect())
    }

    fn find_vm(&self, vm: &str) -> Result<VmSummary, ConnectorError> {
        let v = self.vm(vm)?;
        Ok(VmSummary { name: v.name, uuid: v.uuid, running: v.powered_on })
    }

    fn check_restore(&self, restore: RestoreCheck<'_>) -> Result<(), CheckError> {
        restore::check(self, restore)
    }

    fn inventory(&self) -> Result<Inventory, ConnectorError> {
        let hosts = self
            .soap
            .retrieve_all(
                "HostSystem",
                &[
                    "name",
                    "summary.config.product.fullName",
                    "summary.hardware.numCpuThreads",
                    "summary.hardware.memorySize",
                ],
            )
            .map_err(self.inv("the hosts"))?;
        Ok(Inventory {
            hosts: hosts
                .iter()
                .map(|h| HostInfo {
                    name: h.text("name").unwrap_or_default().into(),
                    software: h.text("summary.config.product.fullName").unwrap_or_default().into(),
                    cpus: h.text("summary.hardware.numCpuThreads").and_then(|t| t.parse().ok()).unwrap_or(0),
                    memory_mib: h.text("summary.hardware.memorySize").and_then(|t| t.parse::<u64>().ok()).unwrap_or(0)
                        >> 20,
                })
                .collect(),
            vms: self.list_vms()?,
            networks: self
                .networks()?
                .into_iter()
                .map(|n| NetworkInfo { name: n.name, active: n.accessible })
                .collect(),
            storage: self
                .datastores()?
                .into_iter()
                .map(|s| StorageInfo { name: s.name, active: s.accessible, capacity: s.capacity, available: s.free })
                .collect(),
        })
    }

    fn describe(&self, vm: &str) -> Result<VmDescription, ConnectorError> {
        let v = self.vm(vm)?;
        let (c, el) = self.config(&v)?;
        let networks = self.networks()?;
        let namer = Self::network_namer(&networks);
        let d = c.describe(el.raw.clone(), &namer);
        Ok(d)
    }

    fn begin_backup(&self, vm: &str, plan: &BackupPlan) -> Result<Box<dyn BackupSession>, ConnectorError> {
        backup::begin(self, vm, plan)
    }

    fn clean_up_killed_backup(&self, vm: &str) -> Result<Option<String>, ConnectorError> {
        let v = self.vm(vm)?;
        backup::remove_our_snapshots(self, &v)
    }

    fn clean_up_killed_restore(&self, vm: &str) -> Result<Option<String>, ConnectorError> {
        restore::clean_up_killed(self, vm)
    }

    fn restore_as_new_vm(
        &self,
        source: &VmDescription,
        disks: &[RestoreDisk<'_>],
        spec: &NewVmSpec,
        control: &JobControl,
    ) -> Result<String, ConnectorError> {
        restore::as_new_vm(self, source, disks, spec, control)
    }

    fn restore_in_place(
        &self,
        vm: &str,
        disks: &[RestoreDisk<'_>],
        control: &JobControl,
    ) -> Result<(), ConnectorError> {
        restore::in_place(self, vm, disks, control)
    }

    fn start_exported_vm(
        &self,
        _source: &VmDescription,
        _disks: &[ExportedDisk],
        _spec: &NewVmSpec,
    ) -> Result<String, ConnectorError> {
        Err(ConnectorError::Unsupported {
            platform: PLATFORM,
            what: "instant recovery yet (mounting the appliance's NFS export as a datastore is not built)".into(),
        })
    }

    fn remove_exported_vm(&self, _name: &str) -> Result<(), ConnectorError> {
        Err(ConnectorError::Unsupported { platform: PLATFORM, what: "instant recovery yet".into() })
    }

    fn migrate_exported_vm(
        &self,
        _name: &str,
        _disks: &[ExportedDisk],
        _storage: &str,
        _format: &str,
        _control: &JobControl,
    ) -> Result<Vec<String>, ConnectorError> {
        Err(ConnectorError::Unsupported { platform: PLATFORM, what: "instant recovery yet".into() })
    }
}
