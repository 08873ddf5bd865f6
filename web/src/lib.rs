//! The HTTPS JSON API of the appliance (axum), over a [`Backend`] the appliance implements with
//! its catalog and job engine, and the web console (`ui/`), a client of that API served at `/`.
//! This crate owns the HTTP side: TLS, sessions and CSRF checks, roles, request validation, the
//! JSON shapes and the OpenAPI document generated from them; the backend owns the data.
//!
//! Browsers authenticate with a session cookie (`hf_session`, HttpOnly, Secure, SameSite=Strict)
//! and send the session's CSRF token in `X-CSRF-Token` on every request that changes something.
//! Every route but `POST /api/login` needs a session; until the initial password is changed,
//! only `POST /api/password` and `POST /api/logout` are allowed.

mod api;
mod client;
mod compress;
mod model;
mod openapi;
mod tls;
mod ui;

pub use api::{operations, route_table, router, Access};
pub use client::ApiClient;
pub use model::*;
pub use openapi::{document, Accepted, Created, ErrorReply, NoContent, Operation};
pub use tls::serve;
pub use ui::CONTENT_SECURITY_POLICY;
