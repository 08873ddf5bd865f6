//! The platform registry: every kind of platform this build can reach registers here its
//! settings (typed, validated, described for the UI's form), how a connection is opened, and
//! what it can do. The service, the CLIs and the API ask the registry and a kind's
//! [`Capabilities`]; they never name a platform. A kind is compiled in by its cargo feature
//! (`kvm`, and `sim` for the simulated platform of the tests).

use crate::connector::{Connector, ConnectorError, Credentials};
use serde::de::DeserializeOwned;
use std::path::Path;

/// A platform record's settings as stored (one JSON object per platform) and sent over the API.
/// Passwords are not settings: they are sealed apart.
pub type Settings = serde_json::Map<String, serde_json::Value>;

/// One field of a kind's settings form, as the UI renders it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SettingField {
    pub name: &'static str,
    pub label: &'static str,
    pub help: &'static str,
    pub required: bool,
    /// A value to show as the input's placeholder.
    pub example: &'static str,
}

/// A settings value a kind refuses: the field and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError { field: field.into(), message: message.into() }
    }
}

/// What a platform kind can do, for the service to decide and the UI to offer.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Capabilities {
    /// Reads only what changed since the last backup (dirty bitmaps, CBT, RCT).
    pub change_tracking: bool,
    /// Freezes the guest's filesystems for the snapshot.
    pub quiesce: bool,
    /// Reads disks over the storage network.
    pub lan_free: bool,
    /// Reads disks attached to a backup proxy VM.
    pub hot_add: bool,
    pub restore_in_place: bool,
    pub restore_as_new_vm: bool,
    /// What the place new disks go to is called on this platform ("storage pool", "datastore").
    pub storage_word: &'static str,
    /// Where a new VM's disks go when the restore names no place.
    pub default_storage: Option<&'static str>,
    /// The disk formats a restore as a new VM can write; the first is the default.
    pub disk_formats: &'static [DiskFormat],
    /// Whether it can boot a restore point from the appliance's instant-recovery export.
    pub instant_recovery: bool,
}

/// A disk image format a platform offers for new disks.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct DiskFormat {
    pub name: &'static str,
    pub description: &'static str,
}

/// One kind of platform.
pub trait PlatformKind: Send + Sync {
    /// The kind's name in platform records and the API ("kvm").
    fn name(&self) -> &'static str;
    /// The kind's name for people ("KVM (libvirt)").
    fn title(&self) -> &'static str;
    /// The settings form's fields.
    fn fields(&self) -> &'static [SettingField];
    /// Checks settings as given (unknown, missing and malformed fields are refused by name).
    fn check(&self, settings: &Settings) -> Result<(), FieldError>;
    /// Where the settings point, in a few words for the audit log ("qemu:///system").
    fn summary(&self, settings: &Settings) -> String;
    fn capabilities(&self) -> Capabilities;
    /// Opens a connection; `work_dir` is where the connector keeps its job state.
    fn open(
        &self,
        settings: &Settings,
        credentials: Option<&Credentials>,
        work_dir: &Path,
    ) -> Result<Box<dyn Connector>, ConnectorError>;
}

/// Every kind compiled into this build, in the order the UI lists them.
#[allow(clippy::vec_init_then_push, unused_mut)]
pub fn kinds() -> Vec<&'static dyn PlatformKind> {
    let mut all: Vec<&'static dyn PlatformKind> = Vec::new();
    #[cfg(feature = "kvm")]
    all.push(&crate::kvm::KIND);
    #[cfg(feature = "vmware")]
    all.push(&crate::vmware::KIND);
    #[cfg(feature = "sim")]
    all.push(&crate::sim::KIND);
    all
}

/// The kind named `name`; the error lists the kinds this build has.
pub fn kind(name: &str) -> Result<&'static dyn PlatformKind, FieldError> {
    let all = kinds();
    all.iter().copied().find(|k| k.name() == name).ok_or_else(|| {
        let names: Vec<&str> = all.iter().map(|k| k.name()).collect();
        FieldError::new(
            "kind",
            format!("{name:?} is not a platform kind this appliance has (it has {})", names.join(", ")),
        )
    })
}

/// Reads settings into a kind's typed form (which should deny unknown fields); a refusal
/// becomes a [`FieldError`] naming the field.
pub fn typed<T: DeserializeOwned>(settings: &Settings) -> Result<T, FieldError> {
    let value = serde_json::Value::Object(settings.clone());
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let text = e.inner().to_string();
        // At the top level serde names the field in its message: "missing field `uri`".
        let field = match path.as_str() {
            "." | "" => text.split('`').nth(1).unwrap_or("settings").to_string(),
            p => p.to_string(),
        };
        FieldError { field, message: text }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Example {
        uri: String,
        port: Option<u16>,
    }

    fn settings(v: serde_json::Value) -> Settings {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn typed_settings_refuse_by_field_name() {
        assert!(typed::<Example>(&settings(serde_json::json!({ "uri": "x" }))).is_ok());
        let e = typed::<Example>(&settings(serde_json::json!({}))).err().unwrap();
        assert_eq!(e.field, "uri");
        let e = typed::<Example>(&settings(serde_json::json!({ "uri": "x", "color": 1 }))).err().unwrap();
        assert_eq!(e.field, "color");
        let e = typed::<Example>(&settings(serde_json::json!({ "uri": 7 }))).err().unwrap();
        assert!(e.message.contains("invalid type"), "{e}");
    }

    #[test]
    fn an_unknown_kind_lists_the_kinds_there_are() {
        let e = kind("nosuch").err().unwrap();
        assert_eq!(e.field, "kind");
        for k in kinds() {
            assert!(e.message.contains(k.name()), "{e}");
            assert_eq!(kind(k.name()).unwrap().name(), k.name());
        }
    }
}
