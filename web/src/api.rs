//! Routes, the session extractor (cookie, CSRF, password-change gate, roles) and JSON errors.

use crate::model::*;
use crate::openapi::{Accepted, Created, ErrorReply, NoContent, Operation, Shape, WithCookie};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::handler::Handler;
use axum::http::request::Parts;
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter};
use axum::{Json, Router};
use std::sync::Arc;

const COOKIE: &str = "hf_session";

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.problem.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(ErrorReply { error: self.message })).into_response()
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

async fn login<B: Backend>(State(b): State<Arc<B>>, Body(l): Body<Login>) -> ApiResult<WithCookie> {
    let (token, s) = b.login(l).await?;
    Ok(WithCookie(format!("{COOKIE}={token}; HttpOnly; Secure; SameSite=Strict; Path=/"), s))
}

/// The caller's session again (user, role, CSRF token), for a page loaded after the login.
async fn session(Authed(s, _): Authed) -> Json<Session> {
    Json(s)
}

async fn logout<B: Backend>(State(b): State<Arc<B>>, Authed(_, token): Authed) -> ApiResult<NoContent> {
    b.logout(&token).await?;
    Ok(NoContent)
}

async fn password<B: Backend>(
    State(b): State<Arc<B>>,
    Authed(s, _): Authed,
    Body(c): Body<PasswordChange>,
) -> ApiResult<NoContent> {
    b.change_password(&s, c).await?;
    Ok(NoContent)
}

async fn platforms<B: Backend>(State(b): State<Arc<B>>, _: Authed) -> ApiResult<Json<Vec<Platform>>> {
    Ok(Json(b.platforms().await?))
}

async fn create_platform<B: Backend>(
    State(b): State<Arc<B>>,
    Authed(s, _): Authed,
    Body(p): Body<NewPlatform>,
) -> ApiResult<Created<Platform>> {
    Ok(Created(b.create_platform(&s, p).await?))
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
) -> ApiResult<NoContent> {
    b.delete_platform(&s, id).await?;
    Ok(NoContent)
}

async fn platform_vms<B: Backend>(State(b): State<Arc<B>>, _: Authed, Path(id): Path<i64>) -> ApiResult<Json<Vec<Vm>>> {
    Ok(Json(b.platform_vms(id).await?))
}

async fn platform_inventory<B: Backend>(
    State(b): State<Arc<B>>,
    _: Authed,
    Path(id): Path<i64>,
) -> ApiResult<Json<PlatformInventory>> {
    Ok(Json(b.platform_inventory(id).await?))
}

async fn platform_vm<B: Backend>(
    State(b): State<Arc<B>>,
    _: Authed,
    Path((id, vm)): Path<(i64, String)>,
) -> ApiResult<Json<VmDetails>> {
    Ok(Json(b.platform_vm(id, &vm).await?))
}

async fn start_job<B: Backend>(
    State(b): State<Arc<B>>,
    Authed(s, _): Authed,
    Body(j): Body<NewJob>,
) -> ApiResult<Accepted<Job>> {
    Ok(Accepted(b.start_job(&s, j).await?))
}

async fn start_restore<B: Backend>(
    State(b): State<Arc<B>>,
    Authed(s, _): Authed,
    Body(r): Body<NewRestore>,
) -> ApiResult<Accepted<Job>> {
    Ok(Accepted(b.start_restore(&s, r).await?))
}

async fn convert_restore<B: Backend>(
    State(b): State<Arc<B>>,
    _: Authed,
    Body(r): Body<ConversionRequest>,
) -> ApiResult<Json<Conversion>> {
    Ok(Json(b.convert_restore(r).await?))
}

async fn jobs<B: Backend>(State(b): State<Arc<B>>, _: Authed, Query(f): Query<JobFilter>) -> ApiResult<Json<Vec<Job>>> {
    Ok(Json(b.jobs(f).await?))
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

async fn verify_storage<B: Backend>(
    State(b): State<Arc<B>>,
    Authed(s, _): Authed,
    Path(id): Path<i64>,
    Body(v): Body<VerifyRequest>,
) -> ApiResult<Accepted<StorageTarget>> {
    Ok(Accepted(b.check_storage(&s, id, StorageCheckKind::Verify, v.sample_percent).await?))
}

async fn gc_storage<B: Backend>(
    State(b): State<Arc<B>>,
    Authed(s, _): Authed,
    Path(id): Path<i64>,
) -> ApiResult<Accepted<StorageTarget>> {
    Ok(Accepted(b.check_storage(&s, id, StorageCheckKind::Gc, None).await?))
}

async fn limits<B: Backend>(State(b): State<Arc<B>>, _: Authed) -> ApiResult<Json<JobLimits>> {
    Ok(Json(b.limits().await?))
}

async fn set_limits<B: Backend>(
    State(b): State<Arc<B>>,
    Authed(s, _): Authed,
    Body(l): Body<JobLimits>,
) -> ApiResult<NoContent> {
    b.set_limits(&s, l).await?;
    Ok(NoContent)
}

async fn bandwidth<B: Backend>(State(b): State<Arc<B>>, _: Authed) -> ApiResult<Json<Vec<BandwidthWindow>>> {
    Ok(Json(b.bandwidth().await?))
}

async fn set_bandwidth<B: Backend>(
    State(b): State<Arc<B>>,
    Authed(s, _): Authed,
    Body(w): Body<Vec<BandwidthWindow>>,
) -> ApiResult<NoContent> {
    b.set_bandwidth(&s, w).await?;
    Ok(NoContent)
}

async fn storage<B: Backend>(State(b): State<Arc<B>>, _: Authed) -> ApiResult<Json<Vec<StorageTarget>>> {
    Ok(Json(b.storage().await?))
}

async fn create_storage<B: Backend>(
    State(b): State<Arc<B>>,
    Authed(s, _): Authed,
    Body(t): Body<NewStorage>,
) -> ApiResult<Created<StorageTarget>> {
    Ok(Created(b.create_storage(&s, t).await?))
}

async fn delete_storage<B: Backend>(
    State(b): State<Arc<B>>,
    Authed(s, _): Authed,
    Path(id): Path<i64>,
) -> ApiResult<NoContent> {
    b.delete_storage(&s, id).await?;
    Ok(NoContent)
}

async fn points<B: Backend>(State(b): State<Arc<B>>, _: Authed) -> ApiResult<Json<Vec<PointRow>>> {
    Ok(Json(b.points().await?))
}

async fn point<B: Backend>(
    State(b): State<Arc<B>>,
    _: Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<PointDetails>> {
    Ok(Json(b.point(&id).await?))
}

async fn star_point<B: Backend>(
    State(b): State<Arc<B>>,
    Authed(s, _): Authed,
    Path(id): Path<String>,
    Body(p): Body<PointStar>,
) -> ApiResult<Json<PointDetails>> {
    Ok(Json(b.star_point(&s, &id, p.star).await?))
}

async fn lock_point<B: Backend>(
    State(b): State<Arc<B>>,
    Authed(s, _): Authed,
    Path(id): Path<String>,
    Body(l): Body<PointLock>,
) -> ApiResult<Json<PointDetails>> {
    Ok(Json(b.lock_point(&s, &id, l).await?))
}

async fn delete_point<B: Backend>(
    State(b): State<Arc<B>>,
    Authed(s, _): Authed,
    Path(id): Path<String>,
) -> ApiResult<NoContent> {
    b.delete_point(&s, &id).await?;
    Ok(NoContent)
}

async fn recoveries<B: Backend>(State(b): State<Arc<B>>, _: Authed) -> ApiResult<Json<Vec<Recovery>>> {
    Ok(Json(b.recoveries().await?))
}

async fn start_recovery<B: Backend>(
    State(b): State<Arc<B>>,
    Authed(s, _): Authed,
    Body(r): Body<NewRecovery>,
) -> ApiResult<Created<Recovery>> {
    Ok(Created(b.start_recovery(&s, r).await?))
}

async fn stop_recovery<B: Backend>(
    State(b): State<Arc<B>>,
    Authed(s, _): Authed,
    Path(id): Path<i64>,
) -> ApiResult<NoContent> {
    b.stop_recovery(&s, id).await?;
    Ok(NoContent)
}

async fn migrate_recovery<B: Backend>(
    State(b): State<Arc<B>>,
    Authed(s, _): Authed,
    Path(id): Path<i64>,
    Body(m): Body<MigrateRecovery>,
) -> ApiResult<Accepted<Recovery>> {
    Ok(Accepted(b.migrate_recovery(&s, id, m).await?))
}

async fn keep_recovery<B: Backend>(
    State(b): State<Arc<B>>,
    Authed(s, _): Authed,
    Path(id): Path<i64>,
) -> ApiResult<Created<RecoveryKept>> {
    Ok(Created(b.keep_recovery(&s, id).await?))
}

async fn audit<B: Backend>(
    State(b): State<Arc<B>>,
    _: Authed,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<Vec<AuditRow>>> {
    Ok(Json(b.audit(q).await?))
}

async fn rules<B: Backend>(State(b): State<Arc<B>>, _: Authed) -> ApiResult<Json<Vec<Rule>>> {
    Ok(Json(b.rules().await?))
}

async fn create_rule<B: Backend>(
    State(b): State<Arc<B>>,
    Authed(s, _): Authed,
    Body(r): Body<NewRule>,
) -> ApiResult<Created<Rule>> {
    Ok(Created(b.create_rule(&s, r).await?))
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
    Query(d): Query<RuleDeletion>,
) -> ApiResult<NoContent> {
    b.delete_rule(&s, id, d.delete_data).await?;
    Ok(NoContent)
}

async fn check_rule<B: Backend>(
    State(b): State<Arc<B>>,
    Authed(s, _): Authed,
    Query(c): Query<RuleCheck>,
    Body(r): Body<NewRule>,
) -> ApiResult<NoContent> {
    b.check_rule(&s, r, c.rule).await?;
    Ok(NoContent)
}

async fn run_rule<B: Backend>(
    State(b): State<Arc<B>>,
    Authed(s, _): Authed,
    Path(id): Path<i64>,
    Body(r): Body<RunRule>,
) -> ApiResult<Accepted<Vec<Job>>> {
    Ok(Accepted(b.run_rule(&s, id, r).await?))
}

/// Server-sent events: one `job` event (the job as JSON) per change of any job, a `system`
/// event (the appliance's load) every two seconds, and a comment every 15 s to keep proxies from
/// closing the stream. A client too slow to keep up misses intermediate progress, never a final
/// state it can fetch again.
async fn events<B: Backend>(
    State(b): State<Arc<B>>,
    _: Authed,
) -> axum::response::sse::Sse<
    impl futures_util::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use tokio::sync::broadcast::error::RecvError;
    let streams = (b.subscribe(), b.subscribe_system(), b.subscribe_recoveries());
    let stream = futures_util::stream::unfold(streams, |(mut jobs, mut system, mut recoveries)| async move {
        loop {
            let event = tokio::select! {
                job = jobs.recv() => match job {
                    Ok(job) => Event::default().event("job").json_data(&job).unwrap_or_default(),
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return None,
                },
                sample = system.recv() => match sample {
                    Ok(s) => Event::default().event("system").json_data(&s).unwrap_or_default(),
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return None,
                },
                list = recoveries.recv() => match list {
                    Ok(l) => Event::default().event("recoveries").json_data(&l).unwrap_or_default(),
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return None,
                },
            };
            return Some((Ok(event), (jobs, system, recoveries)));
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
) -> ApiResult<Created<User>> {
    Ok(Created(b.create_user(&s, u).await?))
}

async fn delete_user<B: Backend>(
    State(b): State<Arc<B>>,
    Authed(s, _): Authed,
    Path(name): Path<String>,
) -> ApiResult<NoContent> {
    b.delete_user(&s, &name).await?;
    Ok(NoContent)
}

async fn unlock_user<B: Backend>(
    State(b): State<Arc<B>>,
    Authed(s, _): Authed,
    Path(name): Path<String>,
) -> ApiResult<NoContent> {
    b.unlock_user(&s, &name).await?;
    Ok(NoContent)
}

async fn reset_password<B: Backend>(
    State(b): State<Arc<B>>,
    Authed(s, _): Authed,
    Path(name): Path<String>,
    Body(r): Body<PasswordReset>,
) -> ApiResult<NoContent> {
    b.reset_password(&s, &name, r).await?;
    Ok(NoContent)
}

async fn tokens<B: Backend>(State(b): State<Arc<B>>, Authed(s, _): Authed) -> ApiResult<Json<Vec<Token>>> {
    Ok(Json(b.tokens(&s).await?))
}

async fn create_token<B: Backend>(
    State(b): State<Arc<B>>,
    Authed(s, _): Authed,
    Body(t): Body<NewToken>,
) -> ApiResult<Created<Token>> {
    Ok(Created(b.create_token(&s, t).await?))
}

async fn delete_token<B: Backend>(
    State(b): State<Arc<B>>,
    Authed(s, _): Authed,
    Path(id): Path<i64>,
) -> ApiResult<NoContent> {
    b.delete_token(&s, id).await?;
    Ok(NoContent)
}

async fn alerts<B: Backend>(State(b): State<Arc<B>>, _: Authed) -> ApiResult<Json<Option<AlertSettings>>> {
    Ok(Json(b.alert_settings().await?))
}

async fn set_alerts<B: Backend>(
    State(b): State<Arc<B>>,
    Authed(s, _): Authed,
    Body(a): Body<AlertSettings>,
) -> ApiResult<NoContent> {
    b.set_alert_settings(&s, a).await?;
    Ok(NoContent)
}

async fn test_alert<B: Backend>(State(b): State<Arc<B>>, Authed(s, _): Authed) -> ApiResult<NoContent> {
    b.test_alert(&s).await?;
    Ok(NoContent)
}

async fn stats<B: Backend>(State(b): State<Arc<B>>, _: Authed) -> ApiResult<Json<Stats>> {
    Ok(Json(b.stats().await?))
}

/// The API's OpenAPI 3.1 document, made from the route table once (public: it holds no data).
async fn openapi<B: Backend>() -> Json<serde_json::Value> {
    static DOCUMENT: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    Json(DOCUMENT.get_or_init(|| crate::openapi::document(&operations::<B>())).clone())
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

/// One served route: where, who may call it, what it is for, and its handler with the
/// description its signature gives.
struct Route<B> {
    operation: Operation,
    handler: MethodRouter<Arc<B>>,
}

fn r<B: Backend, H, T, M>(path: &'static str, method: Method, access: Access, summary: &'static str, h: H) -> Route<B>
where
    H: Handler<T, Arc<B>> + Shape<M>,
    T: 'static,
{
    let filter = MethodFilter::try_from(method.clone()).expect("a route's method is one axum routes");
    Route {
        operation: Operation { path, method, access, summary, shapes: <H as Shape<M>>::shapes },
        handler: axum::routing::on(filter, h),
    }
}

/// Every route: path, method, who may call it, what it does, handler.
fn routes<B: Backend>() -> Vec<Route<B>> {
    use Access::*;
    use Method as M;
    vec![
        r("/", M::GET, Public, "The web console", crate::ui::index),
        r("/ui/{file}", M::GET, Public, "The web console's scripts and style sheet", crate::ui::asset),
        r("/api/openapi.json", M::GET, Public, "This document", openapi::<B>),
        r("/api/login", M::POST, Public, "Log in", login::<B>),
        r("/api/logout", M::POST, Own, "End the session", logout::<B>),
        r("/api/password", M::POST, Own, "Change your password", password::<B>),
        r("/api/session", M::GET, Own, "Your session: user, role, CSRF token, whether the password must be changed", session),
        r("/api/platform-kinds", M::GET, Read, "The kinds of platform this appliance reaches: settings form and capabilities", platform_kinds::<B>),
        r("/api/platforms", M::GET, Read, "Platforms", platforms::<B>),
        r("/api/platforms", M::POST, Admin, "Add a platform (admins); saved only when its connection test passes", create_platform::<B>),
        r("/api/platforms/{id}", M::PUT, Admin, "Change a platform's name, settings or credentials (admins); saved only when the connection test passes", update_platform::<B>),
        r("/api/platforms/{id}", M::DELETE, Admin, "Remove a platform (admins); refused while a rule, a running job or an indexed point needs it", delete_platform::<B>),
        r("/api/platforms/{id}/vms", M::GET, Read, "The VMs a platform reaches", platform_vms::<B>),
        r("/api/platforms/{id}/inventory", M::GET, Read, "What a platform offers: hosts, VMs, networks, storage", platform_inventory::<B>),
        r("/api/platforms/{id}/vms/{vm}", M::GET, Read, "One VM as its platform describes it now: CPUs, memory, disks, NICs", platform_vm::<B>),
        r("/api/jobs", M::GET, Read, "Jobs, newest first (500 unless limit says otherwise, at most 5,000), those created since a time", jobs::<B>),
        r("/api/jobs", M::POST, Operate, "Back up a VM now", start_job::<B>),
        r("/api/restores/convert", M::POST, Read, "The VM a restore of a point onto a platform would make: onto another kind of platform, converted (disk names and bus, NIC models) with the choices it offers and one line per decision", convert_restore::<B>),
        r("/api/restores", M::POST, Operate, "Restore a point as a new VM or in place (the VM shut off); runs as a job (kind restore) with progress, stop and the bandwidth windows; the point cannot be deleted while it runs", start_restore::<B>),
        r("/api/jobs/{id}", M::GET, Read, "A job", job::<B>),
        r("/api/jobs/{id}/log", M::GET, Read, "A job's log lines", job_log::<B>),
        r("/api/jobs/{id}/stop", M::POST, Operate, "Stop a job: a queued one at once, a running one after its current read (nothing committed, the snapshot removed); its state goes to stopping, then stopped", stop_job::<B>),
        r("/api/limits", M::GET, Read, "How many jobs run at once, in all and per platform", limits::<B>),
        r("/api/limits", M::PUT, Admin, "Change how many jobs run at once (admins); waiting jobs follow at once", set_limits::<B>),
        r("/api/bandwidth", M::GET, Read, "Bandwidth limits by time window", bandwidth::<B>),
        r("/api/bandwidth", M::PUT, Admin, "Replace the bandwidth windows (admins); running jobs follow within a second", set_bandwidth::<B>),
        r("/api/config/export", M::POST, Admin, "The configuration (platforms, rules, bandwidth windows, alert settings) as one JSON file (admins). With a passphrase (10+ characters) the passwords are sealed into it (argon2id + XChaCha20-Poly1305); without, they are left out and listed in notes", export_config::<B>),
        r("/api/config/import", M::POST, Admin, "Adds what an exported file holds, all or nothing (admins); platforms and rules whose names exist are kept", import_config::<B>),
        r("/api/points", M::GET, Read, "Restore points, newest first", points::<B>),
        r("/api/points/{point}", M::GET, Read, "A restore point: its disks, why a disk was read in full, the transport, its star and lock", point::<B>),
        r("/api/points/{point}", M::DELETE, Operate, "Delete a restore point now; refused while it is starred, locked or being restored", delete_point::<B>),
        r("/api/points/{point}/star", M::POST, Operate, "Star a point (kept whatever retention says) or unstar it (not while locked)", star_point::<B>),
        r("/api/points/{point}/lock", M::POST, Admin, "Make a point immutable until a date (admins); a lock is extended, never shortened", lock_point::<B>),
        r("/api/recoveries", M::GET, Read, "Instant-recovery sessions: restore points exported over NFS, with their clients, files and bytes read", recoveries::<B>),
        r("/api/recoveries", M::POST, Operate, "Start an instant-recovery session: export a restore point's disks over NFS to the clients named, at once whatever their size; the point stays untouched and cannot be deleted meanwhile", start_recovery::<B>),
        r("/api/recoveries/{id}", M::DELETE, Operate, "End an instant-recovery session: its export goes (clients get stale handles) and its point is free again", stop_recovery::<B>),
        r("/api/recoveries/{id}/migrate", M::POST, Operate, "Move a session's running VM onto the platform's own storage while it runs (its disks copied with the guest's writes, then switched over); on success the session ends and the VM stays; on failure it keeps running from the export", migrate_recovery::<B>),
        r("/api/recoveries/{id}/keep", M::POST, Operate, "End a session keeping its writes: its VM stopped and removed, then what was written to the export committed as a new restore point (an incremental of the exported one); answers when the point is committed", keep_recovery::<B>),
        r("/api/storage", M::GET, Read, "Storage targets: where backups go, whether each store opens now, its filesystem's space, its points", storage::<B>),
        r("/api/storage", M::POST, Admin, "Add a storage target (admins): a new store in a missing or empty directory, or an existing store adopted with its points", create_storage::<B>),
        r("/api/storage/{id}", M::DELETE, Admin, "Forget a storage target (admins); its files stay. Refused for the appliance's own store (1), a target a rule uses, and one a job writes into or a restore reads from", delete_storage::<B>),
        r("/api/storage/{id}/verify", M::POST, Admin, "Verify a storage target (admins): re-read its chunks (all, or a sample), check them, name the points a bad one affects; the result shows in the target's health", verify_storage::<B>),
        r("/api/storage/{id}/gc", M::POST, Admin, "Collect a storage target's garbage (admins): remove what no point needs, safely beside running backups", gc_storage::<B>),
        r("/api/audit", M::GET, Audit, "Audit log (admins, auditors), newest first, a page at a time (?before=<id>&limit=<n>)", audit::<B>),
        r("/api/rules", M::GET, Read, "Backup rules", rules::<B>),
        r("/api/rules", M::POST, Operate, "Add a rule", create_rule::<B>),
        r("/api/rules/check", M::POST, Operate, "Check a rule (new, or edited with ?rule=ID) as saving it would, saving nothing: 204, or the refusal naming the field", check_rule::<B>),
        r("/api/rules/state", M::POST, Operate, "Enable or disable several rules at once (group start/stop of their schedules)", rules_state::<B>),
        r("/api/rules/{id}", M::GET, Read, "A rule", rule::<B>),
        r("/api/rules/{id}", M::PUT, Operate, "Replace a rule's settings and VMs (checked like a new rule; the platform stays; the schedule counts from now)", update_rule::<B>),
        r("/api/rules/{id}", M::DELETE, Operate, "Delete a rule (its jobs' history stays; its points too unless delete_data_with_rule)", delete_rule::<B>),
        r("/api/rules/{id}/run", M::POST, Operate, "Run a rule's VMs now", run_rule::<B>),
        r("/api/events", M::GET, Read, "Server-sent events: 'job' with the Job JSON at each change, 'system' with a SystemSample every 2 s", events::<B>),
        r("/api/stats", M::GET, Read, "Statistics per VM and per rule", stats::<B>),
        r("/api/alerts", M::GET, Admin, "Alert mail settings (admins)", alerts::<B>),
        r("/api/alerts", M::PUT, Admin, "Set alert mail settings (admins)", set_alerts::<B>),
        r("/api/alerts/test", M::POST, Admin, "Send a test mail now (admins)", test_alert::<B>),
        r("/api/users", M::GET, Admin, "Users (admins)", users::<B>),
        r("/api/users", M::POST, Admin, "Add a user (admins)", create_user::<B>),
        r("/api/users/{name}", M::DELETE, Admin, "Delete a user (admins)", delete_user::<B>),
        r("/api/users/{name}/unlock", M::POST, Admin, "Unlock a user locked out by failed logins (admins)", unlock_user::<B>),
        r("/api/users/{name}/password", M::POST, Admin, "Give another user a new password, to be changed at the next login; unlocks the user and ends its sessions (admins)", reset_password::<B>),
        r("/api/tokens", M::GET, Read, "Your API tokens", tokens::<B>),
        r("/api/tokens", M::POST, Operate, "Create an API token (shown once)", create_token::<B>),
        r("/api/tokens/{id}", M::DELETE, Operate, "Revoke one of your API tokens", delete_token::<B>),
    ]
}

/// The routes as the OpenAPI document describes them.
pub fn operations<B: Backend>() -> Vec<Operation> {
    routes::<B>().into_iter().map(|r| r.operation).collect()
}

/// The routes as (path, method, access), for the checks and the docs.
pub fn route_table<B: Backend>() -> Vec<(&'static str, Method, Access)> {
    routes::<B>().into_iter().map(|r| (r.operation.path, r.operation.method, r.operation.access)).collect()
}

/// The API's routes over `backend`.
pub fn router<B: Backend>(backend: Arc<B>) -> Router {
    let mut by_path: Vec<(&'static str, MethodRouter<Arc<B>>)> = Vec::new();
    for Route { operation, handler } in routes::<B>() {
        let (path, handler) = (operation.path, handler.layer(axum::Extension(operation.access)));
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
        .layer(axum::middleware::map_response(crate::ui::security_headers))
        .layer(axum::middleware::from_fn(crate::compress::gzip))
}
