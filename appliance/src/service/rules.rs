//! Backup rules and the scheduler that runs them. A rule names VMs of one platform (each VM in
//! at most one rule), a full schedule and optionally an incremental or a differential one (not
//! both), a retention policy applied after each successful backup, and quiesce. The scheduler
//! looks every second at what fell due since it last looked: a full wins when both fall due; a
//! VM whose previous run is still queued or running is skipped, and the skip is recorded.

use super::catalog::now;
use super::engine::RuleRun;
use super::schedule::{Clock, Schedule};
use super::Service;
use connectors::Quiesce;
use std::sync::Arc;
use vds_store::{BackupType, RetentionPolicy};
use web::*;

type RuleDbRow = (i64, String, i64, i64, String, Option<String>, Option<String>, String, String, String, String);

struct Stored {
    id: i64,
    platform: i64,
    enabled: bool,
    full: Schedule,
    partial: Option<(BackupType, Schedule)>,
    retention: RetentionPolicy,
    quiesce: Quiesce,
    checked_until: String,
}

fn quiesce_of(s: &str) -> Option<Quiesce> {
    match s {
        "auto" => Some(Quiesce::IfPossible),
        "off" => Some(Quiesce::Off),
        "required" => Some(Quiesce::Required),
        _ => None,
    }
}

fn parse_schedule(field: &str, v: &serde_json::Value, clock: &Clock) -> ApiResult<Schedule> {
    let s: Schedule = serde_json::from_value(v.clone()).map_err(|e| ApiError::field(field, e))?;
    s.validate(field, clock.now()).map_err(|e| ApiError::new(400, e))?;
    Ok(s)
}

impl Service {
    async fn rule_rows(&self) -> ApiResult<Vec<RuleDbRow>> {
        sqlx::query_as(
            "SELECT id, name, platform_id, enabled, full_schedule, partial_kind, partial_schedule, retention, quiesce, \
             created, checked_until FROM rules ORDER BY name",
        )
        .fetch_all(&self.db)
        .await
        .map_err(ApiError::internal)
    }

    async fn rule_vms(&self, id: i64) -> ApiResult<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as("SELECT vm FROM rule_vms WHERE rule_id = $1 ORDER BY vm")
            .bind(id)
            .fetch_all(&self.db)
            .await
            .map_err(ApiError::internal)?;
        Ok(rows.into_iter().map(|(v,)| v).collect())
    }

    fn stored(r: &RuleDbRow) -> Result<Stored, String> {
        let full = serde_json::from_str(&r.4).map_err(|e| e.to_string())?;
        let partial = match (&r.5, &r.6) {
            (Some(k), Some(s)) => Some((
                BackupType::parse(k).ok_or("bad partial kind")?,
                serde_json::from_str(s).map_err(|e| e.to_string())?,
            )),
            _ => None,
        };
        Ok(Stored {
            id: r.0,
            platform: r.2,
            enabled: r.3 != 0,
            full,
            partial,
            retention: serde_json::from_str(&r.7).map_err(|e| e.to_string())?,
            quiesce: quiesce_of(&r.8).ok_or("bad quiesce")?,
            checked_until: r.10.clone(),
        })
    }

    pub(super) async fn list_rules(&self) -> ApiResult<Vec<Rule>> {
        let mut out = Vec::new();
        for r in self.rule_rows().await? {
            let partial = match (&r.5, &r.6) {
                (Some(kind), Some(s)) => Some(serde_json::json!({
                    "kind": kind,
                    "schedule": serde_json::from_str::<serde_json::Value>(s).map_err(ApiError::internal)?,
                })),
                _ => None,
            };
            out.push(Rule {
                id: r.0,
                name: r.1.clone(),
                platform: r.2,
                vms: self.rule_vms(r.0).await?,
                enabled: r.3 != 0,
                full: serde_json::from_str(&r.4).map_err(ApiError::internal)?,
                partial,
                retention: serde_json::from_str(&r.7).map_err(ApiError::internal)?,
                quiesce: r.8.clone(),
                created: r.9.clone(),
            });
        }
        Ok(out)
    }

    /// Checks everything before saving anything; the rule and its VMs are saved in one transaction.
    pub(super) async fn add_rule(&self, s: &Session, r: NewRule) -> ApiResult<Rule> {
        let clock = Clock::from_env();
        if r.name.trim().is_empty() {
            return Err(ApiError::field("name", "must not be empty"));
        }
        let full = parse_schedule("full", &r.full, &clock)?;
        let partial = match &r.partial {
            None => None,
            Some(p) => {
                let kind = p["kind"].as_str().unwrap_or_default();
                let kind = match BackupType::parse(kind) {
                    Some(k @ (BackupType::Incremental | BackupType::Differential)) => k,
                    _ => {
                        return Err(ApiError::field(
                            "partial.kind",
                            format!("{kind:?}: use incremental or differential"),
                        ))
                    }
                };
                Some((kind, parse_schedule("partial.schedule", &p["schedule"], &clock)?))
            }
        };
        let retention: RetentionPolicy = if r.retention.is_null() {
            RetentionPolicy::default()
        } else {
            serde_json::from_value(r.retention.clone()).map_err(|e| ApiError::field("retention", e))?
        };
        retention.validate().map_err(|e| ApiError::field("retention", e))?;
        let quiesce = r.quiesce.clone().unwrap_or_else(|| "auto".into());
        quiesce_of(&quiesce)
            .ok_or_else(|| ApiError::field("quiesce", format!("{quiesce:?}: use auto, off or required")))?;
        if r.vms.is_empty() {
            return Err(ApiError::field("vms", "at least one VM is needed"));
        }
        let known = self.vms_of(r.platform).await.map_err(|e| {
            if e.status == 404 {
                ApiError::field("platform", e.message)
            } else {
                e
            }
        })?;
        for (i, vm) in r.vms.iter().enumerate() {
            if !known.iter().any(|k| &k.name == vm || &k.uuid == vm) {
                return Err(ApiError::field(&format!("vms[{i}]"), format!("no VM {vm:?} on platform {}", r.platform)));
            }
            let taken: Option<(String,)> = sqlx::query_as(
                "SELECT r.name FROM rule_vms v JOIN rules r ON r.id = v.rule_id WHERE v.platform_id = $1 AND v.vm = $2",
            )
            .bind(r.platform)
            .bind(vm)
            .fetch_optional(&self.db)
            .await
            .map_err(ApiError::internal)?;
            if let Some((rule,)) = taken {
                return Err(ApiError::new(409, format!("vms[{i}]: VM {vm} is already in rule {rule}")));
            }
        }
        let now_t = clock.now();
        let first = partial.as_ref().map(|(_, p)| p.first_check(now_t)).unwrap_or(now_t).min(full.first_check(now_t));
        let mut tx = self.db.begin().await.map_err(ApiError::internal)?;
        let id = sqlx::query_as::<_, (i64,)>(
            "INSERT INTO rules (name, platform_id, full_schedule, partial_kind, partial_schedule, retention, quiesce, created, \
             checked_until) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
        )
        .bind(&r.name)
        .bind(r.platform)
        .bind(serde_json::to_string(&full).map_err(ApiError::internal)?)
        .bind(partial.as_ref().map(|(k, _)| k.as_str()))
        .bind(partial.as_ref().map(|(_, s)| serde_json::to_string(s).unwrap_or_default()))
        .bind(serde_json::to_string(&retention).map_err(ApiError::internal)?)
        .bind(&quiesce)
        .bind(now())
        .bind(first.to_rfc3339())
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| match e {
            sqlx::Error::Database(d) if d.is_unique_violation() => {
                ApiError::new(409, format!("name: a rule named {:?} exists already", r.name))
            }
            e => ApiError::internal(e),
        })?
        .0;
        for vm in &r.vms {
            sqlx::query("INSERT INTO rule_vms (rule_id, platform_id, vm) VALUES ($1, $2, $3)")
                .bind(id)
                .bind(r.platform)
                .bind(vm)
                .execute(&mut *tx)
                .await
                .map_err(ApiError::internal)?;
        }
        tx.commit().await.map_err(ApiError::internal)?;
        self.audit_log(&s.user, "rule added", &format!("{} ({} VMs)", r.name, r.vms.len())).await?;
        self.list_rules()
            .await?
            .into_iter()
            .find(|x| x.id == id)
            .ok_or_else(|| ApiError::internal("the new rule vanished"))
    }

    pub(super) async fn remove_rule(&self, s: &Session, id: i64) -> ApiResult<()> {
        let row: Option<(String,)> = sqlx::query_as("SELECT name FROM rules WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.db)
            .await
            .map_err(ApiError::internal)?;
        let (name,) = row.ok_or_else(|| ApiError::not_found(format!("rule {id}")))?;
        if let Some((job,)) = sqlx::query_as::<_, (i64,)>(&format!(
            "SELECT id FROM jobs WHERE rule_id = $1 AND state IN {}",
            super::engine::ACTIVE_STATES
        ))
        .bind(id)
        .fetch_optional(&self.db)
        .await
        .map_err(ApiError::internal)?
        {
            return Err(ApiError::new(409, format!("rule {name} has job {job} running: stop it or wait")));
        }
        let mut tx = self.db.begin().await.map_err(ApiError::internal)?;
        // Jobs keep their history; they just no longer point at a rule.
        sqlx::query("UPDATE jobs SET rule_id = NULL WHERE rule_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(ApiError::internal)?;
        sqlx::query("DELETE FROM rule_vms WHERE rule_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(ApiError::internal)?;
        sqlx::query("DELETE FROM rules WHERE id = $1").bind(id).execute(&mut *tx).await.map_err(ApiError::internal)?;
        tx.commit().await.map_err(ApiError::internal)?;
        self.audit_log(&s.user, "rule deleted", &name).await
    }

    /// Starts a rule's VMs now (each skipped if its previous run is still going).
    pub(super) async fn run_rule_now(self: &Arc<Self>, s: &Session, id: i64, r: RunRule) -> ApiResult<Vec<Job>> {
        let requested = BackupType::parse(&r.backup_type).ok_or_else(|| {
            ApiError::field("type", format!("{:?}: use full, incremental or differential", r.backup_type))
        })?;
        let row = self
            .rule_rows()
            .await?
            .into_iter()
            .find(|x| x.0 == id)
            .ok_or_else(|| ApiError::not_found(format!("rule {id}")))?;
        let rule = Self::stored(&row).map_err(ApiError::internal)?;
        self.start_rule(&s.user, &rule, requested).await
    }

    async fn start_rule(self: &Arc<Self>, user: &str, rule: &Stored, requested: BackupType) -> ApiResult<Vec<Job>> {
        let mut jobs = Vec::new();
        for vm in self.rule_vms(rule.id).await? {
            if let Some(busy) = self.active_job(rule.platform, &vm).await? {
                self.record_skipped(rule.platform, &vm, requested, rule.id, busy).await;
                continue;
            }
            let run = RuleRun { rule_id: rule.id, retention: rule.retention.clone() };
            jobs.push(self.enqueue(user, rule.platform, &vm, requested, rule.quiesce, Some(run)).await?);
        }
        Ok(jobs)
    }

    /// One look at every enabled rule: what fell due since the last look runs now.
    async fn tick(self: &Arc<Self>, clock: &Clock) -> ApiResult<()> {
        let now_t = clock.now();
        for row in self.rule_rows().await? {
            let rule = match Self::stored(&row) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("holdfast: rule {} cannot be read: {e}", row.1);
                    continue;
                }
            };
            let Ok(since) = chrono::DateTime::parse_from_rfc3339(&rule.checked_until) else { continue };
            let since = since.with_timezone(&chrono::Local);
            if now_t <= since {
                continue;
            }
            let due = if !rule.enabled {
                None
            } else if rule.full.due(since, now_t) {
                Some(BackupType::Full)
            } else {
                rule.partial.as_ref().filter(|(_, s)| s.due(since, now_t)).map(|(k, _)| *k)
            };
            sqlx::query("UPDATE rules SET checked_until = $1 WHERE id = $2")
                .bind(now_t.to_rfc3339())
                .bind(rule.id)
                .execute(&self.db)
                .await
                .map_err(ApiError::internal)?;
            if let Some(kind) = due {
                self.start_rule("scheduler", &rule, kind).await?;
            }
        }
        Ok(())
    }

    /// The scheduler: a look every second for the life of the service.
    pub(super) fn start_scheduler(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            let clock = Clock::from_env();
            loop {
                if let Err(e) = me.tick(&clock).await {
                    eprintln!("holdfast: scheduler: {e}");
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        });
    }
}
