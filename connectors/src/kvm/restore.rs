//! Restore as a new VM through libvirt: volumes made in a storage pool and filled, then a new
//! domain defined from the neutral description. A volume that is a regular file on this host is
//! written in place from the store on several threads and fsynced; any other (a remote host, a
//! block device) is filled over libvirt's upload streams (raw: a sparse stream, holes and
//! all-zero blocks sent as holes; qcow2: an image written in one pass by qcow2.rs).

use super::domain_xml::{new_domain_xml, restored_domain_xml, volume_xml, NewDisk, Restored, NATIVE_FORMAT};
use super::qcow2::{Qcow2Layout, Qcow2Plan, CLUSTER};
use super::{last_error, KvmConnector, PLATFORM};
use crate::connector::{CheckError, ConnectorError, NewVmSpec, RestoreCheck, RestoreDisk};
use crate::control::{copy_governed, write_raw_file, JobControl, Throttle};
use crate::nbd::{NbdAddress, NbdClient};
use std::os::unix::fs::FileExt;
use std::process::{Child, Command, Stdio};
use vds_store::{DiskReader, VmDescription};
use virt::storage_vol::StorageVol;
use virt::stream::Stream;
use virt::sys;

/// Upload granularity: all-zero blocks of this size inside a stored extent are sent as holes.
const BLOCK: usize = 64 * 1024;

pub(super) fn failed(vm: &str, action: &str, cause: impl Into<String>) -> ConnectorError {
    ConnectorError::Failed { platform: PLATFORM, vm: vm.into(), action: action.into(), cause: cause.into() }
}

fn send_all(stream: &Stream, mut data: &[u8]) -> Result<(), String> {
    while !data.is_empty() {
        let n = stream.send(data).map_err(|e| e.to_string())?;
        if n <= 0 {
            return Err(format!("stream accepted {n} bytes"));
        }
        data = &data[n as usize..];
    }
    Ok(())
}

fn send_hole(stream: &Stream, len: u64) -> Result<(), String> {
    // SAFETY: a valid stream pointer opened for a sparse upload.
    if unsafe { sys::virStreamSendHole(stream.as_ptr(), len as i64, 0) } < 0 {
        return Err(last_error());
    }
    Ok(())
}

/// Counts an extent of a disk as done, after waiting for the job's limit (data only: holes
/// cost no transfer) and failing when it was stopped.
fn govern(control: &JobControl, throttle: &mut Throttle, len: usize, data: bool) -> Result<(), String> {
    throttle.admit(control, if data { len } else { 0 }).map_err(|e| e.to_string())?;
    control.add_done(len as u64);
    Ok(())
}

/// Uploads `length` bytes into `vol` over a new stream that `fill` writes; the stream is
/// finished when `fill` succeeds and aborted (libvirt discards the upload) when it fails.
fn stream_into(
    conn: &KvmConnector,
    vol: &StorageVol,
    length: u64,
    flags: u32,
    fill: impl FnOnce(&Stream) -> Result<(), String>,
) -> Result<(), String> {
    let stream = Stream::new(&conn.conn, 0).map_err(|e| e.to_string())?;
    vol.upload(&stream, 0, length, flags).map_err(|e| e.to_string())?;
    match fill(&stream) {
        Ok(()) => stream.finish().map_err(|e| e.to_string()),
        Err(e) => {
            let _ = stream.abort();
            Err(e)
        }
    }
}

/// Streams a disk of a restore point into `vol` of `size` bytes (at least the point's disk),
/// holes as holes, the space beyond the point's disk as one.
fn upload(
    conn: &KvmConnector,
    vol: &StorageVol,
    reader: &DiskReader,
    size: u64,
    control: &JobControl,
) -> Result<(), String> {
    stream_into(conn, vol, size, sys::VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM, |stream| {
        let map = reader.map();
        let es = map.extent_size as u64;
        let mut buf = vec![0u8; es as usize];
        let mut hole = 0u64;
        let mut throttle = Throttle::default();
        for (i, id) in map.extents.iter().enumerate() {
            let len = map.extent_len(i as u64);
            govern(control, &mut throttle, len, !id.is_hole())?;
            if id.is_hole() {
                hole += len as u64;
                continue;
            }
            reader.read_at(&mut buf[..len], i as u64 * es).map_err(|e| e.to_string())?;
            for block in buf[..len].chunks(BLOCK) {
                if dedupe::zero::is_zero(block) {
                    hole += block.len() as u64;
                    continue;
                }
                if hole > 0 {
                    send_hole(stream, hole)?;
                    hole = 0;
                }
                send_all(stream, block)?;
            }
        }
        hole += size - reader.size();
        if hole > 0 {
            send_hole(stream, hole)?;
        }
        Ok(())
    })
}

/// The qcow2 layout of a point's disk in an image of `size` bytes: the clusters its maps say
/// hold data.
fn qcow2_layout(reader: &DiskReader, size: u64) -> Result<Qcow2Layout, String> {
    let mut plan = Qcow2Plan::new(size);
    for i in 0..reader.map().extents.len() as u64 {
        for r in reader.data_ranges(i).map_err(|e| e.to_string())? {
            plan.mark(r);
        }
    }
    Ok(plan.layout())
}

/// Fills `file`, a volume libvirt just made on this host (empty, or a bare qcow2 header: there
/// is nothing to lose), straight from the store: chunks read and decompressed on several
/// threads and written in place (raw: at their disk offsets, holes left sparse; qcow2: the
/// metadata, then each piece at its cluster's place in the file), then fsynced, so the restore
/// is on disk when it ends. It skips libvirtd's upload stream, which carries every byte
/// through two more processes.
fn write_local(
    file: &std::fs::File,
    reader: &DiskReader,
    size: u64,
    format: &str,
    control: &JobControl,
) -> Result<(), String> {
    if format == "raw" {
        return write_raw_file(file, reader, size, control, false);
    }
    let io = |e: std::io::Error| e.to_string();
    file.set_len(0).map_err(io)?;
    let layout = qcow2_layout(reader, size)?;
    layout.write_metadata_to(file).map_err(io)?;
    file.set_len(layout.file_size()).map_err(io)?;
    copy_governed(reader, control, &|offset: u64, data: &[u8]| {
        // A chunk may cross clusters: each piece goes to its own cluster's place.
        let (mut pos, mut rest) = (offset, data);
        while !rest.is_empty() {
            let (g, within) = (pos / CLUSTER, pos % CLUSTER);
            let n = ((CLUSTER - within) as usize).min(rest.len());
            let base = layout
                .file_offset(g)
                .ok_or_else(|| std::io::Error::other(format!("disk offset {pos} holds data its map did not name")))?;
            file.write_all_at(&rest[..n], base + within)?;
            (pos, rest) = (pos + n as u64, &rest[n..]);
        }
        Ok(())
    })?;
    file.sync_all().map_err(io)
}

/// Streams a disk of a restore point into the qcow2 volume `vol` as a whole qcow2 image: the
/// layout is planned from the point's maps (which clusters hold data), the metadata sent, then
/// each data cluster in guest order. One pass, one write on the host, holes never sent.
fn upload_qcow2(
    conn: &KvmConnector,
    vol: &StorageVol,
    reader: &DiskReader,
    size: u64,
    control: &JobControl,
) -> Result<(), String> {
    let map = reader.map();
    let es = map.extent_size as u64;
    let layout = qcow2_layout(reader, size)?;
    stream_into(conn, vol, layout.file_size(), 0, |stream| {
        layout.write_metadata(&mut |c| send_all(stream, c))?;
        let mut clusters = layout.data_clusters().peekable();
        let mut buf = vec![0u8; es as usize];
        let mut tail = vec![0u8; CLUSTER as usize];
        let mut throttle = Throttle::default();
        for i in 0..map.extents.len() as u64 {
            let (start, len) = (i * es, map.extent_len(i));
            let end = start + len as u64;
            let has_data = clusters.peek().is_some_and(|&g| g * CLUSTER < end);
            govern(control, &mut throttle, len, has_data)?;
            if !has_data {
                continue;
            }
            reader.read_at(&mut buf[..len], start).map_err(|e| e.to_string())?;
            while let Some(g) = clusters.next_if(|&g| g * CLUSTER < end) {
                let at = (g * CLUSTER - start) as usize;
                let n = (len - at).min(CLUSTER as usize);
                if n == CLUSTER as usize {
                    send_all(stream, &buf[at..at + n])?;
                } else {
                    // The disk's last, partial cluster: a whole cluster in the file.
                    tail.fill(0);
                    tail[..n].copy_from_slice(&buf[at..at + n]);
                    send_all(stream, &tail)?;
                }
            }
        }
        Ok(())
    })
}

/// Defines the new VM `spec` names on `disks` and starts it if asked; a VM that does not
/// start is undefined again, so nothing is left defined on failure.
pub(super) fn define_new_vm(
    conn: &KvmConnector,
    source: &VmDescription,
    spec: &NewVmSpec,
    disks: &[NewDisk],
) -> Result<String, ConnectorError> {
    let name = &spec.name;
    let xml = domain_for(source, name, spec, disks)?;
    let dom = conn.conn.define_domain_xml(&xml).map_err(|e| failed(name, "defining the new VM", e.to_string()))?;
    if spec.start {
        if let Err(e) = dom.create() {
            let _ = dom.undefine();
            return Err(failed(name, "starting the new VM", e.to_string()));
        }
    }
    Ok(name.clone())
}

/// The definition of a new VM with `disks`: on its own platform the VM comes back as it was
/// defined, with a new identity; from another platform's description, a fresh domain.
fn domain_for(
    source: &VmDescription,
    name: &str,
    spec: &NewVmSpec,
    disks: &[NewDisk],
) -> Result<String, ConnectorError> {
    let native = source.native.as_ref().filter(|n| source.platform == PLATFORM && n.format == NATIVE_FORMAT);
    Ok(match native {
        Some(n) => restored_domain_xml(
            &n.text,
            &Restored {
                name,
                cpus: spec.cpus,
                memory_mib: spec.memory_mib,
                disks,
                network: spec.network.as_deref(),
                keep_macs: spec.keep_macs,
            },
        )
        .map_err(|e| failed(name, "building the new VM's definition", e))?,
        None => new_domain_xml(
            source,
            name,
            spec.cpus.unwrap_or(source.cpus.max(1)),
            spec.memory_mib.unwrap_or(if source.memory_mib > 0 { source.memory_mib } else { 1024 }),
            disks,
            spec.network.as_deref(),
            spec.keep_macs,
        ),
    })
}

pub(super) fn restore_as_new_vm(
    conn: &KvmConnector,
    source: &VmDescription,
    disks: &[RestoreDisk<'_>],
    spec: &NewVmSpec,
    control: &JobControl,
) -> Result<String, ConnectorError> {
    let name = &spec.name;
    if conn.conn.lookup_domain_by_name(name).is_ok() {
        return Err(failed(name, "restoring as a new VM", "a VM of that name exists already"));
    }
    let pool = conn
        .conn
        .lookup_storage_pool_by_name(&spec.storage)
        .map_err(|e| failed(name, &format!("finding storage pool {:?}", spec.storage), e.to_string()))?;
    let format = spec.disk_format.clone().unwrap_or_else(|| "raw".into());
    if format != "raw" && format != "qcow2" {
        return Err(failed(name, "restoring as a new VM", format!("disk format {format:?}: use raw or qcow2")));
    }
    let points: Vec<(&str, u64)> = disks.iter().map(|d| (d.key.as_str(), d.reader.size())).collect();
    let sizes =
        crate::restore_sizes(&points, &spec.disk_sizes).map_err(|e| failed(name, "restoring as a new VM", e))?;
    let mut created: Vec<StorageVol> = Vec::new();
    control.add_total(disks.iter().map(|d| d.reader.size()).sum());
    let marker = conn.restore_marker(name);
    let result = (|| {
        // Each volume is listed once it exists, so a restart after a kill removes it (and
        // nothing else).
        let mut list = std::fs::File::create(&marker)
            .map_err(|e| failed(name, &format!("creating {}", marker.display()), e.to_string()))?;
        let mut paths = Vec::new();
        for (d, &size) in disks.iter().zip(&sizes) {
            let vol_name = format!("{name}-{}.{format}", d.key);
            let vol = StorageVol::create_xml(&pool, &volume_xml(&vol_name, size, &format), 0)
                .map_err(|e| failed(name, &format!("creating volume {vol_name}"), e.to_string()))?;
            created.push(vol);
            std::io::Write::write_all(&mut list, format!("{}\t{vol_name}\n", spec.storage).as_bytes()).map_err(
                |e| failed(name, &format!("recording volume {vol_name} in {}", marker.display()), e.to_string()),
            )?;
            let vol = created.last().expect("just pushed");
            let path = vol.path().map_err(|e| failed(name, "reading a volume's path", e.to_string()))?;
            // Written in place when the volume is a file here; streamed through libvirt otherwise.
            let here = conn
                .is_local()
                .then(|| std::fs::OpenOptions::new().write(true).open(&path).ok())
                .flatten()
                .filter(|f| f.metadata().is_ok_and(|m| m.is_file()));
            let filled = match (&here, format.as_str()) {
                (Some(file), _) => write_local(file, d.reader, size, &format, control),
                (None, "raw") => upload(conn, vol, d.reader, size, control),
                (None, _) => upload_qcow2(conn, vol, d.reader, size, control),
            };
            filled.map_err(|e| failed(name, &format!("writing disk {} into {path}", d.key), e))?;
            paths.push(NewDisk::file(&d.key, &path, &format));
        }
        define_new_vm(conn, source, spec, &paths)
    })();
    if result.is_err() {
        for vol in &created {
            let _ = vol.delete(0);
        }
    }
    let _ = std::fs::remove_file(&marker);
    result
}

/// What a restore as the new VM `vm` left when Holdfast was killed during it: the volumes its
/// marker lists, removed unless the VM was defined by then (the restore had got that far; the
/// volumes are the VM's disks).
pub(super) fn clean_up_killed_restore(conn: &KvmConnector, vm: &str) -> Result<Option<String>, ConnectorError> {
    let marker = conn.restore_marker(vm);
    let Ok(list) = std::fs::read_to_string(&marker) else { return Ok(None) };
    if conn.conn.lookup_domain_by_name(vm).is_ok() {
        let _ = std::fs::remove_file(&marker);
        return Ok(Some(format!("VM {vm} had been defined: its volumes are kept")));
    }
    let mut removed = Vec::new();
    for (pool, vol) in list.lines().filter_map(|l| l.split_once('\t')) {
        let found = conn.conn.lookup_storage_pool_by_name(pool).and_then(|p| p.lookup_storage_vol_by_name(vol));
        let Ok(v) = found else { continue }; // gone already
        v.delete(0).map_err(|e| failed(vm, &format!("removing volume {vol} from pool {pool}"), e.to_string()))?;
        removed.push(format!("{vol} (pool {pool})"));
    }
    let _ = std::fs::remove_file(&marker);
    Ok((!removed.is_empty()).then(|| format!("removed the volumes the restore had made: {}", removed.join(", "))))
}

/// qemu-nbd serving one disk image on a private socket (export "disk"); killed on drop.
pub(super) struct ImageServer {
    child: Child,
    pub(super) socket: std::path::PathBuf,
}

impl ImageServer {
    /// Writable, for one client: the server exits when it disconnects (see `finish`).
    fn start(image: &str, format: &str, socket: std::path::PathBuf) -> Result<ImageServer, String> {
        let mut cmd = Command::new("qemu-nbd");
        cmd.args(["--export-name=disk", "--discard=unmap", "--cache=writeback"]);
        ImageServer::spawn(cmd, image, format, socket)
    }

    /// Read-only, for any number of clients until dropped, exposing the named persistent dirty
    /// bitmaps. QEMU's image locking keeps the VM from starting (and writing) meanwhile.
    pub(super) fn start_read_only(
        image: &str,
        format: &str,
        socket: std::path::PathBuf,
        bitmaps: &[String],
    ) -> Result<ImageServer, String> {
        let mut cmd = Command::new("qemu-nbd");
        cmd.args(["--export-name=disk", "--read-only", "--persistent", "--shared=0"]);
        for b in bitmaps {
            cmd.arg(format!("--bitmap={b}"));
        }
        ImageServer::spawn(cmd, image, format, socket)
    }

    fn spawn(mut cmd: Command, image: &str, format: &str, socket: std::path::PathBuf) -> Result<ImageServer, String> {
        let child = cmd
            .arg(format!("--format={format}"))
            .arg("--socket")
            .arg(&socket)
            .arg(image)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting qemu-nbd (package qemu-utils): {e}"))?;
        let mut server = ImageServer { child, socket };
        let start = std::time::Instant::now();
        while !server.socket.exists() {
            if let Ok(Some(status)) = server.child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = server.child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                return Err(format!("qemu-nbd exited ({status}): {}", err.trim()));
            }
            if start.elapsed() > std::time::Duration::from_secs(20) {
                return Err("qemu-nbd did not open its socket".into());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(server)
    }
}

impl ImageServer {
    /// Waits for qemu-nbd to exit after its client disconnected: only a clean exit writes the
    /// image's persistent dirty bitmaps back (a killed qemu-nbd leaves them marked broken, and
    /// the next incremental would fail on them).
    fn finish(mut self) -> Result<(), String> {
        let start = std::time::Instant::now();
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => return Err(format!("qemu-nbd exited with {status}")),
                Ok(None) if start.elapsed() > std::time::Duration::from_secs(60) => {
                    return Err("qemu-nbd did not exit after the restore".into())
                }
                Ok(None) => std::thread::sleep(std::time::Duration::from_millis(20)),
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

impl Drop for ImageServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SIGTERM, not SIGKILL: qemu-nbd then closes the image properly.
            // SAFETY: signalling our own child process.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Writes a restore point's disk through NBD: data blocks as writes, holes and all-zero blocks
/// as write-zeroes (which the image may turn back into holes). In order, so a read failure can
/// say how far the disk was overwritten.
fn write_disk(client: &mut NbdClient, reader: &DiskReader, control: &JobControl) -> Result<(), String> {
    let map = reader.map();
    let mut throttle = Throttle::default();
    let es = map.extent_size as u64;
    let mut buf = vec![0u8; es as usize];
    let mut zero_from: Option<u64> = None;
    let mut pos = 0u64;
    let flush_zeroes = |client: &mut NbdClient, zero_from: &mut Option<u64>, upto: u64| -> Result<(), String> {
        if let Some(start) = zero_from.take() {
            client.write_zeroes(start, upto - start).map_err(|e| e.to_string())?;
        }
        Ok(())
    };
    for (i, id) in map.extents.iter().enumerate() {
        let len = map.extent_len(i as u64);
        govern(control, &mut throttle, len, !id.is_hole())?;
        if id.is_hole() {
            zero_from.get_or_insert(pos);
            pos += len as u64;
            continue;
        }
        reader.read_at(&mut buf[..len], pos).map_err(|e| {
            format!(
                "the disk is partly overwritten: bytes 0..{pos} hold the point, the rest its earlier contents; \
                 reading bytes {pos}..{} of the point failed: {e}",
                pos + len as u64
            )
        })?;
        for block in buf[..len].chunks(BLOCK) {
            if dedupe::zero::is_zero(block) {
                zero_from.get_or_insert(pos);
            } else {
                flush_zeroes(client, &mut zero_from, pos)?;
                client.write_at(pos, block).map_err(|e| e.to_string())?;
            }
            pos += block.len() as u64;
        }
    }
    flush_zeroes(client, &mut zero_from, pos)?;
    client.flush().map_err(|e| e.to_string())
}

pub(super) fn restore_in_place(
    conn: &KvmConnector,
    vm: &str,
    disks: &[RestoreDisk<'_>],
    control: &JobControl,
) -> Result<(), ConnectorError> {
    if !conn.is_local() {
        return Err(ConnectorError::Unsupported {
            platform: PLATFORM,
            what: format!("restoring in place on a remote host ({}): restore as a new VM instead", conn.uri),
        });
    }
    let dom = conn.domain(vm)?;
    if dom.is_active().unwrap_or(true) {
        return Err(failed(vm, "restoring in place", "the VM is running; shut it down first"));
    }
    let xml = dom.xml_desc(0).map_err(|e| failed(vm, "reading the domain XML", e.to_string()))?;
    let (_, vm_disks) = super::domain_xml::parse(&xml).map_err(|e| failed(vm, "reading the domain XML", e))?;
    // Check everything before writing anything.
    let mut plan = Vec::new();
    for d in disks {
        let target = vm_disks
            .iter()
            .find(|v| v.target == d.key)
            .ok_or_else(|| failed(vm, "restoring in place", format!("it has no disk {}", d.key)))?;
        let source = target
            .source
            .clone()
            .ok_or_else(|| failed(vm, "restoring in place", format!("disk {} has no source file", d.key)))?;
        let size = dom
            .block_info(&d.key, 0)
            .map_err(|e| failed(vm, &format!("sizing disk {}", d.key), e.to_string()))?
            .capacity;
        if size != d.reader.size() {
            return Err(failed(
                vm,
                "restoring in place",
                format!(
                    "disk {} is {size} bytes but {} in the point; restore as a new VM instead",
                    d.key,
                    d.reader.size()
                ),
            ));
        }
        plan.push((d, source, target.format.clone().unwrap_or_else(|| "raw".into())));
    }
    control.add_total(disks.iter().map(|d| d.reader.size()).sum());
    let dir = conn.work_dir.join(format!("restore-{}", vds_store::fslock::random_hex(6)));
    std::fs::create_dir_all(&dir).map_err(|e| failed(vm, "creating a work directory", e.to_string()))?;
    let result = (|| {
        for (d, source, format) in plan {
            let server = ImageServer::start(&source, &format, dir.join(format!("{}.sock", d.key)))
                .map_err(|e| failed(vm, &format!("opening disk {} ({source})", d.key), e))?;
            let mut client = NbdClient::connect(&NbdAddress::Unix(server.socket.clone()), "disk", &[])?;
            write_disk(&mut client, d.reader, control)
                .map_err(|e| failed(vm, &format!("writing disk {} ({source})", d.key), e))?;
            client.disconnect()?;
            server.finish().map_err(|e| failed(vm, &format!("closing disk {} ({source})", d.key), e))?;
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// A restore checked against the host before it is queued (the restore itself checks again).
pub(super) fn check_restore(conn: &KvmConnector, restore: RestoreCheck<'_>) -> Result<(), CheckError> {
    let names = |list: Vec<String>| if list.is_empty() { "none".to_string() } else { list.join(", ") };
    match restore {
        RestoreCheck::NewVm(spec) => {
            crate::connector::check_single_host(spec.host.as_deref(), || {
                conn.conn.hostname().map_err(|e| ConnectorError::Unreachable {
                    platform: super::PLATFORM,
                    target: conn.uri.clone(),
                    cause: e.to_string(),
                })
            })?;
            if conn.conn.lookup_domain_by_name(&spec.name).is_ok() {
                return Err(CheckError::conflict(
                    "name",
                    format!("a VM named {:?} exists already on this host", spec.name),
                ));
            }
            if conn.conn.lookup_storage_pool_by_name(&spec.storage).is_err() {
                let pools = conn.conn.list_storage_pools().unwrap_or_default();
                let defined = conn.conn.list_defined_storage_pools().unwrap_or_default();
                return Err(CheckError::invalid(
                    "storage",
                    format!(
                        "no storage pool {:?} on this host (it has {})",
                        spec.storage,
                        names([pools, defined].concat())
                    ),
                ));
            }
            if let Some(net) = &spec.network {
                if conn.conn.lookup_network_by_name(net).is_err() {
                    let nets = conn.conn.list_networks().unwrap_or_default();
                    let defined = conn.conn.list_defined_networks().unwrap_or_default();
                    return Err(CheckError::invalid(
                        "network",
                        format!("no network {net:?} on this host (it has {})", names([nets, defined].concat())),
                    ));
                }
            }
            Ok(())
        }
        RestoreCheck::InPlace { vm } => {
            let dom = conn.domain(vm).map_err(|_| {
                CheckError::invalid("point", format!("its VM ({vm}) is not on this host: restore it as a new VM"))
            })?;
            if dom.is_active().unwrap_or(false) {
                let name = dom.name().unwrap_or_else(|_| vm.to_string());
                return Err(CheckError::conflict(
                    "mode",
                    format!("VM {name} is running: shut it off before restoring in place"),
                ));
            }
            Ok(())
        }
    }
}
