//! Restore points through the API: one point as its store describes it, and what an operator
//! does to a point by hand: star it, lock it (admins), delete it. The store decides (a locked
//! point refuses every change; a point in use refuses deletion); the catalog's index follows.

use super::Service;
use chrono::{DateTime, Local, NaiveDate, TimeZone, Utc};
use vds_store::{Labels, StoreError};
use web::*;

/// A store's refusal as the API's: a locked or busy point is a conflict, a missing one not found.
fn refusal(point: &str, e: StoreError) -> ApiError {
    match e {
        StoreError::PointNotFound { .. } => ApiError::not_found(format!("restore point {point}")),
        e @ (StoreError::Locked { .. } | StoreError::InUse { .. }) => ApiError::conflict(e.to_string()),
        e @ StoreError::Invalid(_) => ApiError::bad(format!("restore point {point}: {e}")),
        e => ApiError::server(format!("restore point {point}: {e}")),
    }
}

/// "YYYY-MM-DD" (the end of that local day) or an RFC 3339 time.
fn lock_time(until: &str) -> ApiResult<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(until) {
        return Ok(t.with_timezone(&Utc));
    }
    let day = NaiveDate::parse_from_str(until, "%Y-%m-%d")
        .map_err(|_| ApiError::field("until", format!("{until:?} is not a date (YYYY-MM-DD) or an RFC 3339 time")))?;
    let end = day.and_hms_opt(23, 59, 59).expect("a valid time of day");
    Local
        .from_local_datetime(&end)
        .latest()
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(|| ApiError::field("until", format!("{until} has no end of day here")))
}

impl Service {
    async fn point_row(&self, point: &str) -> ApiResult<PointRow> {
        self.point_rows("WHERE point_id = $1", Some(point))
            .await?
            .pop()
            .ok_or_else(|| ApiError::not_found(format!("restore point {point}")))
    }

    pub(super) async fn point_details(&self, point: &str) -> ApiResult<PointDetails> {
        let row = self.point_row(point).await?;
        let (_, store) = self.point_store(point).await?;
        let p = point.to_string();
        let entry = tokio::task::spawn_blocking(move || store.find(&p))
            .await
            .map_err(ApiError::internal)?
            .map_err(|e| refusal(point, e))?;
        let made: Option<(i64, Option<String>)> = sqlx::query_as(
            "SELECT id, transport FROM jobs WHERE point_id = $1 AND kind = 'backup' ORDER BY id LIMIT 1",
        )
        .bind(point)
        .fetch_optional(&self.db)
        .await
        .map_err(ApiError::internal)?;
        let now = Utc::now();
        let undeletable = match (entry.labels.locked_at(now), entry.labels.star, self.sessions.using(point)) {
            (Some(until), ..) => Some(format!("locked (immutable) until {}", until.to_rfc3339())),
            (None, true, _) => Some("starred: unstar it first".to_string()),
            (None, false, Some(id)) => Some(format!("instant-recovery session {id} exports it: end the session first")),
            _ => None,
        };
        let m = &entry.manifest;
        Ok(PointDetails {
            point: PointRow {
                star: entry.labels.star,
                locked_until: entry.labels.locked_at(now).map(|t| t.to_rfc3339()),
                ..row
            },
            consistency: m.consistency.clone(),
            disks: m
                .disks
                .iter()
                .map(|d| PointDiskInfo {
                    key: d.key.clone(),
                    size: d.size,
                    backup_type: d.backup_type.as_str().to_string(),
                    full_reason: d.full_reason.clone(),
                    allocated_bytes: d.allocated_bytes,
                    read_bytes: d.read_bytes,
                })
                .collect(),
            read_bytes: m.stats.read_bytes,
            job: made.as_ref().map(|(id, _)| *id),
            transport: made.and_then(|(_, t)| t),
            undeletable,
        })
    }

    /// Writes the store's new labels into the catalog's index.
    async fn index_labels(&self, point: &str, labels: &Labels) -> ApiResult<()> {
        sqlx::query("UPDATE points SET star = $1, locked_until = $2 WHERE point_id = $3")
            .bind(labels.star as i64)
            .bind(labels.retain_until.map(|t| t.to_rfc3339()))
            .bind(point)
            .execute(&self.db)
            .await
            .map_err(ApiError::internal)?;
        Ok(())
    }

    pub(super) async fn star(&self, s: &Session, point: &str, star: bool) -> ApiResult<PointDetails> {
        let (_, store) = self.point_store(point).await?;
        let p = point.to_string();
        let labels = tokio::task::spawn_blocking(move || store.set_star(&p, star))
            .await
            .map_err(ApiError::internal)?
            .map_err(|e| refusal(point, e))?;
        self.index_labels(point, &labels).await?;
        self.audit_log(&s.user, if star { "point starred" } else { "point unstarred" }, point).await?;
        self.point_details(point).await
    }

    pub(super) async fn lock(&self, s: &Session, point: &str, l: PointLock) -> ApiResult<PointDetails> {
        let until = lock_time(&l.until)?;
        let (_, store) = self.point_store(point).await?;
        let p = point.to_string();
        let labels = tokio::task::spawn_blocking(move || store.lock(&p, until))
            .await
            .map_err(ApiError::internal)?
            .map_err(|e| match e {
                e @ StoreError::Invalid(_) => ApiError::field("until", e),
                e => refusal(point, e),
            })?;
        self.index_labels(point, &labels).await?;
        self.audit_log(&s.user, "point locked", &format!("{point} until {}", until.to_rfc3339())).await?;
        self.point_details(point).await
    }

    /// Deletes a point at once; refused while starred, locked, restored or the base of a backup.
    pub(super) async fn remove_point(&self, s: &Session, point: &str) -> ApiResult<()> {
        if let Some(id) = self.sessions.using(point) {
            return Err(ApiError::conflict(format!(
                "restore point {point}: instant-recovery session {id} exports it: end the session first"
            )));
        }
        if let Some((job,)) = sqlx::query_as::<_, (i64,)>(&format!(
            "SELECT id FROM jobs WHERE kind = 'restore' AND point_id = $1 AND state IN {}",
            super::jobs::active_states()
        ))
        .bind(point)
        .fetch_optional(&self.db)
        .await
        .map_err(ApiError::internal)?
        {
            return Err(ApiError::conflict(format!(
                "restore point {point}: restore job {job} reads it: wait or stop it"
            )));
        }
        let (_, store) = self.point_store(point).await?;
        let p = point.to_string();
        let deleted = tokio::task::spawn_blocking(move || {
            let entry = store.find(&p)?;
            if entry.labels.star && entry.labels.locked_at(Utc::now()).is_none() {
                return Ok(Err(format!("restore point {p} is starred: unstar it first")));
            }
            store.delete_point(&entry.vm, &p).map(Ok)
        })
        .await
        .map_err(ApiError::internal)?;
        match deleted {
            // Gone from the store already (a store changed beside the appliance): the index
            // follows rather than keep a point nobody can delete.
            Err(StoreError::PointNotFound { .. }) => {}
            Err(e) => return Err(refusal(point, e)),
            Ok(Err(starred)) => return Err(ApiError::conflict(starred)),
            Ok(Ok(())) => {}
        }
        sqlx::query("DELETE FROM points WHERE point_id = $1")
            .bind(point)
            .execute(&self.db)
            .await
            .map_err(ApiError::internal)?;
        self.audit_log(&s.user, "point deleted", point).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_date_is_the_end_of_that_day_and_a_time_is_taken_as_given() {
        let t = lock_time("2031-05-06").unwrap().with_timezone(&Local);
        assert_eq!((t.format("%Y-%m-%d %H:%M:%S").to_string()), "2031-05-06 23:59:59");
        assert_eq!(lock_time("2031-05-06T10:00:00Z").unwrap().to_rfc3339(), "2031-05-06T10:00:00+00:00");
        assert!(lock_time("next week").unwrap_err().message.starts_with("until:"));
    }
}
