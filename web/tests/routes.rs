//! The API's routes against a fake backend (no appliance, no database, no TLS), through tower's
//! `oneshot`: every route is in the OpenAPI document with the access it declares, and the
//! access matrix holds for every route: no session, an auditor, an operator, a user whose
//! password must still be changed, and an admin (who is never refused by role).

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use std::future::Future;
use std::sync::Arc;
use tower::ServiceExt;
use web::*;

/// Knows four sessions by token (their role's name, and "fresh" for a pending password change);
/// every operation answers 404 "no fake", so a request that passes the access check says so.
struct Fake(tokio::sync::broadcast::Sender<Job>);

#[allow(clippy::manual_async_fn)]
fn nope<T>() -> impl Future<Output = ApiResult<T>> + Send {
    async { Err(ApiError::not_found("fake")) }
}

impl Accounts for Fake {
    fn login(&self, _: Login) -> impl Future<Output = ApiResult<(String, Session)>> + Send {
        nope()
    }
    async fn session(&self, token: &str) -> ApiResult<Option<Session>> {
        let (role, fresh) = match token {
            "admin" => (Role::Admin, false),
            "operator" => (Role::Operator, false),
            "auditor" => (Role::Auditor, false),
            "fresh" => (Role::Admin, true),
            _ => return Ok(None),
        };
        Ok(Some(Session { user: token.into(), role, csrf: "c".into(), must_change_password: fresh }))
    }
    async fn token_session(&self, _: &str) -> ApiResult<Option<Session>> {
        Ok(None)
    }
    fn users(&self) -> impl Future<Output = ApiResult<Vec<User>>> + Send {
        nope()
    }
    fn create_user(&self, _: &Session, _: NewUser) -> impl Future<Output = ApiResult<User>> + Send {
        nope()
    }
    fn delete_user(&self, _: &Session, _: &str) -> impl Future<Output = ApiResult<()>> + Send {
        nope()
    }
    fn unlock_user(&self, _: &Session, _: &str) -> impl Future<Output = ApiResult<()>> + Send {
        nope()
    }
    fn reset_password(&self, _: &Session, _: &str, _: PasswordReset) -> impl Future<Output = ApiResult<()>> + Send {
        nope()
    }
    fn tokens(&self, _: &Session) -> impl Future<Output = ApiResult<Vec<Token>>> + Send {
        nope()
    }
    fn create_token(&self, _: &Session, _: NewToken) -> impl Future<Output = ApiResult<Token>> + Send {
        nope()
    }
    fn delete_token(&self, _: &Session, _: i64) -> impl Future<Output = ApiResult<()>> + Send {
        nope()
    }
    fn logout(&self, _: &str) -> impl Future<Output = ApiResult<()>> + Send {
        nope()
    }
    fn change_password(&self, _: &Session, _: PasswordChange) -> impl Future<Output = ApiResult<()>> + Send {
        nope()
    }
    fn audit(&self, _: AuditQuery) -> impl Future<Output = ApiResult<Vec<AuditRow>>> + Send {
        nope()
    }
}

impl Platforms for Fake {
    fn platform_kinds(&self) -> impl Future<Output = ApiResult<Vec<PlatformKindInfo>>> + Send {
        nope()
    }
    fn update_platform(&self, _: &Session, _: i64, _: NewPlatform) -> impl Future<Output = ApiResult<Platform>> + Send {
        nope()
    }
    fn delete_platform(&self, _: &Session, _: i64) -> impl Future<Output = ApiResult<()>> + Send {
        nope()
    }
    fn platforms(&self) -> impl Future<Output = ApiResult<Vec<Platform>>> + Send {
        nope()
    }
    fn create_platform(&self, _: &Session, _: NewPlatform) -> impl Future<Output = ApiResult<Platform>> + Send {
        nope()
    }
    fn platform_vms(&self, _: i64) -> impl Future<Output = ApiResult<Vec<Vm>>> + Send {
        nope()
    }
    fn platform_inventory(&self, _: i64) -> impl Future<Output = ApiResult<PlatformInventory>> + Send {
        nope()
    }
    fn platform_vm(&self, _: i64, _: &str) -> impl Future<Output = ApiResult<VmDetails>> + Send {
        nope()
    }
}

impl Jobs for Fake {
    fn start_job(&self, _: &Session, _: NewJob) -> impl Future<Output = ApiResult<Job>> + Send {
        nope()
    }
    fn jobs(&self, _: JobFilter) -> impl Future<Output = ApiResult<Vec<Job>>> + Send {
        nope()
    }
    fn job(&self, _: i64) -> impl Future<Output = ApiResult<Job>> + Send {
        nope()
    }
    fn job_log(&self, _: i64) -> impl Future<Output = ApiResult<Vec<LogLine>>> + Send {
        nope()
    }
    fn points(&self) -> impl Future<Output = ApiResult<Vec<PointRow>>> + Send {
        nope()
    }
    fn stats(&self) -> impl Future<Output = ApiResult<Stats>> + Send {
        nope()
    }
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Job> {
        self.0.subscribe()
    }
    fn subscribe_system(&self) -> tokio::sync::broadcast::Receiver<SystemSample> {
        tokio::sync::broadcast::channel(1).1
    }
    fn stop_job(&self, _: &Session, _: i64) -> impl Future<Output = ApiResult<Job>> + Send {
        nope()
    }
    fn start_restore(&self, _: &Session, _: NewRestore) -> impl Future<Output = ApiResult<Job>> + Send {
        nope()
    }
    fn convert_restore(&self, _: ConversionRequest) -> impl Future<Output = ApiResult<Conversion>> + Send {
        nope()
    }
    fn point(&self, _: &str) -> impl Future<Output = ApiResult<PointDetails>> + Send {
        nope()
    }
    fn star_point(&self, _: &Session, _: &str, _: bool) -> impl Future<Output = ApiResult<PointDetails>> + Send {
        nope()
    }
    fn lock_point(&self, _: &Session, _: &str, _: PointLock) -> impl Future<Output = ApiResult<PointDetails>> + Send {
        nope()
    }
    fn delete_point(&self, _: &Session, _: &str) -> impl Future<Output = ApiResult<()>> + Send {
        nope()
    }
}

impl Rules for Fake {
    fn rules(&self) -> impl Future<Output = ApiResult<Vec<Rule>>> + Send {
        nope()
    }
    fn create_rule(&self, _: &Session, _: NewRule) -> impl Future<Output = ApiResult<Rule>> + Send {
        nope()
    }
    fn delete_rule(&self, _: &Session, _: i64, _: Option<bool>) -> impl Future<Output = ApiResult<()>> + Send {
        nope()
    }
    fn check_rule(&self, _: &Session, _: NewRule, _: Option<i64>) -> impl Future<Output = ApiResult<()>> + Send {
        nope()
    }
    fn run_rule(&self, _: &Session, _: i64, _: RunRule) -> impl Future<Output = ApiResult<Vec<Job>>> + Send {
        nope()
    }
    fn update_rule(&self, _: &Session, _: i64, _: NewRule) -> impl Future<Output = ApiResult<Rule>> + Send {
        nope()
    }
    fn set_rules_enabled(&self, _: &Session, _: RulesState) -> impl Future<Output = ApiResult<Vec<Rule>>> + Send {
        nope()
    }
}

impl Recoveries for Fake {
    fn recoveries(&self) -> impl Future<Output = ApiResult<Vec<Recovery>>> + Send {
        nope()
    }
    fn start_recovery(&self, _: &Session, _: NewRecovery) -> impl Future<Output = ApiResult<Recovery>> + Send {
        nope()
    }
    fn stop_recovery(&self, _: &Session, _: i64) -> impl Future<Output = ApiResult<()>> + Send {
        nope()
    }
    fn migrate_recovery(
        &self,
        _: &Session,
        _: i64,
        _: MigrateRecovery,
    ) -> impl Future<Output = ApiResult<Recovery>> + Send {
        nope()
    }
    fn subscribe_recoveries(&self) -> tokio::sync::broadcast::Receiver<Vec<Recovery>> {
        tokio::sync::broadcast::channel(1).1
    }
    fn keep_recovery(&self, _: &Session, _: i64) -> impl Future<Output = ApiResult<RecoveryKept>> + Send {
        nope()
    }
}

impl Configuration for Fake {
    fn alert_settings(&self) -> impl Future<Output = ApiResult<Option<AlertSettings>>> + Send {
        nope()
    }
    fn set_alert_settings(&self, _: &Session, _: AlertSettings) -> impl Future<Output = ApiResult<()>> + Send {
        nope()
    }
    fn test_alert(&self, _: &Session) -> impl Future<Output = ApiResult<()>> + Send {
        nope()
    }
    fn export_config(&self, _: &Session, _: ConfigExport) -> impl Future<Output = ApiResult<serde_json::Value>> + Send {
        nope()
    }
    fn import_config(&self, _: &Session, _: ConfigImport) -> impl Future<Output = ApiResult<ImportReport>> + Send {
        nope()
    }
    fn check_storage(
        &self,
        _: &Session,
        _: i64,
        _: StorageCheckKind,
        _: Option<f64>,
    ) -> impl Future<Output = ApiResult<StorageTarget>> + Send {
        nope()
    }
    fn limits(&self) -> impl Future<Output = ApiResult<JobLimits>> + Send {
        nope()
    }
    fn set_limits(&self, _: &Session, _: JobLimits) -> impl Future<Output = ApiResult<()>> + Send {
        nope()
    }
    fn bandwidth(&self) -> impl Future<Output = ApiResult<Vec<BandwidthWindow>>> + Send {
        nope()
    }
    fn set_bandwidth(&self, _: &Session, _: Vec<BandwidthWindow>) -> impl Future<Output = ApiResult<()>> + Send {
        nope()
    }
    fn storage(&self) -> impl Future<Output = ApiResult<Vec<StorageTarget>>> + Send {
        nope()
    }
    fn create_storage(&self, _: &Session, _: NewStorage) -> impl Future<Output = ApiResult<StorageTarget>> + Send {
        nope()
    }
    fn delete_storage(&self, _: &Session, _: i64) -> impl Future<Output = ApiResult<()>> + Send {
        nope()
    }
}

fn app() -> axum::Router {
    router(Arc::new(Fake(tokio::sync::broadcast::channel(4).0)))
}

/// A concrete path for a route's pattern.
fn concrete(pattern: &str) -> String {
    pattern
        .replace("{id}", "1")
        .replace("{name}", "someone")
        .replace("{vm}", "web1")
        .replace("{file}", "app.js")
        .replace("{point}", "p1")
}

async fn call(method: &Method, path: &str, token: Option<&str>) -> (StatusCode, String) {
    let mut req = Request::builder().method(method.clone()).uri(path).header("x-csrf-token", "c");
    if let Some(t) = token {
        req = req.header("cookie", format!("hf_session={t}"));
    }
    let body = if method == Method::GET { Body::empty() } else { Body::from("{}") };
    let req = req.header("content-type", "application/json").body(body).unwrap();
    let resp = app().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = http_body_util::BodyExt::collect(resp.into_body()).await.map(|b| b.to_bytes()).unwrap_or_default();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// The document as served.
async fn document() -> serde_json::Value {
    let (code, body) = call(&Method::GET, "/api/openapi.json", None).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The schema a `$ref` (or a schema) stands for.
fn resolve<'a>(doc: &'a serde_json::Value, schema: &'a serde_json::Value) -> &'a serde_json::Value {
    match schema["$ref"].as_str() {
        Some(r) => {
            let name = r.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("{r} is not a component"));
            let found = &doc["components"]["schemas"][name];
            assert!(found.is_object(), "{r} does not resolve");
            found
        }
        None => schema,
    }
}

#[tokio::test]
async fn every_route_is_in_the_openapi_document_with_its_access() {
    let doc = document().await;
    let table = route_table::<Fake>();
    for (path, method, access) in &table {
        let op = &doc["paths"][path][method.as_str().to_lowercase()];
        assert!(op.is_object(), "{method} {path} is served but not in the document");
        assert_eq!(op["x-access"], access.as_str(), "{method} {path}: the document's x-access");
    }
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            let served = table.iter().any(|(p, m, _)| p == path && m.as_str().eq_ignore_ascii_case(method));
            assert!(served, "{method} {path} is in the document but not served");
        }
    }
}

#[tokio::test]
async fn the_document_describes_each_route_with_the_types_it_serves() {
    let doc = document().await;
    // Every reference resolves.
    fn refs<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a str>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(r) = m.get("$ref").and_then(|r| r.as_str()) {
                    out.push(r);
                }
                m.values().for_each(|v| refs(v, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(all.len() > 40, "{} references", all.len());
    for r in all {
        resolve(&doc, &serde_json::json!({ "$ref": r }));
    }
    let op = |path: &str, method: &str| doc["paths"][path][method].clone();
    let body =
        |path: &str, method: &str| op(path, method)["requestBody"]["content"]["application/json"]["schema"].clone();
    let reply = |path: &str, method: &str, status: &str| {
        op(path, method)["responses"][status]["content"]["application/json"]["schema"].clone()
    };
    // Requests are the types the handlers read, replies the types they write, with their status.
    assert_eq!(body("/api/rules", "post")["$ref"], "#/components/schemas/NewRule");
    assert_eq!(reply("/api/rules", "post", "201")["$ref"], "#/components/schemas/Rule");
    assert_eq!(reply("/api/jobs", "post", "202")["$ref"], "#/components/schemas/Job");
    assert_eq!(reply("/api/rules/{id}/run", "post", "202")["items"]["$ref"], "#/components/schemas/Job");
    assert!(op("/api/platforms/{id}", "delete")["responses"]["204"].is_object());
    assert_eq!(reply("/api/login", "post", "200")["$ref"], "#/components/schemas/Session");
    assert_eq!(reply("/api/stats", "get", "200")["$ref"], "#/components/schemas/Stats");
    assert_eq!(op("/api/jobs/{id}", "get")["parameters"][0]["schema"]["type"], "integer");
    assert_eq!(op("/api/users/{name}", "delete")["parameters"][0]["schema"]["type"], "string");
    assert!(op("/api/events", "get")["responses"]["200"]["content"]["text/event-stream"].is_object());
    let query = &op("/api/rules/{id}", "delete")["parameters"][1];
    assert_eq!((query["name"].as_str(), query["in"].as_str()), (Some("delete_data"), Some("query")), "{query}");
    // The shapes go down to the fields: a rule's schedule is one of the schedule kinds, its
    // retention the store's policy, and unknown fields are refused where serde refuses them.
    let new_rule = resolve(&doc, &body("/api/rules", "post")).clone();
    let schedule = resolve(&doc, &new_rule["properties"]["full"]).clone();
    let kinds: Vec<_> =
        schedule["oneOf"].as_array().unwrap().iter().map(|k| k["properties"]["kind"]["const"].clone()).collect();
    assert_eq!(kinds, ["once", "hourly", "daily", "weekly", "monthly"]);
    let retention = resolve(&doc, &new_rule["properties"]["retention"]).clone();
    assert!(retention["properties"]["keep_days"].is_object(), "{retention}");
    assert_eq!(new_rule["additionalProperties"], false);
    assert_eq!(resolve(&doc, &body("/api/login", "post"))["required"], serde_json::json!(["user", "password"]));
}

#[tokio::test]
async fn every_route_keeps_to_the_access_it_declares() {
    for (path, method, access) in route_table::<Fake>() {
        let path = concrete(path);
        let refused = |who: Option<&str>, (code, body): (StatusCode, String)| {
            assert!(
                code == StatusCode::UNAUTHORIZED || code == StatusCode::FORBIDDEN,
                "{method} {path} ({access:?}) let {who:?} through: {code} {body}"
            );
        };
        let allowed = |who: Option<&str>, (code, body): (StatusCode, String)| {
            assert!(
                code != StatusCode::UNAUTHORIZED
                    && code != StatusCode::FORBIDDEN
                    && code != StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path} ({access:?}) refused {who:?}: {code} {body}"
            );
            assert!(!body.contains("no such API route"), "{method} {path} is not routed: {body}");
        };
        if path.as_str() == "/api/events" {
            // A stream that stays open: only its refusals are checked here.
            refused(None, call(&method, &path, None).await);
            continue;
        }
        for who in [None, Some("auditor"), Some("operator"), Some("fresh"), Some("admin")] {
            let got = call(&method, &path, who).await;
            let may = match (access, who) {
                (Access::Public, _) => true,
                (_, None) => false,
                (Access::Own, _) => true,
                (_, Some("fresh")) => false,
                (Access::Read, _) => true,
                (Access::Operate, Some(w)) => w != "auditor",
                (Access::Audit, Some(w)) => w != "operator",
                (Access::Admin, Some(w)) => w == "admin",
            };
            if may {
                allowed(who, got);
            } else {
                refused(who, got);
            }
        }
    }
}

#[tokio::test]
async fn a_change_without_the_sessions_csrf_token_is_refused() {
    let req = Request::builder()
        .method(Method::POST)
        .uri("/api/jobs")
        .header("cookie", "hf_session=admin")
        .header("content-type", "application/json")
        .body(Body::from("{}"))
        .unwrap();
    let resp = app().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let (code, body) = call(&Method::GET, "/api/nowhere", Some("admin")).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
    assert!(body.contains("no such API route"), "{body}");
}

#[tokio::test]
async fn the_documents_closed_sets_are_the_types_words() {
    let doc = document().await;
    let words = |schema: &str, field: &str| -> Vec<String> {
        let e = resolve(&doc, &doc["components"]["schemas"][schema]["properties"][field]);
        // schemars writes an enum, or one `const` per word where the words have their own docs.
        // (undocumented words grouped in one enum among them).
        let consts: Option<Vec<serde_json::Value>> = e["oneOf"].as_array().map(|o| {
            o.iter().flat_map(|w| w["enum"].as_array().cloned().unwrap_or_else(|| vec![w["const"].clone()])).collect()
        });
        e["enum"]
            .as_array()
            .cloned()
            .or(consts)
            .unwrap_or_else(|| panic!("{schema}.{field} has no enum"))
            .iter()
            .map(|v| v.as_str().unwrap_or_else(|| panic!("{schema}.{field}: {v}")).to_string())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
    };
    let of = |all: Vec<&str>| {
        let mut all: Vec<_> = all.into_iter().map(String::from).collect();
        all.sort();
        all
    };
    assert_eq!(words("Job", "state"), of(JobState::ALL.iter().map(|s| s.as_str()).collect()));
    assert_eq!(words("Job", "kind"), of(JobKind::ALL.iter().map(|s| s.as_str()).collect()));
    assert_eq!(words("Job", "type"), of(JobType::ALL.iter().map(|s| s.as_str()).collect()));
    assert_eq!(words("NewJob", "type"), of(BackupKind::ALL.iter().map(|s| s.as_str()).collect()));
    assert_eq!(words("RunRule", "type"), of(BackupKind::ALL.iter().map(|s| s.as_str()).collect()));
    assert_eq!(words("NewRestore", "mode"), of(RestoreMode::ALL.iter().map(|s| s.as_str()).collect()));
    // And serde speaks the same words.
    for s in JobState::ALL {
        assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
    }
}

#[tokio::test]
async fn a_route_documents_a_request_body_exactly_when_it_reads_one() {
    let doc = document().await;
    for (path, method, _) in route_table::<Fake>() {
        if method == Method::GET {
            continue;
        }
        let req = Request::builder()
            .method(method.clone())
            .uri(concrete(path))
            .header("cookie", "hf_session=admin")
            .header("x-csrf-token", "c")
            .header("content-type", "text/plain")
            .body(Body::from("{}"))
            .unwrap();
        let code = app().oneshot(req).await.unwrap().status();
        let documented = doc["paths"][path][method.as_str().to_lowercase()]["requestBody"].is_object();
        assert_eq!(
            code == StatusCode::UNSUPPORTED_MEDIA_TYPE,
            documented,
            "{method} {path}: answered {code} to a text/plain body, document says body: {documented}"
        );
    }
}
