//! KVM's entry in the platform registry: its settings (a libvirt URI), its capabilities and
//! how a connection opens.

use super::{KvmConnector, TlsFiles, PLATFORM};
use crate::connector::{Connector, ConnectorError, Credentials};
use crate::registry::{typed, Capabilities, DiskFormat, FieldError, PlatformKind, SettingField, Settings};
use std::path::Path;

pub struct Kvm;

/// The registry's KVM kind.
pub static KIND: Kvm = Kvm;

/// A KVM platform record's settings.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KvmSettings {
    uri: String,
    /// The name the hypervisor's NBD server is reached by for remote backups (default: the
    /// URI's host).
    #[serde(default)]
    nbd_host: Option<String>,
    /// A directory with ca-cert.pem (and client-cert.pem, client-key.pem unless the host skips
    /// client checks): remote backups read over NBD with TLS.
    #[serde(default)]
    nbd_tls_dir: Option<std::path::PathBuf>,
}

const FIELDS: &[SettingField] = &[
    SettingField {
        name: "uri",
        label: "libvirt URI",
        help: "qemu:///system on this host; qemu+ssh://user@host/system, qemu+tcp://host/system or \
               qemu+tls://host/system for another",
        required: true,
        example: "qemu+ssh://root@kvm1.example.com/system",
    },
    SettingField {
        name: "nbd_host",
        label: "NBD host name",
        help: "how the appliance reaches the hypervisor's NBD server for remote backups (default: the URI's host)",
        required: false,
        example: "kvm1-storage.example.com",
    },
    SettingField {
        name: "nbd_tls_dir",
        label: "NBD TLS directory",
        help: "on the appliance: ca-cert.pem of the hypervisor's backup_tls_x509_cert_dir CA, and client-cert.pem \
               with client-key.pem unless the host skips client checks; remote backups then use NBD over TLS",
        required: false,
        example: "/etc/holdfast/kvm1-nbd",
    },
];

const FORMATS: &[DiskFormat] = &[
    DiskFormat { name: "qcow2", description: "qcow2: thin, keeps change tracking for the new VM's own backups" },
    DiskFormat { name: "raw", description: "raw: a plain image, sparse where the point has holes" },
];

fn settings(s: &Settings) -> Result<KvmSettings, FieldError> {
    let k: KvmSettings = typed(s)?;
    if !k.uri.contains("://") {
        return Err(FieldError::new("uri", format!("{:?} is not a libvirt URI (qemu:///system, qemu+ssh://…)", k.uri)));
    }
    Ok(k)
}

impl PlatformKind for Kvm {
    fn name(&self) -> &'static str {
        PLATFORM
    }

    fn title(&self) -> &'static str {
        "KVM (libvirt)"
    }

    fn fields(&self) -> &'static [SettingField] {
        FIELDS
    }

    fn check(&self, s: &Settings) -> Result<(), FieldError> {
        settings(s).map(|_| ())
    }

    fn summary(&self, s: &Settings) -> String {
        settings(s).map(|k| k.uri).unwrap_or_default()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            change_tracking: true,
            quiesce: true,
            lan_free: false,
            hot_add: false,
            restore_in_place: true,
            restore_as_new_vm: true,
            storage_word: "storage pool",
            default_storage: Some("default"),
            disk_formats: FORMATS,
            instant_recovery: true,
        }
    }

    fn open(
        &self,
        s: &Settings,
        credentials: Option<&Credentials>,
        work_dir: &Path,
    ) -> Result<Box<dyn Connector>, ConnectorError> {
        let k = settings(s).map_err(|e| ConnectorError::Unreachable {
            platform: PLATFORM,
            target: "the platform's settings".into(),
            cause: e.to_string(),
        })?;
        let mut conn = KvmConnector::open(&k.uri, work_dir, credentials)?;
        if let Some(host) = &k.nbd_host {
            conn.set_nbd_host(host);
        }
        if let Some(dir) = &k.nbd_tls_dir {
            conn.set_nbd_tls(TlsFiles::from_dir(dir)?)?;
        }
        Ok(Box::new(conn))
    }
}
