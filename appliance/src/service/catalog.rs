//! The catalog database: opening it, its schema migrations, and small helpers. SQLite by
//! default, PostgreSQL when the URL says so: the same statements run on both (`$N` parameters,
//! `RETURNING id`, BIGINT columns).

use sqlx::any::AnyPoolOptions;
use sqlx::AnyPool;

pub type Db = AnyPool;

/// Schema versions, applied in order, each once, in a transaction with its version record.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/0001_catalog.sql")),
    (2, include_str!("../../migrations/0002_rules.sql")),
    (3, include_str!("../../migrations/0003_tokens.sql")),
    (4, include_str!("../../migrations/0004_alerts.sql")),
    (5, include_str!("../../migrations/0005_stats.sql")),
    (6, include_str!("../../migrations/0006_rate.sql")),
    (7, include_str!("../../migrations/0007_rule_options.sql")),
    (8, include_str!("../../migrations/0008_change_tracking.sql")),
    (9, include_str!("../../migrations/0009_restores.sql")),
    (10, include_str!("../../migrations/0010_lan_free.sql")),
    (11, include_str!("../../migrations/0011_storage_targets.sql")),
    (12, include_str!("../../migrations/0012_platform_settings.sql")),
    (13, include_str!("../../migrations/0013_vm_ids.sql")),
    (14, include_str!("../../migrations/0014_point_labels.sql")),
    (15, include_str!("../../migrations/0015_rule_run_options.sql")),
    (16, include_str!("../../migrations/0016_recoveries.sql")),
    (17, include_str!("../../migrations/0017_job_source.sql")),
];

/// The catalog at `url`: `sqlite://PATH` (made if missing) or `postgres://…`.
pub async fn open(url: &str) -> anyhow::Result<Db> {
    sqlx::any::install_default_drivers();
    let sqlite = url.starts_with("sqlite:");
    if !sqlite && !url.starts_with("postgres:") && !url.starts_with("postgresql:") {
        anyhow::bail!("catalog URL {url:?}: use sqlite://PATH or postgres://USER:PASSWORD@HOST/DB");
    }
    let url = if sqlite && !url.contains('?') { format!("{url}?mode=rwc") } else { url.to_string() };
    // sqlx's SQLite connections enforce foreign keys and wait 5 s on a busy database already.
    let db = AnyPoolOptions::new().max_connections(4).connect(&url).await?;
    if sqlite {
        sqlx::raw_sql("PRAGMA journal_mode = WAL").execute(&db).await?;
    }
    migrate(&db, sqlite, i64::MAX).await?;
    Ok(db)
}

/// The SQL is written for SQLite; on PostgreSQL an `INTEGER PRIMARY KEY` (SQLite's row id)
/// becomes a `BIGSERIAL` key. Other integer columns are BIGINT on both.
async fn migrate(db: &Db, sqlite: bool, upto: i64) -> anyhow::Result<()> {
    sqlx::raw_sql("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT PRIMARY KEY, applied TEXT NOT NULL)")
        .execute(db)
        .await?;
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v <= upto) {
        let done: Option<(i64,)> = sqlx::query_as("SELECT version FROM schema_version WHERE version = $1")
            .bind(version)
            .fetch_optional(db)
            .await?;
        if done.is_some() {
            continue;
        }
        let sql = if sqlite { sql.to_string() } else { sql.replace("INTEGER PRIMARY KEY", "BIGSERIAL PRIMARY KEY") };
        let mut tx = db.begin().await?;
        sqlx::raw_sql(&sql).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO schema_version (version, applied) VALUES ($1, $2)")
            .bind(version)
            .bind(now())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    }
    Ok(())
}

/// Replaces the setting `name` (JSON text) inside the caller's transaction.
/// A setting's value (JSON text), if one is saved.
pub async fn setting(db: &Db, name: &str) -> Result<Option<String>, web::ApiError> {
    let row: Option<(String,)> = sqlx::query_as("SELECT value FROM settings WHERE name = $1")
        .bind(name)
        .fetch_optional(db)
        .await
        .map_err(web::ApiError::internal)?;
    Ok(row.map(|(v,)| v))
}

/// Saves a setting in its own write transaction.
pub async fn save_setting(db: &Db, name: &str, value: &str) -> Result<(), web::ApiError> {
    let mut tx = begin_write(db).await?;
    put_setting(&mut tx, name, value).await.map_err(web::ApiError::internal)?;
    tx.commit().await.map_err(web::ApiError::internal)
}

pub async fn put_setting(tx: &mut sqlx::Transaction<'_, sqlx::Any>, name: &str, value: &str) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM settings WHERE name = $1").bind(name).execute(&mut **tx).await?;
    sqlx::query("INSERT INTO settings (name, value) VALUES ($1, $2)").bind(name).bind(value).execute(&mut **tx).await?;
    Ok(())
}

/// A transaction that holds the catalog's write lock from its start. SQLite's default
/// transaction takes the lock only at its first write, and one that has read by then fails at
/// once (it is not retried) when another connection wrote meanwhile; a transaction that reads
/// before it writes (an import, a password reset) must start with the lock.
pub async fn begin_write(db: &Db) -> Result<sqlx::Transaction<'static, sqlx::Any>, web::ApiError> {
    let mut tx = db.begin().await.map_err(web::ApiError::internal)?;
    sqlx::query("UPDATE schema_version SET applied = applied WHERE version < 0")
        .execute(&mut *tx)
        .await
        .map_err(web::ApiError::internal)?;
    Ok(tx)
}

/// The text of the first column of every row `sql` returns for the one parameter `id` (names
/// of the rules that use something, and the like).
pub async fn texts(db: &Db, sql: &str, id: i64) -> Result<Vec<String>, web::ApiError> {
    let rows: Vec<(String,)> = sqlx::query_as(sql).bind(id).fetch_all(db).await.map_err(web::ApiError::internal)?;
    Ok(rows.into_iter().map(|(t,)| t).collect())
}

pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    getrandom::getrandom(&mut b).expect("OS randomness");
    hex::encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A catalog of the schema before platform settings (version 11) keeps its platforms: the
    /// URI, quotes and backslashes included, becomes the settings object.
    #[tokio::test]
    async fn platform_uris_migrate_into_settings() {
        sqlx::any::install_default_drivers();
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("c.db").display());
        let db = AnyPoolOptions::new().max_connections(1).connect(&url).await.unwrap();
        migrate(&db, true, 11).await.unwrap();
        let uri = r#"qemu+ssh://root@h/system?keyfile=/k/"a"\b"#;
        sqlx::query("INSERT INTO platforms (name, kind, uri, reached, created) VALUES ('lab', 'kvm', $1, 'x', 'y')")
            .bind(uri)
            .execute(&db)
            .await
            .unwrap();
        migrate(&db, true, i64::MAX).await.unwrap();
        let (settings,): (String,) = sqlx::query_as("SELECT settings FROM platforms").fetch_one(&db).await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&settings).unwrap();
        assert_eq!(v, serde_json::json!({ "uri": uri }));
    }

    /// A catalog of today's schema before VM ids (version 12) keeps every rule, job and point;
    /// its VMs have no id until their next backup.
    #[tokio::test]
    async fn rules_jobs_and_points_survive_the_vm_id_migration() {
        sqlx::any::install_default_drivers();
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("c.db").display());
        let db = AnyPoolOptions::new().max_connections(1).connect(&url).await.unwrap();
        migrate(&db, true, 12).await.unwrap();
        for sql in [
            "INSERT INTO platforms (id, name, kind, settings, reached, created) VALUES (1, 'lab', 'kvm', '{}', 'x', 'y')",
            "INSERT INTO rules (id, name, platform_id, full_schedule, retention, quiesce, created, checked_until) \
             VALUES (1, 'nightly', 1, '{}', '{}', 'auto', 'y', 'y')",
            "INSERT INTO rule_vms (rule_id, platform_id, vm) VALUES (1, 1, 'web01')",
            "INSERT INTO jobs (id, platform_id, vm, backup_type, state, created, rule_id) \
             VALUES (1, 1, 'web01', 'full', 'completed', 'y', 1)",
            "INSERT INTO points (point_id, vm_key, vm_name, backup_type, started, finished, stored_bytes, \
             protected_bytes, storage_id) VALUES ('p1', 'uuid-1', 'web01', 'full', 'a', 'b', 1, 2, 1)",
        ] {
            sqlx::query(sql).execute(&db).await.unwrap();
        }
        migrate(&db, true, i64::MAX).await.unwrap();
        let rule: (String, Option<String>) =
            sqlx::query_as("SELECT vm, vm_id FROM rule_vms WHERE rule_id = 1").fetch_one(&db).await.unwrap();
        assert_eq!(rule, ("web01".to_string(), None));
        let job: (String, Option<String>, i64) =
            sqlx::query_as("SELECT vm, vm_id, rule_id FROM jobs WHERE id = 1").fetch_one(&db).await.unwrap();
        assert_eq!(job, ("web01".to_string(), None, 1));
        let point: (String, String) =
            sqlx::query_as("SELECT vm_key, vm_name FROM points WHERE point_id = 'p1'").fetch_one(&db).await.unwrap();
        assert_eq!(point, ("uuid-1".to_string(), "web01".to_string()));
    }

    /// A transaction that reads and then writes while another connection writes: with the lock
    /// taken at its start the other write waits, and the transaction's own write succeeds
    /// (a plain BEGIN fails it at once with "database is locked").
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_transaction_that_reads_first_still_writes_while_others_write() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&format!("sqlite://{}", dir.path().join("c.db").display())).await.unwrap();
        let insert = "INSERT INTO audit (time, user_name, action, detail) VALUES ('t', 'u', $1, '')";
        let mut tx = begin_write(&db).await.unwrap();
        let _: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM audit").fetch_one(&mut *tx).await.unwrap();
        let other = {
            let db = db.clone();
            tokio::spawn(async move { sqlx::query(insert).bind("other").execute(&db).await.map(|_| ()) })
        };
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        sqlx::query(insert).bind("mine").execute(&mut *tx).await.expect("the transaction's own write");
        tx.commit().await.unwrap();
        other.await.unwrap().expect("the other write, after the transaction");
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM audit").fetch_one(&db).await.unwrap();
        assert_eq!(n, 2);
    }
}
