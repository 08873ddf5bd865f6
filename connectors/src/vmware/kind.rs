//! VMware's entry in the platform registry: its settings (the vCenter or ESXi host, how its
//! certificate is trusted), its capabilities and how a connection opens.

use super::soap::{check_thumbprint, TlsTrust};
use super::{VmwareConnector, PLATFORM};
use crate::connector::{Connector, ConnectorError, Credentials};
use crate::registry::{typed, Capabilities, DiskFormat, FieldError, PlatformKind, SettingField, Settings};
use std::path::{Path, PathBuf};

pub struct Vmware;

/// The registry's VMware kind.
pub static KIND: Vmware = Vmware;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct VmwareSettings {
    /// vCenter or ESXi: a name or address, with :port when not 443.
    host: String,
    /// The certificate's SHA-256 (or SHA-1) thumbprint: exactly this certificate is accepted.
    #[serde(default)]
    thumbprint: Option<String>,
    /// A PEM file on the appliance with the CA that signed the host's certificate.
    #[serde(default)]
    ca_file: Option<PathBuf>,
    /// The data path: "https" (the datastore's /folder service) or "vddk"; default: vddk when
    /// vddk_dir is set, else https.
    #[serde(default)]
    transport: Option<String>,
    /// Where VMware's VDDK is installed on the appliance (lib64/libvixDiskLib.so.N below it).
    #[serde(default)]
    vddk_dir: Option<PathBuf>,
    /// The VDDK transport modes to try, in order: nbd, nbdssl, hotadd, san (default nbdssl:nbd).
    #[serde(default)]
    vddk_modes: Option<String>,
}

/// VDDK's transport modes.
const MODES: &[&str] = &["nbd", "nbdssl", "hotadd", "san"];

const FIELDS: &[SettingField] = &[
    SettingField {
        name: "host",
        label: "vCenter or ESXi host",
        help: "its name or address as the appliance reaches it over HTTPS, with :port when not 443; the user \
               needs the privileges of a backup role (snapshots, datastore browsing, VM creation for restores)",
        required: true,
        example: "vcenter.example.com",
    },
    SettingField {
        name: "thumbprint",
        label: "Certificate thumbprint",
        help: "the host certificate's SHA-256 (or SHA-1) thumbprint, to trust exactly that certificate (vCenter's \
               own are self-signed); Test connection shows it",
        required: false,
        example: "AB:CD:…",
    },
    SettingField {
        name: "ca_file",
        label: "CA certificate file",
        help: "on the appliance: a PEM file with the CA that signed the host's certificate (without it or a \
               thumbprint, the public CAs are trusted)",
        required: false,
        example: "/etc/holdfast/vcenter-ca.pem",
    },
    SettingField {
        name: "transport",
        label: "Transport",
        help: "https (the datastore's file service, nothing to install) or vddk (VMware's VDDK, installed on the \
               appliance: faster, and hot-add or SAN); default: vddk when its directory is set",
        required: false,
        example: "https",
    },
    SettingField {
        name: "vddk_dir",
        label: "VDDK directory",
        help: "on the appliance: where VMware's VDDK was unpacked (it has lib64/libvixDiskLib.so.N)",
        required: false,
        example: "/opt/vmware-vix-disklib-distrib",
    },
    SettingField {
        name: "vddk_modes",
        label: "VDDK transport modes",
        help: "tried in order, separated by ':' — nbdssl, nbd, hotadd (the appliance is a VM on this vSphere), san \
               (it sees the datastores' LUNs); default nbdssl:nbd",
        required: false,
        example: "hotadd:nbdssl",
    },
];

const FORMATS: &[DiskFormat] =
    &[DiskFormat { name: "thin", description: "thin-provisioned VMDK: space is used as the guest writes" }];

fn settings(s: &Settings) -> Result<VmwareSettings, FieldError> {
    let k: VmwareSettings = typed(s)?;
    let host = k.host.trim();
    if host.is_empty() || host.contains(['/', ' ', '?', '#', '@']) {
        return Err(FieldError::new("host", format!("{:?} is not a host name or address (with :port)", k.host)));
    }
    if let Some(t) = &k.thumbprint {
        check_thumbprint(t).map_err(|e| FieldError::new("thumbprint", e))?;
    }
    for (name, f) in [("ca_file", &k.ca_file), ("vddk_dir", &k.vddk_dir)] {
        if let Some(f) = f {
            if !f.is_absolute() {
                return Err(FieldError::new(name, format!("{} is not an absolute path", f.display())));
            }
        }
    }
    match k.transport.as_deref() {
        None | Some("https") => {}
        Some("vddk") if k.vddk_dir.is_none() => {
            return Err(FieldError::new("vddk_dir", "the vddk transport needs the directory VDDK is installed in"))
        }
        Some("vddk") => {}
        Some(t) => return Err(FieldError::new("transport", format!("{t:?} is not a transport: https or vddk"))),
    }
    if let Some(m) = &k.vddk_modes {
        if let Some(bad) = m.split(':').find(|x| !MODES.contains(x)) {
            return Err(FieldError::new("vddk_modes", format!("{bad:?} is not a VDDK mode ({})", MODES.join(", "))));
        }
    }
    Ok(k)
}

impl VmwareSettings {
    /// VDDK's directory and modes when the data goes through VDDK.
    fn vddk(&self) -> Option<super::VddkSettings> {
        let dir = self.vddk_dir.clone()?;
        (self.transport.as_deref() != Some("https"))
            .then(|| super::VddkSettings { dir, modes: self.vddk_modes.clone().unwrap_or_else(|| "nbdssl:nbd".into()) })
    }
}

impl PlatformKind for Vmware {
    fn name(&self) -> &'static str {
        PLATFORM
    }

    fn title(&self) -> &'static str {
        "VMware vSphere (vCenter or ESXi)"
    }

    fn fields(&self) -> &'static [SettingField] {
        FIELDS
    }

    fn check(&self, s: &Settings) -> Result<(), FieldError> {
        settings(s).map(|_| ())
    }

    fn summary(&self, s: &Settings) -> String {
        settings(s).map(|k| format!("https://{}", k.host)).unwrap_or_default()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            change_tracking: true,
            quiesce: true,
            lan_free: true,
            hot_add: true,
            restore_in_place: true,
            restore_as_new_vm: true,
            storage_word: "datastore",
            default_storage: None,
            disk_formats: FORMATS,
            instant_recovery: false,
        }
    }

    fn open(
        &self,
        s: &Settings,
        credentials: Option<&Credentials>,
        _work_dir: &Path,
    ) -> Result<Box<dyn Connector>, ConnectorError> {
        let unreachable = |cause: String| ConnectorError::Unreachable {
            platform: PLATFORM,
            target: "the platform's settings".into(),
            cause,
        };
        let k = settings(s).map_err(|e| unreachable(e.to_string()))?;
        let credentials = credentials.ok_or_else(|| {
            unreachable("vSphere needs a user name and password (the platform record has none)".into())
        })?;
        let ca_pem = match &k.ca_file {
            Some(f) => Some(std::fs::read(f).map_err(|e| unreachable(format!("reading {}: {e}", f.display())))?),
            None => None,
        };
        let trust = TlsTrust { ca_pem, thumbprint: k.thumbprint.clone() };
        let mut conn = VmwareConnector::open(k.host.trim(), &trust, credentials)?;
        conn.vddk = k.vddk();
        Ok(Box::new(conn))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: serde_json::Value) -> Settings {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn settings_are_refused_by_field() {
        assert!(KIND.check(&s(serde_json::json!({ "host": "vc.example.com:8443" }))).is_ok());
        let e = KIND.check(&s(serde_json::json!({ "host": "https://vc/sdk" }))).unwrap_err();
        assert_eq!(e.field, "host");
        let e = KIND.check(&s(serde_json::json!({ "host": "vc", "thumbprint": "12:34" }))).unwrap_err();
        assert_eq!(e.field, "thumbprint");
        let e = KIND.check(&s(serde_json::json!({ "host": "vc", "ca_file": "ca.pem" }))).unwrap_err();
        assert_eq!(e.field, "ca_file");
        let e = KIND.check(&s(serde_json::json!({ "host": "vc", "colour": 1 }))).unwrap_err();
        assert_eq!(e.field, "colour");
        let e = KIND.check(&s(serde_json::json!({ "host": "vc", "transport": "vddk" }))).unwrap_err();
        assert_eq!(e.field, "vddk_dir");
        let e = KIND.check(&s(serde_json::json!({ "host": "vc", "transport": "nfc" }))).unwrap_err();
        assert_eq!(e.field, "transport");
        let e = KIND
            .check(&s(serde_json::json!({ "host": "vc", "vddk_dir": "/opt/v", "vddk_modes": "nbd:usb" })))
            .unwrap_err();
        assert_eq!(e.field, "vddk_modes");
        let k = settings(&s(serde_json::json!({ "host": "vc", "vddk_dir": "/opt/v" }))).unwrap();
        assert_eq!(k.vddk().map(|v| v.modes), Some("nbdssl:nbd".into()), "vddk by default once installed");
        let k = settings(&s(serde_json::json!({ "host": "vc", "vddk_dir": "/opt/v", "transport": "https" }))).unwrap();
        assert!(k.vddk().is_none());
    }
}
