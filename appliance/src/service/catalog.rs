//! The catalog database: opening it, its schema migrations, and small helpers. SQLite by
//! default; statements use `$N` parameters so the same SQL runs on PostgreSQL later.

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::SqlitePool;
use std::path::Path;
use std::str::FromStr;

pub type Db = SqlitePool;

/// Schema versions, applied in order, each once, in a transaction with its version record.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/0001_catalog.sql")),
    (2, include_str!("../../migrations/0002_rules.sql")),
    (3, include_str!("../../migrations/0003_tokens.sql")),
];

pub async fn open(path: &Path) -> anyhow::Result<Db> {
    let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .foreign_keys(true)
        .busy_timeout(std::time::Duration::from_secs(10));
    let db = SqlitePoolOptions::new().max_connections(4).connect_with(opts).await?;
    migrate(&db).await?;
    Ok(db)
}

async fn migrate(db: &Db) -> anyhow::Result<()> {
    sqlx::raw_sql("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT PRIMARY KEY, applied TEXT NOT NULL)")
        .execute(db)
        .await?;
    for (version, sql) in MIGRATIONS {
        let done: Option<(i64,)> = sqlx::query_as("SELECT version FROM schema_version WHERE version = $1")
            .bind(version)
            .fetch_optional(db)
            .await?;
        if done.is_some() {
            continue;
        }
        let mut tx = db.begin().await?;
        sqlx::raw_sql(sql).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO schema_version (version, applied) VALUES ($1, $2)")
            .bind(version)
            .bind(now())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    }
    Ok(())
}

pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    getrandom::getrandom(&mut b).expect("OS randomness");
    hex::encode(b)
}
