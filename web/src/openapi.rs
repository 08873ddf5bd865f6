//! The API's OpenAPI 3.1 document, generated from the route table and the handlers' own
//! signatures: a handler's `Body<T>` is its request body, `Path<T>` and `Query<T>` its parameters, and its
//! return type (`Json<R>`, `Created<R>`, `Accepted<R>`, `NoContent`, an event stream, a file)
//! its success reply, each described by the JSON Schema of the very type serde reads or writes.
//! So the document cannot drift from what is served; nothing here is written by hand but the
//! words of each route's summary.

use crate::api::{Access, Authed, Body};
use crate::model::Session;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Json, Response};
use schemars::{generate::SchemaSettings, JsonSchema, Schema, SchemaGenerator};
use serde_json::{json, Map, Value};
use std::future::Future;

/// The body of every error reply.
#[derive(serde::Serialize, JsonSchema)]
pub struct ErrorReply {
    /// What went wrong, naming the field or object.
    pub error: String,
}

/// A reply that created something: 201 with the new object.
pub struct Created<T>(pub T);
/// A reply that queued work: 202 with the job(s).
pub struct Accepted<T>(pub T);
/// A reply with nothing to say: 204.
pub struct NoContent;
/// The login reply: the session cookie, and the session as JSON.
pub struct WithCookie(pub String, pub Session);

impl<T: serde::Serialize> IntoResponse for Created<T> {
    fn into_response(self) -> Response {
        (axum::http::StatusCode::CREATED, Json(self.0)).into_response()
    }
}

impl<T: serde::Serialize> IntoResponse for Accepted<T> {
    fn into_response(self) -> Response {
        (axum::http::StatusCode::ACCEPTED, Json(self.0)).into_response()
    }
}

impl IntoResponse for NoContent {
    fn into_response(self) -> Response {
        axum::http::StatusCode::NO_CONTENT.into_response()
    }
}

impl IntoResponse for WithCookie {
    fn into_response(self) -> Response {
        ([(axum::http::header::SET_COOKIE, self.0)], Json(self.1)).into_response()
    }
}

/// What one route reads and answers.
#[derive(Default)]
pub struct Shapes {
    request: Option<Schema>,
    path: Option<Schema>,
    query: Option<Schema>,
    status: u16,
    content: Option<(&'static str, Option<Schema>)>,
}

impl Shapes {
    /// A file of the web console: its type is the file's own.
    pub(crate) fn file(&mut self) {
        self.status = 200;
        self.content = Some(("*/*", None));
    }
}

/// An extractor's part of the description.
pub trait Arg {
    fn describe(_: &mut SchemaGenerator, _: &mut Shapes) {}
}

impl<S> Arg for State<S> {}
impl Arg for Authed {}
impl Arg for axum::http::HeaderMap {}

impl<T: JsonSchema> Arg for Path<T> {
    fn describe(g: &mut SchemaGenerator, s: &mut Shapes) {
        s.path = Some(g.subschema_for::<T>());
    }
}

impl<T: JsonSchema> Arg for axum::extract::Query<T> {
    fn describe(g: &mut SchemaGenerator, s: &mut Shapes) {
        s.query = Some(g.root_schema_for::<T>());
    }
}

impl<T: JsonSchema> Arg for Body<T> {
    fn describe(g: &mut SchemaGenerator, s: &mut Shapes) {
        s.request = Some(g.subschema_for::<T>());
    }
}

/// A reply type's part of the description: its status and its content.
pub trait Reply {
    fn describe(g: &mut SchemaGenerator, s: &mut Shapes);
}

impl<T: Reply, E> Reply for Result<T, E> {
    fn describe(g: &mut SchemaGenerator, s: &mut Shapes) {
        T::describe(g, s)
    }
}

fn json_reply<T: JsonSchema>(g: &mut SchemaGenerator, s: &mut Shapes, status: u16) {
    s.status = status;
    s.content = Some(("application/json", Some(g.subschema_for::<T>())));
}

impl<T: JsonSchema> Reply for Json<T> {
    fn describe(g: &mut SchemaGenerator, s: &mut Shapes) {
        json_reply::<T>(g, s, 200)
    }
}

impl<T: JsonSchema> Reply for Created<T> {
    fn describe(g: &mut SchemaGenerator, s: &mut Shapes) {
        json_reply::<T>(g, s, 201)
    }
}

impl<T: JsonSchema> Reply for Accepted<T> {
    fn describe(g: &mut SchemaGenerator, s: &mut Shapes) {
        json_reply::<T>(g, s, 202)
    }
}

impl Reply for WithCookie {
    fn describe(g: &mut SchemaGenerator, s: &mut Shapes) {
        json_reply::<Session>(g, s, 200)
    }
}

impl Reply for NoContent {
    fn describe(_: &mut SchemaGenerator, s: &mut Shapes) {
        s.status = 204;
    }
}

impl<S> Reply for axum::response::sse::Sse<S> {
    fn describe(_: &mut SchemaGenerator, s: &mut Shapes) {
        s.status = 200;
        s.content = Some(("text/event-stream", None));
    }
}

/// A handler whose extractors and reply describe themselves; `M` is the handler's signature
/// (as axum's `Handler<T, S>` has one), so each arity is its own implementation.
pub trait Shape<M> {
    fn shapes(g: &mut SchemaGenerator) -> Shapes;
}

macro_rules! shape_of_handlers {
    ($($arg:ident),*) => {
        impl<F, Fut, O, $($arg,)*> Shape<($($arg,)* O,)> for F
        where
            F: Fn($($arg),*) -> Fut,
            Fut: Future<Output = O>,
            O: Reply,
            $($arg: Arg,)*
        {
            fn shapes(g: &mut SchemaGenerator) -> Shapes {
                let mut s = Shapes::default();
                $($arg::describe(g, &mut s);)*
                O::describe(g, &mut s);
                s
            }
        }
    };
}

shape_of_handlers!();
shape_of_handlers!(A1);
shape_of_handlers!(A1, A2);
shape_of_handlers!(A1, A2, A3);
shape_of_handlers!(A1, A2, A3, A4);

/// One route as the document sees it.
pub struct Operation {
    pub path: &'static str,
    pub method: axum::http::Method,
    pub access: Access,
    pub summary: &'static str,
    pub shapes: fn(&mut SchemaGenerator) -> Shapes,
}

const INTRO: &str = "JSON over HTTPS. Browsers: POST /api/login sets the hf_session cookie and returns \
a CSRF token (GET /api/session gives it again), sent back in X-CSRF-Token on every request that \
changes something. Scripts: Authorization: Bearer <API token>. Errors are {\"error\": \"...\"} naming \
the field or object; 400 bad input, 401 no session, 403 not allowed (role, CSRF, password change \
pending), 404 unknown object, 409 conflict, 415 a body not sent as application/json, 502 the \
hypervisor or mail server failed. Each operation's x-access says who may call it: public (no \
session), own (the caller's own account, allowed while a password change is pending), read (every \
role), operate (operators and admins), audit (admins and auditors), admin.";

fn error(description: &str) -> Value {
    json!({ "description": description, "content": { "application/json": {
        "schema": { "$ref": "#/components/schemas/ErrorReply" } } } })
}

/// The OpenAPI 3.1 document of `operations`.
pub fn document(operations: &[Operation]) -> Value {
    let mut settings = SchemaSettings::draft2020_12();
    settings.definitions_path = "/components/schemas".into();
    let mut g = settings.into_generator();
    g.subschema_for::<ErrorReply>();
    // What the event stream carries besides jobs.
    g.subschema_for::<crate::model::SystemSample>();
    let mut paths = Map::new();
    for op in operations {
        let s = (op.shapes)(&mut g);
        let mut o = Map::new();
        o.insert("summary".into(), op.summary.into());
        o.insert("x-access".into(), op.access.as_str().into());
        if op.access == Access::Public {
            o.insert("security".into(), json!([]));
        }
        if let Some(schema) = &s.path {
            // One parameter, or a tuple of them in the order the path names them.
            let schema = serde_json::to_value(schema).unwrap_or_default();
            let schemas = schema["prefixItems"].as_array().cloned().unwrap_or_else(|| vec![schema]);
            let parameters: Vec<Value> = path_parameters(op.path)
                .zip(schemas)
                .map(|(name, schema)| json!({ "name": name, "in": "path", "required": true, "schema": schema }))
                .collect();
            o.insert("parameters".into(), parameters.into());
        }
        if let Some(schema) = &s.query {
            // Each field of the query's type is a parameter of its own.
            let schema = serde_json::to_value(schema).unwrap_or_default();
            let required = schema["required"].as_array().cloned().unwrap_or_default();
            let params = o.entry("parameters").or_insert_with(|| json!([]));
            for (name, field) in schema["properties"].as_object().into_iter().flatten() {
                let needed = required.contains(&json!(name));
                if let Some(list) = params.as_array_mut() {
                    list.push(json!({ "name": name, "in": "query", "required": needed, "schema": field }));
                }
            }
        }
        let mut responses = Map::new();
        let mut ok = json!({ "description": "success" });
        if let Some((mime, schema)) = s.content {
            ok["content"] = json!({ mime: schema.map(|s| json!({ "schema": s })).unwrap_or_else(|| json!({})) });
        }
        responses.insert(s.status.to_string(), ok);
        if let Some(schema) = s.request {
            o.insert(
                "requestBody".into(),
                json!({ "required": true, "content": { "application/json": { "schema": schema } } }),
            );
            responses.insert("400".into(), error("bad input: the message names the field"));
            responses.insert("415".into(), error("the body was not sent as application/json"));
        }
        if op.access != Access::Public {
            responses.insert("401".into(), error("no session, or it expired"));
            responses.insert("403".into(), error("the caller's role or a pending password change forbids it"));
        }
        if s.path.is_some() {
            responses.insert("404".into(), error("no such object"));
        }
        responses.insert("default".into(), error("a conflict (409), the hypervisor (502) or another failure"));
        o.insert("responses".into(), responses.into());
        let entry = paths.entry(op.path).or_insert_with(|| json!({}));
        entry[op.method.as_str().to_lowercase()] = o.into();
    }
    json!({
        "openapi": "3.1.0",
        "info": { "title": "Holdfast appliance API", "version": "1", "description": INTRO },
        "security": [{ "session": [] }, { "token": [] }],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "session": { "type": "apiKey", "in": "cookie", "name": "hf_session" },
                "token": { "type": "http", "scheme": "bearer" }
            },
            "schemas": g.take_definitions(true),
        }
    })
}

/// The names of the `{…}` parameters in a route's path, in order.
fn path_parameters(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter_map(|part| part.strip_prefix('{')?.strip_suffix('}'))
}
