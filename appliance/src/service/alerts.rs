//! Alert mail: a job failed, a VM's backup succeeded after failures, the store's filesystem is
//! nearly full. SMTP with STARTTLS, TLS or (on a trusted network) neither, through lettre. The
//! same alert (kind and VM) is mailed at most once per `repeat_minutes`; the next mail says how
//! many were held back. A mail that cannot be sent never fails the job; it is logged.

use super::catalog::{now, put_setting};
use super::storage::used_percent;
use super::Service;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{Message, SmtpTransport, Transport};
use web::*;

pub(super) const SETTING: &str = "alerts";

pub(super) fn check(a: &AlertSettings) -> ApiResult<()> {
    if a.smtp_host.trim().is_empty() {
        return Err(ApiError::field("smtp_host", "must not be empty"));
    }
    if !["starttls", "tls", "none"].contains(&a.security.as_str()) {
        return Err(ApiError::field("security", format!("{:?}: use starttls, tls or none", a.security)));
    }
    a.from.parse::<Mailbox>().map_err(|e| ApiError::field("from", e))?;
    if a.to.is_empty() {
        return Err(ApiError::field("to", "at least one address is needed"));
    }
    for (i, t) in a.to.iter().enumerate() {
        t.parse::<Mailbox>().map_err(|e| ApiError::field(&format!("to[{i}]"), e))?;
    }
    if let Some(pem) = &a.ca_pem {
        Certificate::from_pem(pem.as_bytes()).map_err(|e| ApiError::field("ca_pem", e))?;
    }
    if !(1..=100).contains(&a.storage_full_percent) {
        return Err(ApiError::field("storage_full_percent", "must be 1-100"));
    }
    Ok(())
}

/// Sends one mail (blocking).
fn send(a: &AlertSettings, password: Option<&str>, subject: &str, body: &str) -> Result<(), String> {
    let tls = || -> Result<TlsParameters, String> {
        let mut b = TlsParameters::builder(a.smtp_host.clone());
        if let Some(pem) = &a.ca_pem {
            b = b.add_root_certificate(Certificate::from_pem(pem.as_bytes()).map_err(|e| e.to_string())?);
        }
        b.build_rustls().map_err(|e| e.to_string())
    };
    let security = match a.security.as_str() {
        "starttls" => Tls::Required(tls()?),
        "tls" => Tls::Wrapper(tls()?),
        _ => Tls::None,
    };
    let mut transport = SmtpTransport::builder_dangerous(&a.smtp_host)
        .port(a.smtp_port)
        .tls(security)
        .timeout(Some(std::time::Duration::from_secs(30)));
    if let Some(user) = &a.username {
        transport = transport.credentials(Credentials::new(user.clone(), password.unwrap_or_default().to_string()));
    }
    let mut msg = Message::builder().from(a.from.parse().map_err(|e| format!("from: {e}"))?).subject(subject);
    for t in &a.to {
        msg = msg.to(t.parse().map_err(|e| format!("to {t}: {e}"))?);
    }
    let msg = msg.body(body.to_string()).map_err(|e| e.to_string())?;
    transport.build().send(&msg).map(|_| ()).map_err(|e| format!("mailing {}:{}: {e}", a.smtp_host, a.smtp_port))
}

impl Service {
    /// The saved settings and the stored password (sealed in the catalog).
    pub(super) async fn load_alerts(&self) -> ApiResult<Option<(AlertSettings, Option<String>)>> {
        let Some(json) = super::catalog::setting(&self.db, SETTING).await? else { return Ok(None) };
        let mut a: AlertSettings = serde_json::from_str(&json).map_err(ApiError::internal)?;
        let password = match a.password.take() {
            Some(sealed) => Some(self.open_sealed(&sealed)?),
            None => None,
        };
        a.has_password = password.is_some();
        Ok(Some((a, password)))
    }

    /// The settings as stored: the password (if any) sealed under `key` inside the JSON.
    /// `password` is skipped when settings are serialized for the API, hence the JSON value.
    pub(super) fn alerts_json(
        &self,
        a: &mut AlertSettings,
        password: Option<&str>,
        key: &[u8; 32],
    ) -> ApiResult<serde_json::Value> {
        a.has_password = password.is_some();
        let mut json = serde_json::to_value(&*a).map_err(ApiError::internal)?;
        if let Some(p) = password {
            json["password"] = serde_json::Value::String(super::seal_with(key, p));
        }
        Ok(json)
    }

    pub(super) async fn get_alerts(&self) -> ApiResult<Option<AlertSettings>> {
        Ok(self.load_alerts().await?.map(|(a, _)| a))
    }

    pub(super) async fn put_alerts(&self, s: &Session, mut a: AlertSettings) -> ApiResult<()> {
        check(&a)?;
        // No password given: keep the stored one (the API never sends it back); an empty one
        // removes it.
        let password = match a.password.take() {
            Some(p) if p.is_empty() => None,
            Some(p) => Some(p),
            None => self.load_alerts().await?.and_then(|(_, p)| p),
        };
        let json = self.alerts_json(&mut a, password.as_deref(), &self.secret)?;
        let mut tx = super::catalog::begin_write(&self.db).await?;
        put_setting(&mut tx, SETTING, &json.to_string()).await.map_err(ApiError::internal)?;
        tx.commit().await.map_err(ApiError::internal)?;
        // A new threshold is checked now, not at the next look.
        self.storage_check.notify_one();
        self.audit_log(
            &s.user,
            "alert settings changed",
            &format!("{}:{} to {}", a.smtp_host, a.smtp_port, a.to.join(", ")),
        )
        .await
    }

    pub(super) async fn send_test_alert(&self, s: &Session) -> ApiResult<()> {
        let (a, password) = self
            .load_alerts()
            .await?
            .ok_or_else(|| ApiError::conflict("no alert settings saved yet (PUT /api/alerts)"))?;
        let body = format!("A test of Holdfast's alert mail, sent by {} at {}.", s.user, now());
        tokio::task::spawn_blocking(move || send(&a, password.as_deref(), "Holdfast: test", &body))
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::upstream)
    }

    /// Mails an alert unless the same one went out within the repeat window.
    pub(super) async fn alert(&self, key: &str, subject: &str, body: &str) {
        let _one_at_a_time = self.alert_lock.lock().await;
        let Ok(Some((a, password))) = self.load_alerts().await else { return };
        if !a.enabled {
            return;
        }
        let last: Option<(String, i64)> =
            sqlx::query_as("SELECT last_sent, suppressed FROM alert_log WHERE alert_key = $1")
                .bind(key)
                .fetch_optional(&self.db)
                .await
                .ok()
                .flatten();
        let window = chrono::Duration::minutes(i64::from(a.repeat_minutes));
        let recent = last
            .as_ref()
            .and_then(|(t, _)| chrono::DateTime::parse_from_rfc3339(t).ok())
            .is_some_and(|t| chrono::Utc::now() - t.with_timezone(&chrono::Utc) < window);
        if recent {
            let _ = sqlx::query("UPDATE alert_log SET suppressed = suppressed + 1 WHERE alert_key = $1")
                .bind(key)
                .execute(&self.db)
                .await;
            return;
        }
        let held = last.map(|(_, n)| n).unwrap_or(0);
        let mut body = body.to_string();
        if held > 0 {
            body += &format!(
                "\n\n{held} more alert(s) like this one were not mailed in the last {} minutes.",
                a.repeat_minutes
            );
        }
        let subject = subject.to_string();
        let sent = tokio::task::spawn_blocking(move || send(&a, password.as_deref(), &subject, &body)).await;
        match sent {
            Ok(Ok(())) => {
                let mut tx = match self.db.begin().await {
                    Ok(tx) => tx,
                    Err(_) => return,
                };
                let _ = sqlx::query("DELETE FROM alert_log WHERE alert_key = $1").bind(key).execute(&mut *tx).await;
                let _ = sqlx::query("INSERT INTO alert_log (alert_key, last_sent, suppressed) VALUES ($1, $2, 0)")
                    .bind(key)
                    .bind(chrono::Utc::now().to_rfc3339())
                    .execute(&mut *tx)
                    .await;
                let _ = tx.commit().await;
            }
            Ok(Err(e)) => eprintln!("holdfast: alert {key} not mailed: {e}"),
            Err(e) => eprintln!("holdfast: alert {key} not mailed: {e}"),
        }
    }

    /// After a job: failure, recovery after failures, and a nearly full store.
    pub(super) async fn alerts_after_job(&self, id: i64, platform: i64, vm: &str, error: Option<&str>) {
        match error {
            Some(e) => {
                let body = format!("Backup job {id} of VM {vm} (platform {platform}) failed:\n\n{e}");
                self.alert(&format!("failed:{platform}:{vm}"), &format!("Holdfast: backup of {vm} failed"), &body)
                    .await;
            }
            None => {
                let previous: Option<(String,)> = sqlx::query_as(
                    "SELECT state FROM jobs WHERE kind = 'backup' AND platform_id = $1 AND vm = $2 AND id < $3 \
                     AND state IN ('completed', 'failed') ORDER BY id DESC LIMIT 1",
                )
                .bind(platform)
                .bind(vm)
                .bind(id)
                .fetch_optional(&self.db)
                .await
                .ok()
                .flatten();
                if previous.is_some_and(|(s,)| s == "failed") {
                    let body = format!("Backup job {id} of VM {vm} (platform {platform}) succeeded after failed runs.");
                    let subject = format!("Holdfast: backup of {vm} succeeded after failures");
                    self.alert(&format!("recovered:{platform}:{vm}"), &subject, &body).await;
                }
            }
        }
        self.check_storage().await;
    }

    /// Mails the storage alerts: a storage target whose store does not open (its disk or share
    /// gone), and one whose filesystem is over the threshold (the repeat cap keeps each to one
    /// mail per target and window).
    pub(super) async fn check_storage(&self) {
        let Ok(Some((a, _))) = self.load_alerts().await else { return };
        for (id, name, why) in self.unavailable_targets().await {
            let subject = format!("Holdfast: storage target {name} is unavailable");
            let body = format!("{why}\n\nBackups into it fail until it is back; it is opened again at its next use.");
            self.alert(&format!("unavailable:{id}"), &subject, &body).await;
        }
        for (id, name, store) in self.open_stores().await {
            let Some(used) = used_percent(store.root()) else { continue };
            if used >= f64::from(a.storage_full_percent) {
                let root = store.root().display().to_string();
                let body = format!(
                    "The filesystem of storage target {name} (store {root}) is {used:.0}% full (alert at {}%).",
                    a.storage_full_percent
                );
                let subject = format!("Holdfast: store {name} ({root}) is {used:.0}% full");
                self.alert(&format!("storage:{id}"), &subject, &body).await;
            }
        }
    }
}

impl Service {
    /// Watches the store's filesystem outside jobs too (other data can fill it): every
    /// `every`, and at once when the alert settings change.
    pub(super) fn start_storage_watch(self: &std::sync::Arc<Self>, every: std::time::Duration) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                me.check_storage().await;
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    () = me.storage_check.notified() => {}
                }
            }
        });
    }
}
