//! Statistics per VM and per rule: successes and failures over the last week, month and year,
//! bytes protected (the newest point's disk sizes) and stored (what its points added), and errors
//! not read yet (a failed job's log read clears it).

use super::Service;
use web::*;

type Counts = (i64, i64, i64, i64, i64, i64);
type VmRow = (i64, String, i64, i64, i64, i64, i64, i64, i64);
type RuleRow = (i64, String, i64, i64, i64, i64, i64, i64);

const COUNTS: &str = "SUM(CASE WHEN state = 'completed' AND finished >= $1 THEN 1 ELSE 0 END), \
                      SUM(CASE WHEN state = 'completed' AND finished >= $2 THEN 1 ELSE 0 END), \
                      SUM(CASE WHEN state = 'completed' AND finished >= $3 THEN 1 ELSE 0 END), \
                      SUM(CASE WHEN state = 'failed' AND finished >= $1 THEN 1 ELSE 0 END), \
                      SUM(CASE WHEN state = 'failed' AND finished >= $2 THEN 1 ELSE 0 END), \
                      SUM(CASE WHEN state = 'failed' AND finished >= $3 THEN 1 ELSE 0 END)";

fn windows() -> [String; 3] {
    let now = chrono::Utc::now();
    [7, 30, 365].map(|d| (now - chrono::Duration::days(d)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

fn counts(c: Counts) -> (PeriodCounts, PeriodCounts) {
    (PeriodCounts { week: c.0, month: c.1, year: c.2 }, PeriodCounts { week: c.3, month: c.4, year: c.5 })
}

impl Service {
    pub(super) async fn stats(&self) -> ApiResult<Stats> {
        let [week, month, year] = windows();
        let err = ApiError::internal;
        // SUM over no rows is NULL: COALESCE keeps every count an integer on both databases.
        // PostgreSQL's SUM of integers may be NUMERIC: cast back to BIGINT for both databases.
        let coalesced = COUNTS.replace("SUM(", "CAST(COALESCE(SUM(").replace(" END)", " END), 0) AS BIGINT)");
        let vm_sql = format!(
            "SELECT platform_id, vm, {coalesced}, \
             CAST(COALESCE(SUM(CASE WHEN state = 'failed' AND error_read = 0 THEN 1 ELSE 0 END), 0) AS BIGINT) \
             FROM jobs WHERE kind = 'backup' GROUP BY platform_id, vm ORDER BY vm"
        );
        let vms: Vec<VmRow> =
            sqlx::query_as(&vm_sql).bind(&week).bind(&month).bind(&year).fetch_all(&self.db).await.map_err(err)?;
        // Each VM's points, found through its newest committed job, and per store key the newest
        // point's size and what all its points stored: two reads for every VM at once (a query
        // per VM took half a second with 500 VMs).
        let made: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT j.platform_id, j.vm, p.vm_key FROM jobs j JOIN points p ON p.point_id = j.point_id \
             WHERE j.kind = 'backup' ORDER BY j.id",
        )
        .fetch_all(&self.db)
        .await
        .map_err(err)?;
        let key_of: std::collections::HashMap<(i64, String), String> =
            made.into_iter().map(|(platform, vm, key)| ((platform, vm), key)).collect();
        let points: Vec<(String, String, i64, i64)> =
            sqlx::query_as("SELECT vm_key, started, protected_bytes, stored_bytes FROM points ORDER BY started")
                .fetch_all(&self.db)
                .await
                .map_err(err)?;
        let mut sizes: std::collections::HashMap<String, (i64, i64)> = Default::default();
        for (key, _, protected, stored) in points {
            let e = sizes.entry(key).or_default();
            // Ordered by time: the last seen is the newest point's size.
            *e = (protected, e.1 + stored);
        }
        let mut vm_rows = Vec::new();
        for (platform, vm, s1, s2, s3, f1, f2, f3, unread) in vms {
            let (protected, stored) =
                key_of.get(&(platform, vm.clone())).and_then(|k| sizes.get(k)).copied().unwrap_or((0, 0));
            let (ok, failed) = counts((s1, s2, s3, f1, f2, f3));
            vm_rows.push(VmStats {
                platform,
                vm,
                succeeded: ok,
                failed,
                unread_errors: unread,
                protected_bytes: protected,
                stored_bytes: stored,
            });
        }
        let rule_sql = format!(
            "SELECT r.id, r.name, {} FROM rules r LEFT JOIN jobs j ON j.rule_id = r.id GROUP BY r.id, r.name ORDER BY r.name",
            coalesced.replace("state", "j.state").replace("finished", "j.finished")
        );
        let rules: Vec<RuleRow> =
            sqlx::query_as(&rule_sql).bind(&week).bind(&month).bind(&year).fetch_all(&self.db).await.map_err(err)?;
        let rule_rows: Vec<RuleStats> = rules
            .into_iter()
            .map(|(id, name, s1, s2, s3, f1, f2, f3)| {
                let (ok, failed) = counts((s1, s2, s3, f1, f2, f3));
                RuleStats { rule: id, name, succeeded: ok, failed }
            })
            .collect();
        Ok(Stats { vms: vm_rows, rules: rule_rows })
    }
}
