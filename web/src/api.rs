//! Routes, the session extractor (cookie, CSRF, password-change gate, roles) and JSON errors.

use crate::model::*;
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put, MethodRouter};
use axum::{Json, Router};
use std::sync::Arc;

const COOKIE: &str = "hf_session";

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.problem.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(serde_json::json!({ "error": self.message }))).into_response()
    }
}

/// A JSON body whose problems (malformed, a missing or unknown field, a wrong type) become a 400
/// naming them.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|m| m.trim() == "application/json" || m.trim().ends_with("+json"));
        if !json {
            return Err(ApiError::new(
                Problem::NotJson,
                "the request body must be JSON, sent with Content-Type: application/json",
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::bad(format!("invalid request: {}", e.body_text())))?;
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        let value = serde_path_to_error::deserialize(&mut de);
        if value.is_ok() {
            de.end().map_err(|e| ApiError::bad(format!("invalid request: {e}")))?;
        }
        value.map(Body).map_err(|e| {
            // serde names the field's path (e.g. "mode", "retention.keep_days"); the position in
            // the text adds nothing for a caller who sent one small object.
            let inner = e.inner().to_string();
            let inner = inner.split(" at line ").next().unwrap_or(&inner).to_string();
            match e.path().to_string().as_str() {
                "." | "" => ApiError::bad(format!("invalid request: {inner}")),
                path => ApiError::field(path, inner),
            }
        })
    }
}

fn cookie_token(parts: &Parts) -> Option<String> {
    parts.headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(
        |c| {
            let (k, v) = c.trim().split_once('=')?;
            (k == COOKIE).then(|| v.to_string())
        },
    )
}

/// The caller's session. Refuses (401) without one, (403) a changing request without the
/// session's CSRF token or from a read-only role, and (403) anything but a password change
/// while the password must be changed.
pub struct Authed(pub Session, pub String);

impl<B: Backend> FromRequestParts<Arc<B>> for Authed {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, backend: &Arc<B>) -> Result<Self, ApiError> {
        let bearer = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_string);
        let (session, token) = if let Some(t) = bearer {
            // API tokens are not sent by browsers on their own: no CSRF check for them.
            let s = backend
                .token_session(&t)
                .await?
                .ok_or_else(|| ApiError::new(Problem::NotLoggedIn, "unknown or revoked API token"))?;
            (s, t)
        } else {
            let token = cookie_token(parts).ok_or_else(|| ApiError::new(Problem::NotLoggedIn, "not logged in"))?;
            let session = backend
                .session(&token)
                .await?
                .ok_or_else(|| ApiError::new(Problem::NotLoggedIn, "the session has expired: log in again"))?;
            if parts.method != Method::GET && parts.method != Method::HEAD {
                let sent = parts.headers.get("x-csrf-token").and_then(|v| v.to_str().ok()).unwrap_or("");
                if sent != session.csrf {
                    return Err(ApiError::forbidden("missing or wrong X-CSRF-Token header"));
                }
            }
            (session, token)
        };
        // Each route declares who may call it (see `routes`); a route without one is the admin's.
        let access = parts.extensions.get::<Access>().copied().unwrap_or(Access::Admin);
        if session.must_change_password && access != Access::Own {
            return Err(ApiError::forbidden("the password must be changed first (POST /api/password)"));
        }
        match (access, session.role) {
            (Access::Operate, Role::Auditor) => {
                Err(ApiError::forbidden(format!("user {} is an auditor: read-only", session.user)))
            }
            (Access::Audit, Role::Operator) => Err(ApiError::forbidden("the audit log is for admins and auditors")),
            (Access::Admin, role) if role != Role::Admin => {
                Err(ApiError::forbidden(format!("user {} is a {}: that needs an admin", session.user, role.as_str())))
            }
            _ => Ok(Authed(session, token)),
        }
    }
}

async fn login<B: Backend>(State(b): State<Arc<B>>, Body(l): Body<Login>) -> Result<Response, ApiError> {
    let (token, s) = b.login(l).await?;
    let cookie = format!("{COOKIE}={token}; HttpOnly; Secure; SameSite=Strict; Path=/");
    let mut resp = Json(s).into_response();
    resp.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).map_err(ApiError::internal)?);
    Ok(resp)
}

async fn logout<B: Backend>(State(b): State<Arc<B>>, Authed(_, token): Authed) -> ApiResult<StatusCode> {
    b.logout(&token).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn password<B: Backend>(
    State(b): State<Arc<B>>,
    Authed(s, _): Authed,
    Body(c): Body<PasswordChange>,
) -> ApiResult<StatusCode> {
    b.change_password(&s, c).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn platforms<B: Backend>(State(b): State<Arc<B>>, _: Authed) -> ApiResult<Json<Vec<Platform>>> {
    Ok(Json(b.platforms().await?))
}

async fn create_platform<B: Backend>(
    State(b): State<Arc<B>>,
    Authed(s, _): Authed,
    Body(p): Body<NewPlatform>,
) -> ApiResult<(StatusCode, Json<Platform>)> {
    Ok((StatusCode::CREATED, Json(b.create_platform(&s, p).await?)))
}

async fn platform_kinds<B: Backend>(State(b): State<Arc<B>>, _: Authed) -> ApiResult<Json<Vec<PlatformKindInfo>>> {
    Ok(Json(b.platform_kinds().await?))
}

async fn update_platform<B: Backend>(
    State(b): State<Arc<B>>,
    Authed(s, _): Authed,
    Path(id): Path<i64>,
    Body(p): Body<NewPlatform>,
) -> ApiResult<Json<Platform>> {
    Ok(Json(b.update_platform(&s, id, p).await?))
}

async fn delete_platform<B: Backend>(
    State(b): State<Arc<B>>,
    Authed(s, _): Authed,
    Path(id): Path<i64>,
) -> ApiResult<StatusCode> {
    b.delete_platform(&s, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn platform_vms<B: Backend>(State(b): State<Arc<B>>, _: Authed, Path(id): Path<i64>) -> ApiResult<Json<Vec<Vm>>> {
    Ok(Json(b.platform_vms(id).await?))
}

async fn start_job<B: Backend>(
    State(b): State<Arc<B>>,
    Authed(s, _): Authed,
    Body(j): Body<NewJob>,
) -> ApiResult<(StatusCode, Json<Job>)> {
    Ok((StatusCode::ACCEPTED, Json(b.start_job(&s, j).await?)))
}

async fn start_restore<B: Backend>(
    State(b): State<Arc<B>>,
    Authed(s, _): Authed,
    Body(r): Body<NewRestore>,
) -> ApiResult<(StatusCode, Json<Job>)> {
    Ok((StatusCode::ACCEPTED, Json(b.start_restore(&s, r).await?)))
}

async fn jobs<B: Backend>(State(b): State<Arc<B>>, _: Authed) -> ApiResult<Json<Vec<Job>>> {
    Ok(Json(b.jobs().await?))
}

async fn job<B: Backend>(State(b): State<Arc<B>>, _: Authed, Path(id): Path<i64>) -> ApiResult<Json<Job>> {
    Ok(Json(b.job(id).await?))
}

async fn job_log<B: Backend>(State(b): State<Arc<B>>, _: Authed, Path(id): Path<i64>) -> ApiResult<Json<Vec<LogLine>>> {
    Ok(Json(b.job_log(id).await?))
}

async fn export_config<B: Backend>(
    State(b): State<Arc<B>>,
    Authed(s, _): Authed,
    Body(e): Body<ConfigExport>,
) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(b.export_config(&s, e).await?))
}

async fn import_config<B: Backend>(
    State(b): State<Arc<B>>,
    Authed(s, _): Authed,
    Body(i): Body<ConfigImport>,
) -> ApiResult<Json<ImportReport>> {
    Ok(Json(b.import_config(&s, i).await?))
}

async fn stop_job<B: Backend>(
    State(b): State<Arc<B>>,
    Authed(s, _): Authed,
    Path(id): Path<i64>,
) -> ApiResult<Json<Job>> {
    Ok(Json(b.stop_job(&s, id).await?))
}

async fn bandwidth<B: Backend>(State(b): State<Arc<B>>, _: Authed) -> ApiResult<Json<Vec<BandwidthWindow>>> {
    Ok(Json(b.bandwidth().await?))
}

async fn set_bandwidth<B: Backend>(
    State(b): State<Arc<B>>,
    Authed(s, _): Authed,
    Body(w): Body<Vec<BandwidthWindow>>,
) -> ApiResult<StatusCode> {
    b.set_bandwidth(&s, w).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn storage<B: Backend>(State(b): State<Arc<B>>, _: Authed) -> ApiResult<Json<Vec<StorageTarget>>> {
    Ok(Json(b.storage().await?))
}

async fn create_storage<B: Backend>(
    State(b): State<Arc<B>>,
    Authed(s, _): Authed,
    Body(t): Body<NewStorage>,
) -> ApiResult<(StatusCode, Json<StorageTarget>)> {
    Ok((StatusCode::CREATED, Json(b.create_storage(&s, t).await?)))
}

async fn delete_storage<B: Backend>(
    State(b): State<Arc<B>>,
    Authed(s, _): Authed,
    Path(id): Path<i64>,
) -> ApiResult<StatusCode> {
    b.delete_storage(&s, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn points<B: Backend>(State(b): State<Arc<B>>, _: Authed) -> ApiResult<Json<Vec<PointRow>>> {
    Ok(Json(b.points().await?))
}

async fn audit<B: Backend>(State(b): State<Arc<B>>, _: Authed) -> ApiResult<Json<Vec<AuditRow>>> {
    Ok(Json(b.audit().await?))
}

async fn rules<B: Backend>(State(b): State<Arc<B>>, _: Authed) -> ApiResult<Json<Vec<Rule>>> {
    Ok(Json(b.rules().await?))
}

async fn create_rule<B: Backend>(
    State(b): State<Arc<B>>,
    Authed(s, _): Authed,
    Body(r): Body<NewRule>,
) -> ApiResult<(StatusCode, Json<Rule>)> {
    Ok((StatusCode::CREATED, Json(b.create_rule(&s, r).await?)))
}

async fn rule<B: Backend>(State(b): State<Arc<B>>, _: Authed, Path(id): Path<i64>) -> ApiResult<Json<Rule>> {
    let all = b.rules().await?;
    all.into_iter().find(|r| r.id == id).map(Json).ok_or_else(|| ApiError::not_found(format!("rule {id}")))
}

async fn update_rule<B: Backend>(
    State(b): State<Arc<B>>,
    Authed(s, _): Authed,
    Path(id): Path<i64>,
    Body(r): Body<NewRule>,
) -> ApiResult<Json<Rule>> {
    Ok(Json(b.update_rule(&s, id, r).await?))
}

async fn rules_state<B: Backend>(
    State(b): State<Arc<B>>,
    Authed(s, _): Authed,
    Body(r): Body<RulesState>,
) -> ApiResult<Json<Vec<Rule>>> {
    Ok(Json(b.set_rules_enabled(&s, r).await?))
}

async fn delete_rule<B: Backend>(
    State(b): State<Arc<B>>,
    Authed(s, _): Authed,
    Path(id): Path<i64>,
) -> ApiResult<StatusCode> {
    b.delete_rule(&s, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn run_rule<B: Backend>(
    State(b): State<Arc<B>>,
    Authed(s, _): Authed,
    Path(id): Path<i64>,
    Body(r): Body<RunRule>,
) -> ApiResult<(StatusCode, Json<Vec<Job>>)> {
    Ok((StatusCode::ACCEPTED, Json(b.run_rule(&s, id, r).await?)))
}

/// Server-sent events: one `job` event (the job as JSON) per change of any job, and a comment
/// every 15 s to keep proxies from closing the stream. A client too slow to keep up misses
/// intermediate progress, never a final state it can fetch again.
async fn events<B: Backend>(
    State(b): State<Arc<B>>,
    _: Authed,
) -> axum::response::sse::Sse<
    impl futures_util::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use tokio::sync::broadcast::error::RecvError;
    let stream = futures_util::stream::unfold(b.subscribe(), |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(job) => {
                    let event = Event::default().event("job").json_data(&job).unwrap_or_default();
                    return Some((Ok(event), rx));
                }
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15)))
}

async fn users<B: Backend>(State(b): State<Arc<B>>, _: Authed) -> ApiResult<Json<Vec<User>>> {
    Ok(Json(b.users().await?))
}

async fn create_user<B: Backend>(
    State(b): State<Arc<B>>,
    Authed(s, _): Authed,
    Body(u): Body<NewUser>,
) -> ApiResult<(StatusCode, Json<User>)> {
    Ok((StatusCode::CREATED, Json(b.create_user(&s, u).await?)))
}

async fn delete_user<B: Backend>(
    State(b): State<Arc<B>>,
    Authed(s, _): Authed,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    b.delete_user(&s, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn unlock_user<B: Backend>(
    State(b): State<Arc<B>>,
    Authed(s, _): Authed,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    b.unlock_user(&s, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn reset_password<B: Backend>(
    State(b): State<Arc<B>>,
    Authed(s, _): Authed,
    Path(name): Path<String>,
    Body(r): Body<PasswordReset>,
) -> ApiResult<StatusCode> {
    b.reset_password(&s, &name, r).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn tokens<B: Backend>(State(b): State<Arc<B>>, Authed(s, _): Authed) -> ApiResult<Json<Vec<Token>>> {
    Ok(Json(b.tokens(&s).await?))
}

async fn create_token<B: Backend>(
    State(b): State<Arc<B>>,
    Authed(s, _): Authed,
    Body(t): Body<NewToken>,
) -> ApiResult<(StatusCode, Json<Token>)> {
    Ok((StatusCode::CREATED, Json(b.create_token(&s, t).await?)))
}

async fn delete_token<B: Backend>(
    State(b): State<Arc<B>>,
    Authed(s, _): Authed,
    Path(id): Path<i64>,
) -> ApiResult<StatusCode> {
    b.delete_token(&s, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn alerts<B: Backend>(State(b): State<Arc<B>>, _: Authed) -> ApiResult<Json<Option<AlertSettings>>> {
    Ok(Json(b.alert_settings().await?))
}

async fn set_alerts<B: Backend>(
    State(b): State<Arc<B>>,
    Authed(s, _): Authed,
    Body(a): Body<AlertSettings>,
) -> ApiResult<StatusCode> {
    b.set_alert_settings(&s, a).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn test_alert<B: Backend>(State(b): State<Arc<B>>, Authed(s, _): Authed) -> ApiResult<StatusCode> {
    b.test_alert(&s).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn stats<B: Backend>(State(b): State<Arc<B>>, _: Authed) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(b.stats().await?))
}

/// The API's OpenAPI 3 description (public: it holds no data).
async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], include_str!("openapi.json")).into_response()
}

/// What a browser finds at the appliance's address until the web UI is served there.
async fn front_page() -> Response {
    let page = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>Holdfast</title>\
                <style>body{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem;\
                line-height:1.5}h1{font-size:1.6rem}</style></head>\
                <body><h1>Holdfast backup appliance</h1><p>The web console is not built yet. The HTTPS JSON API is \
                at <code>/api</code>, described by <a href=\"/api/openapi.json\">/api/openapi.json</a>; the \
                command line <code>holdfast client</code> drives it with an API token.</p></body></html>";
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(Problem::NotFound, "no such API route")
}

/// Who may call a route. Declared beside each route in [`routes`] and published in the OpenAPI
/// document as `x-access`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// No session needed.
    Public,
    /// The caller's own account: allowed while the password must still be changed.
    Own,
    /// Every role, auditors included.
    Read,
    /// Operators and admins: runs, stops, rules, restores.
    Operate,
    /// Admins and auditors: the audit log.
    Audit,
    /// Admins: users, platforms (credentials), storage, alerts, bandwidth, configuration.
    Admin,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Public => "public",
            Access::Own => "own",
            Access::Read => "read",
            Access::Operate => "operate",
            Access::Audit => "audit",
            Access::Admin => "admin",
        }
    }
}

type Route<B> = (&'static str, Method, Access, MethodRouter<Arc<B>>);

/// Every route: path, method, who may call it, handler.
fn routes<B: Backend>() -> Vec<Route<B>> {
    use Access::*;
    use Method as M;
    vec![
        ("/", M::GET, Public, get(front_page)),
        ("/api/openapi.json", M::GET, Public, get(openapi)),
        ("/api/login", M::POST, Public, post(login::<B>)),
        ("/api/logout", M::POST, Own, post(logout::<B>)),
        ("/api/password", M::POST, Own, post(password::<B>)),
        ("/api/platform-kinds", M::GET, Read, get(platform_kinds::<B>)),
        ("/api/platforms", M::GET, Read, get(platforms::<B>)),
        ("/api/platforms", M::POST, Admin, post(create_platform::<B>)),
        ("/api/platforms/{id}", M::PUT, Admin, put(update_platform::<B>)),
        ("/api/platforms/{id}", M::DELETE, Admin, delete(delete_platform::<B>)),
        ("/api/platforms/{id}/vms", M::GET, Read, get(platform_vms::<B>)),
        ("/api/jobs", M::GET, Read, get(jobs::<B>)),
        ("/api/jobs", M::POST, Operate, post(start_job::<B>)),
        ("/api/restores", M::POST, Operate, post(start_restore::<B>)),
        ("/api/jobs/{id}", M::GET, Read, get(job::<B>)),
        ("/api/jobs/{id}/log", M::GET, Read, get(job_log::<B>)),
        ("/api/jobs/{id}/stop", M::POST, Operate, post(stop_job::<B>)),
        ("/api/bandwidth", M::GET, Read, get(bandwidth::<B>)),
        ("/api/bandwidth", M::PUT, Admin, put(set_bandwidth::<B>)),
        ("/api/config/export", M::POST, Admin, post(export_config::<B>)),
        ("/api/config/import", M::POST, Admin, post(import_config::<B>)),
        ("/api/points", M::GET, Read, get(points::<B>)),
        ("/api/storage", M::GET, Read, get(storage::<B>)),
        ("/api/storage", M::POST, Admin, post(create_storage::<B>)),
        ("/api/storage/{id}", M::DELETE, Admin, delete(delete_storage::<B>)),
        ("/api/audit", M::GET, Audit, get(audit::<B>)),
        ("/api/rules", M::GET, Read, get(rules::<B>)),
        ("/api/rules", M::POST, Operate, post(create_rule::<B>)),
        ("/api/rules/state", M::POST, Operate, post(rules_state::<B>)),
        ("/api/rules/{id}", M::GET, Read, get(rule::<B>)),
        ("/api/rules/{id}", M::PUT, Operate, put(update_rule::<B>)),
        ("/api/rules/{id}", M::DELETE, Operate, delete(delete_rule::<B>)),
        ("/api/rules/{id}/run", M::POST, Operate, post(run_rule::<B>)),
        ("/api/events", M::GET, Read, get(events::<B>)),
        ("/api/stats", M::GET, Read, get(stats::<B>)),
        ("/api/alerts", M::GET, Admin, get(alerts::<B>)),
        ("/api/alerts", M::PUT, Admin, put(set_alerts::<B>)),
        ("/api/alerts/test", M::POST, Admin, post(test_alert::<B>)),
        ("/api/users", M::GET, Admin, get(users::<B>)),
        ("/api/users", M::POST, Admin, post(create_user::<B>)),
        ("/api/users/{name}", M::DELETE, Admin, delete(delete_user::<B>)),
        ("/api/users/{name}/unlock", M::POST, Admin, post(unlock_user::<B>)),
        ("/api/users/{name}/password", M::POST, Admin, post(reset_password::<B>)),
        ("/api/tokens", M::GET, Read, get(tokens::<B>)),
        ("/api/tokens", M::POST, Operate, post(create_token::<B>)),
        ("/api/tokens/{id}", M::DELETE, Operate, delete(delete_token::<B>)),
    ]
}

/// The routes as (path, method, access), for the OpenAPI check and the docs.
pub fn route_table<B: Backend>() -> Vec<(&'static str, Method, Access)> {
    routes::<B>().into_iter().map(|(p, m, a, _)| (p, m, a)).collect()
}

/// The API's routes over `backend`.
pub fn router<B: Backend>(backend: Arc<B>) -> Router {
    let mut by_path: Vec<(&'static str, MethodRouter<Arc<B>>)> = Vec::new();
    for (path, _, access, handler) in routes::<B>() {
        let handler = handler.layer(axum::Extension(access));
        match by_path.iter_mut().find(|(p, _)| *p == path) {
            Some((_, methods)) => *methods = std::mem::take(methods).merge(handler),
            None => by_path.push((path, handler)),
        }
    }
    by_path
        .into_iter()
        .fold(Router::new(), |r, (path, methods)| r.route(path, methods))
        .fallback(not_found)
        .with_state(backend)
}
