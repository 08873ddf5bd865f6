//! KVM's entry in the platform registry: its settings (a libvirt URI), its capabilities and
//! how a connection opens.

use super::{KvmConnector, PLATFORM};
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
}

const FIELDS: &[SettingField] = &[SettingField {
    name: "uri",
    label: "libvirt URI",
    help: "qemu:///system on this host; qemu+ssh://user@host/system, qemu+tcp://host/system or \
           qemu+tls://host/system for another",
    required: true,
    example: "qemu+ssh://root@kvm1.example.com/system",
}];

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
            instant_recovery: false,
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
        Ok(Box::new(KvmConnector::open(&k.uri, work_dir, credentials)?))
    }
}
