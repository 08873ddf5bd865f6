//! What an instant-recovery session's directory holds, besides nothing else: each disk as a
//! raw image (`vda.raw`, for QEMU and libvirt) and as the flat extent of a VMDK (`vda-flat.vmdk`,
//! the same bytes and the same overlay) with its descriptor (`vda.vmdk`, for ESXi), the VM's
//! saved configuration (`vm-config.xml` or `.txt`, read-only), and the files clients create
//! there (ESXi's `.lck-*` lock files), kept beside the overlays and listed in `files.json` so
//! they keep their ids across restarts.
//!
//! A file's id is the session's id shifted left by 8, or'ed with its slot (the low byte): 0 the
//! directory, 1-31 disk k's raw image (k + 1), 33-63 its flat extent (k + 33), 64-95 its
//! descriptor (k + 64), 96 the configuration, 128-255 client files.

pub use crate::nfs::How;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The most disks a session exports.
pub const MAX_DISKS: usize = 31;
const CONFIG: u64 = 96;
const CLIENT: u64 = 128;

/// What a slot (a file id's low byte) names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    Dir,
    Raw(usize),
    Flat(usize),
    Descriptor(usize),
    Config,
    Client(usize),
}

impl Slot {
    pub fn of(low: u64) -> Option<Slot> {
        Some(match low {
            0 => Slot::Dir,
            1..=31 => Slot::Raw(low as usize - 1),
            33..=63 => Slot::Flat(low as usize - 33),
            64..=95 => Slot::Descriptor(low as usize - 64),
            CONFIG => Slot::Config,
            CLIENT..=255 => Slot::Client((low - CLIENT) as usize),
            _ => return None,
        })
    }

    pub fn low(self) -> u64 {
        match self {
            Slot::Dir => 0,
            Slot::Raw(k) => k as u64 + 1,
            Slot::Flat(k) => k as u64 + 33,
            Slot::Descriptor(k) => k as u64 + 64,
            Slot::Config => CONFIG,
            Slot::Client(i) => i as u64 + CLIENT,
        }
    }
}

/// The VMDK descriptor of a flat disk of `size` bytes (a multiple of 512) whose extent is
/// `flat`, as ESXi writes one for a disk on an NFS datastore.
pub fn vmdk_descriptor(flat: &str, size: u64, cid: u32) -> String {
    let sectors = size / 512;
    let cylinders = (sectors / (255 * 63)).clamp(1, 65535);
    format!(
        "# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID={cid:08x}\nparentCID=ffffffff\n\
         createType=\"vmfs\"\n\n# Extent description\nRW {sectors} VMFS \"{flat}\"\n\n# The Disk Data Base\n#DDB\n\n\
         ddb.adapterType = \"lsilogic\"\nddb.geometry.cylinders = \"{cylinders}\"\nddb.geometry.heads = \"255\"\n\
         ddb.geometry.sectors = \"63\"\nddb.virtualHWVersion = \"13\"\n"
    )
}

/// A name a client may give a file here: not empty, at most 255 bytes, no `/` or NUL, not `.`
/// or `..`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && !name.contains(['/', '\0']) && name != "." && name != ".."
}

/// The files clients made in a session's directory: slot → name, saved in `files.json`.
pub struct ClientFiles {
    dir: PathBuf,
    names: Mutex<Vec<Option<Named>>>,
}

/// A place's file: its name, and the verifier of the exclusive create that made it.
type Named = (String, Option<u64>);

fn position(names: &[Option<Named>], name: &str) -> Option<usize> {
    names.iter().position(|n| n.as_ref().is_some_and(|(n, _)| n == name))
}

impl ClientFiles {
    pub fn open(dir: &Path) -> std::io::Result<ClientFiles> {
        std::fs::create_dir_all(dir)?;
        let names = match std::fs::read(dir.join("files.json")) {
            Ok(b) => serde_json::from_slice(&b).map_err(std::io::Error::other)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        Ok(ClientFiles { dir: dir.to_path_buf(), names: Mutex::new(names) })
    }

    fn save(&self, names: &[Option<Named>]) -> std::io::Result<()> {
        let tmp = self.dir.join("files.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(names).map_err(std::io::Error::other)?)?;
        std::fs::rename(tmp, self.dir.join("files.json"))
    }

    /// Where client file `i` keeps its bytes.
    pub fn path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("client-{i}"))
    }

    /// (slot index, name) of every client file.
    pub fn list(&self) -> Vec<(usize, String)> {
        let names = self.names.lock().expect("client files lock");
        names.iter().enumerate().filter_map(|(i, n)| n.as_ref().map(|(n, _)| (i, n.clone()))).collect()
    }

    #[cfg(test)]
    pub fn find(&self, name: &str) -> Option<usize> {
        position(&self.names.lock().expect("client files lock"), name)
    }

    /// Makes an empty file `name`, or finds the one there (`exclusive`: refused). A place is
    /// never given twice in a session, so an old handle never names a newer file.
    pub fn create(&self, name: &str, how: How) -> std::io::Result<Created> {
        let mut names = self.names.lock().expect("client files lock");
        if let Some(i) = position(&names, name) {
            let made_by = names[i].as_ref().and_then(|(_, v)| *v);
            return Ok(match how {
                How::Unchecked => Created::There(i),
                How::Exclusive(v) if made_by == Some(v) => Created::There(i),
                _ => Created::Exists,
            });
        }
        if names.len() >= 128 {
            return Ok(Created::Full);
        }
        let i = names.len();
        std::fs::File::create(self.path(i))?;
        let verifier = match how {
            How::Exclusive(v) => Some(v),
            _ => None,
        };
        names.push(Some((name.to_string(), verifier)));
        self.save(&names)?;
        Ok(Created::Made(i))
    }

    /// Removes file `name`; false when there is none.
    pub fn remove(&self, name: &str) -> std::io::Result<bool> {
        let mut names = self.names.lock().expect("client files lock");
        let Some(i) = position(&names, name) else { return Ok(false) };
        names[i] = None;
        self.save(&names)?;
        match std::fs::remove_file(self.path(i)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(true),
        }
    }

    /// Renames file `from` to `to`, replacing a client file of that name; false when there is
    /// no `from`.
    pub fn rename(&self, from: &str, to: &str) -> std::io::Result<bool> {
        let mut names = self.names.lock().expect("client files lock");
        let Some(i) = position(&names, from) else { return Ok(false) };
        if from == to {
            return Ok(true);
        }
        let replaced = position(&names, to);
        names[i] = Some((to.to_string(), None));
        if let Some(j) = replaced {
            names[j] = None;
        }
        self.save(&names)?;
        if let Some(j) = replaced {
            let _ = std::fs::remove_file(self.path(j));
        }
        Ok(true)
    }
}

/// What a create found or made.
#[derive(Debug, PartialEq, Eq)]
pub enum Created {
    Made(usize),
    /// The file was there (a create that is not exclusive takes it).
    There(usize),
    /// The file was there and the create was exclusive.
    Exists,
    /// A session's 128 places are used.
    Full,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_round_trip_and_client_files_keep_their_places_across_a_reopen() {
        for s in [
            Slot::Dir,
            Slot::Raw(0),
            Slot::Raw(30),
            Slot::Flat(3),
            Slot::Descriptor(30),
            Slot::Config,
            Slot::Client(127),
        ] {
            assert_eq!(Slot::of(s.low()), Some(s));
        }
        assert_eq!(Slot::of(32), None);
        let d = vmdk_descriptor("vda-flat.vmdk", 10 << 30, 7);
        assert!(d.contains("RW 20971520 VMFS \"vda-flat.vmdk\"") && d.contains("createType=\"vmfs\""), "{d}");

        let dir = tempfile::tempdir().unwrap();
        let f = ClientFiles::open(dir.path()).unwrap();
        assert_eq!(f.create(".lck-0001", How::Exclusive(42)).unwrap(), Created::Made(0));
        assert_eq!(f.create(".lck-0001", How::Exclusive(42)).unwrap(), Created::There(0), "a retry");
        assert_eq!(f.create(".lck-0001", How::Exclusive(43)).unwrap(), Created::Exists, "another client's");
        assert_eq!(f.create(".lck-0001", How::Guarded).unwrap(), Created::Exists);
        assert_eq!(f.create(".lck-0001", How::Unchecked).unwrap(), Created::There(0));
        assert_eq!(f.create("b", How::Guarded).unwrap(), Created::Made(1));
        assert!(f.rename("b", ".lck-0001").unwrap());
        assert_eq!(f.find(".lck-0001"), Some(1), "renamed over the first");
        assert!(!dir.path().join("client-0").exists(), "the replaced file's bytes went");
        assert_eq!(f.create("c", How::Guarded).unwrap(), Created::Made(2), "a freed place is not given again");
        drop(f);
        let again = ClientFiles::open(dir.path()).unwrap();
        assert_eq!(again.list(), [(1, ".lck-0001".to_string()), (2, "c".to_string())]);
        assert!(again.remove(".lck-0001").unwrap());
        assert!(!again.remove(".lck-0001").unwrap());
        assert_eq!(again.find(".lck-0001"), None);
        assert!(!valid_name("..") && !valid_name("a/b") && valid_name(".lck-89ab"));
    }
}
