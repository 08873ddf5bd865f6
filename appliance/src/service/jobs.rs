//! The catalog's jobs, their logs, the index of points and the audit log: the SQL that reads
//! and writes them, and the decoding of a job row into the API's type.

use super::catalog::{now, Db};
use super::Service;
use vds_store::RestorePoint;
use web::*;

/// Adds a line to job `job`'s log.
pub(super) async fn log(db: &Db, job: i64, level: &str, message: &str) {
    // A log line that cannot be written must not fail the job; say so where someone looks.
    if let Err(e) = sqlx::query("INSERT INTO job_logs (job_id, time, level, message) VALUES ($1, $2, $3, $4)")
        .bind(job)
        .bind(now())
        .bind(level)
        .bind(message)
        .execute(db)
        .await
    {
        eprintln!("holdfast: job {job}: cannot write a log line ({e}): {level}: {message}");
    }
}

/// Indexes a point of storage target `storage` in the catalog.
pub(super) async fn insert_point<'c, E: sqlx::Executor<'c, Database = sqlx::Any>>(
    db: E,
    p: &RestorePoint,
    labels: &vds_store::manifest::Labels,
    storage: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO points (point_id, vm_key, vm_name, backup_type, started, finished, parent, stored_bytes, \
         protected_bytes, storage_id, star, locked_until) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
         ON CONFLICT (point_id) DO NOTHING",
    )
    .bind(&p.point_id)
    .bind(&p.vm.key)
    .bind(&p.vm.name)
    .bind(p.backup_type.as_str())
    .bind(p.started.to_rfc3339())
    .bind(p.finished.to_rfc3339())
    .bind(&p.parent)
    .bind(p.stats.new_stored_bytes as i64)
    .bind(p.disks.iter().map(|d| d.size as i64).sum::<i64>())
    .bind(storage)
    .bind(labels.star as i64)
    .bind(labels.retain_until.map(|t| t.to_rfc3339()))
    .execute(db)
    .await
    .map(|_| ())
}

/// One of a closed set of words from a catalog column; a word the API does not know is a
/// decoding error naming the column.
fn word<T>(r: &sqlx::any::AnyRow, column: &str, parse: fn(&str) -> Option<T>) -> sqlx::Result<T> {
    use sqlx::Row;
    let text: String = r.try_get(column)?;
    parse(&text).ok_or_else(|| sqlx::Error::ColumnDecode {
        index: column.into(),
        source: format!("{text:?} is not a known value").into(),
    })
}

/// A job from a row of JOB_COLUMNS.
fn job(r: &sqlx::any::AnyRow) -> sqlx::Result<Job> {
    use sqlx::Row;
    Ok(Job {
        id: r.try_get("id")?,
        kind: word(r, "kind", JobKind::parse)?,
        platform: r.try_get("platform_id")?,
        vm: r.try_get("vm")?,
        backup_type: word(r, "backup_type", JobType::parse)?,
        state: word(r, "state", JobState::parse)?,
        percent: r.try_get("percent")?,
        done_bytes: r.try_get("done_bytes")?,
        total_bytes: r.try_get("total_bytes")?,
        rate: r.try_get("rate")?,
        eta_seconds: r.try_get("eta_seconds")?,
        error: r.try_get("error")?,
        point_id: r.try_get("point_id")?,
        rule: r.try_get("rule_id")?,
        storage: r.try_get("storage_id")?,
        created: r.try_get("created")?,
        started: r.try_get("started")?,
        finished: r.try_get("finished")?,
        source_kind: r.try_get("source_kind")?,
        source_platform: r.try_get("source_platform")?,
    })
}

type PointDbRow = (String, String, String, String, String, String, Option<String>, i64, i64, i64, i64, Option<String>);

/// The states of a job that has not ended, for SQL (`state IN …`).
pub(super) fn active_states() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let words: Vec<String> =
            JobState::ALL.iter().filter(|s| !s.ended()).map(|s| format!("'{}'", s.as_str())).collect();
        format!("({})", words.join(", "))
    })
}

const JOB_COLUMNS: &str = "id, kind, platform_id, vm, backup_type, state, percent, done_bytes, total_bytes, rate, \
                           eta_seconds, error, point_id, rule_id, storage_id, created, started, finished, \
                           source_kind, source_platform";

impl Service {
    pub(super) async fn job_by_id(&self, id: i64) -> ApiResult<Job> {
        let row = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.db)
            .await
            .map_err(ApiError::internal)?;
        row.as_ref()
            .map(job)
            .transpose()
            .map_err(ApiError::internal)?
            .ok_or_else(|| ApiError::not_found(format!("job {id}")))
    }

    pub(super) async fn list_jobs(&self, f: JobFilter) -> ApiResult<Vec<Job>> {
        let limit = i64::from(f.limit.unwrap_or(500).clamp(1, 5000));
        let since = match &f.since {
            Some(t) => chrono::DateTime::parse_from_rfc3339(t)
                .map_err(|_| ApiError::field("since", format!("{t:?} is not an RFC 3339 time")))?
                .with_timezone(&chrono::Utc)
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            None => String::new(),
        };
        // Times are stored as RFC 3339 in UTC, so they compare as text.
        let rows =
            sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE created >= $1 ORDER BY id DESC LIMIT $2"))
                .bind(since)
                .bind(limit)
                .fetch_all(&self.db)
                .await
                .map_err(ApiError::internal)?;
        rows.iter().map(job).collect::<sqlx::Result<_>>().map_err(ApiError::internal)
    }

    pub(super) async fn log_of(&self, id: i64) -> ApiResult<Vec<LogLine>> {
        self.job_by_id(id).await?;
        // Reading a job's log clears its error from the unread count.
        sqlx::query("UPDATE jobs SET error_read = 1 WHERE id = $1")
            .bind(id)
            .execute(&self.db)
            .await
            .map_err(ApiError::internal)?;
        let rows: Vec<(String, String, String)> =
            sqlx::query_as("SELECT time, level, message FROM job_logs WHERE job_id = $1 ORDER BY id")
                .bind(id)
                .fetch_all(&self.db)
                .await
                .map_err(ApiError::internal)?;
        Ok(rows.into_iter().map(|(time, level, message)| LogLine { time, level, message }).collect())
    }

    pub(super) async fn list_points(&self) -> ApiResult<Vec<PointRow>> {
        self.point_rows("", None).await
    }

    /// The catalog's points, newest first; `filter` is a WHERE clause on `bind`.
    pub(super) async fn point_rows(&self, filter: &str, bind: Option<&str>) -> ApiResult<Vec<PointRow>> {
        let sql = format!(
            "SELECT point_id, vm_key, vm_name, backup_type, started, finished, parent, stored_bytes, protected_bytes, \
             storage_id, star, locked_until FROM points {filter} ORDER BY started DESC"
        );
        let mut query = sqlx::query_as(&sql);
        if let Some(value) = bind {
            query = query.bind(value);
        }
        let rows: Vec<PointDbRow> = query.fetch_all(&self.db).await.map_err(ApiError::internal)?;
        Ok(rows
            .into_iter()
            .map(|r| PointRow {
                point_id: r.0,
                vm_key: r.1,
                vm_name: r.2,
                backup_type: r.3,
                started: r.4,
                finished: r.5,
                parent: r.6,
                stored_bytes: r.7,
                protected_bytes: r.8,
                storage: r.9,
                star: r.10 != 0,
                // A lock that has run out protects nothing any more.
                locked_until: r
                    .11
                    .filter(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok_and(|t| t > chrono::Utc::now())),
            })
            .collect())
    }

    /// A page of the audit log, newest first.
    pub(super) async fn list_audit(&self, q: AuditQuery) -> ApiResult<Vec<AuditRow>> {
        let limit = q.limit.unwrap_or(1000);
        if !(1..=10_000).contains(&limit) {
            return Err(ApiError::field("limit", format!("{limit} is outside 1-10000")));
        }
        let rows: Vec<(i64, String, String, String, String)> = sqlx::query_as(
            "SELECT id, time, user_name, action, detail FROM audit WHERE id < $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(q.before.unwrap_or(i64::MAX))
        .bind(limit as i64)
        .fetch_all(&self.db)
        .await
        .map_err(ApiError::internal)?;
        Ok(rows
            .into_iter()
            .map(|(id, time, user, action, detail)| AuditRow { id, time, user, action, detail })
            .collect())
    }

    /// A job of `vm` still queued or running, if any (a killed backup being cleaned up after
    /// a restart counts).
    pub(super) async fn active_job(&self, platform: i64, vm: &str) -> ApiResult<Option<i64>> {
        if let Some(id) = self.cleaning.lock().expect("cleaning lock").get(&(platform, vm.to_string())) {
            return Ok(Some(*id));
        }
        let row: Option<(i64,)> = sqlx::query_as(&format!(
            "SELECT id FROM jobs WHERE platform_id = $1 AND (vm = $2 OR vm_id = $2) AND state IN {}",
            active_states()
        ))
        .bind(platform)
        .bind(vm)
        .fetch_optional(&self.db)
        .await
        .map_err(ApiError::internal)?;
        Ok(row.map(|(id,)| id))
    }
}

#[cfg(test)]
#[test]
fn the_active_states_are_every_state_but_the_ends() {
    assert_eq!(
        active_states(),
        "('queued', 'preparing', 'saving_configuration', 'snapshotting', 'querying_changes', 'waiting', \
         'running', 'checking_data', 'stopping', 'unknown')"
    );
}
