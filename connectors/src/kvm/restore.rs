//! Restore as a new VM through libvirt: raw volumes in a storage pool, filled over libvirt's
//! sparse upload streams (holes and all-zero blocks are sent as holes, so they stay holes and
//! this works against a remote host), then a new domain defined from the neutral description.

use super::domain_xml::{new_domain_xml, volume_xml};
use super::{last_error, KvmConnector, PLATFORM};
use crate::connector::{ConnectorError, NewVmSpec, RestoreDisk};
use vds_store::{DiskReader, VmDescription};
use virt::storage_vol::StorageVol;
use virt::stream::Stream;
use virt::sys;

/// Upload granularity: all-zero blocks of this size inside a stored extent are sent as holes.
const BLOCK: usize = 64 * 1024;

fn failed(vm: &str, action: &str, cause: impl Into<String>) -> ConnectorError {
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

/// Streams a disk of a restore point into `vol`, holes as holes.
fn upload(conn: &KvmConnector, vol: &StorageVol, reader: &DiskReader) -> Result<(), String> {
    let stream = Stream::new(&conn.conn, 0).map_err(|e| e.to_string())?;
    let size = reader.size();
    vol.upload(&stream, 0, size, sys::VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM).map_err(|e| e.to_string())?;
    let result = (|| {
        let map = reader.map();
        let es = map.extent_size as u64;
        let mut buf = vec![0u8; es as usize];
        let mut hole = 0u64;
        for (i, id) in map.extents.iter().enumerate() {
            let len = map.extent_len(i as u64);
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
                    send_hole(&stream, hole)?;
                    hole = 0;
                }
                send_all(&stream, block)?;
            }
        }
        if hole > 0 {
            send_hole(&stream, hole)?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => stream.finish().map_err(|e| e.to_string()),
        Err(e) => {
            let _ = stream.abort();
            Err(e)
        }
    }
}

pub(super) fn restore_as_new_vm(
    conn: &KvmConnector,
    source: &VmDescription,
    disks: &[RestoreDisk<'_>],
    spec: &NewVmSpec,
) -> Result<String, ConnectorError> {
    let name = &spec.name;
    if conn.conn.lookup_domain_by_name(name).is_ok() {
        return Err(failed(name, "restoring as a new VM", "a VM of that name exists already"));
    }
    let pool = conn
        .conn
        .lookup_storage_pool_by_name(&spec.pool)
        .map_err(|e| failed(name, &format!("finding storage pool {:?}", spec.pool), e.to_string()))?;
    let mut created: Vec<StorageVol> = Vec::new();
    let result = (|| {
        let mut paths = Vec::new();
        for d in disks {
            let vol_name = format!("{name}-{}.raw", d.key);
            let vol = StorageVol::create_xml(&pool, &volume_xml(&vol_name, d.reader.size()), 0)
                .map_err(|e| failed(name, &format!("creating volume {vol_name}"), e.to_string()))?;
            created.push(vol);
            let vol = created.last().expect("just pushed");
            upload(conn, vol, d.reader)
                .map_err(|e| failed(name, &format!("uploading disk {} into {vol_name}", d.key), e))?;
            paths
                .push((d.key.clone(), vol.path().map_err(|e| failed(name, "reading a volume's path", e.to_string()))?));
        }
        let xml = new_domain_xml(
            source,
            name,
            spec.cpus.unwrap_or(source.cpus.max(1)),
            spec.memory_mib.unwrap_or(if source.memory_mib > 0 { source.memory_mib } else { 1024 }),
            &paths,
            spec.network.as_deref(),
        );
        let dom = conn.conn.define_domain_xml(&xml).map_err(|e| failed(name, "defining the new VM", e.to_string()))?;
        if spec.start {
            if let Err(e) = dom.create() {
                let _ = dom.undefine();
                return Err(failed(name, "starting the new VM", e.to_string()));
            }
        }
        Ok(name.clone())
    })();
    if result.is_err() {
        for vol in &created {
            let _ = vol.delete(0);
        }
    }
    result
}
