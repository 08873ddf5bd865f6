//! Restores onto vSphere: a new VM made with CreateVM_Task from the point's description (the
//! original's controllers, disk layout, NIC models, guest OS and firmware where the point came
//! from vSphere, VMware's usual devices otherwise), its disks uploaded over the HTTPS datastore
//! transport; or the disks of an existing, powered-off VM overwritten. A new VM carries a mark
//! until its disks are written, so one a killed restore left is known and removed.

use super::config::{self, VmConfig};
use super::soap::SoapError;
use super::xml::{esc, MoRef};
use super::{Datacenter, Datastore, Network, VmwareConnector};
use crate::connector::*;
use crate::control::{JobControl, Throttle};
use std::sync::mpsc;
use std::time::Duration;
use vds_store::{DiskReader, VmDescription};

/// The annotation a new VM carries while its disks are written.
pub const RESTORING_MARK: &str = "Holdfast: restore in progress (removed if the restore fails)";
const TASK_WAIT: Duration = Duration::from_secs(3600);

fn datastore<'a>(stores: &'a [Datastore], name: &str) -> Result<&'a Datastore, CheckError> {
    stores.iter().find(|s| s.name == name).ok_or_else(|| {
        let names: Vec<&str> = stores.iter().map(|s| s.name.as_str()).collect();
        CheckError::invalid("storage", format!("there is no datastore {name:?} (there are: {})", names.join(", ")))
    })
}

/// The host a new VM on datastore `ds` runs on: `want` (by name) when it mounts the datastore,
/// else the first host that does.
fn host_for(conn: &VmwareConnector, ds: &Datastore, want: Option<&str>) -> Result<MoRef, CheckError> {
    let Some(want) = want else {
        return ds
            .hosts
            .first()
            .cloned()
            .ok_or_else(|| CheckError::invalid("storage", format!("no host mounts datastore {:?}", ds.name)));
    };
    let hosts = conn.soap.retrieve_all("HostSystem", &["name"]).map_err(conn.inv("the hosts"))?;
    let named = |h: &MoRef| hosts.iter().find(|o| o.obj.value == h.value).and_then(|o| o.text("name"));
    // A name may repeat across datacenters: one that mounts the datastore first.
    let named_want = || hosts.iter().filter(|o| o.text("name") == Some(want));
    let mounts = |o: &&super::soap::ObjectContent| ds.hosts.iter().any(|h| h.value == o.obj.value);
    let Some(found) = named_want().find(mounts).or_else(|| named_want().next()) else {
        let names: Vec<&str> = hosts.iter().filter_map(|o| o.text("name")).collect();
        return Err(CheckError::invalid(
            "host",
            format!("there is no host {want:?} (there are: {})", names.join(", ")),
        ));
    };
    if !ds.hosts.iter().any(|h| h.value == found.obj.value) {
        let mounting: Vec<&str> = ds.hosts.iter().filter_map(named).collect();
        return Err(CheckError::invalid(
            "host",
            format!(
                "host {want:?} does not mount datastore {:?} (hosts that do: {})",
                ds.name,
                if mounting.is_empty() { "none".to_string() } else { mounting.join(", ") }
            ),
        ));
    }
    Ok(found.obj.clone())
}

fn network<'a>(networks: &'a [Network], name: &str, field: &str) -> Result<&'a Network, CheckError> {
    networks.iter().find(|n| n.name == name).ok_or_else(|| {
        let names: Vec<&str> = networks.iter().map(|n| n.name.as_str()).collect();
        CheckError::invalid(field, format!("there is no network {name:?} (there are: {})", names.join(", ")))
    })
}

pub fn check(conn: &VmwareConnector, restore: RestoreCheck<'_>) -> Result<(), CheckError> {
    match restore {
        RestoreCheck::NewVm(spec) => {
            if spec.name.trim().is_empty() || spec.name.len() > 80 {
                return Err(CheckError::invalid("name", "a vSphere VM name has 1 to 80 characters"));
            }
            if conn.vms()?.iter().any(|v| v.name == spec.name) {
                return Err(CheckError::conflict("name", format!("a VM named {:?} exists already", spec.name)));
            }
            let stores = conn.datastores()?;
            let ds = datastore(&stores, &spec.storage)?;
            if !ds.accessible {
                return Err(CheckError::invalid("storage", format!("datastore {:?} is not accessible", ds.name)));
            }
            host_for(conn, ds, spec.host.as_deref())?;
            if let Some(n) = &spec.network {
                network(&conn.networks()?, n, "network")?;
            }
            if let Some(f) = spec.disk_format.as_deref().filter(|f| *f != "thin") {
                return Err(CheckError::invalid(
                    "disk_format",
                    format!("vSphere restores write thin VMDKs, not {f:?}"),
                ));
            }
            Ok(())
        }
        RestoreCheck::InPlace { vm } => {
            let v = conn.vm(vm)?;
            if v.powered_on {
                return Err(CheckError::conflict("vm", format!("{} is powered on: power it off first", v.name)));
            }
            Ok(())
        }
    }
}

/// Where a new VM goes: its datastore's datacenter folder, the chosen host (or the first that
/// mounts the datastore) and that host's resource pool.
struct Placement {
    dc: Datacenter,
    folder: MoRef,
    host: MoRef,
    pool: MoRef,
}

fn placement(conn: &VmwareConnector, ds: &Datastore, host: Option<&str>) -> Result<Placement, String> {
    let dc = conn
        .datacenters()
        .map_err(|e| e.to_string())?
        .into_iter()
        .find(|d| d.datastores.iter().any(|s| s.value == ds.obj.value))
        .ok_or_else(|| format!("no datacenter holds datastore {:?}", ds.name))?;
    let folder = dc.vm_folder.clone().ok_or("the datacenter has no VM folder")?;
    let host = host_for(conn, ds, host).map_err(|e| e.to_string())?;
    let parent = conn.soap.retrieve_one(&host, &["parent"], &[]).map_err(|e| e.to_string())?;
    let parent = parent.props.get("parent").ok_or("the host has no compute resource")?;
    let compute = MoRef::new(parent.mo_type.as_deref().unwrap_or("ComputeResource"), &parent.text);
    let pool = conn.soap.retrieve_one(&compute, &["resourcePool"], &[]).map_err(|e| e.to_string())?;
    let pool = pool.props.get("resourcePool").ok_or("the host's cluster has no resource pool")?;
    Ok(Placement { dc, folder, host, pool: MoRef::new("ResourcePool", &pool.text) })
}

/// The layout a new VM gets: the original's when the point came from vSphere, else vSphere's
/// usual devices (paravirtual SCSI, VMXNET3).
fn layout(source: &VmDescription) -> Result<Option<VmConfig>, String> {
    let Some(native) = source.native.as_ref().filter(|n| n.format == config::NATIVE_FORMAT) else { return Ok(None) };
    config::parse_native(&native.text).map(Some).map_err(|e| format!("the point's vSphere configuration: {e}"))
}

fn controller_xml(key: i64, xsi_type: &str, bus_number: i64) -> String {
    let shared = if xsi_type.ends_with("SCSIController") || xsi_type.contains("Logic") {
        "<sharedBus>noSharing</sharedBus>"
    } else {
        ""
    };
    format!(
        "<deviceChange><operation>add</operation><device xsi:type=\"{}\"><key>{key}</key><busNumber>{bus_number}</busNumber>\
         {shared}</device></deviceChange>",
        esc(xsi_type)
    )
}

/// The controller for a neutral bus word (a converted point's: pvscsi, lsilogic, sata, nvme, ide;
/// "scsi" or none: paravirtual SCSI).
fn controller_type(bus: Option<&str>) -> &'static str {
    match bus {
        Some("lsilogic") => "VirtualLsiLogicController",
        Some("sata") => "VirtualAHCIController",
        Some("nvme") => "VirtualNVMEController",
        Some("ide") => "VirtualIDEController",
        _ => "ParaVirtualSCSIController",
    }
}

/// vSphere's guest OS id for a point from elsewhere, by what its description says.
fn guest_id(source: &VmDescription) -> &'static str {
    match crate::convert::family(source.guest_os.as_deref()) {
        crate::convert::Family::Linux => "otherLinux64Guest",
        crate::convert::Family::Windows => "windows9Server64Guest",
        crate::convert::Family::Unknown => "otherGuest64",
    }
}

/// The CreateVM_Task configuration of the new VM.
fn new_vm_spec(
    source: &VmDescription,
    spec: &NewVmSpec,
    sizes: &[u64],
    networks: &[Network],
    ds: &Datastore,
) -> Result<(String, Vec<String>), String> {
    let native = layout(source)?;
    // Where each of the point's disks lands, as the new VM will name it ("scsi0-3").
    let mut planned = Vec::new();
    let mut devices = String::new();
    // Controllers: the original's (by type and bus number), or one paravirtual SCSI.
    let mut controllers: Vec<(String, i64, i64)> = Vec::new(); // (bus word+number, temp key, …)
    let mut disk_places: Vec<(i64, i64)> = Vec::new(); // (controller key, unit)
    for (i, d) in source.disks.iter().enumerate() {
        let orig = native.as_ref().and_then(|n| n.disks.iter().find(|x| x.key == d.key).map(|x| (n, x)));
        let (xsi, bus_number, unit) = match orig {
            Some((n, x)) => {
                let c = n.controllers.iter().find(|c| c.key == x.controller_key);
                let (t, b) =
                    c.map_or(("ParaVirtualSCSIController".to_string(), 0), |c| (c.xsi_type.clone(), c.bus_number));
                (t, b, x.unit)
            }
            // A point from elsewhere (converted): the bus its description names, one controller
            // per kind, units in order (SCSI skips 7, the controller's own).
            None => {
                let xsi = controller_type(d.bus.as_deref()).to_string();
                let n = source.disks[..i].iter().filter(|p| controller_type(p.bus.as_deref()) == xsi).count() as i64;
                let scsi = xsi.ends_with("SCSIController") || xsi.contains("Logic");
                (xsi, 0, if scsi && n >= 7 { n + 1 } else { n })
            }
        };
        let ide = xsi == "VirtualIDEController";
        planned.push(format!("{}{bus_number}-{unit}", config::controller_bus(&xsi).unwrap_or("scsi")));
        let name = format!("{xsi}/{bus_number}");
        let key = match controllers.iter().find(|(n, _, _)| *n == name) {
            Some((_, k, _)) => *k,
            // vSphere gives every VM its two IDE controllers (200, 201): disks go onto those.
            None if ide => 200 + bus_number,
            None => {
                let k = -100 - controllers.len() as i64;
                controllers.push((name, k, bus_number));
                devices += &controller_xml(k, &xsi, bus_number);
                k
            }
        };
        disk_places.push((key, unit));
    }
    for (i, ((ctl, unit), size)) in disk_places.iter().zip(sizes).enumerate() {
        devices += &format!(
            "<deviceChange><operation>add</operation><fileOperation>create</fileOperation><device xsi:type=\"VirtualDisk\">\
             <key>{}</key><backing xsi:type=\"VirtualDiskFlatVer2BackingInfo\"><fileName>[{}]</fileName>\
             <diskMode>persistent</diskMode><thinProvisioned>true</thinProvisioned></backing><controllerKey>{ctl}</controllerKey>\
             <unitNumber>{unit}</unitNumber><capacityInKB>{}</capacityInKB><capacityInBytes>{size}</capacityInBytes></device>\
             </deviceChange>",
            -1 - i as i64,
            esc(&ds.name),
            size.div_ceil(1024)
        );
    }
    for (i, nic) in source.nics.iter().enumerate() {
        let want =
            spec.network.as_deref().or(nic.network.as_deref()).ok_or_else(|| {
                format!("NIC {} had no network in the point: choose the network for the new VM", i + 1)
            })?;
        let net = network(networks, want, "network").map_err(|e| e.to_string())?;
        let xsi = nic.model.as_deref().and_then(config::nic_type).unwrap_or("VirtualVmxnet3");
        let backing = match &net.distributed {
            Some((key, uuid)) => format!(
                "<backing xsi:type=\"VirtualEthernetCardDistributedVirtualPortBackingInfo\"><port><switchUuid>{}</switchUuid>\
                 <portgroupKey>{}</portgroupKey></port></backing>",
                esc(uuid),
                esc(key)
            ),
            None => format!(
                "<backing xsi:type=\"VirtualEthernetCardNetworkBackingInfo\"><deviceName>{}</deviceName>{}</backing>",
                esc(&net.name),
                net.obj.arg("network")
            ),
        };
        let address = match (&nic.mac, spec.keep_macs) {
            (Some(mac), true) => format!("<addressType>manual</addressType><macAddress>{}</macAddress>", esc(mac)),
            _ => "<addressType>generated</addressType>".into(),
        };
        devices += &format!(
            "<deviceChange><operation>add</operation><device xsi:type=\"{xsi}\"><key>{}</key>{backing}<connectable>\
             <startConnected>true</startConnected><allowGuestControl>true</allowGuestControl><connected>false</connected>\
             </connectable>{address}</device></deviceChange>",
            -200 - i as i64
        );
    }
    let guest = native.as_ref().map(|n| n.guest_id.clone()).filter(|g| !g.is_empty());
    let guest = guest.unwrap_or_else(|| guest_id(source).to_string());
    let cpus = spec.cpus.unwrap_or(source.cpus).max(1);
    let cores = native.as_ref().map_or(1, |n| n.cores_per_socket).max(1);
    let cores = if cpus.is_multiple_of(cores) { cores } else { 1 };
    let memory = spec.memory_mib.unwrap_or(source.memory_mib).max(4);
    let firmware = if source.firmware.as_deref() == Some("efi") { "efi" } else { "bios" };
    let config = format!(
        "<name>{}</name><guestId>{}</guestId><annotation>{}</annotation><files><vmPathName>[{}]</vmPathName></files>\
         <numCPUs>{cpus}</numCPUs><numCoresPerSocket>{cores}</numCoresPerSocket><memoryMB>{memory}</memoryMB>{devices}\
         <firmware>{firmware}</firmware>",
        esc(&spec.name),
        esc(&guest),
        esc(RESTORING_MARK),
        esc(&ds.name)
    );
    Ok((config, planned))
}

/// A request body of `size` bytes fed from another thread, a buffer at a time. The feeder
/// ending early (a stop, a failed read) is an error, not the body's end: the HTTP client must
/// not send a short body the host would wait on for ever.
struct ChannelBody {
    rx: mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
    at: usize,
    sent: u64,
    size: u64,
}

impl std::io::Read for ChannelBody {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.buf.len() {
            match self.rx.recv() {
                Ok(b) => (self.buf, self.at) = (b, 0),
                Err(_) if self.sent >= self.size => return Ok(0),
                Err(_) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("the disk's data ended after {} of {} bytes", self.sent, self.size),
                    ))
                }
            }
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        self.sent += n as u64;
        Ok(n)
    }
}

/// Uploads a point's disk as the whole flat file at `url`, `size` bytes (the point's disk,
/// then zeros up to a larger size), under `control`'s limit, stop and progress.
fn upload(
    transfer: &super::soap::Transfer,
    url: &str,
    reader: &DiskReader,
    size: u64,
    control: &JobControl,
) -> Result<(), String> {
    let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(4);
    let body = ChannelBody { rx, buf: Vec::new(), at: 0, sent: 0, size };
    std::thread::scope(|s| {
        let producer = s.spawn(move || -> Result<(), String> {
            let map = reader.map();
            let es = map.extent_size as u64;
            let mut throttle = Throttle::default();
            for (i, id) in map.extents.iter().enumerate() {
                let len = map.extent_len(i as u64);
                throttle.admit(control, len).map_err(|e| e.to_string())?;
                let mut buf = vec![0u8; len];
                if !id.is_hole() {
                    reader.read_at(&mut buf, i as u64 * es).map_err(|e| e.to_string())?;
                }
                if tx.send(buf).is_err() {
                    return Ok(()); // the upload ended; its error says why
                }
                control.add_done(len as u64);
            }
            let mut rest = size - reader.size();
            while rest > 0 {
                let n = rest.min(4 << 20);
                if tx.send(vec![0u8; n as usize]).is_err() {
                    return Ok(());
                }
                rest -= n;
            }
            Ok(())
        });
        let sent = transfer.put(url, body, size);
        let produced = producer.join().unwrap_or_else(|_| Err("the reader thread panicked".into()));
        produced.and(sent)
    })
}

fn destroy(conn: &VmwareConnector, vm: &MoRef) -> Result<(), SoapError> {
    conn.soap
        .run_task(&format!("<Destroy_Task xmlns=\"urn:vim25\">{}</Destroy_Task>", vm.arg("_this")), TASK_WAIT)
        .map(|_| ())
}

pub fn as_new_vm(
    conn: &VmwareConnector,
    source: &VmDescription,
    disks: &[RestoreDisk<'_>],
    spec: &NewVmSpec,
    control: &JobControl,
) -> Result<String, ConnectorError> {
    let name = spec.name.as_str();
    let failed = |action: &str, e: &dyn std::fmt::Display| VmwareConnector::failed(name, action, e);
    check(conn, RestoreCheck::NewVm(spec)).map_err(|e| failed("checking the restore", &e))?;
    let point_disks: Vec<(&str, u64)> = source.disks.iter().map(|d| (d.key.as_str(), d.size)).collect();
    let sizes = restore_sizes(&point_disks, &spec.disk_sizes).map_err(|e| failed("sizing the disks", &e))?;
    let stores = conn.datastores()?;
    let ds = datastore(&stores, &spec.storage).map_err(|e| failed("choosing the datastore", &e))?;
    let networks = conn.networks()?;
    let place = placement(conn, ds, spec.host.as_deref()).map_err(|e| failed("placing the VM", &e))?;
    let (config, planned) =
        new_vm_spec(source, spec, &sizes, &networks, ds).map_err(|e| failed("describing the VM", &e))?;
    let created = conn
        .soap
        .run_task(
            &format!(
                "<CreateVM_Task xmlns=\"urn:vim25\">{}<config>{config}</config>{}{}</CreateVM_Task>",
                place.folder.arg("_this"),
                place.pool.arg("pool"),
                place.host.arg("host")
            ),
            TASK_WAIT,
        )
        .map_err(|e| {
            // A task whose end was not seen may still have made the VM: it carries our mark.
            if !matches!(e, SoapError::Fault { .. }) {
                let _ = clean_up_killed(conn, name);
            }
            failed("creating the VM", &e)
        })?
        .map(|r| MoRef::new("VirtualMachine", &r.text))
        .ok_or_else(|| failed("creating the VM", &"the task gave no VM"))?;
    // From here on a failure removes the VM with its files.
    let written = (|| -> Result<(), ConnectorError> {
        let vm = super::VmRef { obj: created.clone(), name: name.into(), uuid: String::new(), powered_on: false };
        let (made, _) = conn.config(&vm)?;
        let keys: Vec<(String, String)> =
            source.disks.iter().map(|d| d.key.clone()).zip(planned.iter().cloned()).collect();
        write_disks(conn, &created, &made, &place.dc, &stores, Some(&keys), disks, control)?;
        conn.soap
            .run_task(
                &format!(
                    "<ReconfigVM_Task xmlns=\"urn:vim25\">{}<spec><annotation>{}</annotation></spec></ReconfigVM_Task>",
                    created.arg("_this"),
                    esc(&format!("Restored by Holdfast from a restore point of {}", source.name))
                ),
                TASK_WAIT,
            )
            .map_err(|e| failed("marking the VM restored", &e))?;
        if spec.start {
            conn.soap
                .run_task(
                    &format!("<PowerOnVM_Task xmlns=\"urn:vim25\">{}</PowerOnVM_Task>", created.arg("_this")),
                    TASK_WAIT,
                )
                .map_err(|e| failed("powering the VM on", &e))?;
        }
        Ok(())
    })();
    match written {
        Ok(()) => Ok(name.to_string()),
        Err(e) => match destroy(conn, &created) {
            Ok(()) => Err(e),
            Err(d) => Err(failed("restoring", &format!("{e}; removing the half-made VM also failed: {d}"))),
        },
    }
}

/// Writes each of the point's disks over the same-keyed disk of `vm`'s configuration, through
/// VDDK where it is configured and connects (else whole files over HTTPS). `existing`: the VM's
/// own disks, whose holes must be zeroed (a new VM's disks read as zeros already).
#[allow(clippy::too_many_arguments)]
fn write_disks(
    conn: &VmwareConnector,
    vm_obj: &MoRef,
    vm: &VmConfig,
    dc: &Datacenter,
    stores: &[Datastore],
    planned: Option<&[(String, String)]>,
    disks: &[RestoreDisk<'_>],
    control: &JobControl,
) -> Result<(), ConnectorError> {
    // A new VM's disks (planned: the point's key and the new VM's); else the VM's own.
    let existing = planned.is_none();
    let failed = |action: &str, e: &dyn std::fmt::Display| VmwareConnector::failed(&vm.name, action, e);
    let vddk = match &conn.vddk {
        None => None,
        // SAN writes are not possible while CBT is on and suit thin disks badly: restores use
        // the configured network and hot-add modes only.
        Some(_) => match conn.vddk_connect(vm_obj, None, false, false) {
            Ok(c) => {
                if let Some(why) = &c.access {
                    control.warn(format!(
                        "vCenter was not asked to keep the VM in place while its disks are written ({why})"
                    ));
                }
                Some(std::sync::Arc::new(c))
            }
            Err(e) => {
                control.warn(format!("VDDK not used, writing over HTTPS instead: {e}"));
                None
            }
        },
    };
    // Each of the point's disks onto the disk planned for it (a new VM) or of its key.
    let targets: Vec<&config::Disk> = disks
        .iter()
        .map(|d| {
            let want = planned.map_or(Some(d.key.as_str()), |p| {
                p.iter().find(|(point, _)| *point == d.key).map(|(_, made)| made.as_str())
            });
            want.and_then(|w| vm.disks.iter().find(|x| x.key == w))
                .ok_or_else(|| failed("matching disks", &format!("it has no disk for the point's {}", d.key)))
        })
        .collect::<Result<_, _>>()?;
    for (d, t) in disks.iter().zip(&targets) {
        if t.size < d.reader.size() {
            return Err(failed(
                &format!("writing disk {}", t.key),
                &format!("it has {} bytes, the point's disk {} {} bytes", t.size, d.key, d.reader.size()),
            ));
        }
    }
    control.add_total(targets.iter().map(|d| d.size).sum());
    let transfer = conn.soap.transfer();
    for (d, target) in disks.iter().zip(targets) {
        if let Some(c) = &vddk {
            let mut disk =
                c.open(&target.file, false).map_err(|e| failed(&format!("opening disk {}", target.key), &e))?;
            // In place, where CBT still knows the point's change id: only what changed since.
            let since = match (&d.change_id, existing && vm.change_tracking) {
                (Some(id), true) => match super::backup::changed_areas(conn, vm_obj, None, target, id) {
                    Ok(areas) => Some(areas),
                    Err(e) => {
                        control.warn(format!(
                            "disk {}: CBT cannot say what changed since the point ({e}): writing it whole",
                            target.key
                        ));
                        None
                    }
                },
                _ => None,
            };
            let written = match since {
                Some(areas) => write_areas(&mut disk, d.reader, &areas, control),
                None => write_vddk(&mut disk, d.reader, control, existing),
            };
            written.map_err(|e| failed(&format!("writing disk {} through VDDK {}", target.key, disk.mode), &e))?;
            continue;
        }
        if let Some(why) = target.not_flat() {
            return Err(failed(
                &format!("writing disk {}", target.key),
                &format!("{why}: delete the VM's snapshots first"),
            ));
        }
        if target.size < d.reader.size() {
            return Err(failed(
                &format!("writing disk {}", target.key),
                &format!("it has {} bytes, the point's disk {} bytes", target.size, d.reader.size()),
            ));
        }
        let flat = target.flat_path().ok_or_else(|| failed("locating its disks", &target.file))?;
        let (ds, _) = target.datastore_path().ok_or_else(|| failed("locating its disks", &target.file))?;
        let ds = stores.iter().find(|s| s.name == ds).map(|s| s.name.clone()).unwrap_or_else(|| ds.to_string());
        let url = conn.soap.folder_url(&dc.path, &ds, &flat);
        upload(&transfer, &url, d.reader, target.size, control)
            .map_err(|e| failed(&format!("writing disk {} over HTTPS", target.key), &e))?;
    }
    Ok(())
}

/// Writes a point's disk through VDDK an extent at a time: data as it is, holes zeroed on an
/// existing disk and skipped on a new one (as are all-zero extents).
fn write_vddk(
    disk: &mut super::vddk::Disk,
    reader: &DiskReader,
    control: &JobControl,
    existing: bool,
) -> Result<(), String> {
    let map = reader.map();
    let es = map.extent_size as u64;
    let mut throttle = Throttle::default();
    let mut buf = vec![0u8; es as usize];
    for (i, id) in map.extents.iter().enumerate() {
        let len = map.extent_len(i as u64);
        let data = &mut buf[..len];
        throttle.admit(control, if id.is_hole() { 0 } else { len }).map_err(|e| e.to_string())?;
        if id.is_hole() {
            data.fill(0);
        } else {
            reader.read_at(data, i as u64 * es).map_err(|e| e.to_string())?;
        }
        if existing || data.iter().any(|&b| b != 0) {
            disk.write_at(i as u64 * es, data)?;
        }
        control.add_done(len as u64);
    }
    Ok(())
}

/// Writes only `areas` of a point's disk (widened to whole sectors), as they are in the point.
fn write_areas(
    disk: &mut super::vddk::Disk,
    reader: &DiskReader,
    areas: &[std::ops::Range<u64>],
    control: &JobControl,
) -> Result<(), String> {
    const PIECE: u64 = 4 << 20;
    let mut throttle = Throttle::default();
    for a in areas {
        let (mut at, end) = (a.start / 512 * 512, a.end.div_ceil(512).saturating_mul(512).min(reader.size()));
        while at < end {
            let n = PIECE.min(end - at);
            throttle.admit(control, n as usize).map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; n as usize];
            reader.read_at(&mut buf, at).map_err(|e| e.to_string())?;
            disk.write_at(at, &buf)?;
            control.add_done(n);
            at += n;
        }
    }
    // What CBT says is unchanged is already as the point has it: counted as done.
    let written: u64 = areas.iter().map(|a| a.end.min(reader.size()).saturating_sub(a.start / 512 * 512)).sum();
    control.add_done(reader.size().saturating_sub(written));
    Ok(())
}

pub fn in_place(
    conn: &VmwareConnector,
    vm: &str,
    disks: &[RestoreDisk<'_>],
    control: &JobControl,
) -> Result<(), ConnectorError> {
    let v = conn.vm(vm)?;
    if v.powered_on {
        return Err(VmwareConnector::failed(&v.name, "restoring in place", "it is powered on: power it off first"));
    }
    let (cfg, _) = conn.config(&v)?;
    for d in disks {
        match cfg.disks.iter().find(|x| x.key == d.key) {
            Some(x) if x.size == d.reader.size() => {}
            Some(x) => {
                return Err(VmwareConnector::failed(
                    &v.name,
                    "restoring in place",
                    format!(
                        "disk {} has {} bytes, the point's {}: restore as a new VM instead",
                        d.key,
                        x.size,
                        d.reader.size()
                    ),
                ))
            }
            None => {
                return Err(VmwareConnector::failed(&v.name, "restoring in place", format!("it has no disk {}", d.key)))
            }
        }
    }
    let dcs = conn.datacenters()?;
    let stores = conn.datastores()?;
    let first =
        cfg.disks.first().ok_or_else(|| VmwareConnector::failed(&v.name, "restoring in place", "it has no disks"))?;
    let (dc_path, _, _) = VmwareConnector::disk_location(&dcs, &stores, first)
        .map_err(|e| VmwareConnector::failed(&v.name, "locating its disks", e))?;
    let dc = dcs.into_iter().find(|d| d.path == dc_path).expect("the datacenter just found");
    let written = write_disks(conn, &v.obj, &cfg, &dc, &stores, None, disks, control);
    // CBT counted from ids older than what the disks now hold (over HTTPS it did not even see
    // the writes): restarting it makes every old change id unknown, so the next backup reads
    // whole disks instead of trusting them. Done whether the restore finished or not.
    if cfg.change_tracking {
        let reset = super::backup::reconfigure_cbt(conn, &v, false)
            .and_then(|()| super::backup::reconfigure_cbt(conn, &v, true));
        if let Err(e) = reset {
            let said = match &written {
                Ok(()) => "the disks are restored".to_string(),
                Err(w) => format!("the restore failed ({w})"),
            };
            return Err(VmwareConnector::failed(
                &v.name,
                "restarting change tracking after the restore",
                format!("{said}, but CBT could not be restarted ({e}): turn it off and on in vSphere before the next backup"),
            ));
        }
    }
    written
}

/// Removes a VM that a killed restore left half-made (it still carries the mark).
pub fn clean_up_killed(conn: &VmwareConnector, vm: &str) -> Result<Option<String>, ConnectorError> {
    let v = match conn.vm(vm) {
        Ok(v) => v,
        Err(ConnectorError::NoSuchVm { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let (cfg, _) = conn.config(&v)?;
    if cfg.annotation != RESTORING_MARK {
        return Ok(None);
    }
    destroy(conn, &v.obj).map_err(|e| VmwareConnector::failed(&v.name, "removing the half-restored VM", e))?;
    Ok(Some(format!("removed {}, which a killed restore had left half-made", v.name)))
}
