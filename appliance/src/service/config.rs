//! Configuration export and import: platforms, storage targets, rules, bandwidth windows and
//! alert settings in one JSON file an admin keeps, to rebuild an appliance (its storage targets'
//! stores adopted again from their own files) or to copy settings to another. Passwords and
//! store passphrases are in the file only when the admin gives a passphrase: each sealed with
//! XChaCha20-Poly1305 under an argon2id key of the passphrase, whose salt and costs the file
//! records. An import adds everything or nothing (a store it made is removed again); platforms,
//! targets and rules whose names exist already are kept as they are.

use super::catalog::put_setting;
use super::platforms::{check_platform, insert_platform};
use super::rules::{check_settings, insert_rule, rule_of_vm};
use super::storage::{check_new, open_blocking, MadeStores, Opened, OWN_TARGET};
use super::{open_with, seal_with, Service};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use web::*;

const FORMAT: &str = "holdfast-config";
type PlatformDbRow = (i64, String, String, String, Option<String>, Option<String>);
const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    format: String,
    version: u32,
    exported: String,
    /// How the passwords in this file are sealed; None: the file holds none.
    #[serde(default)]
    sealing: Option<Sealing>,
    #[serde(default)]
    platforms: Vec<PlatformEntry>,
    /// Storage targets besides the appliance's own store (which every appliance has).
    #[serde(default)]
    storage: Vec<StorageEntry>,
    /// Rules as `NewRule`, with the platform's and the storage target's names in place of ids.
    #[serde(default)]
    rules: Vec<serde_json::Value>,
    #[serde(default)]
    bandwidth: Vec<BandwidthWindow>,
    /// Alert settings; `password` sealed.
    #[serde(default)]
    alerts: Option<serde_json::Value>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sealing {
    kdf: String,
    salt: String,
    m_cost_kib: u32,
    t_cost: u32,
    p_cost: u32,
}

/// A platform: beside these fields its kind's settings (files from before the registry, with
/// only a `uri`, read the same way). The kind checks them on import.
#[derive(Serialize, Deserialize)]
struct PlatformEntry {
    name: String,
    kind: String,
    #[serde(default)]
    username: Option<String>,
    /// Sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password: Option<String>,
    #[serde(flatten)]
    settings: serde_json::Map<String, serde_json::Value>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StorageEntry {
    name: String,
    path: String,
    /// An encrypted store's passphrase, sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    passphrase: Option<String>,
}

fn file_key(passphrase: &str, s: &Sealing) -> ApiResult<[u8; 32]> {
    if s.kdf != "argon2id" {
        return Err(ApiError::field("config.sealing.kdf", format!("{:?} is not argon2id", s.kdf)));
    }
    let salt = hex::decode(&s.salt).map_err(|e| ApiError::field("config.sealing.salt", e))?;
    let params = argon2::Params::new(s.m_cost_kib, s.t_cost, s.p_cost, Some(32))
        .map_err(|e| ApiError::field("config.sealing", e))?;
    let mut key = [0u8; 32];
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password_into(passphrase.as_bytes(), &salt, &mut key)
        .map_err(|e| ApiError::field("config.sealing", e))?;
    Ok(key)
}

fn new_sealing() -> Sealing {
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).expect("OS randomness");
    // OWASP's argon2id minimum: the file may travel, the passphrase is all that guards it.
    Sealing { kdf: "argon2id".into(), salt: hex::encode(salt), m_cost_kib: 19456, t_cost: 2, p_cost: 1 }
}

/// Prefixes a field error with where in the file it is.
fn within(prefix: &str, e: ApiError) -> ApiError {
    ApiError::new(e.problem, format!("{prefix}.{}", e.message))
}

impl Service {
    pub(super) async fn export_config(&self, s: &Session, e: ConfigExport) -> ApiResult<serde_json::Value> {
        let passphrase = e.passphrase.filter(|p| !p.is_empty());
        if passphrase.as_ref().is_some_and(|p| p.len() < 10) {
            return Err(ApiError::field("passphrase", "use at least 10 characters: it alone guards the passwords"));
        }
        let sealing = passphrase.as_ref().map(|_| new_sealing());
        let key = passphrase.as_deref().zip(sealing.as_ref()).map(|(p, s)| file_key(p, s)).transpose()?;
        let reseal = |plain: &str| key.as_ref().map(|k| seal_with(k, plain));
        let mut notes = Vec::new();
        let rows: Vec<PlatformDbRow> =
            sqlx::query_as("SELECT id, name, kind, settings, username, secret FROM platforms ORDER BY name")
                .fetch_all(&self.db)
                .await
                .map_err(ApiError::internal)?;
        let mut names = HashMap::new();
        let mut platforms = Vec::new();
        for (id, name, kind, settings, username, secret) in rows {
            let settings = serde_json::from_str(&settings).map_err(ApiError::internal)?;
            let password = match &secret {
                Some(sealed) => reseal(&self.open_sealed(sealed)?),
                None => None,
            };
            if secret.is_some() && password.is_none() {
                notes.push(format!("platform {name}: password left out (no passphrase)"));
            }
            names.insert(id, name.clone());
            platforms.push(PlatformEntry { name, kind, settings, username, password });
        }
        let mut targets = HashMap::new();
        let mut storage = Vec::new();
        for (id, name, path, secret, _) in self.target_rows().await? {
            targets.insert(id, name.clone());
            if id == OWN_TARGET {
                continue;
            }
            let passphrase = match &secret {
                Some(sealed) => reseal(&self.open_sealed(sealed)?),
                None => None,
            };
            if secret.is_some() && passphrase.is_none() {
                notes.push(format!("storage target {name}: store passphrase left out (no passphrase)"));
            }
            storage.push(StorageEntry { name, path, passphrase });
        }
        let mut rules = Vec::new();
        for r in self.list_rules().await? {
            let rule = NewRule {
                name: r.name,
                platform: r.platform,
                vms: r.vms,
                full: r.full,
                partial: r.partial,
                retention: r.retention,
                quiesce: Some(r.quiesce),
                enabled: Some(r.enabled),
                disks: r.disks,
                delete_data_with_rule: r.delete_data_with_rule,
                change_tracking: Some(r.change_tracking),
                lan_free: r.lan_free,
                storage: Some(r.storage),
                snapshot_mode: r.snapshot_mode,
                bandwidth_mb_per_second: r.bandwidth_mb_per_second,
            };
            let mut v = serde_json::to_value(&rule).map_err(ApiError::internal)?;
            v["platform"] = serde_json::Value::String(names.get(&r.platform).cloned().unwrap_or_default());
            v["storage"] = serde_json::Value::String(targets.get(&r.storage).cloned().unwrap_or_default());
            rules.push(v);
        }
        let alerts = match self.load_alerts().await? {
            None => None,
            Some((mut a, password)) => {
                if password.is_some() && key.is_none() {
                    notes.push("alert mail: SMTP password left out (no passphrase)".into());
                }
                match &key {
                    Some(k) => Some(self.alerts_json(&mut a, password.as_deref(), k)?),
                    None => Some(self.alerts_json(&mut a, None, &self.secret)?),
                }
            }
        };
        let file = ConfigFile {
            format: FORMAT.into(),
            version: VERSION,
            exported: super::catalog::now(),
            sealing,
            platforms,
            storage,
            rules,
            bandwidth: self.bandwidth.read().expect("bandwidth lock").clone(),
            alerts,
        };
        let detail = format!(
            "{} platforms, {} rules, passwords {}",
            file.platforms.len(),
            file.rules.len(),
            if key.is_some() { "sealed with a passphrase" } else { "left out" }
        );
        self.audit_log(&s.user, "configuration exported", &detail).await?;
        let mut v = serde_json::to_value(&file).map_err(ApiError::internal)?;
        v["notes"] = serde_json::json!(notes);
        Ok(v)
    }

    pub(super) async fn import_config(&self, s: &Session, i: ConfigImport) -> ApiResult<ImportReport> {
        let mut config = i.config;
        // What the export added for people; not part of the file's content.
        if let Some(o) = config.as_object_mut() {
            o.remove("notes");
        }
        let file: ConfigFile = serde_json::from_value(config).map_err(|e| ApiError::field("config", e))?;
        if file.format != FORMAT {
            return Err(ApiError::field("config.format", format!("{:?} is not {FORMAT}", file.format)));
        }
        if file.version != VERSION {
            return Err(ApiError::field(
                "config.version",
                format!("{} is not supported (this appliance reads {VERSION})", file.version),
            ));
        }
        let sealed_inside = file.platforms.iter().any(|p| p.password.is_some())
            || file.storage.iter().any(|t| t.passphrase.is_some())
            || file.alerts.as_ref().is_some_and(|a| a.get("password").is_some_and(|p| p.is_string()));
        let key = match (&file.sealing, i.passphrase.as_deref().filter(|p| !p.is_empty())) {
            (Some(sealing), Some(p)) => Some(file_key(p, sealing)?),
            (_, None) if sealed_inside => {
                return Err(ApiError::field("passphrase", "the file holds sealed passwords: give its passphrase"))
            }
            _ => None,
        };
        let open = |what: &str, sealed: &str| -> ApiResult<String> {
            let k = key.as_ref().ok_or_else(|| ApiError::field("config.sealing", "is missing"))?;
            open_with(k, sealed)
                .ok_or_else(|| ApiError::field("passphrase", format!("does not open the password of {what}")))
        };

        // Everything checked before anything is saved.
        let mut report = ImportReport::default();
        let mut new_platforms = Vec::new();
        for (n, p) in file.platforms.iter().enumerate() {
            let password =
                p.password.as_deref().map(|sealed| open(&format!("platform {}", p.name), sealed)).transpose()?;
            let np = NewPlatform {
                name: p.name.clone(),
                kind: p.kind.clone(),
                settings: p.settings.clone(),
                username: p.username.clone(),
                password,
            };
            check_platform(&np).map_err(|e| within(&format!("config.platforms[{n}]"), e))?;
            new_platforms.push(np);
        }
        // Storage targets: each store adopted or made before anything is saved; a store made
        // here is removed again if the import does not finish.
        let mut targets: HashMap<String, i64> =
            self.target_rows().await?.into_iter().map(|(id, name, ..)| (name, id)).collect();
        let mut made = MadeStores::default();
        let mut new_targets = Vec::new();
        for (n, t) in file.storage.iter().enumerate() {
            if targets.contains_key(&t.name) {
                report.storage_kept.push(t.name.clone());
                continue;
            }
            let at = format!("config.storage[{n}].");
            let passphrase = t
                .passphrase
                .as_deref()
                .map(|sealed| open(&format!("storage target {}", t.name), sealed))
                .transpose()?;
            let nt = NewStorage { name: t.name.clone(), path: t.path.clone(), passphrase, zstd_level: None };
            let path = check_new(&nt, &at)?;
            self.check_free(&nt, &path, &at).await?;
            if new_targets.iter().any(|(o, p, _): &(NewStorage, std::path::PathBuf, Opened)| {
                o.name == nt.name || path.starts_with(p) || p.starts_with(&path)
            }) {
                return Err(ApiError::conflict(format!("{at}name: the file names this target or its path twice")));
            }
            let (nt, opened) = open_blocking(nt, &path, &at).await?;
            if matches!(opened, Opened::Made(_)) {
                made.add(&path);
            }
            new_targets.push((nt, path, opened));
        }
        super::bandwidth::check(&file.bandwidth)
            .map_err(|e| ApiError::bad(format!("config.bandwidth{}", e.message)))?;
        let alerts = match &file.alerts {
            None => None,
            Some(v) => {
                let mut v = v.clone();
                let password = match v.get("password").and_then(|p| p.as_str()) {
                    Some(sealed) => Some(open("the alert mail settings", sealed)?),
                    None => None,
                };
                if let Some(o) = v.as_object_mut() {
                    o.remove("password");
                }
                let a: AlertSettings = serde_json::from_value(v).map_err(|e| ApiError::field("config.alerts", e))?;
                super::alerts::check(&a).map_err(|e| within("config.alerts", e))?;
                // A file without the password (exported without a passphrase) does not erase the
                // one stored here for the same server and user; otherwise the report says so.
                let password = match (password, self.load_alerts().await?) {
                    (Some(p), _) => Some(p),
                    (None, Some((old, Some(stored)))) if old.smtp_host == a.smtp_host && old.username == a.username => {
                        report.notes.push("alert mail: the file holds no SMTP password: the stored one is kept".into());
                        Some(stored)
                    }
                    (None, _) => {
                        if a.username.is_some() {
                            report.notes.push("alert mail: the file holds no SMTP password: set it again".into());
                        }
                        None
                    }
                };
                Some((a, password))
            }
        };

        let mut tx = super::catalog::begin_write(&self.db).await?;
        let existing: Vec<(i64, String)> =
            sqlx::query_as("SELECT id, name FROM platforms").fetch_all(&mut *tx).await.map_err(ApiError::internal)?;
        let mut ids: HashMap<String, i64> = existing.into_iter().map(|(id, n)| (n, id)).collect();
        for p in &new_platforms {
            if ids.contains_key(&p.name) {
                report.platforms_kept.push(p.name.clone());
                continue;
            }
            let secret = p.password.as_deref().map(|pw| self.seal(pw));
            let reached = "imported: the connection is tested at its first use";
            let id = insert_platform(&mut *tx, p, secret.as_deref(), reached).await?;
            ids.insert(p.name.clone(), id);
            report.platforms_added.push(p.name.clone());
            if p.username.is_some() && p.password.is_none() {
                report.notes.push(format!("platform {}: no password in the file: set it again", p.name));
            }
        }
        let mut attach = Vec::new();
        for (t, path, opened) in new_targets {
            let id = self.insert_target(&mut tx, &t, &path).await?;
            targets.insert(t.name.clone(), id);
            report.storage_added.push(t.name.clone());
            attach.push((id, t.name, opened));
        }
        let rule_names: Vec<(String,)> =
            sqlx::query_as("SELECT name FROM rules").fetch_all(&mut *tx).await.map_err(ApiError::internal)?;
        for (n, v) in file.rules.iter().enumerate() {
            let at = format!("config.rules[{n}]");
            let platform = v["platform"].as_str().unwrap_or_default().to_string();
            let id = *ids.get(&platform).ok_or_else(|| {
                ApiError::field(&format!("{at}.platform"), format!("no platform {platform:?} in the file or here"))
            })?;
            let mut v = v.clone();
            v["platform"] = serde_json::json!(id);
            // Files from before storage targets name none: the appliance's own store.
            if let Some(target) = v.get("storage").and_then(|s| s.as_str()).map(str::to_string) {
                let tid = *targets.get(&target).ok_or_else(|| {
                    ApiError::field(
                        &format!("{at}.storage"),
                        format!("no storage target {target:?} in the file or here"),
                    )
                })?;
                v["storage"] = serde_json::json!(tid);
            }
            let r: NewRule = serde_json::from_value(v).map_err(|e| ApiError::field(&at, e))?;
            if rule_names.iter().any(|(name,)| name == &r.name) {
                report.rules_kept.push(r.name.clone());
                continue;
            }
            let c = check_settings(&r).map_err(|e| within(&at, e))?;
            for (k, vm) in r.vms.iter().enumerate() {
                if let Some((_, other)) = rule_of_vm(&mut *tx, id, vm).await? {
                    return Err(ApiError::conflict(format!("{at}.vms[{k}]: VM {vm} is already in rule {other}")));
                }
            }
            insert_rule(&mut tx, &r, &c, id).await.map_err(|e| within(&at, e))?;
            report.rules_added.push(r.name.clone());
        }
        if !file.bandwidth.is_empty() {
            let json = serde_json::to_string(&file.bandwidth).map_err(ApiError::internal)?;
            put_setting(&mut tx, super::bandwidth::SETTING, &json).await.map_err(ApiError::internal)?;
        }
        if let Some((mut a, password)) = alerts {
            let json = self.alerts_json(&mut a, password.as_deref(), &self.secret)?;
            put_setting(&mut tx, super::alerts::SETTING, &json.to_string()).await.map_err(ApiError::internal)?;
        }
        tx.commit().await.map_err(ApiError::internal)?;
        made.keep();
        for (id, name, opened) in attach {
            let points = self.attach_target(id, opened.into_store()).await?;
            if points > 0 {
                report.notes.push(format!("storage target {name}: {points} points adopted into the catalog"));
            }
        }
        if !file.bandwidth.is_empty() {
            *self.bandwidth.write().expect("bandwidth lock") = file.bandwidth.clone();
        }
        let detail = format!(
            "platforms added {:?}, kept {:?}; storage targets added {:?}, kept {:?}; rules added {:?}, kept {:?}",
            report.platforms_added,
            report.platforms_kept,
            report.storage_added,
            report.storage_kept,
            report.rules_added,
            report.rules_kept
        );
        self.audit_log(&s.user, "configuration imported", &detail).await?;
        Ok(report)
    }
}
