//! A storage target's health: verify (re-read the chunks, check their hashes, name every point a
//! bad one affects) and garbage collection (remove what no point needs), started by an admin and
//! run beside the jobs, one of each kind per target at a time. The last result of each is kept
//! in the catalog's settings, so it outlasts a restart and the console can show it.

use super::Service;
use std::sync::Arc;
use web::*;

/// The settings key of a target's last check of a kind.
pub(super) fn key(target: i64, kind: &str) -> String {
    format!("storage_check:{target}:{kind}")
}

fn verify_summary(r: &vds_store::verify::VerifyReport) -> (bool, String) {
    let what = format!(
        "{} blobs ({} bytes) of {} points re-read{}",
        r.blobs_checked,
        r.bytes_checked,
        r.points_checked,
        if r.sample < 1.0 { format!(", a {:.0} % sample", r.sample * 100.0) } else { String::new() }
    );
    if r.is_clean() {
        return (true, format!("{what}: all sound"));
    }
    let points: Vec<String> = r.affected.iter().map(|a| format!("{} of VM {}", a.point_id, a.vm)).collect();
    (false, format!("{what}: {} damaged blobs; points affected: {}", r.damaged.len(), points.join(", ")))
}

fn gc_summary(r: &vds_store::gc::GcReport) -> (bool, String) {
    let mut words = format!(
        "removed {} blobs ({} bytes) no point needs; kept {} blobs ({} bytes) of {} points",
        r.removed_blobs, r.removed_bytes, r.kept_blobs, r.kept_bytes, r.points
    );
    if !r.missing.is_empty() {
        let points: std::collections::BTreeSet<&str> = r.missing.iter().map(|(p, _)| p.as_str()).collect();
        words += &format!(
            "; {} blobs that points refer to are missing (points {}): run a verify",
            r.missing.len(),
            points.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    (r.missing.is_empty(), words)
}

impl Service {
    async fn save_check(&self, target: i64, check: &StorageCheck) -> ApiResult<()> {
        let json = serde_json::to_string(check).map_err(ApiError::internal)?;
        super::catalog::save_setting(&self.db, &key(target, check.kind.as_str()), &json).await
    }

    /// A target's last verify and garbage collection (running ones included).
    pub(super) async fn health(&self, target: i64) -> ApiResult<Vec<StorageCheck>> {
        let mut out = Vec::new();
        for kind in StorageCheckKind::ALL {
            let running = self.checks.lock().expect("checks lock").get(&(target, *kind)).cloned();
            let check = match running {
                Some(c) => Some(c),
                None => super::catalog::setting(&self.db, &key(target, kind.as_str()))
                    .await?
                    .and_then(|json| serde_json::from_str(&json).ok()),
            };
            out.extend(check);
        }
        Ok(out)
    }

    /// Starts a verify or a garbage collection of target `id`; refused while one of that kind runs.
    pub(super) async fn start_check(
        self: &Arc<Self>,
        s: &Session,
        id: i64,
        kind: StorageCheckKind,
        sample_percent: Option<f64>,
    ) -> ApiResult<StorageTarget> {
        let store = self.store(id).await?;
        let sample = match sample_percent {
            Some(p) if !(p > 0.0 && p <= 100.0) => {
                return Err(ApiError::field("sample_percent", format!("{p} is outside 0-100 (0 excluded)")))
            }
            Some(p) => p / 100.0,
            None => 1.0,
        };
        let started = StorageCheck {
            kind,
            started: super::catalog::now(),
            finished: None,
            running: true,
            ok: None,
            summary: match kind {
                StorageCheckKind::Verify => format!("re-reading {:.0} % of the chunks", sample * 100.0),
                StorageCheckKind::Gc => "marking what the points need, then sweeping".into(),
            },
        };
        {
            let mut checks = self.checks.lock().expect("checks lock");
            if checks.contains_key(&(id, kind)) {
                return Err(ApiError::conflict(format!("storage target {id}: a {} runs already", kind.as_str())));
            }
            checks.insert((id, kind), started.clone());
        }
        if let Err(e) =
            self.audit_log(&s.user, &format!("storage {} started", kind.as_str()), &format!("target {id}")).await
        {
            // Not started after all: the next request may try again.
            self.checks.lock().expect("checks lock").remove(&(id, kind));
            return Err(e);
        }
        let me = self.clone();
        tokio::spawn(async move {
            let outcome = tokio::task::spawn_blocking(move || match kind {
                StorageCheckKind::Verify => {
                    store.verify(sample, 2, false, &|_| {}).map(|r| verify_summary(&r)).map_err(|e| e.to_string())
                }
                StorageCheckKind::Gc => store.gc(false).map(|r| gc_summary(&r)).map_err(|e| e.to_string()),
            })
            .await
            .unwrap_or_else(|e| Err(format!("the check ended abnormally: {e}")));
            let (ok, summary) = outcome.unwrap_or_else(|e| (false, format!("failed: {e}")));
            let done = StorageCheck {
                finished: Some(super::catalog::now()),
                running: false,
                ok: Some(ok),
                summary,
                ..started
            };
            if let Err(e) = me.save_check(id, &done).await {
                eprintln!("holdfast: storage target {id}: cannot keep the {} result: {}", kind.as_str(), e.message);
            }
            me.checks.lock().expect("checks lock").remove(&(id, kind));
        });
        let row = self.target_row(id).await?;
        self.describe_target(row).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_say_what_was_found() {
        let clean =
            vds_store::verify::VerifyReport { sample: 1.0, blobs_checked: 3, points_checked: 1, ..Default::default() };
        assert_eq!(verify_summary(&clean), (true, "3 blobs (0 bytes) of 1 points re-read: all sound".to_string()));
        let bad = vds_store::verify::VerifyReport {
            sample: 0.5,
            damaged: vec![("ab".into(), "hash".into())],
            affected: vec![vds_store::verify::AffectedPoint {
                vm: "web".into(),
                point_id: "p1".into(),
                problems: vec![],
            }],
            ..Default::default()
        };
        let (ok, words) = verify_summary(&bad);
        assert!(!ok && words.contains("a 50 % sample") && words.contains("p1 of VM web"), "{words}");
        let gc = vds_store::gc::GcReport { missing: vec![("p2".into(), "cd".into())], ..Default::default() };
        let (ok, words) = gc_summary(&gc);
        assert!(!ok && words.contains("points p2"), "{words}");
    }
}
