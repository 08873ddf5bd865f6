//! File-level coordination between processes sharing a store: advisory locks (flock), the
//! registry of running writers that garbage collection consults, and the immutable attribute.

use crate::error::{Result, StoreError};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Takes an flock on `file`. Ok(false) when `nonblocking` and someone else holds it.
pub fn flock(file: &File, exclusive: bool, nonblocking: bool) -> std::io::Result<bool> {
    let mut op = if exclusive { libc::LOCK_EX } else { libc::LOCK_SH };
    if nonblocking {
        op |= libc::LOCK_NB;
    }
    // SAFETY: flock on a descriptor we own for the duration of the call.
    if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// A running writer: `locks/writers/<id>` holds its start time and stays exclusively locked for
/// its life; its staging directory is `tmp/<id>/`. Dropping it removes both.
pub struct WriterRegistration {
    pub id: String,
    pub started: SystemTime,
    pub tmp_dir: PathBuf,
    lock_path: PathBuf,
    _file: File,
}

impl WriterRegistration {
    pub fn register(root: &Path) -> Result<WriterRegistration> {
        let id = format!("{}-{}", std::process::id(), random_hex(6));
        let dir = root.join("locks").join("writers");
        fs::create_dir_all(&dir).map_err(|e| StoreError::io(format!("creating {}", dir.display()), e))?;
        let lock_path = dir.join(&id);
        let started = SystemTime::now();
        // Made, locked and filled under another name, then renamed in: a GC that found an
        // unlocked registration would take its writer for dead and remove it.
        let staging = root.join("locks").join(format!(".writer.{id}"));
        let io = |what: &str, e| StoreError::io(format!("{what} writer lock {}", lock_path.display()), e);
        let mut file = OpenOptions::new().create_new(true).write(true).open(&staging).map_err(|e| io("creating", e))?;
        let nanos = started.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
        let ready = flock(&file, true, false)
            .and_then(|_| file.write_all(nanos.to_string().as_bytes()))
            .and_then(|()| fs::rename(&staging, &lock_path));
        if let Err(e) = ready {
            let _ = fs::remove_file(&staging);
            return Err(io("registering", e));
        }
        let tmp_dir = root.join("tmp").join(&id);
        fs::create_dir_all(&tmp_dir).map_err(|e| StoreError::io(format!("creating {}", tmp_dir.display()), e))?;
        Ok(WriterRegistration { id, started, tmp_dir, lock_path, _file: file })
    }
}

impl Drop for WriterRegistration {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.tmp_dir);
        let _ = fs::remove_file(&self.lock_path);
    }
}

/// Start times of the writers running now. Registrations left by killed writers (their lock is
/// free) are removed with their staging directories, once `on_dead(staging directory)` says
/// nothing is left to do there (Ok(true)); Ok(false) keeps them for a later look.
pub fn active_writers(root: &Path, on_dead: &mut dyn FnMut(&Path) -> Result<bool>) -> Result<Vec<SystemTime>> {
    let dir = root.join("locks").join("writers");
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io(format!("listing {}", dir.display()), e)),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(file) = File::open(&path) else {
            continue;
        };
        if flock(&file, false, true).map_err(|e| StoreError::io(format!("probing {}", path.display()), e))? {
            // Nobody holds it: a writer that died. Finish and clear what it left.
            let tmp = root.join("tmp").join(entry.file_name());
            if on_dead(&tmp)? {
                let _ = fs::remove_dir_all(&tmp);
                let _ = fs::remove_file(&path);
            }
            continue;
        }
        let started = fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse::<u128>().ok())
            .map(|n| UNIX_EPOCH + Duration::from_nanos(n as u64))
            // A writer between creating its file and writing its time started just now.
            .unwrap_or_else(|| SystemTime::now() - Duration::from_secs(60));
        out.push(started);
    }
    Ok(out)
}

pub fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    getrandom::getrandom(&mut b).expect("OS randomness");
    hex::encode(b)
}

pub use dedupe::chunk_store::{is_immutable, set_immutable};

pub fn set_read_only(path: &Path, read_only: bool) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(if read_only { 0o444 } else { 0o644 }))
}

/// Writes `bytes` to `dest` atomically and durably: staged in `tmp`, fsynced, renamed, and the
/// directory fsynced.
pub fn write_atomic(tmp_dir: &Path, dest: &Path, bytes: &[u8]) -> Result<()> {
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = tmp_dir.join(format!("{name}.{}", random_hex(4)));
    let io = |what: &str, e| StoreError::io(format!("{what} {}", dest.display()), e);
    let result = (|| {
        let mut f = File::create(&tmp).map_err(|e| io("staging", e))?;
        f.write_all(bytes).map_err(|e| io("writing", e))?;
        f.sync_all().map_err(|e| io("syncing", e))?;
        fs::rename(&tmp, dest).map_err(|e| io("committing", e))?;
        if let Some(parent) = dest.parent() {
            File::open(parent).and_then(|d| d.sync_all()).map_err(|e| io("syncing the directory of", e))?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
